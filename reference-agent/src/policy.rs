//! The dispatcher's policy file: JSON, reloadable, default deny ([VAP-SEC-013]…[VAP-SEC-020]).
//! This module only reads the file; the decision is `vertebra_protocol::dispatch::Policy`
//! (deny overrides allow, nothing matching = deny, cross-domain = deny).
//!
//! ```json
//! {
//!   "ttl": 60,
//!   "rules": [
//!     { "from": "ops@example.com", "operation": "/gem", "decision": "allow" },
//!     { "from": "example.com", "operation": "/gem/list",
//!       "resources": { "cluster": ["/cluster/rd00"] }, "decision": "allow", "ttl": 0 },
//!     { "from": "intern@example.com", "operation": "/gem/delete", "decision": "deny" }
//!   ]
//! }
//! ```
//!
//! - `from`: a bare JID (`user@domain`), a domain (`domain`), or `*` (any requester of the
//!   dispatcher's own domain).
//! - `operation`: the rule covers this path and everything below it (`/gem` covers `/gem/list`).
//! - `resources` (optional): per key, the request's resources under that key must all lie at or
//!   below one listed here; keys not listed are unconstrained.
//! - `to` (optional): only for this responder (bare or full JID).
//! - `decision`: `allow` or `deny`; a matching deny wins over any allow.
//! - `ttl`: seconds the responder may cache an allow (rule value, else the file's, else 0).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio_xmpp::parsers::jid::{BareJid, Jid};
use vertebra_protocol::dispatch::{Effect, Policy, PolicyRule, Subject};
use vertebra_protocol::{Resource, ResourceScope};

/// allow / deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Authorized.
    Allow,
    /// Not authorized.
    Deny,
}

/// One rule of the policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Requester: bare JID, domain, or `*`.
    pub from: String,
    /// Responder restriction: bare or full JID.
    #[serde(default)]
    pub to: Option<String>,
    /// Operation path prefix.
    pub operation: String,
    /// Keyed resource prefixes (optional).
    #[serde(default)]
    pub resources: Option<BTreeMap<String, Vec<String>>>,
    /// Decision when the rule matches.
    pub decision: Decision,
    /// Cache time in seconds (overrides the file's `ttl`).
    #[serde(default)]
    pub ttl: Option<u32>,
}

/// A policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Default cache seconds for allows (0 = do not cache).
    #[serde(default)]
    pub ttl: u32,
    /// Rules (order does not matter; deny wins).
    #[serde(default)]
    pub rules: Vec<RuleFile>,
}

/// Errors reading a policy file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {err}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        err: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("invalid policy file {path}: {err}")]
    Parse {
        /// File.
        path: String,
        /// Cause.
        err: String,
    },
}

fn perr(path: &str, err: impl Into<String>) -> PolicyError {
    PolicyError::Parse {
        path: path.into(),
        err: err.into(),
    }
}

impl PolicyFile {
    /// Parse JSON text.
    pub fn from_json(text: &str, path: &str) -> Result<PolicyFile, PolicyError> {
        let p: PolicyFile = serde_json::from_str(text).map_err(|e| perr(path, e.to_string()))?;
        p.to_policy(path)?;
        Ok(p)
    }

    /// The decision table.
    pub fn to_policy(&self, path: &str) -> Result<Policy, PolicyError> {
        let mut rules = vec![];
        for (i, r) in self.rules.iter().enumerate() {
            let subject = if r.from == "*" {
                Subject::Any
            } else if r.from.contains('@') {
                Subject::Bare(
                    r.from
                        .parse::<BareJid>()
                        .map_err(|e| perr(path, format!("rule {i}: from {:?}: {e}", r.from)))?,
                )
            } else {
                Subject::Domain(r.from.clone())
            };
            let operation = Resource::parse(&r.operation)
                .map_err(|e| perr(path, format!("rule {i}: operation: {}", e.detail)))?;
            let mut resources = ResourceScope::new();
            for (k, list) in r.resources.iter().flatten() {
                for p in list {
                    let res = Resource::parse(p)
                        .map_err(|e| perr(path, format!("rule {i}: resource {k}: {}", e.detail)))?;
                    resources.push(Some(k), res);
                }
            }
            let responder = match &r.to {
                None => None,
                Some(t) => Some(
                    t.parse::<Jid>()
                        .map_err(|e| perr(path, format!("rule {i}: to {t:?}: {e}")))?,
                ),
            };
            rules.push(PolicyRule {
                subject,
                operation,
                resources,
                responder,
                effect: match r.decision {
                    Decision::Allow => Effect::Allow,
                    Decision::Deny => Effect::Deny,
                },
                ttl: r.ttl.unwrap_or(self.ttl),
            });
        }
        Ok(Policy { rules })
    }

    /// Read a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| PolicyError::Io {
            path: shown.clone(),
            err,
        })?;
        Self::from_json(&text, &shown)?.to_policy(&shown)
    }
}

/// Allow every op within the tenant (demos and tests; never a default), cached 60 s.
pub fn allow_all() -> Policy {
    Policy {
        rules: vec![PolicyRule {
            subject: Subject::Any,
            operation: Resource::root(),
            resources: ResourceScope::new(),
            responder: None,
            effect: Effect::Allow,
            ttl: 60,
        }],
    }
}

/// A policy bound to a file, reloaded when the file's modification time changes. A file
/// that fails to parse on reload keeps the previous policy (and the error is logged).
#[derive(Debug)]
pub struct PolicySource {
    path: Option<PathBuf>,
    mtime: Option<SystemTime>,
    policy: Policy,
}

impl PolicySource {
    /// A fixed in-memory policy.
    pub fn fixed(policy: Policy) -> Self {
        PolicySource {
            path: None,
            mtime: None,
            policy,
        }
    }

    /// Load from a file (errors are fatal at start).
    pub fn file(path: PathBuf) -> Result<Self, PolicyError> {
        let policy = PolicyFile::load(&path)?;
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        Ok(PolicySource {
            path: Some(path),
            mtime,
            policy,
        })
    }

    /// The current policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Re-read the file if it changed. Returns true when a new policy was installed.
    pub fn reload_if_changed(&mut self) -> bool {
        let Some(path) = &self.path else { return false };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if mtime == self.mtime {
            return false;
        }
        self.mtime = mtime;
        match PolicyFile::load(path) {
            Ok(p) => {
                log::info!(
                    "policy reloaded from {} ({} rules)",
                    path.display(),
                    p.rules.len()
                );
                self.policy = p;
                true
            }
            Err(e) => {
                log::error!("policy reload failed, keeping the previous policy: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vertebra_protocol::payloads::AuthorizeRequest;

    fn ask(p: &Policy, from: &str, op: &str, res: &[(&str, &str)]) -> bool {
        let mut scope = ResourceScope::new();
        for (k, v) in res {
            scope.push(Some(k), Resource::parse(v).unwrap());
        }
        let to: Jid = "agent@x.test/agent".parse().unwrap();
        let req = AuthorizeRequest {
            from: from.parse().unwrap(),
            to: to.clone(),
            operation: Resource::parse(op).unwrap(),
            resources: scope,
        };
        p.decide(&to, &req).authorized
    }

    #[test]
    fn file_rules_map_to_the_protocol_policy() {
        let f = PolicyFile::from_json(
            r#"{"ttl": 5, "rules":[
              {"from":"bad@x.test","operation":"/","decision":"deny"},
              {"from":"x.test","operation":"/gem","resources":{"cluster":["/cluster/rd00"]},"decision":"allow"}
            ]}"#,
            "t",
        )
        .unwrap();
        let p = f.to_policy("t").unwrap();
        assert_eq!(p.rules[1].ttl, 5);
        assert!(ask(
            &p,
            "ops@x.test/r",
            "/gem/list",
            &[("cluster", "/cluster/rd00/n1")]
        ));
        assert!(!ask(
            &p,
            "ops@x.test/r",
            "/gem/list",
            &[("cluster", "/cluster/rd01")]
        ));
        assert!(!ask(
            &p,
            "bad@x.test/r",
            "/gem/list",
            &[("cluster", "/cluster/rd00")]
        ));
        assert!(!ask(&p, "ops@x.test/r", "/other", &[]));
        assert!(!ask(
            &p,
            "ops@y.test/r",
            "/gem/list",
            &[("cluster", "/cluster/rd00")]
        ));
        assert!(!ask(&Policy::default(), "ops@x.test/r", "/gem", &[]));
        assert!(ask(&allow_all(), "ops@x.test/r", "/gem", &[]));
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(PolicyFile::from_json("{", "t").is_err());
        assert!(PolicyFile::from_json(
            r#"{"rules":[{"from":"*","operation":"x","decision":"allow"}]}"#,
            "t"
        )
        .is_err());
        assert!(PolicyFile::from_json(r#"{"bogus":1}"#, "t").is_err());
        assert!(PolicyFile::from_json(
            r#"{"rules":[{"from":"*","operation":"/x","decision":"maybe"}]}"#,
            "t"
        )
        .is_err());
        assert!(PolicyFile::from_json(
            r#"{"rules":[{"from":"a@@b","operation":"/x","decision":"allow"}]}"#,
            "t"
        )
        .is_err());
    }

    #[test]
    fn reload_on_change_keeps_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(&f, r#"{"rules":[]}"#).unwrap();
        let mut s = PolicySource::file(f.clone()).unwrap();
        assert!(s.policy().rules.is_empty());
        std::fs::write(
            &f,
            r#"{"rules":[{"from":"*","operation":"/","decision":"allow"}]}"#,
        )
        .unwrap();
        s.mtime = None; // force, even on coarse file-system clocks
        assert!(s.reload_if_changed());
        assert_eq!(s.policy().rules.len(), 1);
        std::fs::write(&f, "not json").unwrap();
        s.mtime = None;
        assert!(!s.reload_if_changed());
        assert_eq!(s.policy().rules.len(), 1);
    }
}
