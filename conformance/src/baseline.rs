//! Baseline file of known failures: `{"entries":[{"case":"ID-or-glob","status":"failing"|"flaky",
//! "reason":"…","issue":"URL?","expires":"YYYY-MM-DD?"}]}`.
//!
//! A `failing` entry turns a FAIL/UNTESTABLE into an expected failure (does not gate); if the
//! case now passes the entry is **stale** (gates: remove it). A `flaky` entry never gates.
//! An entry past its `expires` date is ignored (the disposition says `expired`).

use crate::verdict::{Disposition, Outcome};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Failing,
    Flaky,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Case ID, or a pattern with `*` wildcards.
    pub case: String,
    pub status: Status,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<String>,
    /// `YYYY-MM-DD`; after this date the entry is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub entries: Vec<Entry>,
}

/// `*` matches any run of characters (including none); everything else literally.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    fn rec(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| rec(rest, &s[i..])),
            Some((c, rest)) => s
                .split_first()
                .is_some_and(|(d, srest)| c.eq_ignore_ascii_case(d) && rec(rest, srest)),
        }
    }
    rec(pattern.as_bytes(), s.as_bytes())
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

/// RFC 3339 UTC timestamp with milliseconds for `t`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

impl Baseline {
    pub fn load(path: &std::path::Path) -> Result<Baseline, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read baseline {}: {e}", path.display()))?;
        let b: Baseline = serde_json::from_str(&text)
            .map_err(|e| format!("invalid baseline {}: {e}", path.display()))?;
        for e in &b.entries {
            if e.reason.trim().is_empty() {
                return Err(format!("baseline entry {} has no reason", e.case));
            }
            if let Some(x) = &e.expires {
                let ok = x.len() == 10
                    && x.bytes().enumerate().all(|(i, c)| {
                        if i == 4 || i == 7 {
                            c == b'-'
                        } else {
                            c.is_ascii_digit()
                        }
                    });
                if !ok {
                    return Err(format!(
                        "baseline entry {}: expires must be YYYY-MM-DD",
                        e.case
                    ));
                }
            }
        }
        Ok(b)
    }

    /// The first entry matching `case_id`.
    pub fn find(&self, case_id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| glob_match(&e.case, case_id))
    }

    /// Disposition of a case outcome; also returns the entry's reason.
    pub fn disposition(
        &self,
        case_id: &str,
        outcome: Outcome,
        today: &str,
    ) -> (Disposition, Option<String>) {
        let Some(e) = self.find(case_id) else {
            return (Disposition::New, None);
        };
        if e.expires.as_deref().is_some_and(|x| x < today) {
            return (Disposition::Expired, Some(e.reason.clone()));
        }
        let d = match e.status {
            Status::Flaky => Disposition::ToleratedFlaky,
            Status::Failing => {
                if outcome.gating() {
                    Disposition::ExpectedFailure
                } else if matches!(outcome, Outcome::Pass | Outcome::NonStrict | Outcome::Info) {
                    Disposition::Stale
                } else {
                    Disposition::New
                }
            }
        };
        (d, Some(e.reason.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bl() -> Baseline {
        Baseline {
            entries: vec![
                Entry {
                    case: "OPS-CANCEL-*".into(),
                    status: Status::Failing,
                    reason: "cancel not built".into(),
                    issue: None,
                    expires: None,
                },
                Entry {
                    case: "LOAD-REPORT-002".into(),
                    status: Status::Flaky,
                    reason: "timer jitter".into(),
                    issue: None,
                    expires: None,
                },
                Entry {
                    case: "SEC-AUTHZ-001".into(),
                    status: Status::Failing,
                    reason: "old".into(),
                    issue: None,
                    expires: Some("2020-01-01".into()),
                },
            ],
        }
    }

    #[test]
    fn stale_and_expected() {
        let b = bl();
        let t = "2026-11-23";
        assert_eq!(
            b.disposition("OPS-CANCEL-001", Outcome::Fail, t).0,
            Disposition::ExpectedFailure
        );
        assert_eq!(
            b.disposition("OPS-CANCEL-001", Outcome::Pass, t).0,
            Disposition::Stale
        );
        assert_eq!(
            b.disposition("OPS-CANCEL-001", Outcome::Error, t).0,
            Disposition::New
        );
        assert_eq!(
            b.disposition("LOAD-REPORT-002", Outcome::Fail, t).0,
            Disposition::ToleratedFlaky
        );
        assert_eq!(
            b.disposition("SEC-AUTHZ-001", Outcome::Fail, t).0,
            Disposition::Expired
        );
        assert_eq!(
            b.disposition("DSC-INFO-001", Outcome::Fail, t).0,
            Disposition::New
        );
    }

    #[test]
    fn globs_and_dates() {
        assert!(glob_match("OPS-*", "OPS-LIFECYCLE-001"));
        assert!(glob_match("*-001", "OPS-LIFECYCLE-001"));
        assert!(!glob_match("OPS-*", "SEC-AUTHZ-001"));
        assert!(glob_match("ops-lifecycle-001", "OPS-LIFECYCLE-001"));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(today().len(), 10);
    }
}
