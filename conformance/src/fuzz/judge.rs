//! Stanza-level oracles, fed with what the harness sent and what the implementation sent back.
//! Pure (no I/O): the fuzzer runs them live, `replay --offline` re-runs them over a recorded
//! trace with whatever the current oracles are.

use super::tracefile::Finding;
use crate::cases::util::leaks_internals;
use crate::peer::{NS, NS_STANZAS};
use minidom::Element;
use std::collections::{BTreeSet, HashMap, HashSet};
use vertebra_protocol::{Condition, OpResult, RequestToken, VertebraPayload};

/// IQ-level error conditions a Vertebra entity may send ([VAP-TRN-010], [VAP-TRN-011],
/// [VAP-OPS-006]); `feature-not-implemented` for a legacy IQ get it does not serve.
const IQ_ERRORS: &[&str] = &[
    "bad-request",
    "service-unavailable",
    "feature-not-implemented",
];

/// Responder `<error>` conditions of the error table ([VAP-ERR-001]).
const OP_ERRORS: &[&str] = &[
    "no-handler",
    "bad-value",
    "overloaded",
    "handler-failed",
    "internal-error",
    "cancelled",
    "deadline-expired",
    "unsupported-version",
];

/// Judge pseudo-identity of an injected op whose `from` is in another XMPP domain: it must be
/// nacked and never run ([VAP-SEC-021]), so its increments are not expected by the counter.
pub const VIA_FOREIGN: &str = "foreign";

/// nack reasons ([VAP-ERR-002]).
const NACK_REASONS: &[&str] = &["not-authorized", "authorization-unavailable"];

#[derive(Debug, Clone)]
struct Request {
    /// How long the harness waits for this op's terminal when settling (legacy ops and
    /// unusable timeouts: not at all).
    wait: std::time::Duration,
    /// The (via, IQ id) was reused with another payload (an IQ id collision).
    collided: bool,
    payload: String,
    op_type: String,
    token: String,
    counter_inc: bool,
    fail_reason: Option<String>,
    fail_condition: Option<String>,
    /// Step index that sent it (coverage signatures).
    step: usize,
    /// Sent to a process that has since been restarted: it can no longer be answered.
    dead: bool,
}

#[derive(Debug, Clone)]
struct OpState {
    /// Until when settling waits for its terminal.
    until: std::time::Instant,
    via: String,
    counter_inc: bool,
    acked: bool,
    terminal: bool,
    fail: bool,
    fail_reason: Option<String>,
    /// In progress when the target lost its XMPP session ([VAP-OPS-081]): no further
    /// progress (ack, data, final) may come for it.
    lost: bool,
    /// Ran in a process that has since been restarted (left out of the counter model).
    dead: bool,
}

/// The oracles' memory of one execution.
#[derive(Default)]
pub struct Judge {
    /// Full JID (or bare) of the implementation under test.
    pub target: String,
    requests: HashMap<(String, String), Request>,
    /// Canonical first answer per (via, IQ id), and the payload it answered.
    answers: HashMap<(String, String), (String, String)>,
    ops: HashMap<String, OpState>,
    /// Composite token per (via, IQ id) of an op.
    pub composite: HashMap<(String, String), String>,
    pub findings: Vec<Finding>,
    /// Step index the current events belong to.
    pub step: usize,
    pub stanzas_judged: u64,
    /// Last segments (lowercase) of the request tokens sent in this execution: lifecycle
    /// stanzas for other ops (late traffic of an earlier execution) are not judged.
    mine: HashSet<String>,
    /// Response events per step index (coverage feedback).
    events: HashMap<usize, BTreeSet<String>>,
    /// Target state per step index when it was sent (coverage feedback).
    state: HashMap<usize, String>,
}

fn canon_answer(el: &Element) -> String {
    let ty = el.attr("type").unwrap_or("");
    if ty == "error" {
        let cond = el
            .get_child("error", crate::peer::NS_CLIENT)
            .or_else(|| el.children().find(|c| c.name() == "error"))
            .and_then(|e| {
                e.children()
                    .find(|c| c.ns() == NS_STANZAS && c.name() != "text")
            })
            .map(|c| c.name().to_string())
            .unwrap_or_default();
        format!("error:{cond}")
    } else {
        match el.get_child("op", NS) {
            Some(op) => format!("result:op:{}", op.attr("token").unwrap_or("")),
            None => "result".to_string(),
        }
    }
}

fn named_text(el: &Element, name: &str) -> Option<String> {
    el.children()
        .find(|c| c.attr("name") == Some(name))
        .map(|c| c.text())
}

impl Judge {
    pub fn new(target: &str) -> Judge {
        Judge {
            target: target.to_string(),
            ..Default::default()
        }
    }

    fn find(&mut self, oracle: &str, req: &str, detail: String) {
        if self.findings.iter().any(|f| f.oracle == oracle) {
            return;
        }
        self.findings.push(Finding {
            oracle: oracle.into(),
            requirement: req.into(),
            detail,
            at_step: self.step,
        });
    }

    fn sent_by_target(&self, el: &Element) -> bool {
        match el.attr("from") {
            Some(f) => f == self.target || crate::cases::util::same_jid(f, &self.target),
            None => false,
        }
    }

    /// Remember a request token as this execution's (probes call this too).
    pub fn own_token(&mut self, token: &str) {
        if let Some(last) = token.rsplit(':').next() {
            self.mine.insert(last.to_ascii_lowercase());
        }
    }

    fn is_mine(&self, composite: &str) -> bool {
        let x = composite
            .split(':')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        self.mine.contains(&x)
    }

    /// The harness sent `el` (a whole stanza) through identity `via`.
    pub fn on_sent(&mut self, via: &str, el: &Element) {
        if el.name() != "iq" {
            return;
        }
        let ty = el.attr("type").unwrap_or("");
        if ty != "set" && ty != "get" {
            return;
        }
        let id = el.attr("id").unwrap_or("").to_string();
        let Some(child) = el.children().next() else {
            return;
        };
        let payload = String::from(child);
        let op_type = child.attr("type").unwrap_or("").to_string();
        let read = named_text(child, "read")
            .map(|t| matches!(t.trim(), "1" | "true"))
            .unwrap_or(false);
        let is_op = child.is("op", NS);
        if is_op {
            // Its lifecycle stanzas are this execution's to judge.
            if let Some(t) = child.attr("token") {
                self.own_token(t);
            }
        }
        let key = (via.to_string(), id);
        let collided = self
            .requests
            .get(&key)
            .is_some_and(|r| r.collided || r.payload != payload);
        let wait_ms = match (
            child.attr("version"),
            child.attr("timeout").and_then(|t| t.parse::<u64>().ok()),
        ) {
            (Some(_), Some(ms)) if ms > 0 => ms.min(4000) + 500,
            _ => 0,
        };
        let req = Request {
            wait: std::time::Duration::from_millis(wait_ms),
            collided,
            payload,
            token: child.attr("token").unwrap_or("").to_string(),
            counter_inc: is_op && op_type.ends_with("/vertebra/test/counter") && !read,
            fail_reason: (is_op && op_type.ends_with("/vertebra/test/fail"))
                .then(|| named_text(child, "reason").unwrap_or_default()),
            fail_condition: (is_op && op_type.ends_with("/vertebra/test/fail"))
                .then(|| named_text(child, "condition").unwrap_or_default()),
            op_type,
            step: self.step,
            dead: false,
        };
        self.requests.insert(key, req);
    }

    /// The harness identity `via` received `el` (a whole stanza).
    pub fn on_received(&mut self, via: &str, el: &Element) {
        if !self.sent_by_target(el) {
            return;
        }
        self.stanzas_judged += 1;
        match el.name() {
            "iq" => self.on_iq(via, el),
            "presence" => {
                if let Some(l) = el.get_child("load", NS) {
                    if let Err(e) = vertebra_protocol::Load::from_element(l) {
                        self.find(
                            "invalid-stanza",
                            "VAP-LOAD-001",
                            format!("load presence does not decode ({e}): {}", String::from(el)),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    fn on_iq(&mut self, via: &str, el: &Element) {
        let ty = el.attr("type").unwrap_or("");
        let id = el.attr("id").unwrap_or("").to_string();
        match ty {
            "result" | "error" => {
                let key = (via.to_string(), id.clone());
                let Some(req) = self.requests.get(&key).cloned() else {
                    return;
                };
                let ans = canon_answer(el);
                self.event(
                    req.step,
                    format!("iq-{}", ans.split(":op:").next().unwrap_or("")),
                );
                if let Some((first, payload)) = self.answers.get(&key) {
                    if *payload == req.payload && *first != ans {
                        let d = format!(
                            "IQ id {id:?} from {via} sent twice with the same payload; first answer {first}, then {ans} (the repeat was processed again)"
                        );
                        self.find("duplicate-reexecuted", "VAP-OPS-067", d);
                    }
                } else {
                    self.answers
                        .insert(key.clone(), (ans.clone(), req.payload.clone()));
                }
                if ty == "error" {
                    let cond = ans.trim_start_matches("error:").to_string();
                    if !IQ_ERRORS.contains(&cond.as_str()) {
                        self.find(
                            "error-taxonomy",
                            "VAP-ERR-001",
                            format!(
                                "IQ error condition {cond:?} is not one the spec allows: {}",
                                String::from(el)
                            ),
                        );
                    }
                    let text: String = el
                        .children()
                        .flat_map(|e| e.children())
                        .filter(|c| c.name() == "text")
                        .map(|c| c.text())
                        .collect();
                    if let Some(w) = leaks_internals(&text) {
                        self.find(
                            "leak",
                            "VAP-SEC-024",
                            format!("IQ error text contains {w}: {text:?}"),
                        );
                    }
                    return;
                }
                if let Some(op) = el.get_child("op", NS) {
                    match OpResult::from_element(op) {
                        Err(e) => self.find(
                            "invalid-stanza",
                            "VAP-OPS-019",
                            format!("op result does not decode ({e}): {}", String::from(el)),
                        ),
                        Ok(r) => {
                            let tok = op.attr("token").unwrap_or("").to_string();
                            let parsed = RequestToken::parse(&req.token)
                                .ok()
                                .filter(|_| !req.collided);
                            if let Some(rt) = parsed {
                                let x = rt.to_string();
                                let last = x.rsplit(':').next().unwrap_or("");
                                let got = tok.split(':').next().unwrap_or("");
                                if !last.eq_ignore_ascii_case(got) {
                                    self.find(
                                        "invalid-stanza",
                                        "VAP-OPS-003",
                                        format!("composite token {tok:?} does not start with the last segment of {:?}", req.token),
                                    );
                                }
                            }
                            self.composite.insert(key.clone(), tok.clone());
                            let st = self.ops.entry(tok).or_insert(OpState {
                                until: std::time::Instant::now() + req.wait,
                                via: via.to_string(),
                                counter_inc: req.counter_inc,
                                acked: false,
                                terminal: false,
                                fail: req.fail_condition.is_some(),
                                fail_reason: req.fail_reason.clone(),
                                lost: false,
                                dead: false,
                            });
                            if r.ack {
                                st.acked = true;
                            }
                            let ev = if r.ack { "op-result+ack" } else { "op-result" };
                            self.event(req.step, ev.to_string());
                            let _ = &req.op_type;
                        }
                    }
                }
            }
            "set" => {
                let Some(child) = el.children().next() else {
                    return;
                };
                if child.ns() != NS {
                    return;
                }
                // Lifecycle stanzas of ops this execution did not start are not judged (late
                // traffic of an earlier execution); ops the target starts itself always are.
                if child.name() != "op" && !self.is_mine(child.attr("token").unwrap_or("")) {
                    return;
                }
                let p = match VertebraPayload::from_element(child) {
                    Ok(p) => p,
                    Err(e) => {
                        self.find(
                            "invalid-stanza",
                            "VAP-VAL-001",
                            format!(
                                "<{}> from the target does not decode ({e}): {}",
                                child.name(),
                                String::from(el)
                            ),
                        );
                        return;
                    }
                };
                let tok = child.attr("token").unwrap_or("").to_string();
                let name = child.name().to_string();
                let known = self.ops.get(&tok).cloned();
                if let Some(st) = &known {
                    if st.lost && matches!(name.as_str(), "ack" | "data" | "final") {
                        self.find(
                            "continued-after-session-loss",
                            "VAP-OPS-081",
                            format!("<{name}> for op {tok}, which was in progress when the target lost its XMPP session"),
                        );
                    }
                    if st.terminal {
                        self.find(
                            "after-terminal",
                            "VAP-OPS-045",
                            format!("<{name}> for op {tok} after its terminal stanza"),
                        );
                    }
                    if st.via == super::tracefile::VIA_STRANGER
                        && matches!(name.as_str(), "ack" | "data" | "final")
                    {
                        self.find(
                            "refused-executed",
                            "VAP-SEC-008",
                            format!("the denied stranger's op {tok} got <{name}> (it must be nacked and never run)"),
                        );
                    }
                }
                match &p {
                    VertebraPayload::Error(e) => {
                        let cond = e
                            .condition
                            .as_ref()
                            .map(|c| c.as_str().to_string())
                            .unwrap_or_default();
                        let fail = known.as_ref().is_some_and(|k| k.fail);
                        if !fail && !OP_ERRORS.contains(&cond.as_str()) {
                            self.find(
                                "error-taxonomy",
                                "VAP-ERR-001",
                                format!("<error condition={cond:?}> is not a responder condition of the error table"),
                            );
                        }
                        if let Some(c) = &e.condition {
                            if !fail
                                && !matches!(c, Condition::Other(_))
                                && c.error_type() != e.error_type
                            {
                                self.find(
                                    "error-taxonomy",
                                    "VAP-ERR-001",
                                    format!("<error condition={cond:?} type={:?}>: the table assigns type {:?}", e.error_type.as_str(), c.error_type().as_str()),
                                );
                            }
                        }
                        let reason = e.reason.clone().unwrap_or_default();
                        let echoed = known
                            .as_ref()
                            .and_then(|k| k.fail_reason.as_ref())
                            .is_some_and(|r| *r == reason);
                        if !echoed {
                            if let Some(w) = leaks_internals(&reason) {
                                self.find(
                                    "leak",
                                    "VAP-SEC-024",
                                    format!("error reason contains {w}: {reason:?}"),
                                );
                            }
                        }
                    }
                    VertebraPayload::Nack(n) => {
                        let r = n.reason.as_str().to_string();
                        if !NACK_REASONS.contains(&r.as_str()) {
                            self.find(
                                "error-taxonomy",
                                "VAP-ERR-002",
                                format!("nack reason {r:?}"),
                            );
                        }
                    }
                    _ => {}
                }
                if let Some(st) = self.ops.get_mut(&tok) {
                    match name.as_str() {
                        "ack" => st.acked = true,
                        "nack" | "final" | "error" => st.terminal = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    /// Counter accounting: (acked increments, increments still undecided).
    pub fn counter_model(&self) -> (i64, i64) {
        let counted = |via: &str| via != super::tracefile::VIA_STRANGER && via != VIA_FOREIGN;
        let mut acked = 0;
        let mut open = 0;
        for st in self.ops.values() {
            if st.counter_inc && !st.dead && counted(&st.via) {
                if st.acked {
                    acked += 1;
                } else if !st.terminal || st.lost {
                    // A call lost with the session may or may not have run.
                    open += 1;
                }
            }
        }
        // Requests with no op result yet are undecided too.
        let answered: HashSet<&(String, String)> = self.composite.keys().collect();
        for (k, r) in &self.requests {
            if r.counter_inc
                && !r.dead
                && counted(&k.0)
                && !answered.contains(k)
                && !self.answers.contains_key(k)
            {
                open += 1;
            }
        }
        (acked, open)
    }

    /// Ops still without a terminal stanza (for settling).
    pub fn open_ops(&self) -> usize {
        let now = std::time::Instant::now();
        self.ops
            .values()
            .filter(|s| !s.terminal && !s.lost && s.until > now)
            .count()
    }

    /// The target lost its XMPP session (cut connection; `restarted`: a new process). Call it
    /// after everything the target sent before the loss has been judged: from then on, an
    /// ack, data or final for an op that was in progress is a finding ([VAP-OPS-081]). A
    /// restarted process also forgets its counter and its duplicate memory, so what it ran
    /// before leaves the counter model and repeated IQ sets are judged afresh.
    pub fn session_lost(&mut self, restarted: bool) {
        for st in self.ops.values_mut() {
            if !st.terminal {
                st.lost = true;
            }
            if restarted {
                st.dead = true;
            }
        }
        if restarted {
            for r in self.requests.values_mut() {
                r.dead = true;
            }
            self.answers.clear();
        }
    }

    fn event(&mut self, step: usize, ev: String) {
        let set = self.events.entry(step).or_default();
        if set.len() < 16 {
            set.insert(ev);
        }
    }

    /// Remember the target's state when step `step` was sent (coverage signatures). It is
    /// derived from the inputs (splitting writes or not, how long ago the target last lost its
    /// session), not from timing, so that a seed gives the same inputs against a target that
    /// answers the same way.
    pub fn note_state(&mut self, step: usize, split: bool, since_loss: Option<usize>) {
        let age = match since_loss {
            None => "fresh",
            Some(0) => "just-reconnected",
            Some(1..=3) => "recently-reconnected",
            Some(_) => "reconnected",
        };
        let s = if split {
            format!("split,{age}")
        } else {
            age.to_string()
        };
        self.state.insert(step, s);
    }

    /// Coverage signature of step `step`: what it was (`what`), the kind of IQ answer the
    /// target gave to it (IQ result or error condition, op result with or without ack) and the
    /// target's state when it was sent. Later lifecycle stanzas are left out: whether they
    /// arrive before the signature is taken depends on timing, and the signature decides the
    /// next inputs, which must follow from the seed.
    pub fn signature(&self, step: usize, what: &str) -> String {
        let ev: Vec<&str> = self
            .events
            .get(&step)
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default();
        format!(
            "{what}|{}|{}",
            if ev.is_empty() {
                "silence".to_string()
            } else {
                ev.join(",")
            },
            self.state.get(&step).map(String::as_str).unwrap_or("-")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(s: &str) -> Element {
        s.parse().unwrap()
    }

    #[test]
    fn duplicate_with_a_new_token_is_a_finding() {
        let mut j = Judge::new("a@x/a");
        let sent = el("<iq xmlns='jabber:client' type='set' id='i1' to='a@x/a'><op xmlns='http://xmlschema.engineyard.com/agent/api' version='1.0' token='0123456789abcdef0123456789abcdef' type='/vertebra/test/echo' timeout='5000'/></iq>");
        j.on_sent("requester", &sent);
        j.on_received("requester", &el("<iq xmlns='jabber:client' type='result' id='i1' from='a@x/a'><op xmlns='http://xmlschema.engineyard.com/agent/api' token='0123456789abcdef0123456789abcdef:11111111111111111111111111111111'/></iq>"));
        assert!(j.findings.is_empty(), "{:?}", j.findings);
        j.on_sent("requester", &sent);
        j.on_received("requester", &el("<iq xmlns='jabber:client' type='result' id='i1' from='a@x/a'><op xmlns='http://xmlschema.engineyard.com/agent/api' token='0123456789abcdef0123456789abcdef:22222222222222222222222222222222'/></iq>"));
        assert_eq!(j.findings[0].oracle, "duplicate-reexecuted");
    }

    const OP: &str = "<op xmlns='http://xmlschema.engineyard.com/agent/api' version='1.0' token='0123456789abcdef0123456789abcdef' type='/vertebra/test/stream' timeout='5000'/>";

    fn lifecycle(name: &str) -> Element {
        el(&format!("<iq xmlns='jabber:client' type='set' id='l-{name}' from='a@x/a'><{name} xmlns='http://xmlschema.engineyard.com/agent/api' token='0123456789abcdef0123456789abcdef:11111111111111111111111111111111' seq='1' count='1'/></iq>"))
    }

    fn started() -> Judge {
        let mut j = Judge::new("a@x/a");
        j.own_token("0123456789abcdef0123456789abcdef");
        j.on_sent(
            "requester",
            &el(&format!(
                "<iq xmlns='jabber:client' type='set' id='i1' to='a@x/a'>{OP}</iq>"
            )),
        );
        j.on_received("requester", &el("<iq xmlns='jabber:client' type='result' id='i1' from='a@x/a'><op xmlns='http://xmlschema.engineyard.com/agent/api' token='0123456789abcdef0123456789abcdef:11111111111111111111111111111111' ack='1'/></iq>"));
        j
    }

    #[test]
    fn progress_after_session_loss_is_a_finding() {
        let mut j = started();
        j.on_received("requester", &lifecycle("data"));
        assert!(j.findings.is_empty(), "{:?}", j.findings);
        assert_eq!(j.open_ops(), 1);
        j.session_lost(false);
        assert_eq!(j.open_ops(), 0);
        // Ending the lost op with an error is allowed; more data is not.
        j.on_received("requester", &el("<iq xmlns='jabber:client' type='set' id='e' from='a@x/a'><error xmlns='http://xmlschema.engineyard.com/agent/api' token='0123456789abcdef0123456789abcdef:11111111111111111111111111111111' type='cancel' condition='cancelled'/></iq>"));
        assert!(j.findings.is_empty(), "{:?}", j.findings);
        let mut k = started();
        k.session_lost(false);
        k.on_received("requester", &lifecycle("final"));
        assert_eq!(k.findings[0].oracle, "continued-after-session-loss");
        assert_eq!(k.findings[0].requirement, "VAP-OPS-081");
    }

    #[test]
    fn counter_model_across_cuts_restarts_and_foreign_senders() {
        let counter = "<op xmlns='http://xmlschema.engineyard.com/agent/api' version='1.0' token='0123456789abcdef0123456789abcde0' type='/vertebra/test/counter' timeout='5000'/>";
        let mut j = Judge::new("a@x/a");
        j.on_sent(
            "requester",
            &el(&format!(
                "<iq xmlns='jabber:client' type='set' id='c1' to='a@x/a'>{counter}</iq>"
            )),
        );
        j.on_sent(VIA_FOREIGN, &el(&format!("<iq xmlns='jabber:client' type='set' id='c2' to='a@x/a' from='m@else.example/x'>{counter}</iq>")));
        // The foreign call is never expected to run; the requester's is undecided.
        assert_eq!(j.counter_model(), (0, 1));
        j.on_received("requester", &el("<iq xmlns='jabber:client' type='result' id='c1' from='a@x/a'><op xmlns='http://xmlschema.engineyard.com/agent/api' token='0123456789abcdef0123456789abcde0:22222222222222222222222222222222' ack='1'/></iq>"));
        assert_eq!(j.counter_model(), (1, 0));
        // A cut keeps what the process counted; a restart starts from a new counter.
        j.session_lost(false);
        assert_eq!(j.counter_model(), (1, 0));
        j.session_lost(true);
        assert_eq!(j.counter_model(), (0, 0));
    }

    #[test]
    fn signatures_name_the_answers_and_the_state() {
        let mut j = Judge::new("a@x/a");
        j.step = 3;
        j.note_state(3, false, None);
        j.on_sent("requester", &el("<iq xmlns='jabber:client' type='set' id='u' to='a@x/a'><bogus xmlns='http://xmlschema.engineyard.com/agent/api'/></iq>"));
        j.on_received("requester", &el("<iq xmlns='jabber:client' type='error' id='u' from='a@x/a'><error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"));
        assert_eq!(j.signature(3, "w"), "w|iq-error:bad-request|fresh");
        assert_eq!(j.signature(4, "w"), "w|silence|-");
        let mut k = started();
        k.on_received("requester", &lifecycle("final"));
        assert_eq!(k.signature(0, "op"), "op|iq-result,op-result+ack|-");
    }

    #[test]
    fn bad_condition_and_leak_are_findings() {
        let mut j = Judge::new("a@x/a");
        j.own_token("01");
        j.on_received("requester", &el("<iq xmlns='jabber:client' type='set' id='z' from='a@x/a'><error xmlns='http://xmlschema.engineyard.com/agent/api' token='01:02' type='error' condition='handler-failed'><string name='reason'>panicked at src/main.rs:3</string></error></iq>"));
        assert!(j.findings.iter().any(|f| f.oracle == "leak"));
        j.on_received("requester", &el("<iq xmlns='jabber:client' type='set' id='y' from='a@x/a'><error xmlns='http://xmlschema.engineyard.com/agent/api' token='01:02' type='error' condition='kaboom'/></iq>"));
        assert!(j.findings.iter().any(|f| f.oracle == "error-taxonomy"));
        // Stanzas from others are not judged.
        let mut k = Judge::new("a@x/a");
        k.own_token("01");
        k.on_received("requester", &el("<iq xmlns='jabber:client' type='set' id='y' from='b@x/b'><error xmlns='http://xmlschema.engineyard.com/agent/api' token='01:02' type='error' condition='kaboom'/></iq>"));
        assert!(k.findings.is_empty());
        // Lifecycle stanzas of ops this execution did not send are not judged.
        let mut m = Judge::new("a@x/a");
        m.on_received("requester", &el("<iq xmlns='jabber:client' type='set' id='y' from='a@x/a'><error xmlns='http://xmlschema.engineyard.com/agent/api' token='01:02' type='error' condition='kaboom'/></iq>"));
        assert!(m.findings.is_empty());
    }
}
