//! Embedded-server behaviour: SASL mechanisms, bad credentials, resource conflicts, wrong
//! domain, runtime accounts, shutdown.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_xmpp::{
    parsers::{iq::Iq, ping::Ping},
    Stanza,
};
use vertebra_embedded_server::{
    testing::{connect, RawClient},
    ConflictPolicy, EmbeddedServer, Error, SaslMechanism, ServerConfig,
};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn scram_sha1_and_sha256_logins() {
    for mech in [SaslMechanism::ScramSha1, SaslMechanism::ScramSha256] {
        let cfg = ServerConfig {
            mechanisms: vec![mech],
            scram_iterations: 512,
            ..ServerConfig::new("localhost").with_account("alice", "secret")
        };
        let s = EmbeddedServer::start(cfg).await.unwrap();
        let (client, jid) = connect(s.addr(), "alice@localhost/scram", "secret", T)
            .await
            .unwrap_or_else(|e| panic!("{mech:?}: {e}"));
        assert_eq!(jid.to_string(), "alice@localhost/scram");
        let _ = tokio::time::timeout(T, client.send_end()).await;
        // wrong password with SCRAM: never online
        let r = connect(
            s.addr(),
            "alice@localhost/bad",
            "wrong",
            Duration::from_millis(800),
        )
        .await;
        assert!(matches!(r, Err(Error::Timeout(_))), "{mech:?}");
        s.shutdown().await;
    }
}

#[tokio::test]
async fn wrong_password_and_unknown_user_never_come_online() {
    let s = EmbeddedServer::start(ServerConfig::default().with_account("alice", "pw"))
        .await
        .unwrap();
    for (jid, pw) in [("alice@localhost/x", "nope"), ("ghost@localhost/x", "pw")] {
        let r = connect(s.addr(), jid, pw, Duration::from_millis(800)).await;
        assert!(matches!(r, Err(Error::Timeout(_))), "{jid}");
    }
    let r = RawClient::connect(s.addr(), "alice@localhost", "nope", None, T).await;
    assert!(r.is_err());
    // and the right password works
    connect(s.addr(), "alice@localhost/x", "pw", T)
        .await
        .unwrap();
}

#[tokio::test]
async fn accounts_added_at_runtime_can_log_in() {
    let s = EmbeddedServer::start(ServerConfig::default())
        .await
        .unwrap();
    assert!(matches!(
        s.add_account("not a valid@localpart", "x"),
        Err(Error::InvalidAccount(_))
    ));
    s.add_account("late", "pw").unwrap();
    let c = RawClient::connect(s.addr(), "late@localhost", "pw", None, T)
        .await
        .unwrap();
    // server-generated resource
    assert!(!c.jid().resource().as_str().is_empty());
    assert_eq!(s.sessions(), vec![c.jid().clone()]);
}

#[tokio::test]
async fn resource_conflict_kick_old() {
    let s = EmbeddedServer::start(ServerConfig::default().with_account("alice", "pw"))
        .await
        .unwrap();
    let mut old = RawClient::connect(s.addr(), "alice@localhost", "pw", Some("r"), T)
        .await
        .unwrap();
    let mut new = RawClient::connect(s.addr(), "alice@localhost", "pw", Some("r"), T)
        .await
        .unwrap();
    let r = old.recv(T).await;
    assert!(
        matches!(&r, Err(e) if e.to_string().contains("conflict")),
        "{r:?}"
    );
    assert_eq!(s.sessions(), vec![new.jid().clone()]);
    let ping = Iq::from_get("p", Ping).with_to("localhost".parse().unwrap());
    new.send(ping).await.unwrap();
    new.recv_until(T, |st| matches!(st, Stanza::Iq(Iq::Result { .. })))
        .await
        .unwrap();
}

#[tokio::test]
async fn resource_conflict_reject_new() {
    let cfg = ServerConfig {
        conflict: ConflictPolicy::RejectNew,
        ..ServerConfig::default().with_account("alice", "pw")
    };
    let s = EmbeddedServer::start(cfg).await.unwrap();
    let old = RawClient::connect(s.addr(), "alice@localhost", "pw", Some("r"), T)
        .await
        .unwrap();
    let r = RawClient::connect(s.addr(), "alice@localhost", "pw", Some("r"), T).await;
    assert!(
        matches!(&r, Err(e) if e.to_string().contains("Conflict")),
        "{r:?}"
    );
    assert_eq!(s.sessions(), vec![old.jid().clone()]);
}

#[tokio::test]
async fn wrong_domain_is_host_unknown() {
    let s = EmbeddedServer::start(ServerConfig::new("example.test"))
        .await
        .unwrap();
    assert_eq!(s.domain(), "example.test");
    let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
    tcp.write_all(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
          xmlns:stream='http://etherx.jabber.org/streams' to='other.test' version='1.0'>",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(T, tcp.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf).contains("host-unknown"));
}

#[tokio::test]
async fn invalid_domain_is_a_typed_error() {
    let r = EmbeddedServer::start(ServerConfig::new("user@host")).await;
    assert!(matches!(r, Err(Error::InvalidDomain(_))));
}

#[tokio::test]
async fn shutdown_closes_sessions_with_system_shutdown() {
    let s = EmbeddedServer::start(ServerConfig::default().with_account("alice", "pw"))
        .await
        .unwrap();
    let addr = s.addr();
    let mut c = RawClient::connect(addr, "alice@localhost", "pw", Some("r"), T)
        .await
        .unwrap();
    let reader = tokio::spawn(async move { c.recv(T).await });
    tokio::time::timeout(T, s.shutdown()).await.unwrap();
    let r = reader.await.unwrap();
    assert!(
        matches!(&r, Err(e) if e.to_string().contains("system-shutdown")),
        "{r:?}"
    );
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let s = EmbeddedServer::start(ServerConfig::default())
        .await
        .unwrap();
    let addr = s.addr();
    drop(s);
    let deadline = tokio::time::Instant::now() + T;
    // The accept loop notices the shutdown signal asynchronously; poll until refused.
    loop {
        if TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still listening");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
