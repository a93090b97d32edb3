//! Property tests: for every type, decode(encode(x)) == x and the encoding is canonical (a fixed
//! point), with generators that reach the edges (Unicode incl. astral and CR, empty and long
//! texts, extreme numbers, nesting up to the depth limit). Plus the malformed-input sweep: any
//! bytes give a typed result, never a panic.

use proptest::prelude::*;
use vertebra_protocol::value::MAX_DEPTH;
use vertebra_protocol::xml::{parse_element, to_string};
use vertebra_protocol::*;

mod common;
use common::*;

fn nest(depth: usize) -> Value {
    let mut v = Value::I4(1);
    for i in 1..depth {
        v = if i % 2 == 0 {
            Value::List(vec![v])
        } else {
            Value::Struct(Args::new().with("x", v))
        };
    }
    v
}

fn roundtrip_value(v: &Value) {
    v.validate().unwrap();
    let s1 = to_string(&v.to_element()).unwrap();
    let back = Value::from_element(&parse_element(s1.as_bytes(), None).unwrap()).unwrap();
    assert_eq!(&back, v, "{s1}");
    let s2 = to_string(&back.to_element()).unwrap();
    assert_eq!(s1, s2, "canonical");
    let j = serde_json::to_string(v).unwrap();
    let from_json: Value = serde_json::from_str(&j).unwrap();
    assert_eq!(&from_json, v);
}

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

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, .. ProptestConfig::default() })]

    #[test]
    fn values_round_trip(v in value()) {
        roundtrip_value(&v);
    }

    #[test]
    fn payloads_round_trip(p in payload()) {
        let s1 = to_string(&p.to_element()).unwrap();
        let back = VertebraPayload::from_element(&parse_element(s1.as_bytes(), None).unwrap()).unwrap();
        prop_assert_eq!(&back, &p);
        prop_assert_eq!(to_string(&back.to_element()).unwrap(), s1);
    }

    #[test]
    fn op_results_round_trip(t in op_token(), ack in any::<bool>()) {
        let r = OpResult { token: t, ack };
        let s = to_string(&r.to_element()).unwrap();
        prop_assert_eq!(OpResult::from_element(&parse_element(s.as_bytes(), None).unwrap()).unwrap(), r);
    }

    #[test]
    fn resources_normalize_idempotently(r in resource(), slash in any::<bool>()) {
        let text = if slash && !r.is_root() { format!("{r}/") } else { r.to_string() };
        let p = Resource::parse(&text).unwrap();
        prop_assert_eq!(&p, &r);
        prop_assert_eq!(Resource::parse(p.as_str()).unwrap(), p);
    }

    #[test]
    fn tokens_parse_exactly(a in token(), b in token()) {
        let t = RequestToken::parse(&format!("{a}:{b}")).unwrap();
        prop_assert_eq!(t.to_string(), format!("{a}:{b}"));
        prop_assert_eq!(t.rotate(a.clone()).to_string(), format!("{b}:{a}"));
    }

    #[test]
    fn malformed_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        vertebra_protocol::fuzzing::check_stanza(&data);
        vertebra_protocol::fuzzing::check_value(&data);
    }

    #[test]
    fn mutated_stanzas_never_panic(p in payload(), cuts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut bytes = to_string(&p.to_element()).unwrap().into_bytes();
        for (pos, b) in cuts {
            if bytes.is_empty() { break; }
            let i = pos % bytes.len();
            match b % 4 {
                0 => bytes[i] = b,
                1 => { bytes.truncate(i); }
                2 => bytes.insert(i, b"<>&\"'/= x"[usize::from(b) % 9]),
                _ => { bytes.remove(i); }
            }
        }
        vertebra_protocol::fuzzing::check_stanza(&bytes);
    }
}

#[test]
fn depth_limit_is_exact() {
    roundtrip_value(&nest(MAX_DEPTH));
    let deep = nest(MAX_DEPTH + 1);
    assert_eq!(deep.validate().unwrap_err().rule, Rule::TooDeep);
    let s = to_string(&deep.to_element()).unwrap();
    let el = parse_element(s.as_bytes(), None).unwrap();
    assert_eq!(Value::from_element(&el).unwrap_err().rule, Rule::TooDeep);
}

#[test]
fn very_deep_xml_is_rejected_without_stack_exhaustion() {
    let mut s = String::new();
    for _ in 0..15_000 {
        s.push_str("<list xmlns='http://xmlschema.engineyard.com/agent/api'>");
    }
    assert_eq!(
        parse_element(s.as_bytes(), None).unwrap_err().rule,
        Rule::TooDeep
    );
}
