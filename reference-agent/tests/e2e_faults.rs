//! Faults injected by the embedded server's hooks: duplicated and dropped stanzas in both
//! directions, and a connection cut mid-operation. Every call ends with a terminal outcome
//! (none lost silently) and no op is executed twice (the side-effect counter tells).

mod common;

use std::time::{Duration, Instant};

use common::Bus;
use vertebra_embedded_server::testing::ServerKind;
use vertebra_embedded_server::{FaultAction, FaultRule, JidPattern, StanzaKind};
use vertebra_reference_agent::agent::Agent;
use vertebra_reference_agent::node::{CallOptions, Node};
use vertebra_reference_agent::protocol::payloads::test_ops;
use vertebra_reference_agent::protocol::{Args, Value};
use vertebra_reference_agent::requester::call_direct;
use vertebra_reference_agent::tokio_xmpp::parsers::jid::{FullJid, Jid};
use vertebra_reference_agent::tokio_xmpp::parsers::minidom::Element;

fn child_is(el: &Element, name: &str, op_type: Option<&str>) -> bool {
    el.children()
        .any(|c| c.name() == name && op_type.map(|t| c.attr("type") == Some(t)).unwrap_or(true))
}

async fn counter(req: &Node, a: &FullJid) -> i32 {
    let c = call_direct(
        req,
        Jid::from(a.clone()),
        test_ops::COUNTER,
        Args::new().with("read", Value::Boolean(true)),
        Duration::from_secs(5),
    )
    .await
    .expect("read counter");
    c.last().and_then(|x| x.get_i4("value")).expect("value")
}

async fn setup() -> (Bus, Agent, FullJid) {
    let bus = Bus::start(
        ServerKind::Embedded,
        vertebra_reference_agent::policy::allow_all(),
    )
    .await
    .expect("embedded");
    let a = bus
        .start_agent(bus.agent("a").await.test_profile(true))
        .await;
    let ja = a.node().jid().unwrap();
    (bus, a, ja)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_stanzas_execute_once() {
    let (bus, _a, ja) = setup().await;
    let req = bus.requester("req").await;
    let f = bus.server.embedded().unwrap().faults();
    // every stanza between the two, both ways, delivered twice
    f.add(
        FaultRule::new(FaultAction::Duplicate(1))
            .from(JidPattern::Full(req.jid().unwrap()))
            .to(JidPattern::Full(ja.clone()))
            .kind(StanzaKind::Iq),
    );
    f.add(
        FaultRule::new(FaultAction::Duplicate(1))
            .from(JidPattern::Full(ja.clone()))
            .to(JidPattern::Full(req.jid().unwrap()))
            .kind(StanzaKind::Iq),
    );
    let r = call_direct(
        &req,
        Jid::from(ja.clone()),
        test_ops::COUNTER,
        Args::new(),
        Duration::from_secs(5),
    )
    .await
    .expect("counter");
    assert_eq!(r.last().unwrap().get_i4("value"), Some(1));
    let s = call_direct(
        &req,
        Jid::from(ja.clone()),
        test_ops::STREAM,
        Args::new().with("count", Value::I4(10)),
        Duration::from_secs(5),
    )
    .await
    .expect("stream");
    assert_eq!(
        s.iter()
            .map(|c| c.get_i4("index").unwrap())
            .collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    f.clear();
    assert_eq!(counter(&req, &ja).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_op_is_retransmitted_and_runs_once() {
    let (bus, _a, ja) = setup().await;
    let req = bus.requester_with("req", Duration::from_millis(800)).await;
    let f = bus.server.embedded().unwrap().faults();
    let rule = f.add(
        FaultRule::new(FaultAction::Drop)
            .to(JidPattern::Full(ja.clone()))
            .kind(StanzaKind::Iq)
            .when(|el| child_is(el, "op", Some(test_ops::COUNTER)))
            .times(1),
    );
    // [VAP-OPS-063] no answer within the per-IQ timeout: the op IQ is retransmitted with the
    // same id ([VAP-OPS-068]) and the call succeeds; the op ran exactly once.
    let r = call_direct(
        &req,
        Jid::from(ja.clone()),
        test_ops::COUNTER,
        Args::new(),
        Duration::from_secs(5),
    )
    .await
    .expect("the retransmission gets through");
    assert_eq!(r.last().unwrap().get_i4("value"), Some(1));
    assert_eq!(f.counts(rule).map(|c| c.1), Some(1), "the rule fired once");
    assert_eq!(counter(&req, &ja).await, 1, "the op ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_op_is_a_terminal_error_not_a_hang() {
    let (bus, _a, ja) = setup().await;
    let req = bus.requester_with("req", Duration::from_millis(400)).await;
    let f = bus.server.embedded().unwrap().faults();
    let rule = f.add(
        FaultRule::new(FaultAction::Drop)
            .to(JidPattern::Full(ja.clone()))
            .kind(StanzaKind::Iq)
            .when(|el| child_is(el, "op", Some(test_ops::COUNTER))),
    );
    let t0 = Instant::now();
    let e = call_direct(
        &req,
        Jid::from(ja.clone()),
        test_ops::COUNTER,
        Args::new(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    // [VAP-OPS-074] 4 attempts, then [VAP-OPS-079] responder-gone (before the deadline).
    assert_eq!(e.condition, "responder-gone");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(
        f.counts(rule).map(|c| c.1),
        Some(4),
        "four attempts were sent"
    );
    f.clear();
    assert_eq!(counter(&req, &ja).await, 0, "a dropped op never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_data_ends_the_call() {
    let (bus, _a, ja) = setup().await;
    let req = bus.requester("req").await;
    let f = bus.server.embedded().unwrap().faults();
    f.add(
        FaultRule::new(FaultAction::Drop)
            .from(JidPattern::Full(ja.clone()))
            .kind(StanzaKind::Iq)
            .when(|el| child_is(el, "data", None))
            .skip(2)
            .times(1),
    );
    let t0 = Instant::now();
    let e = req
        .call_collect(
            Jid::from(ja.clone()),
            test_ops::STREAM,
            Args::new().with("count", Value::I4(6)),
            CallOptions {
                timeout: Duration::from_millis(1500),
                window: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    // the responder waits for the lost chunk's result until the deadline, then errors; the
    // requester ends by deadline + grace at the latest
    assert!(
        matches!(e.condition.as_str(), "deadline-expired" | "out-of-order"),
        "{e:?}"
    );
    assert!(t0.elapsed() < Duration::from_millis(1500) + Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_op_no_silent_loss_no_rerun() {
    let (bus, a, ja) = setup().await;
    let req = bus.requester("req").await;
    let f = bus.server.embedded().unwrap().faults();
    // the agent's connection is cut when it sends the counter op's final
    f.add(
        FaultRule::new(FaultAction::CutSender)
            .from(JidPattern::Full(ja.clone()))
            .kind(StanzaKind::Iq)
            .when(|el| child_is(el, "final", None))
            .times(1),
    );
    let t0 = Instant::now();
    let e = call_direct(
        &req,
        Jid::from(ja.clone()),
        test_ops::COUNTER,
        Args::new(),
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert_eq!(e.condition, "responder-gone", "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    // the agent reconnects and re-advertises; the op ran exactly once and is not re-run
    a.wait_online(common::ONLINE).await.unwrap();
    bus.wait_listed(&req, test_ops::COUNTER, &ja).await;
    assert_eq!(counter(&req, &ja).await, 1);
    // and the bus works again
    let r = call_direct(
        &req,
        Jid::from(ja.clone()),
        test_ops::COUNTER,
        Args::new(),
        Duration::from_secs(5),
    )
    .await
    .expect("after reconnect");
    assert_eq!(r.last().unwrap().get_i4("value"), Some(2));
}

/// [VAP-OPS-081]: the agent loses its session in the middle of a streaming op; after it
/// reconnects it neither continues nor ends that op on the new session (no more data, no
/// error), while the requester got a terminal outcome at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_session_does_not_continue_the_op() {
    lost_session_mid_stream(1, 50).await;
}

/// [VAP-OPS-081] with a wide window: the agent has many data stanzas queued for sending when
/// the server cuts it; none of them may reach the wire on its next session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_session_drops_what_was_queued_for_it() {
    lost_session_mid_stream(64, 4000).await;
}

async fn lost_session_mid_stream(window: u8, count: i32) {
    let (bus, a, ja) = setup().await;
    let req = bus.requester("req").await;
    let server = bus.server.embedded().unwrap();
    let f = server.faults();
    f.add(
        FaultRule::new(FaultAction::CutSender)
            .from(JidPattern::Full(ja.clone()))
            .kind(StanzaKind::Iq)
            .when(|el| {
                el.children()
                    .any(|c| c.name() == "data" && c.attr("seq") == Some("3"))
            })
            .times(1),
    );
    let t0 = Instant::now();
    let e = req
        .call_collect(
            Jid::from(ja.clone()),
            test_ops::STREAM,
            Args::new().with("count", Value::I4(count)),
            CallOptions {
                timeout: Duration::from_millis(1500),
                window: Some(window),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.condition, "responder-gone", "{e:?}");
    assert!(t0.elapsed() < Duration::from_millis(1500));
    a.wait_online(common::ONLINE).await.unwrap();
    bus.wait_listed(&req, test_ops::COUNTER, &ja).await;
    // An agent that carried the op over would end it at its deadline at the latest: let the
    // deadline pass (asserting an absence needs a wait).
    tokio::time::sleep_until((t0 + Duration::from_millis(2000)).into()).await;
    // A round trip through the agent's new session: anything it would still send for the old
    // op is on the wire before this answer.
    assert_eq!(counter(&req, &ja).await, 0);
    let events = server.trace().snapshot();
    let from_agent: Vec<_> = events
        .iter()
        .filter(|ev| {
            ev.direction == vertebra_embedded_server::Direction::In
                && ev.jid.as_ref() == Some(&Jid::from(ja.clone()))
        })
        .collect();
    let first_conn = from_agent
        .iter()
        .find(|ev| ev.xml.contains("<data"))
        .map(|ev| ev.conn)
        .expect("the agent sent data on its first session");
    let later: Vec<&String> = from_agent
        .iter()
        .filter(|ev| ev.conn != first_conn)
        .filter(|ev| ev.xml.contains("<data") || ev.xml.contains("<error"))
        .map(|ev| &ev.xml)
        .collect();
    assert!(
        later.is_empty(),
        "the op went on after the session was lost: {later:#?}"
    );
}
