//! The in-process server: accept loop, per-connection tasks, dispatch.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use sasl::common::scram::{Sha1, Sha256};
use sasl::common::{ChannelBinding, Identity};
use sasl::secret;
use sasl::server::mechanisms::{Plain as PlainMech, Scram as ScramMech};
use sasl::server::{
    Mechanism as SaslServerMechanism, Provider, ProviderError, Response as SaslResponse, Validator,
    ValidatorError,
};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_xmpp::parsers::{
    bind::{BindFeature, BindQuery, BindResponse},
    iq::Iq,
    ns,
    sasl::{
        DefinedCondition as SaslCondition, Failure, Mechanism as XmppMechanism, Nonza, Success,
    },
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
    stream_error::{DefinedCondition as StreamCondition, StreamError},
    stream_features::StreamFeatures,
};
use tokio_xmpp::xmlstream::{
    accept_stream, FallibleStreamElement, ReadError, StreamElementError, StreamHeader, Timeouts,
    XmlStream, XmppStreamElement,
};
use tokio_xmpp::{
    jid::{BareJid, FullJid, Jid},
    minidom::Element,
    Stanza,
};

use crate::config::{Error, Result, SaslMechanism, ServerConfig};
use crate::faults::{Faults, Outgoing, Planned, Prng, SplitSpec};
use crate::router::{BindOutcome, ConnId, Delivery, Router};
use crate::trace::{Direction, Trace};

type Io = ReadCapture;
type Xs = XmlStream<Io, FallibleStreamElement>;

const READ_BUFFER: usize = 8 * 1024;
const WRITE_BATCH: usize = 64;
const READ_BATCH: usize = 64;
const WRITE_COALESCE: usize = 64 * 1024;

/// Entry point: `EmbeddedServer::start(config)`.
pub struct EmbeddedServer;

impl EmbeddedServer {
    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    pub async fn start(config: ServerConfig) -> Result<ServerHandle> {
        let domain = parse_domain(&config.domain)?;
        let mut router = Router::new(domain.clone());
        for d in &config.extra_domains {
            router.add_domain(parse_domain(d)?);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (sessions_tx, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            router: Mutex::new(RouterState {
                router,
                conns: HashMap::new(),
            }),
            passwords: Mutex::new(HashMap::new()),
            faults: Faults::new(config.seed),
            trace: Trace::new(config.trace, config.trace_capacity, config.trace_max_xml),
            next_conn: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            shutdown: shutdown_tx,
            sessions: sessions_tx,
            rng: Mutex::new(Prng::new(config.seed ^ 0x05EE_D0F5_E551_011F)),
            domain,
            config,
        });
        for (user, pw) in shared.config.accounts.clone() {
            shared.add_account(&user, &pw)?;
        }
        let accept = tokio::spawn(accept_loop(shared.clone(), listener, shutdown_rx.clone()));
        tokio::spawn(flush_released(Arc::downgrade(&shared), shutdown_rx));
        Ok(ServerHandle {
            shared,
            addr,
            accept: Some(accept),
        })
    }
}

/// A running embedded server. Dropping it shuts the server down (without waiting); call
/// [`ServerHandle::shutdown`] to wait until every connection is closed.
pub struct ServerHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .field("domain", &self.shared.domain)
            .finish()
    }
}

impl ServerHandle {
    /// The listening address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The primary served domain ([`ServerConfig::domain`]).
    pub fn domain(&self) -> &str {
        self.shared.domain.as_str()
    }

    /// Every served domain (primary and extra), sorted.
    pub fn domains(&self) -> Vec<String> {
        self.shared
            .router
            .lock()
            .expect("router")
            .router
            .domains()
            .into_iter()
            .map(|d| d.to_string())
            .collect()
    }

    /// Serves one more domain from now on (like [`ServerConfig::extra_domains`]).
    pub fn add_domain(&self, domain: &str) -> Result<()> {
        let d = parse_domain(domain)?;
        self.shared
            .router
            .lock()
            .expect("router")
            .router
            .add_domain(d);
        Ok(())
    }

    /// Adds (or changes the password of) an account at runtime. `user` is a localpart of
    /// the primary domain or a bare JID `user@domain` in any served domain
    /// ([`Error::UnknownDomain`] otherwise).
    pub fn add_account(&self, user: &str, password: &str) -> Result<()> {
        self.shared.add_account(user, password)
    }

    /// The bare JID of an account name: `user@domain` for a localpart (primary domain), or
    /// `user` itself when it already is a bare JID with a localpart. The account need not
    /// exist.
    pub fn bare_jid(&self, user: &str) -> Result<BareJid> {
        self.shared.account_jid(user)
    }

    /// Fault-injection rules.
    pub fn faults(&self) -> Faults {
        self.shared.faults.clone()
    }

    /// The wire trace.
    pub fn trace(&self) -> Trace {
        self.shared.trace.clone()
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// Full JIDs of all bound sessions, sorted.
    pub fn sessions(&self) -> Vec<FullJid> {
        self.shared
            .router
            .lock()
            .expect("router")
            .router
            .all_sessions()
    }

    /// Number of open TCP connections (bound or not).
    pub fn connection_count(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }

    /// Whether a session has sent available broadcast presence.
    pub fn is_available(&self, jid: &FullJid) -> bool {
        self.shared
            .router
            .lock()
            .expect("router")
            .router
            .is_available(jid)
    }

    /// Entities currently holding directed presence from `jid`.
    pub fn directed_presence_of(&self, jid: &FullJid) -> Vec<Jid> {
        self.shared
            .router
            .lock()
            .expect("router")
            .router
            .directed_presence_of(jid)
    }

    /// Waits until `cond(sessions)` holds for the list of bound sessions, or `timeout`.
    pub async fn wait_sessions(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&[FullJid]) -> bool,
    ) -> Result<()> {
        let mut rx = self.shared.sessions.subscribe();
        let fut = async {
            loop {
                if cond(&self.sessions()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::Timeout(what.to_owned()))
    }

    /// Waits until `jid` is bound.
    pub async fn wait_online(&self, jid: &FullJid, timeout: Duration) -> Result<()> {
        self.wait_sessions(timeout, &format!("{jid} online"), |s| s.contains(jid))
            .await
    }

    /// Waits until `jid` is no longer bound.
    pub async fn wait_offline(&self, jid: &FullJid, timeout: Duration) -> Result<()> {
        self.wait_sessions(timeout, &format!("{jid} offline"), |s| !s.contains(jid))
            .await
    }

    /// Sends any XML element (normally a stanza, with any `from`) to the connected session(s)
    /// named by its `to` attribute: a full JID reaches that session, a bare JID every
    /// session of the account. Bypasses routing rules and fault rules; traced with note
    /// `"inject"`. Returns the number of sessions it was queued for.
    pub fn inject(&self, stanza: impl Into<Element>) -> Result<usize> {
        let el: Element = stanza.into();
        let to = el
            .attr("to")
            .and_then(|t| Jid::new(t).ok())
            .ok_or(Error::NoRecipient)?;
        let targets = {
            let st = self.shared.router.lock().expect("router");
            match to.try_as_full() {
                Ok(f) => st
                    .router
                    .conn_of(f)
                    .map(|_| vec![f.clone()])
                    .unwrap_or_default(),
                Err(b) => st.router.sessions_of(b),
            }
        };
        if targets.is_empty() {
            return Err(Error::NoSuchSession(to.to_string()));
        }
        let n = targets.len();
        for t in targets {
            self.shared
                .enqueue(t, Outgoing::Element(el.clone()), Some("inject".into()));
        }
        Ok(n)
    }

    /// Writes `bytes` into the stream of the session `jid` exactly as given, bypassing
    /// serialisation, routing and fault rules: they may be ill-formed XML, invalid UTF-8, a
    /// partial tag, anything. They are written after every stanza already queued for that
    /// connection and before any queued later (split writes, if set for the connection,
    /// apply). Traced as [`Direction::Out`] with note `"inject raw"`; the event's `xml` holds
    /// the bytes escaped by [`escape_bytes`](crate::trace::escape_bytes). The server keeps
    /// the connection open and goes on reading from it; what the client makes of the bytes
    /// is up to the client (a conforming one closes the stream). Errors:
    /// [`Error::NoSuchSession`] if `jid` is not bound, [`Error::QueueFull`] if its outbound
    /// queue is full (the session is then closed as a slow reader).
    pub fn inject_raw(&self, jid: &FullJid, bytes: impl Into<Vec<u8>>) -> Result<()> {
        self.queue_command(
            jid,
            Command::Write {
                item: Outgoing::Raw(bytes.into()),
                note: Some("inject raw".into()),
            },
        )
    }

    /// Cuts the connection of `jid` abruptly (TCP close, no stream footer, no stream error)
    /// once everything queued for it so far — stanzas and [`inject_raw`](Self::inject_raw)
    /// bytes — has been written. Use [`disconnect`](Self::disconnect) to cut at once.
    /// Errors: [`Error::NoSuchSession`] if `jid` is not bound.
    pub fn disconnect_after_queued(&self, jid: &FullJid) -> Result<()> {
        self.queue_command(jid, Command::Cut)
    }

    fn queue_command(&self, jid: &FullJid, cmd: Command) -> Result<()> {
        let st = self.shared.router.lock().expect("router");
        let c = st
            .router
            .conn_of(jid)
            .and_then(|conn| st.conns.get(&conn))
            .ok_or_else(|| Error::NoSuchSession(jid.to_string()))?;
        match c.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                log::warn!("embedded server: {jid} is not reading; closing it (slow reader)");
                c.kill.kill(KillReason::SlowReader);
                Err(Error::QueueFull(jid.to_string()))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::NoSuchSession(jid.to_string())),
        }
    }

    /// Cuts the connection of a session abruptly (TCP close, no stream footer), as if the
    /// client vanished. Takes effect at once, even before stanzas already queued for it
    /// (see [`disconnect_after_queued`](Self::disconnect_after_queued)).
    pub fn disconnect(&self, jid: &FullJid) -> Result<()> {
        let st = self.shared.router.lock().expect("router");
        let conn = st
            .router
            .conn_of(jid)
            .ok_or_else(|| Error::NoSuchSession(jid.to_string()))?;
        if let Some(c) = st.conns.get(&conn) {
            c.kill.kill(KillReason::Abrupt);
        }
        Ok(())
    }

    /// Closes a session's stream cleanly with the given stream error (or just the footer).
    pub fn close_session(&self, jid: &FullJid, error: Option<StreamError>) -> Result<()> {
        let st = self.shared.router.lock().expect("router");
        let conn = st
            .router
            .conn_of(jid)
            .ok_or_else(|| Error::NoSuchSession(jid.to_string()))?;
        if let Some(c) = st.conns.get(&conn) {
            if c.tx.try_send(Command::Close(error)).is_err() {
                c.kill.kill(KillReason::Abrupt);
            }
        }
        Ok(())
    }

    /// Number of successful socket writes made to a session's connection so far (shows
    /// [`Faults::split_writes`] at work).
    pub fn socket_writes(&self, jid: &FullJid) -> Option<u64> {
        let st = self.shared.router.lock().expect("router");
        let conn = st.router.conn_of(jid)?;
        st.conns
            .get(&conn)
            .map(|c| c.io.socket_writes.load(Ordering::Relaxed))
    }

    /// Stops accepting, closes every connection (stream error `system-shutdown`) and waits
    /// (at most 5 s) until they are gone.
    pub async fn shutdown(mut self) {
        let _ = self.shared.shutdown.send(true);
        if let Some(a) = self.accept.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
        }
        let shared = self.shared.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), async move {
            loop {
                let notified = shared.idle.notified();
                if shared.active.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
    }
}

// ----------------------------------------------------------------------------------------

struct Shared {
    config: ServerConfig,
    domain: BareJid,
    router: Mutex<RouterState>,
    passwords: Mutex<HashMap<BareJid, String>>,
    faults: Faults,
    trace: Trace,
    next_conn: AtomicU64,
    active: AtomicUsize,
    idle: Notify,
    shutdown: watch::Sender<bool>,
    sessions: watch::Sender<u64>,
    rng: Mutex<Prng>,
}

struct RouterState {
    router: Router,
    conns: HashMap<ConnId, ConnHandle>,
}

struct ConnHandle {
    tx: mpsc::Sender<Command>,
    kill: Arc<Kill>,
    io: Arc<ConnShared>,
}

// Stanzas are moved, not boxed: one allocation fewer per routed stanza.
#[allow(clippy::large_enum_variant)]
enum Command {
    Write {
        item: Outgoing,
        note: Option<String>,
    },
    Close(Option<StreamError>),
    /// Flush what is queued, then close the TCP connection without a footer.
    Cut,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillReason {
    None = 0,
    Abrupt = 1,
    SlowReader = 2,
    Conflict = 3,
}

struct Kill {
    reason: std::sync::atomic::AtomicU8,
    notify: Notify,
}

impl Kill {
    fn new() -> Self {
        Kill {
            reason: std::sync::atomic::AtomicU8::new(0),
            notify: Notify::new(),
        }
    }
    fn kill(&self, r: KillReason) {
        let _ = self.reason.compare_exchange(
            KillReason::None as u8,
            r as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.notify.notify_one();
    }
    fn reason(&self) -> KillReason {
        match self.reason.load(Ordering::Acquire) {
            1 => KillReason::Abrupt,
            2 => KillReason::SlowReader,
            3 => KillReason::Conflict,
            _ => KillReason::None,
        }
    }
}

impl Shared {
    /// `user` (localpart of the primary domain) or `user@domain` as a bare JID.
    fn account_jid(&self, user: &str) -> Result<BareJid> {
        let text = if user.contains('@') {
            user.to_owned()
        } else {
            format!("{user}@{}", self.domain)
        };
        BareJid::new(&text)
            .ok()
            .filter(|b| b.node().is_some())
            .ok_or_else(|| Error::InvalidAccount(user.into()))
    }

    fn add_account(&self, user: &str, password: &str) -> Result<()> {
        let bare = self.account_jid(user)?;
        let mut st = self.router.lock().expect("router");
        if !st.router.add_account_jid(&bare) {
            return Err(Error::UnknownDomain(bare.domain().to_string()));
        }
        drop(st);
        self.passwords
            .lock()
            .expect("passwords")
            .insert(bare, password.to_owned());
        Ok(())
    }

    fn password(&self, account: &BareJid) -> Option<String> {
        self.passwords
            .lock()
            .expect("passwords")
            .get(account)
            .cloned()
    }

    fn random(&self) -> u64 {
        self.rng.lock().expect("rng").next_u64()
    }

    fn bump_sessions(&self) {
        self.sessions.send_modify(|v| *v += 1);
    }

    /// Queues one stanza for a session (no fault rules). A full queue marks the recipient
    /// as a slow reader and closes it.
    fn enqueue(&self, to: FullJid, item: Outgoing, note: Option<String>) {
        let st = self.router.lock().expect("router");
        Self::enqueue_locked(&st, to, item, note);
    }

    fn enqueue_locked(st: &RouterState, to: FullJid, item: Outgoing, note: Option<String>) {
        let Some(conn) = st.router.conn_of(&to) else {
            return;
        };
        let Some(c) = st.conns.get(&conn) else {
            return;
        };
        match c.tx.try_send(Command::Write { item, note }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                log::warn!("embedded server: {to} is not reading; closing it (slow reader)");
                c.kill.kill(KillReason::SlowReader);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Passes deliveries through the fault rules and queues them.
    fn dispatch(self: &Arc<Self>, sender: Option<ConnId>, deliveries: Vec<Delivery>) {
        if self.faults.is_idle() {
            // Fast path: no rule can act, so no plan; one router lock for all deliveries.
            if !deliveries.is_empty() {
                let st = self.router.lock().expect("router");
                for d in deliveries {
                    Self::enqueue_locked(&st, d.to, Outgoing::Stanza(d.stanza), None);
                }
            }
            return;
        }
        for d in deliveries {
            let plan = self.faults.plan(d);
            for (to, item, note) in plan.dropped {
                let conn = self.router.lock().expect("router").router.conn_of(&to);
                let jid: Jid = to.into();
                self.trace.record(
                    Direction::Dropped,
                    conn.unwrap_or(0),
                    Some(&jid),
                    || serialize(&item),
                    Some(note),
                );
            }
            if plan.cut_sender {
                if let Some(s) = sender {
                    self.kill_conn(s, KillReason::Abrupt);
                }
            }
            if let Some(r) = plan.cut_recipient {
                let conn = self.router.lock().expect("router").router.conn_of(&r);
                if let Some(c) = conn {
                    self.kill_conn(c, KillReason::Abrupt);
                }
            }
            for w in plan.writes {
                self.schedule(w);
            }
        }
        for w in self.faults.take_released() {
            self.schedule(w);
        }
    }

    fn schedule(self: &Arc<Self>, w: Planned) {
        match w.delay {
            None => self.enqueue(w.to, w.item, w.note),
            Some(d) => {
                let me = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    me.enqueue(w.to, w.item, w.note);
                });
            }
        }
    }

    fn kill_conn(&self, conn: ConnId, reason: KillReason) {
        if let Some(c) = self.router.lock().expect("router").conns.get(&conn) {
            c.kill.kill(reason);
        }
    }
}

fn serialize_stanza(s: &Stanza) -> String {
    match xso::to_vec(s) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("<!-- unserialisable: {e} -->"),
    }
}

fn serialize(item: &Outgoing) -> String {
    let bytes = match item {
        Outgoing::Stanza(s) => return serialize_stanza(s),
        Outgoing::Element(e) => xso::to_vec(e),
        Outgoing::Raw(b) => return crate::trace::escape_bytes(b),
    };
    match bytes {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("<!-- unserialisable: {e} -->"),
    }
}

// ----- SASL account store adapters ------------------------------------------------------

/// The account store as the SASL mechanisms see it: usernames are localparts of the domain
/// the client's stream was opened to.
#[derive(Clone)]
struct Accounts(Arc<Shared>, BareJid);

impl Accounts {
    fn password(&self, user: &str) -> Option<String> {
        let bare = BareJid::new(&format!("{user}@{}", self.1)).ok()?;
        self.0.password(&bare)
    }

    fn salt(&self, user: &str) -> Vec<u8> {
        let mut h = self.0.config.seed ^ 0x5A17;
        for b in user.bytes() {
            h = Prng::new(h ^ b as u64).next_u64();
        }
        h.to_be_bytes().to_vec()
    }
}

impl Validator<secret::Plain> for Accounts {
    fn validate(&self, identity: &Identity, value: &secret::Plain) -> Result<(), ValidatorError> {
        let Identity::Username(user) = identity else {
            return Err(ValidatorError::AuthenticationFailed);
        };
        match self.password(user) {
            Some(pw) if pw == value.0 => Ok(()),
            _ => Err(ValidatorError::AuthenticationFailed),
        }
    }
}

impl Provider<secret::Pbkdf2Sha1> for Accounts {
    fn provide(&self, identity: &Identity) -> Result<secret::Pbkdf2Sha1, ProviderError> {
        let Identity::Username(user) = identity else {
            return Err(ProviderError::AuthenticationFailed);
        };
        let pw = self
            .password(user)
            .ok_or(ProviderError::AuthenticationFailed)?;
        Ok(secret::Pbkdf2Sha1::derive(
            &pw,
            &self.salt(user),
            self.0.config.scram_iterations,
        )?)
    }
}
sasl::impl_validator_using_provider!(Accounts, secret::Pbkdf2Sha1);

impl Provider<secret::Pbkdf2Sha256> for Accounts {
    fn provide(&self, identity: &Identity) -> Result<secret::Pbkdf2Sha256, ProviderError> {
        let Identity::Username(user) = identity else {
            return Err(ProviderError::AuthenticationFailed);
        };
        let pw = self
            .password(user)
            .ok_or(ProviderError::AuthenticationFailed)?;
        Ok(secret::Pbkdf2Sha256::derive(
            &pw,
            &self.salt(user),
            self.0.config.scram_iterations,
        )?)
    }
}
sasl::impl_validator_using_provider!(Accounts, secret::Pbkdf2Sha256);

fn make_mechanism(
    shared: &Arc<Shared>,
    domain: &BareJid,
    m: &XmppMechanism,
    initial: &[u8],
) -> Option<Box<dyn SaslServerMechanism + Send>> {
    let offered = |x: SaslMechanism| shared.config.mechanisms.contains(&x);
    let accounts = Accounts(shared.clone(), domain.clone());
    // The sasl crate's SCRAM server rejects a gs2 header of "n" (client without channel
    // binding) when given ChannelBinding::None; with an empty tls-unique binding it accepts
    // "n,," and computes the right `c=biws`. A "y" client gets ChannelBinding::None.
    let cb = if initial.first() == Some(&b'y') {
        ChannelBinding::None
    } else {
        ChannelBinding::TlsUnique(Vec::new())
    };
    match m {
        XmppMechanism::Plain if offered(SaslMechanism::Plain) => {
            Some(Box::new(PlainMech::new(accounts)))
        }
        XmppMechanism::ScramSha1 if offered(SaslMechanism::ScramSha1) => {
            Some(Box::new(ScramMech::<Sha1, _>::new(accounts, cb)))
        }
        XmppMechanism::ScramSha256 if offered(SaslMechanism::ScramSha256) => {
            Some(Box::new(ScramMech::<Sha256, _>::new(accounts, cb)))
        }
        _ => None,
    }
}

// ----- connection I/O wrapper: size limit and split writes -----------------------------

struct ConnShared {
    id: ConnId,
    limit: usize,
    since_mark: AtomicUsize,
    too_large: AtomicBool,
    bound: OnceLock<Jid>,
    socket_writes: AtomicU64,
    /// Raw bytes to write on the next flush ([`ServerHandle::inject_raw`]).
    raw: Mutex<Vec<u8>>,
    /// Bytes the XML parser consumed since the last stanza (bound sessions, trace on):
    /// the wire form of the stanza being read, recorded in the trace as is.
    captured: Mutex<Vec<u8>>,
}

impl ConnShared {
    /// Takes the captured wire bytes of the stanza just parsed (leading whitespace
    /// between stanzas trimmed), or `None` if nothing was captured.
    fn take_captured(&self) -> Option<Vec<u8>> {
        let mut c = self.captured.lock().expect("captured");
        if c.is_empty() {
            return None;
        }
        let start = c
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(c.len());
        let mut v = std::mem::take(&mut *c);
        drop(c);
        v.drain(..start);
        let end = v
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |p| p + 1);
        v.truncate(end);
        (!v.is_empty()).then_some(v)
    }

    fn clear_captured(&self) {
        self.captured.lock().expect("captured").clear();
    }
}

/// The connection's read side as the XML parser sees it: a buffered reader that, while the
/// trace is on and the session is bound, keeps a copy of every byte the parser consumes, so
/// that `In` trace events hold the stanza exactly as received without serialising it again.
struct ReadCapture {
    inner: BufReader<ConnIo>,
    cs: Arc<ConnShared>,
    trace: Trace,
}

impl AsyncRead for ReadCapture {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncBufRead for ReadCapture {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }
    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        if amt > 0 && self.cs.bound.get().is_some() && self.trace.is_enabled() {
            let avail = self.inner.buffer();
            let n = amt.min(avail.len());
            self.cs
                .captured
                .lock()
                .expect("captured")
                .extend_from_slice(&avail[..n]);
        }
        Pin::new(&mut self.inner).consume(amt)
    }
}

impl AsyncWrite for ReadCapture {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct ConnIo {
    tcp: TcpStream,
    shared: Arc<ConnShared>,
    faults: Faults,
    seen_generation: u64,
    seen_bound: bool,
    split: Option<SplitSpec>,
    rng: Prng,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Raw bytes taken from `ConnShared::raw`, written (through `poll_write`, so split
    /// writes apply) before the flush completes.
    rawbuf: Vec<u8>,
    rawpos: usize,
}

impl ConnIo {
    fn refresh_split(&mut self) {
        let generation = self.faults.split_generation();
        let bound = self.shared.bound.get();
        if generation != self.seen_generation || bound.is_some() != self.seen_bound {
            self.seen_generation = generation;
            self.seen_bound = bound.is_some();
            self.split = bound.and_then(|j| self.faults.split_for(j));
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        let total = self.shared.since_mark.fetch_add(n, Ordering::AcqRel) + n;
        if total > self.shared.limit {
            self.shared.too_large.store(true, Ordering::Release);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "stanza exceeds the configured size limit",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl ConnIo {
    /// Writes injected raw bytes (if any) through `poll_write`.
    fn poll_raw(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rawpos >= self.rawbuf.len() {
            let mut pending = self.shared.raw.lock().expect("raw");
            if pending.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let taken = std::mem::take(&mut *pending);
            drop(pending);
            self.rawbuf = taken;
            self.rawpos = 0;
        }
        while self.rawpos < self.rawbuf.len() {
            let chunk = std::mem::take(&mut self.rawbuf);
            let pos = self.rawpos;
            let r = self.as_mut().poll_write(cx, &chunk[pos..]);
            self.rawbuf = chunk;
            let n = ready!(r)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.rawpos += n;
        }
        self.rawbuf.clear();
        self.rawpos = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes the coalescing buffer to the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.shared.socket_writes.fetch_add(1, Ordering::Relaxed);
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
}

/// Writes are coalesced in a buffer (up to [`WRITE_COALESCE`] bytes) and reach the socket
/// on flush, so a batch of stanzas costs one system call. With split writes active every
/// piece is written to the socket separately instead.
impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.refresh_split();
        let piece = match self.split {
            None => {
                if self.wbuf.len() >= WRITE_COALESCE {
                    ready!(self.poll_drain(cx))?;
                }
                self.wbuf.extend_from_slice(buf);
                return Poll::Ready(Ok(buf.len()));
            }
            Some(SplitSpec::Fixed(k)) => k.max(1).min(buf.len()),
            Some(SplitSpec::Random { max }) => (1 + self.rng.below(max.max(1))).min(buf.len()),
        };
        ready!(self.poll_drain(cx))?;
        let r = ready!(Pin::new(&mut self.tcp).poll_write(cx, &buf[..piece]));
        if r.is_ok() {
            self.shared.socket_writes.fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(r)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_raw(cx))?;
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

// ----- accept loop ------------------------------------------------------------------------

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => r,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                log::warn!("embedded server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        if shared.active.load(Ordering::Acquire) >= shared.config.max_connections {
            tokio::spawn(reject(shared.clone(), tcp, id));
            continue;
        }
        shared.active.fetch_add(1, Ordering::AcqRel);
        let s = shared.clone();
        tokio::spawn(async move {
            connection(s.clone(), tcp, id).await;
            if s.active.fetch_sub(1, Ordering::AcqRel) == 1 {
                s.idle.notify_waiters();
            }
        });
    }
}

/// Writes stanzas released by fault rules outside of routing (rule removal, release_held).
async fn flush_released(shared: std::sync::Weak<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let faults = match shared.upgrade() {
            Some(s) => s.faults.clone(),
            None => return,
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = faults.released_ready() => {}
        }
        match shared.upgrade() {
            Some(s) => s.dispatch(None, Vec::new()),
            None => return,
        }
    }
}

fn conn_io(shared: &Arc<Shared>, tcp: TcpStream, id: ConnId) -> (Io, Arc<ConnShared>) {
    let cs = Arc::new(ConnShared {
        id,
        limit: shared.config.max_stanza_bytes.max(1024),
        since_mark: AtomicUsize::new(0),
        too_large: AtomicBool::new(false),
        bound: OnceLock::new(),
        socket_writes: AtomicU64::new(0),
        raw: Mutex::new(Vec::new()),
        captured: Mutex::new(Vec::new()),
    });
    let io = ConnIo {
        tcp,
        shared: cs.clone(),
        faults: shared.faults.clone(),
        seen_generation: u64::MAX,
        seen_bound: false,
        split: None,
        rng: Prng::new(shared.faults.seed() ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        wbuf: Vec::new(),
        wpos: 0,
        rawbuf: Vec::new(),
        rawpos: 0,
    };
    let io = ReadCapture {
        inner: BufReader::with_capacity(READ_BUFFER, io),
        cs: cs.clone(),
        trace: shared.trace.clone(),
    };
    (io, cs)
}

fn timeouts(c: &ServerConfig) -> Timeouts {
    Timeouts {
        read_timeout: c.idle_timeout,
        response_timeout: c.idle_timeout.max(Duration::from_secs(2)),
    }
}

fn header<'a>(domain: &'a str, id: Option<String>) -> StreamHeader<'a> {
    StreamHeader {
        from: Some(Cow::Borrowed(domain)),
        to: None,
        id: id.map(Cow::Owned),
    }
}

async fn reject(shared: Arc<Shared>, tcp: TcpStream, id: ConnId) {
    let (io, _) = conn_io(&shared, tcp, id);
    let domain = shared.domain.to_string();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let accepted = accept_stream(io, ns::JABBER_CLIENT, timeouts(&shared.config)).await?;
        let pending = accepted.send_header(header(&domain, None)).await?;
        pending
            .send_error(&StreamError::new(
                StreamCondition::ResourceConstraint,
                "en",
                "too many connections",
            ))
            .await
    })
    .await;
}

/// A served domain: a valid JID domainpart.
fn parse_domain(d: &str) -> Result<BareJid> {
    BareJid::new(d)
        .ok()
        .filter(|b| b.node().is_none())
        .ok_or_else(|| Error::InvalidDomain(d.to_owned()))
}

fn stream_error(c: StreamCondition, text: &str) -> StreamError {
    StreamError::new(c, "en", text)
}

/// Sends a stream error and the footer, with a short deadline.
async fn close_with(stream: &mut Xs, error: Option<StreamError>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if let Some(e) = error {
            stream.send(&e).await?;
        }
        stream.shutdown().await
    })
    .await;
}

enum Negotiated {
    Bound(Box<Xs>, FullJid),
    Closed,
}

async fn negotiate(shared: &Arc<Shared>, io: Io, cs: &Arc<ConnShared>) -> io::Result<Negotiated> {
    let mut accepted = accept_stream(io, ns::JABBER_CLIENT, timeouts(&shared.config)).await?;
    let to = accepted.take_header().to.map(|c| c.into_owned());
    // The stream's domain: the one the client asked for, if served.
    let served = to
        .as_deref()
        .and_then(|t| BareJid::new(t).ok())
        .filter(|d| {
            d.node().is_none()
                && shared
                    .router
                    .lock()
                    .expect("router")
                    .router
                    .serves(d.domain().as_str())
        });
    let domain_jid = served.clone().unwrap_or_else(|| shared.domain.clone());
    let domain = domain_jid.to_string();
    let stream_id = format!("{:016x}", shared.random());
    let pending = accepted
        .send_header(header(&domain, Some(stream_id)))
        .await?;
    if served.is_none() {
        pending
            .send_error(&stream_error(
                StreamCondition::HostUnknown,
                "this server does not serve the requested domain",
            ))
            .await?;
        return Ok(Negotiated::Closed);
    }
    let features = StreamFeatures {
        sasl_mechanisms: shared
            .config
            .mechanisms
            .iter()
            .map(|m| m.name().to_owned())
            .collect::<BTreeSet<_>>(),
        ..Default::default()
    };
    let mut stream: Xs = pending.send_features(&features).await?;

    // SASL
    let mut failures = 0;
    let (user, success_data) = 'auth: loop {
        let auth = match stream.next().await {
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Sasl(Nonza::Auth(a))))) => a,
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Sasl(Nonza::Abort(_))))) => {
                sasl_failure(&mut stream, SaslCondition::Aborted).await?;
                continue;
            }
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Ok(_)) | Some(Err(ReadError::ParseError(_))) => {
                close_with(
                    &mut stream,
                    Some(stream_error(
                        StreamCondition::NotAuthorized,
                        "authenticate first",
                    )),
                )
                .await;
                return Ok(Negotiated::Closed);
            }
            Some(Err(ReadError::HardError(e))) => {
                if cs.too_large.load(Ordering::Acquire) {
                    close_with(
                        &mut stream,
                        Some(stream_error(StreamCondition::PolicyViolation, "too large")),
                    )
                    .await;
                    return Ok(Negotiated::Closed);
                }
                return Err(e);
            }
            Some(Err(ReadError::StreamFooterReceived)) | None => {
                close_with(&mut stream, None).await;
                return Ok(Negotiated::Closed);
            }
        };
        cs.since_mark.store(0, Ordering::Release);
        let Some(mut mech) = make_mechanism(shared, &domain_jid, &auth.mechanism, &auth.data)
        else {
            sasl_failure(&mut stream, SaslCondition::InvalidMechanism).await?;
            continue;
        };
        let mut payload = auth.data;
        loop {
            match mech.respond(&payload) {
                Ok(SaslResponse::Success(Identity::Username(u), data)) => break 'auth (u, data),
                Ok(SaslResponse::Success(Identity::None, _)) | Err(_) => {
                    failures += 1;
                    sasl_failure(&mut stream, SaslCondition::NotAuthorized).await?;
                    if failures >= 3 {
                        close_with(
                            &mut stream,
                            Some(stream_error(
                                StreamCondition::PolicyViolation,
                                "auth failed",
                            )),
                        )
                        .await;
                        return Ok(Negotiated::Closed);
                    }
                    continue 'auth;
                }
                Ok(SaslResponse::Proceed(challenge)) => {
                    stream
                        .send(&XmppStreamElement::Sasl(Nonza::Challenge(
                            tokio_xmpp::parsers::sasl::Challenge { data: challenge },
                        )))
                        .await?;
                    loop {
                        match stream.next().await {
                            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Sasl(
                                Nonza::Response(r),
                            )))) => {
                                payload = r.data;
                                break;
                            }
                            Some(Err(ReadError::SoftTimeout)) => continue,
                            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Sasl(
                                Nonza::Abort(_),
                            )))) => {
                                sasl_failure(&mut stream, SaslCondition::Aborted).await?;
                                continue 'auth;
                            }
                            _ => {
                                close_with(
                                    &mut stream,
                                    Some(stream_error(StreamCondition::NotAuthorized, "sasl")),
                                )
                                .await;
                                return Ok(Negotiated::Closed);
                            }
                        }
                    }
                }
            }
        }
    };
    // Validated by the mechanism against the account store, so this parses.
    let account = BareJid::new(&format!("{user}@{domain}"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut accepted = stream
        .accept_reset(&XmppStreamElement::Sasl(Nonza::Success(Success {
            data: success_data,
        })))
        .await?;
    let _ = accepted.take_header();
    let stream_id = format!("{:016x}", shared.random());
    let pending = accepted
        .send_header(header(&domain, Some(stream_id)))
        .await?;
    let features = StreamFeatures {
        bind: Some(BindFeature { required: true }),
        ..Default::default()
    };
    let mut stream: Xs = pending.send_features(&features).await?;

    // Resource binding
    loop {
        let el = match stream.next().await {
            Some(Ok(FallibleStreamElement::Ok(el))) => el,
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Ok(FallibleStreamElement::Err(_))) | Some(Err(ReadError::ParseError(_))) => {
                close_with(
                    &mut stream,
                    Some(stream_error(StreamCondition::NotAuthorized, "bind first")),
                )
                .await;
                return Ok(Negotiated::Closed);
            }
            Some(Err(ReadError::HardError(e))) => return Err(e),
            Some(Err(ReadError::StreamFooterReceived)) | None => {
                close_with(&mut stream, None).await;
                return Ok(Negotiated::Closed);
            }
        };
        cs.since_mark.store(0, Ordering::Release);
        let XmppStreamElement::Stanza(Stanza::Iq(Iq::Set { id, payload, .. })) = el else {
            close_with(
                &mut stream,
                Some(stream_error(StreamCondition::NotAuthorized, "bind first")),
            )
            .await;
            return Ok(Negotiated::Closed);
        };
        let query = match BindQuery::try_from(payload) {
            Ok(q) => q,
            Err(_) => {
                send_iq_error(&mut stream, id, DefinedCondition::BadRequest).await?;
                continue;
            }
        };
        let generated = format!("res-{:012x}", shared.random() & 0xFFFF_FFFF_FFFF);
        let outcome = {
            let mut st = shared.router.lock().expect("router");
            let o = st.router.bind_jid(
                &account,
                query.resource.as_deref(),
                &generated,
                cs.id,
                shared.config.conflict,
            );
            if let BindOutcome::Bound {
                kicked: Some((old, _)),
                ..
            } = &o
            {
                if let Some(c) = st.conns.get(old) {
                    c.kill.kill(KillReason::Conflict);
                }
            }
            o
        };
        match outcome {
            BindOutcome::Bound { jid, kicked } => {
                if let Some((_, deliveries)) = kicked {
                    shared.dispatch(None, deliveries);
                }
                let _ = cs.bound.set(jid.clone().into());
                let reply = Iq::Result {
                    from: None,
                    to: Some(jid.clone().into()),
                    id,
                    payload: Some(BindResponse { jid: jid.clone() }.into()),
                };
                stream.send(&Stanza::from(reply)).await?;
                return Ok(Negotiated::Bound(Box::new(stream), jid));
            }
            BindOutcome::Conflict => {
                send_iq_error(&mut stream, id, DefinedCondition::Conflict).await?
            }
            BindOutcome::BadResource => {
                send_iq_error(&mut stream, id, DefinedCondition::BadRequest).await?
            }
        }
    }
}

async fn sasl_failure(stream: &mut Xs, c: SaslCondition) -> io::Result<()> {
    stream
        .send(&XmppStreamElement::Sasl(Nonza::Failure(Failure {
            defined_condition: c,
            texts: Default::default(),
        })))
        .await
}

async fn send_iq_error(stream: &mut Xs, id: String, c: DefinedCondition) -> io::Result<()> {
    let iq = Iq::Error {
        from: None,
        to: None,
        id,
        error: StanzaError {
            type_: if c == DefinedCondition::Conflict {
                ErrorType::Cancel
            } else {
                ErrorType::Modify
            },
            by: None,
            defined_condition: c,
            texts: Default::default(),
            other: None,
        },
        payload: None,
    };
    stream.send(&Stanza::from(iq)).await
}

enum Event {
    Kill,
    Shutdown,
    Command(Option<Command>),
    In(Option<Result<FallibleStreamElement, ReadError>>),
}

async fn connection(shared: Arc<Shared>, tcp: TcpStream, id: ConnId) {
    let (io, cs) = conn_io(&shared, tcp, id);
    let (tx, mut rx) = mpsc::channel(shared.config.outbound_queue.max(1));
    let kill = Arc::new(Kill::new());
    shared.router.lock().expect("router").conns.insert(
        id,
        ConnHandle {
            tx,
            kill: kill.clone(),
            io: cs.clone(),
        },
    );
    let mut stop_early = shared.shutdown.subscribe();
    let negotiated = tokio::select! {
        r = tokio::time::timeout(shared.config.handshake_timeout, negotiate(&shared, io, &cs)) => r,
        _ = stop_early.wait_for(|v| *v) => {
            shared.router.lock().expect("router").conns.remove(&id);
            return;
        }
    };
    let (mut stream, jid) = match negotiated {
        Ok(Ok(Negotiated::Bound(s, j))) => (s, j),
        _ => {
            shared.router.lock().expect("router").conns.remove(&id);
            return;
        }
    };
    shared.bump_sessions();
    let jid_any: Jid = jid.clone().into();
    let mut stop = shared.shutdown.subscribe();
    let mut close_error: Option<StreamError> = None;
    let mut graceful = true;
    loop {
        if *stop.borrow() {
            close_error = Some(stream_error(StreamCondition::SystemShutdown, "shutdown"));
            break;
        }
        let ev = tokio::select! {
            biased;
            _ = kill.notify.notified() => Event::Kill,
            _ = stop.changed() => Event::Shutdown,
            c = rx.recv() => Event::Command(c),
            i = stream.next() => Event::In(i),
        };
        match ev {
            Event::Kill => {
                match kill.reason() {
                    KillReason::Conflict => {
                        close_error = Some(stream_error(
                            StreamCondition::Conflict,
                            "replaced by a new session",
                        ))
                    }
                    KillReason::SlowReader => {
                        close_error = Some(stream_error(
                            StreamCondition::PolicyViolation,
                            "slow reader: outbound queue full",
                        ));
                        graceful = false;
                    }
                    _ => graceful = false,
                }
                break;
            }
            Event::Shutdown => {
                close_error = Some(stream_error(StreamCondition::SystemShutdown, "shutdown"));
                break;
            }
            Event::Command(None) => break,
            Event::Command(Some(first)) => {
                let write = write_batch(&shared, &cs, &mut stream, &mut rx, first, id, &jid_any);
                let outcome = tokio::select! {
                    r = write => r,
                    _ = kill.notify.notified() => WriteOutcome::Failed,
                    _ = tokio::time::sleep(shared.config.write_timeout) => {
                        log::warn!("embedded server: {jid} stalled writes; closing (slow reader)");
                        WriteOutcome::Failed
                    }
                };
                match outcome {
                    WriteOutcome::Ok => {}
                    WriteOutcome::Close(e) => {
                        close_error = e;
                        break;
                    }
                    WriteOutcome::Failed => {
                        graceful = false;
                        break;
                    }
                }
            }
            Event::In(item) => {
                let mut flow = handle_inbound(&shared, &cs, id, &jid, &jid_any, item);
                // Drain stanzas that are already buffered before going back to select!, so
                // that their replies are written in one batch.
                let mut n = 0;
                while matches!(flow, InFlow::Continue)
                    && n < READ_BATCH
                    && kill.reason() == KillReason::None
                {
                    match stream.next().now_or_never() {
                        Some(item) => {
                            flow = handle_inbound(&shared, &cs, id, &jid, &jid_any, item);
                            n += 1;
                        }
                        None => break,
                    }
                }
                if let InFlow::Stop { error, graceful: g } = flow {
                    close_error = error;
                    graceful = g;
                    break;
                }
            }
        }
    }
    // Leave the routing table first, so nothing more is queued for us.
    let deliveries = {
        let mut st = shared.router.lock().expect("router");
        st.conns.remove(&id);
        st.router.unbind(&jid, id)
    };
    shared.bump_sessions();
    shared.dispatch(None, deliveries);
    if graceful {
        close_with(&mut stream, close_error).await;
    }
}

enum InFlow {
    Continue,
    Stop {
        error: Option<StreamError>,
        graceful: bool,
    },
}

fn stop(error: Option<StreamError>) -> InFlow {
    InFlow::Stop {
        error,
        graceful: true,
    }
}

/// Handles one item read from a bound session's stream.
fn handle_inbound(
    shared: &Arc<Shared>,
    cs: &ConnShared,
    id: ConnId,
    jid: &FullJid,
    jid_any: &Jid,
    item: Option<Result<FallibleStreamElement, ReadError>>,
) -> InFlow {
    match item {
        None | Some(Err(ReadError::StreamFooterReceived)) => stop(None),
        Some(Err(ReadError::SoftTimeout)) => InFlow::Continue,
        Some(Err(ReadError::ParseError(_))) => stop(Some(stream_error(
            StreamCondition::UnsupportedStanzaType,
            "unknown top-level element",
        ))),
        Some(Err(ReadError::HardError(e))) => {
            if cs.too_large.load(Ordering::Acquire) {
                stop(Some(stream_error(
                    StreamCondition::PolicyViolation,
                    "stanza too large",
                )))
            } else if e
                .get_ref()
                .is_some_and(|i| i.is::<xso::error::FromEventsError>())
            {
                // Well-formed, but not a stanza or known nonza.
                stop(Some(stream_error(
                    StreamCondition::UnsupportedStanzaType,
                    "unknown top-level element",
                )))
            } else if e.kind() == io::ErrorKind::InvalidData {
                stop(Some(stream_error(
                    StreamCondition::NotWellFormed,
                    "bad XML",
                )))
            } else {
                InFlow::Stop {
                    error: None,
                    graceful: false,
                }
            }
        }
        Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(stanza)))) => {
            cs.since_mark.store(0, Ordering::Release);
            let wire = cs.take_captured();
            shared.trace.record(
                Direction::In,
                id,
                Some(jid_any),
                || match wire {
                    Some(b) => String::from_utf8(b)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    // trace switched on mid-stanza: nothing captured
                    None => serialize_stanza(&stanza),
                },
                None,
            );
            let deliveries = shared
                .router
                .lock()
                .expect("router")
                .router
                .route(jid, stanza);
            shared.dispatch(Some(id), deliveries);
            InFlow::Continue
        }
        Some(Ok(FallibleStreamElement::Ok(_nonza))) => stop(Some(stream_error(
            StreamCondition::UnsupportedStanzaType,
            "unexpected stream element",
        ))),
        Some(Ok(FallibleStreamElement::Err(e))) => {
            cs.since_mark.store(0, Ordering::Release);
            cs.clear_captured();
            if let StreamElementError::InvalidStanza { name, header, .. } = &e {
                let is_request = matches!(header.type_.as_deref(), Some("get" | "set"));
                if name.to_string() == "iq" && is_request {
                    if let Some(id_) = header.id.clone() {
                        let reply = Iq::Error {
                            from: Some(BareJid::from_parts(None, jid.domain()).into()),
                            to: Some(jid.clone().into()),
                            id: id_,
                            error: StanzaError {
                                type_: ErrorType::Modify,
                                by: None,
                                defined_condition: DefinedCondition::BadRequest,
                                texts: Default::default(),
                                other: None,
                            },
                            payload: None,
                        };
                        shared.dispatch(
                            Some(id),
                            vec![Delivery {
                                to: jid.clone(),
                                stanza: reply.into(),
                            }],
                        );
                    }
                }
            }
            InFlow::Continue
        }
    }
}

enum WriteOutcome {
    Ok,
    Close(Option<StreamError>),
    Failed,
}

/// Writes queued commands. Stanzas are serialised once, here, into one buffer per batch;
/// the same bytes go to the wire (through the socket wrapper's raw path, so they keep
/// their order with injected raw bytes) and, when the trace is on, into the trace — no
/// second serialisation for the trace.
async fn write_batch(
    shared: &Arc<Shared>,
    cs: &ConnShared,
    stream: &mut Xs,
    rx: &mut mpsc::Receiver<Command>,
    first: Command,
    id: ConnId,
    jid: &Jid,
) -> WriteOutcome {
    let mut out: Vec<u8> = Vec::new();
    let mut next = Some(first);
    let mut n = 0;
    while let Some(cmd) = next.take() {
        match cmd {
            Command::Close(e) => {
                if flush_out(cs, stream, &mut out).await.is_err() {
                    return WriteOutcome::Failed;
                }
                return WriteOutcome::Close(e);
            }
            Command::Cut => {
                let _ = flush_out(cs, stream, &mut out).await;
                return WriteOutcome::Failed;
            }
            Command::Write {
                item: Outgoing::Raw(b),
                note,
            } => {
                shared.trace.record(
                    Direction::Out,
                    id,
                    Some(jid),
                    || crate::trace::escape_bytes(&b),
                    note,
                );
                out.extend_from_slice(&b);
            }
            Command::Write { item, note } => {
                let start = out.len();
                let r = match &item {
                    Outgoing::Stanza(s) => encode_into(s, &mut out),
                    Outgoing::Element(e) => encode_into(e, &mut out),
                    // (handled by the arm above)
                    Outgoing::Raw(b) => {
                        out.extend_from_slice(b);
                        Ok(())
                    }
                };
                match r {
                    Ok(()) => {
                        let written = &out[start..];
                        shared.trace.record(
                            Direction::Out,
                            id,
                            Some(jid),
                            || String::from_utf8_lossy(written).into_owned(),
                            note,
                        );
                    }
                    Err(e) => {
                        log::warn!("embedded server: cannot serialise a stanza for {jid}: {e}");
                        return WriteOutcome::Failed;
                    }
                }
            }
        }
        if out.len() >= WRITE_COALESCE && flush_out(cs, stream, &mut out).await.is_err() {
            return WriteOutcome::Failed;
        }
        n += 1;
        if n < WRITE_BATCH {
            next = rx.try_recv().ok();
        }
    }
    match flush_out(cs, stream, &mut out).await {
        Ok(()) => WriteOutcome::Ok,
        Err(_) => WriteOutcome::Failed,
    }
}

/// Serialises one stanza or element (with its own `xmlns`) at the end of `out`. On error
/// `out` is left as it was.
fn encode_into<T: xso::AsXml>(x: &T, out: &mut Vec<u8>) -> Result<(), xso::error::Error> {
    let start = out.len();
    let r = (|| {
        let mut w = xso::exports::rxml::writer::Encoder::new();
        for item in x.as_xml_iter()? {
            w.encode(item?.as_rxml_item(), out)?;
        }
        Ok(())
    })();
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// Hands `out` to the socket wrapper and flushes (the XML stream's own buffered output,
/// if any, goes first).
async fn flush_out(cs: &ConnShared, stream: &mut Xs, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        let mut slot = cs.raw.lock().expect("raw");
        if slot.is_empty() {
            std::mem::swap(&mut *slot, out);
        } else {
            slot.extend_from_slice(out);
            out.clear();
        }
    }
    SinkExt::<&Stanza>::flush(stream).await
}
