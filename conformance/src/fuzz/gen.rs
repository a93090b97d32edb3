//! Input generation: a small model of the protocol's state (the ops sent so far, their IQ ids
//! and tokens) chooses the next input — a valid call, a mutated one (boundary values, type
//! confusion, long and Unicode-edge strings, unknown namespaces and attributes, bad tokens),
//! a lifecycle stanza in an impossible state, a duplicate or colliding IQ id, a stranger
//! replaying a requester's token, a burst, and in embedded mode injected stanzas from any
//! address, oversized stanzas and split writes. Deterministic for a seed.
//!
//! Extensions drawn from a second generator (so the base sequence of a seed is unchanged and
//! the extra inputs are inserted into it): connection cuts in the middle of an op (embedded),
//! restarts of the implementation (spawn and reference modes), JID edge cases as `from` and
//! `to` of injected ops (RFC 7622: Unicode and long localparts, slashes in the resource, bare
//! JIDs, invalid JIDs, another domain), non-well-formed byte input (embedded, once the
//! server can write raw bytes), and feedback-guided inputs: mutations of corpus entries, the
//! inputs that produced a coverage signature not seen before ([`Gen::add_to_corpus`]).

use super::rng::Rng;
use super::tracefile::{Step, VIA_DISPATCHER, VIA_INJECT, VIA_REQUESTER, VIA_STRANGER};
use crate::peer::NS;
use crate::xmlh::AttrExt;
use minidom::Element;

const TEST: &str = "/vertebra/test";

/// What the generator may use.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Fuzz a dispatcher instead of an agent.
    pub dispatcher: bool,
    /// Raw injection is available (embedded server): foreign `from`, oversized, split writes.
    pub inject: bool,
    /// The target claims the test profile.
    pub test_profile: bool,
    /// The server can cut the target's connection (embedded server).
    pub cut: bool,
    /// The implementation can be restarted between inputs (spawn and reference modes).
    pub restart: bool,
    /// Raw bytes can be written into the target's stream (embedded server's raw hook).
    pub raw: bool,
    /// JID edge cases as `from` / `to` of injected ops (needs `inject`).
    pub jid: bool,
    /// Raw input that may abort the process that parses it ([`RAW_DEEP`]); spawn mode only.
    pub raw_deep: bool,
    /// Feedback-guided selection: a share of the inputs are mutations of corpus entries.
    pub bias: bool,
}

impl GenConfig {
    /// Only the base generator (the inputs of a seed before the extensions existed).
    pub fn basic(dispatcher: bool, inject: bool, test_profile: bool) -> GenConfig {
        GenConfig {
            dispatcher,
            inject,
            test_profile,
            cut: false,
            restart: false,
            raw: false,
            jid: false,
            raw_deep: false,
            bias: false,
        }
    }
}

/// Per mille of the inputs drawn from each extension (when it is enabled).
const PM_CUT: u64 = 15;
const PM_RESTART: u64 = 6;
const PM_JID: u64 = 40;
const PM_RAW: u64 = 50;
const PM_CORPUS: u64 = 250;
/// Step keys of extension inputs start here (base inputs count from 1).
pub const EXT_KEYS: u32 = 1_000_000;
/// Corpus bound (the most often used entries go first).
const CORPUS_MAX: usize = 256;

/// `from` values of injected ops: JID edge cases (RFC 7622) and invalid JIDs.
const JID_FROM: &[&str] = &[
    "{{requester_local}}@{{domain}}",
    "{{requester_local}}@{{domain}}/{{requester_resource}}/with/slashes",
    "{{requester_local}}@{{domain}}/a/../../b",
    "{{requester_local_upper}}@{{domain}}/{{requester_resource}}",
    "ünïcødé-語@{{domain}}/r",
    "\u{1d400}\u{212b}\u{fb01}@{{domain}}/r",
    "{{requester_local}}@{{domain}}/\u{202e}\u{200b}résource",
    "{{requester_local}}@{{foreign_domain}}/{{requester_resource}}",
    "mallory@{{foreign_domain}}/x",
    "{{foreign_domain}}",
    "{{domain}}",
    "{{domain}}/component",
    "@{{domain}}/r",
    "a@b@{{domain}}/r",
    "{{requester_local}}@{{domain}}/",
    "{{requester_local}}@/r",
    "",
    "x y@{{domain}}/r",
    "{{requester_local}}@[::1]/r",
    "{{requester_local}}@127.0.0.1/r",
];

/// `to` values of injected ops (besides the target's full JID).
const JID_TO: &[&str] = &[
    "{{agent_bare}}",
    "{{agent_local_upper}}@{{domain}}/{{agent_resource}}",
];

#[derive(Debug, Clone)]
struct SentOp {
    key: u32,
    via: String,
    id: String,
    xml: String,
    token: String,
}

/// The generator and its model of what was sent.
pub struct Gen {
    rng: Rng,
    /// The extensions' own generator, keys (from [`EXT_KEYS`]) and ops, so that they do not
    /// change the base inputs of a seed.
    xrng: Rng,
    xkey: u32,
    xops: Vec<SentOp>,
    cfg: GenConfig,
    next_key: u32,
    ops: Vec<SentOp>,
    pending: Vec<Step>,
    /// Inputs that produced a new coverage signature, and how often each was mutated.
    corpus: Vec<(Step, u32)>,
    /// Inputs generated from the corpus so far.
    pub biased: u64,
}

const NAMES: &[&str] = &[
    "a",
    "payload",
    "count",
    "x",
    "name with space",
    "ümlaut",
    "日本",
    "index",
    "reason",
    "n0",
];

const UNICODE_EDGE: &[&str] = &[
    "\u{feff}bom",
    "rtl\u{202e}override",
    "e\u{301}\u{301}\u{301}",
    "😀🧬𝔘",
    "\u{fffd}",
    "zw\u{200d}j",
    "line\u{2028}sep",
    "\u{10ffff}",
    "tab\tand\nnewline",
    "  leading and trailing  ",
    "<&>\"'",
    "]]>",
    "",
];

fn val(kind: &str, name: Option<&str>, text: &str) -> Element {
    let mut b = Element::builder(kind, NS);
    if let Some(n) = name {
        b = b.at("name", n);
    }
    if !text.is_empty() {
        b = b.append(text);
    }
    b.build()
}

fn cont(kind: &str, name: Option<&str>, children: Vec<Element>) -> Element {
    let mut b = Element::builder(kind, NS);
    if let Some(n) = name {
        b = b.at("name", n);
    }
    for c in children {
        b = b.append(c);
    }
    b.build()
}

/// The note of the input a corpus input descends from.
fn origin(note: &str) -> &str {
    let mut n = note;
    loop {
        let m = n
            .trim_start_matches("corpus: ")
            .trim_start_matches("again ");
        if m.len() == n.len() {
            break;
        }
        n = m;
    }
    n.split(" truncated to ").next().unwrap_or(n)
}

fn xml(el: &Element) -> String {
    String::from(el)
}

impl Gen {
    pub fn new(seed: u64, cfg: GenConfig) -> Gen {
        Gen {
            rng: Rng::new(seed),
            xrng: Rng::new(seed.rotate_left(17) ^ 0x0BAD_5EED_0FF0_0D00),
            xkey: EXT_KEYS,
            xops: Vec::new(),
            cfg,
            next_key: 0,
            ops: Vec::new(),
            pending: Vec::new(),
            corpus: Vec::new(),
            biased: 0,
        }
    }

    /// Feedback: `step` produced a coverage signature not seen before.
    pub fn add_to_corpus(&mut self, step: &Step) {
        if !self.cfg.bias || step.burst {
            return;
        }
        if self.corpus.len() >= CORPUS_MAX {
            if let Some(i) = (0..self.corpus.len()).max_by_key(|i| self.corpus[*i].1) {
                self.corpus.remove(i);
            }
        }
        self.corpus.push((step.clone(), 0));
    }

    pub fn corpus_len(&self) -> usize {
        self.corpus.len()
    }

    /// Run `f` with the extensions' generator, keys and ops in place of the base ones.
    fn with_xrng<T>(&mut self, f: impl FnOnce(&mut Gen) -> T) -> T {
        self.swap_ext();
        let r = f(self);
        self.swap_ext();
        r
    }

    fn swap_ext(&mut self) {
        std::mem::swap(&mut self.rng, &mut self.xrng);
        std::mem::swap(&mut self.next_key, &mut self.xkey);
        std::mem::swap(&mut self.ops, &mut self.xops);
    }

    /// An extension input, or `None` for a base one.
    fn extension(&mut self) -> Option<Step> {
        let x = self.xrng.below(1000);
        let c = &self.cfg;
        let agent = !c.dispatcher;
        let mut lo = 0;
        let mut hit = |on: bool, pm: u64| {
            let r = on && x >= lo && x < lo + pm;
            lo += pm;
            r
        };
        let (cut, restart, jid, raw) = (
            hit(agent && c.cut, PM_CUT),
            hit(agent && c.restart, PM_RESTART),
            hit(agent && c.inject && c.jid, PM_JID),
            hit(agent && c.raw, PM_RAW),
        );
        let corpus = hit(c.bias && !self.corpus.is_empty(), PM_CORPUS);
        if cut {
            Some(self.with_xrng(Gen::cut_steps))
        } else if restart {
            Some(self.with_xrng(Gen::restart_step))
        } else if jid {
            Some(self.with_xrng(Gen::jid_step))
        } else if raw {
            Some(self.with_xrng(Gen::raw_step))
        } else if corpus {
            self.biased += 1;
            Some(self.with_xrng(Gen::corpus_step))
        } else {
            None
        }
    }

    fn bare_step(&mut self, kind: &str, note: String) -> Step {
        Step {
            key: self.key(),
            via: "harness".into(),
            kind: kind.into(),
            iq_type: None,
            id: None,
            from: None,
            xml: None,
            burst: false,
            to: None,
            raw: None,
            max: None,
            note,
        }
    }

    /// A long op, a cut of the target's connection while it runs, and the requester's
    /// retransmission of the op to the reconnected target ([VAP-OPS-081], [VAP-OPS-066]).
    fn cut_steps(&mut self) -> Step {
        let (e, t, what) = if self.rng.chance(1, 2) {
            let count = self.rng.range(40, 120);
            let (e, t) = self.op_el(
                &format!("{TEST}/stream"),
                8000,
                vec![
                    val("i4", Some("count"), &count.to_string()),
                    val("i4", Some("size"), "8"),
                ],
            );
            (e, t, "stream")
        } else if self.rng.chance(1, 2) {
            let ms = self.rng.range(150, 400);
            let (e, t) = self.op_el(
                &format!("{TEST}/sleep"),
                5000,
                vec![val("i4", Some("ms"), &ms.to_string())],
            );
            (e, t, "sleep")
        } else {
            let (e, t) = self.op_el(&format!("{TEST}/counter"), 5000, vec![]);
            (e, t, "counter")
        };
        let op = self.step(
            VIA_REQUESTER,
            "set",
            Some((e, t)),
            &format!("valid {what}, about to lose its session"),
        );
        let cut = self.bare_step(
            "cut",
            "the server cuts the target's connection (mid-op)".into(),
        );
        let mut again = op.clone();
        again.key = self.key();
        again.note = format!("retransmission of step key {} after the cut", op.key);
        self.pending.push(cut);
        if self.rng.chance(2, 3) {
            self.pending.push(again);
        }
        op
    }

    fn restart_step(&mut self) -> Step {
        self.bare_step(
            "restart",
            "stop the implementation and start it again".into(),
        )
    }

    /// An op injected with a JID edge case as `from` (and sometimes `to`).
    fn jid_step(&mut self) -> Step {
        let from = self.rng.pick(JID_FROM).to_string();
        let from = match self.rng.below(8) {
            0 => format!("{}@{{{{domain}}}}/r", "l".repeat(1023)),
            1 => format!("{}@{{{{domain}}}}/r", "l".repeat(1024)),
            2 => format!(
                "{{{{requester_local}}}}@{{{{domain}}}}/{}",
                "r".repeat(1100)
            ),
            _ => from,
        };
        let to = if self.rng.chance(1, 4) {
            Some(self.rng.pick(JID_TO).to_string())
        } else {
            None
        };
        let (e, t, what) = if self.rng.chance(1, 2) {
            let (e, t) = self.op_el(&format!("{TEST}/counter"), 5000, vec![]);
            (e, t, "counter")
        } else {
            let (e, t, w) = self.valid_op();
            (e, t, w)
        };
        let mut s = self.step(VIA_INJECT, "set", Some((e, t)), "");
        let shown: String = from.chars().take(60).collect();
        s.note = format!(
            "{what} injected from JID edge case {shown:?}{}",
            to.as_deref()
                .map(|t| format!(" to {t:?}"))
                .unwrap_or_default()
        );
        s.from = Some(from);
        s.to = to;
        s
    }

    /// Bytes that are not well-formed XML, or well-formed but hostile (entities, huge
    /// attribute counts, deep nesting, restricted XML).
    fn raw_step(&mut self) -> Step {
        let k = self.next_key + 1;
        let mut which = self.rng.below(RAW_KINDS);
        if which == RAW_DEEP && !self.cfg.raw_deep {
            which = 0;
        }
        let variant = self.rng.below(4);
        let (bytes, what) = raw_bytes(which, variant, k);
        let mut s = self.bare_step("raw", format!("raw bytes: {what}"));
        s.via = VIA_INJECT.into();
        s.raw = Some(bytes);
        s
    }
}

/// Number of kinds of raw input ([`raw_bytes`]).
pub const RAW_KINDS: u64 = 18;
/// The raw kind with deep element nesting (1000 and 20 000 levels). It overflows the stack
/// of the Rust XMPP stack's element builder (minidom/xso under tokio-xmpp) and aborts the
/// whole process, so it is generated only when the implementation is a process of its own
/// ([`GenConfig::raw_deep`]: spawn mode), where that is a `process-exit` finding.
pub const RAW_DEEP: u64 = 8;

/// Raw input `which` (0..[`RAW_KINDS`]) in size variant `variant` (0..4), for step key `k`:
/// the bytes (with placeholders and `{{x:HH}}` bytes) and what they are.
pub fn raw_bytes(which: u64, variant: u64, k: u32) -> (String, &'static str) {
    let iq = format!("<iq type='get' id='raw{k}' to='{{{{target}}}}'>");
    {
        let big = variant % 2 == 1;
        let closed = variant < 2;
        let (bytes, what): (String, &str) = match which {
            0 => (
                format!("{iq}<op xmlns='http://xmlschema.engineyard.com/agent/api' tok"),
                "truncated tag",
            ),
            1 => (
                "<message to='{{target}}'><body>a{{x:c3}}{{x:28}}b{{x:ff}}{{x:fe}}</body></message>".into(),
                "bad UTF-8 in text",
            ),
            2 => (
                "<message to='{{target}}'><body>{{x:c0}}{{x:af}}{{x:ed}}{{x:a0}}{{x:80}}</body></message>".into(),
                "overlong and surrogate UTF-8",
            ),
            3 => (
                format!("{iq}<v:ping xmlns:w='urn:xmpp:ping'/></iq>"),
                "undeclared prefix",
            ),
            4 => {
                let mut d = String::from("<!DOCTYPE lolz [<!ENTITY l0 'lol'>");
                for i in 1..10 {
                    d.push_str(&format!("<!ENTITY l{i} '{}'>", format!("&l{};", i - 1).repeat(10)));
                }
                d.push_str("]><message to='{{target}}'><body>&l9;</body></message>");
                (d, "billion laughs")
            }
            5 => (
                "<!DOCTYPE m [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]><message to='{{target}}'><body>&xxe;</body></message>".into(),
                "external entity",
            ),
            6 => (
                "<message to='{{target}}'><body>&undefined; &#0; &#xD800; &#x110000;</body></message>".into(),
                "undefined entity and invalid character references",
            ),
            7 => {
                let n = if big { 10_000 } else { 1000 };
                let mut a = String::from("<iq type='get' id='rawattrs' to='{{target}}'");
                for i in 0..n {
                    a.push_str(&format!(" a{i}='{i}'"));
                }
                a.push_str("><ping xmlns='urn:xmpp:ping'/></iq>");
                (a, "huge attribute count")
            }
            8 => {
                let n = if big { 20_000 } else { 1000 };
                let mut d = String::from("<message to='{{target}}'>");
                d.push_str(&"<a>".repeat(n));
                if closed {
                    d.push_str(&"</a>".repeat(n));
                    d.push_str("</message>");
                }
                (d, if closed { "deep nesting" } else { "deep nesting, unclosed" })
            }
            9 => (
                format!("{iq}<ping xmlns='urn:xmpp:ping'/></message>"),
                "mismatched end tag",
            ),
            10 => (
                "<iq type='get' type='set' id='rawdup' to='{{target}}'><ping xmlns='urn:xmpp:ping'/></iq>".into(),
                "duplicate attribute",
            ),
            11 => (
                "<?xml version='1.0'?><!-- comment --><message to='{{target}}'><?pi x?><body><![CDATA[<x>]]></body></message>".into(),
                "restricted XML (declaration, comment, PI, CDATA)",
            ),
            12 => (
                "<message to='{{target}}'><body>nul{{x:00}} ctl{{x:01}}{{x:1b}}</body></message>".into(),
                "NUL and control bytes",
            ),
            13 => ("</stream:stream>".into(), "premature end of the stream"),
            14 => (
                "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>".into(),
                "stream features mid-stream",
            ),
            15 => ("  \n\t  ".into(), "whitespace keepalive"),
            16 => (
                "<iq type='set' id='rawunk' to='{{target}}'><unknown xmlns='jabber:client'/></iq><foo xmlns='urn:x'/>".into(),
                "unknown top-level element",
            ),
            _ => (
                format!("<message to='{{{{target}}}}'><body>{}</body></message>", "é".repeat(300_000)),
                "600 KB stanza",
            ),
        };
        (bytes, what)
    }
}

impl Gen {
    /// Replace the text of one value inside `el` with a boundary value of its type.
    fn boundary_value(&mut self, el: &mut Element) -> Option<&'static str> {
        fn collect(e: &Element, at: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            for (i, c) in e.children().enumerate() {
                at.push(i);
                if c.ns() == NS
                    && matches!(
                        c.name(),
                        "i4" | "int"
                            | "double"
                            | "boolean"
                            | "string"
                            | "base64"
                            | "dateTime.iso8601"
                            | "res"
                    )
                {
                    out.push(at.clone());
                }
                collect(c, at, out);
                at.pop();
            }
        }
        let mut paths = Vec::new();
        collect(el, &mut Vec::new(), &mut paths);
        if paths.is_empty() {
            return None;
        }
        let path = self.rng.pick(&paths).clone();
        let mut v: &mut Element = el;
        for i in path {
            v = v.children_mut().nth(i)?;
        }
        let text = match v.name() {
            "i4" | "int" => self.rng.pick(&[
                "-2147483648",
                "2147483647",
                "-2147483648",
                "2147483647",
                "-2147483648",
                "2147483647",
                "0",
                "-0",
                "+1",
                "2147483648",
                "-2147483649",
                " 1",
                "0x10",
                "1e3",
                "",
            ]),
            "double" => self.rng.pick(&[
                "NaN", "-INF", "INF", "1e309", "-0", "4.9e-324", ".5", "5.", "",
            ]),
            "boolean" => self.rng.pick(&["2", "yes", "", "TRUE", "-1"]),
            "base64" => self.rng.pick(&["=", "AA", "****", "A===", ""]),
            "dateTime.iso8601" => self.rng.pick(&[
                "00000101T00:00:00",
                "20091332T25:61:61Z",
                "2009-02-29T00:00:00Z",
                "",
            ]),
            "res" => self.rng.pick(&["", "//", "/a//b", "no-slash", "/\u{7f}"]),
            _ => self.rng.pick(UNICODE_EDGE),
        }
        .to_string();
        for t in v.texts_mut() {
            t.clear();
        }
        if !text.is_empty() {
            v.append_text_node(text);
        }
        Some("boundary value")
    }

    /// A mutation of a corpus entry (least used first).
    fn corpus_step(&mut self) -> Step {
        let least = self.corpus.iter().map(|c| c.1).min().unwrap_or(0);
        let cands: Vec<usize> = (0..self.corpus.len())
            .filter(|i| self.corpus[*i].1 == least)
            .collect();
        let i = *self.rng.pick(&cands);
        self.corpus[i].1 += 1;
        let base = self.corpus[i].0.clone();
        let parsed = base
            .xml
            .as_deref()
            .filter(|_| base.kind == "iq")
            .and_then(|x| x.parse::<Element>().ok());
        match parsed {
            Some(mut el) => {
                let mut notes: Vec<&str> = Vec::new();
                let mut token = String::new();
                if el.is("op", NS) {
                    if el.attr("token").is_some_and(|t| !t.contains("{{")) && self.rng.chance(3, 4)
                    {
                        token = self.rng.hex32();
                        crate::xmlh::set(&mut el, "token", token.as_str());
                    }
                    if self.rng.chance(1, 2) {
                        if let Some(n) = self.boundary_value(&mut el) {
                            notes.push(n);
                        }
                    }
                    for _ in 0..self.rng.range(0, 2) {
                        notes.push(self.mutate_op(&mut el));
                    }
                }
                let via = if base.via == VIA_INJECT || self.rng.chance(3, 4) {
                    base.via.clone()
                } else if base.via == VIA_REQUESTER {
                    notes.push("sent by the stranger");
                    VIA_STRANGER.to_string()
                } else {
                    notes.push("sent by the requester");
                    VIA_REQUESTER.to_string()
                };
                let ty = base.iq_type.clone().unwrap_or_else(|| "set".into());
                let mut s = self.step(&via, &ty, Some((el, token)), "");
                s.from = base.from.clone();
                s.to = base.to.clone();
                s.note = format!(
                    "corpus: step key {} ({}){}",
                    base.key,
                    origin(&base.note),
                    if notes.is_empty() {
                        String::new()
                    } else {
                        format!(", mutated: {}", notes.join(", "))
                    }
                );
                s
            }
            None => {
                let mut s = base.clone();
                s.key = self.key();
                if let Some(r) = s.raw.as_mut() {
                    if r.len() > 1 && self.rng.chance(1, 2) {
                        let mut cut = self.rng.below(r.len() as u64) as usize;
                        while !r.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        r.truncate(cut.max(1));
                        s.note = format!(
                            "corpus: {} truncated to {} bytes",
                            origin(&base.note),
                            r.len()
                        );
                        return s;
                    }
                }
                s.note = format!("corpus: again {}", origin(&base.note));
                s
            }
        }
    }

    fn key(&mut self) -> u32 {
        self.next_key += 1;
        self.next_key
    }

    fn id(&mut self) -> String {
        format!("f{}", self.next_key)
    }

    /// The next input.
    pub fn next_step(&mut self) -> Step {
        if !self.pending.is_empty() {
            return self.pending.remove(0);
        }
        if let Some(s) = self.extension() {
            return s;
        }
        if self.cfg.dispatcher {
            self.dispatcher_step()
        } else {
            self.agent_step()
        }
    }

    fn step(
        &mut self,
        via: &str,
        iq_type: &str,
        to_op: Option<(Element, String)>,
        note: &str,
    ) -> Step {
        let key = self.key();
        let id = self.id();
        let (x, token) = match to_op {
            Some((el, t)) => (Some(xml(&el)), t),
            None => (None, String::new()),
        };
        let st = Step {
            key,
            via: via.into(),
            kind: "iq".into(),
            iq_type: Some(iq_type.into()),
            id: Some(id.clone()),
            from: None,
            xml: x.clone(),
            burst: false,
            to: None,
            raw: None,
            max: None,
            note: note.into(),
        };
        if let Some(x) = x {
            if x.contains("<op") {
                self.ops.push(SentOp {
                    key,
                    via: via.into(),
                    id,
                    xml: x,
                    token,
                });
                if self.ops.len() > 64 {
                    self.ops.remove(0);
                }
            }
        }
        st
    }

    // ---- values -------------------------------------------------------------------------

    fn string_text(&mut self) -> String {
        match self.rng.below(6) {
            0 => self.rng.pick(UNICODE_EDGE).to_string(),
            1 => {
                let n = *self.rng.pick(&[255usize, 1024, 4096, 16_384]);
                let c = *self.rng.pick(&["x", "é", "語", "🧬"]);
                c.repeat(n)
            }
            2 => String::new(),
            _ => format!("s{}", self.rng.below(1000)),
        }
    }

    fn i4_text(&mut self) -> String {
        match self.rng.below(3) {
            0 => self
                .rng
                .pick(&[
                    "0",
                    "1",
                    "-1",
                    "2147483647",
                    "-2147483648",
                    "+5",
                    "007",
                    " 42 ",
                ])
                .to_string(),
            _ => self.rng.range(-1000, 1000).to_string(),
        }
    }

    fn value(&mut self, name: Option<&str>, depth: u32) -> Element {
        let k = if depth >= 3 {
            self.rng.below(8)
        } else {
            self.rng.below(11)
        };
        match k {
            0 => {
                let t = self.i4_text();
                let k = *self.rng.pick(&["i4", "i4", "int"]);
                val(k, name, &t)
            }
            1 => {
                let t = self
                    .rng
                    .pick(&[
                        "0.5",
                        "-0.0",
                        "1e308",
                        "5e-324",
                        "1.7976931348623157e308",
                        "3",
                    ])
                    .to_string();
                val("double", name, &t)
            }
            2 => {
                let t = self.rng.pick(&["1", "0", "true", "false"]).to_string();
                val("boolean", name, &t)
            }
            3 | 4 => {
                let t = self.string_text();
                val("string", name, &t)
            }
            5 => {
                let t = self
                    .rng
                    .pick(&["AAE=", "", "aGVs bG8=", "/w=="])
                    .to_string();
                val("base64", name, &t)
            }
            6 => {
                let t = self
                    .rng
                    .pick(&[
                        "20090317T12:00:00Z",
                        "2009-03-17T12:00:00Z",
                        "2009-03-17T12:00:00+05:30",
                        "99991231T23:59:59Z",
                    ])
                    .to_string();
                val("dateTime.iso8601", name, &t)
            }
            7 => {
                let t = self
                    .rng
                    .pick(&["/", "/cluster/rd00", "/a/ü/語", "/x/y/"])
                    .to_string();
                val("res", name, &t)
            }
            8 => {
                let n = self.rng.below(4);
                let ch = (0..n).map(|_| self.value(None, depth + 1)).collect();
                cont("list", name, ch)
            }
            9 => {
                let n = self.rng.below(4);
                let ch = (0..n)
                    .map(|i| {
                        let nm = format!("k{i}");
                        self.value(Some(&nm), depth + 1)
                    })
                    .collect();
                cont("struct", name, ch)
            }
            _ => val("nil", name, ""),
        }
    }

    fn named_values(&mut self, n: u64) -> Vec<Element> {
        let mut used = Vec::new();
        let mut out = Vec::new();
        for _ in 0..n {
            let nm = self.rng.pick(NAMES).to_string();
            if used.contains(&nm) {
                continue;
            }
            used.push(nm.clone());
            out.push(self.value(Some(&nm), 0));
        }
        out
    }

    // ---- ops ------------------------------------------------------------------------------

    fn op_el(&mut self, kind: &str, timeout: u64, values: Vec<Element>) -> (Element, String) {
        let t = self.rng.hex32();
        let mut b = Element::builder("op", NS)
            .at("version", "1.0")
            .at("token", t.as_str())
            .at("type", kind)
            .at("timeout", timeout.to_string());
        for v in values {
            b = b.append(v);
        }
        (b.build(), t)
    }

    /// A valid call of a test-profile operation.
    fn valid_op(&mut self) -> (Element, String, &'static str) {
        let which = self.rng.weighted(&[30, 14, 6, 8, 12, 3]);
        match which {
            0 => {
                let n = self.rng.below(4);
                let vals = self.named_values(n);
                let (e, t) = self.op_el(&format!("{TEST}/echo"), 5000, vals);
                (e, t, "echo")
            }
            1 => {
                let long = self.rng.chance(1, 2);
                let count = if long {
                    self.rng.range(32, 120)
                } else {
                    self.rng.range(0, 6)
                };
                let size = if long {
                    self.rng.range(0, 16)
                } else {
                    self.rng.range(0, 2048)
                };
                let vals = vec![
                    val("i4", Some("count"), &count.to_string()),
                    val("i4", Some("size"), &size.to_string()),
                ];
                let (e, t) = self.op_el(&format!("{TEST}/stream"), 8000, vals);
                (e, t, "stream")
            }
            2 => {
                let ms = self.rng.range(0, 300);
                let timeout = *self.rng.pick(&[100u64, 250, 5000]);
                let (e, t) = self.op_el(
                    &format!("{TEST}/sleep"),
                    timeout,
                    vec![val("i4", Some("ms"), &ms.to_string())],
                );
                (e, t, "sleep")
            }
            3 => {
                let cond = self
                    .rng
                    .pick(&[
                        "handler-failed",
                        "bad-value",
                        "internal-error",
                        "overloaded",
                    ])
                    .to_string();
                let reason = self.rng.pick(&["planned failure", "", "é 語"]).to_string();
                let (e, t) = self.op_el(
                    &format!("{TEST}/fail"),
                    5000,
                    vec![
                        val("string", Some("condition"), &cond),
                        val("string", Some("reason"), &reason),
                    ],
                );
                (e, t, "fail")
            }
            4 => {
                let read = self.rng.chance(1, 4);
                let vals = if read {
                    vec![val("boolean", Some("read"), "1")]
                } else {
                    vec![]
                };
                let (e, t) = self.op_el(&format!("{TEST}/counter"), 5000, vals);
                (e, t, "counter")
            }
            _ => {
                let v = self.rng.pick(&["0", "0.25", "1", "0.0"]).to_string();
                let (e, t) = self.op_el(
                    &format!("{TEST}/set-load"),
                    5000,
                    vec![val("double", Some("value"), &v)],
                );
                (e, t, "set-load")
            }
        }
    }

    fn mutate_token(&mut self, t: &str) -> String {
        match self.rng.below(8) {
            0 => t.to_uppercase(),
            1 => format!("{t}:{t}:{t}"),
            2 => format!("{t}:"),
            3 => String::new(),
            4 => "zz".repeat(16),
            5 => "a".into(),
            6 => "f".repeat(300),
            _ => format!("{}:{t}", self.rng.hex32()),
        }
    }

    fn set_attr(el: &mut Element, name: &str, v: Option<String>) {
        match v {
            Some(v) => crate::xmlh::set(el, name, v),
            None => crate::xmlh::unset(el, name),
        }
    }

    /// Apply one structure-aware mutation to an op element.
    fn mutate_op(&mut self, el: &mut Element) -> &'static str {
        match self.rng.below(16) {
            0 => {
                let a = *self.rng.pick(&["token", "type", "timeout", "version"]);
                Self::set_attr(el, a, None);
                "missing attribute"
            }
            1 => {
                let v = self
                    .rng
                    .pick(&[
                        "0",
                        "-1",
                        "86400001",
                        "4294967296",
                        "abc",
                        "",
                        "1",
                        "86400000",
                    ])
                    .to_string();
                Self::set_attr(el, "timeout", Some(v));
                "timeout boundary"
            }
            2 => {
                let v = self
                    .rng
                    .pick(&["2.0", "1.9", "0.4", "", "1", "1.0.0", "x"])
                    .to_string();
                Self::set_attr(el, "version", Some(v));
                "version"
            }
            3 => {
                let v = self
                    .rng
                    .pick(&["0", "65", "64", "-1", "x", "1"])
                    .to_string();
                Self::set_attr(el, "window", Some(v));
                "window boundary"
            }
            4 => {
                let v = self
                    .rng
                    .pick(&["none", "ALL", "", "single", "direct"])
                    .to_string();
                Self::set_attr(el, "scope", Some(v));
                "scope"
            }
            5 => {
                let v = self
                    .rng
                    .pick(&[
                        "",
                        "relative",
                        "/",
                        "//x",
                        "/vertebra/test/",
                        "/vertebra/test/echo/sub",
                        "/unknown/op",
                        "/vertebra/test/ech\u{200b}o",
                    ])
                    .to_string();
                Self::set_attr(el, "type", Some(v));
                "operation path"
            }
            6 => {
                let t = el.attr("token").unwrap_or("").to_string();
                let v = self.mutate_token(&t);
                Self::set_attr(el, "token", Some(v));
                "token"
            }
            7 => {
                let n = self
                    .rng
                    .pick(&["xyz", "priority", "ack", "from"])
                    .to_string();
                Self::set_attr(el, &n, Some("1".into()));
                "unknown attribute"
            }
            8 => {
                el.append_child(val("bogus", Some("u"), "1"));
                "unknown value element"
            }
            9 => {
                el.append_child(
                    Element::builder("x", "urn:example:other")
                        .at("name", "f")
                        .build(),
                );
                "foreign-namespace child"
            }
            10 => {
                let v = self.value(None, 0);
                el.append_child(v);
                "unnamed value"
            }
            11 => {
                el.append_child(val("string", Some("dup"), "1"));
                el.append_child(val("i4", Some("dup"), "2"));
                "duplicate names"
            }
            12 => {
                let kinds = [
                    "i4",
                    "double",
                    "boolean",
                    "base64",
                    "dateTime.iso8601",
                    "res",
                    "nil",
                ];
                let k = *self.rng.pick(&kinds);
                let bad = self
                    .rng
                    .pick(&[
                        "abc",
                        "NaN",
                        "INF",
                        "2",
                        "!!",
                        "2147483648",
                        "-2147483649",
                        "//",
                        "x",
                    ])
                    .to_string();
                el.append_child(val(k, Some("confused"), &bad));
                "type confusion"
            }
            13 => {
                let depth = self.rng.range(30, 40);
                let mut v = val("i4", None, "1");
                for _ in 0..depth {
                    v = cont("list", None, vec![v]);
                }
                crate::xmlh::set(&mut v, "name", "deep");
                el.append_child(v);
                "deep nesting"
            }
            14 => {
                el.append_text_node("mixed text");
                "text inside op"
            }
            _ => {
                let n = self.rng.range(40, 300);
                for i in 0..n {
                    el.append_child(val("i4", Some(&format!("v{i}")), "1"));
                }
                "many values"
            }
        }
    }

    fn lifecycle_el(&mut self, token: String) -> (Element, &'static str) {
        let k = self.rng.below(8);
        let el = match k {
            0 => Element::builder("ack", NS).at("token", token).build(),
            1 => Element::builder("nack", NS)
                .at("token", token)
                .at("reason", "not-authorized")
                .build(),
            2 => Element::builder("data", NS)
                .at("token", token)
                .at(
                    "seq",
                    self.rng.pick(&["0", "1", "-1", "99999999999"]).to_string(),
                )
                .append(val("i4", Some("x"), "1"))
                .build(),
            3 => Element::builder("final", NS)
                .at("token", token)
                .at("count", "1")
                .build(),
            4 => Element::builder("error", NS)
                .at("token", token)
                .at("type", "error")
                .at("condition", "handler-failed")
                .build(),
            5 | 6 => Element::builder("cancel", NS).at("token", token).build(),
            _ => Element::builder("load", NS).at("value", "0.5").build(),
        };
        (el, "lifecycle stanza in an impossible state")
    }

    fn prev_op(&mut self, via: Option<&str>) -> Option<SentOp> {
        let c: Vec<&SentOp> = self
            .ops
            .iter()
            .filter(|o| via.is_none_or(|v| o.via == v))
            .collect();
        if c.is_empty() {
            None
        } else {
            Some((*self.rng.pick(&c)).clone())
        }
    }

    fn agent_step(&mut self) -> Step {
        let w_inject = if self.cfg.inject { 8 } else { 0 };
        let action = self.rng.weighted(&[26, 22, 9, 9, 4, 9, 6, 4, 4, w_inject]);
        match action {
            0 => {
                let (e, t, what) = self.valid_op();
                self.step(VIA_REQUESTER, "set", Some((e, t)), &format!("valid {what}"))
            }
            1 => {
                let (mut e, t, what) = self.valid_op();
                let n = self.rng.range(1, 3);
                let mut notes = Vec::new();
                for _ in 0..n {
                    notes.push(self.mutate_op(&mut e));
                }
                self.step(
                    VIA_REQUESTER,
                    "set",
                    Some((e, t)),
                    &format!("{what} mutated: {}", notes.join(", ")),
                )
            }
            2 => {
                // Lifecycle stanza for an unknown op, or for a real one in the wrong state.
                let token = match self.prev_op(None) {
                    Some(o) if self.rng.chance(2, 3) => format!("{{{{tok:{}}}}}", o.key),
                    _ => format!("{}:{}", self.rng.hex32(), self.rng.hex32()),
                };
                let (e, note) = self.lifecycle_el(token);
                let via = if self.rng.chance(1, 4) {
                    VIA_STRANGER
                } else {
                    VIA_REQUESTER
                };
                self.step(via, "set", Some((e, String::new())), note)
            }
            3 => {
                // Exact retransmission of an earlier op (same sender, IQ id, payload): immediate
                // when it is the latest, reordered otherwise.
                match self.prev_op(Some(VIA_REQUESTER)) {
                    Some(o) => Step {
                        key: self.key(),
                        via: o.via.clone(),
                        kind: "iq".into(),
                        iq_type: Some("set".into()),
                        id: Some(o.id.clone()),
                        from: None,
                        xml: Some(o.xml.clone()),
                        burst: false,
                        to: None,
                        raw: None,
                        max: None,
                        note: format!("duplicate of step key {}", o.key),
                    },
                    None => {
                        let (e, t, what) = self.valid_op();
                        self.step(VIA_REQUESTER, "set", Some((e, t)), &format!("valid {what}"))
                    }
                }
            }
            4 => {
                // A new op colliding with an earlier IQ id.
                let (e, t, what) = self.valid_op();
                let mut s = self.step(VIA_REQUESTER, "set", Some((e, t)), "");
                if let Some(o) = self.prev_op(Some(VIA_REQUESTER)) {
                    s.id = Some(o.id.clone());
                    s.note = format!("{what} reusing the IQ id of step key {}", o.key);
                }
                if let Some(last) = self.ops.last_mut() {
                    if last.key == s.key {
                        last.id = s.id.clone().unwrap_or_default();
                    }
                }
                s
            }
            5 => {
                // Authorization mix-ups.
                match self.rng.below(3) {
                    0 => {
                        let (e, t) = self.op_el(&format!("{TEST}/counter"), 5000, vec![]);
                        self.step(VIA_STRANGER, "set", Some((e, t)), "stranger calls counter")
                    }
                    1 => match self.prev_op(Some(VIA_REQUESTER)) {
                        Some(o) => {
                            let mut s = Step {
                                key: self.key(),
                                via: VIA_STRANGER.into(),
                                kind: "iq".into(),
                                iq_type: Some("set".into()),
                                id: Some(o.id.clone()),
                                from: None,
                                xml: Some(o.xml.clone()),
                                burst: false,
                                to: None,
                                raw: None,
                                max: None,
                                note: format!(
                                    "stranger replays the requester's op (IQ id and token) of step key {}",
                                    o.key
                                ),
                            };
                            if o.token.is_empty() {
                                s.note.push_str(" (malformed original)");
                            }
                            s
                        }
                        None => {
                            let (e, t) = self.op_el(&format!("{TEST}/counter"), 5000, vec![]);
                            self.step(VIA_STRANGER, "set", Some((e, t)), "stranger calls counter")
                        }
                    },
                    _ => {
                        let token = match self.prev_op(Some(VIA_REQUESTER)) {
                            Some(o) => format!("{{{{tok:{}}}}}", o.key),
                            None => format!("{}:{}", self.rng.hex32(), self.rng.hex32()),
                        };
                        let e = Element::builder("cancel", NS).at("token", token).build();
                        self.step(
                            VIA_STRANGER,
                            "set",
                            Some((e, String::new())),
                            "stranger cancels the requester's op",
                        )
                    }
                }
            }
            6 => {
                // The requester cancels one of its ops (maybe already finished).
                let token = match self.prev_op(Some(VIA_REQUESTER)) {
                    Some(o) => format!("{{{{tok:{}}}}}", o.key),
                    None => format!("{}:{}", self.rng.hex32(), self.rng.hex32()),
                };
                let e = Element::builder("cancel", NS).at("token", token).build();
                self.step(VIA_REQUESTER, "set", Some((e, String::new())), "cancel")
            }
            7 => {
                // A burst of concurrent calls (no barrier in between).
                let n = self.rng.range(3, 12);
                let mut steps = Vec::new();
                for _ in 0..n {
                    let (e, t) = if self.rng.chance(1, 2) {
                        self.op_el(&format!("{TEST}/counter"), 5000, vec![])
                    } else {
                        let vals = self.named_values(1);
                        self.op_el(&format!("{TEST}/echo"), 5000, vals)
                    };
                    let mut s = self.step(VIA_REQUESTER, "set", Some((e, t)), "burst");
                    s.burst = true;
                    steps.push(s);
                }
                if let Some(l) = steps.last_mut() {
                    l.burst = false;
                }
                let first = steps.remove(0);
                self.pending.extend(steps);
                first
            }
            8 => {
                // Outside Vertebra: foreign namespaces, unknown Vertebra elements, get/result.
                match self.rng.below(4) {
                    0 => {
                        let e = Element::builder("query", "urn:example:unknown").build();
                        let ty = if self.rng.chance(1, 2) { "get" } else { "set" };
                        self.step(
                            VIA_REQUESTER,
                            ty,
                            Some((e, String::new())),
                            "unknown namespace",
                        )
                    }
                    1 => {
                        let e = Element::builder("bogus", NS).build();
                        self.step(
                            VIA_REQUESTER,
                            "set",
                            Some((e, String::new())),
                            "unknown Vertebra element",
                        )
                    }
                    2 => {
                        let (e, t, _) = self.valid_op();
                        self.step(VIA_REQUESTER, "get", Some((e, t)), "op in an IQ get")
                    }
                    _ => self.step(VIA_REQUESTER, "result", None, "unsolicited IQ result"),
                }
            }
            _ => self.inject_step(),
        }
    }

    fn inject_step(&mut self) -> Step {
        match self.rng.below(5) {
            0 => {
                let (e, t, what) = self.valid_op();
                let mut s = self.step(VIA_INJECT, "set", Some((e, t)), "");
                s.from = Some("mallory@elsewhere.example/x".into());
                s.note = format!("{what} from another domain (injected)");
                s
            }
            1 => {
                // Spoofed dispatcher: an authorize-style answer nobody asked for.
                let token = format!("{}:{}", self.rng.hex32(), self.rng.hex32());
                let (e, _) = self.lifecycle_el(token);
                let mut s = self.step(
                    VIA_INJECT,
                    "set",
                    Some((e, String::new())),
                    "spoofed dispatcher lifecycle stanza (injected)",
                );
                s.from = Some("{{dispatcher}}".into());
                s
            }
            2 => {
                // Larger than the server's stanza limit (only injection gets it through); on
                // an op whose answer is small, so the agent's reply stays within the limit.
                let n = *self.rng.pick(&[270_000usize, 300_000]);
                let kind = *self.rng.pick(&["counter", "sleep", "no-such-op"]);
                let (e, t) = self.op_el(
                    &format!("{TEST}/{kind}"),
                    5000,
                    vec![val("string", Some("big"), &"y".repeat(n))],
                );
                let mut s = self.step(
                    VIA_INJECT,
                    "set",
                    Some((e, t)),
                    "oversized stanza (injected, bypasses the server limit)",
                );
                s.from = Some("{{requester}}".into());
                s
            }
            3 => {
                let key = self.key();
                let max = *self.rng.pick(&[0usize, 1, 2, 3, 7, 16]);
                Step {
                    key,
                    via: VIA_INJECT.into(),
                    kind: "split".into(),
                    iq_type: None,
                    id: None,
                    from: None,
                    xml: None,
                    burst: false,
                    to: None,
                    raw: None,
                    max: Some(max),
                    note: if max == 0 {
                        "stop splitting writes".into()
                    } else {
                        format!("split writes to the target into pieces of at most {max} bytes")
                    },
                }
            }
            _ => {
                let (e, t, what) = self.valid_op();
                let mut s = self.step(VIA_INJECT, "set", Some((e, t)), "");
                s.from = Some("{{requester}}".into());
                s.note = format!("{what} injected from the requester's address");
                s
            }
        }
    }

    // ---- dispatcher -------------------------------------------------------------------------

    fn dispatcher_step(&mut self) -> Step {
        let which = self.rng.below(3);
        let (mut e, t) = match which {
            0 => {
                let ops: Vec<Element> = (0..self.rng.below(4))
                    .map(|i| val("res", None, &format!("/fuzz/op{i}")))
                    .collect();
                let ttl = self
                    .rng
                    .pick(&["0", "1", "60", "86400", "86401", "-1"])
                    .to_string();
                self.op_el(
                    "/security/advertise",
                    5000,
                    vec![
                        cont("list", Some("operations"), ops),
                        cont(
                            "struct",
                            Some("resources"),
                            vec![cont(
                                "list",
                                Some("cluster"),
                                vec![val("res", None, "/cluster/rd00")],
                            )],
                        ),
                        val("i4", Some("ttl"), &ttl),
                    ],
                )
            }
            1 => {
                let lim = self.i4_text();
                self.op_el(
                    "/security/discover",
                    5000,
                    vec![
                        val("res", Some("operation"), "/fuzz/op0"),
                        val("i4", Some("limit"), &lim),
                    ],
                )
            }
            _ => self.op_el(
                "/security/authorize",
                5000,
                vec![
                    val("string", Some("from"), "{{requester}}"),
                    val("string", Some("to"), "{{stranger}}"),
                    val("res", Some("operation"), "/fuzz/op0"),
                    cont("struct", Some("resources"), vec![]),
                ],
            ),
        };
        let mut note = format!(
            "dispatcher {}",
            ["advertise", "discover", "authorize"][which as usize]
        );
        if self.rng.chance(1, 2) {
            let m = self.mutate_op(&mut e);
            note.push_str(&format!(" mutated: {m}"));
        }
        let via = match self.rng.below(5) {
            0 => VIA_STRANGER,
            1 => VIA_DISPATCHER,
            _ => VIA_REQUESTER,
        };
        self.step(via, "set", Some((e, t)), &note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_inputs() {
        let cfg = GenConfig {
            cut: true,
            restart: true,
            raw: true,
            jid: true,
            bias: true,
            ..GenConfig::basic(false, true, true)
        };
        let mut a = Gen::new(42, cfg.clone());
        let mut b = Gen::new(42, cfg);
        for i in 0..300 {
            let (x, y) = (a.next_step(), b.next_step());
            assert_eq!(x, y);
            if i % 7 == 0 {
                a.add_to_corpus(&x);
                b.add_to_corpus(&y);
            }
        }
        assert!(a.biased > 0);
    }

    #[test]
    fn extensions_insert_into_the_base_sequence() {
        // The base inputs of a seed are the same with and without the extensions.
        let mut base = Gen::new(5, GenConfig::basic(false, true, true));
        let mut ext = Gen::new(
            5,
            GenConfig {
                cut: true,
                restart: true,
                raw: true,
                jid: true,
                bias: true,
                ..GenConfig::basic(false, true, true)
            },
        );
        let b: Vec<String> = (0..200)
            .map(|_| base.next_step().note)
            .filter(|n| !n.contains("burst"))
            .collect();
        let mut kinds = std::collections::BTreeSet::new();
        let mut e = Vec::new();
        let mut n = 0;
        while e.len() < b.len() && n < 2000 {
            n += 1;
            let s = ext.next_step();
            kinds.insert(s.kind.clone());
            if n % 5 == 0 {
                ext.add_to_corpus(&s);
            }
            let extra = s.note.starts_with("corpus:")
                || s.note.contains("session")
                || s.note.contains("after the cut")
                || s.note.contains("JID edge")
                || matches!(s.kind.as_str(), "cut" | "restart" | "raw")
                || s.note.contains("burst");
            if !extra {
                e.push(s.note);
            }
        }
        assert_eq!(b, e);
        for k in ["cut", "restart", "raw"] {
            assert!(kinds.contains(k), "{kinds:?}");
        }
    }

    #[test]
    fn generated_xml_parses() {
        let mut g = Gen::new(
            3,
            GenConfig {
                cut: true,
                restart: true,
                raw: true,
                jid: true,
                bias: true,
                ..GenConfig::basic(false, true, true)
            },
        );
        for i in 0..500 {
            let s = g.next_step();
            if i % 3 == 0 {
                g.add_to_corpus(&s);
            }
            if let Some(x) = s.xml.as_ref().filter(|x| x.len() < 100_000) {
                let x = x.replace("{{", "").replace("}}", "");
                assert!(x.parse::<Element>().is_ok(), "{x}");
            }
        }
    }
}
