//! Discovery on the agent side: disco#info claims, ping, advertisements to the dispatcher.

use super::util::*;
use crate::attach::disco;
use crate::case::{Abort, CaseResult, Ctx};
use crate::peer::{NS_DISCO_INFO, NS_PING};
use std::time::{Duration, Instant};

pub async fn disco_info(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let (features, ids) = disco(cx.req(), &agent, cx.budget(2000))
        .await
        .map_err(|e| {
            cx.check(
                "VAP-TRN-019",
                false,
                "an IQ result to disco#info",
                e.clone(),
            );
            Abort::stop(e)
        })?;
    cx.check(
        "VAP-TRN-019",
        true,
        "an IQ result to disco#info",
        format!("{} features", features.len()),
    );
    cx.check(
        "VAP-TRN-020",
        ids.iter()
            .any(|(c, t)| c == "automation" && t == "vertebra-agent"),
        "identity category=automation type=vertebra-agent",
        format!("identities {ids:?}"),
    );
    let need = ["urn:vertebra:1.0", NS_PING, NS_DISCO_INFO];
    let missing: Vec<&str> = need
        .iter()
        .copied()
        .filter(|n| !features.iter().any(|f| f == n))
        .collect();
    cx.check(
        "VAP-TRN-022",
        missing.is_empty(),
        format!("features {}", need.join(", ")),
        format!("missing {missing:?} in {features:?}"),
    );
    let known = ["urn:vertebra:1.0", F_TEST, F_CANCEL, F_LOAD];
    let unknown: Vec<&String> = features
        .iter()
        .filter(|f| f.starts_with("urn:vertebra:1.0") && !known.contains(&f.as_str()))
        .collect();
    cx.check(
        "VAP-TRN-023",
        unknown.is_empty(),
        "only urn:vertebra:1.0:* features an agent implements (the behaviour behind test-profile, cancel and load is checked by their cases)",
        format!("unexpected {unknown:?}"),
    );
    cx.check(
        "VAP-TRN-024",
        features.iter().any(|f| f == F_TEST),
        "urn:vertebra:1.0:test-profile listed (the harness started the agent in test mode)",
        format!("{features:?}"),
    );
    Ok(())
}

/// The six test-profile operations all have handlers.
pub async fn profile_ops(cx: Ctx) -> CaseResult {
    let calls: Vec<(&str, Vec<minidom::Element>)> = vec![
        ("echo", vec![]),
        ("stream", vec![i4("count", 0), i4("size", 0)]),
        ("sleep", vec![i4("ms", 0)]),
        (
            "fail",
            vec![
                v("string", "condition", "handler-failed"),
                v("string", "reason", "x"),
            ],
        ),
        ("counter", vec![v("boolean", "read", "1")]),
        ("set-load", vec![v("double", "value", "0")]),
    ];
    let mut bad = Vec::new();
    for (name, vals) in calls {
        let (_c, o) = call(&cx, &format!("{TEST}/{name}"), 5000, vals, 3000).await?;
        if o.terminal.is_none() || o.error().is_some_and(|(_, k)| k == "no-handler") {
            bad.push(format!("{name}: {}", o.describe()));
        }
    }
    cx.check(
        "VAP-TPF-001",
        bad.is_empty(),
        "all six test-profile operations served",
        if bad.is_empty() {
            "all served".into()
        } else {
            bad.join("; ")
        },
    );
    Ok(())
}

pub async fn ping(cx: Ctx) -> CaseResult {
    let agent = agent(&cx)?;
    let req = cx.req();
    let since = req.mark();
    let t0 = Instant::now();
    let id = req
        .send_iq(
            "get",
            &agent,
            Some(minidom::Element::builder("ping", NS_PING).build()),
        )
        .await
        .map_err(Abort::error)?;
    let r = req.wait_response(since, &id, cx.budget(2000)).await;
    let dt = t0.elapsed();
    cx.check(
        "VAP-TRN-025",
        r.as_ref()
            .is_some_and(|r| r.iq_type() == Some("result") && r.el.children().next().is_none()),
        "an empty IQ result",
        r.as_ref()
            .map(|r| r.xml())
            .unwrap_or_else(|| "no answer".into()),
    );
    let reached = r.as_ref().is_some_and(|r| r.iq_type() == Some("result"));
    for req in ["VAP-TRN-001", "VAP-TRN-002", "VAP-SEC-001"] {
        cx.check(
            req,
            reached && agent.contains('/'),
            "reachable at its full JID through a server that only routes for SASL-authenticated, resource-bound sessions",
            format!("ping to {agent}: {}", if reached { "answered" } else { "not answered" }),
        );
    }
    cx.check(
        "VAP-TRN-026",
        r.is_some() && dt <= Duration::from_millis(1000),
        "answered within 1000 ms",
        format!("{dt:?}"),
    );
    Ok(())
}

/// The agent advertised the test profile to its dispatcher (the harness), as a well-formed op.
pub async fn advertised(cx: Ctx) -> CaseResult {
    let dsp = dsp(&cx)?;
    let adverts = dsp.adverts();
    let agent = agent(&cx)?;
    let mine: Vec<_> = adverts
        .iter()
        .filter(|a| same_jid(&a.from, &agent))
        .collect();
    let first = mine.first().cloned().ok_or_else(|| {
        cx.check(
            "VAP-DSC-001",
            false,
            "a /security/advertise op to the dispatcher after coming online",
            "no advertise received",
        );
        Abort::stop("no advertisement")
    })?;
    cx.check(
        "VAP-DSC-001",
        true,
        "an advertise op after coming online",
        format!("{} advertisements", mine.len()),
    );
    let need = ["echo", "stream", "sleep", "fail", "counter", "set-load"];
    let missing: Vec<&str> = need
        .iter()
        .copied()
        .filter(|n| {
            !first
                .operations
                .iter()
                .any(|o| o == &format!("{TEST}/{n}") || o == TEST || o == "/vertebra")
        })
        .collect();
    let resources = crate::cases::util::named(&first.raw, "resources");
    let scoped = resources.is_some_and(|r| r.children().next().is_some());
    cx.check(
        "VAP-TPF-005",
        missing.is_empty() && !scoped,
        "the six test-profile operations advertised without scoping resources",
        format!(
            "operations {:?}; resources {}",
            first.operations,
            resources
                .map(String::from)
                .unwrap_or_else(|| "absent".into())
        ),
    );
    cx.check(
        "VAP-DSC-002",
        mine.iter()
            .all(|a| a.ttl.is_some_and(|t| (0..=86_400).contains(&t))),
        "ttl between 0 and 86400",
        format!("ttls {:?}", mine.iter().map(|a| a.ttl).collect::<Vec<_>>()),
    );
    // The advertise op as a requester's op.
    let op = &first.raw;
    let t = op.attr("token").unwrap_or("");
    cx.check(
        "VAP-OPS-001",
        is_hex32(t),
        "T = 32 lowercase hex characters",
        format!("token {t:?}"),
    );
    cx.check(
        "VAP-OPS-010",
        op.attr("version") == Some("1.0"),
        "version=\"1.0\"",
        format!("version {:?}", op.attr("version")),
    );
    cx.check(
        "VAP-OPS-011",
        op.attr("timeout")
            .and_then(|x| x.parse::<u64>().ok())
            .is_some_and(|x| (1..=86_400_000).contains(&x)),
        "timeout in 1..86400000",
        format!("timeout {:?}", op.attr("timeout")),
    );
    cx.check(
        "VAP-VAL-001",
        op.children()
            .all(|c| c.attr("name").is_some_and(|n| !n.is_empty())),
        "every top-level child named",
        String::from(op),
    );
    // IQ type, op path form, configured dispatcher, presence before the first advertise.
    let adv_iqs = dsp.collect(0, |r| {
        r.name() == "iq"
            && same_jid(r.from().unwrap_or(""), &agent)
            && r.vchild().is_some_and(|c| c.name() == "op")
    });
    cx.check(
        "VAP-OPS-009",
        !adv_iqs.is_empty()
            && adv_iqs
                .iter()
                .all(|r| r.iq_type() == Some("set") && r.el.children().count() == 1),
        "every op the agent sends is the single child of an IQ set",
        format!(
            "{} op IQs, types {:?}",
            adv_iqs.len(),
            adv_iqs
                .iter()
                .map(|r| r.iq_type().unwrap_or(""))
                .collect::<Vec<_>>()
        ),
    );
    let bad_paths: Vec<String> = adv_iqs
        .iter()
        .filter_map(|r| r.vchild().and_then(|c| c.attr("type")).map(str::to_string))
        .filter(|t| !normalized_path(t))
        .collect();
    let bad_res: Vec<String> = mine
        .iter()
        .flat_map(|a| a.operations.iter().cloned())
        .filter(|p| !p.starts_with('/'))
        .collect();
    cx.check(
        "VAP-RES-001",
        bad_res.is_empty(),
        "every advertised operation path starts with /",
        format!("not starting with /: {bad_res:?}"),
    );
    cx.check(
        "VAP-OPS-012",
        bad_paths.is_empty(),
        "op type in normalized resource-path form",
        format!("not normalized: {bad_paths:?}"),
    );
    let dsp_jid = dsp.jid.to_string();
    let to_dsp = adv_iqs
        .iter()
        .all(|r| same_jid(r.attr("to").unwrap_or(""), &dsp_jid));
    let loads_to = dsp
        .loads()
        .iter()
        .filter(|l| same_jid(&l.from, &agent))
        .count();
    for req in ["VAP-TRN-018", "VAP-TPF-019"] {
        cx.check(
            req,
            to_dsp && loads_to > 0,
            format!("advertise/authorize to the configured dispatcher {dsp_jid} and load to its bare JID"),
            format!("ops to the dispatcher: {to_dsp}; load reports at the dispatcher: {loads_to}"),
        );
    }
    let first_presence = dsp
        .collect(0, |r| {
            r.name() == "presence"
                && same_jid(r.from().unwrap_or(""), &agent)
                && r.attr("type").is_none()
        })
        .first()
        .map(|r| r.at);
    cx.check(
        "VAP-LOAD-017",
        first_presence.is_some_and(|p| p <= first.at),
        "directed available presence to the dispatcher's bare JID before the first advertise",
        format!(
            "presence before the first advertise: {}",
            first_presence.is_some_and(|p| p <= first.at)
        ),
    );
    // Only the agent under test's (a second instance the harness stopped may leave some).
    let fails: Vec<String> = dsp
        .lifecycle_failures()
        .into_iter()
        .filter(|f| {
            f.split_once("> to ")
                .map(|(_, rest)| rest.split_once(": ").map_or(rest, |(to, _)| to))
                .is_some_and(|to| same_jid(to, &agent))
        })
        .collect();
    cx.check(
        "VAP-OPS-031",
        fails.is_empty(),
        "the agent answers every ack/data/final the dispatcher sends it with an IQ result",
        if fails.is_empty() {
            "all answered".to_string()
        } else {
            fails.join("; ")
        },
    );
    Ok(())
}

/// A normalized resource path: leading `/`, no empty segment, no trailing `/` (except root).
pub fn normalized_path(p: &str) -> bool {
    p == "/"
        || (p.starts_with('/')
            && !p.ends_with('/')
            && !p.contains("//")
            && !p.chars().any(|c| c.is_control()))
}

/// Re-advertise at the latest 0.9 × ttl.
pub async fn readvertise(cx: Ctx) -> CaseResult {
    let dsp = dsp(&cx)?;
    let agent = agent(&cx)?;
    let last = dsp
        .adverts()
        .into_iter()
        .filter(|a| same_jid(&a.from, &agent))
        .last();
    let Some(last) = last else {
        cx.check(
            "VAP-DSC-010",
            false,
            "an advertisement to refresh",
            "no advertisement seen",
        );
        return Ok(());
    };
    let ttl = last.ttl.unwrap_or(0).max(0) as u64;
    if ttl == 0 || ttl > 5 {
        cx.info("VAP-DSC-010", format!("ttl {ttl} s: a refresh within 0.9 × ttl is not observable within this case's budget"));
        return Ok(());
    }
    let limit = Duration::from_millis(ttl * 900);
    let next = dsp
        .wait_advert_after(last.at, &agent, limit + cx.budget(400))
        .await;
    let gap = next.as_ref().map(|n| n.at.duration_since(last.at));
    cx.check(
        "VAP-DSC-010",
        // The tolerance covers the harness seeing both advertisements late on a busy machine.
        gap.is_some_and(|g| g <= limit + cx.budget(250)),
        format!("next advertise within 0.9 × {ttl} s = {limit:?}"),
        format!("{gap:?}"),
    );
    Ok(())
}

/// Spawn contract: logs to stderr only, a failed login exits non-zero with a message, SIGTERM
/// exits 0 within 5 s.
pub async fn spawn_process(cx: Ctx) -> CaseResult {
    let Some(ctl) = cx.session.control.clone() else {
        return Err(Abort::skipped(
            "needs spawn mode (the harness starts the agent)",
        ));
    };
    if cx.session.mode != crate::session::Mode::Spawn {
        return Err(Abort::skipped(
            "needs spawn mode (the harness starts the agent)",
        ));
    }
    // It is online as VERTEBRA_JID over the harness's plaintext loopback server.
    let agent = agent(&cx)?;
    let up = cx
        .req()
        .ping(&agent, cx.budget(2000))
        .await
        .unwrap_or(false);
    for req in ["VAP-TPF-017", "VAP-TPF-018"] {
        cx.check(
            req,
            up,
            format!(
                "logged in as VERTEBRA_JID {agent} at VERTEBRA_SERVER over plaintext loopback c2s"
            ),
            format!("answers ping at {agent}: {up}"),
        );
    }
    // Output so far (since start / last case) must be on stderr only.
    let (out, err) = ctl.take_output();
    cx.check(
        "VAP-TPF-023",
        out.trim().is_empty(),
        "nothing on standard output (logs go to standard error)",
        format!(
            "stdout: {:?}; stderr has {} bytes",
            out.chars().take(200).collect::<String>(),
            err.len()
        ),
    );
    // Wrong password: exit non-zero with a message.
    let r = ctl
        .run_variant(
            vec![("VERTEBRA_PASSWORD".into(), "wrong-password".into())],
            cx.budget(8000),
        )
        .await
        .map_err(Abort::error)?;
    cx.check(
        "VAP-TPF-025",
        r.0.is_some_and(|c| c != 0) && !r.2.trim().is_empty(),
        "a non-zero exit and a message on standard error when authentication fails",
        format!(
            "exit {:?}; stderr {:?}",
            r.0,
            r.2.chars().take(200).collect::<String>()
        ),
    );
    if !cx.session.password.is_empty() {
        let leaked = r.2.contains("wrong-password")
            || r.1.contains("wrong-password")
            || err.contains(&cx.session.password)
            || out.contains(&cx.session.password);
        cx.check(
            "VAP-SEC-023",
            !leaked,
            "no password in the agent's output",
            format!("password seen in output: {leaked}"),
        );
    }
    // SIGTERM: exit 0 within 5 s; then the harness restarts it.
    let code = ctl
        .terminate(std::time::Duration::from_secs(5))
        .await
        .map_err(Abort::error)?;
    cx.check(
        "VAP-TPF-024",
        code == Some(0),
        "exit status 0 within 5 s of SIGTERM",
        format!("{code:?}"),
    );
    ctl.restart()
        .await
        .map_err(|e| Abort::error(format!("could not restart the agent: {e}")))?;
    Ok(())
}
