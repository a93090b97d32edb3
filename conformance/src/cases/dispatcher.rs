//! Dispatcher cases: the harness plays agents and requesters towards a dispatcher under test.

use super::util::*;
use crate::attach::disco;
use crate::case::{Abort, CaseResult, Ctx};
use crate::peer::{random_hex, Peer, NS, NS_CLIENT, NS_DISCO_INFO, NS_PING};
use crate::xmlh::AttrExt;
use minidom::Element;
use std::time::{Duration, Instant};

fn target(cx: &Ctx) -> Result<(String, Vec<Peer>), Abort> {
    let d = cx
        .session
        .dispatcher
        .as_ref()
        .ok_or_else(|| Abort::skipped("no dispatcher attached"))?;
    Ok((d.jid.clone(), d.agents.clone()))
}

fn unique_op() -> String {
    format!("/conformance/{}/op", &random_hex()[..8])
}

/// Call an op on the dispatcher as `peer`.
async fn dcall(cx: &Ctx, peer: &Peer, kind: &str, values: Vec<Element>) -> Result<Obs, Abort> {
    let (d, _) = target(cx)?;
    let (el, t) = op(kind, 5000, values);
    let c = send_op(peer, &d, el, &t, None).await?;
    Ok(observe(cx, peer, &c, cx.budget(3000), false).await)
}

fn ops_list(ops: &[&str]) -> Element {
    vc(
        "list",
        "operations",
        ops.iter().map(|o| v("res", "", o)).collect(),
    )
}

async fn advertise(cx: &Ctx, peer: &Peer, ops: &[&str], ttl: i64) -> Result<Obs, Abort> {
    dcall(
        cx,
        peer,
        "/security/advertise",
        vec![
            ops_list(ops),
            vc("struct", "resources", vec![]),
            i4("ttl", ttl),
        ],
    )
    .await
}

/// Directed presence with a load report to the dispatcher's bare JID.
async fn report(cx: &Ctx, peer: &Peer, value: f64, interval: u64) -> Result<(), Abort> {
    let (d, _) = target(cx)?;
    let bare = d
        .parse::<jid::Jid>()
        .map(|j| j.to_bare().to_string())
        .unwrap_or(d);
    let load = Element::builder("load", NS)
        .at("value", format!("{value}"))
        .at("inflight", "0")
        .at("capacity", "8")
        .at("interval", interval.to_string())
        .build();
    peer.presence_to(&bare, Some(load))
        .await
        .map_err(Abort::error)
}

/// (jids, loads) of a discover answer.
type Listing = (Vec<String>, Vec<String>);

async fn discover(
    cx: &Ctx,
    operation: &str,
    limit: Option<i64>,
) -> Result<(Obs, Option<Listing>), Abort> {
    let mut vals = vec![v("res", "operation", operation)];
    if let Some(l) = limit {
        vals.push(i4("limit", l));
    }
    let o = dcall(cx, cx.req(), "/security/discover", vals).await?;
    let listing = o.chunks().first().and_then(|d| {
        let jids = named(d, "jids")?;
        let loads = named(d, "loads")?;
        Some((
            jids.children().map(|c| c.text()).collect(),
            loads
                .children()
                .map(|c| format!("{}:{}", c.name(), c.text()))
                .collect(),
        ))
    });
    Ok((o, listing))
}

/// Discover until `pred` holds on the listing or the budget passes.
async fn discover_until(
    cx: &Ctx,
    operation: &str,
    budget: Duration,
    pred: impl Fn(&Listing) -> bool,
) -> Result<(Option<Listing>, Duration), Abort> {
    let t0 = Instant::now();
    let end = tokio::time::Instant::now() + budget;
    loop {
        let (_o, l) = discover(cx, operation, None).await?;
        if l.as_ref().is_some_and(&pred) || tokio::time::Instant::now() >= end {
            return Ok((l, t0.elapsed()));
        }
    }
}

fn jid_of(p: &Peer) -> String {
    p.jid.to_string()
}

pub async fn disco_info(cx: Ctx) -> CaseResult {
    let (d, _) = target(&cx)?;
    let (features, ids) = disco(cx.req(), &d, cx.budget(2000)).await.map_err(|e| {
        cx.check(
            "VAP-TRN-019",
            false,
            "an IQ result to disco#info",
            e.clone(),
        );
        Abort::stop(e)
    })?;
    cx.check(
        "VAP-TRN-021",
        ids.iter()
            .any(|(c, t)| c == "automation" && t == "vertebra-dispatcher")
            && features.iter().any(|f| f == F_DISPATCHER),
        "identity automation/vertebra-dispatcher and feature urn:vertebra:1.0:dispatcher",
        format!("identities {ids:?}, features {features:?}"),
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
        format!("missing {missing:?}"),
    );
    Ok(())
}

/// Least-loaded first, ties by byte-wise JID order, lists of equal length.
pub async fn discover_order(cx: Ctx) -> CaseResult {
    let (_, agents) = target(&cx)?;
    if agents.len() < 3 {
        return Err(Abort::error("needs three harness agent identities"));
    }
    let opath = unique_op();
    for a in &agents {
        let o = advertise(&cx, a, &[&opath], 60).await?;
        let resp = o
            .chunks()
            .first()
            .and_then(|d| named(d, "response").map(|r| (r.name().to_string(), r.text())));
        cx.check(
            "VAP-DSC-008",
            resp.as_ref()
                .is_some_and(|(k, t)| k == "boolean" && t.trim() == "1"),
            "<boolean name=\"response\">1</boolean>",
            o.describe(),
        );
    }
    let loads = [0.5, 0.2, 0.2];
    for (a, l) in agents.iter().zip(loads) {
        report(&cx, a, l, 60_000).await?;
    }
    let mut expect: Vec<(f64, String)> = agents
        .iter()
        .zip(loads)
        .map(|(a, l)| (l, jid_of(a)))
        .collect();
    expect.sort_by(|x, y| {
        x.0.partial_cmp(&y.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(x.1.as_bytes().cmp(y.1.as_bytes()))
    });
    let want: Vec<String> = expect.iter().map(|e| e.1.clone()).collect();
    let (l, _) = discover_until(&cx, &opath, cx.budget(1000), |(j, ls)| {
        j == &want && ls.iter().all(|x| x.starts_with("double:"))
    })
    .await?;
    let (jids, lds) = l.clone().unwrap_or_default();
    cx.check(
        "VAP-DSC-016",
        jids == want,
        format!("order {want:?}"),
        format!("{jids:?} loads {lds:?}"),
    );
    cx.check(
        "VAP-LOAD-015",
        jids == want,
        "ordering uses the latest reports",
        format!("{jids:?} loads {lds:?}"),
    );
    cx.check(
        "VAP-DSC-014",
        l.is_some()
            && jids.len() == lds.len()
            && lds
                .iter()
                .all(|x| x.starts_with("double:") || x.starts_with("nil:")),
        "lists jids (strings) and loads (double or nil) of equal length",
        format!("{jids:?} / {lds:?}"),
    );
    let mut u = jids.clone();
    u.sort();
    u.dedup();
    cx.check(
        "VAP-DSC-015",
        u.len() == jids.len() && jids.len() == 3,
        "exactly the three matching advertisements, once each",
        format!("{jids:?}"),
    );
    // The latest report wins.
    report(&cx, &agents[0], 0.1, 60_000).await?;
    let first = jid_of(&agents[0]);
    let (l, _) = discover_until(&cx, &opath, cx.budget(1000), |(j, _)| {
        j.first() == Some(&first)
    })
    .await?;
    cx.check(
        "VAP-LOAD-015",
        l.as_ref().is_some_and(|(j, _)| j.first() == Some(&first)),
        format!("{first} first after it reports 0.1"),
        format!("{:?}", l.map(|x| x.0)),
    );
    // An invalid report is ignored: the previous value (0.1) stays in effect.
    let bare = cx
        .session
        .dispatcher
        .as_ref()
        .map(|d| d.jid.clone())
        .unwrap_or_default();
    let bare = bare
        .parse::<jid::Jid>()
        .map(|j| j.to_bare().to_string())
        .unwrap_or(bare);
    agents[0]
        .presence_to(
            &bare,
            Some(
                Element::builder("load", NS)
                    .at("value", "-5")
                    .at("inflight", "0")
                    .at("capacity", "0")
                    .at("interval", "1")
                    .build(),
            ),
        )
        .await
        .map_err(Abort::error)?;
    let (_o, l) = discover(&cx, &opath, None).await?;
    let first_load = l.as_ref().and_then(|(j, ls)| {
        j.iter()
            .position(|x| *x == first)
            .and_then(|i| ls.get(i).cloned())
    });
    cx.check(
        "VAP-LOAD-010",
        l.as_ref().is_some_and(|(j, _)| j.first() == Some(&first))
            && first_load.as_deref() == Some("double:0.1"),
        format!("the invalid report is ignored: {first} stays first with load 0.1"),
        format!("{:?}", l),
    );
    cx.check(
        "VAP-LOAD-009",
        first_load.as_deref() == Some("double:0.1"),
        "the last valid report is kept per full JID",
        format!("{first_load:?}"),
    );
    // Clean up.
    for a in &agents {
        let _ = advertise(&cx, a, &[], 0).await;
        report(&cx, a, 0.0, 60_000).await?;
    }
    Ok(())
}

/// limit, empty results, missing operation, requester not listed.
pub async fn discover_edges(cx: Ctx) -> CaseResult {
    let (_, agents) = target(&cx)?;
    let opath = unique_op();
    for a in agents.iter().take(2) {
        report(&cx, a, 0.0, 60_000).await?;
        advertise(&cx, a, &[&opath], 60).await?;
    }
    report(&cx, cx.req(), 0.0, 60_000).await?;
    // The requester advertises too: it must not be listed to itself.
    advertise(&cx, cx.req(), &[&opath], 60).await?;
    let (o, l) = discover(&cx, &opath, Some(1)).await?;
    cx.check(
        "VAP-DSC-019",
        l.as_ref().is_some_and(|(j, _)| j.len() == 1),
        "one entry with limit=1",
        o.describe(),
    );
    let (o, l) = discover(&cx, &opath, None).await?;
    let me = jid_of(cx.req());
    cx.check(
        "VAP-DSC-018",
        l.as_ref()
            .is_some_and(|(j, _)| j.len() == 2 && !j.contains(&me)),
        "the two agents, not the requester's own JID",
        format!("{:?} ({})", l.map(|x| x.0), o.describe()),
    );
    let (o, l) = discover(&cx, &unique_op(), None).await?;
    cx.check(
        "VAP-DSC-020",
        o.term_name() == "final"
            && l.as_ref()
                .is_some_and(|(j, ls)| j.is_empty() && ls.is_empty()),
        "two empty lists, not an error",
        o.describe(),
    );
    let o = dcall(
        &cx,
        cx.req(),
        "/security/discover",
        vec![v("string", "something", "else")],
    )
    .await?;
    cx.check(
        "VAP-DSC-021",
        o.error()
            .is_some_and(|(t, k)| t == "fatal" && k == "bad-value"),
        "<error type=\"fatal\" condition=\"bad-value\"> without an operation",
        o.describe(),
    );
    let o = dcall(
        &cx,
        &agents[0],
        "/security/advertise",
        vec![ops_list(&[&opath]), v("string", "ttl", "soon")],
    )
    .await?;
    cx.check(
        "VAP-DSC-009",
        o.error()
            .is_some_and(|(t, k)| t == "fatal" && k == "bad-value"),
        "bad-value for a ttl of the wrong type",
        o.describe(),
    );
    for a in agents.iter().take(2) {
        let _ = advertise(&cx, a, &[], 0).await;
    }
    let _ = advertise(&cx, cx.req(), &[], 0).await;
    Ok(())
}

/// Advertising for another JID is refused; ttl 0 removes; expiry removes.
pub async fn advertise_rules(cx: Ctx) -> CaseResult {
    let (_, agents) = target(&cx)?;
    let opath = unique_op();
    let other = jid_of(&agents[1]);
    let o = dcall(
        &cx,
        &agents[0],
        "/security/advertise",
        vec![
            ops_list(&[&opath]),
            i4("ttl", 60),
            v("string", "advertiser", &other),
        ],
    )
    .await?;
    cx.check(
        "VAP-DSC-004",
        o.nack_reason().as_deref() == Some("not-authorized"),
        "<nack reason=\"not-authorized\"> for an advertiser naming another JID",
        o.describe(),
    );
    let (_, l) = discover(&cx, &opath, None).await?;
    cx.check(
        "VAP-DSC-003",
        l.as_ref().is_some_and(|(j, _)| j.is_empty()),
        "nothing registered for the foreign advertiser",
        format!("{:?}", l.map(|x| x.0)),
    );
    // ttl 0 removes.
    report(&cx, &agents[0], 0.0, 60_000).await?;
    advertise(&cx, &agents[0], &[&opath], 60).await?;
    let (_, l) = discover(&cx, &opath, None).await?;
    cx.require(
        "VAP-DSC-005",
        l.as_ref().is_some_and(|(j, _)| j.len() == 1),
        "the advertisement is listed",
        format!("{:?}", l.map(|x| x.0)),
    )?;
    advertise(&cx, &agents[0], &[&opath], 0).await?;
    let (_, l) = discover(&cx, &opath, None).await?;
    cx.check(
        "VAP-DSC-007",
        l.as_ref().is_some_and(|(j, _)| j.is_empty()),
        "removed by ttl 0",
        format!("{:?}", l.map(|x| x.0)),
    );
    // Refresh only: an empty advertise with ttl > 0 keeps the listing.
    advertise(&cx, &agents[0], &[&opath], 60).await?;
    let o = dcall(&cx, &agents[0], "/security/advertise", vec![i4("ttl", 60)]).await?;
    let (_, l) = discover(&cx, &opath, None).await?;
    cx.check(
        "VAP-DSC-006",
        o.term_name() == "final" && l.as_ref().is_some_and(|(j, _)| j.len() == 1),
        "an advertise without operations and resources only refreshes (the listing stays)",
        format!("{}; listed {:?}", o.describe(), l.map(|x| x.0)),
    );
    advertise(&cx, &agents[0], &[&opath], 0).await?;
    // Expiry.
    advertise(&cx, &agents[0], &[&opath], 1).await?;
    let t0 = Instant::now();
    let (l, _) = discover_until(
        &cx,
        &opath,
        Duration::from_millis(1000) + cx.budget(700),
        |(j, _)| j.is_empty(),
    )
    .await?;
    let gone_at = t0.elapsed();
    cx.check(
        "VAP-DSC-012",
        l.as_ref().is_some_and(|(j, _)| j.is_empty()) && gone_at >= Duration::from_millis(900),
        "listed until the 1 s ttl passes, then not listed",
        format!("empty after {gone_at:?}: {:?}", l.map(|x| x.0)),
    );
    Ok(())
}

/// A dead agent (session gone) leaves discover within 1000 ms.
pub async fn death_unavailable(cx: Ctx) -> CaseResult {
    let (_, agents) = target(&cx)?;
    let opath = unique_op();
    let bare = agents[2].jid.to_bare().to_string();
    let extra_jid: jid::FullJid = format!("{bare}/gone-{}", &random_hex()[..6])
        .parse()
        .map_err(|e| Abort::error(format!("{e}")))?;
    let p = Peer::connect(
        "doomed-agent",
        &cx.session.addr,
        extra_jid,
        &cx.session.password,
        cx.trace.clone(),
        cx.budget(5000),
    )
    .await
    .map_err(Abort::error)?;
    report(&cx, &p, 0.3, 60_000).await?;
    advertise(&cx, &p, &[&opath], 60).await?;
    let me = jid_of(&p);
    let (l, _) = discover_until(&cx, &opath, cx.budget(1000), |(j, _)| j.contains(&me)).await?;
    cx.require(
        "VAP-DSC-015",
        l.as_ref().is_some_and(|(j, _)| j.contains(&me)),
        "the agent is listed while alive",
        format!("{:?}", l.map(|x| x.0)),
    )?;
    p.close().await;
    let (l, dt) = discover_until(
        &cx,
        &opath,
        Duration::from_millis(1000) + cx.budget(300),
        |(j, _)| !j.contains(&me),
    )
    .await?;
    let ok = l.as_ref().is_some_and(|(j, _)| !j.contains(&me))
        && dt <= Duration::from_millis(1000) + cx.budget(100);
    cx.check(
        "VAP-DSC-013",
        ok,
        "advertisements removed within 1000 ms of unavailable presence",
        format!("{dt:?}: {:?}", l.as_ref().map(|x| &x.0)),
    );
    cx.check(
        "VAP-LOAD-012",
        ok,
        "out of dispatch within 1000 ms of unavailable presence",
        format!("{dt:?}"),
    );
    cx.check(
        "VAP-DSC-017",
        ok,
        "a dead agent is not listed",
        format!("{:?}", l.map(|x| x.0)),
    );
    Ok(())
}

/// Report silence for 3 × interval takes an agent out; a new report puts it back.
pub async fn death_silence(cx: Ctx) -> CaseResult {
    let (_, agents) = target(&cx)?;
    let a = agents[1].clone();
    let me = jid_of(&a);
    let opath = unique_op();
    advertise(&cx, &a, &[&opath], 60).await?;
    let interval = 100u64;
    report(&cx, &a, 0.4, interval).await?;
    let t0 = Instant::now();
    let (l, _) = discover_until(
        &cx,
        &opath,
        Duration::from_millis(3 * interval) + cx.budget(600),
        |(j, _)| !j.contains(&me),
    )
    .await?;
    let dt = t0.elapsed();
    let out = l.as_ref().is_some_and(|(j, _)| !j.contains(&me));
    cx.check(
        "VAP-LOAD-013",
        out && dt <= Duration::from_millis(3 * interval) + cx.budget(400),
        format!("out of dispatch once 3 × {interval} ms pass without a report"),
        format!("still listed: {}, after {dt:?}", !out),
    );
    report(&cx, &a, 0.4, 60_000).await?;
    let (l, _) = discover_until(&cx, &opath, cx.budget(1000), |(j, _)| j.contains(&me)).await?;
    cx.check(
        "VAP-LOAD-014",
        l.as_ref().is_some_and(|(j, _)| j.contains(&me)),
        "back in dispatch after a new report",
        format!("{:?}", l.map(|x| x.0)),
    );
    let _ = advertise(&cx, &a, &[], 0).await;
    Ok(())
}

fn authorize_vals(from: &str, to: &str, operation: &str) -> Vec<Element> {
    vec![
        v("string", "from", from),
        v("string", "to", to),
        v("res", "operation", operation),
        vc("struct", "resources", vec![]),
    ]
}

fn decision(o: &Obs) -> (Option<String>, Option<String>) {
    let c = o.chunks();
    let d = c.first();
    (
        d.and_then(|d| named(d, "response")).map(|r| r.text()),
        d.and_then(|d| named(d, "ttl"))
            .map(|r| format!("{}:{}", r.name(), r.text())),
    )
}

/// Default deny, ttl in every answer, policy rule allow (reference policy).
pub async fn authorize_policy(cx: Ctx) -> CaseResult {
    let (_, agents) = target(&cx)?;
    let a = &agents[0];
    let requester = jid_of(cx.req());
    let o = dcall(
        &cx,
        a,
        "/security/authorize",
        authorize_vals(&requester, &jid_of(a), "/nothing/allows/this"),
    )
    .await?;
    let (resp, ttl) = decision(&o);
    cx.check(
        "VAP-SEC-014",
        resp.as_deref() == Some("notauthorized"),
        "notauthorized when no rule allows (default deny)",
        o.describe(),
    );
    cx.check(
        "VAP-SEC-016",
        ttl.as_deref().is_some_and(|t| t.starts_with("i4:")),
        "<i4 name=\"ttl\"> in the answer",
        format!("{ttl:?}"),
    );
    if cx.session.reference_policy {
        let o = dcall(
            &cx,
            a,
            "/security/authorize",
            authorize_vals(&requester, &jid_of(a), "/allowed"),
        )
        .await?;
        let (resp, ttl) = decision(&o);
        cx.check(
            "VAP-SEC-013",
            resp.as_deref() == Some("authorized"),
            "authorized by the policy rule for /allowed",
            o.describe(),
        );
        cx.check(
            "VAP-SEC-016",
            ttl.as_deref().is_some_and(|t| t.starts_with("i4:")),
            "<i4 name=\"ttl\"> in the answer",
            format!("{ttl:?}"),
        );
    } else {
        cx.info("VAP-SEC-013", "the dispatcher's policy is not known to the harness in this mode; only default deny is checked");
    }
    Ok(())
}

/// The sender must be the `to` responder; cross-domain pairs are denied.
pub async fn authorize_identity(cx: Ctx) -> CaseResult {
    let (_, agents) = target(&cx)?;
    let a = &agents[0];
    let requester = jid_of(cx.req());
    let o = dcall(
        &cx,
        &agents[1],
        "/security/authorize",
        authorize_vals(&requester, &jid_of(a), "/allowed"),
    )
    .await?;
    cx.check(
        "VAP-SEC-015",
        decision(&o).0.as_deref() == Some("notauthorized"),
        "notauthorized when the sender is not `to`",
        o.describe(),
    );
    let o = dcall(
        &cx,
        a,
        "/security/authorize",
        authorize_vals("requester@elsewhere.example/x", &jid_of(a), "/allowed"),
    )
    .await?;
    cx.check(
        "VAP-SEC-020",
        decision(&o).0.as_deref() == Some("notauthorized"),
        "notauthorized when from and to are in different domains",
        o.describe(),
    );
    // The dispatcher never asks anyone for authorization of its own ops.
    let asked = cx.req().collect(0, |r| {
        r.vchild()
            .is_some_and(|c| c.name() == "op" && c.attr("type") == Some("/security/authorize"))
    });
    let asked_agents: usize = agents
        .iter()
        .map(|p| {
            p.collect(0, |r| {
                r.vchild().is_some_and(|c| {
                    c.name() == "op" && c.attr("type") == Some("/security/authorize")
                })
            })
            .len()
        })
        .sum();
    cx.check(
        "VAP-SEC-017",
        asked.is_empty() && asked_agents == 0,
        "no /security/authorize op from the dispatcher",
        format!("{} authorize ops seen", asked.len() + asked_agents),
    );
    Ok(())
}

/// Other domains: ops refused (embedded mode: spoofed `from`).
pub async fn foreign_requester(cx: Ctx) -> CaseResult {
    let (d, _) = target(&cx)?;
    let Some(inj) = injector(&cx) else {
        return Err(Abort::skipped(
            "needs the embedded server (a real server cannot send a foreign `from`)",
        ));
    };
    let mark = inj.mark();
    let (el, t) = op(
        "/security/discover",
        5000,
        vec![v("res", "operation", "/vertebra/test/echo")],
    );
    let iq = Element::builder("iq", NS_CLIENT)
        .at("type", "set")
        .at("id", format!("f{}", &t[..8]))
        .at("from", "mallory@elsewhere.example/x")
        .at("to", d.as_str())
        .append(el)
        .build();
    inj.inject_el(iq).map_err(Abort::error)?;
    let _ = cx.req().ping(&d, cx.budget(1000)).await;
    let end = tokio::time::Instant::now() + cx.budget(1500);
    let mut names = Vec::new();
    while tokio::time::Instant::now() < end {
        names = inj
            .sent_by(&d, mark)
            .iter()
            .flat_map(|e| {
                e.children()
                    .filter(|c| {
                        c.ns() == NS
                            && c.attr("token")
                                .is_some_and(|k| k.starts_with(&format!("{t}:")))
                    })
                    .map(|c| {
                        format!(
                            "{}{}",
                            c.name(),
                            c.attr("reason")
                                .map(|r| format!(" reason={r}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        if names
            .iter()
            .any(|n| is_terminal(n.split(' ').next().unwrap_or("")))
        {
            break;
        }
        tokio::time::sleep(cx.budget(20)).await;
    }
    cx.check(
        "VAP-SEC-018",
        names.iter().any(|n| n == "nack reason=not-authorized")
            && !names.iter().any(|n| n.starts_with("data")),
        "<nack reason=\"not-authorized\"> for a discover from another domain",
        format!("dispatcher sent {names:?}"),
    );
    Ok(())
}

/// Ops that are not the dispatcher's own are not forwarded: no-handler.
pub async fn no_proxy(cx: Ctx) -> CaseResult {
    let o = dcall(
        &cx,
        cx.req(),
        "/vertebra/test/echo",
        vec![v("string", "x", "y")],
    )
    .await?;
    let forwarded = cx.session.dispatcher.as_ref().map(|d| {
        d.agents
            .iter()
            .map(|p| {
                p.collect(0, |r| {
                    r.vchild().is_some_and(|c| {
                        c.name() == "op" && c.attr("type") == Some("/vertebra/test/echo")
                    })
                })
                .len()
            })
            .sum::<usize>()
    });
    cx.check(
        "VAP-DSP-019",
        o.error().is_some_and(|(_, k)| k == "no-handler") && forwarded == Some(0),
        "no-handler for a non-dispatcher op, and nothing forwarded to agents",
        format!(
            "{}; forwarded to harness agents: {forwarded:?}",
            o.describe()
        ),
    );
    Ok(())
}

async fn advertise_res(
    cx: &Ctx,
    peer: &Peer,
    op_path: &str,
    key: &str,
    res: &str,
) -> Result<Obs, Abort> {
    dcall(
        cx,
        peer,
        "/security/advertise",
        vec![
            ops_list(&[op_path]),
            vc(
                "struct",
                "resources",
                vec![vc("list", key, vec![v("res", "", res)])],
            ),
            i4("ttl", 60),
        ],
    )
    .await
}

async fn discover_res(cx: &Ctx, op_path: &str, key: &str, res: &str) -> Result<Vec<String>, Abort> {
    let o = dcall(
        cx,
        cx.req(),
        "/security/discover",
        vec![
            v("res", "operation", op_path),
            vc("struct", "resources", vec![v("res", key, res)]),
        ],
    )
    .await?;
    Ok(o.chunks()
        .first()
        .and_then(|d| named(d, "jids"))
        .map(|j| j.children().map(|c| c.text()).collect())
        .unwrap_or_default())
}

/// Segment-wise resource matching in discover.
pub async fn resource_matching(cx: Ctx) -> CaseResult {
    let (_, agents) = target(&cx)?;
    let a = &agents[0];
    let me = jid_of(a);
    let opath = unique_op();
    report(&cx, a, 0.0, 60_000).await?;
    let o = advertise_res(&cx, a, &opath, "cluster", "/cluster/rd00").await?;
    cx.require(
        "VAP-DSC-005",
        o.term_name() == "final",
        "advertise with keyed resources accepted",
        o.describe(),
    )?;
    let probe = |q: &'static str| {
        let cx = cx.clone();
        let opath = opath.clone();
        async move { discover_res(&cx, &opath, "cluster", q).await }
    };
    let sub = probe("/cluster/rd00/db").await?;
    let parent = probe("/cluster").await?;
    let sibling = probe("/cluster/rd001").await?;
    let case = probe("/Cluster/rd00").await?;
    let dots = probe("/cluster/rd00/../rd01").await?;
    cx.check(
        "VAP-RES-009",
        sub.contains(&me) && parent.contains(&me),
        "/cluster/rd00 matches /cluster/rd00/db and /cluster (segment prefix either way)",
        format!("/cluster/rd00/db → {sub:?}; /cluster → {parent:?}"),
    );
    cx.check(
        "VAP-RES-010",
        !sibling.contains(&me),
        "/cluster/rd001 does not match /cluster/rd00",
        format!("{sibling:?}"),
    );
    cx.check(
        "VAP-RES-006",
        !case.contains(&me),
        "/Cluster/rd00 does not match /cluster/rd00 (case-sensitive)",
        format!("{case:?}"),
    );
    cx.check(
        "VAP-RES-007",
        dots.contains(&me),
        "`..` is an ordinary segment: /cluster/rd00/../rd01 lies under /cluster/rd00",
        format!("{dots:?}"),
    );
    let _ = advertise(&cx, a, &[], 0).await;
    Ok(())
}

/// Tenant isolation with a second served domain: an agent of the dispatcher's domain
/// advertises; an identity logged in on the other domain reports load and advertises the same
/// operation, then discovers it. Neither side may see the other tenant's JIDs.
pub async fn tenant_isolation(cx: Ctx) -> CaseResult {
    let (d, agents) = target(&cx)?;
    let Some(outsider) = cx
        .session
        .dispatcher
        .as_ref()
        .and_then(|t| t.foreign.clone())
    else {
        return Err(Abort::skipped(
            "needs a harness identity on a second domain of the same server (the embedded server serves two)",
        ));
    };
    let local = agents
        .first()
        .cloned()
        .ok_or_else(|| Abort::error("no harness agent identity"))?;
    let operation = unique_op();
    let d_domain = d
        .parse::<jid::Jid>()
        .map(|j| j.domain().to_string())
        .unwrap_or_default();
    // The local agent: load 0.3, then its advertisement.
    report(&cx, &local, 0.3, 1000).await?;
    let a = advertise(&cx, &local, &[&operation], 30).await?;
    cx.require(
        "VAP-SEC-019",
        a.term_name() == "final",
        "the local agent's advertisement is accepted (precondition)",
        a.describe(),
    )?;
    // The outsider: a lower load, then the same advertisement (a correct dispatcher refuses it).
    report(&cx, &outsider, 0.0, 1000).await?;
    let foreign_ad = advertise(&cx, &outsider, &[&operation], 30).await?;
    cx.trace.note(format!(
        "outsider's advertisement: {}",
        foreign_ad.describe()
    ));
    // A local requester sees only local agents, with their own load.
    let (ol, listing) = discover(&cx, &operation, None).await?;
    let outsider_jid = outsider.jid.to_string();
    let local_jid = local.jid.to_string();
    let (jids, loads) = listing.clone().unwrap_or_default();
    let foreign_listed: Vec<&String> = jids
        .iter()
        .filter(|j| {
            j.parse::<jid::Jid>()
                .map(|x| x.domain().as_str() != d_domain)
                .unwrap_or(true)
        })
        .collect();
    cx.check(
        "VAP-SEC-019",
        listing.is_some() && foreign_listed.is_empty(),
        format!("discover by a {d_domain} requester lists no JID of another domain"),
        format!("jids {jids:?} ({})", ol.describe()),
    );
    let local_load = jids
        .iter()
        .position(|j| same_jid(j, &local_jid))
        .and_then(|i| loads.get(i).cloned());
    cx.check(
        "VAP-LOAD-011",
        !jids.iter().any(|j| same_jid(j, &outsider_jid))
            && local_load
                .as_deref()
                .is_some_and(|l| l.ends_with(":0.3")),
        format!(
            "the load report from {outsider_jid} is ignored: it is not listed and the local agent keeps its own load 0.3"
        ),
        format!("jids {jids:?}, loads {loads:?}"),
    );
    // The outsider's own discover: nothing of the dispatcher's domain.
    let (el, t) = op(
        "/security/discover",
        5000,
        vec![v("res", "operation", &operation)],
    );
    let c = send_op(&outsider, &d, el, &t, None).await?;
    let o = observe(&cx, &outsider, &c, cx.budget(3000), false).await;
    let seen: Vec<String> = o
        .chunks()
        .first()
        .and_then(|c| named(c, "jids"))
        .map(|l| l.children().map(|c| c.text()).collect())
        .unwrap_or_default();
    cx.check(
        "VAP-SEC-019",
        !seen.iter().any(|j| {
            j.parse::<jid::Jid>()
                .map(|x| x.domain().as_str() == d_domain)
                .unwrap_or(false)
        }),
        format!(
            "discover by {outsider_jid} lists no {d_domain} JID (a nack not-authorized is expected)"
        ),
        format!("jids {seen:?} ({})", o.describe()),
    );
    // Withdraw the local advertisement.
    let _ = advertise(&cx, &local, &[&operation], 0).await;
    Ok(())
}
