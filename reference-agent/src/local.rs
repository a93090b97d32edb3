//! A whole bus in one process: the embedded server, a dispatcher and helpers to add agents
//! and requesters. Used by `vertebra demo`, the examples and the conformance harness's
//! embedded mode. A test and demo setup — point the same binaries at Prosody or ejabberd for
//! real deployments.

use std::time::Duration;

use tokio_xmpp::parsers::jid::{FullJid, Jid};
use vertebra_embedded_server::{EmbeddedServer, ServerConfig, ServerHandle};

use crate::agent::AgentBuilder;
use crate::conn::ConnectOptions;
use crate::dispatcher::{Dispatcher, DispatcherConfig};
use crate::node::{Node, NodeConfig};
use vertebra_protocol::dispatch::Policy;

/// Deadline for coming online in local setups.
pub const ONLINE: Duration = Duration::from_secs(10);

/// An embedded server plus a dispatcher.
pub struct LocalBus {
    /// The server.
    pub server: ServerHandle,
    /// `host:port`.
    pub addr: String,
    /// XMPP domain.
    pub domain: String,
    /// The dispatcher.
    pub dispatcher: Dispatcher,
    /// Its full JID.
    pub dispatcher_jid: FullJid,
}

impl LocalBus {
    /// Start server (domain `localhost`) and dispatcher with `policy`.
    pub async fn start(policy: Policy) -> Result<LocalBus, String> {
        Self::start_with(ServerConfig::new("localhost"), policy).await
    }

    /// Start with a given server configuration.
    pub async fn start_with(cfg: ServerConfig, policy: Policy) -> Result<LocalBus, String> {
        let server = EmbeddedServer::start(cfg)
            .await
            .map_err(|e| e.to_string())?;
        let addr = server.addr().to_string();
        let domain = server.domain().to_string();
        server
            .add_account("dispatcher", "dispatcher-pw")
            .map_err(|e| e.to_string())?;
        let dispatcher_jid: FullJid = format!("dispatcher@{domain}/dispatcher")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let mut dc = DispatcherConfig::new(ConnectOptions::new(
            addr.clone(),
            Jid::from(dispatcher_jid.clone()),
            "dispatcher-pw",
        ));
        dc.policy = policy;
        let dispatcher = Dispatcher::start(dc).map_err(|e| e.to_string())?;
        dispatcher
            .wait_online(ONLINE)
            .await
            .map_err(|e| e.to_string())?;
        Ok(LocalBus {
            server,
            addr,
            domain,
            dispatcher,
            dispatcher_jid,
        })
    }

    /// `user@domain/resource`.
    pub fn jid(&self, user: &str, resource: &str) -> FullJid {
        format!("{user}@{}/{resource}", self.domain)
            .parse()
            .expect("valid local JID")
    }

    /// Dispatcher JID as a `Jid`.
    pub fn djid(&self) -> Jid {
        Jid::from(self.dispatcher_jid.clone())
    }

    /// Create account `user` (password `user-pw`) and return an agent builder for it.
    pub fn agent(&self, user: &str) -> Result<AgentBuilder, String> {
        let pw = format!("{user}-pw");
        self.server
            .add_account(user, &pw)
            .map_err(|e| e.to_string())?;
        Ok(
            AgentBuilder::new(self.addr.clone(), self.jid(user, "agent"), pw)
                .dispatcher(self.dispatcher_jid.clone()),
        )
    }

    /// Create account `user` and connect a requester node.
    pub async fn requester(&self, user: &str) -> Result<Node, String> {
        let pw = format!("{user}-pw");
        self.server
            .add_account(user, &pw)
            .map_err(|e| e.to_string())?;
        let mut cfg = NodeConfig::new(ConnectOptions::new(
            self.addr.clone(),
            Jid::from(self.jid(user, "requester")),
            pw,
        ));
        cfg.serve = false;
        let n = Node::start(cfg);
        n.wait_online(ONLINE).await.map_err(|e| e.to_string())?;
        Ok(n)
    }

    /// Wait (deadline `d`) until `agent` is listed by the dispatcher for `op`.
    pub async fn wait_listed(&self, req: &Node, op: &str, agent: &FullJid, d: Duration) -> bool {
        crate::node::wait_advertised(req, &self.djid(), op, agent, d).await
    }
}
