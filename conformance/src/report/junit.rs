//! JUnit XML via `quick-junit`: one `testsuite` per area, one `testcase` per case
//! (`name` = case ID, `classname` = `vertebra.<area>`). FAIL/UNTESTABLE and stale baseline
//! entries → `<failure>`, ERROR → `<error>`, UNSUPPORTED/SKIPPED and expected failures →
//! `<skipped>`; PASS, NON-STRICT and INFO pass, with the outcome as a property.

use super::CaseRecord;
use crate::verdict::{Disposition, Outcome};
use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};
use std::time::Duration;

fn failure_message(c: &CaseRecord) -> String {
    let failed: Vec<String> = c
        .checks
        .iter()
        .filter(|k| k.outcome.gating() || k.outcome == Outcome::Error)
        .map(|k| {
            format!(
                "[{}] {}: expected {}; observed {}",
                k.requirement,
                k.level.as_str(),
                k.expected,
                k.observed
            )
        })
        .collect();
    let mut m = failed.join(" | ");
    if let Some(r) = &c.reason {
        if !m.is_empty() {
            m.push_str(" | ");
        }
        m.push_str(r);
    }
    if m.is_empty() {
        m = c.outcome.as_str().to_string();
    }
    m
}

fn description(c: &CaseRecord) -> String {
    let mut s = String::new();
    for k in &c.checks {
        s.push_str(&format!(
            "{} [{}] {}\n  expected: {}\n  observed: {}\n",
            k.outcome.as_str(),
            k.requirement,
            k.level.as_str(),
            k.expected,
            k.observed
        ));
    }
    s.push_str("\ntrace:\n");
    for e in &c.trace {
        s.push_str(&format!(
            "{:>10.3} ms {} {} {}\n",
            e.t_ms,
            e.dir.arrow(),
            e.via,
            e.data
        ));
    }
    s
}

/// Build the JUnit report.
pub fn build(run_name: &str, cases: &[CaseRecord]) -> Report {
    let mut report = Report::new(run_name);
    let mut areas: Vec<&str> = cases.iter().map(|c| c.area.as_str()).collect();
    areas.sort();
    areas.dedup();
    for area in areas {
        let mut suite = TestSuite::new(format!("vertebra.{area}"));
        for c in cases.iter().filter(|c| c.area == area) {
            let status = match (c.outcome, c.disposition) {
                (_, Disposition::Stale) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_type("stale-baseline");
                    s.set_message(format!(
                        "listed as failing in the baseline ({}) but now {}: remove the entry",
                        c.baseline_reason.clone().unwrap_or_default(),
                        c.outcome.as_str()
                    ));
                    s
                }
                (o, Disposition::ExpectedFailure) if o.gating() => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_type("expected-failure");
                    s.set_message(format!(
                        "expected failure (baseline: {}): {}",
                        c.baseline_reason.clone().unwrap_or_default(),
                        failure_message(c)
                    ));
                    s
                }
                (Outcome::Fail | Outcome::Untestable, _) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_type(c.outcome.as_str());
                    s.set_message(failure_message(c));
                    s.set_description(description(c));
                    s
                }
                (Outcome::Error, _) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                    s.set_type("ERROR");
                    s.set_message(failure_message(c));
                    s.set_description(description(c));
                    s
                }
                (Outcome::Unsupported | Outcome::Skipped, _) => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_type(c.outcome.as_str());
                    s.set_message(
                        c.reason
                            .clone()
                            .unwrap_or_else(|| c.outcome.as_str().into()),
                    );
                    s
                }
                (Outcome::Pass | Outcome::NonStrict | Outcome::Info, _) => {
                    TestCaseStatus::success()
                }
            };
            let mut tc = TestCase::new(c.id.as_str(), status);
            tc.set_classname(format!("vertebra.{area}"));
            tc.set_time(Duration::from_secs_f64(c.duration_ms / 1000.0));
            tc.set_assertions(c.checks.len());
            tc.add_property(Property::new("title", c.title.as_str()));
            tc.add_property(Property::new("outcome", c.outcome.as_str()));
            tc.add_property(Property::new(
                "disposition",
                serde_json::to_value(c.disposition)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            ));
            tc.add_property(Property::new("requirements", c.requirements.join(" ")));
            suite.add_test_case(tc);
        }
        report.add_test_suite(suite);
    }
    report
}
