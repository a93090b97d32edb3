//! Helpers for running the same client scenario against the embedded server and a real
//! Prosody.
//!
//! ```no_run
//! # async fn demo() -> vertebra_embedded_server::Result<()> {
//! use vertebra_embedded_server::testing::{ServerKind, TestServer};
//! for kind in [ServerKind::Embedded, ServerKind::Prosody] {
//!     let Some(server) = TestServer::start_or_skip(kind, "localhost").await? else {
//!         continue; // only outside CI: Prosody missing, skip printed
//!     };
//!     server.add_account("alice", "pw").await?;
//!     let (alice, jid) = vertebra_embedded_server::testing::connect(
//!         server.addr(), &format!("alice@{}/a", server.domain()), "pw",
//!         std::time::Duration::from_secs(10)).await?;
//!     # let _ = (alice, jid);
//! }
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::jid::{FullJid, Jid};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event};

use crate::config::{Error, Result};
use crate::prosody::{Prosody, ProsodyHandle};
use crate::{EmbeddedServer, ServerConfig, ServerHandle};

/// Which server a [`TestServer`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// The in-process [`EmbeddedServer`].
    Embedded,
    /// Debian's `prosody`, via [`Prosody::start`].
    Prosody,
}

impl std::fmt::Display for ServerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerKind::Embedded => "embedded",
            ServerKind::Prosody => "prosody",
        })
    }
}

/// A running test server of either kind.
#[derive(Debug)]
pub enum TestServer {
    /// The embedded server.
    Embedded(ServerHandle),
    /// A real Prosody.
    Prosody(ProsodyHandle),
}

impl TestServer {
    /// Starts a server of `kind` for `domain` with no accounts. A missing Prosody is an
    /// error ([`Error::ProsodyNotInstalled`]).
    pub async fn start(kind: ServerKind, domain: &str) -> Result<TestServer> {
        match kind {
            ServerKind::Embedded => Ok(TestServer::Embedded(
                EmbeddedServer::start(ServerConfig::new(domain)).await?,
            )),
            ServerKind::Prosody => Ok(TestServer::Prosody(Prosody::start(domain, &[]).await?)),
        }
    }

    /// Like [`TestServer::start`], but a missing Prosody outside CI prints a skip notice to
    /// stderr and returns `Ok(None)`. Under `CI=true` a missing Prosody is an error, so the
    /// test fails (see [`crate::prosody::prosody_or_fail`]).
    pub async fn start_or_skip(kind: ServerKind, domain: &str) -> Result<Option<TestServer>> {
        match kind {
            ServerKind::Embedded => Ok(Some(Self::start(kind, domain).await?)),
            ServerKind::Prosody => Ok(crate::prosody::prosody_or_fail(domain, &[])
                .await?
                .map(TestServer::Prosody)),
        }
    }

    /// Which kind this is.
    pub fn kind(&self) -> ServerKind {
        match self {
            TestServer::Embedded(_) => ServerKind::Embedded,
            TestServer::Prosody(_) => ServerKind::Prosody,
        }
    }

    /// Client-to-server address (plain TCP on loopback).
    pub fn addr(&self) -> SocketAddr {
        match self {
            TestServer::Embedded(s) => s.addr(),
            TestServer::Prosody(p) => p.addr(),
        }
    }

    /// The XMPP domain.
    pub fn domain(&self) -> &str {
        match self {
            TestServer::Embedded(s) => s.domain(),
            TestServer::Prosody(p) => p.domain(),
        }
    }

    /// Creates an account.
    pub async fn add_account(&self, user: &str, password: &str) -> Result<()> {
        match self {
            TestServer::Embedded(s) => s.add_account(user, password),
            TestServer::Prosody(p) => p.add_account(user, password).await,
        }
    }

    /// The embedded server's handle, if this is one.
    pub fn embedded(&self) -> Option<&ServerHandle> {
        match self {
            TestServer::Embedded(s) => Some(s),
            TestServer::Prosody(_) => None,
        }
    }
}

/// Connects a tokio-xmpp client over plain TCP to `addr` and waits (at most `timeout`) until
/// it is online. Returns the client and its bound JID. tokio-xmpp reports neither refused
/// connections nor authentication failures as events, so a bad password shows up as
/// [`Error::Timeout`].
pub async fn connect(
    addr: SocketAddr,
    jid: &str,
    password: &str,
    timeout: Duration,
) -> Result<(Client, FullJid)> {
    let jid: Jid = jid
        .parse()
        .map_err(|_| Error::InvalidAccount(jid.to_owned()))?;
    let mut client = Client::new_plaintext(
        jid.clone(),
        password.to_owned(),
        DnsConfig::addr(&addr.to_string()),
        Timeouts::tight(),
    );
    let online = async {
        while let Some(ev) = client.next().await {
            if let Event::Online { bound_jid, .. } = ev {
                return bound_jid.try_into_full().ok();
            }
        }
        None
    };
    match tokio::time::timeout(timeout, online).await {
        Ok(Some(full)) => Ok((client, full)),
        Ok(None) => Err(Error::Timeout(format!("{jid} online (stream ended)"))),
        Err(_) => Err(Error::Timeout(format!("{jid} online"))),
    }
}

/// A minimal client with direct control over its socket, built on tokio-xmpp's XML stream
/// layer: logs in (SASL via tokio-xmpp's `client_login`, then resource binding), sends and
/// receives stanzas, and can [`vanish`](RawClient::vanish) (TCP reset, no stream footer) to
/// simulate a crashed client. No automatic reconnects, no IQ tracking.
pub struct RawClient {
    stream: tokio_xmpp::xmlstream::XmppStream<tokio::io::BufStream<tokio::net::TcpStream>>,
    jid: FullJid,
}

impl std::fmt::Debug for RawClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawClient").field("jid", &self.jid).finish()
    }
}

fn io_err(e: impl std::fmt::Display) -> Error {
    Error::Io(std::io::Error::other(e.to_string()))
}

impl RawClient {
    /// Connects, authenticates and binds `resource` (or a server-chosen one), within
    /// `timeout`.
    pub async fn connect(
        addr: SocketAddr,
        bare: &str,
        password: &str,
        resource: Option<&str>,
        timeout: Duration,
    ) -> Result<RawClient> {
        tokio::time::timeout(timeout, Self::connect_inner(addr, bare, password, resource))
            .await
            .map_err(|_| Error::Timeout(format!("raw client {bare} login")))?
    }

    async fn connect_inner(
        addr: SocketAddr,
        bare: &str,
        password: &str,
        resource: Option<&str>,
    ) -> Result<RawClient> {
        use futures::SinkExt;
        use std::borrow::Cow;
        use tokio_xmpp::parsers::{
            bind::{BindQuery, BindResponse},
            iq::Iq,
            ns,
        };
        use tokio_xmpp::xmlstream::{initiate_stream, StreamHeader, XmppStreamElement};
        let jid = tokio_xmpp::jid::BareJid::new(bare)
            .map_err(|_| Error::InvalidAccount(bare.to_owned()))?;
        let node = jid
            .node()
            .ok_or_else(|| Error::InvalidAccount(bare.to_owned()))?
            .to_string();
        let domain = jid.domain().to_string();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let header = || StreamHeader {
            from: None,
            to: Some(Cow::Owned(domain.clone())),
            id: None,
        };
        let pending = initiate_stream(
            tokio::io::BufStream::new(tcp),
            ns::JABBER_CLIENT,
            header(),
            Timeouts::tight(),
        )
        .await?;
        let (features, stream) = pending.recv_features().await.map_err(io_err)?;
        let creds = sasl::common::Credentials::default()
            .with_username(node)
            .with_password(password.to_owned())
            .with_channel_binding(sasl::common::ChannelBinding::None);
        let initiating = tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds)
            .await
            .map_err(io_err)?;
        let pending = initiating.send_header(header()).await?;
        let (_features, mut stream) = pending.recv_features().await.map_err(io_err)?;
        let bind = Iq::from_set("bind-1", BindQuery::new(resource.map(str::to_owned)));
        stream.send(&XmppStreamElement::Stanza(bind.into())).await?;
        loop {
            match stream.next().await {
                Some(Ok(tokio_xmpp::xmlstream::FallibleStreamElement::Ok(
                    XmppStreamElement::Stanza(tokio_xmpp::Stanza::Iq(Iq::Result {
                        id,
                        payload: Some(p),
                        ..
                    })),
                ))) if id == "bind-1" => {
                    let r = BindResponse::try_from(p).map_err(io_err)?;
                    return Ok(RawClient { stream, jid: r.jid });
                }
                Some(Ok(tokio_xmpp::xmlstream::FallibleStreamElement::Ok(
                    XmppStreamElement::Stanza(tokio_xmpp::Stanza::Iq(Iq::Error { error, .. })),
                ))) => {
                    return Err(io_err(format!(
                        "bind failed: {:?}",
                        error.defined_condition
                    )))
                }
                Some(Err(tokio_xmpp::xmlstream::ReadError::SoftTimeout)) => continue,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(io_err(e)),
                None => return Err(io_err("stream closed during bind")),
            }
        }
    }

    /// The bound full JID.
    pub fn jid(&self) -> &FullJid {
        &self.jid
    }

    /// Sends a stanza (or any element).
    pub async fn send(&mut self, el: impl Into<tokio_xmpp::minidom::Element>) -> Result<()> {
        use futures::SinkExt;
        let el: tokio_xmpp::minidom::Element = el.into();
        self.stream.send(&el).await?;
        Ok(())
    }

    /// Sends several stanzas with one flush at the end.
    pub async fn send_stanzas(&mut self, stanzas: &[tokio_xmpp::Stanza]) -> Result<()> {
        use futures::SinkExt;
        for s in stanzas {
            self.stream.feed(s).await?;
        }
        SinkExt::<&tokio_xmpp::Stanza>::flush(&mut self.stream).await?;
        Ok(())
    }

    /// Waits (at most `timeout`) for the next stanza, then also takes those already received
    /// and buffered, up to `max` in all. An empty result means the stream ended.
    pub async fn recv_batch(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<tokio_xmpp::Stanza>> {
        use futures::FutureExt;
        use tokio_xmpp::xmlstream::{FallibleStreamElement, XmppStreamElement};
        let mut out = Vec::new();
        match self.recv(timeout).await? {
            Some(s) => out.push(s),
            None => return Ok(out),
        }
        while out.len() < max {
            match self.stream.next().now_or_never() {
                Some(Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(s))))) => {
                    out.push(s)
                }
                Some(Some(Ok(_))) => continue,
                Some(Some(Err(tokio_xmpp::xmlstream::ReadError::SoftTimeout))) => continue,
                Some(_) | None => break,
            }
        }
        Ok(out)
    }

    /// Receives the next stanza within `timeout`. `Ok(None)` means the stream ended.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<tokio_xmpp::Stanza>> {
        use tokio_xmpp::xmlstream::{FallibleStreamElement, ReadError, XmppStreamElement};
        let fut = async {
            loop {
                match self.stream.next().await {
                    Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(s)))) => {
                        return Ok(Some(s))
                    }
                    Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                        return Err(io_err(format!("stream error: {}", e.0)))
                    }
                    Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => continue,
                    Some(Err(ReadError::StreamFooterReceived)) | None => return Ok(None),
                    Some(Err(e)) => return Err(io_err(e)),
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::Timeout(format!("stanza for {}", self.jid)))?
    }

    /// Receives stanzas until `pred` accepts one (others are discarded), within `timeout`.
    pub async fn recv_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&tokio_xmpp::Stanza) -> bool,
    ) -> Result<tokio_xmpp::Stanza> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await? {
                Some(s) if pred(&s) => return Ok(s),
                Some(_) => continue,
                None => return Err(io_err(format!("stream of {} ended", self.jid))),
            }
        }
    }

    /// Closes the stream cleanly (footer, then TCP close).
    pub async fn close(mut self) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown())
            .await
            .map_err(|_| Error::Timeout("stream close".into()))??;
        Ok(())
    }

    /// Drops the connection abruptly: TCP reset (SO_LINGER 0), no stream footer.
    pub fn vanish(self) {
        // Linger 0 makes close send RST without blocking (the deprecation is about
        // non-zero linger blocking the thread).
        #[allow(deprecated)]
        let _ = self
            .stream
            .get_stream()
            .get_ref()
            .set_linger(Some(Duration::ZERO));
        drop(self);
    }
}
