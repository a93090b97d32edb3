//! The requester state machine: one call (one op to one responder), sans-IO.
//!
//! Feed it what arrives (IQ results and errors for the IQs it sent, IQ sets from the responder,
//! unavailable presence, timeouts) with the current time; it returns [`Output`]s: IQs to send
//! and [`CallEvent`]s for the application. [`Requester::next_timeout`] says when to call
//! [`Requester::handle_timeout`] next. Every IQ set it receives is answered
//! (`[VAP-OPS-031]`), including late and duplicate ones, and every call ends by
//! `op deadline + 2 s` at the latest (`[VAP-OPS-080]`).
//!
//! The requester answers data IQs as soon as they are processed, so it never has more than one
//! unanswered data IQ of its own; it does not report `window-exceeded`.

use std::collections::HashSet;

use jid::Jid;
use minidom::Element;
use serde::Serialize;
use xmpp_parsers::stanza_error::StanzaError;

use crate::error::{Condition, ErrorType, ProtocolError};
use crate::machine::{
    classify_iq_error, IqBody, IqErrorClass, Millis, OutIq, Pending, Resend, Sent,
    DEADLINE_GRACE_MS,
};
use crate::stanza::{Cancel, Data, Final, Op, OpError, OpResult, Version, VertebraPayload};
use crate::token::{OpToken, RequestToken};
use crate::value::Args;

/// What a machine asks its caller to do.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Output<E> {
    /// Send this IQ.
    Send(OutIq),
    /// Tell the application.
    Event(E),
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// `<final>`: success.
    Final,
    /// `<nack>` from the responder.
    Nack,
    /// `<error>` from the responder, with its type.
    Error(ErrorType),
    /// Ended locally (deadline, responder gone, bad response …).
    Local,
}

/// The terminal outcome of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// How it ended.
    pub kind: OutcomeKind,
    /// `None` for success; else the condition (`[VAP-ERR]` names, unknown ones verbatim).
    pub condition: Option<Condition>,
    /// Reason text (error `reason`, local detail).
    pub reason: Option<String>,
    /// Whether the op had been acked (ack element or fast path) — `single` dispatch moves on
    /// only if it had not (`[VAP-DSP-009]`, `[VAP-DSP-010]`).
    pub acked: bool,
    /// Data chunks delivered.
    pub chunks: u64,
}

impl Outcome {
    /// True for a `<final>`.
    pub fn is_success(&self) -> bool {
        self.kind == OutcomeKind::Final
    }
}

/// Events of a call.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// The op result arrived with the composite token; `fast_path` when it carried
    /// `ack="true"`.
    Accepted {
        /// T:S.
        token: OpToken,
        /// Fast path: the op is acked too.
        fast_path: bool,
    },
    /// A separate `<ack>` arrived.
    Acked,
    /// A chunk of values, in `seq` order (`[VAP-OPS-037]`); values on `<final>` arrive as the
    /// last chunk.
    Data {
        /// 0-based chunk index.
        seq: u64,
        /// The values.
        args: Args,
    },
    /// The call is over.
    Ended(Outcome),
}

type Out = Output<CallEvent>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitOpResult,
    AwaitAck,
    Running,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqMode {
    Unknown,
    With,
    Without,
}

/// One call.
#[derive(Debug, Clone)]
pub struct Requester {
    to: Jid,
    request_token: RequestToken,
    legacy_op: bool,
    token: Option<OpToken>,
    op_iq: Option<Pending>,
    cancel_iq: Option<Pending>,
    cancel_requested: bool,
    cancel_iq_id: Option<String>,
    phase: Phase,
    acked: bool,
    seq_mode: SeqMode,
    next_seq: u64,
    processed: HashSet<String>,
    op_deadline: Millis,
    hard_deadline: Millis,
    outcome: Option<Outcome>,
    iq_timeout: Millis,
}

impl Requester {
    /// Start a call: validate the op (caller misuse is an error, nothing is sent) and return the
    /// op IQ to send with id `iq_id`. A 1.0 op must carry `timeout` (`[VAP-OPS-011]`).
    pub fn start(
        to: Jid,
        op: &Op,
        iq_id: impl Into<String>,
        now: Millis,
    ) -> Result<(Self, Vec<Out>), ProtocolError> {
        Self::start_with_iq_timeout(to, op, iq_id, now, crate::machine::IQ_TIMEOUT_MS)
    }

    /// Like [`Requester::start`] with a per-IQ timeout other than the 10 s default
    /// (`[VAP-OPS-063]`); it bounds each attempt of the op IQ and of the cancel IQ, and a call
    /// whose op IQ is never answered ends `responder-gone` after the last attempt
    /// (`[VAP-OPS-079]`).
    pub fn start_with_iq_timeout(
        to: Jid,
        op: &Op,
        iq_id: impl Into<String>,
        now: Millis,
        iq_timeout: Millis,
    ) -> Result<(Self, Vec<Out>), ProtocolError> {
        if op.version == Version::V1_0 && op.timeout.is_none() {
            return Err(ProtocolError::misuse("a 1.0 op needs a timeout"));
        }
        if op.operation().is_none() {
            return Err(ProtocolError::misuse("op type is not a resource path"));
        }
        op.args
            .validate()
            .map_err(|e| ProtocolError::misuse(e.to_string()))?;
        if to.resource().is_none() {
            return Err(ProtocolError::misuse("ops go to full JIDs ([VAP-TRN-016])"));
        }
        let op_deadline = now + Millis::from(op.timeout_ms());
        let (iq, sent) = Sent::first(to.clone(), iq_id.into(), Resend::Op(Box::new(op.clone())));
        let r = Requester {
            to,
            request_token: op.token.clone(),
            legacy_op: op.is_legacy(),
            token: None,
            op_iq: Some(Pending::with_timeout(
                sent,
                now,
                op_deadline + DEADLINE_GRACE_MS,
                iq_timeout,
            )),
            cancel_iq: None,
            cancel_requested: false,
            cancel_iq_id: None,
            phase: Phase::AwaitOpResult,
            acked: false,
            seq_mode: SeqMode::Unknown,
            next_seq: 0,
            processed: HashSet::new(),
            op_deadline,
            hard_deadline: op_deadline + DEADLINE_GRACE_MS,
            outcome: None,
            iq_timeout,
        };
        Ok((r, vec![Output::Send(iq)]))
    }

    /// The responder's full JID.
    pub fn responder(&self) -> &Jid {
        &self.to
    }
    /// The composite token once known.
    pub fn token(&self) -> Option<&OpToken> {
        self.token.as_ref()
    }
    /// The token sent on the op.
    pub fn request_token(&self) -> &RequestToken {
        &self.request_token
    }
    /// IQ id of the op IQ (while its answer is pending).
    pub fn op_iq_id(&self) -> Option<&str> {
        self.op_iq.as_ref().map(|p| p.iq.id.as_str())
    }
    /// IQ id of the cancel IQ, if one was sent.
    pub fn cancel_iq_id(&self) -> Option<&str> {
        self.cancel_iq_id.as_deref()
    }
    /// True once the call has ended.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }
    /// The outcome once ended.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }
    /// Whether the call was acked.
    pub fn is_acked(&self) -> bool {
        self.acked
    }

    /// When to call [`Requester::handle_timeout`] next (`None` once done).
    pub fn next_timeout(&self) -> Option<Millis> {
        if self.is_done() {
            return None;
        }
        let mut t = self.hard_deadline;
        if let Some(p) = &self.op_iq {
            t = t.min(p.next_wakeup());
        }
        if let Some(p) = &self.cancel_iq {
            t = t.min(p.next_wakeup());
        }
        Some(t)
    }

    fn end(
        &mut self,
        kind: OutcomeKind,
        condition: Option<Condition>,
        reason: Option<String>,
    ) -> Out {
        self.phase = Phase::Done;
        self.op_iq = None;
        self.cancel_iq = None;
        let o = Outcome {
            kind,
            condition,
            reason,
            acked: self.acked,
            chunks: self.next_seq,
        };
        self.outcome = Some(o.clone());
        Output::Event(CallEvent::Ended(o))
    }

    fn end_local(&mut self, c: Condition, reason: impl Into<String>) -> Out {
        self.end(OutcomeKind::Local, Some(c), Some(reason.into()))
    }

    fn cancel_out(&mut self, now: Millis) -> Option<Out> {
        let token = self.token.clone()?;
        let id = self.cancel_iq_id.clone()?;
        let (iq, sent) = Sent::first(
            self.to.clone(),
            id,
            Resend::Element(Cancel { token }.to_element()),
        );
        self.cancel_iq = Some(Pending::with_timeout(
            sent,
            now,
            self.hard_deadline,
            self.iq_timeout,
        ));
        Some(Output::Send(iq))
    }

    /// The application cancels the call (`[VAP-OPS-053]`). `iq_id` is the id for the cancel IQ.
    /// If the op result has not arrived yet, the cancel is sent when it does. The call ends with
    /// `cancelled` when the responder's cancelled error arrives, or at the deadline
    /// (`[VAP-OPS-058]`).
    pub fn cancel(&mut self, iq_id: impl Into<String>, now: Millis) -> Vec<Out> {
        if self.is_done() || self.cancel_requested {
            return Vec::new();
        }
        self.cancel_requested = true;
        self.cancel_iq_id = Some(iq_id.into());
        self.cancel_out(now).into_iter().collect()
    }

    /// Whether an IQ result/error from `from` with `id` answers one of this call's IQs.
    pub fn owns_answer(&self, from: &Jid, id: &str) -> bool {
        from == &self.to
            && (self.op_iq.as_ref().is_some_and(|p| p.iq.id == id)
                || self.cancel_iq.as_ref().is_some_and(|p| p.iq.id == id))
    }

    /// An IQ result arrived for one of our IQs (`[VAP-TRN-008]`: classified by id only).
    pub fn handle_iq_result(
        &mut self,
        from: &Jid,
        id: &str,
        payload: Option<&Element>,
        now: Millis,
    ) -> Vec<Out> {
        if from != &self.to || self.is_done() {
            return Vec::new();
        }
        if self.cancel_iq.as_ref().is_some_and(|p| p.iq.id == id) {
            self.cancel_iq = None;
            return Vec::new();
        }
        if self.op_iq.as_ref().is_none_or(|p| p.iq.id != id) {
            return Vec::new();
        }
        self.op_iq = None;
        // [VAP-OPS-022], [VAP-OPS-023], [VAP-VER-015]
        let result = match payload.map(OpResult::from_element) {
            Some(Ok(r)) if r.token.is_rotation_of(&self.request_token) => r,
            Some(Ok(r)) => {
                return vec![self.end_local(
                    Condition::BadResponse,
                    format!(
                        "op result token {} is not a rotation of {}",
                        r.token, self.request_token
                    ),
                )]
            }
            Some(Err(e)) => {
                return vec![self.end_local(Condition::BadResponse, format!("op result: {e}"))]
            }
            None => {
                return vec![self.end_local(Condition::BadResponse, "op result without <op> child")]
            }
        };
        let mut out = Vec::new();
        if self.token.is_none() {
            self.token = Some(result.token.clone());
        }
        // A fast-path ack is only meaningful for a 1.0 op ([VAP-OPS-026], [VAP-OPS-027]).
        let fast = result.ack && !self.legacy_op;
        out.push(Output::Event(CallEvent::Accepted {
            token: result.token,
            fast_path: fast,
        }));
        if fast {
            self.acked = true;
        }
        self.phase = if self.acked {
            Phase::Running
        } else {
            Phase::AwaitAck
        };
        if self.cancel_requested {
            out.extend(self.cancel_out(now));
        }
        out
    }

    /// An IQ error arrived for one of our IQs: retry, or end the call (`[VAP-OPS-071]`,
    /// `[VAP-OPS-078]`, `[VAP-ERR-006]`).
    pub fn handle_iq_error(
        &mut self,
        from: &Jid,
        id: &str,
        error: &StanzaError,
        now: Millis,
    ) -> Vec<Out> {
        if from != &self.to || self.is_done() {
            return Vec::new();
        }
        let class = classify_iq_error(error);
        if self.cancel_iq.as_ref().is_some_and(|p| p.iq.id == id) {
            let limit = self.op_deadline;
            let p = self.cancel_iq.as_mut().expect("checked above");
            let retry = matches!(class, IqErrorClass::RetryWait | IqErrorClass::RetryGone)
                && p.schedule_retry(now, limit);
            if !retry {
                self.cancel_iq = None;
            }
            return Vec::new();
        }
        let limit = self.op_deadline;
        let Some(p) = self.op_iq.as_mut().filter(|p| p.iq.id == id) else {
            return Vec::new();
        };
        match class {
            IqErrorClass::RetryWait | IqErrorClass::RetryGone if p.schedule_retry(now, limit) => {
                Vec::new()
            }
            IqErrorClass::RetryGone | IqErrorClass::Gone => vec![self.end_local(
                Condition::ResponderGone,
                format!("op IQ answered with {:?}", error.defined_condition),
            )],
            IqErrorClass::RetryWait | IqErrorClass::Fatal => vec![self.end_local(
                Condition::Rejected,
                format!("op IQ answered with {:?}", error.defined_condition),
            )],
        }
    }

    /// End the call locally without sending anything, e.g. because our own XMPP session was
    /// lost: answers to its IQs and the responder's stanzas went to the old session and can
    /// never arrive, so waiting would only delay the terminal outcome (`[VAP-OPS-080]`).
    /// `condition` is the local outcome (for example `connection-lost`).
    pub fn abandon(&mut self, condition: Condition, reason: impl Into<String>) -> Vec<Out> {
        if self.is_done() {
            return Vec::new();
        }
        vec![self.end_local(condition, reason)]
    }

    /// Unavailable presence from `from` (`[VAP-OPS-077]`).
    pub fn handle_unavailable(&mut self, from: &Jid, _now: Millis) -> Vec<Out> {
        if from != &self.to || self.is_done() {
            return Vec::new();
        }
        vec![self.end_local(Condition::ResponderGone, "responder went unavailable")]
    }

    /// Time passed (`[VAP-OPS-062]`, `[VAP-OPS-063]`, `[VAP-OPS-079]`).
    pub fn handle_timeout(&mut self, now: Millis) -> Vec<Out> {
        if self.is_done() {
            return Vec::new();
        }
        if now >= self.hard_deadline {
            return vec![if self.cancel_requested {
                self.end_local(Condition::Cancelled, "cancelled; deadline passed")
            } else {
                self.end_local(
                    Condition::DeadlineExpired,
                    "no terminal stanza by deadline + 2 s",
                )
            }];
        }
        let mut out = Vec::new();
        // Retries never after the op deadline ([VAP-OPS-075]); per-IQ waits never past
        // deadline + grace ([VAP-OPS-063]).
        let limit = self.op_deadline;
        let wait_limit = self.hard_deadline;
        if let Some(p) = self.op_iq.as_mut() {
            if p.retry_at.is_some_and(|t| now >= t) {
                out.push(Output::Send(p.fire(now, wait_limit)));
            } else if p.retry_at.is_none() && now >= p.timeout_at {
                if p.schedule_retry(now, limit) {
                    // Already waited longer than the back-off: send at once.
                    out.push(Output::Send(p.fire(now, wait_limit)));
                } else {
                    out.push(self.end_local(
                        Condition::ResponderGone,
                        "no answer to the op IQ after the last attempt",
                    ));
                    return out;
                }
            }
        }
        if let Some(p) = self.cancel_iq.as_mut() {
            if p.retry_at.is_some_and(|t| now >= t) {
                out.push(Output::Send(p.fire(now, wait_limit)));
            } else if p.retry_at.is_none() && now >= p.timeout_at {
                if p.schedule_retry(now, limit) {
                    out.push(Output::Send(p.fire(now, wait_limit)));
                } else {
                    self.cancel_iq = None;
                }
            }
        }
        out
    }

    /// Whether an IQ set from `from` carrying `token` belongs to this call.
    pub fn owns_set(&self, from: &Jid, token: &OpToken) -> bool {
        from == &self.to
            && match &self.token {
                Some(t) => t == token,
                None => token.is_rotation_of(&self.request_token),
            }
    }

    /// An IQ set from the responder (ack, nack, data, final, error). The first output is always
    /// the IQ answer (`[VAP-OPS-031]`); a repeated IQ id is answered again and not processed
    /// (`[VAP-OPS-066]`, `[VAP-OPS-067]`).
    pub fn handle_iq_set(
        &mut self,
        from: &Jid,
        id: &str,
        payload: &Element,
        now: Millis,
    ) -> Vec<Out> {
        let _ = now;
        let mut out = vec![Output::Send(OutIq::result(from.clone(), id))];
        let decoded = VertebraPayload::from_element(payload);
        let token_attr = match decoded.as_ref().ok().and_then(VertebraPayload::op_token) {
            // The decoded per-op element carries the same token, already parsed.
            Some(t) => Some(t.clone()),
            None => payload.attr("token").and_then(|t| OpToken::parse(t).ok()),
        };
        let ours = token_attr.as_ref().is_some_and(|t| self.owns_set(from, t));
        let p = match decoded {
            Ok(p) => p,
            Err(e) => {
                if ours && !self.is_done() && !self.processed.contains(id) {
                    self.processed.insert(id.to_string());
                    // [VAP-ERR-007]
                    out.push(self.end_local(Condition::BadValue, e.to_string()));
                    return out;
                }
                if !ours {
                    // Not a stanza of this call: reject per [VAP-TRN-010] / [VAP-TRN-011].
                    if let Some(err) = ProtocolError::from(e).to_wire().to_stanza_error() {
                        out[0] = Output::Send(OutIq {
                            to: from.clone(),
                            id: id.to_string(),
                            body: IqBody::Error(err),
                        });
                    }
                }
                return out;
            }
        };
        if !ours || self.is_done() || !self.processed.insert(id.to_string()) {
            // Foreign, late ([VAP-OPS-046]) or duplicate: answered, otherwise ignored.
            return out;
        }
        if self.token.is_none() {
            self.token = token_attr;
        }
        match p {
            VertebraPayload::Ack(_) => {
                if !self.acked {
                    self.acked = true;
                    if self.phase == Phase::AwaitAck {
                        self.phase = Phase::Running;
                    }
                    out.push(Output::Event(CallEvent::Acked));
                }
            }
            VertebraPayload::Nack(n) => {
                // [VAP-OPS-032], [VAP-ERR-005]
                let c = match n.reason {
                    Condition::AuthorizationUnavailable => Condition::AuthorizationUnavailable,
                    _ => Condition::NotAuthorized,
                };
                out.push(self.end(OutcomeKind::Nack, Some(c), None));
            }
            VertebraPayload::Data(d) => out.extend(self.on_data(d)),
            VertebraPayload::Final(f) => out.extend(self.on_final(f)),
            VertebraPayload::Error(e) => out.push(self.on_error(e)),
            VertebraPayload::Op(_) | VertebraPayload::Cancel(_) | VertebraPayload::Load(_) => {}
        }
        out
    }

    fn check_seq(&mut self, seq: Option<u64>) -> Result<(), String> {
        // [VAP-OPS-038], [VAP-VER-013]
        match (self.seq_mode, seq) {
            (SeqMode::Unknown, Some(_)) => self.seq_mode = SeqMode::With,
            (SeqMode::Unknown, None) => self.seq_mode = SeqMode::Without,
            (SeqMode::With, Some(_)) | (SeqMode::Without, None) => {}
            (SeqMode::With, None) => return Err("data without seq after data with seq".into()),
            (SeqMode::Without, Some(_)) => {
                return Err("data with seq after data without seq".into())
            }
        }
        match seq {
            Some(s) if s != self.next_seq => {
                Err(format!("data seq {s}, expected {}", self.next_seq))
            }
            _ => Ok(()),
        }
    }

    fn deliver(&mut self, args: Args) -> Out {
        let seq = self.next_seq;
        self.next_seq += 1;
        Output::Event(CallEvent::Data { seq, args })
    }

    fn on_data(&mut self, d: Data) -> Vec<Out> {
        if !self.acked {
            return vec![self.end_local(Condition::OutOfOrder, "data before ack")];
        }
        if let Err(why) = self.check_seq(d.seq) {
            return vec![self.end_local(Condition::OutOfOrder, why)];
        }
        vec![self.deliver(d.args)]
    }

    fn on_final(&mut self, f: Final) -> Vec<Out> {
        if !self.acked {
            return vec![self.end_local(Condition::OutOfOrder, "final before ack")];
        }
        let mut out = Vec::new();
        if !f.args.is_empty() {
            out.push(self.deliver(f.args));
        }
        // [VAP-OPS-044], [VAP-VER-014]
        if let Some(c) = f.count {
            if c != self.next_seq {
                out.push(self.end_local(
                    Condition::OutOfOrder,
                    format!("final count {c}, received {} chunks", self.next_seq),
                ));
                return out;
            }
        }
        out.push(self.end(OutcomeKind::Final, None, None));
        out
    }

    fn on_error(&mut self, e: OpError) -> Out {
        // [VAP-ERR-004], [VAP-VER-016], [VAP-OPS-058]
        let c = e.condition.unwrap_or(Condition::Unspecified);
        self.end(OutcomeKind::Error(e.error_type), Some(c), e.reason)
    }
}
