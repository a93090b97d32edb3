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

use crate::stanza::{Data, Final, Op};

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

/// The payload of an IQ set as a machine keeps it for retransmission (`[VAP-OPS-068]`: same
/// id, same payload). The per-op stanzas a machine builds from typed values stay typed and are
/// encoded again for a retry (encoding is deterministic, so a retry carries the same element),
/// so the first send takes its element without a deep copy.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Resend {
    /// An element, kept as sent.
    Element(Element),
    /// An op.
    Op(Box<Op>),
    /// A final.
    Final(Final),
    /// A data chunk.
    Data(Data),
}

impl Resend {
    fn to_element(&self) -> Element {
        match self {
            Resend::Element(e) => e.clone(),
            Resend::Op(o) => o.to_element(),
            Resend::Final(f) => f.to_element(),
            Resend::Data(d) => d.to_element(),
        }
    }

    /// The element to send now, and what to keep for the retries.
    fn split(self) -> (Element, Resend) {
        match self {
            Resend::Element(e) => (e.clone(), Resend::Element(e)),
            typed => (typed.to_element(), typed),
        }
    }
}

/// An IQ set as a machine keeps it after sending: recipient, id and payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sent {
    pub to: Jid,
    pub id: String,
    pub payload: Resend,
}

impl Sent {
    /// The IQ set to send now (first attempt) and what to keep for its retries.
    pub fn first(to: Jid, id: String, payload: Resend) -> (OutIq, Sent) {
        let (el, payload) = payload.split();
        let iq = OutIq {
            to: to.clone(),
            id: id.clone(),
            body: IqBody::Set(el),
        };
        (iq, Sent { to, id, payload })
    }

    /// The same IQ set again (a retry).
    fn again(&self) -> OutIq {
        OutIq {
            to: self.to.clone(),
            id: self.id.clone(),
            body: IqBody::Set(self.payload.to_element()),
        }
    }
}

/// One IQ set we sent and await an answer for, with its retransmission bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pending {
    pub iq: Sent,
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
    pub fn new(iq: Sent, now: Millis, limit: Millis) -> Self {
        Self::with_timeout(iq, now, limit, IQ_TIMEOUT_MS)
    }

    /// Like [`Pending::new`] with a per-IQ timeout other than the default
    /// (`[VAP-OPS-063]`: "its per-IQ timeout (10000 ms by default)").
    pub fn with_timeout(iq: Sent, now: Millis, limit: Millis, iq_timeout: Millis) -> Self {
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
        self.iq.again()
    }

    pub fn next_wakeup(&self) -> Millis {
        self.retry_at.unwrap_or(self.timeout_at)
    }
}

/// Remembers answered IQ sets by (sender full JID, IQ id) for [`DEDUP_WINDOW_MS`] with their
/// answer (`[VAP-OPS-065]`…`[VAP-OPS-067]`), bounded in size (oldest forgotten first).
///
/// Keyed by IQ id, then by sender: a lookup (one per IQ set received) borrows both and
/// allocates nothing.
#[derive(Debug, Clone)]
pub struct DedupCache {
    /// IQ id → the answers sent to the senders that used it (almost always one).
    map: HashMap<String, Answers>,
    /// Number of remembered (sender, id) answers.
    entries: usize,
    order: VecDeque<(Millis, Jid, String)>,
    capacity: usize,
    window: Millis,
}

/// One remembered answer.
#[derive(Debug, Clone)]
struct Answer {
    from: Jid,
    at: Millis,
    body: IqBody,
}

/// The answers remembered under one IQ id. `One` is the usual case and is kept inline (boxing
/// it would cost the allocation this layout saves).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Answers {
    One(Answer),
    Many(Vec<Answer>),
}

impl Answers {
    fn as_slice(&self) -> &[Answer] {
        match self {
            Answers::One(a) => std::slice::from_ref(a),
            Answers::Many(v) => v,
        }
    }

    fn find_mut(&mut self, from: &Jid) -> Option<&mut Answer> {
        match self {
            Answers::One(a) => (&a.from == from).then_some(a),
            Answers::Many(v) => v.iter_mut().find(|a| &a.from == from),
        }
    }

    fn push(&mut self, a: Answer) {
        match self {
            Answers::One(_) => {
                let Answers::One(first) = std::mem::replace(self, Answers::Many(Vec::new())) else {
                    unreachable!()
                };
                *self = Answers::Many(vec![first, a]);
            }
            Answers::Many(v) => v.push(a),
        }
    }

    /// Remove the answer to `from` (only if remembered at `at`, when given); returns whether
    /// one was removed and whether none is left.
    fn remove(&mut self, from: &Jid, at: Option<Millis>) -> (bool, bool) {
        let hit = |a: &Answer| &a.from == from && at.is_none_or(|t| a.at == t);
        match self {
            Answers::One(a) => {
                let removed = hit(a);
                (removed, removed)
            }
            Answers::Many(v) => match v.iter().position(hit) {
                Some(i) => {
                    v.remove(i);
                    (true, v.is_empty())
                }
                None => (false, v.is_empty()),
            },
        }
    }
}

impl DedupCache {
    /// A cache holding at most `capacity` entries for the 300 s window.
    pub fn new(capacity: usize) -> Self {
        DedupCache {
            map: HashMap::new(),
            entries: 0,
            order: VecDeque::new(),
            capacity: capacity.max(1),
            window: DEDUP_WINDOW_MS,
        }
    }

    /// Forget the answer to (from, id), only if it was remembered at `at` when given.
    fn remove(&mut self, from: &Jid, id: &str, at: Option<Millis>) {
        let Some(answers) = self.map.get_mut(id) else {
            return;
        };
        let (removed, empty) = answers.remove(from, at);
        if removed {
            self.entries -= 1;
        }
        if empty {
            self.map.remove(id);
        }
    }

    fn expire(&mut self, now: Millis) {
        while let Some((t, _, _)) = self.order.front() {
            if now.saturating_sub(*t) < self.window && self.order.len() <= self.capacity {
                break;
            }
            if let Some((t, f, i)) = self.order.pop_front() {
                self.remove(&f, &i, Some(t));
            }
        }
    }

    /// The remembered answer to a repeated IQ set, if (from, id) was answered within the window.
    pub fn lookup(&mut self, from: &Jid, id: &str, now: Millis) -> Option<OutIq> {
        self.expire(now);
        self.map
            .get(id)?
            .as_slice()
            .iter()
            .find(|a| &a.from == from)
            .map(|a| OutIq {
                to: from.clone(),
                id: id.to_string(),
                body: a.body.clone(),
            })
    }

    /// Remember the answer sent to (from, id).
    pub fn remember(&mut self, answer: &OutIq, now: Millis) {
        self.order
            .push_back((now, answer.to.clone(), answer.id.clone()));
        let fresh = || Answer {
            from: answer.to.clone(),
            at: now,
            body: answer.body.clone(),
        };
        match self.map.get_mut(&answer.id) {
            Some(answers) => match answers.find_mut(&answer.to) {
                Some(a) => {
                    a.at = now;
                    a.body = answer.body.clone();
                }
                None => {
                    answers.push(fresh());
                    self.entries += 1;
                }
            },
            None => {
                self.map.insert(answer.id.clone(), Answers::One(fresh()));
                self.entries += 1;
            }
        }
        self.expire(now);
    }

    /// Forget the answer to (from, id). Only for test mutants that deliberately violate
    /// `[VAP-OPS-067]` (process a repeated IQ set again); a conforming peer never calls it.
    #[doc(hidden)]
    pub fn forget(&mut self, from: &Jid, id: &str) {
        self.remove(from, id, None);
    }

    /// Number of remembered answers.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::new(s).unwrap()
    }

    fn answer(to: &str, id: &str, payload: &str) -> OutIq {
        OutIq {
            to: jid(to),
            id: id.to_string(),
            body: IqBody::Result(Some(Element::bare(payload, "urn:test"))),
        }
    }

    #[test]
    fn dedup_by_sender_and_id() {
        let mut d = DedupCache::new(10);
        let (a, b) = ("a@x/r", "b@x/r");
        d.remember(&answer(a, "1", "first"), 0);
        d.remember(&answer(b, "1", "second"), 0);
        assert_eq!(d.len(), 2);
        assert_eq!(d.lookup(&jid(a), "1", 1), Some(answer(a, "1", "first")));
        assert_eq!(d.lookup(&jid(b), "1", 1), Some(answer(b, "1", "second")));
        assert_eq!(d.lookup(&jid("a@x/other"), "1", 1), None);
        assert_eq!(d.lookup(&jid(a), "2", 1), None);
        // The same (sender, id) again: the newer answer replaces the older one.
        d.remember(&answer(a, "1", "again"), 5);
        assert_eq!(d.len(), 2);
        assert_eq!(d.lookup(&jid(a), "1", 6), Some(answer(a, "1", "again")));
        d.forget(&jid(b), "1");
        assert_eq!(d.len(), 1);
        assert_eq!(d.lookup(&jid(b), "1", 6), None);
        assert_eq!(d.lookup(&jid(a), "1", 6), Some(answer(a, "1", "again")));
    }

    #[test]
    fn dedup_window_and_capacity() {
        let mut d = DedupCache::new(2);
        let a = "a@x/r";
        d.remember(&answer(a, "1", "p"), 0);
        // Re-remembered at 10: the entry queued at 0 no longer removes it.
        d.remember(&answer(a, "1", "q"), 10);
        assert_eq!(
            d.lookup(&jid(a), "1", DEDUP_WINDOW_MS),
            Some(answer(a, "1", "q"))
        );
        assert_eq!(d.lookup(&jid(a), "1", DEDUP_WINDOW_MS + 10), None);
        assert!(d.is_empty());
        // Capacity 2: the oldest goes first.
        d.remember(&answer(a, "1", "p"), 20);
        d.remember(&answer(a, "2", "p"), 21);
        d.remember(&answer(a, "3", "p"), 22);
        assert_eq!(d.len(), 2);
        assert_eq!(d.lookup(&jid(a), "1", 23), None);
        assert!(d.lookup(&jid(a), "2", 23).is_some());
        assert!(d.lookup(&jid(a), "3", 23).is_some());
    }
}
