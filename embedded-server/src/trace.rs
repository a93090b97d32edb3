//! Wire trace: every stanza in and out of the embedded server.
//!
//! Memory is bounded: the snapshot buffer keeps the most recent
//! [`ServerConfig::trace_capacity`](crate::ServerConfig::trace_capacity) events (default
//! [`DEFAULT_TRACE_CAPACITY`]); older events are discarded and counted in
//! [`Trace::dropped`]. Each event keeps at most
//! [`ServerConfig::trace_max_xml`](crate::ServerConfig::trace_max_xml) bytes of XML (default
//! 8 KiB), so the worst case is about 80 MiB with the defaults. Live subscribers ([`Trace::subscribe`]) get a bounded broadcast channel
//! of the same capacity; a subscriber that falls behind loses the oldest events and is told so
//! by `RecvError::Lagged`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;
use tokio_xmpp::jid::Jid;

use crate::router::ConnId;

/// Default number of events kept by the trace.
pub const DEFAULT_TRACE_CAPACITY: usize = 10_000;

/// Which way a stanza crossed the server's edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Read from a client connection.
    In,
    /// Written to a client connection.
    Out,
    /// Would have been written, but a fault rule dropped it (the XML is what was dropped).
    Dropped,
}

/// One traced stanza.
#[derive(Debug, Clone)]
pub struct TraceEvent {
    /// Sequence number (0, 1, 2, … in the order events were recorded).
    pub seq: u64,
    /// Wall-clock time.
    pub at: SystemTime,
    /// Time since the server started (monotonic).
    pub elapsed: Duration,
    /// Direction.
    pub direction: Direction,
    /// Connection the stanza was read from or written to.
    pub conn: ConnId,
    /// The connection's bound JID, if it had bound one.
    pub jid: Option<Jid>,
    /// The stanza's XML. [`Direction::In`]: the bytes exactly as the client sent them
    /// (so the stanza may lack `xmlns='jabber:client'`, which it inherits from the stream).
    /// [`Direction::Out`]: the bytes written to the socket (each stanza serialised on its
    /// own, with its `xmlns`); raw writes are escaped by [`escape_bytes`].
    /// [`Direction::Dropped`]: the stanza serialised.
    pub xml: String,
    /// Set when a fault rule acted on this stanza (e.g. `"delay 50ms"`, `"duplicate"`,
    /// `"rewrite"`, `"reorder"`, `"drop"`, `"inject"`).
    pub note: Option<String>,
}

/// Shared handle to the server's wire trace. Cheap to clone.
#[derive(Clone)]
pub struct Trace {
    inner: Arc<TraceInner>,
}

struct TraceInner {
    enabled: AtomicBool,
    capacity: usize,
    max_xml: usize,
    start: Instant,
    /// Wall-clock time at `start`: event times are `start_wall + elapsed` (one clock read
    /// per event instead of two).
    start_wall: SystemTime,
    seq: AtomicU64,
    dropped: AtomicU64,
    buf: Mutex<VecDeque<TraceEvent>>,
    tx: broadcast::Sender<TraceEvent>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
            .field("capacity", &self.inner.capacity)
            .field("recorded", &self.inner.seq.load(Ordering::Relaxed))
            .finish()
    }
}

impl Trace {
    pub(crate) fn new(enabled: bool, capacity: usize, max_xml: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        Trace {
            inner: Arc::new(TraceInner {
                enabled: AtomicBool::new(enabled),
                capacity,
                max_xml: max_xml.max(64),
                start: Instant::now(),
                start_wall: SystemTime::now(),
                seq: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                buf: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
                tx,
            }),
        }
    }

    /// Whether events are being recorded.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Relaxed)
    }

    /// Turns recording on or off (on by default unless the config says otherwise).
    pub fn set_enabled(&self, on: bool) {
        self.inner.enabled.store(on, Ordering::Relaxed);
    }

    /// The maximum number of events kept.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Number of events discarded from the snapshot buffer because it was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// A copy of the buffered events, oldest first.
    pub fn snapshot(&self) -> Vec<TraceEvent> {
        self.inner
            .buf
            .lock()
            .expect("trace lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Removes and returns the buffered events.
    pub fn drain(&self) -> Vec<TraceEvent> {
        self.inner
            .buf
            .lock()
            .expect("trace lock")
            .drain(..)
            .collect()
    }

    /// Clears the buffer.
    pub fn clear(&self) {
        self.inner.buf.lock().expect("trace lock").clear();
    }

    /// Live events from now on (bounded; see the module docs).
    pub fn subscribe(&self) -> broadcast::Receiver<TraceEvent> {
        self.inner.tx.subscribe()
    }

    pub(crate) fn record(
        &self,
        direction: Direction,
        conn: ConnId,
        jid: Option<&Jid>,
        xml: impl FnOnce() -> String,
        note: Option<String>,
    ) {
        if !self.is_enabled() {
            return;
        }
        let mut xml = xml();
        if xml.len() > self.inner.max_xml {
            let mut cut = self.inner.max_xml;
            while !xml.is_char_boundary(cut) {
                cut -= 1;
            }
            let dropped = xml.len() - cut;
            xml.truncate(cut);
            xml.push_str(&format!("…[truncated {dropped} bytes]"));
        }
        let jid = jid.cloned();
        let mut buf = self.inner.buf.lock().expect("trace lock");
        let elapsed = self.inner.start.elapsed();
        let ev = TraceEvent {
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed),
            at: self.inner.start_wall + elapsed,
            elapsed,
            direction,
            conn,
            jid,
            xml,
            note,
        };
        if self.inner.tx.receiver_count() > 0 {
            let _ = self.inner.tx.send(ev.clone());
        }
        let old = if buf.len() >= self.inner.capacity {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            buf.pop_front()
        } else {
            None
        };
        buf.push_back(ev);
        drop(buf);
        // the discarded event is freed outside the lock
        drop(old);
    }
}

/// Escapes raw bytes for the trace: valid UTF-8 text is kept as is, except that `\` becomes
/// `\\` and ASCII control characters other than tab, line feed and carriage return become
/// `\xNN`; every byte that is not part of valid UTF-8 becomes `\xNN` (two lowercase hex
/// digits). The escaping is reversible, so the trace shows exactly which bytes were written.
///
/// ```
/// use vertebra_embedded_server::trace::escape_bytes;
/// assert_eq!(escape_bytes(b"<a x='\xff'>\\\0"), "<a x='\\xff'>\\\\\\x00");
/// ```
pub fn escape_bytes(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' | '\n' | '\r' => out.push(c),
                c if c.is_control() && (c as u32) < 0x80 => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}
