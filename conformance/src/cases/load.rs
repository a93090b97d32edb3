//! Load reporting: presence to the dispatcher's bare JID at the promised interval, set-load,
//! unavailable on disconnect.

use super::util::*;
use crate::case::{Abort, CaseResult, Ctx};
use crate::peer::LoadReport;
use std::time::{Duration, Instant};

fn valid(l: &LoadReport) -> Result<(), String> {
    let v = l.value.as_deref().and_then(|x| x.parse::<f64>().ok());
    let inflight = l.inflight.as_deref().and_then(|x| x.parse::<u64>().ok());
    let capacity = l.capacity.as_deref().and_then(|x| x.parse::<u64>().ok());
    let interval = l.interval.as_deref().and_then(|x| x.parse::<u64>().ok());
    match (v, inflight, capacity, interval) {
        (Some(v), Some(_), Some(c), Some(i))
            if v.is_finite() && v >= 0.0 && c >= 1 && (100..=60_000).contains(&i) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "value={:?} inflight={:?} capacity={:?} interval={:?}",
            l.value, l.inflight, l.capacity, l.interval
        )),
    }
}

/// Periodic reports: addressing, attributes, interval.
pub async fn periodic(cx: Ctx) -> CaseResult {
    let dsp = dsp(&cx)?;
    let agent = agent(&cx)?;
    // [VAP-LOAD-007] load presence goes to the dispatcher's bare JID; when the harness's
    // requesters are resources of that same account (--server without --requester-jid), the
    // server delivers it to them as well (RFC 6121) — a harness setup defect, not the agent's.
    let dsp_bare = dsp.jid.to_bare().to_string();
    if cx.session.req_bare == dsp_bare {
        return Err(Abort::untestable(format!(
            "the harness's requester identities share the dispatcher's bare JID {dsp_bare}, so \
             load presence to it also reaches them; give --server a separate account with \
             --requester-jid/--requester-password"
        )));
    }
    let mine = |l: &LoadReport| same_jid(&l.from, &agent) && !l.unavailable;
    let first = dsp
        .wait_load(Instant::now(), cx.budget(2500), mine)
        .await
        .ok_or_else(|| {
            cx.check(
                "VAP-LOAD-005",
                false,
                "load reports while connected",
                "no load report within 2.5 s",
            );
            Abort::stop("no load report")
        })?;
    let interval = first
        .interval
        .as_deref()
        .and_then(|x| x.parse::<u64>().ok())
        .unwrap_or(1000);
    let mut reports = vec![first.clone()];
    for _ in 0..3 {
        let after = reports.last().map(|r| r.at).unwrap_or_else(Instant::now);
        let next = dsp
            .wait_load(
                after + Duration::from_micros(1),
                Duration::from_millis(interval * 2) + cx.budget(300),
                mine,
            )
            .await;
        match next {
            Some(n) => reports.push(n),
            None => break,
        }
    }
    let gaps: Vec<u128> = reports
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_millis())
        .collect();
    let tol = cx.budget(150).as_millis();
    cx.check(
        "VAP-LOAD-005",
        reports.len() == 4 && gaps.iter().all(|g| *g <= interval as u128 + tol),
        format!("a report at least every {interval} ms (+{tol} ms tolerance)"),
        format!("{} reports, gaps {gaps:?} ms", reports.len()),
    );
    cx.check(
        "VAP-LOAD-001",
        reports.iter().all(|r| same_jid(&r.to, &dsp_bare)),
        format!("presence without type to {dsp_bare} carrying <load>"),
        format!(
            "addressed to {:?}",
            reports.iter().map(|r| r.to.clone()).collect::<Vec<_>>()
        ),
    );
    let bad: Vec<String> = reports.iter().filter_map(|r| valid(r).err()).collect();
    cx.check(
        "VAP-LOAD-002",
        bad.is_empty(),
        "value (finite, ≥ 0), inflight, capacity ≥ 1, interval 100..60000",
        if bad.is_empty() {
            "all valid".into()
        } else {
            bad.join("; ")
        },
    );
    if let Some(want) = cx.session.load_interval_ms {
        cx.check(
            "VAP-TPF-021",
            interval == want,
            format!("interval={want} (VERTEBRA_LOAD_INTERVAL_MS)"),
            format!("interval={interval}"),
        );
    }
    if cx.session.has_feature(F_LOAD) {
        cx.check(
            "VAP-LOAD-008",
            reports.len() >= 2,
            "claims urn:vertebra:1.0:load and reports load",
            format!("{} reports", reports.len()),
        );
    }
    // Never to anyone else: the requester identity must not receive load presence.
    let stray = cx
        .req()
        .loads()
        .into_iter()
        .filter(|l| same_jid(&l.from, &agent) && !l.unavailable)
        .count();
    cx.check(
        "VAP-LOAD-007",
        stray == 0,
        "no load presence to entities other than the dispatcher's bare JID",
        format!("{stray} load reports reached the requester"),
    );
    Ok(())
}

/// set-load: reported within 100 ms and kept.
pub async fn set_load(cx: Ctx) -> CaseResult {
    let dsp = dsp(&cx)?;
    let agent = agent(&cx)?;
    let res = set_load_inner(&cx, &dsp, &agent).await;
    // Restore.
    let _ = call(
        &cx,
        "/vertebra/test/set-load",
        5000,
        vec![v("double", "value", "0")],
        2000,
    )
    .await;
    res
}

async fn set_load_inner(cx: &Ctx, dsp: &crate::peer::Peer, agent: &str) -> CaseResult {
    let target = 0.75f64;
    let t0 = Instant::now();
    let (_c, o) = call(
        cx,
        "/vertebra/test/set-load",
        5000,
        vec![v("double", "value", "0.75")],
        3000,
    )
    .await?;
    cx.require(
        "VAP-TPF-016",
        o.term_name() == "final",
        "set-load completes",
        o.describe(),
    )?;
    let ack_at = o.terminal.as_ref().map(|t| t.at).unwrap_or(t0);
    let is_target = |l: &LoadReport| {
        same_jid(&l.from, agent)
            && l.value.as_deref().and_then(|x| x.parse::<f64>().ok()) == Some(target)
    };
    let first = dsp.wait_load(t0, cx.budget(1500), is_target).await;
    let dt = first
        .as_ref()
        .map(|f| f.at.saturating_duration_since(ack_at));
    cx.check(
        "VAP-TPF-016",
        first.is_some() && dt.is_some_and(|d| d <= cx.budget(100) + Duration::from_millis(50)),
        "a load report with value 0.75 within 100 ms of set-load",
        format!("{dt:?} after the final"),
    );
    let Some(first) = first else { return Ok(()) };
    // The next periodic report keeps the value.
    let interval = first
        .interval
        .as_deref()
        .and_then(|x| x.parse::<u64>().ok())
        .unwrap_or(1000);
    let next = dsp
        .wait_load(
            first.at + Duration::from_micros(1),
            Duration::from_millis(interval * 2) + cx.budget(300),
            |l| same_jid(&l.from, agent) && !l.unavailable,
        )
        .await;
    cx.check(
        "VAP-TPF-016",
        next.as_ref().is_some_and(is_target),
        "later reports keep value 0.75",
        format!("{:?}", next.map(|n| n.value)),
    );
    Ok(())
}

/// The agent's session ends → the dispatcher gets unavailable presence; after a restart the
/// first load report comes quickly.
pub async fn unavailable_on_disconnect(cx: Ctx) -> CaseResult {
    let dsp = dsp(&cx)?;
    let agent = agent(&cx)?;
    let Some(ctl) = cx.session.control.clone() else {
        return Err(Abort::skipped(
            "the harness cannot stop the agent in this attach mode",
        ));
    };
    let t0 = Instant::now();
    ctl.kill().await.map_err(Abort::error)?;
    let gone = dsp
        .wait_load(t0, cx.budget(2000), |l| {
            same_jid(&l.from, &agent) && l.unavailable
        })
        .await;
    cx.check(
        "VAP-TRN-003",
        gone.is_some(),
        "unavailable presence from the agent's full JID at the dispatcher when its session ends",
        match &gone {
            Some(g) => format!("after {:?}", g.at.duration_since(t0)),
            None => "no unavailable presence within 2 s".into(),
        },
    );
    ctl.restart()
        .await
        .map_err(|e| Abort::error(format!("could not restart the agent: {e}")))?;
    let ready = Instant::now();
    // Ready means ready: an op right after the readiness ping is served.
    let (_c, o) = call(&cx, "/vertebra/test/echo", 5000, vec![i4("n", 1)], 3000).await?;
    cx.check(
        "VAP-TPF-022",
        o.term_name() == "final",
        "an op sent right after the answered readiness ping completes",
        o.describe(),
    );
    let first = dsp
        .wait_load(t0, cx.budget(2000), |l| {
            same_jid(&l.from, &agent)
                && !l.unavailable
                && l.at > gone.as_ref().map(|g| g.at).unwrap_or(t0)
        })
        .await;
    let dt = first
        .as_ref()
        .map(|f| f.at.saturating_duration_since(ready));
    cx.check(
        "VAP-LOAD-004",
        first.is_some() && dt.is_some_and(|d| d <= Duration::from_millis(1000)),
        "the first load report within 1000 ms (measured from readiness)",
        format!("{dt:?}"),
    );
    Ok(())
}
