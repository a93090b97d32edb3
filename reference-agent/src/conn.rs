//! The XMPP connection layer: one c2s session on tokio-xmpp's `StanzaStream`, owned by one
//! driver task. It only moves bytes and time:
//!
//! - logs in (plaintext TCP, or STARTTLS with rustls and a given CA — see [`Tls`]; the
//!   connector retries with its own bounded back-off and records
//!   the last failure so `wait_online` can say *why* it is not online),
//! - answers XEP-0199 ping and XEP-0030 disco#info itself ([VAP-TRN] "ping answered by every
//!   agent; disco#info answered with the identity/features"),
//! - matches IQ responses to requests by (peer, IQ id) with a deadline on every wait,
//! - hands every other stanza to its owner as [`Incoming`].
//!
//! tokio-xmpp reconnects silently; this layer turns every stream reset into an
//! [`Incoming::Online`] so owners re-advertise, and fails every IQ still pending on the old
//! stream (they can never be answered), so nothing waits forever.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use sasl::common::Credentials;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::parsers::{
    disco::{DiscoInfoQuery, DiscoInfoResult, Identity},
    iq::Iq,
    jid::{FullJid, Jid},
    message::Message,
    minidom::Element,
    ns,
    presence::Presence,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
};
use tokio_xmpp::stanzastream::{Connection, Event as StreamEvent, StanzaStream, StreamEvent as SE};
use tokio_xmpp::xmlstream::{initiate_stream, StreamHeader, Timeouts};
use tokio_xmpp::Stanza;

pub use tokio_rustls::rustls;

/// Transport security of the c2s connection.
#[derive(Clone, Debug, Default)]
pub enum Tls {
    /// Plaintext TCP (the spawn contract's loopback mode, [VAP-TPF-018]). Against a server
    /// that requires TLS, login fails with [`ConnError::Tls`] ("server requires TLS").
    #[default]
    Plain,
    /// STARTTLS (RFC 6120 §5) with this rustls client configuration (trust roots inside).
    /// Against a server that offers no STARTTLS, login fails with [`ConnError::Tls`]; there is
    /// no fallback to plaintext.
    StartTls(Arc<rustls::ClientConfig>),
}

impl Tls {
    /// STARTTLS trusting the CA certificates in the PEM file `ca_file`; without one, the
    /// system bundle (`SSL_CERT_FILE`, else `/etc/ssl/certs/ca-certificates.crt`).
    pub fn starttls(ca_file: Option<&std::path::Path>) -> Result<Tls, ConnError> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let path = match ca_file {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os("SSL_CERT_FILE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into()),
        };
        let bad = |detail: String| ConnError::TlsConfig(format!("{}: {detail}", path.display()));
        let pem = std::fs::read(&path).map_err(|e| bad(format!("cannot read CA file: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(format!("bad PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("unusable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("no CERTIFICATE in the file".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Tls::StartTls(Arc::new(config)))
    }
}

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// `host:port` of the server's c2s listener.
    pub server: String,
    /// JID to log in as (a full JID requests that resource).
    pub jid: Jid,
    /// Account password.
    pub password: String,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Stream read timeouts handed to tokio-xmpp.
    pub timeouts: Timeouts,
    /// Plaintext (default) or STARTTLS.
    pub tls: Tls,
}

impl ConnectOptions {
    /// Options with the defaults used throughout the reference implementation.
    pub fn new(server: impl Into<String>, jid: Jid, password: impl Into<String>) -> Self {
        ConnectOptions {
            server: server.into(),
            jid,
            password: password.into(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            timeouts: Timeouts::tight(),
            tls: Tls::Plain,
        }
    }

    /// The same options with this transport security.
    pub fn with_tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }
}

/// Errors of the connection layer.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ConnError {
    /// `wait_online` passed its deadline; carries the last connect failure if any.
    #[error("not online after {waited:?}: {last_error}")]
    NotOnline {
        /// How long we waited.
        waited: Duration,
        /// Last failure reported by the connector (e.g. authentication failed).
        last_error: String,
    },
    /// No response to an IQ before its deadline.
    #[error("no response to IQ {id} from {to} within {waited:?}")]
    IqTimeout {
        /// Peer.
        to: String,
        /// IQ id.
        id: String,
        /// Time waited.
        waited: Duration,
    },
    /// The stream was reset (reconnect without resumption) while the IQ was pending.
    #[error("connection reset while waiting for IQ {0}")]
    Reset(String),
    /// The connection was closed by its owner.
    #[error("connection closed")]
    Closed,
    /// Transport security failed: the server requires TLS but the client is plaintext, the
    /// client wants STARTTLS but the server offers none, or the TLS handshake failed (e.g. the
    /// server certificate is not trusted). Returned by `wait_online` as soon as it is seen.
    #[error("TLS failure after {waited:?}: {detail}")]
    Tls {
        /// How long we waited.
        waited: Duration,
        /// What failed.
        detail: String,
    },
    /// Bad TLS configuration (unreadable or empty CA file).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
}

/// Why one login attempt failed.
#[derive(Debug)]
enum LoginError {
    Xmpp(tokio_xmpp::Error),
    /// A transport-security failure; retrying will not help until something changes.
    Tls(String),
}

impl From<tokio_xmpp::Error> for LoginError {
    fn from(e: tokio_xmpp::Error) -> Self {
        LoginError::Xmpp(e)
    }
}

impl From<tokio_xmpp::xmlstream::RecvFeaturesError> for LoginError {
    fn from(e: tokio_xmpp::xmlstream::RecvFeaturesError) -> Self {
        LoginError::Xmpp(e.into())
    }
}

impl From<std::io::Error> for LoginError {
    fn from(e: std::io::Error) -> Self {
        LoginError::Xmpp(e.into())
    }
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginError::Xmpp(e) => e.fmt(f),
            LoginError::Tls(d) => f.write_str(d),
        }
    }
}

/// Answer to an IQ request.
#[derive(Debug, Clone)]
pub enum IqReply {
    /// `type="result"` with its optional payload.
    Result(Option<Element>),
    /// `type="error"`.
    Error(StanzaError),
}

/// A stanza for the connection's owner.
#[derive(Debug)]
pub enum Incoming {
    /// An IQ request (get or set) that is not ping or disco#info.
    Iq {
        /// Sender (always present on a c2s stream; the server stamps it).
        from: Jid,
        /// IQ id.
        id: String,
        /// true for `set`, false for `get`.
        set: bool,
        /// The single child.
        payload: Element,
    },
    /// An IQ response (result or error) that answers no request made with [`Conn::iq`]:
    /// the answer to an IQ sent with [`Conn::send`] by a protocol machine, which matches it
    /// by (sender, id) itself.
    Response {
        /// Sender.
        from: Jid,
        /// IQ id.
        id: String,
        /// The answer.
        reply: IqReply,
    },
    /// A presence stanza.
    Presence(Presence),
    /// A message stanza.
    Message(Message),
    /// The session was lost (the connection broke); a new one is being negotiated. Stanzas
    /// queued before this, and stanzas sent from now until the next [`Incoming::Online`], are
    /// dropped: nothing produced for the lost session reaches the next one ([VAP-OPS-081]).
    Suspended,
    /// The stream is (again) bound; `resumed` = stream management resumed without loss.
    Online {
        /// The bound JID.
        bound: FullJid,
        /// Resumed without loss of state.
        resumed: bool,
    },
}

/// Connection state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Not (yet) bound.
    Connecting,
    /// Bound as this JID.
    Online(FullJid),
    /// Closed by the owner.
    Closed,
}

struct PendingIq {
    to: Jid,
    tx: oneshot::Sender<Result<IqReply, ConnError>>,
}

struct Shared {
    pending: Mutex<HashMap<String, PendingIq>>,
    disco: Mutex<DiscoInfoResult>,
    last_error: Mutex<String>,
    next_id: AtomicU64,
    id_prefix: String,
    auth_failed: std::sync::atomic::AtomicBool,
    tls_failed: std::sync::atomic::AtomicBool,
    no_reconnect: std::sync::atomic::AtomicBool,
    /// Bumped by the driver when the session is lost: stanzas queued on a lost session are
    /// dropped, never delivered on the next one.
    generation: AtomicU64,
}

enum Cmd {
    /// A stanza and the session generation it was queued in.
    Send(Box<Stanza>, u64),
    Close(oneshot::Sender<()>),
}

/// A handle to one XMPP session. Cheap to clone; all clones share the session.
#[derive(Clone)]
pub struct Conn {
    tx: mpsc::UnboundedSender<Cmd>,
    state: watch::Receiver<ConnState>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("state", &*self.state.borrow())
            .finish()
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    // A failing OS RNG only weakens id unpredictability (ids must be unique, not secret).
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Send `<starttls/>`, wait for `<proceed/>` and run the TLS handshake on the bare TCP stream.
async fn start_tls(
    mut stream: tokio_xmpp::xmlstream::XmppStream<tokio::io::BufStream<tokio::net::TcpStream>>,
    domain: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, LoginError> {
    use futures::SinkExt;
    use tokio_xmpp::parsers::starttls::{Nonza, Request};
    use tokio_xmpp::xmlstream::{ReadError, XmppStreamElement};
    stream
        .send(&XmppStreamElement::Starttls(Nonza::Request(Request)))
        .await?;
    loop {
        match stream
            .next()
            .await
            .map(|v| v.and_then(|v| v.into_read_error()))
        {
            Some(Ok(XmppStreamElement::Starttls(Nonza::Proceed(_)))) => break,
            Some(Ok(XmppStreamElement::Starttls(Nonza::Failure(_)))) => {
                return Err(LoginError::Tls(
                    "server refused STARTTLS (<failure/>)".into(),
                ))
            }
            Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => {}
            Some(Err(ReadError::HardError(e))) => return Err(e.into()),
            Some(Err(ReadError::ParseError(e))) => {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e).into())
            }
            None | Some(Err(ReadError::StreamFooterReceived)) => {
                return Err(tokio_xmpp::Error::Disconnected.into())
            }
        }
    }
    let tcp = stream.into_inner().into_inner();
    let name = rustls::pki_types::ServerName::try_from(domain.to_owned())
        .map_err(|e| LoginError::Tls(format!("{domain:?} is not a TLS server name: {e}")))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| LoginError::Tls(format!("TLS handshake with {domain} failed: {e}")))
}

async fn login_once(
    server: &DnsConfig,
    jid: &Jid,
    password: &str,
    timeouts: Timeouts,
    tls: &Tls,
) -> Result<Connection, LoginError> {
    let username = jid
        .node()
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default();
    let header = || StreamHeader {
        to: Some(Cow::Borrowed(jid.domain().as_str())),
        from: None,
        id: None,
    };
    // Our own TCP set-up (instead of tokio-xmpp's TcpServerConnector) for TCP_NODELAY:
    // without it, back-to-back stanzas (op result then final) wait for delayed ACKs.
    let tcp = server.resolve().await?;
    let _ = tcp.set_nodelay(true);
    let pending = initiate_stream(
        tokio::io::BufStream::new(tcp),
        ns::JABBER_CLIENT,
        header(),
        timeouts,
    )
    .await?;
    let (features, stream) = pending.recv_features().await?;
    let (features, stream) = match tls {
        Tls::Plain => {
            if features.starttls.as_ref().is_some_and(|t| t.required)
                || (features.can_starttls() && features.sasl_mechanisms.is_empty())
            {
                return Err(LoginError::Tls(
                    "server requires TLS (STARTTLS required) but this connection is plaintext; \
                     use --tls starttls"
                        .into(),
                ));
            }
            (features, stream.box_stream())
        }
        Tls::StartTls(config) => {
            if !features.can_starttls() {
                return Err(LoginError::Tls(
                    "STARTTLS requested but the server does not offer it".into(),
                ));
            }
            let tls_stream = start_tls(stream, jid.domain().as_str(), config.clone()).await?;
            let pending = initiate_stream(
                tokio::io::BufStream::new(tls_stream),
                ns::JABBER_CLIENT,
                header(),
                timeouts,
            )
            .await?;
            let (features, stream) = pending.recv_features().await?;
            (features, stream.box_stream())
        }
    };
    let channel_binding = sasl::common::ChannelBinding::None;
    let creds = Credentials::default()
        .with_username(username)
        .with_password(password.to_owned())
        .with_channel_binding(channel_binding);
    let stream = tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds).await?;
    let stream = stream.send_header(header()).await?;
    let (features, stream) = stream.recv_features().await?;
    Ok(Connection {
        stream: stream.box_stream(),
        features,
        identity: jid.clone(),
    })
}

/// One tokio-xmpp stream for one XMPP session. Its connector logs in once (retrying with
/// back-off until it succeeds); when that session is lost, the driver retires the whole stream
/// and starts a fresh one. tokio-xmpp keeps the stanzas still in its transmit queue across a
/// reconnect and writes them on the next session; a fresh stream per session guarantees that
/// nothing queued on a lost session is ever sent on the next one ([VAP-OPS-081]).
fn new_stream(opts: &ConnectOptions, shared: &Arc<Shared>) -> StanzaStream {
    let logged_in = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let connector = DnsConfig::addr(&opts.server);
    let sh = shared.clone();
    let o = opts.clone();
    let reconnector = Box::new(
        move |_loc: Option<String>, mut slot: oneshot::Sender<Connection>| {
            if logged_in.swap(true, Ordering::AcqRel) {
                // The session of this stream was lost and the driver has replaced the stream:
                // let the old worker end (see `retire`).
                tokio::spawn(retire(slot, o.jid.clone()));
                return;
            }
            let connector = connector.clone();
            let o = o.clone();
            let sh = sh.clone();
            tokio::spawn(async move {
                let mut delay = o.backoff_initial;
                loop {
                    if sh.no_reconnect.load(Ordering::Relaxed) {
                        // Stay down (a "crashed" node); dropping the slot would make
                        // tokio-xmpp's worker panic, so hold it until the stream ends.
                        slot.closed().await;
                        return;
                    }
                    match login_once(&connector, &o.jid, &o.password, o.timeouts, &o.tls).await {
                        Ok(conn) => {
                            let _ = slot.send(conn);
                            return;
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            if *sh.last_error.lock().unwrap() != msg {
                                log::warn!("connect as {} to {} failed: {msg}", o.jid, o.server);
                            }
                            match e {
                                LoginError::Xmpp(tokio_xmpp::Error::Auth(_)) => {
                                    sh.auth_failed.store(true, Ordering::Relaxed)
                                }
                                LoginError::Tls(_) => sh.tls_failed.store(true, Ordering::Relaxed),
                                LoginError::Xmpp(_) => {}
                            }
                            *sh.last_error.lock().unwrap() = msg;
                            if slot.is_closed() {
                                return;
                            }
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(o.backoff_max);
                        }
                    }
                }
            });
        },
    );
    StanzaStream::new(reconnector, 256)
}

/// End the worker of a retired stream. tokio-xmpp's worker panics when its connector drops the
/// slot and waits forever when the slot is never filled; it ends cleanly when it gets a
/// connection that breaks at once and finds its owner gone. So hand it an in-memory stream whose
/// peer hangs up right after the stream features.
async fn retire(mut slot: oneshot::Sender<Connection>, identity: Jid) {
    match dead_connection(identity).await {
        Ok(c) => {
            let _ = slot.send(c);
        }
        Err(e) => {
            log::debug!("retiring a lost stream: {e}");
            slot.closed().await;
        }
    }
}

async fn dead_connection(identity: Jid) -> std::io::Result<Connection> {
    use tokio_xmpp::parsers::{bind::BindFeature, stream_features::StreamFeatures};
    let (near, far) = tokio::io::duplex(4096);
    let header = || StreamHeader {
        to: None,
        from: None,
        id: None,
    };
    let peer = async move {
        let accepted = tokio_xmpp::xmlstream::accept_stream(
            tokio::io::BufStream::new(far),
            ns::JABBER_CLIENT,
            Timeouts::tight(),
        )
        .await?;
        let features = StreamFeatures {
            bind: Some(BindFeature { required: true }),
            ..StreamFeatures::default()
        };
        let pending = accepted.send_header(header()).await?;
        // Dropped right away: the worker's first write or read fails.
        let _: tokio_xmpp::xmlstream::XmppStream<_> = pending.send_features(&features).await?;
        Ok::<(), std::io::Error>(())
    };
    let near = async move {
        let pending = initiate_stream(
            tokio::io::BufStream::new(near),
            ns::JABBER_CLIENT,
            header(),
            Timeouts::tight(),
        )
        .await?;
        pending
            .recv_features()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    let (p, n) = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(peer, near) })
        .await
        .map_err(|_| std::io::Error::other("timed out"))?;
    p?;
    let (features, stream) = n?;
    Ok(Connection {
        stream: stream.box_stream(),
        features,
        identity,
    })
}

impl Conn {
    /// Start a session. Returns at once; the session connects in the background (use
    /// [`Conn::wait_online`]). Must be called inside a tokio runtime.
    pub fn connect(opts: ConnectOptions) -> (Conn, mpsc::UnboundedReceiver<Incoming>) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            disco: Mutex::new(DiscoInfoResult {
                node: None,
                identities: vec![],
                features: BTreeSet::from([ns::DISCO_INFO.to_owned(), ns::PING.to_owned()]),
                extensions: vec![],
            }),
            last_error: Mutex::new("still connecting".into()),
            next_id: AtomicU64::new(1),
            id_prefix: random_hex(4),
            auth_failed: std::sync::atomic::AtomicBool::new(false),
            tls_failed: std::sync::atomic::AtomicBool::new(false),
            no_reconnect: std::sync::atomic::AtomicBool::new(false),
            generation: AtomicU64::new(0),
        });
        let stream = new_stream(&opts, &shared);
        let (tx, rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(ConnState::Connecting);
        tokio::spawn(drive(opts, stream, rx, in_tx, state_tx, shared.clone()));
        (
            Conn {
                tx,
                state: state_rx,
                shared,
            },
            in_rx,
        )
    }

    /// Wait until the session is bound, at most `deadline`. Pitfall 1 of the toolchain notes:
    /// tokio-xmpp never reports a failed login, so this is the only place it surfaces. A
    /// rejected password ends the wait at once (the connector keeps retrying in the background).
    pub async fn wait_online(&self, deadline: Duration) -> Result<FullJid, ConnError> {
        let mut st = self.state.clone();
        let started = std::time::Instant::now();
        let fut = async {
            loop {
                match &*st.borrow_and_update() {
                    ConnState::Online(j) => return Ok(j.clone()),
                    ConnState::Closed => return Err(ConnError::Closed),
                    ConnState::Connecting => {}
                }
                if self.shared.tls_failed.load(Ordering::Relaxed) {
                    return Err(ConnError::Tls {
                        waited: started.elapsed(),
                        detail: self.shared.last_error.lock().unwrap().clone(),
                    });
                }
                if self.shared.auth_failed.load(Ordering::Relaxed) {
                    return Err(ConnError::NotOnline {
                        waited: started.elapsed(),
                        last_error: self.shared.last_error.lock().unwrap().clone(),
                    });
                }
                tokio::select! {
                    r = st.changed() => if r.is_err() { return Err(ConnError::Closed) },
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        };
        match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::NotOnline {
                waited: deadline,
                last_error: self.shared.last_error.lock().unwrap().clone(),
            }),
        }
    }

    /// The bound JID, if online.
    pub fn bound_jid(&self) -> Option<FullJid> {
        match &*self.state.borrow() {
            ConnState::Online(j) => Some(j.clone()),
            _ => None,
        }
    }

    /// A watch on the connection state.
    pub fn state(&self) -> watch::Receiver<ConnState> {
        self.state.clone()
    }

    /// Set what disco#info answers (identity category/type and feature vars). The disco#info
    /// and ping features are always included.
    pub fn set_disco(&self, category: &str, type_: &str, name: &str, features: &[&str]) {
        let mut d = self.shared.disco.lock().unwrap();
        d.identities = vec![Identity::new(category, type_, "en", name)];
        d.features = features.iter().map(|s| s.to_string()).collect();
        d.features.insert(ns::DISCO_INFO.to_owned());
        d.features.insert(ns::PING.to_owned());
    }

    /// Queue a stanza for sending (never blocks).
    pub fn send(&self, stanza: impl Into<Stanza>) -> Result<(), ConnError> {
        self.tx
            .send(Cmd::Send(
                Box::new(stanza.into()),
                self.shared.generation.load(Ordering::Acquire),
            ))
            .map_err(|_| ConnError::Closed)
    }

    /// Answer an IQ request with `type="result"`.
    pub fn reply_result(&self, to: Jid, id: String, payload: Option<Element>) {
        let _ = self.send(Iq::Result {
            from: None,
            to: Some(to),
            id,
            payload,
        });
    }

    /// Answer an IQ request with `type="error"`.
    pub fn reply_error(&self, to: Jid, id: String, error: StanzaError) {
        let _ = self.send(Iq::Error {
            from: None,
            to: Some(to),
            id,
            error,
            payload: None,
        });
    }

    /// A fresh IQ id, unique for this process.
    pub fn new_id(&self) -> String {
        let n = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        format!("v{}-{n}", self.shared.id_prefix)
    }

    /// Send an IQ request with a fresh id and wait for its answer at most `timeout`.
    pub async fn iq(
        &self,
        to: Jid,
        set: bool,
        payload: Element,
        timeout: Duration,
    ) -> Result<IqReply, ConnError> {
        let id = self.new_id();
        self.iq_with_id(to, id, set, payload, timeout).await
    }

    /// Send an IQ request with the given id (a retransmission reuses its id) and wait for the
    /// answer at most `timeout`. Answers are matched by id AND sender: a response from any
    /// other JID than `to` is ignored (a bare `to` also accepts the server's answer for it).
    pub async fn iq_with_id(
        &self,
        to: Jid,
        id: String,
        set: bool,
        payload: Element,
        timeout: Duration,
    ) -> Result<IqReply, ConnError> {
        let rx = self.register_iq(&to, &id);
        let iq = if set {
            Iq::Set {
                from: None,
                to: Some(to.clone()),
                id: id.clone(),
                payload,
            }
        } else {
            Iq::Get {
                from: None,
                to: Some(to.clone()),
                id: id.clone(),
                payload,
            }
        };
        if self.send(iq).is_err() {
            self.shared.pending.lock().unwrap().remove(&id);
            return Err(ConnError::Closed);
        }
        self.await_iq(rx, to, id, timeout).await
    }

    fn register_iq(&self, to: &Jid, id: &str) -> oneshot::Receiver<Result<IqReply, ConnError>> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .unwrap()
            .insert(id.to_owned(), PendingIq { to: to.clone(), tx });
        rx
    }

    async fn await_iq(
        &self,
        rx: oneshot::Receiver<Result<IqReply, ConnError>>,
        to: Jid,
        id: String,
        timeout: Duration,
    ) -> Result<IqReply, ConnError> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ConnError::Closed),
            Err(_) => {
                self.shared.pending.lock().unwrap().remove(&id);
                Err(ConnError::IqTimeout {
                    to: to.to_string(),
                    id,
                    waited: timeout,
                })
            }
        }
    }

    /// Send directed presence (e.g. a load report) to `to`.
    pub fn send_presence(&self, to: Jid, payloads: Vec<Element>) -> Result<(), ConnError> {
        let p = Presence::available().with_to(to).with_payloads(payloads);
        self.send(p)
    }

    /// Close the session cleanly (unavailable presence goes out as the stream ends), waiting
    /// at most `deadline`.
    pub async fn close(&self, deadline: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).is_ok() {
            let _ = tokio::time::timeout(deadline, rx).await;
        }
    }

    /// Never reconnect again after the current connection ends (used to simulate a crashed
    /// process together with a server-side cut).
    pub fn stop_reconnecting(&self) {
        self.shared.no_reconnect.store(true, Ordering::Relaxed);
    }

    /// Number of IQs awaiting an answer (diagnostics, tests).
    pub fn pending_iqs(&self) -> usize {
        self.shared.pending.lock().unwrap().len()
    }
}

fn is_reply_from(expected: &Jid, from: &Option<Jid>, bound: Option<&FullJid>) -> bool {
    match from {
        Some(f) => {
            f == expected
                // the server answers for a bare JID on behalf of the account
                || (expected.resource().is_none() && f.to_bare() == expected.to_bare())
        }
        // No 'from' = from our own account's server/bare JID (RFC 6120 8.1.2.1).
        None => bound
            .map(|b| expected.to_bare() == b.to_bare() || expected.node().is_none())
            .unwrap_or(false),
    }
}

async fn drive(
    opts: ConnectOptions,
    mut stream: StanzaStream,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    incoming: mpsc::UnboundedSender<Incoming>,
    state: watch::Sender<ConnState>,
    shared: Arc<Shared>,
) {
    let mut bound: Option<FullJid> = None;
    // Between a lost session and the next bind, every stanza is dropped: the owner may still be
    // finishing work of the lost session (it learns of the loss through `Incoming::Suspended`,
    // later than this task).
    let mut between_sessions = false;
    loop {
        tokio::select! {
            biased;
            ev = stream.next() => {
                let Some(ev) = ev else { break };
                match ev {
                    StreamEvent::Stream(SE::Reset { bound_jid, .. }) => {
                        // Loss of state: every pending IQ is lost for good.
                        let lost: Vec<(String, PendingIq)> =
                            shared.pending.lock().unwrap().drain().collect();
                        for (id, p) in lost {
                            let _ = p.tx.send(Err(ConnError::Reset(id)));
                        }
                        let Ok(full) = bound_jid.clone().try_into_full() else { continue };
                        between_sessions = false;
                        bound = Some(full.clone());
                        *shared.last_error.lock().unwrap() = String::new();
                        shared.auth_failed.store(false, Ordering::Relaxed);
                        let _ = state.send(ConnState::Online(full.clone()));
                        let _ = incoming.send(Incoming::Online { bound: full, resumed: false });
                    }
                    StreamEvent::Stream(SE::Resumed) => {
                        if let Some(b) = &bound {
                            let _ = state.send(ConnState::Online(b.clone()));
                            let _ = incoming.send(Incoming::Online { bound: b.clone(), resumed: true });
                        }
                    }
                    StreamEvent::Stream(SE::Suspended) => {
                        shared.generation.fetch_add(1, Ordering::AcqRel);
                        between_sessions = true;
                        let _ = state.send(ConnState::Connecting);
                        let _ = incoming.send(Incoming::Suspended);
                        // A fresh stream for the next session; the old one takes what is
                        // still in its transmit queue with it ([VAP-OPS-081]).
                        let old = std::mem::replace(&mut stream, new_stream(&opts, &shared));
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(Duration::from_secs(10), old.close()).await;
                        });
                    }
                    StreamEvent::Stanza(st) => {
                        handle_stanza(st, &mut stream, &incoming, &shared, bound.as_ref()).await;
                    }
                }
            }
            cmd = cmds.recv() => {
                match cmd {
                    Some(Cmd::Send(st, generation)) => {
                        if !between_sessions && generation == shared.generation.load(Ordering::Acquire) {
                            let _ = stream.send(st).await;
                        } else {
                            log::debug!("stanza of a lost session dropped");
                        }
                    }
                    Some(Cmd::Close(ack)) => {
                        let _ = state.send(ConnState::Closed);
                        let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
                        let _ = ack.send(());
                        fail_all(&shared);
                        return;
                    }
                    None => {
                        let _ = state.send(ConnState::Closed);
                        let _ = tokio::time::timeout(Duration::from_secs(2), stream.close()).await;
                        fail_all(&shared);
                        return;
                    }
                }
            }
        }
    }
    let _ = state.send(ConnState::Closed);
    fail_all(&shared);
}

fn fail_all(shared: &Shared) {
    let lost: Vec<(String, PendingIq)> = shared.pending.lock().unwrap().drain().collect();
    for (_, p) in lost {
        let _ = p.tx.send(Err(ConnError::Closed));
    }
}

async fn handle_stanza(
    st: Stanza,
    stream: &mut StanzaStream,
    incoming: &mpsc::UnboundedSender<Incoming>,
    shared: &Shared,
    bound: Option<&FullJid>,
) {
    match st {
        Stanza::Iq(Iq::Result {
            from, id, payload, ..
        }) => deliver(shared, incoming, &from, id, IqReply::Result(payload), bound),
        Stanza::Iq(Iq::Error {
            from, id, error, ..
        }) => deliver(shared, incoming, &from, id, IqReply::Error(error), bound),
        Stanza::Iq(Iq::Get {
            from, id, payload, ..
        }) => {
            let from = from.unwrap_or_else(|| {
                bound
                    .map(|b| Jid::from(b.to_bare()))
                    .unwrap_or_else(|| Jid::new("invalid").expect("static jid"))
            });
            if payload.is("ping", ns::PING) {
                let r = Iq::Result {
                    from: None,
                    to: Some(from),
                    id,
                    payload: None,
                };
                let _ = stream.send(Box::new(r.into())).await;
                return;
            }
            if payload.is("query", ns::DISCO_INFO) {
                let q = DiscoInfoQuery::try_from(payload.clone()).ok();
                let mut d = shared.disco.lock().unwrap().clone();
                d.node = q.and_then(|q| q.node);
                let r = Iq::Result {
                    from: None,
                    to: Some(from),
                    id,
                    payload: Some(d.into()),
                };
                let _ = stream.send(Box::new(r.into())).await;
                return;
            }
            if let Err(e) = incoming.send(Incoming::Iq {
                from,
                id,
                set: false,
                payload,
            }) {
                reject_unhandled(stream, e.0).await;
            }
        }
        Stanza::Iq(Iq::Set {
            from, id, payload, ..
        }) => {
            let from = from.unwrap_or_else(|| {
                bound
                    .map(|b| Jid::from(b.to_bare()))
                    .unwrap_or_else(|| Jid::new("invalid").expect("static jid"))
            });
            if let Err(e) = incoming.send(Incoming::Iq {
                from,
                id,
                set: true,
                payload,
            }) {
                reject_unhandled(stream, e.0).await;
            }
        }
        Stanza::Presence(p) => {
            let _ = incoming.send(Incoming::Presence(p));
        }
        Stanza::Message(m) => {
            let _ = incoming.send(Incoming::Message(m));
        }
    }
}

async fn reject_unhandled(stream: &mut StanzaStream, inc: Incoming) {
    if let Incoming::Iq { from, id, .. } = inc {
        let r = Iq::Error {
            from: None,
            to: Some(from),
            id,
            error: StanzaError::new(
                ErrorType::Cancel,
                DefinedCondition::ServiceUnavailable,
                "en",
                "",
            ),
            payload: None,
        };
        let _ = stream.send(Box::new(r.into())).await;
    }
}

fn deliver(
    shared: &Shared,
    incoming: &mpsc::UnboundedSender<Incoming>,
    from: &Option<Jid>,
    id: String,
    reply: IqReply,
    bound: Option<&FullJid>,
) {
    let mut map = shared.pending.lock().unwrap();
    let ok = match map.get(&id) {
        Some(p) => is_reply_from(&p.to, from, bound),
        None => {
            drop(map);
            match from {
                Some(from) => {
                    let _ = incoming.send(Incoming::Response {
                        from: from.clone(),
                        id,
                        reply,
                    });
                }
                None => log::debug!("IQ response {id} without sender matches nothing; ignored"),
            }
            return;
        }
    };
    if !ok {
        log::warn!("IQ response {id} from unexpected sender {from:?}; ignored");
        return;
    }
    if let Some(p) = map.remove(&id) {
        let _ = p.tx.send(Ok(reply));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_sender_must_match() {
        let to: Jid = "a@x/r".parse().unwrap();
        let me: FullJid = "me@x/m".parse().unwrap();
        assert!(is_reply_from(&to, &Some(to.clone()), Some(&me)));
        assert!(!is_reply_from(
            &to,
            &Some("b@x/r".parse().unwrap()),
            Some(&me)
        ));
        assert!(!is_reply_from(&to, &None, Some(&me)));
        let bare: Jid = "a@x".parse().unwrap();
        assert!(is_reply_from(
            &bare,
            &Some("a@x/other".parse().unwrap()),
            Some(&me)
        ));
        let own: Jid = "me@x".parse().unwrap();
        assert!(is_reply_from(&own, &None, Some(&me)));
    }
}
