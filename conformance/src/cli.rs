//! Subcommand implementations (`run`, `list`, `explain`, `selftest`, `coverage`).

use crate::attach::{self, Attached, TargetArgs};
use crate::baseline::Baseline;
use crate::case::LevelLookup;
use crate::report::exit;
use crate::reqindex::ReqIndex;
use crate::runner::{self, RunConfig, RunOutput, Selection};
use crate::trace::Trace;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

pub struct RunRequest {
    pub target: TargetArgs,
    pub out: Option<PathBuf>,
    pub only: Vec<String>,
    pub skip: Vec<String>,
    pub time_scale: f64,
    pub baseline: Option<PathBuf>,
    pub quiet: bool,
    pub sequential: bool,
    pub command: Vec<String>,
    pub argv: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SelftestArgs {
    /// Also run the reference through a real Prosody (needs `prosody` installed).
    #[arg(long)]
    pub prosody: bool,
    /// Skip the mutants (reference only).
    #[arg(long)]
    pub no_mutants: bool,
    /// Multiply every time budget by F.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Write per-mutant results (JSON) here, for `coverage --mutants`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CoverageArgs {
    /// Selftest results (`selftest --out DIR` writes DIR/selftest.json) to report checks never
    /// seen to fail on a mutant.
    #[arg(long)]
    pub mutants: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Redact the value following `--password` (and `--requester-password`, `--stranger-password`).
pub fn redact(argv: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut hide = false;
    for a in argv {
        if hide {
            out.push("<redacted>".into());
            hide = false;
        } else if a.starts_with("--") && a.ends_with("password") && !a.contains('=') {
            out.push(a.clone());
            hide = true;
        } else if let Some((k, _)) = a
            .split_once('=')
            .filter(|(k, _)| k.starts_with("--") && k.ends_with("password"))
        {
            out.push(format!("{k}=<redacted>"));
        } else {
            out.push(a.clone());
        }
    }
    out
}

pub fn requirement_index() -> Arc<ReqIndex> {
    Arc::new(crate::reqsource::load())
}

/// Execute a run; returns the exit code.
pub async fn run(req: RunRequest) -> i32 {
    // The suite plus the promoted fuzz regression cases (fixtures/traces/regressions).
    let cases = crate::fuzz::regress::all_cases();
    if !(req.time_scale.is_finite() && req.time_scale > 0.0) {
        eprintln!("--time-scale must be a positive number");
        return exit::ENVIRONMENT;
    }
    let baseline = match &req.baseline {
        Some(p) => match Baseline::load(p) {
            Ok(b) => {
                let unknown: Vec<&str> = b
                    .entries
                    .iter()
                    .filter(|e| {
                        !cases
                            .iter()
                            .any(|c| crate::baseline::glob_match(&e.case, c.id))
                    })
                    .map(|e| e.case.as_str())
                    .collect();
                if !unknown.is_empty() {
                    eprintln!("baseline entries match no case: {}", unknown.join(", "));
                    return exit::ENVIRONMENT;
                }
                b
            }
            Err(e) => {
                eprintln!("{e}");
                return exit::ENVIRONMENT;
            }
        },
        // The reference's known bugs (reported, with reasons) are expected failures in
        // reference mode, so the run gates on anything new and flags fixed ones as stale.
        None if req.target.reference && req.target.mutant.is_none() => {
            let b = crate::selftest::reference_baseline();
            if !req.quiet {
                println!(
                    "reference mode: using the built-in reference baseline ({} known reference bugs, see conformance/reference-baseline.json); --baseline FILE overrides",
                    b.entries.len()
                );
            }
            b
        }
        None => Baseline::default(),
    };
    let selection = Selection {
        only: req.only.clone(),
        skip: req.skip.clone(),
    };
    if !cases.iter().any(|c| selection.selected(c)) {
        eprintln!("no case matches the --only/--skip filters (see `vertebra-conformance list`)");
        return exit::NOTHING_EXECUTED;
    }
    let trace = Trace::new();
    let attached: Result<Attached, String> =
        attach::attach(&req.target, &req.command, req.time_scale, &trace).await;
    let (target, mode) = match &attached {
        Ok(a) => (a.target.clone(), a.mode.as_str().to_string()),
        // The mode the arguments asked for, also when attaching failed.
        Err(_) => (describe_target(&req), requested_mode(&req).into()),
    };
    let cfg = RunConfig {
        time_scale: req.time_scale,
        selection,
        baseline,
        out: req.out.clone(),
        quiet: req.quiet,
        sequential: req.sequential,
        silent: false,
        target,
        mode,
        argv: redact(&req.argv),
    };
    let levels: Arc<dyn LevelLookup> = requirement_index();
    let session = attached
        .as_ref()
        .map(|a| a.session.clone())
        .map_err(|e| e.clone());
    let out: std::io::Result<RunOutput> = runner::run(cases, session, trace, levels, &cfg).await;
    if let Ok(a) = attached {
        attach::detach(a).await;
    }
    match out {
        Ok(o) => o.summary.exit_code,
        Err(e) => {
            eprintln!("cannot write reports: {e}");
            exit::ENVIRONMENT
        }
    }
}

/// The attach mode the arguments select (what the header shows even when attaching failed).
pub fn requested_mode(req: &RunRequest) -> &'static str {
    if req.target.reference {
        "reference"
    } else if !req.command.is_empty() {
        "spawn"
    } else {
        "server"
    }
}

fn describe_target(req: &RunRequest) -> String {
    if req.target.reference {
        "reference agent + dispatcher".into()
    } else if !req.command.is_empty() {
        req.command.join(" ")
    } else {
        req.target
            .agent
            .clone()
            .or(req.target.dispatcher.clone())
            .unwrap_or_else(|| "(none)".into())
    }
}

/// `list`
pub fn list(json: bool) -> i32 {
    let cases = crate::fuzz::regress::all_cases();
    if json {
        let v: Vec<serde_json::Value> = cases
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id, "area": c.area.as_str(), "title": c.title,
                    "subject": c.subject, "requirements": c.requirements,
                    "feature": c.feature, "budget_ms": c.budget_ms,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for c in cases {
            println!(
                "{:<22} {:<11} {:<60} {}",
                c.id,
                c.area.as_str(),
                c.title,
                c.requirements.join(" ")
            );
        }
        println!("{} cases", cases.len());
    }
    exit::CONFORMANT
}

/// `explain <ID>`
pub fn explain(id: &str) -> i32 {
    let idx = crate::reqsource::load();
    let up = id.to_ascii_uppercase();
    // The suite's cases and the promoted fuzz regression cases (FUZZ-REG-NNN).
    let all = crate::fuzz::regress::all_cases();
    if let Some(c) = all.iter().find(|c| c.id.eq_ignore_ascii_case(&up)) {
        println!("{} — {}", c.id, c.title);
        println!(
            "area: {}   subject: {:?}   budget: {} ms",
            c.area.as_str(),
            c.subject,
            c.budget_ms
        );
        if let Some(f) = c.feature {
            println!("needs disco feature: {f} (UNSUPPORTED when not claimed)");
        }
        println!("\nprocedure: {}", c.procedure);
        println!("\nverifies:");
        for r in c.requirements {
            match idx.get(r) {
                Some(i) => println!("  [{}] ({}, {}) {}", r, i.level.as_str(), i.role, i.text),
                None => println!("  [{r}] (not found in spec/)"),
            }
        }
        println!("\nhow to fix a failure: {}", c.fix);
        return exit::CONFORMANT;
    }
    match idx.get(&up) {
        Some(i) => {
            println!(
                "[{}] {} ({}) — spec/{}",
                i.id,
                i.level.as_str(),
                i.role,
                i.page
            );
            println!("  {}", i.text);
            let cases: Vec<_> = all
                .iter()
                .filter(|c| c.requirements.contains(&i.id.as_str()))
                .collect();
            if cases.is_empty() {
                match crate::coverage::not_automatable(&i.id) {
                    Some(why) => println!("\nno case: not automatable — {why}"),
                    None => println!("\nno case checks this requirement yet"),
                }
            } else {
                println!("\nchecked by:");
                for c in cases {
                    println!("  {} — {}", c.id, c.title);
                    println!("      fix: {}", c.fix);
                }
            }
            exit::CONFORMANT
        }
        None => {
            eprintln!("{id}: neither a case ID nor a requirement ID (see `list`)");
            exit::ENVIRONMENT
        }
    }
}

/// `selftest`
pub fn selftest(a: SelftestArgs) -> i32 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return exit::ENVIRONMENT;
        }
    };
    rt.block_on(crate::selftest::run(a))
}

/// `coverage`
pub fn coverage(a: CoverageArgs) -> i32 {
    crate::coverage::run(a)
}
