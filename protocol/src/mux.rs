//! Multiplexers over the per-op machines, so a shell only moves stanzas and time:
//!
//! * [`Calls`]: every outgoing call of one entity. Routes IQ results/errors by (responder, IQ
//!   id) while the op result is pending and IQ sets by (responder, T:S) afterwards
//!   (`[VAP-OPS-021]`), answers IQ sets of finished or unknown calls (`[VAP-OPS-031]`,
//!   `[VAP-OPS-046]`).
//! * [`Responders`]: every incoming op of one entity. Suppresses retransmitted op IQs by
//!   (sender, IQ id) for 300 s with the same answer (`[VAP-OPS-065]`…`[VAP-OPS-067]`), routes
//!   answers to our IQ sets and cancels to the right op.
//!
//! Both are sans-IO like the machines: the caller passes time in [`Millis`].

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use jid::Jid;
use minidom::Element;
use xmpp_parsers::stanza_error::StanzaError;

use crate::error::ProtocolError;
use crate::machine::{DedupCache, IqBody, Millis, OutIq};
use crate::requester::{CallEvent, Output, Requester};
use crate::responder::{Decision, Responder, ResponderConfig, ResponderEvent, Route};
use crate::stanza::{Op, VertebraPayload};
use crate::token::{OpToken, Token};
use crate::value::Args;

/// Handle of one call in [`Calls`].
pub type CallId = u64;
/// Handle of one incoming op in [`Responders`].
pub type OpId = u64;

/// Hasher for maps keyed by [`CallId`] or [`OpId`]: a multiplicative hash of the 64-bit handle.
/// The handles are counters of our own, never values a peer chooses, so they need none of the
/// default hasher's (SipHash) keyed protection, which costs several times more per step.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: odd multiplier, so distinct handles get distinct hashes, and the
        // high bits (which the table uses as tags) depend on every bit of the handle.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by [`CallId`] or [`OpId`] (see [`IdHasher`]).
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Routing index from a string key (one of our IQ ids, or an op token `T:S`) to the calls or
/// ops that use it. The peer's JID is not part of the key: a lookup checks it against the
/// machine (`from` must be its peer), so routing stays by (peer, key) while a step costs no
/// JID or key copies. Keys are inserted once, when they appear, and removed when they stop
/// being used, so the index holds only live keys.
#[derive(Debug, Default)]
struct Index(HashMap<String, Slot>);

/// The handles sharing one key (almost always one: our IQ ids and tokens are unique, but a
/// caller may reuse an id toward different peers).
#[derive(Debug)]
enum Slot {
    One(u64),
    Many(Vec<u64>),
}

impl Index {
    /// One hash per call: keys are inserted once, when they appear, so the key is usually new.
    fn insert(&mut self, k: &str, id: u64) {
        match self.0.entry(k.to_string()) {
            Entry::Vacant(v) => {
                v.insert(Slot::One(id));
            }
            Entry::Occupied(mut o) => match o.get_mut() {
                Slot::One(x) if *x == id => {}
                slot @ Slot::One(_) => {
                    let Slot::One(x) = *slot else { unreachable!() };
                    *slot = Slot::Many(vec![x, id]);
                }
                Slot::Many(v) => {
                    if !v.contains(&id) {
                        v.push(id);
                    }
                }
            },
        }
    }

    /// One hash per call in the usual case (the key has only this handle).
    fn remove(&mut self, k: &str, id: u64) {
        let Some((key, slot)) = self.0.remove_entry(k) else {
            return;
        };
        match slot {
            Slot::One(x) if x == id => {}
            Slot::One(x) => {
                self.0.insert(key, Slot::One(x));
            }
            Slot::Many(mut v) => {
                v.retain(|x| *x != id);
                if !v.is_empty() {
                    self.0.insert(key, Slot::Many(v));
                }
            }
        }
    }

    /// The handle under `k` that `accept`s (its machine's peer is the sender).
    fn find(&self, k: &str, accept: impl Fn(u64) -> bool) -> Option<u64> {
        match self.0.get(k)? {
            Slot::One(o) => accept(*o).then_some(*o),
            Slot::Many(v) => v.iter().copied().find(|x| accept(*x)),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// One call with the index keys it put in [`Calls`].
#[derive(Debug)]
struct CallEntry {
    r: Requester,
    /// The op IQ id (indexed from the start until the call ends).
    op_id: String,
    /// The cancel IQ id, once indexed.
    cancel_id: Option<String>,
    /// The op token, once indexed.
    token: Option<String>,
}

/// All outgoing calls of one entity.
#[derive(Debug, Default)]
pub struct Calls {
    calls: IdMap<CallEntry>,
    next: CallId,
    /// Op and cancel IQ ids → call (routes IQ results and errors).
    by_answer: Index,
    /// Op token `T:S` → call (routes the responder's IQ sets, `[VAP-OPS-021]`).
    by_token: Index,
    iq_timeout: Option<Millis>,
}

type CallOut = Vec<Output<CallEvent>>;

impl Calls {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Index the keys the call acquired in its last step (a cancel IQ id, the op token).
    fn index(&mut self, id: CallId) {
        let Some(e) = self.calls.get_mut(&id) else {
            return;
        };
        if e.cancel_id.is_none() {
            if let Some(i) = e.r.cancel_iq_id() {
                self.by_answer.insert(i, id);
                e.cancel_id = Some(i.to_string());
            }
        }
        if e.token.is_none() {
            if let Some(t) = e.r.token() {
                let t = t.text();
                self.by_token.insert(&t, id);
                e.token = Some(t);
            }
        }
    }

    /// Drop a call that is over, with its index keys.
    fn reap(&mut self, id: CallId) {
        if !self.calls.get(&id).is_some_and(|e| e.r.is_done()) {
            return;
        }
        let Some(e) = self.calls.remove(&id) else {
            return;
        };
        self.by_answer.remove(&e.op_id, id);
        if let Some(c) = &e.cancel_id {
            self.by_answer.remove(c, id);
        }
        if let Some(t) = &e.token {
            self.by_token.remove(t, id);
        }
    }

    /// The call whose IQ `id` was sent to `from`.
    fn answered(&self, from: &Jid, id: &str) -> Option<CallId> {
        self.by_answer.find(id, |c| {
            self.calls.get(&c).is_some_and(|e| e.r.responder() == from)
        })
    }

    /// Use a per-IQ timeout other than the 10 s default for calls started from now on
    /// (`[VAP-OPS-063]`, see [`Requester::start_with_iq_timeout`]).
    pub fn set_iq_timeout(&mut self, iq_timeout: Millis) {
        self.iq_timeout = Some(iq_timeout);
    }

    /// Start a call (see [`Requester::start`]).
    pub fn start(
        &mut self,
        to: Jid,
        op: &Op,
        iq_id: impl Into<String>,
        now: Millis,
    ) -> Result<(CallId, CallOut), ProtocolError> {
        let t = self.iq_timeout.unwrap_or(crate::machine::IQ_TIMEOUT_MS);
        let (r, out) = Requester::start_with_iq_timeout(to, op, iq_id, now, t)?;
        Ok((self.adopt(r), out))
    }

    /// Take over a call started with [`Requester::start`] or
    /// [`Requester::start_with_iq_timeout`] whose op IQ has not been answered yet (so the
    /// machine, and its op IQ, can be built without holding a lock around `Calls`). Send its
    /// op IQ only after this, so that the answer finds the call.
    pub fn adopt(&mut self, r: Requester) -> CallId {
        let op_id = r.op_iq_id().unwrap_or_default().to_string();
        self.next += 1;
        let id = self.next;
        self.by_answer.insert(&op_id, id);
        self.calls.insert(
            id,
            CallEntry {
                r,
                op_id,
                cancel_id: None,
                token: None,
            },
        );
        self.index(id);
        id
    }

    /// The call, while it runs.
    pub fn get(&self, id: CallId) -> Option<&Requester> {
        self.calls.get(&id).map(|e| &e.r)
    }

    /// Number of running calls.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// True when no call runs.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Cancel a call (see [`Requester::cancel`]).
    pub fn cancel(&mut self, id: CallId, iq_id: impl Into<String>, now: Millis) -> CallOut {
        let out = match self.calls.get_mut(&id) {
            Some(e) => e.r.cancel(iq_id, now),
            None => return Vec::new(),
        };
        self.index(id);
        out
    }

    /// An IQ result; `None` when it answers none of our calls.
    pub fn handle_iq_result(
        &mut self,
        from: &Jid,
        id: &str,
        payload: Option<&Element>,
        now: Millis,
    ) -> Option<(CallId, CallOut)> {
        let cid = self.answered(from, id)?;
        let out = self
            .calls
            .get_mut(&cid)?
            .r
            .handle_iq_result(from, id, payload, now);
        self.index(cid);
        self.reap(cid);
        Some((cid, out))
    }

    /// An IQ error; `None` when it answers none of our calls.
    pub fn handle_iq_error(
        &mut self,
        from: &Jid,
        id: &str,
        error: &StanzaError,
        now: Millis,
    ) -> Option<(CallId, CallOut)> {
        let cid = self.answered(from, id)?;
        let out = self
            .calls
            .get_mut(&cid)?
            .r
            .handle_iq_error(from, id, error, now);
        self.reap(cid);
        Some((cid, out))
    }

    /// An IQ set for the requester side (ack, nack, data, final, error). Always answered: by
    /// the call it belongs to, or with an empty IQ result for a finished or unknown call
    /// (`[VAP-OPS-031]`), or with the IQ error for an undecodable element (`[VAP-TRN-010]`,
    /// `[VAP-TRN-011]`).
    pub fn handle_iq_set(
        &mut self,
        from: &Jid,
        id: &str,
        payload: &Element,
        now: Millis,
    ) -> (Option<CallId>, CallOut) {
        // An indexed token is the exact text of a valid T:S ([`OpToken::parse`] keeps it as
        // received), so the attribute is looked up as it is.
        let cid = payload.attr("token").and_then(|t| {
            self.by_token
                .find(t, |c| {
                    self.calls.get(&c).is_some_and(|e| e.r.responder() == from)
                })
                .or_else(|| {
                    // Before the op result: a stanza whose token rotates a pending call's token.
                    let t = OpToken::parse(t).ok()?;
                    self.calls
                        .iter()
                        .find(|(_, e)| e.r.token().is_none() && e.r.owns_set(from, &t))
                        .map(|(c, _)| *c)
                })
        });
        if let Some(cid) = cid {
            if let Some(e) = self.calls.get_mut(&cid) {
                let out = e.r.handle_iq_set(from, id, payload, now);
                self.index(cid);
                self.reap(cid);
                return (Some(cid), out);
            }
        }
        let answer = match VertebraPayload::from_element(payload) {
            Ok(_) => OutIq::result(from.clone(), id),
            Err(e) => match ProtocolError::from(e).to_wire().to_stanza_error() {
                Some(err) => OutIq {
                    to: from.clone(),
                    id: id.to_string(),
                    body: IqBody::Error(err),
                },
                None => OutIq::result(from.clone(), id),
            },
        };
        (None, vec![Output::Send(answer)])
    }

    /// End one call locally without sending anything (see [`Requester::abandon`]).
    pub fn abandon(
        &mut self,
        id: CallId,
        condition: crate::Condition,
        reason: impl Into<String>,
    ) -> CallOut {
        let out = match self.calls.get_mut(&id) {
            Some(e) => e.r.abandon(condition, reason),
            None => return Vec::new(),
        };
        self.reap(id);
        out
    }

    /// Ids of the running calls.
    pub fn ids(&self) -> Vec<CallId> {
        self.calls.keys().copied().collect()
    }

    /// Unavailable presence from `from`: every call to it ends (`[VAP-OPS-077]`).
    pub fn handle_unavailable(&mut self, from: &Jid, now: Millis) -> Vec<(CallId, CallOut)> {
        let ids: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, e)| e.r.responder() == from)
            .map(|(c, _)| *c)
            .collect();
        ids.into_iter()
            .filter_map(|c| {
                let out = self.calls.get_mut(&c)?.r.handle_unavailable(from, now);
                self.reap(c);
                Some((c, out))
            })
            .collect()
    }

    /// Fire due timers.
    pub fn handle_timeout(&mut self, now: Millis) -> Vec<(CallId, CallOut)> {
        let due: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, e)| e.r.next_timeout().is_some_and(|t| t <= now))
            .map(|(c, _)| *c)
            .collect();
        due.into_iter()
            .filter_map(|c| {
                let out = self.calls.get_mut(&c)?.r.handle_timeout(now);
                self.index(c);
                self.reap(c);
                Some((c, out))
            })
            .collect()
    }

    /// The earliest timer of all calls.
    pub fn next_timeout(&self) -> Option<Millis> {
        self.calls.values().filter_map(|e| e.r.next_timeout()).min()
    }
}

/// All incoming ops of one entity.
#[derive(Debug)]
pub struct Responders {
    cfg: ResponderConfig,
    ops: IdMap<OpEntry>,
    next: OpId,
    /// Ids of our pending IQ sets → op (routes their IQ results and errors).
    by_answer: Index,
    /// Op token `T:S` → op (routes cancels).
    by_token: Index,
    dedup: DedupCache,
}

/// One incoming op with the index keys it put in [`Responders`].
#[derive(Debug)]
struct OpEntry {
    r: Responder,
    /// Indexed IQ ids of our IQ sets still pending.
    answers: Vec<String>,
    /// The op token, once indexed.
    token: Option<String>,
}

type OpOut = Vec<Output<ResponderEvent>>;

impl Responders {
    /// Empty, remembering at most `dedup_capacity` answered IQ sets for duplicate suppression.
    pub fn new(cfg: ResponderConfig, dedup_capacity: usize) -> Self {
        Responders {
            cfg,
            ops: IdMap::default(),
            next: 0,
            by_answer: Index::default(),
            by_token: Index::default(),
            dedup: DedupCache::new(dedup_capacity),
        }
    }

    /// Index the keys the op acquired in its last step (the ids of IQ sets it sent, its
    /// token) and drop those of IQ sets no longer pending.
    fn index(&mut self, id: OpId) {
        let Some(e) = self.ops.get_mut(&id) else {
            return;
        };
        let by_answer = &mut self.by_answer;
        let r = &e.r;
        e.answers.retain(|a| {
            let pending = r.owns_answer(r.requester(), a);
            if !pending {
                by_answer.remove(a, id);
            }
            pending
        });
        for p in r.pending_ids() {
            if by_answer.find(p, |o| o == id).is_none() {
                by_answer.insert(p, id);
                e.answers.push(p.to_string());
            }
        }
        if e.token.is_none() {
            if let Some(t) = e.r.token() {
                let t = t.text();
                self.by_token.insert(&t, id);
                e.token = Some(t);
            }
        }
    }

    /// Drop an op that is over, with its index keys.
    fn reap(&mut self, id: OpId) {
        if !self.ops.get(&id).is_some_and(|e| e.r.is_done()) {
            return;
        }
        let Some(e) = self.ops.remove(&id) else {
            return;
        };
        for a in &e.answers {
            self.by_answer.remove(a, id);
        }
        if let Some(t) = &e.token {
            self.by_token.remove(t, id);
        }
    }

    /// The op whose IQ set `id` to `from` is still pending.
    fn answered(&self, from: &Jid, id: &str) -> Option<OpId> {
        self.by_answer.find(id, |o| {
            self.ops.get(&o).is_some_and(|e| e.r.owns_answer(from, id))
        })
    }

    /// The op, while it runs.
    pub fn get(&self, id: OpId) -> Option<&Responder> {
        self.ops.get(&id).map(|e| &e.r)
    }

    /// Number of running ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when no op runs.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// An op IQ (set, or get when `via_get`). A retransmission (same sender and IQ id within
    /// 300 s) gets the same answer and is not processed again (`None` id).
    #[allow(clippy::too_many_arguments)]
    pub fn receive_op(
        &mut self,
        from: &Jid,
        iq_id: &str,
        via_get: bool,
        payload: &Element,
        now: Millis,
        s: Token,
        route: impl FnOnce(&Op) -> Route,
    ) -> (Option<OpId>, OpOut) {
        if let Some(again) = self.dedup.lookup(from, iq_id, now) {
            return (None, vec![Output::Send(again)]);
        }
        let (r, out) = Responder::receive_op(
            from.clone(),
            iq_id,
            via_get,
            payload,
            now,
            s,
            &self.cfg,
            route,
        );
        self.dedup.remember(r.op_answer(), now);
        self.next += 1;
        let id = self.next;
        self.ops.insert(
            id,
            OpEntry {
                r,
                answers: Vec::new(),
                token: None,
            },
        );
        self.index(id);
        self.reap(id);
        (Some(id), out)
    }

    /// Forget the remembered answer to (from, id), so a repeated op IQ is processed again.
    /// Only for test mutants that deliberately violate `[VAP-OPS-067]`.
    #[doc(hidden)]
    pub fn forget_answer(&mut self, from: &Jid, id: &str) {
        self.dedup.forget(from, id);
    }

    /// A non-op IQ set from a requester (a cancel). Duplicates get the same answer.
    pub fn handle_iq_set(
        &mut self,
        from: &Jid,
        id: &str,
        payload: &Element,
        now: Millis,
    ) -> (Option<OpId>, OpOut) {
        if let Some(again) = self.dedup.lookup(from, id, now) {
            return (None, vec![Output::Send(again)]);
        }
        let target = payload.attr("token").and_then(|t| {
            self.by_token.find(t, |o| {
                self.ops.get(&o).is_some_and(|e| e.r.requester() == from)
            })
        });
        let (oid, out) = match target.and_then(|t| self.ops.get_mut(&t).map(|e| (t, e))) {
            Some((t, e)) => {
                let out = e.r.handle_iq_set(from, id, payload, now);
                self.index(t);
                self.reap(t);
                (Some(t), out)
            }
            None => {
                // Unknown op: a cancel is still answered ([VAP-OPS-054]); malformed input gets
                // the IQ error of the table.
                let answer = match VertebraPayload::from_element(payload) {
                    Ok(_) => OutIq::result(from.clone(), id),
                    Err(e) => match ProtocolError::from(e).to_wire().to_stanza_error() {
                        Some(err) => OutIq {
                            to: from.clone(),
                            id: id.to_string(),
                            body: IqBody::Error(err),
                        },
                        None => OutIq::result(from.clone(), id),
                    },
                };
                (None, vec![Output::Send(answer)])
            }
        };
        if let Some(Output::Send(a)) = out.first() {
            if a.id == id && a.to == *from {
                self.dedup.remember(a, now);
            }
        }
        (oid, out)
    }

    /// An IQ result answering one of our IQ sets.
    pub fn handle_iq_result(&mut self, from: &Jid, id: &str, now: Millis) -> Option<(OpId, OpOut)> {
        let oid = self.answered(from, id)?;
        let out = self.ops.get_mut(&oid)?.r.handle_iq_result(from, id, now);
        self.index(oid);
        self.reap(oid);
        Some((oid, out))
    }

    /// An IQ error answering one of our IQ sets.
    pub fn handle_iq_error(
        &mut self,
        from: &Jid,
        id: &str,
        error: &StanzaError,
        now: Millis,
    ) -> Option<(OpId, OpOut)> {
        let oid = self.answered(from, id)?;
        let out = self
            .ops
            .get_mut(&oid)?
            .r
            .handle_iq_error(from, id, error, now);
        self.index(oid);
        self.reap(oid);
        Some((oid, out))
    }

    fn with(
        &mut self,
        id: OpId,
        f: impl FnOnce(&mut Responder) -> Result<OpOut, ProtocolError>,
    ) -> Result<OpOut, ProtocolError> {
        let e = self
            .ops
            .get_mut(&id)
            .ok_or_else(|| ProtocolError::misuse("no such op"))?;
        let out = f(&mut e.r)?;
        self.index(id);
        self.reap(id);
        Ok(out)
    }

    /// Our XMPP session was lost: every running op is abandoned, none is resumed or continued
    /// on the next session (`[VAP-OPS-081]`, see [`Responder::abandon`]). The duplicate table
    /// is kept, so a retransmitted op IQ still gets its first answer and is not run again
    /// (`[VAP-OPS-067]`).
    pub fn abandon_all(&mut self) -> Vec<(OpId, OpOut)> {
        let ids: Vec<OpId> = self.ops.keys().copied().collect();
        ids.into_iter()
            .filter_map(|c| {
                let out = self.ops.get_mut(&c)?.r.abandon();
                self.reap(c);
                Some((c, out))
            })
            .collect()
    }

    /// See [`Responder::authorize`].
    pub fn authorize(
        &mut self,
        id: OpId,
        d: Decision,
        now: Millis,
    ) -> Result<OpOut, ProtocolError> {
        self.with(id, |r| Ok(r.authorize(d, now)))
    }
    /// See [`Responder::chunk`].
    pub fn chunk(&mut self, id: OpId, args: Args, now: Millis) -> Result<OpOut, ProtocolError> {
        self.with(id, |r| r.chunk(args, now))
    }
    /// See [`Responder::finish`].
    pub fn finish(
        &mut self,
        id: OpId,
        last: Option<Args>,
        now: Millis,
    ) -> Result<OpOut, ProtocolError> {
        self.with(id, |r| r.finish(last, now))
    }
    /// See [`Responder::fail`].
    pub fn fail(
        &mut self,
        id: OpId,
        c: crate::Condition,
        reason: impl Into<String>,
        now: Millis,
    ) -> Result<OpOut, ProtocolError> {
        let reason = reason.into();
        self.with(id, |r| r.fail(c, reason, now))
    }

    /// Fire due timers.
    pub fn handle_timeout(&mut self, now: Millis) -> Vec<(OpId, OpOut)> {
        let due: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, e)| e.r.next_timeout().is_some_and(|t| t <= now))
            .map(|(c, _)| *c)
            .collect();
        due.into_iter()
            .filter_map(|c| {
                let out = self.ops.get_mut(&c)?.r.handle_timeout(now);
                self.index(c);
                self.reap(c);
                Some((c, out))
            })
            .collect()
    }

    /// The earliest timer of all ops.
    pub fn next_timeout(&self) -> Option<Millis> {
        self.ops.values().filter_map(|e| e.r.next_timeout()).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Condition;
    use crate::machine::IqBody;
    use crate::responder::ResponderEvent;
    use crate::{RequestToken, Resource, Token};

    fn j(s: &str) -> Jid {
        Jid::new(s).unwrap()
    }

    fn op(timeout: u32) -> Op {
        Op::new(
            RequestToken::Single(Token::generate().unwrap()),
            &Resource::parse("/x").unwrap(),
            timeout,
        )
    }

    fn sends<E>(out: &[Output<E>]) -> Vec<OutIq> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(s) => Some(s.clone()),
                Output::Event(_) => None,
            })
            .collect()
    }

    /// [VAP-OPS-063] a shorter per-IQ timeout; [VAP-OPS-068] the retransmission reuses the id;
    /// [VAP-OPS-074] at most 4 attempts; [VAP-OPS-079] then responder-gone.
    #[test]
    fn iq_timeout_is_configurable_and_retries_reuse_the_id() {
        let aj = j("agent@example.net/a");
        let mut calls = Calls::new();
        calls.set_iq_timeout(500);
        let (cid, out) = calls.start(aj.clone(), &op(60_000), "op-1", 0).unwrap();
        assert_eq!(sends(&out).len(), 1);
        assert_eq!(calls.next_timeout(), Some(500));
        let mut now = 0;
        let mut attempts = 1;
        let mut ended = None;
        while let Some(t) = calls.next_timeout() {
            now = t;
            for (c, out) in calls.handle_timeout(now) {
                assert_eq!(c, cid);
                for o in out {
                    match o {
                        Output::Send(s) => {
                            assert_eq!(s.id, "op-1");
                            attempts += 1;
                        }
                        Output::Event(CallEvent::Ended(o)) => ended = Some(o),
                        Output::Event(_) => {}
                    }
                }
            }
        }
        assert_eq!(attempts, 4);
        let o = ended.expect("ended");
        assert_eq!(o.condition, Some(Condition::ResponderGone));
        assert!(
            now < 5_000,
            "ended after 4 × 500 ms (+ back-off), not 4 × 10 s: {now}"
        );
        assert!(calls.is_empty());
    }

    #[test]
    fn abandon_ends_a_call_without_sending() {
        let aj = j("agent@example.net/a");
        let mut calls = Calls::new();
        let (cid, _) = calls.start(aj, &op(60_000), "op-1", 0).unwrap();
        assert_eq!(calls.ids(), vec![cid]);
        let out = calls.abandon(cid, Condition::Other("connection-lost".into()), "lost");
        assert!(sends(&out).is_empty());
        assert!(matches!(
            out.as_slice(),
            [Output::Event(CallEvent::Ended(o))] if o.condition == Some(Condition::Other("connection-lost".into()))
        ));
        assert!(calls.is_empty());
        assert!(calls.abandon(cid, Condition::Cancelled, "again").is_empty());
    }

    /// [VAP-OPS-081] ops of a lost session are stopped, send nothing more, and a retransmitted
    /// op IQ is still answered from the duplicate table and not run again ([VAP-OPS-067]).
    #[test]
    fn session_loss_abandons_every_op() {
        let rj = j("ops@example.net/console");
        let aj = j("agent@example.net/agent");
        let mut ops = Responders::new(
            ResponderConfig {
                own_jid: aj.clone(),
                values_on_final: true,
            },
            100,
        );
        let o = op(60_000);
        let el = o.to_element();
        let (id, out) = ops.receive_op(
            &rj,
            "op-1",
            false,
            &el,
            0,
            Token::generate().unwrap(),
            |_| Route::Handler { cached: Some(true) },
        );
        let id = id.unwrap();
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Event(ResponderEvent::Start))));
        ops.chunk(id, Args::new(), 1).unwrap();
        assert_eq!(ops.len(), 1);
        let all = ops.abandon_all();
        assert_eq!(all.len(), 1);
        let (aid, out) = &all[0];
        assert_eq!(*aid, id);
        assert!(sends(out).is_empty(), "nothing is sent for an abandoned op");
        assert!(matches!(out[0], Output::Event(ResponderEvent::Stop(_))));
        assert!(matches!(
            out.last(),
            Some(Output::Event(ResponderEvent::Ended(Some(_))))
        ));
        assert!(ops.is_empty());
        assert_eq!(ops.next_timeout(), None);
        // the handler's late events are refused
        assert!(ops.finish(id, None, 2).is_err());
        // a retransmission of the op IQ: same answer, not run again
        let (again, out) = ops.receive_op(
            &rj,
            "op-1",
            false,
            &el,
            3,
            Token::generate().unwrap(),
            |_| Route::Handler { cached: Some(true) },
        );
        assert!(again.is_none());
        assert!(matches!(&sends(&out)[..], [s] if matches!(s.body, IqBody::Result(Some(_)))));
    }

    /// The routing indexes hold only live keys: a streamed op (ack, data, final) and its call
    /// leave nothing behind, and a second requester using the same IQ id toward another peer
    /// is routed by its own peer.
    #[test]
    fn indexes_hold_only_live_keys() {
        let rj = j("ops@example.net/console");
        let aj = j("agent@example.net/agent");
        let mut calls = Calls::new();
        let mut ops = Responders::new(
            ResponderConfig {
                own_jid: aj.clone(),
                values_on_final: true,
            },
            100,
        );
        let (cid, out) = calls.start(aj.clone(), &op(60_000), "op-1", 0).unwrap();
        let mut to_a = sends(&out);
        let mut to_r: Vec<OutIq> = Vec::new();
        let mut oid = None;
        let mut ended = false;
        let mut step = 0;
        while !(to_a.is_empty() && to_r.is_empty()) {
            step += 1;
            assert!(step < 100, "no progress");
            for s in std::mem::take(&mut to_a) {
                match &s.body {
                    IqBody::Set(el) if el.name() == "op" => {
                        let (id, out) = ops.receive_op(
                            &rj,
                            &s.id,
                            false,
                            el,
                            0,
                            Token::generate().unwrap(),
                            |_| Route::Handler { cached: None },
                        );
                        oid = id;
                        to_r.extend(sends(&out));
                        to_r.extend(sends(
                            &ops.authorize(id.unwrap(), Decision::Authorized, 0).unwrap(),
                        ));
                    }
                    IqBody::Set(_) => unreachable!("no cancel here"),
                    IqBody::Result(_) => {
                        let (o, out) = ops.handle_iq_result(&rj, &s.id, 1).unwrap();
                        for x in &out {
                            if let Output::Event(ResponderEvent::Start) = x {
                                let mut more = ops.chunk(o, Args::new(), 1).unwrap();
                                more.extend(ops.chunk(o, Args::new(), 1).unwrap());
                                more.extend(ops.finish(o, None, 1).unwrap());
                                to_r.extend(sends(&more));
                            }
                        }
                        to_r.extend(sends(&out));
                    }
                    IqBody::Error(_) => unreachable!(),
                }
            }
            for s in std::mem::take(&mut to_r) {
                match &s.body {
                    IqBody::Set(el) => {
                        let (c, out) = calls.handle_iq_set(&aj, &s.id, el, 1);
                        assert_eq!(c, Some(cid));
                        ended |= out
                            .iter()
                            .any(|o| matches!(o, Output::Event(CallEvent::Ended(_))));
                        to_a.extend(sends(&out));
                    }
                    IqBody::Result(p) => {
                        // A reply from the wrong peer answers nothing of ours.
                        assert!(calls.handle_iq_result(&rj, &s.id, p.as_ref(), 1).is_none());
                        let (c, out) = calls.handle_iq_result(&aj, &s.id, p.as_ref(), 1).unwrap();
                        assert_eq!(c, cid);
                        to_a.extend(sends(&out));
                    }
                    IqBody::Error(_) => unreachable!(),
                }
            }
        }
        assert!(ended);
        assert!(oid.is_some());
        assert!(calls.is_empty() && ops.is_empty());
        assert_eq!(calls.by_answer.len() + calls.by_token.len(), 0);
        assert_eq!(ops.by_answer.len() + ops.by_token.len(), 0);
        // Two calls with the same IQ id to different peers: each answer finds its own call.
        let bj = j("agent@example.net/b");
        let (c1, _) = calls.start(aj.clone(), &op(60_000), "same", 0).unwrap();
        let (c2, _) = calls.start(bj.clone(), &op(60_000), "same", 0).unwrap();
        let e = xmpp_parsers::stanza_error::StanzaError::new(
            xmpp_parsers::stanza_error::ErrorType::Cancel,
            xmpp_parsers::stanza_error::DefinedCondition::ItemNotFound,
            "en",
            "",
        );
        assert_eq!(
            calls.handle_iq_error(&bj, "same", &e, 1).map(|x| x.0),
            Some(c2)
        );
        assert_eq!(
            calls.handle_iq_error(&aj, "same", &e, 1).map(|x| x.0),
            Some(c1)
        );
        assert!(calls.is_empty());
        assert_eq!(calls.by_answer.len(), 0);
    }
}
