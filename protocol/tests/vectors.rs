//! Runs every language-neutral test vector in `fixtures/vectors/*.json` (see
//! `fixtures/vectors/schema.json` for the file format). `VERTEBRA_BLESS=1` rewrites the
//! `expect` members from this implementation (review the diff!); otherwise a difference fails.
//! Every requirement ID a vector cites must exist in `spec/*.md`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{json, Value as J};
use vertebra_protocol::json::PayloadJson;
use vertebra_protocol::xml::{parse_element, to_string};
use vertebra_protocol::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn err(e: &DecodeError, condition: &Condition) -> J {
    json!({"error": e.rule.as_str(), "condition": condition.as_str()})
}

fn compute(kind: &str, input: &J) -> J {
    let text = input.as_str().unwrap_or_default();
    match kind {
        "value" => match parse_element(text.as_bytes(), None) {
            Err(e) => err(&e, &e.rule.condition()),
            Ok(el) => match Value::from_element(&el) {
                Ok(v) => json!({"ok": v, "canonical": to_string(&v.to_element()).unwrap()}),
                Err(e) => err(&e, &e.rule.condition()),
            },
        },
        "json-value" => match serde_json::from_str::<Value>(text) {
            Ok(v) if v.validate().is_ok() => {
                json!({"ok": v, "canonical": to_string(&v.to_element()).unwrap()})
            }
            _ => json!({"error": "invalid-json-value", "condition": "bad-value"}),
        },
        "stanza" => {
            let el = match parse_element(text.as_bytes(), None) {
                Ok(el) => el,
                Err(e) => return err(&e, &e.rule.condition()),
            };
            if el.name() == "op" && el.ns() == NS {
                if let Err(e) = Op::decode(&el) {
                    return json!({
                        "error": e.error.rule.as_str(),
                        "condition": e.condition().as_str(),
                        "token_usable": e.token.is_some(),
                    });
                }
            }
            match VertebraPayload::from_element(&el) {
                Ok(p) => json!({
                    "ok": PayloadJson::from(&p),
                    "canonical": to_string(&p.to_element()).unwrap(),
                }),
                Err(e) => err(&e, &e.rule.condition()),
            }
        }
        "op-result" => {
            match parse_element(text.as_bytes(), None).and_then(|el| OpResult::from_element(&el)) {
                Ok(r) => json!({"ok": PayloadJson::from(&r)}),
                Err(e) => err(&e, &Condition::BadResponse),
            }
        }
        "resource" => match Resource::parse(text) {
            Ok(r) => {
                json!({"ok": {"normalized": r.as_str(), "segments": r.segments().collect::<Vec<_>>()}})
            }
            Err(e) => err(&e, &Condition::BadValue),
        },
        "resource-match" => {
            let a = Resource::parse(input["a"].as_str().unwrap()).unwrap();
            let b = Resource::parse(input["b"].as_str().unwrap()).unwrap();
            assert_eq!(a.matches(&b), b.matches(&a), "matching is symmetric");
            json!({"ok": a.matches(&b)})
        }
        "token" => match RequestToken::parse(text) {
            Ok(t) => {
                let segs: Vec<String> = match &t {
                    RequestToken::Single(s) => vec![s.to_string()],
                    RequestToken::Pair(p) => vec![p.requester.to_string(), p.responder.to_string()],
                };
                json!({"ok": {"segments": segs}})
            }
            Err(e) => err(&e, &Condition::BadRequest),
        },
        "token-rotation" => {
            let t = RequestToken::parse(input["token"].as_str().unwrap()).unwrap();
            let s = Token::parse(input["s"].as_str().unwrap()).unwrap();
            json!({"ok": t.rotate(s).to_string()})
        }
        other => panic!("unknown vector kind {other}"),
    }
}

fn spec_ids() -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for e in std::fs::read_dir(root().join("spec")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            let text = std::fs::read_to_string(&p).unwrap();
            for part in text.split("[VAP-").skip(1) {
                if let Some(end) = part.find(']') {
                    ids.insert(format!("VAP-{}", &part[..end]));
                }
            }
        }
    }
    ids
}

#[test]
fn all_vectors() {
    let bless = std::env::var_os("VERTEBRA_BLESS").is_some();
    let known = spec_ids();
    let dir = root().join("fixtures/vectors");
    let mut ids = BTreeSet::new();
    let mut failures = Vec::new();
    let mut total = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json") && !p.ends_with("schema.json"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "vector files missing");
    for path in files {
        let mut doc: J = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for case in doc["cases"].as_array_mut().unwrap() {
            total += 1;
            let id = case["id"].as_str().unwrap().to_string();
            assert!(ids.insert(id.clone()), "duplicate vector id {id}");
            for r in case["requirements"].as_array().unwrap() {
                let r = r.as_str().unwrap();
                assert!(known.contains(r), "{id}: {r} is not a requirement in spec/");
            }
            let got = compute(case["kind"].as_str().unwrap(), &case["input"]);
            // A canonical form must decode to the same value (round trip through the vector).
            if let Some(c) = got.get("canonical").and_then(J::as_str) {
                let again = compute(case["kind"].as_str().unwrap(), &J::String(c.to_string()));
                let kind = case["kind"].as_str().unwrap();
                if kind != "json-value" {
                    assert_eq!(
                        again["ok"], got["ok"],
                        "{id}: canonical form decodes differently"
                    );
                }
            }
            if bless {
                case["expect"] = got;
            } else if case["expect"] != got {
                failures.push(format!("{id}: expected {} got {got}", case["expect"]));
            }
        }
        if bless {
            std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
        }
    }
    assert!(total >= 150, "only {total} vectors");
    assert!(
        failures.is_empty(),
        "{} vector(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every XML example of the spec (`fixtures/spec-examples/*.xml`) decodes, and its Vertebra
/// payload round-trips; every file in `invalid/` is rejected by a receiver, except those that
/// break a sender-only rule a receiver must tolerate.
#[test]
fn spec_examples() {
    let dir = root().join("fixtures/spec-examples");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        panic!("{} missing", dir.display());
    };
    let mut n = 0;
    for e in entries {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "xml") {
            continue;
        }
        let el = parse_element(&std::fs::read(&p).unwrap(), Some(xml::JABBER_CLIENT)).unwrap();
        let Some(child) = el.children().next() else {
            continue;
        };
        if child.ns() != NS {
            continue; // disco, ping
        }
        n += 1;
        if el.attr("type") == Some("result") {
            OpResult::from_element(child).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            continue;
        }
        let payload =
            VertebraPayload::from_element(child).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let back = VertebraPayload::from_element(&payload.to_element()).unwrap();
        assert_eq!(back, payload, "{}", p.display());
    }
    assert!(n >= 15, "only {n} spec examples with Vertebra payloads");

    // Sender-only rules a receiver tolerates: names on list children ([VAP-VAL-030]); unknown
    // error type or condition ([VAP-ERR-004]) and nack reason ([VAP-ERR-005]); children of ack
    // (ignored); a second IQ child (the IQ-level rule [VAP-TRN-005] is the shell's).
    let tolerated = [
        "list-child-named.xml",
        "error-unknown-type.xml",
        "error-unknown-condition.xml",
        "nack-unknown-reason.xml",
        "ack-with-child.xml",
        "two-vertebra-children.xml",
    ];
    // Files a receiver must reject. Files added to invalid/ later are only checked for "no
    // panic" until listed here.
    let must_reject = [
        "bare-value-as-iq-child.xml",
        "boolean-yes.xml",
        "cancel-without-token.xml",
        "data-negative-seq.xml",
        "double-nan.xml",
        "duplicate-struct-member.xml",
        "duplicate-top-level-name.xml",
        "i4-out-of-range.xml",
        "legacy-result-element.xml",
        "load-interval-too-short.xml",
        "load-negative.xml",
        "op-unknown-scope.xml",
        "op-window-too-large.xml",
        "res-empty-segment.xml",
        "res-without-slash.xml",
        "string-with-child.xml",
        "timeout-zero.xml",
        "token-three-segments.xml",
        "unknown-value-type.xml",
        "unnamed-top-level.xml",
    ];
    let mut rejected = 0;
    for e in std::fs::read_dir(dir.join("invalid")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let el = parse_element(&std::fs::read(&p).unwrap(), Some(xml::JABBER_CLIENT)).unwrap();
        let child = el.children().next().unwrap();
        let r = VertebraPayload::from_element(child);
        if tolerated.contains(&name.as_str()) {
            assert!(r.is_ok(), "{name}: {r:?}");
        } else if must_reject.contains(&name.as_str()) {
            assert!(r.is_err(), "{name} was accepted: {r:?}");
            rejected += 1;
        }
    }
    assert!(rejected >= 15, "only {rejected} invalid examples found");
}
