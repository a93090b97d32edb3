//! Typed arguments and results of the conformance test profile (spec 12.2, `[VAP-TPF]`):
//! round trips through `Args` and through the wire (op / data XML), and rejection of missing,
//! mistyped and out-of-range values as `bad-payload` (wire condition `bad-value`,
//! `[VAP-TPF-004]`).

use proptest::prelude::*;
use vertebra_protocol::payloads::test_profile::*;
use vertebra_protocol::*;

fn token() -> RequestToken {
    RequestToken::parse("8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b").unwrap()
}

/// Through an op on the wire: encode, decode (streaming and tree), read the arguments back.
fn via_op(path: &str, args: Args) -> Args {
    let op = Op::new(token(), &Resource::parse(path).unwrap(), 10_000).with_args(args);
    let bytes = VertebraPayload::Op(op).to_xml().unwrap();
    let fast = VertebraPayload::from_xml(bytes.as_bytes()).unwrap();
    let tree = codec::decode_payload_tree(bytes.as_bytes()).unwrap();
    assert_eq!(fast, tree);
    match fast {
        VertebraPayload::Op(op) => {
            assert_eq!(op.op_type, path);
            op.args
        }
        other => panic!("not an op: {other:?}"),
    }
}

fn rejected(r: Result<impl std::fmt::Debug, DecodeError>) {
    let e = r.expect_err("must be rejected");
    assert_eq!(e.rule, Rule::BadPayload);
    assert_eq!(e.rule.condition(), Condition::BadValue);
}

#[test]
fn spec_example_stream_op() {
    // The op of spec 12.2.
    let xml = r#"<op xmlns="http://xmlschema.engineyard.com/agent/api" version="1.0" token="8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b" type="/vertebra/test/stream" timeout="10000" window="4">
    <i4 name="count">3</i4>
    <i4 name="size">5</i4>
  </op>"#;
    let op = Op::from_xml(xml.as_bytes()).unwrap();
    assert_eq!(op.op_type, STREAM);
    let req = StreamRequest::from_args(&op.args).unwrap();
    assert_eq!(
        req,
        StreamRequest {
            count: 3,
            size: Some(5)
        }
    );
    let chunks: Vec<_> = req.expected_chunks().collect();
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[2].index, 2);
    assert_eq!(chunks[2].payload.as_deref(), Some("xxxxx"));
    // The data of spec 12.2 decodes to the third chunk.
    let data = r#"<data xmlns="http://xmlschema.engineyard.com/agent/api" token="8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b:0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f" seq="2">
    <i4 name="index">2</i4>
    <string name="payload">xxxxx</string>
  </data>"#;
    let VertebraPayload::Data(d) = VertebraPayload::from_xml(data.as_bytes()).unwrap() else {
        panic!("data expected");
    };
    assert_eq!(StreamChunk::from_args(&d.args).unwrap(), chunks[2]);
}

#[test]
fn stream_rules() {
    let a = |c: Value| Args::new().with("count", c);
    assert_eq!(
        StreamRequest::from_args(&a(Value::I4(0))).unwrap(),
        StreamRequest {
            count: 0,
            size: None
        }
    );
    assert_eq!(
        StreamRequest::from_args(&a(Value::I4(10_000)))
            .unwrap()
            .count,
        10_000
    );
    rejected(StreamRequest::from_args(&Args::new()));
    rejected(StreamRequest::from_args(&a(Value::I4(-1))));
    rejected(StreamRequest::from_args(&a(Value::I4(10_001))));
    rejected(StreamRequest::from_args(&a(Value::String("3".into()))));
    rejected(StreamRequest::from_args(
        &a(Value::I4(1)).with("size", Value::I4(60_001)),
    ));
    rejected(StreamRequest::from_args(
        &a(Value::I4(1)).with("size", Value::Double(1.0)),
    ));
    // No payload when the size is 0 or absent.
    assert_eq!(StreamChunk::new(4, 0).to_args().len(), 1);
    rejected(StreamChunk::from_args(
        &Args::new()
            .with("index", Value::I4(0))
            .with("payload", Value::String("xy".into())),
    ));
    rejected(StreamChunk::from_args(&Args::new()));
}

#[test]
fn sleep_fail_counter_set_load_rules() {
    rejected(SleepRequest::from_args(&Args::new()));
    rejected(SleepRequest::from_args(
        &Args::new().with("ms", Value::I4(-5)),
    ));
    assert_eq!(
        SleepRequest::from_args(&Args::new().with("ms", Value::I4(0))).unwrap(),
        SleepRequest { ms: 0 }
    );

    rejected(FailRequest::from_args(&Args::new()));
    rejected(FailRequest::from_args(
        &Args::new().with("condition", Value::I4(1)),
    ));
    let f = FailRequest::from_args(
        &Args::new().with("condition", Value::String("handler-failed".into())),
    )
    .unwrap();
    assert_eq!(f.reason, None);
    assert_eq!(
        f.error(),
        Some((ErrorType::Error, Condition::HandlerFailed))
    );
    // [VAP-TPF-012]: a condition that does not travel as an <error> is not an error condition.
    for c in [
        "not-authorized",
        "bad-request",
        "no-such-thing",
        "bad-response",
    ] {
        let f = FailRequest {
            condition: c.into(),
            reason: None,
        };
        assert_eq!(f.error(), None, "{c}");
    }
    let f = FailRequest {
        condition: "cancelled".into(),
        reason: Some("r".into()),
    };
    assert_eq!(f.error(), Some((ErrorType::Cancel, Condition::Cancelled)));

    assert!(!CounterRequest::from_args(&Args::new()).unwrap().is_read());
    assert!(
        CounterRequest::from_args(&Args::new().with("read", Value::Boolean(true)))
            .unwrap()
            .is_read()
    );
    rejected(CounterRequest::from_args(
        &Args::new().with("read", Value::I4(1)),
    ));
    rejected(CounterResult::from_args(&Args::new()));
    rejected(CounterResult::from_args(
        &Args::new().with("value", Value::String("1".into())),
    ));

    rejected(SetLoadRequest::from_args(&Args::new()));
    rejected(SetLoadRequest::from_args(
        &Args::new().with("value", Value::Double(-0.5)),
    ));
    rejected(SetLoadRequest::from_args(
        &Args::new().with("value", Value::I4(1)),
    ));
    assert_eq!(
        SetLoadRequest::from_args(&Args::new().with("value", Value::Double(0.25)))
            .unwrap()
            .value,
        0.25
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn stream_round_trips(count in 0u32..=10_000, size in proptest::option::of(0u32..=60_000)) {
        let r = StreamRequest { count, size };
        prop_assert_eq!(StreamRequest::from_args(&r.to_args()).unwrap(), r);
        prop_assert_eq!(StreamRequest::from_args(&via_op(STREAM, r.to_args())).unwrap(), r);
        let c = StreamChunk::new(count, size.unwrap_or(0) % 64);
        prop_assert_eq!(StreamChunk::from_args(&c.to_args()).unwrap(), c);
    }

    #[test]
    fn sleep_counter_set_load_round_trip(ms in 0u32..=i32::MAX as u32, read in proptest::option::of(any::<bool>()),
                                         v in 0.0f64..1e12, value in any::<i32>()) {
        let s = SleepRequest { ms };
        prop_assert_eq!(SleepRequest::from_args(&via_op(SLEEP, s.to_args())).unwrap(), s);
        let c = CounterRequest { read };
        prop_assert_eq!(CounterRequest::from_args(&via_op(COUNTER, c.to_args())).unwrap(), c);
        let l = SetLoadRequest { value: v };
        prop_assert_eq!(SetLoadRequest::from_args(&via_op(SET_LOAD, l.to_args())).unwrap(), l);
        let r = CounterResult { value };
        prop_assert_eq!(CounterResult::from_args(&r.to_args()).unwrap(), r);
    }

    #[test]
    fn fail_and_echo_round_trip(cond in "[a-z-]{1,24}", reason in proptest::option::of("[ -~]{0,40}"),
                                n in "[a-z]{1,8}", i in any::<i32>()) {
        let f = FailRequest { condition: cond, reason };
        prop_assert_eq!(FailRequest::from_args(&via_op(FAIL, f.to_args())).unwrap(), f);
        let e = Echo { values: Args::new().with(n, Value::I4(i)).with("r", Value::Res(Resource::parse("/a/b").unwrap())) };
        prop_assert_eq!(Echo::from_args(&via_op(ECHO, e.to_args())).unwrap(), e);
    }
}
