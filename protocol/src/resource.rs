//! Resources: normalized paths, segment-wise matching, keyed resources (`[VAP-RES]`).

use std::fmt;
use std::str::FromStr;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, Rule};
use crate::swar::{bytes_in, word_at, HI8};

/// Maximum length of a resource path in bytes (a sanity bound against abuse).
pub const MAX_RESOURCE_BYTES: usize = 4096;

/// A normalized resource path such as `/cluster/rd00`.
///
/// Grammar: a leading `/` (`[VAP-RES-001]`); segments separated by `/`; one trailing `/` is
/// removed (`[VAP-RES-003]`); empty, `//` and surrounding whitespace are rejected
/// (`[VAP-RES-002]`, `[VAP-RES-008]`); segment characters are any Unicode scalar except `/` and
/// control characters (`[VAP-RES-005]`); compared exactly, case-sensitive, no Unicode
/// normalization, `.`/`..` have no meaning (`[VAP-RES-006]`, `[VAP-RES-007]`). `/` alone is the
/// root (zero segments).
///
/// Paths of up to 24 bytes are stored inline (no allocation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource(CompactString);

impl Resource {
    /// The root resource `/`.
    pub fn root() -> Self {
        Resource(CompactString::const_new("/"))
    }

    /// Parse and normalize a path (see the type docs for the grammar).
    pub fn parse(s: &str) -> Result<Self, DecodeError> {
        match Self::parse_plain(s) {
            Some(r) => Ok(r),
            None => Self::parse_general(s),
        }
    }

    /// [`Resource::parse`] by the rules as written.
    fn parse_general(s: &str) -> Result<Self, DecodeError> {
        if s.len() > MAX_RESOURCE_BYTES {
            return Err(DecodeError::new(
                Rule::BadResource,
                "resource path too long",
            ));
        }
        if s.trim() != s {
            return Err(DecodeError::new(
                Rule::BadResource,
                format!("resource {s:?} has surrounding whitespace"),
            ));
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(DecodeError::new(
                Rule::BadResource,
                format!("resource {s:?} does not start with '/'"),
            ));
        };
        if rest.is_empty() {
            return Ok(Resource::root());
        }
        let body = rest.strip_suffix('/').unwrap_or(rest);
        // [VAP-RES-008] applies to the normalized path too ([VAP-RES-003]): `/a /` would
        // normalize to `/a `, which no receiver accepts, so a sender could not emit it in
        // normalized form ([VAP-RES-004]). Found by fuzzing (value_decode round trip).
        if body.trim_end() != body {
            return Err(DecodeError::new(
                Rule::BadResource,
                format!("resource {s:?} normalizes to a path with trailing whitespace"),
            ));
        }
        for seg in body.split('/') {
            if seg.is_empty() {
                return Err(DecodeError::new(
                    Rule::BadResource,
                    format!("resource {s:?} has an empty segment"),
                ));
            }
            if seg.chars().any(char::is_control) {
                return Err(DecodeError::new(
                    Rule::BadResource,
                    format!("resource {s:?} has a control character"),
                ));
            }
        }
        let mut path = CompactString::with_capacity(body.len() + 1);
        path.push('/');
        path.push_str(body);
        Ok(Resource(path))
    }

    /// The common case of [`Resource::parse`] in one pass: a valid path of printable ASCII.
    /// `None` for anything else (then the general rules decide, with their error messages).
    /// In printable ASCII the only whitespace is the space and there is no control character,
    /// so the rules reduce to: a leading `/`, no space at the end (before or after removing
    /// one trailing `/`), no empty segment (no `//`).
    fn parse_plain(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() > MAX_RESOURCE_BYTES || b.first() != Some(&b'/') {
            return None;
        }
        if b.len() >= 8 {
            if !plain_words(b) {
                return None;
            }
        } else {
            let mut prev = 0u8;
            for &c in b {
                if !(0x20..0x7f).contains(&c) || (c == b'/' && prev == b'/') {
                    return None;
                }
                prev = c;
            }
        }
        if b.len() == 1 {
            return Some(Resource::root());
        }
        // Without one trailing `/` ([VAP-RES-003]); `//` is excluded above, so the body is not
        // empty and has no empty segment.
        let path = s.strip_suffix('/').unwrap_or(s);
        if path.ends_with(' ') || s.ends_with(' ') {
            return None;
        }
        Some(Resource(CompactString::new(path)))
    }

    /// The path text, owned, in its inline-capable form.
    pub(crate) fn into_compact(self) -> CompactString {
        self.0
    }

    /// The normalized path text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The segments (empty for the root).
    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        let body = &self.0[1..];
        body.split('/').filter(|s| !s.is_empty())
    }

    /// Number of segments.
    pub fn depth(&self) -> usize {
        self.segments().count()
    }

    /// True when `self` is a segment-prefix of `other` (every segment of `self` equals the
    /// corresponding segment of `other`). `/a` is a prefix of `/a/b` but not of `/ab`.
    pub fn is_prefix_of(&self, other: &Resource) -> bool {
        if self.is_root() {
            return true;
        }
        match other.0.strip_prefix(self.0.as_str()) {
            Some("") => true,
            Some(rest) => rest.starts_with('/'),
            None => false,
        }
    }

    /// "A matches B" iff one is a segment-prefix of the other (`[VAP-RES-009]`; never a string
    /// prefix, `[VAP-RES-010]`).
    pub fn matches(&self, other: &Resource) -> bool {
        self.is_prefix_of(other) || other.is_prefix_of(self)
    }

    /// Append a segment (must not contain `/` or control characters).
    pub fn join(&self, segment: &str) -> Result<Self, DecodeError> {
        if self.is_root() {
            Resource::parse(&format!("/{segment}"))
        } else {
            Resource::parse(&format!("{}/{segment}", self.0))
        }
        .and_then(|r| {
            if r.depth() == self.depth() + 1 {
                Ok(r)
            } else {
                Err(DecodeError::new(Rule::BadResource, "bad segment"))
            }
        })
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Resource {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Resource::parse(s)
    }
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Resource::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Resource {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Resource".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Normalized resource path: leading '/', non-empty segments, no trailing '/' (except the root '/')",
            "pattern": "^/([^/\\u0000-\\u001f\\u007f-\\u009f]+(/[^/\\u0000-\\u001f\\u007f-\\u009f]+)*)?$"
        })
    }
}

/// A resource with an optional key: top-level named `<res>` values of an op are scoping
/// resources under their name; legacy unnamed `<res>` are key-less (`[VAP-RES]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyedResource {
    /// The key (the value's name), or `None` for a legacy key-less resource.
    pub key: Option<String>,
    /// The resource.
    pub resource: Resource,
}

/// A set of keyed resources (the scope of an op, an advertisement or a discovery query).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceScope {
    entries: Vec<KeyedResource>,
}

impl ResourceScope {
    /// Empty scope.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a resource under an optional key.
    pub fn push(&mut self, key: Option<&str>, resource: Resource) {
        self.entries.push(KeyedResource {
            key: key.map(str::to_string),
            resource,
        });
    }

    /// Entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &KeyedResource> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Resources under `key` (key-less entries are not included).
    pub fn get<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Resource> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.key.as_deref() == Some(key))
            .map(|e| &e.resource)
    }

    /// Whether a query scope is satisfied by an offered scope (`self` = offered):
    /// every query term must match (segment-wise, [`Resource::matches`]) at least one offered
    /// resource under the same key; a key-less query term may match an offered resource under
    /// any key. An empty query is satisfied by anything.
    pub fn satisfies(&self, query: &ResourceScope) -> bool {
        query.entries.iter().all(|q| {
            self.entries
                .iter()
                .any(|o| (q.key.is_none() || q.key == o.key) && q.resource.matches(&o.resource))
        })
    }
}

impl FromIterator<KeyedResource> for ResourceScope {
    fn from_iter<T: IntoIterator<Item = KeyedResource>>(iter: T) -> Self {
        ResourceScope {
            entries: iter.into_iter().collect(),
        }
    }
}

/// For `b` of at least 8 bytes: printable ASCII (0x20–0x7E) without `//`, eight bytes at a
/// time (the last word overlaps the one before it).
fn plain_words(b: &[u8]) -> bool {
    let mut at = 0;
    // The high bit of lane 0 when the byte before `at` is a `/`.
    let mut carry = 0u64;
    loop {
        let Some(w) = word_at(b, at) else {
            return false;
        };
        if w & HI8 != 0 || bytes_in(w, 0x20, 0x7e) != HI8 {
            return false;
        }
        let slash = bytes_in(w, b'/', b'/');
        // A `/` right after a `/`: inside the word, or across from the byte before it.
        if slash & ((slash << 8) | carry) != 0 {
            return false;
        }
        if at + 8 >= b.len() {
            return true;
        }
        let next = (at + 8).min(b.len() - 8);
        // Lane of the byte before `next` in this word.
        let k = next - 1 - at;
        carry = (slash >> (8 * k)) & 0x80;
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass common case agrees with the rules as written, on every string of up to 6
    /// characters from an alphabet of the interesting characters.
    #[test]
    fn plain_fast_path_matches_the_rules() {
        let alphabet = ["/", "a", " ", "\t", "\u{7f}", "é", "\u{85}"];
        let mut strings = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..6 {
            let mut next = Vec::new();
            for s in &strings {
                for c in alphabet {
                    next.push(format!("{s}{c}"));
                }
            }
            all.extend(next.iter().cloned());
            strings = next;
        }
        for s in &all {
            let general = Resource::parse_general(s);
            match Resource::parse_plain(s) {
                Some(r) => assert_eq!(Some(&r), general.as_ref().ok(), "{s:?}"),
                None => assert!(
                    general.is_err() || !s.bytes().all(|c| (0x20..0x7f).contains(&c)),
                    "{s:?}"
                ),
            }
            assert_eq!(Resource::parse(s).ok(), general.ok(), "{s:?}");
        }
    }

    /// The same for longer strings (the word-at-a-time path), drawn at random with `//` and
    /// the other interesting bytes at every position around the word boundaries.
    #[test]
    fn plain_words_match_the_rules() {
        let alphabet = ["/", "a", "b", "c", ".", " ", "/", "\u{7f}", "\t", "é"];
        let mut rnd = crate::swar::test_rng(0x9e37_79b9_7f4a_7c15u64);
        let (mut plain, mut total) = (0, 0);
        for _ in 0..200_000 {
            let len = 7 + (rnd() % 24) as usize;
            let rare = rnd() % 8 == 0;
            let mut s = String::from("/");
            for _ in 1..len {
                let k = (rnd() % if rare { 10 } else { 5 }) as usize;
                s.push_str(alphabet[k]);
            }
            let general = Resource::parse_general(&s);
            total += 1;
            match Resource::parse_plain(&s) {
                Some(r) => {
                    plain += 1;
                    assert_eq!(Some(&r), general.as_ref().ok(), "{s:?}");
                }
                None => assert!(
                    general.is_err() || !s.bytes().all(|c| (0x20..0x7f).contains(&c)),
                    "{s:?}"
                ),
            }
        }
        assert!(plain > total / 5, "{plain} of {total} on the plain path");
    }
}
