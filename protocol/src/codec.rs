//! The byte codec: Vertebra payloads straight from and to XML bytes, without building a
//! `minidom` tree.
//!
//! **Decoding** reads quick-xml events ([`quick_xml::Reader`]: its tokenizer and entity
//! handling) and builds the typed structs directly, with the same
//! attribute functions, value parsers and limits as the tree decoder
//! ([`VertebraPayload::from_element`] on [`crate::xml::parse_element`]).
//!
//! The tree decoder (rxml + minidom) is the reference: it is a strict XML 1.0 parser, while
//! quick-xml is lenient in places (it does not check name characters, `<` in attribute values,
//! whitespace between attributes, `]]>` in text, …). So the streaming decoder only *accepts*
//! documents inside a conservative subset where both parsers provably see the same document:
//! unprefixed element and attribute names of ASCII name characters, every element bound to
//! [`NS`] by a default `xmlns` (declared on the root; any other `xmlns` is exactly [`NS`]), the
//! root element first (no byte order mark, whitespace or declaration before it) and only
//! whitespace after it, no comments / CDATA / processing instructions, no carriage returns or
//! tabs/newlines in attribute values (XML normalizes those), only the five predefined entities
//! and short character references, XML characters only, the size and depth limits of
//! [`crate::xml`]. Anything outside the subset, and every input that is
//! invalid for any reason, is handed to the tree decoder, which then decides — so results *and*
//! error kinds are those of the tree decoder by construction, and the streaming decoder never
//! has to reproduce the order in which the tree decoder reports errors. Real traffic (our own
//! encoder's output and every spec example) stays on the streaming path.
//!
//! **Encoding** writes bytes directly with a small streaming writer whose output is
//! byte-identical to the `minidom`/rxml writer's ([`crate::xml::write_into`] of
//! [`VertebraPayload::to_element`]): the same quoting (`'`), attribute order (sorted by name),
//! `xmlns` placement, self-closing of empty elements and escaping (`<`, `>`, `&`, CR as `&#xd;`;
//! in attributes also `"`, `'`, TAB and LF as character references). It fails exactly where
//! rxml's writer fails: on characters XML cannot carry.
//!
//! Equivalence is tested in `protocol/tests/codec_equiv.rs` (every vector, proptest with
//! random values and mutated bytes) and fuzzed (`fuzz/fuzz_targets/codec_diff.rs`).

use std::borrow::Cow;

use compact_str::CompactString;

use quick_xml::events::attributes::Attributes;
use quick_xml::events::Event;
use quick_xml::Reader;

use crate::error::DecodeError;
use crate::resource::Resource;
use crate::stanza::{
    load_attrs, nack_attrs, op_error_attrs, op_head, op_result_attrs, op_token, uint_attr, Ack,
    Attrs, Cancel, Data, Final, Load, Nack, Op, OpDecodeError, OpError, OpResult, Version,
    VertebraPayload,
};
use crate::swar::{bytes_in, word_at, HI8, LO8};
use crate::token::{OpToken, RequestToken, Token};
use crate::value::{
    decode_base64, encode_base64, format_double, parse_boolean, parse_double, parse_i4,
    write_double, Args, DateTime, Exception, NamedMode, Value, MAX_DEPTH,
};
use crate::xml::{
    is_xml_text, is_xml_ws, parse_element, trim_xml_ws, MAX_XML_BYTES, MAX_XML_DEPTH,
};
use crate::NS;

/// Longest raw attribute value the streaming decoder accepts (rxml refuses tokens longer than
/// its `max_token_length`, 8192 bytes by default; longer values go to the tree decoder).
const MAX_FAST_ATTR: usize = 4096;
/// Most attributes per element the streaming decoder accepts (its duplicate check is linear;
/// a Vertebra element has at most 7, `xmlns` included, which is not kept in the table).
const MAX_FAST_ATTRS: usize = 8;
/// Longest element or attribute name the streaming decoder accepts.
const MAX_FAST_NAME: usize = 256;

/// Encoding failed: a text or attribute holds a character XML cannot carry (the same cases in
/// which the `minidom` writer fails).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode: {detail}")]
pub struct EncodeError {
    /// What could not be written.
    pub detail: String,
}

// ---------------------------------------------------------------------------------------------
// Public entry points

/// Decode an IQ-set (or presence) payload from bytes: the streaming decoder, falling back to the
/// tree decoder for anything outside its subset. Same result and error kind as
/// [`decode_payload_tree`] for every input.
pub fn decode_payload(bytes: &[u8]) -> Result<VertebraPayload, DecodeError> {
    match decode_payload_fast(bytes) {
        Some(p) => Ok(p),
        None => decode_payload_tree(bytes),
    }
}

/// The reference path: [`parse_element`] (no default namespace) then
/// [`VertebraPayload::from_element`].
pub fn decode_payload_tree(bytes: &[u8]) -> Result<VertebraPayload, DecodeError> {
    VertebraPayload::from_element(&parse_element(bytes, None)?)
}

/// The streaming decoder alone: `Some` when the input is inside its subset and valid, `None`
/// when the tree decoder must decide (see the module docs).
pub fn decode_payload_fast(bytes: &[u8]) -> Option<VertebraPayload> {
    let mut rd = Rd::new(bytes)?;
    let p = rd.payload()?;
    rd.end()?;
    Some(p)
}

/// Decode an `<op>` from bytes, reporting how far decoding got (see [`Op::decode`]).
pub fn decode_op(bytes: &[u8]) -> Result<Op, OpDecodeError> {
    match decode_op_fast(bytes) {
        Some(op) => Ok(op),
        None => decode_op_tree(bytes),
    }
}

/// The reference path for [`decode_op`].
pub fn decode_op_tree(bytes: &[u8]) -> Result<Op, OpDecodeError> {
    let el = parse_element(bytes, None).map_err(|error| OpDecodeError {
        token: None,
        version: None,
        error,
    })?;
    Op::decode(&el)
}

/// The streaming decoder alone for [`decode_op`].
pub fn decode_op_fast(bytes: &[u8]) -> Option<Op> {
    let mut rd = Rd::new(bytes)?;
    let (name, empty) = rd.root()?;
    if name != "op" {
        return None;
    }
    let op = rd.op(empty)?;
    rd.end()?;
    Some(op)
}

/// Decode the payload of an op's IQ result (`<op token="T:S"/>`, [`OpResult::from_element`]).
pub fn decode_op_result(bytes: &[u8]) -> Result<OpResult, DecodeError> {
    match decode_op_result_fast(bytes) {
        Some(r) => Ok(r),
        None => decode_op_result_tree(bytes),
    }
}

/// The reference path for [`decode_op_result`].
pub fn decode_op_result_tree(bytes: &[u8]) -> Result<OpResult, DecodeError> {
    OpResult::from_element(&parse_element(bytes, None)?)
}

/// The streaming decoder alone for [`decode_op_result`].
pub fn decode_op_result_fast(bytes: &[u8]) -> Option<OpResult> {
    let mut rd = Rd::new(bytes)?;
    let (name, empty) = rd.root()?;
    if name != "op" {
        return None;
    }
    let r = op_result_attrs(&rd.view(name)).ok()?;
    rd.skip(empty)?;
    rd.end()?;
    Some(r)
}

/// Decode one typed value element ([`Value::from_element`]).
pub fn decode_value(bytes: &[u8]) -> Result<Value, DecodeError> {
    match decode_value_fast(bytes) {
        Some(v) => Ok(v),
        None => decode_value_tree(bytes),
    }
}

/// The reference path for [`decode_value`].
pub fn decode_value_tree(bytes: &[u8]) -> Result<Value, DecodeError> {
    Value::from_element(&parse_element(bytes, None)?)
}

/// The streaming decoder alone for [`decode_value`].
pub fn decode_value_fast(bytes: &[u8]) -> Option<Value> {
    let mut rd = Rd::new(bytes)?;
    let (name, empty) = rd.root()?;
    let v = rd.value(name, empty, 1)?;
    rd.end()?;
    Some(v)
}

/// `<tag xmlns='NS'` of a root element, as one constant piece.
macro_rules! root_head {
    ($tag:literal) => {{
        const L: usize = $tag.len() + NS.len() + 10;
        const B: [u8; L] = cat(&["<", $tag, " xmlns='", NS, "'"]);
        &B
    }};
}

/// Encode a payload, appending to `out` (byte-identical to [`encode_payload_tree`]). On error
/// `out` may hold a partial document.
pub fn encode_payload(p: &VertebraPayload, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let mut w = W { out };
    match p {
        VertebraPayload::Op(x) => w.op(x),
        VertebraPayload::Ack(x) => w.token_only(root_head!("ack"), &x.token),
        VertebraPayload::Cancel(x) => w.token_only(root_head!("cancel"), &x.token),
        VertebraPayload::Nack(x) => {
            w.lit(root_head!("nack"));
            w.attr_cold(b" reason='", x.reason.as_str())?;
            w.attr_num(b" token='", &x.token);
            w.empty_end();
            Ok(())
        }
        VertebraPayload::Data(x) => {
            w.lit(root_head!("data"));
            if let Some(s) = x.seq {
                w.attr_num(b" seq='", s);
            }
            w.attr_num(b" token='", &x.token);
            w.args_body(b"</data>", &x.args)
        }
        VertebraPayload::Final(x) => {
            w.lit(root_head!("final"));
            if let Some(c) = x.count {
                w.attr_num(b" count='", c);
            }
            w.attr_num(b" token='", &x.token);
            w.args_body(b"</final>", &x.args)
        }
        VertebraPayload::Error(x) => {
            w.lit(root_head!("error"));
            if let Some(c) = &x.condition {
                w.attr_cold(b" condition='", c.as_str())?;
            }
            w.attr_num(b" token='", &x.token);
            w.attr_cold(b" type='", x.error_type.as_str())?;
            match &x.reason {
                None => w.empty_end(),
                Some(r) => {
                    w.head_end();
                    w.string_el(b"<string name='", "reason", r)?;
                    w.lit(b"</error>");
                }
            }
            Ok(())
        }
        VertebraPayload::Load(x) => {
            w.lit(root_head!("load"));
            if let Some(v) = x.capacity {
                w.attr_num(b" capacity='", v);
            }
            if let Some(v) = x.inflight {
                w.attr_num(b" inflight='", v);
            }
            if let Some(v) = x.interval {
                w.attr_num(b" interval='", v);
            }
            w.attr_cold(b" value='", &format_double(x.value))?;
            w.empty_end();
            Ok(())
        }
    }
}

/// The reference path: [`VertebraPayload::to_element`] written by `minidom`.
pub fn encode_payload_tree(p: &VertebraPayload, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    crate::xml::write_into(&p.to_element(), out).map_err(|e| EncodeError {
        detail: e.to_string(),
    })
}

/// Encode an op result, appending to `out` (byte-identical to the tree path).
pub fn encode_op_result(r: &OpResult, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let mut w = W { out };
    w.lit(root_head!("op"));
    if r.ack {
        w.lit(b" ack='true'");
    }
    w.attr_num(b" token='", &r.token);
    w.empty_end();
    Ok(())
}

/// Encode one value element (no `name`), appending to `out` (byte-identical to the tree path,
/// which declares [`NS`] on it).
pub fn encode_value(v: &Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    W { out }.value(v, None, true)
}

/// The reference path for [`encode_value`].
pub fn encode_value_tree(v: &Value, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    crate::xml::write_into(&v.to_element(), out).map_err(|e| EncodeError {
        detail: e.to_string(),
    })
}

/// [`encode_payload`] into a new string.
pub fn payload_to_string(p: &VertebraPayload) -> Result<String, EncodeError> {
    let mut out = Vec::with_capacity(256);
    encode_payload(p, &mut out)?;
    // Only UTF-8 is ever written.
    String::from_utf8(out).map_err(|e| EncodeError {
        detail: e.to_string(),
    })
}

impl VertebraPayload {
    /// Decode from XML bytes (streaming; see [`decode_payload`]).
    pub fn from_xml(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_payload(bytes)
    }
    /// Encode to XML bytes, appending to `out` (streaming; see [`encode_payload`]).
    pub fn write_xml(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_payload(self, out)
    }
    /// Encode to an XML string (streaming).
    pub fn to_xml(&self) -> Result<String, EncodeError> {
        payload_to_string(self)
    }
}

impl Op {
    /// Decode from XML bytes (streaming; see [`decode_op`]).
    pub fn from_xml(bytes: &[u8]) -> Result<Self, OpDecodeError> {
        decode_op(bytes)
    }
}

impl OpResult {
    /// Decode from XML bytes (streaming; see [`decode_op_result`]).
    pub fn from_xml(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_op_result(bytes)
    }
    /// Encode to XML bytes, appending to `out`.
    pub fn write_xml(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_op_result(self, out)
    }
}

impl Value {
    /// Decode one value element from XML bytes (streaming; see [`decode_value`]).
    pub fn from_xml(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_value(bytes)
    }
    /// Encode as an element (no `name`), appending to `out`.
    pub fn write_xml(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_value(self, out)
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming decoder

/// One event of the conservative subset.
enum Ev<'i> {
    /// An element start (attributes in [`Rd::attrs`] until the next event); `empty` for `<x/>`.
    Open { name: &'i str, empty: bool },
    /// Literal text (no references).
    Text(&'i str),
    /// A character from an entity or character reference.
    Char(char),
    /// An element end.
    Close,
}

struct Rd<'i> {
    r: Reader<&'i [u8]>,
    input: &'i str,
    /// Number of open elements.
    depth: usize,
    /// Attributes of the element last opened (the first `nattrs`; no heap allocation).
    attrs: [(&'i str, AttrValue<'i>); MAX_FAST_ATTRS],
    nattrs: usize,
    /// Values of attributes with references, unescaped (rare: allocated only when used).
    unescaped: Vec<String>,
    scratch: Scratch,
}

/// Stacks on which the decoder collects the entries of structs (and `<op>`, `<data>`, …) and
/// the items of lists while it reads them; a finished container moves its part into a vector of
/// exactly the right size (one allocation per container instead of a growing vector's
/// several). Kept per thread between decodes (emptied), so a decode allocates no scratch space
/// of its own.
#[derive(Default)]
struct Scratch {
    entries: Vec<(CompactString, Value)>,
    items: Vec<Value>,
}

/// Scratch stacks larger than this many elements are not kept for the next decode.
const MAX_KEPT_SCRATCH: usize = 1024;

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = const {
        std::cell::Cell::new(Scratch {
            entries: Vec::new(),
            items: Vec::new(),
        })
    };
}

impl Drop for Rd<'_> {
    fn drop(&mut self) {
        let mut s = std::mem::take(&mut self.scratch);
        // A decode that gave up part-way leaves values behind.
        s.entries.clear();
        s.items.clear();
        if s.entries.capacity() > MAX_KEPT_SCRATCH {
            s.entries = Vec::new();
        }
        if s.items.capacity() > MAX_KEPT_SCRATCH {
            s.items = Vec::new();
        }
        // Fails only while the thread is being torn down; then the stacks are dropped.
        let _ = SCRATCH.try_with(|c| c.set(s));
    }
}

/// An attribute value: the raw text (no references) or an index into [`Rd::unescaped`].
#[derive(Clone, Copy)]
enum AttrValue<'i> {
    Raw(&'i str),
    Unescaped(usize),
}

/// Attributes of the element last opened, seen through the shared [`Attrs`] rules.
struct View<'a, 'i> {
    name: &'i str,
    attrs: &'a [(&'i str, AttrValue<'i>)],
    unescaped: &'a [String],
}

/// `a == b` for the short names compared here, without a library `memcmp` call.
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// The value of attribute `name`.
fn find_attr<'a>(
    attrs: &'a [(&str, AttrValue<'a>)],
    unescaped: &'a [String],
    name: &str,
) -> Option<&'a str> {
    match attrs.iter().find(|(k, _)| same_name(k, name))?.1 {
        AttrValue::Raw(v) => Some(v),
        AttrValue::Unescaped(i) => unescaped.get(i).map(String::as_str),
    }
}

impl Attrs for View<'_, '_> {
    fn attr<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        find_attr(self.attrs, self.unescaped, name)
    }
    fn el_name(&self) -> &str {
        self.name
    }
}

/// ASCII XML name without a prefix.
fn simple_name(b: &[u8]) -> bool {
    match b.split_first() {
        Some((&first, rest)) => {
            b.len() <= MAX_FAST_NAME
                && NAME_CLASS[first as usize] == NAME_START
                && rest.iter().all(|&c| NAME_CLASS[c as usize] != 0)
        }
        None => false,
    }
}

/// [`NAME_CLASS`]: a byte that may only continue a name (digit, `.`, `-`).
const NAME_REST: u8 = 1;
/// [`NAME_CLASS`]: a byte that may start a name (ASCII letter, `_`).
const NAME_START: u8 = 2;
/// The ASCII name bytes of [`simple_name`] (0: not a name byte).
static NAME_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        if c.is_ascii_alphabetic() || c == b'_' {
            t[i] = NAME_START;
        } else if c.is_ascii_digit() || c == b'.' || c == b'-' {
            t[i] = NAME_REST;
        }
        i += 1;
    }
    t
};

fn xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r')
        || ('\u{20}'..='\u{D7FF}').contains(&c)
        || ('\u{E000}'..='\u{FFFD}').contains(&c)
        || c >= '\u{10000}'
}

impl<'i> Rd<'i> {
    #[inline(always)]
    fn new(bytes: &'i [u8]) -> Option<Self> {
        // The document must start with its root element: quick-xml silently skips a byte order
        // mark, which rxml rejects (found by the equivalence tests).
        if bytes.len() > MAX_XML_BYTES || bytes.first() != Some(&b'<') {
            return None;
        }
        let input = std::str::from_utf8(bytes).ok()?;
        let mut r = Reader::from_str(input);
        // An end tag with whitespace after its name (`</a >`) then fails quick-xml's end-name
        // check and goes to the tree decoder; our encoder never writes one, and quick-xml skips
        // its per-end-tag trimming scan.
        r.config_mut().trim_markup_names_in_closing_tags = false;
        Some(Rd {
            r,
            input,
            depth: 0,
            attrs: [("", AttrValue::Raw("")); MAX_FAST_ATTRS],
            nattrs: 0,
            unescaped: Vec::new(),
            scratch: SCRATCH.try_with(|c| c.take()).unwrap_or_default(),
        })
    }

    /// `part` as a sub-slice of the input (events borrow from it).
    fn reslice(&self, part: &str) -> Option<&'i str> {
        let start = (part.as_ptr() as usize).checked_sub(self.input.as_ptr() as usize)?;
        self.input.get(start..start.checked_add(part.len())?)
    }

    fn view(&self, name: &'i str) -> View<'_, 'i> {
        View {
            name,
            attrs: &self.attrs[..self.nattrs],
            unescaped: &self.unescaped,
        }
    }

    /// The `name` attribute of the element last opened, borrowed from the input when it holds
    /// no reference.
    fn name_attr(&self) -> Option<Cow<'i, str>> {
        let (_, v) = self
            .attrs
            .get(..self.nattrs)?
            .iter()
            .find(|(k, _)| same_name(k, "name"))?;
        match *v {
            AttrValue::Raw(s) => Some(Cow::Borrowed(s)),
            AttrValue::Unescaped(i) => self.unescaped.get(i).cloned().map(Cow::Owned),
        }
    }

    fn attr(&self, name: &str) -> Option<&str> {
        find_attr(&self.attrs[..self.nattrs], &self.unescaped, name)
    }

    /// The next event of the subset; `None` for anything outside it (or any error).
    fn next(&mut self) -> Option<Ev<'i>> {
        // Namespaces without a resolver: the subset has no prefixed names (`simple` below), so an
        // element's namespace is the nearest default `xmlns`. The root must declare NS and any
        // other declaration must be NS exactly, so by induction every element is bound to NS —
        // what quick-xml's `NsReader` would resolve, without its per-event bookkeeping.
        let ev = self.r.read_event().ok()?;
        self.event(ev)
    }

    /// [`Rd::next`] for an event already read from quick-xml.
    #[inline]
    fn event(&mut self, ev: Event<'i>) -> Option<Ev<'i>> {
        let (e, empty) = match ev {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                self.depth = self.depth.checked_sub(1)?;
                return Some(Ev::Close);
            }
            Event::Text(t) => return Some(Ev::Text(self.literal(t)?)),
            Event::GeneralRef(r) => {
                let c = match &*r {
                    "lt" => '<',
                    "gt" => '>',
                    "amp" => '&',
                    "apos" => '\'',
                    "quot" => '"',
                    other => {
                        // `&#x` hex `;` or `&#` decimal `;`, short forms only.
                        let digits_ok = match other.strip_prefix("#x") {
                            Some(h) => {
                                (1..=6).contains(&h.len())
                                    && h.bytes().all(|b| b.is_ascii_hexdigit())
                            }
                            None => other.strip_prefix('#').is_some_and(|d| {
                                (1..=7).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
                            }),
                        };
                        if !digits_ok {
                            return None;
                        }
                        r.resolve_char_ref().ok()??
                    }
                };
                if !is_xml_char(c) {
                    return None;
                }
                return Some(Ev::Char(c));
            }
            _ => return None,
        };
        if self.depth + 1 > MAX_XML_DEPTH {
            return None;
        }
        // The tag's text (name and attributes) as a slice of the input, so that names and values
        // borrow from the input and need no re-slicing one by one.
        let name_len = e.name().0.len();
        let content = self.reslice(&e)?;
        let name = content.get(..name_len)?;
        if !self.simple(name) {
            return None;
        }
        self.nattrs = 0;
        if !self.unescaped.is_empty() {
            self.unescaped.clear();
        }
        let mut seen_xmlns = false;
        // A tag without attributes (`<string>`, the common case inside lists) needs no
        // attribute parser.
        if content.len() > name_len {
            let mut attributes = Attributes::new(content, name_len);
            // Duplicates are checked below against the attribute table instead of quick-xml's
            // per-tag key list, which allocates for every element.
            attributes.with_checks(false);
            for a in attributes {
                let a = a.ok()?;
                let Cow::Borrowed(raw) = a.value else {
                    return None;
                };
                // XML requires whitespace after an attribute value before the next attribute;
                // quick-xml does not check it. `raw` lies inside `content`, followed by its quote.
                let end = (raw.as_ptr() as usize)
                    .wrapping_sub(content.as_ptr() as usize)
                    .wrapping_add(raw.len());
                match content.as_bytes().get(end.wrapping_add(1)) {
                    None => {}
                    Some(b) if xml_space(*b) => {}
                    Some(_) => return None,
                }
                let key = a.key.0;
                if same_name(key, "xmlns") {
                    // The default namespace declaration: NS exactly (a reference in it, or any other
                    // namespace, is left to the tree decoder).
                    if seen_xmlns || !same_bytes(raw.as_bytes(), NS.as_bytes()) {
                        return None;
                    }
                    seen_xmlns = true;
                    continue;
                }
                if !self.simple(key) {
                    return None;
                }
                // A duplicate attribute (the tree decoder keeps the last one), or more attributes
                // than a Vertebra element has: leave it to the tree decoder.
                let seen = self.attrs.get(..self.nattrs)?;
                if seen.len() >= MAX_FAST_ATTRS || seen.iter().any(|(k, _)| same_name(k, key)) {
                    return None;
                }
                let amp = !self.plain(raw, b"<&") && attr_value_ok(raw.as_bytes())?;
                if raw.len() > MAX_FAST_ATTR || (amp && !char_refs_ok(raw)) {
                    return None;
                }
                let value = if amp {
                    let v = quick_xml::escape::unescape(raw).ok()?.into_owned();
                    // A character reference may name a character XML cannot carry.
                    if !is_xml_text(&v) {
                        return None;
                    }
                    self.unescaped.push(v);
                    AttrValue::Unescaped(self.unescaped.len() - 1)
                } else {
                    AttrValue::Raw(raw)
                };
                *self.attrs.get_mut(self.nattrs)? = (key, value);
                self.nattrs += 1;
            }
        }
        // The root has no parent to inherit NS from.
        if self.depth == 0 && !seen_xmlns {
            return None;
        }
        if !empty {
            self.depth += 1;
        }
        Some(Ev::Open { name, empty })
    }

    /// A text event's literal text, when it is inside the subset: borrowed from the input,
    /// XML characters only, no CR (normalized by XML parsers), no `]]>` (not allowed in text).
    #[inline]
    fn literal(&self, t: quick_xml::events::BytesText<'i>) -> Option<&'i str> {
        let Cow::Borrowed(t) = t.into_inner() else {
            return None;
        };
        (self.plain(t, b"]") || text_ok(t.as_bytes())).then_some(t)
    }

    /// [`simple_name`] of `name`, a slice of the input: a name of up to 8 bytes is tested as one
    /// word (no per-byte loop whose exit the branch predictor would miss).
    #[inline(always)]
    fn simple(&self, name: &str) -> bool {
        let n = name.len();
        let word = match n {
            1..=7 => padded_word(self.input.as_bytes(), self.offset(name), n),
            8 => word_at(self.input.as_bytes(), self.offset(name)),
            _ => None,
        };
        match word {
            Some(w) => name_word(w) && NAME_CLASS[usize::from(name.as_bytes()[0])] == NAME_START,
            None => simple_name(name.as_bytes()),
        }
    }

    /// Offset of `part`, a slice of the input, in the input.
    #[inline(always)]
    fn offset(&self, part: &str) -> usize {
        (part.as_ptr() as usize).wrapping_sub(self.input.as_ptr() as usize)
    }

    /// Whether `part`, a slice of the input, is printable ASCII without a byte of `special`
    /// (see [`plain_at`]).
    #[inline(always)]
    fn plain(&self, part: &str, special: &[u8]) -> bool {
        plain_at(
            self.input.as_bytes(),
            self.offset(part),
            part.len(),
            special,
        )
    }

    /// The root element: `(name, empty)`.
    fn root(&mut self) -> Option<(&'i str, bool)> {
        match self.next()? {
            Ev::Open { name, empty } => Some((name, empty)),
            _ => None,
        }
    }

    /// After the root element: whitespace only, then the end of the input (anything else is
    /// left to the tree decoder, which refuses it).
    fn end(&mut self) -> Option<()> {
        // Usually the root's end tag is the last byte.
        if self.r.buffer_position() == self.input.len() as u64 {
            return Some(());
        }
        loop {
            match self.r.read_event().ok()? {
                Event::Eof => return Some(()),
                Event::Text(t) if is_xml_ws(&t) => {}
                _ => return None,
            }
        }
    }

    /// Skip the content of the element just opened (every event still checked).
    fn skip(&mut self, empty: bool) -> Option<()> {
        if empty {
            return Some(());
        }
        let mut level = 1usize;
        loop {
            match self.next()? {
                Ev::Open { empty: false, .. } => level += 1,
                Ev::Close => {
                    level -= 1;
                    if level == 0 {
                        return Some(());
                    }
                }
                _ => {}
            }
        }
    }

    /// Text of a scalar element (concatenated; a child element is outside the subset).
    fn text(&mut self, empty: bool) -> Option<Cow<'i, str>> {
        if empty {
            return Some(Cow::Borrowed(""));
        }
        // The common shape, literal text then the end tag, is read straight from quick-xml;
        // anything else continues in `text_rest`.
        let mut ev = self.r.read_event().ok()?;
        let mut first = "";
        if let Event::Text(t) = ev {
            first = self.literal(t)?;
            ev = self.r.read_event().ok()?;
        }
        if let Event::End(_) = ev {
            self.depth = self.depth.checked_sub(1)?;
            return Some(Cow::Borrowed(first));
        }
        self.text_rest(first, ev)
    }

    /// The rest of [`Rd::text`] after the literal text `first`, from event `ev` on.
    #[cold]
    #[inline(never)]
    fn text_rest(&mut self, first: &'i str, ev: Event<'i>) -> Option<Cow<'i, str>> {
        let mut acc = Cow::Borrowed(first);
        let mut ev = self.event(ev)?;
        loop {
            match ev {
                Ev::Close => return Some(acc),
                Ev::Text(t) => {
                    if acc.is_empty() {
                        acc = Cow::Borrowed(t);
                    } else {
                        acc.to_mut().push_str(t);
                    }
                }
                Ev::Char(ch) => acc.to_mut().push(ch),
                Ev::Open { .. } => return None,
            }
            ev = self.next()?;
        }
    }

    /// Container content between child elements: whitespace only.
    fn container_gap(ev: &Ev<'_>) -> Option<()> {
        match ev {
            Ev::Text(t) if is_xml_ws(t) => Some(()),
            _ => None,
        }
    }

    /// Named-value children (mirrors [`crate::value::decode_named`]).
    fn named(
        &mut self,
        empty: bool,
        depth: usize,
        mode: NamedMode,
    ) -> Option<(Args, Vec<Resource>)> {
        let mut unnamed = Vec::new();
        if empty {
            return Some((Args::new(), unnamed));
        }
        // Entries collect on the shared stack (see `Scratch`), then move into a vector of
        // exactly their number.
        let base = self.scratch.entries.len();
        loop {
            let (name, empty) = match self.next()? {
                Ev::Close => {
                    let entries = self.scratch.entries.drain(base..).collect();
                    return Some((Args::from_unique(entries), unnamed));
                }
                Ev::Open { name, empty } => (name, empty),
                other => {
                    Self::container_gap(&other)?;
                    continue;
                }
            };
            // The name stays a slice of the input until its entry is stored.
            let vname = self.name_attr().filter(|n| !n.is_empty());
            match (mode, vname) {
                // [VAP-VER-009]: a legacy `res` named like a path is a key-less resource.
                (NamedMode::Legacy, Some(n)) if n.starts_with('/') && name == "res" => {
                    if let Value::Res(r) = self.value(name, empty, depth)? {
                        unnamed.push(r);
                    }
                }
                (_, Some(n)) => {
                    let v = self.value(name, empty, depth)?;
                    // A duplicate name ([`Args::try_push`] fails on it).
                    let entries = self.scratch.entries.get(base..)?;
                    if entries.iter().any(|(k, _)| same_name(k, &n)) {
                        return None;
                    }
                    self.scratch.entries.push((n.into(), v));
                }
                (NamedMode::Strict, None) => return None,
                (NamedMode::Legacy, None) => {
                    if name == "res" {
                        if let Value::Res(r) = self.value(name, empty, depth)? {
                            unnamed.push(r);
                        }
                    } else {
                        self.skip(empty)?;
                    }
                }
            }
        }
    }

    /// One value element just opened (mirrors `decode_value` of [`crate::value`]).
    fn value(&mut self, name: &str, empty: bool, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        Some(match name {
            "i4" | "int" | "integer" => Value::I4(parse_i4(&self.text(empty)?).ok()?),
            "double" => Value::Double(parse_double(&self.text(empty)?).ok()?),
            "boolean" => Value::Boolean(parse_boolean(&self.text(empty)?).ok()?),
            "string" => Value::String(self.text(empty)?.into()),
            "base64" => Value::Base64(decode_base64(&self.text(empty)?).ok()?),
            "dateTime.iso8601" => {
                Value::DateTime(DateTime::parse(trim_xml_ws(&self.text(empty)?)).ok()?)
            }
            "res" => Value::Res(Resource::parse(&self.text(empty)?).ok()?),
            "nil" => {
                if !is_xml_ws(&self.text(empty)?) {
                    return None;
                }
                Value::Nil
            }
            "list" => {
                // Items collect on the shared stack (see `Scratch`), then move into a vector
                // of exactly their number.
                let base = self.scratch.items.len();
                if !empty {
                    loop {
                        match self.next()? {
                            Ev::Close => break,
                            Ev::Open { name, empty } => {
                                let v = self.value(name, empty, depth + 1)?;
                                self.scratch.items.push(v);
                            }
                            other => Self::container_gap(&other)?,
                        }
                    }
                }
                Value::List(self.scratch.items.drain(base..).collect())
            }
            "struct" => Value::Struct(self.named(empty, depth + 1, NamedMode::Strict)?.0),
            "exception" => {
                // [VAP-VAL-036], [VAP-VAL-038]
                let mut class = None;
                let mut message = None;
                if !empty {
                    loop {
                        let (name, empty) = match self.next()? {
                            Ev::Close => break,
                            Ev::Open { name, empty } => (name, empty),
                            other => {
                                Self::container_gap(&other)?;
                                continue;
                            }
                        };
                        let slot = match self.attr("name") {
                            Some("class") => &mut class,
                            Some("message") => &mut message,
                            _ => {
                                self.skip(empty)?;
                                continue;
                            }
                        };
                        if slot.is_some() {
                            return None;
                        }
                        match self.value(name, empty, depth + 1)? {
                            Value::String(s) => *slot = Some(s),
                            _ => return None,
                        }
                    }
                }
                Value::Exception(Exception {
                    class: class?.into(),
                    message: message?.into(),
                })
            }
            _ => return None,
        })
    }

    fn op(&mut self, empty: bool) -> Option<Op> {
        let head = op_head(&self.view("op")).ok()?;
        let mode = match head.version {
            Version::V1_0 => NamedMode::Strict,
            Version::Legacy => NamedMode::Legacy,
        };
        let (args, unkeyed) = self.named(empty, 1, mode)?;
        Some(head.into_op(args, unkeyed))
    }

    /// A whole payload (mirrors [`VertebraPayload::from_element`]).
    fn payload(&mut self) -> Option<VertebraPayload> {
        let (name, empty) = self.root()?;
        Some(match name {
            "op" => VertebraPayload::Op(self.op(empty)?),
            "ack" => {
                let token = op_token(&self.view(name)).ok()?;
                self.skip(empty)?;
                VertebraPayload::Ack(Ack { token })
            }
            "cancel" => {
                let token = op_token(&self.view(name)).ok()?;
                self.skip(empty)?;
                VertebraPayload::Cancel(Cancel { token })
            }
            "nack" => {
                let n: Nack = nack_attrs(&self.view(name)).ok()?;
                self.skip(empty)?;
                VertebraPayload::Nack(n)
            }
            "load" => {
                let l: Load = load_attrs(&self.view(name)).ok()?;
                self.skip(empty)?;
                VertebraPayload::Load(l)
            }
            "data" => {
                let v = self.view(name);
                let token = op_token(&v).ok()?;
                let seq = uint_attr(&v, "seq").ok()?;
                let (args, _) = self.named(empty, 1, NamedMode::Strict)?;
                VertebraPayload::Data(Data { token, seq, args })
            }
            "final" => {
                let v = self.view(name);
                let token = op_token(&v).ok()?;
                let count = uint_attr(&v, "count").ok()?;
                let (args, _) = self.named(empty, 1, NamedMode::Strict)?;
                VertebraPayload::Final(Final { token, count, args })
            }
            "error" => {
                let (token, error_type, condition) = op_error_attrs(&self.view(name)).ok()?;
                let mut reason = None;
                if !empty {
                    loop {
                        let (cname, cempty) = match self.next()? {
                            Ev::Close => break,
                            Ev::Open { name, empty } => (name, empty),
                            other => {
                                Self::container_gap(&other)?;
                                continue;
                            }
                        };
                        if cname == "string" && self.attr("name") == Some("reason") {
                            if let Value::String(s) = self.value(cname, cempty, 1)? {
                                reason = Some(s.into());
                            }
                        } else {
                            self.skip(cempty)?;
                        }
                    }
                }
                VertebraPayload::Error(OpError {
                    token,
                    error_type,
                    condition,
                    reason,
                })
            }
            _ => return None,
        })
    }
}

/// Byte classes for the one-pass checks below.
const OK: u8 = 0;
/// A control character XML cannot carry.
const CTRL: u8 = 1;
/// TAB, LF.
const WS: u8 = 2;
/// CR.
const CR: u8 = 3;
/// `]` (start of `]]>`).
const RSQB: u8 = 4;
/// `<`.
const LT: u8 = 5;
/// `&`.
const AMP: u8 = 6;
/// 0xBE / 0xBF: last byte of U+FFFE / U+FFFF (EF BF BE / EF BF BF).
const NONCHAR: u8 = 7;
/// `"`, `'`, `>`: escaped by the writer.
const QUOTE: u8 = 8;

const CLASS: [u8; 256] = {
    let mut t = [OK; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = CTRL;
        i += 1;
    }
    t[b'\t' as usize] = WS;
    t[b'\n' as usize] = WS;
    t[b'\r' as usize] = CR;
    t[b']' as usize] = RSQB;
    t[b'<' as usize] = LT;
    t[b'&' as usize] = AMP;
    t[b'"' as usize] = QUOTE;
    t[b'\'' as usize] = QUOTE;
    t[b'>' as usize] = QUOTE;
    t[0xbe] = NONCHAR;
    t[0xbf] = NONCHAR;
    t
};

/// Bytes [`text_ok`] must look at closely.
static TEXT_LOOK: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = matches!(CLASS[i], CTRL | CR | RSQB | NONCHAR);
        i += 1;
    }
    t
};

/// Bytes [`attr_value_ok`] must look at closely.
static ATTR_LOOK: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = matches!(CLASS[i], CTRL | WS | CR | LT | AMP | NONCHAR);
        i += 1;
    }
    t
};

fn is_nonchar_at(b: &[u8], i: usize) -> bool {
    i >= 2 && b[i - 2] == 0xef && b[i - 1] == 0xbf
}

/// Whether all 8 bytes of `w` are [`NAME_CLASS`] bytes (ASCII letters, digits, `_`, `.`, `-`).
#[inline(always)]
fn name_word(w: u64) -> bool {
    let eq = |c: u8| bytes_in(w, c, c);
    w & HI8 == 0
        && (bytes_in(w | (LO8 * 0x20), b'a', b'z')
            | bytes_in(w, b'0', b'9')
            | eq(b'_')
            | eq(b'.')
            | eq(b'-'))
            == HI8
}

/// Whether the 8 bytes in `w` are all printable ASCII (0x20–0x7F) and none is one of `special`:
/// such a chunk is [`OK`] for every class check and can be skipped whole. Word-at-a-time tests:
/// with no high bit set, `(x − 0x01…01·n) & !x & 0x80…80` is non-zero exactly when some byte of
/// `x` is below `n` (`n ≤ 0x80`); with `n = 1` after XOR it finds a byte equal to `special`.
#[inline(always)]
fn plain8(w: u64, special: &[u8]) -> bool {
    let below = |x: u64, n: u8| x.wrapping_sub(LO8 * u64::from(n)) & !x & HI8 != 0;
    w & HI8 == 0 && !below(w, 0x20) && special.iter().all(|&c| !below(w ^ (LO8 * u64::from(c)), 1))
}

/// Whether the `len` bytes of `input` at `at` are printable ASCII (0x20–0x7F) without a byte
/// of `special`: such text passes every check of [`text_ok`] (with `special` = `]`) or
/// [`attr_value_ok`] (with `<&`, and then holds no reference). Eight bytes at a time; a last
/// partial word is read from the input beyond `len` where the input goes on, with the bytes
/// after `len` replaced by a plain one, so short texts take one word test. `false` also when
/// the range is not inside `input` (the exact checks then decide).
#[inline(always)]
fn plain_at(input: &[u8], at: usize, len: usize, special: &[u8]) -> bool {
    let Some(end) = at.checked_add(len).filter(|&e| e <= input.len()) else {
        return false;
    };
    let mut i = at;
    while i + 8 <= end {
        match word_at(input, i) {
            Some(w) if plain8(w, special) => i += 8,
            _ => return false,
        }
    }
    let rest = end - i;
    if rest == 0 {
        return true;
    }
    match padded_word(input, i, rest) {
        Some(w) => plain8(w, special),
        // Near the end of the input.
        None => input.get(i..end).is_some_and(|b| {
            b.iter()
                .all(|&c| (0x20..0x80).contains(&c) && !special.contains(&c))
        }),
    }
}

/// The `n` (below 8) bytes of `input` at `at` as one word, read from the input beyond them
/// where it goes on, with the lanes from `n` up set to `a` ([`pad_from`]: printable, a name
/// character, in no special set). `None` near the end of the input.
#[inline(always)]
fn padded_word(input: &[u8], at: usize, n: usize) -> Option<u64> {
    Some((word_at(input, at)? & !(u64::MAX << (8 * n))) | pad_from(n))
}

/// Offset of the first 8-byte chunk of `b` that is not [`plain8`] (a multiple of 8), or the
/// start of the tail shorter than 8 bytes.
fn skip_plain(b: &[u8], special: &[u8]) -> usize {
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        if !plain8(w, special) {
            break;
        }
        i += 8;
    }
    i
}

/// Literal text the tree decoder reads the same: XML characters only, no CR (normalized by XML
/// parsers), no `]]>` (not allowed in text).
fn text_ok(b: &[u8]) -> bool {
    // Chunks without control, non-ASCII or `]` bytes need no per-byte look; a `]]>` starts at a
    // `]`, which puts its chunk on the per-byte path (the look-ahead reads the whole slice).
    let start = if b.len() < 32 {
        // Short text: one table look per byte finds the first byte that needs a closer look.
        match b.iter().position(|&c| TEXT_LOOK[c as usize]) {
            None => return true,
            Some(i) => i,
        }
    } else {
        skip_plain(b, b"]")
    };
    for (i, &c) in b.iter().enumerate().skip(start) {
        match CLASS[c as usize] {
            CTRL | CR => return false,
            RSQB if b.get(i + 1) == Some(&b']') && b.get(i + 2) == Some(&b'>') => return false,
            NONCHAR if is_nonchar_at(b, i) => return false,
            _ => {}
        }
    }
    true
}

/// A raw attribute value the tree decoder reads the same: XML characters only, no `<`, no
/// TAB/LF/CR (attribute-value normalization). `Some(true)` when it holds a reference.
fn attr_value_ok(b: &[u8]) -> Option<bool> {
    let mut amp = false;
    let start = if b.len() < 32 {
        match b.iter().position(|&c| ATTR_LOOK[c as usize]) {
            None => return Some(false),
            Some(i) => i,
        }
    } else {
        skip_plain(b, b"<&")
    };
    for (i, &c) in b.iter().enumerate().skip(start) {
        match CLASS[c as usize] {
            CTRL | WS | CR | LT => return None,
            NONCHAR if is_nonchar_at(b, i) => return None,
            AMP => amp = true,
            _ => {}
        }
    }
    Some(amp)
}

/// Every character reference in a raw attribute value has the strict XML form
/// (`&#x` 1–6 hex digits `;` or `&#` 1–7 decimal digits `;`); quick-xml's own reference parser
/// is more lenient.
fn char_refs_ok(raw: &str) -> bool {
    raw.match_indices("&#").all(|(i, _)| {
        let rest = &raw[i + 2..];
        let Some(end) = rest.find(';') else {
            return false;
        };
        let body = &rest[..end];
        match body.strip_prefix('x') {
            Some(h) => (1..=6).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()),
            None => (1..=7).contains(&body.len()) && body.bytes().all(|b| b.is_ascii_digit()),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Streaming writer (byte-identical to the rxml writer minidom uses)
//
// Cheap in instructions: fixed markup is written as constant pieces (`<string name='`, `</i4>`,
// the root's `<op xmlns='…'`), which the compiler stores inline instead of calling `memcpy`;
// text that needs no escaping (nearly all of it) is checked a word at a time and, up to 16
// bytes, copied through registers (a fixed 8- or 16-byte append, then a truncate).

struct W<'o> {
    out: &'o mut Vec<u8>,
}

/// `const` concatenation of `parts` (exactly `N` bytes), for fixed markup built from constants.
const fn cat<const N: usize>(parts: &[&str]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut k = 0;
    let mut p = 0;
    while p < parts.len() {
        let b = parts[p].as_bytes();
        let mut i = 0;
        while i < b.len() {
            out[k] = b[i];
            k += 1;
            i += 1;
        }
        p += 1;
    }
    assert!(k == N, "cat: wrong length");
    out
}

const fn same_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// ` version='1.0'` is written as one constant piece.
const _: () = assert!(same_str(crate::stanza::VERSION_1_0, "1.0"));

/// Per byte of `w`: the high bit set where the byte equals `c` (and possibly in bytes above such
/// a byte); zero when no byte equals `c`.
#[inline(always)]
const fn eq_bytes(w: u64, c: u8) -> u64 {
    let t = w ^ (LO8 * c as u64);
    t.wrapping_sub(LO8) & !t
}

/// Non-zero when some byte of `w` may need escaping in an attribute value: non-ASCII, a control,
/// `"`, `'`, `<`, `>` or `&` (`<`/`>` and `&`/`'` are one test each: 0x3C | 2 = 0x3E | 2 and
/// 0x26 | 1 = 0x27 | 1). Zero means every byte is written as is.
#[inline(always)]
const fn attr_flags(w: u64) -> u64 {
    (w | (w.wrapping_sub(LO8 * 0x20) & !w)
        | eq_bytes(w | (LO8 * 2), 0x3e)
        | eq_bytes(w | LO8, 0x27)
        | eq_bytes(w, b'"'))
        & HI8
}

/// Like [`attr_flags`] for text content: non-ASCII, a control, `<`, `>` or `&`.
#[inline(always)]
const fn text_flags(w: u64) -> u64 {
    (w | (w.wrapping_sub(LO8 * 0x20) & !w) | eq_bytes(w | (LO8 * 2), 0x3e) | eq_bytes(w, b'&'))
        & HI8
}

/// [`attr_flags`] or [`text_flags`].
#[inline(always)]
const fn flags(attribute: bool, w: u64) -> u64 {
    if attribute {
        attr_flags(w)
    } else {
        text_flags(w)
    }
}

/// The 8 bytes at `i` as a little-endian word (0, which is flagged, when they are not there).
#[inline(always)]
fn le8(b: &[u8], i: usize) -> u64 {
    word_at(b, i).unwrap_or(0)
}

/// The 4 bytes at `i` as a little-endian word (0 when they are not there).
#[inline(always)]
fn le4(b: &[u8], i: usize) -> u64 {
    b.get(i..i.wrapping_add(4))
        .and_then(|c| c.try_into().ok())
        .map_or(0, |c| u64::from(u32::from_le_bytes(c)))
}

/// `'a'` in every byte from byte `n` up (`n < 8`): padding that no flag test (nor the decoder's
/// [`plain8`] and [`name_word`]) reports.
#[inline(always)]
const fn pad_from(n: usize) -> u64 {
    (LO8 * 0x61) << (8 * n)
}

/// Append `s` as escaped text (`attribute`: as an attribute value). Text needing no escaping is
/// copied as is (up to 16 bytes without `memcpy`); anything else goes to [`escape_slow`].
#[inline(always)]
fn escape_into(out: &mut Vec<u8>, s: &str, attribute: bool) -> Result<(), EncodeError> {
    let d = s.as_bytes();
    let n = d.len();
    if n <= 16 {
        // The bytes, contiguous in `lo` (bytes 0..8) and `hi` (bytes 8..16), zero past `n`.
        let (lo, hi, check) = if n >= 8 {
            let lo = le8(d, 0);
            let last = le8(d, n - 8);
            // `last` holds bytes n-8..n; bytes 8..n are its top n-8 bytes.
            let hi = last.checked_shr(8 * (16 - n) as u32).unwrap_or(0);
            (lo, hi, flags(attribute, lo) | flags(attribute, last))
        } else if n >= 4 {
            // Bytes 0..4 and n-4..n (overlapping, equal where they overlap).
            let lo = le4(d, 0) | (le4(d, n - 4) << (8 * (n - 4)));
            (lo, 0, flags(attribute, lo | pad_from(n)))
        } else if n > 0 {
            let lo = u64::from(d[0]) | (u64::from(d[n / 2]) << 8) | (u64::from(d[n - 1]) << 16);
            // Bytes 1 and 2 repeat bytes of `s` when `n` < 3: checked, then cut off.
            (lo, 0, flags(attribute, lo | pad_from(3)))
        } else {
            return Ok(());
        };
        if check == 0 {
            let len = out.len();
            if n > 8 {
                out.extend_from_slice(&((u128::from(hi) << 64) | u128::from(lo)).to_le_bytes());
            } else {
                out.extend_from_slice(&lo.to_le_bytes());
            }
            out.truncate(len + n);
            return Ok(());
        }
        return escape_slow(out, d, 0, attribute);
    }
    // Whole words of plain text, then the last 8 bytes (overlapping).
    let mut i = 0;
    while i + 8 < n {
        if flags(attribute, le8(d, i)) != 0 {
            return escape_slow(out, d, i, attribute);
        }
        i += 8;
    }
    if flags(attribute, le8(d, n - 8)) != 0 {
        return escape_slow(out, d, i, attribute);
    }
    out.extend_from_slice(d);
    Ok(())
}

/// [`escape_into`] for an attribute value.
#[inline(always)]
fn escape_attr(out: &mut Vec<u8>, s: &str) -> Result<(), EncodeError> {
    escape_into(out, s, true)
}

/// [`escape_into`] for text content.
#[inline(always)]
fn escape_text(out: &mut Vec<u8>, s: &str) -> Result<(), EncodeError> {
    escape_into(out, s, false)
}

/// Escape like rxml's writer, one byte at a time from `start` (bytes before it need no
/// escaping): fails on characters XML cannot carry.
#[inline(never)]
fn escape_slow(
    out: &mut Vec<u8>,
    data: &[u8],
    start: usize,
    attribute: bool,
) -> Result<(), EncodeError> {
    let mut last = 0;
    for (i, &b) in data.iter().enumerate().skip(start) {
        if CLASS[b as usize] == OK || CLASS[b as usize] == RSQB {
            continue;
        }
        let rep: &[u8] = match b {
            b'\x00'..=b'\x08' | b'\x0b' | b'\x0c' | b'\x0e'..=b'\x1f' => {
                return Err(EncodeError {
                    detail: format!("character U+{b:04X} cannot appear in XML"),
                })
            }
            b'"' if attribute => b"&#34;",
            b'\'' if attribute => b"&#39;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'&' => b"&amp;",
            b'\r' => b"&#xd;",
            b'\n' if attribute => b"&#xa;",
            b'\t' if attribute => b"&#x9;",
            // U+FFFE and U+FFFF are EF BF BE / EF BF BF in UTF-8.
            b'\xbe' | b'\xbf' if i >= 2 && data[i - 2] == 0xef && data[i - 1] == 0xbf => {
                return Err(EncodeError {
                    detail: "U+FFFE/U+FFFF cannot appear in XML".into(),
                })
            }
            _ => continue,
        };
        out.extend_from_slice(&data[last..i]);
        out.extend_from_slice(rep);
        last = i + 1;
    }
    out.extend_from_slice(&data[last..]);
    Ok(())
}

/// Powers of ten exactly representable as `f64` and as `u64`, for [`put_double`].
const POW10: [(f64, u64); 16] = {
    let mut t = [(1.0, 1u64); 16];
    let mut i = 1;
    while i < 16 {
        t[i] = (t[i - 1].0 * 10.0, t[i - 1].1 * 10);
        i += 1;
    }
    t
};

/// [`write_double`] without `fmt` for the common case: `|v|` in `[1e-4, 1e15)` equal to the
/// nearest double of a decimal `m·10^-d` with `m < 10^15` (checked exactly: `m` and `10^d` are
/// exact doubles and division rounds correctly). A decimal of at most 15 significant digits is
/// the only one of its length or shorter that rounds to `v`, so with the least such `d` it is the
/// shortest round-trip form `{v}` prints; `write_double` prints that when it has fewer than 16
/// digits. Anything else goes to `write_double`.
fn put_double(out: &mut Vec<u8>, v: f64) {
    let a = v.abs();
    if (1e-4..1e15).contains(&a) {
        for (d, &(p, p_int)) in POW10.iter().enumerate() {
            let x = a * p;
            if x >= 1e15 {
                break;
            }
            let m = (x + 0.5) as u64;
            if m as f64 / p != a {
                continue;
            }
            let (int, frac) = (m / p_int, m % p_int);
            let int_digits = POW10.iter().take_while(|&&(_, q)| q <= int).count().max(1);
            if int_digits + d >= 16 || (d > 0 && frac % 10 == 0) {
                break;
            }
            if v < 0.0 {
                out.push(b'-');
            }
            put_padded(out, int, 1);
            if d > 0 {
                out.push(b'.');
                put_padded(out, frac, d);
            }
            return;
        }
    }
    write_double(out, v);
}

/// Text written as is, without escaping and without `fmt` (numbers, hex tokens).
trait Plain {
    fn put(&self, out: &mut Vec<u8>);
}

/// The 8 decimal digits of `v < 10^8` as bytes 0–9, the most significant in the low byte
/// (eight lanes at once: two 4-digit halves, then hundreds, then tens).
#[inline(always)]
const fn digits8(v: u64) -> u64 {
    let x = (v / 10_000) | ((v % 10_000) << 32);
    // Per 32-bit lane (< 10 000): the hundreds (x·5243 >> 19 is x / 100 below 43 699).
    let h = ((x * 5243) >> 19) & 0x0000_007f_0000_007f;
    let y = h | ((x - h * 100) << 16);
    // Per 16-bit lane (< 100): the tens (y·103 >> 10 is y / 10 below 179).
    let t = ((y * 103) >> 10) & 0x000f_000f_000f_000f;
    t | ((y - t * 10) << 8)
}

/// Decimal digits of `v`, zero-padded to at least `width` (like `{:0width$}`).
#[inline]
fn put_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    if v < 10 && width <= 1 {
        out.push(b'0' + v as u8);
        return;
    }
    if v < 100_000_000 && width <= 8 {
        // One 8-byte append of the digits without leading zeros, then a truncate to them.
        let d = digits8(v);
        let n = (8 - (d.trailing_zeros() / 8) as usize).max(width);
        let w = (d + LO8 * u64::from(b'0')) >> (8 * (8 - n));
        let len = out.len();
        out.extend_from_slice(&w.to_le_bytes());
        out.truncate(len + n);
        return;
    }
    put_padded_long(out, v, width);
}

#[inline(never)]
fn put_padded_long(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let i = i.min(buf.len().saturating_sub(width));
    out.extend_from_slice(&buf[i..]);
}

impl Plain for u64 {
    fn put(&self, out: &mut Vec<u8>) {
        put_padded(out, *self, 1);
    }
}
impl Plain for u32 {
    fn put(&self, out: &mut Vec<u8>) {
        put_padded(out, u64::from(*self), 1);
    }
}
impl Plain for u8 {
    fn put(&self, out: &mut Vec<u8>) {
        put_padded(out, u64::from(*self), 1);
    }
}
impl Plain for i32 {
    fn put(&self, out: &mut Vec<u8>) {
        if *self < 0 {
            out.push(b'-');
        }
        put_padded(out, u64::from(self.unsigned_abs()), 1);
    }
}
impl Plain for Token {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}
impl Plain for OpToken {
    fn put(&self, out: &mut Vec<u8>) {
        self.requester.put(out);
        out.push(b':');
        self.responder.put(out);
    }
}
impl Plain for RequestToken {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            RequestToken::Single(t) => t.put(out),
            RequestToken::Pair(p) => p.put(out),
        }
    }
}
impl<T: Plain + ?Sized> Plain for &T {
    fn put(&self, out: &mut Vec<u8>) {
        (**self).put(out);
    }
}

impl W<'_> {
    /// A piece of markup (a constant at every call site, so stored inline).
    #[inline(always)]
    fn lit(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }
    fn open(&mut self, name: &str) {
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
    }
    /// `<name xmlns='NS'` for a name that is not a constant (see [`root_head!`]).
    fn open_root(&mut self, name: &str) {
        self.open(name);
        self.lit(b" xmlns='");
        self.out.extend_from_slice(NS.as_bytes());
        self.out.push(b'\'');
    }
    /// ` name='value'`; `head` is ` name='`.
    #[inline(always)]
    fn attr(&mut self, head: &[u8], value: &str) -> Result<(), EncodeError> {
        self.lit(head);
        escape_attr(self.out, value)?;
        self.out.push(b'\'');
        Ok(())
    }
    /// [`W::attr`] for rare attributes (kept out of line).
    #[inline(never)]
    fn attr_cold(&mut self, head: &[u8], value: &str) -> Result<(), EncodeError> {
        self.out.extend_from_slice(head);
        escape_into(self.out, value, true)?;
        self.out.push(b'\'');
        Ok(())
    }
    /// An attribute whose text never needs escaping (numbers, hex tokens); `head` is ` name='`.
    #[inline(always)]
    fn attr_num(&mut self, head: &[u8], v: impl Plain) {
        self.lit(head);
        v.put(self.out);
        self.out.push(b'\'');
    }
    fn head_end(&mut self) {
        self.out.push(b'>');
    }
    fn empty_end(&mut self) {
        self.lit(b"/>");
    }
    fn token_only(&mut self, head: &[u8], token: &OpToken) -> Result<(), EncodeError> {
        self.lit(head);
        self.attr_num(b" token='", token);
        self.empty_end();
        Ok(())
    }
    /// Named values as children, then the end tag `end` (self-closing when there are none).
    #[inline(always)]
    fn args_body(&mut self, end: &[u8], args: &Args) -> Result<(), EncodeError> {
        if args.is_empty() {
            self.empty_end();
            return Ok(());
        }
        self.head_end();
        self.named_children(args)?;
        self.lit(end);
        Ok(())
    }
    /// Each of `args` as a named child.
    #[inline(never)]
    fn named_children(&mut self, args: &Args) -> Result<(), EncodeError> {
        for (n, v) in args.iter() {
            self.child(v, Some(n))?;
        }
        Ok(())
    }
    /// A child value: the common kinds (string, res, i4, boolean) written here, inlined in the
    /// loops over children; the others by [`W::value`].
    #[inline(always)]
    fn child(&mut self, v: &Value, name: Option<&str>) -> Result<(), EncodeError> {
        // `<tag name='…'` or `<tag`, then `rest`: `'` + `rest` after a name.
        macro_rules! start {
            ($tag:literal, $rest:literal) => {
                match name {
                    Some(n) => {
                        self.lit(concat!("<", $tag, " name='").as_bytes());
                        escape_attr(self.out, n)?;
                        self.lit(concat!("'", $rest).as_bytes());
                    }
                    None => self.lit(concat!("<", $tag, $rest).as_bytes()),
                }
            };
        }
        macro_rules! text_el {
            ($tag:literal, $s:expr) => {{
                let s: &str = $s;
                if s.is_empty() {
                    start!($tag, "/>");
                } else {
                    start!($tag, ">");
                    escape_text(self.out, s)?;
                    self.lit(concat!("</", $tag, ">").as_bytes());
                }
            }};
        }
        match v {
            Value::String(s) => text_el!("string", s),
            Value::Res(r) => text_el!("res", r.as_str()),
            Value::I4(x) => {
                start!("i4", ">");
                x.put(self.out);
                self.lit(b"</i4>");
            }
            Value::Boolean(true) => start!("boolean", ">1</boolean>"),
            Value::Boolean(false) => start!("boolean", ">0</boolean>"),
            _ => self.value(v, name, false)?,
        }
        Ok(())
    }
    /// Text content then the end tag `end` (`</tag>`; self-closing for empty text).
    #[inline(always)]
    fn text_body(&mut self, end: &[u8], s: &str) -> Result<(), EncodeError> {
        if s.is_empty() {
            self.empty_end();
            return Ok(());
        }
        self.head_end();
        escape_text(self.out, s)?;
        self.lit(end);
        Ok(())
    }
    /// `<string name='n'>s</string>` (`head` is `<string name='`).
    #[inline(never)]
    fn string_el(&mut self, head: &[u8], n: &str, s: &str) -> Result<(), EncodeError> {
        self.attr_cold(head, n)?;
        self.text_body(b"</string>", s)
    }
    fn value(&mut self, v: &Value, name: Option<&str>, root: bool) -> Result<(), EncodeError> {
        if root {
            self.root_start(v, name)?;
        } else {
            // `<tag` or `<tag name='` as one constant piece, then the name.
            macro_rules! start {
                ($tag:literal) => {
                    if name.is_some() {
                        self.lit(concat!("<", $tag, " name='").as_bytes())
                    } else {
                        self.lit(concat!("<", $tag).as_bytes())
                    }
                };
            }
            match v {
                Value::I4(_) => start!("i4"),
                Value::Double(_) => start!("double"),
                Value::Boolean(_) => start!("boolean"),
                Value::String(_) => start!("string"),
                Value::Base64(_) => start!("base64"),
                Value::DateTime(_) => start!("dateTime.iso8601"),
                Value::List(_) => start!("list"),
                Value::Struct(_) => start!("struct"),
                Value::Nil => start!("nil"),
                Value::Res(_) => start!("res"),
                Value::Exception(_) => start!("exception"),
            }
            if let Some(n) = name {
                escape_attr(self.out, n)?;
                self.out.push(b'\'');
            }
        }
        match v {
            Value::I4(x) => {
                self.head_end();
                x.put(self.out);
                self.lit(b"</i4>");
            }
            Value::Double(d) => {
                // Never empty, so never self-closing.
                self.head_end();
                put_double(self.out, *d);
                self.lit(b"</double>");
            }
            Value::Boolean(b) => {
                self.lit(if *b { b">1</boolean>" } else { b">0</boolean>" });
            }
            Value::String(s) => {
                self.text_body(b"</string>", s)?;
            }
            Value::Base64(b) => {
                self.text_body(b"</base64>", &encode_base64(b))?;
            }
            Value::DateTime(d) => {
                // The canonical wire form of `DateTime::to_wire`, written in place.
                if d.year < 10_000
                    && d.month.max(d.day).max(d.hour).max(d.minute).max(d.second) < 100
                {
                    // `>YYYYMMDDTHH:MM:SSZ` as one 19-byte piece.
                    let two = |v: u8| [b'0' + v / 10, b'0' + v % 10];
                    let y = d.year;
                    let [m0, m1] = two(d.month);
                    let [d0, d1] = two(d.day);
                    let [h0, h1] = two(d.hour);
                    let [i0, i1] = two(d.minute);
                    let [s0, s1] = two(d.second);
                    self.lit(&[
                        b'>',
                        b'0' + (y / 1000) as u8,
                        b'0' + (y / 100 % 10) as u8,
                        b'0' + (y / 10 % 10) as u8,
                        b'0' + (y % 10) as u8,
                        m0,
                        m1,
                        d0,
                        d1,
                        b'T',
                        h0,
                        h1,
                        b':',
                        i0,
                        i1,
                        b':',
                        s0,
                        s1,
                        b'Z',
                    ]);
                    self.lit(b"</dateTime.iso8601>");
                    return Ok(());
                }
                self.head_end();
                let o = &mut *self.out;
                put_padded(o, u64::from(d.year), 4);
                put_padded(o, u64::from(d.month), 2);
                put_padded(o, u64::from(d.day), 2);
                o.push(b'T');
                put_padded(o, u64::from(d.hour), 2);
                o.push(b':');
                put_padded(o, u64::from(d.minute), 2);
                o.push(b':');
                put_padded(o, u64::from(d.second), 2);
                self.lit(b"Z</dateTime.iso8601>");
            }
            Value::Res(r) => {
                self.text_body(b"</res>", r.as_str())?;
            }
            Value::Nil => {
                self.empty_end();
            }
            Value::List(items) => {
                if items.is_empty() {
                    self.empty_end();
                } else {
                    self.head_end();
                    for i in items {
                        self.child(i, None)?;
                    }
                    self.lit(b"</list>");
                }
            }
            Value::Struct(a) => {
                self.args_body(b"</struct>", a)?;
            }
            Value::Exception(e) => {
                self.head_end();
                self.string_el(b"<string name='", "class", &e.class)?;
                self.string_el(b"<string name='", "message", &e.message)?;
                self.lit(b"</exception>");
            }
        }
        Ok(())
    }
    /// `<tag xmlns='NS'` and the name of a value written as the root (rare: [`encode_value`]).
    #[inline(never)]
    fn root_start(&mut self, v: &Value, name: Option<&str>) -> Result<(), EncodeError> {
        self.open_root(v.type_name());
        if let Some(n) = name {
            self.attr_cold(b" name='", n)?;
        }
        Ok(())
    }
    fn op(&mut self, op: &Op) -> Result<(), EncodeError> {
        self.lit(root_head!("op"));
        match op.scope {
            None => {}
            Some(crate::stanza::Scope::All) => self.lit(b" scope='all'"),
            Some(crate::stanza::Scope::Single) => self.lit(b" scope='single'"),
            Some(crate::stanza::Scope::Direct) => self.lit(b" scope='direct'"),
        }
        if let Some(t) = op.timeout {
            self.attr_num(b" timeout='", t);
        }
        self.attr_num(b" token='", &op.token);
        self.attr(b" type='", &op.op_type)?;
        if op.version == Version::V1_0 {
            self.lit(b" version='1.0'");
        }
        if let Some(w) = op.window {
            self.attr_num(b" window='", w);
        }
        if op.args.is_empty() && op.unkeyed_resources.is_empty() {
            self.empty_end();
            return Ok(());
        }
        self.head_end();
        self.named_children(&op.args)?;
        for r in &op.unkeyed_resources {
            self.lit(b"<res");
            self.text_body(b"</res>", r.as_str())?;
        }
        self.lit(b"</op>");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time checks without the word-at-a-time skip.
    fn text_ok_ref(b: &[u8]) -> bool {
        b.iter().enumerate().all(|(i, &c)| match CLASS[c as usize] {
            CTRL | CR => false,
            RSQB => !(b.get(i + 1) == Some(&b']') && b.get(i + 2) == Some(&b'>')),
            NONCHAR => !is_nonchar_at(b, i),
            _ => true,
        })
    }

    fn attr_value_ok_ref(b: &[u8]) -> Option<bool> {
        let mut amp = false;
        for (i, &c) in b.iter().enumerate() {
            match CLASS[c as usize] {
                CTRL | WS | CR | LT => return None,
                NONCHAR if is_nonchar_at(b, i) => return None,
                AMP => amp = true,
                _ => {}
            }
        }
        Some(amp)
    }

    /// Escaping one byte at a time (the writer without its word-at-a-time skips).
    fn escape_ref(s: &[u8], attribute: bool) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for (i, &b) in s.iter().enumerate() {
            match b {
                b'\x00'..=b'\x08' | b'\x0b' | b'\x0c' | b'\x0e'..=b'\x1f' => return None,
                b'"' if attribute => out.extend_from_slice(b"&#34;"),
                b'\'' if attribute => out.extend_from_slice(b"&#39;"),
                b'<' => out.extend_from_slice(b"&lt;"),
                b'>' => out.extend_from_slice(b"&gt;"),
                b'&' => out.extend_from_slice(b"&amp;"),
                b'\r' => out.extend_from_slice(b"&#xd;"),
                b'\n' if attribute => out.extend_from_slice(b"&#xa;"),
                b'\t' if attribute => out.extend_from_slice(b"&#x9;"),
                b'\xbe' | b'\xbf' if is_nonchar_at(s, i) => return None,
                _ => out.push(b),
            }
        }
        Some(out)
    }

    #[test]
    fn write_double_matches_format_double() {
        let mut next = crate::swar::test_rng(0x2545_f491_4f6c_dd1du64);
        let mut values = vec![
            0.25,
            1.0,
            100.0,
            1e-4,
            0.0001,
            1e15,
            999_999_999_999_999.9,
            1e14,
            0.1 + 0.2,
            1.5e-5,
            123.456,
            -0.5,
            -1e-4,
            0.3,
            2.0 / 3.0,
            1e-4 * 0.999_999,
            5e-324,
            0.0,
            -0.0,
        ];
        for _ in 0..200_000 {
            let bits = f64::from_bits(next());
            if bits.is_finite() {
                values.push(bits);
            }
            // Short decimals at every scale.
            let n = (next() % 2_000_000) as f64 - 1_000_000.0;
            values.push(n * 10f64.powi((next() % 30) as i32 - 15));
        }
        for v in values {
            let mut out = Vec::new();
            write_double(&mut out, v);
            assert_eq!(out, format_double(v).as_bytes(), "{v:e}");
        }
    }

    #[test]
    fn name_word_matches_name_class() {
        for b in 0..=u8::MAX {
            for pos in 0..8 {
                let mut bytes = *b"abcXYZ09";
                bytes[pos] = b;
                assert_eq!(
                    name_word(u64::from_le_bytes(bytes)),
                    NAME_CLASS[usize::from(b)] != 0,
                    "byte {b:#x} at {pos}"
                );
            }
        }
    }

    #[test]
    fn put_double_matches_write_double() {
        let mut next = crate::swar::test_rng(0x9e37_79b9_7f4a_7c15u64);
        let mut values = vec![
            0.25,
            1.0,
            100.0,
            1e-4,
            1e15,
            1e14,
            0.1,
            0.3,
            123.456,
            -0.5,
            -1e-4,
            0.0,
            -0.0,
            5e-324,
            99_999_999_999_999.9,
            999_999_999_999_999.0,
            0.000_123_456_789_012_345,
            1.5,
        ];
        for _ in 0..300_000 {
            let bits = f64::from_bits(next());
            if bits.is_finite() {
                values.push(bits);
            }
            // Short and long decimals at every scale, and their neighbours.
            let n = (next() % 2_000_000) as f64 - 1_000_000.0;
            let x = n * 10f64.powi((next() % 30) as i32 - 15);
            values.push(x);
            values.push(f64::from_bits(x.to_bits() + 1));
            let long =
                (next() % 10_000_000_000_000_000) as f64 * 10f64.powi((next() % 24) as i32 - 20);
            values.push(long);
        }
        for v in values {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            put_double(&mut a, v);
            write_double(&mut b, v);
            assert_eq!(a, b, "{v:e}");
        }
    }

    /// Short texts (the register-copy lengths and a little beyond) with every ASCII byte and a
    /// few non-ASCII characters at every position: the word checks agree with byte escaping.
    #[test]
    fn short_escape_matches_byte_escape() {
        let base = "abcdefghijklmnopqrstuvwx";
        let mut inserts: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        for c in [
            "é",
            "\u{fffe}",
            "\u{ffff}",
            "\u{fffd}",
            "\u{10000}",
            "]]>",
            "&amp;",
        ] {
            inserts.push(c.to_string());
        }
        for len in 0..=base.len() {
            for pos in 0..=len {
                for ins in &inserts {
                    for text in [
                        format!("{}{}{}", &base[..pos], ins, &base[pos..len]),
                        format!("{}{}", &base[..pos], ins).repeat(2),
                    ] {
                        for attribute in [false, true] {
                            let mut out = b"<".to_vec();
                            let got = escape_into(&mut out, &text, attribute).ok().map(|()| out);
                            let want = escape_ref(text.as_bytes(), attribute).map(|mut e| {
                                e.insert(0, b'<');
                                e
                            });
                            assert_eq!(got, want, "{text:?} {attribute}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn put_padded_matches_format() {
        let mut next = crate::swar::test_rng(0x2545_f491_4f6c_dd1d);
        let mut values: Vec<u64> = (0..100_000).collect();
        for k in 0..20 {
            let p = 10u64.pow(k);
            values.extend([p - 1, p, p + 1, p.wrapping_mul(9)]);
        }
        for _ in 0..100_000 {
            let r = next();
            values.push(r >> (r % 64));
        }
        values.push(u64::MAX);
        for v in values {
            for width in [1, 2, 4, 8, 9] {
                let mut out = b"x".to_vec();
                put_padded(&mut out, v, width);
                assert_eq!(out, format!("x{v:0width$}").as_bytes(), "{v} {width}");
            }
        }
    }

    #[test]
    fn date_time_matches_tree() {
        for (year, rest) in [
            (2009, 17),
            (0, 0),
            (9999, 99),
            (10_000, 5),
            (65_535, 255),
            (7, 100),
        ] {
            let d = DateTime {
                year,
                month: rest,
                day: rest / 2,
                hour: rest / 3,
                minute: rest / 4,
                second: rest / 5,
            };
            let mut out = Vec::new();
            encode_value(&Value::DateTime(d), &mut out).expect("encodes");
            let mut tree = Vec::new();
            encode_value_tree(&Value::DateTime(d), &mut tree).expect("encodes");
            assert_eq!(out, tree);
            assert!(String::from_utf8(out)
                .expect("utf-8")
                .contains(&d.to_wire()));
        }
    }

    #[test]
    fn constant_markup_matches_its_parts() {
        assert_eq!(
            &root_head!("op")[..],
            format!("<op xmlns='{NS}'").as_bytes()
        );
        use crate::stanza::Scope;
        for s in [Scope::All, Scope::Single, Scope::Direct] {
            let token = RequestToken::Single(Token::generate().expect("token"));
            let op = Op {
                scope: Some(s),
                ..Op::new(token, &Resource::parse("/a").expect("resource"), 1000)
            };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode_payload(&VertebraPayload::Op(op.clone()), &mut a).expect("encodes");
            encode_payload_tree(&VertebraPayload::Op(op), &mut b).expect("encodes");
            assert_eq!(a, b);
        }
    }

    #[test]
    fn word_skip_matches_byte_checks() {
        let mut cases = Vec::new();
        // Below and above the short-text length (32) of the byte-table paths.
        for base in [
            b"abcdefghijklmnopqrstuvwxyz0123".to_vec(),
            b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH".to_vec(),
        ] {
            for pos in 0..base.len() {
                for byte in 0..=255u8 {
                    let mut v = base.clone();
                    v[pos] = byte;
                    cases.push(v);
                }
                for ins in [
                    &b"]]>"[..],
                    b"\xef\xbf\xbe",
                    b"\xef\xbf\xbf",
                    b"]]",
                    b"&amp;",
                    b"<",
                    b"'",
                    b"\"",
                ] {
                    let mut v = base.clone();
                    let end = (pos + ins.len()).min(v.len());
                    v.splice(pos..end, ins.iter().copied());
                    cases.push(v);
                }
            }
        }
        let base = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH".to_vec();
        for len in 0..base.len() {
            cases.push(base[..len].to_vec());
            for byte in [
                b'<', b'&', b'"', b'\'', b'\t', b'\n', b'\r', b'\x01', b'>', b']',
            ] {
                let mut v = base[..len].to_vec();
                v.push(byte);
                cases.push(v.clone());
                v.insert(0, byte);
                cases.push(v);
            }
        }
        for c in &cases {
            if let Ok(text) = std::str::from_utf8(c) {
                for attribute in [false, true] {
                    let mut out = Vec::new();
                    let got = escape_into(&mut out, text, attribute).ok().map(|()| out);
                    assert_eq!(got, escape_ref(c, attribute), "{c:?}");
                }
            }
            assert_eq!(text_ok(c), text_ok_ref(c), "{c:?}");
            assert_eq!(attr_value_ok(c), attr_value_ok_ref(c), "{c:?}");
        }
        // The checks do reject: a control byte, `]]>` across a chunk boundary, a `<`.
        assert!(!text_ok(b"abcdefg\x01"));
        assert!(!text_ok(b"abcdef]]>xyz"));
        assert!(text_ok(b"abcdef]]xyz"));
        assert_eq!(attr_value_ok(b"abcdefgh<"), None);
        assert_eq!(attr_value_ok(b"abcdefgh&amp;"), Some(true));
        assert_eq!(attr_value_ok(b"abcdefghijkl"), Some(false));
    }
}
