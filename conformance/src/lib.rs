//! `vertebra-conformance`: the conformance harness of the Vertebra Agent Protocol.
//!
//! It tells an agent or dispatcher, in any language, which numbered requirement of `spec/` it
//! breaks. Cases (`cases/`) drive the implementation through the conformance test profile and
//! record checks, each naming the requirement it verifies; the runner aggregates checks into
//! verdicts, applies the baseline and writes the reports (`report/`).
pub mod attach;
pub mod baseline;
pub mod case;
pub mod cases;
pub mod cli;
pub mod coverage;
pub mod fuzz;
pub mod peer;
pub mod reference;
pub mod report;
pub mod reqindex;
pub mod reqsource;
pub mod requirements;
pub mod runner;
pub mod selftest;
pub mod session;
pub mod spawn;
pub mod trace;
pub mod verdict;
pub mod xmlh;
