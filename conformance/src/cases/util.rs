//! Building blocks for cases: op construction, observing an op's lifecycle, value helpers.

use crate::case::{Abort, Ctx};
use crate::peer::{random_hex, Peer, Rx, NS, NS_CLIENT, NS_STANZAS};
use crate::xmlh::AttrExt;
use minidom::Element;
use std::time::{Duration, Instant};

pub const TEST: &str = "/vertebra/test";
pub const F_TEST: &str = "urn:vertebra:1.0:test-profile";
pub const F_CANCEL: &str = "urn:vertebra:1.0:cancel";
pub const F_LOAD: &str = "urn:vertebra:1.0:load";
pub const F_DISPATCHER: &str = "urn:vertebra:1.0:dispatcher";

/// A typed value element `<kind name="name">text</kind>`.
pub fn v(kind: &str, name: &str, text: &str) -> Element {
    let mut b = Element::builder(kind, NS);
    if !name.is_empty() {
        b = b.at("name", name);
    }
    if !text.is_empty() {
        b = b.append(text);
    }
    b.build()
}

/// A container value with children.
pub fn vc(kind: &str, name: &str, children: Vec<Element>) -> Element {
    let mut b = Element::builder(kind, NS);
    if !name.is_empty() {
        b = b.at("name", name);
    }
    for c in children {
        b = b.append(c);
    }
    b.build()
}

pub fn i4(name: &str, n: i64) -> Element {
    v("i4", name, &n.to_string())
}

/// A 1.0 op element with a fresh token; returns (element, token T).
pub fn op(kind: &str, timeout_ms: u64, values: Vec<Element>) -> (Element, String) {
    let t = random_hex();
    let mut b = Element::builder("op", NS)
        .at("version", "1.0")
        .at("token", t.as_str())
        .at("type", kind)
        .at("timeout", timeout_ms.to_string());
    for x in values {
        b = b.append(x);
    }
    (b.build(), t)
}

/// Replace (or add) an attribute on an element.
pub fn with_attr(mut el: Element, name: &str, value: Option<&str>) -> Element {
    match value {
        Some(val) => crate::xmlh::set(&mut el, name, val),
        None => crate::xmlh::unset(&mut el, name),
    }
    el
}

/// An op sent by a peer.
#[derive(Debug, Clone)]
pub struct Call {
    pub to: String,
    pub id: String,
    pub t: String,
    pub since: usize,
    pub sent_at: Instant,
    pub op: Element,
}

/// Send `op` to `to` as an IQ set (fresh id unless given).
pub async fn send_op(
    peer: &Peer,
    to: &str,
    op: Element,
    t: &str,
    id: Option<&str>,
) -> Result<Call, Abort> {
    let since = peer.mark();
    let id = match id {
        Some(i) => i.to_string(),
        None => peer.next_id(),
    };
    let sent_at = Instant::now();
    peer.send_iq_with_id("set", to, &id, Some(op.clone()))
        .await
        .map_err(Abort::error)?;
    Ok(Call {
        to: to.to_string(),
        id,
        t: t.to_string(),
        since,
        sent_at,
        op,
    })
}

/// What happened to an op, as seen by the requester.
#[derive(Debug, Clone, Default)]
pub struct Obs {
    /// The IQ result or error answering the op IQ.
    pub op_resp: Option<Rx>,
    /// Composite token from the op result.
    pub token: Option<String>,
    /// `ack="true"` on the op result.
    pub fast_ack: bool,
    /// Vertebra IQ sets from the responder for this op, in arrival order (up to and
    /// including the terminal).
    pub stanzas: Vec<Rx>,
    pub terminal: Option<Rx>,
    /// Vertebra IQ sets for this op that arrived after the terminal (up to the barrier).
    pub after: Vec<Rx>,
}

impl Obs {
    pub fn op_iq_type(&self) -> Option<&str> {
        self.op_resp.as_ref().and_then(|r| r.iq_type())
    }
    pub fn kinds(&self) -> Vec<String> {
        self.stanzas
            .iter()
            .filter_map(|r| r.vchild().map(|c| c.name().to_string()))
            .collect()
    }
    pub fn data(&self) -> Vec<&Element> {
        self.stanzas
            .iter()
            .filter_map(|r| r.vchild())
            .filter(|c| c.name() == "data")
            .collect()
    }
    /// Value chunks: every data element, plus a final that carries values (fast path).
    pub fn chunks(&self) -> Vec<&Element> {
        self.stanzas
            .iter()
            .filter_map(|r| r.vchild())
            .filter(|c| {
                c.name() == "data" || (c.name() == "final" && c.children().next().is_some())
            })
            .collect()
    }
    pub fn term(&self) -> Option<&Element> {
        self.terminal.as_ref().and_then(|r| r.vchild())
    }
    pub fn term_name(&self) -> String {
        self.term()
            .map(|t| t.name().to_string())
            .unwrap_or_else(|| "none".into())
    }
    /// (type, condition) of a terminal error.
    pub fn error(&self) -> Option<(String, String)> {
        self.term().filter(|t| t.name() == "error").map(|t| {
            (
                t.attr("type").unwrap_or("").to_string(),
                t.attr("condition").unwrap_or("").to_string(),
            )
        })
    }
    pub fn nack_reason(&self) -> Option<String> {
        self.term()
            .filter(|t| t.name() == "nack")
            .map(|t| t.attr("reason").unwrap_or("").to_string())
    }
    /// A short human description of the lifecycle.
    pub fn describe(&self) -> String {
        let mut s = match &self.op_resp {
            None => "no answer to the op IQ".to_string(),
            Some(r) if r.iq_type() == Some("error") => format!(
                "op IQ error ({})",
                iq_error_condition(r).unwrap_or_default()
            ),
            Some(_) => format!(
                "op result token={}",
                self.token.clone().unwrap_or_else(|| "(none)".into())
            ),
        };
        if self.fast_ack {
            s.push_str(" ack=true");
        }
        for r in &self.stanzas {
            if let Some(c) = r.vchild() {
                s.push_str(", ");
                s.push_str(c.name());
                for a in ["seq", "count", "type", "condition", "reason"] {
                    if let Some(v) = c.attr(a) {
                        s.push_str(&format!(" {a}={v}"));
                    }
                }
            }
        }
        if !self.after.is_empty() {
            s.push_str(&format!(
                ", then after the terminal: {}",
                self.after
                    .iter()
                    .filter_map(|r| r.vchild().map(|c| c.name().to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        s
    }
}

/// The defined condition of an IQ error stanza.
pub fn iq_error_condition(r: &Rx) -> Option<String> {
    let e = r.el.get_child("error", NS_CLIENT)?;
    e.children()
        .find(|c| c.ns() == NS_STANZAS && c.name() != "text")
        .map(|c| c.name().to_string())
}

pub fn iq_error_type(r: &Rx) -> Option<String> {
    r.el.get_child("error", NS_CLIENT)?
        .attr("type")
        .map(str::to_string)
}

/// Is `r` a Vertebra IQ set from `from` belonging to the op (composite token, or T prefix)?
fn belongs(r: &Rx, from: &str, t: &str, token: Option<&str>) -> bool {
    if r.iq_type() != Some("set") || !same_jid(r.from().unwrap_or(""), from) {
        return false;
    }
    let Some(c) = r.vchild() else { return false };
    if c.name() == "op" {
        return false;
    }
    let tok = c.attr("token").unwrap_or("");
    match token {
        Some(k) => tok == k,
        None => tok.starts_with(&format!("{t}:")),
    }
}

pub fn same_jid(a: &str, b: &str) -> bool {
    match (a.parse::<jid::Jid>(), b.parse::<jid::Jid>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

pub fn is_terminal(name: &str) -> bool {
    matches!(name, "nack" | "final" | "error")
}

/// Wait for the op response and then the op's stanzas until a terminal (or `budget` passes).
/// With `barrier`, afterwards ping the responder and collect anything for the op that arrived
/// after the terminal before the ping answer (plus a short grace).
pub async fn observe(cx: &Ctx, peer: &Peer, call: &Call, budget: Duration, barrier: bool) -> Obs {
    let end = tokio::time::Instant::now() + budget;
    let mut obs = Obs::default();
    let left = || end.saturating_duration_since(tokio::time::Instant::now());
    obs.op_resp = peer.wait_response(call.since, &call.id, left()).await;
    if let Some(r) = &obs.op_resp {
        if r.iq_type() == Some("result") {
            if let Some(o) = r.el.get_child("op", NS) {
                obs.token = o.attr("token").map(str::to_string);
                obs.fast_ack = o.attr("ack") == Some("true");
            }
        } else {
            return obs;
        }
    } else {
        return obs;
    }
    let token = obs.token.clone();
    let (to, t) = (call.to.clone(), call.t.clone());
    let pred = |r: &Rx| belongs(r, &to, &t, token.as_deref());
    let term = peer
        .wait(call.since, left(), |r| {
            pred(r) && r.vchild().is_some_and(|c| is_terminal(c.name()))
        })
        .await;
    let all = peer.collect(call.since, pred);
    match &term {
        Some(tr) => {
            let pos = all
                .iter()
                .position(|r| r.at == tr.at && r.el == tr.el)
                .unwrap_or(all.len());
            obs.stanzas = all[..(pos + 1).min(all.len())].to_vec();
            obs.terminal = Some(tr.clone());
        }
        None => obs.stanzas = all,
    }
    if barrier && obs.terminal.is_some() {
        let _ = peer.ping(&call.to, cx.budget(1000)).await;
        grace(cx).await;
        let all = peer.collect(call.since, |r| {
            belongs(r, &call.to, &call.t, obs.token.as_deref())
        });
        obs.after = all.into_iter().skip(obs.stanzas.len()).collect();
    }
    obs
}

/// A short grace period for absence checks after a barrier (scaled).
pub async fn grace(cx: &Ctx) {
    tokio::time::sleep(cx.budget(60)).await;
}

/// Call an op on the agent under test as the authorized requester and observe it.
pub async fn call(
    cx: &Ctx,
    kind: &str,
    timeout_ms: u64,
    values: Vec<Element>,
    budget_ms: u64,
) -> Result<(Call, Obs), Abort> {
    let agent = agent(cx)?;
    let (el, t) = op(kind, timeout_ms, values);
    let c = send_op(cx.req(), &agent, el, &t, None).await?;
    let o = observe(cx, cx.req(), &c, cx.budget(budget_ms), false).await;
    Ok((c, o))
}

/// Like `call` but with the barrier for after-terminal absence.
pub async fn call_b(
    cx: &Ctx,
    kind: &str,
    timeout_ms: u64,
    values: Vec<Element>,
    budget_ms: u64,
) -> Result<(Call, Obs), Abort> {
    let agent = agent(cx)?;
    let (el, t) = op(kind, timeout_ms, values);
    let c = send_op(cx.req(), &agent, el, &t, None).await?;
    let o = observe(cx, cx.req(), &c, cx.budget(budget_ms), true).await;
    Ok((c, o))
}

pub fn agent(cx: &Ctx) -> Result<String, Abort> {
    cx.session
        .agent
        .clone()
        .ok_or_else(|| Abort::error("no agent attached"))
}

pub fn dsp(cx: &Ctx) -> Result<Peer, Abort> {
    cx.session.dsp.clone().ok_or_else(|| {
        Abort::untestable("the harness does not play the agent's dispatcher in this mode")
    })
}

/// The first named child value of `el`.
pub fn named<'a>(el: &'a Element, name: &str) -> Option<&'a Element> {
    el.children().find(|c| c.attr("name") == Some(name))
}

/// Canonical text of a value tree for comparisons: kind, name and text, children in order.
pub fn canon(el: &Element) -> String {
    let mut s = format!("<{}", el.name());
    if let Some(n) = el.attr("name") {
        s.push_str(&format!(" name={n:?}"));
    }
    s.push('>');
    let kids: Vec<&Element> = el.children().collect();
    if kids.is_empty() {
        s.push_str(&format!("{:?}", el.text()));
    } else {
        for k in kids {
            s.push_str(&canon(k));
        }
    }
    s.push_str("</>");
    s
}

/// Canonical form of a set of named values, sorted by name (order is not significant).
pub fn canon_set<'a>(els: impl Iterator<Item = &'a Element>) -> String {
    let mut v: Vec<String> = els.map(canon).collect();
    v.sort();
    v.join("")
}

/// Is `s` 32 lowercase hex characters?
pub fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Split a composite token into (X, S).
pub fn split_token(tok: &str) -> Option<(&str, &str)> {
    let mut it = tok.split(':');
    let x = it.next()?;
    let s = it.next()?;
    if it.next().is_some() {
        return None;
    }
    Some((x, s))
}

/// Does text look like it leaks internals (backtrace, source path, host path, env var)?
pub fn leaks_internals(text: &str) -> Option<&'static str> {
    let t = text.to_ascii_lowercase();
    let pats: &[(&str, &'static str)] = &[
        ("backtrace", "a backtrace"),
        ("stack backtrace", "a backtrace"),
        ("panicked at", "a panic message"),
        (".rs:", "a source file path"),
        (".py\"", "a source file path"),
        (".py:", "a source file path"),
        ("traceback (most recent call last)", "a Python traceback"),
        ("/home/", "a host-local path"),
        ("/usr/", "a host-local path"),
        ("/tmp/", "a host-local path"),
        ("/root/", "a host-local path"),
        ("c:\\", "a host-local path"),
        ("at src/", "a source file path"),
        ("$home", "an environment variable"),
        ("password", "a credential"),
    ];
    pats.iter().find(|(p, _)| t.contains(p)).map(|(_, w)| *w)
}

/// Send an IQ result by hand (for cases that hold results).
pub async fn answer(peer: &Peer, r: &Rx) -> Result<(), Abort> {
    peer.send(crate::peer::iq_result_for(&r.el, None))
        .await
        .map_err(Abort::error)
}

/// The reason text of an error terminal.
pub fn reason_text(term: &Element) -> Option<String> {
    term.children()
        .find(|c| c.name() == "string" && c.attr("name") == Some("reason"))
        .map(|c| c.text())
}

/// Raw injection (embedded mode only) or UNTESTABLE... the case decides.
pub fn injector(cx: &Ctx) -> Option<std::sync::Arc<dyn crate::session::Injector>> {
    cx.session.inject.clone()
}
