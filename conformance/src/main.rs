//! `vertebra-conformance` command line.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vertebra_conformance::report::exit;
use vertebra_conformance::{attach, cli};

const EXIT_HELP: &str = "\
Exit codes (every subcommand):
  0  conformant: every gating check passed (after the baseline)
  1  non-conformant: a MUST was broken (FAIL, or UNTESTABLE) and is not excused by the
     baseline, or a baseline entry is stale (listed as failing but now passes)
  2  environment or harness error: ERROR verdicts (server unreachable, agent never ready,
     harness fault — never blamed on the implementation), bad arguments or files
  3  nothing executed: every selected case was skipped or unsupported (a run that tested
     nothing does not pass)
A FAIL takes precedence over ERROR (a confirmed violation is reported as 1 even when the
environment also had trouble).

Verdicts: PASS, NON-STRICT (a SHOULD missed), FAIL (a MUST broken), INFO, UNSUPPORTED
(feature not claimed), UNTESTABLE, ERROR, SKIPPED.";

#[derive(Parser)]
#[command(
    name = "vertebra-conformance",
    version,
    about = "Conformance harness for the Vertebra Agent Protocol: tells an agent or dispatcher which requirement it breaks",
    after_help = EXIT_HELP
)]
struct Opts {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the suite against an implementation.
    #[command(after_help = EXIT_HELP)]
    Run(RunArgs),
    /// List the cases (ID, area, requirements, title).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Explain a requirement ID or a case ID: the spec sentence, the cases that check it, how to fix.
    Explain { id: String },
    /// Run the suite against the reference agent and dispatcher, and against each built-in mutant.
    #[command(after_help = EXIT_HELP)]
    Selftest(cli::SelftestArgs),
    /// Requirement coverage: MUSTs with no check, checks never seen to fail on a mutant.
    Coverage(cli::CoverageArgs),
    /// Protocol-aware fuzzing of an agent or dispatcher (exit 4 when something is found).
    Fuzz(vertebra_conformance::fuzz::FuzzArgs),
    /// Replay a trace against an implementation, or re-judge it offline.
    Replay(vertebra_conformance::fuzz::replay::ReplayArgs),
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: attach::TargetArgs,
    /// Directory for the reports (results.jsonl, junit.xml, report.html).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only cases matching PATTERN (case ID, area or requirement ID; `*` wildcard). Repeatable.
    #[arg(long = "only", value_name = "PATTERN")]
    only: Vec<String>,
    /// Skip cases matching PATTERN. Repeatable.
    #[arg(long = "skip", value_name = "PATTERN")]
    skip: Vec<String>,
    /// Multiply every time budget by F (slow machines, debuggers).
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    time_scale: f64,
    /// Baseline file of known failures (JSON; see README).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Only print the closing summary lines.
    #[arg(long, short)]
    quiet: bool,
    /// Run every case one after the other (default: independent groups run concurrently).
    #[arg(long)]
    sequential: bool,
    /// Command that starts the implementation (spawn mode), after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off"))
        .try_init();
    let opts = Opts::parse();
    let code = match opts.cmd {
        Cmd::Run(a) => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::from(exit::ENVIRONMENT as u8);
                }
            };
            rt.block_on(cli::run(cli::RunRequest {
                target: a.target,
                out: a.out,
                only: a.only,
                skip: a.skip,
                time_scale: a.time_scale,
                baseline: a.baseline,
                quiet: a.quiet,
                sequential: a.sequential,
                command: a.command,
                argv: std::env::args().collect(),
            }))
        }
        Cmd::List { json } => cli::list(json),
        Cmd::Explain { id } => cli::explain(&id),
        Cmd::Selftest(a) => cli::selftest(a),
        Cmd::Coverage(a) => cli::coverage(a),
        Cmd::Fuzz(a) => vertebra_conformance::fuzz::cli_fuzz(a),
        Cmd::Replay(a) => vertebra_conformance::fuzz::replay::cli_replay(a),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
