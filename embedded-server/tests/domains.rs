//! Several served domains: accounts in each, logins on each, routing between them (as if
//! federated), and errors for domains the server does not serve.

use std::time::Duration;

use tokio_xmpp::{
    jid::{BareJid, Jid},
    parsers::{
        disco::{DiscoInfoQuery, DiscoInfoResult},
        iq::Iq,
        message::{Lang, Message, MessageType},
        ping::Ping,
        presence::{Presence, Type as PresenceType},
        stanza_error::{DefinedCondition, StanzaError},
    },
    Stanza,
};
use vertebra_embedded_server::{
    testing::{connect, RawClient},
    EmbeddedServer, Error, ServerConfig, ServerHandle,
};

const T: Duration = Duration::from_secs(10);
const OTHER: &str = "other.localhost";

async fn two_domain_server() -> ServerHandle {
    EmbeddedServer::start(
        ServerConfig::new("localhost")
            .with_extra_domain(OTHER)
            .with_account("alice", "alicepw")
            .with_account("bob@other.localhost", "bobpw")
            // the same localpart in the other domain is a different account
            .with_account("alice@other.localhost", "otheralicepw"),
    )
    .await
    .expect("start")
}

async fn raw(s: &ServerHandle, bare: &str, pw: &str, res: &str) -> RawClient {
    RawClient::connect(s.addr(), bare, pw, Some(res), T)
        .await
        .unwrap_or_else(|e| panic!("login {bare}: {e}"))
}

fn error_condition(s: &Stanza) -> Option<DefinedCondition> {
    match s {
        Stanza::Iq(Iq::Error { error, .. }) => Some(error.defined_condition.clone()),
        Stanza::Message(m) if m.type_ == MessageType::Error => m
            .payloads
            .iter()
            .find(|p| p.name() == "error")
            .and_then(|e| StanzaError::try_from(e.clone()).ok())
            .map(|e| e.defined_condition),
        _ => None,
    }
}

fn iq_reply_id(s: &Stanza) -> Option<&str> {
    match s {
        Stanza::Iq(Iq::Result { id, .. }) | Stanza::Iq(Iq::Error { id, .. }) => Some(id),
        _ => None,
    }
}

#[tokio::test]
async fn config_lists_domains_and_accounts_in_each() {
    let s = two_domain_server().await;
    assert_eq!(s.domain(), "localhost");
    assert_eq!(s.domains(), ["localhost", OTHER]);
    assert_eq!(
        s.bare_jid("bob@other.localhost").unwrap().to_string(),
        "bob@other.localhost"
    );
    assert_eq!(s.bare_jid("carol").unwrap().to_string(), "carol@localhost");
    // an account in a domain that is not served is refused with a typed error
    match s.add_account("eve@nowhere.localhost", "pw") {
        Err(Error::UnknownDomain(d)) => assert_eq!(d, "nowhere.localhost"),
        other => panic!("expected UnknownDomain, got {other:?}"),
    }
    assert!(matches!(
        s.add_domain("not a domain@x"),
        Err(Error::InvalidDomain(_))
    ));
    // a domain added at runtime can take accounts and logins
    s.add_domain("third.localhost").unwrap();
    s.add_account("carol@third.localhost", "carolpw").unwrap();
    let carol = raw(&s, "carol@third.localhost", "carolpw", "c").await;
    assert_eq!(carol.jid().to_string(), "carol@third.localhost/c");
    // and an invalid extra domain in the configuration is a start error
    let r = EmbeddedServer::start(ServerConfig::new("localhost").with_extra_domain("a@b")).await;
    assert!(matches!(r, Err(Error::InvalidDomain(_))));
    s.shutdown().await;
}

#[tokio::test]
async fn logins_on_both_domains_with_per_domain_passwords() {
    let s = two_domain_server().await;
    let a = raw(&s, "alice@localhost", "alicepw", "a").await;
    let b = raw(&s, "bob@other.localhost", "bobpw", "b").await;
    let a2 = raw(&s, "alice@other.localhost", "otheralicepw", "a2").await;
    assert_eq!(a.jid().to_string(), "alice@localhost/a");
    assert_eq!(b.jid().to_string(), "bob@other.localhost/b");
    assert_eq!(a2.jid().to_string(), "alice@other.localhost/a2");
    // passwords are per account, not per localpart
    assert!(
        RawClient::connect(s.addr(), "alice@other.localhost", "alicepw", None, T)
            .await
            .is_err()
    );
    // bob exists only in the other domain
    assert!(
        RawClient::connect(s.addr(), "bob@localhost", "bobpw", None, T)
            .await
            .is_err()
    );
    // a tokio-xmpp client logs in on the extra domain too
    let (client, jid) = connect(s.addr(), "bob@other.localhost/tx", "bobpw", T)
        .await
        .expect("tokio-xmpp client on the extra domain");
    assert_eq!(jid.to_string(), "bob@other.localhost/tx");
    let _ = tokio::time::timeout(T, client.send_end()).await;
    s.shutdown().await;
}

#[tokio::test]
async fn unserved_domain_login_gets_host_unknown() {
    let s = two_domain_server().await;
    let r = RawClient::connect(s.addr(), "alice@nowhere.localhost", "alicepw", None, T).await;
    let err = r.expect_err("login to an unserved domain");
    assert!(
        err.to_string().contains("host-unknown") || err.to_string().contains("HostUnknown"),
        "{err}"
    );
    // the server is still fine
    raw(&s, "alice@localhost", "alicepw", "still").await;
    s.shutdown().await;
}

#[tokio::test]
async fn iq_round_trip_across_domains() {
    let s = two_domain_server().await;
    let mut a = raw(&s, "alice@localhost", "alicepw", "a").await;
    let mut b = raw(&s, "bob@other.localhost", "bobpw", "b").await;
    let b_jid: Jid = b.jid().clone().into();
    a.send(Iq::from_get("x1", Ping).with_to(b_jid.clone()))
        .await
        .unwrap();
    let got = b
        .recv_until(T, |st| matches!(st, Stanza::Iq(Iq::Get { .. })))
        .await
        .unwrap();
    let Stanza::Iq(Iq::Get { from, id, .. }) = got else {
        unreachable!()
    };
    assert_eq!(id, "x1");
    assert_eq!(
        from,
        Some(a.jid().clone().into()),
        "from stamped with the full JID"
    );
    b.send(Iq::empty_result(a.jid().clone().into(), id))
        .await
        .unwrap();
    let reply = a
        .recv_until(T, |st| iq_reply_id(st) == Some("x1"))
        .await
        .unwrap();
    let Stanza::Iq(Iq::Result { from, .. }) = reply else {
        panic!("expected result, got {reply:?}")
    };
    assert_eq!(from, Some(b_jid));

    // IQ to an offline full JID in the other domain: service-unavailable
    let ghost: Jid = "bob@other.localhost/gone".parse().unwrap();
    a.send(Iq::from_get("x2", Ping).with_to(ghost))
        .await
        .unwrap();
    let e = a
        .recv_until(T, |st| iq_reply_id(st) == Some("x2"))
        .await
        .unwrap();
    assert_eq!(
        error_condition(&e),
        Some(DefinedCondition::ServiceUnavailable)
    );
    // IQ to an unknown account of the other domain: service-unavailable
    let nobody: Jid = "nobody@other.localhost".parse().unwrap();
    a.send(Iq::from_get("x3", Ping).with_to(nobody))
        .await
        .unwrap();
    let e = a
        .recv_until(T, |st| iq_reply_id(st) == Some("x3"))
        .await
        .unwrap();
    assert_eq!(
        error_condition(&e),
        Some(DefinedCondition::ServiceUnavailable)
    );
    // IQ to an unserved domain: remote-server-not-found
    let remote: Jid = "bob@nowhere.localhost/b".parse().unwrap();
    a.send(Iq::from_get("x4", Ping).with_to(remote))
        .await
        .unwrap();
    let e = a
        .recv_until(T, |st| iq_reply_id(st) == Some("x4"))
        .await
        .unwrap();
    assert_eq!(
        error_condition(&e),
        Some(DefinedCondition::RemoteServerNotFound)
    );
    // ping to the bare JID of an account in the other domain is answered for it
    a.send(Iq::from_get("x5", Ping).with_to(BareJid::new("bob@other.localhost").unwrap().into()))
        .await
        .unwrap();
    let r = a
        .recv_until(T, |st| iq_reply_id(st) == Some("x5"))
        .await
        .unwrap();
    assert!(matches!(r, Stanza::Iq(Iq::Result { .. })), "{r:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn each_domain_answers_disco_and_ping_for_itself() {
    let s = two_domain_server().await;
    let mut a = raw(&s, "alice@localhost", "alicepw", "a").await;
    for (id, domain) in [("d1", "localhost"), ("d2", OTHER)] {
        let to: Jid = domain.parse().unwrap();
        a.send(Iq::from_get(id, DiscoInfoQuery { node: None }).with_to(to.clone()))
            .await
            .unwrap();
        let r = a
            .recv_until(T, |st| iq_reply_id(st) == Some(id))
            .await
            .unwrap();
        let Stanza::Iq(Iq::Result {
            from,
            payload: Some(p),
            ..
        }) = r
        else {
            panic!("disco of {domain}: {r:?}")
        };
        assert_eq!(from, Some(to.clone()));
        let info = DiscoInfoResult::try_from(p).unwrap();
        assert!(info.identities.iter().any(|i| i.category == "server"));
        let ping_id = format!("p-{id}");
        a.send(Iq::from_get(ping_id.clone(), Ping).with_to(to.clone()))
            .await
            .unwrap();
        let r = a
            .recv_until(T, |st| iq_reply_id(st) == Some(ping_id.as_str()))
            .await
            .unwrap();
        assert!(matches!(r, Stanza::Iq(Iq::Result { .. })), "{r:?}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn presence_and_messages_across_domains() {
    let s = two_domain_server().await;
    let mut a = raw(&s, "alice@localhost", "alicepw", "a").await;
    let mut b1 = raw(&s, "bob@other.localhost", "bobpw", "b1").await;
    let mut b2 = raw(&s, "bob@other.localhost", "bobpw", "b2").await;
    let bob_bare: Jid = "bob@other.localhost".parse().unwrap();
    // both of bob's resources become available (initial presence); a ping round trip to
    // the server after it shows the presence has been processed (one connection is
    // handled in order)
    for (i, b) in [&mut b1, &mut b2].into_iter().enumerate() {
        b.send(Presence::available()).await.unwrap();
        let id = format!("sync{i}");
        b.send(Iq::from_get(id.clone(), Ping).with_to(OTHER.parse().unwrap()))
            .await
            .unwrap();
        b.recv_until(T, |st| iq_reply_id(st) == Some(id.as_str()))
            .await
            .unwrap();
        assert!(s.is_available(b.jid()));
    }
    // directed presence from alice to bob's bare JID reaches both resources
    a.send(Presence::available().with_to(bob_bare.clone()))
        .await
        .unwrap();
    let a_jid: Jid = a.jid().clone().into();
    for b in [&mut b1, &mut b2] {
        let p = b
            .recv_until(T, |st| {
                matches!(st, Stanza::Presence(p) if p.from.as_ref() == Some(&a_jid)
                    && p.type_ == PresenceType::None)
            })
            .await
            .unwrap();
        assert!(matches!(p, Stanza::Presence(_)));
    }
    assert_eq!(s.directed_presence_of(a.jid()), vec![bob_bare.clone()]);
    // a chat message to bob's bare JID from the other domain is delivered
    let mut m = Message::new_with_type(MessageType::Chat, Some(bob_bare.clone()));
    m.bodies.insert(Lang(String::new()), "hello across".into());
    a.send(m).await.unwrap();
    let got = b1
        .recv_until(T, |st| matches!(st, Stanza::Message(_)))
        .await
        .unwrap();
    let Stanza::Message(got) = got else {
        unreachable!()
    };
    assert_eq!(got.from, Some(a_jid.clone()));
    // a message to an unserved domain bounces with remote-server-not-found
    let mut m = Message::new_with_type(
        MessageType::Chat,
        Some("x@nowhere.localhost".parse().unwrap()),
    );
    m.bodies.insert(Lang(String::new()), "lost".into());
    a.send(m).await.unwrap();
    let bounce = a
        .recv_until(T, |st| matches!(st, Stanza::Message(_)))
        .await
        .unwrap();
    assert_eq!(
        error_condition(&bounce),
        Some(DefinedCondition::RemoteServerNotFound)
    );
    // alice vanishes: both of bob's resources (other domain) get her unavailable presence
    a.vanish();
    for b in [&mut b1, &mut b2] {
        b.recv_until(T, |st| {
            matches!(st, Stanza::Presence(p) if p.from.as_ref() == Some(&a_jid)
                && p.type_ == PresenceType::Unavailable)
        })
        .await
        .unwrap();
    }
    s.shutdown().await;
}
