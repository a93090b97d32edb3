//! Proptest generators shared by the property tests (`roundtrip_prop`, `codec_equiv`): values,
//! strings and names that reach the edges (Unicode incl. astral and CR, XML syntax characters,
//! empty and long texts, extreme numbers, nesting).
// Each test target uses a different subset of the generators.
#![allow(dead_code)]

use proptest::prelude::*;
use vertebra_protocol::*;

pub fn xml_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range(' ', '~'),
        1 => Just('\r'),
        1 => Just('\n'),
        1 => Just('\t'),
        1 => Just('<'),
        1 => Just('&'),
        1 => Just('"'),
        2 => proptest::char::range('\u{a0}', '\u{d7ff}'),
        1 => proptest::char::range('\u{e000}', '\u{fffd}'),
        1 => proptest::char::range('\u{10000}', '\u{10ffff}'),
    ]
}

pub fn xml_string() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        1 => Just("   ".to_string()),
        6 => proptest::collection::vec(xml_char(), 0..40).prop_map(|v| v.into_iter().collect()),
        1 => proptest::collection::vec(xml_char(), 500..2000).prop_map(|v| v.into_iter().collect()),
    ]
}

pub fn name() -> impl Strategy<Value = String> {
    proptest::collection::vec(xml_char(), 1..12).prop_map(|v| v.into_iter().collect())
}

pub fn resource() -> impl Strategy<Value = Resource> {
    let seg = "[a-zA-Z0-9_.~äöüß漢字-]{1,8}";
    proptest::collection::vec(seg, 0..5)
        .prop_map(|segs| Resource::parse(&format!("/{}", segs.join("/"))).unwrap())
}

pub fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |d| d.is_finite()),
        Just(0.0),
        Just(-0.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        Just(5e-324),
        Just(1e20),
        Just(0.1),
    ]
}

pub fn datetime() -> impl Strategy<Value = DateTime> {
    // UTC years 0001..=9999 ([VAP-VAL-026]).
    (-62_135_596_800i64..=253_402_300_799i64).prop_map(|s| DateTime::from_unix_seconds(s).unwrap())
}

pub fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(Value::I4),
        prop_oneof![Just(i32::MIN), Just(i32::MAX), Just(0)].prop_map(Value::I4),
        double().prop_map(Value::Double),
        any::<bool>().prop_map(Value::Boolean),
        xml_string().prop_map(|s| Value::String(s.into())),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Base64),
        datetime().prop_map(Value::DateTime),
        Just(Value::Nil),
        resource().prop_map(Value::Res),
        (xml_string(), xml_string())
            .prop_map(|(class, message)| Value::Exception(Exception { class, message })),
    ]
}

pub fn args_of(v: impl Strategy<Value = Value>, max: usize) -> impl Strategy<Value = Args> {
    proptest::collection::vec((name(), v), 0..max).prop_map(|es| es.into_iter().collect())
}

pub fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(8, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            args_of(inner, 6).prop_map(Value::Struct),
        ]
    })
}
