//! Robustness: unknown elements and namespaces, unsolicited stanzas, impossible lifecycle
//! stanzas, oversized values, floods, ordering. The agent stays up and answers as specified.

use super::util::*;
use crate::case::{Abort, CaseResult, Ctx};
use crate::peer::{random_hex, Rx, NS, NS_CLIENT};
use crate::xmlh::AttrExt;
use minidom::Element;
use std::time::{Duration, Instant};

async fn iq(cx: &Ctx, ty: &str, child: Element) -> Result<Option<Rx>, Abort> {
    let agent = agent(cx)?;
    let req = cx.req();
    let since = req.mark();
    let id = req
        .send_iq(ty, &agent, Some(child))
        .await
        .map_err(Abort::error)?;
    Ok(req.wait_response(since, &id, cx.budget(2000)).await)
}

fn show(r: &Option<Rx>) -> String {
    r.as_ref()
        .map(|r| r.xml())
        .unwrap_or_else(|| "no answer".into())
}

pub async fn unknown_elements(cx: Ctx) -> CaseResult {
    let r = iq(
        &cx,
        "set",
        Element::builder("bogus", NS).at("token", "a:b").build(),
    )
    .await?;
    cx.check(
        "VAP-TRN-010",
        r.as_ref().is_some_and(|r| {
            r.iq_type() == Some("error")
                && iq_error_condition(r).as_deref() == Some("bad-request")
                && iq_error_type(r).as_deref() == Some("modify")
        }),
        "IQ error bad-request (type modify) for an unknown element in the Vertebra namespace",
        show(&r),
    );
    for ty in ["get", "set"] {
        let r = iq(
            &cx,
            ty,
            Element::builder("query", "urn:example:not-vertebra").build(),
        )
        .await?;
        cx.check(
            "VAP-TRN-011",
            r.as_ref().is_some_and(|r| {
                r.iq_type() == Some("error")
                    && iq_error_condition(r).as_deref() == Some("service-unavailable")
                    && iq_error_type(r).as_deref() == Some("cancel")
            }),
            format!(
                "IQ error service-unavailable (type cancel) for an IQ {ty} in an unknown namespace"
            ),
            show(&r),
        );
    }
    Ok(())
}

/// Unsolicited results, errors and messages get no answer.
pub async fn unsolicited(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let req = cx.req();
    let since = req.mark();
    let rid = format!("u{}", &random_hex()[..8]);
    let eid = format!("e{}", &random_hex()[..8]);
    req.send(
        Element::builder("iq", NS_CLIENT)
            .at("type", "result")
            .at("id", rid.as_str())
            .at("to", agent.as_str())
            .build(),
    )
    .await
    .map_err(Abort::error)?;
    let err = Element::builder("error", NS_CLIENT)
        .at("type", "cancel")
        .append(Element::builder("service-unavailable", crate::peer::NS_STANZAS).build())
        .build();
    req.send(
        Element::builder("iq", NS_CLIENT)
            .at("type", "error")
            .at("id", eid.as_str())
            .at("to", agent.as_str())
            .append(err)
            .build(),
    )
    .await
    .map_err(Abort::error)?;
    let (op_el, _) = op("/vertebra/test/counter", 5000, vec![]);
    req.send(
        Element::builder("message", NS_CLIENT)
            .at("to", agent.as_str())
            .at("type", "chat")
            .append(Element::builder("body", NS_CLIENT).append("hello").build())
            .append(op_el)
            .build(),
    )
    .await
    .map_err(Abort::error)?;
    let alive = req
        .ping(&agent, cx.budget(2000))
        .await
        .map_err(Abort::error)?;
    grace(&cx).await;
    let answers: Vec<Rx> = req.collect(since, |r| {
        (r.attr("id") == Some(rid.as_str()) || r.attr("id") == Some(eid.as_str()))
            || (r.name() == "message" && r.attr("type") == Some("error"))
    });
    cx.check(
        "VAP-TRN-014",
        answers.iter().all(|r| r.name() != "iq"),
        "no answer to an IQ result or IQ error",
        format!("{:?}", answers.iter().map(|r| r.xml()).collect::<Vec<_>>()),
    );
    cx.check(
        "VAP-TRN-014",
        answers.is_empty(),
        "no error stanza in answer to a message, IQ result or IQ error",
        format!("{} answers", answers.len()),
    );
    cx.check(
        "VAP-TRN-025",
        alive,
        "still answers ping",
        format!("ping answered: {alive}"),
    );
    let stray = req.collect(since, |r| {
        r.iq_type() == Some("set") && r.vchild().is_some()
    });
    cx.check(
        "VAP-TRN-013",
        stray.is_empty(),
        "an <op> inside a <message> is not executed",
        format!("{} Vertebra IQ sets followed", stray.len()),
    );
    Ok(())
}

/// ack, nack, data, final, error for ops that do not exist: answered, no crash.
pub async fn impossible_lifecycle(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let mut bad = Vec::new();
    for name in ["ack", "nack", "data", "final", "error", "cancel"] {
        let tok = format!("{}:{}", random_hex(), random_hex());
        let mut b = Element::builder(name, NS).at("token", tok.as_str());
        match name {
            "nack" => b = b.at("reason", "not-authorized"),
            "data" => b = b.at("seq", "0").append(i4("x", 1)),
            "final" => b = b.at("count", "0"),
            "error" => b = b.at("type", "fatal").at("condition", "internal-error"),
            _ => {}
        }
        let r = iq(&cx, "set", b.build()).await?;
        if r.is_none() {
            bad.push(format!("<{name}> not answered"));
        }
    }
    cx.check(
        "VAP-TRN-006",
        bad.is_empty(),
        "every IQ set answered with an IQ result or error",
        if bad.is_empty() {
            "all answered".into()
        } else {
            bad.join(", ")
        },
    );
    let alive = cx
        .req()
        .ping(&agent, cx.budget(2000))
        .await
        .map_err(Abort::error)?;
    cx.check(
        "VAP-TRN-025",
        alive,
        "still answers ping",
        format!("{alive}"),
    );
    Ok(())
}

/// A large string value: the op ends properly and the agent stays up.
pub async fn oversized(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let big = "y".repeat(100 * 1024);
    let (_c, o) = call(
        &cx,
        "/vertebra/test/echo",
        5000,
        vec![v("string", "big", &big)],
        4000,
    )
    .await?;
    cx.check(
        "VAP-TRN-006",
        o.op_resp.is_some() && (o.op_iq_type() == Some("error") || o.terminal.is_some()),
        "a 100 KiB value is answered (echo, or an error) — never silence",
        o.describe(),
    );
    let alive = cx
        .req()
        .ping(&agent, cx.budget(2000))
        .await
        .map_err(Abort::error)?;
    cx.check(
        "VAP-TRN-025",
        alive,
        "still answers ping",
        format!("{alive}"),
    );
    Ok(())
}

/// 30 concurrent echo ops: every one completes; ping stays fast.
pub async fn flood(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let req = cx.req().clone();
    let mut calls = Vec::new();
    for i in 0..30 {
        let (el, t) = op("/vertebra/test/echo", 10_000, vec![i4("i", i)]);
        calls.push(send_op(&req, &agent, el, &t, None).await?);
    }
    let t0 = Instant::now();
    let alive = req
        .ping(&agent, cx.budget(3000))
        .await
        .map_err(Abort::error)?;
    let ping_ms = t0.elapsed();
    let mut incomplete = 0;
    let mut late_overload = 0;
    for c in &calls {
        let o = observe(&cx, &req, c, cx.budget(5000), false).await;
        let overloaded = o.error().is_some_and(|(_, k)| k == "overloaded");
        let acked = o.fast_ack || o.kinds().iter().any(|k| k == "ack");
        if overloaded && acked {
            late_overload += 1;
        }
        if (acked || !overloaded) && o.term_name() != "final" {
            incomplete += 1;
        }
    }
    cx.check(
        "VAP-OPS-083",
        late_overload == 0,
        "no overloaded error after an ack",
        format!("{late_overload} ops got overloaded after their ack"),
    );
    cx.check(
        "VAP-TRN-006",
        incomplete == 0,
        "all 30 ops complete",
        format!("{incomplete} did not complete"),
    );
    cx.check(
        "VAP-TRN-026",
        alive && ping_ms <= Duration::from_millis(1000),
        "ping answered within 1000 ms under load",
        format!("{ping_ms:?}"),
    );
    Ok(())
}

/// Op IQs from one JID are answered in the order they were sent.
pub async fn in_order(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let req = cx.req().clone();
    let mut ids = Vec::new();
    let since = req.mark();
    for i in 0..5 {
        let (el, t) = op("/vertebra/test/echo", 5000, vec![i4("i", i)]);
        ids.push(send_op(&req, &agent, el, &t, None).await?.id);
    }
    let last = ids.last().cloned().unwrap_or_default();
    let _ = req.wait_response(since, &last, cx.budget(3000)).await;
    let order: Vec<String> = req
        .collect(since, |r| {
            r.iq_type() == Some("result")
                && r.attr("id").is_some_and(|i| ids.iter().any(|x| x == i))
        })
        .iter()
        .filter_map(|r| r.attr("id").map(str::to_string))
        .collect();
    cx.check(
        "VAP-TRN-027",
        order == ids,
        "op results in the order the ops were sent",
        format!("sent {ids:?}, answered {order:?}"),
    );
    // Let the ops finish so they do not spill into the next case.
    let _ = req.ping(&agent, cx.budget(1000)).await;
    Ok(())
}

/// Extra children in IQ results (from the requester and from the dispatcher) are ignored.
pub async fn result_payload_ignored(cx: Ctx) -> CaseResult {
    let dsp = dsp(&cx)?;
    dsp.behaviour(|b| b.result_junk = true);
    cx.req().behaviour(|b| b.result_junk = true);
    let r = call(
        &cx,
        "/vertebra/test/stream",
        5000,
        vec![i4("count", 2), i4("size", 1)],
        3000,
    )
    .await;
    dsp.behaviour(|b| b.result_junk = false);
    cx.req().behaviour(|b| b.result_junk = false);
    let (_c, o) = r?;
    cx.check(
        "VAP-TRN-009",
        o.term_name() == "final" && o.data().len() == 2,
        "the op completes although every IQ result (authorize op result, ack/data results) carries an extra child",
        o.describe(),
    );
    Ok(())
}
