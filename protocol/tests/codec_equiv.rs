//! The streaming byte codec (`vertebra_protocol::codec`) against the tree codec
//! (`xml::parse_element` + `from_element`, `to_element` + minidom's writer):
//! * every language-neutral vector decodes to the same value or the same error rule through
//!   both, and every valid one (and its canonical form) stays on the streaming path;
//! * proptest: random payloads and values encode to byte-identical output (or both fail) and
//!   decode identically; mutated encodings (byte flips, insertions of XML syntax, deletions)
//!   give the same `Ok` value or the same error rule (for ops: also the same token/version
//!   usability);
//! * a deterministic sweep of single-byte mutations of small stanzas;
//! * the fast path really is taken for our own output (so the equivalence is not vacuous).

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::Value as J;
use vertebra_protocol::codec::{self, *};
use vertebra_protocol::*;

mod common;
use common::*;

fn token() -> impl Strategy<Value = Token> {
    "[0-9a-fA-F]{1,40}".prop_map(|s| Token::parse(&s).unwrap())
}

fn op_token() -> impl Strategy<Value = OpToken> {
    (token(), token()).prop_map(|(requester, responder)| OpToken {
        requester,
        responder,
    })
}

fn payload() -> impl Strategy<Value = VertebraPayload> {
    let args = || args_of(value(), 5);
    prop_oneof![
        (
            token(),
            resource(),
            1u32..=86_400_000,
            proptest::option::of(1u8..=64),
            args(),
            proptest::option::of(0u8..3)
        )
            .prop_map(|(t, r, timeout, window, args, scope)| {
                let mut op = Op::new(RequestToken::Single(t), &r, timeout).with_args(args);
                op.window = window;
                op.scope = scope.map(|s| [Scope::All, Scope::Single, Scope::Direct][s as usize]);
                VertebraPayload::Op(op)
            }),
        op_token().prop_map(|token| VertebraPayload::Ack(Ack { token })),
        (
            op_token(),
            prop_oneof![
                Just(Condition::NotAuthorized),
                Just(Condition::AuthorizationUnavailable)
            ]
        )
            .prop_map(|(token, reason)| VertebraPayload::Nack(Nack { token, reason })),
        (op_token(), proptest::option::of(any::<u64>()), args())
            .prop_map(|(token, seq, args)| VertebraPayload::Data(Data { token, seq, args })),
        (op_token(), proptest::option::of(any::<u64>()), args())
            .prop_map(|(token, count, args)| VertebraPayload::Final(Final { token, count, args })),
        (
            op_token(),
            0u8..3,
            proptest::option::of("[a-z-]{1,20}"),
            proptest::option::of(xml_string())
        )
            .prop_map(|(token, t, c, reason)| VertebraPayload::Error(OpError {
                token,
                error_type: [ErrorType::Error, ErrorType::Fatal, ErrorType::Cancel][t as usize],
                condition: c.map(|c| Condition::parse(&c)),
                reason,
            })),
        op_token().prop_map(|token| VertebraPayload::Cancel(Cancel { token })),
        (
            double().prop_map(f64::abs),
            any::<u32>(),
            1u32..,
            100u32..=60_000
        )
            .prop_map(|(value, i, c, iv)| VertebraPayload::Load(Load {
                value: value + 0.0,
                inflight: Some(i),
                capacity: Some(c),
                interval: Some(iv),
            })),
    ]
}

fn xml_char_or_bad() -> impl Strategy<Value = char> {
    prop_oneof![
        20 => xml_char(),
        1 => Just('\u{1}'),
        1 => Just('\u{fffe}'),
        1 => Just('\u{ffff}'),
        1 => Just('\u{0}'),
    ]
}

fn any_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(xml_char_or_bad(), 0..16).prop_map(|v| v.into_iter().collect())
}

/// Payloads including legacy ops, hand-set op types and (rarely) unencodable text.
fn payload_wide() -> impl Strategy<Value = VertebraPayload> {
    prop_oneof![
        8 => payload(),
        1 => (token(), resource(), proptest::option::of(1u32..=86_400_000), args_of(value(), 4),
              proptest::collection::vec(resource(), 0..3))
            .prop_map(|(t, r, timeout, args, unkeyed)| {
                let mut op = Op::new(RequestToken::Single(t), &r, 1).with_args(args);
                op.version = Version::Legacy;
                op.timeout = timeout;
                op.unkeyed_resources = unkeyed;
                VertebraPayload::Op(op)
            }),
        1 => (token(), any_text(), any_text(), any_text()).prop_map(|(t, ty, n, s)| {
                let mut op = Op::new(RequestToken::Single(t), &Resource::parse("/a").unwrap(), 5);
                op.op_type = ty.into();
                op.args = Args::new().with(n, Value::String(s.into()));
                VertebraPayload::Op(op)
            }),
    ]
}

fn tree_bytes(p: &VertebraPayload) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_payload_tree(p, &mut out).map(|_| out)
}

fn fast_bytes(p: &VertebraPayload) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_payload(p, &mut out).map(|_| out)
}

/// Both encoders agree: the same bytes, or both fail.
fn check_encode(p: &VertebraPayload) -> Option<Vec<u8>> {
    let (a, b) = (fast_bytes(p), tree_bytes(p));
    match (&a, &b) {
        (Ok(x), Ok(y)) => assert_eq!(
            String::from_utf8_lossy(x),
            String::from_utf8_lossy(y),
            "encoders differ for {p:?}"
        ),
        (Err(_), Err(_)) => {}
        _ => panic!("one encoder failed: fast {a:?} tree {b:?} for {p:?}"),
    }
    a.ok()
}

fn same_payload(bytes: &[u8]) {
    let fast = decode_payload(bytes);
    let tree = decode_payload_tree(bytes);
    match (&fast, &tree) {
        (Ok(a), Ok(b)) => assert_eq!(
            a,
            b,
            "values differ for {:?}",
            String::from_utf8_lossy(bytes)
        ),
        (Err(a), Err(b)) => assert_eq!(
            a.rule,
            b.rule,
            "rules differ for {:?}",
            String::from_utf8_lossy(bytes)
        ),
        _ => panic!(
            "paths disagree for {:?}: fast {fast:?} tree {tree:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
    // The streaming decoder alone never accepts what the tree rejects.
    if let Some(p) = decode_payload_fast(bytes) {
        assert_eq!(Some(&p), tree.as_ref().ok());
    }
    let (fo, to) = (decode_op(bytes), decode_op_tree(bytes));
    match (&fo, &to) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => {
            assert_eq!(a.error.rule, b.error.rule);
            assert_eq!(a.token, b.token);
            assert_eq!(a.version, b.version);
        }
        _ => panic!("op paths disagree: fast {fo:?} tree {to:?}"),
    }
    let (fr, tr) = (decode_op_result(bytes), decode_op_result_tree(bytes));
    match (&fr, &tr) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.rule, b.rule),
        _ => panic!("op-result paths disagree: fast {fr:?} tree {tr:?}"),
    }
    let (fv, tv) = (codec::decode_value(bytes), decode_value_tree(bytes));
    match (&fv, &tv) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.rule, b.rule),
        _ => panic!("value paths disagree: fast {fv:?} tree {tv:?}"),
    }
}

const SNIPPETS: &[&str] = &[
    "<",
    ">",
    "/",
    "=",
    "'",
    "\"",
    "&",
    ";",
    "#",
    ":",
    " ",
    "\t",
    "\n",
    "\r",
    "\0",
    "\u{1}",
    "]]>",
    "a",
    "0",
    "x",
    "-",
    "!",
    "?",
    "&#xd;",
    "&#13;",
    "&#0;",
    "&#x110000;",
    "&#X41;",
    "&lt;",
    "&bogus;",
    "&#x20;",
    "&#32;",
    "<!--c-->",
    "<![CDATA[x]]>",
    "<?pi x?>",
    " xmlns:a='urn:a'",
    " a:b='1'",
    " xml:lang='en'",
    " xmlns=''",
    " xmlns='urn:other'",
    "<x/>",
    "</x>",
    "<i4>1</i4>",
    "<string name='n'>s</string>",
    " name='n'",
    " b='1'",
    " b='1' b='2'",
    "b='1'",
    "\u{fffe}",
    "é",
    "\u{10000}",
    "\u{feff}",
];

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, u8),
    Insert(usize, &'static str),
    Delete(usize, usize),
    RawByte(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), proptest::sample::select(b"<>/='\"&;#: \t\n\rax0]!?-".to_vec()))
            .prop_map(|(i, b)| Mutation::Replace(i, b)),
        4 => (any::<usize>(), proptest::sample::select(SNIPPETS)).prop_map(|(i, s)| Mutation::Insert(i, s)),
        2 => (any::<usize>(), 1usize..6).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::RawByte(i, b)),
    ]
}

fn apply(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = b.len().max(1);
        match *m {
            Mutation::Replace(i, c) | Mutation::RawByte(i, c) => {
                if !b.is_empty() {
                    b[i % n] = c;
                }
            }
            Mutation::Insert(i, s) => {
                let at = i % (b.len() + 1);
                b.splice(at..at, s.bytes());
            }
            Mutation::Delete(i, k) => {
                if !b.is_empty() {
                    let at = i % n;
                    let to = (at + k).min(b.len());
                    b.drain(at..to);
                }
            }
        }
    }
    b
}

fn value_of(p: &VertebraPayload) -> Vec<u8> {
    fast_bytes(p).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn encoders_agree_and_fast_decoder_round_trips(p in payload_wide()) {
        if let Some(bytes) = check_encode(&p) {
            same_payload(&bytes);
            // Our own output is decoded on the streaming path, to the value that was encoded
            // (a hand-set op type that is not a normalized path is the one exception: it is
            // not a valid op, so both decoders reject it).
            if let Ok(tree) = decode_payload_tree(&bytes) {
                prop_assert_eq!(decode_payload_fast(&bytes), Some(tree));
            }
        }
    }

    #[test]
    fn values_agree(v in value()) {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let fa = encode_value(&v, &mut a);
        let fb = encode_value_tree(&v, &mut b);
        prop_assert_eq!(fa.is_ok(), fb.is_ok());
        prop_assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
        same_payload(&a);
        prop_assert_eq!(decode_value_fast(&a), Some(v));
    }

    #[test]
    fn mutated_payloads_agree(p in payload_wide(), ms in proptest::collection::vec(mutation(), 1..4)) {
        if let Ok(bytes) = fast_bytes(&p) {
            same_payload(&apply(bytes, &ms));
        }
    }

    #[test]
    fn mutated_values_agree(v in value(), ms in proptest::collection::vec(mutation(), 1..4)) {
        let mut a = Vec::new();
        if encode_value(&v, &mut a).is_ok() {
            same_payload(&apply(a, &ms));
        }
    }
}

fn small_stanzas() -> Vec<Vec<u8>> {
    let t = "9f1c2a7b4e6d8f0a1b3c5d7e9f2a4b6c:3e5a7c9b1d2f4e6a8c0b2d4f6a8c0e1b";
    let ot = OpToken::parse(t).unwrap();
    let mut out = vec![
        value_of(&VertebraPayload::Ack(Ack { token: ot.clone() })),
        value_of(&VertebraPayload::Data(Data {
            token: ot.clone(),
            seq: Some(1),
            args: Args::new()
                .with(
                    "a",
                    Value::List(vec![Value::I4(1), Value::String("x\r&".into())]),
                )
                .with(
                    "e",
                    Value::Exception(Exception {
                        class: "C".into(),
                        message: "m".into(),
                    }),
                ),
        })),
        value_of(&VertebraPayload::Error(OpError {
            token: ot,
            error_type: ErrorType::Fatal,
            condition: Some(Condition::BadValue),
            reason: Some("why".into()),
        })),
    ];
    out.push(
        b"<op xmlns='http://xmlschema.engineyard.com/agent/api' token='ab' type='/a'><res>/r</res><i4>1</i4><res name='/x'>/x</res></op>"
            .to_vec(),
    );
    out
}

/// Every single-byte replacement (from a set of XML-significant bytes), insertion and deletion
/// at every position of a few small stanzas.
#[test]
fn single_byte_mutation_sweep() {
    let bytes = b"<>/='\"&;: \x01\xff";
    // The data stanza (long) is left to the proptest and the fuzzer.
    for s in small_stanzas().into_iter().filter(|s| s.len() < 250) {
        same_payload(&s);
        for i in 0..s.len() {
            let mut d = s.clone();
            d.remove(i);
            same_payload(&d);
            for &b in bytes {
                let mut r = s.clone();
                r[i] = b;
                same_payload(&r);
                let mut ins = s.clone();
                ins.insert(i, b);
                same_payload(&ins);
            }
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every vector of `fixtures/vectors/` whose input is XML, through both paths; valid stanzas
/// and values (and their canonical forms) must stay on the streaming path.
#[test]
fn vectors_through_both_paths() {
    let mut fast_hits = 0;
    let mut n = 0;
    for file in ["stanzas.json", "values.json"] {
        let path = root().join("fixtures/vectors").join(file);
        let doc: J = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for case in doc["cases"].as_array().unwrap() {
            let kind = case["kind"].as_str().unwrap();
            if !matches!(kind, "stanza" | "value" | "op-result") {
                continue;
            }
            let Some(input) = case["input"].as_str() else {
                continue;
            };
            n += 1;
            same_payload(input.as_bytes());
            let id = case["id"].as_str().unwrap();
            let ok = case["expect"].get("ok").is_some();
            let fast = match kind {
                "stanza" => decode_payload_fast(input.as_bytes()).is_some(),
                "value" => decode_value_fast(input.as_bytes()).is_some(),
                _ => decode_op_result_fast(input.as_bytes()).is_some(),
            };
            if ok && !fast {
                eprintln!("valid but decided by the tree decoder: {id}");
            }
            if fast {
                fast_hits += 1;
                assert!(ok, "{id}: the streaming decoder accepted an invalid vector");
            }
            if let Some(canon) = case["expect"]["canonical"].as_str() {
                same_payload(canon.as_bytes());
                let fast = match kind {
                    "stanza" => decode_payload_fast(canon.as_bytes()).is_some(),
                    _ => decode_value_fast(canon.as_bytes()).is_some(),
                };
                assert!(
                    fast,
                    "{id}: canonical form not on the streaming path: {canon}"
                );
                if kind == "stanza" {
                    let p = decode_payload(canon.as_bytes()).unwrap();
                    assert_eq!(check_encode(&p).unwrap(), canon.as_bytes(), "{id}");
                }
            }
        }
    }
    eprintln!("{fast_hits} of {n} XML vector inputs decoded on the streaming path");
    assert!(n > 100, "only {n} XML vectors found");
    assert!(
        fast_hits > 30,
        "only {fast_hits} vectors on the streaming path"
    );
}

/// Text the tree decoder would normalize (CR) and markup quick-xml is lenient about are left to
/// the tree decoder; these are decided identically.
#[test]
fn lenient_quick_xml_cases_are_decided_by_the_tree() {
    let ns = NS;
    let t = "9f1c2a7b4e6d8f0a1b3c5d7e9f2a4b6c:3e5a7c9b1d2f4e6a8c0b2d4f6a8c0e1b";
    let cases = [
        format!("<ack xmlns='{ns}' token='{t}'b='1'/>"),
        format!("<ack xmlns='{ns}' token='{t}' b='<'/>"),
        format!("<ack xmlns='{ns}' token='{t}' token='{t}'/>"),
        format!("<ack xmlns='{ns}' xmlns='{ns}' token='{t}'/>"),
        format!(
            "<ack xmlns='{ns}' token='{t}' {}/>",
            (0..40)
                .map(|i| format!("a{i}='1'"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        format!("<ack xmlns='{ns}' tok\u{1}en='{t}'/>"),
        format!("<data xmlns='{ns}' token='{t}'><string name='s'>a\r\nb</string></data>"),
        format!("<data xmlns='{ns}' token='{t}'><string name='s'>a]]>b</string></data>"),
        format!("<data xmlns='{ns}' token='{t}'><string name='s'>a&#X41;b</string></data>"),
        format!("<data xmlns='{ns}' token='{t}'><string name='s'>a&#xd;b</string></data>"),
        format!("<data xmlns='{ns}' token='{t}'><string name='s\tx'>a</string></data>"),
        format!("<data xmlns='{ns}' token='{t}'><string name='s&#X41;'>a</string></data>"),
        format!("<data xmlns='{ns}' token='{t}'><string name='s&#0;'>a</string></data>"),
        format!("<data xmlns='{ns}' token='{t}'><string name='s&#xD800;'>a</string></data>"),
        format!("<data xmlns='{ns}' token='{t}'><string name='s&#x110000;'>a</string></data>"),
        format!(
            "<data xmlns='{ns}' token='{t}'><string name='s&#xa;&#x9;&#xd;&#39;'>a</string></data>"
        ),
        format!("<data xmlns='{ns}' token='{t}'><!-- c --></data>"),
        format!("<?xml version='1.0'?><ack xmlns='{ns}' token='{t}'/>"),
        format!(" <ack xmlns='{ns}' token='{t}'/>"),
        format!("\u{feff}<ack xmlns='{ns}' token='{t}'/>"),
        format!("<ack xmlns='{ns}' token='{t}'></ ack>"),
        format!("<ack xmlns='{ns}' token='{t}'></ack\n>"),
        format!("<ack xmlns='{ns}' token='{t}'><xmlfoo/><_a.b-c/></ack>"),
        format!("<ack xmlns='{ns}' token='{t}' xmlnsfoo='x'/>"),
        format!("<ack xmlns='{ns}' token='{t}'>&lt</ack>"),
        format!("<ack xmlns='{ns}' token='{t}' a='&amp;#x41;'/>"),
        format!("<ack xmlns='{ns}' token='{t}' a='&#x41;&#65;'/>"),
        format!("<ack xmlns='{ns}' token='{t}' />"),
        format!("<ack\nxmlns='{ns}'\ttoken = '{t}'/>"),
        format!("<data xmlns='{ns}' token='{t}'><string name='s'>a&#x10FFFF;&#0000065;\u{85}\u{2028}b</string></data>"),
        format!("<data xmlns='{ns}' token='{t}'><string name='s'>a&#xFFFE;b</string></data>"),
        format!("<data xmlns='{ns}' token='{t}'><string name='s'>{}</string></data>", "x".repeat(20_000)),
        format!("<data xmlns='{ns}' token='{t}'><string name='{}'>a</string></data>", "n".repeat(5_000)),
        format!("<ack xmlns='{ns}' token='{t}'/><garbage"),
        format!("<a:ack xmlns:a='{ns}' token='{t}'/>"),
        format!("<ack xmlns='{ns}' token='{t}'></ack >"),
        format!("<ack xmlns='{ns}' token='{t}' / >"),
    ];
    for c in &cases {
        same_payload(c.as_bytes());
    }
}

/// The streaming decoder binds names to NS without quick-xml's resolver (the subset has no
/// prefixes): the root must declare NS, any other `xmlns` must be NS exactly. Each case is
/// compared with the tree decoder; the cases inside the subset must stay on the fast path.
#[test]
fn default_namespace_cases() {
    let ns = NS;
    let t = "9f1c2a7b4e6d8f0a1b3c5d7e9f2a4b6c:3e5a7c9b1d2f4e6a8c0b2d4f6a8c0e1b";
    let fast = [
        format!("<data xmlns='{ns}' token='{t}'><i4 name='a'>1</i4></data>"),
        format!("<data xmlns='{ns}' token='{t}'><i4 xmlns='{ns}' name='a'>1</i4></data>"),
        format!(
            "<data xmlns='{ns}' token='{t}'><list name='l'><list xmlns='{ns}'><nil/></list></list></data>"
        ),
    ];
    for c in &fast {
        same_payload(c.as_bytes());
        assert!(decode_payload_fast(c.as_bytes()).is_some(), "{c}");
    }
    let other = [
        format!("<data token='{t}'><i4 name='a'>1</i4></data>"),
        format!("<data xmlns='urn:other' token='{t}'><i4 name='a'>1</i4></data>"),
        format!("<data xmlns='{ns}' token='{t}'><i4 xmlns='urn:other' name='a'>1</i4></data>"),
        format!("<data xmlns='{ns}' token='{t}'><i4 xmlns='' name='a'>1</i4></data>"),
        format!(
            "<data xmlns='{ns}' token='{t}'><list name='l'><list xmlns='urn:x'><nil/></list></list></data>"
        ),
        format!("<data xmlns='{ns}' xmlns='{ns}' token='{t}'/>"),
        format!("<data xmlns='http://xmlschema.engineyard.com/agent/ap&#x69;' token='{t}'/>"),
        format!("<data xmlns=' {ns}' token='{t}'/>"),
    ];
    for c in &other {
        same_payload(c.as_bytes());
        assert!(decode_payload_fast(c.as_bytes()).is_none(), "{c}");
    }
}
