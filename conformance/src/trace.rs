//! Wire trace of one case: every stanza the harness sent or received, with direction,
//! the harness identity that carried it and the time since the case started.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Direction of a traced stanza, seen from the implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Harness → implementation (or → server on the implementation's behalf).
    Sent,
    /// Implementation (or server) → harness.
    Received,
    /// A harness note (step marker, injected fault, process event).
    Note,
}

impl Direction {
    pub fn arrow(self) -> &'static str {
        match self {
            Direction::Sent => "->",
            Direction::Received => "<-",
            Direction::Note => "##",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TraceEvent {
    /// Milliseconds since the case started.
    pub t_ms: f64,
    pub dir: Direction,
    /// Harness identity (connection) that carried the stanza, e.g. `dispatcher`, `requester`.
    pub via: String,
    /// The stanza as XML text (or the note text).
    pub data: String,
}

/// Shared, append-only trace. Cheap to clone; the start instant can be reset per case.
#[derive(Clone)]
pub struct Trace {
    inner: Arc<Mutex<TraceInner>>,
}

struct TraceInner {
    start: Instant,
    events: Vec<TraceEvent>,
    cap: usize,
    dropped: usize,
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}

impl Trace {
    pub fn new() -> Self {
        Trace {
            inner: Arc::new(Mutex::new(TraceInner {
                start: Instant::now(),
                events: Vec::new(),
                cap: 2000,
                dropped: 0,
            })),
        }
    }

    /// Start a new case: clears the events and resets the clock.
    pub fn reset(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.start = Instant::now();
        g.events.clear();
        g.dropped = 0;
    }

    /// Record an event; returns its index.
    pub fn push(&self, dir: Direction, via: &str, data: impl Into<String>) -> usize {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let t_ms = g.start.elapsed().as_secs_f64() * 1000.0;
        if g.events.len() >= g.cap {
            g.dropped += 1;
            return g.events.len();
        }
        let mut data: String = data.into();
        if data.len() > 16 * 1024 {
            let mut cut = 16 * 1024;
            while !data.is_char_boundary(cut) {
                cut -= 1;
            }
            data.truncate(cut);
            data.push_str("…[truncated]");
        }
        g.events.push(TraceEvent {
            t_ms: (t_ms * 1000.0).round() / 1000.0,
            dir,
            via: via.to_string(),
            data,
        });
        g.events.len() - 1
    }

    pub fn note(&self, text: impl Into<String>) -> usize {
        self.push(Direction::Note, "harness", text)
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Snapshot of the events (and how many were dropped over the cap).
    pub fn snapshot(&self) -> (Vec<TraceEvent>, usize) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.events.clone(), g.dropped)
    }
}
