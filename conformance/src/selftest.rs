//! `selftest`: the suite against the reference and its mutants.

use crate::cli::SelftestArgs;
use crate::report::exit;

pub async fn run(_a: SelftestArgs) -> i32 {
    eprintln!("selftest: not built yet");
    exit::ENVIRONMENT
}
