//! A harness identity on the XMPP bus: one tokio-xmpp c2s connection owned by one task, with
//! an inbox of everything received (timestamped, traced) and a few automatic behaviours
//! (ping and disco answers, IQ results for Vertebra IQ sets, the dispatcher role).

use crate::trace::{Direction, Trace};
use crate::xmlh::AttrExt;
use futures::StreamExt;
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_xmpp::stanzastream::{Event as StreamEvent_, StanzaStream, StreamEvent};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::stanza::Stanza;

/// The Vertebra namespace.
pub const NS: &str = "http://xmlschema.engineyard.com/agent/api";
pub const NS_CLIENT: &str = "jabber:client";
pub const NS_PING: &str = "urn:xmpp:ping";
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// One received stanza.
#[derive(Debug, Clone)]
pub struct Rx {
    pub at: Instant,
    pub el: Element,
}

impl Rx {
    pub fn name(&self) -> &str {
        self.el.name()
    }
    pub fn attr<'a>(&'a self, a: &'a str) -> Option<&'a str> {
        self.el.attr(a)
    }
    pub fn iq_type(&self) -> Option<&str> {
        if self.el.name() == "iq" {
            self.el.attr("type")
        } else {
            None
        }
    }
    /// The single Vertebra child of an IQ (or `<load>` of a presence).
    pub fn vchild(&self) -> Option<&Element> {
        self.el.children().find(|c| c.ns() == NS)
    }
    pub fn from(&self) -> Option<&str> {
        self.el.attr("from")
    }
    pub fn xml(&self) -> String {
        String::from(&self.el)
    }
}

/// Authorization decision the harness (as dispatcher) gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    Allow,
    Deny,
    /// Never answer the authorize op (the agent must deny after its own timeout).
    Silent,
}

/// A recorded `/security/authorize` request.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    pub at: Instant,
    pub requester: String,
    pub responder: String,
    pub operation: String,
}

/// A recorded `/security/advertise` request.
#[derive(Debug, Clone)]
pub struct Advert {
    pub at: Instant,
    pub from: String,
    pub operations: Vec<String>,
    pub ttl: Option<i64>,
    pub raw: Element,
}

/// A recorded load presence (available with `<load>`, or unavailable).
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub at: Instant,
    pub from: String,
    pub to: String,
    pub unavailable: bool,
    pub value: Option<String>,
    pub interval: Option<String>,
    pub inflight: Option<String>,
    pub capacity: Option<String>,
}

/// Mutable behaviour of a peer, changed by cases.
#[derive(Debug)]
pub struct Behaviour {
    /// Answer Vertebra IQ sets (ack/data/final/error/nack) with an IQ result automatically.
    pub auto_result: bool,
    /// Play the dispatcher: answer `/security/*` ops.
    pub dispatcher: bool,
    /// Per-requester (full JID string) authorization policy; default applies otherwise.
    pub auth: HashMap<String, AuthPolicy>,
    pub default_auth: AuthPolicy,
    /// Cache TTL (seconds) returned with authorization answers.
    pub auth_ttl: i32,
    /// Put an extra foreign child into every IQ result answering a Vertebra IQ set (and next
    /// to `<op>` in op results), which receivers must ignore [VAP-TRN-009].
    pub result_junk: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            auto_result: true,
            dispatcher: false,
            auth: HashMap::new(),
            default_auth: AuthPolicy::Deny,
            auth_ttl: 0,
            result_junk: false,
        }
    }
}

struct Shared {
    inbox: Mutex<Vec<Rx>>,
    notify: Notify,
    behaviour: Mutex<Behaviour>,
    auths: Mutex<Vec<AuthRequest>>,
    adverts: Mutex<Vec<Advert>>,
    loads: Mutex<Vec<LoadReport>>,
    connected: Mutex<bool>,
    counter: Mutex<u64>,
    failures: Mutex<Vec<String>>,
}

enum Cmd {
    Send(Element, oneshot::Sender<Result<(), String>>),
    Close(oneshot::Sender<()>),
}

/// A harness identity connected to the bus.
#[derive(Clone)]
pub struct Peer {
    pub name: String,
    pub jid: FullJid,
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    trace: Trace,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// 32 lowercase hex characters from the OS CSPRNG.
pub fn random_hex() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("OS random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Peer {
    /// Log in as `jid` at `addr` (plaintext c2s) and wait until online, at most `deadline`.
    pub async fn connect(
        name: &str,
        addr: &str,
        jid: FullJid,
        password: &str,
        trace: Trace,
        deadline: Duration,
    ) -> Result<Peer, String> {
        // The stanza stream directly (not `Client`): sending only enqueues, so a burst of
        // incoming stanzas can never dead-lock against an outgoing one; deep queues both ways.
        let mut client = StanzaStream::new_c2s(
            NoDelayConnector(addr.to_string()),
            Jid::from(jid.clone()),
            password.to_string(),
            tokio_xmpp::xmlstream::Timeouts::tight(),
            4096,
        );
        let bound = tokio::time::timeout(deadline, async {
            while let Some(ev) = client.next().await {
                if let StreamEvent_::Stream(StreamEvent::Reset { bound_jid, .. }) = ev {
                    return Some(bound_jid);
                }
            }
            None
        })
        .await
        .map_err(|_| {
            format!(
                "{name}: could not log in as {jid} at {addr} within {:?} (server down or bad credentials)",
                deadline
            )
        })?
        .ok_or_else(|| format!("{name}: connection closed before login"))?;
        let jid = bound.try_into_full().unwrap_or(jid);
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Vec::new()),
            notify: Notify::new(),
            behaviour: Mutex::new(Behaviour::default()),
            auths: Mutex::new(Vec::new()),
            adverts: Mutex::new(Vec::new()),
            loads: Mutex::new(Vec::new()),
            connected: Mutex::new(true),
            counter: Mutex::new(0),
            failures: Mutex::new(Vec::new()),
        });
        // Initial presence: the server then treats this identity as available (presence to
        // a bare JID reaches it) [RFC 6121].
        let _ = tokio::time::timeout(
            deadline,
            client.send(Box::new(Stanza::Presence(
                xmpp_parsers::presence::Presence::available(),
            ))),
        )
        .await;
        let (tx, rx) = mpsc::channel(256);
        let peer = Peer {
            name: name.to_string(),
            jid,
            tx,
            shared,
            trace,
        };
        tokio::spawn(peer.clone().run(client, rx));
        Ok(peer)
    }

    async fn run(self, mut client: StanzaStream, mut rx: mpsc::Receiver<Cmd>) {
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Send(el, done)) => {
                        let r = match Stanza::try_from(el) {
                            Ok(st) => {
                                // Enqueue only; the stream's own task writes it.
                                let _token = client.send(Box::new(st)).await;
                                Ok(())
                            }
                            Err(e) => Err(format!("not a stanza: {e:?}")),
                        };
                        let _ = done.send(r);
                    }
                    Some(Cmd::Close(done)) => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
                        *lock(&self.shared.connected) = false;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
                        return;
                    }
                },
                ev = client.next() => match ev {
                    Some(StreamEvent_::Stanza(st)) => {
                        let el = Element::from(st);
                        self.on_stanza(el);
                    }
                    Some(StreamEvent_::Stream(StreamEvent::Reset { .. })) => {
                        *lock(&self.shared.connected) = true;
                        self.trace.note(format!("{}: (re)connected", self.name));
                    }
                    Some(StreamEvent_::Stream(other)) => {
                        self.trace.note(format!("{}: stream event {other:?}", self.name));
                    }
                    None => {
                        *lock(&self.shared.connected) = false;
                        return;
                    }
                }
            }
        }
    }

    fn on_stanza(&self, el: Element) {
        self.trace
            .push(Direction::Received, &self.name, String::from(&el));
        let now = Instant::now();
        // Automatic behaviours first (they only send; the stanza is still recorded).
        if el.name() == "iq" {
            let ty = el.attr("type").unwrap_or("");
            let child = el.children().next().cloned();
            if ty == "get" {
                if let Some(c) = &child {
                    if c.is("ping", NS_PING) {
                        self.spawn_send(iq_result_for(&el, None));
                    } else if c.is("query", NS_DISCO_INFO) {
                        self.spawn_send(iq_result_for(&el, Some(self.disco_info())));
                    }
                }
            } else if ty == "set" {
                if let Some(c) = &child {
                    if c.ns() == NS {
                        let dispatcher = lock(&self.shared.behaviour).dispatcher;
                        if c.name() == "op" && dispatcher {
                            let me = self.clone();
                            let el2 = el.clone();
                            tokio::spawn(async move { me.serve_dispatcher_op(el2).await });
                        } else if c.name() != "op" && lock(&self.shared.behaviour).auto_result {
                            let mut r = iq_result_for(&el, None);
                            if lock(&self.shared.behaviour).result_junk {
                                r.append_child(junk());
                            }
                            self.spawn_send(r);
                        }
                    }
                }
            }
        } else if el.name() == "presence" {
            let load = el.get_child("load", NS);
            let unavailable = el.attr("type") == Some("unavailable");
            if load.is_some() || unavailable {
                lock(&self.shared.loads).push(LoadReport {
                    at: now,
                    from: el.attr("from").unwrap_or("").to_string(),
                    to: el.attr("to").unwrap_or("").to_string(),
                    unavailable,
                    value: load.and_then(|l| l.attr("value")).map(str::to_string),
                    interval: load.and_then(|l| l.attr("interval")).map(str::to_string),
                    inflight: load.and_then(|l| l.attr("inflight")).map(str::to_string),
                    capacity: load.and_then(|l| l.attr("capacity")).map(str::to_string),
                });
            }
        }
        lock(&self.shared.inbox).push(Rx { at: now, el });
        self.shared.notify.notify_waiters();
    }

    fn disco_info(&self) -> Element {
        let dispatcher = lock(&self.shared.behaviour).dispatcher;
        let mut q = Element::builder("query", NS_DISCO_INFO)
            .append(
                Element::builder("identity", NS_DISCO_INFO)
                    .at("category", "automation")
                    .at(
                        "type",
                        if dispatcher {
                            "vertebra-dispatcher"
                        } else {
                            "vertebra-agent"
                        },
                    )
                    .build(),
            )
            .append(feature("urn:vertebra:1.0"))
            .append(feature(NS_PING))
            .append(feature(NS_DISCO_INFO));
        if dispatcher {
            q = q.append(feature("urn:vertebra:1.0:dispatcher"));
        }
        q.build()
    }

    fn spawn_send(&self, el: Element) {
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.send(el).await;
        });
    }

    /// Send a stanza (the `jabber:client` namespace is applied when missing).
    pub async fn send(&self, el: Element) -> Result<(), String> {
        self.trace
            .push(Direction::Sent, &self.name, String::from(&el));
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Send(el, tx))
            .await
            .map_err(|_| format!("{}: connection task gone", self.name))?;
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(format!("{}: connection task gone", self.name)),
            Err(_) => Err(format!("{}: send did not complete in 10 s", self.name)),
        }
    }

    /// A fresh IQ id.
    pub fn next_id(&self) -> String {
        let mut c = lock(&self.shared.counter);
        *c += 1;
        format!("h{}-{}", *c, &random_hex()[..8])
    }

    /// Send an IQ of `ty` to `to` with `payload`; returns the id.
    pub async fn send_iq(
        &self,
        ty: &str,
        to: &str,
        payload: Option<Element>,
    ) -> Result<String, String> {
        let id = self.next_id();
        self.send_iq_with_id(ty, to, &id, payload).await?;
        Ok(id)
    }

    pub async fn send_iq_with_id(
        &self,
        ty: &str,
        to: &str,
        id: &str,
        payload: Option<Element>,
    ) -> Result<(), String> {
        let mut b = Element::builder("iq", NS_CLIENT)
            .at("type", ty)
            .at("id", id)
            .at("to", to);
        if let Some(p) = payload {
            b = b.append(p);
        }
        self.send(b.build()).await
    }

    /// Inbox position (for `wait` / `collect`).
    pub fn mark(&self) -> usize {
        lock(&self.shared.inbox).len()
    }

    /// All stanzas received at or after `since` matching `pred`.
    pub fn collect(&self, since: usize, pred: impl Fn(&Rx) -> bool) -> Vec<Rx> {
        lock(&self.shared.inbox)
            .iter()
            .skip(since)
            .filter(|r| pred(r))
            .cloned()
            .collect()
    }

    /// Wait for the first stanza at or after `since` matching `pred`, at most `budget`.
    pub async fn wait(
        &self,
        since: usize,
        budget: Duration,
        pred: impl Fn(&Rx) -> bool,
    ) -> Option<Rx> {
        let end = tokio::time::Instant::now() + budget;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = lock(&self.shared.inbox)
                .iter()
                .skip(since)
                .find(|r| pred(r))
            {
                return Some(r.clone());
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Wait for the IQ response (result or error) to `id` from anyone.
    pub async fn wait_response(&self, since: usize, id: &str, budget: Duration) -> Option<Rx> {
        self.wait(since, budget, |r| {
            r.name() == "iq"
                && matches!(r.iq_type(), Some("result") | Some("error"))
                && r.attr("id") == Some(id)
        })
        .await
    }

    /// XEP-0199 ping `to`; true when answered with a result within `budget`.
    pub async fn ping(&self, to: &str, budget: Duration) -> Result<bool, String> {
        let since = self.mark();
        let id = self
            .send_iq("get", to, Some(Element::builder("ping", NS_PING).build()))
            .await?;
        Ok(matches!(
            self.wait_response(since, &id, budget).await,
            Some(r) if r.iq_type() == Some("result")
        ))
    }

    pub fn behaviour<R>(&self, f: impl FnOnce(&mut Behaviour) -> R) -> R {
        f(&mut lock(&self.shared.behaviour))
    }

    pub fn connected(&self) -> bool {
        *lock(&self.shared.connected)
    }

    pub fn auths(&self) -> Vec<AuthRequest> {
        lock(&self.shared.auths).clone()
    }
    pub fn adverts(&self) -> Vec<Advert> {
        lock(&self.shared.adverts).clone()
    }
    pub fn loads(&self) -> Vec<LoadReport> {
        lock(&self.shared.loads).clone()
    }

    /// Wait until a load report satisfying `pred` has been recorded after `since` (an
    /// `Instant`), at most `budget`.
    pub async fn wait_load(
        &self,
        after: Instant,
        budget: Duration,
        pred: impl Fn(&LoadReport) -> bool,
    ) -> Option<LoadReport> {
        let end = tokio::time::Instant::now() + budget;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(l) = lock(&self.shared.loads)
                .iter()
                .find(|l| l.at >= after && pred(l))
            {
                return Some(l.clone());
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return None;
            }
        }
    }

    pub async fn wait_advert(&self, after: Instant, budget: Duration) -> Option<Advert> {
        let end = tokio::time::Instant::now() + budget;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(a) = lock(&self.shared.adverts).iter().find(|a| a.at >= after) {
                return Some(a.clone());
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return None;
            }
        }
    }

    pub async fn wait_auth(&self, after: Instant, budget: Duration) -> Option<AuthRequest> {
        let end = tokio::time::Instant::now() + budget;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(a) = lock(&self.shared.auths).iter().find(|a| a.at >= after) {
                return Some(a.clone());
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Close the connection (the server then sends unavailable presence for it).
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
        }
    }

    /// Send a directed available presence to `to` (so the server tells `to` when we leave).
    pub async fn presence_to(&self, to: &str, child: Option<Element>) -> Result<(), String> {
        let mut b = Element::builder("presence", NS_CLIENT).at("to", to);
        if let Some(c) = child {
            b = b.append(c);
        }
        self.send(b.build()).await
    }

    /// Play the responder side of one dispatcher op (`/security/*`).
    async fn serve_dispatcher_op(&self, iq: Element) {
        let Some(op) = iq.get_child("op", NS) else {
            return;
        };
        let from = iq.attr("from").unwrap_or("").to_string();
        let token_in = op.attr("token").unwrap_or("").to_string();
        let x = token_in.rsplit(':').next().unwrap_or("").to_string();
        let tok = format!("{x}:{}", random_hex());
        let op_type = op.attr("type").unwrap_or("").to_string();
        let result = Element::builder("op", NS).at("token", tok.as_str()).build();
        let mut answer = iq_result_for(&iq, Some(result));
        if lock(&self.shared.behaviour).result_junk {
            answer.append_child(junk());
        }
        if self.send(answer).await.is_err() {
            return;
        }
        let values: Vec<Element> = match op_type.as_str() {
            "/security/authorize" => {
                let get = |n: &str| {
                    op.children()
                        .find(|c| c.attr("name") == Some(n))
                        .map(|c| c.text())
                        .unwrap_or_default()
                };
                let req = AuthRequest {
                    at: Instant::now(),
                    requester: get("from"),
                    responder: get("to"),
                    operation: get("operation"),
                };
                let (policy, ttl) = {
                    let b = lock(&self.shared.behaviour);
                    (
                        b.auth
                            .get(&req.requester)
                            .copied()
                            .unwrap_or(b.default_auth),
                        b.auth_ttl,
                    )
                };
                lock(&self.shared.auths).push(req);
                self.shared.notify.notify_waiters();
                match policy {
                    AuthPolicy::Silent => return,
                    AuthPolicy::Allow | AuthPolicy::Deny => vec![
                        Element::builder("string", NS)
                            .at("name", "response")
                            .append(if policy == AuthPolicy::Allow {
                                "authorized"
                            } else {
                                "notauthorized"
                            })
                            .build(),
                        Element::builder("i4", NS)
                            .at("name", "ttl")
                            .append(ttl.to_string())
                            .build(),
                    ],
                }
            }
            "/security/advertise" => {
                let operations = op
                    .children()
                    .find(|c| c.attr("name") == Some("operations"))
                    .map(|l| l.children().map(|c| c.text()).collect())
                    .unwrap_or_default();
                let ttl = op
                    .children()
                    .find(|c| c.attr("name") == Some("ttl"))
                    .and_then(|c| c.text().trim().parse().ok());
                lock(&self.shared.adverts).push(Advert {
                    at: Instant::now(),
                    from: from.clone(),
                    operations,
                    ttl,
                    raw: op.clone(),
                });
                self.shared.notify.notify_waiters();
                vec![Element::builder("boolean", NS)
                    .at("name", "response")
                    .append("1")
                    .build()]
            }
            "/security/discover" => vec![
                Element::builder("list", NS).at("name", "jids").build(),
                Element::builder("list", NS).at("name", "loads").build(),
            ],
            _ => {
                let e = Element::builder("error", NS)
                    .at("token", tok.as_str())
                    .at("type", "fatal")
                    .at("condition", "no-handler")
                    .append(
                        Element::builder("string", NS)
                            .at("name", "reason")
                            .append("no handler")
                            .build(),
                    )
                    .build();
                let _ = self.call_set(&from, e).await;
                return;
            }
        };
        let ack = Element::builder("ack", NS)
            .at("token", tok.as_str())
            .build();
        if !self.call_set(&from, ack).await {
            return;
        }
        let mut data = Element::builder("data", NS)
            .at("token", tok.as_str())
            .at("seq", "0");
        for v in values {
            data = data.append(v);
        }
        if !self.call_set(&from, data.build()).await {
            return;
        }
        let fin = Element::builder("final", NS)
            .at("token", tok.as_str())
            .at("count", "1")
            .build();
        let _ = self.call_set(&from, fin).await;
    }

    /// Send an IQ set and wait (2 s) for its result; a missing result is recorded.
    async fn call_set(&self, to: &str, payload: Element) -> bool {
        let since = self.mark();
        let what = format!("<{}> to {to}", payload.name());
        let Ok(id) = self.send_iq("set", to, Some(payload)).await else {
            return false;
        };
        let r = self.wait_response(since, &id, Duration::from_secs(2)).await;
        let ok = matches!(&r, Some(r) if r.iq_type() == Some("result"));
        if !ok {
            lock(&self.shared.failures).push(format!(
                "{what}: {}",
                r.map(|r| r.xml())
                    .unwrap_or_else(|| "no IQ result within 2 s".into())
            ));
        }
        ok
    }

    /// IQ sets this peer sent (as dispatcher) that were not answered with a result.
    pub fn lifecycle_failures(&self) -> Vec<String> {
        lock(&self.shared.failures).clone()
    }

    /// The first advertisement from `from` recorded after `after`.
    pub async fn wait_advert_after(
        &self,
        after: Instant,
        from: &str,
        budget: Duration,
    ) -> Option<Advert> {
        let end = tokio::time::Instant::now() + budget;
        let want: Option<Jid> = from.parse().ok();
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(a) = lock(&self.shared.adverts)
                .iter()
                .find(|a| a.at > after && a.from.parse::<Jid>().ok() == want)
            {
                return Some(a.clone());
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// Plain TCP to `host:port` with `TCP_NODELAY` (small stanzas must not wait for Nagle's
/// algorithm: the harness measures latencies in milliseconds).
#[derive(Debug, Clone)]
pub struct NoDelayConnector(pub String);

impl tokio_xmpp::connect::ServerConnector for NoDelayConnector {
    type Stream = tokio::io::BufStream<tokio::net::TcpStream>;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: tokio_xmpp::xmlstream::Timeouts,
    ) -> Result<
        (
            tokio_xmpp::xmlstream::PendingFeaturesRecv<Self::Stream>,
            sasl::common::ChannelBinding,
        ),
        tokio_xmpp::Error,
    > {
        let tcp = tokio::net::TcpStream::connect(&self.0).await?;
        tcp.set_nodelay(true)?;
        let stream = tokio::io::BufStream::new(tcp);
        let pending = tokio_xmpp::xmlstream::initiate_stream(
            stream,
            ns,
            tokio_xmpp::xmlstream::StreamHeader {
                to: Some(std::borrow::Cow::Owned(jid.domain().as_str().to_string())),
                from: None,
                id: None,
            },
            timeouts,
        )
        .await?;
        Ok((pending, sasl::common::ChannelBinding::None))
    }
}

/// A child no receiver understands (for IQ-result tolerance checks).
fn junk() -> Element {
    Element::builder("junk", "urn:example:vertebra-conformance:junk")
        .append("ignore me")
        .build()
}

fn feature(var: &str) -> Element {
    Element::builder("feature", NS_DISCO_INFO)
        .at("var", var)
        .build()
}

/// An IQ result answering `req` (same id, to = its from).
pub fn iq_result_for(req: &Element, payload: Option<Element>) -> Element {
    let mut b = Element::builder("iq", NS_CLIENT)
        .at("type", "result")
        .at("id", req.attr("id").unwrap_or(""));
    if let Some(f) = req.attr("from") {
        b = b.at("to", f);
    }
    if let Some(p) = payload {
        b = b.append(p);
    }
    b.build()
}

/// Parse a JID string into a bare JID (for tenant/domain checks).
pub fn bare_of(s: &str) -> Option<BareJid> {
    s.parse::<Jid>().ok().map(|j| j.to_bare())
}

#[allow(dead_code)]
fn _assert_iq_type(_: Iq) {}
