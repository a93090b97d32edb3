//! Checking functions shared by the cargo-fuzz targets (`fuzz/`) and the normal test suite
//! (which replays the committed corpus through the same functions). Each takes arbitrary bytes
//! and panics when an oracle is violated; malformed input must only ever produce typed errors.
//!
//! * [`check_stanza`]: bytes → element → Vertebra payload; on success, encode → bytes → decode
//!   must give the same value, and encoding must be canonical (a fixed point).
//! * [`check_value`]: the same for one typed value, plus the JSON mapping round trip.
//! * [`check_codec`]: the streaming byte codec against the tree codec (differential).
//! * [`check_requester`], [`check_responder`]: the state machines driven by an event sequence
//!   decoded from the bytes, checked against the protocol rules after every step.
//! * [`check_dispatch`]: the directory driven by events, checked against a naive model.

use std::collections::{BTreeMap, HashMap, HashSet};

use jid::Jid;
use minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType as StanzaErrorType, StanzaError};

use crate::dispatch::Directory;
use crate::machine::{IqBody, Millis, OutIq, DEADLINE_GRACE_MS};
use crate::payloads::{AdvertiseRequest, DiscoverRequest};
use crate::requester::{CallEvent, Output, Requester};
use crate::resource::{Resource, ResourceScope};
use crate::responder::{Decision, Responder, ResponderConfig, ResponderEvent, Route};
use crate::stanza::{Ack, Data, Final, Load, Nack, Op, OpError, OpResult, VertebraPayload};
use crate::token::{OpToken, RequestToken, Token};
use crate::value::{Args, Value};
use crate::xml::{parse_element, to_string};
use crate::{Condition, ErrorType};

/// A byte cursor that yields zeros once exhausted.
struct Bytes<'a> {
    d: &'a [u8],
    i: usize,
}

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.d.get(self.i).copied().unwrap_or(0);
        self.i += 1;
        b
    }
    fn more(&self) -> bool {
        self.i < self.d.len()
    }
}

fn encode_bytes(el: &Element) -> Option<String> {
    to_string(el).ok()
}

/// Stanza decode with a round-trip oracle.
pub fn check_stanza(data: &[u8]) {
    let Ok(el) = parse_element(data, Some(crate::xml::JABBER_CLIENT)) else {
        return;
    };
    // Whole IQs are accepted too: look at the single child.
    let payload = if el.name() == "iq" {
        match el.children().next() {
            Some(c) => c.clone(),
            None => return,
        }
    } else {
        el
    };
    if let Ok(p) = VertebraPayload::from_element(&payload) {
        let enc = p.to_element();
        let Some(s1) = encode_bytes(&enc) else {
            // Only text XML cannot carry may fail to serialize; decoded text came from XML.
            panic!("a decoded payload failed to serialize: {p:?}");
        };
        let back = parse_element(s1.as_bytes(), None).expect("own output parses");
        let p2 = VertebraPayload::from_element(&back).expect("own output decodes");
        assert_eq!(p, p2, "decode(encode(x)) != x");
        let s2 = encode_bytes(&p2.to_element()).expect("serializes");
        assert_eq!(s1, s2, "encoding is not canonical");
    }
    if let Ok(r) = OpResult::from_element(&payload) {
        let back = OpResult::from_element(&r.to_element()).expect("own op result decodes");
        assert_eq!(r, back);
    }
    let _ = Op::decode(&payload);
}

/// Differential oracle for the byte codec ([`crate::codec`]): the streaming decoder (with its
/// tree fallback) and the tree decoder give the same `Ok` value or the same error rule for
/// payloads, ops (also the same token / version usability), op results and values; whatever the
/// streaming decoder accepts on its own the tree decoder accepts identically; both encoders write
/// the same bytes for every decoded value, and that output stays on the streaming path.
pub fn check_codec(data: &[u8]) {
    use crate::codec::*;
    let tree = decode_payload_tree(data);
    match (decode_payload(data), &tree) {
        (Ok(a), Ok(b)) => assert_eq!(&a, b, "payload values differ"),
        (Err(a), Err(b)) => assert_eq!(a.rule, b.rule, "payload error rules differ"),
        (a, b) => panic!("payload paths disagree: fast {a:?} tree {b:?}"),
    }
    if let Some(p) = decode_payload_fast(data) {
        assert_eq!(
            Some(&p),
            tree.as_ref().ok(),
            "streaming decoder accepted alone"
        );
    }
    match (decode_op(data), decode_op_tree(data)) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "op values differ"),
        (Err(a), Err(b)) => {
            assert_eq!(a.error.rule, b.error.rule, "op error rules differ");
            assert_eq!(a.token, b.token, "op token usability differs");
            assert_eq!(a.version, b.version, "op version differs");
        }
        (a, b) => panic!("op paths disagree: fast {a:?} tree {b:?}"),
    }
    match (decode_op_result(data), decode_op_result_tree(data)) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "op results differ"),
        (Err(a), Err(b)) => assert_eq!(a.rule, b.rule, "op-result error rules differ"),
        (a, b) => panic!("op-result paths disagree: fast {a:?} tree {b:?}"),
    }
    let vtree = decode_value_tree(data);
    match (decode_value(data), &vtree) {
        (Ok(a), Ok(b)) => assert_eq!(&a, b, "values differ"),
        (Err(a), Err(b)) => assert_eq!(a.rule, b.rule, "value error rules differ"),
        (a, b) => panic!("value paths disagree: fast {a:?} tree {b:?}"),
    }
    if let Ok(p) = tree {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_payload(&p, &mut a).expect("decoded payloads encode");
        encode_payload_tree(&p, &mut b).expect("decoded payloads encode (tree)");
        assert_eq!(a, b, "encoders differ");
        assert_eq!(
            decode_payload_fast(&a).as_ref(),
            Some(&p),
            "own output not decoded on the streaming path"
        );
    }
    if let Ok(v) = vtree {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_value(&v, &mut a).expect("decoded values encode");
        encode_value_tree(&v, &mut b).expect("decoded values encode (tree)");
        assert_eq!(a, b, "value encoders differ");
        assert_eq!(decode_value_fast(&a).as_ref(), Some(&v));
    }
}

/// Value decode with XML and JSON round-trip oracles.
pub fn check_value(data: &[u8]) {
    let Ok(el) = parse_element(data, Some(crate::NS)) else {
        return;
    };
    let Ok(v) = Value::from_element(&el) else {
        return;
    };
    v.validate().expect("decoded values are valid");
    let s1 = encode_bytes(&v.to_element()).expect("decoded values serialize");
    let back = parse_element(s1.as_bytes(), None).expect("own output parses");
    let v2 = Value::from_element(&back).expect("own output decodes");
    assert_eq!(v, v2, "decode(encode(x)) != x");
    assert_eq!(s1, encode_bytes(&v2.to_element()).expect("serializes"));
    let j = serde_json::to_string(&v).expect("json");
    let v3: Value = serde_json::from_str(&j).expect("own json decodes");
    assert_eq!(v, v3, "json round trip");
}

fn jid(s: &str) -> Jid {
    Jid::new(s).expect("fixed test JIDs parse")
}

fn seg(n: u8) -> Token {
    Token::parse(&format!("{:032x}", u128::from(n) + 0xabc)).expect("hex")
}

fn small_args(b: &mut Bytes<'_>) -> Args {
    let n = b.u8() % 3;
    let mut a = Args::new();
    for i in 0..n {
        a.insert(format!("v{i}"), Value::I4(i32::from(b.u8())));
    }
    a
}

fn stanza_error(b: u8) -> StanzaError {
    let (t, c) = match b % 5 {
        0 => (StanzaErrorType::Wait, DefinedCondition::ResourceConstraint),
        1 => (
            StanzaErrorType::Cancel,
            DefinedCondition::ServiceUnavailable,
        ),
        2 => (StanzaErrorType::Cancel, DefinedCondition::ItemNotFound),
        3 => (
            StanzaErrorType::Cancel,
            DefinedCondition::RecipientUnavailable,
        ),
        _ => (StanzaErrorType::Modify, DefinedCondition::BadRequest),
    };
    StanzaError::new(t, c, "en", "fuzz")
}

/// Requester driven by an arbitrary responder.
pub fn check_requester(data: &[u8]) {
    let mut b = Bytes { d: data, i: 0 };
    let a = jid("agent@example.net/agent");
    let t = seg(1);
    let timeout = 1000 + u32::from(b.u8()) * 100;
    let op = Op::new(
        RequestToken::Single(t.clone()),
        &Resource::parse("/x").expect("path"),
        timeout,
    );
    let (mut r, out) = Requester::start(a.clone(), &op, "op1", 0).expect("valid op");
    assert!(matches!(out.as_slice(), [Output::Send(_)]));
    let hard = Millis::from(timeout) + DEADLINE_GRACE_MS;
    let good = OpToken {
        requester: t.clone(),
        responder: seg(2),
    };
    let mut now: Millis = 0;
    let mut ended = 0;
    let mut next_seq = 0u64;
    let check = |out: &[Output<CallEvent>], ended: &mut i32, next_seq: &mut u64| {
        for o in out {
            match o {
                Output::Event(CallEvent::Ended(_)) => *ended += 1,
                Output::Event(CallEvent::Data { seq, .. }) => {
                    assert_eq!(*seq, *next_seq, "data events in seq order");
                    *next_seq += 1;
                }
                _ => {}
            }
        }
        assert!(*ended <= 1, "a call ends once");
    };
    while b.more() {
        let done_before = r.is_done();
        let kind = b.u8() % 13;
        let id = format!("s{}", b.u8() % 8);
        let set = |el: Element| el;
        let out = match kind {
            0 => {
                let ack = b.u8() & 1 == 1;
                let el = OpResult {
                    token: good.clone(),
                    ack,
                }
                .to_element();
                r.handle_iq_result(&a, "op1", Some(&el), now)
            }
            1 => {
                let el = OpResult {
                    token: OpToken {
                        requester: seg(9),
                        responder: seg(2),
                    },
                    ack: false,
                }
                .to_element();
                r.handle_iq_result(&a, "op1", Some(&el), now)
            }
            2 => r.handle_iq_error(&a, "op1", &stanza_error(b.u8()), now),
            3 => r.handle_iq_set(
                &a,
                &id,
                &set(Ack {
                    token: good.clone(),
                }
                .to_element()),
                now,
            ),
            4 => r.handle_iq_set(
                &a,
                &id,
                &Nack {
                    token: good.clone(),
                    reason: Condition::parse("whatever"),
                }
                .to_element(),
                now,
            ),
            5 => {
                let seq = match b.u8() % 4 {
                    0 => None,
                    1 => Some(u64::from(b.u8() % 4)),
                    _ => Some(next_seq),
                };
                let el = Data {
                    token: good.clone(),
                    seq,
                    args: small_args(&mut b),
                }
                .to_element();
                r.handle_iq_set(&a, &id, &el, now)
            }
            6 => {
                let count = match b.u8() % 3 {
                    0 => None,
                    1 => Some(u64::from(b.u8() % 4)),
                    _ => Some(next_seq),
                };
                let el = Final {
                    token: good.clone(),
                    count,
                    args: Args::new(),
                }
                .to_element();
                r.handle_iq_set(&a, &id, &el, now)
            }
            7 => {
                let condition = (b.u8() & 1 == 1).then_some(Condition::HandlerFailed);
                let el = OpError {
                    token: good.clone(),
                    error_type: ErrorType::Error,
                    condition,
                    reason: None,
                }
                .to_element();
                r.handle_iq_set(&a, &id, &el, now)
            }
            8 => {
                now += Millis::from(b.u8()) * 100;
                let mut out = Vec::new();
                while r.next_timeout().is_some_and(|t| t <= now) {
                    out.extend(r.handle_timeout(now));
                }
                out
            }
            9 => r.handle_unavailable(&a, now),
            10 => r.cancel("c1", now),
            11 => {
                let el = Element::builder("bogus", crate::NS).build();
                r.handle_iq_set(&a, &id, &el, now)
            }
            _ => {
                let el = Ack {
                    token: OpToken {
                        requester: seg(7),
                        responder: seg(8),
                    },
                }
                .to_element();
                r.handle_iq_set(&a, &id, &el, now)
            }
        };
        // Every IQ set is answered first, to its sender, with its id ([VAP-OPS-031]).
        if (3..=7).contains(&kind) || kind >= 11 {
            match out.first() {
                Some(Output::Send(OutIq { to, id: rid, body })) => {
                    assert_eq!(to, &a);
                    assert_eq!(rid, &id);
                    assert!(matches!(body, IqBody::Result(None) | IqBody::Error(_)));
                }
                other => panic!("IQ set not answered first: {other:?}"),
            }
        }
        if done_before {
            for o in &out {
                assert!(
                    !matches!(o, Output::Event(_)),
                    "events after the end: {o:?}"
                );
                if let Output::Send(s) = o {
                    assert!(!matches!(s.body, IqBody::Set(_)), "sets after the end");
                }
            }
        }
        check(&out, &mut ended, &mut next_seq);
        if now >= hard {
            assert!(r.is_done(), "call still open after deadline + grace");
        }
    }
    // Bounded: by deadline + grace every call has ended ([VAP-OPS-080]).
    let mut out = Vec::new();
    while let Some(t) = r.next_timeout() {
        assert!(t <= hard, "timer beyond deadline + grace");
        now = now.max(t);
        out.extend(r.handle_timeout(now));
    }
    check(&out, &mut ended, &mut next_seq);
    assert!(r.is_done());
    assert_eq!(ended, 1);
}

#[derive(Default)]
struct RespTrack {
    kinds: HashMap<String, &'static str>,
    data_seqs: Vec<u64>,
    answered: HashSet<String>,
    terminal_ids: HashSet<String>,
    acked_or_fast: bool,
    ack_id: Option<String>,
    ack_answered: bool,
    ended: u32,
}

impl RespTrack {
    fn observe(&mut self, out: &[Output<ResponderEvent>], window: usize) {
        for o in out {
            match o {
                Output::Send(OutIq {
                    id,
                    body: IqBody::Set(el),
                    ..
                }) => {
                    assert!(
                        self.terminal_ids.is_empty() || self.terminal_ids.contains(id),
                        "a new IQ set after the terminal stanza"
                    );
                    let kind: &'static str = match el.name() {
                        "ack" => "ack",
                        "nack" => "nack",
                        "data" => "data",
                        "final" => "final",
                        "error" => "error",
                        other => panic!("responder sent <{other}>"),
                    };
                    let first = self.kinds.insert(id.clone(), kind).is_none();
                    if !first {
                        continue; // retransmission, same id
                    }
                    match kind {
                        "ack" => {
                            assert!(!self.acked_or_fast, "second ack");
                            self.ack_id = Some(id.clone());
                        }
                        "data" => {
                            assert!(
                                self.ack_answered || self.acked_or_fast,
                                "data before ack result"
                            );
                            let d = Data::from_element(el).expect("own data decodes");
                            assert_eq!(d.seq, Some(self.data_seqs.len() as u64), "seq contiguous");
                            self.data_seqs.push(d.seq.unwrap_or(0));
                            let open = self
                                .kinds
                                .iter()
                                .filter(|(i, k)| **k == "data" && !self.answered.contains(*i))
                                .count();
                            assert!(open <= window, "window exceeded: {open} > {window}");
                        }
                        "final" => {
                            let open = self
                                .kinds
                                .iter()
                                .any(|(i, k)| *k == "data" && !self.answered.contains(i));
                            assert!(!open, "final with unanswered data");
                            let f = Final::from_element(el).expect("own final decodes");
                            assert_eq!(
                                f.count,
                                Some(self.data_seqs.len() as u64 + u64::from(!f.args.is_empty()))
                            );
                            self.terminal_ids.insert(id.clone());
                        }
                        _ => {
                            self.terminal_ids.insert(id.clone());
                        }
                    }
                    assert!(self.terminal_ids.len() <= 1, "two terminal stanzas");
                }
                Output::Send(OutIq {
                    body: IqBody::Result(Some(el)),
                    ..
                }) if el.attr("ack") == Some("true") => {
                    self.acked_or_fast = true;
                }
                Output::Event(ResponderEvent::Ended(_)) => self.ended += 1,
                _ => {}
            }
        }
        assert!(self.ended <= 1);
    }
}

/// Responder driven by an arbitrary requester and application.
pub fn check_responder(data: &[u8]) {
    let mut b = Bytes { d: data, i: 0 };
    let req = jid("ops@example.net/console");
    let cfg = ResponderConfig {
        own_jid: jid("agent@example.net/agent"),
        values_on_final: b.u8() & 1 == 1,
    };
    let timeout = 1000 + u32::from(b.u8()) * 100;
    let mut op = Op::new(
        RequestToken::Single(seg(1)),
        &Resource::parse("/x").expect("p"),
        timeout,
    );
    let flags = b.u8();
    if flags & 1 == 1 {
        op.version = crate::Version::Legacy;
        op.timeout = None;
    }
    op.window = Some(1 + b.u8() % 4);
    let window = usize::from(op.window());
    let deadline = Millis::from(op.timeout_ms());
    let route = match (flags >> 1) % 5 {
        0 => Route::NoHandler,
        1 => Route::Overloaded,
        2 => Route::Handler { cached: Some(true) },
        3 => Route::Handler {
            cached: Some(false),
        },
        _ => Route::Handler { cached: None },
    };
    let via_get = flags & 0x40 != 0;
    let (mut r, out) = Responder::receive_op(
        req.clone(),
        "op1",
        via_get,
        &op.to_element(),
        0,
        seg(2),
        &cfg,
        |_| route,
    );
    let mut tr = RespTrack::default();
    tr.observe(&out, window);
    let mut now: Millis = 0;
    while b.more() {
        let kind = b.u8() % 10;
        let out = match kind {
            0 => {
                let d = match b.u8() % 3 {
                    0 => Decision::Authorized,
                    1 => Decision::Denied,
                    _ => Decision::Unavailable,
                };
                r.authorize(d, now)
            }
            1 => r.chunk(small_args(&mut b), now).unwrap_or_default(),
            2 => {
                let last = (b.u8() & 1 == 1).then(|| small_args(&mut b));
                r.finish(last, now).unwrap_or_default()
            }
            3 => r
                .fail(Condition::HandlerFailed, "boom", now)
                .unwrap_or_default(),
            4 | 5 => {
                let ids: Vec<String> = {
                    let mut v: Vec<String> = r.pending_ids().map(str::to_string).collect();
                    v.sort();
                    v
                };
                if ids.is_empty() {
                    Vec::new()
                } else {
                    let id = ids[usize::from(b.u8()) % ids.len()].clone();
                    if kind == 4 {
                        tr.answered.insert(id.clone());
                        if tr.ack_id.as_ref() == Some(&id) {
                            tr.ack_answered = true;
                        }
                        r.handle_iq_result(&req, &id, now)
                    } else {
                        r.handle_iq_error(&req, &id, &stanza_error(b.u8()), now)
                    }
                }
            }
            6 => {
                let from = if b.u8() & 1 == 1 {
                    req.clone()
                } else {
                    jid("evil@example.net/x")
                };
                let token = r.token().cloned().unwrap_or(OpToken {
                    requester: seg(1),
                    responder: seg(2),
                });
                let el = crate::stanza::Cancel { token }.to_element();
                let out = r.handle_iq_set(&from, "c1", &el, now);
                assert!(
                    matches!(
                        out.first(),
                        Some(Output::Send(OutIq {
                            body: IqBody::Result(None),
                            ..
                        }))
                    ),
                    "cancel answered with an IQ result first"
                );
                out
            }
            7 | 8 => {
                now += Millis::from(b.u8()) * 50;
                let mut out = Vec::new();
                while r.next_timeout().is_some_and(|t| t <= now) {
                    out.extend(r.handle_timeout(now));
                }
                out
            }
            _ => r.handle_iq_result(&req, "unknown", now),
        };
        tr.observe(&out, window);
        if now >= deadline {
            assert!(r.is_done(), "op open after its deadline");
        }
    }
    let mut out = Vec::new();
    while let Some(t) = r.next_timeout() {
        assert!(t <= deadline, "timer past the deadline");
        now = now.max(t);
        out.extend(r.handle_timeout(now));
    }
    tr.observe(&out, window);
    assert!(r.is_done());
}

/// Directory driven by events, compared with a naive model.
pub fn check_dispatch(data: &[u8]) {
    let mut b = Bytes { d: data, i: 0 };
    let mut dir = Directory::new("example.net");
    // model: jid -> (ops, cluster resource, expires, load, silent_at, silent)
    #[derive(Clone, Debug)]
    struct M {
        ops: Vec<Resource>,
        cluster: Option<Resource>,
        expires: Millis,
        load: Option<f64>,
        silent_at: Option<Millis>,
    }
    let mut model: BTreeMap<String, M> = BTreeMap::new();
    let agents: Vec<Jid> = (0..6)
        .map(|i| jid(&format!("a{i}@example.net/agent")))
        .chain(std::iter::once(jid("x@other.org/agent")))
        .collect();
    let opnames = ["/gem", "/gem/list", "/gem/install", "/svc"];
    let clusters = ["/cluster/rd00", "/cluster/rd01", "/cluster"];
    let mut now: Millis = 0;
    while b.more() {
        let who = &agents[usize::from(b.u8()) % agents.len()];
        let local = who.domain().as_str() == "example.net";
        match b.u8() % 6 {
            0 => {
                let n = b.u8() % 3;
                let ops: Vec<Resource> = (0..n)
                    .map(|_| Resource::parse(opnames[usize::from(b.u8()) % 4]).expect("p"))
                    .collect();
                let ttl = u32::from(b.u8() % 4) * 10;
                let cl = b.u8() % 4;
                let mut resources = ResourceScope::new();
                if cl < 3 {
                    resources.push(
                        Some("cluster"),
                        Resource::parse(clusters[usize::from(cl)]).expect("p"),
                    );
                }
                let req = AdvertiseRequest {
                    operations: ops.clone(),
                    resources,
                    ttl,
                    advertiser: None,
                };
                let r = dir.advertise(who, &req, now);
                assert_eq!(r.is_ok(), local);
                if local {
                    // Model: expire first, like the directory does.
                    model.retain(|_, m| m.expires > now || m.load.is_some());
                    let key = who.to_string();
                    let cur = model.get(&key).cloned();
                    let expires = now + Millis::from(ttl) * 1000;
                    let cluster =
                        (cl < 3).then(|| Resource::parse(clusters[usize::from(cl)]).expect("p"));
                    let live = cur
                        .as_ref()
                        .filter(|m| m.expires > now && !m.ops.is_empty());
                    let next_ops: Vec<Resource>;
                    let mut next_cluster = cluster.clone();
                    let mut next_exp = expires;
                    if ttl == 0 {
                        next_ops = match live {
                            Some(m) if !ops.is_empty() => {
                                m.ops.iter().filter(|o| !ops.contains(o)).cloned().collect()
                            }
                            _ => Vec::new(),
                        };
                        next_cluster = live.and_then(|m| m.cluster.clone());
                        next_exp = live.map_or(0, |m| m.expires);
                    } else if !ops.is_empty() {
                        next_ops = ops;
                    } else {
                        next_ops = live.map(|m| m.ops.clone()).unwrap_or_default();
                        if cl >= 3 {
                            next_cluster = live.and_then(|m| m.cluster.clone());
                        }
                    }
                    let e = model.entry(key).or_insert(M {
                        ops: vec![],
                        cluster: None,
                        expires: 0,
                        load: None,
                        silent_at: None,
                    });
                    e.ops = next_ops;
                    e.cluster = next_cluster;
                    e.expires = if e.ops.is_empty() { 0 } else { next_exp };
                }
            }
            1 => {
                let value = f64::from(b.u8() % 5) / 4.0;
                let load = Load {
                    value,
                    inflight: Some(0),
                    capacity: Some(1),
                    interval: Some(1000),
                };
                let ok = dir.report_load(who, &load, now);
                assert_eq!(ok, local);
                if local {
                    let e = model.entry(who.to_string()).or_insert(M {
                        ops: vec![],
                        cluster: None,
                        expires: 0,
                        load: None,
                        silent_at: None,
                    });
                    e.load = Some(value);
                    e.silent_at = Some(now + 3000);
                }
            }
            2 => {
                dir.unavailable(who, now);
                model.remove(&who.to_string());
            }
            3 => {
                now += Millis::from(b.u8()) * 100;
                dir.tick(now);
            }
            _ => {
                let op = Resource::parse(opnames[usize::from(b.u8()) % 4]).expect("p");
                let cl = b.u8() % 4;
                let mut resources = ResourceScope::new();
                if cl < 3 {
                    resources.push(
                        Some("cluster"),
                        Resource::parse(clusters[usize::from(cl)]).expect("p"),
                    );
                }
                let limit = (b.u8() % 4 != 0).then(|| u32::from(b.u8() % 5 + 1));
                let req = DiscoverRequest {
                    operation: op.clone(),
                    resources,
                    limit,
                };
                let got = dir.discover(who, &req, now);
                if !local {
                    assert!(got.is_err());
                    continue;
                }
                let got = got.expect("local discover");
                let me = who.to_string();
                let mut want: Vec<(u64, String)> = model
                    .iter()
                    .filter(|(j, m)| {
                        **j != me
                            && m.expires > now
                            && !m.ops.is_empty()
                            && m.silent_at.is_none_or(|s| s > now)
                            && m.ops.iter().any(|o| o.matches(&op))
                            && (cl >= 3
                                || m.cluster.as_ref().is_some_and(|c| {
                                    c.matches(
                                        &Resource::parse(clusters[usize::from(cl)]).expect("p"),
                                    )
                                }))
                    })
                    .map(|(j, m)| (m.load.map_or(u64::MAX, |l| (l + 0.0).to_bits()), j.clone()))
                    .collect();
                want.sort();
                if let Some(l) = limit {
                    want.truncate(l as usize);
                }
                let got_j: Vec<String> = got.jids.iter().map(ToString::to_string).collect();
                let want_j: Vec<String> = want.into_iter().map(|(_, j)| j).collect();
                assert_eq!(got_j, want_j, "discover differs from the model at t={now}");
                assert_eq!(got.loads.len(), got.jids.len());
            }
        }
    }
}
