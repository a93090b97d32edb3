//! One test per historical capture (`fixtures/legacy/`, cut from
//! `shared/fixtures/vertebra-2008/`): each decodes where the legacy rules of
//! `spec/11-versioning.md` accept it, or is rejected with a precise rule and wire condition.

use std::path::PathBuf;

use minidom::Element;
use vertebra_protocol::xml::{parse_element, JABBER_CLIENT};
use vertebra_protocol::*;

fn load(name: &str) -> Element {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/legacy")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Captured stanzas have no stream around them: default namespace jabber:client.
    parse_element(&bytes, Some(JABBER_CLIENT)).expect("captures are well-formed XML")
}

/// What a 1.0 receiver makes of the capture.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// An IQ set/get payload decoded to this element.
    Decoded(&'static str),
    /// An op result (IQ result answering an op IQ) accepted with this token.
    OpResult(String),
    /// An IQ result that does not answer an op: its payload is ignored ([VAP-TRN-009]).
    Ignored,
    /// Rejected: broken rule and the condition reported for it.
    Rejected(Rule, Condition),
}

fn judge(name: &str, answers_op: bool) -> Verdict {
    let el = load(name);
    if el.name() != "iq" {
        return match VertebraPayload::from_element(&el) {
            Ok(_) => Verdict::Decoded("?"),
            Err(e) => Verdict::Rejected(e.rule, e.rule.condition()),
        };
    }
    let ty = el.attr("type").unwrap_or_default();
    let child = el
        .children()
        .next()
        .expect("captures carry a payload")
        .clone();
    match ty {
        "get" | "set" => {
            if child.name() == "op" && child.ns() == NS {
                // IQ get is accepted from legacy requesters only ([VAP-TRN-012]).
                return match Op::decode(&child) {
                    Ok(op) if ty == "get" && !op.is_legacy() => {
                        Verdict::Rejected(Rule::UnexpectedElement, Condition::BadRequest)
                    }
                    Ok(_) => Verdict::Decoded("op"),
                    Err(e) => Verdict::Rejected(e.error.rule, e.condition()),
                };
            }
            match VertebraPayload::from_element(&child) {
                Ok(p) => Verdict::Decoded(match p {
                    VertebraPayload::Ack(_) => "ack",
                    VertebraPayload::Data(_) => "data",
                    VertebraPayload::Final(_) => "final",
                    VertebraPayload::Nack(_) => "nack",
                    VertebraPayload::Error(_) => "error",
                    VertebraPayload::Cancel(_) => "cancel",
                    VertebraPayload::Op(_) => "op",
                    VertebraPayload::Load(_) => "load",
                }),
                Err(e) => Verdict::Rejected(e.rule, e.rule.condition()),
            }
        }
        "result" if answers_op => match OpResult::from_element(&child) {
            Ok(r) => Verdict::OpResult(r.token.to_string()),
            // [VAP-OPS-023]: the requester ends the call with bad-response.
            Err(e) => Verdict::Rejected(e.rule, Condition::BadResponse),
        },
        "result" => Verdict::Ignored,
        other => panic!("unexpected IQ type {other}"),
    }
}

const B_TOKEN: &str = "7e5293c579f4a9fa8da6320e9ef03e3f:fdef628240e1bfedc7e6ae17fd9213a8";

macro_rules! capture {
    ($test:ident, $file:literal, answers_op = $a:expr, $expect:expr) => {
        #[test]
        fn $test() {
            assert_eq!(judge($file, $a), $expect, "{}", $file);
        }
    };
}

// Era A (2008, packet_dumps.txt): no namespace anywhere → not Vertebra elements in 1.0
// ([VAP-VER-001]; IQ error service-unavailable per [VAP-TRN-011]).
capture!(
    era_a_01_discover_op_without_namespace,
    "era-a-01.xml",
    answers_op = false,
    Verdict::Rejected(Rule::WrongNamespace, Condition::ServiceUnavailable)
);
// Synchronous Herault answer: op echo with a one-segment token → bad-response ([VAP-OPS-023]).
capture!(
    era_a_02_sync_discover_answer,
    "era-a-02.xml",
    answers_op = true,
    Verdict::Rejected(Rule::BadToken, Condition::BadResponse)
);
capture!(
    era_a_03_list_op_without_namespace,
    "era-a-03.xml",
    answers_op = false,
    Verdict::Rejected(Rule::WrongNamespace, Condition::ServiceUnavailable)
);
// The ack inside the op's IQ result: no <op> child → bad-response ([VAP-OPS-023]).
capture!(
    era_a_04_ack_in_op_result,
    "era-a-04.xml",
    answers_op = true,
    Verdict::Rejected(Rule::UnexpectedElement, Condition::BadResponse)
);
capture!(
    era_a_05_result_status_final,
    "era-a-05.xml",
    answers_op = false,
    Verdict::Rejected(Rule::WrongNamespace, Condition::ServiceUnavailable)
);
capture!(
    era_a_06_ack_echo_in_result,
    "era-a-06.xml",
    answers_op = false,
    Verdict::Ignored
);

// Era B (client view): op in IQ get from a legacy requester is accepted as transport
// ([VAP-TRN-012]) but its verb type is bad-value ([VAP-VER-011]).
capture!(
    era_b_client_01_verb_op_in_get,
    "era-b-client-01.xml",
    answers_op = false,
    Verdict::Rejected(Rule::BadAttribute, Condition::BadValue)
);
// Full op echo with the rotated token: accepted ([VAP-VER-015], [VAP-OPS-022]).
capture!(
    era_b_client_02_op_result_echo,
    "era-b-client-02.xml",
    answers_op = true,
    Verdict::OpResult(B_TOKEN.into())
);
capture!(
    era_b_client_03_ack,
    "era-b-client-03.xml",
    answers_op = false,
    Verdict::Decoded("ack")
);
capture!(
    era_b_client_04_ack_echo,
    "era-b-client-04.xml",
    answers_op = false,
    Verdict::Ignored
);
// <result> is not a 1.0 element: bad-request ([VAP-TRN-010], spec §11.5).
capture!(
    era_b_client_05_result_element,
    "era-b-client-05.xml",
    answers_op = false,
    Verdict::Rejected(Rule::UnexpectedElement, Condition::BadRequest)
);
capture!(
    era_b_client_06_result_echo,
    "era-b-client-06.xml",
    answers_op = false,
    Verdict::Ignored
);
// <final> without namespace (jabber:client): service-unavailable ([VAP-TRN-011]).
capture!(
    era_b_client_07_final_without_namespace,
    "era-b-client-07.xml",
    answers_op = false,
    Verdict::Rejected(Rule::WrongNamespace, Condition::ServiceUnavailable)
);
capture!(
    era_b_client_08_final_echo,
    "era-b-client-08.xml",
    answers_op = false,
    Verdict::Ignored
);

// Era B (server view).
capture!(
    era_b_server_01_verb_op_in_get,
    "era-b-server-01.xml",
    answers_op = false,
    Verdict::Rejected(Rule::BadAttribute, Condition::BadValue)
);
capture!(
    era_b_server_02_op_result_echo,
    "era-b-server-02.xml",
    answers_op = true,
    Verdict::OpResult(B_TOKEN.into())
);
// Authorize with a two-segment token (allowed, [VAP-OPS-005]) but a verb type → bad-value.
capture!(
    era_b_server_03_authorize_verb,
    "era-b-server-03.xml",
    answers_op = false,
    Verdict::Rejected(Rule::BadAttribute, Condition::BadValue)
);
// Synchronous <result><authorized/></result> in the op's IQ result → bad-response.
capture!(
    era_b_server_04_sync_authorize_answer,
    "era-b-server-04.xml",
    answers_op = true,
    Verdict::Rejected(Rule::UnexpectedElement, Condition::BadResponse)
);
capture!(
    era_b_server_05_ack,
    "era-b-server-05.xml",
    answers_op = false,
    Verdict::Decoded("ack")
);
capture!(
    era_b_server_06_ack_echo,
    "era-b-server-06.xml",
    answers_op = false,
    Verdict::Ignored
);
capture!(
    era_b_server_07_result_element,
    "era-b-server-07.xml",
    answers_op = false,
    Verdict::Rejected(Rule::UnexpectedElement, Condition::BadRequest)
);
capture!(
    era_b_server_08_result_echo,
    "era-b-server-08.xml",
    answers_op = false,
    Verdict::Ignored
);
capture!(
    era_b_server_09_final_without_namespace,
    "era-b-server-09.xml",
    answers_op = false,
    Verdict::Rejected(Rule::WrongNamespace, Condition::ServiceUnavailable)
);
capture!(
    era_b_server_10_final_echo,
    "era-b-server-10.xml",
    answers_op = false,
    Verdict::Ignored
);

// Erlang fault-injector configurations: namespace .../agent/fuzz, not Vertebra elements.
macro_rules! erl {
    ($($test:ident => $file:literal),* $(,)?) => {$(
        capture!($test, $file, answers_op = false,
            Verdict::Rejected(Rule::WrongNamespace, Condition::ServiceUnavailable));
    )*};
}
erl! {
    erl_good_inspector => "erl-good_inspector.xml",
    erl_inspect_missing_behavior => "erl-inspect_missing_behavior.xml",
    erl_inspect_missing_id => "erl-inspect_missing_id.xml",
    erl_inspect_missing_min_max_percent => "erl-inspect_missing_min_max_percent.xml",
    erl_inspect_missing_rule => "erl-inspect_missing_rule.xml",
    erl_inspect_missing_type => "erl-inspect_missing_type.xml",
    erl_integration_inspector => "erl-integration_inspector.xml",
    erl_rule_missing_behavior => "erl-rule_missing_behavior.xml",
    erl_rule_missing_id => "erl-rule_missing_id.xml",
    erl_rule_missing_min_max_percent => "erl-rule_missing_min_max_percent.xml",
    erl_rule_missing_type => "erl-rule_missing_type.xml",
    erl_specific_inspector => "erl-specific_inspector.xml",
    erl_vertebra_inspector_example => "erl-vertebra_inspector.example.xml",
}

/// The legacy rules the captures cannot show, on the captures' own material: the Era B op with
/// a path type (as R HEAD sent it) is served, `res name="/mock"` being key-less
/// ([VAP-VER-009]); an E-style error without condition is `unspecified` for the requester
/// ([VAP-VER-016]).
#[test]
fn era_b_op_with_path_type_is_served_with_keyless_resources() {
    let mut el = load("era-b-client-01.xml")
        .children()
        .next()
        .unwrap()
        .clone();
    el.set_attr(
        minidom::rxml::Namespace::NONE,
        minidom::rxml::NcName::try_from("type").unwrap(),
        "/array_of_numbers".to_string(),
    );
    let op = Op::from_element(&el).unwrap();
    assert!(op.is_legacy());
    assert_eq!(op.timeout_ms(), 60_000);
    assert!(op.args.is_empty());
    assert_eq!(
        op.unkeyed_resources,
        vec![Resource::parse("/mock").unwrap()]
    );
    let scope = op.scope();
    assert_eq!(scope.len(), 1);
    assert_eq!(scope.iter().next().unwrap().key, None);

    let e = OpError::from_element(
        &parse_element(
            br#"<error token='123456789:123456789' xmlns='http://xmlschema.engineyard.com/agent/api' type='error'><string name='reason'>Testing</string></error>"#,
            None,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(e.condition, None);
    assert_eq!(e.reason.as_deref(), Some("Testing"));
}
