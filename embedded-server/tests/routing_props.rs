//! Property tests of the sans-IO routing rules ([`vertebra_embedded_server::router`]),
//! checked against a small model of who is online, available and holding directed presence.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use tokio_xmpp::{
    jid::{BareJid, FullJid, Jid},
    parsers::{
        iq::Iq,
        message::{Message, MessageType},
        presence::{Presence, Type as PresenceType},
        stanza_error::{DefinedCondition, ErrorType},
    },
    Stanza,
};
use vertebra_embedded_server::router::{BindOutcome, ConflictPolicy, Delivery, Router};

const USERS: [&str; 3] = ["u0", "u1", "u2"];
const RESOURCES: [&str; 2] = ["r0", "r1"];

fn full(u: usize, r: usize) -> FullJid {
    FullJid::new(&format!("{}@d.test/{}", USERS[u], RESOURCES[r])).unwrap()
}
fn bare(u: usize) -> BareJid {
    BareJid::new(&format!("{}@d.test", USERS[u])).unwrap()
}

/// Addressable targets: full JIDs, bare JIDs of known users, an unknown user, the domain.
#[derive(Debug, Clone)]
enum To {
    Full(usize, usize),
    Bare(usize),
    Unknown,
    Domain,
}

impl To {
    fn jid(&self) -> Jid {
        match self {
            To::Full(u, r) => full(*u, *r).into(),
            To::Bare(u) => bare(*u).into(),
            To::Unknown => Jid::new("ghost@d.test/x").unwrap(),
            To::Domain => Jid::new("d.test").unwrap(),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Bind(usize, usize),
    Unbind(usize, usize),
    Available(usize, usize, i8),
    Unavailable(usize, usize),
    Directed(usize, usize, To, bool),
    IqGet(usize, usize, To),
    Chat(usize, usize, To),
}

fn to_strategy() -> impl Strategy<Value = To> {
    prop_oneof![
        (0..3usize, 0..2usize).prop_map(|(u, r)| To::Full(u, r)),
        (0..3usize).prop_map(To::Bare),
        Just(To::Unknown),
        Just(To::Domain),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let ur = (0..3usize, 0..2usize);
    prop_oneof![
        3 => ur.clone().prop_map(|(u, r)| Op::Bind(u, r)),
        1 => ur.clone().prop_map(|(u, r)| Op::Unbind(u, r)),
        2 => (ur.clone(), -2i8..3).prop_map(|((u, r), p)| Op::Available(u, r, p)),
        1 => ur.clone().prop_map(|(u, r)| Op::Unavailable(u, r)),
        2 => (ur.clone(), to_strategy(), any::<bool>()).prop_map(|((u, r), t, a)| Op::Directed(u, r, t, a)),
        3 => (ur.clone(), to_strategy()).prop_map(|((u, r), t)| Op::IqGet(u, r, t)),
        2 => (ur, to_strategy()).prop_map(|((u, r), t)| Op::Chat(u, r, t)),
    ]
}

#[derive(Default, Debug)]
struct Model {
    /// bound sessions → (available, priority)
    online: BTreeMap<FullJid, (bool, i8)>,
    /// directed presence targets per session
    directed: BTreeMap<FullJid, BTreeSet<Jid>>,
}

impl Model {
    fn available_of(&self, b: &BareJid, non_negative: bool) -> BTreeSet<FullJid> {
        self.online
            .iter()
            .filter(|(f, (a, p))| f.to_bare() == *b && *a && (!non_negative || *p >= 0))
            .map(|(f, _)| f.clone())
            .collect()
    }
    fn presence_targets(&self, to: &Jid) -> BTreeSet<FullJid> {
        match to.try_as_full() {
            Ok(f) if self.online.contains_key(f) => [f.clone()].into(),
            Ok(_) => BTreeSet::new(),
            Err(b) if b.node().is_some() => self.available_of(b, false),
            Err(_) => BTreeSet::new(),
        }
    }
}

fn recipients(ds: &[Delivery]) -> BTreeSet<FullJid> {
    ds.iter().map(|d| d.to.clone()).collect()
}

fn error_of(s: &Stanza) -> Option<(ErrorType, DefinedCondition)> {
    match s {
        Stanza::Iq(Iq::Error { error, .. }) => {
            Some((error.type_.clone(), error.defined_condition.clone()))
        }
        _ => None,
    }
}

fn from_of(s: &Stanza) -> Option<Jid> {
    match s {
        Stanza::Iq(i) => i.from().cloned(),
        Stanza::Message(m) => m.from.clone(),
        Stanza::Presence(p) => p.from.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn routing_matches_the_model(ops in proptest::collection::vec(op_strategy(), 1..60)) {
        let mut router = Router::new(BareJid::new("d.test").unwrap());
        for u in USERS {
            router.add_account(u);
        }
        let mut m = Model::default();
        let mut next_conn = 1u64;
        for op in ops {
            match op {
                Op::Bind(u, r) => {
                    let f = full(u, r);
                    let was_online = m.online.contains_key(&f);
                    let expected_kick: BTreeSet<FullJid> = if was_online {
                        m.directed.get(&f).into_iter().flatten()
                            .flat_map(|t| m.presence_targets(t))
                            .filter(|x| *x != f)
                            .collect()
                    } else { BTreeSet::new() };
                    next_conn += 1;
                    match router.bind(USERS[u], Some(RESOURCES[r]), "gen", next_conn, ConflictPolicy::KickOld) {
                        BindOutcome::Bound { jid, kicked } => {
                            prop_assert_eq!(&jid, &f);
                            prop_assert_eq!(kicked.is_some(), was_online);
                            if let Some((_, ds)) = kicked {
                                // every directed-presence holder (still online) hears unavailable
                                let got: BTreeSet<FullJid> = ds.iter()
                                    .filter(|d| d.to != f)
                                    .map(|d| d.to.clone()).collect();
                                prop_assert!(expected_kick.is_subset(&got) || expected_kick == got);
                            }
                        }
                        other => prop_assert!(false, "bind failed: {:?}", other),
                    }
                    m.online.insert(f.clone(), (false, 0));
                    m.directed.remove(&f);
                }
                Op::Unbind(u, r) => {
                    let f = full(u, r);
                    let Some(conn) = router.conn_of(&f) else {
                        prop_assert!(!m.online.contains_key(&f));
                        continue;
                    };
                    let (was_avail, _) = m.online.remove(&f).unwrap();
                    let targets = m.directed.remove(&f).unwrap_or_default();
                    let ds = router.unbind(&f, conn);
                    let mut expected: BTreeSet<FullJid> = targets.iter()
                        .flat_map(|t| m.presence_targets(t)).collect();
                    if was_avail {
                        expected.extend(m.available_of(&f.to_bare(), false));
                    }
                    prop_assert_eq!(recipients(&ds), expected);
                    for d in &ds {
                        match &d.stanza {
                            Stanza::Presence(p) => {
                                prop_assert_eq!(&p.type_, &PresenceType::Unavailable);
                                prop_assert_eq!(p.from.clone(), Some(Jid::from(f.clone())));
                            }
                            other => prop_assert!(false, "unexpected {:?}", other),
                        }
                    }
                    prop_assert!(router.conn_of(&f).is_none());
                }
                Op::Available(u, r, prio) => {
                    let f = full(u, r);
                    let p = Presence::available().with_priority(prio);
                    let ds = router.route(&f, p.into());
                    if let Some(e) = m.online.get_mut(&f) {
                        *e = (true, prio);
                        let expected: BTreeSet<FullJid> = m.available_of(&f.to_bare(), false)
                            .into_iter().filter(|x| *x != f).collect();
                        prop_assert_eq!(recipients(&ds), expected);
                    } else {
                        prop_assert!(ds.is_empty());
                    }
                }
                Op::Unavailable(u, r) => {
                    let f = full(u, r);
                    let ds = router.route(&f, Presence::unavailable().into());
                    if m.online.contains_key(&f) {
                        m.online.insert(f.clone(), (false, 0));
                        let targets = m.directed.remove(&f).unwrap_or_default();
                        let mut expected: BTreeSet<FullJid> = targets.iter()
                            .flat_map(|t| m.presence_targets(t)).collect();
                        expected.extend(m.available_of(&f.to_bare(), false).into_iter().filter(|x| *x != f));
                        prop_assert_eq!(recipients(&ds), expected);
                    } else {
                        prop_assert!(ds.is_empty());
                    }
                }
                Op::Directed(u, r, to, available) => {
                    let f = full(u, r);
                    if !m.online.contains_key(&f) { continue; }
                    let to_jid = to.jid();
                    let p = if available { Presence::available() } else { Presence::unavailable() }
                        .with_to(to_jid.clone());
                    let ds = router.route(&f, p.into());
                    prop_assert_eq!(recipients(&ds), m.presence_targets(&to_jid));
                    let set = m.directed.entry(f.clone()).or_default();
                    if matches!(to, To::Full(..) | To::Bare(_)) {
                        if available { set.insert(to_jid); } else { set.remove(&to_jid); }
                    }
                    prop_assert_eq!(
                        router.directed_presence_of(&f).into_iter().collect::<BTreeSet<_>>(),
                        m.directed.get(&f).cloned().unwrap_or_default()
                    );
                }
                Op::IqGet(u, r, to) => {
                    let f = full(u, r);
                    if !m.online.contains_key(&f) { continue; }
                    let iq = Iq::Get {
                        from: Some("spoofed@elsewhere/x".parse().unwrap()),
                        to: Some(to.jid()),
                        id: "q".into(),
                        payload: "<custom xmlns='urn:x'/>".parse().unwrap(),
                    };
                    let ds = router.route(&f, iq.into());
                    prop_assert_eq!(ds.len(), 1, "exactly one delivery for an IQ get");
                    let d = &ds[0];
                    match &to {
                        To::Full(tu, tr) if m.online.contains_key(&full(*tu, *tr)) => {
                            prop_assert_eq!(&d.to, &full(*tu, *tr));
                            // forwarded with the sender's real JID, not the spoofed one
                            prop_assert_eq!(from_of(&d.stanza), Some(Jid::from(f.clone())));
                            prop_assert!(error_of(&d.stanza).is_none());
                        }
                        _ => {
                            // absent full JID, bare JID (unknown payload), unknown user, domain:
                            // service-unavailable back to the sender
                            prop_assert_eq!(&d.to, &f);
                            prop_assert_eq!(error_of(&d.stanza),
                                Some((ErrorType::Cancel, DefinedCondition::ServiceUnavailable)));
                        }
                    }
                }
                Op::Chat(u, r, to) => {
                    let f = full(u, r);
                    if !m.online.contains_key(&f) { continue; }
                    let msg = Message::new_with_type(MessageType::Chat, Some(to.jid()));
                    let ds = router.route(&f, msg.into());
                    for d in &ds {
                        prop_assert!(router.conn_of(&d.to).is_some(), "delivery to offline {}", d.to);
                    }
                    let target_bare = match &to {
                        To::Full(tu, tr) if m.online.contains_key(&full(*tu, *tr)) => {
                            prop_assert_eq!(recipients(&ds), [full(*tu, *tr)].into());
                            continue;
                        }
                        To::Full(tu, _) | To::Bare(tu) => bare(*tu),
                        To::Unknown => {
                            prop_assert_eq!(recipients(&ds), [f.clone()].into());
                            continue;
                        }
                        To::Domain => { prop_assert!(ds.is_empty()); continue; }
                    };
                    let cands = m.available_of(&target_bare, true);
                    let max = cands.iter().map(|c| m.online[c].1).max();
                    let expected: BTreeSet<FullJid> = cands.into_iter()
                        .filter(|c| Some(m.online[c].1) == max).collect();
                    if expected.is_empty() {
                        prop_assert_eq!(recipients(&ds), [f.clone()].into(), "bounce to sender");
                    } else {
                        prop_assert_eq!(recipients(&ds), expected);
                        for d in &ds {
                            prop_assert_eq!(from_of(&d.stanza), Some(Jid::from(f.clone())));
                        }
                    }
                }
            }
            // invariant: router's sessions == model's
            prop_assert_eq!(
                router.all_sessions().into_iter().collect::<BTreeSet<_>>(),
                m.online.keys().cloned().collect::<BTreeSet<_>>()
            );
        }
    }
}
