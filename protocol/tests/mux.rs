//! The multiplexers: several calls through `Calls` and `Responders`, duplicate op IQs.

use jid::Jid;
use vertebra_protocol::machine::{IqBody, OutIq};
use vertebra_protocol::mux::{Calls, Responders};
use vertebra_protocol::requester::{CallEvent, Output};
use vertebra_protocol::responder::{ResponderConfig, ResponderEvent, Route};
use vertebra_protocol::*;

fn j(s: &str) -> Jid {
    Jid::new(s).unwrap()
}

#[test]
fn two_calls_fast_path_and_duplicate_op() {
    let rj = j("ops@example.net/console");
    let aj = j("agent@example.net/agent");
    let mut calls = Calls::new();
    let mut ops = Responders::new(
        ResponderConfig {
            own_jid: aj.clone(),
            values_on_final: true,
        },
        1000,
    );
    let op = |n: i32| {
        Op::new(
            RequestToken::Single(Token::generate().unwrap()),
            &Resource::parse("/x").unwrap(),
            10_000,
        )
        .with_args(Args::new().with("n", Value::I4(n)))
    };
    let (c1, o1) = calls.start(aj.clone(), &op(1), "op-1", 0).unwrap();
    let (c2, o2) = calls.start(aj.clone(), &op(2), "op-2", 0).unwrap();
    let mut to_a: Vec<OutIq> = Vec::new();
    for o in o1.into_iter().chain(o2) {
        if let Output::Send(s) = o {
            to_a.push(s);
        }
    }
    assert_eq!(to_a.len(), 2);
    // The agent receives both ops, and the first one twice (retransmission).
    let mut to_r = Vec::new();
    let mut started = Vec::new();
    for s in [&to_a[0], &to_a[1], &to_a[0]] {
        let IqBody::Set(el) = &s.body else { panic!() };
        let (id, out) =
            ops.receive_op(&rj, &s.id, false, el, 0, Token::generate().unwrap(), |_| {
                Route::Handler { cached: Some(true) }
            });
        for o in out {
            match o {
                Output::Send(x) => to_r.push(x),
                Output::Event(ResponderEvent::Start) => started.push(id.unwrap()),
                _ => {}
            }
        }
    }
    assert_eq!(
        started.len(),
        2,
        "the retransmitted op is not processed again"
    );
    assert_eq!(to_r.len(), 3, "…but answered again");
    assert_eq!(to_r[0], to_r[2], "with the same answer");
    // Handlers finish with a value each.
    for (i, id) in started.iter().enumerate() {
        for o in ops
            .finish(*id, Some(Args::new().with("r", Value::I4(i as i32))), 1)
            .unwrap()
        {
            if let Output::Send(x) = o {
                to_r.push(x);
            }
        }
    }
    // Deliver everything to the requester side.
    let mut ended = Vec::new();
    let mut answers = Vec::new();
    for s in to_r {
        let outs = match &s.body {
            IqBody::Result(p) => calls
                .handle_iq_result(&aj, &s.id, p.as_ref(), 2)
                .map(|(_, o)| o)
                .unwrap_or_default(),
            IqBody::Set(el) => calls.handle_iq_set(&aj, &s.id, el, 2).1,
            IqBody::Error(_) => panic!(),
        };
        for o in outs {
            match o {
                Output::Event(CallEvent::Ended(out)) => ended.push(out),
                Output::Send(x) => answers.push(x),
                _ => {}
            }
        }
    }
    assert_eq!(ended.len(), 2);
    assert!(ended.iter().all(|o| o.is_success()));
    assert!(calls.is_empty(), "finished calls are reaped");
    assert!(calls.get(c1).is_none() && calls.get(c2).is_none());
    // The final IQ results go back; the responders finish.
    for a in answers {
        ops.handle_iq_result(&rj, &a.id, 3);
    }
    assert!(ops.is_empty());
    // A late stanza for a forgotten call is still answered ([VAP-OPS-031]).
    let late = Ack {
        token: OpToken::parse("aa:bb").unwrap(),
    }
    .to_element();
    let (none, out) = calls.handle_iq_set(&aj, "late", &late, 4);
    assert!(none.is_none());
    assert!(matches!(
        &out[0],
        Output::Send(OutIq {
            body: IqBody::Result(None),
            ..
        })
    ));
}
