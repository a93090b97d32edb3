//! The dispatcher (historically Herault): answers `/security/advertise`, `/security/discover`
//! and `/security/authorize`, keeps the load table from directed presence, and drops dead
//! agents. It is a [`Node`] whose handlers are these three operations, authorized locally
//! for requesters of its own domain ([VAP-SEC-017], [VAP-SEC-018]).
//!
//! ## Several instances on one bare JID
//! Replicas log in to the same account with different resources. Load reports and
//! unavailable presence go to the dispatcher's *bare* JID, so the server delivers them to
//! every replica. Advertisements are ops to one full JID; the replica that accepts one
//! forwards it to its siblings (IQ set `<replicate xmlns="urn:vertebra:1.0:replica">`,
//! accepted only from the same bare JID). Siblings find each other through the account's
//! own broadcast presence, and a replica that sees a new sibling sends it a snapshot. With the
//! same adverts and the same presence stream, every replica orders discover identically
//! (load, then byte-wise JID).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_xmpp::parsers::{
    jid::{FullJid, Jid},
    minidom::Element,
    presence::{Presence, Type as PresenceType},
    stanza_error::{DefinedCondition, ErrorType as XmppErrorType, StanzaError},
};
use vertebra_protocol::dispatch::{Directory, Policy, Refusal};
use vertebra_protocol::payloads::{
    AdvertiseRequest, AuthorizeRequest, AuthorizeResponse, DiscoverRequest, DiscoverResponse,
    OP_ADVERTISE, OP_AUTHORIZE, OP_DISCOVER,
};
use vertebra_protocol::value::{decode_named, NamedMode};
use vertebra_protocol::{ErrorType, Load, NS};

use crate::config::Misbehaviour;
use crate::conn::ConnectOptions;
use crate::node::{Authorizer, Call, HandlerError, HandlerResult, Node, NodeConfig};
use crate::policy::PolicySource;

/// Namespace of the replica-to-replica advert forwarding.
pub const NS_REPLICA: &str = "urn:vertebra:1.0:replica";

/// Dispatcher settings.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Connection (log in as e.g. `dispatcher@domain/dispatcher`).
    pub connect: ConnectOptions,
    /// Policy file (reloaded when it changes). None = `policy`.
    pub policy_file: Option<PathBuf>,
    /// Policy when no file is given (default: deny everything).
    pub policy: Policy,
    /// Housekeeping period (expiry sweep, policy reload).
    pub sweep_every: Duration,
    /// Deliberate violation (mutants).
    pub misbehave: Misbehaviour,
}

impl DispatcherConfig {
    /// Defaults: default-deny policy.
    pub fn new(connect: ConnectOptions) -> Self {
        DispatcherConfig {
            connect,
            policy_file: None,
            policy: Policy::default(),
            sweep_every: Duration::from_millis(250),
            misbehave: Misbehaviour::None,
        }
    }
}

struct State {
    dir: Directory,
    /// Last accepted advertisement per agent with its receipt time (snapshots for replicas).
    adverts: std::collections::HashMap<String, (AdvertiseRequest, std::time::Instant)>,
    policy: PolicySource,
    siblings: Vec<Jid>,
    no_death: bool,
}

/// A running dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    node: Node,
    state: Arc<Mutex<State>>,
}

fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Milliseconds on a process-wide monotonic clock (the protocol crate's time unit).
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

fn refusal(r: Refusal) -> HandlerError {
    match r {
        Refusal::BadValue(m) => bad(m),
        Refusal::Nack(c) => HandlerError::with(ErrorType::Fatal, c, "refused"),
    }
}

fn bad(msg: impl Into<String>) -> HandlerError {
    HandlerError::bad_value(msg)
}

impl Dispatcher {
    /// Start (connects in the background; use [`Dispatcher::wait_online`]).
    pub fn start(cfg: DispatcherConfig) -> Result<Dispatcher, crate::policy::PolicyError> {
        let policy = match &cfg.policy_file {
            Some(p) => PolicySource::file(p.clone())?,
            None => PolicySource::fixed(cfg.policy.clone()),
        };
        let mut ncfg = NodeConfig::new(cfg.connect.clone());
        ncfg.authorizer = Authorizer::SameDomain;
        ncfg.identity_type = vertebra_protocol::IDENTITY_TYPE_DISPATCHER;
        ncfg.features = vec![vertebra_protocol::FEATURE_DISPATCHER.to_string()];
        ncfg.serve = false;
        if cfg.misbehave == Misbehaviour::NoTenantIsolation {
            // MUTANT no-tenant-isolation: the node lets a foreign discover op past the
            // responder's tenant check (see `Node::mutant_alias`). Other dispatcher mutants stay
            // out of the node, whose mutants are the agent's.
            ncfg.misbehave = cfg.misbehave;
        }
        let node = Node::start(ncfg);
        let domain = cfg.connect.jid.domain().as_str().to_string();
        let d = Dispatcher {
            node: node.clone(),
            state: Arc::new(Mutex::new(State {
                dir: Directory::new(domain),
                adverts: Default::default(),
                policy,
                siblings: vec![],
                no_death: cfg.misbehave == Misbehaviour::SlowDeathDetection,
            })),
        };
        let m = cfg.misbehave;
        // [VAP-DSC-004] refuse advertisements naming another JID (nack not-authorized).
        node.set_admission(move |from, op| {
            if op.op_type != OP_ADVERTISE || m == Misbehaviour::AcceptForeignAdvert {
                return true;
            }
            match op.args.get_str("advertiser") {
                None => true,
                Some(a) => a.parse::<Jid>().map(|j| &j == from).unwrap_or(false),
            }
        });
        let dd = d.clone();
        node.handle(OP_ADVERTISE, move |c: Call| {
            let d = dd.clone();
            async move { d.advertise(&c) }
        });
        let dd = d.clone();
        node.handle(OP_DISCOVER, move |c: Call| {
            let d = dd.clone();
            async move { d.discover(&c, m) }
        });
        let dd = d.clone();
        node.handle(OP_AUTHORIZE, move |c: Call| {
            let d = dd.clone();
            async move { d.authorize(&c, m) }
        });
        let dd = d.clone();
        node.on_presence(move |n, p| dd.presence(n, p));
        let dd = d.clone();
        node.on_iq_ns(NS_REPLICA, move |n, from, el| dd.replicated(n, from, el));
        let dd = d.clone();
        node.on_online(move |_| {
            // New session: siblings re-announce themselves through presence.
            dd.state.lock().unwrap().siblings.clear();
        });
        let dd = d.clone();
        let every = cfg.sweep_every;
        tokio::spawn(async move {
            let mut stop = dd.node.conn().state();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    r = stop.changed() => {
                        if r.is_err() || *stop.borrow() == crate::conn::ConnState::Closed { return; }
                    }
                }
                let mut st = dd.state.lock().unwrap();
                st.dir.tick(now_ms());
                let t = now();
                st.adverts
                    .retain(|_, (r, at)| t.duration_since(*at).as_secs() < r.ttl as u64);
                st.policy.reload_if_changed();
            }
        });
        Ok(d)
    }

    /// The underlying node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Wait until online.
    pub async fn wait_online(&self, d: Duration) -> Result<FullJid, crate::conn::ConnError> {
        self.node.wait_online(d).await
    }

    /// Number of tracked agents.
    pub fn agent_count(&self) -> usize {
        self.state.lock().unwrap().dir.len()
    }

    /// Replace the policy (in-memory).
    pub fn set_policy(&self, p: Policy) {
        self.state.lock().unwrap().policy = PolicySource::fixed(p);
    }

    /// Stop.
    pub async fn shutdown(&self) {
        self.node.shutdown().await;
    }

    fn my_domain(&self) -> String {
        self.node
            .jid()
            .map(|j| j.domain().as_str().to_string())
            .unwrap_or_default()
    }

    fn advertise(&self, c: &Call) -> HandlerResult {
        let req = AdvertiseRequest::from_args(&c.args).map_err(|e| bad(e.detail))?; // [VAP-DSC-009]
        let resp = {
            let mut st = self.state.lock().unwrap();
            // [VAP-DSC-003]: registered under the sender's full JID only.
            let resp = st.dir.advertise(&c.from, &req, now_ms()).map_err(refusal)?;
            let key = c.from.to_string();
            if req.ttl == 0 {
                st.adverts.remove(&key);
            } else if !req.operations.is_empty() {
                st.adverts.insert(key, (req.clone(), now()));
            } else if let Some(e) = st.adverts.get_mut(&key) {
                e.0.ttl = req.ttl;
                e.1 = now();
            }
            resp
        };
        log::debug!(
            "advert from {}: {} ops ttl {}",
            c.from,
            req.operations.len(),
            req.ttl
        );
        self.replicate(&c.from.to_string(), &req);
        Ok(resp.to_args())
    }

    fn replicate(&self, agent: &str, req: &AdvertiseRequest) {
        let siblings = self.state.lock().unwrap().siblings.clone();
        for s in siblings {
            let el = replicate_el(agent, req);
            let n = self.node.clone();
            tokio::spawn(async move {
                let _ = n.conn().iq(s, true, el, Duration::from_secs(5)).await;
            });
        }
    }

    fn replicated(&self, _n: &Node, from: &Jid, el: &Element) -> crate::node::IqHookResult {
        let me = self.node.jid();
        let same_account = me.map(|m| m.to_bare() == from.to_bare()).unwrap_or(false);
        let refuse = |c| {
            Err(Box::new(StanzaError::new(
                XmppErrorType::Cancel,
                c,
                "en",
                "",
            )))
        };
        if !same_account || el.name() != "replicate" {
            return refuse(DefinedCondition::Forbidden);
        }
        let Some(agent) = el.attr("agent") else {
            return refuse(DefinedCondition::BadRequest);
        };
        let Ok(args) = decode_named(el, 0, NamedMode::Strict).map(|(a, _)| a) else {
            return refuse(DefinedCondition::BadRequest);
        };
        let (Ok(req), Ok(agent_jid)) = (AdvertiseRequest::from_args(&args), agent.parse::<Jid>())
        else {
            return refuse(DefinedCondition::BadRequest);
        };
        let mut st = self.state.lock().unwrap();
        if st.dir.advertise(&agent_jid, &req, now_ms()).is_ok() && req.ttl > 0 {
            st.adverts.insert(agent.to_string(), (req, now()));
        }
        Ok(None)
    }

    fn discover(&self, c: &Call, m: Misbehaviour) -> HandlerResult {
        let req = DiscoverRequest::from_args(&c.args).map_err(|e| bad(e.detail))?; // [VAP-DSC-021]
        let mut st = self.state.lock().unwrap();
        let mut resp = if m == Misbehaviour::NoTenantIsolation {
            // Mutant: answers any domain with the own tenant's agents.
            let own = st.dir.own_domain().to_string();
            st.dir.tick(now_ms());
            let me = c.from.to_string();
            let limit = req.limit.map_or(usize::MAX, |l| l as usize);
            let picked = st
                .dir
                .pick(&own, &req.operation, &req.resources, limit, |j| j != me);
            let mut r = DiscoverResponse {
                jids: vec![],
                loads: vec![],
            };
            for (lk, j) in picked {
                if let Ok(j) = j.parse::<Jid>() {
                    r.jids.push(j);
                    r.loads.push(if lk == u64::MAX {
                        f64::INFINITY
                    } else {
                        f64::from_bits(lk)
                    });
                }
            }
            r
        } else {
            st.dir.discover(&c.from, &req, now_ms()).map_err(refusal)?
        };
        drop(st);
        if m == Misbehaviour::WrongDiscoverOrder {
            resp.jids.reverse();
            resp.loads.reverse();
        }
        Ok(resp.to_args())
    }

    fn authorize(&self, c: &Call, m: Misbehaviour) -> HandlerResult {
        let req = AuthorizeRequest::from_args(&c.args).map_err(|e| bad(e.detail))?;
        let resp = if m == Misbehaviour::AllowAll {
            AuthorizeResponse {
                authorized: true,
                ttl: 0,
            }
        } else {
            // [VAP-SEC-013]…[VAP-SEC-016], [VAP-SEC-020]: the protocol crate decides.
            self.state
                .lock()
                .unwrap()
                .policy
                .policy()
                .decide(&c.from, &req)
        };
        let res: Vec<String> = req
            .resources
            .iter()
            .map(|e| {
                format!(
                    "{}={}",
                    e.key.clone().unwrap_or_default(),
                    e.resource.as_str()
                )
            })
            .collect();
        // The decision log.
        log::info!(
            "authorize from={} to={} op={} resources=[{}] -> {} ttl={} asked-by={}",
            req.from,
            req.to,
            req.operation,
            res.join(","),
            if resp.authorized {
                "authorized"
            } else {
                "notauthorized"
            },
            resp.ttl,
            c.from
        );
        Ok(resp.to_args())
    }

    fn presence(&self, n: &Node, p: &Presence) {
        let Some(from) = p.from.clone() else { return };
        let me = n.jid();
        let my_domain = self.my_domain();
        // Sibling replica (same account, other resource).
        if let Some(me) = &me {
            if from.to_bare() == me.to_bare() {
                if from.try_as_full().is_ok_and(|f| f == me) {
                    return;
                }
                let mut st = self.state.lock().unwrap();
                if p.type_ == PresenceType::Unavailable {
                    st.siblings.retain(|s| s != &from);
                    return;
                }
                if p.type_ == PresenceType::None && !st.siblings.contains(&from) {
                    st.siblings.push(from.clone());
                    // Snapshot for the newcomer; answer its presence so it learns of us too.
                    let t = now();
                    let snapshot: Vec<(String, AdvertiseRequest)> = st
                        .adverts
                        .iter()
                        .filter_map(|(j, (r, at))| {
                            let left =
                                (r.ttl as u64).saturating_sub(t.duration_since(*at).as_secs());
                            (left > 0).then(|| {
                                let mut r = r.clone();
                                r.ttl = left as u32;
                                (j.clone(), r)
                            })
                        })
                        .collect();
                    drop(st);
                    let _ = n.conn().send_presence(from.clone(), vec![]);
                    for (j, req) in snapshot {
                        let el = replicate_el(&j, &req);
                        let nn = n.clone();
                        let to = from.clone();
                        tokio::spawn(async move {
                            let _ = nn.conn().iq(to, true, el, Duration::from_secs(5)).await;
                        });
                    }
                }
                return;
            }
        }
        if from.resource().is_none() {
            return;
        }
        if p.type_ == PresenceType::Unavailable {
            // [VAP-DSC-013] / [VAP-LOAD-012]: immediately.
            let mut st = self.state.lock().unwrap();
            if !st.no_death {
                st.dir.unavailable(&from, now_ms());
                st.adverts.remove(&from.to_string());
            }
            return;
        }
        if p.type_ != PresenceType::None || from.domain().as_str() != my_domain {
            return; // [VAP-LOAD-011]
        }
        for el in &p.payloads {
            if el.is("load", NS) {
                if let Ok(l) = Load::from_element(el) {
                    self.state
                        .lock()
                        .unwrap()
                        .dir
                        .report_load(&from, &l, now_ms());
                }
            }
        }
    }
}

fn replicate_el(agent: &str, req: &AdvertiseRequest) -> Element {
    let mut el = Element::bare("replicate", NS_REPLICA);
    el.set_attr(
        tokio_xmpp::minidom::rxml::Namespace::NONE,
        tokio_xmpp::minidom::rxml::NcName::try_from("agent").expect("valid NCName"),
        agent.to_string(),
    );
    req.to_args().encode_into(&mut el);
    el
}

/// Dispatcher bare JID → the account's JID used by load reports.
pub fn load_target(dispatcher: &FullJid) -> Jid {
    Jid::from(dispatcher.to_bare())
}
