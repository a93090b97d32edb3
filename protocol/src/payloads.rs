//! Typed arguments and results of the dispatcher's operations (`[VAP-DSC]`, `[VAP-SEC]`) and of
//! the conformance test profile (`[VAP-TPF]`), built on [`Args`].
//!
//! Each request type has `to_args` (what goes in `<op>`) and `from_args` (what a dispatcher
//! reads); each response type has `to_args` (what goes in `<data>`) and `from_args`.

use jid::Jid;

use crate::error::{DecodeError, Rule};
use crate::resource::{Resource, ResourceScope};
use crate::value::{Args, Value};

/// `/security/advertise`.
pub const OP_ADVERTISE: &str = "/security/advertise";
/// `/security/discover`.
pub const OP_DISCOVER: &str = "/security/discover";
/// `/security/authorize`.
pub const OP_AUTHORIZE: &str = "/security/authorize";
/// Largest advertisement TTL in seconds.
pub const MAX_ADVERTISE_TTL: u32 = 86_400;

/// Test-profile operation paths (`[VAP-TPF]`).
pub mod test_profile {
    /// Returns its named values unchanged in one data.
    pub const ECHO: &str = "/vertebra/test/echo";
    /// `count` data chunks of `size` bytes, each with `index`.
    pub const STREAM: &str = "/vertebra/test/stream";
    /// Sleeps `ms`, honouring cancel and deadline.
    pub const SLEEP: &str = "/vertebra/test/sleep";
    /// Fails with `condition` and `reason`.
    pub const FAIL: &str = "/vertebra/test/fail";
    /// Side-effect counter.
    pub const COUNTER: &str = "/vertebra/test/counter";
    /// Sets the reported load.
    pub const SET_LOAD: &str = "/vertebra/test/set-load";
}

pub use test_profile as test_ops;

fn bad(detail: impl Into<String>) -> DecodeError {
    DecodeError::new(Rule::BadPayload, detail)
}

fn res_list(values: &[Value], what: &str) -> Result<Vec<Resource>, DecodeError> {
    values
        .iter()
        .map(|v| match v {
            Value::Res(r) => Ok(r.clone()),
            _ => Err(bad(format!("{what}: list items must be <res>"))),
        })
        .collect()
}

/// The R HEAD legacy form puts the arguments inside `<struct name="job">`.
fn unwrap_job(a: &Args) -> &Args {
    match (a.get_struct("job"), a.get("operation")) {
        (Some(job), None) => job,
        _ => a,
    }
}

fn parse_jid(s: &str, what: &str) -> Result<Jid, DecodeError> {
    Jid::new(s).map_err(|e| DecodeError::new(Rule::BadJid, format!("{what}: {e}")))
}

/// Keyed scope as `<struct name="resources">` with one `<res name=key>` per entry (discover,
/// authorize). Key-less entries cannot be represented and are skipped.
fn scope_to_struct(scope: &ResourceScope) -> Args {
    let mut a = Args::new();
    for e in scope.iter() {
        if let Some(k) = &e.key {
            a.insert(k.clone(), Value::Res(e.resource.clone()));
        }
    }
    a
}

/// Read a `resources` struct whose members are `<res>` or `<list>` of `<res>`.
fn scope_from_struct(a: &Args) -> Result<ResourceScope, DecodeError> {
    let mut scope = ResourceScope::new();
    for (k, v) in a.iter() {
        match v {
            Value::Res(r) => scope.push(Some(k), r.clone()),
            Value::List(items) => {
                for r in res_list(items, "resources")? {
                    scope.push(Some(k), r);
                }
            }
            _ => return Err(bad("resources: members must be <res> or <list> of <res>")),
        }
    }
    Ok(scope)
}

/// `/security/advertise` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct AdvertiseRequest {
    /// `<list name="operations"><res>…</res></list>`.
    pub operations: Vec<Resource>,
    /// `<struct name="resources"><list name="KEY"><res>…</res></list>…</struct>`.
    pub resources: ResourceScope,
    /// `<i4 name="ttl">` seconds, 0..=86 400 (0 = remove).
    pub ttl: u32,
    /// Optional `<string name="advertiser">`; must name the sender (else nack, `[VAP-SEC]`).
    pub advertiser: Option<String>,
}

impl AdvertiseRequest {
    /// Encode as op arguments.
    pub fn to_args(&self) -> Args {
        let mut res = Args::new();
        for e in self.resources.iter() {
            let key = e.key.clone().unwrap_or_default();
            match res.remove(&key) {
                Some(Value::List(mut l)) => {
                    l.push(Value::Res(e.resource.clone()));
                    res.insert(key, Value::List(l));
                }
                _ => {
                    res.insert(key, Value::List(vec![Value::Res(e.resource.clone())]));
                }
            }
        }
        let mut a = Args::new()
            .with(
                "operations",
                Value::List(self.operations.iter().cloned().map(Value::Res).collect()),
            )
            .with("resources", Value::Struct(res))
            .with("ttl", Value::I4(self.ttl as i32));
        if let Some(adv) = &self.advertiser {
            a.insert("advertiser", Value::String(adv.clone()));
        }
        a
    }

    /// Decode from op arguments.
    pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
        let operations = match a.get("operations") {
            None => Vec::new(),
            Some(Value::List(l)) => res_list(l, "operations")?,
            Some(_) => return Err(bad("operations must be a list of <res>")),
        };
        let resources = match a.get("resources") {
            None => ResourceScope::new(),
            Some(Value::Struct(s)) => scope_from_struct(s)?,
            // E form: a list of unkeyed res, registered key-less ([VAP-VER-020]).
            Some(Value::List(l)) => res_list(l, "resources")?
                .into_iter()
                .map(|resource| crate::resource::KeyedResource {
                    key: None,
                    resource,
                })
                .collect(),
            Some(_) => return Err(bad("resources must be a struct")),
        };
        let ttl = a.get_i4("ttl").ok_or_else(|| bad("ttl (i4) is required"))?;
        let ttl = u32::try_from(ttl)
            .ok()
            .filter(|t| *t <= MAX_ADVERTISE_TTL)
            .ok_or_else(|| bad(format!("ttl {ttl} is not 0..={MAX_ADVERTISE_TTL}")))?;
        let advertiser = match a.get("advertiser") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("advertiser must be a string")),
        };
        Ok(AdvertiseRequest {
            operations,
            resources,
            ttl,
            advertiser,
        })
    }
}

/// `/security/advertise` result: `<boolean name="response">`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvertiseResponse {
    /// Accepted.
    pub ok: bool,
}

impl AdvertiseResponse {
    /// Encode.
    pub fn to_args(&self) -> Args {
        Args::new().with("response", Value::Boolean(self.ok))
    }
    /// Decode.
    pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
        Ok(AdvertiseResponse {
            ok: a
                .get_bool("response")
                .ok_or_else(|| bad("response (boolean) is required"))?,
        })
    }
}

/// `/security/discover` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverRequest {
    /// `<res name="operation">`.
    pub operation: Resource,
    /// Optional `<struct name="resources">` of keyed `<res>`.
    pub resources: ResourceScope,
    /// Optional `<i4 name="limit">` (≥ 1).
    pub limit: Option<u32>,
}

impl DiscoverRequest {
    /// Encode.
    pub fn to_args(&self) -> Args {
        let mut a = Args::new().with("operation", Value::Res(self.operation.clone()));
        if !self.resources.is_empty() {
            a.insert("resources", Value::Struct(scope_to_struct(&self.resources)));
        }
        if let Some(l) = self.limit {
            a.insert("limit", Value::I4(i32::try_from(l).unwrap_or(i32::MAX)));
        }
        a
    }
    /// Decode (also the legacy R form with every argument inside `<struct name="job">`,
    /// `[VAP-VER-019]`).
    pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
        let a = unwrap_job(a);
        let operation = a
            .get_res("operation")
            .cloned()
            .ok_or_else(|| bad("operation (res) is required"))?;
        let resources = match a.get("resources") {
            None => ResourceScope::new(),
            Some(Value::Struct(s)) => scope_from_struct(s)?,
            Some(_) => return Err(bad("resources must be a struct")),
        };
        let limit = match a.get("limit") {
            None => None,
            Some(Value::I4(l)) if *l >= 1 => Some(*l as u32),
            Some(_) => return Err(bad("limit must be an i4 >= 1")),
        };
        Ok(DiscoverRequest {
            operation,
            resources,
            limit,
        })
    }
}

/// `/security/discover` result: parallel lists, least loaded first.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverResponse {
    /// `<list name="jids"><string>full-jid</string>…</list>`.
    pub jids: Vec<Jid>,
    /// `<list name="loads"><double>…</double>…</list>` (same length). An agent that has never
    /// reported load is `f64::INFINITY` here and `<nil/>` on the wire (`[VAP-DSC-014]`), which
    /// also sorts it after every reporting agent (`[VAP-DSC-016]`).
    pub loads: Vec<f64>,
}

impl DiscoverResponse {
    /// Encode.
    pub fn to_args(&self) -> Args {
        Args::new()
            .with(
                "jids",
                Value::List(
                    self.jids
                        .iter()
                        .map(|j| Value::String(j.to_string()))
                        .collect(),
                ),
            )
            .with(
                "loads",
                Value::List(
                    self.loads
                        .iter()
                        .map(|l| {
                            if l.is_finite() {
                                Value::Double(*l)
                            } else {
                                Value::Nil
                            }
                        })
                        .collect(),
                ),
            )
    }
    /// Decode.
    pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
        let jids = a
            .get_list("jids")
            .ok_or_else(|| bad("jids (list) is required"))?
            .iter()
            .map(|v| match v {
                Value::String(s) => parse_jid(s, "jids"),
                _ => Err(bad("jids items must be strings")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let loads = match a.get_list("loads") {
            None => Vec::new(),
            Some(l) => l
                .iter()
                .map(|v| match v {
                    Value::Double(d) => Ok(*d),
                    Value::I4(i) => Ok(f64::from(*i)),
                    Value::Nil => Ok(f64::INFINITY),
                    _ => Err(bad("loads items must be doubles or nil")),
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if loads.len() != jids.len() {
            return Err(bad("loads and jids differ in length"));
        }
        Ok(DiscoverResponse { jids, loads })
    }
}

/// `/security/authorize` arguments (asked by the responder before it acks).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizeRequest {
    /// `<string name="from">` requester full JID.
    pub from: Jid,
    /// `<string name="to">` responder full JID.
    pub to: Jid,
    /// `<res name="operation">`.
    pub operation: Resource,
    /// `<struct name="resources">` keyed resources of the op.
    pub resources: ResourceScope,
}

impl AuthorizeRequest {
    /// Encode.
    pub fn to_args(&self) -> Args {
        Args::new()
            .with("from", Value::String(self.from.to_string()))
            .with("to", Value::String(self.to.to_string()))
            .with("operation", Value::Res(self.operation.clone()))
            .with("resources", Value::Struct(scope_to_struct(&self.resources)))
    }
    /// Decode (also the legacy R form inside `<struct name="job">`, `[VAP-VER-019]`).
    pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
        let a = unwrap_job(a);
        let from = parse_jid(
            a.get_str("from")
                .ok_or_else(|| bad("from (string) is required"))?,
            "from",
        )?;
        let to = parse_jid(
            a.get_str("to")
                .ok_or_else(|| bad("to (string) is required"))?,
            "to",
        )?;
        let operation = a
            .get_res("operation")
            .cloned()
            .ok_or_else(|| bad("operation (res) is required"))?;
        let resources = match a.get("resources") {
            None => ResourceScope::new(),
            Some(Value::Struct(s)) => scope_from_struct(s)?,
            Some(_) => return Err(bad("resources must be a struct")),
        };
        Ok(AuthorizeRequest {
            from,
            to,
            operation,
            resources,
        })
    }
}

/// `/security/authorize` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorizeResponse {
    /// `<string name="response">authorized|notauthorized</string>`.
    pub authorized: bool,
    /// `<i4 name="ttl">` cache seconds (0 = do not cache).
    pub ttl: u32,
}

impl AuthorizeResponse {
    /// Encode.
    pub fn to_args(&self) -> Args {
        Args::new()
            .with(
                "response",
                Value::String(
                    if self.authorized {
                        "authorized"
                    } else {
                        "notauthorized"
                    }
                    .to_string(),
                ),
            )
            .with(
                "ttl",
                Value::I4(i32::try_from(self.ttl).unwrap_or(i32::MAX)),
            )
    }
    /// Decode. Anything but `authorized` is a denial (default deny).
    pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
        let r = a
            .get_str("response")
            .ok_or_else(|| bad("response (string) is required"))?;
        let ttl = a.get_i4("ttl").unwrap_or(0).max(0) as u32;
        Ok(AuthorizeResponse {
            authorized: r == "authorized",
            ttl,
        })
    }
}
