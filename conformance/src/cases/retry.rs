//! The agent as a sender of IQ sets (ack, data, final): retransmission after IQ errors
//! (§3.11–3.12) and not waiting for results past the op deadline (§3.10).

use super::util::*;
use crate::case::{Abort, CaseResult, Ctx};
use crate::peer::{iq_result_for, Peer, Rx, NS_CLIENT, NS_STANZAS};
use crate::xmlh::AttrExt;
use minidom::Element;
use std::time::{Duration, Instant};

/// An IQ error answering `req` (type and defined condition).
pub fn iq_error_for(req: &Element, ty: &str, condition: &str) -> Element {
    let mut b = Element::builder("iq", NS_CLIENT)
        .at("type", "error")
        .at("id", req.attr("id").unwrap_or(""));
    if let Some(f) = req.attr("from") {
        b = b.at("to", f);
    }
    b.append(
        Element::builder("error", NS_CLIENT)
            .at("type", ty)
            .append(Element::builder(condition, NS_STANZAS).build())
            .build(),
    )
    .build()
}

/// One IQ set the agent sent, as received.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: Instant,
    pub id: String,
    /// Attribute names of the `<iq>` element (sorted).
    pub iq_attrs: Vec<String>,
    /// The Vertebra child, serialised (its identity: kind, token, seq, values).
    pub payload: String,
}

impl Attempt {
    pub fn of(r: &Rx) -> Option<Attempt> {
        let c = r.vchild()?;
        let mut iq_attrs: Vec<String> =
            r.el.attrs()
                .iter()
                .map(|((_, k), _)| k.to_string())
                .collect();
        iq_attrs.sort();
        Some(Attempt {
            at: r.at,
            id: r.el.attr("id").unwrap_or("").to_string(),
            iq_attrs,
            payload: String::from(c),
        })
    }
}

/// A retransmission violation: (requirement, what was seen).
pub type Violation = (&'static str, String);

/// Judge the attempts of one IQ set (same payload; the first is the original) that the
/// harness answered with a retryable error every time, for an op whose deadline is `deadline`.
pub fn judge_retries(attempts: &[Attempt], deadline: Instant, slack: Duration) -> Vec<Violation> {
    let mut v = Vec::new();
    let Some(first) = attempts.first() else {
        return v;
    };
    for (n, a) in attempts.iter().enumerate().skip(1) {
        if a.id != first.id {
            v.push((
                "VAP-OPS-068",
                format!(
                    "retry {n} has IQ id {:?}, the original {:?}",
                    a.id, first.id
                ),
            ));
        }
        if a.iq_attrs != first.iq_attrs {
            v.push((
                "VAP-OPS-076",
                format!(
                    "retry {n} <iq> attributes {:?}, the original {:?}",
                    a.iq_attrs, first.iq_attrs
                ),
            ));
        }
        if n <= 3 {
            let min = Duration::from_millis(100 << (n - 1));
            let gap = a.at.duration_since(attempts[n - 1].at);
            // The harness's error answer takes a moment to arrive, so the agent's wait is at
            // most the gap it observes; allow only scheduling jitter below the minimum.
            if gap + Duration::from_millis(10) < min {
                v.push((
                    "VAP-OPS-073",
                    format!("retry {n} came {gap:?} after the previous attempt (minimum {min:?})"),
                ));
            }
        }
        if a.at > deadline + slack {
            v.push((
                "VAP-OPS-075",
                format!(
                    "retry {n} arrived {:?} after the op deadline",
                    a.at.duration_since(deadline)
                ),
            ));
        }
    }
    if attempts.len() > 4 {
        v.push((
            "VAP-OPS-074",
            format!("{} attempts of one IQ set (at most 4)", attempts.len()),
        ));
    }
    v
}

/// Serve the agent's IQ sets for one op: `answer(kind, attempt number)` decides; `None` =
/// IQ result. Runs until `until`. Returns every IQ set of the op, in arrival order.
async fn serve_op(
    peer: &Peer,
    agent: &str,
    call: &Call,
    until: tokio::time::Instant,
    answer: impl Fn(&str, usize) -> Option<(&'static str, &'static str)>,
) -> Vec<Rx> {
    let prefix = format!("{}:", call.t);
    let mine = |r: &Rx| {
        r.iq_type() == Some("set")
            && same_jid(r.from().unwrap_or(""), agent)
            && r.vchild().is_some_and(|c| {
                c.name() != "op" && c.attr("token").is_some_and(|k| k.starts_with(&prefix))
            })
    };
    let mut handled = 0usize;
    let mut seen_payloads: Vec<String> = Vec::new();
    loop {
        let m = peer.mark();
        let all = peer.collect(call.since, mine);
        for r in all.iter().skip(handled) {
            let Some(c) = r.vchild() else { continue };
            let payload = String::from(c);
            let n = seen_payloads.iter().filter(|p| **p == payload).count();
            seen_payloads.push(payload);
            let reply = match answer(c.name(), n) {
                None => iq_result_for(&r.el, None),
                Some((ty, cond)) => iq_error_for(&r.el, ty, cond),
            };
            let _ = peer.send(reply).await;
        }
        handled = all.len();
        let now = tokio::time::Instant::now();
        if now >= until {
            return all;
        }
        let _ = peer.wait(m, until - now, mine).await;
    }
}

/// Group IQ sets by payload (an IQ set and its retransmissions carry the same payload).
fn attempts_by_payload(stanzas: &[Rx]) -> Vec<(String, Vec<Attempt>)> {
    let mut groups: Vec<(String, Vec<Attempt>)> = Vec::new();
    for a in stanzas.iter().filter_map(Attempt::of) {
        match groups.iter_mut().find(|(p, _)| *p == a.payload) {
            Some((_, g)) => g.push(a),
            None => groups.push((a.payload.clone(), vec![a])),
        }
    }
    groups
}

fn kind_of(payload: &str) -> String {
    payload
        .parse::<Element>()
        .map(|e| e.name().to_string())
        .unwrap_or_default()
}

/// OPS-RETRY-001: the agent's data IQ is answered with `wait` errors (retransmission allowed,
/// bounded) and, in a second op, with a `cancel` error (no retransmission).
pub async fn retransmission(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let peer = cx.req().clone();
    let timeout = 1500u64;
    peer.behaviour(|b| b.auto_result = false);
    let res = async {
        // Op 1: every attempt of the data IQ gets <error type="wait"><resource-constraint/>.
        let (el1, t1) = op(
            "/vertebra/test/stream",
            timeout,
            vec![i4("count", 1), i4("size", 3)],
        );
        // Op 2: the data IQ gets <error type="cancel"><not-allowed/> (not retryable).
        let (el2, t2) = op(
            "/vertebra/test/stream",
            timeout,
            vec![i4("count", 1), i4("size", 4)],
        );
        let c1 = send_op(&peer, &agent, el1, &t1, None).await?;
        let c2 = send_op(&peer, &agent, el2, &t2, None).await?;
        let deadline = c1.sent_at + Duration::from_millis(timeout);
        let until = tokio::time::Instant::from_std(deadline) + cx.budget(400);
        let (s1, s2) = tokio::join!(
            serve_op(&peer, &agent, &c1, until, |k, _| {
                (k == "data").then_some(("wait", "resource-constraint"))
            }),
            serve_op(&peer, &agent, &c2, until, |k, _| {
                (k == "data").then_some(("cancel", "not-allowed"))
            }),
        );
        let g1 = attempts_by_payload(&s1);
        let g2 = attempts_by_payload(&s2);
        let describe = |g: &[(String, Vec<Attempt>)]| {
            g.iter()
                .map(|(p, a)| format!("{} ×{}", kind_of(p), a.len()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let data1: Vec<&Vec<Attempt>> = g1
            .iter()
            .filter(|(p, _)| kind_of(p) == "data")
            .map(|(_, a)| a)
            .collect();
        // The agent may retransmit a new IQ id for the same payload: that is a new "group" by
        // id but the same by payload, which judge_retries reports as VAP-OPS-068.
        let retried = data1.iter().any(|a| a.len() > 1);
        if data1.is_empty() {
            return Err(Abort::error(format!(
                "the agent sent no data IQ for stream count=1 (saw: {})",
                describe(&g1)
            )));
        }
        if retried {
            let v: Vec<Violation> = data1
                .iter()
                .flat_map(|a| judge_retries(a, deadline, cx.budget(50)))
                .collect();
            for (req, what) in [
                ("VAP-OPS-068", "every retransmission reuses the original IQ id"),
                ("VAP-OPS-073", "retry n waits at least 100 ms × 2^(n−1)"),
                ("VAP-OPS-074", "at most 4 attempts of one IQ set"),
                ("VAP-OPS-075", "no retry after the op deadline"),
                ("VAP-OPS-076", "no attribute added to a retransmitted <iq>"),
            ] {
                let mine: Vec<&String> =
                    v.iter().filter(|(r, _)| *r == req).map(|(_, w)| w).collect();
                cx.check(
                    req,
                    mine.is_empty(),
                    format!("data answered with <error type=\"wait\">: {what}"),
                    if mine.is_empty() {
                        format!(
                            "{} attempts of the data IQ",
                            data1.iter().map(|a| a.len()).sum::<usize>()
                        )
                    } else {
                        mine.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    },
                );
            }
        } else {
            for req in [
                "VAP-OPS-068",
                "VAP-OPS-073",
                "VAP-OPS-074",
                "VAP-OPS-075",
                "VAP-OPS-076",
            ] {
                cx.info(
                    req,
                    "not exercised: the agent did not retransmit the data IQ answered with a wait error (retransmission is optional, VAP-OPS-071)",
                );
            }
        }
        // Nothing answered with a result, and nothing answered with a non-retryable error,
        // is ever sent again.
        let again_after_result: Vec<String> = g1
            .iter()
            .chain(g2.iter())
            .filter(|(p, a)| kind_of(p) != "data" && a.len() > 1)
            .map(|(p, a)| format!("{} sent {} times", kind_of(p), a.len()))
            .collect();
        cx.check(
            "VAP-OPS-070",
            again_after_result.is_empty(),
            "IQ sets answered with an IQ result are not retransmitted",
            if again_after_result.is_empty() {
                format!("op 1: {}; op 2: {}", describe(&g1), describe(&g2))
            } else {
                again_after_result.join("; ")
            },
        );
        // After the data IQ's last attempt failed (non-retryable error, or the last of the 4
        // attempts §3.12 allows), nothing more for that op. A deadline-expired error
        // (VAP-OPS-061) is not a continuation when the agent may still have been waiting for
        // an answer as the deadline passed: fewer than 4 attempts (backing off), or the last
        // attempt came within 200 ms (scaled) of the deadline.
        let after_failure = |s: &[Rx], retryable: bool| -> Vec<String> {
            let attempts = s
                .iter()
                .filter(|r| r.vchild().is_some_and(|c| c.name() == "data"))
                .count();
            let last_data = s
                .iter()
                .rposition(|r| r.vchild().is_some_and(|c| c.name() == "data"));
            match last_data {
                Some(i) => {
                    let pending_at_deadline =
                        attempts < 4 || s[i].at + cx.budget(200) >= deadline;
                    s[i + 1..]
                        .iter()
                        .filter(|r| {
                            let expired = r.vchild().is_some_and(|c| {
                                c.name() == "error"
                                    && c.attr("condition") == Some("deadline-expired")
                            }) && r.at + cx.budget(50) >= deadline;
                            !(retryable && pending_at_deadline && expired)
                        })
                        .filter_map(|r| r.vchild().map(|c| c.name().to_string()))
                        .collect()
                }
                None => vec![],
            }
        };
        let (a1, a2) = (after_failure(&s1, true), after_failure(&s2, false));
        cx.check(
            "VAP-OPS-085",
            a1.is_empty() && a2.is_empty(),
            "no further stanza for an op once its data IQ failed for good (4 attempts answered with wait errors; a cancel error)",
            format!(
                "after the failed data IQ: op 1 ({} data attempts) sent {a1:?}, op 2 sent {a2:?}",
                data1.iter().map(|a| a.len()).sum::<usize>()
            ),
        );
        let data2: usize = g2
            .iter()
            .filter(|(p, _)| kind_of(p) == "data")
            .map(|(_, a)| a.len())
            .sum();
        cx.check(
            "VAP-OPS-072",
            data2 <= 1,
            "a data IQ answered with <error type=\"cancel\"><not-allowed/> is not retransmitted",
            format!("{data2} attempts of the data IQ ({})", describe(&g2)),
        );
        Ok(())
    }
    .await;
    peer.behaviour(|b| b.auto_result = true);
    res
}

/// OPS-WAIT-001: the harness never answers the data IQ of a stream with window 1; the agent
/// must still end the op at its deadline (it must not wait for that result past it).
pub async fn no_wait_past_deadline(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let peer = cx.req().clone();
    let timeout = 600u64;
    peer.behaviour(|b| b.auto_result = false);
    let res = async {
        let (el, t) = op(
            "/vertebra/test/stream",
            timeout,
            vec![i4("count", 3), i4("size", 1)],
        );
        let el = with_attr(el, "window", Some("1"));
        let c = send_op(&peer, &agent, el, &t, None).await?;
        let deadline = c.sent_at + Duration::from_millis(timeout);
        let until = tokio::time::Instant::from_std(deadline) + cx.budget(700);
        let prefix = format!("{t}:");
        let terminal = |r: &Rx| {
            r.iq_type() == Some("set")
                && same_jid(r.from().unwrap_or(""), &agent)
                && r.vchild().is_some_and(|c| {
                    is_terminal(c.name())
                        && c.attr("token")
                            .is_some_and(|k| k.starts_with(&prefix))
                })
        };
        // Answer the ack only; hold every data IQ.
        let stanzas = serve_until(&peer, &agent, &c, until, &terminal).await;
        let term = stanzas.iter().find(|r| terminal(r));
        let kinds: Vec<String> = stanzas
            .iter()
            .filter_map(|r| r.vchild().map(|c| c.name().to_string()))
            .collect();
        let data = kinds.iter().filter(|k| *k == "data").count();
        if data == 0 {
            return Err(Abort::error(format!(
                "the agent sent no data IQ (saw {kinds:?}); cannot hold a data result"
            )));
        }
        let late = cx.budget(500);
        let ok = term.is_some_and(|r| {
            r.at <= deadline + late
                && r.vchild().is_some_and(|c| {
                    c.name() == "error" && c.attr("condition") == Some("deadline-expired")
                })
        });
        cx.check(
            "VAP-OPS-064",
            ok,
            format!(
                "with the data IQ result held, <error condition=\"deadline-expired\"> by the deadline ({timeout} ms) + {late:?}"
            ),
            match term {
                Some(r) => format!(
                    "{} at {:?} after the op ({kinds:?})",
                    r.vchild().map(String::from).unwrap_or_default(),
                    r.at.duration_since(c.sent_at)
                ),
                None => format!("no terminal within {:?} of the deadline ({kinds:?})", until - tokio::time::Instant::from_std(deadline)),
            },
        );
        Ok(())
    }
    .await;
    peer.behaviour(|b| b.auto_result = true);
    res
}

/// Answer ack/final/error of `call` with IQ results, hold data; stop at a terminal or `until`.
async fn serve_until(
    peer: &Peer,
    agent: &str,
    call: &Call,
    until: tokio::time::Instant,
    terminal: &(dyn Fn(&Rx) -> bool + Sync),
) -> Vec<Rx> {
    let prefix = format!("{}:", call.t);
    let mine = |r: &Rx| {
        r.iq_type() == Some("set")
            && same_jid(r.from().unwrap_or(""), agent)
            && r.vchild().is_some_and(|c| {
                c.name() != "op" && c.attr("token").is_some_and(|k| k.starts_with(&prefix))
            })
    };
    let mut handled = 0usize;
    loop {
        let m = peer.mark();
        let all = peer.collect(call.since, mine);
        for r in all.iter().skip(handled) {
            if r.vchild().is_some_and(|c| c.name() != "data") {
                let _ = peer.send(iq_result_for(&r.el, None)).await;
            }
        }
        handled = all.len();
        let now = tokio::time::Instant::now();
        if now >= until || all.iter().any(terminal) {
            return all;
        }
        let _ = peer.wait(m, until - now, mine).await;
    }
}

/// OPS-SESSION-001: the agent's XMPP session is cut (server-side) while a sleep op runs; once
/// it is back online it must not continue that op (no final, data or error for it). Runs on a
/// second instance in test mode (`VERTEBRA_TEST_PROFILE=1`), so the agent under test's other
/// cases are not disturbed.
pub async fn no_resume_after_session_loss(cx: Ctx) -> CaseResult {
    let Some(inj) = injector(&cx) else {
        return Err(Abort::skipped(
            "needs the embedded server (the harness cuts the agent's session)",
        ));
    };
    let Some(ctl) = cx.session.control.clone() else {
        return Err(Abort::skipped(
            "needs spawn or reference mode (the harness starts a second instance to disconnect)",
        ));
    };
    cx.trace
        .note("a second instance with VERTEBRA_TEST_PROFILE=1 (started now, or reused)");
    let (agent, _) = ctl
        .start_aux(Some("1".into()))
        .await
        .map_err(|e| Abort::error(format!("the second instance did not become ready: {e}")))?;
    let peer = cx.req().clone();
    let sleep_ms = 700u64;
    let (el, t) = op(
        "/vertebra/test/sleep",
        4000,
        vec![i4("ms", sleep_ms as i64)],
    );
    let c = send_op(&peer, &agent, el, &t, None).await?;
    let prefix = format!("{t}:");
    let of_op = |r: &Rx| {
        r.iq_type() == Some("set")
            && same_jid(r.from().unwrap_or(""), &agent)
            && r.vchild().is_some_and(|v| {
                v.name() != "op" && v.attr("token").is_some_and(|k| k.starts_with(&prefix))
            })
    };
    // Wait for the ack (or the fast-path ack on the op result): the op is then running.
    let started = peer
        .wait(c.since, cx.budget(3000), |r| {
            of_op(r) && r.vchild().is_some_and(|v| v.name() == "ack")
                || (r.attr("id") == Some(c.id.as_str())
                    && r.el
                        .get_child("op", crate::peer::NS)
                        .is_some_and(|o| o.attr("ack") == Some("true")))
        })
        .await;
    if started.is_none() {
        return Err(Abort::error(
            "the sleep op was not acked within 3 s; cannot cut the session mid-op",
        ));
    }
    let cut_mark = peer.mark();
    let cut_at = Instant::now();
    inj.disconnect(&agent).map_err(Abort::error)?;
    cx.trace
        .note(format!("harness cut the session of {agent} (TCP close)"));
    // Back online: it answers pings again (its reconnect back-off is its own business).
    let end = tokio::time::Instant::now() + cx.budget(5000);
    let mut back = None;
    // Do not ping the old, dying session: wait a moment first.
    tokio::time::sleep(cx.budget(50)).await;
    while tokio::time::Instant::now() < end {
        if matches!(peer.ping(&agent, cx.budget(300)).await, Ok(true)) {
            back = Some(cut_at.elapsed());
            break;
        }
        tokio::time::sleep(cx.budget(50)).await;
    }
    let Some(back) = back else {
        // Reconnecting is the agent's choice; one that stays away resumes nothing.
        cx.info(
            "VAP-OPS-081",
            "not exercised: the agent did not come back online within 5 s after its session was cut (reconnecting is not required)",
        );
        return Ok(());
    };
    // Past the point where the sleep would have ended, plus a grace.
    let sleep_end = c.sent_at + Duration::from_millis(sleep_ms) + cx.budget(300);
    let now = Instant::now();
    if sleep_end > now {
        tokio::time::sleep(sleep_end - now).await;
    }
    let _ = peer.ping(&agent, cx.budget(1000)).await;
    let after: Vec<String> = peer
        .collect(cut_mark, of_op)
        .iter()
        .filter_map(|r| r.vchild().map(|v| v.name().to_string()))
        .collect();
    cx.check(
        "VAP-OPS-081",
        after.is_empty(),
        "nothing more for the op that was running when the session was lost",
        format!("back online {back:?} after the cut; sent for the op afterwards: {after:?}"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64, id: &str, attrs: &[&str]) -> Attempt {
        Attempt {
            at: base + Duration::from_millis(ms),
            id: id.into(),
            iq_attrs: attrs.iter().map(|s| s.to_string()).collect(),
            payload: "<data/>".into(),
        }
    }

    #[test]
    fn conforming_retries_pass() {
        let b = Instant::now();
        let a = [
            at(b, 0, "x", &["id", "to", "type"]),
            at(b, 105, "x", &["id", "to", "type"]),
            at(b, 310, "x", &["id", "to", "type"]),
            at(b, 720, "x", &["id", "to", "type"]),
        ];
        assert!(judge_retries(&a, b + Duration::from_millis(1500), Duration::ZERO).is_empty());
    }

    #[test]
    fn each_retry_rule_can_fail() {
        let b = Instant::now();
        let d = b + Duration::from_millis(1000);
        let reqs = |a: &[Attempt]| -> Vec<&'static str> {
            judge_retries(a, d, Duration::ZERO)
                .into_iter()
                .map(|(r, _)| r)
                .collect()
        };
        let std = &["id", "to", "type"];
        // New id.
        assert_eq!(
            reqs(&[at(b, 0, "x", std), at(b, 150, "y", std)]),
            ["VAP-OPS-068"]
        );
        // Added attribute (the 2008 retry_delay).
        assert_eq!(
            reqs(&[
                at(b, 0, "x", std),
                at(b, 150, "x", &["id", "retry_delay", "to", "type"])
            ]),
            ["VAP-OPS-076"]
        );
        // Too early (retry 2 needs 200 ms).
        assert_eq!(
            reqs(&[
                at(b, 0, "x", std),
                at(b, 100, "x", std),
                at(b, 150, "x", std)
            ]),
            ["VAP-OPS-073"]
        );
        // Five attempts.
        assert_eq!(
            reqs(&[
                at(b, 0, "x", std),
                at(b, 100, "x", std),
                at(b, 300, "x", std),
                at(b, 700, "x", std),
                at(b, 900, "x", std)
            ]),
            ["VAP-OPS-074"]
        );
        // After the deadline.
        assert_eq!(
            reqs(&[at(b, 0, "x", std), at(b, 1200, "x", std)]),
            ["VAP-OPS-075"]
        );
    }
}
