//! `spec/requirements.json` is generated from `spec/*.md` and must not be stale; the spec's
//! requirement convention (spec/README.md) must hold on every page.

use std::path::PathBuf;
use vertebra_conformance::requirements::{self, Level, Registry};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn extract() -> Registry {
    match requirements::extract_registry(&root().join("spec")) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn requirements_json_is_up_to_date() {
    let registry = extract();
    let fresh = requirements::to_json(&registry);
    let path = root().join("spec").join("requirements.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if std::env::var("VERTEBRA_BLESS").as_deref() == Ok("1") {
        if committed != fresh {
            std::fs::write(&path, &fresh).expect("write spec/requirements.json");
            eprintln!("wrote {}", path.display());
        }
        return;
    }
    assert!(
        committed == fresh,
        "spec/requirements.json is stale (spec/*.md changed). Regenerate it with\n  \
         VERTEBRA_BLESS=1 cargo test -p vertebra-conformance --test spec_requirements\n\
         and commit it together with the spec change."
    );
}

#[test]
fn compiled_in_registry_matches_the_file() {
    let path = root().join("spec").join("requirements.json");
    let on_disk = std::fs::read_to_string(&path).expect("spec/requirements.json exists");
    if std::env::var("VERTEBRA_BLESS").as_deref() == Ok("1") {
        return; // the file may just have been rewritten; the next build picks it up
    }
    assert_eq!(
        on_disk,
        requirements::REQUIREMENTS_JSON,
        "the crate was compiled with an older spec/requirements.json; rebuild"
    );
}

#[test]
fn every_area_page_has_requirements_of_its_prefix() {
    let registry = extract();
    let expected = [
        ("02-transport.md", "VAP-TRN-"),
        ("03-operations.md", "VAP-OPS-"),
        ("04-values.md", "VAP-VAL-"),
        ("05-resources.md", "VAP-RES-"),
        ("06-discovery.md", "VAP-DSC-"),
        ("07-load.md", "VAP-LOAD-"),
        ("08-dispatch.md", "VAP-DSP-"),
        ("09-security.md", "VAP-SEC-"),
        ("10-errors.md", "VAP-ERR-"),
        ("11-versioning.md", "VAP-VER-"),
        ("12-conformance-profile.md", "VAP-TPF-"),
    ];
    for (page, prefix) in expected {
        let of_page: Vec<_> = registry
            .requirements
            .iter()
            .filter(|r| r.page == page)
            .collect();
        assert!(!of_page.is_empty(), "{page} has no requirements");
        for r in of_page {
            assert!(r.id.starts_with(prefix), "{} on {page}", r.id);
        }
    }
    let musts = registry
        .requirements
        .iter()
        .filter(|r| r.level == Level::Must)
        .count();
    assert!(
        registry.requirements.len() >= 150,
        "expected at least 150 requirements, found {}",
        registry.requirements.len()
    );
    assert!(musts > registry.requirements.len() / 2);
}

#[test]
fn cross_references_name_existing_requirements() {
    // Every `VAP-XXX-NNN` mentioned anywhere in spec/*.md (prose, tables, Why notes) must exist.
    let registry = extract();
    let known: std::collections::BTreeSet<&str> = registry
        .requirements
        .iter()
        .map(|r| r.id.as_str())
        .chain(registry.withdrawn.iter().map(String::as_str))
        .collect();
    let mut missing = Vec::new();
    for path in requirements::page_paths(&root().join("spec")).expect("spec dir") {
        let text = std::fs::read_to_string(&path).expect("read page");
        for (i, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(pos) = rest.find("VAP-") {
                let cand: String = rest[pos..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                let cand = cand.trim_end_matches('-');
                let tail = cand.rsplit('-').next().unwrap_or("");
                if tail.len() == 3
                    && tail.chars().all(|c| c.is_ascii_digit())
                    && !known.contains(cand)
                {
                    missing.push(format!("{}:{}: {cand}", path.display(), i + 1));
                }
                rest = &rest[pos + 4..];
            }
        }
    }
    assert!(
        missing.is_empty(),
        "unknown requirement IDs referenced:\n{}",
        missing.join("\n")
    );
}
