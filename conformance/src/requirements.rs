//! Requirement registry extracted from `spec/`.
//!
//! The spec marks every normative sentence with a stable ID, a role and exactly one RFC 2119
//! keyword, one requirement per Markdown list item on one source line (the convention is
//! documented in `spec/README.md`):
//!
//! ```text
//! - [VAP-OPS-012] (responder) The responder MUST answer every op IQ with an IQ result.
//! ```
//!
//! [`extract`] scans the numbered pages of a spec directory and returns the requirements, or
//! every convention violation it found ([`ExtractError::Invalid`]). [`to_json`] renders the
//! registry that is committed as `spec/requirements.json`; [`committed`] parses the copy that is
//! compiled into this crate, for the harness's `explain` and `coverage` commands.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// `spec/requirements.json` as committed, compiled in.
pub const REQUIREMENTS_JSON: &str = include_str!("../../spec/requirements.json");

/// Requirement level (RFC 2119 keyword class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// MUST, MUST NOT, REQUIRED, SHALL, SHALL NOT.
    Must,
    /// SHOULD, SHOULD NOT, RECOMMENDED, NOT RECOMMENDED.
    Should,
    /// MAY, OPTIONAL.
    May,
}

impl Level {
    fn of_keyword(keyword: &str) -> Level {
        match keyword {
            "SHOULD" | "SHOULD NOT" | "RECOMMENDED" | "NOT RECOMMENDED" => Level::Should,
            "MAY" | "OPTIONAL" => Level::May,
            _ => Level::Must,
        }
    }

    /// `"MUST"`, `"SHOULD"` or `"MAY"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
            Level::May => "MAY",
        }
    }
}

/// The role a requirement binds (see the table in `spec/README.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The entity sending an op.
    Requester,
    /// The entity serving an op.
    Responder,
    /// The discovery / authorization / load service.
    Dispatcher,
    /// An agent sending load reports.
    Reporter,
    /// Responder and reporter.
    Agent,
    /// Every Vertebra entity (requester, responder and dispatcher).
    Peer,
}

impl Role {
    /// Parses the role tag used in the spec.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "requester" => Role::Requester,
            "responder" => Role::Responder,
            "dispatcher" => Role::Dispatcher,
            "reporter" => Role::Reporter,
            "agent" => Role::Agent,
            "peer" => Role::Peer,
            _ => return None,
        })
    }

    /// The tag as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Requester => "requester",
            Role::Responder => "responder",
            Role::Dispatcher => "dispatcher",
            Role::Reporter => "reporter",
            Role::Agent => "agent",
            Role::Peer => "peer",
        }
    }

    /// The base roles (requester, responder, dispatcher, reporter) this role binds.
    pub fn binds(self) -> &'static [Role] {
        match self {
            Role::Requester => &[Role::Requester],
            Role::Responder => &[Role::Responder],
            Role::Dispatcher => &[Role::Dispatcher],
            Role::Reporter => &[Role::Reporter],
            Role::Agent => &[Role::Responder, Role::Reporter],
            Role::Peer => &[Role::Requester, Role::Responder, Role::Dispatcher],
        }
    }

    /// Whether a requirement tagged `self` applies to an implementation playing `base`.
    pub fn applies_to(self, base: Role) -> bool {
        self.binds().iter().any(|r| base.binds().contains(r))
    }
}

/// One normative sentence of the spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// Stable ID, e.g. `VAP-OPS-012`.
    pub id: String,
    /// MUST / SHOULD / MAY.
    pub level: Level,
    /// The keyword exactly as written, e.g. `MUST NOT`.
    pub keyword: String,
    /// The role it binds.
    pub role: Role,
    /// Page file name, e.g. `03-operations.md`.
    pub page: String,
    /// The nearest preceding heading, e.g. `3.2 Tokens`.
    pub section: String,
    /// 1-based source line on the page.
    pub line: usize,
    /// The sentence (Markdown source, without ID and role).
    pub sentence: String,
}

/// The registry file: requirements plus withdrawn (tombstoned) IDs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Spec version the registry was extracted from.
    pub spec: String,
    /// How to regenerate the file.
    pub generated_by: String,
    /// Requirements in page order.
    pub requirements: Vec<Requirement>,
    /// IDs that were withdrawn and must never be reused.
    pub withdrawn: Vec<String>,
}

/// One violation of the spec's requirement convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Page file name.
    pub page: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spec/{}:{}: {}", self.page, self.line, self.message)
    }
}

/// Why extraction failed.
#[derive(Debug)]
pub enum ExtractError {
    /// A page or the directory could not be read.
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The pages violate the convention; every problem found is listed.
    Invalid(Vec<Problem>),
}

impl fmt::Display for ExtractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtractError::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            ExtractError::Invalid(problems) => {
                writeln!(f, "{} spec convention problem(s):", problems.len())?;
                for p in problems {
                    writeln!(f, "  {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ExtractError {}

/// A scanned page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Requirements in source order.
    pub requirements: Vec<Requirement>,
    /// Tombstoned IDs.
    pub withdrawn: Vec<String>,
    /// Problems local to the page.
    pub problems: Vec<Problem>,
}

const KEYWORDS: &[&str] = &[
    "MUST",
    "SHALL",
    "SHOULD",
    "REQUIRED",
    "RECOMMENDED",
    "MAY",
    "OPTIONAL",
];

/// The capitalised RFC 2119 keywords in `text` (inline code spans excluded), as written.
pub fn keywords(text: &str) -> Vec<String> {
    let stripped = strip_inline_code(text);
    let words: Vec<&str> = stripped
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let next = words.get(i + 1).copied();
        if matches!(w, "MUST" | "SHALL" | "SHOULD") && next == Some("NOT") {
            out.push(format!("{w} NOT"));
            i += 2;
            continue;
        }
        if w == "NOT" && next == Some("RECOMMENDED") {
            out.push("NOT RECOMMENDED".to_string());
            i += 2;
            continue;
        }
        if KEYWORDS.contains(&w) {
            out.push(w.to_string());
        }
        i += 1;
    }
    out
}

fn strip_inline_code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_code = false;
    for c in text.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// Splits `VAP-OPS-012` into (`VAP-OPS`, 12) if well-formed.
fn parse_id(id: &str) -> Option<(&str, u32)> {
    let (prefix, num) = id.rsplit_once('-')?;
    let area = prefix.strip_prefix("VAP-")?;
    if area.is_empty() || !area.chars().all(|c| c.is_ascii_uppercase()) {
        return None;
    }
    if num.len() != 3 || !num.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((prefix, num.parse().ok()?))
}

/// Scans one page. `name` is its file name (e.g. `03-operations.md`).
pub fn scan_page(name: &str, text: &str) -> Page {
    let mut page = Page::default();
    let mut prefix: Option<String> = None;
    let mut prefix_declared = false;
    let mut section = String::new();
    let mut in_fence = false;
    let mut last_num: Option<u32> = None;
    let problem = |page: &mut Page, line: usize, message: String| {
        page.problems.push(Problem {
            page: name.to_string(),
            line,
            message,
        })
    };

    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim_end();
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if line.starts_with('#') {
            section = line.trim_start_matches('#').trim().to_string();
            continue;
        }
        if line.starts_with("> Status:") {
            if let Some(rest) = line.split("Prefix:").nth(1) {
                prefix_declared = true;
                let p = rest.split('·').next().unwrap_or("").trim();
                if p.starts_with("VAP-") {
                    prefix = Some(p.to_string());
                }
            }
            continue;
        }

        // Tombstone: - ~~[VAP-XXX-NNN]~~ withdrawn: ...
        if let Some(rest) = line.strip_prefix("- ~~[") {
            let Some((id, tail)) = rest.split_once("]~~") else {
                problem(&mut page, line_no, "malformed tombstone".into());
                continue;
            };
            if !tail.trim_start().starts_with("withdrawn") {
                problem(
                    &mut page,
                    line_no,
                    format!("tombstone {id} must say `withdrawn: <reason>`"),
                );
            }
            if !keywords(tail).is_empty() {
                problem(
                    &mut page,
                    line_no,
                    format!("tombstone {id} contains a keyword"),
                );
            }
            check_id(
                &mut page,
                name,
                line_no,
                id,
                prefix.as_deref(),
                &mut last_num,
            );
            page.withdrawn.push(id.to_string());
            continue;
        }

        if let Some(rest) = line.strip_prefix("- [VAP-") {
            let rest = format!("VAP-{rest}");
            let Some((id, tail)) = rest.split_once(']') else {
                problem(&mut page, line_no, "unterminated requirement ID".into());
                continue;
            };
            check_id(
                &mut page,
                name,
                line_no,
                id,
                prefix.as_deref(),
                &mut last_num,
            );
            let tail = tail.strip_prefix(' ').unwrap_or(tail);
            let Some(after_paren) = tail.strip_prefix('(') else {
                problem(
                    &mut page,
                    line_no,
                    format!("{id}: missing role, expected `[{id}] (<role>) <sentence>`"),
                );
                continue;
            };
            let Some((role_s, sentence)) = after_paren.split_once(')') else {
                problem(&mut page, line_no, format!("{id}: unterminated role"));
                continue;
            };
            let Some(role) = Role::parse(role_s.trim()) else {
                problem(
                    &mut page,
                    line_no,
                    format!(
                        "{id}: unknown role `{role_s}` (requester, responder, dispatcher, \
                         reporter, agent, peer)"
                    ),
                );
                continue;
            };
            let sentence = sentence.trim().to_string();
            if sentence.is_empty() {
                problem(&mut page, line_no, format!("{id}: empty sentence"));
                continue;
            }
            if !sentence.ends_with('.') {
                problem(
                    &mut page,
                    line_no,
                    format!("{id}: sentence must end with a full stop"),
                );
            }
            let kws = keywords(&sentence);
            match kws.len() {
                0 => problem(
                    &mut page,
                    line_no,
                    format!("{id}: sentence has no RFC 2119 keyword"),
                ),
                1 => page.requirements.push(Requirement {
                    id: id.to_string(),
                    level: Level::of_keyword(&kws[0]),
                    keyword: kws[0].clone(),
                    role,
                    page: name.to_string(),
                    section: section.clone(),
                    line: line_no,
                    sentence,
                }),
                n => problem(
                    &mut page,
                    line_no,
                    format!(
                        "{id}: sentence has {n} RFC 2119 keywords ({}); split it",
                        kws.join(", ")
                    ),
                ),
            }
            continue;
        }

        let kws = keywords(line);
        if !kws.is_empty() {
            problem(
                &mut page,
                line_no,
                format!(
                    "RFC 2119 keyword(s) {} outside a requirement line (add an ID, or use lower case)",
                    kws.join(", ")
                ),
            );
        }
        if strip_inline_code(line).contains("[VAP-") {
            problem(
                &mut page,
                line_no,
                "requirement marker `[VAP-…]` not at the start of a list item".into(),
            );
        }
    }
    if in_fence {
        problem(
            &mut page,
            text.lines().count(),
            "unclosed code fence".into(),
        );
    }
    if (!page.requirements.is_empty() || !page.withdrawn.is_empty()) && prefix.is_none() {
        let msg = if prefix_declared {
            "page has requirements but its status header declares no `Prefix: VAP-XXX`"
        } else {
            "page has requirements but no status header `> Status: … · Prefix: VAP-XXX`"
        };
        problem(&mut page, 1, msg.into());
    }
    if !prefix_declared {
        problem(
            &mut page,
            1,
            "missing status header line `> Status: … · Prefix: …`".into(),
        );
    }
    page
}

fn check_id(
    page: &mut Page,
    name: &str,
    line: usize,
    id: &str,
    prefix: Option<&str>,
    last: &mut Option<u32>,
) {
    let mut push = |message: String| {
        page.problems.push(Problem {
            page: name.to_string(),
            line,
            message,
        })
    };
    let Some((p, n)) = parse_id(id) else {
        push(format!("malformed ID `{id}` (expected VAP-<AREA>-<NNN>)"));
        return;
    };
    if let Some(expected) = prefix {
        if p != expected {
            push(format!("{id}: prefix differs from the page's `{expected}`"));
        }
    }
    if let Some(prev) = *last {
        if n <= prev {
            push(format!(
                "{id}: IDs must increase down the page (previous {prev:03})"
            ));
        }
    }
    *last = Some(n);
}

/// Checks across pages (duplicate IDs) and merges them into a registry.
pub fn check_pages(pages: Vec<Page>) -> Result<Registry, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let mut requirements = Vec::new();
    let mut withdrawn = Vec::new();
    for page in pages {
        problems.extend(page.problems);
        for r in &page.requirements {
            if let Some((p, l)) = seen.get(&r.id) {
                problems.push(Problem {
                    page: r.page.clone(),
                    line: r.line,
                    message: format!("duplicate ID {} (first at spec/{p}:{l})", r.id),
                });
            } else {
                seen.insert(r.id.clone(), (r.page.clone(), r.line));
            }
        }
        for w in &page.withdrawn {
            if seen.contains_key(w) {
                problems.push(Problem {
                    page: String::new(),
                    line: 0,
                    message: format!("withdrawn ID {w} is also used"),
                });
            }
            seen.insert(w.clone(), (String::new(), 0));
        }
        requirements.extend(page.requirements);
        withdrawn.extend(page.withdrawn);
    }
    if problems.is_empty() {
        Ok(Registry {
            spec: "Vertebra Agent Protocol 1.0 (draft)".into(),
            generated_by:
                "VERTEBRA_BLESS=1 cargo test -p vertebra-conformance --test spec_requirements"
                    .into(),
            requirements,
            withdrawn,
        })
    } else {
        Err(problems)
    }
}

/// The numbered pages (`NN-*.md`) of a spec directory, sorted by name.
pub fn page_paths(spec_dir: &Path) -> Result<Vec<PathBuf>, ExtractError> {
    let io = |source| ExtractError::Io {
        path: spec_dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(spec_dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let b = name.as_bytes();
        if name.ends_with(".md")
            && b.len() > 3
            && b[0].is_ascii_digit()
            && b[1].is_ascii_digit()
            && b[2] == b'-'
        {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Extracts the registry from the numbered pages of `spec_dir`.
pub fn extract_registry(spec_dir: &Path) -> Result<Registry, ExtractError> {
    let mut pages = Vec::new();
    for path in page_paths(spec_dir)? {
        let text = std::fs::read_to_string(&path).map_err(|source| ExtractError::Io {
            path: path.clone(),
            source,
        })?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        pages.push(scan_page(&name, &text));
    }
    check_pages(pages).map_err(ExtractError::Invalid)
}

/// Extracts the requirements from the numbered pages of `spec_dir`.
pub fn extract(spec_dir: &Path) -> Result<Vec<Requirement>, ExtractError> {
    extract_registry(spec_dir).map(|r| r.requirements)
}

/// Renders a registry as the committed JSON (pretty, trailing newline).
pub fn to_json(registry: &Registry) -> String {
    let mut s = serde_json::to_string_pretty(registry).expect("registry serializes");
    s.push('\n');
    s
}

/// The registry compiled into this crate (`spec/requirements.json`).
pub fn committed() -> Result<Registry, serde_json::Error> {
    serde_json::from_str(REQUIREMENTS_JSON)
}

/// Looks up one requirement of the compiled-in registry by ID.
pub fn find(id: &str) -> Option<Requirement> {
    committed()
        .ok()?
        .requirements
        .into_iter()
        .find(|r| r.id == id)
}

/// Counts per (page, level) — for status reports.
pub fn counts(requirements: &[Requirement]) -> BTreeMap<String, BTreeMap<Level, usize>> {
    let mut out: BTreeMap<String, BTreeMap<Level, usize>> = BTreeMap::new();
    for r in requirements {
        *out.entry(r.page.clone())
            .or_default()
            .entry(r.level)
            .or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "# T\n\n> Status: Draft · Prefix: VAP-TST · Normative\n\n## 1 Sec\n";

    fn page(body: &str) -> Page {
        scan_page("99-test.md", &format!("{HEAD}{body}"))
    }

    #[test]
    fn extracts_a_requirement() {
        let p = page("- [VAP-TST-001] (responder) A responder MUST NOT crash.\n");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let r = &p.requirements[0];
        assert_eq!(r.id, "VAP-TST-001");
        assert_eq!(r.level, Level::Must);
        assert_eq!(r.keyword, "MUST NOT");
        assert_eq!(r.role, Role::Responder);
        assert_eq!(r.section, "1 Sec");
        assert_eq!(r.line, 6);
        assert_eq!(r.sentence, "A responder MUST NOT crash.");
    }

    #[test]
    fn levels() {
        for (kw, level) in [
            ("SHOULD NOT", Level::Should),
            ("RECOMMENDED", Level::Should),
            ("MAY", Level::May),
            ("OPTIONAL", Level::May),
            ("REQUIRED", Level::Must),
        ] {
            let p = page(&format!("- [VAP-TST-001] (peer) It is {kw} here.\n"));
            assert_eq!(p.requirements[0].level, level, "{kw}");
        }
    }

    #[test]
    fn keyword_without_id_is_a_problem() {
        let p = page("Agents MUST do this.\n");
        assert_eq!(p.problems.len(), 1);
        assert!(p.problems[0].message.contains("outside a requirement"));
    }

    #[test]
    fn lower_case_and_code_are_not_keywords() {
        let p = page("Agents must do `MUST` things.\n\n```text\nMUST\n```\n");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
    }

    #[test]
    fn id_without_keyword_is_a_problem() {
        let p = page("- [VAP-TST-001] (peer) Agents do this.\n");
        assert!(p.problems[0].message.contains("no RFC 2119 keyword"));
    }

    #[test]
    fn two_keywords_is_a_problem() {
        let p = page("- [VAP-TST-001] (peer) Agents MUST do this and MAY do that.\n");
        assert!(p.problems[0].message.contains("2 RFC 2119 keywords"));
    }

    #[test]
    fn missing_or_unknown_role_is_a_problem() {
        let p = page("- [VAP-TST-001] Agents MUST do this.\n");
        assert!(p.problems[0].message.contains("missing role"));
        let p = page("- [VAP-TST-001] (client) Agents MUST do this.\n");
        assert!(p.problems[0].message.contains("unknown role"));
    }

    #[test]
    fn order_and_prefix_are_checked() {
        let p = page(
            "- [VAP-TST-002] (peer) A MUST b.\n- [VAP-TST-001] (peer) C MUST d.\n\
             - [VAP-OPS-003] (peer) E MUST f.\n",
        );
        let msgs: Vec<_> = p.problems.iter().map(|p| p.message.clone()).collect();
        assert!(msgs.iter().any(|m| m.contains("must increase")), "{msgs:?}");
        assert!(
            msgs.iter().any(|m| m.contains("prefix differs")),
            "{msgs:?}"
        );
    }

    #[test]
    fn duplicates_across_pages_are_a_problem() {
        let a = page("- [VAP-TST-001] (peer) A MUST b.\n");
        let b = page("- [VAP-TST-001] (peer) C MUST d.\n");
        let err = check_pages(vec![a, b]).unwrap_err();
        assert!(err[0].message.contains("duplicate ID VAP-TST-001"));
    }

    #[test]
    fn tombstones_reserve_ids() {
        let p = page(
            "- ~~[VAP-TST-001]~~ withdrawn: split into VAP-TST-002.\n\
             - [VAP-TST-002] (peer) A MUST b.\n",
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.withdrawn, vec!["VAP-TST-001".to_string()]);
        let q = page("- [VAP-TST-001] (peer) A MUST b.\n");
        assert!(check_pages(vec![p, q]).is_err());
    }

    #[test]
    fn marker_in_prose_is_a_problem() {
        let p = page("As [VAP-TST-001] says, agents do this.\n");
        assert!(p.problems[0].message.contains("not at the start"));
    }

    #[test]
    fn role_binding() {
        assert!(Role::Agent.applies_to(Role::Reporter));
        assert!(Role::Peer.applies_to(Role::Requester));
        assert!(!Role::Peer.applies_to(Role::Reporter));
        assert!(!Role::Dispatcher.applies_to(Role::Responder));
    }

    #[test]
    fn committed_registry_parses() {
        let reg = committed().expect("spec/requirements.json parses");
        assert!(!reg.requirements.is_empty());
        assert!(find(&reg.requirements[0].id).is_some());
    }
}
