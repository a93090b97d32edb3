//! The `vertebra-agent` binary under the spawn contract: settings from the environment,
//! readiness = an answered ping, test profile only with VERTEBRA_TEST_PROFILE=1, exit 0 on
//! SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::Bus;
use vertebra_embedded_server::testing::ServerKind;
use vertebra_reference_agent::conn::IqReply;
use vertebra_reference_agent::protocol::payloads::test_ops;
use vertebra_reference_agent::protocol::{Args, Value};
use vertebra_reference_agent::requester::call_direct;
use vertebra_reference_agent::tokio_xmpp::parsers::jid::Jid;
use vertebra_reference_agent::tokio_xmpp::parsers::minidom::Element;

async fn spawn_agent(bus: &Bus, user: &str, test_profile: bool) -> (tokio::process::Child, Jid) {
    bus.account(user).await;
    let jid = bus.jid(user, "agent");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vertebra-agent"));
    cmd.env("VERTEBRA_SERVER", &bus.addr)
        .env("VERTEBRA_JID", jid.to_string())
        .env("VERTEBRA_PASSWORD", "pw")
        .env("VERTEBRA_DISPATCHER", bus.dispatcher_jid.to_string())
        .env("VERTEBRA_LOAD_INTERVAL_MS", "200")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    if test_profile {
        cmd.env("VERTEBRA_TEST_PROFILE", "1");
    }
    (cmd.spawn().expect("spawn vertebra-agent"), Jid::from(jid))
}

async fn wait_ping(req: &vertebra_reference_agent::node::Node, to: &Jid) {
    let t0 = Instant::now();
    loop {
        let ping = Element::builder("ping", "urn:xmpp:ping").build();
        if let Ok(IqReply::Result(_)) = req
            .conn()
            .iq(to.clone(), false, ping, Duration::from_millis(500))
            .await
        {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "agent never answered ping"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_agent_follows_the_contract() {
    let bus = Bus::start(
        ServerKind::Embedded,
        vertebra_reference_agent::policy::allow_all(),
    )
    .await
    .unwrap();
    let req = bus.requester("req").await;
    let (mut child, jid) = spawn_agent(&bus, "spawned", true).await;
    wait_ping(&req, &jid).await;
    let r = call_direct(
        &req,
        jid.clone(),
        test_ops::ECHO,
        Args::new().with("x", Value::I4(3)),
        Duration::from_secs(5),
    )
    .await
    .expect("echo");
    assert_eq!(r, vec![Args::new().with("x", Value::I4(3))]);
    let pid = child.id().expect("running");
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert_eq!(status.code(), Some(0));

    // without the flag: no test profile
    let (_child2, jid2) = spawn_agent(&bus, "plain", false).await;
    wait_ping(&req, &jid2).await;
    let e = call_direct(
        &req,
        jid2,
        test_ops::ECHO,
        Args::new(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(e.condition, "no-handler");
}
