//! Typed values round-tripped through the test profile's echo, and rejected malformed values.

use super::util::*;
use crate::case::{CaseResult, Ctx};
use crate::xmlh::AttrExt;
use minidom::Element;

const ECHO: &str = "/vertebra/test/echo";

/// Echo `input`; the one chunk must equal `expected` (canonical comparison, order-free).
async fn echo_expect(
    cx: &Ctx,
    reqs: &[&str],
    what: &str,
    input: Vec<Element>,
    expected: Vec<Element>,
) -> CaseResult {
    let (_c, o) = call(cx, ECHO, 5000, input, 3000).await?;
    let chunks: Vec<&Element> = o
        .stanzas
        .iter()
        .filter_map(|r| r.vchild())
        .filter(|c| c.name() == "data" || (c.name() == "final" && c.children().next().is_some()))
        .collect();
    let got = chunks
        .first()
        .map(|d| canon_set(d.children()))
        .unwrap_or_default();
    let want = canon_set(expected.iter());
    let ok = o.term_name() == "final" && chunks.len() == 1 && got == want;
    for c in &chunks {
        sender_rules(cx, c);
    }
    let observed = if chunks.is_empty() {
        o.describe()
    } else {
        chunks
            .iter()
            .map(|c| String::from(*c))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for r in reqs {
        cx.check(
            r,
            ok,
            format!(
                "{what}: {}",
                expected
                    .iter()
                    .map(String::from)
                    .collect::<Vec<_>>()
                    .join("")
            ),
            observed.clone(),
        );
    }
    Ok(())
}

/// Echo `input`; must end with fatal bad-value.
async fn echo_reject(cx: &Ctx, reqs: &[&str], what: &str, input: Vec<Element>) -> CaseResult {
    let shown = input.iter().map(String::from).collect::<Vec<_>>().join("");
    let (_c, o) = call(cx, ECHO, 5000, input, 3000).await?;
    let ok = o
        .error()
        .is_some_and(|(t, k)| t == "fatal" && k == "bad-value");
    for r in reqs {
        cx.check(
            r,
            ok,
            format!("{what}: <error type=\"fatal\" condition=\"bad-value\"> for {shown}"),
            o.describe(),
        );
    }
    Ok(())
}

pub async fn ints(cx: Ctx) -> CaseResult {
    let vals = vec![
        i4("zero", 0),
        i4("min", -2147483648),
        i4("max", 2147483647),
        i4("neg", -7),
    ];
    echo_expect(
        &cx,
        &["VAP-TPF-006", "VAP-VAL-010"],
        "i4 edge values unchanged",
        vals.clone(),
        vals,
    )
    .await?;
    echo_expect(
        &cx,
        &["VAP-VAL-011"],
        "int/integer accepted and echoed as i4",
        vec![v("int", "a", "5"), v("integer", "b", "-6")],
        vec![i4("a", 5), i4("b", -6)],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-009"],
        "i4 out of range",
        vec![v("i4", "x", "2147483648")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-009"],
        "i4 not digits",
        vec![v("i4", "x", "12a")],
    )
    .await?;
    Ok(())
}

pub async fn doubles(cx: Ctx) -> CaseResult {
    let vals = vec![
        v("double", "a", "1.5"),
        v("double", "b", "-0.25"),
        v("double", "c", "1e+300"),
        v("double", "z", "0"),
    ];
    // Values must round-trip numerically; the exact spelling is a SHOULD (shortest form).
    let (_c, o) = call(&cx, ECHO, 5000, vals.clone(), 3000).await?;
    let d = o.chunks().first().cloned().cloned();
    let num = |e: &Element, n: &str| named(e, n).and_then(|x| x.text().trim().parse::<f64>().ok());
    let ok = d.as_ref().is_some_and(|d| {
        num(d, "a") == Some(1.5)
            && num(d, "b") == Some(-0.25)
            && num(d, "c") == Some(1e300)
            && num(d, "z") == Some(0.0)
            && ["a", "b", "c", "z"]
                .iter()
                .all(|n| named(d, n).is_some_and(|x| x.name() == "double"))
    });
    let shown = d.as_ref().map(String::from).unwrap_or_else(|| o.describe());
    cx.check(
        "VAP-TPF-006",
        ok,
        "doubles 1.5, -0.25, 1e300, 0 unchanged in type and value",
        shown.clone(),
    );
    let shortest = d.as_ref().is_some_and(|d| {
        ["a", "b", "c", "z"].iter().all(|n| {
            named(d, n).is_some_and(|x| {
                let t = x.text();
                let f: f64 = t.trim().parse().unwrap_or(f64::NAN);
                let rust = format!("{f:?}");
                let alt = format!("{f:e}");
                t.len() <= rust.len().min(alt.len()).max(1) + 1
            })
        })
    });
    cx.check(
        "VAP-VAL-014",
        shortest,
        "shortest round-trip spelling",
        shown,
    );
    for bad in ["NaN", "INF", "-INF", "Infinity", ""] {
        echo_reject(
            &cx,
            &["VAP-VAL-013"],
            "non-finite or empty double",
            vec![v("double", "x", bad)],
        )
        .await?;
    }
    Ok(())
}

pub async fn booleans(cx: Ctx) -> CaseResult {
    echo_expect(
        &cx,
        &["VAP-TPF-006", "VAP-VAL-015"],
        "booleans emitted as 1/0",
        vec![v("boolean", "t", "1"), v("boolean", "f", "0")],
        vec![v("boolean", "t", "1"), v("boolean", "f", "0")],
    )
    .await?;
    echo_expect(
        &cx,
        &["VAP-VAL-015", "VAP-VAL-016"],
        "true/false accepted, emitted as 1/0",
        vec![v("boolean", "t", "true"), v("boolean", "f", "false")],
        vec![v("boolean", "t", "1"), v("boolean", "f", "0")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-016"],
        "boolean yes",
        vec![v("boolean", "x", "yes")],
    )
    .await?;
    Ok(())
}

pub async fn strings(cx: Ctx) -> CaseResult {
    let tricky = "  leading, internal \t tab,  trailing  ";
    echo_expect(
        &cx,
        &["VAP-VAL-017", "VAP-TPF-006"],
        "whitespace preserved exactly",
        vec![v("string", "s", tricky)],
        vec![v("string", "s", tricky)],
    )
    .await?;
    echo_expect(
        &cx,
        &["VAP-VAL-018"],
        "empty string",
        vec![v("string", "e", "")],
        vec![v("string", "e", "")],
    )
    .await?;
    if cx.session.inject.is_some() {
        echo_expect(
            &cx,
            &["VAP-VAL-019"],
            "carriage return preserved",
            vec![v("string", "cr", "a\r\nb")],
            vec![v("string", "cr", "a\r\nb")],
        )
        .await?;
    } else {
        cx.info("VAP-VAL-019", "not checked through a real server: a CR does not survive servers that re-serialize stanzas (spec/04 note)");
    }
    echo_expect(
        &cx,
        &["VAP-TPF-006"],
        "non-ASCII text and markup characters",
        vec![v("string", "u", "Grüße <&> \"ok\" 日本 🚀")],
        vec![v("string", "u", "Grüße <&> \"ok\" 日本 🚀")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-021"],
        "string with a child element",
        vec![vc("string", "x", vec![v("i4", "", "1")])],
    )
    .await?;
    Ok(())
}

pub async fn base64(cx: Ctx) -> CaseResult {
    echo_expect(
        &cx,
        &["VAP-TPF-006", "VAP-VAL-022"],
        "base64 unchanged",
        vec![v("base64", "b", "AAEC/w==")],
        vec![v("base64", "b", "AAEC/w==")],
    )
    .await?;
    echo_expect(
        &cx,
        &["VAP-VAL-023", "VAP-VAL-022"],
        "whitespace ignored on input, none emitted",
        vec![v("base64", "b", " AAEC\n/w== ")],
        vec![v("base64", "b", "AAEC/w==")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-023"],
        "base64 with a bad character",
        vec![v("base64", "b", "AA*C")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-023"],
        "base64 with wrong padding",
        vec![v("base64", "b", "AAE")],
    )
    .await?;
    Ok(())
}

pub async fn datetimes(cx: Ctx) -> CaseResult {
    let dt = "dateTime.iso8601";
    echo_expect(
        &cx,
        &["VAP-TPF-006", "VAP-VAL-024"],
        "basic UTC form unchanged",
        vec![v(dt, "d", "20090317T12:00:00Z")],
        vec![v(dt, "d", "20090317T12:00:00Z")],
    )
    .await?;
    echo_expect(
        &cx,
        &["VAP-VAL-025", "VAP-VAL-024"],
        "extended form with offset accepted, emitted in UTC basic form",
        vec![v(dt, "d", "2009-03-17T12:00:00+01:00")],
        vec![v(dt, "d", "20090317T11:00:00Z")],
    )
    .await?;
    echo_expect(
        &cx,
        &["VAP-VAL-025"],
        "no zone means UTC",
        vec![v(dt, "d", "20090317T12:00:00")],
        vec![v(dt, "d", "20090317T12:00:00Z")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-026"],
        "invalid calendar date",
        vec![v(dt, "d", "20090230T12:00:00Z")],
    )
    .await?;
    Ok(())
}

pub async fn nil_res(cx: Ctx) -> CaseResult {
    echo_expect(
        &cx,
        &["VAP-TPF-006"],
        "nil and res unchanged",
        vec![v("nil", "n", ""), v("res", "r", "/cluster/rd00")],
        vec![v("nil", "n", ""), v("res", "r", "/cluster/rd00")],
    )
    .await?;
    echo_expect(
        &cx,
        &["VAP-RES-003", "VAP-RES-004"],
        "trailing slash removed",
        vec![v("res", "r", "/a/b/")],
        vec![v("res", "r", "/a/b")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-027"],
        "nil with content",
        vec![v("nil", "n", "x")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-028", "VAP-RES-002"],
        "res without leading slash",
        vec![v("res", "r", "a/b")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-RES-002"],
        "res with an empty segment",
        vec![v("res", "r", "/a//b")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-RES-008"],
        "res with surrounding whitespace",
        vec![v("res", "r", " /a/b ")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-RES-005"],
        "res with a control character",
        vec![v("res", "r", "/a/b\u{7f}c")],
    )
    .await?;
    Ok(())
}

pub async fn containers(cx: Ctx) -> CaseResult {
    let nested = vec![
        vc(
            "list",
            "l",
            vec![
                v("i4", "", "1"),
                v("string", "", "two"),
                vc("list", "", vec![v("boolean", "", "1")]),
            ],
        ),
        vc(
            "struct",
            "s",
            vec![i4("a", 1), vc("struct", "b", vec![v("string", "c", "d")])],
        ),
        vc(
            "exception",
            "e",
            vec![
                v("string", "class", "Oops"),
                v("string", "message", "it broke"),
            ],
        ),
        vc("list", "empty", vec![]),
    ];
    echo_expect(
        &cx,
        &["VAP-TPF-006", "VAP-VAL-036"],
        "list, struct, exception, empty list unchanged",
        nested.clone(),
        nested,
    )
    .await?;
    echo_expect(
        &cx,
        &["VAP-VAL-030", "VAP-VAL-029"],
        "name on list children ignored and not emitted",
        vec![vc("list", "l", vec![v("i4", "junk", "1")])],
        vec![vc("list", "l", vec![v("i4", "", "1")])],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-032"],
        "struct with a repeated member",
        vec![vc("struct", "s", vec![i4("a", 1), i4("a", 2)])],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-032"],
        "struct with an unnamed member",
        vec![vc("struct", "s", vec![v("i4", "", "1")])],
    )
    .await?;
    Ok(())
}

pub async fn names_and_unknowns(cx: Ctx) -> CaseResult {
    echo_reject(
        &cx,
        &["VAP-VAL-003", "VAP-OPS-051"],
        "unnamed top-level value",
        vec![v("i4", "", "1")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-003"],
        "repeated top-level name",
        vec![i4("a", 1), i4("a", 2)],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-005", "VAP-OPS-051"],
        "unknown value element",
        vec![v("float", "f", "1.0")],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-005"],
        "element of another namespace",
        vec![Element::builder("i4", "urn:other")
            .at("name", "x")
            .append("1")
            .build()],
    )
    .await?;
    let mut attr = i4("a", 1);
    crate::xmlh::set(&mut attr, "unit", "ms");
    echo_expect(
        &cx,
        &["VAP-VAL-006"],
        "unknown attributes on values ignored",
        vec![attr],
        vec![i4("a", 1)],
    )
    .await?;
    echo_expect(
        &cx,
        &["VAP-VAL-004"],
        "order of top-level values not significant",
        vec![i4("b", 2), i4("a", 1)],
        vec![i4("a", 1), i4("b", 2)],
    )
    .await?;
    Ok(())
}

pub async fn text_in_containers(cx: Ctx) -> CaseResult {
    let mut op_children = vec![i4("a", 1)];
    let l = Element::builder("list", crate::peer::NS)
        .at("name", "l")
        .append("stray text")
        .append(v("i4", "", "1"))
        .build();
    op_children.push(l);
    echo_reject(
        &cx,
        &["VAP-VAL-007"],
        "character data inside a list",
        op_children,
    )
    .await?;
    Ok(())
}

fn nest(depth: usize) -> Element {
    // depth 1 = top-level list containing an i4 (the i4 is depth 2).
    let mut e = v("i4", "", "1");
    for _ in 1..depth {
        e = vc("list", "", vec![e]);
    }
    vc("list", "deep", vec![e])
}

pub async fn nesting(cx: Ctx) -> CaseResult {
    // A top-level value has depth 1; `nest(31)` gives 32 levels (31 lists + the i4).
    let ok = nest(31);
    echo_expect(
        &cx,
        &["VAP-VAL-033"],
        "nesting depth 32 accepted",
        vec![ok.clone()],
        vec![ok],
    )
    .await?;
    echo_reject(
        &cx,
        &["VAP-VAL-034"],
        "nesting depth 33 rejected",
        vec![nest(32)],
    )
    .await?;
    Ok(())
}

/// Sender rules every emitted chunk must follow (checked on each echo answer).
fn sender_rules(cx: &Ctx, chunk: &Element) {
    let names: Vec<&str> = chunk.children().filter_map(|c| c.attr("name")).collect();
    let all_named = chunk
        .children()
        .all(|c| c.attr("name").is_some_and(|n| !n.is_empty()));
    cx.check(
        "VAP-VAL-001",
        all_named,
        "every top-level value named",
        String::from(chunk),
    );
    let mut u = names.clone();
    u.sort();
    u.dedup();
    cx.check(
        "VAP-VAL-002",
        u.len() == names.len(),
        "top-level names unique",
        format!("{names:?}"),
    );
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    fn walk(e: &Element, depth: usize, out: &mut Vec<(&'static str, String)>) {
        if depth > 32 {
            out.push(("VAP-VAL-035", format!("value nested {depth} deep")));
        }
        match e.name() {
            "i4" if e.text().trim().parse::<i32>().is_err() => {
                out.push((
                    "VAP-VAL-008",
                    format!("i4 {:?} outside the 32-bit range", e.text()),
                ));
            }
            "double" if !e.text().trim().parse::<f64>().is_ok_and(|f| f.is_finite()) => {
                out.push(("VAP-VAL-012", format!("double {:?} not finite", e.text())));
            }
            "struct" => {
                let mut n: Vec<Option<&str>> = e.children().map(|c| c.attr("name")).collect();
                if n.iter().any(|x| x.is_none_or(str::is_empty)) {
                    out.push(("VAP-VAL-031", "struct member without name".into()));
                }
                n.sort();
                let len = n.len();
                n.dedup();
                if n.len() != len {
                    out.push(("VAP-VAL-031", "repeated struct member".into()));
                }
            }
            "exception" => {
                let extra: Vec<&str> = e
                    .children()
                    .filter_map(|c| c.attr("name"))
                    .filter(|n| *n != "class" && *n != "message")
                    .collect();
                if !extra.is_empty() {
                    out.push(("VAP-VAL-037", format!("exception members {extra:?}")));
                }
            }
            _ => {}
        }
        for c in e.children() {
            walk(c, depth + 1, out);
        }
    }
    for c in chunk.children() {
        walk(c, 1, &mut problems);
    }
    for req in [
        "VAP-VAL-008",
        "VAP-VAL-012",
        "VAP-VAL-031",
        "VAP-VAL-035",
        "VAP-VAL-037",
    ] {
        let mine: Vec<&String> = problems
            .iter()
            .filter(|(r, _)| *r == req)
            .map(|(_, m)| m)
            .collect();
        cx.check(
            req,
            mine.is_empty(),
            "emitted values follow the sender rules",
            format!("{mine:?}"),
        );
    }
    // It parsed as XML, so it holds no character XML 1.0 forbids.
    cx.check(
        "VAP-VAL-020",
        true,
        "no XML-forbidden characters in strings",
        "the chunk parsed as XML",
    );
}

pub async fn exception_members(cx: Ctx) -> CaseResult {
    let (_c, o) = call(
        &cx,
        ECHO,
        5000,
        vec![vc(
            "exception",
            "e",
            vec![
                v("string", "class", "Oops"),
                v("string", "message", "m"),
                v("string", "backtrace", "x"),
            ],
        )],
        3000,
    )
    .await?;
    let e = o.chunks().first().and_then(|d| named(d, "e")).cloned();
    cx.check(
        "VAP-VAL-038",
        o.term_name() == "final"
            && e.as_ref()
                .is_some_and(|e| named(e, "class").is_some() && named(e, "message").is_some()),
        "an exception with an extra member is accepted (the member ignored)",
        o.describe(),
    );
    if let Some(e) = e {
        cx.check(
            "VAP-VAL-037",
            e.children()
                .all(|c| matches!(c.attr("name"), Some("class") | Some("message"))),
            "a 1.0 sender emits only class and message",
            String::from(&e),
        );
    }
    Ok(())
}

/// Test-profile ops with missing or mistyped arguments → bad-value.
pub async fn profile_bad_args(cx: Ctx) -> CaseResult {
    let cases: Vec<(&str, Vec<Element>)> = vec![
        ("stream", vec![i4("size", 1)]),
        ("stream", vec![v("string", "count", "three"), i4("size", 1)]),
        ("sleep", vec![]),
        ("sleep", vec![i4("ms", -5)]),
        ("fail", vec![v("string", "reason", "no condition")]),
        ("set-load", vec![v("string", "value", "high")]),
    ];
    for (op_name, vals) in cases {
        let shown = vals.iter().map(String::from).collect::<Vec<_>>().join("");
        let (_c, o) = call(&cx, &format!("/vertebra/test/{op_name}"), 5000, vals, 3000).await?;
        cx.check(
            "VAP-TPF-004",
            o.error()
                .is_some_and(|(t, k)| t == "fatal" && k == "bad-value"),
            format!("{op_name} {shown}: <error type=\"fatal\" condition=\"bad-value\">"),
            o.describe(),
        );
    }
    Ok(())
}
