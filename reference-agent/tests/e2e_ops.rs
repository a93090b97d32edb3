//! End to end on both servers: discovery, single / all / direct calls, streaming, errors,
//! authorization, cancellation and deadlines.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Bus, KINDS};
use vertebra_embedded_server::testing::ServerKind;
use vertebra_reference_agent::node::{Call, CallEvent, CallOptions};
use vertebra_reference_agent::protocol::dispatch::{Effect, Policy, PolicyRule, Subject};
use vertebra_reference_agent::protocol::payloads::test_ops;
use vertebra_reference_agent::protocol::{Args, Value};
use vertebra_reference_agent::protocol::{Resource, ResourceScope};
use vertebra_reference_agent::requester::{call_all, call_direct, call_single, discover};
use vertebra_reference_agent::tokio_xmpp::parsers::jid::Jid;

async fn scenario(kind: ServerKind) {
    let Some(bus) = Bus::start(kind, vertebra_reference_agent::policy::allow_all()).await else {
        return;
    };
    let a1 = bus
        .start_agent(bus.agent("a1").await.test_profile(true))
        .await;
    let a2 = bus
        .start_agent(bus.agent("a2").await.test_profile(true))
        .await;
    let req = bus.requester("req").await;
    let j1 = a1.node().jid().unwrap();
    let j2 = a2.node().jid().unwrap();
    bus.wait_listed(&req, test_ops::ECHO, &j1).await;
    bus.wait_listed(&req, test_ops::ECHO, &j2).await;

    // single: echo comes back
    let args = Args::new()
        .with("x", Value::I4(7))
        .with("s", Value::String(" a b ".into()));
    let (who, chunks) = call_single(
        &req,
        &bus.djid(),
        test_ops::ECHO,
        args.clone(),
        Duration::from_secs(10),
    )
    .await
    .expect("single echo");
    assert!([j1.to_string(), j2.to_string()].contains(&who.to_string()));
    assert_eq!(chunks, vec![args.clone()]);

    // streaming: count chunks with index 0..n in order
    let chunks = call_direct(
        &req,
        Jid::from(j1.clone()),
        test_ops::STREAM,
        Args::new().with("count", Value::I4(20)),
        Duration::from_secs(10),
    )
    .await
    .expect("stream");
    let idx: Vec<i32> = chunks.iter().map(|c| c.get_i4("index").unwrap()).collect();
    assert_eq!(idx, (0..20).collect::<Vec<_>>());

    // all: both agents, gathered in discover order with a reduce
    let reducer: vertebra_reference_agent::requester::Reducer = Arc::new(|ok: &[(Jid, Args)]| {
        Value::I4(ok.iter().map(|(_, a)| a.get_i4("x").unwrap()).sum())
    });
    let g = call_all(
        &req,
        &bus.djid(),
        test_ops::ECHO,
        Args::new().with("x", Value::I4(5)),
        Duration::from_secs(10),
        Some(reducer),
    )
    .await
    .expect("all");
    assert_eq!(g.outcomes.len(), 2);
    assert!(g.outcomes.iter().all(|o| o.result.is_ok()));
    assert_eq!(g.reduced, Some(Value::I4(10)));

    // unknown op: no-handler; handler failure: public reason only
    let e = call_direct(
        &req,
        Jid::from(j1.clone()),
        "/no/such/op",
        Args::new(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(e.condition, "no-handler");
    let e = call_direct(
        &req,
        Jid::from(j1.clone()),
        test_ops::FAIL,
        Args::new()
            .with("condition", Value::String("handler-failed".into()))
            .with("reason", Value::String("disk full".into())),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(e.condition, "handler-failed");
    assert_eq!(e.reason.as_deref(), Some("disk full"));
    // [VAP-TPF-004] / [VAP-TPF-012]: missing, out-of-range or non-error arguments are bad-value
    for (op, args) in [
        (
            test_ops::FAIL,
            Args::new().with("reason", Value::String("no condition".into())),
        ),
        (
            test_ops::FAIL,
            Args::new()
                .with("condition", Value::String("no-such-condition".into()))
                .with("reason", Value::String("x".into())),
        ),
        (test_ops::SLEEP, Args::new().with("ms", Value::I4(-5))),
        (test_ops::COUNTER, Args::new().with("read", Value::I4(1))),
        (
            test_ops::COUNTER,
            Args::new().with("read", Value::String("true".into())),
        ),
        (
            test_ops::STREAM,
            Args::new().with("count", Value::I4(10_001)),
        ),
        (
            test_ops::STREAM,
            Args::new()
                .with("count", Value::I4(1))
                .with("size", Value::I4(60_001)),
        ),
    ] {
        let e = call_direct(
            &req,
            Jid::from(j1.clone()),
            op,
            args,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(
            (e.kind.as_str(), e.condition.as_str()),
            ("fatal", "bad-value"),
            "{op}"
        );
    }

    // no capable agent is a terminal error, not a hang
    let e = call_single(
        &req,
        &bus.djid(),
        "/nobody/does/this",
        Args::new(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(e.condition, "no-capable-agent");

    // deadline: sleep longer than the op timeout → deadline-expired from the responder
    let t0 = std::time::Instant::now();
    let e = req
        .call_collect(
            Jid::from(j2.clone()),
            test_ops::SLEEP,
            Args::new().with("ms", Value::I4(5000)),
            CallOptions {
                timeout: Duration::from_millis(300),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.condition, "deadline-expired");
    assert!(t0.elapsed() < Duration::from_secs(3));

    // cancel: ends with cancelled well before the sleep would end
    let mut h = req.call(
        Jid::from(j2.clone()),
        test_ops::SLEEP,
        Args::new().with("ms", Value::I4(10_000)),
        CallOptions {
            timeout: Duration::from_secs(20),
            ..Default::default()
        },
    );
    assert_eq!(h.next().await, Some(CallEvent::Accepted));
    assert_eq!(h.next().await, Some(CallEvent::Acked));
    h.cancel();
    let t0 = std::time::Instant::now();
    let e = h.collect().await.unwrap_err();
    assert_eq!(e.condition, "cancelled");
    assert!(t0.elapsed() < Duration::from_secs(2));

    // discover "/" lists every agent (the CLI's `agents`)
    let all = discover(
        &req,
        &bus.djid(),
        "/",
        &Default::default(),
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(all.len(), 2);

    a1.shutdown().await;
    a2.shutdown().await;
}

/// [VAP-RES-014]..[VAP-RES-016]: an op is served only when its top-level `res` values are in
/// scope of the agent's provided resources; test-profile ops are in scope whatever they carry
/// ([VAP-TPF-006]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoping_resources_on_embedded() {
    let Some(bus) = Bus::start(
        ServerKind::Embedded,
        vertebra_reference_agent::policy::allow_all(),
    )
    .await
    else {
        return;
    };
    let a = bus
        .start_agent(
            bus.agent("scoped")
                .await
                .test_profile(true)
                .resource("cluster", "/cluster/rd00")
                .handle("/gem", |_c: Call| async move {
                    Ok(Args::new().with("served", Value::Boolean(true)))
                }),
        )
        .await;
    let req = bus.requester("req").await;
    let j = a.node().jid().unwrap();
    bus.wait_listed(&req, "/gem/list", &j).await;
    let res = |p: &str| Value::Res(Resource::parse(p).unwrap());
    let call = |args: Args, op: &'static str| {
        let req = req.clone();
        let to = Jid::from(j.clone());
        async move { call_direct(&req, to, op, args, Duration::from_secs(5)).await }
    };
    // in scope: no res at all, a matching descendant, a matching ancestor; nested res are
    // arguments, not scope ([VAP-RES-012])
    for args in [
        Args::new(),
        Args::new().with("cluster", res("/cluster/rd00/host1")),
        Args::new().with("cluster", res("/cluster")),
        Args::new().with("nested", Value::List(vec![res("/elsewhere")])),
    ] {
        call(args.clone(), "/gem/list")
            .await
            .unwrap_or_else(|e| panic!("{args:?} must be served: {e:?}"));
    }
    // out of scope: no match under the key, a key the agent provides nothing under, or one
    // key matching and another not
    for args in [
        Args::new().with("cluster", res("/cluster/rd01")),
        Args::new().with("cluster", res("/cluster/rd0")),
        Args::new().with("zone", res("/cluster/rd00")),
        Args::new()
            .with("cluster", res("/cluster/rd00"))
            .with("zone", res("/zone/a")),
    ] {
        let e = call(args.clone(), "/gem/list").await.unwrap_err();
        assert_eq!(e.condition, "no-handler", "{args:?}");
    }
    // test-profile ops are in scope whatever res they carry
    let args = Args::new().with("zone", res("/zone/a"));
    let chunks = call(args.clone(), test_ops::ECHO)
        .await
        .expect("echo in scope");
    assert_eq!(chunks, vec![args]);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_on_embedded() {
    scenario(ServerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_on_prosody() {
    scenario(ServerKind::Prosody).await;
}

async fn authz(kind: ServerKind) {
    let policy = Policy {
        rules: vec![PolicyRule {
            subject: Subject::Bare("ops@localhost".parse().unwrap()),
            operation: Resource::parse("/vertebra/test/echo").unwrap(),
            resources: ResourceScope::new(),
            responder: None,
            effect: Effect::Allow,
            ttl: 0,
        }],
    };
    let Some(bus) = Bus::start(kind, policy).await else {
        return;
    };
    let a = bus
        .start_agent(bus.agent("a").await.test_profile(true))
        .await;
    let ops = bus.requester("ops").await;
    let other = bus.requester("other").await;
    let ja = Jid::from(a.node().jid().unwrap());
    bus.wait_listed(&ops, test_ops::ECHO, &a.node().jid().unwrap())
        .await;
    let ok = call_direct(
        &ops,
        ja.clone(),
        test_ops::ECHO,
        Args::new(),
        Duration::from_secs(5),
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
    let e = call_direct(
        &other,
        ja.clone(),
        test_ops::ECHO,
        Args::new(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.kind.as_str(), e.condition.as_str()),
        ("nack", "not-authorized")
    );
    // side-effect op denied by default: the counter did not move
    let e = call_direct(
        &ops,
        ja.clone(),
        test_ops::COUNTER,
        Args::new(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(e.condition, "not-authorized");
    let _ = KINDS;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_on_embedded() {
    authz(ServerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_on_prosody() {
    authz(ServerKind::Prosody).await;
}
