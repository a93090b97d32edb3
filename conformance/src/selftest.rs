//! `selftest`: the suite against the reference agent and dispatcher (embedded server, and
//! optionally a real Prosody), then against each built-in mutant — the reference with exactly
//! one injected violation. Prints, per mutant, the requirements it violates and whether a
//! check of those requirements failed (caught).
//!
//! Known bugs of the reference are listed in `reference-baseline.json` (expected failures
//! with reasons); a listed case that passes is reported stale and fails the selftest.

use crate::attach::{self, TargetArgs};
use crate::baseline::Baseline;
use crate::case::LevelLookup;
use crate::cases::CASES;
use crate::cli::SelftestArgs;
use crate::reference::{attach_reference, Server};
use crate::report::{exit, CaseRecord, Summary};
use crate::runner::{self, RunConfig, Selection};
use crate::trace::Trace;
use crate::verdict::{Disposition, Outcome};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use vertebra_reference_agent::config::Misbehaviour;

/// Baseline of known reference failures (reported to the reference's owner).
pub const REFERENCE_BASELINE: &str = include_str!("../reference-baseline.json");

/// The requirements each built-in mutant violates.
pub fn mutant_targets(name: &str) -> &'static [&'static str] {
    match name {
        "skip-ack" => &["VAP-OPS-028"],
        "wrong-token" => &["VAP-OPS-003"],
        "data-after-final" => &["VAP-OPS-045"],
        "ignore-deadline" => &["VAP-OPS-061"],
        "ignore-cancel" => &["VAP-OPS-055"],
        "reexecute-duplicate" => &["VAP-OPS-067"],
        "ignore-authorization" => &["VAP-SEC-006"],
        "stale-load" => &["VAP-LOAD-005"],
        "wrong-value-encoding" => &["VAP-VAL-015"],
        "leak-error-detail" => &["VAP-SEC-024"],
        "wrong-seq" => &["VAP-OPS-034"],
        "wrong-discover-order" => &["VAP-DSC-016"],
        "slow-death-detection" => &["VAP-DSC-013", "VAP-LOAD-012"],
        "accept-foreign-advert" => &["VAP-DSC-004"],
        "no-tenant-isolation" => &["VAP-SEC-019"],
        "allow-all" => &["VAP-SEC-014"],
        h => crate::reference::harness_mutant(h).unwrap_or(&[]),
    }
}

/// Mutants whose violation cannot show on the wire in the harness's environment, with why
/// (none at present: the
/// `no-tenant-isolation` mutant now also passes foreign discover ops through the responder's
/// tenant check, so DSP-TENANT-002 sees it).
pub const UNOBSERVABLE: &[(&str, &str)] = &[];

pub fn unobservable(name: &str) -> Option<&'static str> {
    UNOBSERVABLE
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteResult {
    pub mode: String,
    pub duration_ms: f64,
    pub summary: Option<Summary>,
    /// Cases that are not PASS/INFO (and not expected failures).
    pub problems: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MutantResult {
    pub name: String,
    pub targets: Vec<String>,
    pub caught: bool,
    /// Requirements with a FAIL check in this run.
    pub failed_requirements: Vec<String>,
    pub failed_cases: Vec<String>,
    pub error: Option<String>,
    pub duration_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelftestReport {
    pub reference: Vec<SuiteResult>,
    pub mutants: Vec<MutantResult>,
}

fn reference_args(mutant: Option<&str>) -> TargetArgs {
    TargetArgs {
        reference: true,
        server: None,
        jid: None,
        password: None,
        requester_jid: None,
        requester_password: None,
        stranger_jid: None,
        stranger_password: None,
        agent: None,
        dispatcher: None,
        role: attach::Role::Agent,
        ready_timeout: 10.0,
        load_interval_ms: 200,
        mutant: mutant.map(str::to_string),
    }
}

/// Run the suite (or a selection) against the reference (optionally a mutant).
pub async fn run_reference(
    mutant: Option<&str>,
    server: Server,
    selection: Selection,
    scale: f64,
    baseline: Baseline,
    out: Option<std::path::PathBuf>,
) -> Result<(Vec<CaseRecord>, Summary), String> {
    let trace = Trace::new();
    let args = reference_args(mutant);
    let att = attach_reference(&args, scale, &trace, Some(server)).await?;
    let cfg = RunConfig {
        time_scale: scale,
        selection,
        baseline,
        out,
        quiet: true,
        sequential: false,
        silent: true,
        target: att.target.clone(),
        mode: att.mode.as_str().into(),
        argv: vec![],
    };
    let levels: Arc<dyn LevelLookup> = crate::cli::requirement_index();
    let res = runner::run(CASES, Ok(att.session.clone()), trace, levels, &cfg).await;
    attach::detach(att).await;
    let out = res.map_err(|e| e.to_string())?;
    Ok((out.cases, out.summary))
}

pub fn reference_baseline() -> Baseline {
    serde_json::from_str(REFERENCE_BASELINE).unwrap_or_default()
}

fn problems(cases: &[CaseRecord]) -> Vec<String> {
    cases
        .iter()
        .filter(|c| {
            !(matches!(c.outcome, Outcome::Pass | Outcome::Info)
                || c.disposition == Disposition::ExpectedFailure
                || (c.outcome == Outcome::Skipped
                    && c.reason.as_deref().is_some_and(|r| r.starts_with("needs "))))
                || c.disposition == Disposition::Stale
        })
        .map(|c| {
            format!(
                "{} {}{}",
                c.id,
                c.outcome.as_str(),
                if c.disposition == Disposition::Stale {
                    " (stale baseline entry)"
                } else {
                    ""
                }
            )
        })
        .collect()
}

/// The reference in one mode: every case PASS/INFO (or a listed expected failure).
pub async fn reference_suite(server: Server, scale: f64) -> SuiteResult {
    let mode = match server {
        Server::Embedded => "embedded",
        Server::Prosody => "prosody",
    };
    let t0 = Instant::now();
    match run_reference(
        None,
        server,
        Selection::default(),
        scale,
        reference_baseline(),
        None,
    )
    .await
    {
        Ok((cases, summary)) => SuiteResult {
            mode: mode.into(),
            duration_ms: t0.elapsed().as_secs_f64() * 1000.0,
            problems: problems(&cases),
            summary: Some(summary),
            error: None,
        },
        Err(e) => SuiteResult {
            mode: mode.into(),
            duration_ms: t0.elapsed().as_secs_f64() * 1000.0,
            summary: None,
            problems: vec![],
            error: Some(e),
        },
    }
}

/// One mutant: run the cases checking its targeted requirements (all cases when unknown).
pub async fn mutant(name: &str, scale: f64) -> MutantResult {
    let targets = mutant_targets(name);
    let selection = Selection {
        only: targets.iter().map(|s| s.to_string()).collect(),
        skip: vec![],
    };
    let t0 = Instant::now();
    let r = run_reference(
        Some(name),
        Server::Embedded,
        selection,
        scale,
        Baseline::default(),
        None,
    )
    .await;
    let duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
    match r {
        Ok((cases, _)) => {
            let mut failed: Vec<String> = cases
                .iter()
                .flat_map(|c| {
                    c.checks
                        .iter()
                        .filter(|k| k.outcome == Outcome::Fail)
                        .map(|k| k.requirement.clone())
                })
                .collect();
            failed.sort();
            failed.dedup();
            let caught = if targets.is_empty() {
                !failed.is_empty()
            } else {
                targets.iter().any(|t| failed.iter().any(|f| f == t))
            };
            MutantResult {
                name: name.into(),
                targets: targets.iter().map(|s| s.to_string()).collect(),
                caught,
                failed_requirements: failed,
                failed_cases: cases
                    .iter()
                    .filter(|c| c.outcome == Outcome::Fail)
                    .map(|c| c.id.clone())
                    .collect(),
                error: None,
                duration_ms,
            }
        }
        Err(e) => MutantResult {
            name: name.into(),
            targets: targets.iter().map(|s| s.to_string()).collect(),
            caught: false,
            failed_requirements: vec![],
            failed_cases: vec![],
            error: Some(e),
            duration_ms,
        },
    }
}

/// The reference's built-in mutants, then the harness-side ones
/// ([`crate::reference::HARNESS_MUTANTS`]: the reference configured into one violation).
pub fn mutant_names() -> Vec<&'static str> {
    Misbehaviour::ALL
        .iter()
        .map(|m| m.name())
        .chain(crate::reference::HARNESS_MUTANTS.iter().map(|(n, _)| *n))
        .collect()
}

pub async fn run(a: SelftestArgs) -> i32 {
    let mut report = SelftestReport {
        reference: vec![],
        mutants: vec![],
    };
    let mut servers = vec![Server::Embedded];
    if a.prosody {
        servers.push(Server::Prosody);
    }
    let mut ok = true;
    let mut env_error = false;
    for s in servers {
        let r = reference_suite(s, a.time_scale).await;
        match (&r.error, &r.summary) {
            (Some(e), _) => {
                println!("reference ({}): ERROR {e}", r.mode);
                env_error = true;
            }
            (None, Some(sum)) => {
                let (other, _) = crate::report::closing_lines(sum);
                println!(
                    "reference ({}): {} in {:.1} s — {}",
                    r.mode,
                    if r.problems.is_empty() {
                        "all PASS (expected failures per reference-baseline.json)"
                    } else {
                        "PROBLEMS"
                    },
                    r.duration_ms / 1000.0,
                    other
                );
                for p in &r.problems {
                    println!("    {p}");
                }
                ok &= r.problems.is_empty();
            }
            _ => {}
        }
        report.reference.push(r);
    }
    if !a.no_mutants {
        println!("mutants (each: the reference with one violation; caught = a check of a targeted requirement FAILs):");
        for name in mutant_names() {
            let m = mutant(name, a.time_scale).await;
            let unobs = unobservable(&m.name);
            println!(
                "  {:<22} {:<12} targets {:<28} failing checks: {}{}",
                m.name,
                if m.caught {
                    "CAUGHT"
                } else if unobs.is_some() {
                    "UNOBSERVABLE"
                } else {
                    "MISSED"
                },
                m.targets.join(" "),
                if m.failed_requirements.is_empty() {
                    "none".to_string()
                } else {
                    m.failed_requirements.join(" ")
                },
                m.error
                    .as_ref()
                    .map(|e| format!(" (ERROR: {e})"))
                    .unwrap_or_default()
            );
            if let (false, Some(why)) = (m.caught, unobs) {
                println!("      not observable here: {why}");
            } else {
                ok &= m.caught;
            }
            env_error |= m.error.is_some();
            report.mutants.push(m);
        }
        let caught = report.mutants.iter().filter(|m| m.caught).count();
        println!("mutants caught: {caught} of {}", report.mutants.len());
        // Per requirement.
        let mut per_req: std::collections::BTreeMap<&str, Vec<(&str, bool)>> = Default::default();
        for m in &report.mutants {
            for t in &m.targets {
                per_req
                    .entry(t.as_str())
                    .or_default()
                    .push((m.name.as_str(), m.failed_requirements.contains(t)));
            }
        }
        println!("per requirement:");
        for (req, ms) in per_req {
            for (m, c) in ms {
                println!(
                    "  {req:<14} mutant {m:<22} {}",
                    if c {
                        "caught by a check of this requirement"
                    } else {
                        "NOT caught"
                    }
                );
            }
        }
    }
    if let Some(dir) = &a.out {
        if std::fs::create_dir_all(dir).is_ok() {
            let _ = std::fs::write(
                dir.join("selftest.json"),
                serde_json::to_string_pretty(&report).unwrap_or_default(),
            );
        }
    }
    if !ok {
        exit::NON_CONFORMANT
    } else if env_error {
        exit::ENVIRONMENT
    } else {
        exit::CONFORMANT
    }
}
