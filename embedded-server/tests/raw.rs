//! Raw-bytes injection (`ServerHandle::inject_raw`, `FaultAction::Raw`) and queued cuts
//! (`ServerHandle::disconnect_after_queued`): the exact bytes reach the wire in order, the
//! trace records them escaped, real clients see the stream break, and the server and the
//! other connections carry on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_xmpp::{
    jid::{FullJid, Jid},
    parsers::{
        iq::Iq,
        message::{Id, Lang, Message, MessageType},
        ping::Ping,
        presence::{Presence, Type as PresenceType},
    },
    Event, Stanza,
};
use vertebra_embedded_server::{
    testing::{connect, RawClient},
    trace::escape_bytes,
    Direction, EmbeddedServer, Error, FaultAction, FaultRule, ServerConfig, ServerHandle,
    StanzaKind,
};

const T: Duration = Duration::from_secs(10);

async fn start() -> ServerHandle {
    let s = EmbeddedServer::start(ServerConfig::default())
        .await
        .expect("start");
    for u in ["alice", "bob", "carol"] {
        s.add_account(u, &format!("{u}pw")).unwrap();
    }
    s
}

async fn raw_at(addr: SocketAddr, user: &str, res: &str) -> RawClient {
    RawClient::connect(
        addr,
        &format!("{user}@localhost"),
        &format!("{user}pw"),
        Some(res),
        T,
    )
    .await
    .expect("login")
}

fn msg(to: Jid, id: &str, body: &str) -> Message {
    let mut m = Message::new_with_type(MessageType::Chat, Some(to));
    m.id = Some(Id(id.into()));
    m.bodies.insert(Lang(String::new()), body.into());
    m
}

/// A one-connection TCP proxy in front of the server that records every byte the server
/// sends, so tests can check exactly what went over the wire.
struct Tap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    /// (bytes seen so far, server closed its side)
    progress: watch::Receiver<(usize, bool)>,
}

impl Tap {
    async fn start(server: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, progress) = watch::channel((0, false));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let upstream = TcpStream::connect(server).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut uw).await;
                let _ = uw.shutdown().await;
            });
            let mut buf = [0u8; 4096];
            loop {
                match ur.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let total = {
                            let mut s = seen2.lock().unwrap();
                            s.extend_from_slice(&buf[..n]);
                            s.len()
                        };
                        tx.send_replace((total, false));
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = cw.shutdown().await;
            let n = seen2.lock().unwrap().len();
            tx.send_replace((n, true));
        });
        Tap {
            addr,
            seen,
            progress,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the recorded bytes contain `needle`; returns its offset.
    async fn wait_for(&mut self, needle: &[u8]) -> usize {
        let seen = self.seen.clone();
        let find = move || {
            let s = seen.lock().unwrap();
            s.windows(needle.len()).position(|w| w == needle)
        };
        tokio::time::timeout(T, async {
            loop {
                if let Some(p) = find() {
                    return p;
                }
                self.progress.changed().await.expect("tap alive");
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "bytes never arrived: {} in {}",
                escape_bytes(needle),
                escape_bytes(&self.bytes())
            )
        })
    }

    /// Waits until the server has closed its side of the connection.
    async fn wait_closed(&mut self) {
        tokio::time::timeout(T, self.progress.wait_for(|p| p.1))
            .await
            .expect("server did not close the connection")
            .expect("tap alive");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One ping round trip to the server.
async fn assert_responsive(c: &mut RawClient, id: &str) {
    c.send(Iq::from_get(id, Ping).with_to("localhost".parse().unwrap()))
        .await
        .unwrap();
    c.recv_until(
        T,
        |st| matches!(st, Stanza::Iq(Iq::Result { id: i, .. }) if i == id),
    )
    .await
    .unwrap_or_else(|e| panic!("ping {id}: {e}"));
}

/// bob sends carol a message and carol receives it.
async fn assert_exchange(bob: &mut RawClient, carol: &mut RawClient, id: &str) {
    bob.send(msg(carol.jid().clone().into(), id, "still here"))
        .await
        .unwrap();
    carol
        .recv_until(
            T,
            |st| matches!(st, Stanza::Message(m) if m.id.as_ref().is_some_and(|i| i.0 == id)),
        )
        .await
        .unwrap_or_else(|e| panic!("message {id}: {e}"));
}

#[tokio::test]
async fn raw_bytes_reach_the_wire_unchanged_and_in_order() {
    let s = start().await;
    let mut tap = Tap::start(s.addr()).await;
    let alice = raw_at(tap.addr, "alice", "a").await;
    let to: Jid = alice.jid().clone().into();
    let garbage: &[u8] = b"<partial attr='\xff\xfe\x00' &bogus; </nope>";
    // before, raw, after: queued in this order for the same connection
    s.inject(msg(to.clone(), "before", "first")).unwrap();
    s.inject_raw(alice.jid(), garbage).unwrap();
    s.inject(msg(to.clone(), "after", "third")).unwrap();
    let after = tap.wait_for(b"id='after'").await;
    let wire = tap.bytes();
    let raw_at_ = find(&wire, garbage).expect("raw bytes on the wire, unchanged");
    let before = find(&wire, b"id='before'").expect("first stanza");
    assert!(before < raw_at_ && raw_at_ < after, "order on the wire");
    // the trace has the raw write, escaped, between the two stanzas
    let trace = s.trace().snapshot();
    let outs: Vec<_> = trace
        .iter()
        .filter(|e| e.direction == Direction::Out && e.jid.as_ref() == Some(&to))
        .collect();
    let raw_ev = outs
        .iter()
        .position(|e| e.note.as_deref() == Some("inject raw"))
        .expect("raw write traced");
    assert_eq!(outs[raw_ev].xml, escape_bytes(garbage));
    assert!(outs[raw_ev].xml.contains("\\xff\\xfe\\x00"));
    assert!(outs[raw_ev - 1].xml.contains("before"));
    assert!(outs[raw_ev + 1].xml.contains("after"));
    // the server keeps the connection (what to do is the client's business)
    assert!(s.sessions().contains(alice.jid()));
    s.shutdown().await;
}

#[tokio::test]
async fn raw_bytes_respect_split_writes() {
    let s = start().await;
    let mut tap = Tap::start(s.addr()).await;
    let alice = raw_at(tap.addr, "alice", "a").await;
    s.faults().split_writes(
        alice.jid().into(),
        vertebra_embedded_server::SplitSpec::Fixed(4),
    );
    let before = s.socket_writes(alice.jid()).unwrap();
    let garbage = b"0123456789abcdefghij\xc3";
    s.inject_raw(alice.jid(), &garbage[..]).unwrap();
    tap.wait_for(garbage).await;
    // 21 bytes in pieces of at most 4: at least 6 socket writes
    let writes = s.socket_writes(alice.jid()).unwrap() - before;
    assert!(writes >= 6, "{writes} writes");
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_session_is_a_typed_error() {
    let s = start().await;
    let ghost: FullJid = "alice@localhost/ghost".parse().unwrap();
    assert!(matches!(
        s.inject_raw(&ghost, b"x".to_vec()),
        Err(Error::NoSuchSession(_))
    ));
    assert!(matches!(
        s.disconnect_after_queued(&ghost),
        Err(Error::NoSuchSession(_))
    ));
    s.shutdown().await;
}

/// Each kind of malformed input breaks the receiving client's stream: tokio-xmpp's
/// `xmlstream` layer (used by [`RawClient`]) reports an error, and a tokio-xmpp `Client`
/// (which never reports a broken stream as an event: it silently reconnects, see
/// `docs/status.md`) comes back with a fresh `Online` and never sees the stanza queued after
/// the bad bytes. The server stays up and bob and carol keep talking throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_their_stream_break_on_malformed_bytes() {
    let s = start().await;
    let mut bob = raw_at(s.addr(), "bob", "b").await;
    let mut carol = raw_at(s.addr(), "carol", "c").await;
    let cases: [(&str, &[u8]); 4] = [
        ("not-well-formed", b"<a><b></a>"),
        ("bad-utf8", b"<message>\xff\xfe\xfd</message>"),
        ("partial-tag", b"<message to='x"),
        ("stray-close", b"</stream:stream-not>&&&"),
    ];
    for (i, (name, bytes)) in cases.into_iter().enumerate() {
        // the xmlstream-level client: recv reports an error
        let mut victim = raw_at(s.addr(), "alice", &format!("raw{i}")).await;
        let victim_jid = victim.jid().clone();
        s.inject_raw(&victim_jid, bytes).unwrap();
        // a partial tag only becomes an error once more bytes follow it
        s.inject(msg(victim_jid.clone().into(), "follow", "x"))
            .unwrap();
        let r = victim.recv(T).await;
        assert!(
            r.is_err(),
            "{name}: RawClient got {r:?} instead of an error"
        );
        drop(victim);
        s.wait_offline(&victim_jid, T).await.expect("session ends");

        // the full tokio-xmpp client: reconnects without delivering anything
        let (mut client, jid) = connect(s.addr(), &format!("alice@localhost/tx{i}"), "alicepw", T)
            .await
            .expect("tokio-xmpp login");
        // The client is online; under load its tight timeouts may already have cost it one
        // reconnect, so wait until the server has the session again (a clean-clone CI run once
        // found it unbound here: NoSuchSession).
        s.wait_online(&jid, T).await.expect("session bound");
        s.inject_raw(&jid, bytes).unwrap();
        s.inject(msg(jid.clone().into(), "follow", "x")).unwrap();
        let ev = tokio::time::timeout(T, client.next())
            .await
            .unwrap_or_else(|_| panic!("{name}: tokio-xmpp client did not notice"));
        match ev {
            // reconnected after its stream broke (or, in later versions, told us so)
            Some(Event::Online { .. }) | Some(Event::Disconnected(_)) => {}
            other => panic!("{name}: expected a reconnect, got {other:?}"),
        }
        drop(client);
        s.wait_offline(&jid, T).await.expect("session ends");

        assert_responsive(&mut bob, &format!("ping-{i}")).await;
        assert_exchange(&mut bob, &mut carol, &format!("m-{i}")).await;
    }
    s.shutdown().await;
}

#[tokio::test]
async fn disconnect_after_queued_writes_then_cuts_without_footer() {
    let s = start().await;
    let mut bob = raw_at(s.addr(), "bob", "b").await;
    let mut tap = Tap::start(s.addr()).await;
    let mut alice = raw_at(tap.addr, "alice", "a").await;
    let alice_jid = alice.jid().clone();
    let alice_any: Jid = alice_jid.clone().into();
    // alice sends bob directed presence, so her cut must produce unavailable for bob
    alice
        .send(Presence::available().with_to(bob.jid().clone()))
        .await
        .unwrap();
    bob.recv_until(
        T,
        |st| matches!(st, Stanza::Presence(p) if p.from.as_ref() == Some(&alice_any)),
    )
    .await
    .unwrap();
    s.inject(msg(alice_any.clone(), "last", "x")).unwrap();
    s.inject_raw(&alice_jid, b"<half").unwrap();
    s.disconnect_after_queued(&alice_jid).unwrap();
    tap.wait_closed().await;
    let wire = tap.bytes();
    let last = find(&wire, b"id='last'").expect("queued stanza written");
    let half = find(&wire, b"<half").expect("queued raw bytes written");
    assert!(last < half);
    assert!(
        wire.ends_with(b"<half"),
        "nothing after the raw bytes: no footer, no error"
    );
    s.wait_offline(&alice_jid, T).await.unwrap();
    bob.recv_until(T, |st| {
        matches!(st, Stanza::Presence(p) if p.from.as_ref() == Some(&alice_any)
            && p.type_ == PresenceType::Unavailable)
    })
    .await
    .unwrap();
    assert_responsive(&mut bob, "after-cut").await;
    drop(alice);
    s.shutdown().await;
}

#[tokio::test]
async fn raw_fault_action_replaces_the_chosen_stanza() {
    let s = start().await;
    let mut bob = raw_at(s.addr(), "bob", "b").await;
    let mut tap = Tap::start(s.addr()).await;
    let alice = raw_at(tap.addr, "alice", "a").await;
    let alice_any: Jid = alice.jid().clone().into();
    let rule = s.faults().add(
        FaultRule::new(FaultAction::Raw(b"<\xffraw-instead".to_vec()))
            .from(bob.jid().into())
            .kind(StanzaKind::Message)
            .skip(1)
            .times(1),
    );
    for id in ["m1", "m2", "m3"] {
        bob.send(msg(alice_any.clone(), id, "x")).await.unwrap();
    }
    let m3 = tap.wait_for(b"id='m3'").await;
    let wire = tap.bytes();
    let m1 = find(&wire, b"id='m1'").expect("m1 delivered");
    let raw = find(&wire, b"<\xffraw-instead").expect("m2 replaced by the raw bytes");
    assert!(find(&wire, b"id='m2'").is_none(), "m2 itself not delivered");
    assert!(m1 < raw && raw < m3);
    assert_eq!(s.faults().counts(rule), Some((3, 1)));
    let trace = s.trace().snapshot();
    assert!(trace.iter().any(|e| e.direction == Direction::Dropped
        && e.note.as_deref() == Some("replaced by raw bytes")
        && e.xml.contains("m2")));
    assert!(trace.iter().any(|e| e.direction == Direction::Out
        && e.note.as_deref() == Some("raw")
        && e.xml == "<\\xffraw-instead"));
    assert_responsive(&mut bob, "ok").await;
    drop(alice);
    s.shutdown().await;
}

/// `In` events hold each stanza's wire bytes, one stanza per event, even when several
/// arrive in one TCP segment; `Out` events hold exactly what was written.
#[tokio::test]
async fn trace_holds_each_stanza_as_sent_and_written() {
    let s = start().await;
    let mut tap = Tap::start(s.addr()).await;
    let mut bob = raw_at(tap.addr, "bob", "b").await;
    let mut alice = raw_at(s.addr(), "alice", "a").await;
    let bob_jid: Jid = bob.jid().clone().into();
    let alice_jid: Jid = alice.jid().clone().into();
    let batch: Vec<Stanza> = ["t1", "t2", "t3"]
        .iter()
        .map(|id| msg(bob_jid.clone(), id, &format!("body of {id} & <more>")).into())
        .collect();
    alice.send_stanzas(&batch).await.unwrap();
    for _ in 0..3 {
        bob.recv_until(T, |st| matches!(st, Stanza::Message(_)))
            .await
            .unwrap();
    }
    tap.wait_for(b"id='t3'").await;
    let trace = s.trace().snapshot();
    let ins: Vec<_> = trace
        .iter()
        .filter(|e| e.direction == Direction::In && e.jid.as_ref() == Some(&alice_jid))
        .collect();
    assert_eq!(ins.len(), 3, "{ins:#?}");
    for (e, id) in ins.iter().zip(["t1", "t2", "t3"]) {
        assert!(e.xml.starts_with("<message"), "{}", e.xml);
        assert!(e.xml.ends_with("</message>"), "{}", e.xml);
        assert_eq!(e.xml.matches("<message").count(), 1, "{}", e.xml);
        assert!(e.xml.contains(&format!("id='{id}'")), "{}", e.xml);
        assert!(
            e.xml.contains("&amp; &lt;more&gt;"),
            "escaped as sent: {}",
            e.xml
        );
        // parses as a stanza
        let el: tokio_xmpp::minidom::Element = format!("<w xmlns='jabber:client'>{}</w>", e.xml)
            .parse()
            .unwrap();
        assert_eq!(el.children().count(), 1);
    }
    // every Out event for bob is a byte-exact part of what bob's socket received
    let wire = tap.bytes();
    let outs: Vec<_> = trace
        .iter()
        .filter(|e| e.direction == Direction::Out && e.jid.as_ref() == Some(&bob_jid))
        .collect();
    assert_eq!(outs.len(), 3);
    for e in outs {
        assert!(find(&wire, e.xml.as_bytes()).is_some(), "{}", e.xml);
    }
    s.shutdown().await;
}
