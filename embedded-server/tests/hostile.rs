//! Hostile and misbehaving clients (garbage bytes, huge stanzas, floods, slow readers,
//! connection floods) cannot crash the embedded server or stall other connections.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_xmpp::{
    jid::Jid,
    parsers::{
        iq::Iq,
        message::{Id, Lang, Message, MessageType},
        ping::Ping,
    },
    Stanza,
};
use vertebra_embedded_server::{testing::RawClient, EmbeddedServer, ServerConfig, ServerHandle};

const T: Duration = Duration::from_secs(10);

async fn start(config: ServerConfig) -> ServerHandle {
    let s = EmbeddedServer::start(config).await.expect("start");
    for u in ["alice", "bob", "mallory"] {
        s.add_account(u, &format!("{u}pw")).unwrap();
    }
    s
}

async fn raw(s: &ServerHandle, user: &str, res: &str) -> RawClient {
    RawClient::connect(
        s.addr(),
        &format!("{user}@{}", s.domain()),
        &format!("{user}pw"),
        Some(res),
        T,
    )
    .await
    .expect("login")
}

/// One ping round trip to the server, which must complete within `limit`.
async fn assert_responsive(c: &mut RawClient, s: &ServerHandle, id: &str, limit: Duration) {
    let t0 = Instant::now();
    let ping = Iq::from_get(id, Ping).with_to(s.domain().parse().unwrap());
    c.send(ping).await.expect("send ping");
    let st = c
        .recv_until(
            limit,
            |st| matches!(st, Stanza::Iq(Iq::Result { id: i, .. }) if i == id),
        )
        .await;
    assert!(st.is_ok(), "ping {id} not answered: {st:?}");
    assert!(t0.elapsed() <= limit);
}

/// Reads from a raw socket until EOF/reset (with a deadline); returns what was read.
async fn read_to_close(mut tcp: TcpStream) -> String {
    let mut buf = Vec::new();
    let r = tokio::time::timeout(T, async {
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(r.is_ok(), "server did not close the connection");
    String::from_utf8_lossy(&buf).into_owned()
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_close_only_that_connection() {
    let s = start(ServerConfig::default()).await;
    let mut alice = raw(&s, "alice", "a").await;
    // garbage before any stream header
    let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
    tcp.write_all(b"\x00\xff\xfeGET / HTTP/1.1\r\n\r\n<<<>>>&&&")
        .await
        .unwrap();
    read_to_close(tcp).await;
    // garbage after a valid header: not-well-formed stream error
    let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
    tcp.write_all(header(s.domain()).as_bytes()).await.unwrap();
    tcp.write_all(b"<a><b></a>\x01\x02").await.unwrap();
    let got = read_to_close(tcp).await;
    assert!(got.contains("stream:features"), "{got}");
    // garbage after login
    let mallory = raw(&s, "mallory", "m").await;
    let mallory_jid = mallory.jid().clone();
    drop(mallory); // closes without footer
    s.wait_offline(&mallory_jid, T).await.unwrap();
    assert_responsive(&mut alice, &s, "after-garbage", T).await;
    // the server still accepts logins
    let mut bob = raw(&s, "bob", "b").await;
    assert_responsive(&mut bob, &s, "bob-ok", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_login_gets_stream_error() {
    let s = start(ServerConfig::default()).await;
    let mut alice = raw(&s, "alice", "a").await;
    let mut mallory = raw(&s, "mallory", "m").await;
    let mallory_jid = mallory.jid().clone();
    // an unknown top-level element
    mallory
        .send(
            "<evil xmlns='urn:evil'><x/></evil>"
                .parse::<tokio_xmpp::minidom::Element>()
                .unwrap(),
        )
        .await
        .unwrap();
    let r = mallory.recv(T).await;
    assert!(
        matches!(&r, Err(e) if e.to_string().contains("unsupported-stanza-type")),
        "{r:?}"
    );
    s.wait_offline(&mallory_jid, T).await.unwrap();
    assert_responsive(&mut alice, &s, "still-ok", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_stanza_is_a_policy_violation() {
    let cfg = ServerConfig {
        max_stanza_bytes: 64 * 1024,
        ..Default::default()
    };
    let s = start(cfg).await;
    let mut alice = raw(&s, "alice", "a").await;
    let mut mallory = raw(&s, "mallory", "m").await;
    let mallory_jid = mallory.jid().clone();
    let alice_jid: Jid = alice.jid().clone().into();
    // under the limit: delivered
    let mut m = Message::new_with_type(MessageType::Chat, Some(alice_jid.clone()));
    m.id = Some(Id("small".into()));
    m.bodies.insert(Lang(String::new()), "x".repeat(32 * 1024));
    mallory.send(m).await.unwrap();
    alice
        .recv_until(T, |st| matches!(st, Stanza::Message(_)))
        .await
        .expect("32 KiB message delivered");
    // over the limit: stream error, connection closed
    let mut m = Message::new_with_type(MessageType::Chat, Some(alice_jid.clone()));
    m.bodies
        .insert(Lang(String::new()), "y".repeat(1024 * 1024));
    let _ = mallory.send(m).await;
    let r = mallory.recv(T).await;
    assert!(
        matches!(&r, Err(e) if e.to_string().contains("policy-violation")),
        "{r:?}"
    );
    s.wait_offline(&mallory_jid, T).await.unwrap();
    assert_responsive(&mut alice, &s, "after-huge", T).await;
    // a huge stanza before authentication is refused too
    let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
    tcp.write_all(header(s.domain()).as_bytes()).await.unwrap();
    let blob = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        "A".repeat(512 * 1024)
    );
    let _ = tcp.write_all(blob.as_bytes()).await;
    let got = read_to_close(tcp).await;
    assert!(got.contains("policy-violation"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_without_reading_is_cut_and_others_stay_responsive() {
    let cfg = ServerConfig {
        outbound_queue: 64,
        write_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let s = start(cfg).await;
    let mut alice = raw(&s, "alice", "a").await;
    let mallory = raw(&s, "mallory", "m").await;
    let mallory_jid = mallory.jid().clone();
    drop(mallory);
    s.wait_offline(&mallory_jid, T).await.unwrap();
    // A raw socket that logs in via RawClient is awkward to keep unread; use a fresh raw
    // TCP stream speaking the protocol by hand (bytes only; the server parses them).
    // A small receive buffer so the server's writes back up quickly.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut tcp = sock.connect(s.addr()).await.unwrap();
    tcp.write_all(header(s.domain()).as_bytes()).await.unwrap();
    // PLAIN: \0mallory\0mallorypw
    tcp.write_all(
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AG1hbGxvcnkAbWFsbG9yeXB3</auth>",
    )
    .await
    .unwrap();
    tcp.write_all(header(s.domain()).as_bytes()).await.unwrap();
    tcp.write_all(
        b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>flood</resource></bind></iq>",
    )
    .await
    .unwrap();
    let flood_jid = s
        .bare_jid("mallory")
        .unwrap()
        .with_resource_str("flood")
        .unwrap();
    s.wait_online(&flood_jid, T).await.unwrap();
    // Flood IQs (4 KiB each) addressed to itself, so every one comes back, and never
    // read anything.
    let me = flood_jid.to_string();
    let flooder = tokio::spawn(async move {
        let mut batch = String::new();
        let pad = "p".repeat(4096);
        for i in 0..50 {
            batch.push_str(&format!(
                "<iq type='get' id='f{i}' to='{me}'><x xmlns='urn:flood'>{pad}</x></iq>"
            ));
        }
        let t0 = Instant::now();
        while t0.elapsed() < T {
            if tcp.write_all(batch.as_bytes()).await.is_err() {
                return true; // the server cut us off
            }
        }
        false
    });
    // Meanwhile alice stays responsive.
    for i in 0..20 {
        assert_responsive(&mut alice, &s, &format!("live-{i}"), Duration::from_secs(2)).await;
    }
    s.wait_offline(&flood_jid, T).await.unwrap();
    assert!(flooder.await.unwrap(), "flooder was never disconnected");
    assert_responsive(&mut alice, &s, "after-flood", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_dropped_and_sender_unaffected() {
    let cfg = ServerConfig {
        outbound_queue: 32,
        write_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let s = start(cfg).await;
    let mut alice = raw(&s, "alice", "a").await;
    let bob = raw(&s, "bob", "b").await; // never reads
    let bob_jid = bob.jid().clone();
    let to: Jid = bob_jid.clone().into();
    let body = "z".repeat(16 * 1024);
    let t0 = Instant::now();
    let mut i = 0;
    while s.sessions().contains(&bob_jid) {
        let mut m = Message::new_with_type(MessageType::Chat, Some(to.clone()));
        m.bodies.insert(Lang(String::new()), body.clone());
        alice.send(m).await.unwrap();
        i += 1;
        if i % 50 == 0 {
            assert_responsive(&mut alice, &s, &format!("p{i}"), Duration::from_secs(2)).await;
        }
        assert!(
            t0.elapsed() < T,
            "slow reader never dropped after {i} messages"
        );
    }
    assert_responsive(&mut alice, &s, "after-slow", T).await;
    drop(bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_extra_connections() {
    let cfg = ServerConfig {
        max_connections: 2,
        ..Default::default()
    };
    let s = start(cfg).await;
    let mut alice = raw(&s, "alice", "a").await;
    let _bob = raw(&s, "bob", "b").await;
    let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
    tcp.write_all(header(s.domain()).as_bytes()).await.unwrap();
    let got = read_to_close(tcp).await;
    assert!(got.contains("resource-constraint"), "{got}");
    assert_responsive(&mut alice, &s, "ok", T).await;
    assert_eq!(s.connection_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_unauthenticated_connection_times_out() {
    let cfg = ServerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let s = start(cfg).await;
    let mut tcp = TcpStream::connect(s.addr()).await.unwrap();
    tcp.write_all(header(s.domain()).as_bytes()).await.unwrap();
    let t0 = Instant::now();
    read_to_close(tcp).await;
    assert!(t0.elapsed() >= Duration::from_millis(250));
    // and it no longer counts against the limit
    let deadline = Instant::now() + T;
    while s.connection_count() != 0 {
        assert!(Instant::now() < deadline, "connection still counted");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_flood_to_a_reading_peer_is_delivered() {
    let s = start(ServerConfig::default()).await;
    let mut alice = raw(&s, "alice", "a").await;
    let mut bob = raw(&s, "bob", "b").await;
    let to: Jid = bob.jid().clone().into();
    const N: usize = 2000;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            bob.recv_until(T, |st| matches!(st, Stanza::Message(_)))
                .await
                .expect("message");
            n += 1;
        }
        n
    });
    for i in 0..N {
        let mut m = Message::new_with_type(MessageType::Chat, Some(to.clone()));
        m.id = Some(Id(format!("f{i}")));
        alice.send(m).await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), N);
    assert_responsive(&mut alice, &s, "ok", T).await;
}

/// A TCP proxy in front of the server through which the test can push arbitrary bytes
/// to the server in the middle of a logged-in client's stream.
async fn injecting_proxy(
    server: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let upstream = TcpStream::connect(server).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut ur, mut uw) = upstream.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut ur, &mut cw).await;
            let _ = cw.shutdown().await;
        });
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                r = cr.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => if uw.write_all(&buf[..n]).await.is_err() { break },
                },
                Some(extra) = rx.recv() => {
                    if uw.write_all(&extra).await.is_err() { break }
                }
            }
        }
        let _ = uw.shutdown().await;
    });
    (addr, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_bound_session_closes_only_that_session() {
    let s = start(ServerConfig::default()).await;
    let mut alice = raw(&s, "alice", "a").await;
    let alice_jid: Jid = alice.jid().clone().into();
    for (i, garbage) in [
        &b"<message><body>\xff\xfe</body></message>"[..],
        &b"<<<>>>&&&"[..],
        &b"<iq type='get' id='x'><ping xmlns='urn:xmpp:ping'/></message>"[..],
    ]
    .into_iter()
    .enumerate()
    {
        let (addr, inject) = injecting_proxy(s.addr()).await;
        let mut mallory = RawClient::connect(addr, "mallory@localhost", "mallorypw", None, T)
            .await
            .expect("login through the proxy");
        let mallory_jid = mallory.jid().clone();
        let mallory_any: Jid = mallory_jid.clone().into();
        // directed presence, so the server must tell alice when mallory's session ends
        mallory
            .send(tokio_xmpp::parsers::presence::Presence::available().with_to(alice_jid.clone()))
            .await
            .unwrap();
        alice
            .recv_until(
                T,
                |st| matches!(st, Stanza::Presence(p) if p.from.as_ref() == Some(&mallory_any)),
            )
            .await
            .unwrap();
        inject.send(garbage.to_vec()).unwrap();
        let r = mallory.recv(T).await;
        assert!(
            matches!(&r, Err(e) if e.to_string().contains("not-well-formed")),
            "case {i}: {r:?}"
        );
        s.wait_offline(&mallory_jid, T).await.unwrap();
        alice
            .recv_until(T, |st| {
                matches!(st, Stanza::Presence(p) if p.from.as_ref() == Some(&mallory_any)
                    && p.type_ == tokio_xmpp::parsers::presence::Type::Unavailable)
            })
            .await
            .unwrap();
        assert_responsive(&mut alice, &s, &format!("after-garbage-{i}"), T).await;
    }
}
