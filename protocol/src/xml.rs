//! XML plumbing on top of minidom/rxml: bounded parsing, serialization, and small helpers for
//! building elements. Nothing here parses XML by hand: bytes go through rxml's parser and
//! minidom's tree builder; elements are written by minidom's writer.

use minidom::rxml::{NcName, RawReader};
use minidom::tree_builder::TreeBuilder;
use minidom::{Element, Node};

use crate::error::{DecodeError, Rule};

/// Maximum element nesting accepted by [`parse_element`] (documents deeper than this are
/// rejected before the tree is built, so dropping or walking a tree can never exhaust the stack).
/// An IQ (1) + payload (2) + 32 value levels fits with room to spare.
pub const MAX_XML_DEPTH: usize = 48;

/// Maximum input size accepted by [`parse_element`], in bytes (1 MiB; XMPP servers commonly cap
/// stanzas far below this).
pub const MAX_XML_BYTES: usize = 1 << 20;

/// Namespace used for unprefixed elements with no `xmlns` when parsing a whole stanza
/// (`jabber:client`), as a c2s stream would supply.
pub const JABBER_CLIENT: &str = "jabber:client";

/// Parse one XML element from bytes with the depth ([`MAX_XML_DEPTH`]) and size
/// ([`MAX_XML_BYTES`]) limits. Unprefixed elements without `xmlns` get `default_ns`
/// (pass [`JABBER_CLIENT`] for captured stanzas, or `None` to require explicit namespaces).
/// The element must be the whole input: anything but whitespace after it is an
/// [`Rule::XmlSyntax`] error.
pub fn parse_element(bytes: &[u8], default_ns: Option<&str>) -> Result<Element, DecodeError> {
    if bytes.len() > MAX_XML_BYTES {
        return Err(DecodeError::new(
            Rule::TooLarge,
            format!("{} bytes > {MAX_XML_BYTES}", bytes.len()),
        ));
    }
    let mut builder = match default_ns {
        Some(ns) => TreeBuilder::new().with_prefixes_stack(vec![ns.to_string().into()]),
        None => TreeBuilder::new(),
    };
    let mut reader = RawReader::new(bytes);
    loop {
        let ev = reader
            .read()
            .map_err(|e| DecodeError::new(Rule::XmlSyntax, e.to_string()))?;
        let Some(ev) = ev else {
            return Err(DecodeError::new(Rule::XmlSyntax, "end of document"));
        };
        builder
            .process_event(ev)
            .map_err(|e| DecodeError::new(Rule::XmlSyntax, e.to_string()))?;
        if builder.depth() > MAX_XML_DEPTH {
            return Err(DecodeError::new(
                Rule::TooDeep,
                format!("element nesting deeper than {MAX_XML_DEPTH}"),
            ));
        }
        if let Some(root) = builder.root.take() {
            // Nothing but XML's trailing misc may follow the root: rxml rejects a second
            // element or text after it; whatever it still reports is refused here, so no
            // content is dropped silently.
            return match reader.read() {
                Ok(None) => Ok(root),
                Ok(Some(_)) => Err(DecodeError::new(
                    Rule::XmlSyntax,
                    "content after the root element",
                )),
                Err(e) => Err(DecodeError::new(Rule::XmlSyntax, e.to_string())),
            };
        }
    }
}

/// Serialize an element to a UTF-8 string (no XML declaration). Fails (never panics) when a text
/// or attribute holds a character XML cannot carry.
pub fn to_string(el: &Element) -> Result<String, minidom::Error> {
    let mut out = Vec::new();
    write_into(el, &mut out)?;
    // rxml only writes UTF-8.
    Ok(String::from_utf8(out).unwrap_or_default())
}

/// Serialize an element into a byte buffer (appending). Fails (never panics) when a text or
/// attribute holds a character XML cannot carry: minidom's writer panics on those
/// ("encoder driven incorrectly"), so the tree is checked first.
pub fn write_into(el: &Element, out: &mut Vec<u8>) -> Result<(), minidom::Error> {
    check_writable(el)?;
    el.write_to(out)
}

/// Every attribute value and text node of the tree consists of XML characters.
fn check_writable(el: &Element) -> Result<(), minidom::Error> {
    let bad = || {
        minidom::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("<{}> holds a character XML cannot carry", el.name()),
        ))
    };
    if el.attrs().iter().any(|(_, v)| !is_xml_text(v)) {
        return Err(bad());
    }
    for node in el.nodes() {
        match node {
            Node::Element(c) => check_writable(c)?,
            Node::Text(t) => {
                if !is_xml_text(t) {
                    return Err(bad());
                }
            }
        }
    }
    Ok(())
}

/// An attribute name for the builder. Only called with the crate's constant names.
pub(crate) fn nc(name: &'static str) -> NcName {
    NcName::try_from(name).expect("attribute names used by this crate are valid NCNames")
}

/// Set (unnamespaced) attribute `name` on an element.
pub(crate) fn set_attr(el: &mut Element, name: &'static str, value: impl Into<String>) {
    el.set_attr(minidom::rxml::Namespace::NONE, nc(name), value.into());
}

/// True when the string is XML whitespace only (space, tab, CR, LF).
pub(crate) fn is_xml_ws(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Trim XML whitespace at both ends.
pub(crate) fn trim_xml_ws(s: &str) -> &str {
    // By bytes: the four are ASCII, and an ASCII byte never lies inside a multi-byte character,
    // so both ends stay on character boundaries.
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let b = s.as_bytes();
    let start = b.iter().position(|c| !ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ws(c)).map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

/// Whether every character can appear in XML 1.0 character data.
pub fn is_xml_text(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r')
            || ('\u{20}'..='\u{D7FF}').contains(&c)
            || ('\u{E000}'..='\u{FFFD}').contains(&c)
            || c >= '\u{10000}'
    })
}

/// Children of a container element: element children in order; text nodes must be whitespace
/// only (no mixed content).
pub(crate) fn element_children(el: &Element) -> Result<Vec<&Element>, DecodeError> {
    let mut out = Vec::new();
    for node in el.nodes() {
        match node {
            Node::Element(e) => out.push(e),
            Node::Text(t) => {
                if !is_xml_ws(t) {
                    return Err(DecodeError::new(
                        Rule::MixedContent,
                        format!(
                            "text inside <{}> where only elements are allowed",
                            el.name()
                        ),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Text of a scalar element: concatenated text nodes; any child element is mixed content.
pub(crate) fn scalar_text(el: &Element) -> Result<String, DecodeError> {
    let mut s = String::new();
    for node in el.nodes() {
        match node {
            Node::Text(t) => s.push_str(t),
            Node::Element(c) => {
                return Err(DecodeError::new(
                    Rule::MixedContent,
                    format!("element <{}> inside scalar <{}>", c.name(), el.name()),
                ))
            }
        }
    }
    Ok(s)
}
