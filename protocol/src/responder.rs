//! The responder state machine: one op received from one requester, sans-IO.
//!
//! Construct it with [`Responder::receive_op`] from the op IQ; it answers with the op result and
//! decides, with the caller's [`Route`] (is there a handler? is a cached authorization
//! decision known?), between IQ error, `no-handler`, nack, the fast path and the normal path.
//! Then feed it the application's events ([`Responder::authorize`], [`Responder::chunk`],
//! [`Responder::finish`], [`Responder::fail`]) and what arrives (IQ results/errors for its IQ
//! sets, cancel IQs, timeouts). It enforces: op result first (`[VAP-OPS-019]`), ack or nack
//! before data (`[VAP-OPS-028]`), work only after the ack's IQ result (`[VAP-OPS-029]`), `seq`
//! from 0 (`[VAP-OPS-034]`), the data window (`[VAP-OPS-035]`), final only after every data
//! result (`[VAP-OPS-041]`) with `count` (`[VAP-OPS-042]`), exactly one terminal stanza
//! (`[VAP-OPS-045]`), cancellation (`[VAP-OPS-055]`, `[VAP-OPS-057]`), the deadline
//! (`[VAP-OPS-060]`, `[VAP-OPS-061]`, `[VAP-OPS-064]`), retries (`[VAP-OPS-071]`…
//! `[VAP-OPS-075]`) and legacy rules (`[VAP-OPS-026]`, `[VAP-VER-006]`…`[VAP-VER-008]`).

use std::collections::{HashMap, HashSet, VecDeque};

use jid::Jid;
use minidom::Element;
use xmpp_parsers::stanza_error::StanzaError;

use crate::error::{Condition, ErrorType, ProtocolError, Travel, WireError};
use crate::machine::{
    classify_iq_error, IqBody, IqErrorClass, Millis, OutIq, Pending, Resend, Sent,
    AUTHORIZE_TIMEOUT_MS,
};
use crate::requester::Output;
use crate::stanza::{Ack, Data, Final, Nack, Op, OpError, OpResult, Version, VertebraPayload};
use crate::token::{OpToken, Token};
use crate::value::Args;

/// The caller's routing answer for a decoded op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// No handler serves this op type and scope (`[VAP-OPS-049]`, `[VAP-RES-016]`).
    NoHandler,
    /// The responder is at capacity (`[VAP-OPS-082]`).
    Overloaded,
    /// A handler exists. `cached` is an authorization decision already known (cache or local
    /// policy): `Some(true)` allows the fast path toward a 1.0 requester.
    Handler {
        /// Known decision, if any.
        cached: Option<bool>,
    },
}

/// An authorization decision (`[VAP-SEC-008]`, `[VAP-SEC-009]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `authorized`.
    Authorized,
    /// Anything else from the dispatcher.
    Denied,
    /// No usable answer (timeout, failed authorize op).
    Unavailable,
}

/// Events for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponderEvent {
    /// Ask for an authorization decision, then call [`Responder::authorize`] (within 2 s, or
    /// the machine nacks with `authorization-unavailable`).
    NeedAuthorization,
    /// Start the handler now.
    Start,
    /// Stop the handler: the op was cancelled or its deadline passed. Later handler events are
    /// ignored.
    Stop(Condition),
    /// The op is over (`None` = final delivered; else the terminal condition, or
    /// `responder-gone`-like local reasons when the requester stopped answering).
    Ended(Option<Condition>),
}

type Out = Output<ResponderEvent>;

/// Static settings of a responder.
#[derive(Debug, Clone)]
pub struct ResponderConfig {
    /// Our own full JID (tenant check, `[VAP-SEC-021]`).
    pub own_jid: Jid,
    /// Put the handler's last values on `<final>` toward 1.0 requesters (`[VAP-OPS-043]`).
    pub values_on_final: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the authorization decision.
    Authorizing,
    /// Ack sent, waiting for its IQ result.
    AckSent,
    /// Handler running.
    Running,
    /// A terminal stanza is decided (maybe waiting for data results before sending it).
    Closing,
    /// Over.
    Done,
}

/// One op on the responder side.
#[derive(Debug, Clone)]
pub struct Responder {
    requester: Jid,
    op_iq_id: String,
    op_result: OutIq,
    op: Option<Op>,
    token: Option<OpToken>,
    legacy: bool,
    window: usize,
    values_on_final: bool,
    phase: Phase,
    deadline: Millis,
    auth_deadline: Option<Millis>,
    next_id: u64,
    next_seq: u64,
    queue: VecDeque<Args>,
    data_out: HashMap<String, Pending>,
    control: Option<Pending>,
    /// The terminal stanza to send once all data results are in.
    terminal: Option<Resend>,
    terminal_sent: bool,
    end_condition: Option<Condition>,
    processed: HashSet<String>,
}

impl Responder {
    /// Receive an op IQ (`via_get` for an IQ of type get, accepted from legacy requesters only,
    /// `[VAP-TRN-012]`). `s` is the fresh responder token segment (`[VAP-OPS-002]`; use
    /// [`Token::generate`]). `route` is asked only for a decodable op of our own domain.
    #[allow(clippy::too_many_arguments)]
    pub fn receive_op(
        from: Jid,
        iq_id: &str,
        via_get: bool,
        payload: &Element,
        now: Millis,
        s: Token,
        cfg: &ResponderConfig,
        route: impl FnOnce(&Op) -> Route,
    ) -> (Self, Vec<Out>) {
        let mut r = Responder {
            requester: from.clone(),
            op_iq_id: iq_id.to_string(),
            op_result: OutIq::result(from.clone(), iq_id),
            op: None,
            token: None,
            legacy: false,
            window: usize::from(crate::stanza::DEFAULT_WINDOW),
            values_on_final: cfg.values_on_final,
            phase: Phase::Done,
            deadline: now + Millis::from(crate::stanza::LEGACY_TIMEOUT_MS),
            auth_deadline: None,
            next_id: 0,
            next_seq: 0,
            queue: VecDeque::new(),
            data_out: HashMap::new(),
            control: None,
            terminal: None,
            terminal_sent: false,
            end_condition: None,
            processed: HashSet::new(),
        };
        let mut out = Vec::new();
        let decoded = Op::decode(payload);
        // No usable token: the IQ itself is rejected ([VAP-OPS-006], [VAP-TRN-010/011]).
        let token = match &decoded {
            Ok(op) => Some(op.token.clone()),
            Err(e) => e.token.clone(),
        };
        let Some(request_token) = token else {
            let err = decoded.err().map(|e| e.error);
            let detail = err.as_ref().map_or(String::new(), ToString::to_string);
            let cond = err.map_or(Condition::BadRequest, |e| {
                if e.rule.condition() == Condition::ServiceUnavailable {
                    Condition::ServiceUnavailable
                } else {
                    Condition::BadRequest
                }
            });
            r.op_result = iq_error(&from, iq_id, cond, detail);
            r.end_condition = Some(Condition::BadRequest);
            out.push(Output::Send(r.op_result.clone()));
            out.push(Output::Event(ResponderEvent::Ended(
                r.end_condition.clone(),
            )));
            return (r, out);
        };
        let op_token = request_token.rotate(s); // [VAP-OPS-003]
        r.token = Some(op_token.clone());
        let legacy = match &decoded {
            Ok(op) => op.is_legacy(),
            Err(e) => e.version != Some(Version::V1_0),
        };
        r.legacy = legacy;
        if via_get && !legacy {
            r.op_result = iq_error(&from, iq_id, Condition::BadRequest, "1.0 ops go in IQ set");
            r.end_condition = Some(Condition::BadRequest);
            out.push(Output::Send(r.op_result.clone()));
            out.push(Output::Event(ResponderEvent::Ended(
                r.end_condition.clone(),
            )));
            return (r, out);
        }
        // Tenant isolation comes right after the token, before the version, the values and the
        // handler lookup ([VAP-SEC-021], order of checks [VAP-OPS-084]).
        if from.domain() != cfg.own_jid.domain() {
            r.send_op_result(false, &mut out);
            r.close_with_nack(Condition::NotAuthorized, now, &mut out);
            r.op = decoded.ok();
            return (r, out);
        }
        let op = match decoded {
            Ok(op) => op,
            Err(e) => {
                // [VAP-OPS-018], [VAP-OPS-051], [VAP-VER-004], [VAP-VER-011]
                r.send_op_result(false, &mut out);
                r.phase = Phase::Closing;
                let c = e.condition();
                r.close_with_error(c, e.error.to_string(), now, &mut out);
                return (r, out);
            }
        };
        r.deadline = now + Millis::from(op.timeout_ms()); // [VAP-OPS-060], [VAP-VER-006]
        r.window = usize::from(op.window());
        let decision = route(&op);
        r.op = Some(op);
        match decision {
            Route::NoHandler => {
                r.send_op_result(false, &mut out);
                r.close_with_error(
                    Condition::NoHandler,
                    "no handler for this operation",
                    now,
                    &mut out,
                );
            }
            Route::Overloaded => {
                r.send_op_result(false, &mut out);
                r.close_with_error(
                    Condition::Overloaded,
                    "responder at capacity",
                    now,
                    &mut out,
                );
            }
            Route::Handler { cached: Some(true) } if !r.legacy => {
                // Fast path ([VAP-OPS-024], [VAP-OPS-025]): work starts now ([VAP-OPS-029]).
                r.send_op_result(true, &mut out);
                r.phase = Phase::Running;
                out.push(Output::Event(ResponderEvent::Start));
            }
            Route::Handler { cached: Some(true) } => {
                r.send_op_result(false, &mut out);
                r.send_ack(now, &mut out);
            }
            Route::Handler {
                cached: Some(false),
            } => {
                r.send_op_result(false, &mut out);
                r.close_with_nack(Condition::NotAuthorized, now, &mut out);
            }
            Route::Handler { cached: None } => {
                r.send_op_result(false, &mut out);
                r.phase = Phase::Authorizing;
                r.auth_deadline = Some(now + AUTHORIZE_TIMEOUT_MS);
                out.push(Output::Event(ResponderEvent::NeedAuthorization));
            }
        }
        (r, out)
    }

    /// The requester's full JID.
    pub fn requester(&self) -> &Jid {
        &self.requester
    }
    /// The decoded op (None when it could not be decoded).
    pub fn op(&self) -> Option<&Op> {
        self.op.as_ref()
    }
    /// The composite token T:S (None when the token was unusable).
    pub fn token(&self) -> Option<&OpToken> {
        self.token.as_ref()
    }
    /// IQ id of the op IQ.
    pub fn op_iq_id(&self) -> &str {
        &self.op_iq_id
    }
    /// The answer sent to the op IQ (re-sent for a retransmitted op IQ, `[VAP-OPS-066]`).
    pub fn op_answer(&self) -> &OutIq {
        &self.op_result
    }
    /// True once over.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }
    /// True while the handler may produce chunks.
    pub fn is_running(&self) -> bool {
        self.phase == Phase::Running
    }
    /// How the op ended, once done (`None` = success).
    pub fn end_condition(&self) -> Option<&Condition> {
        self.end_condition.as_ref()
    }
    /// Whether an IQ answer from `from` with `id` belongs to this op.
    pub fn owns_answer(&self, from: &Jid, id: &str) -> bool {
        from == &self.requester
            && (self.data_out.contains_key(id)
                || self.control.as_ref().is_some_and(|p| p.iq.id == id))
    }
    /// Chunks accepted from the handler and not sent yet (waiting for room in the data window,
    /// `[VAP-OPS-035]`). A shell uses it to hold a streaming handler back.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
    /// Ids of the IQ sets this op is waiting on.
    pub fn pending_ids(&self) -> impl Iterator<Item = &str> {
        self.data_out
            .keys()
            .map(String::as_str)
            .chain(self.control.iter().map(|p| p.iq.id.as_str()))
    }

    /// When to call [`Responder::handle_timeout`] next.
    pub fn next_timeout(&self) -> Option<Millis> {
        if self.is_done() {
            return None;
        }
        let mut t = self.deadline;
        if let Some(a) = self.auth_deadline {
            t = t.min(a);
        }
        for p in self.data_out.values().chain(self.control.iter()) {
            t = t.min(p.next_wakeup());
        }
        Some(t)
    }

    /// A fresh IQ id for one of our IQ sets (`[VAP-OPS-036]`, `[VAP-OPS-069]`): the first 64
    /// bits of this op's random S (unique per op with overwhelming probability, and shorter on
    /// the wire than all 128) and a counter within the op.
    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        let s = self.token.as_ref().map_or("x", |t| t.responder.as_str());
        let s = s.get(..16).unwrap_or(s);
        format!("v{s}-{}", self.next_id)
    }

    fn send_op_result(&mut self, ack: bool, out: &mut Vec<Out>) {
        let Some(token) = self.token.clone() else {
            return;
        };
        // `op_result` is already addressed to (requester, op IQ id) since `receive_op`.
        self.op_result.body = IqBody::Result(Some(OpResult { token, ack }.to_element()));
        out.push(Output::Send(self.op_result.clone()));
    }

    fn send_control(&mut self, payload: Resend, now: Millis, out: &mut Vec<Out>) {
        let id = self.fresh_id();
        let (iq, sent) = Sent::first(self.requester.clone(), id, payload);
        self.control = Some(Pending::new(sent, now, self.deadline));
        out.push(Output::Send(iq));
    }

    fn send_ack(&mut self, now: Millis, out: &mut Vec<Out>) {
        let Some(token) = self.token.clone() else {
            return;
        };
        self.phase = Phase::AckSent;
        self.send_control(Resend::Element(Ack { token }.to_element()), now, out);
    }

    fn close_with_nack(&mut self, reason: Condition, now: Millis, out: &mut Vec<Out>) {
        let Some(token) = self.token.clone() else {
            return;
        };
        self.phase = Phase::Closing;
        self.end_condition = Some(reason.clone());
        self.terminal_sent = true;
        self.send_control(
            Resend::Element(Nack { token, reason }.to_element()),
            now,
            out,
        );
    }

    /// Decide a terminal error; it is sent when no data IQ is outstanding
    /// (`[VAP-OPS-052]`), or at once for `deadline-expired`.
    fn close_with_error(
        &mut self,
        c: Condition,
        reason: impl Into<String>,
        now: Millis,
        out: &mut Vec<Out>,
    ) {
        let Some(token) = self.token.clone() else {
            return;
        };
        let error_type = match c.travel() {
            Travel::Error(t) => t,
            _ => ErrorType::Error,
        };
        self.phase = Phase::Closing;
        self.queue.clear();
        self.end_condition = Some(c.clone());
        let el = OpError {
            token,
            error_type,
            condition: Some(c.clone()),
            reason: Some(reason.into()),
        }
        .to_element();
        if c == Condition::DeadlineExpired {
            self.data_out.clear();
        }
        self.terminal = Some(Resend::Element(el));
        self.flush(now, out);
    }

    /// Send queued data within the window, then the terminal stanza when allowed.
    fn flush(&mut self, now: Millis, out: &mut Vec<Out>) {
        if self.terminal_sent {
            return;
        }
        let Some(token) = self.token.clone() else {
            return;
        };
        let may_send_data =
            matches!(self.phase, Phase::Running | Phase::Closing) && self.control.is_none();
        while may_send_data && self.data_out.len() < self.window {
            let Some(args) = self.queue.pop_front() else {
                break;
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let id = self.fresh_id();
            let (iq, sent) = Sent::first(
                self.requester.clone(),
                id.clone(),
                Resend::Data(Data {
                    token: token.clone(),
                    seq: Some(seq), // [VAP-OPS-034], also toward legacy ([VAP-VER-008])
                    args,
                }),
            );
            self.data_out
                .insert(id, Pending::new(sent, now, self.deadline));
            out.push(Output::Send(iq));
        }
        if self.queue.is_empty() && self.data_out.is_empty() && self.control.is_none() {
            if let Some(t) = self.terminal.take() {
                self.terminal_sent = true;
                self.send_control(t, now, out);
            }
        }
    }

    fn finish_done(&mut self, out: &mut Vec<Out>) {
        if self.phase != Phase::Done {
            self.phase = Phase::Done;
            self.data_out.clear();
            self.control = None;
            self.queue.clear();
            out.push(Output::Event(ResponderEvent::Ended(
                self.end_condition.clone(),
            )));
        }
    }

    /// The authorization decision arrived (`[VAP-SEC-008]`, `[VAP-SEC-009]`).
    pub fn authorize(&mut self, decision: Decision, now: Millis) -> Vec<Out> {
        let mut out = Vec::new();
        if self.phase != Phase::Authorizing {
            return out;
        }
        self.auth_deadline = None;
        match decision {
            Decision::Authorized => self.send_ack(now, &mut out),
            Decision::Denied => self.close_with_nack(Condition::NotAuthorized, now, &mut out),
            Decision::Unavailable => {
                self.close_with_nack(Condition::AuthorizationUnavailable, now, &mut out)
            }
        }
        out
    }

    fn check_running(&self, what: &str) -> Result<(), ProtocolError> {
        match self.phase {
            Phase::Running => Ok(()),
            // After cancel/deadline the handler may still emit: ignored, not an error.
            Phase::Closing | Phase::Done if self.end_condition.is_some() => {
                Err(ProtocolError::new(
                    crate::error::Fault::CallerMisuse,
                    Condition::Cancelled,
                    format!("{what} after the op ended"),
                ))
            }
            _ => Err(ProtocolError::misuse(format!(
                "{what} before the handler was started"
            ))),
        }
    }

    /// The handler produced a chunk of values (queued; sent within the window).
    pub fn chunk(&mut self, args: Args, now: Millis) -> Result<Vec<Out>, ProtocolError> {
        self.check_running("chunk")?;
        args.validate()
            .map_err(|e| ProtocolError::misuse(e.to_string()))?;
        self.queue.push_back(args);
        let mut out = Vec::new();
        self.flush(now, &mut out);
        Ok(out)
    }

    /// The handler finished; `last` values go on `<final>` toward a 1.0 requester when
    /// configured (`[VAP-OPS-043]`), else as a last data chunk (`[VAP-VER-007]`).
    pub fn finish(&mut self, last: Option<Args>, now: Millis) -> Result<Vec<Out>, ProtocolError> {
        self.check_running("finish")?;
        let token = self.token.clone().expect("running ops have a token");
        let mut on_final = Args::new();
        if let Some(args) = last.filter(|a| !a.is_empty()) {
            args.validate()
                .map_err(|e| ProtocolError::misuse(e.to_string()))?;
            if self.values_on_final && !self.legacy {
                on_final = args;
            } else {
                self.queue.push_back(args);
            }
        }
        let count = self.next_seq + self.queue.len() as u64 + u64::from(!on_final.is_empty()); // [VAP-OPS-042]
        self.phase = Phase::Closing;
        self.terminal = Some(Resend::Final(Final {
            token,
            count: Some(count),
            args: on_final,
        }));
        let mut out = Vec::new();
        self.flush(now, &mut out);
        Ok(out)
    }

    /// The handler failed (`[VAP-OPS-050]`: `handler-failed`; also `internal-error`). Only
    /// conditions that travel as an error are allowed (`[VAP-ERR-001]`); `reason` must be public
    /// text (`[VAP-SEC-024]`).
    pub fn fail(
        &mut self,
        condition: Condition,
        reason: impl Into<String>,
        now: Millis,
    ) -> Result<Vec<Out>, ProtocolError> {
        self.check_running("fail")?;
        if !matches!(condition.travel(), Travel::Error(_)) {
            return Err(ProtocolError::misuse(format!(
                "{condition} is not an error condition"
            )));
        }
        let mut out = Vec::new();
        self.close_with_error(condition, reason, now, &mut out);
        Ok(out)
    }

    /// An IQ result arrived for one of our IQ sets.
    pub fn handle_iq_result(&mut self, from: &Jid, id: &str, now: Millis) -> Vec<Out> {
        let mut out = Vec::new();
        if from != &self.requester || self.is_done() {
            return out;
        }
        if self.data_out.remove(id).is_some() {
            self.flush(now, &mut out);
            return out;
        }
        if self.control.as_ref().is_none_or(|p| p.iq.id != id) {
            return out;
        }
        self.control = None;
        match self.phase {
            Phase::AckSent => {
                // [VAP-OPS-029]: work starts after the ack's IQ result.
                self.phase = Phase::Running;
                out.push(Output::Event(ResponderEvent::Start));
                self.flush(now, &mut out);
            }
            Phase::Closing if self.terminal_sent => self.finish_done(&mut out),
            _ => self.flush(now, &mut out),
        }
        out
    }

    /// An IQ error arrived for one of our IQ sets: retry if allowed, else the requester is
    /// gone and the op ends silently.
    pub fn handle_iq_error(
        &mut self,
        from: &Jid,
        id: &str,
        error: &StanzaError,
        now: Millis,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        if from != &self.requester || self.is_done() {
            return out;
        }
        let class = classify_iq_error(error);
        let limit = self.deadline;
        let retry = matches!(class, IqErrorClass::RetryWait | IqErrorClass::RetryGone);
        let p = if let Some(p) = self.data_out.get_mut(id) {
            p
        } else if let Some(p) = self.control.as_mut().filter(|p| p.iq.id == id) {
            p
        } else {
            return out;
        };
        if retry && p.schedule_retry(now, limit) {
            return out;
        }
        self.gone(&mut out);
        out
    }

    fn gone(&mut self, out: &mut Vec<Out>) {
        let was_running = matches!(
            self.phase,
            Phase::Running | Phase::AckSent | Phase::Authorizing
        );
        if self.end_condition.is_none() && !self.terminal_sent {
            self.end_condition = Some(Condition::Other("requester-gone".into()));
        }
        if was_running {
            out.push(Output::Event(ResponderEvent::Stop(Condition::Other(
                "requester-gone".into(),
            ))));
        }
        self.finish_done(out);
    }

    /// Our XMPP session was lost (`[VAP-OPS-081]`): the op is neither resumed nor continued.
    /// Nothing is sent (answers would reach no one, and a new session must not carry on the
    /// op); the handler is stopped and the op ends with the local condition `session-lost`.
    pub fn abandon(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        if self.is_done() {
            return out;
        }
        let running = matches!(
            self.phase,
            Phase::Running | Phase::AckSent | Phase::Authorizing
        );
        if running {
            out.push(Output::Event(ResponderEvent::Stop(Condition::Other(
                "session-lost".into(),
            ))));
        }
        if self.end_condition.is_none() {
            self.end_condition = Some(Condition::Other("session-lost".into()));
        }
        self.terminal = None;
        self.finish_done(&mut out);
        out
    }

    /// An IQ set from the requester: a cancel (or anything else for this op). The first output
    /// is the IQ answer (`[VAP-OPS-054]`).
    pub fn handle_iq_set(
        &mut self,
        from: &Jid,
        id: &str,
        payload: &Element,
        now: Millis,
    ) -> Vec<Out> {
        let mut out = vec![Output::Send(OutIq::result(from.clone(), id))];
        // [VAP-OPS-057], [VAP-SEC-005]: only the requester may cancel.
        if from != &self.requester || self.is_done() || !self.processed.insert(id.to_string()) {
            return out;
        }
        if let Ok(VertebraPayload::Cancel(c)) = VertebraPayload::from_element(payload) {
            if Some(&c.token) != self.token.as_ref()
                || self.terminal_sent
                || self.terminal.is_some()
            {
                return out;
            }
            // [VAP-OPS-055]
            let running = matches!(
                self.phase,
                Phase::Running | Phase::AckSent | Phase::Authorizing
            );
            self.auth_deadline = None;
            if running {
                out.push(Output::Event(ResponderEvent::Stop(Condition::Cancelled)));
            }
            self.control = None;
            self.close_with_error(
                Condition::Cancelled,
                "cancelled by requester",
                now,
                &mut out,
            );
        }
        out
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Millis) -> Vec<Out> {
        let mut out = Vec::new();
        if self.is_done() {
            return out;
        }
        if now >= self.deadline {
            // [VAP-OPS-061]; never wait past the deadline ([VAP-OPS-064]).
            if !self.terminal_sent {
                let running = matches!(
                    self.phase,
                    Phase::Running | Phase::AckSent | Phase::Authorizing
                );
                if running {
                    out.push(Output::Event(ResponderEvent::Stop(
                        Condition::DeadlineExpired,
                    )));
                }
                self.control = None;
                self.close_with_error(
                    Condition::DeadlineExpired,
                    "deadline expired",
                    now,
                    &mut out,
                );
            }
            self.finish_done(&mut out);
            return out;
        }
        if self.auth_deadline.is_some_and(|t| now >= t) {
            self.auth_deadline = None;
            out.extend(self.authorize(Decision::Unavailable, now));
        }
        let limit = self.deadline;
        let mut gone = false;
        for p in self.data_out.values_mut().chain(self.control.iter_mut()) {
            if p.retry_at.is_some_and(|t| now >= t) {
                out.push(Output::Send(p.fire(now, limit)));
            } else if p.retry_at.is_none() && now >= p.timeout_at {
                if p.schedule_retry(now, limit) {
                    out.push(Output::Send(p.fire(now, limit)));
                } else {
                    gone = true;
                }
            }
        }
        if gone {
            self.gone(&mut out);
        }
        out
    }
}

fn iq_error(to: &Jid, id: &str, c: Condition, text: impl Into<String>) -> OutIq {
    let e = ProtocolError::new(crate::error::Fault::Malformed, c, text);
    let body = match e.to_wire() {
        WireError::Iq { .. } => e
            .to_wire()
            .to_stanza_error()
            .map(IqBody::Error)
            .unwrap_or(IqBody::Result(None)),
        _ => IqBody::Result(None),
    };
    OutIq {
        to: to.clone(),
        id: id.to_string(),
        body,
    }
}
