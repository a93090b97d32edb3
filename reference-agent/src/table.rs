//! The dispatcher's advertisement and load table (sans-IO: time is passed in).
//!
//! Index: per (domain, advertised operation path) an ordered set of
//! (has-no-load, load, full JID) so that "least loaded first, ties by byte-wise JID order,
//! agents without a report last" ([VAP-DSC-016]) is an in-order walk, and a pick among
//! 100 000 agents costs O(log n). Tenants are isolated structurally: the index is keyed by
//! domain ([VAP-SEC-019]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vertebra_protocol::{Resource, ResourceScope};

/// Sort key: (0 = has a load report / 1 = none, load bits, jid).
type Key = (u8, u64, Arc<str>);

fn load_bits(l: Option<f64>) -> (u8, u64) {
    match l {
        // Loads are finite and >= 0, so the IEEE bit pattern orders like the value.
        Some(v) => (0, v.max(0.0).to_bits()),
        None => (1, 0),
    }
}

#[derive(Debug, Clone)]
struct Entry {
    domain: Arc<str>,
    ops: Vec<Arc<str>>,
    resources: ResourceScope,
    expires: Instant,
    load: Option<f64>,
    interval: Duration,
    last_report: Option<Instant>,
}

/// Why an agent is (not) listed — for `agents` listings.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInfo {
    /// Full JID.
    pub jid: String,
    /// Advertised operations.
    pub operations: Vec<String>,
    /// Last load (None = never reported).
    pub load: Option<f64>,
    /// Seconds until the advertisement expires.
    pub expires_in: Duration,
    /// Considered alive (not silent for 3 intervals).
    pub alive: bool,
}

/// The table.
#[derive(Debug, Default)]
pub struct Table {
    agents: HashMap<Arc<str>, Entry>,
    index: HashMap<Arc<str>, BTreeMap<Arc<str>, BTreeSet<Key>>>,
    /// Loads of agents that reported before advertising (kept so a later advert sorts right).
    loads: HashMap<Arc<str>, (f64, Duration, Instant)>,
    /// Ignore silence and unavailable (mutant `slow-death-detection`).
    pub no_death: bool,
}

fn domain_of(jid: &str) -> &str {
    let no_res = jid.split('/').next().unwrap_or(jid);
    no_res.rsplit_once('@').map(|(_, d)| d).unwrap_or(no_res)
}

impl Table {
    /// Empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of tracked agents.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    fn unindex(&mut self, jid: &Arc<str>) {
        let Some(e) = self.agents.get(jid) else { return };
        let (h, b) = load_bits(e.load);
        let key: Key = (h, b, jid.clone());
        if let Some(by_op) = self.index.get_mut(&e.domain) {
            for op in &e.ops {
                if let Some(set) = by_op.get_mut(op) {
                    set.remove(&key);
                    if set.is_empty() {
                        by_op.remove(op);
                    }
                }
            }
        }
    }

    fn reindex(&mut self, jid: &Arc<str>) {
        let Some(e) = self.agents.get(jid) else { return };
        let (h, b) = load_bits(e.load);
        let by_op = self.index.entry(e.domain.clone()).or_default();
        for op in &e.ops {
            by_op
                .entry(op.clone())
                .or_default()
                .insert((h, b, jid.clone()));
        }
    }

    fn intern(&self, jid: &str) -> Arc<str> {
        match self.agents.get_key_value(jid) {
            Some((k, _)) => k.clone(),
            None => Arc::from(jid),
        }
    }

    /// [VAP-DSC-005..007] apply an advertisement from `jid` (already checked to be the sender).
    pub fn advertise(
        &mut self,
        jid: &str,
        operations: &[Resource],
        resources: &ResourceScope,
        ttl: u32,
        now: Instant,
    ) {
        let key = self.intern(jid);
        if ttl == 0 {
            if operations.is_empty() {
                self.remove(jid);
                return;
            }
            self.unindex(&key);
            if let Some(e) = self.agents.get_mut(&key) {
                e.ops.retain(|o| !operations.iter().any(|r| r.as_str() == &**o));
            }
            self.reindex(&key);
            return;
        }
        let expires = now + Duration::from_secs(ttl as u64);
        if operations.is_empty() && resources.is_empty() {
            if let Some(e) = self.agents.get_mut(&key) {
                e.expires = expires;
            }
            return;
        }
        self.unindex(&key);
        let (load, interval, last) = match self.agents.get(&key) {
            Some(e) => (e.load, e.interval, e.last_report),
            None => match self.loads.remove(&key) {
                Some((l, i, t)) => (Some(l), i, Some(t)),
                None => (None, Duration::from_millis(1000), None),
            },
        };
        let mut ops: Vec<Arc<str>> = operations.iter().map(|r| Arc::from(r.as_str())).collect();
        ops.sort();
        ops.dedup();
        let e = Entry {
            domain: Arc::from(domain_of(jid)),
            ops,
            resources: resources.clone(),
            expires,
            load,
            interval,
            last_report: last,
        };
        self.agents.insert(key.clone(), e);
        self.reindex(&key);
    }

    /// Remove an agent entirely (unavailable presence, [VAP-DSC-013]).
    pub fn remove(&mut self, jid: &str) {
        if self.no_death {
            return;
        }
        self.loads.remove(jid);
        let key = self.intern(jid);
        self.unindex(&key);
        self.agents.remove(&key);
    }

    /// [VAP-LOAD-009] record a valid load report.
    pub fn report(&mut self, jid: &str, value: f64, interval: Duration, now: Instant) {
        if !value.is_finite() || value < 0.0 {
            return; // [VAP-LOAD-010]
        }
        let key = self.intern(jid);
        if !self.agents.contains_key(&key) {
            self.loads.insert(key, (value, interval, now));
            return;
        }
        self.unindex(&key);
        if let Some(e) = self.agents.get_mut(&key) {
            e.load = Some(value);
            e.interval = interval;
            e.last_report = Some(now);
        }
        self.reindex(&key);
    }

    fn alive(&self, e: &Entry, now: Instant) -> bool {
        if now >= e.expires {
            return false;
        }
        if self.no_death {
            return true;
        }
        match e.last_report {
            // [VAP-LOAD-013] silent for 3 intervals → out; [VAP-LOAD-014] back on a new report.
            Some(t) => now.duration_since(t) < e.interval * 3,
            None => true,
        }
    }

    /// [VAP-DSC-015..019] least loaded first; `requester` is excluded and only its domain
    /// is searched.
    pub fn discover(
        &self,
        requester: &str,
        operation: &Resource,
        query: &ResourceScope,
        limit: Option<usize>,
        now: Instant,
    ) -> Vec<(Arc<str>, Option<f64>)> {
        self.discover_in(domain_of(requester), requester, operation, query, limit, now)
    }

    /// Discover within an explicit domain (the `no-tenant-isolation` mutant passes each domain).
    pub fn discover_in(
        &self,
        domain: &str,
        requester: &str,
        operation: &Resource,
        query: &ResourceScope,
        limit: Option<usize>,
        now: Instant,
    ) -> Vec<(Arc<str>, Option<f64>)> {
        let limit = limit.unwrap_or(usize::MAX);
        let Some(by_op) = self.index.get(domain) else {
            return vec![];
        };
        // Advertised paths matching the query: its prefixes and its descendants.
        let mut sets: Vec<&BTreeSet<Key>> = vec![];
        let q = operation.as_str();
        let mut prefix = String::new();
        if let Some(s) = by_op.get("/") {
            sets.push(s);
        }
        for seg in operation.segments() {
            prefix.push('/');
            prefix.push_str(seg);
            if let Some(s) = by_op.get(prefix.as_str()) {
                sets.push(s);
            }
        }
        if !operation.is_root() {
            let lo = format!("{q}/");
            let hi = format!("{q}0"); // '0' is the byte after '/'
            for (_, s) in by_op.range::<str, _>((
                std::ops::Bound::Included(lo.as_str()),
                std::ops::Bound::Excluded(hi.as_str()),
            )) {
                sets.push(s);
            }
        } else {
            for (k, s) in by_op.iter() {
                if &**k != "/" {
                    sets.push(s);
                }
            }
        }
        let mut out = Vec::new();
        let push = |k: &Key, out: &mut Vec<(Arc<str>, Option<f64>)>| -> bool {
            let jid = &k.2;
            if &**jid == requester {
                return false;
            }
            let Some(e) = self.agents.get(jid) else { return false };
            if !self.alive(e, now) || !e.resources.satisfies(query) {
                return false;
            }
            out.push((jid.clone(), e.load));
            out.len() >= limit
        };
        if sets.len() == 1 {
            for k in sets[0] {
                if push(k, &mut out) {
                    break;
                }
            }
            return out;
        }
        // k-way merge of the ordered sets, once per JID.
        let mut iters: Vec<_> = sets.iter().map(|s| s.iter().peekable()).collect();
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut best: Option<(usize, &Key)> = None;
            for (i, it) in iters.iter_mut().enumerate() {
                if let Some(k) = it.peek() {
                    if best.map(|(_, b)| *k < b).unwrap_or(true) {
                        best = Some((i, k));
                    }
                }
            }
            let Some((i, k)) = best else { break };
            iters[i].next();
            if !seen.insert(k.2.clone()) {
                continue;
            }
            if push(k, &mut out) {
                break;
            }
        }
        out
    }

    /// Drop expired advertisements and forget silent agents' stale loads (housekeeping;
    /// liveness itself is checked on every discover).
    pub fn sweep(&mut self, now: Instant) {
        let expired: Vec<Arc<str>> = self
            .agents
            .iter()
            .filter(|(_, e)| now >= e.expires)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.unindex(&k);
            self.agents.remove(&k);
        }
        self.loads
            .retain(|_, (_, i, t)| now.duration_since(*t) < *i * 3);
    }

    /// Every agent of a domain (for `vertebra agents`).
    pub fn list(&self, domain: &str, now: Instant) -> Vec<AgentInfo> {
        let mut v: Vec<AgentInfo> = self
            .agents
            .iter()
            .filter(|(_, e)| &*e.domain == domain)
            .map(|(k, e)| AgentInfo {
                jid: k.to_string(),
                operations: e.ops.iter().map(|o| o.to_string()).collect(),
                load: e.load,
                expires_in: e.expires.saturating_duration_since(now),
                alive: self.alive(e, now),
            })
            .collect();
        v.sort_by(|a, b| {
            let ka = load_bits(a.load);
            let kb = load_bits(b.load);
            ka.cmp(&kb).then_with(|| a.jid.cmp(&b.jid))
        });
        v
    }

    /// Snapshot of one agent's advertisement (for replication): ops, resources, ttl left.
    pub fn advert_of(&self, jid: &str, now: Instant) -> Option<(Vec<Resource>, ResourceScope, u32)> {
        let e = self.agents.get(jid)?;
        let left = e.expires.saturating_duration_since(now).as_secs() as u32;
        if left == 0 {
            return None;
        }
        Some((
            e.ops.iter().filter_map(|o| Resource::parse(o).ok()).collect(),
            e.resources.clone(),
            left,
        ))
    }

    /// All tracked JIDs.
    pub fn jids(&self) -> Vec<String> {
        self.agents.keys().map(|k| k.to_string()).collect()
    }

    /// Domains with at least one agent.
    pub fn domains(&self) -> Vec<String> {
        self.index.keys().map(|k| k.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Resource {
        Resource::parse(s).unwrap()
    }

    #[test]
    fn least_loaded_first_ties_by_jid_unreported_last() {
        let now = Instant::now();
        let mut t = Table::new();
        let ops = [r("/gem/list")];
        for j in ["c@x/a", "b@x/a", "a@x/a", "d@x/a"] {
            t.advertise(j, &ops, &ResourceScope::new(), 60, now);
        }
        t.report("c@x/a", 0.5, Duration::from_secs(1), now);
        t.report("b@x/a", 0.5, Duration::from_secs(1), now);
        t.report("a@x/a", 0.9, Duration::from_secs(1), now);
        let got: Vec<String> = t
            .discover("req@x/r", &r("/gem/list"), &ResourceScope::new(), None, now)
            .into_iter()
            .map(|(j, _)| j.to_string())
            .collect();
        assert_eq!(got, vec!["b@x/a", "c@x/a", "a@x/a", "d@x/a"]);
        let one = t.discover("req@x/r", &r("/gem/list"), &ResourceScope::new(), Some(1), now);
        assert_eq!(&*one[0].0, "b@x/a");
    }

    #[test]
    fn prefix_matching_resources_domains_and_self() {
        let now = Instant::now();
        let mut t = Table::new();
        let mut rd00 = ResourceScope::new();
        rd00.push(Some("cluster"), r("/cluster/rd00"));
        t.advertise("a@x/a", &[r("/gem")], &rd00, 60, now);
        t.advertise("b@x/a", &[r("/gem/list/all")], &ResourceScope::new(), 60, now);
        t.advertise("c@y/a", &[r("/gem")], &ResourceScope::new(), 60, now);
        t.advertise("req@x/r", &[r("/gem")], &ResourceScope::new(), 60, now);
        let all = t.discover("req@x/r", &r("/gem/list"), &ResourceScope::new(), None, now);
        let names: Vec<&str> = all.iter().map(|(j, _)| &**j).collect();
        assert_eq!(names, vec!["a@x/a", "b@x/a"]);
        let mut q = ResourceScope::new();
        q.push(Some("cluster"), r("/cluster/rd00/node1"));
        let scoped = t.discover("req@x/r", &r("/gem/list"), &q, None, now);
        assert_eq!(scoped.len(), 1);
        assert_eq!(&*scoped[0].0, "a@x/a");
        let other = t.discover("req@y/r", &r("/gem"), &ResourceScope::new(), None, now);
        assert_eq!(other.len(), 1);
        assert_eq!(&*other[0].0, "c@y/a");
    }

    #[test]
    fn expiry_silence_unavailable_and_ttl0() {
        let now = Instant::now();
        let mut t = Table::new();
        t.advertise("a@x/a", &[r("/op")], &ResourceScope::new(), 10, now);
        t.advertise("b@x/a", &[r("/op"), r("/other")], &ResourceScope::new(), 100, now);
        t.report("b@x/a", 0.1, Duration::from_millis(100), now);
        let q = |t: &Table, at: Instant| t.discover("r@x/r", &r("/op"), &ResourceScope::new(), None, at).len();
        assert_eq!(q(&t, now), 2);
        // silent b: out after 3 intervals, back on a new report
        assert_eq!(q(&t, now + Duration::from_millis(301)), 1);
        t.report("b@x/a", 0.1, Duration::from_millis(100), now + Duration::from_millis(400));
        assert_eq!(q(&t, now + Duration::from_millis(450)), 2);
        // expiry of a
        assert_eq!(q(&t, now + Duration::from_secs(11)), 0);
        // ttl 0 with ops removes those ops only
        t.advertise("b@x/a", &[r("/op")], &ResourceScope::new(), 0, now);
        assert_eq!(q(&t, now), 1);
        assert_eq!(t.discover("r@x/r", &r("/other"), &ResourceScope::new(), None, now).len(), 1);
        t.remove("b@x/a");
        assert_eq!(t.discover("r@x/r", &r("/other"), &ResourceScope::new(), None, now).len(), 0);
        t.sweep(now + Duration::from_secs(20));
        assert!(t.is_empty());
    }

    #[test]
    fn load_before_advert_is_kept() {
        let now = Instant::now();
        let mut t = Table::new();
        t.report("a@x/a", 0.7, Duration::from_secs(1), now);
        t.report("b@x/a", 0.2, Duration::from_secs(1), now);
        t.advertise("a@x/a", &[r("/op")], &ResourceScope::new(), 60, now);
        t.advertise("b@x/a", &[r("/op")], &ResourceScope::new(), 60, now);
        let got = t.discover("r@x/r", &r("/op"), &ResourceScope::new(), None, now);
        assert_eq!(&*got[0].0, "b@x/a");
        assert_eq!(got[1].1, Some(0.7));
    }
}
