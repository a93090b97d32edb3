//! Input generation: a small model of the protocol's state (the ops sent so far, their IQ ids
//! and tokens) chooses the next input — a valid call, a mutated one (boundary values, type
//! confusion, long and Unicode-edge strings, unknown namespaces and attributes, bad tokens),
//! a lifecycle stanza in an impossible state, a duplicate or colliding IQ id, a stranger
//! replaying a requester's token, a burst, and in embedded mode injected stanzas from any
//! address, oversized stanzas and split writes. Deterministic for a seed.

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
}

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
    cfg: GenConfig,
    next_key: u32,
    ops: Vec<SentOp>,
    pending: Vec<Step>,
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

fn xml(el: &Element) -> String {
    String::from(el)
}

impl Gen {
    pub fn new(seed: u64, cfg: GenConfig) -> Gen {
        Gen {
            rng: Rng::new(seed),
            cfg,
            next_key: 0,
            ops: Vec::new(),
            pending: Vec::new(),
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
            dispatcher: false,
            inject: true,
            test_profile: true,
        };
        let mut a = Gen::new(42, cfg.clone());
        let mut b = Gen::new(42, cfg);
        for _ in 0..300 {
            assert_eq!(a.next_step(), b.next_step());
        }
    }

    #[test]
    fn generated_xml_parses() {
        let mut g = Gen::new(
            3,
            GenConfig {
                dispatcher: false,
                inject: true,
                test_profile: true,
            },
        );
        for _ in 0..500 {
            let s = g.next_step();
            if let Some(x) = s.xml.as_ref().filter(|x| x.len() < 100_000) {
                let x = x.replace("{{", "").replace("}}", "");
                assert!(x.parse::<Element>().is_ok(), "{x}");
            }
        }
    }
}
