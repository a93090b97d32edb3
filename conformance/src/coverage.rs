//! `coverage`: requirements × cases × mutants.
//!
//! A MUST requirement is *covered* when a case declares a check for it. Some MUSTs cannot be
//! checked by a black-box harness at all; they are listed in [`NOT_AUTOMATABLE`] with the
//! reason. Automatable MUSTs without a check are gaps: `coverage` exits 1 while any exists.
//! `known-gaps.txt` records the gaps accepted for now (a ratchet: the crate's tests fail on
//! a new gap and on a listed gap that is now covered).

use crate::cases::CASES;
use crate::cli::CoverageArgs;
use crate::report::exit;
use crate::reqindex::ReqIndex;
use crate::verdict::Level;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

const REQUESTER_LOCAL: &str = "requester behaviour towards its own caller (local outcomes, delivery, dispatch modes): not observable on the wire when the implementation under test is an agent or a dispatcher; the test profile has no operation that makes an agent call out. Covered by the protocol crate's requester state-machine tests.";

/// MUST requirements a black-box harness cannot check, with the reason.
pub const NOT_AUTOMATABLE: &[(&str, &str)] = &[
    ("VAP-TRN-008", REQUESTER_LOCAL),
    ("VAP-TRN-017", "JIDs reach the implementation already normalized by its XMPP server; the harness cannot present un-normalized forms through a server."),
    ("VAP-TRN-028", "forbids an internal assumption (ordering across senders); no observable behaviour distinguishes it."),
    ("VAP-OPS-008", "needs two responders under test sharing a token T; the harness attaches one agent."),
    ("VAP-OPS-021", REQUESTER_LOCAL),
    ("VAP-OPS-022", REQUESTER_LOCAL),
    ("VAP-OPS-023", REQUESTER_LOCAL),
    ("VAP-OPS-027", REQUESTER_LOCAL),
    ("VAP-OPS-032", REQUESTER_LOCAL),
    ("VAP-OPS-037", REQUESTER_LOCAL),
    ("VAP-OPS-038", REQUESTER_LOCAL),
    ("VAP-OPS-044", REQUESTER_LOCAL),
    ("VAP-OPS-046", REQUESTER_LOCAL),
    ("VAP-OPS-058", REQUESTER_LOCAL),
    ("VAP-OPS-062", REQUESTER_LOCAL),
    ("VAP-OPS-063", REQUESTER_LOCAL),
    ("VAP-OPS-065", "a 300-second memory exceeds any case budget; duplicate handling is sampled within seconds by OPS-DUPLICATE-001."),
    ("VAP-OPS-077", REQUESTER_LOCAL),
    ("VAP-OPS-078", REQUESTER_LOCAL),
    ("VAP-OPS-079", REQUESTER_LOCAL),
    ("VAP-OPS-080", REQUESTER_LOCAL),
    ("VAP-VAL-039", "JSON mapping: not on the wire."),
    ("VAP-VAL-040", "JSON mapping: not on the wire."),
    ("VAP-DSC-023", "the spawn contract configures exactly one dispatcher (VERTEBRA_DISPATCHER)."),
    ("VAP-DSP-001", REQUESTER_LOCAL),
    ("VAP-DSP-002", REQUESTER_LOCAL),
    ("VAP-DSP-003", REQUESTER_LOCAL),
    ("VAP-DSP-004", REQUESTER_LOCAL),
    ("VAP-DSP-005", REQUESTER_LOCAL),
    ("VAP-DSP-006", REQUESTER_LOCAL),
    ("VAP-DSP-007", REQUESTER_LOCAL),
    ("VAP-DSP-008", REQUESTER_LOCAL),
    ("VAP-DSP-009", REQUESTER_LOCAL),
    ("VAP-DSP-010", REQUESTER_LOCAL),
    ("VAP-DSP-011", REQUESTER_LOCAL),
    ("VAP-DSP-012", REQUESTER_LOCAL),
    ("VAP-DSP-014", REQUESTER_LOCAL),
    ("VAP-DSP-015", REQUESTER_LOCAL),
    ("VAP-DSP-016", REQUESTER_LOCAL),
    ("VAP-DSP-018", REQUESTER_LOCAL),
    ("VAP-SEC-004", REQUESTER_LOCAL),
    ("VAP-SEC-010", "the spawn contract always gives the agent a dispatcher (VERTEBRA_DISPATCHER or the default JID)."),
    ("VAP-ERR-003", "a failure outside the handler cannot be provoked through the test profile."),
    ("VAP-ERR-004", REQUESTER_LOCAL),
    ("VAP-ERR-005", REQUESTER_LOCAL),
    ("VAP-ERR-006", REQUESTER_LOCAL),
    ("VAP-ERR-007", REQUESTER_LOCAL),
    ("VAP-VER-005", "binds future revisions of the specification, not implementations."),
    ("VAP-VER-006", "the legacy 60 000 ms deadline exceeds any case budget."),
    ("VAP-VER-013", REQUESTER_LOCAL),
    ("VAP-VER-014", REQUESTER_LOCAL),
    ("VAP-VER-015", REQUESTER_LOCAL),
    ("VAP-VER-016", REQUESTER_LOCAL),
    ("VAP-VER-018", REQUESTER_LOCAL),
];

/// Known gaps (automatable MUSTs without a check yet), one ID per line, `#` comments.
pub const KNOWN_GAPS: &str = include_str!("../known-gaps.txt");

pub fn not_automatable(id: &str) -> Option<&'static str> {
    NOT_AUTOMATABLE
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, r)| *r)
}

pub fn known_gaps() -> BTreeSet<String> {
    KNOWN_GAPS
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Requirement IDs some case declares a check for.
pub fn checked() -> BTreeSet<String> {
    CASES
        .iter()
        .flat_map(|c| c.requirements.iter().map(|r| r.to_string()))
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Coverage {
    pub musts: usize,
    pub musts_checked: usize,
    pub musts_not_automatable: usize,
    /// Automatable MUSTs with no check.
    pub gaps: Vec<String>,
    /// Requirement IDs cited by cases that are not in the spec.
    pub unknown_in_cases: Vec<String>,
    pub requirements: usize,
    pub checked: usize,
    /// Checked requirements no mutant was ever seen to fail (with `--mutants`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub never_failed_on_mutant: Option<Vec<String>>,
}

pub fn compute(idx: &ReqIndex, mutant_failures: Option<&BTreeSet<String>>) -> Coverage {
    let chk = checked();
    let musts: Vec<&String> = idx
        .reqs
        .values()
        .filter(|r| r.level == Level::Must)
        .map(|r| &r.id)
        .collect();
    let gaps: Vec<String> = musts
        .iter()
        .filter(|id| !chk.contains(id.as_str()) && not_automatable(id).is_none())
        .map(|s| s.to_string())
        .collect();
    Coverage {
        musts: musts.len(),
        musts_checked: musts.iter().filter(|id| chk.contains(id.as_str())).count(),
        musts_not_automatable: musts
            .iter()
            .filter(|id| not_automatable(id).is_some() && !chk.contains(id.as_str()))
            .count(),
        gaps,
        unknown_in_cases: chk
            .iter()
            .filter(|id| idx.get(id).is_none())
            .cloned()
            .collect(),
        requirements: idx.reqs.len(),
        checked: chk.iter().filter(|id| idx.get(id).is_some()).count(),
        never_failed_on_mutant: mutant_failures.map(|f| {
            chk.iter()
                .filter(|id| {
                    idx.get(id).is_some_and(|r| r.level == Level::Must) && !f.contains(*id)
                })
                .cloned()
                .collect()
        }),
    }
}

/// Requirements whose checks failed on some mutant, from `selftest --out DIR`'s selftest.json.
pub fn mutant_failures(path: &std::path::Path) -> Result<BTreeSet<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: crate::selftest::SelftestReport =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(v.mutants
        .iter()
        .flat_map(|m| m.failed_requirements.iter().cloned())
        .collect())
}

pub fn run(a: CoverageArgs) -> i32 {
    let idx = crate::reqsource::load();
    let mf = match &a.mutants {
        Some(p) => match mutant_failures(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("{e}");
                return exit::ENVIRONMENT;
            }
        },
        None => None,
    };
    let cov = compute(&idx, mf.as_ref());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&cov).unwrap_or_default());
    } else {
        println!(
            "requirements: {} ({} MUST); checked by some case: {} ({} MUST); not automatable MUST: {}",
            cov.requirements, cov.musts, cov.checked, cov.musts_checked, cov.musts_not_automatable
        );
        let known = known_gaps();
        let mut by_page: BTreeMap<String, Vec<&String>> = BTreeMap::new();
        for g in &cov.gaps {
            let page = idx.get(g).map(|r| r.page.clone()).unwrap_or_default();
            by_page.entry(page).or_default().push(g);
        }
        println!("automatable MUSTs with no check: {}", cov.gaps.len());
        for (page, ids) in by_page {
            for id in ids {
                let r = idx.get(id);
                println!(
                    "  {id}{} ({page}): {}",
                    if known.contains(id.as_str()) {
                        " [known gap]"
                    } else {
                        " [NEW]"
                    },
                    r.map(|r| r.text.as_str()).unwrap_or("")
                );
            }
        }
        if !cov.unknown_in_cases.is_empty() {
            println!(
                "requirement IDs cited by cases but not in spec/: {:?}",
                cov.unknown_in_cases
            );
        }
        if let Some(n) = &cov.never_failed_on_mutant {
            println!(
                "checked MUSTs never seen to fail on a mutant: {} of {}",
                n.len(),
                cov.musts_checked
            );
            for id in n {
                println!("  {id}");
            }
        }
    }
    if !cov.gaps.is_empty() || !cov.unknown_in_cases.is_empty() {
        exit::NON_CONFORMANT
    } else {
        exit::CONFORMANT
    }
}
