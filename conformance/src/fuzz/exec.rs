//! Executing input steps against an attached implementation, with the live oracles:
//! liveness (ping after every input, an echo probe at checkpoints), process exit and resident
//! memory (spawn mode), the side-effect counter, and the stanza oracles of [`super::judge`].

use super::judge::{Judge, VIA_FOREIGN};
use super::rng::fnv;
use super::tracefile::{
    Finding, Roles, Step, VIA_DISPATCHER, VIA_INJECT, VIA_REQUESTER, VIA_STRANGER,
};
use crate::peer::{Peer, NS, NS_CLIENT};
use crate::session::{Mode, Session};
use crate::trace::{Direction, TraceEvent};
use crate::xmlh::AttrExt;
use minidom::Element;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vertebra_embedded_server::{JidPattern, ServerHandle, SplitSpec};

/// Everything an execution needs from the attach.
#[derive(Clone)]
pub struct Env {
    pub session: Arc<Session>,
    /// The embedded server (split writes); `None` through a real server.
    pub server: Option<Arc<ServerHandle>>,
    pub roles: Roles,
    /// Fuzz the dispatcher under test instead of the agent.
    pub dispatcher: bool,
    pub scale: f64,
    /// Resident-memory growth (bytes) of the implementation's process that is a finding
    /// (spawn mode only).
    pub rss_limit: u64,
    pub test_profile: bool,
}

impl Env {
    pub fn target(&self) -> &str {
        &self.roles.target
    }

    fn budget(&self, ms: u64) -> Duration {
        Duration::from_secs_f64(ms as f64 * self.scale / 1000.0)
    }

    /// The harness identities, by role name.
    pub fn peers(&self) -> Vec<(&'static str, Peer)> {
        let s = &self.session;
        let mut v = vec![
            (VIA_REQUESTER, s.req.clone()),
            (VIA_STRANGER, s.stranger.clone()),
        ];
        if self.dispatcher {
            if let Some(a) = s.dispatcher.as_ref().and_then(|d| d.agents.first()) {
                v.push((VIA_DISPATCHER, a.clone()));
            }
        } else if let Some(d) = &s.dsp {
            v.push((VIA_DISPATCHER, d.clone()));
        }
        v
    }

    /// Resident set size (bytes) of the spawned implementation's process(es), found through
    /// their spawn-contract environment (`VERTEBRA_SERVER` of this attach).
    pub fn target_rss(&self) -> Option<u64> {
        if self.session.mode != Mode::Spawn {
            return None;
        }
        let want_server = format!("VERTEBRA_SERVER={}", self.session.addr);
        let want_jid = format!("VERTEBRA_JID={}", self.target());
        let mut total = 0u64;
        let mut found = false;
        for ent in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = ent.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let mut has_server = false;
            let mut has_jid = false;
            for kv in env.split(|b| *b == 0) {
                if kv == want_server.as_bytes() {
                    has_server = true;
                }
                if kv == want_jid.as_bytes() {
                    has_jid = true;
                }
            }
            if !(has_server && has_jid) {
                continue;
            }
            if let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kb) = st
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    total += kb * 1024;
                    found = true;
                }
            }
        }
        found.then_some(total)
    }
}

/// Map token segments and IQ ids into a per-execution namespace, so an execution does not
/// collide with an earlier one on the same (not restarted) implementation. Epoch 0 = as is.
fn map_segment(seg: &str, epoch: u64) -> String {
    if epoch == 0 || seg.len() < 8 || !seg.bytes().all(|b| b.is_ascii_hexdigit()) {
        return seg.to_string();
    }
    let upper = seg.bytes().any(|b| b.is_ascii_uppercase());
    let mut out = String::new();
    let mut i = 0u64;
    while out.len() < seg.len() {
        out.push_str(&format!(
            "{:016x}",
            fnv(&[seg, &epoch.to_string(), &i.to_string()])
        ));
        i += 1;
    }
    out.truncate(seg.len());
    if upper {
        out.make_ascii_uppercase();
    }
    out
}

fn map_tokens(el: &mut Element, epoch: u64) {
    if el.ns() == NS {
        if let Some(t) = el.attr("token").map(str::to_string) {
            let m: Vec<String> = t.split(':').map(|s| map_segment(s, epoch)).collect();
            crate::xmlh::set(el, "token", m.join(":"));
        }
    }
    for c in el.children_mut() {
        map_tokens(c, epoch);
    }
}

pub fn map_id(id: &str, epoch: u64) -> String {
    if epoch == 0 || id.is_empty() {
        id.to_string()
    } else {
        format!("{id}~{epoch:x}")
    }
}

fn truncate(s: String) -> String {
    if s.len() <= 8192 {
        return s;
    }
    let mut cut = 8192;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…[{} bytes]", &s[..cut], s.len())
}

/// One execution of a step sequence.
pub struct Execution<'a> {
    env: &'a Env,
    pub epoch: u64,
    pub judge: Judge,
    marks: Vec<(&'static str, Peer, usize)>,
    keymap: HashMap<u32, (String, String)>,
    pub observed: Vec<TraceEvent>,
    record: bool,
    t0: Instant,
    counter_base: Option<i64>,
    rss_base: Option<u64>,
    probe_n: u64,
    pub sent: u64,
    /// The server splits its writes to the target (a `split` step is in force).
    split: bool,
    /// Step index of the last session loss (cut, restart, stream closed after raw bytes).
    lost_at: Option<usize>,
    /// What the target did with each `raw` step: `closed` (it closed or lost the stream and
    /// came back), `kept` (it went on answering on the same stream), `stuck` (it kept the
    /// stream but answered nothing; the harness cut it).
    pub raw_outcomes: Vec<(usize, &'static str)>,
}

impl<'a> Execution<'a> {
    /// Start an execution: remember inbox positions, read the counter and the memory baseline.
    pub async fn start(env: &'a Env, epoch: u64, record: bool) -> Execution<'a> {
        Self::start_with(env, epoch, record, true).await
    }

    /// [`Execution::start`]; `counter` = read the side-effect counter's baseline (one op).
    pub async fn start_with(
        env: &'a Env,
        epoch: u64,
        record: bool,
        counter: bool,
    ) -> Execution<'a> {
        let marks = env
            .peers()
            .into_iter()
            .map(|(n, p)| {
                let m = p.mark();
                (n, p, m)
            })
            .collect();
        let mut x = Execution {
            env,
            epoch,
            judge: Judge::new(env.target()),
            marks,
            keymap: HashMap::new(),
            observed: Vec::new(),
            record,
            t0: Instant::now(),
            counter_base: None,
            rss_base: None,
            probe_n: 0,
            sent: 0,
            split: false,
            lost_at: None,
            raw_outcomes: Vec::new(),
        };
        if counter && env.test_profile && !env.dispatcher {
            x.counter_base = x.read_counter().await;
        }
        x.rss_base = env.target_rss();
        x
    }

    fn note(&mut self, via: &str, dir: Direction, data: String) {
        if self.record && self.observed.len() < 5000 {
            self.observed.push(TraceEvent {
                t_ms: (self.t0.elapsed().as_secs_f64() * 1e6).round() / 1e3,
                dir,
                via: via.to_string(),
                data: truncate(self.env.roles.canonical(&data)),
            });
        }
    }

    fn peer(&self, via: &str) -> Option<Peer> {
        self.marks
            .iter()
            .find(|(n, _, _)| *n == via)
            .map(|(_, p, _)| p.clone())
    }

    fn resolve_tokens(&self, el: &mut Element) {
        if let Some(t) = el.attr("token").map(str::to_string) {
            if t.contains("{{tok:") {
                let mut out = t.clone();
                while let Some(i) = out.find("{{tok:") {
                    let rest = &out[i + 6..];
                    let Some(j) = rest.find("}}") else { break };
                    let key: u32 = rest[..j].parse().unwrap_or(0);
                    let real = self
                        .keymap
                        .get(&key)
                        .and_then(|k| self.judge.composite.get(k))
                        .cloned()
                        .unwrap_or_else(|| format!("{}:{}", "0".repeat(32), "0".repeat(32)));
                    out = format!("{}{}{}", &out[..i], real, &rest[j + 2..]);
                }
                crate::xmlh::set(el, "token", out);
            }
        }
        for c in el.children_mut() {
            self.resolve_tokens(c);
        }
    }

    /// Read everything the harness identities received since the last look; judge it.
    pub fn collect(&mut self) {
        let mut got: Vec<(&'static str, Element)> = Vec::new();
        for (n, p, m) in self.marks.iter_mut() {
            let items = p.collect(*m, |_| true);
            *m += items.len();
            for r in items {
                got.push((*n, r.el));
            }
        }
        for (via, el) in got {
            self.judge.on_received(via, &el);
            if crate::cases::util::same_jid(el.attr("from").unwrap_or(""), self.env.target()) {
                self.note(via, Direction::Received, String::from(&el));
            }
        }
    }

    fn take_finding(&mut self) -> Option<Finding> {
        if self.judge.findings.is_empty() {
            None
        } else {
            Some(self.judge.findings.remove(0))
        }
    }

    /// Send one step; unless it is part of a burst, ping as a barrier and judge the answers.
    pub async fn step(&mut self, idx: usize, step: &Step) -> Option<Finding> {
        let t = Instant::now();
        let r = self.step_inner(idx, step).await;
        if std::env::var_os("VERTEBRA_FUZZ_DEBUG").is_some() {
            eprintln!(
                "step {idx} {:?} {} ms: {}",
                step.via,
                t.elapsed().as_millis(),
                step.note
            );
        }
        r
    }

    async fn step_inner(&mut self, idx: usize, step: &Step) -> Option<Finding> {
        self.judge.step = idx;
        let since = self.lost_at.map(|l| idx.saturating_sub(l + 1));
        self.judge.note_state(idx, self.split, since);
        let env = self.env;
        let target = env.target().to_string();
        match step.kind.as_str() {
            "cut" => {
                if let Some(f) = self.cut(idx).await {
                    return Some(f);
                }
            }
            "restart" => {
                if let Some(f) = self.restart(idx).await {
                    return Some(f);
                }
            }
            "raw" => {
                if let Some(f) = self.raw(idx, step).await {
                    return Some(f);
                }
                // The stream may have been closed and re-opened: wait for the target on its
                // new stream (pings can be swallowed by a broken one).
                self.sent += 1;
                if let Some(f) = self.barrier_patient(env.budget(10_000)).await {
                    return Some(f);
                }
                self.collect();
                return self.take_finding();
            }
            "split" => {
                if let Some(srv) = &env.server {
                    if let Ok(j) = target.parse::<jid::FullJid>() {
                        let pat = JidPattern::Full(j);
                        self.split = step.max.unwrap_or(0) > 0;
                        match step.max.unwrap_or(0) {
                            0 => srv.faults().stop_split_writes(&pat),
                            m => srv.faults().split_writes(pat, SplitSpec::Random { max: m }),
                        }
                    }
                }
                self.note("harness", Direction::Note, step.note.clone());
            }
            _ => {
                let id = step.id.as_deref().map(|i| map_id(i, self.epoch));
                let child = match &step.xml {
                    Some(x) => match env.roles.fill(x).parse::<Element>() {
                        Ok(mut el) => {
                            map_tokens(&mut el, self.epoch);
                            self.resolve_tokens(&mut el);
                            Some(el)
                        }
                        Err(e) => {
                            self.note(
                                "harness",
                                Direction::Note,
                                format!("step {idx}: XML does not parse ({e}); skipped"),
                            );
                            return None;
                        }
                    },
                    None => None,
                };
                let mut b = Element::builder(
                    if step.kind == "message" {
                        "message"
                    } else {
                        "iq"
                    },
                    NS_CLIENT,
                )
                .at(
                    "to",
                    step.to
                        .as_deref()
                        .map(|t| env.roles.fill(t))
                        .unwrap_or_else(|| target.clone()),
                );
                if step.kind != "message" {
                    b = b.at("type", step.iq_type.as_deref().unwrap_or("set"));
                }
                if let Some(i) = &id {
                    b = b.at("id", i.as_str());
                }
                if let Some(c) = child {
                    b = b.append(c);
                }
                let mut el = b.build();
                let via = if step.via == VIA_INJECT {
                    let from = env
                        .roles
                        .fill(step.from.as_deref().unwrap_or("{{requester}}"));
                    crate::xmlh::set(&mut el, "from", from.as_str());
                    // Answers to an injected stanza reach the identity it claims to be from.
                    let as_via = if from == env.roles.requester {
                        VIA_REQUESTER
                    } else if from == env.roles.stranger {
                        VIA_STRANGER
                    } else if from == env.roles.dispatcher {
                        VIA_DISPATCHER
                    } else if foreign_domain(&from, &env.roles.domain) {
                        VIA_FOREIGN
                    } else {
                        VIA_INJECT
                    };
                    let Some(inj) = &env.session.inject else {
                        self.note(
                            "harness",
                            Direction::Note,
                            format!("step {idx}: injection needs the embedded server; skipped"),
                        );
                        return None;
                    };
                    self.judge.on_sent(as_via, &el);
                    let xml = String::from(&el);
                    self.note(VIA_INJECT, Direction::Sent, xml.clone());
                    if let Err(e) = inj.inject(&target, &xml) {
                        self.note(
                            "harness",
                            Direction::Note,
                            format!("step {idx}: injection failed: {e}"),
                        );
                    }
                    as_via
                } else {
                    let Some(peer) = self.peer(&step.via) else {
                        self.note(
                            "harness",
                            Direction::Note,
                            format!(
                                "step {idx}: no identity {:?} in this attach; skipped",
                                step.via
                            ),
                        );
                        return None;
                    };
                    self.judge.on_sent(&step.via, &el);
                    self.note(&step.via, Direction::Sent, String::from(&el));
                    if let Err(e) = peer.send(el).await {
                        self.note(
                            "harness",
                            Direction::Note,
                            format!("step {idx}: not sent: {e}"),
                        );
                    }
                    VIA_REQUESTER
                };
                let _ = via;
                if let Some(i) = id {
                    let v = if step.via == VIA_INJECT {
                        let from = env.roles.fill(step.from.as_deref().unwrap_or(""));
                        if from == env.roles.requester {
                            VIA_REQUESTER.to_string()
                        } else {
                            VIA_INJECT.to_string()
                        }
                    } else {
                        step.via.clone()
                    };
                    self.keymap.insert(step.key, (v, i));
                }
            }
        }
        self.sent += 1;
        if step.burst {
            self.collect();
            return self.take_finding();
        }
        if let Some(f) = self.barrier().await {
            return Some(f);
        }
        self.collect();
        self.take_finding()
    }

    /// Ping the target (answered within the budget, or a liveness finding).
    async fn barrier(&mut self) -> Option<Finding> {
        let env = self.env;
        let ok = matches!(
            env.session.req.ping(env.target(), env.budget(3000)).await,
            Ok(true)
        );
        if ok {
            return None;
        }
        self.collect();
        if let Some(f) = self.exit_finding() {
            return Some(f);
        }
        Some(Finding {
            oracle: "liveness".into(),
            requirement: "VAP-TRN-025".into(),
            detail: format!("no answer to XEP-0199 ping within {:?}", env.budget(5000)),
            at_step: self.judge.step,
        })
    }

    /// Like [`Self::barrier`], but keeps pinging (each ping may be lost in a broken stream)
    /// until the target answers on its current or a new stream, at most `budget`.
    async fn barrier_patient(&mut self, budget: Duration) -> Option<Finding> {
        let env = self.env;
        let end = Instant::now() + budget;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let t0 = Instant::now();
            if matches!(
                env.session
                    .req
                    .ping(env.target(), left.min(Duration::from_millis(700)))
                    .await,
                Ok(true)
            ) {
                return None;
            }
            if self.exit_finding().is_some() {
                break;
            }
            // A bounce comes back at once: pace the next ping.
            if t0.elapsed() < Duration::from_millis(50) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.collect();
        if let Some(f) = self.exit_finding() {
            return Some(f);
        }
        Some(Finding {
            oracle: "liveness".into(),
            requirement: "VAP-TRN-025".into(),
            detail: format!(
                "no answer to XEP-0199 ping within {budget:?}, on the old stream or a new one"
            ),
            at_step: self.judge.step,
        })
    }

    /// Everything the server routed to the harness before now has arrived once the server
    /// answers a ping (its queues are FIFO); then judge it.
    async fn flush(&mut self) {
        let env = self.env;
        let _ = env
            .session
            .req
            .ping(&env.roles.domain, env.budget(2000))
            .await;
        self.collect();
    }

    /// Cut the target's connection at the server (embedded), then wait for it to come back.
    /// Ops in progress are lost with the session: [`Judge::session_lost`].
    async fn cut(&mut self, idx: usize) -> Option<Finding> {
        let env = self.env;
        let (Some(srv), Ok(j)) = (&env.server, env.target().parse::<jid::FullJid>()) else {
            self.note(
                "harness",
                Direction::Note,
                format!("step {idx}: cutting a connection needs the embedded server; skipped"),
            );
            return None;
        };
        self.collect();
        if let Err(e) = srv.disconnect(&j) {
            self.note(
                "harness",
                Direction::Note,
                format!("step {idx}: cannot cut the target's connection: {e}"),
            );
            return None;
        }
        self.note(
            "harness",
            Direction::Note,
            "the server cut the target's connection".into(),
        );
        let _ = srv.wait_offline(&j, env.budget(3000)).await;
        self.flush().await;
        self.judge.session_lost(false);
        self.lost_at = Some(self.judge.step);
        self.back_online(&j).await
    }

    async fn back_online(&mut self, j: &jid::FullJid) -> Option<Finding> {
        let env = self.env;
        let srv = env.server.as_ref()?;
        if srv.wait_online(j, env.budget(10_000)).await.is_ok() {
            return None;
        }
        self.collect();
        if let Some(f) = self.exit_finding() {
            return Some(f);
        }
        Some(Finding {
            oracle: "liveness".into(),
            requirement: "VAP-TRN-025".into(),
            detail: format!(
                "the target did not bind a new session within {:?} after losing its connection",
                env.budget(10_000)
            ),
            at_step: self.judge.step,
        })
    }

    /// Stop the implementation and start it again (spawn and reference modes). The new
    /// process starts from a counter of 0 and knows nothing of the old one's ops.
    async fn restart(&mut self, idx: usize) -> Option<Finding> {
        let env = self.env;
        if env.session.control.is_none() {
            self.note(
                "harness",
                Direction::Note,
                format!("step {idx}: restarting needs process control; skipped"),
            );
            return None;
        }
        self.collect();
        if let Some(f) = self.exit_finding() {
            return Some(f);
        }
        if let Err(e) = restart_bounded(env).await {
            return Some(Finding {
                oracle: "liveness".into(),
                requirement: "VAP-TPF-017".into(),
                detail: format!("the implementation did not come back after a restart: {e}"),
                at_step: self.judge.step,
            });
        }
        self.note(
            "harness",
            Direction::Note,
            "the implementation was restarted".into(),
        );
        self.flush().await;
        self.judge.session_lost(true);
        self.lost_at = Some(self.judge.step);
        if self.counter_base.is_some() {
            self.counter_base = self.read_counter().await;
        }
        self.rss_base = env.target_rss();
        None
    }

    /// Write raw bytes (possibly not well-formed XML) into the target's stream (embedded).
    /// If the target closes the stream, its ops are lost and it must come back.
    async fn raw(&mut self, idx: usize, step: &Step) -> Option<Finding> {
        let env = self.env;
        let (Some(srv), Ok(j)) = (&env.server, env.target().parse::<jid::FullJid>()) else {
            self.note(
                "harness",
                Direction::Note,
                format!("step {idx}: raw bytes need the embedded server; skipped"),
            );
            return None;
        };
        let bytes = decode_raw(&env.roles.fill(step.raw.as_deref().unwrap_or("")));
        self.collect();
        let conn0 = conn_of(srv, &j);
        self.note(
            VIA_INJECT,
            Direction::Sent,
            format!("raw bytes: {}", String::from_utf8_lossy(&bytes)),
        );
        if let Err(e) = write_raw(srv, &j, bytes) {
            self.note(
                "harness",
                Direction::Note,
                format!("step {idx}: raw write failed: {e}"),
            );
            return None;
        }
        let closed = srv.wait_offline(&j, env.budget(300)).await.is_ok();
        if !closed {
            // Still connected: either the bytes were harmless to it, or its parser waits for
            // the end of an unfinished element (later stanzas become its children). A server
            // never leaves an element unfinished, so waiting is no fault; the harness cuts
            // such a stream and requires a reconnect.
            let mut answered = false;
            for _ in 0..2 {
                if matches!(
                    env.session.req.ping(env.target(), env.budget(700)).await,
                    Ok(true)
                ) {
                    answered = true;
                    break;
                }
            }
            // A quick reconnect looks like "still online": compare connections.
            let replaced = conn0.is_some() && conn_of(srv, &j) != conn0;
            if answered && !replaced {
                self.raw_outcomes.push((idx, "kept"));
                return None;
            }
            if !answered && !replaced {
                self.raw_outcomes.push((idx, "stuck"));
                self.note(
                    "harness",
                    Direction::Note,
                    "the target kept the stream open but answers nothing on it; the server cuts it"
                        .into(),
                );
                let _ = srv.disconnect(&j);
                let _ = srv.wait_offline(&j, env.budget(3000)).await;
            }
        }
        if self.raw_outcomes.last().is_none_or(|o| o.0 != idx) {
            self.raw_outcomes.push((idx, "closed"));
        }
        self.note(
            "harness",
            Direction::Note,
            "the target's stream closed after the raw bytes".into(),
        );
        self.flush().await;
        self.judge.session_lost(false);
        self.lost_at = Some(self.judge.step);
        self.back_online(&j).await
    }

    fn exit_finding(&self) -> Option<Finding> {
        let st = self.env.session.control.as_ref()?.exited()?;
        Some(Finding {
            oracle: "process-exit".into(),
            requirement: "VAP-TRN-025".into(),
            detail: format!("the implementation's process exited: {st}"),
            at_step: self.judge.step,
        })
    }

    async fn wait_any(&self, budget: Duration) {
        let p = &self.env.session.req;
        let m = p.mark();
        let _ = p.wait(m, budget, |_| true).await;
    }

    /// Let open ops finish (bounded), then run the probes: process exit, an echo (or discover)
    /// that must complete, the side-effect counter and resident memory.
    pub async fn checkpoint(&mut self) -> Option<Finding> {
        let t = Instant::now();
        let r = self.checkpoint_inner().await;
        if std::env::var_os("VERTEBRA_FUZZ_DEBUG").is_some() {
            eprintln!(
                "checkpoint {} ms, open ops {}",
                t.elapsed().as_millis(),
                self.judge.open_ops()
            );
        }
        r
    }

    /// Only the stanza oracles: let open ops finish (at most `budget`) and judge what came.
    pub async fn settle(&mut self, budget: Duration) -> Option<Finding> {
        let end = Instant::now() + budget;
        self.collect();
        while self.judge.open_ops() > 0 && Instant::now() < end {
            self.wait_any(Duration::from_millis(20)).await;
            self.collect();
        }
        self.take_finding()
    }

    async fn checkpoint_inner(&mut self) -> Option<Finding> {
        let env = self.env;
        self.collect();
        if let Some(f) = self.take_finding() {
            return Some(f);
        }
        if let Some(f) = self.exit_finding() {
            return Some(f);
        }
        // Liveness first: a dead target never settles its open ops.
        if let Some(f) = self.barrier().await {
            return Some(f);
        }
        if let Some(f) = self.probe().await {
            return Some(f);
        }
        let end = Instant::now() + env.budget(1000);
        while self.judge.open_ops() > 0 && Instant::now() < end {
            self.wait_any(Duration::from_millis(50)).await;
            self.collect();
        }
        if let Some(f) = self.take_finding() {
            return Some(f);
        }
        {
            if let Some(base) = self.counter_base {
                if let Some(v) = self.read_counter().await {
                    let (acked, open) = self.judge.counter_model();
                    // More increments than calls that may have run is a call run twice or a
                    // refused one run ([VAP-OPS-067], [VAP-SEC-008], [VAP-SEC-021]). Fewer
                    // than the acked calls is not judged here: whether a call acked and then
                    // ended with an error counts is the conformance suite's question.
                    if v > base + acked + open {
                        return Some(Finding {
                            oracle: "counter-mismatch".into(),
                            requirement: "VAP-TPF-015".into(),
                            detail: format!(
                                "side-effect counter went from {base} to {v}, but {acked} increments were acked ({open} undecided)"
                            ),
                            at_step: self.judge.step,
                        });
                    }
                }
            }
        }
        if let (Some(base), Some(now)) = (self.rss_base, env.target_rss()) {
            if now > base + env.rss_limit {
                return Some(Finding {
                    oracle: "memory-growth".into(),
                    requirement: "VAP-TRN-006".into(),
                    detail: format!(
                        "resident memory of the implementation grew from {} MiB to {} MiB (limit +{} MiB)",
                        base >> 20,
                        now >> 20,
                        env.rss_limit >> 20
                    ),
                    at_step: self.judge.step,
                });
            }
        }
        self.collect();
        self.take_finding()
    }

    /// Call an op as the requester (harness probe, not part of the trace) and wait for its
    /// terminal. Returns the terminal element, or why there was none.
    async fn call(&mut self, op_type: &str, values: Vec<Element>) -> Result<Element, String> {
        let env = self.env;
        self.probe_n += 1;
        let p = env.session.req.clone();
        let t = format!(
            "{:032x}",
            u128::from(fnv(&[
                "probe",
                &self.epoch.to_string(),
                &self.probe_n.to_string()
            ])) << 64
                | u128::from(self.probe_n)
        );
        let mut b = Element::builder("op", NS)
            .at("version", "1.0")
            .at("token", t.as_str())
            .at("type", op_type)
            .at("timeout", "5000");
        for v in values {
            b = b.append(v);
        }
        let id = format!("probe-{}-{}", self.epoch, self.probe_n);
        self.judge.own_token(&t);
        let since = p.mark();
        p.send_iq_with_id("set", env.target(), &id, Some(b.build()))
            .await?;
        let r = p
            .wait_response(since, &id, env.budget(3000))
            .await
            .ok_or_else(|| {
                format!(
                    "no answer to the {op_type} op IQ within {:?}",
                    env.budget(3000)
                )
            })?;
        let tok =
            r.el.get_child("op", NS)
                .and_then(|o| o.attr("token"))
                .map(str::to_string)
                .ok_or_else(|| format!("the {op_type} op was refused: {}", r.xml()))?;
        let term = p
            .wait(since, env.budget(3000), |x| {
                x.iq_type() == Some("set")
                    && x.vchild().is_some_and(|c| {
                        c.attr("token") == Some(tok.as_str())
                            && matches!(c.name(), "final" | "error" | "nack")
                    })
            })
            .await
            .ok_or_else(|| {
                format!(
                    "the {op_type} op got no terminal stanza within {:?}",
                    env.budget(3000)
                )
            })?;
        let term_el = term.vchild().cloned().unwrap_or(term.el.clone());
        // The data chunk (if any) carries the values.
        let data = p.collect(since, |x| {
            x.iq_type() == Some("set")
                && x.vchild()
                    .is_some_and(|c| c.attr("token") == Some(tok.as_str()) && c.name() == "data")
        });
        Ok(data
            .first()
            .and_then(|d| d.vchild().cloned())
            .unwrap_or(term_el))
    }

    async fn probe(&mut self) -> Option<Finding> {
        let env = self.env;
        let r = if env.dispatcher {
            self.call(
                "/security/discover",
                vec![Element::builder("res", NS)
                    .at("name", "operation")
                    .append("/fuzz/probe")
                    .build()],
            )
            .await
            .map(|_| ())
        } else if env.test_profile {
            self.call(
                "/vertebra/test/echo",
                vec![Element::builder("string", NS)
                    .at("name", "probe")
                    .append("alive")
                    .build()],
            )
            .await
            .map(|_| ())
        } else {
            Ok(())
        };
        self.collect();
        match r {
            Ok(()) => None,
            Err(e) => {
                if let Some(f) = self.exit_finding() {
                    return Some(f);
                }
                Some(Finding {
                    oracle: "liveness".into(),
                    requirement: "VAP-TRN-006".into(),
                    detail: format!("the target answers ping but no longer serves operations: {e}"),
                    at_step: self.judge.step,
                })
            }
        }
    }

    async fn read_counter(&mut self) -> Option<i64> {
        let el = self
            .call(
                "/vertebra/test/counter",
                vec![Element::builder("boolean", NS)
                    .at("name", "read")
                    .append("1")
                    .build()],
            )
            .await
            .ok()?;
        el.children()
            .find(|c| c.attr("name") == Some("value"))
            .and_then(|c| c.text().trim().parse().ok())
    }
}

/// Restart the implementation, at most 60 s (scaled): a restart that never completes (an
/// in-process agent whose shutdown hangs) is an error, not a hang of the fuzzer.
pub async fn restart_bounded(env: &Env) -> Result<(), String> {
    let Some(c) = env.session.control.clone() else {
        return Err("no process control in this attach mode".into());
    };
    let budget = env.budget(60_000);
    match tokio::time::timeout(budget, c.restart()).await {
        Ok(r) => r,
        Err(_) => Err(format!("the restart did not complete within {budget:?}")),
    }
}

/// Is `from` a JID of another XMPP domain than `domain` (per the JID library's normalization)?
pub fn foreign_domain(from: &str, domain: &str) -> bool {
    match (from.parse::<jid::Jid>(), domain.parse::<jid::BareJid>()) {
        (Ok(j), Ok(d)) => j.domain() != d.domain(),
        _ => false,
    }
}

/// The connection the session `j` last read or wrote on (server trace).
fn conn_of(srv: &ServerHandle, j: &jid::FullJid) -> Option<u64> {
    let want = jid::Jid::from(j.clone());
    srv.trace()
        .snapshot()
        .iter()
        .rev()
        .find(|e| e.jid.as_ref() == Some(&want))
        .map(|e| e.conn)
}

/// Bytes of a `raw` step: the text, with `{{x:HH}}` standing for the byte 0xHH.
pub fn decode_raw(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("{{x:") {
        out.extend_from_slice(&rest.as_bytes()[..i]);
        let tail = &rest[i + 4..];
        match tail
            .get(..2)
            .filter(|_| tail.get(2..4) == Some("}}"))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            Some(b) => {
                out.push(b);
                rest = &tail[4..];
            }
            None => {
                out.extend_from_slice(b"{{x:");
                rest = tail;
            }
        }
    }
    out.extend_from_slice(rest.as_bytes());
    out
}

/// The embedded server's raw-bytes hook.
fn write_raw(srv: &ServerHandle, to: &jid::FullJid, bytes: Vec<u8>) -> Result<(), String> {
    srv.inject_raw(to, bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_rename_tokens_and_ids_consistently() {
        let a = map_segment("0123456789abcdef0123456789abcdef", 3);
        assert_eq!(a, map_segment("0123456789abcdef0123456789abcdef", 3));
        assert_ne!(a, map_segment("0123456789abcdef0123456789abcdef", 4));
        assert_eq!(a.len(), 32);
        assert_eq!(
            map_segment("ABCDEF0123456789", 2).to_uppercase(),
            map_segment("ABCDEF0123456789", 2)
        );
        assert_eq!(map_segment("zz", 2), "zz");
        assert_eq!(map_segment("0123456789abcdef", 0), "0123456789abcdef");
        assert_eq!(map_id("f1", 0), "f1");
        assert_eq!(map_id("f1", 10), "f1~a");
    }

    #[test]
    fn raw_bytes_and_domains() {
        assert_eq!(decode_raw("<a{{x:ff}}>{{x:0}}"), b"<a\xff>{{x:0}}".to_vec());
        assert_eq!(decode_raw("{{x:c3}}{{x:28}}"), vec![0xc3, 0x28]);
        assert!(foreign_domain("m@elsewhere.example/x", "localhost"));
        assert!(!foreign_domain("REQUESTER@LOCALHOST/x", "localhost"));
        assert!(!foreign_domain("not a jid@@", "localhost"));
    }
}
