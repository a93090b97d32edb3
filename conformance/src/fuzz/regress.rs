//! Regression cases from promoted fuzz traces: every `*.json` trace with an `id` in the
//! regression directory (default `fixtures/traces/regressions`, or `VERTEBRA_REGRESSIONS`)
//! becomes a case of `run` (area robustness): the trace is replayed against the
//! implementation with the fuzz oracles, and the case fails if any oracle fires.

use super::tracefile::TraceFile;
use super::{env_from_session, run_steps};
use crate::case::{Abort, Area, CaseDef, CaseResult, Ctx, Subject};
use crate::case_fn;
use crate::cases::CASES;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where regression traces live.
pub fn default_dir() -> PathBuf {
    if let Ok(d) = std::env::var("VERTEBRA_REGRESSIONS") {
        return PathBuf::from(d);
    }
    // The working directory or one of its parents (repository root, `conformance/`, …).
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let d = dir.join("fixtures/traces/regressions");
            if d.is_dir() {
                return d;
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/traces/regressions")
}

/// Load every regression trace (sorted by ID); unreadable files are reported on stderr.
pub fn load(dir: &Path) -> Vec<TraceFile> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for p in paths {
        match TraceFile::load(&p) {
            Ok(t) if t.id.is_some() => out.push(t),
            Ok(_) => eprintln!("warning: {} has no regression id; ignored", p.display()),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    out
}

fn regressions() -> &'static [TraceFile] {
    static R: OnceLock<Vec<TraceFile>> = OnceLock::new();
    R.get_or_init(|| load(&default_dir()))
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The suite's cases followed by the regression cases.
pub fn all_cases() -> &'static [CaseDef] {
    static ALL: OnceLock<Vec<CaseDef>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut v: Vec<CaseDef> = CASES
            .iter()
            .map(|c| CaseDef {
                id: c.id,
                area: c.area,
                subject: c.subject,
                title: c.title,
                requirements: c.requirements,
                feature: c.feature,
                budget_ms: c.budget_ms,
                procedure: c.procedure,
                fix: c.fix,
                run: c.run,
            })
            .collect();
        for t in regressions() {
            let id = t.id.clone().unwrap_or_default();
            if CASES.iter().any(|c| c.id == id) {
                continue;
            }
            let (req, detail) = t
                .finding
                .as_ref()
                .map(|f| (f.requirement.clone(), f.detail.clone()))
                .unwrap_or_else(|| ("VAP-TRN-006".into(), "a recorded sequence".into()));
            let reqs: &'static [&'static str] = Box::leak(vec![leak(req)].into_boxed_slice());
            v.push(CaseDef {
                id: leak(id),
                area: Area::Robustness,
                subject: if t.subject == "dispatcher" {
                    Subject::Dispatcher
                } else {
                    Subject::Agent
                },
                title: leak(if t.title.is_empty() {
                    "fuzz regression".to_string()
                } else {
                    t.title.clone()
                }),
                requirements: reqs,
                feature: (t.subject != "dispatcher").then_some(crate::cases::util::F_TEST),
                budget_ms: 30_000,
                procedure: leak(format!(
                    "Replay the promoted fuzz trace ({} steps) and apply the fuzz oracles (liveness, stanza validity, error taxonomy, leaks, duplicates, refused calls, counter).",
                    t.steps.len()
                )),
                fix: leak(format!("Fix what the fuzzer found: {detail}")),
                run: case_fn!(run_regression),
            });
        }
        v
    })
}

async fn run_regression(cx: Ctx) -> CaseResult {
    let t = regressions()
        .iter()
        .find(|t| t.id.as_deref() == Some(cx.case_id))
        .ok_or_else(|| Abort::error("regression trace not loaded"))?;
    // Steps that need the embedded server's handle (cuts, raw bytes, split writes) or its
    // injection cannot be replayed here without it: skipped with the reason (the harness's
    // environment lacks the capability, as for the other embedded-only cases), never passed.
    if let Some(s) = t.steps.iter().find(|s| {
        matches!(s.kind.as_str(), "cut" | "raw" | "split")
            || (s.via == super::tracefile::VIA_INJECT && cx.session.inject.is_none())
    }) {
        return Err(Abort::skipped(format!(
            "the trace needs the embedded server (step kind {:?}, via {:?}); run it with `vertebra-conformance replay` in reference or spawn mode",
            s.kind, s.via
        )));
    }
    let env = env_from_session(
        cx.session.clone(),
        None,
        t.subject == "dispatcher",
        cx.scale(),
        48,
    )
    .map_err(Abort::untestable)?;
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 & 0xffff_ffff)
        .unwrap_or(7)
        | 1;
    let (f, _) = run_steps(&env, &t.steps, epoch, false, false).await;
    let req = t
        .finding
        .as_ref()
        .map(|f| f.requirement.clone())
        .unwrap_or_else(|| "VAP-TRN-006".into());
    match f {
        None => {
            cx.check(
                &req,
                true,
                "no fuzz oracle fires on the replayed trace",
                "no finding",
            );
        }
        Some(f) => {
            cx.check(
                &f.requirement,
                false,
                "no fuzz oracle fires on the replayed trace",
                format!("{}: {}", f.oracle, f.detail),
            );
        }
    }
    Ok(())
}

/// Copy a finding trace into `dir` as a regression case; returns (ID, path).
pub fn promote(trace: &Path, dir: &Path, id: Option<&str>) -> Result<(String, PathBuf), String> {
    let mut t = TraceFile::load(trace)?;
    let existing = load(dir);
    let id = match id {
        Some(i) => i.to_ascii_uppercase(),
        None => {
            let n = existing
                .iter()
                .filter_map(|t| {
                    t.id.as_deref()?
                        .strip_prefix("FUZZ-REG-")?
                        .parse::<u32>()
                        .ok()
                })
                .max()
                .unwrap_or(0);
            format!("FUZZ-REG-{:03}", n + 1)
        }
    };
    if existing
        .iter()
        .any(|t| t.id.as_deref() == Some(id.as_str()))
        || CASES.iter().any(|c| c.id == id)
    {
        return Err(format!("{id} already exists"));
    }
    t.id = Some(id.clone());
    t.kind = "regression".into();
    let path = dir.join(format!("{id}.json"));
    // Relative to the working directory when below it (no machine paths in the file).
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.clone());
    t.replay = format!(
        "vertebra-conformance replay {} {}",
        shown.display(),
        t.found_on
    );
    t.save(&path)?;
    Ok((id, path))
}
