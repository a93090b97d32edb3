//! The attached implementation(s) and the harness identities a run uses.

use crate::peer::Peer;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the implementation under test is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Embedded server + in-process reference agent and dispatcher.
    Reference,
    /// A real XMPP server; the implementation is already running.
    Server,
    /// The harness spawned the implementation (on the embedded server or a real one).
    Spawn,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Reference => "reference",
            Mode::Server => "server",
            Mode::Spawn => "spawn",
        }
    }
}

/// Account (localpart) of the second instance of the agent under test.
pub const AUX_USER: &str = "agentaux";
/// Application operation the reference aux agent serves (not a test-profile operation).
pub const SCOPED_OP: &str = "/app/scoped";
/// Key and path of the keyed resource the reference aux agent provides.
pub const SCOPED_KEY: &str = "cluster";
pub const SCOPED_PATH: &str = "/cluster/rd00";

/// A variant run of a spawned command: (exit code, stdout, stderr).
pub type VariantRun = (Option<i32>, String, String);

/// Control over the implementation's process or in-process instance.
pub trait TargetControl: Send + Sync {
    /// Restart the implementation (spawn mode / reference). Returns `Err` when not possible.
    fn restart(&self) -> futures::future::BoxFuture<'_, Result<(), String>>;
    /// Stop the implementation abruptly (to observe death detection). `Err` when not possible.
    fn kill(&self) -> futures::future::BoxFuture<'_, Result<(), String>>;
    /// Captured output since the last call (stdout, stderr), if any.
    fn take_output(&self) -> (String, String) {
        (String::new(), String::new())
    }
    /// Exit status if the process has exited.
    fn exited(&self) -> Option<String> {
        None
    }
    /// Start a second instance of the implementation ("aux") on the spare account
    /// [`AUX_USER`]`@<domain>/agent`, with the spawn-contract variables of the first except
    /// `VERTEBRA_TEST_PROFILE` = `test_profile` (`None`: unset). In reference mode the aux
    /// agent also serves the application operation [`SCOPED_OP`] providing the resource
    /// [`SCOPED_KEY`] = [`SCOPED_PATH`] (the resource-scoping cases). Returns its full JID once
    /// it answers a ping, and when that instance started. A running aux instance with the same
    /// `test_profile` is reused; one with another value is stopped first.
    fn start_aux(
        &self,
        _test_profile: Option<String>,
    ) -> futures::future::BoxFuture<'_, Result<(String, std::time::Instant), String>> {
        Box::pin(async { Err("this attach mode cannot start a second instance".to_string()) })
    }
    /// Stop the aux instance (if any).
    fn stop_aux(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Whether the aux instance serves [`SCOPED_OP`] with [`SCOPED_KEY`] = [`SCOPED_PATH`].
    fn aux_scoped(&self) -> bool {
        false
    }
    /// Spawn mode only: SIGTERM the process; `Ok(Some(code))` when it exited within `budget`.
    fn terminate(
        &self,
        _budget: Duration,
    ) -> futures::future::BoxFuture<'_, Result<Option<i32>, String>> {
        Box::pin(async { Err("not a spawned process".to_string()) })
    }
    /// Spawn mode only: run the command once more with some variables changed, until it exits
    /// or `budget` passes; returns (exit code, stdout, stderr). The running instance is kept.
    fn run_variant(
        &self,
        _env: Vec<(String, String)>,
        _budget: Duration,
    ) -> futures::future::BoxFuture<'_, Result<VariantRun, String>> {
        Box::pin(async { Err("not a spawned process".to_string()) })
    }
}

/// Raw injection into the agent's stream (embedded server only): any `from`, any bytes.
pub trait Injector: Send + Sync {
    /// Deliver `xml` (a whole stanza, possibly not well-formed) to the session of `to`
    /// exactly as written, claiming to be from `from` when the stanza has no from.
    fn inject(&self, to: &str, xml: &str) -> Result<(), String>;
    /// Deliver an element (any `from`).
    fn inject_el(&self, el: minidom::Element) -> Result<(), String>;
    /// Position in the server's wire trace.
    fn mark(&self) -> u64;
    /// Stanzas the session `jid` sent (as read by the server) after `mark`.
    fn sent_by(&self, jid: &str, after: u64) -> Vec<minidom::Element>;
    /// Cut the session of `jid` abruptly (TCP close, as if the network failed).
    fn disconnect(&self, _jid: &str) -> Result<(), String> {
        Err("this server cannot cut a session".into())
    }
}

/// A third-party (or reference) dispatcher under test and the harness's agent identities.
pub struct DispatcherTarget {
    pub jid: String,
    /// The requester identity the dispatcher cases use (own trace, runs concurrently with
    /// the agent cases).
    pub requester: Option<Peer>,
    /// Harness identities that act as agents towards the dispatcher.
    pub agents: Vec<Peer>,
    /// Harness identity in another XMPP domain, if the server has one.
    pub foreign: Option<Peer>,
}

/// Everything a case can use.
pub struct Session {
    pub mode: Mode,
    pub domain: String,
    /// Full JID of the agent under test (agent cases).
    pub agent: Option<String>,
    /// The harness playing the dispatcher the agent was given (agent cases).
    pub dsp: Option<Peer>,
    /// An authorized requester identity.
    pub req: Peer,
    /// A requester the harness's dispatcher denies.
    pub stranger: Peer,
    /// A dispatcher under test (dispatcher cases).
    pub dispatcher: Option<DispatcherTarget>,
    /// Raw stream injection (embedded mode only).
    pub inject: Option<Arc<dyn Injector>>,
    /// Process control of the agent under test.
    pub control: Option<Arc<dyn TargetControl>>,
    /// The agent's disco#info features (read once at attach).
    pub features: Mutex<Vec<String>>,
    /// The dispatcher's disco#info features.
    pub dispatcher_features: Mutex<Vec<String>>,
    /// Load interval the agent was configured with (ms), when the harness set it.
    pub load_interval_ms: Option<u64>,
    /// Server address and the harness identities' password (extra identities per case).
    pub addr: String,
    pub password: String,
    /// Password of the requester account (`req_bare`); equals `password` unless --server mode
    /// was given a separate requester account.
    pub req_password: String,
    /// Bare JID under which extra requester identities log in (`<bare>/<resource>`).
    pub req_bare: String,
    /// Trace the dispatcher-side identities record into.
    pub dsp_trace: crate::trace::Trace,
    /// The reference dispatcher's policy allows `requester@<domain>` to call `/allowed`.
    pub reference_policy: bool,
}

impl Session {
    pub fn has_feature(&self, var: &str) -> bool {
        self.features
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|f| f == var)
            || self
                .dispatcher_features
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|f| f == var)
    }

    /// Is the agent under test answering pings?
    pub async fn agent_alive(&self, budget: Duration) -> bool {
        match &self.agent {
            Some(a) => matches!(self.req.ping(a, budget).await, Ok(true)),
            None => true,
        }
    }
}
