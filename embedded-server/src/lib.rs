//! # vertebra-embedded-server
//!
//! An in-process XMPP server on loopback for zero-setup runs, tests and demos of Vertebra,
//! with fault injection and a wire trace, plus a helper that runs a real Prosody for tests.
//!
//! **This is a test and demo server, not a production one.** It has no TLS, no rosters, no
//! offline storage, no server-to-server links and keeps accounts in memory. For real
//! deployments use a real XMPP server such as [Prosody](https://prosody.im/) or
//! [ejabberd](https://www.ejabberd.im/).
//!
//! ## Starting a server
//!
//! ```no_run
//! # async fn demo() -> vertebra_embedded_server::Result<()> {
//! use vertebra_embedded_server::{EmbeddedServer, ServerConfig};
//! let server = EmbeddedServer::start(
//!     ServerConfig::new("localhost").with_account("alice", "alicepw"),
//! )
//! .await?;
//! server.add_account("bob", "bobpw")?;
//! println!("c2s on {} for domain {}", server.addr(), server.domain());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Several domains
//!
//! Besides [`ServerConfig::domain`] the server can serve extra domains
//! ([`ServerConfig::extra_domains`], [`ServerConfig::with_extra_domain`],
//! [`ServerHandle::add_domain`]). Accounts are named by localpart (primary domain) or by bare
//! JID (any served domain); stanzas between served domains are routed locally by the same
//! rules, as if the domains were federated servers. Logging in to an unserved domain gets a
//! `<host-unknown/>` stream error; stanzas to an unserved domain get
//! `remote-server-not-found`; an account in an unserved domain is
//! [`Error::UnknownDomain`].
//!
//! ```no_run
//! # async fn demo() -> vertebra_embedded_server::Result<()> {
//! use vertebra_embedded_server::{EmbeddedServer, ServerConfig};
//! let server = EmbeddedServer::start(
//!     ServerConfig::new("localhost")
//!         .with_extra_domain("other.localhost")
//!         .with_account("requester", "pw")                 // requester@localhost
//!         .with_account("stranger@other.localhost", "pw"), // stranger@other.localhost
//! )
//! .await?;
//! server.add_account("agent@other.localhost", "pw")?;
//! assert_eq!(server.domains(), ["localhost", "other.localhost"]);
//! assert_eq!(server.bare_jid("agent@other.localhost")?.to_string(), "agent@other.localhost");
//! # Ok(()) }
//! ```
//!
//! Clients connect with plain TCP (e.g. tokio-xmpp's `Client::new_plaintext` with
//! `DnsConfig::addr`) and authenticate with SASL PLAIN (SCRAM-SHA-1/SCRAM-SHA-256 can be
//! enabled in [`ServerConfig::mechanisms`]).
//!
//! ## What it implements
//!
//! RFC 6120 stream negotiation (no TLS), SASL, resource binding (conflicts per
//! [`ConflictPolicy`]), and routing per RFC 6120/6121 as described in [`router`]: full and
//! bare JID routing, `service-unavailable` for absent recipients, disco#info/ping for the
//! server and on behalf of accounts, presence to bare JIDs reaching every available resource,
//! directed-presence tracking with `unavailable` sent when a session ends (clean close or TCP
//! drop). Bounds: stanza size, connection count, per-connection queue, write stalls
//! ([`ServerConfig`]). A slow reader is disconnected rather than allowed to stall others.
//!
//! ## Faults and trace
//!
//! [`ServerHandle::faults`] returns [`Faults`]: drop, delay, duplicate, reorder, rewrite or
//! cut at chosen stanzas between chosen JIDs, and split writes at arbitrary byte boundaries;
//! deterministic given [`ServerConfig::seed`]. [`ServerHandle::inject`] sends any stanza
//! with any `from`. [`ServerHandle::trace`] returns the bounded [`Trace`] of every stanza in
//! and out.
//!
//! Malformed input for clients: [`ServerHandle::inject_raw`] writes arbitrary bytes
//! (ill-formed XML, invalid UTF-8, partial tags) into one session's stream, bypassing
//! serialisation, in order with the stanzas queued for it; [`FaultAction::Raw`] replaces a
//! chosen stanza (rule match, `skip`, `times`) with raw bytes. Both are traced as
//! [`Direction::Out`] with the bytes escaped by [`trace::escape_bytes`] (notes
//! `"inject raw"` / `"raw"`). [`ServerHandle::disconnect_after_queued`] cuts a connection
//! (no footer) once what is queued for it is written; [`ServerHandle::disconnect`] cuts at
//! once.
//!
//! ```no_run
//! # async fn demo(server: vertebra_embedded_server::ServerHandle) -> vertebra_embedded_server::Result<()> {
//! # let agent: vertebra_embedded_server::jid::FullJid = "agent@localhost/a".parse().unwrap();
//! server.inject_raw(&agent, &b"<message><body>\xff\xfe</bo"[..])?;
//! server.disconnect_after_queued(&agent)?;
//! # Ok(()) }
//! ```
//!
//! ## Prosody and shared scenarios
//!
//! [`prosody::Prosody`] starts Debian's `prosody` on a free loopback port for tests, and
//! [`testing::TestServer`] runs the same scenario against either server.

mod config;
pub mod faults;
pub mod prosody;
pub mod router;
mod server;
pub mod testing;
pub mod trace;

pub use config::{Error, Result, SaslMechanism, ServerConfig};
pub use faults::{FaultAction, FaultRule, Faults, JidPattern, RuleId, SplitSpec, StanzaKind};
pub use router::ConflictPolicy;
pub use server::{EmbeddedServer, ServerHandle};
pub use trace::{Direction, Trace, TraceEvent};

/// Re-exports of the XMPP crates this crate's API uses (tokio-xmpp's own re-exports, so
/// versions cannot drift).
pub use tokio_xmpp::{jid, minidom, parsers};
