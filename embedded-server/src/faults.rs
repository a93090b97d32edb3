//! Fault injection between chosen JIDs.
//!
//! A [`FaultRule`] matches stanzas on their way from the router to a recipient session (by
//! the stanza's `from`, the recipient's JID — bare patterns match every resource — the stanza
//! kind and an optional predicate on the XML element), and applies one [`FaultAction`]. Rules
//! are tried in the order they were added; the first rule that matches *and fires* acts, the
//! others are not consulted for that stanza. Stanzas the server itself generates (error
//! bounces, unavailable presence) pass through the rules too; stanzas sent with
//! [`ServerHandle::inject`](crate::ServerHandle::inject) do not.
//!
//! Determinism: a rule only draws random numbers when it has a
//! [`probability`](FaultRule::probability); each rule and each split-write connection has its
//! own generator seeded from [`ServerConfig::seed`](crate::ServerConfig::seed), the rule's
//! index and the connection id, so the same seed and the same stanza sequence give the same
//! faults.
//!
//! [`Faults::split_writes`] makes the server write to matching connections in small pieces
//! (a fixed size, or random sizes from the seeded generator), each piece a separate write on
//! the socket (`TCP_NODELAY` is set), so clients must cope with stanzas split at any byte.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_xmpp::{
    jid::{BareJid, FullJid, Jid},
    minidom::Element,
    Stanza,
};

use crate::router::Delivery;

/// The kind of a stanza.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StanzaKind {
    /// `<iq/>`
    Iq,
    /// `<message/>`
    Message,
    /// `<presence/>`
    Presence,
}

impl StanzaKind {
    /// The kind of a typed stanza.
    pub fn of(stanza: &Stanza) -> Self {
        match stanza {
            Stanza::Iq(_) => StanzaKind::Iq,
            Stanza::Message(_) => StanzaKind::Message,
            Stanza::Presence(_) => StanzaKind::Presence,
        }
    }
}

/// A JID to match: a bare JID matches every resource of that account (and the bare JID
/// itself); a full JID matches exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JidPattern {
    /// Any JID whose bare part equals this.
    Bare(BareJid),
    /// Exactly this full JID.
    Full(FullJid),
}

impl JidPattern {
    /// Whether `jid` matches.
    pub fn matches(&self, jid: &Jid) -> bool {
        match self {
            JidPattern::Bare(b) => jid.to_bare() == *b,
            JidPattern::Full(f) => jid.try_as_full().is_ok_and(|j| j == f),
        }
    }
}

impl From<Jid> for JidPattern {
    fn from(j: Jid) -> Self {
        match j.try_into_full() {
            Ok(f) => JidPattern::Full(f),
            Err(b) => JidPattern::Bare(b),
        }
    }
}
impl From<BareJid> for JidPattern {
    fn from(j: BareJid) -> Self {
        JidPattern::Bare(j)
    }
}
impl From<FullJid> for JidPattern {
    fn from(j: FullJid) -> Self {
        JidPattern::Full(j)
    }
}
impl From<&FullJid> for JidPattern {
    fn from(j: &FullJid) -> Self {
        JidPattern::Full(j.clone())
    }
}
impl From<&BareJid> for JidPattern {
    fn from(j: &BareJid) -> Self {
        JidPattern::Bare(j.clone())
    }
}
impl FromStr for JidPattern {
    type Err = tokio_xmpp::jid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Jid::new(s)?.into())
    }
}

/// Rewrites a stanza. Returning `None` drops it.
pub type RewriteFn = Arc<dyn Fn(Element) -> Option<Element> + Send + Sync>;
/// Extra match condition on the stanza's XML.
pub type MatchFn = Arc<dyn Fn(&Element) -> bool + Send + Sync>;

/// What a firing rule does to the stanza.
#[derive(Clone)]
pub enum FaultAction {
    /// The stanza is not delivered.
    Drop,
    /// The stanza is delivered after this delay (later stanzas may overtake it).
    Delay(Duration),
    /// The stanza is delivered `1 + n` times.
    Duplicate(usize),
    /// The stanza is held and delivered right after the next stanza that matches the same
    /// rule (so the two arrive swapped). A held stanza is released when the rule is removed
    /// or [`Faults::release_held`] is called.
    Reorder,
    /// The stanza's XML is passed through the closure; the result (which need not be a valid
    /// stanza) is delivered as is, `None` drops it.
    Rewrite(RewriteFn),
    /// The sender's connection is cut (TCP closed without a stream footer, as if the client
    /// vanished) and the stanza is not delivered.
    CutSender,
    /// The recipient's connection is cut and the stanza is not delivered.
    CutRecipient,
    /// The stanza is replaced by these bytes, written to the recipient's socket as they are
    /// (no serialisation, no check: they may be ill-formed XML, bad UTF-8 or a partial tag).
    /// Traced as [`Direction::Out`](crate::Direction::Out) with note `"raw"` and the bytes
    /// escaped by [`escape_bytes`](crate::trace::escape_bytes).
    Raw(Vec<u8>),
}

impl fmt::Debug for FaultAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultAction::Drop => write!(f, "Drop"),
            FaultAction::Delay(d) => write!(f, "Delay({d:?})"),
            FaultAction::Duplicate(n) => write!(f, "Duplicate({n})"),
            FaultAction::Reorder => write!(f, "Reorder"),
            FaultAction::Rewrite(_) => write!(f, "Rewrite(..)"),
            FaultAction::CutSender => write!(f, "CutSender"),
            FaultAction::CutRecipient => write!(f, "CutRecipient"),
            FaultAction::Raw(b) => write!(f, "Raw({})", crate::trace::escape_bytes(b)),
        }
    }
}

/// A fault rule. Build with [`FaultRule::new`] and the builder methods.
///
/// ```
/// use vertebra_embedded_server::{FaultAction, FaultRule, StanzaKind};
/// // Cut alice's connection at the 3rd IQ she sends to bob.
/// let rule = FaultRule::new(FaultAction::CutSender)
///     .from("alice@localhost".parse().unwrap())
///     .to("bob@localhost".parse().unwrap())
///     .kind(StanzaKind::Iq)
///     .skip(2)
///     .times(1);
/// # let _ = rule;
/// ```
#[derive(Clone, Debug)]
pub struct FaultRule {
    from: Option<JidPattern>,
    to: Option<JidPattern>,
    kind: Option<StanzaKind>,
    when: Option<MatchFnDebug>,
    skip: usize,
    times: Option<usize>,
    probability: Option<f64>,
    action: FaultAction,
}

#[derive(Clone)]
struct MatchFnDebug(MatchFn);
impl fmt::Debug for MatchFnDebug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<predicate>")
    }
}

impl FaultRule {
    /// A rule that applies `action` to every stanza (narrow it with the builder methods).
    pub fn new(action: FaultAction) -> Self {
        FaultRule {
            from: None,
            to: None,
            kind: None,
            when: None,
            skip: 0,
            times: None,
            probability: None,
            action,
        }
    }
    /// Only stanzas whose `from` matches.
    pub fn from(mut self, p: JidPattern) -> Self {
        self.from = Some(p);
        self
    }
    /// Only stanzas delivered to a session matching this.
    pub fn to(mut self, p: JidPattern) -> Self {
        self.to = Some(p);
        self
    }
    /// Only stanzas of this kind.
    pub fn kind(mut self, k: StanzaKind) -> Self {
        self.kind = Some(k);
        self
    }
    /// Only stanzas whose XML satisfies `f`.
    pub fn when(mut self, f: impl Fn(&Element) -> bool + Send + Sync + 'static) -> Self {
        self.when = Some(MatchFnDebug(Arc::new(f)));
        self
    }
    /// Let the first `n` matching stanzas through untouched (so the rule fires on the
    /// `n+1`-th).
    pub fn skip(mut self, n: usize) -> Self {
        self.skip = n;
        self
    }
    /// Fire at most `n` times.
    pub fn times(mut self, n: usize) -> Self {
        self.times = Some(n);
        self
    }
    /// Fire on a matching stanza with probability `p` (seeded, deterministic).
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = Some(p.clamp(0.0, 1.0));
        self
    }
    /// The action.
    pub fn action(&self) -> &FaultAction {
        &self.action
    }

    fn matches(&self, d: &Delivery, element: &mut Option<Element>) -> bool {
        if let Some(k) = self.kind {
            if StanzaKind::of(&d.stanza) != k {
                return false;
            }
        }
        if let Some(p) = &self.from {
            match stanza_from(&d.stanza) {
                Some(f) if p.matches(f) => {}
                _ => return false,
            }
        }
        if let Some(p) = &self.to {
            if !p.matches(&Jid::from(d.to.clone())) {
                return false;
            }
        }
        if let Some(w) = &self.when {
            let el = element
                .get_or_insert_with(|| Element::from(crate::router::clone_stanza(&d.stanza)));
            if !(w.0)(el) {
                return false;
            }
        }
        true
    }
}

fn stanza_from(s: &Stanza) -> Option<&Jid> {
    match s {
        Stanza::Iq(iq) => iq.from(),
        Stanza::Message(m) => m.from.as_ref(),
        Stanza::Presence(p) => p.from.as_ref(),
    }
}

/// Identifier of an installed rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(u64);

/// How to split the server's writes to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitSpec {
    /// Every write is cut into pieces of at most this many bytes (minimum 1).
    Fixed(usize),
    /// Pieces of random size in `1..=max` bytes, from the seeded generator.
    Random {
        /// Largest piece.
        max: usize,
    },
}

/// Small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub(crate) struct Prng(u64);
impl Prng {
    pub(crate) fn new(seed: u64) -> Self {
        Prng(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// A stanza to write: typed, an element (after a rewrite, or injected), or raw bytes.
// Stanzas are moved, not boxed: one allocation fewer per routed stanza.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outgoing {
    Stanza(Stanza),
    Element(Element),
    Raw(Vec<u8>),
}

impl Clone for Outgoing {
    fn clone(&self) -> Self {
        match self {
            Outgoing::Stanza(s) => Outgoing::Stanza(crate::router::clone_stanza(s)),
            Outgoing::Element(e) => Outgoing::Element(e.clone()),
            Outgoing::Raw(b) => Outgoing::Raw(b.clone()),
        }
    }
}

/// One planned write.
#[derive(Debug)]
pub(crate) struct Planned {
    pub to: FullJid,
    pub item: Outgoing,
    pub delay: Option<Duration>,
    pub note: Option<String>,
}

/// Result of passing one delivery through the rules.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub writes: Vec<Planned>,
    pub dropped: Vec<(FullJid, Outgoing, String)>,
    pub cut_sender: bool,
    pub cut_recipient: Option<FullJid>,
}

struct RuleState {
    rule: FaultRule,
    matched: usize,
    fired: usize,
    rng: Prng,
    held: Option<(FullJid, Outgoing)>,
}

struct FaultState {
    next_id: u64,
    rules: BTreeMap<RuleId, RuleState>,
    splits: Vec<(JidPattern, SplitSpec)>,
}

/// Handle to the server's fault-injection rules. Cheap to clone.
#[derive(Clone)]
pub struct Faults {
    inner: Arc<FaultsInner>,
}

pub(crate) struct FaultsInner {
    seed: u64,
    active_rules: AtomicUsize,
    split_generation: AtomicU64,
    state: Mutex<FaultState>,
    /// Stanzas released by `remove`/`release_held`, waiting to be written by the server.
    released: Mutex<Vec<Planned>>,
    /// Wakes the server's flusher when `released` gets stanzas.
    released_notify: tokio::sync::Notify,
    /// Whether `released` may hold stanzas (checked without locking on the hot path).
    released_pending: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("rules", &self.inner.active_rules.load(Ordering::Relaxed))
            .finish()
    }
}

impl Faults {
    pub(crate) fn new(seed: u64) -> Self {
        Faults {
            inner: Arc::new(FaultsInner {
                seed,
                active_rules: AtomicUsize::new(0),
                split_generation: AtomicU64::new(0),
                state: Mutex::new(FaultState {
                    next_id: 0,
                    rules: BTreeMap::new(),
                    splits: Vec::new(),
                }),
                released: Mutex::new(Vec::new()),
                released_notify: tokio::sync::Notify::new(),
                released_pending: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Installs a rule; it applies to stanzas routed from now on.
    pub fn add(&self, rule: FaultRule) -> RuleId {
        let mut st = self.inner.state.lock().expect("faults lock");
        let id = RuleId(st.next_id);
        st.next_id += 1;
        let rng = Prng::new(self.inner.seed ^ (id.0.wrapping_mul(0xA24B_AED4_963E_E407)));
        st.rules.insert(
            id,
            RuleState {
                rule,
                matched: 0,
                fired: 0,
                rng,
                held: None,
            },
        );
        self.inner
            .active_rules
            .store(st.rules.len(), Ordering::Release);
        id
    }

    /// Removes a rule (a stanza it was holding for [`FaultAction::Reorder`] is delivered).
    pub fn remove(&self, id: RuleId) {
        let mut st = self.inner.state.lock().expect("faults lock");
        if let Some(rs) = st.rules.remove(&id) {
            if let Some((to, item)) = rs.held {
                self.release(to, item);
            }
        }
        self.inner
            .active_rules
            .store(st.rules.len(), Ordering::Release);
    }

    /// Removes all rules and split-write settings (held stanzas are delivered).
    pub fn clear(&self) {
        let mut st = self.inner.state.lock().expect("faults lock");
        for (_, rs) in std::mem::take(&mut st.rules) {
            if let Some((to, item)) = rs.held {
                self.release(to, item);
            }
        }
        st.splits.clear();
        self.inner.active_rules.store(0, Ordering::Release);
        self.inner.split_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Delivers every stanza currently held by [`FaultAction::Reorder`] rules.
    pub fn release_held(&self) {
        let mut st = self.inner.state.lock().expect("faults lock");
        for rs in st.rules.values_mut() {
            if let Some((to, item)) = rs.held.take() {
                self.release(to, item);
            }
        }
    }

    /// How many stanzas matched the rule (including skipped ones), and how many times it
    /// fired. `None` if the rule is not installed.
    pub fn counts(&self, id: RuleId) -> Option<(usize, usize)> {
        let st = self.inner.state.lock().expect("faults lock");
        st.rules.get(&id).map(|r| (r.matched, r.fired))
    }

    /// Splits the server's writes to every connection whose bound JID matches `pattern`
    /// (existing and future connections).
    pub fn split_writes(&self, pattern: JidPattern, spec: SplitSpec) {
        let mut st = self.inner.state.lock().expect("faults lock");
        st.splits.retain(|(p, _)| *p != pattern);
        st.splits.push((pattern, spec));
        self.inner.split_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Stops splitting writes for connections matching `pattern` (exact pattern given to
    /// [`Faults::split_writes`]).
    pub fn stop_split_writes(&self, pattern: &JidPattern) {
        let mut st = self.inner.state.lock().expect("faults lock");
        st.splits.retain(|(p, _)| p != pattern);
        self.inner.split_generation.fetch_add(1, Ordering::AcqRel);
    }

    fn release(&self, to: FullJid, item: Outgoing) {
        self.inner
            .released
            .lock()
            .expect("released lock")
            .push(Planned {
                to,
                item,
                delay: None,
                note: Some("reorder (released)".into()),
            });
        self.inner.released_pending.store(true, Ordering::Release);
        self.inner.released_notify.notify_one();
    }

    pub(crate) async fn released_ready(&self) {
        self.inner.released_notify.notified().await
    }

    pub(crate) fn seed(&self) -> u64 {
        self.inner.seed
    }

    pub(crate) fn take_released(&self) -> Vec<Planned> {
        let mut r = self.inner.released.lock().expect("released lock");
        self.inner.released_pending.store(false, Ordering::Release);
        std::mem::take(&mut *r)
    }

    /// No rule installed and nothing released waiting: every delivery is written as is.
    pub(crate) fn is_idle(&self) -> bool {
        self.inner.active_rules.load(Ordering::Acquire) == 0
            && !self.inner.released_pending.load(Ordering::Acquire)
    }

    pub(crate) fn split_generation(&self) -> u64 {
        self.inner.split_generation.load(Ordering::Acquire)
    }

    /// The split setting for a connection bound to `jid`.
    pub(crate) fn split_for(&self, jid: &Jid) -> Option<SplitSpec> {
        let st = self.inner.state.lock().expect("faults lock");
        st.splits
            .iter()
            .rev()
            .find(|(p, _)| p.matches(jid))
            .map(|(_, s)| *s)
    }

    /// Passes one delivery through the rules.
    pub(crate) fn plan(&self, d: Delivery) -> Plan {
        let mut plan = Plan::default();
        if self.inner.active_rules.load(Ordering::Acquire) == 0 {
            plan.writes.push(Planned {
                to: d.to,
                item: Outgoing::Stanza(d.stanza),
                delay: None,
                note: None,
            });
            return plan;
        }
        let mut st = self.inner.state.lock().expect("faults lock");
        let mut element = None;
        let mut acting = None;
        for (id, rs) in st.rules.iter_mut() {
            if !rs.rule.matches(&d, &mut element) {
                continue;
            }
            rs.matched += 1;
            if rs.matched <= rs.rule.skip {
                continue;
            }
            if rs.rule.times.is_some_and(|t| rs.fired >= t) {
                continue;
            }
            if let Some(p) = rs.rule.probability {
                if rs.rng.next_f64() >= p {
                    continue;
                }
            }
            rs.fired += 1;
            acting = Some(*id);
            break;
        }
        let Some(id) = acting else {
            drop(st);
            plan.writes.push(Planned {
                to: d.to,
                item: Outgoing::Stanza(d.stanza),
                delay: None,
                note: None,
            });
            return plan;
        };
        let rs = st.rules.get_mut(&id).expect("rule present");
        let item = Outgoing::Stanza(d.stanza);
        let to = d.to;
        match rs.rule.action.clone() {
            FaultAction::Drop => plan.dropped.push((to, item, "drop".into())),
            FaultAction::Delay(delay) => plan.writes.push(Planned {
                to,
                item,
                delay: Some(delay),
                note: Some(format!("delay {}ms", delay.as_millis())),
            }),
            FaultAction::Duplicate(n) => {
                for i in 0..=n {
                    plan.writes.push(Planned {
                        to: to.clone(),
                        item: item.clone(),
                        delay: None,
                        note: Some(if i == 0 {
                            "duplicate (original)".into()
                        } else {
                            format!("duplicate (copy {i})")
                        }),
                    });
                }
            }
            FaultAction::Reorder => match rs.held.take() {
                None => rs.held = Some((to, item)),
                Some((held_to, held_item)) => {
                    plan.writes.push(Planned {
                        to,
                        item,
                        delay: None,
                        note: Some("reorder (overtaking)".into()),
                    });
                    plan.writes.push(Planned {
                        to: held_to,
                        item: held_item,
                        delay: None,
                        note: Some("reorder (released)".into()),
                    });
                }
            },
            FaultAction::Rewrite(f) => {
                let el = match item {
                    Outgoing::Stanza(s) => element.unwrap_or_else(|| Element::from(s)),
                    Outgoing::Element(e) => e,
                    Outgoing::Raw(b) => {
                        // Not reachable (rules see typed stanzas), but harmless: pass on.
                        plan.writes.push(Planned {
                            to,
                            item: Outgoing::Raw(b),
                            delay: None,
                            note: None,
                        });
                        return plan;
                    }
                };
                let before = el.clone();
                match f(el) {
                    Some(new) => plan.writes.push(Planned {
                        to,
                        item: Outgoing::Element(new),
                        delay: None,
                        note: Some("rewrite".into()),
                    }),
                    None => plan.dropped.push((
                        to,
                        Outgoing::Element(before),
                        "rewrite (dropped)".into(),
                    )),
                }
            }
            FaultAction::CutSender => {
                plan.cut_sender = true;
                plan.dropped.push((to, item, "cut sender".into()));
            }
            FaultAction::CutRecipient => {
                plan.cut_recipient = Some(to.clone());
                plan.dropped.push((to, item, "cut recipient".into()));
            }
            FaultAction::Raw(bytes) => {
                plan.dropped
                    .push((to.clone(), item, "replaced by raw bytes".into()));
                plan.writes.push(Planned {
                    to,
                    item: Outgoing::Raw(bytes),
                    delay: None,
                    note: Some("raw".into()),
                });
            }
        }
        plan
    }
}
