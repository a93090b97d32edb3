//! A Vertebra node: one XMPP session that is at the same time a responder (serves the
//! operations registered as handlers) and a requester (calls operations on others).
//! The agent, the dispatcher and the CLI are all nodes with different handlers.
//!
//! This is the tokio layer: it moves stanzas and time. Wire forms (values, tokens, stanzas,
//! helper payloads) come from `vertebra-protocol`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_xmpp::parsers::{
    jid::{FullJid, Jid},
    minidom::Element,
    presence::{Presence, Type as PresenceType},
    stanza_error::{DefinedCondition, ErrorType as XmppErrorType, StanzaError},
};
use vertebra_protocol::error::Travel;
use vertebra_protocol::payloads::{AuthorizeRequest, AuthorizeResponse, OP_AUTHORIZE};
use vertebra_protocol::responder::Decision;
use vertebra_protocol::stanza::OpDecodeError;
use vertebra_protocol::{
    Ack, Args, Cancel, Condition, Data, ErrorType, Final, Load, Nack, Op, OpError, OpResult,
    OpToken, RequestToken, Resource, ResourceScope, Scope, Token, Value, Version, VertebraPayload,
    NS,
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
    data: mpsc::Sender<Args>,
    cancel: watch::Receiver<bool>,
    node: Node,
}

impl Call {
    /// Stream one chunk of named values to the requester (waits while the data window is full).
    pub async fn send(&self, chunk: Args) -> Result<(), HandlerError> {
        self.data
            .send(chunk)
            .await
            .map_err(|_| HandlerError::new("op ended"))
    }
    /// Resolves when the requester cancels.
    pub async fn cancelled(&self) {
        let mut c = self.cancel.clone();
        while !*c.borrow_and_update() {
            if c.changed().await.is_err() {
                futures::future::pending::<()>().await;
            }
        }
    }
    /// Whether the requester cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
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
    cancel: Option<oneshot::Sender<()>>,
    /// Responder.
    pub to: Jid,
}

impl CallHandle {
    /// Next event; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<CallEvent> {
        self.rx.recv().await
    }
    /// Ask the responder to cancel (the call then ends with `cancelled`).
    pub fn cancel(&mut self) {
        if let Some(c) = self.cancel.take() {
            let _ = c.send(());
        }
    }
    /// Gather all chunks until the terminal event.
    pub async fn collect(mut self) -> Result<Vec<Args>, CallError> {
        let mut chunks = vec![];
        while let Some(ev) = self.rx.recv().await {
            match ev {
                CallEvent::Acked => {}
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

/// Messages routed to a running call (requester side).
#[derive(Debug)]
enum ToCall {
    Payload(VertebraPayload),
    Gone,
}

struct RespOp {
    requester: Jid,
    cancel: watch::Sender<bool>,
}

struct DedupCache {
    map: HashMap<(Jid, String), Stanza2>,
    order: VecDeque<(Instant, Jid, String)>,
}

/// A cached answer to an IQ set.
#[derive(Clone)]
enum Stanza2 {
    Result(Option<Element>),
    Error(StanzaError),
}

impl DedupCache {
    fn get(&mut self, from: &Jid, id: &str) -> Option<Stanza2> {
        self.expire();
        self.map.get(&(from.clone(), id.to_owned())).cloned()
    }
    fn put(&mut self, from: Jid, id: String, ans: Stanza2) {
        self.order
            .push_back((Instant::now(), from.clone(), id.clone()));
        self.map.insert((from, id), ans);
        while self.order.len() > DEDUP_MAX {
            if let Some((_, f, i)) = self.order.pop_front() {
                self.map.remove(&(f, i));
            }
        }
    }
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some((t, _, _)) = self.order.front() {
            if now.duration_since(*t) < DEDUP_WINDOW {
                break;
            }
            let (_, f, i) = self.order.pop_front().expect("front exists");
            self.map.remove(&(f, i));
        }
    }
}

type PresenceHook = Box<dyn Fn(&Node, &Presence) + Send + Sync>;
type AdmissionHook = Box<dyn Fn(&Jid, &Op) -> bool + Send + Sync>;
/// Answer to a foreign-namespace IQ: result payload or stanza error.
pub type IqHookResult = Result<Option<Element>, Box<StanzaError>>;
type IqHook = Box<dyn Fn(&Node, &Jid, &Element) -> IqHookResult + Send + Sync>;
type OnlineHook = Box<dyn Fn(&Node) + Send + Sync>;

struct Inner {
    conn: Conn,
    cfg: NodeConfig,
    handlers: RwLock<HashMap<String, Arc<dyn Handler>>>,
    resp_ops: Mutex<HashMap<OpToken, RespOp>>,
    calls: Mutex<HashMap<(Jid, String), mpsc::UnboundedSender<ToCall>>>,
    dedup: Mutex<DedupCache>,
    authz_cache: Mutex<HashMap<String, Instant>>,
    presence_sent: Mutex<HashSet<Jid>>,
    inflight: AtomicU32,
    load_override: Mutex<Option<f64>>,
    load_changed: Notify,
    ops_changed: Notify,
    serving: std::sync::atomic::AtomicBool,
    presence_hook: RwLock<Option<PresenceHook>>,
    admission: RwLock<Option<AdmissionHook>>,
    iq_hooks: RwLock<HashMap<String, IqHook>>,
    online_hook: RwLock<Option<OnlineHook>>,
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

fn stanza_err(t: XmppErrorType, c: DefinedCondition) -> StanzaError {
    StanzaError::new(t, c, "en", "")
}

fn domain(j: &Jid) -> &str {
    j.domain().as_str()
}

/// Whether `from` is of our own XMPP domain ([VAP-SEC-021]).
fn is_own_domain(node: &Node, from: &Jid) -> bool {
    node.jid()
        .is_some_and(|j| j.domain().as_str() == domain(from))
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
        let node = Node {
            inner: Arc::new(Inner {
                conn,
                cfg,
                handlers: RwLock::new(HashMap::new()),
                resp_ops: Mutex::new(HashMap::new()),
                calls: Mutex::new(HashMap::new()),
                dedup: Mutex::new(DedupCache {
                    map: HashMap::new(),
                    order: VecDeque::new(),
                }),
                authz_cache: Mutex::new(HashMap::new()),
                presence_sent: Mutex::new(HashSet::new()),
                inflight: AtomicU32::new(0),
                load_override: Mutex::new(None),
                load_changed: Notify::new(),
                ops_changed: Notify::new(),
                serving: std::sync::atomic::AtomicBool::new(false),
                presence_hook: RwLock::new(None),
                admission: RwLock::new(None),
                iq_hooks: RwLock::new(HashMap::new()),
                online_hook: RwLock::new(None),
                session,
                stop,
            }),
        };
        tokio::spawn(router(node.clone(), incoming));
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
    pub fn handle(&self, operation: &str, h: impl Handler) {
        self.inner
            .handlers
            .write()
            .unwrap()
            .insert(operation.to_owned(), Arc::new(h));
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

    // ----- requester side -------------------------------------------------------------------

    /// Call `operation` on `to` (direct). Returns at once; events arrive on the handle.
    pub fn call(&self, to: Jid, operation: &str, args: Args, opts: CallOptions) -> CallHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ctx, crx) = oneshot::channel();
        let node = self.clone();
        let op = operation.to_owned();
        let to2 = to.clone();
        tokio::spawn(async move {
            let outcome = run_call(&node, to2, &op, args, opts, &tx, crx).await;
            let _ = tx.send(match outcome {
                Ok(count) => CallEvent::Done { count },
                Err(e) => CallEvent::Failed(e),
            });
        });
        CallHandle {
            rx,
            cancel: Some(ctx),
            to,
        }
    }

    /// Call and gather all chunks.
    pub async fn call_collect(
        &self,
        to: Jid,
        operation: &str,
        args: Args,
        opts: CallOptions,
    ) -> Result<Vec<Args>, CallError> {
        self.call(to, operation, args, opts).collect().await
    }

    fn ensure_presence_to(&self, to: &Jid) {
        // [VAP-LOAD-016] directed presence to every responder we call, so that its unavailable
        // presence reaches us (the responder answers with directed presence of its own).
        let mut set = self.inner.presence_sent.lock().unwrap();
        if set.insert(to.clone()) {
            let _ = self.inner.conn.send_presence(to.clone(), vec![]);
        }
    }
}

fn merged(chunks: &[Args]) -> Args {
    let mut a = Args::new();
    for c in chunks {
        for (k, v) in c.iter() {
            a.insert(k.to_string(), v.clone());
        }
    }
    a
}

/// Merge all chunks of a call into one set of named values (later chunks win).
pub fn merge_chunks(chunks: &[Args]) -> Args {
    merged(chunks)
}

async fn run_call(
    node: &Node,
    to: Jid,
    operation: &str,
    args: Args,
    opts: CallOptions,
    events: &mpsc::UnboundedSender<CallEvent>,
    mut cancel_rx: oneshot::Receiver<()>,
) -> Result<u64, CallError> {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let hard_deadline = deadline + DEADLINE_GRACE;
    let res = Resource::parse(operation)
        .map_err(|e| CallError::local("bad-request", format!("operation: {}", e.detail)))?;
    let t = Token::generate().map_err(|e| CallError::local("internal", e.to_string()))?;
    let req_tok = RequestToken::Single(t.clone());
    let timeout_ms = opts.timeout.as_millis().clamp(1, 86_400_000) as u32;
    let mut op = Op::new(req_tok.clone(), &res, timeout_ms).with_args(args);
    op.scope = opts.scope;
    op.window = opts.window;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let key = (to.clone(), t.to_string());
    node.inner.calls.lock().unwrap().insert(key.clone(), tx);
    struct Unregister<'a>(&'a Node, (Jid, String));
    impl Drop for Unregister<'_> {
        fn drop(&mut self) {
            self.0.inner.calls.lock().unwrap().remove(&self.1);
        }
    }
    let _guard = Unregister(node, key);
    node.ensure_presence_to(&to);

    let iq_wait = node
        .inner
        .cfg
        .iq_timeout
        .min(hard_deadline.saturating_duration_since(Instant::now()));
    let reply = node
        .inner
        .conn
        .iq(to.clone(), true, op.to_element(), iq_wait)
        .await;
    let mut acked = false;
    let op_token = match reply {
        Ok(IqReply::Result(Some(el))) => match OpResult::from_element(&el) {
            Ok(r) if r.token.is_rotation_of(&req_tok) => {
                if r.ack {
                    acked = true;
                    let _ = events.send(CallEvent::Acked);
                }
                r.token
            }
            Ok(r) => {
                return Err(CallError::local(
                    "bad-response",
                    format!("op result token {} is not a rotation of {t}", r.token),
                ))
            }
            Err(e) => return Err(CallError::local("bad-response", e.detail)),
        },
        Ok(IqReply::Result(None)) => {
            return Err(CallError::local("bad-response", "op result without <op>"))
        }
        Ok(IqReply::Error(e)) => return Err(iq_error_outcome(&e, false)),
        Err(ConnError::IqTimeout { .. }) if Instant::now() >= deadline => {
            return Err(CallError::local(
                "deadline-expired",
                "no op result before the deadline",
            ))
        }
        Err(ConnError::IqTimeout { .. }) => {
            return Err(CallError::local("responder-gone", "no answer to the op"))
        }
        Err(e) => return Err(CallError::local("connection-lost", e.to_string())),
    };

    let mut next_seq: u64 = 0;
    let mut delivered: u64 = 0;
    let mut cancelled = false;
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(hard_deadline) => {
                return Err(CallError { acked, ..CallError::local("deadline-expired", "no terminal stanza by the deadline") });
            }
            _ = &mut cancel_rx, if !cancelled => {
                cancelled = true;
                let c = Cancel { token: op_token.clone() };
                let n = node.clone();
                let to2 = to.clone();
                let wait = node.inner.cfg.iq_timeout;
                tokio::spawn(async move {
                    let _ = n.inner.conn.iq(to2, true, c.to_element(), wait).await;
                });
                continue;
            }
        };
        let Some(msg) = msg else {
            return Err(CallError::local("internal", "call channel closed"));
        };
        let p = match msg {
            ToCall::Gone => {
                return Err(CallError {
                    acked,
                    ..CallError::local("responder-gone", "responder went unavailable")
                })
            }
            ToCall::Payload(p) => p,
        };
        if let Some(tok) = p.op_token() {
            if tok != &op_token {
                // Same T from the same responder but another S: not this op.
                continue;
            }
        }
        match p {
            VertebraPayload::Ack(_) if !acked => {
                acked = true;
                let _ = events.send(CallEvent::Acked);
            }
            VertebraPayload::Nack(n) => {
                return Err(CallError {
                    condition: n.reason.as_str().to_string(),
                    kind: "nack".into(),
                    reason: None,
                    acked: false,
                })
            }
            VertebraPayload::Data(d) => {
                if let Some(seq) = d.seq {
                    if seq != next_seq {
                        return Err(CallError {
                            acked,
                            ..CallError::local(
                                "out-of-order",
                                format!("data seq {seq}, expected {next_seq}"),
                            )
                        });
                    }
                }
                next_seq += 1;
                delivered += 1;
                let _ = events.send(CallEvent::Data(d.args));
            }
            VertebraPayload::Final(f) => {
                if !f.args.is_empty() {
                    delivered += 1;
                    let _ = events.send(CallEvent::Data(f.args));
                }
                if let Some(c) = f.count {
                    if c != delivered {
                        return Err(CallError {
                            acked,
                            ..CallError::local(
                                "out-of-order",
                                format!("final count {c}, received {delivered}"),
                            )
                        });
                    }
                }
                return Ok(delivered);
            }
            VertebraPayload::Error(e) => {
                return Err(CallError {
                    condition: e
                        .condition
                        .map(|c| c.as_str().to_string())
                        .unwrap_or_else(|| "error".into()),
                    kind: e.error_type.as_str().to_string(),
                    reason: e.reason,
                    acked,
                })
            }
            _ => {}
        }
    }
}

fn iq_error_outcome(e: &StanzaError, acked: bool) -> CallError {
    let gone = matches!(
        e.defined_condition,
        DefinedCondition::ServiceUnavailable
            | DefinedCondition::RecipientUnavailable
            | DefinedCondition::ItemNotFound
            | DefinedCondition::RemoteServerNotFound
    );
    let text = e.texts.values().next().cloned();
    if gone {
        CallError {
            acked,
            ..CallError::local("responder-gone", "responder unavailable")
        }
    } else {
        let cond = format!("{:?}", e.defined_condition);
        CallError {
            condition: match e.defined_condition {
                DefinedCondition::BadRequest => "bad-request".into(),
                DefinedCondition::NotAuthorized | DefinedCondition::Forbidden => {
                    "not-authorized".into()
                }
                _ => cond.to_lowercase(),
            },
            kind: "iq-error".into(),
            reason: text,
            acked,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Router (incoming stanzas)
// ---------------------------------------------------------------------------------------------

async fn router(node: Node, mut incoming: mpsc::UnboundedReceiver<Incoming>) {
    while let Some(inc) = incoming.recv().await {
        match inc {
            Incoming::Online { resumed, .. } => {
                if !resumed {
                    // [VAP-OPS-081] ops of a lost session are not continued.
                    let ops: Vec<RespOp> = node
                        .inner
                        .resp_ops
                        .lock()
                        .unwrap()
                        .drain()
                        .map(|(_, v)| v)
                        .collect();
                    for o in ops {
                        let _ = o.cancel.send(true);
                    }
                    node.inner.presence_sent.lock().unwrap().clear();
                    // [VAP-TRN-003] initial presence.
                    let _ = node.inner.conn.send(Presence::available());
                    node.inner.session.send_modify(|s| *s += 1);
                    if let Some(h) = node.inner.online_hook.read().unwrap().as_ref() {
                        h(&node);
                    }
                }
            }
            Incoming::Presence(p) => on_presence(&node, p),
            Incoming::Message(_) => {}
            Incoming::Iq {
                from,
                id,
                set,
                payload,
            } => on_iq(&node, from, id, set, payload),
        }
    }
}

fn on_presence(node: &Node, p: Presence) {
    if let Some(from) = &p.from {
        if p.type_ == PresenceType::Unavailable {
            // Calls to that responder end with responder-gone ([VAP-OPS-077]).
            let calls: Vec<mpsc::UnboundedSender<ToCall>> = node
                .inner
                .calls
                .lock()
                .unwrap()
                .iter()
                .filter(|((j, _), _)| j == from)
                .map(|(_, tx)| tx.clone())
                .collect();
            for c in calls {
                let _ = c.send(ToCall::Gone);
            }
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

fn answer(node: &Node, from: Jid, id: String, ans: Stanza2) {
    node.inner
        .dedup
        .lock()
        .unwrap()
        .put(from.clone(), id.clone(), ans.clone());
    match ans {
        Stanza2::Result(p) => node.inner.conn.reply_result(from, id, p),
        Stanza2::Error(e) => node.inner.conn.reply_error(from, id, e),
    }
}

fn on_iq(node: &Node, from: Jid, id: String, set: bool, payload: Element) {
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
    let is_op = payload.name() == "op";
    // Fuzzer-planted bugs (mutants only; no effect when conforming).
    let planted = node
        .inner
        .cfg
        .misbehave
        .planted(&from.to_string(), &id, &payload);
    let reexec = (node.inner.cfg.misbehave == Misbehaviour::ReexecuteDuplicate && is_op) || planted;
    if !reexec {
        // [VAP-OPS-066] / [VAP-OPS-067]: a repeated IQ set gets the same answer, not re-processed.
        if let Some(ans) = node.inner.dedup.lock().unwrap().get(&from, &id) {
            match ans {
                Stanza2::Result(p) => node.inner.conn.reply_result(from, id, p),
                Stanza2::Error(e) => node.inner.conn.reply_error(from, id, e),
            }
            return;
        }
    }
    // Legacy requesters may send ops in IQ get ([VAP-TRN-012]); anything else must be a set.
    if !set && !is_op {
        node.inner.conn.reply_error(
            from,
            id,
            stanza_err(XmppErrorType::Modify, DefinedCondition::BadRequest),
        );
        return;
    }
    let decoded = VertebraPayload::from_element(&payload);
    let p = match decoded {
        Ok(p) => p,
        Err(_) => {
            // An op with a usable token: op result, then the outcome of the first failing
            // check in the order of [VAP-OPS-084]: foreign domain → nack not-authorized
            // ([VAP-SEC-021]); version → error unsupported-version ([VAP-VER-004]); timeout,
            // window, type, values → error bad-value ([VAP-OPS-018], [VAP-OPS-051]).
            // Anything else: IQ error bad-request ([VAP-OPS-006], [VAP-TRN-010]).
            let op_err = if is_op {
                Op::decode(&payload).err()
            } else {
                None
            };
            if let Some(OpDecodeError {
                token: Some(tok),
                error,
                ..
            }) = op_err
            {
                let condition = error.rule.condition();
                if let (Travel::Error(error_type), Ok(ot)) =
                    (condition.travel(), tok.rotate_fresh())
                {
                    let r = OpResult {
                        token: ot.clone(),
                        ack: false,
                    };
                    answer(
                        node,
                        from.clone(),
                        id,
                        Stanza2::Result(Some(r.to_element())),
                    );
                    let terminal = if is_own_domain(node, &from) {
                        OpError {
                            token: ot,
                            error_type,
                            condition: Some(condition),
                            reason: Some(error.to_string()),
                        }
                        .to_element()
                    } else {
                        Nack {
                            token: ot,
                            reason: Condition::NotAuthorized,
                        }
                        .to_element()
                    };
                    let n = node.clone();
                    tokio::spawn(async move {
                        let _ = send_set(&n, &from, terminal, Duration::from_secs(10)).await;
                    });
                    return;
                }
            }
            answer(
                node,
                from,
                id,
                Stanza2::Error(stanza_err(
                    XmppErrorType::Modify,
                    DefinedCondition::BadRequest,
                )),
            );
            return;
        }
    };
    match p {
        VertebraPayload::Op(op) => on_op(node, from, id, op),
        VertebraPayload::Cancel(c) => {
            // [VAP-OPS-054] always answered; [VAP-OPS-057] only the requester may cancel.
            answer(node, from.clone(), id, Stanza2::Result(None));
            if node.inner.cfg.misbehave == Misbehaviour::IgnoreCancel {
                return;
            }
            let ops = node.inner.resp_ops.lock().unwrap();
            if let Some(o) = ops.get(&c.token) {
                if o.requester == from {
                    let _ = o.cancel.send(true);
                }
            }
        }
        VertebraPayload::Load(_) => {
            answer(
                node,
                from,
                id,
                Stanza2::Error(stanza_err(
                    XmppErrorType::Modify,
                    DefinedCondition::BadRequest,
                )),
            );
        }
        other => {
            // Requester side: [VAP-OPS-031] answer every per-op stanza, then route it.
            answer(node, from.clone(), id, Stanza2::Result(None));
            let Some(tok) = other.op_token() else { return };
            let key = (from, tok.requester.to_string());
            let tx = node.inner.calls.lock().unwrap().get(&key).cloned();
            if let Some(tx) = tx {
                let _ = tx.send(ToCall::Payload(other));
            }
        }
    }
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

/// The handler that serves an op type: among the registered paths equal to or a segment-wise
/// ancestor of it ([VAP-RES-013], never a string prefix, [VAP-RES-010]), the one with the most
/// segments ([VAP-RES-017]). Handlers provide no scoping resources of their own, so an op
/// without scoping resources is in scope for every one of them ([VAP-RES-015]).
fn select_handler(node: &Node, op_type: &str) -> Option<Arc<dyn Handler>> {
    let target = Resource::parse(op_type).ok()?;
    let handlers = node.inner.handlers.read().unwrap();
    handlers
        .iter()
        .filter_map(|(path, h)| {
            let path = Resource::parse(path).ok()?;
            path.is_prefix_of(&target).then(|| (path.depth(), h))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, h)| h.clone())
}

fn on_op(node: &Node, from: Jid, id: String, op: Op) {
    let received = Instant::now();
    let misbehave = node.inner.cfg.misbehave;
    let mut op_token = match op.token.rotate_fresh() {
        Ok(t) => t,
        Err(_) => {
            answer(
                node,
                from,
                id,
                Stanza2::Error(stanza_err(
                    XmppErrorType::Wait,
                    DefinedCondition::InternalServerError,
                )),
            );
            return;
        }
    };
    if misbehave == Misbehaviour::WrongToken {
        if let Ok(t) = Token::generate() {
            op_token.requester = t;
        }
    }
    let own_domain = is_own_domain(node, &from);
    let handler = select_handler(node, &op.op_type);
    let scope = op_scope(&op);
    // Decide now whether the fast path applies ([VAP-OPS-024], never for legacy [VAP-OPS-026]).
    let pre = if !own_domain || handler.is_none() {
        None
    } else if misbehave == Misbehaviour::IgnoreAuthorization {
        Some(true)
    } else if !node
        .inner
        .admission
        .read()
        .unwrap()
        .as_ref()
        .map(|f| f(&from, &op))
        .unwrap_or(true)
    {
        Some(false)
    } else {
        authorize_now(node, &from, &op.op_type, &scope)
    };
    let fast =
        pre == Some(true) && op.version == Version::V1_0 && misbehave != Misbehaviour::SkipAck;
    log::trace!(
        "op {} from {from}: pre-authorized {pre:?}, fast path {fast}",
        op.op_type
    );
    let r = OpResult {
        token: op_token.clone(),
        ack: fast,
    };
    answer(
        node,
        from.clone(),
        id,
        Stanza2::Result(Some(r.to_element())),
    );
    let (ctx, crx) = watch::channel(false);
    node.inner.resp_ops.lock().unwrap().insert(
        op_token.clone(),
        RespOp {
            requester: from.clone(),
            cancel: ctx,
        },
    );
    let n = node.clone();
    tokio::spawn(async move {
        n.inner.inflight.fetch_add(1, Ordering::Relaxed);
        n.inner.load_changed.notify_one();
        serve_op(
            &n,
            from,
            op,
            op_token.clone(),
            received,
            own_domain,
            handler,
            scope,
            pre,
            fast,
            crx,
        )
        .await;
        n.inner.resp_ops.lock().unwrap().remove(&op_token);
        n.inner.inflight.fetch_sub(1, Ordering::Relaxed);
        n.inner.load_changed.notify_one();
    });
}

/// Send an IQ set and wait for its result (at most `wait`). Err = the peer did not accept it.
async fn send_set(node: &Node, to: &Jid, el: Element, wait: Duration) -> Result<(), String> {
    match node.inner.conn.iq(to.clone(), true, el, wait).await {
        Ok(IqReply::Result(_)) => Ok(()),
        Ok(IqReply::Error(e)) => Err(format!("{:?}", e.defined_condition)),
        Err(e) => Err(e.to_string()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_op(
    node: &Node,
    from: Jid,
    op: Op,
    token: OpToken,
    received: Instant,
    own_domain: bool,
    handler: Option<Arc<dyn Handler>>,
    scope: ResourceScope,
    pre: Option<bool>,
    fast: bool,
    mut cancel: watch::Receiver<bool>,
) {
    let misbehave = node.inner.cfg.misbehave;
    let deadline = received + Duration::from_millis(op.timeout_ms() as u64);
    let left = || deadline.saturating_duration_since(Instant::now());
    let send_err = |t: ErrorType, c: Condition, reason: String| {
        let e = OpError {
            token: token.clone(),
            error_type: t,
            condition: Some(c),
            reason: Some(reason),
        };
        e.to_element()
    };
    if !own_domain {
        // [VAP-SEC-021]
        let n = Nack {
            token: token.clone(),
            reason: Condition::NotAuthorized,
        };
        let _ = send_set(node, &from, n.to_element(), left()).await;
        return;
    }
    let Some(handler) = handler else {
        // [VAP-OPS-049]
        let e = send_err(
            ErrorType::Fatal,
            Condition::NoHandler,
            format!("no handler for {}", op.op_type),
        );
        let _ = send_set(node, &from, e, left()).await;
        return;
    };
    let Some(operation) = op.operation() else {
        let e = send_err(
            ErrorType::Fatal,
            Condition::NoHandler,
            "unknown operation".into(),
        );
        let _ = send_set(node, &from, e, left()).await;
        return;
    };
    if !fast {
        let decision = match pre {
            Some(true) => Decision::Authorized,
            Some(false) => Decision::Denied,
            None => {
                tokio::select! {
                    d = authorize_remote(node, &from, &operation, &scope) => d,
                    _ = tokio::time::sleep_until(deadline) => Decision::Denied,
                }
            }
        };
        let refusal = match decision {
            Decision::Authorized => None,
            // [VAP-SEC-008] / [VAP-SEC-025]: no rule detail.
            Decision::Denied => Some(Condition::NotAuthorized),
            // [VAP-SEC-009]
            Decision::Unavailable => Some(Condition::AuthorizationUnavailable),
        };
        if let Some(reason) = refusal {
            let n = Nack {
                token: token.clone(),
                reason,
            };
            let _ = send_set(node, &from, n.to_element(), left()).await;
            return;
        }
        if misbehave != Misbehaviour::SkipAck {
            // [VAP-OPS-029]: work starts only after the ack's IQ result.
            let a = Ack {
                token: token.clone(),
            };
            if send_set(node, &from, a.to_element(), left()).await.is_err() {
                return;
            }
        }
    }
    // Run the handler.
    let window = op.window().max(1) as usize;
    let (dtx, mut drx) = mpsc::channel::<Args>(1);
    let call = Call {
        from: from.clone(),
        operation,
        args: op.args.clone(),
        deadline,
        data: dtx,
        cancel: cancel.clone(),
        node: node.clone(),
    };
    let mut task = tokio::spawn(handler.call(call));
    type SendFut = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
    let mut inflight: FuturesUnordered<SendFut> = FuturesUnordered::new();
    let mut seq: u64 = if misbehave == Misbehaviour::WrongSeq {
        1
    } else {
        0
    };
    let mut sent: u64 = 0;
    let mut handler_done: Option<HandlerResult> = None;
    let ignore_deadline = misbehave == Misbehaviour::IgnoreDeadline;
    let ignore_cancel = misbehave == Misbehaviour::IgnoreCancel;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let dl = if ignore_deadline { far } else { deadline };
    // [VAP-OPS-035]: at most `window` data IQs unanswered; chunks the handler queued before
    // returning are drained through the same window-gated branch.
    let mut drx_open = true;
    let fail = loop {
        if handler_done.is_some() && !drx_open && inflight.is_empty() {
            break None;
        }
        tokio::select! {
            chunk = drx.recv(), if drx_open && inflight.len() < window => {
                let Some(chunk) = chunk else {
                    drx_open = false;
                    continue;
                };
                let d = Data { token: token.clone(), seq: Some(seq), args: chunk };
                seq += 1;
                sent += 1;
                let el = encode_misbehaving(d.to_element(), misbehave);
                let n = node.clone();
                let f = from.clone();
                let w = left();
                inflight.push(Box::pin(async move { send_set(&n, &f, el, w).await }));
            }
            r = inflight.next(), if !inflight.is_empty() => {
                if let Some(Err(e)) = r {
                    log::debug!("data IQ to {from} failed: {e}; ending op");
                    task.abort();
                    return;
                }
            }
            r = &mut task, if handler_done.is_none() => {
                handler_done = Some(match r {
                    Ok(r) => r,
                    Err(_) => Err(HandlerError::new("handler panicked")),
                });
                // No more chunks: buffered ones are still received (within the window).
                drx.close();
            }
            _ = tokio::time::sleep_until(dl) => {
                task.abort();
                break Some(send_err(ErrorType::Cancel, Condition::DeadlineExpired, "deadline expired".into()));
            }
            r = cancel.changed(), if !ignore_cancel => {
                if r.is_err() || *cancel.borrow() {
                    task.abort();
                    break Some(send_err(ErrorType::Cancel, Condition::Cancelled, "cancelled".into()));
                }
            }
        }
    };
    if let Some(err_el) = fail {
        // Outstanding data IQs: wait for them briefly so the error comes after them.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while inflight.next().await.is_some() {}
        })
        .await;
        let _ = send_set(node, &from, err_el, Duration::from_secs(5)).await;
        return;
    }
    match handler_done.expect("loop ends with a result") {
        Ok(last) => {
            let mut fin = Final {
                token: token.clone(),
                // [VAP-VER-008]: seq and count toward legacy requesters too.
                count: Some(sent),
                args: Args::new(),
            };
            if !last.is_empty() {
                if fast_final_ok(&op) {
                    fin.args = last;
                    fin.count = Some(sent + 1);
                } else {
                    let d = Data {
                        token: token.clone(),
                        seq: Some(seq),
                        args: last,
                    };
                    if send_set(
                        node,
                        &from,
                        encode_misbehaving(d.to_element(), misbehave),
                        left(),
                    )
                    .await
                    .is_err()
                    {
                        return;
                    }
                    fin.count = fin.count.map(|c| c + 1);
                }
            }
            let _ = send_set(
                node,
                &from,
                encode_misbehaving(fin.to_element(), misbehave),
                left(),
            )
            .await;
            if misbehave == Misbehaviour::DataAfterFinal {
                let d = Data {
                    token: token.clone(),
                    seq: Some(seq + 1),
                    args: Args::new().with("late", Value::Boolean(true)),
                };
                let _ = send_set(node, &from, d.to_element(), Duration::from_secs(2)).await;
            }
        }
        Err(he) => {
            let reason = if misbehave == Misbehaviour::LeakErrorDetail {
                format!(
                    "{} at /home/build/src/handler.rs:42 (RUST_BACKTRACE=1)",
                    he.public
                )
            } else {
                he.public
            };
            let e = send_err(
                he.error_type.unwrap_or(ErrorType::Error),
                he.condition.unwrap_or(Condition::HandlerFailed),
                reason,
            );
            let _ = send_set(node, &from, e, left()).await;
        }
    }
}

/// Whether values may ride on `final` ([VAP-OPS-043]: 1.0 requesters only).
fn fast_final_ok(op: &Op) -> bool {
    op.version == Version::V1_0
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
        // [VAP-DSC-010] re-advertise at ≤ 0.9 × ttl; retry soon after a failure.
        let next = match &r {
            Ok(_) => Duration::from_millis(ttl as u64 * 900),
            Err(e) => {
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
}
