//! `vertebra-dispatcher`: the reference dispatcher as a process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vertebra_reference_agent::config::{parse_full_jid, tls_from_options, Misbehaviour};
use vertebra_reference_agent::conn::ConnectOptions;
use vertebra_reference_agent::dispatcher::{Dispatcher, DispatcherConfig};
use vertebra_reference_agent::tokio_xmpp::parsers::jid::Jid;

const EXAMPLES: &str = "\
Examples:
  VERTEBRA_PASSWORD=secret vertebra-dispatcher --server 127.0.0.1:5222 \\
      --jid dispatcher@example.com/dispatcher --policy policy.json
  # two replicas on one account give the same answers:
  vertebra-dispatcher --jid dispatcher@example.com/d1 …   and   … --jid dispatcher@example.com/d2

Policy file (JSON, reloaded when it changes, default deny):
  {\"default\": \"deny\", \"ttl\": 60, \"rules\": [
     {\"from\": \"example.com\", \"operation\": \"/gem\", \"decision\": \"allow\"},
     {\"from\": \"ops@example.com\", \"operation\": \"/\",
      \"resources\": {\"cluster\": [\"/cluster/rd00\"]}, \"decision\": \"allow\"}]}";

#[derive(Parser, Debug)]
#[command(name = "vertebra-dispatcher", version, about = "The Vertebra reference dispatcher", after_help = EXAMPLES)]
struct Opts {
    /// Server host:port.
    #[arg(long, env = "VERTEBRA_SERVER")]
    server: String,
    /// Full JID to log in as (agents address dispatcher@<domain>/dispatcher by default).
    #[arg(long, env = "VERTEBRA_JID")]
    jid: String,
    /// Password.
    #[arg(long, env = "VERTEBRA_PASSWORD", hide_env_values = true)]
    password: String,
    /// Transport security: `plain` (loopback) or `starttls`.
    #[arg(long, value_name = "MODE", default_value = "plain")]
    tls: String,
    /// CA certificates (PEM) to trust with `--tls starttls` (default: the system bundle).
    #[arg(long, value_name = "PATH")]
    ca_file: Option<std::path::PathBuf>,
    /// Policy file (JSON). Without it every call is denied.
    #[arg(long, env = "VERTEBRA_POLICY")]
    policy: Option<PathBuf>,
    /// Deliberately break one rule (conformance mutants).
    #[arg(long, hide = true, env = "VERTEBRA_MISBEHAVE")]
    misbehave: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .try_init();
    let o = Opts::parse();
    let jid = match parse_full_jid("--jid", &o.jid) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("vertebra-dispatcher: {e}");
            return ExitCode::from(2);
        }
    };
    let mut cfg = DispatcherConfig::new(ConnectOptions::new(
        o.server.clone(),
        Jid::from(jid),
        o.password.clone(),
    ));
    match tls_from_options(&o.tls, o.ca_file.as_deref()) {
        Ok(tls) => cfg.connect.tls = tls,
        Err(e) => {
            eprintln!("vertebra-dispatcher: {e}");
            return ExitCode::from(2);
        }
    }
    cfg.policy_file = o.policy.clone();
    if o.policy.is_none() {
        log::warn!("no --policy: every call will be denied (default deny)");
    }
    if let Some(m) = &o.misbehave {
        match Misbehaviour::parse(m) {
            Some(m) => cfg.misbehave = m,
            None => {
                eprintln!("vertebra-dispatcher: unknown misbehaviour {m:?}");
                return ExitCode::from(2);
            }
        }
    }
    let d = match Dispatcher::start(cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vertebra-dispatcher: {e}");
            return ExitCode::from(2);
        }
    };
    match d.wait_online(Duration::from_secs(30)).await {
        Ok(j) => log::info!("dispatcher online as {j}"),
        Err(e) => {
            eprintln!("vertebra-dispatcher: {e}");
            return ExitCode::from(3);
        }
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    d.shutdown().await;
    ExitCode::SUCCESS
}
