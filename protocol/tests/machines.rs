//! Deterministic state-machine scenarios: a requester and a responder wired through an
//! in-memory link (FIFO per direction), driven by explicit event sequences.

use std::collections::VecDeque;

use jid::Jid;
use vertebra_protocol::machine::{IqBody, Millis, OutIq};
use vertebra_protocol::requester::{CallEvent, Outcome, OutcomeKind, Output, Requester};
use vertebra_protocol::responder::{Decision, Responder, ResponderConfig, ResponderEvent, Route};
use vertebra_protocol::*;

fn j(s: &str) -> Jid {
    Jid::new(s).unwrap()
}

struct Link {
    r: Requester,
    a: Option<Responder>,
    rj: Jid,
    aj: Jid,
    to_a: VecDeque<OutIq>,
    to_r: VecDeque<OutIq>,
    r_events: Vec<CallEvent>,
    a_events: Vec<ResponderEvent>,
    sent_by_a: Vec<OutIq>,
    route: Route,
    cfg: ResponderConfig,
    now: Millis,
    drop_next_to_r: usize,
}

impl Link {
    fn new(op: Op, route: Route) -> Self {
        let rj = j("ops@example.net/console");
        let aj = j("agent@example.net/agent");
        let (r, out) = Requester::start(aj.clone(), &op, "op1", 0).unwrap();
        let mut l = Link {
            r,
            a: None,
            rj,
            aj: aj.clone(),
            to_a: VecDeque::new(),
            to_r: VecDeque::new(),
            r_events: vec![],
            a_events: vec![],
            sent_by_a: vec![],
            route,
            cfg: ResponderConfig {
                own_jid: aj,
                values_on_final: true,
            },
            now: 0,
            drop_next_to_r: 0,
        };
        l.r_out(out);
        l
    }
    fn r_out(&mut self, out: Vec<Output<CallEvent>>) {
        for o in out {
            match o {
                Output::Send(s) => self.to_a.push_back(s),
                Output::Event(e) => self.r_events.push(e),
            }
        }
    }
    fn a_out(&mut self, out: Vec<Output<ResponderEvent>>) {
        for o in out {
            match o {
                Output::Send(s) => {
                    self.sent_by_a.push(s.clone());
                    self.to_r.push_back(s)
                }
                Output::Event(e) => self.a_events.push(e),
            }
        }
    }
    /// Deliver everything until both queues are empty.
    fn pump(&mut self) {
        loop {
            if let Some(m) = self.to_a.pop_front() {
                let now = self.now;
                let rj = self.rj.clone();
                match (&m.body, self.a.as_mut()) {
                    (IqBody::Set(el), None) => {
                        let route = self.route;
                        let (a, out) = Responder::receive_op(
                            rj,
                            &m.id,
                            false,
                            el,
                            now,
                            Token::generate().unwrap(),
                            &self.cfg,
                            |_| route,
                        );
                        self.a = Some(a);
                        self.a_out(out);
                    }
                    (IqBody::Set(el), Some(a)) => {
                        let out = a.handle_iq_set(&rj, &m.id, el, now);
                        self.a_out(out);
                    }
                    (IqBody::Result(_), Some(a)) => {
                        let out = a.handle_iq_result(&rj, &m.id, now);
                        self.a_out(out);
                    }
                    (IqBody::Error(e), Some(a)) => {
                        let out = a.handle_iq_error(&rj, &m.id, e, now);
                        self.a_out(out);
                    }
                    _ => {}
                }
                continue;
            }
            if let Some(m) = self.to_r.pop_front() {
                if self.drop_next_to_r > 0 {
                    self.drop_next_to_r -= 1;
                    continue;
                }
                let now = self.now;
                let aj = self.aj.clone();
                let out = match &m.body {
                    IqBody::Set(el) => self.r.handle_iq_set(&aj, &m.id, el, now),
                    IqBody::Result(p) => self.r.handle_iq_result(&aj, &m.id, p.as_ref(), now),
                    IqBody::Error(e) => self.r.handle_iq_error(&aj, &m.id, e, now),
                };
                self.r_out(out);
                continue;
            }
            break;
        }
    }
    fn a(&mut self) -> &mut Responder {
        self.a.as_mut().unwrap()
    }
    fn advance(&mut self, to: Millis) {
        self.now = to;
        loop {
            let mut fired = false;
            if self.r.next_timeout().is_some_and(|t| t <= to) {
                let out = self.r.handle_timeout(to);
                self.r_out(out);
                fired = true;
            }
            if let Some(a) = self.a.as_mut() {
                if a.next_timeout().is_some_and(|t| t <= to) {
                    let out = a.handle_timeout(to);
                    self.a_out(out);
                    fired = true;
                }
            }
            self.pump();
            if !fired {
                break;
            }
        }
    }
    fn outcome(&self) -> Outcome {
        self.r.outcome().cloned().expect("call ended")
    }
    fn data(&self) -> Vec<Args> {
        self.r_events
            .iter()
            .filter_map(|e| match e {
                CallEvent::Data { args, .. } => Some(args.clone()),
                _ => None,
            })
            .collect()
    }
    fn a_sent_names(&self) -> Vec<String> {
        self.sent_by_a
            .iter()
            .map(|s| match &s.body {
                IqBody::Set(e) => e.name().to_string(),
                IqBody::Result(Some(e)) => format!("result:{}", e.name()),
                IqBody::Result(None) => "result".into(),
                IqBody::Error(_) => "iq-error".into(),
            })
            .collect()
    }
}

fn op(timeout: u32) -> Op {
    Op::new(
        RequestToken::Single(Token::generate().unwrap()),
        &Resource::parse("/gem/list").unwrap(),
        timeout,
    )
    .with_args(Args::new().with("q", Value::String("rails".into())))
}

fn args(n: i32) -> Args {
    Args::new().with("n", Value::I4(n))
}

#[test]
fn normal_path_four_round_trips() {
    let mut l = Link::new(op(30_000), Route::Handler { cached: None });
    l.pump();
    assert_eq!(l.a_events, vec![ResponderEvent::NeedAuthorization]);
    let out = l.a().authorize(Decision::Authorized, 0);
    l.a_out(out);
    l.pump();
    assert!(l.a_events.contains(&ResponderEvent::Start));
    let out = l.a().chunk(args(1), 0).unwrap();
    l.a_out(out);
    let out = l.a().chunk(args(2), 0).unwrap();
    l.a_out(out);
    let out = l.a().finish(None, 0).unwrap();
    l.a_out(out);
    l.pump();
    let o = l.outcome();
    assert_eq!(o.kind, OutcomeKind::Final);
    assert_eq!(o.chunks, 2);
    assert_eq!(l.data(), vec![args(1), args(2)]);
    assert_eq!(
        l.a_sent_names(),
        vec!["result:op", "ack", "data", "data", "final"]
    );
    assert!(l.a().is_done());
    assert_eq!(l.a().end_condition(), None);
}

#[test]
fn fast_path_two_round_trips_with_values_on_final() {
    let mut l = Link::new(op(30_000), Route::Handler { cached: Some(true) });
    l.pump();
    assert_eq!(l.a_events, vec![ResponderEvent::Start]);
    let out = l.a().finish(Some(args(42)), 0).unwrap();
    l.a_out(out);
    l.pump();
    assert_eq!(l.a_sent_names(), vec!["result:op", "final"]);
    let o = l.outcome();
    assert!(o.is_success());
    assert!(o.acked);
    assert_eq!(o.chunks, 1);
    assert_eq!(l.data(), vec![args(42)]);
}

#[test]
fn legacy_requester_gets_no_fast_path_and_no_values_on_final() {
    let mut o = op(30_000);
    o.version = Version::Legacy;
    o.timeout = None;
    let mut l = Link::new(o, Route::Handler { cached: Some(true) });
    l.pump();
    // Separate ack ([VAP-OPS-026]); start after its IQ result.
    assert_eq!(l.a_sent_names(), vec!["result:op", "ack"]);
    assert_eq!(l.a_events, vec![ResponderEvent::Start]);
    let out = l.a().finish(Some(args(7)), 0).unwrap();
    l.a_out(out);
    l.pump();
    assert_eq!(l.a_sent_names(), vec!["result:op", "ack", "data", "final"]);
    assert!(l.outcome().is_success());
}

#[test]
fn no_handler_and_nack_and_other_domain() {
    let mut l = Link::new(op(30_000), Route::NoHandler);
    l.pump();
    assert_eq!(l.a_sent_names(), vec!["result:op", "error"]);
    let o = l.outcome();
    assert_eq!(o.condition, Some(Condition::NoHandler));
    assert_eq!(o.kind, OutcomeKind::Error(ErrorType::Fatal));

    let mut l = Link::new(op(30_000), Route::Handler { cached: None });
    l.pump();
    let out = l.a().authorize(Decision::Denied, 0);
    l.a_out(out);
    l.pump();
    assert_eq!(l.outcome().condition, Some(Condition::NotAuthorized));
    assert_eq!(l.outcome().kind, OutcomeKind::Nack);

    // Authorization not answered within 2 s → authorization-unavailable.
    let mut l = Link::new(op(30_000), Route::Handler { cached: None });
    l.pump();
    l.advance(2_000);
    assert_eq!(
        l.outcome().condition,
        Some(Condition::AuthorizationUnavailable)
    );

    // A requester of another domain is nacked before handler lookup ([VAP-SEC-021]).
    let mut l = Link::new(op(30_000), Route::Handler { cached: Some(true) });
    l.cfg.own_jid = j("agent@other.org/agent");
    l.pump();
    assert_eq!(l.a_sent_names(), vec!["result:op", "nack"]);
}

#[test]
fn window_bounds_unanswered_data_and_final_waits() {
    let mut o = op(30_000);
    o.window = Some(2);
    let mut l = Link::new(o, Route::Handler { cached: Some(true) });
    l.pump();
    let mut sent = 0;
    for i in 0..5 {
        let out = l.a().chunk(args(i), 0).unwrap();
        sent += out.len();
        l.a_out(out);
    }
    assert_eq!(
        sent, 2,
        "only `window` data IQs go out before results arrive"
    );
    let out = l.a().finish(None, 0).unwrap();
    assert!(out.is_empty(), "final waits for the data results");
    l.pump();
    let o = l.outcome();
    assert!(o.is_success());
    assert_eq!(o.chunks, 5);
    assert_eq!(l.data().len(), 5);
}

#[test]
fn cancel_ends_with_cancelled() {
    let mut l = Link::new(op(30_000), Route::Handler { cached: Some(true) });
    l.pump();
    let out = l.r.cancel("c1", 10);
    l.r_out(out);
    l.pump();
    assert!(l
        .a_events
        .contains(&ResponderEvent::Stop(Condition::Cancelled)));
    let o = l.outcome();
    assert_eq!(o.condition, Some(Condition::Cancelled));
    assert_eq!(o.kind, OutcomeKind::Error(ErrorType::Cancel));
    // The handler's late events are refused, nothing more is sent.
    let n = l.sent_by_a.len();
    assert!(l.a().chunk(args(1), 20).is_err());
    assert_eq!(l.sent_by_a.len(), n);
}

#[test]
fn deadline_on_both_sides() {
    let mut l = Link::new(op(5_000), Route::Handler { cached: Some(true) });
    l.pump();
    l.advance(5_000);
    assert!(l
        .a_events
        .contains(&ResponderEvent::Stop(Condition::DeadlineExpired)));
    assert_eq!(l.outcome().condition, Some(Condition::DeadlineExpired));
    assert_eq!(l.outcome().kind, OutcomeKind::Error(ErrorType::Cancel));

    // Responder silent (its stanzas lost): requester ends locally at deadline + 2 s.
    let mut l = Link::new(op(5_000), Route::Handler { cached: Some(true) });
    l.drop_next_to_r = 100;
    l.pump();
    l.advance(6_999);
    assert!(!l.r.is_done());
    l.advance(7_000);
    let o = l.outcome();
    assert_eq!(o.kind, OutcomeKind::Local);
    assert!(matches!(
        o.condition,
        Some(Condition::DeadlineExpired) | Some(Condition::ResponderGone)
    ));
}

#[test]
fn duplicate_data_is_answered_not_reprocessed() {
    let mut l = Link::new(op(30_000), Route::Handler { cached: Some(true) });
    l.pump();
    let out = l.a().chunk(args(1), 0).unwrap();
    let data = match &out[0] {
        Output::Send(s) => s.clone(),
        _ => panic!(),
    };
    l.a_out(out);
    l.pump();
    // Retransmission with the same IQ id.
    let IqBody::Set(el) = &data.body else {
        panic!()
    };
    let aj = l.aj.clone();
    let out = l.r.handle_iq_set(&aj, &data.id, el, 0);
    assert_eq!(out.len(), 1, "only the IQ result");
    assert_eq!(l.data().len(), 1);
    // A new id with a repeated seq is out-of-order.
    let out = l.r.handle_iq_set(&aj, "other-id", el, 0);
    l.r_out(out);
    assert_eq!(l.outcome().condition, Some(Condition::OutOfOrder));
}

#[test]
fn responder_gone_on_unavailable_and_iq_errors() {
    let mut l = Link::new(op(30_000), Route::Handler { cached: Some(true) });
    l.pump();
    let aj = l.aj.clone();
    let out = l.r.handle_unavailable(&aj, 5);
    l.r_out(out);
    assert_eq!(l.outcome().condition, Some(Condition::ResponderGone));

    // service-unavailable on the op IQ: retried with back-off, then responder-gone.
    let (mut r, _) = Requester::start(aj.clone(), &op(30_000), "op1", 0).unwrap();
    let e = xmpp_parsers::stanza_error::StanzaError::new(
        xmpp_parsers::stanza_error::ErrorType::Cancel,
        xmpp_parsers::stanza_error::DefinedCondition::ServiceUnavailable,
        "en",
        "x",
    );
    let mut now = 0;
    let mut resent = 0;
    for _ in 0..4 {
        assert!(r.handle_iq_error(&aj, "op1", &e, now).is_empty() || r.is_done());
        if r.is_done() {
            break;
        }
        now = r.next_timeout().unwrap();
        let out = r.handle_timeout(now);
        resent += out
            .iter()
            .filter(|o| matches!(o, Output::Send(s) if s.id == "op1"))
            .count();
    }
    assert_eq!(resent, 3, "4 attempts in total");
    r.handle_iq_error(&aj, "op1", &e, now);
    assert_eq!(
        r.outcome().unwrap().condition,
        Some(Condition::ResponderGone)
    );

    // Non-retryable → rejected.
    let (mut r, _) = Requester::start(aj.clone(), &op(30_000), "op1", 0).unwrap();
    let bad = xmpp_parsers::stanza_error::StanzaError::new(
        xmpp_parsers::stanza_error::ErrorType::Modify,
        xmpp_parsers::stanza_error::DefinedCondition::BadRequest,
        "en",
        "x",
    );
    r.handle_iq_error(&aj, "op1", &bad, 0);
    assert_eq!(r.outcome().unwrap().condition, Some(Condition::Rejected));
}

#[test]
fn bad_op_gets_op_result_then_bad_value_or_iq_error() {
    let aj = j("agent@example.net/agent");
    let rj = j("ops@example.net/console");
    let cfg = ResponderConfig {
        own_jid: aj,
        values_on_final: true,
    };
    let el = xml::parse_element(
        br#"<op xmlns="http://xmlschema.engineyard.com/agent/api" version="1.0" token="ab" type="/x"/>"#,
        None,
    )
    .unwrap();
    let (_, out) = Responder::receive_op(
        rj.clone(),
        "i1",
        false,
        &el,
        0,
        Token::generate().unwrap(),
        &cfg,
        |_| Route::NoHandler,
    );
    let names: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(s) => Some(match &s.body {
                IqBody::Result(Some(e)) => format!("result:{}", e.name()),
                IqBody::Set(e) => format!("{}:{}", e.name(), e.attr("condition").unwrap_or("")),
                other => format!("{other:?}"),
            }),
            _ => None,
        })
        .collect();
    assert_eq!(names, vec!["result:op", "error:bad-value"]);

    let el = xml::parse_element(
        br#"<op xmlns="http://xmlschema.engineyard.com/agent/api" version="1.0" token="a:b:c" type="/x" timeout="5"/>"#,
        None,
    )
    .unwrap();
    let (r, out) = Responder::receive_op(
        rj,
        "i2",
        false,
        &el,
        0,
        Token::generate().unwrap(),
        &cfg,
        |_| Route::NoHandler,
    );
    assert!(r.is_done());
    match &out[0] {
        Output::Send(OutIq {
            body: IqBody::Error(e),
            ..
        }) => assert_eq!(
            e.defined_condition,
            xmpp_parsers::stanza_error::DefinedCondition::BadRequest
        ),
        other => panic!("{other:?}"),
    }
}

/// [VAP-OPS-084]: the requester's domain is checked before the version and the values, so a
/// foreign op that is also malformed is nacked `not-authorized`, not answered `bad-value`.
#[test]
fn foreign_domain_is_checked_before_values_and_version() {
    let cfg = ResponderConfig {
        own_jid: j("agent@example.net/agent"),
        values_on_final: true,
    };
    for op in [
        r#"<op xmlns="http://xmlschema.engineyard.com/agent/api" version="1.0" token="ab" type="/x"/>"#,
        r#"<op xmlns="http://xmlschema.engineyard.com/agent/api" version="2.0" token="ab" type="/x" timeout="5"/>"#,
    ] {
        let el = xml::parse_element(op.as_bytes(), None).unwrap();
        let (r, out) = Responder::receive_op(
            j("ops@other.example/console"),
            "i1",
            false,
            &el,
            0,
            Token::generate().unwrap(),
            &cfg,
            |_| Route::NoHandler,
        );
        let names: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send(s) => Some(match &s.body {
                    IqBody::Result(Some(e)) => format!("result:{}", e.name()),
                    IqBody::Set(e) => format!("{}:{}", e.name(), e.attr("reason").unwrap_or("")),
                    other => format!("{other:?}"),
                }),
                _ => None,
            })
            .collect();
        assert_eq!(names, vec!["result:op", "nack:not-authorized"], "{op}");
        assert_eq!(r.end_condition(), Some(&Condition::NotAuthorized));
    }
}

/// [VAP-OPS-068] a retry repeats the IQ set exactly: same id, same recipient, same payload
/// (op on the requester side; data and final on the responder side).
#[test]
fn retries_repeat_the_iq_set_exactly() {
    let aj = j("agent@example.net/agent");
    let rj = j("ops@example.net/console");
    fn sends<E>(out: Vec<Output<E>>) -> Vec<OutIq> {
        out.into_iter()
            .filter_map(|o| match o {
                Output::Send(s) => Some(s),
                Output::Event(_) => None,
            })
            .collect()
    }
    let first_of = |out: Vec<Output<CallEvent>>| sends(out).remove(0);

    // The op IQ, retried after its per-IQ timeout.
    let o = op(60_000).with_args(args(7));
    let (mut r, out) = Requester::start(aj.clone(), &o, "op1", 0).unwrap();
    let first = first_of(out);
    let t = r.next_timeout().unwrap();
    let again = first_of(r.handle_timeout(t));
    assert_eq!(again, first);

    // Data and final from the responder, retried after theirs.
    let cfg = ResponderConfig {
        own_jid: aj.clone(),
        values_on_final: true,
    };
    let (mut a, out) = Responder::receive_op(
        rj.clone(),
        "op1",
        false,
        &o.to_element(),
        0,
        Token::generate().unwrap(),
        &cfg,
        |_| Route::Handler { cached: Some(true) },
    );
    assert_eq!(sends(out).len(), 1, "the op result");
    let data = sends(a.chunk(args(1), 0).unwrap());
    assert_eq!(data.len(), 1);
    let t = a.next_timeout().unwrap();
    assert_eq!(sends(a.handle_timeout(t)), data);
    assert!(a.handle_iq_result(&rj, &data[0].id, t).is_empty());
    let fin = sends(a.finish(Some(args(2)), t).unwrap());
    assert_eq!(fin.len(), 1);
    let IqBody::Set(el) = &fin[0].body else {
        panic!("final is an IQ set")
    };
    assert_eq!(el.name(), "final");
    let t2 = a.next_timeout().unwrap();
    assert_eq!(sends(a.handle_timeout(t2)), fin);
}
