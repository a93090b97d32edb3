//! Every fault hook, the injection API and the wire trace, on the embedded server.

use std::time::{Duration, Instant};

use tokio_xmpp::{
    jid::Jid,
    minidom::Element,
    parsers::{
        iq::Iq,
        message::{Id, Lang, Message, MessageType},
        presence::{Presence, Type as PresenceType},
    },
    Stanza,
};
use vertebra_embedded_server::{
    testing::RawClient, Direction, EmbeddedServer, FaultAction, FaultRule, JidPattern,
    ServerConfig, ServerHandle, SplitSpec, StanzaKind,
};

const T: Duration = Duration::from_secs(10);

async fn start(config: ServerConfig) -> ServerHandle {
    let s = EmbeddedServer::start(config).await.expect("start");
    for u in ["alice", "bob", "carol"] {
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

fn msg(to: &Jid, id: &str, body: &str) -> Message {
    let mut m = Message::new_with_type(MessageType::Chat, Some(to.clone()));
    m.id = Some(Id(id.into()));
    m.bodies.insert(Lang(String::new()), body.into());
    m
}

fn msg_id(s: &Stanza) -> Option<&str> {
    match s {
        Stanza::Message(m) => m.id.as_ref().map(|i| i.0.as_str()),
        _ => None,
    }
}

fn body(s: &Stanza) -> Option<&str> {
    match s {
        Stanza::Message(m) => m.bodies.values().next().map(String::as_str),
        _ => None,
    }
}

fn id_is(id: &'static str) -> impl Fn(&Element) -> bool + Send + Sync + 'static {
    move |e: &Element| e.attr("id") == Some(id)
}

/// Receives the next `n` messages (ignores other stanzas) and returns their ids.
async fn next_message_ids(c: &mut RawClient, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let st = c
            .recv_until(T, |s| matches!(s, Stanza::Message(_)))
            .await
            .expect("message");
        ids.push(msg_id(&st).unwrap_or("").to_owned());
    }
    ids
}

async fn pair(s: &ServerHandle) -> (RawClient, RawClient, Jid) {
    let alice = raw(s, "alice", "a").await;
    let bob = raw(s, "bob", "b").await;
    let bob_jid: Jid = bob.jid().clone().into();
    (alice, bob, bob_jid)
}

#[tokio::test]
async fn drop_rule_drops_only_matching_stanzas_and_is_traced() {
    let s = start(ServerConfig::default()).await;
    let (mut alice, mut bob, bob_jid) = pair(&s).await;
    let rule = s.faults().add(
        FaultRule::new(FaultAction::Drop)
            .from(JidPattern::Bare(s.bare_jid("alice").unwrap()))
            .to(JidPattern::from(bob.jid()))
            .kind(StanzaKind::Message)
            .when(id_is("m1")),
    );
    alice.send(msg(&bob_jid, "m1", "dropped")).await.unwrap();
    alice.send(msg(&bob_jid, "m2", "kept")).await.unwrap();
    assert_eq!(next_message_ids(&mut bob, 1).await, ["m2"]);
    assert_eq!(s.faults().counts(rule), Some((1, 1)));
    let trace = s.trace().snapshot();
    let dropped: Vec<_> = trace
        .iter()
        .filter(|e| e.direction == Direction::Dropped)
        .collect();
    assert_eq!(dropped.len(), 1);
    assert!(dropped[0].xml.contains("dropped"));
    assert_eq!(dropped[0].note.as_deref(), Some("drop"));
}

#[tokio::test]
async fn delay_rule_lets_later_stanzas_overtake() {
    let s = start(ServerConfig::default()).await;
    let (mut alice, mut bob, bob_jid) = pair(&s).await;
    s.faults().add(
        FaultRule::new(FaultAction::Delay(Duration::from_millis(150)))
            .kind(StanzaKind::Message)
            .when(id_is("slow")),
    );
    let t0 = Instant::now();
    alice.send(msg(&bob_jid, "slow", "1")).await.unwrap();
    alice.send(msg(&bob_jid, "fast", "2")).await.unwrap();
    assert_eq!(next_message_ids(&mut bob, 2).await, ["fast", "slow"]);
    assert!(t0.elapsed() >= Duration::from_millis(150));
    let notes: Vec<_> = s
        .trace()
        .snapshot()
        .into_iter()
        .filter_map(|e| e.note)
        .collect();
    assert!(notes.iter().any(|n| n == "delay 150ms"), "{notes:?}");
}

#[tokio::test]
async fn duplicate_rule_delivers_extra_copies() {
    let s = start(ServerConfig::default()).await;
    let (mut alice, mut bob, bob_jid) = pair(&s).await;
    s.faults()
        .add(FaultRule::new(FaultAction::Duplicate(2)).when(id_is("dup")));
    alice.send(msg(&bob_jid, "dup", "x")).await.unwrap();
    alice.send(msg(&bob_jid, "end", "y")).await.unwrap();
    assert_eq!(
        next_message_ids(&mut bob, 4).await,
        ["dup", "dup", "dup", "end"]
    );
}

#[tokio::test]
async fn reorder_rule_swaps_consecutive_matches() {
    let s = start(ServerConfig::default()).await;
    let (mut alice, mut bob, bob_jid) = pair(&s).await;
    s.faults().add(
        FaultRule::new(FaultAction::Reorder)
            .kind(StanzaKind::Message)
            .from(JidPattern::from(alice.jid()))
            .times(2),
    );
    for id in ["r1", "r2", "r3", "r4"] {
        alice.send(msg(&bob_jid, id, id)).await.unwrap();
    }
    // r1 held, r2 overtakes and releases r1; the rule fired twice and stops: r3, r4 in order.
    assert_eq!(
        next_message_ids(&mut bob, 4).await,
        ["r2", "r1", "r3", "r4"]
    );
}

#[tokio::test]
async fn reorder_hold_released_on_rule_removal() {
    let s = start(ServerConfig::default()).await;
    let (mut alice, mut bob, bob_jid) = pair(&s).await;
    let id = s
        .faults()
        .add(FaultRule::new(FaultAction::Reorder).when(id_is("held")));
    alice.send(msg(&bob_jid, "held", "h")).await.unwrap();
    alice.send(msg(&bob_jid, "other", "o")).await.unwrap();
    assert_eq!(next_message_ids(&mut bob, 1).await, ["other"]);
    s.faults().remove(id);
    assert_eq!(next_message_ids(&mut bob, 1).await, ["held"]);
    // release_held does the same without removing the rule
    let id = s
        .faults()
        .add(FaultRule::new(FaultAction::Reorder).when(id_is("held2")));
    alice.send(msg(&bob_jid, "held2", "h")).await.unwrap();
    // make sure it was routed (and held) before releasing: a ping round trip on alice
    let ping =
        Iq::from_get("sync", tokio_xmpp::parsers::ping::Ping).with_to(s.domain().parse().unwrap());
    alice.send(ping).await.unwrap();
    alice
        .recv_until(T, |s| matches!(s, Stanza::Iq(_)))
        .await
        .unwrap();
    assert_eq!(s.faults().counts(id), Some((1, 1)));
    s.faults().release_held();
    assert_eq!(next_message_ids(&mut bob, 1).await, ["held2"]);
}

#[tokio::test]
async fn rewrite_rule_changes_the_stanza() {
    let s = start(ServerConfig::default()).await;
    let (mut alice, mut bob, bob_jid) = pair(&s).await;
    s.faults().add(
        FaultRule::new(FaultAction::Rewrite(std::sync::Arc::new(|el: Element| {
            let mut m = Message::try_from(el).ok()?;
            m.bodies.clear();
            m.bodies.insert(Lang(String::new()), "rewritten".into());
            m.id = Some(Id("rw".into()));
            Some(m.into())
        })))
        .when(id_is("orig")),
    );
    alice.send(msg(&bob_jid, "orig", "original")).await.unwrap();
    let st = bob
        .recv_until(T, |s| matches!(s, Stanza::Message(_)))
        .await
        .unwrap();
    assert_eq!(msg_id(&st), Some("rw"));
    assert_eq!(body(&st), Some("rewritten"));
}

#[tokio::test]
async fn cut_sender_at_nth_matching_stanza() {
    let s = start(ServerConfig::default()).await;
    let (mut alice, mut bob, bob_jid) = pair(&s).await;
    let alice_full = alice.jid().clone();
    // alice holds directed presence with bob, so bob sees her go.
    alice
        .send(Presence::available().with_to(bob_jid.clone()))
        .await
        .unwrap();
    let rule = s.faults().add(
        FaultRule::new(FaultAction::CutSender)
            .from(JidPattern::from(&alice_full))
            .kind(StanzaKind::Message)
            .skip(2)
            .times(1),
    );
    for id in ["c1", "c2", "c3", "c4"] {
        let _ = alice.send(msg(&bob_jid, id, id)).await;
    }
    assert_eq!(next_message_ids(&mut bob, 2).await, ["c1", "c2"]);
    s.wait_offline(&alice_full, T).await.unwrap();
    let st = bob
        .recv_until(T, |s| matches!(s, Stanza::Presence(_)))
        .await
        .unwrap();
    match st {
        Stanza::Presence(p) => {
            assert_eq!(p.type_, PresenceType::Unavailable);
            assert_eq!(p.from, Some(alice_full.clone().into()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.faults().counts(rule), Some((3, 1)));
    // alice's connection is gone: her stream ends.
    let ended = alice.recv(T).await;
    assert!(matches!(ended, Ok(None) | Err(_)), "{ended:?}");
}

#[tokio::test]
async fn cut_recipient() {
    let s = start(ServerConfig::default()).await;
    let (mut alice, mut bob, bob_jid) = pair(&s).await;
    let bob_full = bob.jid().clone();
    s.faults().add(
        FaultRule::new(FaultAction::CutRecipient)
            .to(JidPattern::from(&bob_full))
            .when(id_is("kill")),
    );
    alice.send(msg(&bob_jid, "kill", "x")).await.unwrap();
    s.wait_offline(&bob_full, T).await.unwrap();
    let ended = bob.recv(T).await;
    assert!(matches!(ended, Ok(None) | Err(_)), "{ended:?}");
    // an IQ to bob now bounces.
    let iq = Iq::Get {
        from: None,
        to: Some(bob_jid.clone()),
        id: "after-cut".into(),
        payload: "<x xmlns='urn:test'/>".parse().unwrap(),
    };
    alice.send(iq).await.unwrap();
    let st = alice
        .recv_until(T, |s| matches!(s, Stanza::Iq(_)))
        .await
        .unwrap();
    assert!(matches!(st, Stanza::Iq(Iq::Error { .. })), "{st:?}");
}

#[tokio::test]
async fn split_writes_fixed_and_random_still_parse() {
    for spec in [SplitSpec::Fixed(1), SplitSpec::Random { max: 7 }] {
        let s = start(ServerConfig::default()).await;
        let (mut alice, mut bob, bob_jid) = pair(&s).await;
        s.faults().split_writes(JidPattern::from(bob.jid()), spec);
        let before = s.socket_writes(bob.jid()).unwrap();
        let long = "ü€x".repeat(300);
        for i in 0..5 {
            alice
                .send(msg(&bob_jid, &format!("s{i}"), &long))
                .await
                .unwrap();
        }
        for i in 0..5 {
            let st = bob
                .recv_until(T, |s| matches!(s, Stanza::Message(_)))
                .await
                .unwrap();
            assert_eq!(msg_id(&st), Some(format!("s{i}").as_str()));
            assert_eq!(body(&st), Some(long.as_str()), "{spec:?}");
        }
        // 5 messages of > 1800 bytes each: at least 5 * 1800 / 7 separate socket writes
        let writes = s.socket_writes(bob.jid()).unwrap() - before;
        assert!(writes >= 5 * 1800 / 7, "{spec:?}: only {writes} writes");
        // a freshly bound connection matching the pattern is split too
        s.faults().split_writes(
            JidPattern::Bare(s.bare_jid("carol").unwrap()),
            SplitSpec::Fixed(3),
        );
        let mut carol = raw(&s, "carol", "c").await;
        let carol_jid: Jid = carol.jid().clone().into();
        alice
            .send(msg(&carol_jid, "to-carol", &long))
            .await
            .unwrap();
        let st = carol
            .recv_until(T, |s| matches!(s, Stanza::Message(_)))
            .await
            .unwrap();
        assert_eq!(body(&st), Some(long.as_str()));
    }
}

#[tokio::test]
async fn inject_sends_any_from() {
    let s = start(ServerConfig::default()).await;
    let mut bob = raw(&s, "bob", "b").await;
    let spoofed: Element = format!(
        "<message xmlns='jabber:client' from='mallory@evil.example/x' to='{}' id='spoof'>\
         <body>hi</body></message>",
        bob.jid()
    )
    .parse()
    .unwrap();
    assert_eq!(s.inject(spoofed).unwrap(), 1);
    let st = bob
        .recv_until(T, |s| matches!(s, Stanza::Message(_)))
        .await
        .unwrap();
    let Stanza::Message(m) = st else {
        unreachable!()
    };
    assert_eq!(
        m.from,
        Some("mallory@evil.example/x".parse::<Jid>().unwrap())
    );
    // bare JID: every session
    let mut bob2 = raw(&s, "bob", "b2").await;
    let to_bare: Element = format!(
        "<message xmlns='jabber:client' from='{}' to='bob@{}' id='b'/>",
        s.domain(),
        s.domain()
    )
    .parse()
    .unwrap();
    assert_eq!(s.inject(to_bare).unwrap(), 2);
    for c in [&mut bob, &mut bob2] {
        let st = c
            .recv_until(T, |s| matches!(s, Stanza::Message(_)))
            .await
            .unwrap();
        assert_eq!(msg_id(&st), Some("b"));
    }
    // nobody there
    let nowhere: Element = format!(
        "<message xmlns='jabber:client' to='carol@{}/none'/>",
        s.domain()
    )
    .parse()
    .unwrap();
    assert!(s.inject(nowhere).is_err());
    let notes: Vec<_> = s
        .trace()
        .snapshot()
        .into_iter()
        .filter(|e| e.note.as_deref() == Some("inject"))
        .collect();
    assert_eq!(notes.len(), 3);
}

/// Runs 40 messages through a probability-0.5 drop rule; returns the delivered ids.
async fn probabilistic_run(seed: u64) -> Vec<String> {
    let s = start(ServerConfig::default().with_seed(seed)).await;
    let (mut alice, mut bob, bob_jid) = pair(&s).await;
    s.faults().add(
        FaultRule::new(FaultAction::Drop)
            .kind(StanzaKind::Message)
            .probability(0.5)
            .when(|e| e.attr("id") != Some("end")),
    );
    for i in 0..40 {
        alice
            .send(msg(&bob_jid, &format!("p{i}"), "x"))
            .await
            .unwrap();
    }
    alice.send(msg(&bob_jid, "end", "x")).await.unwrap();
    let mut got = Vec::new();
    loop {
        let st = bob
            .recv_until(T, |s| matches!(s, Stanza::Message(_)))
            .await
            .unwrap();
        let id = msg_id(&st).unwrap().to_owned();
        if id == "end" {
            return got;
        }
        got.push(id);
    }
}

#[tokio::test]
async fn faults_are_deterministic_given_a_seed() {
    let a = probabilistic_run(42).await;
    let b = probabilistic_run(42).await;
    let c = probabilistic_run(7).await;
    assert_eq!(a, b);
    assert!(a.len() > 5 && a.len() < 35, "{}", a.len());
    assert_ne!(a, c);
}

#[tokio::test]
async fn trace_records_in_and_out_with_connection_and_jid() {
    let s = start(ServerConfig::default()).await;
    let mut live = s.trace().subscribe();
    let (mut alice, mut bob, bob_jid) = pair(&s).await;
    alice.send(msg(&bob_jid, "t1", "traced")).await.unwrap();
    next_message_ids(&mut bob, 1).await;
    let events = s.trace().snapshot();
    let inbound = events
        .iter()
        .find(|e| e.direction == Direction::In && e.xml.contains("traced"))
        .expect("in event");
    let outbound = events
        .iter()
        .find(|e| e.direction == Direction::Out && e.xml.contains("traced"))
        .expect("out event");
    assert_eq!(inbound.jid, Some(alice.jid().clone().into()));
    assert_eq!(outbound.jid, Some(bob.jid().clone().into()));
    assert_ne!(inbound.conn, outbound.conn);
    assert!(inbound.seq < outbound.seq);
    assert!(inbound.elapsed <= outbound.elapsed);
    assert!(
        outbound.xml.contains(&format!("from=\"{}\"", alice.jid()))
            || outbound.xml.contains(&format!("from='{}'", alice.jid()))
    );
    // the live subscription saw the same stanza
    let mut seen = false;
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(500), live.recv()).await {
        if ev.xml.contains("traced") && ev.direction == Direction::Out {
            seen = true;
            break;
        }
    }
    assert!(seen);
}

#[tokio::test]
async fn trace_memory_is_bounded() {
    let cfg = ServerConfig {
        trace_capacity: 10,
        ..Default::default()
    };
    let s = start(cfg).await;
    let (mut alice, mut bob, bob_jid) = pair(&s).await;
    for i in 0..30 {
        alice
            .send(msg(&bob_jid, &format!("b{i}"), "x"))
            .await
            .unwrap();
    }
    next_message_ids(&mut bob, 30).await;
    let snap = s.trace().snapshot();
    assert_eq!(snap.len(), 10);
    assert!(s.trace().dropped() >= 50);
    // long stanzas are cut in the trace
    let long = "L".repeat(20_000);
    alice.send(msg(&bob_jid, "long", &long)).await.unwrap();
    next_message_ids(&mut bob, 1).await;
    let ev = s
        .trace()
        .snapshot()
        .into_iter()
        .rev()
        .find(|e| e.direction == Direction::Out)
        .unwrap();
    assert!(ev.xml.len() < 9 * 1024, "{}", ev.xml.len());
    assert!(ev.xml.contains("…[truncated"));
    let snap = s.trace().snapshot();
    // the kept events are the most recent ones, in order
    assert!(snap.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(snap.iter().any(|e| e.xml.contains("b29")));
}
