//! `vertebra`: call operations on the bus, discover agents, list who is up, or run a demo.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use vertebra_protocol::{Args, ResourceScope, Value};
use vertebra_reference_agent::cli::{exit, exit_code_for, parse_args, show_chunk};
use vertebra_reference_agent::config::{default_dispatcher, parse_full_jid, tls_from_options};
use vertebra_reference_agent::conn::ConnectOptions;
use vertebra_reference_agent::node::{CallError, Node, NodeConfig};
use vertebra_reference_agent::requester::{call_all, call_direct, call_single, discover, scope_of};
use vertebra_reference_agent::tokio_xmpp::parsers::jid::Jid;

const EXAMPLES: &str = "\
Examples:
  # a bus in this process (embedded server + dispatcher + 3 agents), then a few calls
  vertebra demo
  # the same, kept running for other terminals (prints the settings to export)
  vertebra demo --serve

  # call the least-loaded agent that can list gems on cluster rd00
  vertebra /gem/list cluster=res:/cluster/rd00 count=i4:3 --single
  # call every capable agent and gather the results
  vertebra /gem/list cluster=res:/cluster/rd00 --all --json
  # call one agent directly
  vertebra /vertebra/test/echo x=i4:1 --jid agent1@localhost/agent
  # who can do it, least loaded first; who is up (advertised agents only)
  vertebra discover /gem/list cluster=res:/cluster/rd00
  vertebra agents

Connection settings come from options or the environment:
  VERTEBRA_SERVER=127.0.0.1:5222 VERTEBRA_JID=me@example.com/cli VERTEBRA_PASSWORD=…
  VERTEBRA_DISPATCHER (default dispatcher@<domain>/dispatcher)

Argument syntax: name=type:value with type i4|double|boolean|string|base64|res|nil|json
(name=value alone is a string).

Exit codes: 0 ok, 1 call failed (nack/error), 2 usage, 3 cannot connect,
            4 no capable agent / dispatcher unavailable, 5 deadline expired / responder gone.";

#[derive(Parser, Debug)]
#[command(
    name = "vertebra",
    version,
    about = "Call operations on a Vertebra bus, discover agents, run a demo",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    call: CallArgs,
}

#[derive(ClapArgs, Debug, Clone)]
struct ConnArgs {
    /// Server `host:port` (plain c2s on loopback, or see `--tls starttls`).
    #[arg(long, env = "VERTEBRA_SERVER", global = true)]
    server: Option<String>,
    /// Log in as this full JID.
    #[arg(long = "as", env = "VERTEBRA_JID", global = true, value_name = "JID")]
    login: Option<String>,
    /// Password (prefer the environment variable).
    #[arg(long, env = "VERTEBRA_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    /// Transport security: `plain` (loopback) or `starttls`.
    #[arg(long, value_name = "MODE", default_value = "plain", global = true)]
    tls: String,
    /// CA certificates (PEM) to trust with `--tls starttls` (default: the system bundle).
    #[arg(long, value_name = "PATH", global = true)]
    ca_file: Option<std::path::PathBuf>,
    /// Dispatcher full JID.
    #[arg(long, env = "VERTEBRA_DISPATCHER", global = true)]
    dispatcher: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Overall deadline in seconds.
    #[arg(long, default_value_t = 30.0, global = true)]
    timeout: f64,
}

#[derive(ClapArgs, Debug, Clone)]
struct CallArgs {
    /// Operation path, e.g. /gem/list.
    #[arg(value_name = "OPERATION")]
    operation: Option<String>,
    /// Arguments name=type:value.
    #[arg(value_name = "ARG")]
    args: Vec<String>,
    /// Call the least-loaded capable agent (default).
    #[arg(long, conflicts_with_all = ["all", "jid"])]
    single: bool,
    /// Call every capable agent and gather.
    #[arg(long, conflicts_with = "jid")]
    all: bool,
    /// Call this agent directly.
    #[arg(long, value_name = "JID")]
    jid: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Who can do OPERATION (least loaded first).
    Discover {
        /// Operation path.
        operation: String,
        /// Scoping resources name=res:/path.
        args: Vec<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Every agent the dispatcher lists, with its load (least loaded first).
    ///
    /// Limitation: this is a discover on `/`, so it shows only agents with a live
    /// advertisement. An agent that is connected but has not advertised (or whose
    /// advertisement expired) is not listed: neither the XMPP server nor the dispatcher
    /// protocol offers a way to list every connected agent.
    Agents,
    /// Start an embedded server, a dispatcher and three agents in this process.
    Demo {
        /// Keep running (Ctrl-C to stop) and print the settings for other terminals.
        #[arg(long)]
        serve: bool,
        /// Number of agents.
        #[arg(long, default_value_t = 3)]
        agents: usize,
    },
}

fn fail(code: i32, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("vertebra: {msg}");
    ExitCode::from(code as u8)
}

async fn connect(c: &ConnArgs) -> Result<(Node, Jid), ExitCode> {
    let server = c.server.clone().ok_or_else(|| {
        fail(exit::USAGE, "no server: pass --server HOST:PORT or set VERTEBRA_SERVER (try `vertebra demo --serve`)")
    })?;
    let login = c.login.as_deref().ok_or_else(|| {
        fail(
            exit::USAGE,
            "no identity: pass --as JID or set VERTEBRA_JID",
        )
    })?;
    let jid = parse_full_jid("--as", login).map_err(|e| fail(exit::USAGE, e))?;
    let pw = c
        .password
        .clone()
        .ok_or_else(|| fail(exit::USAGE, "no password: set VERTEBRA_PASSWORD"))?;
    let dispatcher = match &c.dispatcher {
        Some(d) => parse_full_jid("--dispatcher", d).map_err(|e| fail(exit::USAGE, e))?,
        None => default_dispatcher(jid.domain().as_str()).map_err(|e| fail(exit::USAGE, e))?,
    };
    let tls = tls_from_options(&c.tls, c.ca_file.as_deref()).map_err(|e| fail(exit::USAGE, e))?;
    let mut cfg =
        NodeConfig::new(ConnectOptions::new(server.clone(), Jid::from(jid), pw).with_tls(tls));
    cfg.serve = false;
    let node = Node::start(cfg);
    if let Err(e) = node.wait_online(Duration::from_secs(10)).await {
        return Err(fail(
            exit::CONNECT,
            format!("cannot connect to {server}: {e}"),
        ));
    }
    Ok((node, Jid::from(dispatcher)))
}

fn print_json(v: serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

fn chunks_json(chunks: &[Args]) -> serde_json::Value {
    serde_json::to_value(chunks).unwrap_or(serde_json::Value::Null)
}

fn err_json(e: &CallError) -> serde_json::Value {
    serde_json::json!({"condition": e.condition, "kind": e.kind, "reason": e.reason})
}

async fn run_call(c: &ConnArgs, call: &CallArgs) -> ExitCode {
    let Some(op) = call.operation.as_deref() else {
        return fail(exit::USAGE, "no operation given (see --help)");
    };
    if !op.starts_with('/') {
        return fail(
            exit::USAGE,
            format!("{op:?} is not an operation path (they start with '/')"),
        );
    }
    let args = match parse_args(&call.args) {
        Ok(a) => a,
        Err(e) => return fail(exit::USAGE, e),
    };
    let (node, d) = match connect(c).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let timeout = Duration::from_secs_f64(c.timeout.max(0.001));
    let code = if call.all {
        match call_all(&node, &d, op, args, timeout, None).await {
            Ok(g) => {
                let failed = g.failures().count();
                if c.json {
                    let list: Vec<serde_json::Value> = g
                        .outcomes
                        .iter()
                        .map(|o| match &o.result {
                            Ok(ch) => {
                                serde_json::json!({"jid": o.jid.to_string(), "ok": chunks_json(ch)})
                            }
                            Err(e) => {
                                serde_json::json!({"jid": o.jid.to_string(), "error": err_json(e)})
                            }
                        })
                        .collect();
                    print_json(serde_json::Value::Array(list));
                } else {
                    for o in &g.outcomes {
                        match &o.result {
                            Ok(ch) => {
                                println!("{}: ok ({} chunk(s))", o.jid, ch.len());
                                for chunk in ch {
                                    println!("{}", show_chunk(chunk));
                                }
                            }
                            Err(e) => println!("{}: FAILED {e}", o.jid),
                        }
                    }
                }
                if failed > 0 {
                    exit::CALL_FAILED
                } else {
                    exit::OK
                }
            }
            Err(e) => {
                eprintln!("vertebra: {op}: {e}");
                exit_code_for(&e)
            }
        }
    } else {
        let r = match &call.jid {
            Some(j) => match j.parse::<Jid>() {
                Ok(j) => call_direct(&node, j.clone(), op, args, timeout)
                    .await
                    .map(|c| (j, c)),
                Err(e) => return fail(exit::USAGE, format!("--jid {j:?}: {e}")),
            },
            None => call_single(&node, &d, op, args, timeout).await,
        };
        match r {
            Ok((who, chunks)) => {
                if c.json {
                    print_json(
                        serde_json::json!({"jid": who.to_string(), "ok": chunks_json(&chunks)}),
                    );
                } else {
                    println!("{who}: ok ({} chunk(s))", chunks.len());
                    for chunk in &chunks {
                        println!("{}", show_chunk(chunk));
                    }
                }
                exit::OK
            }
            Err(e) => {
                if c.json {
                    print_json(serde_json::json!({"error": err_json(&e)}));
                }
                eprintln!("vertebra: {op}: {e}");
                exit_code_for(&e)
            }
        }
    };
    node.conn().close(Duration::from_secs(1)).await;
    ExitCode::from(code as u8)
}

async fn run_discover(c: &ConnArgs, op: &str, args: &[String], limit: Option<u32>) -> ExitCode {
    let scope = match parse_args(args) {
        Ok(a) => scope_of(&a),
        Err(e) => return fail(exit::USAGE, e),
    };
    list_agents(c, op, &scope, limit).await
}

async fn list_agents(
    c: &ConnArgs,
    op: &str,
    scope: &ResourceScope,
    limit: Option<u32>,
) -> ExitCode {
    let (node, d) = match connect(c).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let timeout = Duration::from_secs_f64(c.timeout.max(0.001));
    let code = match discover(&node, &d, op, scope, limit, timeout).await {
        Ok(list) => {
            if c.json {
                let v: Vec<serde_json::Value> = list
                    .iter()
                    .map(|(j, l)| serde_json::json!({"jid": j.to_string(), "load": l}))
                    .collect();
                print_json(serde_json::Value::Array(v));
            } else if list.is_empty() {
                println!("no agent");
            } else {
                println!("{:<50} load", "agent");
                for (j, l) in &list {
                    println!("{:<50} {l:.3}", j.to_string());
                }
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("vertebra: discover {op}: {e}");
            exit_code_for(&e)
        }
    };
    node.conn().close(Duration::from_secs(1)).await;
    ExitCode::from(code as u8)
}

async fn demo(serve: bool, n: usize) -> ExitCode {
    use vertebra_reference_agent::local::LocalBus;
    use vertebra_reference_agent::node::Call;
    let bus = match LocalBus::start(vertebra_reference_agent::policy::allow_all()).await {
        Ok(b) => b,
        Err(e) => return fail(exit::CONNECT, format!("demo: {e}")),
    };
    let mut agents = vec![];
    for i in 1..=n.max(1) {
        let b = match bus.agent(&format!("agent{i}")) {
            Ok(b) => b,
            Err(e) => return fail(exit::CONNECT, e),
        };
        let rd = if i % 2 == 1 {
            "/cluster/rd00"
        } else {
            "/cluster/rd01"
        };
        let name = format!("agent{i}");
        let a = b
            .resource("cluster", rd)
            .test_profile(true)
            .handle("/gem/list", move |call: Call| {
                let name = name.clone();
                async move {
                    let count = call.args.get_i4("count").unwrap_or(2).clamp(0, 1000);
                    for k in 0..count {
                        call.send(
                            Args::new().with("gem", Value::String(format!("gem-{k}").into())),
                        )
                        .await?;
                    }
                    Ok(Args::new().with("served_by", Value::String(name.into())))
                }
            })
            .start();
        if let Err(e) = a.wait_online(Duration::from_secs(10)).await {
            return fail(exit::CONNECT, e);
        }
        agents.push(a);
    }
    let req = match bus.requester("demo").await {
        Ok(r) => r,
        Err(e) => return fail(exit::CONNECT, e),
    };
    for a in &agents {
        if let Some(j) = a.node().jid() {
            bus.wait_listed(&req, "/gem/list", &j, Duration::from_secs(10))
                .await;
        }
    }
    if serve {
        let _ = bus.server.add_account("cli", "cli-pw");
        println!("Vertebra demo bus is up. In another terminal:");
        println!(
            "  export VERTEBRA_SERVER={} VERTEBRA_JID=cli@{}/cli VERTEBRA_PASSWORD=cli-pw",
            bus.addr, bus.domain
        );
        println!("  vertebra agents");
        println!("  vertebra /gem/list cluster=res:/cluster/rd00 count=i4:3 --single");
        println!("  vertebra /gem/list count=i4:1 --all");
        println!("Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
        return ExitCode::SUCCESS;
    }
    let d = bus.djid();
    println!("$ vertebra agents");
    if let Ok(list) = discover(
        &req,
        &d,
        "/",
        &ResourceScope::new(),
        None,
        Duration::from_secs(5),
    )
    .await
    {
        for (j, l) in list {
            println!("  {j}  load {l:.3}");
        }
    }
    let args =
        parse_args(&["cluster=res:/cluster/rd00".into(), "count=i4:3".into()]).unwrap_or_default();
    println!("$ vertebra /gem/list cluster=res:/cluster/rd00 count=i4:3 --single");
    match call_single(&req, &d, "/gem/list", args, Duration::from_secs(10)).await {
        Ok((who, chunks)) => {
            println!("{who}: ok");
            for c in chunks {
                println!("{}", show_chunk(&c));
            }
        }
        Err(e) => return fail(exit_code_for(&e), e),
    }
    println!("$ vertebra /gem/list count=i4:1 --all");
    match call_all(
        &req,
        &d,
        "/gem/list",
        parse_args(&["count=i4:1".into()]).unwrap_or_default(),
        Duration::from_secs(10),
        None,
    )
    .await
    {
        Ok(g) => {
            for o in g.outcomes {
                match o.result {
                    Ok(ch) => println!("  {}: ok, {} chunk(s)", o.jid, ch.len()),
                    Err(e) => println!("  {}: FAILED {e}", o.jid),
                }
            }
        }
        Err(e) => return fail(exit_code_for(&e), e),
    }
    for a in &agents {
        a.shutdown().await;
    }
    ExitCode::SUCCESS
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .target(env_logger::Target::Stderr)
        .try_init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    match &cli.cmd {
        Some(Cmd::Discover {
            operation,
            args,
            limit,
        }) => run_discover(&cli.conn, operation, args, *limit).await,
        Some(Cmd::Agents) => list_agents(&cli.conn, "/", &ResourceScope::new(), None).await,
        Some(Cmd::Demo { serve, agents }) => demo(*serve, *agents).await,
        None => run_call(&cli.conn, &cli.call).await,
    }
}
