//! Shared set-up for the end-to-end tests: a server of either kind with a dispatcher.
#![allow(dead_code)]

use std::time::Duration;

use vertebra_embedded_server::testing::{ServerKind, TestServer};
use vertebra_reference_agent::agent::{Agent, AgentBuilder};
use vertebra_reference_agent::conn::ConnectOptions;
use vertebra_reference_agent::dispatcher::{Dispatcher, DispatcherConfig};
use vertebra_reference_agent::node::{Node, NodeConfig};
use vertebra_reference_agent::protocol::dispatch::Policy;
use vertebra_reference_agent::tokio_xmpp::parsers::jid::{FullJid, Jid};

pub const ONLINE: Duration = Duration::from_secs(15);

pub struct Bus {
    pub server: TestServer,
    pub addr: String,
    pub domain: String,
    pub dispatcher: Dispatcher,
    pub dispatcher_jid: FullJid,
}

pub fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

impl Bus {
    /// Start a server of `kind` and a dispatcher with `policy`. `None` = Prosody missing
    /// outside CI (the helper prints the skip; under CI=true it is an error).
    pub async fn start(kind: ServerKind, policy: Policy) -> Option<Bus> {
        init_log();
        let server = TestServer::start_or_skip(kind, "localhost")
            .await
            .expect("server starts")?;
        let addr = server.addr().to_string();
        let domain = server.domain().to_string();
        server.add_account("dispatcher", "dpw").await.unwrap();
        let dispatcher_jid: FullJid = format!("dispatcher@{domain}/dispatcher").parse().unwrap();
        let mut cfg = DispatcherConfig::new(ConnectOptions::new(
            addr.clone(),
            Jid::from(dispatcher_jid.clone()),
            "dpw",
        ));
        cfg.policy = policy;
        let dispatcher = Dispatcher::start(cfg).unwrap();
        dispatcher
            .wait_online(ONLINE)
            .await
            .expect("dispatcher online");
        Some(Bus {
            server,
            addr,
            domain,
            dispatcher,
            dispatcher_jid,
        })
    }

    pub fn jid(&self, user: &str, res: &str) -> FullJid {
        format!("{user}@{}/{res}", self.domain).parse().unwrap()
    }

    pub async fn account(&self, user: &str) {
        self.server.add_account(user, "pw").await.unwrap();
    }

    /// An agent builder for `user` (account created), pointing at the dispatcher.
    pub async fn agent(&self, user: &str) -> AgentBuilder {
        self.account(user).await;
        AgentBuilder::new(self.addr.clone(), self.jid(user, "agent"), "pw")
            .dispatcher(self.dispatcher_jid.clone())
            .load_interval(Duration::from_millis(200))
    }

    pub async fn start_agent(&self, b: AgentBuilder) -> Agent {
        let a = b.start();
        a.wait_online(ONLINE).await.expect("agent online");
        a
    }

    /// A requester node (no handlers, no adverts).
    pub async fn requester(&self, user: &str) -> Node {
        self.requester_with(user, Duration::from_secs(5)).await
    }

    /// A requester node with a given per-IQ timeout.
    pub async fn requester_with(&self, user: &str, iq_timeout: Duration) -> Node {
        self.account(user).await;
        let mut cfg = NodeConfig::new(ConnectOptions::new(
            self.addr.clone(),
            Jid::from(self.jid(user, "cli")),
            "pw",
        ));
        cfg.serve = false;
        cfg.iq_timeout = iq_timeout;
        let n = Node::start(cfg);
        n.wait_online(ONLINE).await.expect("requester online");
        n
    }

    pub fn djid(&self) -> Jid {
        Jid::from(self.dispatcher_jid.clone())
    }

    /// Wait until `agent` is listed for `op` (deadline only matters on failure).
    pub async fn wait_listed(&self, req: &Node, op: &str, agent: &FullJid) {
        assert!(
            vertebra_reference_agent::node::wait_advertised(
                req,
                &self.djid(),
                op,
                agent,
                Duration::from_secs(10)
            )
            .await,
            "{agent} never listed for {op}"
        );
    }
}

/// Both server kinds.
pub const KINDS: [ServerKind; 2] = [ServerKind::Embedded, ServerKind::Prosody];

/// Make a node vanish: no ttl-0 withdrawal, no reconnect. On the embedded server the TCP
/// connection is cut abruptly; on Prosody the stream ends.
pub async fn crash(bus: &Bus, node: &Node) {
    node.conn().stop_reconnecting();
    let jid = node.jid().expect("online");
    match bus.server.embedded() {
        Some(s) => s.disconnect(&jid).unwrap(),
        None => node.conn().close(Duration::from_secs(2)).await,
    }
}
