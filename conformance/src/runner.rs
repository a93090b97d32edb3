//! Runs selected cases against a session and writes the reports as it goes.

use crate::baseline::{glob_match, rfc3339, today, Baseline};
use crate::case::{Abort, CaseDef, Ctx, LevelLookup, Subject};
use crate::report::{self, jsonl::JsonlWriter, CaseRecord, RunHeader, Summary};
use crate::session::Session;
use crate::trace::Trace;
use crate::verdict::{aggregate, Disposition, Outcome};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Which cases run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Run only cases matching one of these (case ID, area or requirement ID; `*` globs).
    pub only: Vec<String>,
    /// Skip cases matching one of these.
    pub skip: Vec<String>,
}

impl Selection {
    fn matches(p: &str, c: &CaseDef) -> bool {
        glob_match(p, c.id)
            || glob_match(p, c.area.as_str())
            || c.requirements.iter().any(|r| glob_match(p, r))
    }

    pub fn selected(&self, c: &CaseDef) -> bool {
        (self.only.is_empty() || self.only.iter().any(|p| Self::matches(p, c)))
            && !self.skip.iter().any(|p| Self::matches(p, c))
    }
}

pub struct RunConfig {
    pub time_scale: f64,
    pub selection: Selection,
    pub baseline: Baseline,
    pub out: Option<PathBuf>,
    pub quiet: bool,
    /// Run every case one after the other (default: independent groups concurrently).
    pub sequential: bool,
    /// Print nothing at all (selftest runs many suites).
    pub silent: bool,
    pub target: String,
    pub mode: String,
    pub argv: Vec<String>,
}

pub struct RunOutput {
    pub cases: Vec<CaseRecord>,
    pub summary: Summary,
}

fn say(cfg: &RunConfig, line: &str) {
    if !cfg.quiet && !cfg.silent {
        println!("{line}");
    }
}

fn record_for(c: &CaseDef, outcome: Outcome, reason: Option<String>, budget_ms: u64) -> CaseRecord {
    CaseRecord {
        record: "case".into(),
        id: c.id.into(),
        title: c.title.into(),
        area: c.area.as_str().into(),
        subject: match c.subject {
            Subject::Agent => "agent".into(),
            Subject::Dispatcher => "dispatcher".into(),
        },
        requirements: c.requirements.iter().map(|s| s.to_string()).collect(),
        feature: c.feature.map(str::to_string),
        outcome,
        disposition: Disposition::New,
        baseline_reason: None,
        reason,
        started_at: rfc3339(SystemTime::now()),
        duration_ms: 0.0,
        budget_ms,
        checks: Vec::new(),
        trace: Vec::new(),
        trace_dropped: 0,
        stdout: None,
        stderr: None,
        fix: c.fix.into(),
    }
}

/// Run one case with its watchdog; returns the finished record (before the baseline).
async fn run_case(
    c: &'static CaseDef,
    session: &Arc<Session>,
    trace: &Trace,
    scale: f64,
    levels: &Arc<dyn LevelLookup>,
    req: Option<crate::peer::Peer>,
) -> CaseRecord {
    let budget_ms = (c.budget_ms as f64 * scale).ceil() as u64;
    let mut rec = record_for(c, Outcome::Error, None, budget_ms);
    trace.reset();
    let started = Instant::now();
    // Applicability.
    match c.subject {
        Subject::Agent if session.agent.is_none() => {
            rec.outcome = Outcome::Skipped;
            rec.reason = Some("no agent attached (this run tests a dispatcher)".into());
            return rec;
        }
        Subject::Dispatcher if session.dispatcher.is_none() => {
            rec.outcome = Outcome::Skipped;
            rec.reason = Some("no dispatcher attached (this run tests an agent)".into());
            return rec;
        }
        _ => {}
    }
    // Readiness: the implementation must answer a ping before each case; restart once.
    let ready_budget = std::time::Duration::from_secs_f64(3.0 * scale);
    if c.subject == Subject::Agent && !session.agent_alive(ready_budget).await {
        trace.note("agent did not answer a ping before the case; restarting it");
        let restarted = match &session.control {
            Some(ctl) => ctl.restart().await.is_ok() && session.agent_alive(ready_budget * 3).await,
            None => false,
        };
        if !restarted {
            rec.outcome = Outcome::Error;
            rec.reason = Some(format!(
                "the agent did not answer XEP-0199 ping within {:?} before the case (not ready or crashed); not blamed on this case",
                ready_budget
            ));
            let (ev, dropped) = trace.snapshot();
            rec.trace = ev;
            rec.trace_dropped = dropped;
            return rec;
        }
    }
    if let Some(f) = c.feature {
        if !session.has_feature(f) {
            rec.outcome = Outcome::Unsupported;
            rec.reason = Some(format!(
                "the implementation does not claim the disco feature {f}"
            ));
            return rec;
        }
    }
    let mut cx = Ctx::new(session.clone(), trace.clone(), c.id, scale, levels.clone());
    if let Some(r) = req {
        cx = cx.with_requester(r);
    }
    // Each case runs in its own task: a harness panic becomes ERROR, not a dead run.
    let mut task = tokio::spawn((c.run)(cx.clone()));
    let watchdog = std::time::Duration::from_millis(budget_ms.max(1));
    let res: Result<(), Abort> = match tokio::time::timeout(watchdog, &mut task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(Abort::error(format!("harness fault in the case: {e}"))),
        Err(_) => {
            task.abort();
            Err(Abort::error(format!(
                "case watchdog: did not finish within its budget of {budget_ms} ms (raise --time-scale if the machine is slow)"
            )))
        }
    };
    rec.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    rec.checks = cx.take_checks();
    let from_checks = aggregate(rec.checks.iter().map(|k| k.outcome));
    rec.outcome = match (&res, from_checks) {
        (Ok(()), Some(o)) => o,
        (Ok(()), None) => {
            rec.reason = Some("harness bug: the case recorded no check".into());
            Outcome::Error
        }
        (Err(a), o) => {
            rec.reason = Some(a.reason.clone());
            let base = if a.outcome == Outcome::Pass {
                o.unwrap_or(Outcome::Error)
            } else {
                a.outcome
            };
            aggregate([base, o.unwrap_or(base)]).unwrap_or(base)
        }
    };
    if let Some(ctl) = &session.control {
        let (out, err) = ctl.take_output();
        rec.stdout = Some(out).filter(|s| !s.is_empty());
        rec.stderr = Some(err).filter(|s| !s.is_empty());
        if let Some(st) = ctl.exited() {
            trace.note(format!("agent process exited: {st}"));
        }
    }
    let (ev, dropped) = trace.snapshot();
    rec.trace = ev;
    rec.trace_dropped = dropped;
    rec
}

/// Run the cases. `session` is `Err` when attaching failed: every selected case is ERROR.
pub async fn run(
    cases: &'static [CaseDef],
    session: Result<Arc<Session>, String>,
    trace: Trace,
    levels: Arc<dyn LevelLookup>,
    cfg: &RunConfig,
) -> std::io::Result<RunOutput> {
    let run_start = Instant::now();
    let selected: Vec<&'static CaseDef> =
        cases.iter().filter(|c| cfg.selection.selected(c)).collect();
    let header = RunHeader {
        record: "run".into(),
        schema_version: report::RESULTS_SCHEMA_VERSION,
        harness: "vertebra-conformance".into(),
        harness_version: env!("CARGO_PKG_VERSION").into(),
        mode: cfg.mode.clone(),
        target: cfg.target.clone(),
        time_scale: cfg.time_scale,
        started_at: rfc3339(SystemTime::now()),
        argv: cfg.argv.clone(),
        selected: selected.len(),
    };
    let mut jsonl = match &cfg.out {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Some(JsonlWriter::create(&dir.join("results.jsonl"))?)
        }
        None => None,
    };
    if let Some(w) = jsonl.as_mut() {
        w.write(&header)?;
    }
    say(
        cfg,
        &format!(
            "vertebra-conformance {} — {} mode, target {}, {} of {} cases selected, time scale {}",
            header.harness_version,
            cfg.mode,
            cfg.target,
            selected.len(),
            cases.len(),
            cfg.time_scale
        ),
    );
    if let Err(e) = &session {
        say(cfg, &format!("ERROR attaching the implementation: {e}"));
    }
    let emitter = Emitter {
        cfg,
        today: today(),
        inner: std::sync::Mutex::new((jsonl, Vec::new())),
    };
    // Deselected cases and a failed attach first.
    for c in cases {
        if !cfg.selection.selected(c) {
            let r = record_for(
                c,
                Outcome::Skipped,
                Some("deselected by --only/--skip".into()),
                0,
            );
            emitter.emit(r)?;
        } else if let Err(e) = &session {
            let r = record_for(
                c,
                Outcome::Error,
                Some(format!(
                    "environment: could not attach the implementation: {e}"
                )),
                0,
            );
            emitter.emit(r)?;
        }
    }
    if let Ok(s) = &session {
        let chosen: Vec<&'static CaseDef> =
            cases.iter().filter(|c| cfg.selection.selected(c)).collect();
        if cfg.sequential {
            for c in chosen {
                emitter.emit(run_case(c, s, &trace, cfg.time_scale, &levels, None).await)?;
            }
        } else {
            run_grouped(&chosen, s, &trace, &levels, cfg, &emitter).await?;
        }
        if let Some(ctl) = &s.control {
            ctl.stop_aux().await;
        }
    }
    let (jsonl, mut records) = emitter
        .inner
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    let mut jsonl = jsonl;
    records.sort_by_key(|r| {
        cases
            .iter()
            .position(|c| c.id == r.id)
            .unwrap_or(usize::MAX)
    });
    let summary = report::summarize(
        &records,
        run_start.elapsed().as_secs_f64() * 1000.0,
        rfc3339(SystemTime::now()),
    );
    // Failure details.
    let details: Vec<&CaseRecord> = records
        .iter()
        .filter(|r| {
            matches!(
                r.outcome,
                Outcome::Fail | Outcome::Untestable | Outcome::Error | Outcome::NonStrict
            )
        })
        .collect();
    if !details.is_empty() {
        say(cfg, "");
        say(cfg, "Details:");
    }
    for r in details {
        say(
            cfg,
            &format!("- {} {}: {}", r.outcome.as_str(), r.id, r.title),
        );
        if let Some(reason) = &r.reason {
            say(cfg, &format!("    {reason}"));
        }
        for k in r.checks.iter().filter(|k| k.outcome != Outcome::Pass) {
            say(
                cfg,
                &format!(
                    "    [{}] {} {}\n      expected: {}\n      observed: {}",
                    k.requirement,
                    k.level.as_str(),
                    k.outcome.as_str(),
                    k.expected,
                    k.observed
                ),
            );
        }
        if r.outcome != Outcome::Error && !r.fix.is_empty() {
            say(cfg, &format!("    fix: {}", r.fix));
        }
        say(
            cfg,
            &format!(
                "    explain: vertebra-conformance explain {}   rerun: … run --only {}",
                r.id, r.id
            ),
        );
    }
    if let Some(w) = jsonl.as_mut() {
        w.write(&summary)?;
    }
    if let Some(dir) = &cfg.out {
        let junit = report::junit::build("vertebra-conformance", &records);
        let xml = junit
            .to_string()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        std::fs::write(dir.join("junit.xml"), xml)?;
        std::fs::write(
            dir.join("report.html"),
            report::html::render(&header, &records, &summary),
        )?;
        say(
            cfg,
            &format!(
                "reports: {}/results.jsonl, junit.xml, report.html",
                dir.display()
            ),
        );
    }
    let (other, last) = report::closing_lines(&summary);
    // The closing lines are always printed (also with --quiet).
    if !cfg.silent {
        println!("{other}");
        println!("{last}");
    }
    Ok(RunOutput {
        cases: records,
        summary,
    })
}

/// Agent cases that may run concurrently with each other: each gets its own requester
/// identity and trace, and none touches shared agent state (counter, load, restarts,
/// the harness dispatcher's answers for other requesters).
pub const PARALLEL_SAFE: &[&str] = &[
    "DSC-INFO-001",
    "DSC-PING-001",
    "DSC-ADVERTISE-001",
    "OPS-LIFECYCLE-002",
    "OPS-TOKEN-001",
    "OPS-TOKEN-002",
    "OPS-TOKEN-003",
    "OPS-STREAM-001",
    "OPS-STREAM-002",
    "OPS-SLEEP-001",
    "OPS-DEADLINE-001",
    // Only observes what the agent sends on its own (load reports).
    "LOAD-REPORT-001",
    "OPS-CANCEL-001",
    "OPS-CANCEL-002",
    "OPS-CANCEL-003",
    "OPS-ERROR-001",
    "OPS-TIMEOUT-001",
    "OPS-ATTRS-001",
    "OPS-VALUE-001",
    "OPS-VALUE-002",
    "OPS-VALUE-003",
    "OPS-VALUE-004",
    "OPS-VALUE-005",
    "OPS-VALUE-006",
    "OPS-VALUE-007",
    "OPS-VALUE-008",
    "OPS-VALUE-009",
    "OPS-VALUE-010",
    "OPS-VALUE-011",
    "OPS-VALUE-012",
    "OPS-PROFILE-001",
    "OPS-LEGACY-001",
    "OPS-PATH-001",
    "OPS-IQID-001",
    "OPS-RETRY-001",
    "OPS-WAIT-001",
    "SEC-AUTHZ-002",
    "SEC-LEAK-001",
    "ROB-IQ-001",
    "ROB-LIFECYCLE-001",
    "ROB-SIZE-001",
    "ROB-ORDER-001",
];

/// How many parallel-safe cases run at once.
const PARALLEL_WIDTH: usize = 6;

struct Emitter<'a> {
    cfg: &'a RunConfig,
    today: String,
    inner: std::sync::Mutex<(Option<JsonlWriter>, Vec<CaseRecord>)>,
}

impl Emitter<'_> {
    /// Apply the baseline, print the progress line, stream the JSON line.
    fn emit(&self, mut rec: CaseRecord) -> std::io::Result<()> {
        let (d, reason) = self
            .cfg
            .baseline
            .disposition(&rec.id, rec.outcome, &self.today);
        rec.disposition = d;
        rec.baseline_reason = reason;
        let disp = match rec.disposition {
            Disposition::ExpectedFailure => " (expected failure: baseline)",
            Disposition::Stale => " (STALE baseline entry: now passes)",
            Disposition::ToleratedFlaky => " (tolerated flaky: baseline)",
            Disposition::Expired => " (baseline entry expired)",
            Disposition::New => "",
        };
        say(
            self.cfg,
            &format!(
                "  [{}] {:<11} {:<11} {:<22} {}{} ({:.0} ms)",
                rec.outcome.glyph(),
                rec.outcome.as_str(),
                rec.area,
                rec.id,
                rec.title,
                disp,
                rec.duration_ms
            ),
        );
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = g.0.as_mut() {
            w.write(&rec)?;
        }
        g.1.push(rec);
        Ok(())
    }
}

/// A requester identity of its own for one concurrently running case.
async fn case_requester(
    session: &Arc<Session>,
    c: &CaseDef,
    trace: &Trace,
    n: usize,
) -> Option<crate::peer::Peer> {
    let jid: jid::FullJid = format!(
        "{}/p{n}-{}",
        session.req_bare,
        &crate::peer::random_hex()[..6]
    )
    .parse()
    .ok()?;
    let p = crate::peer::Peer::connect(
        &format!("requester-{}", c.id),
        &session.addr,
        jid,
        &session.req_password,
        trace.clone(),
        std::time::Duration::from_secs(10),
    )
    .await
    .ok()?;
    if let Some(d) = &session.dsp {
        let j = p.jid.to_string();
        d.behaviour(|b| {
            b.auth.insert(j, crate::peer::AuthPolicy::Allow);
        });
    }
    Some(p)
}

/// Agent cases that run one after the other while the parallel-safe cases run, on the
/// session's own requester and trace: the fuzz regression cases (`FUZZ-REG-*`, whose counter
/// oracle needs the side-effect counter to themselves — no parallel-safe case calls it; the
/// other counter cases run in the exclusive tail) and the ones listed here.
pub const COUNTER_LANE: &[&str] = &[];

/// Parallel-safe cases that wait longest (started first so the pool drains evenly).
const LONG_FIRST: &[&str] = &[
    "SEC-AUTHZ-002",
    "OPS-RETRY-001",
    "LOAD-REPORT-001",
    "OPS-STREAM-002",
    "OPS-IQID-001",
    "OPS-CANCEL-003",
    "OPS-DEADLINE-001",
];

/// Cases on a second instance of the agent (one at a time; independent of the agent under
/// test's state), run next to the other lanes.
/// (In this order: the scoping cases and the first half of SEC-TESTMODE-001 share one
/// instance without test mode.) Then short cases that need no exclusive use of the agent but
/// inspect what the harness dispatcher was asked (filtered by their own requester), one by one
/// on a requester of their own.
pub const AUX_LANE: &[&str] = &[
    "OPS-SCOPE-001",
    "OPS-SCOPE-002",
    "SEC-TESTMODE-001",
    "OPS-SESSION-001",
    "OPS-LIFECYCLE-001",
    "OPS-NOHANDLER-001",
    "OPS-ORDER-001",
    "OPS-ORDER-002",
    "SEC-AUTHZ-003",
    "SEC-TENANT-001",
    "ROB-IQ-002",
];

fn in_counter_lane(c: &CaseDef) -> bool {
    COUNTER_LANE.contains(&c.id) || c.id.starts_with("FUZZ-REG-")
}

/// Lanes at once: parallel-safe agent cases (several at a time), the fuzz-regression lane
/// (`COUNTER_LANE` and `FUZZ-REG-*`, one by one on the session's requester) and the side lane
/// (`AUX_LANE`), then the remaining agent cases one by one (they move the counter, restart the
/// agent, flood it or change what the harness dispatcher answers); next to all of them the
/// dispatcher cases one by one.
async fn run_grouped(
    chosen: &[&'static CaseDef],
    session: &Arc<Session>,
    trace: &Trace,
    levels: &Arc<dyn LevelLookup>,
    cfg: &RunConfig,
    emitter: &Emitter<'_>,
) -> std::io::Result<()> {
    use futures::StreamExt;
    let mut par: Vec<&'static CaseDef> = chosen
        .iter()
        .copied()
        .filter(|c| c.subject == Subject::Agent && PARALLEL_SAFE.contains(&c.id))
        .collect();
    par.sort_by_key(|c| !LONG_FIRST.contains(&c.id));
    let lane: Vec<&'static CaseDef> = chosen
        .iter()
        .copied()
        .filter(|c| {
            c.subject == Subject::Agent && !PARALLEL_SAFE.contains(&c.id) && in_counter_lane(c)
        })
        .collect();
    let seq: Vec<&'static CaseDef> = chosen
        .iter()
        .copied()
        .filter(|c| {
            c.subject == Subject::Agent
                && !PARALLEL_SAFE.contains(&c.id)
                && !in_counter_lane(c)
                && !AUX_LANE.contains(&c.id)
        })
        .collect();
    let mut aux: Vec<&'static CaseDef> = chosen
        .iter()
        .copied()
        .filter(|c| c.subject == Subject::Agent && AUX_LANE.contains(&c.id))
        .collect();
    aux.sort_by_key(|c| AUX_LANE.iter().position(|a| *a == c.id));
    let dsp: Vec<&'static CaseDef> = chosen
        .iter()
        .copied()
        .filter(|c| c.subject == Subject::Dispatcher)
        .collect();
    let pool = async {
        let mut stream =
            futures::stream::iter(par.into_iter().enumerate().map(|(n, c)| async move {
                let t = Trace::new();
                let req = case_requester(session, c, &t, n).await;
                let rec = match &req {
                    Some(r) => {
                        run_case(c, session, &t, cfg.time_scale, levels, Some(r.clone())).await
                    }
                    // No extra identity (or no agent): one at a time on the session's
                    // requester would race the fuzz lane, so report it on its own trace.
                    None => run_case(c, session, &t, cfg.time_scale, levels, None).await,
                };
                if let Some(r) = req {
                    r.close().await;
                }
                rec
            }))
            .buffer_unordered(PARALLEL_WIDTH);
        while let Some(rec) = stream.next().await {
            emitter.emit(rec)?;
        }
        Ok::<(), std::io::Error>(())
    };
    let counter_lane = async {
        for c in lane {
            emitter.emit(run_case(c, session, trace, cfg.time_scale, levels, None).await)?;
        }
        Ok::<(), std::io::Error>(())
    };
    let aux_lane = async {
        let t = Trace::new();
        for (n, c) in aux.into_iter().enumerate() {
            let req = case_requester(session, c, &t, 100 + n).await;
            let rec = run_case(c, session, &t, cfg.time_scale, levels, req.clone()).await;
            if let Some(r) = req {
                r.close().await;
            }
            emitter.emit(rec)?;
        }
        if let Some(ctl) = &session.control {
            ctl.stop_aux().await;
        }
        Ok::<(), std::io::Error>(())
    };
    let agents = async {
        let (p, l, x) = tokio::join!(pool, counter_lane, aux_lane);
        p?;
        l?;
        x?;
        for c in seq {
            emitter.emit(run_case(c, session, trace, cfg.time_scale, levels, None).await)?;
        }
        Ok::<(), std::io::Error>(())
    };
    let dispatchers = async {
        let t = session.dsp_trace.clone();
        for c in dsp {
            let req = session
                .dispatcher
                .as_ref()
                .and_then(|d| d.requester.clone());
            emitter.emit(run_case(c, session, &t, cfg.time_scale, levels, req).await)?;
        }
        Ok::<(), std::io::Error>(())
    };
    let (a, d) = tokio::join!(agents, dispatchers);
    a?;
    d
}
