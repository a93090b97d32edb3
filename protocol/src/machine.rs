//! Shared pieces of the sans-IO state machines: outgoing IQ descriptions, time, the retry policy
//! and the duplicate-suppression cache.
//!
//! **Time.** Every machine takes the current time as a plain `u64` count of milliseconds since an
//! epoch the caller chooses (for example the process start, from a monotonic clock). Machines
//! never read a clock; they report the next instant they want to be woken at
//! (`next_timeout()`), and the caller calls `handle_timeout(now)` at or after it.

use std::collections::{HashMap, VecDeque};

use jid::Jid;
use minidom::Element;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType as StanzaErrorType, StanzaError};

/// Milliseconds since the caller's epoch.
pub type Millis = u64;

/// Per-IQ response timeout (`[VAP-OPS-063]`, default 10 s).
pub const IQ_TIMEOUT_MS: Millis = 10_000;
/// Grace added to the op deadline on the requester side (`[VAP-OPS-062]`).
pub const DEADLINE_GRACE_MS: Millis = 2_000;
/// Base retry delay (`[VAP-OPS-073]`).
pub const RETRY_BASE_MS: Millis = 100;
/// Maximum attempts of one IQ set in total (`[VAP-OPS-074]`).
pub const MAX_ATTEMPTS: u32 = 4;
/// Duplicate-suppression window (`[VAP-OPS-065]`).
pub const DEDUP_WINDOW_MS: Millis = 300_000;
/// How long a responder waits for an authorization decision (`[VAP-SEC-009]`).
pub const AUTHORIZE_TIMEOUT_MS: Millis = 2_000;

/// The body of an IQ to send.
#[derive(Debug, Clone, PartialEq)]
pub enum IqBody {
    /// `type="set"` with this payload.
    Set(Element),
    /// `type="result"`, optionally with a payload (only the op result has one).
    Result(Option<Element>),
    /// `type="error"`.
    Error(StanzaError),
}

/// An IQ the caller must send (the machine chose recipient, id and body).
#[derive(Debug, Clone, PartialEq)]
pub struct OutIq {
    /// Recipient full JID.
    pub to: Jid,
    /// IQ id (a retransmission reuses it, `[VAP-OPS-068]`).
    pub id: String,
    /// Type and payload.
    pub body: IqBody,
}

impl OutIq {
    /// Build the `xmpp_parsers` IQ (no `from`; the server stamps it).
    pub fn to_iq(&self) -> Iq {
        match &self.body {
            IqBody::Set(p) => Iq::Set {
                from: None,
                to: Some(self.to.clone()),
                id: self.id.clone(),
                payload: p.clone(),
            },
            IqBody::Result(p) => Iq::Result {
                from: None,
                to: Some(self.to.clone()),
                id: self.id.clone(),
                payload: p.clone(),
            },
            IqBody::Error(e) => Iq::Error {
                from: None,
                to: Some(self.to.clone()),
                id: self.id.clone(),
                error: e.clone(),
                payload: None,
            },
        }
    }

    /// An empty IQ result answering `id`.
    pub fn result(to: Jid, id: impl Into<String>) -> Self {
        OutIq {
            to,
            id: id.into(),
            body: IqBody::Result(None),
        }
    }
}

/// How an IQ error received for one of our IQ sets is classified (`[VAP-OPS-071]`,
/// `[VAP-OPS-072]`, `[VAP-OPS-078]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IqErrorClass {
    /// `type="wait"`: retry with back-off.
    RetryWait,
    /// `service-unavailable` / `recipient-unavailable`: retry; when exhausted the peer is gone.
    RetryGone,
    /// `item-not-found` (and remote-server-not-found): the peer is gone, no retry.
    Gone,
    /// Anything else: no retry.
    Fatal,
}

/// Classify a stanza error.
pub fn classify_iq_error(e: &StanzaError) -> IqErrorClass {
    match e.defined_condition {
        DefinedCondition::ServiceUnavailable | DefinedCondition::RecipientUnavailable => {
            IqErrorClass::RetryGone
        }
        _ if e.type_ == StanzaErrorType::Wait => IqErrorClass::RetryWait,
        DefinedCondition::ItemNotFound | DefinedCondition::RemoteServerNotFound => {
            IqErrorClass::Gone
        }
        _ => IqErrorClass::Fatal,
    }
}

/// Delay before retry `n` (1-based): 100 ms × 2^(n−1) (`[VAP-OPS-073]`).
pub fn retry_delay(n: u32) -> Millis {
    RETRY_BASE_MS << n.saturating_sub(1).min(20)
}

/// One IQ set we sent and await an answer for, with its retransmission bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pending {
    pub iq: OutIq,
    pub attempts: u32,
    /// When the current attempt times out.
    pub timeout_at: Millis,
    /// When a scheduled retry is due (None when waiting for an answer).
    pub retry_at: Option<Millis>,
    /// The per-IQ timeout of each attempt (`[VAP-OPS-063]`).
    pub iq_timeout: Millis,
}

impl Pending {
    /// `limit`: no single wait goes past it.
    pub fn new(iq: OutIq, now: Millis, limit: Millis) -> Self {
        Self::with_timeout(iq, now, limit, IQ_TIMEOUT_MS)
    }

    /// Like [`Pending::new`] with a per-IQ timeout other than the default
    /// (`[VAP-OPS-063]`: "its per-IQ timeout (10000 ms by default)").
    pub fn with_timeout(iq: OutIq, now: Millis, limit: Millis, iq_timeout: Millis) -> Self {
        let iq_timeout = iq_timeout.max(1);
        Pending {
            iq,
            attempts: 1,
            timeout_at: (now + iq_timeout).min(limit),
            retry_at: None,
            iq_timeout,
        }
    }

    /// Schedule a retry after an error or a timeout if allowed by attempts and `limit`
    /// (`[VAP-OPS-074]`, `[VAP-OPS-075]`). Returns false when no retry is possible.
    pub fn schedule_retry(&mut self, now: Millis, limit: Millis) -> bool {
        if self.attempts >= MAX_ATTEMPTS {
            return false;
        }
        let at = now + retry_delay(self.attempts);
        if at >= limit {
            return false;
        }
        self.retry_at = Some(at);
        true
    }

    /// Fire a due retry: returns the IQ to resend (same id, `[VAP-OPS-068]`); `limit` bounds the
    /// new wait.
    pub fn fire(&mut self, now: Millis, limit: Millis) -> OutIq {
        self.retry_at = None;
        self.attempts += 1;
        self.timeout_at = (now + self.iq_timeout).min(limit);
        self.iq.clone()
    }

    pub fn next_wakeup(&self) -> Millis {
        self.retry_at.unwrap_or(self.timeout_at)
    }
}

/// Remembers answered IQ sets by (sender full JID, IQ id) for [`DEDUP_WINDOW_MS`] with their
/// answer (`[VAP-OPS-065]`…`[VAP-OPS-067]`), bounded in size (oldest forgotten first).
#[derive(Debug, Clone)]
pub struct DedupCache {
    map: HashMap<(String, String), (Millis, IqBody)>,
    order: VecDeque<(Millis, String, String)>,
    capacity: usize,
    window: Millis,
}

impl DedupCache {
    /// A cache holding at most `capacity` entries for the 300 s window.
    pub fn new(capacity: usize) -> Self {
        DedupCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            window: DEDUP_WINDOW_MS,
        }
    }

    fn expire(&mut self, now: Millis) {
        while let Some((t, _, _)) = self.order.front() {
            if now.saturating_sub(*t) < self.window && self.order.len() <= self.capacity {
                break;
            }
            if let Some((t, f, i)) = self.order.pop_front() {
                let key = (f, i);
                if self.map.get(&key).is_some_and(|(tt, _)| *tt == t) {
                    self.map.remove(&key);
                }
            }
        }
    }

    /// The remembered answer to a repeated IQ set, if (from, id) was answered within the window.
    pub fn lookup(&mut self, from: &Jid, id: &str, now: Millis) -> Option<OutIq> {
        self.expire(now);
        self.map
            .get(&(from.to_string(), id.to_string()))
            .map(|(_, body)| OutIq {
                to: from.clone(),
                id: id.to_string(),
                body: body.clone(),
            })
    }

    /// Remember the answer sent to (from, id).
    pub fn remember(&mut self, answer: &OutIq, now: Millis) {
        let key = (answer.to.to_string(), answer.id.clone());
        self.order.push_back((now, key.0.clone(), key.1.clone()));
        self.map.insert(key, (now, answer.body.clone()));
        self.expire(now);
    }

    /// Forget the answer to (from, id). Only for test mutants that deliberately violate
    /// `[VAP-OPS-067]` (process a repeated IQ set again); a conforming peer never calls it.
    #[doc(hidden)]
    pub fn forget(&mut self, from: &Jid, id: &str) {
        self.map.remove(&(from.to_string(), id.to_string()));
    }

    /// Number of remembered answers.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
