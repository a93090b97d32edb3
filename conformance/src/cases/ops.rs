//! Operations: lifecycle, tokens, streaming, deadline, cancel, duplicates, errors.

use super::util::*;
use crate::case::{Abort, CaseResult, Ctx};
use crate::peer::{Rx, NS};
use crate::xmlh::AttrExt;
use minidom::Element;
use std::time::Instant;

/// Conditions that travel as `<error>` (spec/10-errors.md).
pub const ERROR_CONDITIONS: &[&str] = &[
    "no-handler",
    "bad-value",
    "handler-failed",
    "internal-error",
    "cancelled",
    "deadline-expired",
    "unsupported-version",
    "overloaded",
];

/// Full echo lifecycle with the authorized requester.
pub async fn lifecycle_echo(cx: Ctx) -> CaseResult {
    let dsp = dsp(&cx)?;
    let t0 = Instant::now();
    let (c, o) = call_b(
        &cx,
        "/vertebra/test/echo",
        5000,
        vec![v("string", "s", "hello")],
        3000,
    )
    .await?;
    let agent = agent(&cx)?;
    cx.require(
        "VAP-OPS-019",
        o.op_iq_type() == Some("result") && o.token.is_some(),
        "an IQ result whose single child is <op xmlns=NS token=\"T:S\"/>",
        o.describe(),
    )?;
    let tok = o.token.clone().unwrap_or_default();
    let parts = split_token(&tok);
    cx.check(
        "VAP-OPS-003",
        parts.is_some_and(|(x, _)| x == c.t),
        format!("composite token {}:S", c.t),
        format!("token {tok:?}"),
    );
    cx.check(
        "VAP-OPS-002",
        parts.is_some_and(|(_, s)| is_hex32(s)),
        "S = 32 lowercase hex characters",
        format!("token {tok:?}"),
    );
    let kinds = o.kinds();
    let first_data = kinds.iter().position(|k| k == "data");
    let ack_pos = kinds.iter().position(|k| k == "ack");
    cx.check(
        "VAP-OPS-028",
        o.fast_ack && ack_pos.is_none() || (!o.fast_ack && ack_pos == Some(0) && kinds.iter().filter(|k| *k == "ack" || *k == "nack").count() == 1),
        "exactly one ack (or ack=\"true\" on the op result) after the op result and before any data",
        o.describe(),
    );
    if o.fast_ack {
        cx.check(
            "VAP-OPS-025",
            ack_pos.is_none(),
            "no <ack> after ack=\"true\"",
            o.describe(),
        );
    }
    let _ = first_data;
    cx.check(
        "VAP-OPS-045",
        o.terminal.is_some() && o.after.is_empty(),
        "exactly one terminal stanza and nothing for the op after it",
        o.describe(),
    );
    cx.check(
        "VAP-TPF-003",
        o.term_name() == "final",
        "echo ends with final",
        o.describe(),
    );
    // seq numbering and count.
    let data = o.data();
    let seqs: Vec<Option<&str>> = data.iter().map(|d| d.attr("seq")).collect();
    cx.check(
        "VAP-OPS-034",
        seqs.iter()
            .enumerate()
            .all(|(i, s)| *s == Some(i.to_string().as_str())),
        "data seq 0, 1, 2, …",
        format!("seq attributes {seqs:?}"),
    );
    if let Some(f) = o.term().filter(|t| t.name() == "final") {
        let chunks = data.len() + usize::from(f.children().next().is_some());
        cx.check(
            "VAP-OPS-042",
            f.attr("count") == Some(chunks.to_string().as_str()),
            format!("final count=\"{chunks}\""),
            format!("final count={:?}", f.attr("count")),
        );
    }
    // Every Vertebra element in an IQ set, fresh IQ ids.
    let ids: Vec<&str> = o.stanzas.iter().filter_map(|r| r.attr("id")).collect();
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    cx.check(
        "VAP-OPS-036",
        uniq.len() == ids.len() && !ids.contains(&c.id.as_str()),
        "each data/final in its own IQ with a fresh id",
        format!("IQ ids {ids:?}"),
    );
    cx.check(
        "VAP-TRN-005",
        o.stanzas
            .iter()
            .all(|r| r.iq_type() == Some("set") && r.el.children().count() == 1),
        "every Vertebra element as the single child of an IQ set",
        o.describe(),
    );
    cx.check(
        "VAP-TRN-016",
        o.stanzas
            .iter()
            .all(|r| r.attr("to").is_some_and(|t| t.contains('/'))),
        "responder stanzas addressed to the requester's full JID",
        o.stanzas
            .iter()
            .map(|r| r.attr("to").unwrap_or("(none)").to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    let foreign_ns = o
        .stanzas
        .iter()
        .flat_map(|r| r.el.children())
        .filter(|c| c.ns() != NS)
        .count();
    cx.check(
        "VAP-VER-001",
        foreign_ns == 0 && !o.stanzas.is_empty(),
        format!("every Vertebra element in {NS}"),
        format!("{foreign_ns} children in other namespaces"),
    );
    let legacy_ns = o.stanzas.iter().any(|r| {
        r.xml()
            .contains("http://xmlschema.engineyard.com/agent/0.5")
            || r.el.children().any(|c| c.name() == "vertebra")
    });
    cx.check(
        "VAP-VER-002",
        !legacy_ns,
        "no agent/0.5 namespace or <vertebra> wrapper",
        format!("legacy namespace present: {legacy_ns}"),
    );
    // Authorization was asked, with the right fields, before the ack.
    let me_req = cx.req().jid.to_string();
    let auth = dsp
        .auths()
        .into_iter()
        .find(|a| a.at >= t0 && same_jid(&a.requester, &me_req));
    cx.check(
        "VAP-SEC-006",
        auth.is_some(),
        "a /security/authorize op to the dispatcher before acking",
        match &auth {
            Some(a) => format!(
                "authorize from={} to={} operation={}",
                a.requester, a.responder, a.operation
            ),
            None => "no authorize op".into(),
        },
    );
    if let Some(a) = &auth {
        cx.check(
            "VAP-SEC-007",
            same_jid(&a.requester, &cx.req().jid.to_string())
                && same_jid(&a.responder, &agent)
                && a.operation == "/vertebra/test/echo",
            format!(
                "from={} to={} operation=/vertebra/test/echo",
                cx.req().jid,
                agent
            ),
            format!(
                "from={} to={} operation={}",
                a.requester, a.responder, a.operation
            ),
        );
    }
    Ok(())
}

/// The op result SHOULD be bare; fast path is recorded as INFO.
pub async fn op_result_shape(cx: Ctx) -> CaseResult {
    let (_c, o) = call(&cx, "/vertebra/test/echo", 5000, vec![i4("n", 1)], 3000).await?;
    let r = o
        .op_resp
        .clone()
        .ok_or_else(|| Abort::stop("no op result"))?;
    let op = r.el.get_child("op", NS).cloned();
    let extra_attrs: Vec<String> = op
        .as_ref()
        .map(|e| {
            e.attrs()
                .iter()
                .map(|((_, k), _)| k.to_string())
                .filter(|k| k != "token" && k != "ack" && k != "xmlns")
                .collect()
        })
        .unwrap_or_default();
    cx.check(
        "VAP-OPS-020",
        op.as_ref().is_some_and(|e| e.children().next().is_none()) && extra_attrs.is_empty(),
        "<op token=\"T:S\"/> (no children, only token/ack attributes)",
        r.xml(),
    );
    cx.info(
        "VAP-OPS-024",
        if o.fast_ack {
            "responder used the fast path (ack=\"true\" on the op result)"
        } else {
            "responder sent a separate <ack>"
        },
    );
    let others: Vec<&Rx> = o.stanzas.iter().collect();
    let _ = others;
    Ok(())
}

/// Several ops: every S fresh, 32 lowercase hex, never reused.
pub async fn tokens_fresh(cx: Ctx) -> CaseResult {
    let mut toks = Vec::new();
    for i in 0..6 {
        let (c, o) = call(&cx, "/vertebra/test/echo", 5000, vec![i4("i", i)], 3000).await?;
        let tok = o.token.clone().unwrap_or_default();
        match split_token(&tok) {
            Some((x, s)) if x == c.t => toks.push(s.to_string()),
            _ => {
                cx.check(
                    "VAP-OPS-003",
                    false,
                    format!("{}:S", c.t),
                    format!("token {tok:?}"),
                );
                return Ok(());
            }
        }
    }
    let mut u = toks.clone();
    u.sort();
    u.dedup();
    cx.check(
        "VAP-OPS-002",
        u.len() == toks.len() && toks.iter().all(|s| is_hex32(s)),
        "a fresh 32-hex S for every op",
        format!("S values {toks:?}"),
    );
    // Entropy sanity: bits set should be near half; no two tokens share a long prefix.
    let ones: u32 = toks
        .iter()
        .flat_map(|s| s.chars().filter_map(|c| c.to_digit(16)))
        .map(|d| d.count_ones())
        .sum();
    let bits = (toks.len() * 128) as f64;
    let ratio = ones as f64 / bits;
    let shared_prefix = toks.iter().enumerate().any(|(i, a)| {
        toks.iter()
            .skip(i + 1)
            .any(|b| a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count() >= 8)
    });
    let counter_like = toks.windows(2).any(|w| {
        u128::from_str_radix(&w[0], 16)
            .ok()
            .zip(u128::from_str_radix(&w[1], 16).ok())
            .is_some_and(|(a, b)| b.wrapping_sub(a) < 1 << 20)
    });
    cx.check(
        "VAP-SEC-022",
        (0.35..=0.65).contains(&ratio) && !shared_prefix && !counter_like,
        "tokens that look uniformly random (about half the bits set, no shared prefixes, not a counter)",
        format!("{:.2} of bits set; shared 8-char prefix: {shared_prefix}; sequential: {counter_like}", ratio),
    );
    Ok(())
}

/// Upper-case hex T and a two-segment incoming token.
pub async fn tokens_input_forms(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let upper = random_upper();
    let (el, _) = op("/vertebra/test/echo", 5000, vec![i4("n", 1)]);
    let el = with_attr(el, "token", Some(&upper));
    let c = send_op(cx.req(), &agent, el, &upper, None).await?;
    let o = observe(&cx, cx.req(), &c, cx.budget(3000), false).await;
    let tok = o.token.clone().unwrap_or_default();
    cx.check(
        "VAP-OPS-005",
        o.op_iq_type() == Some("result") && o.term_name() == "final",
        "an upper-case hex token is accepted and the op completes",
        o.describe(),
    );
    cx.check(
        "VAP-OPS-004",
        split_token(&tok).is_some_and(|(x, _)| x == upper),
        format!("composite token starts with {upper}: exactly (case-sensitive)"),
        format!("token {tok:?}"),
    );
    // Two segments in: X is the last one.
    let a = crate::peer::random_hex();
    let b = crate::peer::random_hex();
    let two = format!("{a}:{b}");
    let (el, _) = op("/vertebra/test/echo", 5000, vec![i4("n", 2)]);
    let el = with_attr(el, "token", Some(&two));
    let c = send_op(cx.req(), &agent, el, &b, None).await?;
    let o = observe(&cx, cx.req(), &c, cx.budget(3000), false).await;
    let tok = o.token.clone().unwrap_or_default();
    cx.check(
        "VAP-OPS-003",
        split_token(&tok).is_some_and(|(x, s)| x == b && is_hex32(s)),
        format!("composite token {b}:S for incoming {two}"),
        format!("token {tok:?}"),
    );
    Ok(())
}

fn random_upper() -> String {
    crate::peer::random_hex().to_ascii_uppercase()
}

/// Malformed tokens → IQ error bad-request.
pub async fn tokens_malformed(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    for bad in [
        format!(
            "{}:{}:{}",
            crate::peer::random_hex(),
            crate::peer::random_hex(),
            crate::peer::random_hex()
        ),
        format!("{}::", crate::peer::random_hex()),
        format!(":{}", crate::peer::random_hex()),
    ] {
        let (el, _) = op("/vertebra/test/echo", 5000, vec![i4("n", 1)]);
        let el = with_attr(el, "token", Some(&bad));
        let c = send_op(cx.req(), &agent, el, "-", None).await?;
        let r = cx
            .req()
            .wait_response(c.since, &c.id, cx.budget(2000))
            .await;
        let cond = r.as_ref().and_then(iq_error_condition);
        cx.check(
            "VAP-OPS-006",
            r.as_ref().and_then(|r| r.iq_type()) == Some("error")
                && cond.as_deref() == Some("bad-request"),
            format!("IQ error bad-request for token {bad:?}"),
            match &r {
                None => "no answer".into(),
                Some(r) => r.xml(),
            },
        );
    }
    Ok(())
}

/// stream count=4 size=7.
pub async fn stream_chunks(cx: Ctx) -> CaseResult {
    let (_c, o) = call_b(
        &cx,
        "/vertebra/test/stream",
        5000,
        vec![i4("count", 4), i4("size", 7)],
        3000,
    )
    .await?;
    let data = o.data();
    let ok_chunks = data.len() == 4
        && data.iter().enumerate().all(|(n, d)| {
            named(d, "index").is_some_and(|x| x.name() == "i4" && x.text().trim() == n.to_string())
                && named(d, "payload")
                    .is_some_and(|p| p.name() == "string" && p.text() == "x".repeat(7))
        });
    cx.check(
        "VAP-TPF-007",
        ok_chunks && o.term_name() == "final",
        "4 data chunks, the n-th with <i4 name=\"index\">n and <string name=\"payload\">xxxxxxx, then final",
        o.describe(),
    );
    let seqs: Vec<Option<&str>> = data.iter().map(|d| d.attr("seq")).collect();
    cx.check(
        "VAP-OPS-034",
        seqs.iter()
            .enumerate()
            .all(|(i, s)| *s == Some(i.to_string().as_str())),
        "seq 0,1,2,3",
        format!("{seqs:?}"),
    );
    if let Some(f) = o.term().filter(|t| t.name() == "final") {
        let chunks = data.len() + usize::from(f.children().next().is_some());
        cx.check(
            "VAP-OPS-042",
            f.attr("count") == Some(chunks.to_string().as_str()),
            format!("count=\"{chunks}\""),
            format!("count={:?}", f.attr("count")),
        );
    }
    cx.check(
        "VAP-OPS-040",
        data.iter().all(|d| {
            d.children()
                .all(|c| c.attr("name").is_some_and(|n| !n.is_empty()))
        }),
        "every top-level child of data named",
        o.describe(),
    );
    cx.check(
        "VAP-OPS-045",
        o.after.is_empty() && o.terminal.is_some(),
        "nothing after the terminal",
        o.describe(),
    );
    Ok(())
}

/// Window: hold data results, the responder must not exceed the window; final only after all results.
pub async fn stream_window(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let req = cx.req().clone();
    let (el, t) = op(
        "/vertebra/test/stream",
        8000,
        vec![i4("count", 5), i4("size", 1)],
    );
    let el = with_attr(el, "window", Some("2"));
    req.behaviour(|b| b.auto_result = false);
    let res = stream_window_inner(&cx, &req, &agent, el, &t).await;
    req.behaviour(|b| b.auto_result = true);
    res
}

async fn stream_window_inner(
    cx: &Ctx,
    req: &crate::peer::Peer,
    agent: &str,
    el: Element,
    t: &str,
) -> CaseResult {
    let c = send_op(req, agent, el, t, None).await?;
    let r = req.wait_response(c.since, &c.id, cx.budget(2000)).await;
    let token = r
        .as_ref()
        .and_then(|r| r.el.get_child("op", NS))
        .and_then(|o| o.attr("token"))
        .map(str::to_string)
        .ok_or_else(|| Abort::stop("no op result"))?;
    let mine = |r: &Rx| {
        r.iq_type() == Some("set")
            && r.vchild()
                .is_some_and(|v| v.attr("token") == Some(token.as_str()))
    };
    let is = |r: &Rx, n: &str| r.vchild().is_some_and(|v| v.name() == n);
    let mut answered: std::collections::HashSet<String> = Default::default();
    let mut max_open = 0usize;
    let mut final_early = false;
    let mut data_seen = 0usize;
    let end = tokio::time::Instant::now() + cx.budget(5000);
    while tokio::time::Instant::now() < end {
        let all: Vec<Rx> = req.collect(c.since, mine);
        for r in all.iter().filter(|r| is(r, "ack") || is(r, "nack")) {
            let id = r.attr("id").unwrap_or("").to_string();
            if answered.insert(id) {
                answer(req, r).await?;
            }
        }
        let open: Vec<&Rx> = all
            .iter()
            .filter(|r| is(r, "data") && !answered.contains(r.attr("id").unwrap_or("")))
            .collect();
        data_seen = all.iter().filter(|r| is(r, "data")).count();
        max_open = max_open.max(open.len());
        if let Some(f) = all
            .iter()
            .find(|r| r.vchild().is_some_and(|v| is_terminal(v.name())))
        {
            final_early |= !open.is_empty();
            answer(req, f).await?;
            break;
        }
        let quiet = if open.len() >= 2 {
            true
        } else {
            let since = req.mark();
            req.wait(since, cx.budget(300), mine).await.is_none()
        };
        if quiet && !open.is_empty() {
            // Barrier: anything sent beyond the window would arrive before the ping answer.
            let _ = req.ping(agent, cx.budget(1000)).await;
            grace(cx).await;
            let all: Vec<Rx> = req.collect(c.since, mine);
            let open: Vec<Rx> = all
                .iter()
                .filter(|r| is(r, "data") && !answered.contains(r.attr("id").unwrap_or("")))
                .cloned()
                .collect();
            max_open = max_open.max(open.len());
            if all
                .iter()
                .any(|r| r.vchild().is_some_and(|v| is_terminal(v.name())))
            {
                final_early = true;
            }
            if let Some(oldest) = open.first() {
                answered.insert(oldest.attr("id").unwrap_or("").to_string());
                answer(req, oldest).await?;
            }
        }
    }
    cx.require(
        "VAP-TPF-007",
        data_seen == 5,
        "5 data chunks for count=5",
        format!("{data_seen} data chunks"),
    )?;
    cx.check(
        "VAP-OPS-035",
        max_open <= 2 && max_open > 0,
        "at most 2 (the window) data IQs unanswered at once",
        format!("{max_open} data IQs were unanswered at once"),
    );
    cx.check(
        "VAP-TPF-008",
        max_open <= 2 && max_open > 0,
        "stream respects window=2",
        format!("max unanswered {max_open}"),
    );
    cx.check(
        "VAP-OPS-041",
        !final_early,
        "final only after every data IQ result",
        if final_early {
            "a terminal arrived while data results were still outstanding".to_string()
        } else {
            "final after all data results".into()
        },
    );
    Ok(())
}

/// sleep longer than the op timeout → deadline-expired near the deadline.
pub async fn deadline(cx: Ctx) -> CaseResult {
    let timeout = 300u64;
    let (c, o) = call_b(
        &cx,
        "/vertebra/test/sleep",
        timeout,
        vec![i4("ms", 5000)],
        3000,
    )
    .await?;
    let at = o.terminal.as_ref().map(|t| t.at.duration_since(c.sent_at));
    let err = o.error();
    let ok = err
        .as_ref()
        .is_some_and(|(t, k)| t == "cancel" && k == "deadline-expired");
    cx.check(
        "VAP-OPS-061",
        ok,
        "<error type=\"cancel\" condition=\"deadline-expired\">",
        o.describe(),
    );
    cx.check(
        "VAP-TPF-010",
        ok,
        "sleep ends with deadline-expired when its deadline passes first",
        o.describe(),
    );
    // Measured from op receipt: not before the deadline, and not much after (scaled tolerance).
    let late = cx.budget(700);
    cx.check(
        "VAP-OPS-060",
        at.is_some_and(|d| {
            d.as_millis() as u64 + 20 >= timeout
                && d <= std::time::Duration::from_millis(timeout) + late
        }),
        format!(
            "terminal between {timeout} ms and {} ms after sending the op",
            timeout + late.as_millis() as u64
        ),
        format!("{:?}", at),
    );
    cx.check(
        "VAP-OPS-045",
        o.after.is_empty(),
        "nothing after the terminal",
        o.describe(),
    );
    Ok(())
}

/// sleep ms=150 with a long deadline: final with no values no earlier than ms after the ack.
pub async fn sleep_completes(cx: Ctx) -> CaseResult {
    let (_c, o) = call(&cx, "/vertebra/test/sleep", 5000, vec![i4("ms", 150)], 3000).await?;
    let ack_at = if o.fast_ack {
        o.op_resp.as_ref().map(|r| r.at)
    } else {
        o.stanzas
            .iter()
            .find(|r| r.vchild().is_some_and(|v| v.name() == "ack"))
            .map(|r| r.at)
    };
    let fin = o
        .terminal
        .as_ref()
        .filter(|t| t.vchild().is_some_and(|v| v.name() == "final"));
    let gap = ack_at
        .zip(fin.map(|f| f.at))
        .map(|(a, f)| f.duration_since(a));
    cx.check(
        "VAP-TPF-009",
        gap.is_some_and(|g| g.as_millis() >= 140)
            && fin.is_some_and(|f| f.vchild().is_some_and(|v| v.children().next().is_none())),
        "final without values at least 150 ms after the ack",
        format!("{}; final {:?} after the ack", o.describe(), gap),
    );
    Ok(())
}

/// Cancel a running sleep.
pub async fn cancel_running(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let req = cx.req().clone();
    let (el, t) = op("/vertebra/test/sleep", 10_000, vec![i4("ms", 5000)]);
    let c = send_op(&req, &agent, el, &t, None).await?;
    // Wait for the ack (or fast-path op result).
    let r = req.wait_response(c.since, &c.id, cx.budget(2000)).await;
    let op = r.as_ref().and_then(|r| r.el.get_child("op", NS)).cloned();
    let token = op
        .as_ref()
        .and_then(|o| o.attr("token"))
        .map(str::to_string)
        .ok_or_else(|| Abort::stop("no op result"))?;
    if op.as_ref().and_then(|o| o.attr("ack")) != Some("true") {
        let tk = token.clone();
        let got = req
            .wait(c.since, cx.budget(2000), move |r| {
                r.vchild()
                    .is_some_and(|v| v.name() == "ack" && v.attr("token") == Some(tk.as_str()))
            })
            .await;
        if got.is_none() {
            return Err(Abort::untestable(
                "the sleep op was never acked, so it cannot be cancelled while running",
            ));
        }
    }
    let since = req.mark();
    let cancel_sent = Instant::now();
    let id = req
        .send_iq(
            "set",
            &agent,
            Some(
                Element::builder("cancel", NS)
                    .at("token", token.as_str())
                    .build(),
            ),
        )
        .await
        .map_err(Abort::error)?;
    let resp = req.wait_response(since, &id, cx.budget(2000)).await;
    cx.check(
        "VAP-OPS-054",
        resp.as_ref().and_then(|r| r.iq_type()) == Some("result"),
        "an IQ result to the cancel",
        resp.as_ref()
            .map(|r| r.xml())
            .unwrap_or_else(|| "no answer".into()),
    );
    let o = observe(&cx, &req, &c, cx.budget(3000), true).await;
    let err = o.error();
    let ok = err
        .as_ref()
        .is_some_and(|(t, k)| t == "cancel" && k == "cancelled");
    cx.check(
        "VAP-OPS-055",
        ok,
        "<error type=\"cancel\" condition=\"cancelled\">",
        o.describe(),
    );
    cx.check(
        "VAP-TPF-010",
        ok,
        "sleep ends with cancelled when cancelled",
        o.describe(),
    );
    cx.check(
        "VAP-OPS-059",
        ok,
        "an agent claiming urn:vertebra:1.0:cancel implements cancel",
        o.describe(),
    );
    if ok {
        let dt = o
            .terminal
            .as_ref()
            .map(|t| t.at.duration_since(cancel_sent));
        cx.check(
            "VAP-OPS-056",
            dt.is_some_and(|d| d.as_millis() <= 1000),
            "the cancelled error within 1 s of the cancel",
            format!("{dt:?}"),
        );
    }
    cx.check(
        "VAP-OPS-045",
        o.after.is_empty(),
        "nothing after the terminal",
        o.describe(),
    );
    Ok(())
}

/// A cancel for a token the agent never issued still gets an IQ result.
pub async fn cancel_unknown(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let req = cx.req();
    let since = req.mark();
    let tok = format!(
        "{}:{}",
        crate::peer::random_hex(),
        crate::peer::random_hex()
    );
    let id = req
        .send_iq(
            "set",
            &agent,
            Some(
                Element::builder("cancel", NS)
                    .at("token", tok.as_str())
                    .build(),
            ),
        )
        .await
        .map_err(Abort::error)?;
    let r = req.wait_response(since, &id, cx.budget(2000)).await;
    cx.check(
        "VAP-OPS-054",
        r.as_ref().and_then(|r| r.iq_type()) == Some("result"),
        "an IQ result to a cancel for an unknown op",
        r.as_ref()
            .map(|r| r.xml())
            .unwrap_or_else(|| "no answer".into()),
    );
    Ok(())
}

/// A cancel from a JID that is not the requester is not acted on.
pub async fn cancel_foreign(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let req = cx.req().clone();
    let (el, t) = op("/vertebra/test/sleep", 5000, vec![i4("ms", 300)]);
    let c = send_op(&req, &agent, el, &t, None).await?;
    let r = req.wait_response(c.since, &c.id, cx.budget(2000)).await;
    let token = r
        .as_ref()
        .and_then(|r| r.el.get_child("op", NS))
        .and_then(|o| o.attr("token"))
        .map(str::to_string)
        .ok_or_else(|| Abort::stop("no op result"))?;
    let st = &cx.session.stranger;
    let since = st.mark();
    let id = st
        .send_iq(
            "set",
            &agent,
            Some(
                Element::builder("cancel", NS)
                    .at("token", token.as_str())
                    .build(),
            ),
        )
        .await
        .map_err(Abort::error)?;
    let _ = st.wait_response(since, &id, cx.budget(2000)).await;
    let o = observe(&cx, &req, &c, cx.budget(3000), false).await;
    let ok = o.term_name() == "final";
    cx.check(
        "VAP-OPS-057",
        ok,
        "the op completes with final despite another JID's cancel",
        o.describe(),
    );
    Ok(())
}

/// A retransmitted op IQ (same id) gets the same answer and is not re-executed.
pub async fn duplicate_op(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let req = cx.req().clone();
    let before = counter_read(&cx).await?;
    let (el, t) = op("/vertebra/test/counter", 5000, vec![]);
    let c = send_op(&req, &agent, el.clone(), &t, None).await?;
    let o = observe(&cx, &req, &c, cx.budget(3000), true).await;
    cx.require(
        "VAP-TPF-013",
        o.term_name() == "final",
        "counter completes",
        o.describe(),
    )?;
    // Retransmit with the same IQ id.
    let since = req.mark();
    req.send_iq_with_id("set", &agent, &c.id, Some(el))
        .await
        .map_err(Abort::error)?;
    let r2 = req.wait_response(since, &c.id, cx.budget(2000)).await;
    let tok2 = r2
        .as_ref()
        .and_then(|r| r.el.get_child("op", NS))
        .and_then(|o| o.attr("token"))
        .map(str::to_string);
    cx.check(
        "VAP-OPS-066",
        r2.as_ref().and_then(|r| r.iq_type()) == Some("result") && tok2 == o.token,
        format!(
            "the same IQ result as the first time (token {})",
            o.token.clone().unwrap_or_default()
        ),
        r2.as_ref()
            .map(|r| r.xml())
            .unwrap_or_else(|| "no answer".into()),
    );
    let _ = req.ping(&agent, cx.budget(1000)).await;
    grace(&cx).await;
    let extra: Vec<Rx> = req.collect(since, |r| {
        r.iq_type() == Some("set") && r.vchild().is_some_and(|v| v.name() != "op")
    });
    let after = counter_read(&cx).await?;
    cx.check(
        "VAP-OPS-067",
        extra.is_empty() && after == before + 1,
        format!(
            "no second lifecycle and the counter moved once ({} → {})",
            before,
            before + 1
        ),
        format!(
            "{} further Vertebra IQ sets; counter {} → {}",
            extra.len(),
            before,
            after
        ),
    );
    Ok(())
}

/// Read the side-effect counter.
pub async fn counter_read(cx: &Ctx) -> Result<i64, Abort> {
    let (_c, o) = call(
        cx,
        "/vertebra/test/counter",
        5000,
        vec![v("boolean", "read", "1")],
        3000,
    )
    .await?;
    let val = o
        .stanzas
        .iter()
        .filter_map(|r| r.vchild())
        .filter(|c| c.name() == "data" || c.name() == "final")
        .find_map(|d| named(d, "value").map(|x| x.text()));
    match val.and_then(|t| t.trim().parse::<i64>().ok()) {
        Some(n) => Ok(n),
        None => {
            cx.check(
                "VAP-TPF-014",
                false,
                "counter read=1 returns <i4 name=\"value\">",
                o.describe(),
            );
            Err(Abort::stop("counter read failed"))
        }
    }
}

/// Counter increments by one per acked call; read does not change it.
pub async fn counter_semantics(cx: Ctx) -> CaseResult {
    let a = counter_read(&cx).await?;
    let b = counter_read(&cx).await?;
    cx.check(
        "VAP-TPF-014",
        a == b,
        "read twice returns the same value",
        format!("{a} then {b}"),
    );
    let (_c, o) = call(&cx, "/vertebra/test/counter", 5000, vec![], 3000).await?;
    let got = o
        .stanzas
        .iter()
        .filter_map(|r| r.vchild())
        .find_map(|d| named(d, "value").map(|x| x.text().trim().to_string()));
    cx.check(
        "VAP-TPF-013",
        got.as_deref() == Some((b + 1).to_string().as_str()),
        format!("<i4 name=\"value\">{}</i4>", b + 1),
        format!("{got:?} ({})", o.describe()),
    );
    Ok(())
}

/// An op type with no handler.
pub async fn no_handler(cx: Ctx) -> CaseResult {
    let dsp = dsp(&cx)?;
    let t0 = Instant::now();
    let (_c, o) = call_b(&cx, "/vertebra/test/no-such-operation", 5000, vec![], 3000).await?;
    let me_req = cx.req().jid.to_string();
    let asked = dsp
        .auths()
        .iter()
        .any(|a| a.at >= t0 && same_jid(&a.requester, &me_req));
    let err = o.error();
    cx.check(
        "VAP-OPS-049",
        o.op_iq_type() == Some("result")
            && err.as_ref().is_some_and(|(t, k)| t == "fatal" && k == "no-handler")
            && o.kinds() == vec!["error".to_string()]
            && !asked,
        "op result, then <error type=\"fatal\" condition=\"no-handler\"> with no ack/nack and no authorize",
        format!("{}; authorize asked: {asked}", o.describe()),
    );
    cx.check(
        "VAP-RES-016",
        err.as_ref().is_some_and(|(_, k)| k == "no-handler"),
        "no-handler",
        o.describe(),
    );
    Ok(())
}

/// The fail op: condition and reason as given, type from the error table.
pub async fn fail_op(cx: Ctx) -> CaseResult {
    let (_c, o) = call_b(
        &cx,
        "/vertebra/test/fail",
        5000,
        vec![
            v("string", "condition", "handler-failed"),
            v("string", "reason", "public failure text"),
        ],
        3000,
    )
    .await?;
    let err = o.error();
    let reason = o.term().and_then(reason_text);
    cx.check(
        "VAP-TPF-011",
        err.as_ref().is_some_and(|(t, k)| t == "error" && k == "handler-failed") && reason.as_deref() == Some("public failure text"),
        "ack, then <error type=\"error\" condition=\"handler-failed\"> with reason \"public failure text\"",
        format!("{}; reason {:?}", o.describe(), reason),
    );
    cx.check(
        "VAP-OPS-050",
        err.as_ref()
            .is_some_and(|(t, k)| t == "error" && k == "handler-failed"),
        "handler-failed error",
        o.describe(),
    );
    cx.check(
        "VAP-OPS-047",
        o.term().is_some_and(|t| {
            matches!(t.attr("type"), Some("error" | "fatal" | "cancel"))
                && t.attr("condition").is_some()
        }),
        "error with type and condition",
        o.describe(),
    );
    cx.check(
        "VAP-OPS-048",
        o.term().is_some_and(|t| {
            t.children()
                .filter(|c| c.attr("name") == Some("reason"))
                .count()
                == 1
        }),
        "exactly one <string name=\"reason\">",
        o.describe(),
    );
    cx.check(
        "VAP-ERR-001",
        err.as_ref()
            .is_some_and(|(_, k)| ERROR_CONDITIONS.contains(&k.as_str())),
        format!(
            "an error condition from the table ({})",
            ERROR_CONDITIONS.join(", ")
        ),
        o.describe(),
    );
    // A condition that is not an error condition → bad-value.
    let (_c, o) = call(
        &cx,
        "/vertebra/test/fail",
        5000,
        vec![
            v("string", "condition", "no-such-condition"),
            v("string", "reason", "x"),
        ],
        3000,
    )
    .await?;
    cx.check(
        "VAP-TPF-012",
        o.error().is_some_and(|(_, k)| k == "bad-value"),
        "bad-value for an unknown condition",
        o.describe(),
    );
    Ok(())
}

/// Missing or out-of-range timeout → fatal bad-value.
pub async fn bad_timeout(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    for tv in [None, Some("0"), Some("86400001"), Some("soon")] {
        let (el, t) = op("/vertebra/test/echo", 5000, vec![i4("n", 1)]);
        let el = with_attr(el, "timeout", tv);
        let c = send_op(cx.req(), &agent, el, &t, None).await?;
        let o = observe(&cx, cx.req(), &c, cx.budget(2000), false).await;
        cx.check(
            "VAP-OPS-018",
            o.error()
                .is_some_and(|(t, k)| t == "fatal" && k == "bad-value"),
            format!("<error type=\"fatal\" condition=\"bad-value\"> for timeout={tv:?}"),
            o.describe(),
        );
    }
    Ok(())
}

/// Unknown attributes and the scope attribute do not change behaviour; minor versions accepted.
pub async fn attrs_and_versions(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let req = cx.req();
    let values = vec![v("string", "k", "v")];
    let (el, t) = op("/vertebra/test/echo", 5000, values.clone());
    let mut el = el;
    crate::xmlh::set(&mut el, "future-attribute", "x");
    crate::xmlh::set(&mut el, "scope", "single");
    let c = send_op(req, &agent, el, &t, None).await?;
    let o = observe(&cx, req, &c, cx.budget(2000), false).await;
    let echoed = o
        .chunks()
        .first()
        .map(|d| canon_set(d.children()))
        .unwrap_or_default();
    let ok = o.term_name() == "final" && echoed == canon_set(values.iter());
    cx.check(
        "VAP-OPS-017",
        ok,
        "unknown attributes ignored: echo completes",
        o.describe(),
    );
    cx.check(
        "VAP-OPS-016",
        ok,
        "scope=\"single\" does not change the echo",
        o.describe(),
    );
    let (el, t) = op("/vertebra/test/echo", 5000, values.clone());
    let el = with_attr(el, "version", Some("1.3"));
    let c = send_op(req, &agent, el, &t, None).await?;
    let o = observe(&cx, req, &c, cx.budget(2000), false).await;
    cx.check(
        "VAP-VER-003",
        o.term_name() == "final",
        "version 1.3 processed as 1.0",
        o.describe(),
    );
    for bad in ["2.0", "one"] {
        let (el, t) = op("/vertebra/test/echo", 5000, values.clone());
        let el = with_attr(el, "version", Some(bad));
        let c = send_op(req, &agent, el, &t, None).await?;
        let o = observe(&cx, req, &c, cx.budget(2000), false).await;
        cx.check(
            "VAP-VER-004",
            o.error()
                .is_some_and(|(t, k)| t == "fatal" && k == "unsupported-version"),
            format!("<error type=\"fatal\" condition=\"unsupported-version\"> for version={bad}"),
            o.describe(),
        );
    }
    Ok(())
}

/// A legacy (no `version`) op: no fast path, no values on final, seq/count as for 1.0,
/// unnamed non-res children ignored, 2008 verbs rejected, IQ get accepted.
pub async fn legacy(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let req = cx.req();
    let (el, t) = op(
        "/vertebra/test/echo",
        5000,
        vec![v("string", "s", "old"), v("i4", "", "7")],
    );
    let mut el = with_attr(el, "version", None);
    crate::xmlh::unset(&mut el, "timeout");
    let c = send_op(req, &agent, el.clone(), &t, None).await?;
    let o = observe(&cx, req, &c, cx.budget(3000), false).await;
    let fin = o.term().filter(|f| f.name() == "final").cloned();
    cx.check(
        "VAP-OPS-026",
        !o.fast_ack,
        "no ack=\"true\" toward a legacy requester",
        o.describe(),
    );
    cx.check(
        "VAP-OPS-043",
        fin.as_ref().is_some_and(|f| f.children().next().is_none()),
        "no named values on final toward a legacy requester",
        o.describe(),
    );
    let data = o.data();
    cx.check(
        "VAP-VER-008",
        o.kinds().first().map(String::as_str) == Some("ack")
            && data.len() == 1
            && data[0].attr("seq") == Some("0")
            && fin.as_ref().is_some_and(|f| f.attr("count") == Some("1")),
        "ack, data seq=0, final count=1 as for a 1.0 requester",
        o.describe(),
    );
    cx.check(
        "VAP-VER-010",
        data.first().is_some_and(|d| {
            canon_set(d.children()) == canon_set([v("string", "s", "old")].iter())
        }),
        "the unnamed <i4> is ignored; echo returns s",
        o.describe(),
    );
    // 2008 verb as type.
    let (el2, t2) = op("list", 5000, vec![]);
    let mut el2 = with_attr(el2, "version", None);
    crate::xmlh::unset(&mut el2, "timeout");
    let c = send_op(req, &agent, el2, &t2, None).await?;
    let o = observe(&cx, req, &c, cx.budget(3000), false).await;
    cx.check(
        "VAP-VER-011",
        o.error()
            .is_some_and(|(t, k)| t == "fatal" && k == "bad-value"),
        "<error type=\"fatal\" condition=\"bad-value\"> for the legacy type `list`",
        o.describe(),
    );
    // IQ get from a legacy requester (SHOULD).
    let (el3, t3) = op("/vertebra/test/echo", 5000, vec![v("string", "s", "get")]);
    let mut el3 = with_attr(el3, "version", None);
    crate::xmlh::unset(&mut el3, "timeout");
    let since = req.mark();
    let id = req.next_id();
    req.send_iq_with_id("get", &agent, &id, Some(el3))
        .await
        .map_err(Abort::error)?;
    let c = Call {
        to: agent.clone(),
        id,
        t: t3,
        since,
        sent_at: Instant::now(),
        op: Element::builder("op", NS).build(),
    };
    let o = observe(&cx, req, &c, cx.budget(3000), false).await;
    cx.check(
        "VAP-TRN-012",
        o.term_name() == "final",
        "a legacy op in an IQ get is processed like a set",
        o.describe(),
    );
    Ok(())
}

/// Work starts only after the ack's IQ result: hold it and watch the counter.
pub async fn work_after_ack(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let dsp = dsp(&cx)?;
    let req = cx.req().clone();
    let before = counter_read(&cx).await?;
    let stranger = cx.session.stranger.jid.to_string();
    dsp.behaviour(|b| {
        b.auth
            .insert(stranger.clone(), crate::peer::AuthPolicy::Allow);
    });
    req.behaviour(|b| b.auto_result = false);
    let res = work_after_ack_inner(&cx, &req, &agent, before).await;
    req.behaviour(|b| b.auto_result = true);
    dsp.behaviour(|b| {
        b.auth.insert(stranger, crate::peer::AuthPolicy::Deny);
    });
    res
}

async fn work_after_ack_inner(
    cx: &Ctx,
    req: &crate::peer::Peer,
    agent: &str,
    before: i64,
) -> CaseResult {
    let (el, t) = op("/vertebra/test/counter", 5000, vec![]);
    let c = send_op(req, agent, el, &t, None).await?;
    let r = req.wait_response(c.since, &c.id, cx.budget(2000)).await;
    let op_el = r.as_ref().and_then(|r| r.el.get_child("op", NS)).cloned();
    if op_el.as_ref().and_then(|o| o.attr("ack")) == Some("true") {
        cx.info(
            "VAP-OPS-029",
            "fast path used: work may start with the op result",
        );
        let o = observe(cx, req, &c, cx.budget(2000), false).await;
        for s in &o.stanzas {
            let _ = answer(req, s).await;
        }
        return Ok(());
    }
    let token = op_el
        .and_then(|o| o.attr("token").map(str::to_string))
        .ok_or_else(|| Abort::stop("no op result"))?;
    let tk = token.clone();
    let ack = req
        .wait(c.since, cx.budget(2000), move |r| {
            r.vchild()
                .is_some_and(|v| v.name() == "ack" && v.attr("token") == Some(tk.as_str()))
        })
        .await
        .ok_or_else(|| Abort::stop("no ack"))?;
    // The ack's IQ result is held: the counter must not have moved (read by another identity).
    let (el, t2) = op(
        "/vertebra/test/counter",
        5000,
        vec![v("boolean", "read", "1")],
    );
    let c2 = send_op(&cx.session.stranger, agent, el, &t2, None).await?;
    let o2 = observe(cx, &cx.session.stranger, &c2, cx.budget(3000), false).await;
    let mid = o2
        .chunks()
        .first()
        .and_then(|d| named(d, "value"))
        .and_then(|x| x.text().trim().parse::<i64>().ok());
    let early_data = req
        .collect(c.since, |r| {
            r.vchild()
                .is_some_and(|v| v.name() == "data" && v.attr("token") == Some(token.as_str()))
        })
        .len();
    cx.check(
        "VAP-OPS-029",
        mid == Some(before) && early_data == 0,
        format!(
            "no work (counter stays {before}, no data) while the ack's IQ result is outstanding"
        ),
        format!("counter read {mid:?}; {early_data} data before the ack result"),
    );
    answer(req, &ack).await?;
    // Let the op finish, answering its stanzas by hand.
    let end = tokio::time::Instant::now() + cx.budget(2000);
    let mut answered = std::collections::HashSet::new();
    answered.insert(ack.attr("id").unwrap_or("").to_string());
    while tokio::time::Instant::now() < end {
        let all = req.collect(c.since, |r| {
            r.iq_type() == Some("set")
                && r.vchild()
                    .is_some_and(|v| v.attr("token") == Some(token.as_str()))
        });
        let mut done = false;
        for r in &all {
            if answered.insert(r.attr("id").unwrap_or("").to_string()) {
                answer(req, r).await?;
            }
            done |= r.vchild().is_some_and(|v| is_terminal(v.name()));
        }
        if done {
            break;
        }
        let since = req.mark();
        let _ = req.wait(since, cx.budget(300), |_| true).await;
    }
    Ok(())
}

/// A handler registered for a path serves deeper paths; not shallower ones.
pub async fn handler_paths(cx: Ctx) -> CaseResult {
    let (_c, o) = call(
        &cx,
        "/vertebra/test/echo/deeper",
        5000,
        vec![v("string", "x", "y")],
        3000,
    )
    .await?;
    cx.check(
        "VAP-RES-017",
        o.term_name() == "final",
        "the echo handler (the only one in scope) serves /vertebra/test/echo/deeper",
        o.describe(),
    );
    cx.check(
        "VAP-RES-015",
        o.term_name() == "final",
        "an op without scoping resources is in scope",
        o.describe(),
    );
    let (_c, o) = call(&cx, "/vertebra/test", 5000, vec![], 3000).await?;
    cx.check(
        "VAP-RES-013",
        o.error().is_some_and(|(_, k)| k == "no-handler"),
        "no handler serves the shallower /vertebra/test",
        o.describe(),
    );
    let (_c, o) = call(&cx, "/vertebra/test/echoes", 5000, vec![], 3000).await?;
    cx.check(
        "VAP-RES-010",
        o.error().is_some_and(|(_, k)| k == "no-handler"),
        "/vertebra/test/echoes is not served by /vertebra/test/echo (no string-prefix match)",
        o.describe(),
    );
    Ok(())
}

/// Ops wrong in several ways get the outcome of the first failing check of §3.15
/// ([VAP-OPS-084]): token syntax before values and handler, values before handler, handler
/// before authorization.
pub async fn check_order(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let missing = "/vertebra/test/no-such-operation";
    // 1 before 4 and 5: a malformed token on an op with a bad value and no handler.
    let (el, _) = op(missing, 5000, vec![v("i4", "n", "not-a-number")]);
    let bad = format!("{}::", crate::peer::random_hex());
    let el = with_attr(el, "token", Some(&bad));
    let c = send_op(cx.req(), &agent, el, "-", None).await?;
    let r = cx
        .req()
        .wait_response(c.since, &c.id, cx.budget(2000))
        .await;
    cx.check(
        "VAP-OPS-084",
        r.as_ref().and_then(|r| r.iq_type()) == Some("error")
            && r.as_ref().and_then(iq_error_condition).as_deref() == Some("bad-request"),
        "malformed token + bad value + no handler: IQ error bad-request (check 1)",
        match &r {
            None => "no answer".into(),
            Some(r) => r.xml(),
        },
    );
    // 4 before 5: a bad value on an op no handler serves.
    let (_c, o) = call(&cx, missing, 5000, vec![v("i4", "n", "not-a-number")], 3000).await?;
    cx.check(
        "VAP-OPS-084",
        o.error().is_some_and(|(_, c)| c == "bad-value"),
        "bad value + no handler: <error condition=\"bad-value\"> (check 4 before 5)",
        o.describe(),
    );
    // 5 before 7: a requester the dispatcher denies calls an op no handler serves.
    let (el, t) = op(missing, 5000, vec![i4("n", 1)]);
    let c = send_op(&cx.session.stranger, &agent, el, &t, None).await?;
    let o = observe(&cx, &cx.session.stranger, &c, cx.budget(3000), false).await;
    cx.check(
        "VAP-OPS-084",
        o.error().is_some_and(|(_, c)| c == "no-handler"),
        "denied requester + no handler: <error condition=\"no-handler\">, no nack (check 5 before 7)",
        o.describe(),
    );
    Ok(())
}

/// An op from another XMPP domain that also has a bad value and no handler: the domain check
/// (2) comes before the values (4) and the handler lookup (5) ([VAP-OPS-084]).
pub async fn check_order_domain(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let missing = "/vertebra/test/no-such-operation";
    let Some(inj) = injector(&cx) else {
        return Err(Abort::skipped(
            "needs the embedded server (a real server cannot send a foreign `from`)",
        ));
    };
    let mark = inj.mark();
    let (el, t) = op(missing, 5000, vec![v("i4", "n", "not-a-number")]);
    let iq = Element::builder("iq", crate::peer::NS_CLIENT)
        .at("type", "set")
        .at("id", format!("f{}", &t[..8]))
        .at("from", "mallory@elsewhere.example/x")
        .at("to", agent.as_str())
        .append(el)
        .build();
    inj.inject_el(iq).map_err(Abort::error)?;
    let end = tokio::time::Instant::now() + cx.budget(2000);
    let mut first: Option<String> = None;
    while tokio::time::Instant::now() < end {
        first = inj
            .sent_by(&agent, mark)
            .iter()
            .filter(|e| e.attr("type") == Some("set"))
            .flat_map(|e| {
                e.children()
                    .filter(|c| {
                        c.ns() == NS
                            && c.attr("token")
                                .is_some_and(|k| k.starts_with(&format!("{t}:")))
                    })
                    .map(|c| {
                        format!(
                            "{}{}{}",
                            c.name(),
                            c.attr("reason")
                                .map(|r| format!(" reason={r}"))
                                .unwrap_or_default(),
                            c.attr("condition")
                                .map(|r| format!(" condition={r}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .next();
        if first.is_some() {
            break;
        }
        tokio::time::sleep(cx.budget(20)).await;
    }
    cx.check(
        "VAP-OPS-084",
        first.as_deref() == Some("nack reason=not-authorized"),
        "other domain + bad value + no handler: <nack reason=\"not-authorized\"> (check 2)",
        format!("first lifecycle stanza: {first:?}"),
    );
    Ok(())
}

/// The IQ ids of the agent's own IQ sets to one requester are not reused for a different
/// stanza ([VAP-OPS-069]; sampled over this case, not the full 300 s window).
pub async fn iq_ids_unique(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let since = cx.req().mark();
    for count in [4, 3] {
        // An op that does not end still leaves its IQ sets to compare.
        call_b(
            &cx,
            "/vertebra/test/stream",
            5000,
            vec![i4("count", count), i4("size", 1)],
            3000,
        )
        .await?;
    }
    let (_c, _o) = call_b(&cx, "/vertebra/test/echo", 5000, vec![i4("n", 1)], 3000).await?;
    let sets = cx.req().collect(since, |r| {
        r.iq_type() == Some("set") && r.from().is_some_and(|f| same_jid(f, &agent))
    });
    let reused = reused_iq_ids(sets.iter().map(|r| &r.el));
    if reused.is_empty() && sets.len() < 2 {
        return Err(Abort::untestable(format!(
            "the agent sent {} IQ sets to the requester",
            sets.len()
        )));
    }
    cx.check(
        "VAP-OPS-069",
        reused.is_empty(),
        format!(
            "distinct ids for distinct IQ sets from the agent ({} IQ sets seen)",
            sets.len()
        ),
        if reused.is_empty() {
            format!("{} IQ sets, ids all distinct", sets.len())
        } else {
            format!("ids reused for different stanzas: {reused:?}")
        },
    );
    Ok(())
}

/// Ids that carry two different IQ stanzas (a retransmission carries the same stanza).
pub fn reused_iq_ids<'a>(iqs: impl Iterator<Item = &'a Element>) -> Vec<String> {
    let mut seen: std::collections::BTreeMap<String, String> = Default::default();
    let mut reused = Vec::new();
    for iq in iqs {
        let id = iq.attr("id").unwrap_or("").to_string();
        let body = iq.children().map(String::from).collect::<Vec<_>>().join("");
        match seen.get(&id) {
            Some(b) if *b != body => {
                if !reused.contains(&id) {
                    reused.push(id);
                }
            }
            Some(_) => {}
            None => {
                seen.insert(id, body);
            }
        }
    }
    reused
}

#[cfg(test)]
mod tests {
    use super::reused_iq_ids;
    use minidom::Element;

    fn iq(id: &str, seq: &str) -> Element {
        format!(
            "<iq xmlns='jabber:client' type='set' id='{id}'><data xmlns='{}' token='a:b' seq='{seq}'/></iq>",
            crate::peer::NS
        )
        .parse()
        .unwrap()
    }

    #[test]
    fn reused_ids_are_found_and_retransmissions_are_not() {
        let same = [iq("a", "0"), iq("a", "0"), iq("b", "1")];
        assert!(reused_iq_ids(same.iter()).is_empty());
        let reused = [iq("a", "0"), iq("b", "1"), iq("a", "2")];
        assert_eq!(reused_iq_ids(reused.iter()), vec!["a".to_string()]);
    }
}
