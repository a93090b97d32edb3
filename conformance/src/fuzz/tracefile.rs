//! The canonical trace file (JSON): the input steps the harness sent (with role placeholders
//! instead of this run's JIDs, so a trace replays on any attach), what the implementation
//! answered (for offline re-judging), and, for a fuzz finding, the oracle that fired.
//!
//! Placeholders in step XML: `{{agent}}`, `{{requester}}`, `{{stranger}}`, `{{dispatcher}}`
//! (the harness's dispatcher identity), `{{target}}` (the implementation under test),
//! `{{domain}}`, and `{{tok:K}}` — the composite token the implementation returned for the op
//! sent by the step whose `key` is K. For JID edge cases: `{{requester_local}}`,
//! `{{requester_local_upper}}`, `{{requester_resource}}`, `{{agent_bare}}`,
//! `{{agent_local_upper}}`, `{{agent_resource}}` and `{{foreign_domain}}` (a second domain the server serves, or an
//! unserved one). In `raw` bytes, `{{x:HH}}` is the byte 0xHH (non-UTF-8 input).

use crate::trace::TraceEvent;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FORMAT: &str = "vertebra-trace/1";

/// Who sends a step.
pub const VIA_REQUESTER: &str = "requester";
pub const VIA_STRANGER: &str = "stranger";
pub const VIA_DISPATCHER: &str = "dispatcher";
/// Raw injection by the embedded server with the `from` in the step (embedded modes only).
pub const VIA_INJECT: &str = "inject";

/// One input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// Stable ordinal from generation (survives minimization; `{{tok:K}}` refers to it).
    pub key: u32,
    /// `requester`, `stranger`, `dispatcher` or `inject`.
    pub via: String,
    /// `iq` (default), `message`, `split` (embedded: split the server's writes to the
    /// implementation into pieces of at most `max` bytes; 0 stops splitting), `cut`
    /// (embedded: the server cuts the implementation's connection, the harness waits for it
    /// to reconnect), `restart` (spawn and reference modes: stop the implementation and start
    /// it again), `raw` (embedded: write the bytes of `raw` into the implementation's stream).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// IQ type (`set`, `get`, `result`, `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iq_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `from` of an injected stanza (placeholders allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Payload XML (the single child), with placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xml: Option<String>,
    /// Part of a burst: no liveness barrier after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub burst: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<usize>,
    /// `to` of an injected stanza (placeholders allowed; default: the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Bytes of a `raw` step (placeholders allowed, `{{x:HH}}` for any byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// What the generator meant (for humans).
    #[serde(default)]
    pub note: String,
}

fn default_kind() -> String {
    "iq".into()
}

/// What an oracle found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    /// Oracle name: `liveness`, `process-exit`, `memory-growth`, `invalid-stanza`,
    /// `error-taxonomy`, `leak`, `duplicate-reexecuted`, `refused-executed`,
    /// `counter-mismatch`, `after-terminal`.
    pub oracle: String,
    /// The requirement the oracle enforces.
    pub requirement: String,
    pub detail: String,
    /// Index (into the trace's steps) after which it was detected.
    #[serde(default)]
    pub at_step: usize,
}

/// A trace file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TraceFile {
    pub format: String,
    /// `fuzz-finding`, `regression` or `recording`.
    pub kind: String,
    /// Regression-case ID (e.g. `FUZZ-REG-001`) once promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub title: String,
    /// `agent` or `dispatcher`.
    #[serde(default = "default_subject")]
    pub subject: String,
    #[serde(default)]
    pub seed: Option<u64>,
    /// Where it was found (mode and target description).
    #[serde(default)]
    pub found_on: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<Finding>,
    pub steps: Vec<Step>,
    /// The wire as observed (role placeholders, credentials redacted), for offline re-judging.
    #[serde(default)]
    pub observed: Vec<TraceEvent>,
    /// The command that replays this trace.
    #[serde(default)]
    pub replay: String,
}

fn default_subject() -> String {
    "agent".into()
}

impl TraceFile {
    pub fn new(kind: &str, subject: &str, steps: Vec<Step>) -> TraceFile {
        TraceFile {
            format: FORMAT.into(),
            kind: kind.into(),
            id: None,
            title: String::new(),
            subject: subject.into(),
            seed: None,
            found_on: String::new(),
            finding: None,
            steps,
            observed: Vec::new(),
            replay: String::new(),
        }
    }

    pub fn load(path: &Path) -> Result<TraceFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let t: TraceFile = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a trace file: {e}", path.display()))?;
        if t.format != FORMAT {
            return Err(format!(
                "{}: unsupported trace format {:?} (expected {FORMAT})",
                path.display(),
                t.format
            ));
        }
        Ok(t)
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// Real names of the roles in one attach, for placeholder substitution both ways.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    pub agent: String,
    pub requester: String,
    pub stranger: String,
    pub dispatcher: String,
    pub target: String,
    pub domain: String,
    /// Another XMPP domain (the server's second domain when it has one).
    pub foreign_domain: String,
    /// Secrets to redact from recordings (account passwords).
    pub secrets: Vec<String>,
}

impl Roles {
    /// Placeholder → real value.
    pub fn fill(&self, s: &str) -> String {
        if !s.contains("{{") {
            return s.to_string();
        }
        let local = |j: &str| {
            j.split_once('@')
                .map(|x| x.0.to_string())
                .unwrap_or_default()
        };
        let bare = |j: &str| {
            j.split_once('/')
                .map(|x| x.0.to_string())
                .unwrap_or(j.into())
        };
        let resource = |j: &str| {
            j.split_once('/')
                .map(|x| x.1.to_string())
                .unwrap_or_default()
        };
        let foreign = if self.foreign_domain.is_empty() {
            "elsewhere.example"
        } else {
            self.foreign_domain.as_str()
        };
        s.replace("{{requester_local}}", &local(&self.requester))
            .replace(
                "{{requester_local_upper}}",
                &local(&self.requester).to_uppercase(),
            )
            .replace("{{requester_resource}}", &resource(&self.requester))
            .replace("{{agent_bare}}", &bare(&self.agent))
            .replace("{{agent_resource}}", &resource(&self.agent))
            .replace("{{agent_local_upper}}", &local(&self.agent).to_uppercase())
            .replace("{{foreign_domain}}", foreign)
            .replace("{{agent}}", &self.agent)
            .replace("{{requester}}", &self.requester)
            .replace("{{stranger}}", &self.stranger)
            .replace("{{dispatcher}}", &self.dispatcher)
            .replace("{{target}}", &self.target)
            .replace("{{domain}}", &self.domain)
    }

    /// Real value → placeholder, and secrets redacted (canonical form of a recording).
    pub fn canonical(&self, s: &str) -> String {
        let mut out = s.to_string();
        for sec in &self.secrets {
            if sec.len() >= 4 {
                out = out.replace(sec.as_str(), "[redacted]");
            }
        }
        let mut pairs: Vec<(&str, &str)> = vec![
            (self.agent.as_str(), "{{agent}}"),
            (self.requester.as_str(), "{{requester}}"),
            (self.stranger.as_str(), "{{stranger}}"),
            (self.dispatcher.as_str(), "{{dispatcher}}"),
            (self.target.as_str(), "{{target}}"),
        ];
        // Longest first, so a full JID wins over its bare prefix.
        pairs.retain(|(r, _)| !r.is_empty());
        pairs.sort_by_key(|(r, _)| std::cmp::Reverse(r.len()));
        for (real, ph) in pairs {
            out = out.replace(real, ph);
        }
        out
    }
}

/// Redact credentials in free text that does not come from a session (e.g. a results file):
/// `password` attribute/element values and `VERTEBRA_PASSWORD=…` assignments.
pub fn redact_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("PASSWORD=") {
        let end_key = i + "PASSWORD=".len();
        out.push_str(&rest[..end_key]);
        let tail = &rest[end_key..];
        let stop = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '<')
            .unwrap_or(tail.len());
        out.push_str("[redacted]");
        rest = &tail[stop..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_redaction() {
        let r = Roles {
            agent: "agent@localhost/agent".into(),
            requester: "requester@localhost/harness".into(),
            stranger: "stranger@localhost/harness".into(),
            dispatcher: "dispatcher@localhost/dispatcher".into(),
            target: "agent@localhost/agent".into(),
            domain: "localhost".into(),
            foreign_domain: String::new(),
            secrets: vec!["s3cr3tpw".into()],
        };
        let real =
            "<iq from='requester@localhost/harness' to='agent@localhost/agent'>s3cr3tpw</iq>";
        let c = r.canonical(real);
        assert!(!c.contains("s3cr3tpw"));
        assert!(c.contains("{{requester}}"));
        assert_eq!(r.fill("{{requester}}"), "requester@localhost/harness");
        assert_eq!(
            r.fill("{{agent_local_upper}}@{{domain}}/{{agent_resource}} {{requester_local}}@{{foreign_domain}}/{{requester_resource}} {{agent_bare}}"),
            "AGENT@localhost/agent requester@elsewhere.example/harness agent@localhost"
        );
        assert_eq!(
            redact_text("VERTEBRA_PASSWORD=abc x"),
            "VERTEBRA_PASSWORD=[redacted] x"
        );
    }
}
