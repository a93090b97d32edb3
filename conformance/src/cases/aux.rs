//! Cases on a second instance of the agent under test (the "aux" agent, started by the
//! harness on a spare account): test mode off, and — in reference mode, where the aux agent
//! serves an application operation with a keyed resource — resource scoping.

use super::util::*;
use crate::case::{Abort, CaseResult, Ctx};
use crate::session::{TargetControl, SCOPED_KEY, SCOPED_OP};
use minidom::Element;
use std::sync::Arc;
use std::time::Instant;

fn control(cx: &Ctx) -> Result<Arc<dyn TargetControl>, Abort> {
    cx.session.control.clone().ok_or_else(|| {
        Abort::skipped(
            "needs spawn or reference mode (the harness starts a second instance of the agent)",
        )
    })
}

/// Start the aux instance; a failure to start is the environment's (or the agent's start-up),
/// reported as ERROR with the reason.
async fn start(
    cx: &Ctx,
    ctl: &Arc<dyn TargetControl>,
    test_profile: Option<&str>,
) -> Result<(String, Instant), Abort> {
    cx.trace.note(format!(
        "a second instance (started now, or reused) with VERTEBRA_TEST_PROFILE {}",
        test_profile
            .map(|v| format!("= {v:?}"))
            .unwrap_or_else(|| "unset".into())
    ));
    ctl.start_aux(test_profile.map(str::to_string))
        .await
        .map_err(|e| Abort::error(format!("the second instance did not become ready: {e}")))
}

/// Was the op served by a handler (rather than refused or ended with `no-handler`)?
pub fn served(o: &Obs) -> bool {
    o.op_iq_type() == Some("result") && o.term_name() == "final"
}

/// Did the op end with `no-handler` (after its op result)?
pub fn no_handler(o: &Obs) -> bool {
    o.op_iq_type() == Some("result") && o.error().is_some_and(|(_, k)| k == "no-handler")
}

/// Call `el` on `to` as this case's requester and observe it.
async fn call_on(cx: &Ctx, to: &str, el: Element, t: &str) -> Result<Obs, Abort> {
    let c = send_op(cx.req(), to, el, t, None).await?;
    Ok(observe(cx, cx.req(), &c, cx.budget(3000), false).await)
}

/// Judge one test-mode-off instance: (feature claimed, echo served, advertised test ops).
pub fn test_mode_violations(
    features: &[String],
    echo: &Obs,
    advertised: &[String],
) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    if features.iter().any(|f| f == F_TEST) {
        v.push(("VAP-TPF-020", format!("disco#info lists {F_TEST}")));
    }
    if !no_handler(echo) && echo.op_iq_type() != Some("error") {
        v.push((
            "VAP-TPF-002",
            format!("/vertebra/test/echo: {}", echo.describe()),
        ));
    }
    let test_ops: Vec<&String> = advertised.iter().filter(|o| o.starts_with(TEST)).collect();
    if !test_ops.is_empty() {
        v.push(("VAP-SEC-027", format!("advertised {test_ops:?}")));
    }
    v
}

/// SEC-TESTMODE-001: started without test mode (variable unset, then `true`), the agent
/// claims no test profile, serves no test-profile operation and advertises none.
pub async fn test_mode_off(cx: Ctx) -> CaseResult {
    let ctl = control(&cx)?;
    let dsp = cx.session.dsp.clone();
    for variant in [None, Some("true")] {
        let shown = variant
            .map(|v| format!("VERTEBRA_TEST_PROFILE={v}"))
            .unwrap_or_else(|| "VERTEBRA_TEST_PROFILE unset".into());
        let (aux, t0) = start(&cx, &ctl, variant).await?;
        let (el, t) = op(
            "/vertebra/test/echo",
            5000,
            vec![v("string", "probe", "test mode is off")],
        );
        let (features, echo) = tokio::join!(
            crate::attach::disco(cx.req(), &aux, cx.budget(2000)),
            call_on(&cx, &aux, el, &t)
        );
        let (features, _) = features.map_err(Abort::error)?;
        let echo = echo?;
        let advertised: Vec<String> = dsp
            .as_ref()
            .map(|d| {
                d.adverts()
                    .into_iter()
                    .filter(|a| a.at >= t0 && same_jid(&a.from, &aux))
                    .flat_map(|a| a.operations)
                    .collect()
            })
            .unwrap_or_default();
        let bad = test_mode_violations(&features, &echo, &advertised);
        let has = |r: &str| bad.iter().find(|(q, _)| *q == r).map(|(_, w)| w.clone());
        cx.check(
            "VAP-TPF-020",
            has("VAP-TPF-020").is_none(),
            format!("{shown}: not in test mode — disco#info without {F_TEST}"),
            has("VAP-TPF-020").unwrap_or_else(|| format!("features {features:?}")),
        );
        cx.check(
            "VAP-TPF-002",
            has("VAP-TPF-002").is_none(),
            format!("{shown}: /vertebra/test/echo is not served (no-handler)"),
            has("VAP-TPF-002").unwrap_or_else(|| echo.describe()),
        );
        cx.check(
            "VAP-SEC-027",
            bad.is_empty(),
            format!("{shown}: test-profile operations neither claimed, served nor advertised"),
            if bad.is_empty() {
                format!("advertised {advertised:?}; echo: {}", echo.describe())
            } else {
                bad.iter()
                    .map(|(_, w)| w.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        );
    }
    Ok(())
}

/// An op on [`SCOPED_OP`] with the given values (a 1.0 op) or a legacy op (no version, no
/// timeout).
fn scoped_op(values: Vec<Element>, legacy: bool) -> (Element, String) {
    let (el, t) = op(SCOPED_OP, 5000, values);
    if legacy {
        let el = with_attr(with_attr(el, "version", None), "timeout", None);
        (el, t)
    } else {
        (el, t)
    }
}

fn res(name: &str, path: &str) -> Element {
    v("res", name, path)
}

/// One scoping probe: what is sent, and whether the op must be served.
pub struct Probe {
    pub req: &'static str,
    pub what: &'static str,
    pub values: fn() -> Vec<Element>,
    pub legacy: bool,
    pub in_scope: bool,
}

/// The probes of OPS-SCOPE-001 (keyed resources) — the aux agent provides
/// `cluster` = `/cluster/rd00`.
pub const KEYED: &[Probe] = &[
    Probe {
        req: "VAP-RES-014",
        what: "top-level res cluster=/cluster/rd00/db (a descendant of the provided resource)",
        values: || vec![res(SCOPED_KEY, "/cluster/rd00/db"), v("string", "x", "1")],
        legacy: false,
        in_scope: true,
    },
    Probe {
        req: "VAP-RES-014",
        what: "top-level res cluster=/cluster/rd001 (matches no provided resource)",
        values: || vec![res(SCOPED_KEY, "/cluster/rd001")],
        legacy: false,
        in_scope: false,
    },
    Probe {
        req: "VAP-RES-011",
        what: "top-level res slice=/slice/0 (a key the agent provides nothing under)",
        values: || vec![res("slice", "/slice/0")],
        legacy: false,
        in_scope: false,
    },
    Probe {
        req: "VAP-RES-011",
        what: "top-level res cluster=/cluster and slice=/slice/0 (every key must be in scope)",
        values: || vec![res(SCOPED_KEY, "/cluster"), res("slice", "/slice/0")],
        legacy: false,
        in_scope: false,
    },
    Probe {
        req: "VAP-RES-012",
        what: "res /cluster/rd001 and slice=/slice/0 only inside a list and a struct argument",
        values: || {
            vec![
                vc("list", "targets", vec![res("", "/cluster/rd001")]),
                vc("struct", "where", vec![res("slice", "/slice/0")]),
            ]
        },
        legacy: false,
        in_scope: true,
    },
];

/// The probes of OPS-SCOPE-002 (key-less resources).
pub const KEYLESS: &[Probe] = &[
    Probe {
        req: "VAP-VER-009",
        what: "legacy op with an unnamed top-level <res>/cluster/rd00</res>",
        values: || vec![res("", "/cluster/rd00")],
        legacy: true,
        in_scope: true,
    },
    Probe {
        req: "VAP-VER-009",
        what: "legacy op with an unnamed top-level <res>/cluster/rd001</res>",
        values: || vec![res("", "/cluster/rd001")],
        legacy: true,
        in_scope: false,
    },
    Probe {
        req: "VAP-VER-009",
        what: "legacy op with <res name=\"/mock\">/cluster/rd00/db</res> (a key-less name)",
        values: || vec![res("/mock", "/cluster/rd00/db")],
        legacy: true,
        in_scope: true,
    },
    Probe {
        req: "VAP-VER-009",
        what: "legacy op with <res name=\"/mock\">/elsewhere</res> (a key-less name)",
        values: || vec![res("/mock", "/elsewhere")],
        legacy: true,
        in_scope: false,
    },
];

/// Judge one probe: `Ok` when the observation is what scoping requires.
pub fn judge_probe(p: &Probe, o: &Obs) -> bool {
    if p.in_scope {
        served(o)
    } else {
        no_handler(o)
    }
}

async fn run_probes(cx: Ctx, probes: &'static [Probe]) -> CaseResult {
    let ctl = control(&cx)?;
    if !ctl.aux_scoped() {
        return Err(Abort::skipped(
            "needs reference mode: the harness cannot give a spawned agent an application handler with a known keyed resource (the test-profile operations are in scope whatever resources they carry, VAP-TPF-006)",
        ));
    }
    let (aux, _) = start(&cx, &ctl, None).await?;
    // The probes are independent ops: send them all, then judge each.
    let obs = futures::future::join_all(probes.iter().map(|p| {
        let (el, t) = scoped_op((p.values)(), p.legacy);
        let (cx, aux) = (cx.clone(), aux.clone());
        async move { call_on(&cx, &aux, el, &t).await }
    }))
    .await;
    for (p, o) in probes.iter().zip(obs) {
        let o = o?;
        cx.check(
            p.req,
            judge_probe(p, &o),
            format!(
                "{}: {}",
                p.what,
                if p.in_scope {
                    "in scope, served (final)"
                } else {
                    "out of scope: <error type=\"fatal\" condition=\"no-handler\">"
                }
            ),
            o.describe(),
        );
    }
    Ok(())
}

/// OPS-SCOPE-001: keyed resource scoping of an application handler.
pub async fn keyed_scope(cx: Ctx) -> CaseResult {
    run_probes(cx, KEYED).await
}

/// OPS-SCOPE-002: key-less (legacy) resources.
pub async fn keyless_scope(cx: Ctx) -> CaseResult {
    run_probes(cx, KEYLESS).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{Rx, NS, NS_CLIENT};
    use std::time::Instant;

    fn rx(xml: &str) -> Rx {
        Rx {
            at: Instant::now(),
            el: xml.parse().unwrap(),
        }
    }

    /// An observed op: op result, then the given terminal child.
    fn obs(terminal: &str) -> Obs {
        Obs {
            op_resp: Some(rx(&format!(
                "<iq xmlns='{NS_CLIENT}' type='result' id='1'><op xmlns='{NS}' token='a:b'/></iq>"
            ))),
            token: Some("a:b".into()),
            terminal: Some(rx(&format!(
                "<iq xmlns='{NS_CLIENT}' type='set' id='2'>{terminal}</iq>"
            ))),
            stanzas: vec![rx(&format!(
                "<iq xmlns='{NS_CLIENT}' type='set' id='2'>{terminal}</iq>"
            ))],
            ..Obs::default()
        }
    }

    fn served_obs() -> Obs {
        obs(&format!("<final xmlns='{NS}' token='a:b' count='1'/>"))
    }

    fn no_handler_obs() -> Obs {
        obs(&format!(
            "<error xmlns='{NS}' token='a:b' type='fatal' condition='no-handler'/>"
        ))
    }

    #[test]
    fn scoping_probes_fail_when_an_out_of_scope_op_is_served() {
        for p in KEYED.iter().chain(KEYLESS) {
            let (right, wrong) = if p.in_scope {
                (served_obs(), no_handler_obs())
            } else {
                (no_handler_obs(), served_obs())
            };
            assert!(judge_probe(p, &right), "{}", p.what);
            assert!(!judge_probe(p, &wrong), "{}", p.what);
        }
        // Nested res must not scope: a responder that says no-handler there fails RES-012.
        let nested = KEYED.iter().find(|p| p.req == "VAP-RES-012").unwrap();
        assert!(!judge_probe(nested, &no_handler_obs()));
    }

    #[test]
    fn test_mode_judgement_catches_each_exposure() {
        let clean = test_mode_violations(&["urn:vertebra:1.0".into()], &no_handler_obs(), &[]);
        assert!(clean.is_empty());
        let feat = test_mode_violations(&[F_TEST.into()], &no_handler_obs(), &[]);
        assert_eq!(feat[0].0, "VAP-TPF-020");
        let served = test_mode_violations(&[], &served_obs(), &[]);
        assert_eq!(served[0].0, "VAP-TPF-002");
        let adv = test_mode_violations(&[], &no_handler_obs(), &["/vertebra/test/echo".into()]);
        assert_eq!(adv[0].0, "VAP-SEC-027");
    }
}
