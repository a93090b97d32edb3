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

    // Typed arguments and results (spec 12.2). `from_args` rejects missing required values,
    // values of the wrong type and values out of range with `Rule::BadPayload`, whose wire
    // condition is `bad-value` (`[VAP-TPF-004]`); unknown names are ignored.

    use crate::error::{Condition, DecodeError, ErrorType, Rule, Travel};
    use crate::value::{Args, Value};

    /// Largest `count` of [`StreamRequest`].
    pub const MAX_STREAM_COUNT: u32 = 10_000;
    /// Largest `size` of [`StreamRequest`].
    pub const MAX_STREAM_SIZE: u32 = 60_000;

    fn bad(detail: impl Into<String>) -> DecodeError {
        DecodeError::new(Rule::BadPayload, detail)
    }

    /// A required (or, with `optional`, absent → `None`) `i4` in `lo..=hi`.
    fn i4_in(
        a: &Args,
        name: &str,
        lo: i32,
        hi: i32,
        optional: bool,
    ) -> Result<Option<u32>, DecodeError> {
        match a.get(name) {
            None if optional => Ok(None),
            None => Err(bad(format!("{name}: required i4 is missing"))),
            Some(Value::I4(v)) if (lo..=hi).contains(v) => Ok(Some(*v as u32)),
            Some(Value::I4(v)) => Err(bad(format!("{name}: {v} is not {lo}..={hi}"))),
            Some(v) => Err(bad(format!("{name}: expected i4, got {}", v.type_name()))),
        }
    }

    fn string_opt(a: &Args, name: &str) -> Result<Option<String>, DecodeError> {
        match a.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.to_string())),
            Some(v) => Err(bad(format!(
                "{name}: expected string, got {}",
                v.type_name()
            ))),
        }
    }

    /// `/vertebra/test/echo` arguments and result: any named values, returned unchanged in one
    /// chunk (`[VAP-TPF-006]`).
    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct Echo {
        /// The named values.
        pub values: Args,
    }

    impl Echo {
        /// Encode (op arguments, or the one result chunk).
        pub fn to_args(&self) -> Args {
            self.values.clone()
        }
        /// Decode (never fails: every named value is echoed).
        pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
            Ok(Echo { values: a.clone() })
        }
    }

    /// `/vertebra/test/stream` arguments (`[VAP-TPF-007]`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct StreamRequest {
        /// `count` i4 0..=10 000: number of data chunks.
        pub count: u32,
        /// `size` i4 0..=60 000 (absent: 0): length of each chunk's `payload`.
        pub size: Option<u32>,
    }

    impl StreamRequest {
        /// Effective size (absent: 0).
        pub fn size(&self) -> u32 {
            self.size.unwrap_or(0)
        }
        /// Encode as op arguments.
        pub fn to_args(&self) -> Args {
            let mut a = Args::new().with("count", Value::I4(self.count as i32));
            if let Some(s) = self.size {
                a.insert("size", Value::I4(s as i32));
            }
            a
        }
        /// Decode from op arguments.
        pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
            let count = i4_in(a, "count", 0, MAX_STREAM_COUNT as i32, false)?.unwrap_or(0);
            let size = i4_in(a, "size", 0, MAX_STREAM_SIZE as i32, true)?;
            Ok(StreamRequest { count, size })
        }
        /// The chunks a conforming agent sends, in order.
        pub fn expected_chunks(&self) -> impl Iterator<Item = StreamChunk> + '_ {
            (0..self.count).map(|i| StreamChunk::new(i, self.size()))
        }
    }

    /// One `/vertebra/test/stream` data chunk: `index` and, when the size is > 0, `payload`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct StreamChunk {
        /// `index` i4 ≥ 0 (0-based).
        pub index: u32,
        /// `payload` string of `size` × `x` (absent when the size is 0).
        pub payload: Option<String>,
    }

    impl StreamChunk {
        /// The chunk with this index for this size.
        pub fn new(index: u32, size: u32) -> Self {
            StreamChunk {
                index,
                payload: (size > 0).then(|| "x".repeat(size as usize)),
            }
        }
        /// Encode as data values.
        pub fn to_args(&self) -> Args {
            let mut a = Args::new().with("index", Value::I4(self.index as i32));
            if let Some(p) = &self.payload {
                a.insert("payload", Value::String(p.as_str().into()));
            }
            a
        }
        /// Decode from data values (`payload`, when present, must be `x` letters only and at
        /// most 60 000 of them).
        pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
            let index = i4_in(a, "index", 0, i32::MAX, false)?.unwrap_or(0);
            let payload = string_opt(a, "payload")?;
            if let Some(p) = &payload {
                if p.is_empty()
                    || p.len() > MAX_STREAM_SIZE as usize
                    || p.bytes().any(|b| b != b'x')
                {
                    return Err(bad("payload: must be 1..=60000 letters x"));
                }
            }
            Ok(StreamChunk { index, payload })
        }
    }

    /// `/vertebra/test/sleep` arguments (`[VAP-TPF-009]`, `[VAP-TPF-010]`); the final carries
    /// no values.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SleepRequest {
        /// `ms` i4 ≥ 0.
        pub ms: u32,
    }

    impl SleepRequest {
        /// Encode as op arguments.
        pub fn to_args(&self) -> Args {
            Args::new().with("ms", Value::I4(self.ms.min(i32::MAX as u32) as i32))
        }
        /// Decode from op arguments.
        pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
            let ms = i4_in(a, "ms", 0, i32::MAX, false)?.unwrap_or(0);
            Ok(SleepRequest { ms })
        }
    }

    /// `/vertebra/test/fail` arguments (`[VAP-TPF-011]`, `[VAP-TPF-012]`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FailRequest {
        /// `condition` string: the condition of the error to end with.
        pub condition: String,
        /// Optional `reason` string.
        pub reason: Option<String>,
    }

    impl FailRequest {
        /// Encode as op arguments.
        pub fn to_args(&self) -> Args {
            let mut a =
                Args::new().with("condition", Value::String(self.condition.as_str().into()));
            if let Some(r) = &self.reason {
                a.insert("reason", Value::String(r.as_str().into()));
            }
            a
        }
        /// Decode from op arguments.
        pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
            let condition = string_opt(a, "condition")?
                .ok_or_else(|| bad("condition: required string is missing"))?;
            let reason = string_opt(a, "reason")?;
            Ok(FailRequest { condition, reason })
        }
        /// The error to end with: the condition and the `type` the error table assigns to it
        /// (`[VAP-TPF-011]`), or `None` when it is not an error condition of 10-errors.md, which
        /// the agent treats as `bad-value` (`[VAP-TPF-012]`).
        pub fn error(&self) -> Option<(ErrorType, Condition)> {
            let c = Condition::parse(&self.condition);
            match c.travel() {
                Travel::Error(t) => Some((t, c)),
                _ => None,
            }
        }
    }

    /// `/vertebra/test/counter` arguments (`[VAP-TPF-013]`…`[VAP-TPF-015]`).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct CounterRequest {
        /// Optional `read` boolean: return the value without incrementing.
        pub read: Option<bool>,
    }

    impl CounterRequest {
        /// True for a read-only call.
        pub fn is_read(&self) -> bool {
            self.read == Some(true)
        }
        /// Encode as op arguments.
        pub fn to_args(&self) -> Args {
            match self.read {
                None => Args::new(),
                Some(r) => Args::new().with("read", Value::Boolean(r)),
            }
        }
        /// Decode from op arguments.
        pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
            let read = match a.get("read") {
                None => None,
                Some(Value::Boolean(b)) => Some(*b),
                Some(v) => {
                    return Err(bad(format!(
                        "read: expected boolean, got {}",
                        v.type_name()
                    )))
                }
            };
            Ok(CounterRequest { read })
        }
    }

    /// `/vertebra/test/counter` result chunk: `value` i4.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CounterResult {
        /// The counter after this call.
        pub value: i32,
    }

    impl CounterResult {
        /// Encode as data values.
        pub fn to_args(&self) -> Args {
            Args::new().with("value", Value::I4(self.value))
        }
        /// Decode from data values.
        pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
            match a.get("value") {
                Some(Value::I4(v)) => Ok(CounterResult { value: *v }),
                Some(v) => Err(bad(format!("value: expected i4, got {}", v.type_name()))),
                None => Err(bad("value: required i4 is missing")),
            }
        }
    }

    /// `/vertebra/test/set-load` arguments (`[VAP-TPF-016]`); the final carries no values.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct SetLoadRequest {
        /// `value` double, finite and ≥ 0.
        pub value: f64,
    }

    impl SetLoadRequest {
        /// Encode as op arguments.
        pub fn to_args(&self) -> Args {
            Args::new().with("value", Value::Double(self.value))
        }
        /// Decode from op arguments.
        pub fn from_args(a: &Args) -> Result<Self, DecodeError> {
            match a.get("value") {
                Some(Value::Double(v)) if v.is_finite() && *v >= 0.0 => {
                    Ok(SetLoadRequest { value: *v })
                }
                Some(Value::Double(v)) => Err(bad(format!("value: {v} is not finite and >= 0"))),
                Some(v) => Err(bad(format!(
                    "value: expected double, got {}",
                    v.type_name()
                ))),
                None => Err(bad("value: required double is missing")),
            }
        }
    }
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
            a.insert("advertiser", Value::String(adv.as_str().into()));
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
            Some(Value::String(s)) => Some(s.to_string()),
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
                        .map(|j| Value::String(j.to_string().into()))
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
            .with("from", Value::String(self.from.to_string().into()))
            .with("to", Value::String(self.to.to_string().into()))
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
                    .into(),
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
