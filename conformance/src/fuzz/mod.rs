//! `vertebra-conformance fuzz`: stateful, structure-aware fuzzing of an agent or dispatcher
//! through the harness's attach modes, with black-box oracles, delta-debugging minimization
//! of every finding to a replayable trace, and promotion of traces to regression cases.
//!
//! * [`gen`] — inputs from a model of the protocol state (valid, mutated, impossible orders,
//!   duplicates, stranger replays, bursts; injected/oversized/split writes in embedded mode).
//! * [`exec`] — runs steps with live oracles (ping barrier, echo probe, counter, process exit,
//!   resident memory) and [`judge`] (stanza validity, error taxonomy, leaks, duplicates,
//!   refused calls executed, stanzas after the terminal).
//! * [`minimize`] — ddmin over the step sequence.
//! * [`tracefile`] — the JSON trace format; [`replay`] — `replay`, offline re-judging, and
//!   converting a conformance run's results into canonical traces; [`regress`] — regression
//!   cases (`FUZZ-REG-NNN`) picked up by `run`.

pub mod exec;
pub mod gen;
pub mod judge;
pub mod minimize;
pub mod regress;
pub mod replay;
pub mod rng;
pub mod tracefile;

use crate::attach::{self, Attached, TargetArgs};
use crate::report::exit;
use crate::trace::{Trace, TraceEvent};
use exec::{Env, Execution};
use gen::{Gen, GenConfig};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracefile::{Finding, Roles, Step, TraceFile};
use vertebra_embedded_server::ServerHandle;

/// Exit code of `fuzz` when it found something.
pub const EXIT_FINDINGS: i32 = 4;

/// What to fuzz and how long.
#[derive(Debug, Clone)]
pub struct FuzzConfig {
    pub seed: u64,
    /// Input budget.
    pub inputs: u64,
    /// Time budget.
    pub duration: Option<Duration>,
    /// Probe (echo, counter, memory) every this many inputs.
    pub probe_every: usize,
    pub minimize: bool,
    pub max_trials: usize,
    pub minimize_time: Duration,
    /// Where finding traces go (none: not saved).
    pub out: Option<PathBuf>,
    /// Attach flags to print in the replay command.
    pub replay_flags: String,
    /// Stop after this many distinct findings (0 = no limit).
    pub max_findings: usize,
    /// Print progress.
    pub verbose: bool,
    /// Feedback-guided input selection (corpus of inputs with new coverage signatures).
    pub bias: bool,
    /// Disruptive inputs: connection cuts (embedded) and restarts (spawn, reference).
    pub disrupt: bool,
    /// Raw input that aborts the Rust XMPP stack ([`gen::RAW_DEEP`]; spawn mode only).
    pub raw_deep: bool,
}

impl Default for FuzzConfig {
    fn default() -> Self {
        FuzzConfig {
            seed: 1,
            inputs: 1000,
            duration: None,
            probe_every: 16,
            minimize: true,
            max_trials: 150,
            minimize_time: Duration::from_secs(60),
            out: None,
            replay_flags: "--reference".into(),
            max_findings: 0,
            verbose: false,
            bias: true,
            disrupt: true,
            raw_deep: true,
        }
    }
}

/// One minimized finding.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Found {
    pub finding: Finding,
    /// Steps before / after minimization.
    pub steps_before: usize,
    pub steps_after: usize,
    pub trials: usize,
    /// Did the minimized trace fail again on a final confirmation run?
    pub confirmed: bool,
    pub trace: TraceFile,
    pub path: Option<PathBuf>,
    pub replay: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FuzzReport {
    pub seed: u64,
    pub inputs: u64,
    pub elapsed_s: f64,
    pub inputs_per_s: f64,
    pub stanzas_judged: u64,
    pub restarts: u64,
    pub findings: Vec<Found>,
    /// Findings whose minimized trace did not fail again on confirmation (timing, load):
    /// reported, but not counted as findings.
    pub unconfirmed: Vec<Found>,
    /// Findings of an oracle that had already fired (not minimized again).
    pub repeats: u64,
    pub stopped: Option<String>,
    /// Distinct coverage signatures (input kind, kinds of answers, target state) seen.
    pub signatures: usize,
    /// Inputs generated from the corpus (feedback-guided).
    pub biased_inputs: u64,
    pub corpus: usize,
    /// Raw-bytes inputs by what the target did: closed the stream (and came back), kept it
    /// (went on answering), stuck (kept it without answering; cut by the harness).
    pub raw_closed: u64,
    pub raw_kept: u64,
    pub raw_stuck: u64,
}

fn count_raw(report: &mut FuzzReport, exec: &mut Execution<'_>) {
    for (_, o) in exec.raw_outcomes.drain(..) {
        match o {
            "closed" => report.raw_closed += 1,
            "kept" => report.raw_kept += 1,
            _ => report.raw_stuck += 1,
        }
    }
}

/// Whether the embedded server can write raw bytes into a connection.
pub const RAW_HOOK: bool = true;

/// What a step is, for its coverage signature: kind, IQ type, sender, payload element and op
/// type (without values).
pub fn step_what(step: &Step) -> String {
    match step.kind.as_str() {
        "iq" | "message" => {
            let (name, ty) = step
                .xml
                .as_deref()
                .filter(|x| x.len() < 32 * 1024)
                .and_then(|x| x.parse::<minidom::Element>().ok())
                .map(|e| {
                    (
                        e.name().to_string(),
                        e.attr("type").unwrap_or("").to_string(),
                    )
                })
                .unwrap_or_else(|| ("-".into(), String::new()));
            let via = if step.via == tracefile::VIA_INJECT {
                match step.from.as_deref() {
                    Some("{{requester}}") => "inject-requester",
                    _ => "inject-other",
                }
            } else {
                step.via.as_str()
            };
            format!(
                "{}:{}:{via}:{name}:{ty}",
                step.kind,
                step.iq_type.as_deref().unwrap_or("")
            )
        }
        "raw" => format!(
            "raw:{}",
            step.note
                .split("raw bytes: ")
                .nth(1)
                .unwrap_or("")
                .split(" truncated")
                .next()
                .unwrap_or("")
        ),
        k => k.to_string(),
    }
}

/// Coverage feedback: signatures of the steps sent since the last call (`all`: every one;
/// otherwise those at least two steps old, whose answers have had time to come).
fn feed_back(
    exec: &Execution<'_>,
    gen: &mut Gen,
    seen: &mut HashSet<String>,
    unsigned: &mut Vec<(usize, Step)>,
    now: usize,
    all: bool,
) {
    let keep = unsigned.split_off(
        unsigned
            .iter()
            .position(|(i, _)| !all && i + 2 > now)
            .unwrap_or(unsigned.len()),
    );
    for (i, s) in unsigned.drain(..) {
        if seen.insert(exec.judge.signature(i, &step_what(&s))) {
            gen.add_to_corpus(&s);
        }
    }
    *unsigned = keep;
}

/// Build the execution environment from an attach.
pub fn env_from(
    a: &Attached,
    dispatcher: bool,
    scale: f64,
    rss_limit_mb: u64,
) -> Result<Env, String> {
    let server = a
        .guards
        .iter()
        .find_map(|g| g.downcast_ref::<Arc<ServerHandle>>().cloned());
    env_from_session(a.session.clone(), server, dispatcher, scale, rss_limit_mb)
}

/// Build the execution environment from a session (and the embedded server, if known).
pub fn env_from_session(
    s: Arc<crate::session::Session>,
    server: Option<Arc<ServerHandle>>,
    dispatcher: bool,
    scale: f64,
    rss_limit_mb: u64,
) -> Result<Env, String> {
    let target = if dispatcher {
        s.dispatcher.as_ref().map(|d| d.jid.clone()).ok_or(
            "no dispatcher attached (use --dispatcher or --role dispatcher, or fuzz the agent)",
        )?
    } else {
        s.agent.clone().ok_or(
            "no agent attached (use --agent, or fuzz the dispatcher with --subject dispatcher)",
        )?
    };
    let dsp = if dispatcher {
        s.dispatcher
            .as_ref()
            .and_then(|d| d.agents.first())
            .map(|p| p.jid.to_string())
    } else {
        s.dsp.as_ref().map(|p| p.jid.to_string())
    };
    let roles = Roles {
        agent: s.agent.clone().unwrap_or_default(),
        requester: s.req.jid.to_string(),
        stranger: s.stranger.jid.to_string(),
        dispatcher: dsp.unwrap_or_default(),
        target,
        domain: s.domain.clone(),
        // The server's second domain when it serves one ([`Roles::fill`] has a fallback).
        foreign_domain: server
            .as_ref()
            .and_then(|h| h.domains().into_iter().find(|d| *d != s.domain))
            .unwrap_or_default(),
        secrets: vec![s.password.clone(), s.req_password.clone()],
    };
    let test_profile = !dispatcher && s.has_feature(crate::cases::util::F_TEST);
    Ok(Env {
        session: s,
        server,
        roles,
        dispatcher,
        scale,
        rss_limit: rss_limit_mb << 20,
        test_profile,
    })
}

pub fn needs_restart(oracle: &str) -> bool {
    matches!(oracle, "liveness" | "process-exit" | "memory-growth")
}

/// Oracles that need the probes (echo, counter, memory, exit) rather than the stanzas alone.
fn needs_probes(oracle: &str) -> bool {
    needs_restart(oracle) || oracle == "counter-mismatch"
}

/// Run `steps` once (optionally after restarting the implementation); the first finding and
/// the recorded wire. All oracles run at the end.
pub async fn run_steps(
    env: &Env,
    steps: &[Step],
    epoch: u64,
    restart: bool,
    record: bool,
) -> (Option<Finding>, Vec<TraceEvent>) {
    run_steps_for(env, steps, epoch, restart, record, None).await
}

/// [`run_steps`], checking only what `oracle` needs at the end (faster minimization trials).
pub async fn run_steps_for(
    env: &Env,
    steps: &[Step],
    epoch: u64,
    restart: bool,
    record: bool,
    oracle: Option<&str>,
) -> (Option<Finding>, Vec<TraceEvent>) {
    if restart && env.session.control.is_some() {
        if let Err(e) = exec::restart_bounded(env).await {
            return (
                None,
                vec![TraceEvent {
                    t_ms: 0.0,
                    dir: crate::trace::Direction::Note,
                    via: "harness".into(),
                    data: format!("restart failed: {e}"),
                }],
            );
        }
    }
    let counter = oracle.is_none_or(|o| o == "counter-mismatch");
    let mut x = Execution::start_with(env, epoch, record, counter).await;
    for (i, s) in steps.iter().enumerate() {
        if let Some(f) = x.step(i, s).await {
            return (Some(f), x.observed);
        }
    }
    let f = match oracle {
        Some(o) if !needs_probes(o) => x.settle(env_budget(env, 300)).await,
        _ => x.checkpoint().await,
    };
    (f, x.observed)
}

fn env_budget(env: &Env, ms: u64) -> Duration {
    Duration::from_secs_f64(ms as f64 * env.scale / 1000.0)
}

/// Minimize a failing sequence for `oracle`.
pub async fn minimize(
    env: &Env,
    steps: Vec<Step>,
    oracle: &str,
    epoch: &AtomicU64,
    max_trials: usize,
    time: Duration,
) -> (Vec<Step>, usize) {
    // Restart only when the previous trial may have left the target dead or bloated (it
    // reproduced such a finding, or it is the first trial after one).
    let dirty = std::sync::atomic::AtomicBool::new(needs_restart(oracle));
    let deadline = Instant::now() + time;
    let dirty = &dirty;
    minimize::ddmin(steps, max_trials, |c: Vec<Step>| {
        let e = epoch.fetch_add(1, Ordering::Relaxed);
        async move {
            if Instant::now() >= deadline {
                return false;
            }
            let restart = dirty.load(Ordering::Relaxed);
            let (f, _) = run_steps_for(env, &c, e, restart, false, Some(oracle)).await;
            let hit = f.is_some_and(|f| f.oracle == oracle);
            dirty.store(hit && needs_restart(oracle), Ordering::Relaxed);
            hit
        }
    })
    .await
}

fn replay_command(path: &Path, flags: &str) -> String {
    let (pre, post) = match flags.split_once(" -- ") {
        Some((a, b)) => (a.to_string(), format!(" -- {b}")),
        None => (flags.to_string(), String::new()),
    };
    format!(
        "vertebra-conformance replay {} {}{}",
        path.display(),
        pre.trim(),
        post
    )
}

/// The fuzz loop.
pub async fn fuzz(env: &Env, cfg: &FuzzConfig) -> FuzzReport {
    let mut gen = Gen::new(
        cfg.seed,
        GenConfig {
            cut: cfg.disrupt && env.server.is_some(),
            restart: cfg.disrupt
                && env.session.control.is_some()
                && env.session.mode != crate::session::Mode::Server,
            raw: RAW_HOOK && env.server.is_some(),
            jid: true,
            raw_deep: cfg.raw_deep && env.session.mode == crate::session::Mode::Spawn,
            bias: cfg.bias,
            ..GenConfig::basic(
                env.dispatcher,
                env.session.inject.is_some(),
                env.test_profile,
            )
        },
    );
    let mut sigs: HashSet<String> = HashSet::new();
    let mut unsigned: Vec<(usize, Step)> = Vec::new();
    let start = Instant::now();
    let epoch = AtomicU64::new(1);
    let mut exec = Execution::start(env, epoch.fetch_add(1, Ordering::Relaxed), false).await;
    let mut window: Vec<Step> = Vec::new();
    let mut report = FuzzReport {
        seed: cfg.seed,
        inputs: 0,
        elapsed_s: 0.0,
        inputs_per_s: 0.0,
        stanzas_judged: 0,
        restarts: 0,
        findings: Vec::new(),
        unconfirmed: Vec::new(),
        repeats: 0,
        stopped: None,
        signatures: 0,
        biased_inputs: 0,
        corpus: 0,
        raw_closed: 0,
        raw_kept: 0,
        raw_stuck: 0,
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut time_in_minimize = Duration::ZERO;
    let mut last_print = Instant::now();
    loop {
        let over_time = cfg.duration.is_some_and(|d| start.elapsed() >= d);
        let done = report.inputs >= cfg.inputs || over_time;
        let step = if done { None } else { Some(gen.next_step()) };
        let found;
        if let Some(step) = &step {
            window.push(step.clone());
            report.inputs += 1;
            let idx = window.len() - 1;
            let f = exec.step(idx, step).await;
            unsigned.push((idx, step.clone()));
            let probe = f.is_none() && !step.burst && window.len() % cfg.probe_every.max(1) == 0;
            found = if probe { exec.checkpoint().await } else { f };
            if !step.burst {
                feed_back(&exec, &mut gen, &mut sigs, &mut unsigned, idx, probe);
            }
        } else {
            found = exec.checkpoint().await;
        }
        // Before a new execution: let the open ops end, so that they do not move its counter
        // after its baseline (and are judged here).
        let found = match found {
            None if window.len() >= 400 => {
                exec.settle(Duration::from_secs_f64(2.0 * env.scale)).await
            }
            f => f,
        };
        if found.is_some() || window.len() >= 400 || step.is_none() {
            let now = window.len();
            feed_back(&exec, &mut gen, &mut sigs, &mut unsigned, now, true);
            count_raw(&mut report, &mut exec);
        }
        if cfg.verbose && last_print.elapsed() > Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!(
                "fuzz: {} inputs, {:.0} s, {} findings",
                report.inputs,
                start.elapsed().as_secs_f64(),
                report.findings.len()
            );
        }
        if let Some(f) = found {
            report.stanzas_judged += exec.judge.stanzas_judged;
            let t0 = Instant::now();
            if seen.insert(f.oracle.clone()) {
                let upto = (f.at_step + 1).min(window.len());
                let candidate: Vec<Step> = window[..upto].to_vec();
                if cfg.verbose {
                    eprintln!(
                        "fuzz: finding {} ({}) after {} inputs: {}; minimizing {} steps",
                        f.oracle,
                        f.requirement,
                        report.inputs,
                        f.detail,
                        candidate.len()
                    );
                }
                // Numbered over confirmed and unconfirmed ones (each gets its own file).
                let n = report.findings.len() + report.unconfirmed.len() + 1;
                let r = handle_finding(env, cfg, f, candidate, &epoch, n).await;
                if cfg.verbose {
                    eprintln!(
                        "fuzz:   minimized {} -> {} steps in {} trials; replay: {}",
                        r.steps_before, r.steps_after, r.trials, r.replay
                    );
                }
                if r.confirmed {
                    report.findings.push(r);
                } else {
                    // Let the oracle fire again later: it may reproduce then.
                    seen.remove(&r.finding.oracle);
                    report.unconfirmed.push(r);
                }
            } else {
                report.repeats += 1;
            }
            time_in_minimize += t0.elapsed();
            // Fresh state for the rest of the run.
            match &env.session.control {
                Some(_) => {
                    if let Err(e) = exec::restart_bounded(env).await {
                        report.stopped = Some(format!("could not restart the implementation: {e}"));
                        break;
                    }
                    report.restarts += 1;
                }
                None => {
                    if !env.session.agent_alive(Duration::from_secs(3)).await {
                        report.stopped = Some("the implementation is down and cannot be restarted in this attach mode".into());
                        break;
                    }
                }
            }
            window.clear();
            exec = Execution::start(env, epoch.fetch_add(1, Ordering::Relaxed), false).await;
            if cfg.max_findings > 0 && report.findings.len() >= cfg.max_findings {
                report.stopped = Some(format!(
                    "stopped after {} findings (--max-findings)",
                    report.findings.len()
                ));
                break;
            }
        } else if window.len() >= 400 {
            // Bound the sequence a finding is minimized from (its open ops have settled).
            report.stanzas_judged += exec.judge.stanzas_judged;
            window.clear();
            exec = Execution::start(env, epoch.fetch_add(1, Ordering::Relaxed), false).await;
        }
        if step.is_none() {
            report.stanzas_judged += exec.judge.stanzas_judged;
            break;
        }
    }
    report.signatures = sigs.len();
    report.biased_inputs = gen.biased;
    report.corpus = gen.corpus_len();
    report.elapsed_s = start.elapsed().as_secs_f64();
    let fuzz_time = (start.elapsed() - time_in_minimize).as_secs_f64().max(1e-9);
    report.inputs_per_s = report.inputs as f64 / fuzz_time;
    report
}

async fn handle_finding(
    env: &Env,
    cfg: &FuzzConfig,
    f: Finding,
    candidate: Vec<Step>,
    epoch: &AtomicU64,
    n: usize,
) -> Found {
    let before = candidate.len();
    let (steps, trials) = if cfg.minimize {
        minimize(
            env,
            candidate,
            &f.oracle,
            epoch,
            cfg.max_trials,
            cfg.minimize_time,
        )
        .await
    } else {
        (candidate, 0)
    };
    // Confirm and record the minimized trace.
    let (again, observed) = run_steps(
        env,
        &steps,
        epoch.fetch_add(1, Ordering::Relaxed),
        needs_restart(&f.oracle),
        true,
    )
    .await;
    let confirmed = again.as_ref().is_some_and(|g| g.oracle == f.oracle);
    let finding = match again {
        Some(g) if g.oracle == f.oracle => g,
        _ => f.clone(),
    };
    let mut t = TraceFile::new(
        "fuzz-finding",
        if env.dispatcher {
            "dispatcher"
        } else {
            "agent"
        },
        steps.clone(),
    );
    t.seed = Some(cfg.seed);
    t.title = format!("fuzz finding: {} ({})", finding.oracle, finding.requirement);
    t.found_on = cfg.replay_flags.clone();
    t.finding = Some(finding.clone());
    t.observed = observed;
    let path = cfg
        .out
        .as_ref()
        .map(|d| d.join(format!("finding-{n:03}-{}.json", finding.oracle)));
    let replay = replay_command(
        path.as_deref().unwrap_or(Path::new("<trace.json>")),
        &cfg.replay_flags,
    );
    t.replay = replay.clone();
    if let Some(p) = &path {
        if let Err(e) = t.save(p) {
            eprintln!("fuzz: {e}");
        }
    }
    Found {
        finding,
        steps_before: before,
        steps_after: steps.len(),
        trials,
        confirmed,
        trace: t,
        path,
        replay,
    }
}

// ---- command line ---------------------------------------------------------------------------

#[derive(Debug, Clone, clap::Args)]
pub struct FuzzArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Seed of the input generator (same seed, same inputs).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Input budget (number of generated inputs).
    #[arg(long, default_value_t = 2000)]
    pub inputs: u64,
    /// Time budget in seconds (whichever budget ends first).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Fuzz the dispatcher under test instead of the agent.
    #[arg(long)]
    pub dispatcher_subject: bool,
    /// Directory for finding traces and summary.json.
    #[arg(long, default_value = "fuzz-findings")]
    pub out: PathBuf,
    /// Probe (echo, counter, memory) every N inputs.
    #[arg(long, default_value_t = 16)]
    pub probe_every: usize,
    /// Resident-memory growth of a spawned implementation that counts as a finding (MiB).
    #[arg(long, default_value_t = 48)]
    pub rss_limit_mb: u64,
    /// Do not minimize findings.
    #[arg(long)]
    pub no_minimize: bool,
    /// At most this many replays per minimization.
    #[arg(long, default_value_t = 150)]
    pub max_trials: usize,
    /// Stop after N distinct findings (0 = run the whole budget).
    #[arg(long, default_value_t = 0)]
    pub max_findings: usize,
    /// Multiply every time budget by F.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// No feedback-guided selection (the unbiased generator, for comparison).
    #[arg(long)]
    pub no_bias: bool,
    /// No disruptive inputs (connection cuts, restarts of the implementation).
    #[arg(long)]
    pub no_disrupt: bool,
    /// No deeply nested raw input (it aborts implementations on the Rust XMPP stack).
    #[arg(long)]
    pub no_deep: bool,
    /// Instead of fuzzing: promote a finding trace to a regression case (copied into
    /// --regressions with the next free FUZZ-REG-NNN ID, or --id).
    #[arg(long, value_name = "TRACE")]
    pub promote: Option<PathBuf>,
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Regression directory (default fixtures/traces/regressions).
    #[arg(long, value_name = "DIR")]
    pub regressions: Option<PathBuf>,
    /// Command that starts the implementation (spawn mode), after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The attach flags that reproduce this target (for printed replay commands).
pub fn attach_flags(t: &TargetArgs, command: &[String]) -> String {
    let mut v: Vec<String> = Vec::new();
    if t.reference {
        v.push("--reference".into());
        if let Some(m) = &t.mutant {
            v.push(format!("--mutant {m}"));
        }
    }
    if let Some(s) = &t.server {
        v.push(format!("--server {s}"));
        if let Some(j) = &t.jid {
            v.push(format!("--jid {j}"));
        }
        if let Some(a) = &t.agent {
            v.push(format!("--agent {a}"));
        }
        if let Some(d) = &t.dispatcher {
            v.push(format!("--dispatcher {d}"));
        }
    }
    if !command.is_empty() {
        if t.role == attach::Role::Dispatcher {
            v.push("--role dispatcher".into());
        }
        v.push(format!("-- {}", command.join(" ")));
    }
    v.join(" ")
}

fn runtime() -> Result<tokio::runtime::Runtime, i32> {
    tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("cannot start the async runtime: {e}");
        exit::ENVIRONMENT
    })
}

/// `fuzz`
pub fn cli_fuzz(a: FuzzArgs) -> i32 {
    if let Some(p) = &a.promote {
        let dir = a.regressions.clone().unwrap_or_else(regress::default_dir);
        return match regress::promote(p, &dir, a.id.as_deref()) {
            Ok((id, path)) => {
                println!(
                    "promoted {} as regression case {id}: {}",
                    p.display(),
                    path.display()
                );
                println!("run it: vertebra-conformance run --reference --only {id}");
                exit::CONFORMANT
            }
            Err(e) => {
                eprintln!("{e}");
                exit::ENVIRONMENT
            }
        };
    }
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    rt.block_on(async move {
        let trace = Trace::new();
        let attached = match attach::attach(&a.target, &a.command, a.time_scale, &trace).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("fuzz: cannot attach the implementation: {e}");
                return exit::ENVIRONMENT;
            }
        };
        let env = match env_from(&attached, a.dispatcher_subject, a.time_scale, a.rss_limit_mb) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("fuzz: {e}");
                attach::detach(attached).await;
                return exit::ENVIRONMENT;
            }
        };
        let cfg = FuzzConfig {
            seed: a.seed,
            inputs: a.inputs,
            duration: a.duration.map(Duration::from_secs_f64),
            probe_every: a.probe_every,
            minimize: !a.no_minimize,
            max_trials: a.max_trials,
            minimize_time: Duration::from_secs(120),
            out: Some(a.out.clone()),
            replay_flags: attach_flags(&a.target, &a.command),
            max_findings: a.max_findings,
            verbose: true,
            bias: !a.no_bias,
            disrupt: !a.no_disrupt,
            raw_deep: !a.no_deep,
        };
        println!(
            "vertebra-conformance fuzz — {} mode, target {} ({}), seed {}, budget {} inputs{}",
            attached.mode.as_str(),
            attached.target,
            env.target(),
            cfg.seed,
            cfg.inputs,
            cfg.duration.map(|d| format!(" / {:.0} s", d.as_secs_f64())).unwrap_or_default()
        );
        let rep = fuzz(&env, &cfg).await;
        // Keep the trace of the attach bounded (its events are not used by the fuzzer).
        trace.reset();
        attach::detach(attached).await;
        let _ = std::fs::create_dir_all(&a.out);
        let summary = serde_json::json!({
            "seed": rep.seed, "inputs": rep.inputs, "elapsed_s": rep.elapsed_s,
            "inputs_per_s": rep.inputs_per_s, "stanzas_judged": rep.stanzas_judged,
            "restarts": rep.restarts, "repeats": rep.repeats, "stopped": rep.stopped,
            "signatures": rep.signatures, "biased_inputs": rep.biased_inputs,
            "corpus": rep.corpus, "bias": !a.no_bias,
            "raw": { "closed": rep.raw_closed, "kept": rep.raw_kept, "stuck": rep.raw_stuck },
            "unconfirmed": rep.unconfirmed.iter().map(|f| serde_json::json!({
                "oracle": f.finding.oracle, "detail": f.finding.detail, "trace": f.path,
            })).collect::<Vec<_>>(),
            "findings": rep.findings.iter().map(|f| serde_json::json!({
                "oracle": f.finding.oracle, "requirement": f.finding.requirement,
                "detail": f.finding.detail, "steps_before": f.steps_before,
                "steps_after": f.steps_after, "trials": f.trials, "confirmed": f.confirmed,
                "trace": f.path, "replay": f.replay,
            })).collect::<Vec<_>>(),
        });
        let _ = std::fs::write(
            a.out.join("summary.json"),
            serde_json::to_string_pretty(&summary).unwrap_or_default(),
        );
        for (i, f) in rep.findings.iter().enumerate() {
            println!(
                "finding {}: {} [{}] {}\n  minimized {} -> {} steps ({} trials, {})\n  replay: {}",
                i + 1,
                f.finding.oracle,
                f.finding.requirement,
                f.finding.detail,
                f.steps_before,
                f.steps_after,
                f.trials,
                if f.confirmed { "reproduces" } else { "did NOT reproduce on confirmation" },
                f.replay
            );
        }
        for f in &rep.unconfirmed {
            println!(
                "unconfirmed (did not fail again when replayed; timing or load?): {} [{}] {} — trace {}",
                f.finding.oracle,
                f.finding.requirement,
                f.finding.detail,
                f.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
            );
        }
        if let Some(s) = &rep.stopped {
            println!("stopped early: {s}");
        }
        println!(
            "{} inputs in {:.1} s ({:.0} inputs/s outside minimization), {} stanzas judged, {} restarts",
            rep.inputs, rep.elapsed_s, rep.inputs_per_s, rep.stanzas_judged, rep.restarts
        );
        println!(
            "coverage: {} distinct signatures; {} inputs from a corpus of {}{}",
            rep.signatures,
            rep.biased_inputs,
            rep.corpus,
            if a.no_bias { " (bias off)" } else { "" }
        );
        if rep.raw_closed + rep.raw_kept + rep.raw_stuck > 0 {
            println!(
                "raw bytes: the target closed the stream (and came back) {} times, kept it {} times, kept it without answering {} times",
                rep.raw_closed, rep.raw_kept, rep.raw_stuck
            );
        }
        println!(
            "{} findings ({} repeats of an oracle already reported); summary: {}",
            rep.findings.len(),
            rep.repeats,
            a.out.join("summary.json").display()
        );
        if rep.findings.is_empty() {
            exit::CONFORMANT
        } else {
            EXIT_FINDINGS
        }
    })
}
