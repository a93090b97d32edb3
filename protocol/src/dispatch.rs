//! The dispatcher's decisions as pure data structures (sans-IO; the caller supplies time in
//! [`Millis`]): the advertisement table with TTLs (`[VAP-DSC]`), the load table and death
//! detection (`[VAP-LOAD]`), least-loaded discovery with deterministic ties, tenant isolation by
//! XMPP domain (`[VAP-SEC-018]`, `[VAP-SEC-019]`), and the authorization policy (`[VAP-SEC]`,
//! default deny).
//!
//! **Index.** For every (domain, operation path) the directory keeps a `BTreeSet` ordered by
//! (load key, full JID) holding only agents that are *in dispatch* (unexpired advertisement,
//! not silent, not unavailable). A discover walks the sets of the advertised operations that
//! match the query segment-wise — ancestors by lookup, descendants by a range scan — merging them
//! in order and stopping at `limit`, so the least-loaded pick costs O(log n) plus the number of
//! candidates skipped by the resource filter. The load key is the IEEE-754 bit pattern of the
//! (non-negative) load, which orders like the number; agents that never reported sort last
//! (`[VAP-DSC-016]`); ties break on the byte-wise JID order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use jid::{BareJid, Jid};

use crate::error::Condition;
use crate::machine::Millis;
use crate::payloads::{
    AdvertiseRequest, AdvertiseResponse, AuthorizeRequest, AuthorizeResponse, DiscoverRequest,
    DiscoverResponse,
};
use crate::resource::{Resource, ResourceScope};
use crate::stanza::Load;

/// Silence bound: an agent is out of dispatch after this many report intervals without a
/// report (`[VAP-LOAD-013]`).
pub const SILENCE_INTERVALS: u64 = 3;

#[derive(Debug, Clone)]
struct Advert {
    ops: Vec<Resource>,
    resources: ResourceScope,
    expires_at: Millis,
}

#[derive(Debug, Clone, Copy)]
struct LoadEntry {
    value: f64,
    interval: u32,
    silent_at: Millis,
}

#[derive(Debug, Clone)]
struct Agent {
    jid: Arc<str>,
    domain: Arc<str>,
    advert: Option<Advert>,
    load: Option<LoadEntry>,
    silent: bool,
    /// Whether the agent currently sits in the index.
    indexed: bool,
}

impl Agent {
    fn load_key(&self) -> u64 {
        match self.load {
            Some(l) => l.value.to_bits(),
            None => u64::MAX,
        }
    }
    fn in_dispatch(&self) -> bool {
        self.advert.is_some() && !self.silent
    }
}

type OpIndex = BTreeMap<String, BTreeSet<(u64, Arc<str>)>>;

/// Why an advertise or discover was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Nack with this reason (`not-authorized`: other domain, or `advertiser` ≠ sender).
    Nack(Condition),
    /// End with `<error type="fatal" condition="bad-value">`.
    BadValue(String),
}

/// The advertisement and load table of one dispatcher.
#[derive(Debug, Clone)]
pub struct Directory {
    own_domain: String,
    agents: HashMap<Arc<str>, Agent>,
    index: HashMap<Arc<str>, OpIndex>,
    expiries: BTreeSet<(Millis, Arc<str>)>,
    silences: BTreeSet<(Millis, Arc<str>)>,
}

fn domain_of(j: &Jid) -> &str {
    j.domain().as_str()
}

impl Directory {
    /// A directory serving senders of `own_domain` only.
    pub fn new(own_domain: impl Into<String>) -> Self {
        Directory {
            own_domain: own_domain.into(),
            agents: HashMap::new(),
            index: HashMap::new(),
            expiries: BTreeSet::new(),
            silences: BTreeSet::new(),
        }
    }

    /// The domain this directory serves.
    pub fn own_domain(&self) -> &str {
        &self.own_domain
    }

    /// Number of known agents (with an advertisement or a load report).
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// True when no agent is known.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Whether `jid` is currently in dispatch.
    pub fn in_dispatch(&self, jid: &Jid) -> bool {
        self.agents
            .get(jid.to_string().as_str())
            .is_some_and(Agent::in_dispatch)
    }

    /// The last valid load report of `jid`: (value, interval ms).
    pub fn last_report(&self, jid: &Jid) -> Option<(f64, u32)> {
        self.agents
            .get(jid.to_string().as_str())
            .and_then(|a| a.load)
            .map(|l| (l.value, l.interval))
    }

    fn unindex(&mut self, key: &Arc<str>) {
        let Some(a) = self.agents.get_mut(key) else {
            return;
        };
        if !a.indexed {
            return;
        }
        a.indexed = false;
        let lk = a.load_key();
        if let (Some(adv), Some(dom)) = (&a.advert, self.index.get_mut(&a.domain)) {
            for op in &adv.ops {
                if let Some(set) = dom.get_mut(op.as_str()) {
                    set.remove(&(lk, a.jid.clone()));
                    if set.is_empty() {
                        dom.remove(op.as_str());
                    }
                }
            }
        }
    }

    fn reindex(&mut self, key: &Arc<str>) {
        let Some(a) = self.agents.get_mut(key) else {
            return;
        };
        if a.indexed || !a.in_dispatch() {
            return;
        }
        a.indexed = true;
        let lk = a.load_key();
        let dom = self.index.entry(a.domain.clone()).or_default();
        if let Some(adv) = &a.advert {
            for op in &adv.ops {
                dom.entry(op.as_str().to_string())
                    .or_default()
                    .insert((lk, a.jid.clone()));
            }
        }
    }

    fn agent_key(&mut self, j: &Jid) -> Arc<str> {
        let s = j.to_string();
        if let Some((k, _)) = self.agents.get_key_value(s.as_str()) {
            return k.clone();
        }
        let k: Arc<str> = Arc::from(s.as_str());
        self.agents.insert(
            k.clone(),
            Agent {
                jid: k.clone(),
                domain: Arc::from(domain_of(j)),
                advert: None,
                load: None,
                silent: false,
                indexed: false,
            },
        );
        k
    }

    fn drop_if_empty(&mut self, key: &Arc<str>) {
        if self
            .agents
            .get(key)
            .is_some_and(|a| a.advert.is_none() && a.load.is_none())
        {
            self.agents.remove(key);
        }
    }

    fn set_advert(&mut self, key: &Arc<str>, advert: Option<Advert>) {
        self.unindex(key);
        let Some(a) = self.agents.get_mut(key) else {
            return;
        };
        if let Some(old) = &a.advert {
            self.expiries.remove(&(old.expires_at, key.clone()));
        }
        if let Some(new) = &advert {
            self.expiries.insert((new.expires_at, key.clone()));
        }
        a.advert = advert;
        self.reindex(key);
        self.drop_if_empty(key);
    }

    /// `/security/advertise` from `sender` (`[VAP-DSC-003]`…`[VAP-DSC-009]`,
    /// `[VAP-SEC-018]`).
    pub fn advertise(
        &mut self,
        sender: &Jid,
        req: &AdvertiseRequest,
        now: Millis,
    ) -> Result<AdvertiseResponse, Refusal> {
        self.tick(now);
        if domain_of(sender) != self.own_domain || sender.resource().is_none() {
            return Err(Refusal::Nack(Condition::NotAuthorized));
        }
        if let Some(adv) = &req.advertiser {
            // [VAP-DSC-004], compared as normalized JIDs ([VAP-TRN-017]).
            match Jid::new(adv) {
                Ok(j) if &j == sender => {}
                _ => return Err(Refusal::Nack(Condition::NotAuthorized)),
            }
        }
        let key = self.agent_key(sender);
        let current = self.agents.get(&key).and_then(|a| a.advert.clone());
        let expires_at = now + Millis::from(req.ttl) * 1000;
        let next = if req.ttl == 0 {
            // [VAP-DSC-007]
            match current {
                Some(mut adv) if !req.operations.is_empty() => {
                    adv.ops.retain(|o| !req.operations.contains(o));
                    (!adv.ops.is_empty()).then_some(adv)
                }
                _ => None,
            }
        } else if !req.operations.is_empty() {
            // [VAP-DSC-005]
            let mut ops = req.operations.clone();
            ops.sort();
            ops.dedup();
            Some(Advert {
                ops,
                resources: req.resources.clone(),
                expires_at,
            })
        } else {
            // [VAP-DSC-006]: refresh (and, if given, replace the resources).
            current.map(|mut adv| {
                adv.expires_at = expires_at;
                if !req.resources.is_empty() {
                    adv.resources = req.resources.clone();
                }
                adv
            })
        };
        self.set_advert(&key, next);
        Ok(AdvertiseResponse { ok: true })
    }

    /// A load report from `from` (`[VAP-LOAD-009]`…`[VAP-LOAD-011]`, `[VAP-LOAD-014]`).
    /// Reports from other domains or with missing / out-of-range attributes are ignored
    /// (returns false).
    pub fn report_load(&mut self, from: &Jid, load: &Load, now: Millis) -> bool {
        if domain_of(from) != self.own_domain || from.resource().is_none() {
            return false;
        }
        let (Some(_), Some(cap), Some(interval)) = (load.inflight, load.capacity, load.interval)
        else {
            return false;
        };
        if !load.value.is_finite()
            || load.value < 0.0
            || cap == 0
            || !(100..=60_000).contains(&interval)
        {
            return false;
        }
        let key = self.agent_key(from);
        self.unindex(&key);
        let a = self.agents.get_mut(&key).expect("just inserted");
        if let Some(old) = a.load {
            self.silences.remove(&(old.silent_at, key.clone()));
        }
        let silent_at = now + SILENCE_INTERVALS * Millis::from(interval);
        a.load = Some(LoadEntry {
            // +0.0 so that -0.0 orders with 0.0
            value: load.value + 0.0,
            interval,
            silent_at,
        });
        a.silent = false;
        self.silences.insert((silent_at, key.clone()));
        self.reindex(&key);
        true
    }

    /// Unavailable presence from `from`: out of dispatch at once and advertisements removed
    /// (`[VAP-LOAD-012]`, `[VAP-DSC-013]`).
    pub fn unavailable(&mut self, from: &Jid, _now: Millis) {
        let s = from.to_string();
        let Some(key) = self
            .agents
            .get_key_value(s.as_str())
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        self.unindex(&key);
        if let Some(a) = self.agents.remove(&key) {
            if let Some(adv) = a.advert {
                self.expiries.remove(&(adv.expires_at, key.clone()));
            }
            if let Some(l) = a.load {
                self.silences.remove(&(l.silent_at, key.clone()));
            }
        }
    }

    /// Apply expiries and silence (`[VAP-DSC-012]`, `[VAP-LOAD-013]`). Returns when to call again.
    pub fn tick(&mut self, now: Millis) -> Option<Millis> {
        while let Some((t, k)) = self.expiries.first().cloned() {
            if t > now {
                break;
            }
            self.expiries.remove(&(t, k.clone()));
            self.unindex(&k);
            if let Some(a) = self.agents.get_mut(&k) {
                a.advert = None;
            }
            self.drop_if_empty(&k);
        }
        while let Some((t, k)) = self.silences.first().cloned() {
            if t > now {
                break;
            }
            self.silences.remove(&(t, k.clone()));
            self.unindex(&k);
            if let Some(a) = self.agents.get_mut(&k) {
                a.silent = true;
            }
        }
        self.next_timeout()
    }

    /// The next instant at which something expires.
    pub fn next_timeout(&self) -> Option<Millis> {
        let a = self.expiries.first().map(|(t, _)| *t);
        let b = self.silences.first().map(|(t, _)| *t);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (x, y) => x.or(y),
        }
    }

    /// `/security/discover` (`[VAP-DSC-014]`…`[VAP-DSC-021]`, `[VAP-SEC-019]`): agents of the
    /// requester's domain whose unexpired advertisement matches (`[VAP-DSC-015]`), least loaded
    /// first (`[VAP-DSC-016]`, `[VAP-LOAD-015]`), dead ones left out (`[VAP-DSC-017]`), never
    /// the requester itself (`[VAP-DSC-018]`), at most `limit` (`[VAP-DSC-019]`), empty lists
    /// when nothing matches (`[VAP-DSC-020]`).
    pub fn discover(
        &mut self,
        requester: &Jid,
        req: &DiscoverRequest,
        now: Millis,
    ) -> Result<DiscoverResponse, Refusal> {
        self.tick(now);
        if domain_of(requester) != self.own_domain {
            return Err(Refusal::Nack(Condition::NotAuthorized));
        }
        let limit = req.limit.map_or(usize::MAX, |l| l as usize);
        let me = requester.to_string();
        let picked = self.pick(
            domain_of(requester),
            &req.operation,
            &req.resources,
            limit,
            |j| j != me.as_str(),
        );
        let mut jids = Vec::with_capacity(picked.len());
        let mut loads = Vec::with_capacity(picked.len());
        for (lk, j) in picked {
            let Ok(jid) = Jid::new(&j) else { continue };
            jids.push(jid);
            loads.push(if lk == u64::MAX {
                f64::INFINITY
            } else {
                f64::from_bits(lk)
            });
        }
        Ok(DiscoverResponse { jids, loads })
    }

    /// The least-loaded agents of `domain` for `operation` within `scope`, at most `limit`,
    /// each as (load key, full JID). `keep` filters JIDs (for example the requester itself).
    pub fn pick(
        &self,
        domain: &str,
        operation: &Resource,
        scope: &ResourceScope,
        limit: usize,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<(u64, Arc<str>)> {
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        let Some(dom) = self.index.get(domain) else {
            return out;
        };
        // Matching advertised operations: ancestors-or-equal by lookup, descendants by range.
        let mut sets: Vec<&BTreeSet<(u64, Arc<str>)>> = Vec::new();
        let mut prefix = String::new();
        if let Some(s) = dom.get("/") {
            sets.push(s);
        }
        for seg in operation.segments() {
            prefix.push('/');
            prefix.push_str(seg);
            if let Some(s) = dom.get(prefix.as_str()) {
                sets.push(s);
            }
        }
        let below = if operation.is_root() {
            "/".to_string()
        } else {
            format!("{}/", operation.as_str())
        };
        for (k, s) in dom.range::<str, _>((Bound::Excluded(below.as_str()), Bound::Unbounded)) {
            if !k.starts_with(below.as_str()) {
                break;
            }
            if k.as_str() != "/" {
                sets.push(s);
            }
        }
        // k-way merge (k is small: the matching operation paths).
        let mut iters: Vec<_> = sets.iter().map(|s| s.iter()).collect();
        let mut heap = BinaryHeap::with_capacity(iters.len());
        for (i, it) in iters.iter_mut().enumerate() {
            if let Some(x) = it.next() {
                heap.push(Reverse((x, i)));
            }
        }
        let mut last: Option<&(u64, Arc<str>)> = None;
        while let Some(Reverse((item, i))) = heap.pop() {
            if let Some(x) = iters[i].next() {
                heap.push(Reverse((x, i)));
            }
            // The same agent under two matching operations has the same key: adjacent here.
            if last == Some(item) {
                continue;
            }
            last = Some(item);
            if !keep(&item.1) {
                continue;
            }
            if !scope.is_empty() {
                let Some(adv) = self.agents.get(&item.1).and_then(|a| a.advert.as_ref()) else {
                    continue;
                };
                if !adv.resources.satisfies(scope) {
                    continue;
                }
            }
            out.push(item.clone());
            if out.len() >= limit {
                break;
            }
        }
        out
    }
}

/// Who a policy rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Every requester (of the dispatcher's domain).
    Any,
    /// Requesters of this XMPP domain.
    Domain(String),
    /// This bare JID.
    Bare(BareJid),
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Allow (with the rule's cache TTL).
    Allow,
    /// Deny.
    Deny,
}

/// One policy rule: requester × operation × resources (× responder).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRule {
    /// Requester (matched on its bare JID or domain).
    pub subject: Subject,
    /// The rule covers this operation path and every descendant.
    pub operation: Resource,
    /// Per key, the resources the rule covers: the request must have, for every key here, only
    /// resources equal to or below one of them. Keys not listed are unconstrained.
    pub resources: ResourceScope,
    /// Only for this responder (bare or full JID), if set.
    pub responder: Option<Jid>,
    /// Allow or deny.
    pub effect: Effect,
    /// Cache TTL (seconds) returned with an allow.
    pub ttl: u32,
}

/// An authorization policy: deny overrides allow; nothing matching → deny (`[VAP-SEC-014]`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Rules (order does not matter).
    pub rules: Vec<PolicyRule>,
}

impl PolicyRule {
    fn matches(&self, req: &AuthorizeRequest) -> bool {
        let subject = match &self.subject {
            Subject::Any => true,
            Subject::Domain(d) => req.from.domain().as_str() == d,
            Subject::Bare(b) => &req.from.to_bare() == b,
        };
        if !subject || !self.operation.is_prefix_of(&req.operation) {
            return false;
        }
        if let Some(r) = &self.responder {
            let ok = if r.resource().is_some() {
                r == &req.to
            } else {
                r.to_bare() == req.to.to_bare()
            };
            if !ok {
                return false;
            }
        }
        // Every constrained key must be present in the request and covered.
        let keys: BTreeSet<&str> = self
            .resources
            .iter()
            .filter_map(|e| e.key.as_deref())
            .collect();
        keys.into_iter().all(|k| {
            let mut asked = req.resources.get(k).peekable();
            asked.peek().is_some()
                && asked.all(|a| self.resources.get(k).any(|allowed| allowed.is_prefix_of(a)))
        })
    }
}

impl Policy {
    /// Decide an authorize op sent by `sender` (`[VAP-SEC-013]`…`[VAP-SEC-016]`,
    /// `[VAP-SEC-020]`).
    pub fn decide(&self, sender: &Jid, req: &AuthorizeRequest) -> AuthorizeResponse {
        let deny = AuthorizeResponse {
            authorized: false,
            ttl: 0,
        };
        if sender != &req.to || req.from.domain() != req.to.domain() {
            return deny;
        }
        let mut allow: Option<u32> = None;
        for r in self.rules.iter().filter(|r| r.matches(req)) {
            match r.effect {
                Effect::Deny => return deny,
                Effect::Allow => allow = Some(allow.map_or(r.ttl, |t| t.min(r.ttl))),
            }
        }
        match allow {
            Some(ttl) => AuthorizeResponse {
                authorized: true,
                ttl,
            },
            None => deny,
        }
    }
}

/// Convenience: the condition a dispatcher reports for a refusal.
impl Refusal {
    /// The wire condition.
    pub fn condition(&self) -> Condition {
        match self {
            Refusal::Nack(c) => c.clone(),
            Refusal::BadValue(_) => Condition::BadValue,
        }
    }
}
