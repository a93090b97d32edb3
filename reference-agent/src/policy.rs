//! The dispatcher's policy file: JSON, reloadable, default deny ([VAP-SEC] authorization).
//!
//! ```json
//! {
//!   "default": "deny",
//!   "ttl": 60,
//!   "rules": [
//!     { "from": "ops@example.com", "operation": "/gem", "decision": "allow" },
//!     { "from": "example.com", "operation": "/gem/list",
//!       "resources": { "cluster": ["/cluster/rd00"] }, "decision": "allow", "ttl": 0 },
//!     { "from": "*", "operation": "/vertebra/test", "decision": "allow" }
//!   ]
//! }
//! ```
//!
//! - `from`: a bare JID (`user@domain`), a domain (`domain`), or `*` (any requester of the
//!   dispatcher's tenant: the dispatcher never authorizes across domains, see [VAP-SEC]).
//! - `operation`: an operation path; matches when it is a segment-prefix of the requested
//!   operation (`/gem` covers `/gem/list`).
//! - `resources` (optional): keyed resource lists; when present, every requested keyed resource
//!   must lie under one listed for its key (segment prefix), and a requested key with no entry
//!   here does not match.
//! - `to` (optional): restrict the responder, by bare JID or domain.
//! - First matching rule wins. No match: `default` (which itself defaults to deny).
//!
//! The file is parsed here; the decision logic is a pure function of (policy, request), kept
//! free of I/O so it can be tested exhaustively and evaluated identically by every replica.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// allow / deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Authorized.
    Allow,
    /// Not authorized.
    #[default]
    Deny,
}

/// One rule of the policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Requester: bare JID, domain, or `*`.
    pub from: String,
    /// Responder restriction: bare JID, domain, or `*` (default `*`).
    #[serde(default = "star")]
    pub to: String,
    /// Operation path prefix.
    pub operation: String,
    /// Keyed resource prefixes (optional).
    #[serde(default)]
    pub resources: Option<BTreeMap<String, Vec<String>>>,
    /// Decision when the rule matches.
    pub decision: Decision,
    /// Cache time in seconds handed to the responder (overrides the file's `ttl`).
    #[serde(default)]
    pub ttl: Option<u32>,
}

fn star() -> String {
    "*".into()
}

/// A policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Decision when no rule matches (deny unless stated).
    #[serde(default)]
    pub default: Decision,
    /// Default cache seconds for answers (0 = do not cache).
    #[serde(default)]
    pub ttl: u32,
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<Rule>,
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

/// What is being authorized.
#[derive(Debug, Clone)]
pub struct AuthzRequest<'a> {
    /// Requester bare JID (`user@domain`).
    pub from_bare: &'a str,
    /// Responder bare JID.
    pub to_bare: &'a str,
    /// Operation path.
    pub operation: &'a str,
    /// Keyed resources of the call (key, path).
    pub resources: &'a [(String, String)],
}

/// The answer with the rule that produced it (for the decision log).
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// allow / deny.
    pub decision: Decision,
    /// Cache seconds.
    pub ttl: u32,
    /// Index of the matching rule, None = default.
    pub rule: Option<usize>,
}

fn domain_of(bare: &str) -> &str {
    bare.rsplit_once('@').map(|(_, d)| d).unwrap_or(bare)
}

fn principal_matches(pattern: &str, bare: &str) -> bool {
    pattern == "*" || pattern == bare || (!pattern.contains('@') && pattern == domain_of(bare))
}

/// Segment-prefix test on resource paths ("/a" covers "/a/b", not "/ab").
pub fn path_covers(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        return path.starts_with('/');
    }
    path == p || (path.starts_with(p) && path[p.len()..].starts_with('/'))
}

impl Policy {
    /// Parse policy JSON text.
    pub fn from_json(text: &str, path: &str) -> Result<Policy, PolicyError> {
        let p: Policy = serde_json::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.into(),
            err: e.to_string(),
        })?;
        for (i, r) in p.rules.iter().enumerate() {
            if !r.operation.starts_with('/') {
                return Err(PolicyError::Parse {
                    path: path.into(),
                    err: format!("rule {i}: operation must start with '/'"),
                });
            }
        }
        Ok(p)
    }

    /// Read a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|err| PolicyError::Io {
            path: path.display().to_string(),
            err,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Allow everything within the tenant (handy for demos and tests; never the default).
    pub fn allow_all() -> Policy {
        Policy {
            default: Decision::Allow,
            ttl: 60,
            rules: vec![],
        }
    }

    /// Decide. Requests across domains (requester and responder in different XMPP domains)
    /// are always denied: tenants are isolated by domain.
    pub fn decide(&self, req: &AuthzRequest<'_>) -> Verdict {
        if domain_of(req.from_bare) != domain_of(req.to_bare) {
            return Verdict {
                decision: Decision::Deny,
                ttl: 0,
                rule: None,
            };
        }
        for (i, r) in self.rules.iter().enumerate() {
            if !principal_matches(&r.from, req.from_bare)
                || !principal_matches(&r.to, req.to_bare)
                || !path_covers(&r.operation, req.operation)
            {
                continue;
            }
            if let Some(allowed) = &r.resources {
                let ok = req.resources.iter().all(|(k, v)| {
                    allowed
                        .get(k)
                        .map(|list| list.iter().any(|a| path_covers(a, v)))
                        .unwrap_or(false)
                });
                if !ok {
                    continue;
                }
            }
            return Verdict {
                decision: r.decision,
                ttl: r.ttl.unwrap_or(self.ttl),
                rule: Some(i),
            };
        }
        Verdict {
            decision: self.default,
            ttl: self.ttl,
            rule: None,
        }
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
        let policy = Policy::load(&path)?;
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
        match Policy::load(path) {
            Ok(p) => {
                log::info!("policy reloaded from {} ({} rules)", path.display(), p.rules.len());
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

    fn req<'a>(from: &'a str, op: &'a str, res: &'a [(String, String)]) -> AuthzRequest<'a> {
        AuthzRequest {
            from_bare: from,
            to_bare: "agent@x.test",
            operation: op,
            resources: res,
        }
    }

    #[test]
    fn default_deny_and_first_match() {
        let p = Policy::from_json(
            r#"{"rules":[
              {"from":"bad@x.test","operation":"/","decision":"deny"},
              {"from":"x.test","operation":"/gem","resources":{"cluster":["/cluster/rd00"]},"decision":"allow","ttl":5}
            ]}"#,
            "t",
        )
        .unwrap();
        let rd00 = vec![("cluster".to_string(), "/cluster/rd00/n1".to_string())];
        let rd01 = vec![("cluster".to_string(), "/cluster/rd01".to_string())];
        let v = p.decide(&req("ops@x.test", "/gem/list", &rd00));
        assert_eq!(v.decision, Decision::Allow);
        assert_eq!(v.ttl, 5);
        assert_eq!(p.decide(&req("ops@x.test", "/gem/list", &rd01)).decision, Decision::Deny);
        assert_eq!(p.decide(&req("bad@x.test", "/gem/list", &rd00)).decision, Decision::Deny);
        assert_eq!(p.decide(&req("ops@x.test", "/gemx", &[])).decision, Decision::Deny);
        assert_eq!(p.decide(&req("ops@y.test", "/gem/list", &rd00)).decision, Decision::Deny);
        assert_eq!(p.decide(&req("ops@x.test", "/other", &[])).decision, Decision::Deny);
    }

    #[test]
    fn cross_domain_is_denied_even_with_allow_default() {
        let p = Policy::allow_all();
        let v = p.decide(&AuthzRequest {
            from_bare: "a@one.test",
            to_bare: "b@two.test",
            operation: "/x",
            resources: &[],
        });
        assert_eq!(v.decision, Decision::Deny);
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(Policy::from_json("{", "t").is_err());
        assert!(Policy::from_json(r#"{"rules":[{"from":"*","operation":"x","decision":"allow"}]}"#, "t").is_err());
        assert!(Policy::from_json(r#"{"bogus":1}"#, "t").is_err());
        assert!(Policy::from_json(r#"{"rules":[{"from":"*","operation":"/x","decision":"maybe"}]}"#, "t").is_err());
    }

    #[test]
    fn reload_on_change_keeps_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(&f, r#"{"default":"deny"}"#).unwrap();
        let mut s = PolicySource::file(f.clone()).unwrap();
        assert_eq!(s.policy().default, Decision::Deny);
        std::fs::write(&f, r#"{"default":"allow"}"#).unwrap();
        // force a different mtime even on coarse file systems
        s.mtime = None;
        assert!(s.reload_if_changed());
        assert_eq!(s.policy().default, Decision::Allow);
        std::fs::write(&f, "not json").unwrap();
        s.mtime = None;
        assert!(!s.reload_if_changed());
        assert_eq!(s.policy().default, Decision::Allow);
    }

    #[test]
    fn path_cover() {
        assert!(path_covers("/", "/a"));
        assert!(path_covers("/a", "/a"));
        assert!(path_covers("/a", "/a/b"));
        assert!(!path_covers("/a", "/ab"));
    }
}
