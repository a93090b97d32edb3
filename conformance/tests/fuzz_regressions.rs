//! Promoted fuzz findings (fixtures/traces/regressions) are cases of `run`: they pass on the
//! real reference agent and fail on the mutant they were found on; traces load, re-judge
//! offline, and promotion assigns the next free FUZZ-REG ID.

use std::path::Path;
use std::process::Command;
use vertebra_conformance::fuzz::regress;
use vertebra_conformance::fuzz::replay::{default_roles, judge_offline};
use vertebra_conformance::fuzz::tracefile::TraceFile;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn regression_traces_are_cases_and_rejudge_offline() {
    let dir = repo().join("fixtures/traces/regressions");
    let traces = regress::load(&dir);
    assert!(traces.len() >= 2, "{}", dir.display());
    let ids: Vec<&str> = regress::all_cases().iter().map(|c| c.id).collect();
    for t in &traces {
        let id = t.id.as_deref().unwrap();
        assert!(id.starts_with("FUZZ-REG-"), "{id}");
        assert!(
            ids.contains(&id),
            "{id} not registered as a case: {:?}",
            &ids[ids.len().saturating_sub(4)..]
        );
        assert!(!t.steps.is_empty());
        let f = t.finding.as_ref().expect("a regression keeps its finding");
        // Stanza-level findings are still judged failures offline, from the recorded wire.
        if f.oracle == "duplicate-reexecuted" {
            let (found, n) = judge_offline(&t.observed, &default_roles());
            assert!(n > 0);
            assert!(found.iter().any(|x| x.oracle == f.oracle), "{found:?}");
        }
    }
    // Promotion picks the next free ID.
    let tmp = tempfile::tempdir().unwrap();
    for t in &traces {
        let p = tmp
            .path()
            .join(format!("{}.json", t.id.as_deref().unwrap()));
        t.save(&p).unwrap();
    }
    let src = tmp.path().join("finding.json");
    let mut f: TraceFile = traces[0].clone();
    f.id = None;
    f.save(&src).unwrap();
    let (id, path) = regress::promote(&src, tmp.path(), None).unwrap();
    assert_eq!(id, format!("FUZZ-REG-{:03}", traces.len() + 1));
    assert_eq!(
        TraceFile::load(&path).unwrap().id.as_deref(),
        Some(id.as_str())
    );
    assert!(regress::promote(&src, tmp.path(), Some(&id)).is_err());
}

fn harness(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vertebra-conformance"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run the harness");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn regression_cases_pass_on_the_reference_and_fail_on_their_mutant() {
    let (code, out) = harness(&["run", "--reference", "--only", "FUZZ-REG-*", "--quiet"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 passed") || out.contains("passed, 0 failed"),
        "{out}"
    );
    let (code, out) = harness(&[
        "run",
        "--reference",
        "--mutant",
        "reexecute-reordered-duplicate",
        "--only",
        "FUZZ-REG-001",
        "--quiet",
    ]);
    assert_eq!(code, 1, "{out}");
    // Replay of a promoted trace against its mutant reproduces (exit 4), offline too.
    let t = "fixtures/traces/regressions/FUZZ-REG-001.json";
    let (code, out) = harness(&[
        "replay",
        t,
        "--reference",
        "--mutant",
        "reexecute-reordered-duplicate",
    ]);
    assert_eq!(code, 4, "{out}");
    let (code, out) = harness(&["replay", t, "--offline"]);
    assert_eq!(code, 4, "{out}");
    let (code, out) = harness(&["replay", t, "--reference"]);
    assert_eq!(code, 0, "{out}");
}
