//! Typed values (`[VAP-VAL]`): XML-RPC-style elements, their exact semantics, canonical
//! encoding, and the lossless tagged JSON mapping.
//!
//! | XML element | [`Value`] | JSON |
//! |---|---|---|
//! | `i4` (input also `int`, `integer`) | `I4(i32)` | `{"i4":1}` |
//! | `double` | `Double(f64)` finite | `{"double":1.5}` |
//! | `boolean` (`1`/`0`; input also `true`/`false`) | `Boolean(bool)` | `{"boolean":true}` |
//! | `string` | `String` (exact text) | `{"string":"x"}` |
//! | `base64` | `Base64(Vec<u8>)` | `{"base64":"AAE="}` |
//! | `dateTime.iso8601` | `DateTime` (UTC, second precision) | `{"dateTime":"2009-03-17T12:00:00Z"}` |
//! | `list` | `List(Vec<Value>)` | `{"list":[…]}` |
//! | `struct` | `Struct(Args)` ordered, unique names | `{"struct":{…}}` |
//! | `nil` | `Nil` | `{"nil":null}` |
//! | `res` | `Res(Resource)` | `{"res":"/a/b"}` |
//! | `exception` | `Exception{class,message}` | `{"exception":{"class":…,"message":…}}` |

use std::fmt;

use compact_str::CompactString;
use minidom::Element;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{DecodeError, Rule};
use crate::resource::Resource;
use crate::xml::{element_children, scalar_text, set_attr, trim_xml_ws};
use crate::NS;

/// Maximum nesting depth of a value (a scalar has depth 1; `<list><i4/></list>` has depth 2).
pub const MAX_DEPTH: usize = 32;

/// A typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Signed 32-bit integer.
    I4(i32),
    /// Finite IEEE-754 double.
    Double(f64),
    /// Boolean.
    Boolean(bool),
    /// Text, preserved exactly (must consist of XML characters to be encodable). Strings of up
    /// to 24 bytes are stored inline; build one from a `&str` or a `String` with `.into()`.
    String(CompactString),
    /// Bytes.
    Base64(Vec<u8>),
    /// An instant (UTC, second precision).
    DateTime(DateTime),
    /// Ordered, unnamed values.
    List(Vec<Value>),
    /// Ordered named values with unique names.
    Struct(Args),
    /// No value.
    Nil,
    /// A resource path.
    Res(Resource),
    /// An application exception (no backtrace in 1.0).
    Exception(Exception),
}

/// An application exception carried as a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Exception {
    /// Exception class name.
    pub class: String,
    /// Public message.
    pub message: String,
}

/// Ordered named values with unique names: the children of `<op>`, `<data>`, `<final>` and
/// `<struct>`. Insertion order is kept and is the encoding order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args {
    /// Names of up to 24 bytes (nearly all) are stored inline.
    entries: Vec<(CompactString, Value)>,
}

impl Args {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert or replace (a replaced value keeps its original position). Returns the old value.
    pub fn insert(&mut self, name: impl AsRef<str>, value: Value) -> Option<Value> {
        let name = name.as_ref();
        if let Some(slot) = self.entries.iter_mut().find(|(n, _)| n == name) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        self.entries.push((CompactString::new(name), value));
        None
    }

    /// Builder form of [`Args::insert`].
    #[must_use]
    pub fn with(mut self, name: impl AsRef<str>, value: Value) -> Self {
        self.insert(name, value);
        self
    }

    /// Insert, failing on a duplicate name (what the decoder does).
    pub fn try_push(&mut self, name: String, value: Value) -> Result<(), DecodeError> {
        if self.get(&name).is_some() {
            return Err(DecodeError::new(
                Rule::DuplicateName,
                format!("duplicate name {name:?}"),
            ));
        }
        self.entries.push((CompactString::new(name), value));
        Ok(())
    }

    /// From entries whose names are known to be unique (the streaming decoder checks them).
    pub(crate) fn from_unique(entries: Vec<(CompactString, Value)>) -> Self {
        Args { entries }
    }

    /// Value by name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Remove by name.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(n, _)| n == name)?;
        Some(self.entries.remove(i).1)
    }

    /// Entries in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Append another set of named values (later names replace earlier ones).
    pub fn extend(&mut self, other: Args) {
        for (n, v) in other.entries {
            self.insert(n, v);
        }
    }

    /// Top-level named `<res>` values: the op's keyed scoping resources (`[VAP-RES]`).
    pub fn keyed_resources(&self) -> impl Iterator<Item = (&str, &Resource)> {
        self.entries.iter().filter_map(|(n, v)| match v {
            Value::Res(r) => Some((n.as_str(), r)),
            _ => None,
        })
    }

    /// Typed getters returning `None` when absent or of another type.
    pub fn get_i4(&self, name: &str) -> Option<i32> {
        match self.get(name)? {
            Value::I4(v) => Some(*v),
            _ => None,
        }
    }
    /// See [`Args::get_i4`].
    pub fn get_str(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            Value::String(v) => Some(v),
            _ => None,
        }
    }
    /// See [`Args::get_i4`].
    pub fn get_bool(&self, name: &str) -> Option<bool> {
        match self.get(name)? {
            Value::Boolean(v) => Some(*v),
            _ => None,
        }
    }
    /// See [`Args::get_i4`].
    pub fn get_double(&self, name: &str) -> Option<f64> {
        match self.get(name)? {
            Value::Double(v) => Some(*v),
            _ => None,
        }
    }
    /// See [`Args::get_i4`].
    pub fn get_res(&self, name: &str) -> Option<&Resource> {
        match self.get(name)? {
            Value::Res(v) => Some(v),
            _ => None,
        }
    }
    /// See [`Args::get_i4`].
    pub fn get_list(&self, name: &str) -> Option<&[Value]> {
        match self.get(name)? {
            Value::List(v) => Some(v),
            _ => None,
        }
    }
    /// See [`Args::get_i4`].
    pub fn get_struct(&self, name: &str) -> Option<&Args> {
        match self.get(name)? {
            Value::Struct(v) => Some(v),
            _ => None,
        }
    }

    /// Append each named value as a child element of `parent` (the encoding of op/data/final).
    pub fn encode_into(&self, parent: &mut Element) {
        for (name, v) in &self.entries {
            let mut el = v.to_element();
            set_attr(&mut el, "name", name.clone());
            parent.append_child(el);
        }
    }

    /// Check that every value can be encoded faithfully ([`Value::validate`]) and names are
    /// non-empty XML text.
    pub fn validate(&self) -> Result<(), DecodeError> {
        validate_args(self, 1)
    }
}

/// `Value::String` from text: `Value::from("rails")` or `"rails".into()`.
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.into())
    }
}

/// `Value::String` from an owned string.
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s.into())
    }
}

/// `Value::I4`.
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::I4(v)
    }
}

/// `Value::Boolean`.
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}

/// `Value::Res`.
impl From<Resource> for Value {
    fn from(r: Resource) -> Self {
        Value::Res(r)
    }
}

impl FromIterator<(String, Value)> for Args {
    fn from_iter<T: IntoIterator<Item = (String, Value)>>(iter: T) -> Self {
        let mut a = Args::new();
        for (n, v) in iter {
            a.insert(n, v);
        }
        a
    }
}

/// An instant with second precision, always UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DateTime {
    /// Year 0000..=9999.
    pub year: u16,
    /// Month 1..=12.
    pub month: u8,
    /// Day 1..=31 (valid for the month).
    pub day: u8,
    /// Hour 0..=23.
    pub hour: u8,
    /// Minute 0..=59.
    pub minute: u8,
    /// Second 0..=59.
    pub second: u8,
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl DateTime {
    /// Build and validate: a real calendar date in UTC years 0001 … 9999, hours 0–23, minutes and
    /// seconds 0–59 (`[VAP-VAL-026]`: year 0000 and second 60 are rejected).
    pub fn new(
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
    ) -> Result<Self, DecodeError> {
        let bad = |what: &str| DecodeError::new(Rule::BadDateTime, what.to_string());
        if !(1..=9999).contains(&year) {
            return Err(bad("year out of range 0001..=9999"));
        }
        if !(1..=12).contains(&month) {
            return Err(bad("month out of range"));
        }
        if day == 0 || day > days_in_month(i64::from(year), month) {
            return Err(bad("day out of range for month"));
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(bad("time out of range"));
        }
        Ok(DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
    }

    /// Seconds since the Unix epoch.
    pub fn unix_seconds(&self) -> i64 {
        days_from_civil(
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
        ) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// From seconds since the Unix epoch (fails outside UTC years 0001..=9999, `[VAP-VAL-026]`).
    pub fn from_unix_seconds(secs: i64) -> Result<Self, DecodeError> {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        if !(1..=9999).contains(&y) {
            return Err(DecodeError::new(Rule::BadDateTime, "year out of range"));
        }
        DateTime::new(
            y as u16,
            m as u8,
            d as u8,
            (rem / 3600) as u8,
            (rem % 3600 / 60) as u8,
            (rem % 60) as u8,
        )
    }

    /// Parse the accepted input forms (`[VAP-VAL-025]`, calendar-checked `[VAP-VAL-026]`): basic `YYYYMMDDTHH:MM:SS` or
    /// extended `YYYY-MM-DDTHH:MM:SS`, then optionally `Z` or `±HH:MM` / `±HHMM`. Without a zone
    /// the time is taken as UTC. The result is converted to UTC.
    pub fn parse(s: &str) -> Result<Self, DecodeError> {
        let bad = || {
            DecodeError::new(
                Rule::BadDateTime,
                format!("{s:?} is not an accepted dateTime"),
            )
        };
        let b = s.as_bytes();
        let num = |bytes: &[u8]| -> Option<u32> {
            if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
                return None;
            }
            bytes
                .iter()
                .try_fold(0u32, |acc, d| Some(acc * 10 + u32::from(d - b'0')))
        };
        // Date part.
        let (y, mo, d, rest) = if b.len() >= 10 && b[4] == b'-' && b[7] == b'-' {
            (num(&b[0..4]), num(&b[5..7]), num(&b[8..10]), &b[10..])
        } else if b.len() >= 8 {
            (num(&b[0..4]), num(&b[4..6]), num(&b[6..8]), &b[8..])
        } else {
            return Err(bad());
        };
        let (Some(y), Some(mo), Some(d)) = (y, mo, d) else {
            return Err(bad());
        };
        // Time part: THH:MM:SS
        if rest.len() < 9 || rest[0] != b'T' || rest[3] != b':' || rest[6] != b':' {
            return Err(bad());
        }
        let (Some(h), Some(mi), Some(sec)) = (num(&rest[1..3]), num(&rest[4..6]), num(&rest[7..9]))
        else {
            return Err(bad());
        };
        let zone = &rest[9..];
        let offset_secs: i64 = match zone {
            b"" | b"Z" => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
            | [sign @ (b'+' | b'-'), h1, h2, m1, m2] => {
                let (Some(oh), Some(om)) = (num(&[*h1, *h2]), num(&[*m1, *m2])) else {
                    return Err(bad());
                };
                if oh > 23 || om > 59 {
                    return Err(bad());
                }
                let o = i64::from(oh * 3600 + om * 60);
                if *sign == b'-' {
                    -o
                } else {
                    o
                }
            }
            _ => return Err(bad()),
        };
        let local = DateTime::new(
            u16::try_from(y).map_err(|_| bad())?,
            u8::try_from(mo).map_err(|_| bad())?,
            u8::try_from(d).map_err(|_| bad())?,
            u8::try_from(h).map_err(|_| bad())?,
            u8::try_from(mi).map_err(|_| bad())?,
            u8::try_from(sec).map_err(|_| bad())?,
        )?;
        if offset_secs == 0 {
            return Ok(local);
        }
        DateTime::from_unix_seconds(local.unix_seconds() - offset_secs)
    }

    /// The canonical wire form `YYYYMMDDTHH:MM:SSZ` (`[VAP-VAL-024]`).
    pub fn to_wire(&self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// The JSON form `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, `[VAP-VAL-039]`).
    pub fn to_rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

// ---------------------------------------------------------------------------------------------
// Scalars: text forms

/// Parse `i4` text (`[VAP-VAL-009]`; `int`/`integer` accepted, `[VAP-VAL-011]`): optional sign, decimal digits, signed 32-bit range. XML
/// whitespace around the number is ignored.
pub fn parse_i4(text: &str) -> Result<i32, DecodeError> {
    // The common form, 1 to 9 digits and nothing else, fits in an i32 as it stands.
    if (1..=9).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(text.bytes().fold(0i32, |v, b| v * 10 + i32::from(b - b'0')));
    }
    let t = trim_xml_ws(text);
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecodeError::new(
            Rule::BadI4,
            format!("{text:?} is not a decimal integer"),
        ));
    }
    t.parse::<i32>()
        .map_err(|_| DecodeError::new(Rule::BadI4, format!("{text:?} is outside signed 32-bit")))
}

/// Parse `double` text: decimal with optional fraction and exponent; must be finite
/// (`NaN`, `INF` and overflow are rejected, `[VAP-VAL-012]`, `[VAP-VAL-013]`).
pub fn parse_double(text: &str) -> Result<f64, DecodeError> {
    let t = trim_xml_ws(text);
    let bad = || DecodeError::new(Rule::BadDouble, format!("{text:?} is not a finite decimal"));
    let b = t.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - s;
    }
    if int_digits + frac_digits == 0 {
        return Err(bad());
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return Err(bad());
        }
    }
    if i != b.len() {
        return Err(bad());
    }
    let v: f64 = t.parse().map_err(|_| bad())?;
    if !v.is_finite() {
        return Err(bad());
    }
    Ok(v)
}

/// Split Rust's `{:e}` text of a positive finite value into (digit string, exponent).
fn split_sci(text: &str) -> (String, i32) {
    let (mant, exp) = text.split_once('e').unwrap_or((text, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    (mant.chars().filter(|c| *c != '.').collect(), exp)
}

/// Shortest round-trip digits `d1…dk` and exponent `e` of a positive finite `v`, with the tie
/// rule of `[VAP-VAL-014]` step 2.
///
/// `{:e}` gives the shortest digits that round-trip, and the closest of them, except that on an
/// exact tie between two equally short, equally close candidates it rounds up. A tie is only
/// possible when `v` lies exactly halfway between the returned digits `D` and a neighbour
/// `D ± 1` (same length, same exponent), and both round-trip, so they are at most one ulp apart:
/// for a normal `v`, ulp(v) ≤ 2⁻⁵²·v < 2.3·10^(e−15) while the neighbours are 10^(e−k+1) apart,
/// so `k ≥ 16`. For those (and for subnormals) with an odd last digit, the midpoint
/// `(D + O) / 2` is compared exactly with `v` ([`exact_decimal`]); on equality, and when the even
/// neighbour also parses back to `v`, the neighbour wins.
fn shortest_digits(v: f64) -> (String, i32) {
    let (digits, exp) = split_sci(&format!("{v:e}"));
    let k = digits.len();
    let last = digits.as_bytes()[k - 1];
    if last % 2 == 0 || k > 17 || (k < 16 && v >= f64::MIN_POSITIVE) {
        return (digits, exp);
    }
    let Ok(d) = digits.parse::<u64>() else {
        return (digits, exp);
    };
    let exact = exact_decimal(v);
    for other in [d - 1, d + 1] {
        let other_text = other.to_string();
        // A neighbour that changes length or ends in 0 would be a shorter string; `{:e}` would
        // have found it, so it cannot be a tie candidate of the same length.
        if other_text.len() != k || other % 10 == 0 {
            continue;
        }
        // Midpoint (D + O) / 2 = min(D, O) followed by the digit 5, one place further down:
        // the integer `mid` times 10^(e − k). It ends in 5, so it has no trailing zero.
        let mid = u128::from(d.min(other)) * 10 + 5;
        let mid_pow = exp - k as i32;
        let tie = match &exact {
            Exact::Small(n, p) => *n == mid && *p == mid_pow,
            Exact::Long => false,
            Exact::Text(digits_text, lead) => {
                let mid_text = mid.to_string();
                *digits_text == mid_text && *lead == mid_pow + mid_text.len() as i32 - 1
            }
        };
        if !tie {
            continue;
        }
        let candidate = format!("{other_text}e{}", exp - (k as i32 - 1));
        if candidate.parse::<f64>().map(f64::to_bits) == Ok(v.to_bits()) {
            return (other_text, exp);
        }
    }
    (digits, exp)
}

/// The exact decimal value of a positive finite `f64`.
enum Exact {
    /// `n × 10^p` with `n` not divisible by 10.
    Small(u128, i32),
    /// More than 38 significant digits: never a midpoint of two ≤ 17-digit strings.
    Long,
    /// Digits without trailing zeros and the exponent of the first one (from `{:.1100e}`, which
    /// is exact: a binary64 value has at most 767 significant decimal digits).
    Text(String, i32),
}

/// `v = M · 2^q` with `M` odd, written exactly in decimal: for `q < 0` it is `M · 5^−q · 10^q`
/// (`M · 5^−q` is odd, so not divisible by 10); for `q ≥ 0` the integer `M · 2^q` with its
/// trailing zeros moved into the exponent. Falls back to the full decimal expansion when the
/// integer does not fit in 128 bits.
fn exact_decimal(v: f64) -> Exact {
    let bits = v.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mut m, mut q) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), biased - 1075)
    };
    if m == 0 {
        return Exact::Small(0, 0);
    }
    let tz = m.trailing_zeros();
    m >>= tz;
    q += tz as i32;
    if q < 0 {
        return match 5u128
            .checked_pow(q.unsigned_abs())
            .and_then(|f| f.checked_mul(u128::from(m)))
        {
            Some(n) => Exact::Small(n, q),
            None => Exact::Long,
        };
    }
    if q <= 127 - 53 {
        let mut n = u128::from(m) << q;
        let mut p = 0;
        while n % 10 == 0 {
            n /= 10;
            p += 1;
        }
        return Exact::Small(n, p);
    }
    let (digits, lead) = split_sci(&format!("{v:.1100e}"));
    Exact::Text(digits.trim_end_matches('0').to_string(), lead)
}

/// Canonical `double` text (`[VAP-VAL-014]`, spec §4.2): the shortest digit string that
/// round-trips; among those the one closest to the value, and on an exact tie the one whose last
/// digit is even (`1059438285926254.25` → `1059438285926254.2`); laid out in plain notation when
/// the decimal exponent `e` (of `d.ddd × 10^e`) satisfies `-4 <= e <= 15`, otherwise as
/// `d.ddde±N` (no exponent padding); no trailing `.0`; negative zero is `-0`. Examples: `0.25`,
/// `1`, `1e+20`, `1.5e-7`, `0.0001`, `-0`.
///
/// Rust's `{:e}` yields the shortest closest digits but rounds exact ties up, so the tie rule is
/// applied here with exact arithmetic (see `shortest_digits`).
pub fn format_double(v: f64) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let (digits, exp) = shortest_digits(v.abs());
    let k = digits.len() as i32;
    let mut out = String::with_capacity(k as usize + 8);
    if v.is_sign_negative() {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else if k <= exp + 1 {
            out.push_str(&digits);
            for _ in 0..(exp + 1 - k) {
                out.push('0');
            }
        } else {
            let point = (exp + 1) as usize;
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp >= 0 { '+' } else { '-' });
        out.push_str(&exp.abs().to_string());
    }
    out
}

/// [`format_double`] appended to `out`. For normal values with 1e-4 <= |v| < 1e15 the canonical
/// form is positional with the shortest round-trip digits whenever those are fewer than 16
/// (no tie correction applies then) — exactly what Rust's `{}` prints, without the allocations.
/// Counting every printed digit over-counts (leading and trailing zeros), which only sends more
/// values to [`format_double`].
pub(crate) fn write_double(out: &mut Vec<u8>, v: f64) {
    use std::io::Write as _;
    if (1e-4..1e15).contains(&v.abs()) {
        let start = out.len();
        if write!(out, "{v}").is_ok() {
            let printed = out.get(start..).unwrap_or_default();
            if printed.iter().filter(|b| b.is_ascii_digit()).count() < 16 {
                return;
            }
        }
        out.truncate(start);
    }
    out.extend_from_slice(format_double(v).as_bytes());
}

/// Parse `boolean` text: `1`, `0`, `true`, `false` (XML whitespace around ignored,
/// `[VAP-VAL-015]`, `[VAP-VAL-016]`).
pub fn parse_boolean(text: &str) -> Result<bool, DecodeError> {
    match trim_xml_ws(text) {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(DecodeError::new(
            Rule::BadBoolean,
            format!("{text:?} is not 1, 0, true or false"),
        )),
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// RFC 4648 base64 with padding and no line breaks (`[VAP-VAL-022]`).
pub fn encode_base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(char::from(B64[(n >> 18) as usize & 63]));
        out.push(char::from(B64[(n >> 12) as usize & 63]));
        out.push(if chunk.len() > 1 {
            char::from(B64[(n >> 6) as usize & 63])
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            char::from(B64[n as usize & 63])
        } else {
            '='
        });
    }
    out
}

/// Decode RFC 4648 base64 (`[VAP-VAL-023]`): XML whitespace anywhere is ignored; padding is required; unused
/// trailing bits must be zero (so every byte string has exactly one accepted spelling modulo
/// whitespace).
pub fn decode_base64(text: &str) -> Result<Vec<u8>, DecodeError> {
    let bad = |why: &str| DecodeError::new(Rule::BadBase64, why.to_string());
    let chars: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .collect();
    if chars.len() % 4 != 0 {
        return Err(bad("length is not a multiple of 4"));
    }
    let val = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::with_capacity(chars.len() / 4 * 3);
    let nchunks = chars.len() / 4;
    for (i, q) in chars.chunks(4).enumerate() {
        let last = i + 1 == nchunks;
        let pad = q.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err(bad("misplaced padding"));
        }
        let mut n = 0u32;
        for (j, c) in q.iter().enumerate() {
            let v = if j >= 4 - pad {
                0
            } else {
                val(*c).ok_or_else(|| bad("character outside the base64 alphabet"))?
            };
            n = (n << 6) | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        match pad {
            0 => out.extend_from_slice(&bytes),
            1 => {
                if bytes[2] != 0 {
                    return Err(bad("non-zero trailing bits"));
                }
                out.extend_from_slice(&bytes[..2]);
            }
            _ => {
                if bytes[1] != 0 || bytes[2] != 0 {
                    return Err(bad("non-zero trailing bits"));
                }
                out.push(bytes[0]);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// XML

impl Value {
    /// The canonical element name of this value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::I4(_) => "i4",
            Value::Double(_) => "double",
            Value::Boolean(_) => "boolean",
            Value::String(_) => "string",
            Value::Base64(_) => "base64",
            Value::DateTime(_) => "dateTime.iso8601",
            Value::List(_) => "list",
            Value::Struct(_) => "struct",
            Value::Nil => "nil",
            Value::Res(_) => "res",
            Value::Exception(_) => "exception",
        }
    }

    /// Canonical encoding as an element in [`NS`] without a `name` attribute.
    pub fn to_element(&self) -> Element {
        let mut el = Element::bare(self.type_name(), NS);
        match self {
            Value::I4(v) => el.append_text(v.to_string()),
            Value::Double(v) => el.append_text(format_double(*v)),
            Value::Boolean(v) => el.append_text(if *v { "1" } else { "0" }),
            Value::String(s) => {
                if !s.is_empty() {
                    el.append_text(s.clone())
                }
            }
            Value::Base64(b) => {
                if !b.is_empty() {
                    el.append_text(encode_base64(b))
                }
            }
            Value::DateTime(d) => el.append_text(d.to_wire()),
            Value::List(items) => {
                for v in items {
                    el.append_child(v.to_element());
                }
            }
            Value::Struct(args) => args.encode_into(&mut el),
            Value::Nil => {}
            Value::Res(r) => el.append_text(r.as_str()),
            Value::Exception(e) => {
                Args::new()
                    .with("class", Value::String(e.class.as_str().into()))
                    .with("message", Value::String(e.message.as_str().into()))
                    .encode_into(&mut el);
            }
        }
        el
    }

    /// Decode one value element (its `name` attribute is not looked at; other attributes are
    /// ignored, `[VAP-VAL-006]`, `[VAP-VAL-030]`). Unknown elements or namespaces are
    /// `[VAP-VAL-005]`; text in containers `[VAP-VAL-007]`; strings exact `[VAP-VAL-017]`,
    /// `[VAP-VAL-018]`, no children `[VAP-VAL-021]`; `nil` empty `[VAP-VAL-027]`; `res`
    /// `[VAP-VAL-028]`; struct names `[VAP-VAL-031]`, `[VAP-VAL-032]`; depth ≤ 32 without
    /// recursion past the limit `[VAP-VAL-033]`, `[VAP-VAL-034]`.
    pub fn from_element(el: &Element) -> Result<Value, DecodeError> {
        decode_value(el, 1)
    }

    /// Check that this value can be encoded faithfully: finite doubles (`[VAP-VAL-012]`),
    /// XML-character strings (`[VAP-VAL-020]`), non-empty unique struct names, depth ≤
    /// [`MAX_DEPTH`] (`[VAP-VAL-035]`). The JSON decoder applies the same rules (`[VAP-VAL-040]`).
    pub fn validate(&self) -> Result<(), DecodeError> {
        validate_value(self, 1)
    }

    /// Nesting depth (scalars are 1).
    pub fn depth(&self) -> usize {
        match self {
            Value::List(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Struct(a) => 1 + a.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            Value::Exception(_) => 2,
            _ => 1,
        }
    }
}

fn validate_value(v: &Value, depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::new(
            Rule::TooDeep,
            "value nesting deeper than 32",
        ));
    }
    match v {
        Value::Double(d) if !d.is_finite() => {
            Err(DecodeError::new(Rule::BadDouble, "non-finite double"))
        }
        Value::String(s) if !crate::xml::is_xml_text(s) => Err(DecodeError::new(
            Rule::MixedContent,
            "string holds a character XML cannot carry",
        )),
        Value::Exception(e)
            if !crate::xml::is_xml_text(&e.class) || !crate::xml::is_xml_text(&e.message) =>
        {
            Err(DecodeError::new(
                Rule::BadException,
                "exception text holds a character XML cannot carry",
            ))
        }
        Value::Exception(_) if depth + 1 > MAX_DEPTH => Err(DecodeError::new(
            Rule::TooDeep,
            "value nesting deeper than 32",
        )),
        Value::List(items) => items.iter().try_for_each(|i| validate_value(i, depth + 1)),
        Value::Struct(a) => validate_args(a, depth + 1),
        _ => Ok(()),
    }
}

fn validate_args(a: &Args, depth: usize) -> Result<(), DecodeError> {
    for (n, v) in a.iter() {
        if n.is_empty() || !crate::xml::is_xml_text(n) {
            return Err(DecodeError::new(Rule::MissingName, "empty or non-XML name"));
        }
        validate_value(v, depth)?;
    }
    Ok(())
}

fn check_ns(el: &Element) -> Result<(), DecodeError> {
    if !el.has_ns(NS) {
        return Err(DecodeError::new(
            Rule::UnknownValueType,
            format!(
                "<{}> is in namespace {:?}, not the Vertebra namespace",
                el.name(),
                el.ns()
            ),
        ));
    }
    Ok(())
}

fn decode_value(el: &Element, depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::new(
            Rule::TooDeep,
            format!("value nesting deeper than {MAX_DEPTH}"),
        ));
    }
    check_ns(el)?;
    Ok(match el.name() {
        "i4" | "int" | "integer" => Value::I4(parse_i4(&scalar_text(el)?)?),
        "double" => Value::Double(parse_double(&scalar_text(el)?)?),
        "boolean" => Value::Boolean(parse_boolean(&scalar_text(el)?)?),
        "string" => Value::String(scalar_text(el)?.into()),
        "base64" => Value::Base64(decode_base64(&scalar_text(el)?)?),
        "dateTime.iso8601" => Value::DateTime(DateTime::parse(trim_xml_ws(&scalar_text(el)?))?),
        "res" => Value::Res(Resource::parse(&scalar_text(el)?)?),
        "nil" => {
            let t = scalar_text(el)?;
            if !crate::xml::is_xml_ws(&t) {
                return Err(DecodeError::new(Rule::BadNil, "<nil> has content"));
            }
            Value::Nil
        }
        "list" => {
            let mut items = Vec::new();
            for c in element_children(el)? {
                items.push(decode_value(c, depth + 1)?);
            }
            Value::List(items)
        }
        "struct" => Value::Struct(decode_named(el, depth + 1, NamedMode::Strict)?.0),
        "exception" => {
            // [VAP-VAL-036] class and message strings; [VAP-VAL-038] other members ignored.
            let mut class = None;
            let mut message = None;
            for c in element_children(el)? {
                let slot = match c.attr("name") {
                    Some("class") => &mut class,
                    Some("message") => &mut message,
                    _ => continue,
                };
                if slot.is_some() {
                    return Err(DecodeError::new(
                        Rule::DuplicateName,
                        "exception member repeated",
                    ));
                }
                match decode_value(c, depth + 1)? {
                    Value::String(s) => *slot = Some(s),
                    _ => {
                        return Err(DecodeError::new(
                            Rule::BadException,
                            "exception class and message must be strings",
                        ))
                    }
                }
            }
            match (class, message) {
                (Some(class), Some(message)) => Value::Exception(Exception {
                    class: class.into(),
                    message: message.into(),
                }),
                _ => {
                    return Err(DecodeError::new(
                        Rule::BadException,
                        "<exception> needs <string name='class'> and <string name='message'>",
                    ))
                }
            }
        }
        other => {
            return Err(DecodeError::new(
                Rule::UnknownValueType,
                format!("<{other}> is not a typed value"),
            ))
        }
    })
}

/// How unnamed children of a named-value container are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedMode {
    /// 1.0: every child must carry a non-empty `name` ([`Rule::MissingName`]).
    Strict,
    /// Legacy (version-less op): unnamed children are ignored, except unnamed `<res>` and `<res>`
    /// named like a path (`name="/mock"`), which are returned separately as key-less resources
    /// (`[VAP-VER-009]`, `[VAP-VER-010]`).
    Legacy,
}

/// Decode the named-value children of a container element (`op`, `data`, `final`, `struct`).
/// Returns the named values and, in [`NamedMode::Legacy`], the unnamed `<res>` values.
pub fn decode_named(
    el: &Element,
    depth: usize,
    mode: NamedMode,
) -> Result<(Args, Vec<Resource>), DecodeError> {
    let mut args = Args::new();
    let mut unnamed_res = Vec::new();
    for c in element_children(el)? {
        let name = c.attr("name").filter(|n| !n.is_empty());
        match (mode, name) {
            // [VAP-VER-009]: a legacy `res` named like a path is a key-less resource.
            (NamedMode::Legacy, Some(n)) if n.starts_with('/') && c.name() == "res" => {
                if let Value::Res(r) = decode_value(c, depth)? {
                    unnamed_res.push(r);
                }
            }
            (_, Some(n)) => {
                let v = decode_value(c, depth)?;
                args.try_push(n.to_string(), v)?;
            }
            // [VAP-VAL-001], [VAP-VAL-003]
            (NamedMode::Strict, None) => {
                return Err(DecodeError::new(
                    Rule::MissingName,
                    format!("<{}> inside <{}> has no name", c.name(), el.name()),
                ))
            }
            // [VAP-VER-009] unnamed res = key-less; [VAP-VER-010] other unnamed ignored.
            (NamedMode::Legacy, None) => {
                if c.name() == "res" && c.has_ns(NS) {
                    if let Value::Res(r) = decode_value(c, depth)? {
                        unnamed_res.push(r);
                    }
                }
            }
        }
    }
    Ok((args, unnamed_res))
}

// ---------------------------------------------------------------------------------------------
// JSON mapping (tagged, lossless)

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Value::I4(v) => m.serialize_entry("i4", v)?,
            Value::Double(v) => m.serialize_entry("double", v)?,
            Value::Boolean(v) => m.serialize_entry("boolean", v)?,
            Value::String(v) => m.serialize_entry("string", v.as_str())?,
            Value::Base64(v) => m.serialize_entry("base64", &encode_base64(v))?,
            Value::DateTime(v) => m.serialize_entry("dateTime", &v.to_rfc3339())?,
            Value::List(v) => m.serialize_entry("list", v)?,
            Value::Struct(v) => m.serialize_entry("struct", v)?,
            Value::Nil => m.serialize_entry("nil", &())?,
            Value::Res(v) => m.serialize_entry("res", v)?,
            Value::Exception(v) => m.serialize_entry("exception", v)?,
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tagged Vertebra value like {\"i4\": 1}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let Some(tag) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("empty object is not a value"));
                };
                let v = match tag.as_str() {
                    "i4" => Value::I4(map.next_value()?),
                    "double" => {
                        let d: f64 = map.next_value()?;
                        if !d.is_finite() {
                            return Err(de::Error::custom("double must be finite"));
                        }
                        Value::Double(d)
                    }
                    "boolean" => Value::Boolean(map.next_value()?),
                    "string" => Value::String(map.next_value::<String>()?.into()),
                    "base64" => {
                        let s: String = map.next_value()?;
                        Value::Base64(decode_base64(&s).map_err(de::Error::custom)?)
                    }
                    "dateTime" => {
                        let s: String = map.next_value()?;
                        Value::DateTime(DateTime::parse(&s).map_err(de::Error::custom)?)
                    }
                    "list" => Value::List(map.next_value()?),
                    "struct" => Value::Struct(map.next_value()?),
                    "nil" => {
                        map.next_value::<()>()?;
                        Value::Nil
                    }
                    "res" => Value::Res(map.next_value()?),
                    "exception" => Value::Exception(map.next_value()?),
                    other => return Err(de::Error::custom(format!("unknown value tag {other:?}"))),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom("a value object has exactly one key"));
                }
                Ok(v)
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (n, v) in self.iter() {
            m.serialize_entry(n, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Args;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of named values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Args, A::Error> {
                let mut a = Args::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    a.try_push(k, v).map_err(de::Error::custom)?;
                }
                Ok(a)
            }
        }
        d.deserialize_map(V)
    }
}

/// Serialize helper so `Vec<Value>` in `List` goes through [`SerializeSeq`] (kept for clarity).
#[allow(dead_code)]
fn serialize_list<S: Serializer>(items: &[Value], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(items.len()))?;
    for i in items {
        seq.serialize_element(i)?;
    }
    seq.end()
}

// ---------------------------------------------------------------------------------------------
// JSON Schema (schemars): a shadow type with the same JSON shape.

#[allow(dead_code)]
mod schema_shadow {
    use std::collections::BTreeMap;

    use schemars::JsonSchema;

    use super::Exception;

    /// A typed value in the tagged JSON mapping: an object with exactly one key naming the type.
    #[derive(JsonSchema)]
    #[schemars(rename = "Value")]
    pub enum ValueJson {
        /// Signed 32-bit integer.
        #[schemars(rename = "i4")]
        I4(i32),
        /// Finite double.
        #[schemars(rename = "double")]
        Double(f64),
        /// Boolean.
        #[schemars(rename = "boolean")]
        Boolean(bool),
        /// Text, exact.
        #[schemars(rename = "string")]
        String(String),
        /// RFC 4648 base64 with padding.
        #[schemars(rename = "base64")]
        Base64(String),
        /// RFC 3339 UTC instant `YYYY-MM-DDTHH:MM:SSZ` (other accepted input forms are normalized).
        #[schemars(rename = "dateTime")]
        DateTime(String),
        /// Ordered values.
        #[schemars(rename = "list")]
        List(Vec<ValueJson>),
        /// Named values (object key order is the wire order; names unique).
        #[schemars(rename = "struct")]
        Struct(BTreeMap<String, ValueJson>),
        /// No value.
        #[schemars(rename = "nil")]
        Nil(()),
        /// Resource path.
        #[schemars(rename = "res")]
        Res(crate::resource::Resource),
        /// Exception.
        #[schemars(rename = "exception")]
        Exception(Exception),
    }

    /// Named values: an object whose keys are the names.
    #[derive(JsonSchema)]
    #[schemars(rename = "Args")]
    pub struct ArgsJson(pub BTreeMap<String, ValueJson>);
}

impl schemars::JsonSchema for Value {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Value".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <schema_shadow::ValueJson as schemars::JsonSchema>::json_schema(g)
    }
}

impl schemars::JsonSchema for Args {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Args".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <schema_shadow::ArgsJson as schemars::JsonSchema>::json_schema(g)
    }
}
