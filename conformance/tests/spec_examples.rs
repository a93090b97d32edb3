//! Every ```xml block of spec/*.md is a byte-identical file in fixtures/spec-examples/ (and vice
//! versa), every such fixture validates against spec/schema (xmllint), and every fixture in
//! fixtures/spec-examples/invalid/ fails validation.
//!
//! Regenerate the example fixtures after editing a page:
//!   VERTEBRA_BLESS=1 cargo test -p vertebra-conformance --test spec_examples

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use vertebra_conformance::requirements;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// file name → content, for every ```xml block, named `<page-stem>-<NN>.xml`.
fn examples_in_spec() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for path in requirements::page_paths(&root().join("spec")).expect("spec dir") {
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).expect("read page");
        let mut n = 0;
        let mut block: Option<Vec<&str>> = None;
        for line in text.lines() {
            assert!(
                line == "```xml" || !line.trim_start().starts_with("```xml"),
                "{}: an ```xml fence must start at column 0 with nothing after `xml`",
                path.display()
            );
            match &mut block {
                None if line == "```xml" => block = Some(Vec::new()),
                None => {}
                Some(lines) if line == "```" => {
                    n += 1;
                    let mut content = lines.join("\n");
                    content.push('\n');
                    out.insert(format!("{stem}-{n:02}.xml"), content);
                    block = None;
                }
                Some(lines) => lines.push(line),
            }
        }
        assert!(block.is_none(), "{}: unclosed ```xml block", path.display());
    }
    out
}

fn xml_files(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("xml") {
            out.insert(
                path.file_name().unwrap().to_str().unwrap().to_string(),
                path,
            );
        }
    }
    out
}

#[test]
fn every_spec_example_is_a_fixture_and_back() {
    let dir = root().join("fixtures").join("spec-examples");
    let expected = examples_in_spec();
    assert!(
        expected.len() >= 20,
        "only {} XML examples found",
        expected.len()
    );
    let bless = std::env::var("VERTEBRA_BLESS").as_deref() == Ok("1");
    if bless {
        std::fs::create_dir_all(&dir).expect("create fixtures dir");
        for (name, content) in &expected {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(content) {
                std::fs::write(&path, content).expect("write fixture");
            }
        }
        for name in xml_files(&dir).keys() {
            if !expected.contains_key(name) {
                std::fs::remove_file(dir.join(name)).expect("remove stale fixture");
            }
        }
    }
    let actual = xml_files(&dir);
    let mut problems = Vec::new();
    for (name, content) in &expected {
        match actual.get(name) {
            None => problems.push(format!("missing fixture {name}")),
            Some(path) => {
                let on_disk = std::fs::read_to_string(path).expect("read fixture");
                if &on_disk != content {
                    problems.push(format!("fixture {name} differs from its spec example"));
                }
            }
        }
    }
    for name in actual.keys() {
        if !expected.contains_key(name) {
            problems.push(format!("fixture {name} has no ```xml example in spec/"));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nRegenerate with: VERTEBRA_BLESS=1 cargo test -p vertebra-conformance --test spec_examples",
        problems.join("\n")
    );
}

/// Runs xmllint; returns (exit code, stderr). A missing xmllint is a failure, in CI and locally.
fn xmllint(file: &Path) -> (i32, String) {
    let schema = root().join("spec").join("schema").join("jabber-client.xsd");
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--nonet")
        .arg("--schema")
        .arg(&schema)
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run xmllint ({e}); install it (Debian: apt-get install libxml2-utils; \
                 .ci/run does this)"
            )
        });
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_example_fixture_validates() {
    let dir = root().join("fixtures").join("spec-examples");
    let files = xml_files(&dir);
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    let mut failures = Vec::new();
    for (name, path) in &files {
        let (code, stderr) = xmllint(path);
        if code != 0 {
            failures.push(format!("{name} (exit {code}):\n{stderr}"));
        }
    }
    assert!(
        failures.is_empty(),
        "fixtures failing the XML schema:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_invalid_fixture_fails_validation() {
    let dir = root()
        .join("fixtures")
        .join("spec-examples")
        .join("invalid");
    let files = xml_files(&dir);
    assert!(files.len() >= 10, "expected at least 10 invalid fixtures");
    let mut unexpected = Vec::new();
    for (name, path) in &files {
        let (code, stderr) = xmllint(path);
        // 3 = schema validation error. Anything else (0 = valid, 1 = not well-formed,
        // 5 = schema did not compile) means the fixture does not test the schema.
        if code != 3 || !stderr.contains("fails to validate") {
            unexpected.push(format!("{name}: exit {code}\n{stderr}"));
        }
    }
    assert!(
        unexpected.is_empty(),
        "invalid fixtures that did not fail schema validation:\n{}",
        unexpected.join("\n")
    );
}

/// The enumeration values of one named simple type of vertebra.xsd, read with xmllint's XPath.
fn xsd_enumeration(type_name: &str) -> std::collections::BTreeSet<String> {
    let xsd = root().join("spec").join("schema").join("vertebra.xsd");
    let xpath = format!(
        "//*[local-name()='simpleType'][@name='{type_name}']//*[local-name()='enumeration']/@value"
    );
    let out = Command::new("xmllint")
        .arg("--xpath")
        .arg(&xpath)
        .arg(&xsd)
        .output()
        .expect("run xmllint (install libxml2-utils)");
    assert!(
        out.status.success(),
        "xmllint --xpath failed for {type_name}"
    );
    String::from_utf8_lossy(&out.stdout)
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// (how it travels, condition) for each row of the table in spec/10-errors.md.
fn error_table() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(root().join("spec").join("10-errors.md")).expect("errors page");
    let mut rows = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | # | failure | detected by | how it travels | type | condition | reference |
        if cells.len() >= 8 && cells[1].parse::<u32>().is_ok() {
            rows.push((cells[4].to_string(), cells[6].trim_matches('`').to_string()));
        }
    }
    assert!(rows.len() >= 20, "errors table not found");
    rows
}

#[test]
fn xsd_conditions_match_the_errors_table() {
    let table = error_table();
    let of = |how: &str| -> std::collections::BTreeSet<String> {
        table
            .iter()
            .filter(|(h, _)| h == how)
            .map(|(_, c)| c.clone())
            .collect()
    };
    assert_eq!(
        xsd_enumeration("ErrorCondition"),
        of("error"),
        "<error condition> values"
    );
    assert_eq!(
        xsd_enumeration("NackReason"),
        of("nack"),
        "<nack reason> values"
    );
}
