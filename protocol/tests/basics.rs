//! Hand-written checks of the codec on the brief's examples.

use vertebra_protocol::xml::parse_element;
use vertebra_protocol::*;

fn el(s: &str) -> minidom::Element {
    parse_element(s.as_bytes(), None).expect("test XML parses")
}

#[test]
fn op_decodes_and_round_trips() {
    let x = el(
        r#"<op xmlns="http://xmlschema.engineyard.com/agent/api" version="1.0"
        token="0123456789abcdef0123456789abcdef" type="/gem/list/" timeout="30000" scope="all"
        window="8" unknown="ignored"><res name="cluster">/cluster/rd00</res>
        <string name="s">  a b </string><list name="l"><i4>1</i4><int>-2</int></list></op>"#,
    );
    let op = Op::from_element(&x).unwrap();
    assert_eq!(op.version, Version::V1_0);
    assert_eq!(op.op_type, "/gem/list");
    assert_eq!(op.timeout_ms(), 30_000);
    assert_eq!(op.args.get_str("s"), Some("  a b "));
    assert_eq!(
        op.args.get_list("l"),
        Some(&[Value::I4(1), Value::I4(-2)][..])
    );
    let keyed: Vec<_> = op.args.keyed_resources().collect();
    assert_eq!(keyed.len(), 1);
    assert_eq!(keyed[0].0, "cluster");
    let again = Op::from_element(&op.to_element()).unwrap();
    assert_eq!(again, op);
}

#[test]
fn op_rules() {
    let base = |attrs: &str, body: &str| {
        format!(r#"<op xmlns="http://xmlschema.engineyard.com/agent/api" {attrs}>{body}</op>"#)
    };
    let rule =
        |attrs: &str, body: &str| Op::from_element(&el(&base(attrs, body))).unwrap_err().rule;
    let ok = r#"version="1.0" token="ab" type="/a" timeout="5""#;
    assert_eq!(
        rule(r#"version="1.0" token="ab" type="/a""#, ""),
        Rule::MissingAttribute
    );
    assert_eq!(
        rule(r#"version="2.0" token="ab" type="/a" timeout="5""#, ""),
        Rule::UnsupportedVersion
    );
    assert_eq!(
        rule(r#"version="1.0" token="a:b:c" type="/a" timeout="5""#, ""),
        Rule::TooManyTokenSegments
    );
    assert_eq!(
        rule(r#"version="1.0" token="xyz" type="/a" timeout="5""#, ""),
        Rule::BadToken
    );
    assert_eq!(
        rule(r#"version="1.0" token="ab" type="/a" timeout="0""#, ""),
        Rule::BadAttribute
    );
    assert_eq!(rule(ok, "<i4>1</i4>"), Rule::MissingName);
    assert_eq!(
        rule(ok, "<float name='x'>1</float>"),
        Rule::UnknownValueType
    );
    assert_eq!(
        rule(ok, "<i4 name='x'>1</i4><i4 name='x'>2</i4>"),
        Rule::DuplicateName
    );
    assert_eq!(rule(ok, "text"), Rule::MixedContent);
    // Legacy: unnamed ignored, unnamed res kept.
    let legacy = Op::from_element(&el(&base(
        r#"token="ab" type="/list""#,
        "<res>/a</res><i4>3</i4><foo/><res name='/b'>/b</res>",
    )))
    .unwrap();
    assert!(legacy.is_legacy());
    assert_eq!(legacy.timeout_ms(), 60_000);
    assert_eq!(
        legacy.unkeyed_resources,
        vec![
            Resource::parse("/a").unwrap(),
            Resource::parse("/b").unwrap()
        ]
    );
    assert!(legacy.args.is_empty());
    let verb = Op::decode(&el(&base(r#"token="ab" type="list""#, ""))).unwrap_err();
    assert_eq!(verb.error.rule, Rule::BadAttribute);
    assert_eq!(verb.condition(), Condition::BadValue);
    assert!(verb.token.is_some());
    let v13 = Op::from_element(&el(&base(
        r#"version="1.3" token="ab" type="/a" timeout="5""#,
        "",
    )))
    .unwrap();
    assert_eq!(v13.version, Version::V1_0);
    let notoken = Op::decode(&el(&base(r#"version="1.0" type="/a" timeout="5""#, ""))).unwrap_err();
    assert_eq!(notoken.condition(), Condition::BadRequest);
}

#[test]
fn scalars() {
    assert_eq!(value::parse_i4("2147483647").unwrap(), i32::MAX);
    assert_eq!(value::parse_i4("2147483648").unwrap_err().rule, Rule::BadI4);
    assert_eq!(value::parse_i4("12x").unwrap_err().rule, Rule::BadI4);
    // The digits-only shortcut and the general path agree on both sides of nine digits,
    // with leading zeros, signs and surrounding whitespace.
    for (text, want) in [
        ("0", Some(0)),
        ("7", Some(7)),
        ("007", Some(7)),
        ("999999999", Some(999_999_999)),
        ("1000000000", Some(1_000_000_000)),
        ("0000000000042", Some(42)),
        ("+12", Some(12)),
        ("-12", Some(-12)),
        (" \t12\r\n", Some(12)),
        ("", None),
        (" ", None),
        ("1 2", None),
        ("١٢", None),
        ("4294967296", None),
    ] {
        assert_eq!(value::parse_i4(text).ok(), want, "{text:?}");
    }
    // XML whitespace around a scalar is trimmed; a no-break space is not XML whitespace.
    assert_eq!(value::parse_boolean("\r\n 1 \t").ok(), Some(true));
    assert_eq!(value::parse_boolean(" \t").ok(), None);
    assert!(value::parse_boolean("\u{a0}1").is_err());
    assert!(value::parse_i4("\u{a0}1").is_err());
    assert_eq!(
        value::parse_double("NaN").unwrap_err().rule,
        Rule::BadDouble
    );
    assert_eq!(
        value::parse_double("1e400").unwrap_err().rule,
        Rule::BadDouble
    );
    assert_eq!(value::parse_double("-42.420000").unwrap(), -42.42);
    assert_eq!(value::format_double(1.0), "1");
    assert_eq!(value::format_double(0.1), "0.1");
    assert_eq!(value::format_double(1e21), "1e+21");
    assert_eq!(value::format_double(1e20), "1e+20");
    assert_eq!(value::format_double(0.25), "0.25");
    assert_eq!(value::format_double(-0.0), "-0");
    assert_eq!(value::format_double(1e15), "1000000000000000");
    assert_eq!(value::format_double(0.0001), "0.0001");
    assert_eq!(value::format_double(1.5e-7), "1.5e-7");
    assert_eq!(value::format_double(123456.789), "123456.789");
    assert_eq!(value::format_double(0.00001), "1e-5");
    assert_eq!(value::encode_base64(b"\x00\x01"), "AAE=");
    assert_eq!(value::decode_base64("AA\nE=").unwrap(), b"\x00\x01");
    assert_eq!(
        value::decode_base64("AAF=").unwrap_err().rule,
        Rule::BadBase64
    );
    let d = DateTime::parse("2009-03-17T14:00:00+02:00").unwrap();
    assert_eq!(d.to_wire(), "20090317T12:00:00Z");
    assert_eq!(
        DateTime::parse("20090229T00:00:00").unwrap_err().rule,
        Rule::BadDateTime
    );
    assert_eq!(
        DateTime::parse("20000101T00:30:00+01:00")
            .unwrap()
            .to_wire(),
        "19991231T23:30:00Z"
    );
    // [VAP-VAL-026]: UTC years 0001 ..= 9999 only.
    for text in [
        "00000101T00:00:00Z",
        "0000-12-31T23:59:59Z",
        "00010101T00:30:00+01:00",
        "99991231T23:30:00-01:00",
    ] {
        assert_eq!(
            DateTime::parse(text).unwrap_err().rule,
            Rule::BadDateTime,
            "{text}"
        );
    }
    assert_eq!(
        DateTime::parse("00010101T00:30:00-01:00")
            .unwrap()
            .to_wire(),
        "00010101T01:30:00Z"
    );
    assert!(DateTime::new(0, 1, 1, 0, 0, 0).is_err());
    assert!(DateTime::new(1, 1, 1, 0, 0, 0).is_ok());
    assert!(DateTime::from_unix_seconds(-62_135_596_801).is_err());
    assert_eq!(
        DateTime::from_unix_seconds(-62_135_596_800)
            .unwrap()
            .to_wire(),
        "00010101T00:00:00Z"
    );
    assert_eq!(
        DateTime::from_unix_seconds(253_402_300_799)
            .unwrap()
            .to_wire(),
        "99991231T23:59:59Z"
    );
    assert!(DateTime::from_unix_seconds(253_402_300_800).is_err());
}

#[test]
fn json_mapping() {
    let v = Value::Struct(Args::new().with("b", Value::I4(1)).with(
        "a",
        Value::List(vec![Value::Nil, Value::Base64(vec![0, 1])]),
    ));
    let j = serde_json::to_string(&v).unwrap();
    assert_eq!(
        j,
        r#"{"struct":{"b":{"i4":1},"a":{"list":[{"nil":null},{"base64":"AAE="}]}}}"#
    );
    let back: Value = serde_json::from_str(&j).unwrap();
    assert_eq!(back, v);
    assert!(
        serde_json::from_str::<Value>(r#"{"struct":{"a":{"nil":null},"a":{"nil":null}}}"#).is_err()
    );
}

#[test]
fn resources_match_segmentwise() {
    let r = |s: &str| Resource::parse(s).unwrap();
    assert!(r("/cluster").matches(&r("/cluster/rd00")));
    assert!(r("/cluster/rd00").matches(&r("/cluster")));
    assert!(!r("/cluster/rd001").matches(&r("/cluster/rd00")));
    assert!(r("/").matches(&r("/x")));
    assert_eq!(r("/a/b/").as_str(), "/a/b");
    assert_eq!(
        Resource::parse("/a//b").unwrap_err().rule,
        Rule::BadResource
    );
    assert_eq!(Resource::parse("a").unwrap_err().rule, Rule::BadResource);
}

#[test]
fn tokens() {
    let t = Token::generate().unwrap();
    assert!(t.is_canonical());
    let rt = RequestToken::Single(t.clone());
    let s = Token::generate().unwrap();
    let op = rt.rotate(s.clone());
    assert_eq!(op.to_string(), format!("{t}:{s}"));
    assert_eq!(op.text(), op.to_string());
    let pair = RequestToken::parse("AB:cd").unwrap();
    assert_eq!(pair.rotate(s.clone()).to_string(), format!("cd:{s}"));
    assert_eq!(pair.rotate(s.clone()).text(), format!("cd:{s}"));
    assert_eq!(pair.to_string(), "AB:cd");
    assert_ne!(Token::parse("AB").unwrap(), Token::parse("ab").unwrap());
}

#[test]
fn payload_dispatch() {
    let x = el(
        r#"<final xmlns="http://xmlschema.engineyard.com/agent/api" token="ab:cd" count="2"><i4 name="n">1</i4></final>"#,
    );
    match VertebraPayload::try_from(&x).unwrap() {
        VertebraPayload::Final(f) => {
            assert_eq!(f.count, Some(2));
            assert_eq!(f.args.get_i4("n"), Some(1));
        }
        other => panic!("{other:?}"),
    }
    let wrong = parse_element(b"<final token='ab:cd'/>", Some("jabber:client")).unwrap();
    assert_eq!(
        VertebraPayload::try_from(&wrong).unwrap_err().rule,
        Rule::WrongNamespace
    );
}

#[test]
fn long_token_segments_are_accepted() {
    // [VAP-OPS-005] sets no maximum: a 300-digit segment is a token.
    let long = "a".repeat(300);
    let t = RequestToken::parse(&long).unwrap();
    let s = Token::generate().unwrap();
    assert_eq!(t.rotate(s.clone()).to_string(), format!("{long}:{s}"));
}

#[test]
fn values_from_plain_rust_values() {
    use vertebra_protocol::value::Value;
    use vertebra_protocol::Resource;
    assert_eq!(Value::from("rails"), Value::String("rails".into()));
    assert_eq!(
        Value::from("a".repeat(40)),
        Value::String("a".repeat(40).into())
    );
    assert_eq!(Value::from(-7), Value::I4(-7));
    assert_eq!(Value::from(true), Value::Boolean(true));
    let r = Resource::parse("/cluster/rd00").unwrap();
    assert_eq!(Value::from(r.clone()), Value::Res(r));
    // Short and long strings alike keep their exact text.
    if let Value::String(s) = Value::from("ünïcode ✓") {
        assert_eq!(s.as_str(), "ünïcode ✓");
    } else {
        panic!("not a string");
    }
}

/// Unsigned attributes (`seq`) at the edges of u64, through both decoders: 19 digits take the
/// digit-folding path, 20 digits the checked parse.
#[test]
fn unsigned_attribute_edges() {
    let doc = |seq: &str| {
        format!(
            "<data xmlns='http://xmlschema.engineyard.com/agent/api' token='ab:cd' seq='{seq}'/>"
        )
    };
    for (seq, want) in [
        ("0", Some(0)),
        ("0000000000000000001", Some(1)),
        ("9999999999999999999", Some(9_999_999_999_999_999_999)),
        ("18446744073709551615", Some(u64::MAX)),
        ("18446744073709551616", None),
        ("99999999999999999999", None),
        ("000000000000000000001", None),
        ("+1", None),
        ("", None),
    ] {
        let text = doc(seq);
        for decoded in [
            VertebraPayload::from_xml(text.as_bytes()),
            vertebra_protocol::codec::decode_payload_tree(text.as_bytes()),
        ] {
            let got = match decoded {
                Ok(VertebraPayload::Data(d)) => d.seq,
                Ok(other) => panic!("{seq:?}: decoded as {other:?}"),
                Err(_) => None,
            };
            assert_eq!(got, want, "{seq:?}");
        }
    }
}
