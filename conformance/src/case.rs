//! Case registry types and the per-case context that cases record their checks in.

use crate::session::Session;
use crate::trace::Trace;
use crate::verdict::{Check, Level, Outcome};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Spec area a case belongs to (the report groups by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Area {
    Discovery,
    Load,
    Operations,
    Security,
    Robustness,
    Dispatcher,
}

impl Area {
    pub const ALL: [Area; 6] = [
        Area::Discovery,
        Area::Load,
        Area::Operations,
        Area::Security,
        Area::Robustness,
        Area::Dispatcher,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Area::Discovery => "discovery",
            Area::Load => "load",
            Area::Operations => "operations",
            Area::Security => "security",
            Area::Robustness => "robustness",
            Area::Dispatcher => "dispatcher",
        }
    }
}

/// Which implementation role a case tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    /// An agent (responder + load reporter); the harness plays dispatcher and requesters.
    Agent,
    /// A dispatcher; the harness plays agents and requesters.
    Dispatcher,
}

/// Why a case stopped early without a verdict from its checks.
#[derive(Debug, Clone)]
pub struct Abort {
    pub outcome: Outcome,
    pub reason: String,
}

impl Abort {
    pub fn untestable(reason: impl Into<String>) -> Abort {
        Abort {
            outcome: Outcome::Untestable,
            reason: format!("Not testable: {}", reason.into()),
        }
    }
    pub fn error(reason: impl Into<String>) -> Abort {
        Abort {
            outcome: Outcome::Error,
            reason: reason.into(),
        }
    }
    pub fn skipped(reason: impl Into<String>) -> Abort {
        Abort {
            outcome: Outcome::Skipped,
            reason: reason.into(),
        }
    }
    pub fn unsupported(reason: impl Into<String>) -> Abort {
        Abort {
            outcome: Outcome::Unsupported,
            reason: reason.into(),
        }
    }
    /// A violation already recorded as a failed check; stop the case here.
    pub fn stop(reason: impl Into<String>) -> Abort {
        Abort {
            outcome: Outcome::Pass,
            reason: reason.into(),
        }
    }
}

pub type CaseResult = Result<(), Abort>;
pub type CaseFuture = Pin<Box<dyn Future<Output = CaseResult> + Send>>;
pub type CaseFn = fn(Ctx) -> CaseFuture;

/// A registered conformance case.
pub struct CaseDef {
    /// Stable ID, e.g. `OPS-LIFECYCLE-001`. Never renumbered.
    pub id: &'static str,
    pub area: Area,
    pub subject: Subject,
    pub title: &'static str,
    /// Requirement IDs the case's checks verify.
    pub requirements: &'static [&'static str],
    /// Disco feature var the implementation must claim, else UNSUPPORTED.
    pub feature: Option<&'static str>,
    /// Unscaled time budget for the whole case (watchdog), in milliseconds.
    pub budget_ms: u64,
    /// What the case does (procedure), for `explain` and the reports.
    pub procedure: &'static str,
    /// How to fix a failure.
    pub fix: &'static str,
    pub run: CaseFn,
}

impl std::fmt::Debug for CaseDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaseDef").field("id", &self.id).finish()
    }
}

/// Looks up a requirement's level (unknown IDs are treated as MUST).
pub trait LevelLookup: Send + Sync {
    fn level(&self, id: &str) -> Option<Level>;
}

/// Everything a running case can use: the session (connections to the implementation), the
/// trace, the time scale and the check recorder.
#[derive(Clone)]
pub struct Ctx {
    pub session: Arc<Session>,
    pub trace: Trace,
    pub case_id: &'static str,
    scale: f64,
    checks: Arc<Mutex<Vec<Check>>>,
    levels: Arc<dyn LevelLookup>,
    /// A requester identity of this case's own (cases that run concurrently).
    req_override: Option<crate::peer::Peer>,
}

impl Ctx {
    pub fn new(
        session: Arc<Session>,
        trace: Trace,
        case_id: &'static str,
        scale: f64,
        levels: Arc<dyn LevelLookup>,
    ) -> Ctx {
        Ctx {
            session,
            trace,
            case_id,
            scale,
            checks: Arc::new(Mutex::new(Vec::new())),
            levels,
            req_override: None,
        }
    }

    /// Use `peer` as this case's authorized requester.
    pub fn with_requester(mut self, peer: crate::peer::Peer) -> Ctx {
        self.req_override = Some(peer);
        self
    }

    /// The authorized requester identity of this case.
    pub fn req(&self) -> &crate::peer::Peer {
        self.req_override.as_ref().unwrap_or(&self.session.req)
    }

    /// A step budget: `ms` scaled by the global `--time-scale`.
    pub fn budget(&self, ms: u64) -> Duration {
        Duration::from_secs_f64(ms as f64 * self.scale / 1000.0)
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn level(&self, req: &str) -> Level {
        self.levels.level(req).unwrap_or(Level::Must)
    }

    /// Record a judged observation: `ok` → PASS, else the violation outcome of the
    /// requirement's level. Returns `ok`.
    pub fn check(
        &self,
        req: &str,
        ok: bool,
        expected: impl Into<String>,
        observed: impl Into<String>,
    ) -> bool {
        let level = self.level(req);
        let outcome = if ok { Outcome::Pass } else { level.violation() };
        self.record(req, level, outcome, expected.into(), observed.into());
        ok
    }

    /// Record an informational observation (never gates).
    pub fn info(&self, req: &str, observed: impl Into<String>) {
        let level = self.level(req);
        self.record(req, level, Outcome::Info, String::new(), observed.into());
    }

    /// Record a check with an explicit outcome.
    pub fn record(
        &self,
        req: &str,
        level: Level,
        outcome: Outcome,
        expected: String,
        observed: String,
    ) {
        let idx = self.trace.len();
        self.trace.note(format!(
            "check {req} ({}): {}{}",
            level.as_str(),
            outcome.as_str(),
            if outcome == Outcome::Pass {
                String::new()
            } else {
                format!(" - observed: {observed}")
            }
        ));
        let mut g = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        g.push(Check {
            requirement: req.to_string(),
            level,
            outcome,
            expected,
            observed,
            trace_index: if idx == 0 { None } else { Some(idx - 1) },
        });
    }

    /// Check, and abort the case when it failed (later steps depend on it).
    pub fn require(
        &self,
        req: &str,
        ok: bool,
        expected: impl Into<String>,
        observed: impl Into<String>,
    ) -> CaseResult {
        if self.check(req, ok, expected, observed) {
            Ok(())
        } else {
            Err(Abort::stop(format!("stopped after failed check {req}")))
        }
    }

    pub fn take_checks(&self) -> Vec<Check> {
        std::mem::take(&mut *self.checks.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn checks_len(&self) -> usize {
        self.checks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Build a `CaseFn` from an `async fn(Ctx) -> CaseResult`.
#[macro_export]
macro_rules! case_fn {
    ($f:path) => {{
        fn __run(cx: $crate::case::Ctx) -> $crate::case::CaseFuture {
            Box::pin($f(cx))
        }
        __run as $crate::case::CaseFn
    }};
}
