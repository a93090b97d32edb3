//! `replay`: re-run a trace against an implementation, re-judge a recorded trace offline
//! with the current oracles, and turn a conformance run's results into canonical traces.

use super::exec::Env;
use super::judge::Judge;
use super::tracefile::{
    redact_text, Finding, Roles, Step, TraceFile, VIA_DISPATCHER, VIA_REQUESTER, VIA_STRANGER,
};
use super::{env_from, run_steps, EXIT_FINDINGS};
use crate::attach::{self, TargetArgs};
use crate::report::exit;
use crate::trace::{Direction, Trace, TraceEvent};
use minidom::Element;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// A trace file (fuzz finding, regression or recording), or a conformance `results.jsonl`
    /// (with --offline or --save-to).
    pub trace: PathBuf,
    /// Re-judge the recorded stanzas with the current oracles; no implementation needed.
    #[arg(long)]
    pub offline: bool,
    /// Write each case of a `results.jsonl` as a canonical trace file into DIR (credentials
    /// redacted, JIDs replaced by role placeholders).
    #[arg(long, value_name = "DIR")]
    pub save_to: Option<PathBuf>,
    /// Replay N times (restarting the implementation in between when possible) to check that
    /// the outcome is deterministic.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Multiply every time budget by F.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Command that starts the implementation (spawn mode), after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Roles of the reference and spawn attaches (fixed JIDs on the embedded server).
pub fn default_roles() -> Roles {
    Roles {
        agent: "agent@localhost/agent".into(),
        requester: "requester@localhost/harness".into(),
        stranger: "stranger@localhost/harness".into(),
        dispatcher: "dispatcher@localhost/dispatcher".into(),
        target: "agent@localhost/agent".into(),
        domain: "localhost".into(),
        foreign_domain: String::new(),
        secrets: Vec::new(),
    }
}

/// Re-judge recorded events (canonical form: role placeholders) with the current oracles.
pub fn judge_offline(events: &[TraceEvent], roles: &Roles) -> (Vec<Finding>, u64) {
    let mut j = Judge::new(&roles.target);
    let mut step = 0usize;
    for ev in events {
        let text = roles.fill(&ev.data);
        let Ok(el) = text.parse::<Element>() else {
            continue;
        };
        let via = if ev.via == "inject" {
            let from = el.attr("from").unwrap_or("");
            if from == roles.requester {
                VIA_REQUESTER
            } else if from == roles.stranger {
                VIA_STRANGER
            } else if from == roles.dispatcher {
                VIA_DISPATCHER
            } else {
                "inject"
            }
        } else {
            ev.via.as_str()
        };
        match ev.dir {
            Direction::Sent => {
                j.step = step;
                step += 1;
                j.on_sent(via, &el);
            }
            Direction::Received => j.on_received(via, &el),
            Direction::Note => {}
        }
    }
    (std::mem::take(&mut j.findings), j.stanzas_judged)
}

/// The input steps of a recorded conformance case: the IQ gets and sets the harness sent
/// (automatic answers, pings and disco are reactions or probes, not inputs).
pub fn steps_from_events(events: &[TraceEvent], roles: &Roles) -> Vec<Step> {
    let mut out = Vec::new();
    for ev in events.iter().filter(|e| e.dir == Direction::Sent) {
        let Ok(el) = roles.fill(&ev.data).parse::<Element>() else {
            continue;
        };
        if el.name() != "iq" || !matches!(el.attr("type"), Some("set") | Some("get")) {
            continue;
        }
        let to = el.attr("to").unwrap_or("");
        if !crate::cases::util::same_jid(to, &roles.target) {
            continue;
        }
        let Some(child) = el.children().next() else {
            continue;
        };
        if child.ns() == crate::peer::NS_PING || child.ns() == crate::peer::NS_DISCO_INFO {
            continue;
        }
        out.push(Step {
            key: out.len() as u32 + 1,
            via: ev.via.clone(),
            kind: "iq".into(),
            iq_type: el.attr("type").map(str::to_string),
            id: el.attr("id").map(str::to_string),
            from: None,
            xml: Some(roles.canonical(&String::from(child))),
            burst: false,
            to: None,
            raw: None,
            max: None,
            note: "recorded".into(),
        });
    }
    out
}

/// Read a conformance `results.jsonl` into canonical recordings, one per case.
pub fn recordings_from_results(path: &Path) -> Result<Vec<TraceFile>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let roles = default_roles();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: not JSON: {e}", path.display(), n + 1))?;
        if v.get("record").and_then(|r| r.as_str()) != Some("case") {
            continue;
        }
        let id = v
            .get("id")
            .and_then(|x| x.as_str())
            .unwrap_or("?")
            .to_string();
        let events: Vec<TraceEvent> = v
            .get("trace")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| format!("{}: case {id}: bad trace: {e}", path.display()))?
            .unwrap_or_default();
        let events: Vec<TraceEvent> = events
            .into_iter()
            .map(|mut e| {
                e.data = redact_text(&roles.canonical(&e.data));
                e
            })
            .collect();
        let subject = v
            .get("subject")
            .and_then(|x| x.as_str())
            .unwrap_or("agent")
            .to_string();
        let mut t = TraceFile::new("recording", &subject, steps_from_events(&events, &roles));
        t.title = format!(
            "{id}: {} ({})",
            v.get("title").and_then(|x| x.as_str()).unwrap_or(""),
            v.get("outcome").and_then(|x| x.as_str()).unwrap_or("")
        );
        t.id = Some(id);
        t.observed = events;
        out.push(t);
    }
    Ok(out)
}

fn print_findings(label: &str, f: &[Finding]) {
    if f.is_empty() {
        println!("{label}: no finding");
    }
    for x in f {
        println!("{label}: {} [{}] {}", x.oracle, x.requirement, x.detail);
    }
}

/// `replay`
pub fn cli_replay(a: ReplayArgs) -> i32 {
    let is_results = a.trace.extension().is_some_and(|e| e == "jsonl");
    if let Some(dir) = &a.save_to {
        let recs = match recordings_from_results(&a.trace) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                return exit::ENVIRONMENT;
            }
        };
        for t in &recs {
            let name = t.id.clone().unwrap_or_else(|| "case".into());
            let p = dir.join(format!("{name}.json"));
            if let Err(e) = t.save(&p) {
                eprintln!("{e}");
                return exit::ENVIRONMENT;
            }
        }
        println!("wrote {} canonical traces to {}", recs.len(), dir.display());
        return exit::CONFORMANT;
    }
    if a.offline {
        let traces = if is_results {
            match recordings_from_results(&a.trace) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return exit::ENVIRONMENT;
                }
            }
        } else {
            match TraceFile::load(&a.trace) {
                Ok(t) => vec![t],
                Err(e) => {
                    eprintln!("{e}");
                    return exit::ENVIRONMENT;
                }
            }
        };
        let mut any = false;
        for t in &traces {
            let mut roles = default_roles();
            if t.subject == "dispatcher" {
                roles.target = "refdispatcher@localhost/dispatcher".into();
            }
            let (f, n) = judge_offline(&t.observed, &roles);
            let label =
                t.id.clone()
                    .unwrap_or_else(|| a.trace.display().to_string());
            print_findings(&format!("{label} ({n} stanzas re-judged)"), &f);
            if let Some(orig) = &t.finding {
                let still = f.iter().any(|x| x.oracle == orig.oracle);
                println!(
                    "  recorded finding {}: {}",
                    orig.oracle,
                    if still {
                        "still judged a failure by the current oracles"
                    } else {
                        "NOT flagged by the current stanza oracles (liveness, memory and counter findings need the live implementation)"
                    }
                );
            }
            any |= !f.is_empty();
        }
        return if any { EXIT_FINDINGS } else { exit::CONFORMANT };
    }
    let t = match TraceFile::load(&a.trace) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return exit::ENVIRONMENT;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return exit::ENVIRONMENT;
        }
    };
    rt.block_on(async move {
        let trace = Trace::new();
        let attached = match attach::attach(&a.target, &a.command, a.time_scale, &trace).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("replay: cannot attach the implementation: {e}");
                return exit::ENVIRONMENT;
            }
        };
        let env: Env = match env_from(&attached, t.subject == "dispatcher", a.time_scale, 48) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("replay: {e}");
                attach::detach(attached).await;
                return exit::ENVIRONMENT;
            }
        };
        println!(
            "replaying {} ({} steps) against {}{}",
            a.trace.display(),
            t.steps.len(),
            attached.target,
            t.finding
                .as_ref()
                .map(|f| format!("; recorded finding: {} [{}]", f.oracle, f.requirement))
                .unwrap_or_default()
        );
        let mut outcomes = Vec::new();
        for i in 0..a.repeat.max(1) {
            let (f, _) = run_steps(&env, &t.steps, u64::from(i), i > 0, false).await;
            print_findings(&format!("run {}", i + 1), f.as_slice());
            outcomes.push(f.map(|x| x.oracle));
            trace.reset();
        }
        attach::detach(attached).await;
        let same = outcomes.windows(2).all(|w| w[0] == w[1]);
        if a.repeat > 1 {
            println!(
                "deterministic: {}",
                if same { "yes" } else { "NO (outcomes differ)" }
            );
        }
        if outcomes.iter().any(|o| o.is_some()) {
            EXIT_FINDINGS
        } else {
            exit::CONFORMANT
        }
    })
}
