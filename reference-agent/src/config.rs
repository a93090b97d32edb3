//! Configuration shared by the agent, dispatcher and requester runtimes: connection settings
//! (also from the spawn-contract environment variables), timing, and the deliberate
//! [`Misbehaviour`] switch used by the conformance harness to build mutants.

use std::time::Duration;

use tokio_xmpp::parsers::jid::{FullJid, Jid};

use crate::conn::ConnectOptions;

/// One deliberately broken rule. The reference runtimes consult this at the single place
/// where they would otherwise follow the rule, so a "mutant" is the reference agent or
/// dispatcher with exactly one violation. Runtime option, no cargo feature; `None` is the
/// conforming behaviour and the default. Meant for the conformance harness's self-test.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum Misbehaviour {
    /// Conforming.
    #[default]
    None,
    /// Agent: never sends `<ack>` (nor the fast-path ack), goes straight to data.
    SkipAck,
    /// Agent: answers the op with a token that is not a rotation of the request token.
    WrongToken,
    /// Agent: sends one more `<data>` after `<final>`.
    DataAfterFinal,
    /// Agent: does not end the op when its deadline passes (handler keeps running).
    IgnoreDeadline,
    /// Agent: answers `<cancel>` but keeps running and finishes normally.
    IgnoreCancel,
    /// Agent: processes a retransmitted op (same from + IQ id) again instead of re-answering.
    ReexecuteDuplicate,
    /// Agent: skips the `/security/authorize` question and runs every call.
    IgnoreAuthorization,
    /// Agent: stops sending load reports after the first one.
    StaleLoad,
    /// Agent: encodes booleans as `true`/`false` instead of `1`/`0` in results.
    WrongValueEncoding,
    /// Agent: puts internal detail (a fake backtrace/path) into `handler-failed` reasons.
    LeakErrorDetail,
    /// Agent: numbers data chunks starting at 1 instead of 0.
    WrongSeq,
    /// Dispatcher: answers discover most-loaded first.
    WrongDiscoverOrder,
    /// Dispatcher: ignores unavailable presence and report silence (dead agents stay listed).
    SlowDeathDetection,
    /// Dispatcher: accepts advertisements naming another JID as advertiser.
    AcceptForeignAdvert,
    /// Dispatcher: lists agents of every domain (no tenant isolation).
    NoTenantIsolation,
    /// Dispatcher: authorizes everything (ignores the policy).
    AllowAll,
    /// Fuzzer-planted bug (not in [`Misbehaviour::ALL`]): the agent's stanza router panics on
    /// an op carrying the `i4` value -2147483648 (ping still answered, ops never again).
    CrashOnOddInput,
    /// Fuzzer-planted bug: every `/vertebra/test/stream` op with `count` >= 32 leaks 128 KiB
    /// per chunk (visible as resident-memory growth of the agent process).
    LeakOnLongStream,
    /// Fuzzer-planted bug: duplicate suppression only remembers each sender's latest op IQ, so a
    /// retransmitted op arriving after another op (reordered) is executed again.
    ReexecuteReorderedDuplicate,
}

impl Misbehaviour {
    /// All mutants (for harness loops).
    pub const ALL: &'static [Misbehaviour] = &[
        Misbehaviour::SkipAck,
        Misbehaviour::WrongToken,
        Misbehaviour::DataAfterFinal,
        Misbehaviour::IgnoreDeadline,
        Misbehaviour::IgnoreCancel,
        Misbehaviour::ReexecuteDuplicate,
        Misbehaviour::IgnoreAuthorization,
        Misbehaviour::StaleLoad,
        Misbehaviour::WrongValueEncoding,
        Misbehaviour::LeakErrorDetail,
        Misbehaviour::WrongSeq,
        Misbehaviour::WrongDiscoverOrder,
        Misbehaviour::SlowDeathDetection,
        Misbehaviour::AcceptForeignAdvert,
        Misbehaviour::NoTenantIsolation,
        Misbehaviour::AllowAll,
    ];

    /// Kebab-case name (CLI `--misbehave NAME`, env `VERTEBRA_MISBEHAVE`).
    pub fn name(self) -> &'static str {
        match self {
            Misbehaviour::None => "none",
            Misbehaviour::SkipAck => "skip-ack",
            Misbehaviour::WrongToken => "wrong-token",
            Misbehaviour::DataAfterFinal => "data-after-final",
            Misbehaviour::IgnoreDeadline => "ignore-deadline",
            Misbehaviour::IgnoreCancel => "ignore-cancel",
            Misbehaviour::ReexecuteDuplicate => "reexecute-duplicate",
            Misbehaviour::IgnoreAuthorization => "ignore-authorization",
            Misbehaviour::StaleLoad => "stale-load",
            Misbehaviour::WrongValueEncoding => "wrong-value-encoding",
            Misbehaviour::LeakErrorDetail => "leak-error-detail",
            Misbehaviour::WrongSeq => "wrong-seq",
            Misbehaviour::WrongDiscoverOrder => "wrong-discover-order",
            Misbehaviour::SlowDeathDetection => "slow-death-detection",
            Misbehaviour::AcceptForeignAdvert => "accept-foreign-advert",
            Misbehaviour::NoTenantIsolation => "no-tenant-isolation",
            Misbehaviour::AllowAll => "allow-all",
            Misbehaviour::CrashOnOddInput => "crash-on-odd-input",
            Misbehaviour::LeakOnLongStream => "leak-on-long-stream",
            Misbehaviour::ReexecuteReorderedDuplicate => "reexecute-reordered-duplicate",
        }
    }

    /// Parse a kebab-case name.
    pub fn parse(s: &str) -> Option<Misbehaviour> {
        if s == "none" || s.is_empty() {
            return Some(Misbehaviour::None);
        }
        Self::ALL
            .iter()
            .chain(Self::PLANTED)
            .copied()
            .find(|m| m.name() == s)
    }

    /// Bugs planted for the protocol-aware fuzzer's own tests (`vertebra-conformance fuzz`);
    /// kept out of [`Misbehaviour::ALL`] because the conformance suite is not meant to find them.
    pub const PLANTED: &'static [Misbehaviour] = &[
        Misbehaviour::CrashOnOddInput,
        Misbehaviour::LeakOnLongStream,
        Misbehaviour::ReexecuteReorderedDuplicate,
    ];

    /// Apply a planted bug to an incoming Vertebra IQ payload. Returns `true` when duplicate
    /// suppression must be skipped for it. Panics for [`Misbehaviour::CrashOnOddInput`] on its
    /// trigger (deliberately: that is the planted crash).
    pub fn planted(self, from: &str, id: &str, payload: &minidom::Element) -> bool {
        if payload.name() != "op" {
            return false;
        }
        match self {
            Misbehaviour::CrashOnOddInput => {
                fn odd(e: &minidom::Element) -> bool {
                    (matches!(e.name(), "i4" | "int") && e.text().trim() == "-2147483648")
                        || e.children().any(odd)
                }
                if odd(payload) {
                    panic!("planted bug crash-on-odd-input: i4 -2147483648");
                }
                false
            }
            Misbehaviour::LeakOnLongStream => {
                if payload
                    .attr("type")
                    .is_some_and(|t| t.ends_with("/vertebra/test/stream"))
                {
                    let count = payload
                        .children()
                        .find(|c| c.attr("name") == Some("count"))
                        .and_then(|c| c.text().trim().parse::<i64>().ok())
                        .unwrap_or(0);
                    if count >= 32 {
                        for _ in 0..count.min(256) {
                            std::mem::forget(vec![0x5au8; 128 * 1024]);
                        }
                    }
                }
                false
            }
            Misbehaviour::ReexecuteReorderedDuplicate => {
                static LAST: std::sync::Mutex<Option<std::collections::HashMap<String, String>>> =
                    std::sync::Mutex::new(None);
                let mut g = LAST.lock().unwrap_or_else(|e| e.into_inner());
                let last = g
                    .get_or_insert_with(Default::default)
                    .insert(from.to_string(), id.to_string());
                last.as_deref() != Some(id)
            }
            _ => false,
        }
    }
}

/// Connection settings as in the spawn contract.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port`.
    pub server: String,
    /// Full JID to log in as.
    pub jid: FullJid,
    /// Password.
    pub password: String,
}

impl Endpoint {
    /// Connection options for this endpoint.
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions::new(
            self.server.clone(),
            Jid::from(self.jid.clone()),
            self.password.clone(),
        )
    }
}

/// Errors in configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A required setting is missing.
    #[error("missing setting {0}")]
    Missing(&'static str),
    /// A setting has a bad value.
    #[error("bad value for {name}: {detail}")]
    Bad {
        /// Setting.
        name: &'static str,
        /// Why.
        detail: String,
    },
}

/// Parse a full JID with a clear error.
pub fn parse_full_jid(name: &'static str, s: &str) -> Result<FullJid, ConfigError> {
    s.parse::<FullJid>().map_err(|e| ConfigError::Bad {
        name,
        detail: format!("{s:?} is not a full JID (user@domain/resource): {e}"),
    })
}

/// The spawn-contract environment (`VERTEBRA_SERVER`, `VERTEBRA_JID`, `VERTEBRA_PASSWORD`,
/// `VERTEBRA_DISPATCHER`, `VERTEBRA_TEST_PROFILE`, `VERTEBRA_LOAD_INTERVAL_MS`), read through
/// a lookup function so it is testable without touching the process environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpawnEnv {
    /// `VERTEBRA_SERVER`.
    pub server: Option<String>,
    /// `VERTEBRA_JID`.
    pub jid: Option<String>,
    /// `VERTEBRA_PASSWORD`.
    pub password: Option<String>,
    /// `VERTEBRA_DISPATCHER`.
    pub dispatcher: Option<String>,
    /// `VERTEBRA_TEST_PROFILE` is exactly `1` [VAP-TPF-020].
    pub test_profile: bool,
    /// `VERTEBRA_LOAD_INTERVAL_MS`.
    pub load_interval: Option<Duration>,
    /// `VERTEBRA_MISBEHAVE` (mutants only).
    pub misbehave: Option<String>,
}

impl SpawnEnv {
    /// Read from a lookup function (e.g. `|k| std::env::var(k).ok()`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<SpawnEnv, ConfigError> {
        let load_interval = match get("VERTEBRA_LOAD_INTERVAL_MS") {
            None => None,
            Some(s) => {
                let ms: u64 = s.trim().parse().map_err(|_| ConfigError::Bad {
                    name: "VERTEBRA_LOAD_INTERVAL_MS",
                    detail: format!("{s:?} is not a number of milliseconds"),
                })?;
                if !(100..=60_000).contains(&ms) {
                    return Err(ConfigError::Bad {
                        name: "VERTEBRA_LOAD_INTERVAL_MS",
                        detail: format!("{ms} is outside 100..=60000"),
                    });
                }
                Some(Duration::from_millis(ms))
            }
        };
        // [VAP-TPF-020] test mode if and only if the value is exactly `1`: no trimming, no
        // `true`/`yes` synonyms; an empty value or anything else requests nothing.
        let test_profile = get("VERTEBRA_TEST_PROFILE").as_deref() == Some("1");
        Ok(SpawnEnv {
            server: get("VERTEBRA_SERVER"),
            jid: get("VERTEBRA_JID"),
            password: get("VERTEBRA_PASSWORD"),
            dispatcher: get("VERTEBRA_DISPATCHER"),
            test_profile,
            load_interval,
            misbehave: get("VERTEBRA_MISBEHAVE"),
        })
    }

    /// Read the process environment.
    pub fn from_process() -> Result<SpawnEnv, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }
}

/// The `--tls MODE` / `--ca-file PATH` options of the binaries: `plain` (the default; the
/// spawn contract's loopback mode, [VAP-TPF-018]) or `starttls` (trusting the CA certificates
/// in `ca_file`, else the system bundle). The spawn contract defines no TLS variables, so
/// these are options only. A CA file with `plain` is refused (it would silently do nothing).
pub fn tls_from_options(
    mode: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<crate::conn::Tls, ConfigError> {
    match mode {
        "plain" if ca_file.is_some() => Err(ConfigError::Bad {
            name: "--ca-file",
            detail: "only meaningful with --tls starttls".into(),
        }),
        "plain" => Ok(crate::conn::Tls::Plain),
        "starttls" => crate::conn::Tls::starttls(ca_file).map_err(|e| ConfigError::Bad {
            name: "--ca-file",
            detail: e.to_string(),
        }),
        other => Err(ConfigError::Bad {
            name: "--tls",
            detail: format!("{other:?}: expected `plain` or `starttls`"),
        }),
    }
}

/// Default dispatcher JID for a domain: `dispatcher@<domain>/dispatcher`.
pub fn default_dispatcher(domain: &str) -> Result<FullJid, ConfigError> {
    parse_full_jid("dispatcher", &format!("dispatcher@{domain}/dispatcher"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn spawn_env_parses_and_validates() {
        let m: HashMap<&str, &str> = [
            ("VERTEBRA_SERVER", "127.0.0.1:5222"),
            ("VERTEBRA_JID", "a@x/r"),
            ("VERTEBRA_TEST_PROFILE", "1"),
            ("VERTEBRA_LOAD_INTERVAL_MS", "250"),
        ]
        .into();
        let e = SpawnEnv::from_lookup(|k| m.get(k).map(|s| s.to_string())).unwrap();
        assert!(e.test_profile);
        assert_eq!(e.load_interval, Some(Duration::from_millis(250)));
        assert_eq!(e.server.as_deref(), Some("127.0.0.1:5222"));
        let bad = SpawnEnv::from_lookup(|k| (k == "VERTEBRA_LOAD_INTERVAL_MS").then(|| "5".into()));
        assert!(bad.is_err());
        let off =
            SpawnEnv::from_lookup(|k| (k == "VERTEBRA_TEST_PROFILE").then(|| "0".into())).unwrap();
        assert!(!off.test_profile);
    }

    /// [VAP-TPF-020]: `VERTEBRA_TEST_PROFILE` requests test mode if and only if it is exactly `1`.
    #[test]
    fn test_profile_only_for_exactly_one() {
        let mode = |v: Option<&str>| {
            SpawnEnv::from_lookup(|k| {
                if k == "VERTEBRA_TEST_PROFILE" {
                    v.map(str::to_string)
                } else {
                    None
                }
            })
            .unwrap()
            .test_profile
        };
        assert!(mode(Some("1")));
        for v in [
            None,
            Some(""),
            Some("0"),
            Some("true"),
            Some("yes"),
            Some("TRUE"),
            Some(" 1"),
            Some("01"),
        ] {
            assert!(
                !mode(v),
                "VERTEBRA_TEST_PROFILE={v:?} must not request test mode"
            );
        }
    }

    #[test]
    fn tls_options_are_checked() {
        use crate::conn::Tls;
        assert!(matches!(tls_from_options("plain", None), Ok(Tls::Plain)));
        assert!(tls_from_options("tls", None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        assert!(tls_from_options("plain", Some(&ca)).is_err());
        // missing file, then a file without a certificate: clear errors, not a panic
        let e = tls_from_options("starttls", Some(&ca)).unwrap_err();
        assert!(e.to_string().contains("cannot read CA file"), "{e}");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let e = tls_from_options("starttls", Some(&ca)).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
    }

    #[test]
    fn misbehaviour_names_round_trip() {
        for m in Misbehaviour::ALL {
            assert_eq!(Misbehaviour::parse(m.name()), Some(*m));
        }
        assert_eq!(Misbehaviour::parse("nope"), None);
        assert!(parse_full_jid("jid", "nobody").is_err());
    }
}
