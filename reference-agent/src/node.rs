//! A Vertebra node: one XMPP session that is at the same time a responder (serves the
//! operations registered as handlers) and a requester (calls operations on others).
//! The agent, the dispatcher and the CLI are all nodes with different handlers.
//!
//! This is the tokio layer: it moves stanzas and time. Every decision of the op lifecycle
//! (op result, ack/nack, data window, final/error, tokens, deadlines, cancel, duplicate
//! suppression, IQ retransmission) is taken by the sans-IO machines of `vertebra-protocol`:
//! [`Calls`] (the requester side) and [`Responders`] (the responder side). The node feeds them
//! incoming stanzas and the current time, sends the IQs they emit, runs handlers when they say
//! `Start`, stops them on `Stop`, and sleeps until their `next_timeout()`.
//!
//! Deliberate rule violations for the conformance self-test ([`Misbehaviour`]) are applied at
//! this I/O boundary only — an outgoing IQ rewritten or dropped, an incoming one rewritten, the
//! duplicate table bypassed — each marked `MUTANT` below; with `Misbehaviour::None` none of
//! them has any effect.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_xmpp::parsers::{
    iq::Iq,
    jid::{FullJid, Jid},
    minidom::Element,
    presence::{Presence, Type as PresenceType},
    stanza_error::{DefinedCondition, ErrorType as XmppErrorType, StanzaError},
};
use vertebra_protocol::error::Travel;
use vertebra_protocol::machine::{IqBody, Millis, OutIq};
use vertebra_protocol::mux::{CallId, Calls, IdMap, OpId, Responders};
use vertebra_protocol::payloads::{
    AuthorizeRequest, AuthorizeResponse, OP_ADVERTISE, OP_AUTHORIZE, OP_DISCOVER,
};
use vertebra_protocol::requester::{
    CallEvent as MachineEvent, Outcome, OutcomeKind, Output, Requester,
};
use vertebra_protocol::responder::{Decision, ResponderConfig, ResponderEvent, Route};
use vertebra_protocol::stanza::MAX_TIMEOUT_MS;
use vertebra_protocol::{
    Args, Condition, Data, ErrorType, Load, Op, OpResult, OpToken, RequestToken, Resource,
    ResourceScope, Scope, Token, Value, NS,
};

use crate::config::Misbehaviour;
use crate::conn::{Conn, ConnError, ConnectOptions, Incoming, IqReply};
use vertebra_protocol::dispatch::Policy;

/// How long a receiver remembers answered IQ sets ([VAP-OPS-065]).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(300);
/// Upper bound on remembered IQ sets (memory bound under extreme rates).
pub const DEDUP_MAX: usize = 200_000;
/// How long a responder waits for an authorization answer ([VAP-SEC-009]).
pub const AUTHORIZE_TIMEOUT: Duration = Duration::from_millis(2000);
/// Requester grace after the op deadline ([VAP-OPS-062]).
pub const DEADLINE_GRACE: Duration = Duration::from_millis(2000);

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

/// A failure a handler reports. Only `public` goes on the wire ([VAP-SEC-024], [VAP-SEC-026]).
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerError {
    /// The text the requester sees in `reason`.
    pub public: String,
    /// Override of the wire condition (default `handler-failed`); e.g. `bad-value`.
    pub condition: Option<Condition>,
    /// Override of the error type (default `error`).
    pub error_type: Option<ErrorType>,
}

impl HandlerError {
    /// A `handler-failed` error with a public message.
    pub fn new(public: impl Into<String>) -> Self {
        HandlerError {
            public: public.into(),
            condition: None,
            error_type: None,
        }
    }
    /// A `bad-value` error (argument missing or of the wrong type).
    pub fn bad_value(public: impl Into<String>) -> Self {
        HandlerError {
            public: public.into(),
            condition: Some(Condition::BadValue),
            error_type: Some(ErrorType::Fatal),
        }
    }
    /// Any condition/type.
    pub fn with(error_type: ErrorType, condition: Condition, public: impl Into<String>) -> Self {
        HandlerError {
            public: public.into(),
            condition: Some(condition),
            error_type: Some(error_type),
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.public)
    }
}

/// What a handler returns: the values of the last chunk (sent on `final` on the fast path, or
/// as a last `data` otherwise; empty = no last chunk).
pub type HandlerResult = Result<Args, HandlerError>;
/// Boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

/// An operation handler. Implemented for every `Fn(Call) -> impl Future<Output = HandlerResult>`.
pub trait Handler: Send + Sync + 'static {
    /// Serve one call.
    fn call(&self, call: Call) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Call) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, call: Call) -> HandlerFuture {
        Box::pin(self(call))
    }
}

/// One call as its handler sees it: typed arguments, a way to stream chunks, the deadline
/// and cancellation. The handler's future is dropped when the op is cancelled or its deadline
/// passes, so a handler that only awaits is stopped without further work.
pub struct Call {
    /// Requester (full JID, as stamped by the server).
    pub from: Jid,
    /// Operation path.
    pub operation: Resource,
    /// Named arguments.
    pub args: Args,
    /// Deadline (measured from receipt of the op).
    pub deadline: Instant,
    op: OpId,
    signals: Arc<OpSignals>,
    node: Node,
}

/// What the node signals to a running handler: cancellation and progress of its op. One
/// allocation per op, shared by the node's [`OpCtx`] and the handler's [`Call`].
#[derive(Default)]
struct OpSignals {
    /// Set once the op is stopped (cancel, deadline, requester gone, session lost).
    cancelled: AtomicBool,
    /// Woken when `cancelled` is set.
    cancel: Notify,
    /// Woken whenever the op made progress (a chunk left the queue, the op ended).
    progress: Notify,
}

impl OpSignals {
    fn stop(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel.notify_waiters();
    }
}

impl Call {
    /// Stream one chunk of named values to the requester (waits while the data window is full).
    pub async fn send(&self, chunk: Args) -> Result<(), HandlerError> {
        self.node
            .op_chunk(self.op, &self.signals.progress, chunk)
            .await
    }
    /// Resolves when the requester cancels.
    pub async fn cancelled(&self) {
        loop {
            let mut wait = std::pin::pin!(self.signals.cancel.notified());
            wait.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            wait.await;
        }
    }
    /// Whether the requester cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.signals.cancelled.load(Ordering::SeqCst)
    }
    /// The node serving the call (to call other agents, change load, …).
    pub fn node(&self) -> &Node {
        &self.node
    }
    /// Required `i4` argument.
    pub fn i4(&self, name: &str) -> Result<i32, HandlerError> {
        self.args
            .get_i4(name)
            .ok_or_else(|| HandlerError::bad_value(format!("i4 argument {name:?} is required")))
    }
    /// Required `string` argument.
    pub fn string(&self, name: &str) -> Result<&str, HandlerError> {
        self.args
            .get_str(name)
            .ok_or_else(|| HandlerError::bad_value(format!("string argument {name:?} is required")))
    }
    /// Required `double` argument.
    pub fn double(&self, name: &str) -> Result<f64, HandlerError> {
        self.args
            .get_double(name)
            .ok_or_else(|| HandlerError::bad_value(format!("double argument {name:?} is required")))
    }
    /// Required `res` argument.
    pub fn res(&self, name: &str) -> Result<&Resource, HandlerError> {
        self.args
            .get_res(name)
            .ok_or_else(|| HandlerError::bad_value(format!("res argument {name:?} is required")))
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Who decides whether an op may run ([VAP-SEC-006], [VAP-SEC-010]).
#[derive(Debug, Clone)]
pub enum Authorizer {
    /// Ask this dispatcher (`/security/authorize`); no answer within 2 s nacks
    /// `authorization-unavailable` ([VAP-SEC-009]).
    Dispatcher(FullJid),
    /// A local policy.
    Local(Arc<Policy>),
    /// Allow requesters of the node's own domain (the dispatcher's own ops, [VAP-SEC-017]).
    SameDomain,
    /// Nack everything (no dispatcher and no policy configured).
    DenyAll,
}

/// Node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Connection.
    pub connect: ConnectOptions,
    /// Authorization.
    pub authorizer: Authorizer,
    /// Dispatcher to report load and advertise to (None = none).
    pub dispatcher: Option<FullJid>,
    /// disco identity type (`vertebra-agent` / `vertebra-dispatcher`).
    pub identity_type: &'static str,
    /// Extra disco features.
    pub features: Vec<String>,
    /// Load report interval ([VAP-LOAD-005]).
    pub load_interval: Duration,
    /// Capacity reported in load and used for `value = inflight / capacity`.
    pub capacity: u32,
    /// Per-IQ response timeout of the requester side ([VAP-OPS-063]).
    pub iq_timeout: Duration,
    /// Advertisement TTL (seconds).
    pub advertise_ttl: u32,
    /// Resources advertised with the operations.
    pub resources: ResourceScope,
    /// Deliberate violation (mutants).
    pub misbehave: Misbehaviour,
    /// Send load reports / advertise (false for pure requesters such as the CLI).
    pub serve: bool,
}

impl NodeConfig {
    /// Defaults for an agent.
    pub fn new(connect: ConnectOptions) -> Self {
        NodeConfig {
            connect,
            authorizer: Authorizer::DenyAll,
            dispatcher: None,
            identity_type: vertebra_protocol::IDENTITY_TYPE_AGENT,
            features: vec![],
            load_interval: Duration::from_millis(1000),
            capacity: 8,
            iq_timeout: Duration::from_secs(10),
            advertise_ttl: 60,
            resources: ResourceScope::new(),
            misbehave: Misbehaviour::None,
            serve: true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requester-side outcomes
// ---------------------------------------------------------------------------------------------

/// A failed call: the condition (wire or local), its error type if it came from the wire, and
/// the public reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{condition}{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
pub struct CallError {
    /// Condition text (`not-authorized`, `responder-gone`, `deadline-expired`, …).
    pub condition: String,
    /// `nack`, `error`, `fatal`, `cancel`, or `local` for outcomes decided by the requester.
    pub kind: String,
    /// Public reason text.
    pub reason: Option<String>,
    /// Whether the op had been acknowledged before it failed.
    pub acked: bool,
}

impl CallError {
    /// A locally decided outcome.
    pub fn local(condition: &str, reason: impl Into<String>) -> Self {
        CallError {
            condition: condition.into(),
            kind: "local".into(),
            reason: Some(reason.into()),
            acked: false,
        }
    }
    /// Whether `single` dispatch may move to the next candidate ([VAP-DSP-009]).
    pub fn try_next(&self) -> bool {
        !self.acked
            && (self.kind == "nack"
                || matches!(
                    self.condition.as_str(),
                    "no-handler" | "overloaded" | "responder-gone"
                ))
    }
}

/// Events of one call, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// The op result arrived: the responder took the op (an ack, or for the fast path
    /// [`CallEvent::Acked`], follows). `all` dispatch counts ops waiting for this
    /// ([VAP-DSP-013]).
    Accepted,
    /// The responder acknowledged (ack or fast path).
    Acked,
    /// One chunk of values.
    Data(Args),
    /// Terminal success with the number of chunks.
    Done {
        /// Chunks delivered.
        count: u64,
    },
    /// Terminal failure.
    Failed(CallError),
}

/// A call in progress. Receive events with [`CallHandle::next`] or gather with
/// [`CallHandle::collect`]. Dropping it does not cancel the op; use [`CallHandle::cancel`].
pub struct CallHandle {
    rx: mpsc::UnboundedReceiver<CallEvent>,
    cancel: Option<(Node, CallId)>,
    /// Responder.
    pub to: Jid,
}

impl CallHandle {
    /// Next event; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<CallEvent> {
        self.rx.recv().await
    }
    /// Ask the responder to cancel (the call then ends with `cancelled`, [VAP-OPS-053]).
    pub fn cancel(&mut self) {
        if let Some((node, id)) = self.cancel.take() {
            node.cancel_call(id);
        }
    }
    /// Gather all chunks until the terminal event.
    pub async fn collect(mut self) -> Result<Vec<Args>, CallError> {
        let mut chunks = vec![];
        while let Some(ev) = self.rx.recv().await {
            match ev {
                CallEvent::Accepted | CallEvent::Acked => {}
                CallEvent::Data(a) => chunks.push(a),
                CallEvent::Done { .. } => return Ok(chunks),
                CallEvent::Failed(e) => return Err(e),
            }
        }
        Err(CallError::local("internal", "call ended without outcome"))
    }
}

/// Options of one call.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Op deadline (`timeout`).
    pub timeout: Duration,
    /// Data window.
    pub window: Option<u8>,
    /// Scope attribute.
    pub scope: Option<Scope>,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            timeout: Duration::from_secs(30),
            window: None,
            scope: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Node internals
// ---------------------------------------------------------------------------------------------

/// A running call on the requester side: where its events go.
struct CallCtx {
    events: EventSink,
    /// Session number the call was started in (calls of a lost session are abandoned).
    session: u64,
}

/// Where the events of a call go.
enum EventSink {
    /// Every event, in order, to a [`CallHandle`].
    Events(mpsc::UnboundedSender<CallEvent>),
    /// [`Node::call_collect`]: the chunks are gathered here and only the outcome wakes the
    /// caller, once per call.
    Collect {
        chunks: Vec<Args>,
        done: Option<oneshot::Sender<Result<Vec<Args>, CallError>>>,
    },
}

impl EventSink {
    fn send(&mut self, ev: CallEvent) {
        match self {
            EventSink::Events(tx) => {
                let _ = tx.send(ev);
            }
            EventSink::Collect { chunks, done } => {
                let outcome = match ev {
                    CallEvent::Accepted | CallEvent::Acked => return,
                    CallEvent::Data(a) => {
                        chunks.push(a);
                        return;
                    }
                    CallEvent::Done { .. } => Ok(std::mem::take(chunks)),
                    CallEvent::Failed(e) => Err(e),
                };
                if let Some(tx) = done.take() {
                    let _ = tx.send(outcome);
                }
            }
        }
    }
}

/// A running op on the responder side: the handler and how to stop it.
struct OpCtx {
    handler: Option<Arc<dyn Handler>>,
    task: Option<tokio::task::AbortHandle>,
    /// Cancellation and progress, shared with the handler's [`Call`].
    signals: Arc<OpSignals>,
    /// When the op was received (the handler's deadline is measured from it).
    received: Instant,
    /// MUTANT wrong-token: (real token, fake token) in outgoing stanzas.
    fake_token: Option<(String, String)>,
}

/// The protocol machines of one node and the tokio-side context of their calls and ops.
struct Engine {
    calls: Calls,
    responders: Option<Responders>,
    call_ctx: IdMap<CallCtx>,
    op_ctx: IdMap<OpCtx>,
    /// Handlers started under the lock, run as soon as it is released (see [`EngineGuard`]).
    starting: Vec<(OpId, Arc<OpSignals>, HandlerFuture)>,
}

/// The engine lock. Handlers the machines started while it was held are run when it is
/// released: each is polled once right there, and only one that does not finish at once gets
/// a task of its own (most handlers that answer from their arguments never need one).
struct EngineGuard<'a> {
    node: &'a Node,
    guard: Option<MutexGuard<'a, Engine>>,
}

impl std::ops::Deref for EngineGuard<'_> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for EngineGuard<'_> {
    fn deref_mut(&mut self) -> &mut Engine {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for EngineGuard<'_> {
    fn drop(&mut self) {
        let Some(mut g) = self.guard.take() else {
            return;
        };
        if g.starting.is_empty() {
            return;
        }
        let starting = std::mem::take(&mut g.starting);
        drop(g);
        for (oid, signals, fut) in starting {
            self.node.run_handler(oid, &signals, fut);
        }
    }
}

/// A registered handler with its operation path parsed once (`None`: not a path, never
/// selected).
type Registered = (Option<Resource>, Arc<dyn Handler>);
type PresenceHook = Box<dyn Fn(&Node, &Presence) + Send + Sync>;
type AdmissionHook = Box<dyn Fn(&Jid, &Op) -> bool + Send + Sync>;
/// Answer to a foreign-namespace IQ: result payload or stanza error.
pub type IqHookResult = Result<Option<Element>, Box<StanzaError>>;
type IqHook = Box<dyn Fn(&Node, &Jid, &Element) -> IqHookResult + Send + Sync>;
type OnlineHook = Box<dyn Fn(&Node) + Send + Sync>;

struct Inner {
    conn: Conn,
    cfg: NodeConfig,
    /// Time origin of the machines' [`Millis`].
    epoch: Instant,
    engine: Mutex<Engine>,
    /// Wakes the timer task when a machine's next timeout moved earlier than `timer_at`.
    timer_kick: Notify,
    /// The instant the timer task sleeps until (`Millis::MAX`: no timeout pending).
    timer_at: std::sync::atomic::AtomicU64,
    closed: AtomicBool,
    /// Registered operation path → (the path parsed once, handler).
    handlers: RwLock<HashMap<String, Registered>>,
    authz_cache: Mutex<HashMap<String, Instant>>,
    presence_sent: Mutex<HashSet<Jid>>,
    inflight: AtomicU32,
    load_override: Mutex<Option<f64>>,
    load_changed: Notify,
    ops_changed: Notify,
    serving: AtomicBool,
    presence_hook: RwLock<Option<PresenceHook>>,
    admission: RwLock<Option<AdmissionHook>>,
    iq_hooks: RwLock<HashMap<String, IqHook>>,
    online_hook: RwLock<Option<OnlineHook>>,
    /// MUTANT no-tenant-isolation only: foreign requesters of the dispatcher's discover op
    /// under an alias of our own domain, and back.
    tenant_aliases: Mutex<TenantAliases>,
    session: watch::Sender<u64>,
    stop: watch::Sender<bool>,
}

/// A running node (cheap to clone).
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("jid", &self.inner.cfg.connect.jid)
            .finish()
    }
}

/// Foreign requesters under own-domain aliases (MUTANT no-tenant-isolation only).
#[derive(Default)]
struct TenantAliases {
    /// Real JID → alias.
    alias: HashMap<Jid, Jid>,
    /// Alias → real JID.
    real: HashMap<Jid, Jid>,
}

fn stanza_err(t: XmppErrorType, c: DefinedCondition) -> StanzaError {
    StanzaError::new(t, c, "en", "")
}

fn domain(j: &Jid) -> &str {
    j.domain().as_str()
}

impl Node {
    fn start_inner(cfg: NodeConfig) -> Node {
        let (conn, incoming) = Conn::connect(cfg.connect.clone());
        let mut features = vec![
            vertebra_protocol::FEATURE_1_0.to_string(),
            vertebra_protocol::FEATURE_CANCEL.to_string(),
        ];
        if cfg.serve {
            features.push(vertebra_protocol::FEATURE_LOAD.to_string());
        }
        features.extend(cfg.features.iter().cloned());
        let fr: Vec<&str> = features.iter().map(String::as_str).collect();
        conn.set_disco(
            vertebra_protocol::IDENTITY_CATEGORY,
            cfg.identity_type,
            "vertebra reference",
            &fr,
        );
        let (session, _) = watch::channel(0u64);
        let (stop, _) = watch::channel(false);
        let mut calls = Calls::new();
        // [VAP-OPS-063] the configured per-IQ timeout (10 s by default).
        calls.set_iq_timeout(cfg.iq_timeout.as_millis().max(1) as Millis);
        let node = Node {
            inner: Arc::new(Inner {
                conn,
                cfg,
                epoch: Instant::now(),
                engine: Mutex::new(Engine {
                    calls,
                    responders: None,
                    call_ctx: IdMap::default(),
                    op_ctx: IdMap::default(),
                    starting: Vec::new(),
                }),
                timer_kick: Notify::new(),
                timer_at: std::sync::atomic::AtomicU64::new(Millis::MAX),
                closed: AtomicBool::new(false),
                handlers: RwLock::new(HashMap::new()),
                authz_cache: Mutex::new(HashMap::new()),
                presence_sent: Mutex::new(HashSet::new()),
                inflight: AtomicU32::new(0),
                load_override: Mutex::new(None),
                load_changed: Notify::new(),
                ops_changed: Notify::new(),
                serving: AtomicBool::new(false),
                presence_hook: RwLock::new(None),
                admission: RwLock::new(None),
                iq_hooks: RwLock::new(HashMap::new()),
                online_hook: RwLock::new(None),
                tenant_aliases: Mutex::new(TenantAliases::default()),
                session,
                stop,
            }),
        };
        tokio::spawn(router(node.clone(), incoming));
        tokio::spawn(timer(Arc::downgrade(&node.inner)));
        node
    }

    /// Start a node and, for a serving node with a dispatcher, its load reports and
    /// advertisements. Handlers registered later are advertised on the next refresh, which
    /// [`Node::handle`] triggers at once.
    pub fn start(cfg: NodeConfig) -> Node {
        let node = Self::start_quiet(cfg);
        node.begin_serving();
        node
    }

    /// Like [`Node::start`] without load reports and advertisements; call
    /// [`Node::begin_serving`] once the handlers are registered.
    pub fn start_quiet(cfg: NodeConfig) -> Node {
        Self::start_inner(cfg)
    }

    /// Start load reports and advertisements (once; no-op without a dispatcher).
    pub fn begin_serving(&self) {
        if self.inner.cfg.serve
            && self.inner.cfg.dispatcher.is_some()
            && !self.inner.serving.swap(true, Ordering::SeqCst)
        {
            tokio::spawn(load_reporter(self.clone()));
            tokio::spawn(advertiser(self.clone()));
        }
    }

    /// The connection.
    pub fn conn(&self) -> &Conn {
        &self.inner.conn
    }

    /// Configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.cfg
    }

    /// Wait until online.
    pub async fn wait_online(&self, deadline: Duration) -> Result<FullJid, ConnError> {
        self.inner.conn.wait_online(deadline).await
    }

    /// Our bound JID.
    pub fn jid(&self) -> Option<FullJid> {
        self.inner.conn.bound_jid()
    }

    /// Register a handler for an operation path; it also serves ops whose type has this path
    /// as a segment-wise ancestor, unless a deeper registered path does ([VAP-RES-017]).
    /// The handler's first poll runs on the node's task (see [`crate::agent::AgentBuilder::handle`]):
    /// no blocking work before its first `.await`.
    pub fn handle(&self, operation: &str, h: impl Handler) {
        self.inner.handlers.write().unwrap().insert(
            operation.to_owned(),
            (Resource::parse(operation).ok(), Arc::new(h)),
        );
        self.inner.ops_changed.notify_one();
    }

    /// Registered operation paths, sorted.
    pub fn operations(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .handlers
            .read()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Hook for presence stanzas (the dispatcher's load table).
    pub fn on_presence(&self, f: impl Fn(&Node, &Presence) + Send + Sync + 'static) {
        *self.inner.presence_hook.write().unwrap() = Some(Box::new(f));
    }

    /// Admission check run before authorization: `false` nacks the op with `not-authorized`
    /// (the dispatcher refuses advertisements naming another JID this way, [VAP-DSC-004]).
    pub fn set_admission(&self, f: impl Fn(&Jid, &Op) -> bool + Send + Sync + 'static) {
        *self.inner.admission.write().unwrap() = Some(Box::new(f));
    }

    /// Handle IQ sets/gets whose payload is in namespace `ns` (not Vertebra).
    pub fn on_iq_ns(
        &self,
        ns: &str,
        f: impl Fn(&Node, &Jid, &Element) -> IqHookResult + Send + Sync + 'static,
    ) {
        self.inner
            .iq_hooks
            .write()
            .unwrap()
            .insert(ns.to_owned(), Box::new(f));
    }

    /// Hook called each time the session is (re)bound.
    pub fn on_online(&self, f: impl Fn(&Node) + Send + Sync + 'static) {
        *self.inner.online_hook.write().unwrap() = Some(Box::new(f));
    }

    /// Force the reported load value (None = inflight / capacity).
    pub fn set_load(&self, v: Option<f64>) {
        *self.inner.load_override.lock().unwrap() = v;
        self.inner.load_changed.notify_one();
    }

    /// Ops currently running.
    pub fn inflight(&self) -> u32 {
        self.inner.inflight.load(Ordering::Relaxed)
    }

    /// Close: withdraw advertisements (ttl 0, [VAP-DSC-011]) and end the session.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        if self.inner.cfg.serve && self.jid().is_some() {
            if let Some(d) = self.inner.cfg.dispatcher.clone() {
                let req = vertebra_protocol::payloads::AdvertiseRequest {
                    operations: vec![],
                    resources: ResourceScope::new(),
                    ttl: 0,
                    advertiser: None,
                };
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    self.call_collect(
                        Jid::from(d),
                        vertebra_protocol::payloads::OP_ADVERTISE,
                        req.to_args(),
                        CallOptions {
                            timeout: Duration::from_millis(500),
                            ..Default::default()
                        },
                    ),
                )
                .await;
            }
        }
        self.inner.conn.close(Duration::from_secs(2)).await;
    }

    /// Current load report.
    pub fn load(&self) -> Load {
        let inflight = self.inflight();
        let cap = self.inner.cfg.capacity.max(1);
        let value = self
            .inner
            .load_override
            .lock()
            .unwrap()
            .unwrap_or(inflight as f64 / cap as f64);
        Load {
            value,
            inflight: Some(inflight),
            capacity: Some(cap),
            interval: Some(self.inner.cfg.load_interval.as_millis() as u32),
        }
    }

    // ----- time and the machines -------------------------------------------------------------

    /// Now on the machines' clock.
    fn now_ms(&self) -> Millis {
        self.inner.epoch.elapsed().as_millis() as Millis
    }

    fn engine(&self) -> EngineGuard<'_> {
        EngineGuard {
            node: self,
            guard: Some(self.inner.engine.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }

    /// Send one IQ a machine emitted.
    fn send_out(&self, mut iq: OutIq) {
        if self.inner.cfg.misbehave == Misbehaviour::NoTenantIsolation {
            // MUTANT no-tenant-isolation: stanzas for an aliased foreign requester go to it.
            if let Some(real) = self.inner.tenant_aliases.lock().unwrap().real.get(&iq.to) {
                iq.to = real.clone();
            }
        }
        let _ = self.inner.conn.send(into_iq(iq));
    }

    /// MUTANT no-tenant-isolation: the JID the machines see for an IQ from `from`. A discover
    /// op (`op_type`) from another domain gets an alias in our own domain, so the responder's
    /// tenant check ([VAP-SEC-021]) lets it through to the discover handler, which then lists
    /// our own tenant's agents to the foreign requester ([VAP-SEC-019] broken); later IQs of
    /// that requester (results, cancels) use the same alias. Anything else is unchanged.
    fn mutant_alias(&self, from: Jid, op_type: Option<&str>) -> Jid {
        if self.inner.cfg.misbehave != Misbehaviour::NoTenantIsolation {
            return from;
        }
        let mut t = self.inner.tenant_aliases.lock().unwrap();
        if let Some(alias) = t.alias.get(&from) {
            if op_type.is_none() || op_type == Some(OP_DISCOVER) {
                return alias.clone();
            }
            return from;
        }
        let Some(me) = self.jid() else { return from };
        if op_type != Some(OP_DISCOVER) || from.domain() == me.domain() {
            return from;
        }
        let local = from.node().map_or("foreign", |n| n.as_str());
        let Ok(alias) = Jid::new(&format!("{local}@{}/{from}", me.domain())) else {
            return from;
        };
        t.alias.insert(from.clone(), alias.clone());
        t.real.insert(alias.clone(), from);
        alias
    }

    // ----- requester side -------------------------------------------------------------------

    /// Call `operation` on `to` (direct; `to` is a full JID, [VAP-TRN-016]). Returns at once;
    /// events arrive on the handle.
    pub fn call(&self, to: Jid, operation: &str, args: Args, opts: CallOptions) -> CallHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let cid = self.start_call(&to, operation, args, &opts, EventSink::Events(tx));
        CallHandle {
            rx,
            cancel: cid.map(|cid| (self.clone(), cid)),
            to,
        }
    }

    /// Start a call whose events go to `sink`; `None` when it failed at once (the failure is
    /// in the sink).
    fn start_call(
        &self,
        to: &Jid,
        operation: &str,
        args: Args,
        opts: &CallOptions,
        mut sink: EventSink,
    ) -> Option<CallId> {
        let op = match build_op(operation, args, opts) {
            Ok(op) => op,
            Err(e) => {
                sink.send(CallEvent::Failed(e));
                return None;
            }
        };
        self.ensure_presence_to(to);
        let now = self.now_ms();
        let session = *self.inner.session.borrow();
        // The machine and its op IQ are built before the engine lock is taken (a shorter hold
        // against the router feeding the machines); [VAP-OPS-063] the configured per-IQ
        // timeout, as set on `Calls`.
        let iq_timeout = self.inner.cfg.iq_timeout.as_millis().max(1) as Millis;
        let started = Requester::start_with_iq_timeout(
            to.clone(),
            &op,
            self.inner.conn.new_id(),
            now,
            iq_timeout,
        );
        let mut eng = self.engine();
        match started {
            Ok((r, out)) => {
                let cid = eng.calls.adopt(r);
                eng.call_ctx.insert(
                    cid,
                    CallCtx {
                        events: sink,
                        session,
                    },
                );
                self.drive_call(&mut eng, cid, out);
                Some(cid)
            }
            Err(e) => {
                drop(eng);
                sink.send(CallEvent::Failed(CallError::local(
                    "bad-request",
                    e.to_string(),
                )));
                None
            }
        }
    }

    fn cancel_call(&self, cid: CallId) {
        let now = self.now_ms();
        let mut eng = self.engine();
        let out = eng.calls.cancel(cid, self.inner.conn.new_id(), now);
        self.drive_call(&mut eng, cid, out);
        drop(eng);
    }

    /// Carry out what the requester machine of one call asked for.
    fn drive_call(&self, eng: &mut Engine, cid: CallId, out: Vec<Output<MachineEvent>>) {
        for o in out {
            match o {
                Output::Send(iq) => self.send_out(iq),
                Output::Event(ev) => {
                    let last = matches!(ev, MachineEvent::Ended(_));
                    let (ev, then) = match ev {
                        MachineEvent::Accepted { fast_path, .. } => {
                            (CallEvent::Accepted, fast_path.then_some(CallEvent::Acked))
                        }
                        MachineEvent::Acked => (CallEvent::Acked, None),
                        MachineEvent::Data { args, .. } => (CallEvent::Data(args), None),
                        MachineEvent::Ended(o) => (outcome_event(o), None),
                    };
                    let mut ended: Option<CallCtx>;
                    let ctx = if last {
                        ended = eng.call_ctx.remove(&cid);
                        ended.as_mut()
                    } else {
                        eng.call_ctx.get_mut(&cid)
                    };
                    if let Some(c) = ctx {
                        c.events.send(ev);
                        if let Some(ev) = then {
                            c.events.send(ev);
                        }
                    }
                }
            }
        }
        self.note_timeout(eng.calls.get(cid).and_then(|r| r.next_timeout()));
    }

    /// Wake the timer task if `t` is earlier than what it sleeps for.
    fn note_timeout(&self, t: Option<Millis>) {
        if let Some(t) = t {
            if t < self.inner.timer_at.load(Ordering::Relaxed) {
                self.inner.timer_at.store(t, Ordering::Relaxed);
                self.inner.timer_kick.notify_one();
            }
        }
    }

    /// Call and gather all chunks (like [`CallHandle::collect`] on [`Node::call`], with one
    /// wake-up per call instead of one per event).
    pub async fn call_collect(
        &self,
        to: Jid,
        operation: &str,
        args: Args,
        opts: CallOptions,
    ) -> Result<Vec<Args>, CallError> {
        let (tx, rx) = oneshot::channel();
        let sink = EventSink::Collect {
            chunks: Vec::new(),
            done: Some(tx),
        };
        self.start_call(&to, operation, args, &opts, sink);
        rx.await
            .unwrap_or_else(|_| Err(CallError::local("internal", "call ended without outcome")))
    }

    fn ensure_presence_to(&self, to: &Jid) {
        // [VAP-LOAD-016] directed presence to every responder we call, so that its unavailable
        // presence reaches us (the responder answers with directed presence of its own).
        let mut set = self.inner.presence_sent.lock().unwrap();
        if !set.contains(to) {
            set.insert(to.clone());
            let _ = self.inner.conn.send_presence(to.clone(), vec![]);
        }
    }

    // ----- responder side -------------------------------------------------------------------

    /// Carry out what the responder machine of one op asked for; applies the I/O-boundary
    /// mutants to outgoing IQs.
    fn drive_op(&self, eng: &mut Engine, oid: OpId, out: Vec<Output<ResponderEvent>>, now: Millis) {
        let misbehave = self.inner.cfg.misbehave;
        let mut work: VecDeque<Output<ResponderEvent>> = out.into();
        while let Some(o) = work.pop_front() {
            match o {
                Output::Send(mut iq) => {
                    if misbehave != Misbehaviour::None {
                        let fake = eng.op_ctx.get(&oid).and_then(|c| c.fake_token.as_ref());
                        match mutate_out(misbehave, &mut iq, fake) {
                            MutantSend::Send => {}
                            MutantSend::DropAsAnswered => {
                                // MUTANT skip-ack: the <ack> is never sent; the machine is told
                                // it was answered, so the handler starts at once.
                                if let Some(r) = eng.responders.as_mut() {
                                    if let Some((_, more)) =
                                        r.handle_iq_result(&iq.to.clone(), &iq.id, now)
                                    {
                                        work.extend(more);
                                    }
                                }
                                continue;
                            }
                            MutantSend::ThenSend(extra) => {
                                // MUTANT data-after-final: one more <data> after the <final>.
                                let to = iq.to.clone();
                                self.send_out(iq);
                                let _ = self.inner.conn.send(Iq::Set {
                                    from: None,
                                    to: Some(to),
                                    id: self.inner.conn.new_id(),
                                    payload: extra,
                                });
                                continue;
                            }
                        }
                    }
                    self.send_out(iq);
                }
                Output::Event(ResponderEvent::NeedAuthorization) => {
                    let Some(r) = eng.responders.as_ref().and_then(|r| r.get(oid)) else {
                        continue;
                    };
                    let (Some(op), from) = (r.op(), r.requester().clone()) else {
                        continue;
                    };
                    let (Some(operation), scope) = (op.operation(), op_scope(op)) else {
                        continue;
                    };
                    let node = self.clone();
                    tokio::spawn(async move {
                        let d = authorize_remote(&node, &from, &operation, &scope).await;
                        node.with_op(oid, |r, now| r.authorize(oid, d, now).ok());
                    });
                }
                Output::Event(ResponderEvent::Start) => self.start_handler(eng, oid),
                Output::Event(ResponderEvent::Stop(c)) => {
                    log::debug!("op {oid} stopped: {c}");
                    if let Some(ctx) = eng.op_ctx.get_mut(&oid) {
                        ctx.signals.stop();
                        if let Some(t) = ctx.task.take() {
                            t.abort();
                        }
                    }
                }
                Output::Event(ResponderEvent::Ended(c)) => {
                    log::trace!("op {oid} ended: {c:?}");
                    if let Some(ctx) = eng.op_ctx.remove(&oid) {
                        if let Some(t) = ctx.task {
                            t.abort();
                        }
                        ctx.signals.progress.notify_waiters();
                    }
                }
            }
        }
        if let Some(ctx) = eng.op_ctx.get(&oid) {
            ctx.signals.progress.notify_waiters();
        }
        let next = eng
            .responders
            .as_ref()
            .and_then(|r| r.get(oid))
            .and_then(|r| r.next_timeout());
        self.note_timeout(next);
        let n = eng.responders.as_ref().map_or(0, |r| r.len()) as u32;
        if self.inner.inflight.swap(n, Ordering::Relaxed) != n {
            self.inner.load_changed.notify_one();
        }
    }

    /// Feed the responder machines (a handler or an authorization decision reporting back).
    fn with_op(
        &self,
        oid: OpId,
        f: impl FnOnce(&mut Responders, Millis) -> Option<Vec<Output<ResponderEvent>>>,
    ) {
        let now = self.now_ms();
        let mut eng = self.engine();
        let Some(out) = eng.responders.as_mut().and_then(|r| f(r, now)) else {
            return;
        };
        self.drive_op(&mut eng, oid, out, now);
        drop(eng);
    }

    /// Create the handler's future for `oid`; it runs once the engine lock is released.
    fn start_handler(&self, eng: &mut Engine, oid: OpId) {
        let Some(r) = eng.responders.as_ref().and_then(|r| r.get(oid)) else {
            return;
        };
        let Some(op) = r.op() else { return };
        let from = r.requester().clone();
        let (Some(operation), args) = (op.operation(), op.args.clone()) else {
            return;
        };
        let timeout = Duration::from_millis(u64::from(op.timeout_ms()));
        let Some(ctx) = eng.op_ctx.get_mut(&oid) else {
            return;
        };
        let Some(handler) = ctx.handler.take() else {
            return;
        };
        let signals = ctx.signals.clone();
        let call = Call {
            from,
            operation,
            args,
            deadline: ctx.received + timeout,
            op: oid,
            signals: signals.clone(),
            node: self.clone(),
        };
        eng.starting.push((oid, signals, handler.call(call)));
    }

    /// Run a started handler (engine lock not held): one poll here; if it is not done, a task
    /// carries on, which the op's `Stop` aborts.
    fn run_handler(&self, oid: OpId, signals: &OpSignals, mut fut: HandlerFuture) {
        if signals.cancelled.load(Ordering::SeqCst) {
            // Stopped before it ran.
            return;
        }
        let panicked = || Err(HandlerError::new("handler panicked"));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // A pending future is polled again by its task, which registers a real waker, so the
        // no-op waker of this first poll loses no wake-up.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)))
        {
            Ok(std::task::Poll::Ready(r)) => self.handler_done(oid, r),
            Err(_) => self.handler_done(oid, panicked()),
            Ok(std::task::Poll::Pending) => {
                let node = self.clone();
                let task = tokio::spawn(async move {
                    let r = std::panic::AssertUnwindSafe(fut)
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| panicked());
                    node.handler_done(oid, r);
                });
                let mut eng = self.engine();
                match eng.op_ctx.get_mut(&oid) {
                    // Stopped meanwhile (cancel, deadline): the task must not run on.
                    Some(ctx) if !signals.cancelled.load(Ordering::SeqCst) => {
                        ctx.task = Some(task.abort_handle());
                    }
                    _ => task.abort(),
                }
            }
        }
    }

    fn handler_done(&self, oid: OpId, r: HandlerResult) {
        let misbehave = self.inner.cfg.misbehave;
        self.with_op(oid, |resp, now| match r {
            Ok(last) => resp.finish(oid, Some(last), now).ok(),
            Err(he) => {
                // Only conditions that travel as an <error> may end a running op
                // ([VAP-ERR-001]); anything else is reported as handler-failed.
                let c = he
                    .condition
                    .filter(|c| matches!(c.travel(), Travel::Error(_)))
                    .unwrap_or(Condition::HandlerFailed);
                let reason = if misbehave == Misbehaviour::LeakErrorDetail {
                    // MUTANT leak-error-detail: internal detail in the public reason.
                    format!(
                        "{} at /srv/vertebra-build/src/handler.rs:42 (RUST_BACKTRACE=1)",
                        he.public
                    )
                } else {
                    he.public
                };
                resp.fail(oid, c, reason, now).ok()
            }
        });
    }

    /// A chunk from a handler: queued in the machine, which sends it within the data window
    /// ([VAP-OPS-035]); waits until it has left the queue.
    async fn op_chunk(
        &self,
        oid: OpId,
        progress: &Notify,
        chunk: Args,
    ) -> Result<(), HandlerError> {
        let ended = || HandlerError::new("op ended");
        let mut wait = std::pin::pin!(progress.notified());
        wait.as_mut().enable();
        {
            let now = self.now_ms();
            let mut eng = self.engine();
            let r = eng.responders.as_mut().ok_or_else(ended)?;
            let out = r
                .chunk(oid, chunk, now)
                .map_err(|e| HandlerError::new(e.to_string()))?;
            self.drive_op(&mut eng, oid, out, now);
            let queued = eng
                .responders
                .as_ref()
                .and_then(|r| r.get(oid))
                .map(|r| r.queued());
            drop(eng);
            match queued {
                None => return Err(ended()),
                Some(0) => return Ok(()),
                Some(_) => {}
            }
        }
        loop {
            wait.as_mut().await;
            wait.set(progress.notified());
            wait.as_mut().enable();
            let eng = self.engine();
            match eng
                .responders
                .as_ref()
                .and_then(|r| r.get(oid))
                .map(|r| r.queued())
            {
                None => return Err(ended()),
                Some(0) => return Ok(()),
                Some(_) => {}
            }
        }
    }
}

/// Build the op of a call (request token, type, timeout, window, scope).
fn build_op(operation: &str, args: Args, opts: &CallOptions) -> Result<Op, CallError> {
    let res = Resource::parse(operation)
        .map_err(|e| CallError::local("bad-request", format!("operation: {}", e.detail)))?;
    let t = Token::generate().map_err(|e| CallError::local("internal", e.to_string()))?;
    let timeout_ms = opts
        .timeout
        .as_millis()
        .clamp(1, u128::from(MAX_TIMEOUT_MS)) as u32;
    let mut op = Op::new(RequestToken::Single(t), &res, timeout_ms).with_args(args);
    op.scope = opts.scope;
    op.window = opts.window;
    Ok(op)
}

/// The node's event for a call's outcome.
fn outcome_event(o: Outcome) -> CallEvent {
    if o.is_success() {
        return CallEvent::Done { count: o.chunks };
    }
    let kind = match &o.kind {
        OutcomeKind::Final => "final".to_string(),
        OutcomeKind::Nack => "nack".to_string(),
        OutcomeKind::Error(t) => t.as_str().to_string(),
        OutcomeKind::Local => "local".to_string(),
    };
    CallEvent::Failed(CallError {
        condition: o
            .condition
            .map_or_else(|| "error".to_string(), |c| c.as_str().to_string()),
        kind,
        reason: o.reason,
        acked: o.acked,
    })
}

fn into_iq(o: OutIq) -> Iq {
    match o.body {
        IqBody::Set(payload) => Iq::Set {
            from: None,
            to: Some(o.to),
            id: o.id,
            payload,
        },
        IqBody::Result(payload) => Iq::Result {
            from: None,
            to: Some(o.to),
            id: o.id,
            payload,
        },
        IqBody::Error(error) => Iq::Error {
            from: None,
            to: Some(o.to),
            id: o.id,
            error,
            payload: None,
        },
    }
}

/// Set an unnamespaced attribute (mutants only).
fn set_attr(el: &mut Element, name: &'static str, value: String) {
    if let Ok(n) = minidom::rxml::NcName::try_from(name) {
        el.set_attr(minidom::rxml::Namespace::NONE, n, value);
    }
}

/// What to do with an outgoing IQ under a mutant.
enum MutantSend {
    Send,
    DropAsAnswered,
    ThenSend(Element),
}

/// The I/O-boundary mutants on an outgoing responder IQ (no effect for `Misbehaviour::None`).
fn mutate_out(
    m: Misbehaviour,
    iq: &mut OutIq,
    fake_token: Option<&(String, String)>,
) -> MutantSend {
    let el = match &mut iq.body {
        IqBody::Set(el) => el,
        IqBody::Result(Some(el)) => el,
        _ => return MutantSend::Send,
    };
    if el.ns() != NS {
        return MutantSend::Send;
    }
    if let Some((real, fake)) = fake_token {
        // MUTANT wrong-token: a token that is not a rotation of the request token.
        if el.attr("token") == Some(real.as_str()) {
            set_attr(el, "token", fake.clone());
        }
    }
    let is_set = matches!(iq.body, IqBody::Set(_));
    let (IqBody::Set(el) | IqBody::Result(Some(el))) = &mut iq.body else {
        return MutantSend::Send;
    };
    match (m, el.name(), is_set) {
        // MUTANT skip-ack: no fast-path ack on the op result …
        (Misbehaviour::SkipAck, "op", false) => {
            if let Ok(mut r) = OpResult::from_element(el) {
                r.ack = false;
                *el = r.to_element();
            }
            MutantSend::Send
        }
        // … and no <ack>.
        (Misbehaviour::SkipAck, "ack", true) => MutantSend::DropAsAnswered,
        // MUTANT wrong-seq: chunks numbered from 1.
        (Misbehaviour::WrongSeq, "data", true) => {
            if let Some(n) = el.attr("seq").and_then(|s| s.parse::<u64>().ok()) {
                set_attr(el, "seq", (n + 1).to_string());
            }
            MutantSend::Send
        }
        // MUTANT wrong-value-encoding: booleans as true/false.
        (Misbehaviour::WrongValueEncoding, "data" | "final", true) => {
            *el = encode_misbehaving(el.clone(), m);
            MutantSend::Send
        }
        // MUTANT data-after-final.
        (Misbehaviour::DataAfterFinal, "final", true) => {
            let (Some(token), count) = (
                el.attr("token").and_then(|t| OpToken::parse(t).ok()),
                el.attr("count").and_then(|c| c.parse::<u64>().ok()),
            ) else {
                return MutantSend::Send;
            };
            let d = Data {
                token,
                seq: Some(count.unwrap_or(0)),
                args: Args::new().with("late", Value::Boolean(true)),
            };
            MutantSend::ThenSend(d.to_element())
        }
        _ => MutantSend::Send,
    }
}

fn merged(chunks: &[Args]) -> Args {
    let mut a = Args::new();
    for c in chunks {
        for (k, v) in c.iter() {
            a.insert(k, v.clone());
        }
    }
    a
}

/// Merge all chunks of a call into one set of named values (later chunks win).
pub fn merge_chunks(chunks: &[Args]) -> Args {
    merged(chunks)
}

// ---------------------------------------------------------------------------------------------
// Timer (the machines' timeouts)
// ---------------------------------------------------------------------------------------------

/// Sleeps until the earliest `next_timeout()` of the machines, then feeds them the time. Holds
/// only a weak reference, so it ends with the node.
async fn timer(inner: Weak<Inner>) {
    loop {
        let Some(node) = inner.upgrade().map(|inner| Node { inner }) else {
            return;
        };
        if node.inner.closed.load(Ordering::Relaxed) {
            return;
        }
        let next = {
            let eng = node.engine();
            let a = eng.calls.next_timeout();
            let b = eng.responders.as_ref().and_then(Responders::next_timeout);
            let next = match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Stored under the engine lock: later changes compare against it.
            node.inner
                .timer_at
                .store(next.unwrap_or(Millis::MAX), Ordering::Relaxed);
            next
        };
        let epoch = node.inner.epoch;
        // Wait without keeping the node alive.
        let kick = {
            let n = node.clone();
            async move { n.inner.timer_kick.notified().await }
        };
        drop(node);
        let fire = match next {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(epoch + Duration::from_millis(t)) => true,
                    _ = kick => false,
                }
            }
            None => {
                kick.await;
                false
            }
        };
        if fire {
            let Some(node) = inner.upgrade().map(|inner| Node { inner }) else {
                return;
            };
            node.fire_timers();
        }
    }
}

impl Node {
    fn fire_timers(&self) {
        let now = self.now_ms();
        let mut eng = self.engine();
        for (cid, out) in eng.calls.handle_timeout(now) {
            self.drive_call(&mut eng, cid, out);
        }
        let due = eng
            .responders
            .as_mut()
            .map(|r| r.handle_timeout(now))
            .unwrap_or_default();
        for (oid, out) in due {
            self.drive_op(&mut eng, oid, out, now);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Router (incoming stanzas)
// ---------------------------------------------------------------------------------------------

async fn router(node: Node, mut incoming: mpsc::UnboundedReceiver<Incoming>) {
    while let Some(inc) = incoming.recv().await {
        match inc {
            Incoming::Online { resumed, bound } => {
                if !resumed {
                    on_new_session(&node, bound);
                }
            }
            Incoming::Suspended => abandon_ops(&node),
            Incoming::Presence(p) => on_presence(&node, p),
            Incoming::Message(_) => {}
            Incoming::Response { from, id, reply } => on_response(&node, from, id, reply),
            Incoming::Iq {
                from,
                id,
                set,
                payload,
            } => on_iq(&node, from, id, set, payload),
        }
    }
    node.inner.closed.store(true, Ordering::Relaxed);
    node.inner.timer_kick.notify_one();
}

/// The session is lost: every op in progress is abandoned at once, so nothing more is sent for
/// it, neither now nor on the next session ([VAP-OPS-081]).
fn abandon_ops(node: &Node) {
    let now = node.now_ms();
    let mut eng = node.engine();
    let all = eng
        .responders
        .as_mut()
        .map(Responders::abandon_all)
        .unwrap_or_default();
    for (oid, out) in all {
        node.drive_op(&mut eng, oid, out, now);
    }
}

fn on_new_session(node: &Node, bound: FullJid) {
    let now = node.now_ms();
    let session = *node.inner.session.borrow();
    {
        let mut eng = node.engine();
        match eng.responders.as_mut() {
            Some(r) => {
                // [VAP-OPS-081] ops of a lost session are neither resumed nor continued.
                for (oid, out) in r.abandon_all() {
                    node.drive_op(&mut eng, oid, out, now);
                }
            }
            None => {
                eng.responders = Some(Responders::new(
                    ResponderConfig {
                        own_jid: Jid::from(bound),
                        // [VAP-OPS-043] the last values ride on <final> toward 1.0 requesters.
                        values_on_final: true,
                    },
                    DEDUP_MAX,
                ))
            }
        }
        // Calls started on a lost session can get no answer any more: they end at once.
        let lost: Vec<CallId> = eng
            .call_ctx
            .iter()
            .filter(|(_, c)| session > 0 && c.session < session)
            .map(|(id, _)| *id)
            .collect();
        for cid in lost {
            let out = eng.calls.abandon(
                cid,
                Condition::Other("connection-lost".into()),
                "the XMPP session was lost",
            );
            node.drive_call(&mut eng, cid, out);
        }
    }
    node.inner.presence_sent.lock().unwrap().clear();
    // [VAP-TRN-003] initial presence.
    let _ = node.inner.conn.send(Presence::available());
    node.inner.session.send_modify(|s| *s += 1);
    if let Some(h) = node.inner.online_hook.read().unwrap().as_ref() {
        h(node);
    }
    node.inner.timer_kick.notify_one();
}

/// An IQ result or error for an IQ one of the machines sent.
fn on_response(node: &Node, from: Jid, id: String, reply: IqReply) {
    let from = node.mutant_alias(from, None);
    let now = node.now_ms();
    let mut eng = node.engine();
    let call = match &reply {
        IqReply::Result(p) => eng.calls.handle_iq_result(&from, &id, p.as_ref(), now),
        IqReply::Error(e) => eng.calls.handle_iq_error(&from, &id, e, now),
    };
    if let Some((cid, out)) = call {
        node.drive_call(&mut eng, cid, out);
    } else if let Some(r) = eng.responders.as_mut() {
        let op = match &reply {
            IqReply::Result(_) => r.handle_iq_result(&from, &id, now),
            IqReply::Error(e) => r.handle_iq_error(&from, &id, e, now),
        };
        if let Some((oid, out)) = op {
            node.drive_op(&mut eng, oid, out, now);
        }
    } else {
        log::debug!("IQ response {id} from {from} answers nothing of ours; ignored");
    }
    drop(eng);
}

fn on_presence(node: &Node, p: Presence) {
    if let Some(from) = &p.from {
        if p.type_ == PresenceType::Unavailable {
            // Calls to that responder end with responder-gone ([VAP-OPS-077]).
            let now = node.now_ms();
            let mut eng = node.engine();
            for (cid, out) in eng.calls.handle_unavailable(from, now) {
                node.drive_call(&mut eng, cid, out);
            }
            drop(eng);
            node.inner.presence_sent.lock().unwrap().remove(from);
        } else if p.type_ == PresenceType::None
            && from.resource().is_some()
            && Some(from.to_bare()) != node.jid().map(|j| j.to_bare())
            && p.payloads.is_empty()
            && node.inner.cfg.serve
        {
            // A requester's directed presence: answer with ours so the server tells it when
            // we go away ([VAP-LOAD-016]).
            node.ensure_presence_to(from);
        }
    }
    if let Some(h) = node.inner.presence_hook.read().unwrap().as_ref() {
        h(node, &p);
    }
}

fn on_iq(node: &Node, from: Jid, id: String, set: bool, mut payload: Element) {
    if payload.ns() != NS {
        let hooks = node.inner.iq_hooks.read().unwrap();
        if let Some(h) = hooks.get(&payload.ns()) {
            match h(node, &from, &payload) {
                Ok(p) => node.inner.conn.reply_result(from, id, p),
                Err(e) => node.inner.conn.reply_error(from, id, *e),
            }
            return;
        }
        // [VAP-TRN-011]
        node.inner.conn.reply_error(
            from,
            id,
            stanza_err(XmppErrorType::Cancel, DefinedCondition::ServiceUnavailable),
        );
        return;
    }
    let misbehave = node.inner.cfg.misbehave;
    let now = node.now_ms();
    // MUTANT no-tenant-isolation: a foreign requester's discover op under an own-domain alias.
    let from = if payload.name() == "op" {
        node.mutant_alias(from, Some(payload.attr("type").unwrap_or("")))
    } else {
        node.mutant_alias(from, None)
    };
    match payload.name() {
        "op" => {
            // Fuzzer-planted bugs (mutants only; no effect when conforming). Outside the engine
            // lock: the crash mutant panics here.
            let planted = misbehave != Misbehaviour::None
                && misbehave.planted(&from.to_string(), &id, &payload);
            let reexec = misbehave == Misbehaviour::ReexecuteDuplicate || planted;
            if misbehave == Misbehaviour::IgnoreDeadline && payload.attr("timeout").is_some() {
                // MUTANT ignore-deadline: the machine never sees the op's real deadline.
                set_attr(&mut payload, "timeout", MAX_TIMEOUT_MS.to_string());
            }
            let Ok(s) = Token::generate() else {
                node.inner.conn.reply_error(
                    from,
                    id,
                    stanza_err(XmppErrorType::Wait, DefinedCondition::InternalServerError),
                );
                return;
            };
            let mut eng = node.engine();
            let Some(resp) = eng.responders.as_mut() else {
                drop(eng);
                node.inner.conn.reply_error(
                    from,
                    id,
                    stanza_err(XmppErrorType::Wait, DefinedCondition::ServiceUnavailable),
                );
                return;
            };
            if reexec {
                // MUTANT reexecute-duplicate / reexecute-reordered-duplicate: the duplicate
                // table is bypassed, so a retransmitted op runs again ([VAP-OPS-067] broken).
                resp.forget_answer(&from, &id);
            }
            let mut chosen: Option<Arc<dyn Handler>> = None;
            let (oid, out) = resp.receive_op(&from, &id, !set, &payload, now, s, |op| {
                route(node, &from, op, &mut chosen)
            });
            if let Some(oid) = oid {
                let token = resp.get(oid).and_then(|r| r.token().cloned());
                if resp.get(oid).is_some() {
                    let fake_token = match (misbehave, token) {
                        (Misbehaviour::WrongToken, Some(real)) => Token::generate().ok().map(|t| {
                            let fake = OpToken {
                                requester: t,
                                responder: real.responder.clone(),
                            };
                            (real.to_string(), fake.to_string())
                        }),
                        _ => None,
                    };
                    eng.op_ctx.insert(
                        oid,
                        OpCtx {
                            handler: chosen,
                            task: None,
                            signals: Arc::new(OpSignals::default()),
                            received: Instant::now(),
                            fake_token,
                        },
                    );
                }
                node.drive_op(&mut eng, oid, out, now);
            } else {
                for o in out {
                    if let Output::Send(iq) = o {
                        node.send_out(iq);
                    }
                }
            }
            drop(eng);
        }
        // Legacy requesters may send ops in IQ get ([VAP-TRN-012]); anything else must be a set.
        _ if !set => node.inner.conn.reply_error(
            from,
            id,
            stanza_err(XmppErrorType::Modify, DefinedCondition::BadRequest),
        ),
        "cancel" => {
            if misbehave == Misbehaviour::IgnoreCancel {
                // MUTANT ignore-cancel: answered, never given to the machine.
                node.inner.conn.reply_result(from, id, None);
                return;
            }
            let mut eng = node.engine();
            let Some(resp) = eng.responders.as_mut() else {
                drop(eng);
                node.inner.conn.reply_result(from, id, None);
                return;
            };
            // [VAP-OPS-054] always answered; [VAP-OPS-057] only the requester may cancel.
            let (oid, out) = resp.handle_iq_set(&from, &id, &payload, now);
            match oid {
                Some(oid) => node.drive_op(&mut eng, oid, out, now),
                None => out.into_iter().for_each(|o| {
                    if let Output::Send(iq) = o {
                        node.send_out(iq);
                    }
                }),
            }
            drop(eng);
        }
        "ack" | "nack" | "data" | "final" | "error" => {
            // Requester side: [VAP-OPS-031] every per-op stanza is answered by the machine.
            let mut eng = node.engine();
            let (cid, out) = eng.calls.handle_iq_set(&from, &id, &payload, now);
            match cid {
                Some(cid) => node.drive_call(&mut eng, cid, out),
                None => out.into_iter().for_each(|o| {
                    if let Output::Send(iq) = o {
                        node.send_out(iq);
                    }
                }),
            }
            drop(eng);
        }
        // A load report belongs in presence ([VAP-LOAD-001]); unknown elements are bad requests
        // ([VAP-TRN-010]).
        _ => node.inner.conn.reply_error(
            from,
            id,
            stanza_err(XmppErrorType::Modify, DefinedCondition::BadRequest),
        ),
    }
}

/// The routing answer for a decoded op of our own domain: the handler ([VAP-RES-013],
/// [VAP-RES-017]), the admission hook, and an authorization decision known without asking
/// anyone (local policy, cache) — the machine decides what to send from it.
fn route(node: &Node, from: &Jid, op: &Op, chosen: &mut Option<Arc<dyn Handler>>) -> Route {
    let Some(h) = select_handler(node, op) else {
        return Route::NoHandler;
    };
    *chosen = Some(h);
    let cached = if node.inner.cfg.misbehave == Misbehaviour::IgnoreAuthorization {
        // MUTANT ignore-authorization: every call is treated as authorized.
        Some(true)
    } else if !node
        .inner
        .admission
        .read()
        .unwrap()
        .as_ref()
        .map(|f| f(from, op))
        .unwrap_or(true)
    {
        Some(false)
    } else {
        authorize_now(node, from, &op.op_type, &op_scope(op))
    };
    log::trace!("op {} from {from}: known decision {cached:?}", op.op_type);
    Route::Handler { cached }
}

fn authz_key(from: &Jid, op: &str, scope: &ResourceScope) -> String {
    let mut s = format!("{}|{}", from.to_bare(), op);
    for e in scope.iter() {
        s.push('|');
        s.push_str(e.key.as_deref().unwrap_or(""));
        s.push('=');
        s.push_str(e.resource.as_str());
    }
    s
}

fn op_scope(op: &Op) -> ResourceScope {
    let mut s = ResourceScope::new();
    for (k, r) in op.args.keyed_resources() {
        s.push(Some(k), r.clone());
    }
    for r in &op.unkeyed_resources {
        s.push(None, r.clone());
    }
    s
}

/// Synchronous authorization decision if one is available without asking anyone.
fn authorize_now(node: &Node, from: &Jid, op: &str, scope: &ResourceScope) -> Option<bool> {
    let me = node.jid()?;
    match &node.inner.cfg.authorizer {
        Authorizer::DenyAll => Some(false),
        Authorizer::SameDomain => Some(domain(from) == me.domain().as_str()),
        Authorizer::Local(p) => {
            let me = Jid::from(me);
            let req = AuthorizeRequest {
                from: from.clone(),
                to: me.clone(),
                operation: Resource::parse(op).ok()?,
                resources: scope.clone(),
            };
            Some(p.decide(&me, &req).authorized)
        }
        Authorizer::Dispatcher(_) => {
            let key = authz_key(from, op, scope);
            let mut c = node.inner.authz_cache.lock().unwrap();
            match c.get(&key) {
                Some(exp) if *exp > Instant::now() => Some(true),
                Some(_) => {
                    c.remove(&key);
                    None
                }
                None => None,
            }
        }
    }
}

/// Ask the dispatcher ([VAP-SEC-008]). No answer within 2 s, or an authorize op that ends
/// with anything but a final carrying a `response`, is [`Decision::Unavailable`]
/// ([VAP-SEC-009]).
async fn authorize_remote(
    node: &Node,
    from: &Jid,
    op: &Resource,
    scope: &ResourceScope,
) -> Decision {
    let (Authorizer::Dispatcher(d), Some(me)) = (&node.inner.cfg.authorizer, node.jid()) else {
        return Decision::Unavailable;
    };
    let req = AuthorizeRequest {
        from: from.clone(),
        to: Jid::from(me),
        operation: op.clone(),
        resources: scope.clone(),
    };
    let fut = node.call_collect(
        Jid::from(d.clone()),
        OP_AUTHORIZE,
        req.to_args(),
        CallOptions {
            timeout: AUTHORIZE_TIMEOUT,
            ..Default::default()
        },
    );
    // [VAP-SEC-009] no answer within 2 s, or no usable response → unavailable.
    let Ok(Ok(chunks)) = tokio::time::timeout(AUTHORIZE_TIMEOUT, fut).await else {
        return Decision::Unavailable;
    };
    let Ok(r) = AuthorizeResponse::from_args(&merged(&chunks)) else {
        return Decision::Unavailable;
    };
    if r.authorized && r.ttl > 0 {
        // [VAP-SEC-011] / [VAP-SEC-012]
        node.inner.authz_cache.lock().unwrap().insert(
            authz_key(from, op.as_str(), scope),
            Instant::now() + Duration::from_secs(r.ttl as u64),
        );
    }
    if r.authorized {
        Decision::Authorized
    } else {
        Decision::Denied
    }
}

/// The handler that serves an op: among the registered paths equal to or a segment-wise
/// ancestor of its type ([VAP-RES-013], never a string prefix, [VAP-RES-010]), the one with the
/// most segments ([VAP-RES-017]), provided the op is in scope for it ([VAP-RES-014]); otherwise
/// none, which ends the op with `no-handler` ([VAP-RES-016]).
///
/// Every handler of a node provides the same resources, the node's advertised
/// [`NodeConfig::resources`], so scope does not change which handler is deepest: the op is in
/// scope when, for every key of its scoping resources (top-level `res`, [VAP-RES-011]), some
/// provided resource under that key matches, and each key-less (legacy) resource matches a
/// provided resource under any key ([VAP-VER-009]). An op without scoping resources is in scope
/// for every handler ([VAP-RES-015]).
fn select_handler(node: &Node, op: &Op) -> Option<Arc<dyn Handler>> {
    let target = Resource::parse(&op.op_type).ok()?;
    let handler = {
        let handlers = node.inner.handlers.read().unwrap();
        handlers
            .values()
            .filter_map(|(path, h)| {
                let path = path.as_ref()?;
                path.is_prefix_of(&target).then(|| (path.depth(), h))
            })
            .max_by_key(|(depth, _)| *depth)
            .map(|(_, h)| h.clone())?
    };
    if scope_exempt(&target) || node.inner.cfg.resources.satisfies(&op.scope()) {
        Some(handler)
    } else {
        log::debug!(
            "op {}: scoping resources out of scope for every handler",
            op.op_type
        );
        None
    }
}

/// Root of the test-profile operation paths ([VAP-TPF]).
const TEST_PROFILE_ROOT: &str = "/vertebra/test";

/// Ops whose `res` values are not matched against the provided resources: the test-profile
/// ops are in scope whatever they carry ([VAP-TPF-006], with [VAP-TPF-005] they are advertised
/// without scoping resources), and the dispatcher's own operations take `res` values as
/// arguments and are selected by path only (spec 06).
fn scope_exempt(target: &Resource) -> bool {
    static ROOT: std::sync::LazyLock<Option<Resource>> =
        std::sync::LazyLock::new(|| Resource::parse(TEST_PROFILE_ROOT).ok());
    ROOT.as_ref().is_some_and(|r| r.is_prefix_of(target))
        || [OP_ADVERTISE, OP_DISCOVER, OP_AUTHORIZE]
            .iter()
            .any(|p| target.as_str() == *p)
}

fn encode_misbehaving(mut el: Element, m: Misbehaviour) -> Element {
    if m == Misbehaviour::WrongValueEncoding {
        fn fix(e: &mut Element) {
            if e.name() == "boolean" {
                let nt = if e.text().trim() == "1" {
                    "true"
                } else {
                    "false"
                };
                for t in e.texts_mut() {
                    *t = nt.to_string();
                }
                return;
            }
            for c in e.children_mut() {
                fix(c);
            }
        }
        fix(&mut el);
    }
    el
}

// ---------------------------------------------------------------------------------------------
// Load reports and advertisements
// ---------------------------------------------------------------------------------------------

async fn load_reporter(node: Node) {
    let Some(d) = node.inner.cfg.dispatcher.clone() else {
        return;
    };
    let to = Jid::from(d.to_bare());
    let mut session = node.inner.session.subscribe();
    let mut stop = node.inner.stop.subscribe();
    let interval = node.inner.cfg.load_interval;
    let mut sent_once = false;
    loop {
        if node.jid().is_some()
            && !(node.inner.cfg.misbehave == Misbehaviour::StaleLoad && sent_once)
        {
            let l = node.load();
            let _ = node
                .inner
                .conn
                .send_presence(to.clone(), vec![l.to_element()]);
            sent_once = true;
        }
        let t = tokio::time::sleep(interval);
        tokio::select! {
            _ = t => {}
            _ = node.inner.load_changed.notified() => {
                // [VAP-LOAD-006] at most 10 reports per second.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r = session.changed() => { if r.is_err() { return; } }
            _ = stop.changed() => return,
        }
    }
}

async fn advertiser(node: Node) {
    let Some(d) = node.inner.cfg.dispatcher.clone() else {
        return;
    };
    let mut session = node.inner.session.subscribe();
    let mut stop = node.inner.stop.subscribe();
    let ttl = node.inner.cfg.advertise_ttl.clamp(1, 86_400);
    loop {
        // wait until online
        if node.jid().is_none() {
            tokio::select! {
                r = session.changed() => { if r.is_err() { return; } continue; }
                _ = stop.changed() => return,
            }
        }
        let ops = node.operations();
        let req = vertebra_protocol::payloads::AdvertiseRequest {
            operations: ops.iter().filter_map(|o| Resource::parse(o).ok()).collect(),
            resources: node.inner.cfg.resources.clone(),
            ttl,
            advertiser: None,
        };
        let r = node
            .call_collect(
                Jid::from(d.clone()),
                vertebra_protocol::payloads::OP_ADVERTISE,
                req.to_args(),
                CallOptions {
                    timeout: Duration::from_secs(2),
                    ..Default::default()
                },
            )
            .await;
        // [VAP-DSC-010] re-advertise at ≤ 0.9 × ttl; retry soon after a failure
        // ([VAP-DSC-024]). Success is a final with `response` = 1 in the data or the final
        // (spec 06 §6.4): a final without it, or with 0, is a failure too.
        let failure = match &r {
            Ok(chunks) if advertise_accepted(chunks) => None,
            Ok(_) => Some("ended without response = 1".to_string()),
            Err(e) => Some(e.to_string()),
        };
        let next = match failure {
            None => Duration::from_millis(ttl as u64 * 900),
            Some(e) => {
                log::warn!("advertise to {d} failed: {e}; retrying");
                Duration::from_millis(200)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = node.inner.ops_changed.notified() => {}
            r = session.changed() => { if r.is_err() { return; } }
            _ = stop.changed() => return,
        }
    }
}

/// Whether the chunks of an advertise that ended with a final (data values, then the final's)
/// carry `<boolean name="response">1</boolean>` (spec 06 §6.4, [VAP-DSC-024]).
fn advertise_accepted(chunks: &[Args]) -> bool {
    chunks.iter().any(|c| c.get_bool("response") == Some(true))
}

/// Wait (with a deadline) until the node's advertisement has been accepted at least once —
/// useful in tests and the demo. Polls the dispatcher with discover.
pub async fn wait_advertised(
    requester: &Node,
    dispatcher: &Jid,
    operation: &str,
    agent: &FullJid,
    deadline: Duration,
) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if let Ok(list) = crate::requester::discover(
            requester,
            dispatcher,
            operation,
            &ResourceScope::new(),
            None,
            Duration::from_secs(2),
        )
        .await
        {
            if list.iter().any(|(j, _)| j == &Jid::from(agent.clone())) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [VAP-DSC-024]: only a final carrying `response` = 1 counts as a successful advertise.
    #[test]
    fn advertise_success_needs_response_one() {
        let yes = Args::new().with("response", Value::Boolean(true));
        let no = Args::new().with("response", Value::Boolean(false));
        assert!(advertise_accepted(std::slice::from_ref(&yes)));
        assert!(advertise_accepted(&[Args::new(), yes]));
        assert!(!advertise_accepted(&[]));
        assert!(!advertise_accepted(&[Args::new()]));
        assert!(!advertise_accepted(&[no]));
        assert!(!advertise_accepted(&[
            Args::new().with("response", Value::String("1".into()))
        ]));
    }

    #[test]
    fn try_next_rules() {
        let mut e = CallError::local("responder-gone", "x");
        assert!(e.try_next());
        e.acked = true;
        assert!(!e.try_next());
        let n = CallError {
            condition: "not-authorized".into(),
            kind: "nack".into(),
            reason: None,
            acked: false,
        };
        assert!(n.try_next());
        assert!(!CallError::local("deadline-expired", "x").try_next());
    }

    #[test]
    fn wrong_value_encoding_rewrites_booleans() {
        let el: Element =
            format!("<data xmlns='{NS}' token='a:b' seq='0'><boolean name='x'>1</boolean></data>")
                .parse()
                .unwrap();
        let out = encode_misbehaving(el, Misbehaviour::WrongValueEncoding);
        let b = out.children().next().unwrap();
        assert_eq!(b.text(), "true");
        assert_eq!(b.attr("name"), Some("x"));
    }

    #[test]
    fn authz_key_uses_the_bare_jid() {
        for j in [
            "a@example.com/r",
            "example.com/r",
            "a@example.com",
            "example.com",
        ] {
            let j = Jid::new(j).unwrap();
            let mut scope = ResourceScope::new();
            scope.push(Some("k"), Resource::parse("/x/y").unwrap());
            assert_eq!(
                authz_key(&j, "/op", &scope),
                format!("{}|/op|k=/x/y", j.to_bare())
            );
        }
    }
}
