//! The Vertebra elements carried as the single child of an IQ (`[VAP-TRN]`, `[VAP-OPS]`) or a
//! presence (`<load>`, `[VAP-LOAD]`), decoded from and encoded to `minidom::Element`.
//!
//! Decoding rules common to every element:
//! * the element must be in [`NS`] ([`Rule::WrongNamespace`] otherwise);
//! * unknown attributes are ignored; known attributes with values outside their grammar are
//!   rejected ([`Rule::BadAttribute`]);
//! * children of `<op>`, `<data>` and `<final>` are named typed values; an unknown child element
//!   is [`Rule::UnknownValueType`] (wire condition `bad-value`); an unnamed child is
//!   [`Rule::MissingName`] in 1.0 and ignored in legacy ops (except unnamed `<res>`, kept as
//!   key-less resources);
//! * children of `<ack>`, `<nack>`, `<cancel>`, `<load>` and of the op result are ignored.
//!
//! Encoding is canonical: attributes in a fixed order, values via [`Value::to_element`].

use compact_str::CompactString;
use minidom::Element;
use serde::{Deserialize, Serialize};

use crate::error::{Condition, DecodeError, ErrorType, Rule};
use crate::resource::{Resource, ResourceScope};
use crate::token::{OpToken, RequestToken};
use crate::value::{decode_named, Args, NamedMode, Value};
use crate::xml::{element_children, set_attr};
use crate::NS;

/// Attribute lookup shared by the tree decoder (`minidom::Element`) and the streaming decoder
/// ([`crate::codec`]), so both apply the very same attribute rules in the same order.
pub(crate) trait Attrs {
    /// The unprefixed attribute `name`.
    fn attr<'a>(&'a self, name: &'a str) -> Option<&'a str>;
    /// The element's local name (for messages).
    fn el_name(&self) -> &str;
}

impl Attrs for Element {
    fn attr<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        Element::attr(self, name)
    }
    fn el_name(&self) -> &str {
        self.name()
    }
}

/// The version marker this crate speaks (`<op version="1.0">`, `[VAP-VER]`).
pub const VERSION_1_0: &str = "1.0";
/// Op deadline applied to legacy (version-less) ops, in ms (`[VAP-VER]`).
pub const LEGACY_TIMEOUT_MS: u32 = 60_000;
/// Largest accepted `timeout` in ms (24 h).
pub const MAX_TIMEOUT_MS: u32 = 86_400_000;
/// Default data window (`[VAP-OPS]` flow control).
pub const DEFAULT_WINDOW: u8 = 8;
/// Largest accepted data window.
pub const MAX_WINDOW: u8 = 64;
/// Default load reporting interval, ms (`[VAP-LOAD]`).
pub const DEFAULT_LOAD_INTERVAL_MS: u32 = 1000;

/// Protocol version of an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Version {
    /// No `version` attribute: a 0.4 (2009) peer; legacy rules apply.
    Legacy,
    /// `version="1.0"`.
    V1_0,
}

/// The informational `scope` attribute (requester fan-out; responders do not change behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Called on every capable agent.
    All,
    /// Called on one agent (least loaded first).
    Single,
    /// Called on a JID chosen by the caller.
    Direct,
}

impl Scope {
    /// Wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Single => "single",
            Scope::Direct => "direct",
        }
    }
    /// Parse wire text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(Scope::All),
            "single" => Some(Scope::Single),
            "direct" => Some(Scope::Direct),
            _ => None,
        }
    }
}

/// `<op>` in an IQ set: the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    /// Version ([`Version::Legacy`] when the attribute is absent).
    pub version: Version,
    /// `token`: `T` (or `X:S`).
    pub token: RequestToken,
    /// `type`: the operation, a normalized resource path such as `/gem/list`
    /// (`[VAP-OPS-012]`; legacy verbs are rejected, `[VAP-VER-011]`). Always valid for
    /// [`Resource::parse`] when decoded.
    pub op_type: CompactString,
    /// `timeout` in ms as sent (required in 1.0, 1..=86 400 000). See [`Op::timeout_ms`].
    pub timeout: Option<u32>,
    /// `scope` (informational).
    pub scope: Option<Scope>,
    /// `window` (1..=64). See [`Op::window`].
    pub window: Option<u8>,
    /// Named values.
    pub args: Args,
    /// Legacy only: unnamed top-level `<res>` children (key-less resources).
    pub unkeyed_resources: Vec<Resource>,
}

impl Op {
    /// A 1.0 op with no arguments.
    pub fn new(token: RequestToken, operation: &Resource, timeout_ms: u32) -> Self {
        Op {
            version: Version::V1_0,
            token,
            op_type: operation.as_str().into(),
            timeout: Some(timeout_ms),
            scope: None,
            window: None,
            args: Args::new(),
            unkeyed_resources: Vec::new(),
        }
    }

    /// Builder: set the arguments.
    #[must_use]
    pub fn with_args(mut self, args: Args) -> Self {
        self.args = args;
        self
    }

    /// The operation as a resource path (`None` only if `op_type` was set by hand to a non-path).
    pub fn operation(&self) -> Option<Resource> {
        Resource::parse(&self.op_type).ok()
    }

    /// The op's scoping resources (`[VAP-RES-011]`): top-level named `res` values under their
    /// name as key, then (legacy) key-less ones (`[VAP-VER-009]`).
    pub fn scope(&self) -> ResourceScope {
        let mut s = ResourceScope::new();
        for (k, r) in self.args.keyed_resources() {
            s.push(Some(k), r.clone());
        }
        for r in &self.unkeyed_resources {
            s.push(None, r.clone());
        }
        s
    }

    /// Effective deadline: `timeout`, or 60 000 ms for a legacy op without one.
    pub fn timeout_ms(&self) -> u32 {
        self.timeout.unwrap_or(LEGACY_TIMEOUT_MS)
    }

    /// Effective data window (default 8).
    pub fn window(&self) -> u8 {
        self.window.unwrap_or(DEFAULT_WINDOW)
    }

    /// True for a version-less op.
    pub fn is_legacy(&self) -> bool {
        self.version == Version::Legacy
    }

    /// Encode.
    pub fn to_element(&self) -> Element {
        let mut el = Element::bare("op", NS);
        if self.version == Version::V1_0 {
            set_attr(&mut el, "version", VERSION_1_0);
        }
        set_attr(&mut el, "token", self.token.to_string());
        set_attr(&mut el, "type", self.op_type.as_str());
        if let Some(t) = self.timeout {
            set_attr(&mut el, "timeout", t.to_string());
        }
        if let Some(s) = self.scope {
            set_attr(&mut el, "scope", s.as_str());
        }
        if let Some(w) = self.window {
            set_attr(&mut el, "window", w.to_string());
        }
        self.args.encode_into(&mut el);
        for r in &self.unkeyed_resources {
            el.append_child(Value::Res(r.clone()).to_element());
        }
        el
    }

    /// Decode (`[VAP-OPS-009]`…`[VAP-OPS-018]`, version handling `[VAP-VER-003]`,
    /// `[VAP-VER-004]`, legacy values `[VAP-VER-009]`, `[VAP-VER-010]`). See [`Op::decode`].
    pub fn from_element(el: &Element) -> Result<Self, DecodeError> {
        Op::decode(el).map_err(|e| e.error)
    }

    /// Decode, reporting with the error whether the token (and version) could be read, which
    /// decides how a responder answers (`[VAP-ERR]` table): no usable token → IQ error
    /// `bad-request` (`[VAP-OPS-006]`); usable token → op result, then
    /// `<error type="fatal" condition="bad-value">` (`[VAP-OPS-018]`, `[VAP-OPS-051]`,
    /// `[VAP-VER-011]`) or `unsupported-version` (`[VAP-VER-004]`).
    pub fn decode(el: &Element) -> Result<Self, OpDecodeError> {
        if let Err(error) = expect(el, "op") {
            return Err(OpDecodeError {
                token: None,
                version: None,
                error,
            });
        }
        let head = op_head(el)?;
        let mode = match head.version {
            Version::V1_0 => NamedMode::Strict,
            Version::Legacy => NamedMode::Legacy,
        };
        match decode_named(el, 1, mode) {
            Ok((args, unkeyed_resources)) => Ok(head.into_op(args, unkeyed_resources)),
            Err(error) => Err(OpDecodeError {
                token: Some(head.token),
                version: Some(head.version),
                error,
            }),
        }
    }
}

/// The attributes of an `<op>`, decoded (everything but the children).
pub(crate) struct OpHead {
    pub(crate) token: RequestToken,
    pub(crate) version: Version,
    op_type: CompactString,
    timeout: Option<u32>,
    scope: Option<Scope>,
    window: Option<u8>,
}

impl OpHead {
    pub(crate) fn into_op(self, args: Args, unkeyed_resources: Vec<Resource>) -> Op {
        Op {
            version: self.version,
            token: self.token,
            op_type: self.op_type,
            timeout: self.timeout,
            scope: self.scope,
            window: self.window,
            args,
            unkeyed_resources,
        }
    }
}

/// Decode the attributes of an `<op>` in the order of [`Op::decode`]: token, version, then the
/// rest.
pub(crate) fn op_head<A: Attrs + ?Sized>(el: &A) -> Result<OpHead, OpDecodeError> {
    let token = match el.attr("token") {
        None => Err(DecodeError::new(Rule::BadToken, "<op> has no token")),
        Some(t) => RequestToken::parse(t),
    };
    let token = match token {
        Ok(t) => t,
        Err(error) => {
            return Err(OpDecodeError {
                token: None,
                version: None,
                error,
            })
        }
    };
    let version = match parse_version(el.attr("version")) {
        Ok(v) => v,
        Err(error) => {
            return Err(OpDecodeError {
                token: Some(token),
                version: None,
                error,
            })
        }
    };
    match op_head_rest(el, version) {
        Ok((op_type, timeout, scope, window)) => Ok(OpHead {
            token,
            version,
            op_type,
            timeout,
            scope,
            window,
        }),
        Err(error) => Err(OpDecodeError {
            token: Some(token),
            version: Some(version),
            error,
        }),
    }
}

type OpRest = (CompactString, Option<u32>, Option<Scope>, Option<u8>);

fn op_head_rest<A: Attrs + ?Sized>(el: &A, version: Version) -> Result<OpRest, DecodeError> {
    {
        let raw_type = required(el, "type")?;
        // [VAP-OPS-012]; legacy verbs are bad-value ([VAP-VER-011]).
        let op_type = Resource::parse(raw_type)
            .map_err(|e| DecodeError::new(Rule::BadAttribute, format!("op type: {}", e.detail)))?
            .into_compact();
        let timeout = match el.attr("timeout") {
            None if version == Version::V1_0 => {
                return Err(DecodeError::new(
                    Rule::MissingAttribute,
                    "a 1.0 op requires timeout",
                ))
            }
            None => None,
            Some(t) => Some(
                parse_uint(t)
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|v| (1..=MAX_TIMEOUT_MS).contains(v))
                    .ok_or_else(|| {
                        DecodeError::new(
                            Rule::BadAttribute,
                            format!("timeout {t:?} is not 1..={MAX_TIMEOUT_MS}"),
                        )
                    })?,
            ),
        };
        let scope = match el.attr("scope") {
            None => None,
            Some(s) => Some(Scope::parse(s).ok_or_else(|| {
                DecodeError::new(
                    Rule::BadAttribute,
                    format!("scope {s:?} is not all|single|direct"),
                )
            })?),
        };
        let window = match el.attr("window") {
            None => None,
            Some(w) => Some(
                parse_uint(w)
                    .and_then(|v| u8::try_from(v).ok())
                    .filter(|v| (1..=MAX_WINDOW).contains(v))
                    .ok_or_else(|| {
                        DecodeError::new(
                            Rule::BadAttribute,
                            format!("window {w:?} is not 1..={MAX_WINDOW}"),
                        )
                    })?,
            ),
        };
        Ok((op_type, timeout, scope, window))
    }
}

/// Why an op could not be decoded, and how far decoding got (see [`Op::decode`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct OpDecodeError {
    /// The token, when it was usable (then the responder answers with an op result and a
    /// terminal error); `None` → answer the IQ with an IQ error.
    pub token: Option<RequestToken>,
    /// The version, when it was readable.
    pub version: Option<Version>,
    /// The broken rule.
    pub error: DecodeError,
}

impl OpDecodeError {
    /// The condition to report: `error.rule.condition()` (bad-request when no token).
    pub fn condition(&self) -> Condition {
        if self.token.is_none() {
            Condition::BadRequest
        } else {
            self.error.rule.condition()
        }
    }
}

/// Parse the `version` attribute: absent → legacy; `<digits>.<digits>` with major 1 → 1.0
/// (`[VAP-VER-003]`); anything else → [`Rule::UnsupportedVersion`] (`[VAP-VER-004]`).
pub fn parse_version(v: Option<&str>) -> Result<Version, DecodeError> {
    let Some(v) = v else {
        return Ok(Version::Legacy);
    };
    // What every 1.0 peer sends, without the general checks below.
    if v == "1.0" {
        return Ok(Version::V1_0);
    }
    let ok_form = v.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    });
    let major = v.split('.').next().unwrap_or("").trim_start_matches('0');
    if ok_form && major == "1" {
        Ok(Version::V1_0)
    } else {
        Err(DecodeError::new(
            Rule::UnsupportedVersion,
            format!("version {v:?} is not 1.x"),
        ))
    }
}

/// The payload of the IQ result to an op: `<op token="T:S"/>`, optionally `ack="true"` (fast
/// path, 1.0 only). Other attributes and children (legacy full echo) are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpResult {
    /// The rotated op token.
    pub token: OpToken,
    /// Fast path: the op is already acknowledged; no separate `<ack>` follows.
    pub ack: bool,
}

impl OpResult {
    /// Encode.
    pub fn to_element(&self) -> Element {
        let mut el = Element::bare("op", NS);
        set_attr(&mut el, "token", self.token.text());
        if self.ack {
            set_attr(&mut el, "ack", "true");
        }
        el
    }

    /// Decode. Accepts the `op` child in [`NS`], or without namespace / in `jabber:client`
    /// (R style), and ignores every other attribute and child (E's full echo)
    /// (`[VAP-OPS-022]`, `[VAP-VER-015]`).
    pub fn from_element(el: &Element) -> Result<Self, DecodeError> {
        if el.name() != "op" {
            return Err(DecodeError::new(
                Rule::UnexpectedElement,
                format!("expected <op>, got <{}>", el.name()),
            ));
        }
        let ns = el.ns();
        if ns != NS && ns != crate::xml::JABBER_CLIENT && !ns.is_empty() {
            return Err(DecodeError::new(
                Rule::WrongNamespace,
                format!("<op> is in namespace {ns:?}"),
            ));
        }
        op_result_attrs(el)
    }
}

/// The attributes of an op result (shared with the streaming decoder).
pub(crate) fn op_result_attrs<A: Attrs + ?Sized>(el: &A) -> Result<OpResult, DecodeError> {
    {
        let token = OpToken::parse(
            el.attr("token")
                .ok_or_else(|| DecodeError::new(Rule::BadToken, "op result has no token"))?,
        )?;
        let ack = match el.attr("ack") {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(o) => {
                return Err(DecodeError::new(
                    Rule::BadAttribute,
                    format!("ack {o:?} is not true|false"),
                ))
            }
        };
        Ok(OpResult { token, ack })
    }
}

/// `<ack token="T:S"/>`: the op is authorized and will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Op token.
    pub token: OpToken,
}

/// `<nack token="T:S" reason="…"/>`: the op is refused (terminal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// Op token.
    pub token: OpToken,
    /// Why (default `not-authorized`).
    pub reason: Condition,
}

/// `<data token="T:S" seq="n">named values</data>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    /// Op token.
    pub token: OpToken,
    /// Sequence number (0, 1, 2, … per op). Absent from legacy peers.
    pub seq: Option<u64>,
    /// Named values.
    pub args: Args,
}

/// `<final token="T:S" count="n">[named values]</final>`: terminal success. Named values are the
/// fast-path last chunk (counted in `count`).
#[derive(Debug, Clone, PartialEq)]
pub struct Final {
    /// Op token.
    pub token: OpToken,
    /// Number of data chunks sent (including values on this final). Absent from legacy peers.
    pub count: Option<u64>,
    /// Fast-path last chunk (empty otherwise).
    pub args: Args,
}

/// `<error token type condition><string name="reason">…</string></error>`: terminal failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// Op token.
    pub token: OpToken,
    /// `type` (`error` when absent, as legacy peers did, or unknown, `[VAP-ERR-004]`).
    pub error_type: ErrorType,
    /// `condition` (absent from legacy peers).
    pub condition: Option<Condition>,
    /// `<string name="reason">` text.
    pub reason: Option<String>,
}

/// `<cancel token="T:S"/>`: the requester asks the responder to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancel {
    /// Op token.
    pub token: OpToken,
}

/// `<load value inflight capacity interval/>` in a directed presence to the dispatcher
/// (`[VAP-LOAD]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// Load figure, finite and ≥ 0; smaller = less loaded.
    pub value: f64,
    /// Ops in flight.
    pub inflight: Option<u32>,
    /// Capacity (max concurrent ops).
    pub capacity: Option<u32>,
    /// Reporting interval in ms (100..=60 000). See [`Load::interval_ms`].
    pub interval: Option<u32>,
}

impl Load {
    /// Effective interval (default 1000 ms).
    pub fn interval_ms(&self) -> u32 {
        self.interval.unwrap_or(DEFAULT_LOAD_INTERVAL_MS)
    }
}

fn expect(el: &Element, name: &str) -> Result<(), DecodeError> {
    if el.name() != name {
        return Err(DecodeError::new(
            Rule::UnexpectedElement,
            format!("expected <{name}>, got <{}>", el.name()),
        ));
    }
    if !el.has_ns(NS) {
        return Err(DecodeError::new(
            Rule::WrongNamespace,
            format!("<{}> is in namespace {:?}, not {NS}", el.name(), el.ns()),
        ));
    }
    Ok(())
}

fn required<'a, A: Attrs + ?Sized>(el: &'a A, attr: &'a str) -> Result<&'a str, DecodeError> {
    el.attr(attr).ok_or_else(|| {
        DecodeError::new(
            Rule::MissingAttribute,
            format!("<{}> requires attribute {attr}", el.el_name()),
        )
    })
}

/// Strict unsigned decimal (digits only, no sign, no whitespace).
fn parse_uint(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Up to 19 digits cannot overflow.
    if s.len() <= 19 {
        return Some(s.bytes().fold(0, |v, b| v * 10 + u64::from(b - b'0')));
    }
    s.parse().ok()
}

pub(crate) fn uint_attr<A: Attrs + ?Sized>(
    el: &A,
    name: &'static str,
) -> Result<Option<u64>, DecodeError> {
    match el.attr(name) {
        None => Ok(None),
        Some(v) => parse_uint(v).map(Some).ok_or_else(|| {
            DecodeError::new(
                Rule::BadAttribute,
                format!("{name} {v:?} is not an unsigned integer"),
            )
        }),
    }
}

fn token_el(name: &str, token: &OpToken) -> Element {
    let mut el = Element::bare(name, NS);
    set_attr(&mut el, "token", token.text());
    el
}

pub(crate) fn op_token<A: Attrs + ?Sized>(el: &A) -> Result<OpToken, DecodeError> {
    OpToken::parse(required(el, "token")?)
}

impl Ack {
    /// Encode.
    pub fn to_element(&self) -> Element {
        token_el("ack", &self.token)
    }
    /// Decode.
    pub fn from_element(el: &Element) -> Result<Self, DecodeError> {
        expect(el, "ack")?;
        Ok(Ack {
            token: op_token(el)?,
        })
    }
}

impl Nack {
    /// Encode.
    pub fn to_element(&self) -> Element {
        let mut el = token_el("nack", &self.token);
        set_attr(&mut el, "reason", self.reason.as_str().to_string());
        el
    }
    /// Decode.
    pub fn from_element(el: &Element) -> Result<Self, DecodeError> {
        expect(el, "nack")?;
        nack_attrs(el)
    }
}

pub(crate) fn nack_attrs<A: Attrs + ?Sized>(el: &A) -> Result<Nack, DecodeError> {
    {
        Ok(Nack {
            token: op_token(el)?,
            reason: el
                .attr("reason")
                .map_or(Condition::NotAuthorized, Condition::parse),
        })
    }
}

impl Cancel {
    /// Encode.
    pub fn to_element(&self) -> Element {
        token_el("cancel", &self.token)
    }
    /// Decode.
    pub fn from_element(el: &Element) -> Result<Self, DecodeError> {
        expect(el, "cancel")?;
        Ok(Cancel {
            token: op_token(el)?,
        })
    }
}

impl Data {
    /// Encode.
    pub fn to_element(&self) -> Element {
        let mut el = token_el("data", &self.token);
        if let Some(s) = self.seq {
            set_attr(&mut el, "seq", s.to_string());
        }
        self.args.encode_into(&mut el);
        el
    }
    /// Decode `<data>` (`[VAP-OPS-034]`, `[VAP-OPS-040]`). Unnamed children are rejected
    /// ([`Rule::MissingName`]). The 2008 `<result>` element is not data (`[VAP-VER]` §11.5).
    pub fn from_element(el: &Element) -> Result<Self, DecodeError> {
        expect(el, "data")?;
        let token = op_token(el)?;
        let seq = uint_attr(el, "seq")?;
        let (args, _) = decode_named(el, 1, NamedMode::Strict)?;
        Ok(Data { token, seq, args })
    }
}

impl Final {
    /// Encode.
    pub fn to_element(&self) -> Element {
        let mut el = token_el("final", &self.token);
        if let Some(c) = self.count {
            set_attr(&mut el, "count", c.to_string());
        }
        self.args.encode_into(&mut el);
        el
    }
    /// Decode.
    pub fn from_element(el: &Element) -> Result<Self, DecodeError> {
        expect(el, "final")?;
        let token = op_token(el)?;
        let count = uint_attr(el, "count")?;
        let (args, _) = decode_named(el, 1, NamedMode::Strict)?;
        Ok(Final { token, count, args })
    }
}

impl OpError {
    /// Encode.
    pub fn to_element(&self) -> Element {
        let mut el = token_el("error", &self.token);
        set_attr(&mut el, "type", self.error_type.as_str());
        if let Some(c) = &self.condition {
            set_attr(&mut el, "condition", c.as_str().to_string());
        }
        if let Some(r) = &self.reason {
            Args::new()
                .with("reason", Value::String(r.as_str().into()))
                .encode_into(&mut el);
        }
        el
    }
    /// Decode. Only `<string name="reason">` is read from the children; other children are
    /// ignored (legacy peers put marshalled exceptions there).
    pub fn from_element(el: &Element) -> Result<Self, DecodeError> {
        expect(el, "error")?;
        let (token, error_type, condition) = op_error_attrs(el)?;
        let mut reason = None;
        for c in element_children(el)? {
            if c.attr("name") == Some("reason") && c.name() == "string" {
                if let Value::String(s) = Value::from_element(c)? {
                    reason = Some(s.into());
                }
            }
        }
        Ok(OpError {
            token,
            error_type,
            condition,
            reason,
        })
    }
}

/// The attributes of an `<error>` (shared with the streaming decoder).
pub(crate) fn op_error_attrs<A: Attrs + ?Sized>(
    el: &A,
) -> Result<(OpToken, ErrorType, Option<Condition>), DecodeError> {
    let token = op_token(el)?;
    // Unknown types are a terminal failure all the same ([VAP-ERR-004]): read as `error`.
    let error_type = el
        .attr("type")
        .and_then(ErrorType::parse)
        .unwrap_or(ErrorType::Error);
    let condition = el.attr("condition").map(Condition::parse);
    Ok((token, error_type, condition))
}

impl Load {
    /// Encode.
    pub fn to_element(&self) -> Element {
        let mut el = Element::bare("load", NS);
        set_attr(&mut el, "value", crate::value::format_double(self.value));
        if let Some(v) = self.inflight {
            set_attr(&mut el, "inflight", v.to_string());
        }
        if let Some(v) = self.capacity {
            set_attr(&mut el, "capacity", v.to_string());
        }
        if let Some(v) = self.interval {
            set_attr(&mut el, "interval", v.to_string());
        }
        el
    }
    /// Decode (`[VAP-LOAD-002]`: all four attributes required and in range; a report that
    /// fails is ignored by the dispatcher, `[VAP-LOAD-010]`). Decoded loads have every field
    /// `Some`.
    pub fn from_element(el: &Element) -> Result<Self, DecodeError> {
        expect(el, "load")?;
        load_attrs(el)
    }
}

/// The attributes of a `<load>` (shared with the streaming decoder).
pub(crate) fn load_attrs<A: Attrs + ?Sized>(el: &A) -> Result<Load, DecodeError> {
    {
        let raw = required(el, "value")?;
        let value = crate::value::parse_double(raw)
            .ok()
            .filter(|v| *v >= 0.0)
            .ok_or_else(|| {
                DecodeError::new(
                    Rule::BadAttribute,
                    format!("load value {raw:?} is not a finite number >= 0"),
                )
            })?;
        let u32_attr = |name: &'static str| -> Result<Option<u32>, DecodeError> {
            match uint_attr(el, name)? {
                None => Ok(None),
                Some(v) => u32::try_from(v).map(Some).map_err(|_| {
                    DecodeError::new(Rule::BadAttribute, format!("{name} out of range"))
                }),
            }
        };
        let need = |v: Option<u32>, name: &str| {
            v.ok_or_else(|| {
                DecodeError::new(Rule::MissingAttribute, format!("<load> requires {name}"))
            })
        };
        let inflight = Some(need(u32_attr("inflight")?, "inflight")?);
        let capacity = Some(need(u32_attr("capacity")?, "capacity")?);
        if capacity == Some(0) {
            return Err(DecodeError::new(
                Rule::BadAttribute,
                "capacity must be >= 1",
            ));
        }
        let interval = Some(need(u32_attr("interval")?, "interval")?);
        if let Some(i) = interval {
            if !(100..=60_000).contains(&i) {
                return Err(DecodeError::new(
                    Rule::BadAttribute,
                    format!("interval {i} is not 100..=60000"),
                ));
            }
        }
        Ok(Load {
            value,
            inflight,
            capacity,
            interval,
        })
    }
}

/// Any Vertebra element that arrives as the payload of an IQ **set** (or, for [`Load`], of a
/// presence). The op *result* (`<op token="T:S"/>` in an IQ result) has the same element name as
/// the op and is decoded with [`OpResult::from_element`] instead.
#[derive(Debug, Clone, PartialEq)]
pub enum VertebraPayload {
    /// `<op>`.
    Op(Op),
    /// `<ack>`.
    Ack(Ack),
    /// `<nack>`.
    Nack(Nack),
    /// `<data>`.
    Data(Data),
    /// `<final>`.
    Final(Final),
    /// `<error>`.
    Error(OpError),
    /// `<cancel>`.
    Cancel(Cancel),
    /// `<load>`.
    Load(Load),
}

impl VertebraPayload {
    /// Encode.
    pub fn to_element(&self) -> Element {
        match self {
            VertebraPayload::Op(x) => x.to_element(),
            VertebraPayload::Ack(x) => x.to_element(),
            VertebraPayload::Nack(x) => x.to_element(),
            VertebraPayload::Data(x) => x.to_element(),
            VertebraPayload::Final(x) => x.to_element(),
            VertebraPayload::Error(x) => x.to_element(),
            VertebraPayload::Cancel(x) => x.to_element(),
            VertebraPayload::Load(x) => x.to_element(),
        }
    }

    /// The op token of a per-op stanza (not for `Op` and `Load`).
    pub fn op_token(&self) -> Option<&OpToken> {
        match self {
            VertebraPayload::Ack(x) => Some(&x.token),
            VertebraPayload::Nack(x) => Some(&x.token),
            VertebraPayload::Data(x) => Some(&x.token),
            VertebraPayload::Final(x) => Some(&x.token),
            VertebraPayload::Error(x) => Some(&x.token),
            VertebraPayload::Cancel(x) => Some(&x.token),
            VertebraPayload::Op(_) | VertebraPayload::Load(_) => None,
        }
    }

    /// Whether an element looks like a Vertebra payload at all (right namespace, known name).
    pub fn is_vertebra(el: &Element) -> bool {
        el.has_ns(NS)
            && matches!(
                el.name(),
                "op" | "ack" | "nack" | "data" | "final" | "error" | "cancel" | "load"
            )
    }
}

impl VertebraPayload {
    /// Decode an IQ-set (or presence) payload. An unknown element name is
    /// [`Rule::UnexpectedElement`] (IQ error `bad-request` if in [`NS`], `[VAP-TRN-010]`); an
    /// element of another namespace is [`Rule::WrongNamespace`] (IQ error
    /// `service-unavailable`, `[VAP-TRN-011]`).
    pub fn from_element(el: &Element) -> Result<Self, DecodeError> {
        let known = matches!(
            el.name(),
            "op" | "ack" | "nack" | "data" | "final" | "error" | "cancel" | "load"
        );
        if el.has_ns(NS) && !known {
            return Err(DecodeError::new(
                Rule::UnexpectedElement,
                format!("<{}> is not a Vertebra element", el.name()),
            ));
        }
        if !el.has_ns(NS) {
            return Err(DecodeError::new(
                Rule::WrongNamespace,
                format!("<{}> is in namespace {:?}, not {NS}", el.name(), el.ns()),
            ));
        }
        Ok(match el.name() {
            "op" => VertebraPayload::Op(Op::from_element(el)?),
            "ack" => VertebraPayload::Ack(Ack::from_element(el)?),
            "nack" => VertebraPayload::Nack(Nack::from_element(el)?),
            "data" => VertebraPayload::Data(Data::from_element(el)?),
            "final" => VertebraPayload::Final(Final::from_element(el)?),
            "error" => VertebraPayload::Error(OpError::from_element(el)?),
            "cancel" => VertebraPayload::Cancel(Cancel::from_element(el)?),
            _ => VertebraPayload::Load(Load::from_element(el)?),
        })
    }
}

impl TryFrom<Element> for VertebraPayload {
    type Error = DecodeError;
    fn try_from(el: Element) -> Result<Self, DecodeError> {
        VertebraPayload::from_element(&el)
    }
}

macro_rules! element_conv {
    ($($t:ty),*) => {$(
        impl From<&$t> for Element {
            fn from(x: &$t) -> Element { x.to_element() }
        }
        impl From<$t> for Element {
            fn from(x: $t) -> Element { x.to_element() }
        }
        impl TryFrom<&Element> for $t {
            type Error = DecodeError;
            fn try_from(el: &Element) -> Result<Self, DecodeError> { <$t>::from_element(el) }
        }
    )*};
}
element_conv!(
    Op,
    OpResult,
    Ack,
    Nack,
    Data,
    Final,
    OpError,
    Cancel,
    Load,
    VertebraPayload
);
