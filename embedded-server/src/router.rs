//! Sans-IO routing core: who receives a stanza, and what the server answers itself.
//!
//! [`Router`] holds the routing table (accounts, bound sessions, availability, directed
//! presence) and turns one inbound stanza into a list of [`Delivery`]s. It does no I/O and
//! knows nothing about connections beyond an opaque [`ConnId`], so the rules can be tested
//! directly (see the property tests in `tests/routing_props.rs`).
//!
//! The rules follow RFC 6120 §10 and RFC 6121 §8 for a server without rosters, offline
//! storage or server-to-server links:
//!
//! * every stanza from a client is stamped with the session's full JID as `from`;
//! * IQ get/set to a full JID with no session → `service-unavailable` (type cancel) back to
//!   the sender; IQ result/error to an absent session are dropped silently;
//! * IQ get/set to the server domain: disco#info (identity `server/im`), disco#items (empty),
//!   XEP-0199 ping, session establishment; a known namespace with the wrong IQ type →
//!   `feature-not-implemented`; any other namespace → `service-unavailable`;
//! * IQ get/set to a user's bare JID (or with no `to`) is answered by the server on behalf of
//!   the account: ping, disco#info (identity `account/registered`), roster (empty, only for
//!   the account itself); anything else → `service-unavailable`; unknown account →
//!   `service-unavailable`;
//! * presence to a bare JID goes to every available resource; directed presence (available
//!   or unavailable with a `to`) is tracked per session, and when the session ends every
//!   entity that still holds directed presence from it gets `unavailable`;
//! * messages to a bare JID go to the available resources with the highest non-negative
//!   priority (`normal`/`chat`), or all non-negative ones (`headline`); with no such resource
//!   the sender gets `service-unavailable` (no offline storage), except for `error` messages,
//!   which never cause errors;
//! * anything addressed to a domain the server does not serve → `remote-server-not-found`
//!   (IQ get/set, messages).
//!
//! A router can serve several domains ([`Router::add_domain`]); accounts live in any served
//! domain ([`Router::add_account_jid`]) and stanzas between served domains are routed
//! locally by the same rules, as if the domains were federated servers. Each served domain
//! answers disco#info/ping for itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tokio_xmpp::parsers::{
    disco::{DiscoInfoResult, DiscoItemsResult, Identity},
    iq::Iq,
    message::{Message, MessageType},
    ns,
    presence::{Presence, Type as PresenceType},
    roster::Roster,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
};
use tokio_xmpp::{
    jid::{BareJid, FullJid, Jid},
    minidom::Element,
    Stanza,
};

/// Identifier of one client connection (unique for the server's lifetime).
pub type ConnId = u64;

/// One stanza to hand to one bound session.
#[derive(Debug)]
pub struct Delivery {
    /// The session (full JID) that receives the stanza.
    pub to: FullJid,
    /// The stanza, with `from` stamped; `to` is left as addressed (bare or full).
    pub stanza: Stanza,
}

/// What to do when a client binds a resource that is already bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// The new session wins; the old one is closed with a `<conflict/>` stream error
    /// (what Prosody does by default).
    #[default]
    KickOld,
    /// The bind request is refused with a `conflict` stanza error.
    RejectNew,
}

/// Result of [`Router::bind`].
#[derive(Debug)]
pub enum BindOutcome {
    /// Bound. `kicked` is the connection of an older session with the same full JID that
    /// must be closed, together with the stanzas its departure produces.
    Bound {
        /// The bound full JID.
        jid: FullJid,
        /// Older session replaced by this bind (policy [`ConflictPolicy::KickOld`]).
        kicked: Option<(ConnId, Vec<Delivery>)>,
    },
    /// The resource is taken and the policy is [`ConflictPolicy::RejectNew`].
    Conflict,
    /// The requested resource is not a valid JID resourcepart.
    BadResource,
}

#[derive(Debug, Clone)]
struct Session {
    conn: ConnId,
    available: bool,
    priority: i8,
    /// Entities that received directed available presence from this session and have not
    /// since received directed unavailable presence.
    directed: BTreeSet<Jid>,
}

/// Name shown in the server's disco#info identity.
pub const SERVER_IDENTITY_NAME: &str = "Vertebra embedded test server";

/// The routing table and rules. See the module documentation.
#[derive(Debug)]
pub struct Router {
    domain: BareJid,
    /// Every served domain, the primary one included.
    domains: BTreeSet<BareJid>,
    /// Accounts: domain → localparts (looked up without allocating).
    accounts: HashMap<String, HashSet<String>>,
    sessions: HashMap<FullJid, Session>,
    resources: HashMap<BareJid, BTreeSet<FullJid>>,
}

impl Router {
    /// A router for `domain` (a JID domainpart, e.g. `localhost`).
    pub fn new(domain: BareJid) -> Self {
        Router {
            domains: [domain.clone()].into_iter().collect(),
            domain,
            accounts: HashMap::new(),
            sessions: HashMap::new(),
            resources: HashMap::new(),
        }
    }

    /// The primary served domain (the one given to [`Router::new`]).
    pub fn domain(&self) -> &BareJid {
        &self.domain
    }

    /// Serves one more domain (a bare JID without localpart, e.g. `other.localhost`).
    /// Returns `false` if `domain` has a localpart (and then does nothing).
    pub fn add_domain(&mut self, domain: BareJid) -> bool {
        if domain.node().is_some() {
            return false;
        }
        self.domains.insert(domain);
        true
    }

    /// Whether `domain` (a domainpart) is served.
    pub fn serves(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d.domain().as_str() == domain)
    }

    /// Every served domain, sorted.
    pub fn domains(&self) -> Vec<BareJid> {
        self.domains.iter().cloned().collect()
    }

    /// Registers an account in the primary domain (localpart only). A localpart that is not
    /// valid in a JID is ignored.
    pub fn add_account(&mut self, user: &str) {
        if let Ok(b) = BareJid::new(&format!("{user}@{}", self.domain)) {
            self.insert_account(&b);
        }
    }

    /// Registers an account by bare JID, in any domain. Returns `false` (and does nothing)
    /// if the JID has no localpart or its domain is not served.
    pub fn add_account_jid(&mut self, account: &BareJid) -> bool {
        if account.node().is_none() || !self.serves(account.domain().as_str()) {
            return false;
        }
        self.insert_account(account);
        true
    }

    fn insert_account(&mut self, account: &BareJid) {
        if let Some(node) = account.node() {
            self.accounts
                .entry(account.domain().to_string())
                .or_default()
                .insert(node.to_string());
        }
    }

    fn account_exists(&self, node: &str, domain: &str) -> bool {
        self.accounts
            .get(domain)
            .is_some_and(|nodes| nodes.contains(node))
    }

    /// Whether the localpart is a known account of the primary domain.
    pub fn has_account(&self, user: &str) -> bool {
        BareJid::new(&format!("{user}@{}", self.domain)).is_ok_and(|b| self.has_account_jid(&b))
    }

    /// Whether the bare JID is a known account (any served domain).
    pub fn has_account_jid(&self, account: &BareJid) -> bool {
        account
            .node()
            .is_some_and(|n| self.account_exists(n.as_str(), account.domain().as_str()))
    }

    /// The connection of a bound session.
    pub fn conn_of(&self, jid: &FullJid) -> Option<ConnId> {
        self.sessions.get(jid).map(|s| s.conn)
    }

    /// All bound sessions of an account.
    pub fn sessions_of(&self, bare: &BareJid) -> Vec<FullJid> {
        self.resources
            .get(bare)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// All bound sessions.
    pub fn all_sessions(&self) -> Vec<FullJid> {
        let mut v: Vec<FullJid> = self.sessions.keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether a session has sent available broadcast presence.
    pub fn is_available(&self, jid: &FullJid) -> bool {
        self.sessions.get(jid).is_some_and(|s| s.available)
    }

    /// The entities currently holding directed presence from `jid`.
    pub fn directed_presence_of(&self, jid: &FullJid) -> Vec<Jid> {
        self.sessions
            .get(jid)
            .map(|s| s.directed.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Binds a resource for `user` (a localpart of the primary domain) on connection `conn`.
    /// `requested` is the client's resource, or `None` to use `generated`.
    pub fn bind(
        &mut self,
        user: &str,
        requested: Option<&str>,
        generated: &str,
        conn: ConnId,
        policy: ConflictPolicy,
    ) -> BindOutcome {
        let bare = match BareJid::new(&format!("{}@{}", user, self.domain)) {
            Ok(b) => b,
            Err(_) => return BindOutcome::BadResource,
        };
        self.bind_jid(&bare, requested, generated, conn, policy)
    }

    /// Binds a resource for the account `bare` (any served domain) on connection `conn`.
    /// `requested` is the client's resource, or `None` to use `generated`.
    pub fn bind_jid(
        &mut self,
        bare: &BareJid,
        requested: Option<&str>,
        generated: &str,
        conn: ConnId,
        policy: ConflictPolicy,
    ) -> BindOutcome {
        let bare = bare.clone();
        let resource = requested.filter(|r| !r.is_empty()).unwrap_or(generated);
        let full = match bare.with_resource_str(resource) {
            Ok(f) => f,
            Err(_) => return BindOutcome::BadResource,
        };
        let mut kicked = None;
        if let Some(old) = self.sessions.get(&full) {
            match policy {
                ConflictPolicy::RejectNew => return BindOutcome::Conflict,
                ConflictPolicy::KickOld => {
                    let old_conn = old.conn;
                    let deliveries = self.unbind(&full, old_conn);
                    kicked = Some((old_conn, deliveries));
                }
            }
        }
        self.sessions.insert(
            full.clone(),
            Session {
                conn,
                available: false,
                priority: 0,
                directed: BTreeSet::new(),
            },
        );
        self.resources.entry(bare).or_default().insert(full.clone());
        BindOutcome::Bound { jid: full, kicked }
    }

    /// Removes a session (if it still belongs to `conn`) and returns the unavailable
    /// presence its departure produces: to every entity holding directed presence from it,
    /// and to the account's other available resources if it was available.
    pub fn unbind(&mut self, jid: &FullJid, conn: ConnId) -> Vec<Delivery> {
        match self.sessions.get(jid) {
            Some(s) if s.conn == conn => {}
            _ => return Vec::new(),
        }
        let session = self.sessions.remove(jid).expect("checked above");
        let bare = jid.to_bare();
        if let Some(set) = self.resources.get_mut(&bare) {
            set.remove(jid);
            if set.is_empty() {
                self.resources.remove(&bare);
            }
        }
        let mut out = Vec::new();
        let unavailable = |to: Option<Jid>| {
            let mut p = Presence::unavailable().with_from(jid.clone());
            p.to = to;
            p
        };
        if session.available {
            for other in self.available_resources(&bare, false) {
                out.push(Delivery {
                    to: other,
                    stanza: unavailable(None).into(),
                });
            }
        }
        for target in session.directed {
            out.extend(
                self.presence_targets(&target)
                    .into_iter()
                    .map(|to| Delivery {
                        to,
                        stanza: unavailable(Some(target.clone())).into(),
                    }),
            );
        }
        out
    }

    /// Routes one stanza sent by the session `from`. Returns every delivery, including the
    /// server's own replies (addressed to `from`).
    pub fn route(&mut self, from: &FullJid, stanza: Stanza) -> Vec<Delivery> {
        match stanza {
            Stanza::Iq(iq) => self.route_iq(from, iq),
            Stanza::Message(m) => self.route_message(from, m),
            Stanza::Presence(p) => self.route_presence(from, p),
        }
    }

    // ----- helpers -----

    fn target(&self, to: Option<&Jid>) -> Target {
        let Some(to) = to else {
            return Target::NoTo;
        };
        if !self.serves(to.domain().as_str()) {
            return Target::Remote;
        }
        let Some(node) = to.node() else {
            return Target::Server;
        };
        if !self.account_exists(node.as_str(), to.domain().as_str()) {
            return Target::UnknownUser;
        }
        match to.try_as_full() {
            Ok(full) => Target::Full(full.clone()),
            Err(bare) => Target::Bare(bare.clone()),
        }
    }

    /// Available resources of an account (sent initial presence), optionally only those
    /// with non-negative priority.
    fn available_resources(&self, bare: &BareJid, non_negative: bool) -> Vec<FullJid> {
        self.resources
            .get(bare)
            .into_iter()
            .flatten()
            .filter(|f| {
                self.sessions
                    .get(*f)
                    .is_some_and(|s| s.available && (!non_negative || s.priority >= 0))
            })
            .cloned()
            .collect()
    }

    /// Sessions that receive presence addressed to `to`.
    fn presence_targets(&self, to: &Jid) -> Vec<FullJid> {
        match self.target(Some(to)) {
            Target::Full(f) if self.sessions.contains_key(&f) => vec![f],
            Target::Bare(b) => self.available_resources(&b, false),
            _ => Vec::new(),
        }
    }

    fn route_iq(&mut self, from: &FullJid, mut iq: Iq) -> Vec<Delivery> {
        *iq.from_mut() = Some(from.clone().into());
        let is_request = matches!(iq, Iq::Get { .. } | Iq::Set { .. });
        match self.target(iq.to()) {
            Target::Full(full) => {
                if self.sessions.contains_key(&full) {
                    vec![Delivery {
                        to: full,
                        stanza: iq.into(),
                    }]
                } else if is_request {
                    self.iq_error(
                        from,
                        &iq,
                        ErrorType::Cancel,
                        DefinedCondition::ServiceUnavailable,
                    )
                } else {
                    Vec::new()
                }
            }
            Target::NoTo => {
                let own = from.to_bare();
                self.user_iq(from, &own, iq)
            }
            Target::Bare(bare) => self.user_iq(from, &bare, iq),
            Target::Server => self.server_iq(from, iq),
            Target::UnknownUser if is_request => self.iq_error(
                from,
                &iq,
                ErrorType::Cancel,
                DefinedCondition::ServiceUnavailable,
            ),
            Target::Remote if is_request => self.iq_error(
                from,
                &iq,
                ErrorType::Cancel,
                DefinedCondition::RemoteServerNotFound,
            ),
            Target::UnknownUser | Target::Remote => Vec::new(),
        }
    }

    fn iq_error(
        &self,
        from: &FullJid,
        iq: &Iq,
        type_: ErrorType,
        condition: DefinedCondition,
    ) -> Vec<Delivery> {
        let reply = Iq::Error {
            from: Some(iq.to().cloned().unwrap_or_else(|| from.to_bare().into())),
            to: Some(from.clone().into()),
            id: iq.id().to_owned(),
            error: StanzaError {
                type_,
                by: None,
                defined_condition: condition,
                texts: BTreeMap::new(),
                other: None,
            },
            payload: None,
        };
        vec![Delivery {
            to: from.clone(),
            stanza: reply.into(),
        }]
    }

    fn iq_result(&self, from: &FullJid, iq: &Iq, payload: Option<Element>) -> Vec<Delivery> {
        let reply = Iq::Result {
            from: Some(iq.to().cloned().unwrap_or_else(|| from.to_bare().into())),
            to: Some(from.clone().into()),
            id: iq.id().to_owned(),
            payload,
        };
        vec![Delivery {
            to: from.clone(),
            stanza: reply.into(),
        }]
    }

    fn server_iq(&mut self, from: &FullJid, iq: Iq) -> Vec<Delivery> {
        let (payload, is_get) = match &iq {
            Iq::Get { payload, .. } => (payload, true),
            Iq::Set { payload, .. } => (payload, false),
            Iq::Result { .. } | Iq::Error { .. } => return Vec::new(),
        };
        let ns_ = payload.ns();
        let name = payload.name();
        match (ns_.as_str(), name, is_get) {
            (ns::DISCO_INFO, "query", true) if payload.attr("node").is_none() => {
                let result = DiscoInfoResult {
                    node: None,
                    identities: vec![Identity::new("server", "im", "en", SERVER_IDENTITY_NAME)],
                    features: SERVER_FEATURES.iter().map(|s| s.to_string()).collect(),
                    extensions: Vec::new(),
                };
                self.iq_result(from, &iq, Some(result.into()))
            }
            (ns::DISCO_INFO, "query", true) => {
                self.iq_error(from, &iq, ErrorType::Cancel, DefinedCondition::ItemNotFound)
            }
            (ns::DISCO_ITEMS, "query", true) => {
                let result = DiscoItemsResult {
                    node: payload.attr("node").map(str::to_owned),
                    items: Vec::new(),
                    rsm: None,
                };
                self.iq_result(from, &iq, Some(result.into()))
            }
            (ns::PING, "ping", true) => self.iq_result(from, &iq, None),
            (NS_SESSION, "session", false) => self.iq_result(from, &iq, None),
            (ns::DISCO_INFO, _, _) | (ns::DISCO_ITEMS, _, _) | (ns::PING, _, _) => self.iq_error(
                from,
                &iq,
                ErrorType::Cancel,
                DefinedCondition::FeatureNotImplemented,
            ),
            _ => self.iq_error(
                from,
                &iq,
                ErrorType::Cancel,
                DefinedCondition::ServiceUnavailable,
            ),
        }
    }

    /// IQ get/set to an account's bare JID, answered by the server on the account's behalf.
    fn user_iq(&mut self, from: &FullJid, owner: &BareJid, iq: Iq) -> Vec<Delivery> {
        let (payload, is_get) = match &iq {
            Iq::Get { payload, .. } => (payload, true),
            Iq::Set { payload, .. } => (payload, false),
            Iq::Result { .. } | Iq::Error { .. } => return Vec::new(),
        };
        let exists = self.has_account_jid(owner);
        if !exists {
            return self.iq_error(
                from,
                &iq,
                ErrorType::Cancel,
                DefinedCondition::ServiceUnavailable,
            );
        }
        let is_self = from.to_bare() == *owner;
        match (payload.ns().as_str(), payload.name(), is_get) {
            (ns::PING, "ping", true) => self.iq_result(from, &iq, None),
            (ns::DISCO_INFO, "query", true) if payload.attr("node").is_none() => {
                let result = DiscoInfoResult {
                    node: None,
                    identities: vec![Identity::new_anonymous::<_, _, String, String>(
                        "account",
                        "registered",
                    )],
                    features: [ns::DISCO_INFO.to_string()].into_iter().collect(),
                    extensions: Vec::new(),
                };
                self.iq_result(from, &iq, Some(result.into()))
            }
            (ns::ROSTER, "query", true) if is_self => {
                let roster = Roster {
                    ver: None,
                    items: Vec::new(),
                };
                self.iq_result(from, &iq, Some(roster.into()))
            }
            (ns::ROSTER, "query", false) if is_self => self.iq_result(from, &iq, None),
            _ => self.iq_error(
                from,
                &iq,
                ErrorType::Cancel,
                DefinedCondition::ServiceUnavailable,
            ),
        }
    }

    fn message_error(
        &self,
        from: &FullJid,
        m: &Message,
        condition: DefinedCondition,
    ) -> Vec<Delivery> {
        if m.type_ == MessageType::Error {
            return Vec::new();
        }
        let mut reply = Message::new_with_type(MessageType::Error, Some(from.clone().into()));
        reply.from = Some(m.to.clone().unwrap_or_else(|| from.to_bare().into()));
        reply.id = m.id.clone();
        reply.payloads.push(
            StanzaError {
                type_: ErrorType::Cancel,
                by: None,
                defined_condition: condition,
                texts: BTreeMap::new(),
                other: None,
            }
            .into(),
        );
        vec![Delivery {
            to: from.clone(),
            stanza: reply.into(),
        }]
    }

    fn route_message(&mut self, from: &FullJid, mut m: Message) -> Vec<Delivery> {
        m.from = Some(from.clone().into());
        let target = self.target(m.to.as_ref());
        let bare = match target {
            Target::Full(full) => {
                if self.sessions.contains_key(&full) {
                    return vec![Delivery {
                        to: full,
                        stanza: m.into(),
                    }];
                }
                match m.type_ {
                    MessageType::Groupchat => {
                        return self.message_error(from, &m, DefinedCondition::ServiceUnavailable)
                    }
                    MessageType::Error => return Vec::new(),
                    _ => full.to_bare(),
                }
            }
            Target::Bare(b) => b,
            Target::NoTo => from.to_bare(),
            Target::Server => return Vec::new(),
            Target::UnknownUser => {
                return self.message_error(from, &m, DefinedCondition::ServiceUnavailable)
            }
            Target::Remote => {
                return self.message_error(from, &m, DefinedCondition::RemoteServerNotFound)
            }
        };
        let candidates = self.available_resources(&bare, true);
        let recipients: Vec<FullJid> = match m.type_ {
            MessageType::Headline | MessageType::Error => candidates,
            MessageType::Groupchat => {
                return self.message_error(from, &m, DefinedCondition::ServiceUnavailable)
            }
            MessageType::Normal | MessageType::Chat => {
                let max = candidates
                    .iter()
                    .filter_map(|f| self.sessions.get(f).map(|s| s.priority))
                    .max();
                candidates
                    .into_iter()
                    .filter(|f| self.sessions.get(f).map(|s| s.priority) == max)
                    .collect()
            }
        };
        if recipients.is_empty() {
            return match m.type_ {
                MessageType::Normal | MessageType::Chat => {
                    self.message_error(from, &m, DefinedCondition::ServiceUnavailable)
                }
                _ => Vec::new(),
            };
        }
        let stanza: Stanza = m.into();
        recipients
            .into_iter()
            .map(|to| Delivery {
                to,
                stanza: clone_stanza(&stanza),
            })
            .collect()
    }

    fn route_presence(&mut self, from: &FullJid, mut p: Presence) -> Vec<Delivery> {
        p.from = Some(from.clone().into());
        let bare = from.to_bare();
        let Some(to) = p.to.clone() else {
            // Broadcast presence (RFC 6121 §4.2, §4.5): no rosters, so it reaches the
            // account's other available resources only.
            let Some(session) = self.sessions.get_mut(from) else {
                return Vec::new();
            };
            let mut directed = BTreeSet::new();
            match p.type_ {
                PresenceType::None => {
                    session.available = true;
                    session.priority = p.priority.0;
                }
                PresenceType::Unavailable => {
                    session.available = false;
                    directed = std::mem::take(&mut session.directed);
                }
                _ => return Vec::new(),
            }
            let mut out: Vec<Delivery> = self
                .available_resources(&bare, false)
                .into_iter()
                .filter(|f| f != from)
                .map(|to| Delivery {
                    to,
                    stanza: p.clone().into(),
                })
                .collect();
            for target in directed {
                let mut unavailable = p.clone();
                unavailable.to = Some(target.clone());
                out.extend(
                    self.presence_targets(&target)
                        .into_iter()
                        .map(|to| Delivery {
                            to,
                            stanza: unavailable.clone().into(),
                        }),
                );
            }
            return out;
        };
        match p.type_ {
            PresenceType::None | PresenceType::Unavailable => {
                // Tracked for local accounts only: the server, unknown users and other
                // domains can never be sent the closing unavailable anyway.
                let track = matches!(self.target(Some(&to)), Target::Bare(_) | Target::Full(_));
                if let (true, Some(session)) = (track, self.sessions.get_mut(from)) {
                    if p.type_ == PresenceType::None {
                        session.directed.insert(to.clone());
                    } else {
                        session.directed.remove(&to);
                    }
                }
                let stanza: Stanza = p.into();
                self.presence_targets(&to)
                    .into_iter()
                    .map(|t| Delivery {
                        to: t,
                        stanza: clone_stanza(&stanza),
                    })
                    .collect()
            }
            PresenceType::Subscribe
            | PresenceType::Subscribed
            | PresenceType::Unsubscribe
            | PresenceType::Unsubscribed => {
                // No rosters: subscription requests are passed on, from the bare JID.
                p.from = Some(bare.into());
                let stanza: Stanza = p.into();
                match self.target(Some(&to)) {
                    Target::Full(f) => self.available_resources(&f.to_bare(), false),
                    Target::Bare(b) => self.available_resources(&b, false),
                    _ => Vec::new(),
                }
                .into_iter()
                .map(|t| Delivery {
                    to: t,
                    stanza: clone_stanza(&stanza),
                })
                .collect()
            }
            PresenceType::Error => match self.target(Some(&to)) {
                Target::Full(f) if self.sessions.contains_key(&f) => vec![Delivery {
                    to: f,
                    stanza: p.into(),
                }],
                _ => Vec::new(),
            },
            PresenceType::Probe => Vec::new(),
        }
    }
}

impl Clone for Delivery {
    fn clone(&self) -> Self {
        Delivery {
            to: self.to.clone(),
            stanza: clone_stanza(&self.stanza),
        }
    }
}

/// `Stanza` is not `Clone`; its variants are.
pub fn clone_stanza(s: &Stanza) -> Stanza {
    match s {
        Stanza::Iq(i) => Stanza::Iq(i.clone()),
        Stanza::Message(m) => Stanza::Message(m.clone()),
        Stanza::Presence(p) => Stanza::Presence(p.clone()),
    }
}

/// XEP-0030 features the server advertises for itself.
pub const SERVER_FEATURES: &[&str] = &[ns::DISCO_INFO, ns::DISCO_ITEMS, ns::PING];

/// RFC 3921 session establishment (accepted and answered, never required).
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";

enum Target {
    NoTo,
    Server,
    Remote,
    UnknownUser,
    Bare(BareJid),
    Full(FullJid),
}
