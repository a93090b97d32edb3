//! Report records and writers: JSON Lines (streamed), JUnit XML, HTML, terminal.

pub mod html;
pub mod jsonl;
pub mod junit;

use crate::trace::TraceEvent;
use crate::verdict::{Check, Disposition, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the results format (`schema/results.schema.json`).
pub const RESULTS_SCHEMA_VERSION: u32 = 1;

/// First line of `results.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunHeader {
    pub record: String,
    pub schema_version: u32,
    pub harness: String,
    pub harness_version: String,
    pub mode: String,
    /// Implementation under test (JID or command).
    pub target: String,
    pub time_scale: f64,
    pub started_at: String,
    /// Command line, with secrets redacted.
    pub argv: Vec<String>,
    pub selected: usize,
}

/// One line per finished case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseRecord {
    pub record: String,
    pub id: String,
    pub title: String,
    pub area: String,
    pub subject: String,
    pub requirements: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    pub outcome: Outcome,
    pub disposition: Disposition,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_reason: Option<String>,
    /// Why the case stopped without a verdict from its checks (ERROR, UNTESTABLE, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub started_at: String,
    pub duration_ms: f64,
    /// Scaled budget of the case.
    pub budget_ms: u64,
    pub checks: Vec<Check>,
    pub trace: Vec<TraceEvent>,
    pub trace_dropped: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    pub fix: String,
}

/// Last line of `results.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub record: String,
    pub finished_at: String,
    pub duration_ms: f64,
    /// Count per outcome (every outcome present, possibly 0).
    pub counts: BTreeMap<String, usize>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub expected_failures: Vec<String>,
    pub stale: Vec<String>,
    pub exit_code: i32,
    pub verdict: String,
}

/// Exit codes shared by every subcommand.
pub mod exit {
    /// Every gating check passed (after the baseline).
    pub const CONFORMANT: i32 = 0;
    /// A MUST was broken (FAIL or UNTESTABLE not excused by the baseline), or a stale baseline entry.
    pub const NON_CONFORMANT: i32 = 1;
    /// Environment, server or harness error (ERROR verdicts, bad arguments, attach failure).
    pub const ENVIRONMENT: i32 = 2;
    /// Nothing was executed (everything skipped, unsupported or deselected).
    pub const NOTHING_EXECUTED: i32 = 3;
}

/// Compute counts and the exit code from finished cases.
pub fn summarize(cases: &[CaseRecord], duration_ms: f64, finished_at: String) -> Summary {
    let mut counts: BTreeMap<String, usize> = Outcome::ALL
        .iter()
        .map(|o| (o.as_str().to_string(), 0))
        .collect();
    for c in cases {
        *counts.entry(c.outcome.as_str().to_string()).or_default() += 1;
    }
    let n = |o: Outcome| counts[o.as_str()];
    let passed = n(Outcome::Pass) + n(Outcome::NonStrict) + n(Outcome::Info);
    let failed = n(Outcome::Fail) + n(Outcome::Untestable) + n(Outcome::Error);
    let skipped = n(Outcome::Skipped) + n(Outcome::Unsupported);
    let expected_failures: Vec<String> = cases
        .iter()
        .filter(|c| c.disposition == Disposition::ExpectedFailure)
        .map(|c| c.id.clone())
        .collect();
    let stale: Vec<String> = cases
        .iter()
        .filter(|c| c.disposition == Disposition::Stale)
        .map(|c| c.id.clone())
        .collect();
    let gating = cases.iter().any(|c| {
        (c.outcome.gating() && matches!(c.disposition, Disposition::New | Disposition::Expired))
            || c.disposition == Disposition::Stale
    });
    let executed = cases.iter().any(|c| c.outcome.executed());
    let (exit_code, verdict) = if gating {
        (exit::NON_CONFORMANT, "non-conformant")
    } else if n(Outcome::Error) > 0 {
        (exit::ENVIRONMENT, "environment or harness error")
    } else if !executed {
        (exit::NOTHING_EXECUTED, "nothing executed")
    } else {
        (exit::CONFORMANT, "conformant")
    };
    Summary {
        record: "summary".into(),
        finished_at,
        duration_ms,
        counts,
        passed,
        failed,
        skipped,
        expected_failures,
        stale,
        exit_code,
        verdict: verdict.into(),
    }
}

/// The two closing lines of the terminal output.
pub fn closing_lines(s: &Summary) -> (String, String) {
    let c = |k: &str| s.counts.get(k).copied().unwrap_or(0);
    let other = format!(
        "verdicts: {} PASS, {} NON-STRICT, {} INFO, {} FAIL, {} UNTESTABLE, {} ERROR, {} UNSUPPORTED, {} SKIPPED; {} expected failures (baseline), {} stale baseline entries; {}",
        c("PASS"),
        c("NON-STRICT"),
        c("INFO"),
        c("FAIL"),
        c("UNTESTABLE"),
        c("ERROR"),
        c("UNSUPPORTED"),
        c("SKIPPED"),
        s.expected_failures.len(),
        s.stale.len(),
        s.verdict
    );
    let last = format!(
        "{} passed, {} failed, {} skipped",
        s.passed, s.failed, s.skipped
    );
    (other, last)
}
