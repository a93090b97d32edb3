//! Tokens (`[VAP-OPS]` tokens): the requester token `T`, the op token `T:S`, CSPRNG generation
//! and the rotation rule.
//!
//! * A generated segment is 32 lowercase hex characters (128 bits) from the OS CSPRNG
//!   (`getrandom`).
//! * On input any `[0-9A-Fa-f]+` segment is accepted (`[VAP-OPS-005]`; [`MAX_SEGMENT_LEN`] is
//!   only the stanza-size bound); tokens are compared exactly (case-sensitive, `[VAP-OPS-004]`).
//! * More than two `:`-separated segments are rejected ([`crate::error::Rule::TooManyTokenSegments`]).
//! * Rotation: the op result carries `X:S` where `X` is the last segment of the incoming token
//!   and `S` is fresh.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, Rule};
use crate::swar::{bytes_in, word_at, HI8, LO8};

/// Upper bound on the length of one token segment accepted on input. The spec sets no limit
/// (`[VAP-OPS-005]`: any `[0-9A-Fa-f]+`); this bound only equals the largest stanza a peer
/// should send (`[VAP-TRN-004]`, 65 536 bytes), so no spec-conforming token is refused.
pub const MAX_SEGMENT_LEN: usize = 65_536;

/// One token segment: non-empty ASCII hex, as received (case kept; compared exactly).
///
/// Segments of up to 32 characters (every generated one) are stored inline, so
/// parsing or cloning a token does not allocate.
#[derive(Clone)]
pub struct Token(Repr);

/// Longest segment stored inline in a [`Token`] (the length of a generated segment).
const INLINE_LEN: usize = 32;

#[derive(Clone)]
enum Repr {
    /// The first `len` bytes of the array (ASCII hex).
    Inline { len: u8, bytes: [u8; INLINE_LEN] },
    /// Longer segments (only ever received, never generated).
    Heap(Box<str>),
}

impl Token {
    /// Store a validated hex segment.
    fn from_hex(s: &str) -> Self {
        let b = s.as_bytes();
        if let Ok(bytes) = <[u8; INLINE_LEN]>::try_from(b) {
            // The generated length: a copy of fixed size, without a `memcpy` call.
            Token(Repr::Inline {
                len: INLINE_LEN as u8,
                bytes,
            })
        } else if b.len() <= INLINE_LEN {
            let mut bytes = [0u8; INLINE_LEN];
            bytes[..b.len()].copy_from_slice(b);
            // `b.len() <= 32` fits in a byte.
            Token(Repr::Inline {
                len: b.len() as u8,
                bytes,
            })
        } else {
            Token(Repr::Heap(s.into()))
        }
    }
}

// Equality, hashing and order are those of the text (the derived ones would see the unused
// tail of the inline array).
impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for Token {}
impl std::hash::Hash for Token {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h);
    }
}
impl PartialOrd for Token {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Token {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Token").field(&self.as_str()).finish()
    }
}

impl Token {
    /// A fresh 128-bit token: 32 lowercase hex characters from the OS CSPRNG.
    ///
    /// # Errors
    /// Fails only when the operating system's random source fails.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        let mut hex = [0u8; INLINE_LEN];
        for (i, b) in bytes.into_iter().enumerate() {
            hex[2 * i] = HEX[usize::from(b >> 4)];
            hex[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        Ok(Token(Repr::Inline {
            len: INLINE_LEN as u8,
            bytes: hex,
        }))
    }

    /// Parse one segment (`[0-9A-Fa-f]+`, at most [`MAX_SEGMENT_LEN`]).
    pub fn parse(s: &str) -> Result<Self, DecodeError> {
        if s.is_empty() || s.len() > MAX_SEGMENT_LEN || !s.bytes().all(|b| IS_HEX[b as usize]) {
            return Err(DecodeError::new(
                Rule::BadToken,
                format!("token segment {s:?} is not 1..={MAX_SEGMENT_LEN} hex characters"),
            ));
        }
        Ok(Token::from_hex(s))
    }

    /// The text as bytes (ASCII hex).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Repr::Heap(s) => s.as_bytes(),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only validated ASCII hex is ever stored, so this never takes the fallback.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(bytes.get(..usize::from(*len)).unwrap_or_default())
                    .unwrap_or_default()
            }
            Repr::Heap(s) => s,
        }
    }

    /// Whether this segment has the form this crate emits (32 lowercase hex characters).
    pub fn is_canonical(&self) -> bool {
        let s = self.as_str();
        s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `b.is_ascii_hexdigit()` as one table look per byte.
static IS_HEX: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).is_ascii_hexdigit();
        i += 1;
    }
    t
};

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Token {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Token::parse(s)
    }
}

/// A token as it appears on `<op token>`: one segment (`T`, a fresh request) or two (`X:S`,
/// for example a responder that calls the dispatcher on behalf of an op reuses its op token).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestToken {
    /// `T`.
    Single(Token),
    /// `X:S`.
    Pair(OpToken),
}

/// Whether all 8 bytes of `w` are ASCII hex digits (letters tested after folding to lower
/// case).
fn all_hex8(w: u64) -> bool {
    w & HI8 == 0 && (bytes_in(w, b'0', b'9') | bytes_in(w | (LO8 * 0x20), b'a', b'f')) == HI8
}

/// Length of the leading run of hex digits of `b`.
fn hex_run(b: &[u8]) -> usize {
    let mut i = 0;
    while let Some(w) = word_at(b, i) {
        if !all_hex8(w) {
            break;
        }
        i += 8;
    }
    i + b
        .get(i..)
        .unwrap_or_default()
        .iter()
        .take_while(|&&c| IS_HEX[c as usize])
        .count()
}

impl RequestToken {
    /// Parse a 1- or 2-segment token.
    pub fn parse(s: &str) -> Result<Self, DecodeError> {
        match Self::parse_valid(s) {
            Some(t) => Ok(t),
            None => Self::parse_checked(s),
        }
    }

    /// One pass for a valid token (`None` for anything else, which [`Self::parse_checked`]
    /// then reports).
    fn parse_valid(s: &str) -> Option<Self> {
        let n = hex_run(s.as_bytes());
        if n == 0 || n > MAX_SEGMENT_LEN {
            return None;
        }
        let first = Token::from_hex(s.get(..n)?);
        if n == s.len() {
            return Some(RequestToken::Single(first));
        }
        let rest = s.get(n..)?.strip_prefix(':')?;
        let m = hex_run(rest.as_bytes());
        if m == 0 || m > MAX_SEGMENT_LEN || m != rest.len() {
            return None;
        }
        Some(RequestToken::Pair(OpToken {
            requester: first,
            responder: Token::from_hex(rest),
        }))
    }

    /// The general parse, with the error for each kind of bad token.
    fn parse_checked(s: &str) -> Result<Self, DecodeError> {
        // `split(':')` into at most two parts, in one pass over the bytes.
        let b = s.as_bytes();
        let (first, second) = match b.iter().position(|&c| c == b':') {
            None => (s, None),
            Some(i) => (s.get(..i).unwrap_or_default(), s.get(i + 1..)),
        };
        if second.is_some_and(|r| r.bytes().any(|c| c == b':')) {
            return Err(DecodeError::new(
                Rule::TooManyTokenSegments,
                format!("token {s:?} has more than two segments"),
            ));
        }
        let first = Token::parse(first)?;
        Ok(match second {
            None => RequestToken::Single(first),
            Some(second) => RequestToken::Pair(OpToken {
                requester: first,
                responder: Token::parse(second)?,
            }),
        })
    }

    /// The last `:` segment (the `X` of the rotation rule).
    pub fn last(&self) -> &Token {
        match self {
            RequestToken::Single(t) => t,
            RequestToken::Pair(p) => &p.responder,
        }
    }

    /// The rotation rule: `X:S` with `X` the last segment of this token and `S` the responder's
    /// fresh segment.
    pub fn rotate(&self, responder: Token) -> OpToken {
        OpToken {
            requester: self.last().clone(),
            responder,
        }
    }

    /// Rotate with a freshly generated `S`.
    pub fn rotate_fresh(&self) -> Result<OpToken, getrandom::Error> {
        Ok(self.rotate(Token::generate()?))
    }
}

impl fmt::Display for RequestToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestToken::Single(t) => t.fmt(f),
            RequestToken::Pair(p) => p.fmt(f),
        }
    }
}

impl From<Token> for RequestToken {
    fn from(t: Token) -> Self {
        RequestToken::Single(t)
    }
}

impl FromStr for RequestToken {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequestToken::parse(s)
    }
}

/// The op token `T:S` that names one op instance together with the responder's full JID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpToken {
    /// `T` (or `X`): the last segment of the requester's token.
    pub requester: Token,
    /// `S`: the responder's fresh segment.
    pub responder: Token,
}

impl OpToken {
    /// Parse exactly two segments.
    pub fn parse(s: &str) -> Result<Self, DecodeError> {
        match RequestToken::parse(s)? {
            RequestToken::Pair(p) => Ok(p),
            RequestToken::Single(_) => Err(DecodeError::new(
                Rule::BadToken,
                format!("token {s:?} must have two segments T:S"),
            )),
        }
    }

    /// Whether `self` is the rotation of `request` (its first segment is the request's last).
    pub fn is_rotation_of(&self, request: &RequestToken) -> bool {
        &self.requester == request.last()
    }

    /// The text `T:S`, as [`fmt::Display`] writes it, in one allocation of the exact size
    /// (`to_string` goes through the formatter and grows its string several times; a token is
    /// written a few times per op: on the wire and as an index key).
    pub fn text(&self) -> String {
        let (t, s) = (self.requester.as_str(), self.responder.as_str());
        let mut out = String::with_capacity(t.len() + 1 + s.len());
        out.push_str(t);
        out.push(':');
        out.push_str(s);
        out
    }
}

impl fmt::Display for OpToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.requester.as_str())?;
        f.write_str(":")?;
        f.write_str(self.responder.as_str())
    }
}

impl FromStr for OpToken {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OpToken::parse(s)
    }
}

macro_rules! string_serde {
    ($t:ty, $name:literal, $pattern:literal) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                <$t>::from_str(&s).map_err(serde::de::Error::custom)
            }
        }
        impl schemars::JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "pattern": $pattern })
            }
        }
    };
}

string_serde!(Token, "Token", "^[0-9A-Fa-f]+$");
string_serde!(
    RequestToken,
    "RequestToken",
    "^[0-9A-Fa-f]+(:[0-9A-Fa-f]+)?$"
);
string_serde!(OpToken, "OpToken", "^[0-9A-Fa-f]+:[0-9A-Fa-f]+$");

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};

    /// The one-pass parse agrees with the checked one on every input it accepts, and accepts
    /// every valid token (inputs built from hex digits of both cases, `:` and a few other
    /// bytes, at lengths around the 8-byte words and the inline limit).
    #[test]
    fn one_pass_parse_agrees() {
        let alphabet = b"0123456789abcdefABCDEF:g/G@`\x7f ";
        let mut rnd = crate::swar::test_rng(0x2545_f491_4f6c_dd1du64);
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..200_000 {
            let len = (rnd() % 80) as usize;
            let rare = rnd() % 4 == 0;
            let s: String = (0..len)
                .map(|_| {
                    let k = rnd() as usize;
                    let pool = if rare { alphabet.len() } else { 22 };
                    char::from(alphabet[k % pool])
                })
                .collect();
            let s = if rnd() % 3 == 0 && len > 2 {
                let cut = (rnd() as usize) % len;
                format!("{}:{}", &s[..cut], &s[cut..])
            } else {
                s
            };
            let checked = RequestToken::parse_checked(&s);
            match RequestToken::parse_valid(&s) {
                Some(t) => {
                    valid += 1;
                    assert_eq!(Ok(&t), checked.as_ref(), "{s:?}");
                }
                None => {
                    invalid += 1;
                    assert!(
                        checked.is_err(),
                        "{s:?} is valid but the one-pass parse refused it"
                    );
                }
            }
        }
        assert!(
            valid > 10_000 && invalid > 10_000,
            "{valid} valid, {invalid} invalid"
        );
        for w in 0..=u8::MAX {
            let word = u64::from_le_bytes([b'a', b'0', w, b'F', b'9', b'f', b'A', b'5']);
            assert_eq!(all_hex8(word), w.is_ascii_hexdigit(), "byte {w:#x}");
        }
    }

    fn hash(t: &Token) -> u64 {
        let mut h = DefaultHasher::new();
        t.hash(&mut h);
        h.finish()
    }

    /// Inline (up to 32 characters) and heap (longer) segments behave like their text:
    /// equality, hash and order agree with `str`, whatever the storage.
    #[test]
    fn storage_does_not_show() {
        let texts = [
            "a",
            "0A",
            "0a",
            &"f".repeat(31),
            &"f".repeat(32),
            &"f".repeat(33),
            &"F".repeat(200),
        ];
        let tokens: Vec<Token> = texts.iter().map(|s| Token::parse(s).unwrap()).collect();
        for (a, ta) in texts.iter().zip(&tokens) {
            assert_eq!(ta.as_str(), *a);
            assert_eq!(ta.as_bytes(), a.as_bytes());
            assert_eq!(ta.to_string(), *a);
            assert_eq!(format!("{ta:?}"), format!("Token({a:?})"));
            for (b, tb) in texts.iter().zip(&tokens) {
                assert_eq!(ta == tb, a == b, "{a} == {b}");
                assert_eq!(ta.cmp(tb), a.cmp(b), "{a} cmp {b}");
                if ta == tb {
                    assert_eq!(hash(ta), hash(tb));
                }
            }
        }
        let g = Token::generate().unwrap();
        assert!(g.is_canonical());
        assert_eq!(Token::parse(g.as_str()).unwrap(), g);
        assert!(!Token::parse("ABCDEF").unwrap().is_canonical());
    }
}
