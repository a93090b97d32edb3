//! One self-contained HTML file (no external assets, no script): overview, then per case
//! the checks (requirement, level, expected vs observed) and the wire trace with direction
//! and time. Every piece of text is escaped.

use super::{CaseRecord, RunHeader, Summary};
use crate::verdict::Outcome;
use std::fmt::Write;

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {
                let _ = write!(o, "\\u{{{:x}}}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

fn class(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::NonStrict | Outcome::Info => "warn",
        Outcome::Fail | Outcome::Untestable => "fail",
        Outcome::Error => "err",
        Outcome::Unsupported | Outcome::Skipped => "skip",
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top;text-align:left}\
.pass{background:#dfd}.warn{background:#ffd}.fail{background:#fcc}.err{background:#fdb}.skip{background:#eee}\
pre{white-space:pre-wrap;word-break:break-all;margin:0;font-size:12px}details{margin:.3em 0;border:1px solid #ddd;padding:.3em}\
summary{cursor:pointer}.mono{font-family:monospace}";

/// Render the report.
pub fn render(header: &RunHeader, cases: &[CaseRecord], summary: &Summary) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Vertebra conformance report</title><style>{STYLE}</style></head><body>\n"
    );
    let _ = write!(
        h,
        "<h1>Vertebra conformance report</h1>\n<p>Target: <span class=\"mono\">{}</span> · mode {} · time scale {} · started {} · {} ms</p>\n",
        esc(&header.target),
        esc(&header.mode),
        header.time_scale,
        esc(&header.started_at),
        summary.duration_ms.round()
    );
    let _ = write!(
        h,
        "<p><strong>Verdict: {}</strong> (exit code {}) — {} passed, {} failed, {} skipped</p>\n<table><tr>",
        esc(&summary.verdict),
        summary.exit_code,
        summary.passed,
        summary.failed,
        summary.skipped
    );
    for o in Outcome::ALL {
        let _ = write!(h, "<th class=\"{}\">{}</th>", class(o), o.as_str());
    }
    h.push_str("</tr><tr>");
    for o in Outcome::ALL {
        let _ = write!(
            h,
            "<td>{}</td>",
            summary.counts.get(o.as_str()).copied().unwrap_or(0)
        );
    }
    h.push_str("</tr></table>\n");
    if !summary.stale.is_empty() {
        let _ = writeln!(
            h,
            "<p class=\"fail\">Stale baseline entries (listed as failing, now passing): {}</p>",
            esc(&summary.stale.join(", "))
        );
    }
    // Index.
    h.push_str("<h2>Cases</h2>\n<table><tr><th>case</th><th>area</th><th>outcome</th><th>disposition</th><th>requirements</th><th>title</th><th>ms</th></tr>\n");
    for c in cases {
        let disp = serde_json::to_value(c.disposition)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(
            h,
            "<tr class=\"{}\"><td><a href=\"#{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{:.0}</td></tr>",
            class(c.outcome),
            esc(&c.id),
            esc(&c.id),
            esc(&c.area),
            c.outcome.as_str(),
            esc(&disp),
            esc(&c.requirements.join(" ")),
            esc(&c.title),
            c.duration_ms
        );
    }
    h.push_str("</table>\n<h2>Details</h2>\n");
    for c in cases {
        let open = if matches!(
            c.outcome,
            Outcome::Fail | Outcome::Error | Outcome::Untestable
        ) {
            " open"
        } else {
            ""
        };
        let _ = writeln!(
            h,
            "<details id=\"{}\"{}><summary class=\"{}\"><strong>{}</strong> {} — {}</summary>",
            esc(&c.id),
            open,
            class(c.outcome),
            esc(&c.id),
            c.outcome.as_str(),
            esc(&c.title)
        );
        if let Some(r) = &c.reason {
            let _ = writeln!(h, "<p>{}</p>", esc(r));
        }
        if let Some(r) = &c.baseline_reason {
            let _ = writeln!(h, "<p>Baseline: {}</p>", esc(r));
        }
        if !c.checks.is_empty() {
            h.push_str("<table><tr><th>requirement</th><th>level</th><th>outcome</th><th>expected</th><th>observed</th></tr>\n");
            for k in &c.checks {
                let _ = writeln!(
                    h,
                    "<tr class=\"{}\"><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td><td><pre>{}</pre></td></tr>",
                    class(k.outcome),
                    esc(&k.requirement),
                    k.level.as_str(),
                    k.outcome.as_str(),
                    esc(&k.expected),
                    esc(&k.observed)
                );
            }
            h.push_str("</table>\n");
        }
        if matches!(
            c.outcome,
            Outcome::Fail | Outcome::Untestable | Outcome::NonStrict
        ) && !c.fix.is_empty()
        {
            let _ = writeln!(h, "<p><em>How to fix:</em> {}</p>", esc(&c.fix));
        }
        if !c.trace.is_empty() {
            h.push_str("<table><tr><th>t (ms)</th><th>dir</th><th>via</th><th>stanza</th></tr>\n");
            for e in &c.trace {
                let _ = writeln!(
                    h,
                    "<tr><td>{:.3}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
                    e.t_ms,
                    esc(e.dir.arrow()),
                    esc(&e.via),
                    esc(&e.data)
                );
            }
            h.push_str("</table>\n");
            if c.trace_dropped > 0 {
                let _ = writeln!(
                    h,
                    "<p>{} further trace events not kept.</p>",
                    c.trace_dropped
                );
            }
        }
        for (label, out) in [("stdout", &c.stdout), ("stderr", &c.stderr)] {
            if let Some(o) = out {
                if !o.is_empty() {
                    let _ = writeln!(h, "<p>Agent {label}:</p><pre>{}</pre>", esc(o));
                }
            }
        }
        h.push_str("</details>\n");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(esc("a\u{1}b"), "a\\u{1}b");
    }
}
