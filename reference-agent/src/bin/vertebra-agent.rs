//! `vertebra-agent`: the reference agent as a process. Settings come from options or the
//! spawn-contract environment (`VERTEBRA_SERVER`, `VERTEBRA_JID`, `VERTEBRA_PASSWORD`,
//! `VERTEBRA_DISPATCHER`, `VERTEBRA_TEST_PROFILE=1`, `VERTEBRA_LOAD_INTERVAL_MS`).
//! Logs to stderr; exits 0 on SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vertebra_protocol::{Args, Value};
use vertebra_reference_agent::agent::AgentBuilder;
use vertebra_reference_agent::config::{tls_from_options, SpawnEnv};
use vertebra_reference_agent::node::{Call, HandlerError};

const EXAMPLES: &str = "\
Examples:
  # the conformance test profile, connection settings from the environment
  VERTEBRA_SERVER=127.0.0.1:5222 VERTEBRA_JID=agent1@localhost/agent VERTEBRA_PASSWORD=pw \\
    vertebra-agent --test-profile
  # a real server: STARTTLS, trusting the server's CA
  vertebra-agent --server xmpp.example.com:5222 --tls starttls --ca-file ca.pem \
    --jid agent1@example.com/agent --exec /tools/uptime=uptime
  # put a command-line program on the bus: `/tools/uptime` runs `uptime`
  vertebra-agent --exec /tools/uptime=uptime --resource host=/hosts/web1";

#[derive(Parser, Debug)]
#[command(name = "vertebra-agent", version, about = "The Vertebra reference agent", after_help = EXAMPLES)]
struct Opts {
    /// Server host:port.
    #[arg(long, env = "VERTEBRA_SERVER")]
    server: Option<String>,
    /// Full JID to log in as.
    #[arg(long, env = "VERTEBRA_JID")]
    jid: Option<String>,
    /// Password.
    #[arg(long, env = "VERTEBRA_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Transport security: `plain` (loopback) or `starttls`.
    #[arg(long, value_name = "MODE", default_value = "plain")]
    tls: String,
    /// CA certificates (PEM) to trust with `--tls starttls` (default: the system bundle).
    #[arg(long, value_name = "PATH")]
    ca_file: Option<std::path::PathBuf>,
    /// Dispatcher full JID (default dispatcher@<domain>/dispatcher).
    #[arg(long, env = "VERTEBRA_DISPATCHER")]
    dispatcher: Option<String>,
    /// Expose the conformance test profile (/vertebra/test/*). Also VERTEBRA_TEST_PROFILE=1.
    #[arg(long)]
    test_profile: bool,
    /// Load report interval in ms (100..=60000). Also VERTEBRA_LOAD_INTERVAL_MS.
    #[arg(long)]
    load_interval_ms: Option<u64>,
    /// Capacity (ops at once) used for the load value.
    #[arg(long, default_value_t = 8)]
    capacity: u32,
    /// Advertised resource key=/path (repeatable).
    #[arg(long, value_name = "KEY=PATH")]
    resource: Vec<String>,
    /// Serve an operation by running a command: /op/path=command (repeatable). Named string
    /// arguments become environment variables VERTEBRA_ARG_<NAME>; stdout is returned as
    /// `stdout`, the exit status as `status`.
    #[arg(long, value_name = "OP=COMMAND")]
    exec: Vec<String>,
    /// Deliberately break one rule (conformance mutants).
    #[arg(long, hide = true, env = "VERTEBRA_MISBEHAVE")]
    misbehave: Option<String>,
}

/// Run `command` through `sh -c`, arguments as environment variables.
pub async fn run_command(command: String, call: Call) -> Result<Args, HandlerError> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(&command).kill_on_drop(true);
    for (k, v) in call.args.iter() {
        let val = match v {
            Value::String(s) => s.to_string(),
            Value::I4(i) => i.to_string(),
            Value::Double(d) => d.to_string(),
            Value::Boolean(b) => (if *b { "1" } else { "0" }).to_string(),
            Value::Res(r) => r.as_str().to_string(),
            _ => continue,
        };
        let key: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        cmd.env(format!("VERTEBRA_ARG_{key}"), val);
    }
    let out = cmd
        .output()
        .await
        .map_err(|_| HandlerError::new("the command could not be started"))?;
    Ok(Args::new()
        .with(
            "stdout",
            Value::String(String::from_utf8_lossy(&out.stdout).into()),
        )
        .with("status", Value::I4(out.status.code().unwrap_or(-1))))
}

/// Stack of the runtime's worker threads. The XML parsers of the XMPP stack (rxml, xso,
/// minidom) recurse once per nesting level; a stanza nested a few thousand levels deep (the
/// server's size limit allows that) overflows the default 2 MiB and aborts the process
/// (fuzz finding `reference-deep-nesting`, [VAP-TRN-025]). Only touched pages are committed.
const WORKER_STACK: usize = 256 * 1024 * 1024;

fn main() -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK)
        .build();
    match rt {
        Ok(rt) => rt.block_on(agent_main()),
        Err(e) => {
            eprintln!("vertebra-agent: cannot start the runtime: {e}");
            ExitCode::from(2)
        }
    }
}

async fn agent_main() -> ExitCode {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .try_init();
    let o = Opts::parse();
    let mut env = match SpawnEnv::from_process() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("vertebra-agent: {e}");
            return ExitCode::from(2);
        }
    };
    env.server = o.server.clone().or(env.server);
    env.jid = o.jid.clone().or(env.jid);
    env.password = o.password.clone().or(env.password);
    env.dispatcher = o.dispatcher.clone().or(env.dispatcher);
    env.test_profile |= o.test_profile;
    if let Some(ms) = o.load_interval_ms {
        env.load_interval = Some(Duration::from_millis(ms.clamp(100, 60_000)));
    }
    env.misbehave = o.misbehave.clone().or(env.misbehave);
    let mut b = match AgentBuilder::from_env(&env) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("vertebra-agent: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    match tls_from_options(&o.tls, o.ca_file.as_deref()) {
        Ok(tls) => b.config_mut().connect.tls = tls,
        Err(e) => {
            eprintln!("vertebra-agent: {e} (see --help)");
            return ExitCode::from(2);
        }
    }
    b = b.capacity(o.capacity);
    for r in &o.resource {
        let Some((k, p)) = r.split_once('=') else {
            eprintln!("vertebra-agent: --resource {r:?}: expected KEY=/path");
            return ExitCode::from(2);
        };
        b = b.resource(k, p);
    }
    for e in &o.exec {
        let Some((op, command)) = e.split_once('=') else {
            eprintln!("vertebra-agent: --exec {e:?}: expected /op/path=command");
            return ExitCode::from(2);
        };
        let command = command.to_string();
        b = b.handle(op, move |call: Call| run_command(command.clone(), call));
    }
    let agent = b.start();
    match agent.wait_online(Duration::from_secs(30)).await {
        Ok(j) => log::info!("online as {j}"),
        Err(e) => {
            eprintln!("vertebra-agent: {e}");
            return ExitCode::from(3);
        }
    }
    wait_for_stop().await;
    log::info!("stopping");
    agent.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
