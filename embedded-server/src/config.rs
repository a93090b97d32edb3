//! Server configuration and errors.

use std::io;
use std::time::Duration;

use crate::router::ConflictPolicy;
use crate::trace::DEFAULT_TRACE_CAPACITY;

/// SASL mechanisms the embedded server can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaslMechanism {
    /// RFC 4616 PLAIN (the default: fast logins in debug builds).
    Plain,
    /// RFC 5802 SCRAM-SHA-1 (no channel binding: the server runs on plain TCP).
    ScramSha1,
    /// RFC 7677 SCRAM-SHA-256 (no channel binding).
    ScramSha256,
}

impl SaslMechanism {
    /// The IANA name.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha1 => "SCRAM-SHA-1",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }
}

/// Configuration of an [`EmbeddedServer`](crate::EmbeddedServer).
///
/// All limits are per server instance. Defaults: domain `localhost`, no extra domains, no
/// accounts, PLAIN only,
/// 256 KiB stanzas, 1024 connections, 4096 queued stanzas per connection, 5 s write stall
/// limit, 10 s to authenticate and bind, 300 s idle read timeout, trace on with 10 000 events
/// of at most 8 KiB of XML each,
/// seed 0.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The primary served XMPP domain (a JID domainpart).
    pub domain: String,
    /// Further served domains (e.g. `other.localhost`), empty by default. Accounts may live
    /// in any served domain; stanzas between served domains are routed locally, as if the
    /// domains were federated servers; a client connecting to a domain that is not served
    /// gets a `<host-unknown/>` stream error, and stanzas to unserved domains get
    /// `remote-server-not-found`.
    pub extra_domains: Vec<String>,
    /// Initial accounts: (user, password), where user is a localpart (an account of
    /// [`domain`](Self::domain)) or a bare JID `user@served-domain` (any served domain).
    pub accounts: Vec<(String, String)>,
    /// Offered SASL mechanisms, in no particular order (clients pick).
    pub mechanisms: Vec<SaslMechanism>,
    /// PBKDF2 iteration count for SCRAM.
    pub scram_iterations: u32,
    /// What happens when a client binds a full JID that is already online.
    pub conflict: ConflictPolicy,
    /// Largest stanza accepted, in bytes of wire XML (checked to within one 8 KiB read
    /// buffer). A bigger stanza gets a `<policy-violation/>` stream error and the
    /// connection is closed.
    pub max_stanza_bytes: usize,
    /// Maximum simultaneous client connections; further connections get a
    /// `<resource-constraint/>` stream error.
    pub max_connections: usize,
    /// Stanzas queued for one connection before it counts as a slow reader and is closed.
    pub outbound_queue: usize,
    /// A connection whose socket accepts no data for this long is closed (slow reader).
    pub write_timeout: Duration,
    /// Time allowed from TCP accept to a bound resource.
    pub handshake_timeout: Duration,
    /// Read silence after which the server closes a connection.
    pub idle_timeout: Duration,
    /// Record a wire trace.
    pub trace: bool,
    /// Events kept in the trace (and the live-subscription buffer).
    pub trace_capacity: usize,
    /// Longest XML text kept per trace event; longer stanzas are cut and marked
    /// `…[truncated N bytes]`. Worst-case trace memory ≈ `trace_capacity × trace_max_xml`
    /// (80 MiB with the defaults; typical stanzas are far smaller).
    pub trace_max_xml: usize,
    /// Seed for every random choice the server makes (resource names, stream ids, SCRAM
    /// salts, probabilistic faults, random write splits).
    pub seed: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            domain: "localhost".into(),
            extra_domains: Vec::new(),
            accounts: Vec::new(),
            mechanisms: vec![SaslMechanism::Plain],
            scram_iterations: 4096,
            conflict: ConflictPolicy::KickOld,
            max_stanza_bytes: 256 * 1024,
            max_connections: 1024,
            outbound_queue: 4096,
            write_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            trace: true,
            trace_capacity: DEFAULT_TRACE_CAPACITY,
            trace_max_xml: 8 * 1024,
            seed: 0,
        }
    }
}

impl ServerConfig {
    /// Default configuration for `domain`.
    pub fn new(domain: impl Into<String>) -> Self {
        ServerConfig {
            domain: domain.into(),
            ..Default::default()
        }
    }

    /// Serves one more domain (see [`extra_domains`](Self::extra_domains)).
    pub fn with_extra_domain(mut self, domain: impl Into<String>) -> Self {
        self.extra_domains.push(domain.into());
        self
    }

    /// Adds an account: `user` is a localpart of the primary domain, or a bare JID
    /// `user@domain` in any served domain.
    pub fn with_account(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.accounts.push((user.into(), password.into()));
        self
    }

    /// Sets the offered SASL mechanisms.
    pub fn with_mechanisms(mut self, m: &[SaslMechanism]) -> Self {
        self.mechanisms = m.to_vec();
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Errors of the embedded server and the Prosody helper.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Socket or process I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The configured domain is not a valid JID domainpart.
    #[error("invalid XMPP domain {0:?}")]
    InvalidDomain(String),
    /// The account name is not a valid JID localpart (or bare JID).
    #[error("invalid account name {0:?}")]
    InvalidAccount(String),
    /// The account's domain is not served by this server (add it to
    /// [`ServerConfig::extra_domains`] or with `ServerHandle::add_domain`).
    #[error("domain {0:?} is not served by this server")]
    UnknownDomain(String),
    /// An injected stanza has no usable `to`.
    #[error("stanza has no valid 'to' attribute")]
    NoRecipient,
    /// No bound session matches the JID.
    #[error("no connected session for {0}")]
    NoSuchSession(String),
    /// The session's outbound queue is full (it is not reading); it is being closed as a
    /// slow reader.
    #[error("outbound queue of {0} is full (slow reader); closing it")]
    QueueFull(String),
    /// A wait ran out of time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The `prosody` binary was not found.
    #[error("prosody is not installed ({0}); install it with `apt-get install prosody`")]
    ProsodyNotInstalled(String),
    /// Prosody failed to start, register an account, or accept connections.
    #[error("prosody failed: {0}")]
    Prosody(String),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
