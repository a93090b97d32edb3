//! Golden files: the JSON Schemas in `spec/schema/` (regenerate with `VERTEBRA_BLESS=1`; a stale
//! file fails) and insta snapshots of the canonical serialized forms.

use std::path::PathBuf;

use vertebra_protocol::json::{payloads_schema, values_schema};
use vertebra_protocol::xml::to_string;
use vertebra_protocol::*;

fn spec_schema(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("spec")
        .join("schema")
        .join(name)
}

fn golden(name: &str, schema: schemars::Schema) {
    let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
    let path = spec_schema(name);
    if std::env::var_os("VERTEBRA_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "{} is stale: regenerate with VERTEBRA_BLESS=1 cargo test -p vertebra-protocol --test golden",
        path.display()
    );
}

#[test]
fn values_schema_is_current() {
    golden("values.schema.json", values_schema());
}

#[test]
fn payloads_schema_is_current() {
    golden("payloads.schema.json", payloads_schema());
}

fn t() -> OpToken {
    OpToken::parse("9f1c2a7b4e6d8f0a1b3c5d7e9f2a4b6c:3e5a7c9b1d2f4e6a8c0b2d4f6a8c0e1b").unwrap()
}

fn all_types() -> Args {
    Args::new()
        .with("count", Value::I4(-42))
        .with("ratio", Value::Double(0.25))
        .with("big", Value::Double(1e20))
        .with("ok", Value::Boolean(true))
        .with(
            "note",
            Value::String("  two leading spaces, one trailing \r\n<&>".into()),
        )
        .with("empty", Value::String("".into()))
        .with("blob", Value::Base64(vec![0, 1, 2, 255]))
        .with(
            "at",
            Value::DateTime(DateTime::parse("2009-03-17T14:00:00+02:00").unwrap()),
        )
        .with("nothing", Value::Nil)
        .with(
            "cluster",
            Value::Res(Resource::parse("/cluster/rd00/").unwrap()),
        )
        .with(
            "mixed",
            Value::List(vec![
                Value::I4(1),
                Value::String("two".into()),
                Value::List(vec![]),
            ]),
        )
        .with(
            "host",
            Value::Struct(
                Args::new()
                    .with("name", Value::String("rd00-s00000".into()))
                    .with("cores", Value::I4(4)),
            ),
        )
        .with(
            "error",
            Value::Exception(Exception {
                class: "GemNotFound".into(),
                message: "no such gem: raills".into(),
            }),
        )
}

#[test]
fn snapshots_of_canonical_forms() {
    let op = Op {
        scope: Some(Scope::Direct),
        window: Some(4),
        ..Op::new(
            RequestToken::parse("9f1c2a7b4e6d8f0a1b3c5d7e9f2a4b6c").unwrap(),
            &Resource::parse("/gem/list").unwrap(),
            30_000,
        )
    }
    .with_args(
        Args::new()
            .with(
                "cluster",
                Value::Res(Resource::parse("/cluster/rd00").unwrap()),
            )
            .with("filter", Value::String("rails".into())),
    );
    insta::assert_snapshot!("op", to_string(&op.to_element()).unwrap());
    insta::assert_snapshot!(
        "op_result_fast_path",
        to_string(
            &OpResult {
                token: t(),
                ack: true
            }
            .to_element()
        )
        .unwrap()
    );
    insta::assert_snapshot!("ack", to_string(&Ack { token: t() }.to_element()).unwrap());
    insta::assert_snapshot!(
        "nack",
        to_string(
            &Nack {
                token: t(),
                reason: Condition::NotAuthorized
            }
            .to_element()
        )
        .unwrap()
    );
    insta::assert_snapshot!(
        "data_all_types",
        to_string(
            &Data {
                token: t(),
                seq: Some(0),
                args: all_types()
            }
            .to_element()
        )
        .unwrap()
    );
    insta::assert_snapshot!(
        "final_fast_path",
        to_string(
            &Final {
                token: t(),
                count: Some(1),
                args: Args::new().with("installed", Value::I4(42)),
            }
            .to_element()
        )
        .unwrap()
    );
    insta::assert_snapshot!(
        "error",
        to_string(
            &OpError {
                token: t(),
                error_type: ErrorType::Error,
                condition: Some(Condition::HandlerFailed),
                reason: Some("gem index unavailable".into()),
            }
            .to_element()
        )
        .unwrap()
    );
    insta::assert_snapshot!(
        "cancel",
        to_string(&Cancel { token: t() }.to_element()).unwrap()
    );
    insta::assert_snapshot!(
        "load",
        to_string(
            &Load {
                value: 0.25,
                inflight: Some(2),
                capacity: Some(8),
                interval: Some(1000)
            }
            .to_element()
        )
        .unwrap()
    );
    insta::assert_json_snapshot!("data_all_types_json", all_types());
}
