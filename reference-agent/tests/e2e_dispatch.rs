//! Dispatcher behaviour end to end on both servers: least-loaded order, death within 1 s of
//! unavailable, removal after 3 silent intervals, refusal of foreign adverts, and two replicas
//! on one bare JID giving the same answers.

mod common;

use std::time::{Duration, Instant};

use common::Bus;
use vertebra_embedded_server::testing::ServerKind;
use vertebra_reference_agent::config::Misbehaviour;
use vertebra_reference_agent::conn::ConnectOptions;
use vertebra_reference_agent::dispatcher::{Dispatcher, DispatcherConfig};
use vertebra_reference_agent::node::{CallOptions, Node};
use vertebra_reference_agent::protocol::payloads::{test_ops, AdvertiseRequest, OP_ADVERTISE};
use vertebra_reference_agent::protocol::{Args, Resource, ResourceScope, Value};
use vertebra_reference_agent::requester::{call_direct, discover};
use vertebra_reference_agent::tokio_xmpp::parsers::jid::{FullJid, Jid};

async fn listed(req: &Node, d: &Jid, op: &str) -> Vec<(Jid, f64)> {
    discover(
        req,
        d,
        op,
        &ResourceScope::new(),
        None,
        Duration::from_secs(5),
    )
    .await
    .expect("discover")
}

/// Poll until `pred` holds on the list (deadline only matters on failure); returns elapsed.
async fn until(
    req: &Node,
    d: &Jid,
    op: &str,
    deadline: Duration,
    pred: impl Fn(&[(Jid, f64)]) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let l = listed(req, d, op).await;
        if pred(&l) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < deadline,
            "condition not reached in {deadline:?}: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn set_load(req: &Node, j: &FullJid, v: f64) {
    call_direct(
        req,
        Jid::from(j.clone()),
        test_ops::SET_LOAD,
        Args::new().with("value", Value::Double(v)),
        Duration::from_secs(5),
    )
    .await
    .expect("set-load");
}

async fn death_and_order(kind: ServerKind) {
    let Some(bus) = Bus::start(kind, vertebra_reference_agent::policy::allow_all()).await else {
        return;
    };
    let a = bus
        .start_agent(bus.agent("a").await.test_profile(true))
        .await;
    let b = bus
        .start_agent(bus.agent("b").await.test_profile(true))
        .await;
    let c = bus
        .start_agent(
            bus.agent("c")
                .await
                .test_profile(true)
                .misbehave(Misbehaviour::StaleLoad),
        )
        .await;
    let req = bus.requester("req").await;
    let (ja, jb, jc) = (
        a.node().jid().unwrap(),
        b.node().jid().unwrap(),
        c.node().jid().unwrap(),
    );
    for j in [&ja, &jb, &jc] {
        bus.wait_listed(&req, test_ops::ECHO, j).await;
    }
    let d = bus.djid();
    // c stops reporting after its first report: out of dispatch after 3 × 200 ms of silence.
    let gone = until(&req, &d, test_ops::ECHO, Duration::from_secs(5), |l| {
        !l.iter().any(|(j, _)| j == &Jid::from(jc.clone()))
    })
    .await;
    assert!(
        gone < Duration::from_secs(3),
        "silent agent left after {gone:?}"
    );
    // order follows load, then JID
    set_load(&req, &ja, 0.7).await;
    set_load(&req, &jb, 0.2).await;
    until(&req, &d, test_ops::ECHO, Duration::from_secs(5), |l| {
        l.iter().map(|(j, _)| j.clone()).collect::<Vec<_>>()
            == vec![Jid::from(jb.clone()), Jid::from(ja.clone())]
            && (l[0].1 - 0.2).abs() < 1e-9
    })
    .await;
    // b vanishes (no ttl-0 withdrawal): out within 1 s of the server's unavailable presence.
    common::crash(&bus, b.node()).await;
    let t = until(&req, &d, test_ops::ECHO, Duration::from_secs(5), |l| {
        !l.iter().any(|(j, _)| j == &Jid::from(jb.clone()))
    })
    .await;
    assert!(
        t < Duration::from_secs(1),
        "dead agent still listed after {t:?}"
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn death_and_order_on_embedded() {
    death_and_order(ServerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn death_and_order_on_prosody() {
    death_and_order(ServerKind::Prosody).await;
}

async fn foreign_advert_refused(kind: ServerKind) {
    let Some(bus) = Bus::start(kind, vertebra_reference_agent::policy::allow_all()).await else {
        return;
    };
    let req = bus.requester("liar").await;
    let adv = AdvertiseRequest {
        operations: vec![Resource::parse("/steal").unwrap()],
        resources: ResourceScope::new(),
        ttl: 60,
        advertiser: Some(format!("victim@{}/agent", bus.domain)),
    };
    let e = req
        .call_collect(
            bus.djid(),
            OP_ADVERTISE,
            adv.to_args(),
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind.as_str(), e.condition.as_str()),
        ("nack", "not-authorized")
    );
    assert!(listed(&req, &bus.djid(), "/steal").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_advert_refused_on_embedded() {
    foreign_advert_refused(ServerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_advert_refused_on_prosody() {
    foreign_advert_refused(ServerKind::Prosody).await;
}

async fn replicas(kind: ServerKind) {
    let Some(bus) = Bus::start(kind, vertebra_reference_agent::policy::allow_all()).await else {
        return;
    };
    // a second replica on the same account
    let d2_jid: FullJid = format!("dispatcher@{}/replica2", bus.domain)
        .parse()
        .unwrap();
    let mut cfg = DispatcherConfig::new(ConnectOptions::new(
        bus.addr.clone(),
        Jid::from(d2_jid.clone()),
        "dpw",
    ));
    cfg.policy = vertebra_reference_agent::policy::allow_all();
    let d2 = Dispatcher::start(cfg).unwrap();
    d2.wait_online(common::ONLINE).await.unwrap();
    let a = bus
        .start_agent(bus.agent("a").await.test_profile(true))
        .await;
    let b = bus
        .start_agent(bus.agent("b").await.test_profile(true))
        .await;
    let req = bus.requester("req").await;
    let (ja, jb) = (a.node().jid().unwrap(), b.node().jid().unwrap());
    set_load(&req, &ja, 0.5).await;
    set_load(&req, &jb, 0.25).await;
    let want = vec![Jid::from(jb.clone()), Jid::from(ja.clone())];
    let d1j = bus.djid();
    let d2j = Jid::from(d2_jid.clone());
    for d in [&d1j, &d2j] {
        until(&req, d, test_ops::ECHO, Duration::from_secs(5), |l| {
            l.iter().map(|(j, _)| j.clone()).collect::<Vec<_>>() == want
        })
        .await;
    }
    // same answers, same loads: load reports reach the two replicas at slightly different
    // instants, so they must converge (the deadline only matters on failure)
    let t0 = Instant::now();
    loop {
        let (l1, l2) = (
            listed(&req, &d1j, test_ops::ECHO).await,
            listed(&req, &d2j, test_ops::ECHO).await,
        );
        if l1 == l2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "replicas disagree: {l1:?} vs {l2:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // a death reaches both
    common::crash(&bus, b.node()).await;
    for d in [&d1j, &d2j] {
        let t = until(&req, d, test_ops::ECHO, Duration::from_secs(5), |l| {
            l.len() == 1
        })
        .await;
        assert!(t < Duration::from_secs(1));
    }
    a.shutdown().await;
    d2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_agree_on_embedded() {
    replicas(ServerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_agree_on_prosody() {
    replicas(ServerKind::Prosody).await;
}
