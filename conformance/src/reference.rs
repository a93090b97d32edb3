//! Reference mode: the reference agent and reference dispatcher (in-process) on the embedded
//! server (or on a real Prosody for `selftest --prosody`), optionally with one mutant.

use crate::attach::{
    connect_session, full, read_features, wait_ready, Attached, EmbeddedInjector, Guard, Plan,
    TargetArgs,
};
use crate::peer::random_hex;
use crate::session::{Injector, Mode, TargetControl};
use crate::trace::Trace;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vertebra_reference_agent::agent::{Agent, AgentBuilder};
use vertebra_reference_agent::config::{Misbehaviour, SpawnEnv};
use vertebra_reference_agent::conn::ConnectOptions;
use vertebra_reference_agent::dispatcher::{Dispatcher, DispatcherConfig};
use vertebra_reference_agent::node::Call;
use vertebra_reference_agent::policy::PolicyFile;

pub const ACCOUNTS: &[&str] = &[
    "dispatcher",
    "requester",
    "stranger",
    "agent",
    "agent1",
    "agent2",
    "agent3",
    "refdispatcher",
    crate::session::AUX_USER,
];

/// Harness-side mutants: the reference agent configured into one violation the agent code
/// cannot be asked for (its spawn-environment handling), each with the requirements it breaks.
pub const HARNESS_MUTANTS: &[(&str, &[&str])] = &[
    // The second instance enters test mode whatever VERTEBRA_TEST_PROFILE says.
    (
        "aux-test-mode-always",
        &["VAP-TPF-002", "VAP-SEC-027", "VAP-TPF-020"],
    ),
    // The second instance provides its resource at `/`, so out-of-scope ops are served.
    ("aux-scope-everything", &["VAP-RES-014"]),
];

pub fn harness_mutant(name: &str) -> Option<&'static [&'static str]> {
    HARNESS_MUTANTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
}

/// Advertisement TTL the reference agent uses in reference mode (short, so re-advertising
/// is observable within a case's budget).
pub const REFERENCE_ADVERTISE_TTL: u32 = 1;

/// Where the reference runs.
pub enum Server {
    Embedded,
    Prosody,
}

/// Control over the in-process reference agent (restart, kill).
pub struct ReferenceControl {
    make: Box<dyn Fn() -> Agent + Send + Sync>,
    agent: Mutex<Option<Agent>>,
    agent_jid: String,
    pinger: Mutex<Option<crate::peer::Peer>>,
    ready: Duration,
    /// Spawn-contract variables of the aux instance (without VERTEBRA_TEST_PROFILE).
    aux_env: Vec<(String, String)>,
    aux_jid: String,
    aux: Mutex<Option<Agent>>,
    /// VERTEBRA_TEST_PROFILE of the running aux instance and when it started.
    aux_variant: Mutex<Option<AuxVariant>>,
    harness_mutant: Option<&'static str>,
}

type AuxVariant = (Option<String>, std::time::Instant);

impl ReferenceControl {
    async fn start_aux_inner(
        &self,
        test_profile: Option<String>,
    ) -> Result<(String, std::time::Instant), String> {
        let current = self
            .aux_variant
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((v, at)) = current {
            if v == test_profile && self.aux_running().await {
                return Ok((self.aux_jid_str(), at));
            }
        }
        let started = std::time::Instant::now();
        self.stop_aux_inner().await;
        let test_profile_kept = test_profile.clone();
        let mut vars = self.aux_env.clone();
        if let Some(v) = test_profile {
            vars.push(("VERTEBRA_TEST_PROFILE".into(), v));
        }
        // The reference's own reading of the spawn contract (as its binary does).
        let env =
            SpawnEnv::from_lookup(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
                .map_err(|e| e.to_string())?;
        let mut b = AgentBuilder::from_env(&env)
            .map_err(|e| e.to_string())?
            .handle(crate::session::SCOPED_OP, |c: Call| async move {
                Ok(c.args.clone())
            });
        b = match self.harness_mutant {
            Some("aux-scope-everything") => b.resource(crate::session::SCOPED_KEY, "/"),
            _ => b.resource(crate::session::SCOPED_KEY, crate::session::SCOPED_PATH),
        };
        if self.harness_mutant == Some("aux-test-mode-always") {
            b = b.test_profile(true);
        }
        let a = b.start();
        *self.aux.lock().unwrap_or_else(|e| e.into_inner()) = Some(a.clone());
        a.wait_online(self.ready).await.map_err(|e| e.to_string())?;
        let p = self
            .pinger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(p) = p {
            wait_ready(&p, &self.aux_jid, self.ready).await?;
        }
        *self.aux_variant.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((test_profile_kept, started));
        Ok((self.aux_jid.clone(), started))
    }

    fn aux_jid_str(&self) -> String {
        self.aux_jid.clone()
    }

    async fn aux_running(&self) -> bool {
        self.aux.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    async fn stop_aux_inner(&self) {
        *self.aux_variant.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let old = self.aux.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(a) = old {
            a.shutdown().await;
        }
    }
}

impl TargetControl for ReferenceControl {
    fn start_aux(
        &self,
        test_profile: Option<String>,
    ) -> BoxFuture<'_, Result<(String, std::time::Instant), String>> {
        Box::pin(self.start_aux_inner(test_profile))
    }

    fn stop_aux(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_aux_inner())
    }

    fn aux_scoped(&self) -> bool {
        true
    }

    fn restart(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let old = self.agent.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(a) = old {
                a.shutdown().await;
            }
            let a = (self.make)();
            a.wait_online(self.ready).await.map_err(|e| e.to_string())?;
            *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = Some(a);
            let p = self
                .pinger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match p {
                Some(p) => wait_ready(&p, &self.agent_jid, self.ready).await,
                None => Ok(()),
            }
        })
    }

    fn kill(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let old = self.agent.lock().unwrap_or_else(|e| e.into_inner()).take();
            match old {
                Some(a) => {
                    a.shutdown().await;
                    Ok(())
                }
                None => Err("agent not running".into()),
            }
        })
    }
}

/// The policy the reference dispatcher runs with in reference mode: the harness requester may
/// call `/allowed`, nothing else is allowed (default deny), decisions are not cached.
pub fn reference_policy(domain: &str) -> Result<vertebra_protocol::dispatch::Policy, String> {
    let text = serde_json::json!({
        "ttl": 0,
        "rules": [{ "from": format!("requester@{domain}"), "operation": "/allowed", "decision": "allow" }]
    })
    .to_string();
    PolicyFile::from_json(&text, "reference policy")
        .and_then(|f| f.to_policy("reference policy"))
        .map_err(|e| e.to_string())
}

pub async fn attach_reference(
    args: &TargetArgs,
    scale: f64,
    trace: &Trace,
    server: Option<Server>,
) -> Result<Attached, String> {
    let harness_mutant = args
        .mutant
        .as_deref()
        .and_then(|m| HARNESS_MUTANTS.iter().find(|(n, _)| *n == m))
        .map(|(n, _)| *n);
    let mutant = match args.mutant.as_deref() {
        None => Misbehaviour::None,
        Some(_) if harness_mutant.is_some() => Misbehaviour::None,
        Some(m) => Misbehaviour::parse(m).ok_or_else(|| format!("unknown mutant {m:?}"))?,
    };
    let ready = Duration::from_secs_f64(args.ready_timeout * scale);
    let domain = "localhost";
    let mut guards: Vec<Guard> = Vec::new();
    let server_kind = server.unwrap_or(Server::Embedded);
    let (addr, pw, inject): (String, String, Option<Arc<dyn Injector>>) = match server_kind {
        Server::Embedded => {
            let (srv, pw) = crate::attach::start_embedded(domain).await?;
            let addr = srv.addr().to_string();
            let inj: Arc<dyn Injector> = Arc::new(EmbeddedInjector {
                server: srv.clone(),
            });
            guards.push(Box::new(srv));
            (addr, pw, Some(inj))
        }
        Server::Prosody => {
            let pw = random_hex();
            let accts: Vec<(&str, &str)> = ACCOUNTS.iter().map(|a| (*a, pw.as_str())).collect();
            let p = vertebra_embedded_server::prosody::Prosody::start(domain, &accts)
                .await
                .map_err(|e| format!("Prosody: {e}"))?;
            let addr = p.addr().to_string();
            guards.push(Box::new(p));
            (addr, pw, None)
        }
    };
    let agent_jid = full(&format!("agent@{domain}/agent"))?;
    let dsp_jid = full(&format!("dispatcher@{domain}/dispatcher"))?;
    let refd_jid = full(&format!("refdispatcher@{domain}/dispatcher"))?;
    let interval = Duration::from_millis(args.load_interval_ms);
    let make = {
        let (addr, pw, aj, dj) = (addr.clone(), pw.clone(), agent_jid.clone(), dsp_jid.clone());
        move || {
            AgentBuilder::new(addr.clone(), aj.clone(), pw.clone())
                .dispatcher(dj.clone())
                .test_profile(true)
                .load_interval(interval)
                .advertise_ttl(REFERENCE_ADVERTISE_TTL)
                .misbehave(mutant)
                .start()
        }
    };
    let aux_jid = full(&format!("{}@{domain}/agent", crate::session::AUX_USER))?;
    let control = Arc::new(ReferenceControl {
        make: Box::new(make),
        agent: Mutex::new(None),
        agent_jid: agent_jid.to_string(),
        pinger: Mutex::new(None),
        ready,
        aux_env: vec![
            ("VERTEBRA_SERVER".into(), addr.clone()),
            ("VERTEBRA_JID".into(), aux_jid.to_string()),
            ("VERTEBRA_PASSWORD".into(), pw.clone()),
            ("VERTEBRA_DISPATCHER".into(), dsp_jid.to_string()),
            (
                "VERTEBRA_LOAD_INTERVAL_MS".into(),
                args.load_interval_ms.to_string(),
            ),
        ],
        aux_jid: aux_jid.to_string(),
        aux: Mutex::new(None),
        aux_variant: Mutex::new(None),
        harness_mutant,
    });
    let plan = Plan {
        mode: Mode::Reference,
        addr: addr.clone(),
        domain: domain.to_string(),
        password: pw.clone(),
        dsp_jid: Some(dsp_jid.clone()),
        req_jid: full(&format!("requester@{domain}/harness"))?,
        req_password: None,
        stranger_jid: full(&format!("stranger@{domain}/harness"))?,
        stranger_password: None,
        agent: Some(agent_jid.to_string()),
        dispatcher: Some((
            refd_jid.to_string(),
            vec![
                full(&format!("agent1@{domain}/agent"))?,
                full(&format!("agent2@{domain}/agent"))?,
                full(&format!("agent3@{domain}/agent"))?,
            ],
        )),
        inject,
        control: Some(control.clone()),
        load_interval_ms: Some(args.load_interval_ms),
        foreign_jid: match server_kind {
            Server::Embedded => Some(full(&format!(
                "{}@{}/agent",
                crate::attach::FOREIGN_USER,
                crate::attach::FOREIGN_DOMAIN
            ))?),
            Server::Prosody => None,
        },
    };
    // Harness identities first (the agent advertises to the harness dispatcher on start).
    let session = connect_session(plan, trace).await?;
    *control.pinger.lock().unwrap_or_else(|e| e.into_inner()) = Some(session.req.clone());
    let mut dcfg = DispatcherConfig::new(ConnectOptions::new(
        addr.clone(),
        jid::Jid::from(refd_jid.clone()),
        pw.clone(),
    ));
    dcfg.policy = reference_policy(domain)?;
    dcfg.misbehave = mutant;
    dcfg.sweep_every = Duration::from_millis(50);
    let dispatcher = Dispatcher::start(dcfg).map_err(|e| e.to_string())?;
    control.restart().await?;
    dispatcher
        .wait_online(ready)
        .await
        .map_err(|e| format!("reference dispatcher: {e}"))?;
    wait_ready(&session.req, &refd_jid.to_string(), ready).await?;
    read_features(&session, ready).await?;
    guards.push(Box::new(DispatcherGuard(dispatcher)));
    guards.push(Box::new(control));
    let target = match (mutant, harness_mutant) {
        (_, Some(h)) => format!("reference agent + dispatcher, harness mutant {h}"),
        (Misbehaviour::None, None) => "reference agent + dispatcher".to_string(),
        (m, None) => format!("reference agent + dispatcher, mutant {}", m.name()),
    };
    Ok(Attached {
        session: Arc::new(session),
        guards,
        target,
        mode: Mode::Reference,
    })
}

/// Keeps the reference dispatcher running for the session.
#[allow(dead_code)]
struct DispatcherGuard(Dispatcher);
