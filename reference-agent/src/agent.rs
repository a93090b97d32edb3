//! The agent: a [`Node`] that serves registered handlers, advertises them to the dispatcher,
//! reports load, and asks the dispatcher to authorize every call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use vertebra_reference_agent::agent::AgentBuilder;
//! use vertebra_reference_agent::node::{Call, HandlerResult};
//! use vertebra_protocol::{Args, Value};
//! let agent = AgentBuilder::new("127.0.0.1:5222", "gems@example.com/agent".parse()?, "pw")
//!     .dispatcher("dispatcher@example.com/dispatcher".parse()?)
//!     .handle("/gem/list", |call: Call| async move {
//!         let count = call.i4("count")?;
//!         for i in 0..count {
//!             call.send(Args::new().with("gem", Value::String(format!("gem-{i}").into()))).await?;
//!         }
//!         Ok(Args::new())
//!     })
//!     .start();
//! agent.wait_online(std::time::Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_xmpp::parsers::jid::{FullJid, Jid};
use vertebra_protocol::error::Travel;
use vertebra_protocol::payloads::test_ops;
use vertebra_protocol::{Args, Condition, Resource, ResourceScope, Value};

use crate::config::{ConfigError, Misbehaviour, SpawnEnv};
use crate::conn::{ConnError, ConnectOptions};
use crate::node::{Authorizer, Call, Handler, HandlerError, Node, NodeConfig};
use vertebra_protocol::dispatch::Policy;

type Registration = Box<dyn FnOnce(&Node) + Send>;

/// Builder for an [`Agent`].
pub struct AgentBuilder {
    cfg: NodeConfig,
    handlers: Vec<(String, Registration)>,
    test_profile: bool,
}

impl AgentBuilder {
    /// Connect to `server` (`host:port`) as `jid` with `password`.
    pub fn new(server: impl Into<String>, jid: FullJid, password: impl Into<String>) -> Self {
        AgentBuilder {
            cfg: NodeConfig::new(ConnectOptions::new(server, Jid::from(jid), password)),
            handlers: vec![],
            test_profile: false,
        }
    }

    /// From the spawn-contract environment ([`SpawnEnv`]); the dispatcher defaults to
    /// `dispatcher@<domain>/dispatcher` ([VAP-TRN-018]).
    pub fn from_env(env: &SpawnEnv) -> Result<Self, ConfigError> {
        let server = env
            .server
            .clone()
            .ok_or(ConfigError::Missing("VERTEBRA_SERVER"))?;
        let jid = crate::config::parse_full_jid(
            "VERTEBRA_JID",
            env.jid
                .as_deref()
                .ok_or(ConfigError::Missing("VERTEBRA_JID"))?,
        )?;
        let password = env
            .password
            .clone()
            .ok_or(ConfigError::Missing("VERTEBRA_PASSWORD"))?;
        let dispatcher = match &env.dispatcher {
            Some(d) => crate::config::parse_full_jid("VERTEBRA_DISPATCHER", d)?,
            None => crate::config::default_dispatcher(jid.domain().as_str())?,
        };
        let mut b = AgentBuilder::new(server, jid, password)
            .dispatcher(dispatcher)
            .test_profile(env.test_profile);
        if let Some(i) = env.load_interval {
            b = b.load_interval(i);
        }
        if let Some(m) = &env.misbehave {
            let m = Misbehaviour::parse(m).ok_or_else(|| ConfigError::Bad {
                name: "VERTEBRA_MISBEHAVE",
                detail: format!("unknown misbehaviour {m:?}"),
            })?;
            b = b.misbehave(m);
        }
        Ok(b)
    }

    /// Dispatcher: advertise and report load to it, and ask it to authorize calls.
    pub fn dispatcher(mut self, d: FullJid) -> Self {
        self.cfg.authorizer = Authorizer::Dispatcher(d.clone());
        self.cfg.dispatcher = Some(d);
        self
    }

    /// Authorize with a local policy instead of the dispatcher ([VAP-SEC-006]).
    pub fn local_policy(mut self, p: Policy) -> Self {
        self.cfg.authorizer = Authorizer::Local(Arc::new(p));
        self
    }

    /// Register a handler. Its future is first polled on the node's own task (most handlers
    /// answer from their arguments and finish there); only one that is still pending gets a
    /// task of its own. So do blocking or heavy synchronous work after an `.await` (e.g. in
    /// `tokio::task::spawn_blocking`), not before the first one.
    pub fn handle(mut self, operation: &str, h: impl Handler) -> Self {
        let op = operation.to_owned();
        let op2 = op.clone();
        self.handlers
            .push((op, Box::new(move |n: &Node| n.handle(&op2, h))));
        self
    }

    /// Expose the conformance test profile (`/vertebra/test/*`) — only when asked
    /// ([VAP-SEC-027]).
    pub fn test_profile(mut self, on: bool) -> Self {
        self.test_profile = on;
        self
    }

    /// Advertised resources (keyed).
    pub fn resources(mut self, r: ResourceScope) -> Self {
        self.cfg.resources = r;
        self
    }

    /// Add one advertised keyed resource.
    pub fn resource(mut self, key: &str, path: &str) -> Self {
        if let Ok(r) = Resource::parse(path) {
            self.cfg.resources.push(Some(key), r);
        }
        self
    }

    /// Capacity (for the load value `inflight / capacity`).
    pub fn capacity(mut self, c: u32) -> Self {
        self.cfg.capacity = c.max(1);
        self
    }

    /// Load report interval.
    pub fn load_interval(mut self, i: Duration) -> Self {
        self.cfg.load_interval = i.clamp(Duration::from_millis(100), Duration::from_secs(60));
        self
    }

    /// Advertisement TTL in seconds.
    pub fn advertise_ttl(mut self, ttl: u32) -> Self {
        self.cfg.advertise_ttl = ttl.clamp(1, 86_400);
        self
    }

    /// Per-IQ timeout of outgoing requests.
    pub fn iq_timeout(mut self, t: Duration) -> Self {
        self.cfg.iq_timeout = t;
        self
    }

    /// Deliberately break one rule (mutants for the conformance harness).
    #[doc(hidden)]
    pub fn misbehave(mut self, m: Misbehaviour) -> Self {
        self.cfg.misbehave = m;
        self
    }

    /// Access the node configuration.
    pub fn config_mut(&mut self) -> &mut NodeConfig {
        &mut self.cfg
    }

    /// Start (connects in the background).
    pub fn start(mut self) -> Agent {
        if self.test_profile {
            self.cfg
                .features
                .push(vertebra_protocol::FEATURE_TEST_PROFILE.to_string());
        }
        let node = Node::start_quiet(self.cfg);
        for (_, reg) in self.handlers {
            reg(&node);
        }
        if self.test_profile {
            register_test_profile(&node);
        }
        // Advertise only once every handler is registered ([VAP-DSC-001]).
        node.begin_serving();
        Agent { node }
    }
}

/// A running agent.
#[derive(Clone, Debug)]
pub struct Agent {
    node: Node,
}

impl Agent {
    /// Wait until online.
    pub async fn wait_online(&self, d: Duration) -> Result<FullJid, ConnError> {
        self.node.wait_online(d).await
    }
    /// The node (to call other agents, set load, …).
    pub fn node(&self) -> &Node {
        &self.node
    }
    /// Withdraw adverts and disconnect.
    pub async fn shutdown(&self) {
        self.node.shutdown().await
    }
}

/// Register the conformance test profile on a node (`/vertebra/test/*`).
pub fn register_test_profile(node: &Node) {
    node.handle(test_ops::ECHO, |c: Call| async move { Ok(c.args.clone()) });
    node.handle(test_ops::STREAM, |c: Call| async move {
        // [VAP-TPF-004]: `count` i4 0..=10000, `size` i4 0..=60000 (absent: 0).
        let count = c.i4("count")?;
        if !(0..=10_000).contains(&count) {
            return Err(HandlerError::bad_value("count must be 0..=10000"));
        }
        let size = match c.args.get("size") {
            None => 0,
            Some(_) => c.i4("size")?,
        };
        if !(0..=60_000).contains(&size) {
            return Err(HandlerError::bad_value("size must be 0..=60000"));
        }
        let size = size as usize;
        for i in 0..count {
            let mut a = Args::new().with("index", Value::I4(i));
            if size > 0 {
                a.insert("payload", Value::String("x".repeat(size).into()));
            }
            c.send(a).await?;
        }
        Ok(Args::new())
    });
    node.handle(test_ops::SLEEP, |c: Call| async move {
        // [VAP-TPF-004]: `ms` i4 >= 0.
        let ms = c.i4("ms")?;
        if ms < 0 {
            return Err(HandlerError::bad_value("ms must be >= 0"));
        }
        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
        // [VAP-TPF-009]: final without values.
        Ok(Args::new())
    });
    node.handle(test_ops::FAIL, |c: Call| async move {
        // [VAP-TPF-004]: `condition` string is required.
        let cond = c.string("condition")?;
        let reason = c.args.get_str("reason").unwrap_or("requested failure");
        let condition = Condition::parse(cond);
        // [VAP-TPF-012]: only conditions that travel as an <error> (10-errors.md) are allowed;
        // [VAP-TPF-011]: the type is the one the table assigns ([VAP-ERR-001]).
        let Travel::Error(t) = condition.travel() else {
            return Err(HandlerError::bad_value(format!(
                "{cond:?} is not an error condition"
            )));
        };
        Err(HandlerError::with(t, condition, reason))
    });
    let counter = Arc::new(AtomicI32::new(0));
    node.handle(test_ops::COUNTER, move |c: Call| {
        let counter = counter.clone();
        async move {
            // [VAP-TPF-004]: `read`, when present, must be a boolean (else bad-value).
            let req = test_ops::CounterRequest::from_args(&c.args)
                .map_err(|e| HandlerError::bad_value(e.detail))?;
            let v = if req.is_read() {
                counter.load(Ordering::SeqCst)
            } else {
                counter.fetch_add(1, Ordering::SeqCst) + 1
            };
            Ok(Args::new().with("value", Value::I4(v)))
        }
    });
    node.handle(test_ops::SET_LOAD, |c: Call| async move {
        let v = c.double("value")?;
        if !v.is_finite() || v < 0.0 {
            return Err(HandlerError::bad_value("value must be finite and >= 0"));
        }
        c.node().set_load(Some(v));
        // 12.2: final without values.
        Ok(Args::new())
    });
}
