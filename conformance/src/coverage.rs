//! `coverage`: requirements × cases × mutants.

use crate::cli::CoverageArgs;
use crate::report::exit;

/// Requirements that cannot be checked by a black-box harness, with the reason.
pub fn not_automatable(_id: &str) -> Option<&'static str> {
    None
}

pub fn run(_a: CoverageArgs) -> i32 {
    eprintln!("coverage: not built yet");
    exit::ENVIRONMENT
}
