//! Non-well-formed and hostile byte input through the embedded server's raw-bytes hook: the
//! reference agent survives every kind (it closes the broken stream and reconnects, or keeps
//! answering), serves ops afterwards, and ops it had in progress are not continued after a
//! session loss ([VAP-OPS-081]); a connection cut in the middle of a stream op and a
//! restart between inputs are survived the same way.

use clap::Parser;
use vertebra_conformance::attach::{self, TargetArgs};
use vertebra_conformance::fuzz::exec::Execution;
use vertebra_conformance::fuzz::gen::{raw_bytes, RAW_DEEP, RAW_KINDS};
use vertebra_conformance::fuzz::tracefile::Step;
use vertebra_conformance::fuzz::{self};
use vertebra_conformance::trace::Trace;

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    t: TargetArgs,
}

fn step(key: u32, kind: &str, note: &str) -> Step {
    Step {
        key,
        via: "inject".into(),
        kind: kind.into(),
        iq_type: None,
        id: None,
        from: None,
        xml: None,
        burst: false,
        max: None,
        to: None,
        raw: None,
        note: note.into(),
    }
}

fn op(key: u32, ty: &str, values: &str) -> Step {
    Step {
        key,
        via: "requester".into(),
        kind: "iq".into(),
        iq_type: Some("set".into()),
        id: Some(format!("t{key}")),
        from: None,
        xml: Some(format!(
            "<op xmlns='http://xmlschema.engineyard.com/agent/api' version='1.0' token='{key:032x}' type='/vertebra/test/{ty}' timeout='8000'>{values}</op>"
        )),
        burst: false,
        max: None,
        to: None,
        raw: None,
        note: ty.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_agent_survives_every_raw_input_cuts_and_restarts() {
    let w = Wrap::parse_from(["x", "--reference"]);
    let trace = Trace::new();
    let a = attach::attach(&w.t, &[], 1.0, &trace)
        .await
        .expect("attach");
    let env = fuzz::env_from(&a, false, 1.0, 48).expect("env");
    let mut steps = Vec::new();
    let mut key = 1u32;
    // RAW_DEEP aborts the process that parses it (this one, in reference mode): spawn only.
    for which in (0..RAW_KINDS).filter(|k| *k != RAW_DEEP) {
        for variant in [0u64, 3] {
            let (bytes, what) = raw_bytes(which, variant, key);
            let mut s = step(key, "raw", &format!("raw bytes: {what}"));
            s.raw = Some(bytes);
            steps.push(s);
            key += 1;
        }
        steps.push(op(key, "echo", "<i4 name='n'>1</i4>"));
        key += 1;
    }
    // A stream op cut in the middle, retransmitted after the reconnect, then a restart.
    let long = op(
        key,
        "stream",
        "<i4 name='count'>100</i4><i4 name='size'>8</i4>",
    );
    steps.push(long.clone());
    steps.push(step(key + 1, "cut", "cut"));
    let mut again = long;
    again.key = key + 2;
    steps.push(again);
    steps.push(op(key + 3, "counter", ""));
    steps.push(step(key + 4, "restart", "restart"));
    steps.push(op(key + 5, "counter", ""));
    let mut x = Execution::start(&env, 77, true).await;
    let mut found = None;
    for (i, s) in steps.iter().enumerate() {
        if let Some(f) = x.step(i, s).await {
            found = Some(f);
            break;
        }
    }
    if found.is_none() {
        found = x.checkpoint().await;
    }
    let outcomes = x.raw_outcomes.clone();
    let sent = x.sent;
    drop(x);
    trace.reset();
    attach::detach(a).await;
    eprintln!("raw outcomes: {outcomes:?}");
    assert!(found.is_none(), "{found:?}");
    assert_eq!(sent as usize, steps.len());
    assert_eq!(outcomes.len(), 2 * (RAW_KINDS as usize - 1), "{outcomes:?}");
    // Ill-formed input ends the stream (the agent reconnected) at least for the plainly
    // broken kinds: bad UTF-8, undeclared prefix, mismatched end tag, duplicate attribute.
    let closed = outcomes.iter().filter(|o| o.1 == "closed").count();
    assert!(closed >= 4, "{outcomes:?}");
}
