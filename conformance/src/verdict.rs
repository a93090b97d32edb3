//! Verdict model: per-check outcomes, their aggregation into a case outcome, and the
//! baseline disposition.

use serde::{Deserialize, Serialize};

/// Requirement level of the spec sentence a check verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// MUST / MUST NOT / REQUIRED: a violation is a FAIL.
    Must,
    /// SHOULD / SHOULD NOT / RECOMMENDED: a violation is NON-STRICT.
    Should,
    /// MAY / OPTIONAL: never a failure; what happened is INFO.
    May,
}

impl Level {
    /// Parse `MUST`, `SHOULD`, `MAY` (any case; `MUST NOT` etc. map to their family).
    pub fn parse(s: &str) -> Option<Level> {
        let u = s.trim().to_ascii_uppercase();
        if u.starts_with("MUST") || u.starts_with("SHALL") || u == "REQUIRED" {
            Some(Level::Must)
        } else if u.starts_with("SHOULD") || u == "RECOMMENDED" {
            Some(Level::Should)
        } else if u.starts_with("MAY") || u == "OPTIONAL" {
            Some(Level::May)
        } else {
            None
        }
    }

    /// The outcome a violated requirement of this level produces.
    pub fn violation(self) -> Outcome {
        match self {
            Level::Must => Outcome::Fail,
            Level::Should => Outcome::NonStrict,
            Level::May => Outcome::Info,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
            Level::May => "MAY",
        }
    }
}

/// Outcome of one check or one case, computed from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    #[serde(rename = "PASS")]
    Pass,
    /// A SHOULD was missed (or a non-preferred alternative happened).
    #[serde(rename = "NON-STRICT")]
    NonStrict,
    /// A MUST was broken.
    #[serde(rename = "FAIL")]
    Fail,
    /// A measurement or behaviour the spec leaves open.
    #[serde(rename = "INFO")]
    Info,
    /// The implementation does not claim the feature the case needs.
    #[serde(rename = "UNSUPPORTED")]
    Unsupported,
    /// A prerequisite the implementation should provide is missing, or the attach mode
    /// cannot observe what the case needs.
    #[serde(rename = "UNTESTABLE")]
    Untestable,
    /// Harness, XMPP server or environment fault: never blamed on the implementation.
    #[serde(rename = "ERROR")]
    Error,
    /// Deselected by filters; not run.
    #[serde(rename = "SKIPPED")]
    Skipped,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Pass,
        Outcome::NonStrict,
        Outcome::Fail,
        Outcome::Info,
        Outcome::Unsupported,
        Outcome::Untestable,
        Outcome::Error,
        Outcome::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::NonStrict => "NON-STRICT",
            Outcome::Fail => "FAIL",
            Outcome::Info => "INFO",
            Outcome::Unsupported => "UNSUPPORTED",
            Outcome::Untestable => "UNTESTABLE",
            Outcome::Error => "ERROR",
            Outcome::Skipped => "SKIPPED",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str().eq_ignore_ascii_case(s))
    }

    /// Severity used to aggregate checks into a case: higher wins.
    /// ERROR > FAIL > UNTESTABLE > NON-STRICT > INFO > PASS > UNSUPPORTED > SKIPPED.
    pub fn severity(self) -> u8 {
        match self {
            Outcome::Skipped => 0,
            Outcome::Unsupported => 1,
            Outcome::Pass => 2,
            Outcome::Info => 3,
            Outcome::NonStrict => 4,
            Outcome::Untestable => 5,
            Outcome::Fail => 6,
            Outcome::Error => 7,
        }
    }

    /// Did the case actually exercise the implementation?
    pub fn executed(self) -> bool {
        matches!(
            self,
            Outcome::Pass
                | Outcome::NonStrict
                | Outcome::Fail
                | Outcome::Info
                | Outcome::Untestable
        )
    }

    /// Does this outcome make the implementation non-conformant (before the baseline)?
    pub fn gating(self) -> bool {
        matches!(self, Outcome::Fail | Outcome::Untestable)
    }

    /// One-character progress glyph for the terminal.
    pub fn glyph(self) -> &'static str {
        match self {
            Outcome::Pass => "ok",
            Outcome::NonStrict => "~ ",
            Outcome::Fail => "XX",
            Outcome::Info => "i ",
            Outcome::Unsupported => "? ",
            Outcome::Untestable => "! ",
            Outcome::Error => "E ",
            Outcome::Skipped => "- ",
        }
    }
}

/// Most severe outcome of a set; `None` when empty.
pub fn aggregate<I: IntoIterator<Item = Outcome>>(outcomes: I) -> Option<Outcome> {
    outcomes.into_iter().max_by_key(|o| o.severity())
}

/// Who is to blame for a non-passing check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Blame {
    Implementation,
    Server,
    Harness,
}

/// One judged observation, tied to one requirement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// Requirement ID, e.g. `VAP-OPS-012`.
    pub requirement: String,
    pub level: Level,
    pub outcome: Outcome,
    /// What the spec wants (all acceptable alternatives).
    pub expected: String,
    /// What the harness saw.
    pub observed: String,
    /// Trace index of the last event this check looked at, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_index: Option<usize>,
}

/// Disposition of a case after applying the baseline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disposition {
    /// Not in the baseline.
    New,
    /// Listed as failing and still failing: does not gate.
    ExpectedFailure,
    /// Listed as flaky: reported, never gates.
    ToleratedFlaky,
    /// Listed as failing but now passes: gates (remove the entry).
    Stale,
    /// The entry's `expires` date has passed: treated as absent.
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregation_is_most_severe() {
        use Outcome::*;
        assert_eq!(aggregate([Pass, Info, NonStrict]), Some(NonStrict));
        assert_eq!(aggregate([Pass, Fail, Untestable]), Some(Fail));
        assert_eq!(aggregate([Fail, Error]), Some(Error));
        assert_eq!(aggregate([Unsupported, Unsupported]), Some(Unsupported));
        assert_eq!(aggregate([Unsupported, Pass]), Some(Pass));
        assert_eq!(aggregate(std::iter::empty()), None);
    }

    #[test]
    fn levels_map_to_outcomes() {
        assert_eq!(Level::parse("MUST NOT"), Some(Level::Must));
        assert_eq!(Level::parse("should"), Some(Level::Should));
        assert_eq!(Level::Must.violation(), Outcome::Fail);
        assert_eq!(Level::Should.violation(), Outcome::NonStrict);
        assert_eq!(Level::May.violation(), Outcome::Info);
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
            let j = serde_json::to_string(&o).unwrap();
            assert_eq!(j, format!("\"{}\"", o.as_str()));
        }
    }
}
