//! Attaching the implementation under test: reference (embedded server + in-process
//! reference agent and dispatcher), a real server (already running implementation), or spawn
//! (the harness starts the implementation with the spawn-contract environment).

use crate::peer::{random_hex, AuthPolicy, Peer, NS_DISCO_INFO};
use crate::session::{DispatcherTarget, Injector, Mode, Session, TargetControl};
use crate::trace::Trace;
use clap::{Args, ValueEnum};
use jid::FullJid;
use minidom::Element;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vertebra_embedded_server::{EmbeddedServer, ServerConfig, ServerHandle};

/// What the spawned command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Agent,
    Dispatcher,
}

#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Test the reference agent and dispatcher on the embedded server (no setup needed).
    #[arg(long)]
    pub reference: bool,
    /// A real XMPP server (plaintext c2s on loopback, or a trusted network): HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// The harness's account on --server: the dispatcher full JID the agent was configured
    /// with (the harness plays that dispatcher). Requester identities use other resources of
    /// the same account.
    #[arg(long, value_name = "FULLJID")]
    pub jid: Option<String>,
    /// Password of --jid (or set VERTEBRA_HARNESS_PASSWORD; never logged).
    #[arg(long)]
    pub password: Option<String>,
    /// --server mode: a separate account (full JID) for the harness's authorized requester.
    /// Without it the requester is another resource of --jid, so the agent's load presence to
    /// the dispatcher's bare JID also reaches it and LOAD-REPORT-001 is UNTESTABLE.
    #[arg(long, value_name = "FULLJID")]
    pub requester_jid: Option<String>,
    /// Password of --requester-jid (or set VERTEBRA_REQUESTER_PASSWORD; never logged).
    #[arg(long)]
    pub requester_password: Option<String>,
    /// --server mode: a separate account (full JID) for the requester the harness's dispatcher
    /// denies. Without it the stranger shares --jid's bare JID (not a real stranger).
    #[arg(long, value_name = "FULLJID")]
    pub stranger_jid: Option<String>,
    /// Password of --stranger-jid (or set VERTEBRA_STRANGER_PASSWORD; never logged).
    #[arg(long)]
    pub stranger_password: Option<String>,
    /// Full JID of the agent under test (--server mode).
    #[arg(long, value_name = "FULLJID")]
    pub agent: Option<String>,
    /// Full JID of a dispatcher under test (--server mode).
    #[arg(long, value_name = "FULLJID")]
    pub dispatcher: Option<String>,
    /// In spawn mode: whether the command is an agent or a dispatcher.
    #[arg(long, value_enum, default_value = "agent")]
    pub role: Role,
    /// Seconds to wait for the implementation to answer its readiness ping (scaled).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub ready_timeout: f64,
    /// Load report interval passed as VERTEBRA_LOAD_INTERVAL_MS (spawn and reference modes).
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub load_interval_ms: u64,
    /// Reference mode only: run against a built-in mutant (one injected violation).
    #[arg(long, value_name = "NAME", hide = true)]
    pub mutant: Option<String>,
}

/// Something that must live as long as the session (server, processes, tasks).
pub type Guard = Box<dyn std::any::Any + Send + Sync>;

pub struct Attached {
    pub session: Arc<Session>,
    pub guards: Vec<Guard>,
    pub target: String,
    pub mode: Mode,
}

/// Disco#info of `to`: the feature vars and (category, type) identities.
pub async fn disco(
    peer: &Peer,
    to: &str,
    budget: Duration,
) -> Result<(Vec<String>, Vec<(String, String)>), String> {
    let since = peer.mark();
    let id = peer
        .send_iq(
            "get",
            to,
            Some(Element::builder("query", NS_DISCO_INFO).build()),
        )
        .await?;
    let r = peer
        .wait_response(since, &id, budget)
        .await
        .ok_or_else(|| format!("no disco#info answer from {to} within {budget:?}"))?;
    let q =
        r.el.get_child("query", NS_DISCO_INFO)
            .ok_or_else(|| format!("disco#info answer from {to} has no query: {}", r.xml()))?;
    let features = q
        .children()
        .filter(|c| c.is("feature", NS_DISCO_INFO))
        .filter_map(|c| c.attr("var").map(str::to_string))
        .collect();
    let ids = q
        .children()
        .filter(|c| c.is("identity", NS_DISCO_INFO))
        .map(|c| {
            (
                c.attr("category").unwrap_or("").to_string(),
                c.attr("type").unwrap_or("").to_string(),
            )
        })
        .collect();
    Ok((features, ids))
}

/// Ping `to` until it answers, at most `budget` (readiness, never a fixed sleep). A ping that
/// is bounced at once (not online yet) is retried after a short pause, so a slow-starting
/// implementation is not flooded.
pub async fn wait_ready(peer: &Peer, to: &str, budget: Duration) -> Result<(), String> {
    let end = tokio::time::Instant::now() + budget;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{to} did not answer XEP-0199 ping within {budget:?}"
            ));
        }
        let t0 = tokio::time::Instant::now();
        if peer.ping(to, left.min(Duration::from_millis(500))).await? {
            return Ok(());
        }
        // Bounced quickly: pace the next probe (bounded by the deadline).
        let spent = t0.elapsed();
        if spent < Duration::from_millis(50) {
            tokio::time::sleep_until((t0 + Duration::from_millis(50)).min(end)).await;
        }
    }
}

/// Embedded-server injection: any stanza with any `from`, observed through the server trace.
pub struct EmbeddedInjector {
    pub server: Arc<ServerHandle>,
}

impl Injector for EmbeddedInjector {
    fn inject(&self, _to: &str, xml: &str) -> Result<(), String> {
        let el: Element = xml
            .parse()
            .map_err(|e| format!("harness built bad XML: {e}"))?;
        self.inject_el(el)
    }

    fn inject_el(&self, el: Element) -> Result<(), String> {
        self.server
            .inject(el)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn mark(&self) -> u64 {
        self.server
            .trace()
            .snapshot()
            .last()
            .map(|e| e.seq + 1)
            .unwrap_or(0)
    }

    fn disconnect(&self, jid: &str) -> Result<(), String> {
        let j: FullJid = jid.parse().map_err(|e| format!("{jid}: {e}"))?;
        self.server.disconnect(&j).map_err(|e| e.to_string())
    }

    fn sent_by(&self, jid: &str, after: u64) -> Vec<Element> {
        let want: Option<jid::Jid> = jid.parse().ok();
        self.server
            .trace()
            .snapshot()
            .into_iter()
            .filter(|e| e.seq >= after && e.direction == vertebra_embedded_server::Direction::In)
            .filter(|e| e.jid.is_some() && e.jid == want)
            .filter_map(|e| parse_stanza(&e.xml))
            .collect()
    }
}

/// Parse a traced stanza (serialised inside a stream, so it may lack `xmlns`).
fn parse_stanza(xml: &str) -> Option<Element> {
    if let Ok(el) = xml.parse::<Element>() {
        return Some(el);
    }
    let wrapped = format!("<w xmlns='jabber:client'>{xml}</w>");
    wrapped.parse::<Element>().ok()?.children().next().cloned()
}

pub fn full(s: &str) -> Result<FullJid, String> {
    s.parse::<FullJid>()
        .map_err(|e| format!("{s:?} is not a full JID: {e}"))
}

/// The second domain the embedded server serves, and the harness account in it.
pub const FOREIGN_DOMAIN: &str = "elsewhere.example";
pub const FOREIGN_USER: &str = "outsider";

/// Start the embedded server with the harness accounts.
pub async fn start_embedded(domain: &str) -> Result<(Arc<ServerHandle>, String), String> {
    let pw = random_hex();
    let mut cfg = ServerConfig::new(domain);
    for u in [
        "dispatcher",
        "requester",
        "stranger",
        "agent",
        "agent1",
        "agent2",
        "agent3",
        "refdispatcher",
        crate::session::AUX_USER,
    ] {
        cfg = cfg.with_account(u, pw.clone());
    }
    // A second served domain: harness identities of another tenant (cross-domain cases).
    cfg = cfg
        .with_extra_domain(FOREIGN_DOMAIN)
        .with_account(format!("{FOREIGN_USER}@{FOREIGN_DOMAIN}"), pw.clone());
    cfg.trace_capacity = 20_000;
    let server = EmbeddedServer::start(cfg)
        .await
        .map_err(|e| format!("embedded server failed to start: {e}"))?;
    Ok((Arc::new(server), pw))
}

/// What to connect for a session.
pub struct Plan {
    pub mode: Mode,
    pub addr: String,
    pub domain: String,
    /// Password of every harness identity below.
    pub password: String,
    /// The dispatcher identity the harness plays for the agent under test.
    pub dsp_jid: Option<FullJid>,
    pub req_jid: FullJid,
    /// Password of `req_jid` when it is a separate account (default: `password`).
    pub req_password: Option<String>,
    pub stranger_jid: FullJid,
    /// Password of `stranger_jid` when it is a separate account (default: `password`).
    pub stranger_password: Option<String>,
    /// Agent under test.
    pub agent: Option<String>,
    /// Dispatcher under test and the harness identities acting as agents towards it.
    pub dispatcher: Option<(String, Vec<FullJid>)>,
    pub inject: Option<Arc<dyn Injector>>,
    pub control: Option<Arc<dyn TargetControl>>,
    pub load_interval_ms: Option<u64>,
    /// A harness identity in another served domain (embedded server), for dispatcher cases.
    pub foreign_jid: Option<FullJid>,
}

/// Log the harness identities in and build the session (before the implementation is ready).
pub async fn connect_session(plan: Plan, trace: &Trace) -> Result<Session, String> {
    let login = Duration::from_secs(10);
    let addr = plan.addr.as_str();
    let pw = plan.password.as_str();
    let req_pw = plan
        .req_password
        .clone()
        .unwrap_or_else(|| plan.password.clone());
    let stranger_pw = plan.stranger_password.as_deref().unwrap_or(pw);
    let req = Peer::connect(
        "requester",
        addr,
        plan.req_jid,
        &req_pw,
        trace.clone(),
        login,
    )
    .await?;
    let stranger = Peer::connect(
        "stranger",
        addr,
        plan.stranger_jid,
        stranger_pw,
        trace.clone(),
        login,
    )
    .await?;
    let dsp = match plan.dsp_jid {
        Some(j) => {
            let d = Peer::connect("dispatcher", addr, j, pw, trace.clone(), login).await?;
            let req_s = req.jid.to_string();
            d.behaviour(|b| {
                b.dispatcher = true;
                b.auth.insert(req_s, AuthPolicy::Allow);
                b.default_auth = AuthPolicy::Deny;
            });
            Some(d)
        }
        None => None,
    };
    let dsp_trace = Trace::new();
    let dispatcher = match plan.dispatcher {
        Some((jid, agent_jids)) => {
            let requester = match format!(
                "{}/dispatcher-cases-{}",
                req.jid.to_bare(),
                &random_hex()[..6]
            )
            .parse::<FullJid>()
            {
                Ok(j) => Some(
                    Peer::connect("requester", addr, j, &req_pw, dsp_trace.clone(), login).await?,
                ),
                Err(_) => None,
            };
            let trace = &dsp_trace;
            let mut agents = Vec::new();
            for (i, j) in agent_jids.into_iter().enumerate() {
                agents.push(
                    Peer::connect(
                        &format!("agent{}", i + 1),
                        addr,
                        j,
                        pw,
                        trace.clone(),
                        login,
                    )
                    .await?,
                );
            }
            let foreign = match plan.foreign_jid {
                Some(j) => {
                    Some(Peer::connect("outsider", addr, j, pw, dsp_trace.clone(), login).await?)
                }
                None => None,
            };
            Some(DispatcherTarget {
                jid,
                requester,
                agents,
                foreign,
            })
        }
        None => None,
    };
    let req_bare = req.jid.to_bare().to_string();
    Ok(Session {
        req_bare,
        dsp_trace,
        mode: plan.mode,
        domain: plan.domain,
        agent: plan.agent,
        dsp,
        req,
        stranger,
        dispatcher,
        inject: plan.inject,
        control: plan.control,
        features: Mutex::new(Vec::new()),
        dispatcher_features: Mutex::new(Vec::new()),
        load_interval_ms: plan.load_interval_ms,
        addr: plan.addr.clone(),
        password: plan.password.clone(),
        req_password: req_pw,
        reference_policy: plan.mode == Mode::Reference,
    })
}

/// After the implementation is ready: read its disco features into the session.
pub async fn read_features(session: &Session, budget: Duration) -> Result<(), String> {
    if let Some(agent) = &session.agent {
        let (f, _) = disco(&session.req, agent, budget).await?;
        *session.features.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }
    if let Some(d) = &session.dispatcher {
        let (f, _) = disco(&session.req, &d.jid, budget).await?;
        *session
            .dispatcher_features
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = f;
    }
    Ok(())
}

/// Attach according to the arguments (reference, --server, or spawn with `command`).
pub async fn attach(
    args: &TargetArgs,
    command: &[String],
    scale: f64,
    trace: &Trace,
) -> Result<Attached, String> {
    let ready = Duration::from_secs_f64(args.ready_timeout * scale);
    if args.reference {
        if !command.is_empty() || args.server.is_some() {
            return Err("--reference cannot be combined with --server or a spawn command".into());
        }
        return crate::reference::attach_reference(args, scale, trace, None).await;
    }
    if !command.is_empty() {
        return attach_spawn(args, command, ready, trace).await;
    }
    if let Some(server) = &args.server {
        return attach_server(args, server, ready, trace).await;
    }
    Err("choose a target: --reference, --server HOST:PORT --jid J --password P --agent FULLJID, or -- CMD ARGS… (spawn)".into())
}

async fn attach_server(
    args: &TargetArgs,
    server: &str,
    ready: Duration,
    trace: &Trace,
) -> Result<Attached, String> {
    let jid = args
        .jid
        .as_deref()
        .ok_or("--server needs --jid (the harness's account: the dispatcher JID the agent uses)")?;
    let jid = full(jid)?;
    let password = args
        .password
        .clone()
        .or_else(|| std::env::var("VERTEBRA_HARNESS_PASSWORD").ok())
        .ok_or("--server needs --password or VERTEBRA_HARNESS_PASSWORD")?;
    if args.agent.is_none() && args.dispatcher.is_none() {
        return Err("--server needs --agent FULLJID and/or --dispatcher FULLJID".into());
    }
    let bare = jid.to_bare();
    let run = &random_hex()[..8];
    let res = |r: &str| full(&format!("{bare}/{r}-{run}"));
    let (req_jid, req_password) = separate_account(
        "requester",
        args.requester_jid.as_deref(),
        args.requester_password.as_deref(),
        "VERTEBRA_REQUESTER_PASSWORD",
        run,
    )?;
    let (stranger_jid, stranger_password) = separate_account(
        "stranger",
        args.stranger_jid.as_deref(),
        args.stranger_password.as_deref(),
        "VERTEBRA_STRANGER_PASSWORD",
        run,
    )?;
    let req_jid = match req_jid {
        Some(j) => j,
        None => {
            eprintln!(
                "warning: no --requester-jid: the requester is a resource of {bare}, the \
                 dispatcher's own account, so the agent's load presence to {bare} reaches it \
                 too (RFC 6121); LOAD-REPORT-001 will be UNTESTABLE. Pass a separate account \
                 with --requester-jid/--requester-password."
            );
            res("requester")?
        }
    };
    let stranger_jid = match stranger_jid {
        Some(j) => j,
        None => {
            eprintln!(
                "warning: no --stranger-jid: the stranger is a resource of {bare}, the \
                 dispatcher's own account, not a real stranger for authorization. Pass a \
                 separate account with --stranger-jid/--stranger-password."
            );
            res("stranger")?
        }
    };
    for (what, j) in [("requester", &req_jid), ("stranger", &stranger_jid)] {
        if args.agent.is_some() && j.to_bare() == bare && j.resource() == jid.resource() {
            return Err(format!(
                "--{what}-jid must not be the dispatcher identity --jid"
            ));
        }
    }
    let plan = Plan {
        mode: Mode::Server,
        addr: server.to_string(),
        domain: jid.domain().to_string(),
        password,
        dsp_jid: args.agent.as_ref().map(|_| jid.clone()),
        req_jid,
        req_password,
        stranger_jid,
        stranger_password,
        agent: args.agent.clone(),
        dispatcher: match &args.dispatcher {
            Some(d) => Some((
                d.clone(),
                vec![res("agent1")?, res("agent2")?, res("agent3")?],
            )),
            None => None,
        },
        inject: None,
        control: None,
        load_interval_ms: None,
        foreign_jid: None,
    };
    let session = connect_session(plan, trace).await?;
    if let Some(a) = &session.agent {
        wait_ready(&session.req, a, ready).await?;
    }
    if let Some(d) = &session.dispatcher {
        wait_ready(&session.req, &d.jid, ready).await?;
    }
    read_features(&session, ready).await?;
    let target = [args.agent.clone(), args.dispatcher.clone()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" + ");
    Ok(Attached {
        session: Arc::new(session),
        guards: Vec::new(),
        target,
        mode: Mode::Server,
    })
}

/// A separate harness account given on the command line: its full JID (a fresh resource is
/// added to a bare JID) and password (flag, else `env`). `None` when no JID was given.
fn separate_account(
    what: &str,
    jid: Option<&str>,
    password: Option<&str>,
    env: &str,
    run: &str,
) -> Result<(Option<FullJid>, Option<String>), String> {
    let Some(j) = jid else {
        if password.is_some() {
            return Err(format!("--{what}-password needs --{what}-jid"));
        }
        return Ok((None, None));
    };
    let j = match j.parse::<FullJid>() {
        Ok(f) => f,
        Err(_) => {
            let b = j
                .parse::<jid::BareJid>()
                .map_err(|e| format!("--{what}-jid {j:?} is not a JID: {e}"))?;
            full(&format!("{b}/{what}-{run}"))?
        }
    };
    let pw = password
        .map(str::to_string)
        .or_else(|| std::env::var(env).ok())
        .ok_or_else(|| format!("--{what}-jid needs --{what}-password or {env}"))?;
    Ok((Some(j), Some(pw)))
}

async fn attach_spawn(
    args: &TargetArgs,
    command: &[String],
    ready: Duration,
    trace: &Trace,
) -> Result<Attached, String> {
    if args.server.is_some() {
        return Err("spawn mode runs the implementation on the embedded server; --server is not supported with a command yet".into());
    }
    let domain = "localhost";
    let (server, pw) = start_embedded(domain).await?;
    let addr = server.addr().to_string();
    let dsp_jid = full(&format!("dispatcher@{domain}/dispatcher"))?;
    let (impl_jid, env_dispatcher) = match args.role {
        Role::Agent => (full(&format!("agent@{domain}/agent"))?, dsp_jid.to_string()),
        Role::Dispatcher => (
            full(&format!("refdispatcher@{domain}/dispatcher"))?,
            String::new(),
        ),
    };
    let mut env = vec![
        ("VERTEBRA_SERVER".to_string(), addr.clone()),
        ("VERTEBRA_JID".to_string(), impl_jid.to_string()),
        ("VERTEBRA_PASSWORD".to_string(), pw.clone()),
        ("VERTEBRA_TEST_PROFILE".to_string(), "1".to_string()),
        (
            "VERTEBRA_LOAD_INTERVAL_MS".to_string(),
            args.load_interval_ms.to_string(),
        ),
    ];
    if !env_dispatcher.is_empty() {
        env.push(("VERTEBRA_DISPATCHER".to_string(), env_dispatcher));
    }
    let mut control =
        crate::spawn::SpawnControl::new(command.to_vec(), env, impl_jid.to_string(), ready);
    if args.role == Role::Agent {
        control = control.with_aux(format!("{}@{domain}/agent", crate::session::AUX_USER));
    }
    let control = Arc::new(control);
    let inject: Arc<dyn Injector> = Arc::new(EmbeddedInjector {
        server: server.clone(),
    });
    let plan = Plan {
        mode: Mode::Spawn,
        addr: addr.clone(),
        domain: domain.to_string(),
        password: pw,
        dsp_jid: (args.role == Role::Agent).then(|| dsp_jid.clone()),
        req_jid: full(&format!("requester@{domain}/harness"))?,
        req_password: None,
        stranger_jid: full(&format!("stranger@{domain}/harness"))?,
        stranger_password: None,
        agent: (args.role == Role::Agent).then(|| impl_jid.to_string()),
        dispatcher: match args.role {
            Role::Dispatcher => Some((
                impl_jid.to_string(),
                vec![
                    full(&format!("agent1@{domain}/agent"))?,
                    full(&format!("agent2@{domain}/agent"))?,
                    full(&format!("agent3@{domain}/agent"))?,
                ],
            )),
            Role::Agent => None,
        },
        inject: Some(inject),
        control: Some(control.clone()),
        load_interval_ms: Some(args.load_interval_ms),
        foreign_jid: Some(full(&format!("{FOREIGN_USER}@{FOREIGN_DOMAIN}/agent"))?),
    };
    // The harness (dispatcher role) must be online before the agent starts.
    let session = connect_session(plan, trace).await?;
    *control.pinger.lock().unwrap_or_else(|e| e.into_inner()) = Some(session.req.clone());
    control.start().await?;
    if let Err(e) = wait_ready(&session.req, &impl_jid.to_string(), ready).await {
        use crate::session::TargetControl;
        let (_, err) = control.take_output();
        let status = control
            .exited()
            .map(|s| format!(" (process exited: {s})"))
            .unwrap_or_default();
        return Err(format!("{e}{status}; stderr: {}", err.trim()));
    }
    read_features(&session, ready).await?;
    let guards: Vec<Guard> = vec![Box::new(server), Box::new(control)];
    Ok(Attached {
        session: Arc::new(session),
        guards,
        target: command.join(" "),
        mode: Mode::Spawn,
    })
}

/// Close the harness identities and drop the guards (server, processes).
pub async fn detach(a: Attached) {
    let s = &a.session;
    s.req.close().await;
    s.stranger.close().await;
    if let Some(d) = &s.dsp {
        d.close().await;
    }
    if let Some(d) = &s.dispatcher {
        for p in &d.agents {
            p.close().await;
        }
    }
    drop(a.guards);
}
