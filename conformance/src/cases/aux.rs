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
) -> Result<String, Abort> {
    cx.trace.note(format!(
        "starting a second instance with VERTEBRA_TEST_PROFILE {}",
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
    let res = async {
        for variant in [None, Some("true")] {
            let shown = variant
                .map(|v| format!("VERTEBRA_TEST_PROFILE={v}"))
                .unwrap_or_else(|| "VERTEBRA_TEST_PROFILE unset".into());
            let t0 = Instant::now();
            let aux = start(&cx, &ctl, variant).await?;
            let (features, _) = crate::attach::disco(cx.req(), &aux, cx.budget(2000))
                .await
                .map_err(Abort::error)?;
            let (el, t) = op(
                "/vertebra/test/echo",
                5000,
                vec![v("string", "probe", "test mode is off")],
            );
            let echo = call_on(&cx, &aux, el, &t).await?;
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
    .await;
    ctl.stop_aux().await;
    res
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
    let res = async {
        let aux = start(&cx, &ctl, None).await?;
        for p in probes {
            let (el, t) = scoped_op((p.values)(), p.legacy);
            let o = call_on(&cx, &aux, el, &t).await?;
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
    .await;
    ctl.stop_aux().await;
    res
}

/// OPS-SCOPE-001: keyed resource scoping of an application handler.
pub async fn keyed_scope(cx: Ctx) -> CaseResult {
    run_probes(cx, KEYED).await
}

/// OPS-SCOPE-002: key-less (legacy) resources.
pub async fn keyless_scope(cx: Ctx) -> CaseResult {
    run_probes(cx, KEYLESS).await
}
