//! The check report for CI test reporters (JUnit XML) and for people (one
//! self-contained HTML page), built on `kscratch_sim::report::Report`.
//! Pure: report in, text out, the same bytes for the same report.

use kscratch_core::diag::Code;
use kscratch_sim::checks::{CaseGroup, Cell, CheckKind, CheckResult, Failure, Matrix, Pairing};
use kscratch_sim::report::Report;
use kscratch_sim::walk::Hop;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The stable code of each failure kind (listed in `docs/codes.md`).
pub fn check_code(kind: CheckKind) -> &'static str {
    match kind {
        CheckKind::PodToPod => Code::CheckPodToPod,
        CheckKind::NodeToPod => Code::CheckNodeToPod,
        CheckKind::Services => Code::CheckServices,
        CheckKind::Egress => Code::CheckEgress,
        CheckKind::Apiserver => Code::CheckApiserver,
        CheckKind::Mtu => Code::CheckMtu,
    }
    .as_str()
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // XML 1.0 forbids most control characters, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

fn trace_text(hops: &[Hop]) -> String {
    let w = hops.iter().map(|h| h.at.len()).max().unwrap_or(0);
    let mut s = String::new();
    let mut leg = None;
    for h in hops {
        if leg != Some(h.leg) {
            leg = Some(h.leg);
            let _ = writeln!(s, "{} trace:", h.leg.name());
        }
        let _ = writeln!(s, "  {:<w$}  {}", h.at, h.what);
    }
    s
}

fn cases_text(groups: &[CaseGroup]) -> String {
    let mut s = String::new();
    for g in groups {
        match g.pairing {
            Pairing::SameNode => {
                let _ = writeln!(s, "each on its own node: {}", g.from.join(", "));
            }
            Pairing::EachToEach => {
                let _ = writeln!(s, "from {} to {}", g.from.join(", "), g.to.join(", "));
            }
        }
    }
    s
}

fn failure_body(fl: &Failure) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}: {}", fl.first, fl.reason);
    let _ = writeln!(
        s,
        "{} failing {} like it:",
        fl.count,
        if fl.count == 1 { "case" } else { "cases" }
    );
    s.push_str(&cases_text(&fl.cases));
    s.push_str(&trace_text(&fl.trace));
    s
}

/// JUnit XML: one testsuite per check, one testcase per class of probes
/// (each way of failing is one class, the probes that pass are another),
/// a `<failure>` with the reason, every failing case and the trace. The plan
/// on the simulator is a suite of its own when a step failed.
pub fn junit(r: &Report) -> String {
    let mut suites = String::new();
    let (mut total, mut failed_total) = (0usize, 0usize);
    for c in &r.checks {
        let (body, tests, failures) = junit_suite(c);
        total += tests;
        failed_total += failures;
        let _ = write!(
            suites,
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{}\" time=\"0\">\n{body}",
            xml_escape(c.kind.name()),
            usize::from(c.probes == 0),
        );
        if !c.notes.is_empty() {
            let _ = writeln!(
                suites,
                "    <system-out>{}</system-out>",
                xml_escape(&c.notes.join("\n"))
            );
        }
        suites.push_str("  </testsuite>\n");
    }
    if !r.apply.failures.is_empty() {
        let n = r.apply.failures.len();
        total += n;
        failed_total += n;
        let _ = writeln!(
            suites,
            "  <testsuite name=\"apply\" tests=\"{n}\" failures=\"{n}\" errors=\"0\" skipped=\"0\" time=\"0\">"
        );
        for f in &r.apply.failures {
            let _ = writeln!(
                suites,
                "    <testcase classname=\"kscratch.apply\" name=\"{}\" time=\"0\">\n      <failure type=\"{}\" message=\"{}\">{}</failure>\n    </testcase>",
                xml_escape(&f.step),
                Code::ApplyStepFailed,
                xml_escape(&f.error),
                xml_escape(&f.error)
            );
        }
        suites.push_str("  </testsuite>\n");
    }
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"kscratch check {}\" tests=\"{total}\" failures=\"{failed_total}\" errors=\"0\" time=\"0\">",
        xml_escape(&r.cluster)
    );
    s.push_str(&suites);
    s.push_str("</testsuites>\n");
    s
}

fn junit_suite(c: &CheckResult) -> (String, usize, usize) {
    let class = format!("kscratch.{}", c.kind.name());
    let mut body = String::new();
    let mut tests = 0;
    for fl in &c.failures {
        tests += 1;
        let leg = fl
            .leg
            .map(|l| format!(" ({} leg)", l.name()))
            .unwrap_or_default();
        let _ = writeln!(
            body,
            "    <testcase classname=\"{}\" name=\"{}{}\" time=\"0\">\n      <failure type=\"{}\" message=\"{}\">{}</failure>\n    </testcase>",
            xml_escape(&class),
            xml_escape(&fl.first),
            xml_escape(&leg),
            check_code(c.kind),
            xml_escape(&fl.reason),
            xml_escape(&failure_body(fl)),
        );
    }
    let failures = tests;
    let passing = c.probes.saturating_sub(c.failed);
    if passing > 0 {
        tests += 1;
        let _ = writeln!(
            body,
            "    <testcase classname=\"{}\" name=\"{} of {} probes pass\" time=\"0\"/>",
            xml_escape(&class),
            passing,
            c.probes
        );
    } else if c.probes == 0 {
        tests += 1;
        let why = c
            .notes
            .first()
            .cloned()
            .unwrap_or_else(|| "nothing to probe".into());
        let _ = writeln!(
            body,
            "    <testcase classname=\"{}\" name=\"no probes\" time=\"0\">\n      <skipped message=\"{}\"/>\n    </testcase>",
            xml_escape(&class),
            xml_escape(&why)
        );
    }
    (body, tests, failures)
}

/// The nodes of the matrix grouped by their verdict pattern: nodes whose row
/// and column are the same (up to the diagonal) share a group, so a 5,000-node
/// cluster that fails in one place shows as a few groups, each expandable.
fn matrix_groups(m: &Matrix) -> Vec<Vec<usize>> {
    let n = m.nodes.len();
    let mut by_pattern: BTreeMap<Vec<&'static str>, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        // The node's row, its column and its diagonal cell, in node order.
        let mut key = Vec::with_capacity(2 * n + 1);
        key.extend(m.cells[i].iter().map(|c| cell_class(*c)));
        key.extend((0..n).map(|j| cell_class(m.cells[j][i])));
        key.push(cell_class(m.cells[i][i]));
        by_pattern.entry(key).or_default().push(i);
    }
    let mut groups: Vec<Vec<usize>> = by_pattern.into_values().collect();
    groups.sort_by_key(|g| g[0]);
    groups
}

fn cell_class(c: Cell) -> &'static str {
    match c {
        Cell::Reaches => "reaches",
        Cell::RequestFails => "request-fails",
        Cell::ReplyFails => "reply-fails",
        Cell::Untested => "untested",
    }
}

fn cell_words(c: Cell) -> &'static str {
    match c {
        Cell::Reaches => "connects",
        Cell::RequestFails => "the request fails",
        Cell::ReplyFails => "the reply fails",
        Cell::Untested => "not probed",
    }
}

/// The worst cell of a block: a failure shows through any number of passes.
fn worst(cells: impl Iterator<Item = Cell>) -> Cell {
    let rank = |c: Cell| match c {
        Cell::RequestFails => 3,
        Cell::ReplyFails => 2,
        Cell::Reaches => 1,
        Cell::Untested => 0,
    };
    cells.max_by_key(|c| rank(*c)).unwrap_or(Cell::Untested)
}

/// Nodes up to which the full grid is shown open; above, it is folded.
const OPEN_GRID: usize = 40;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1.pass{color:#17692e}h1.fail{color:#b3261e}\
table{border-collapse:collapse}td,th{padding:2px 6px}\
.checks td{border-bottom:1px solid #ddd}.PASS{color:#17692e;font-weight:bold}.FAIL{color:#b3261e;font-weight:bold}\
.grid td.cell{width:14px;height:14px;padding:0;border:1px solid #fff;text-align:center;font-size:10px}\
.grid th{font-weight:normal;font-size:11px;text-align:right;white-space:nowrap}\
.grid th.col{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left}\
.reaches{background:#6cc07a}.request-fails{background:#d9453b;color:#fff}.reply-fails{background:#f0a030}.untested{background:#ccc}\
.legend span{display:inline-block;padding:0 6px;margin-right:6px}\
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}\
details{margin:4px 0}summary{cursor:pointer}";

fn h(s: &str) -> String {
    xml_escape(s)
}

/// One self-contained HTML page: no scripts, no fonts, no network. The
/// verdict, each check, the pod-to-pod matrix by group (and node by node,
/// folded above 40 nodes), each failure's trace folded.
pub fn html(r: &Report) -> String {
    let verdict = if r.passed { "PASS" } else { "FAIL" };
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>kscratch check {}: {verdict}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        h(&r.cluster)
    );
    let _ = writeln!(
        s,
        "<h1 id=\"verdict\" class=\"{}\">kscratch check: {verdict}</h1>",
        verdict.to_ascii_lowercase()
    );
    let _ = writeln!(
        s,
        "<p>Cluster <b>{}</b>, Kubernetes {}; plan <code>{}</code></p>",
        h(&r.cluster),
        h(&r.version),
        h(&r.fingerprint)
    );
    if !r.faults.is_empty() {
        let _ = writeln!(
            s,
            "<p>What-if faults: <code>{}</code></p>",
            h(&r.faults.join(", "))
        );
    }
    let a = &r.apply;
    let _ = writeln!(
        s,
        "<p>Plan on the simulator: {} steps, {} changed, {} ok, {} failed, {} skipped. {} nodes in {} equivalence classes; {} pods, {} Services.</p>",
        a.steps, a.changed, a.ok, a.failed, a.skipped, r.nodes, r.classes, r.pods, r.services
    );
    for f in &a.failures {
        let _ = writeln!(
            s,
            "<p class=\"FAIL\">step {} failed: {}</p>",
            h(&f.step),
            h(&f.error)
        );
    }

    s.push_str("<h2>Checks</h2>\n<table class=\"checks\">\n");
    for c in &r.checks {
        let status = if c.passed() { "PASS" } else { "FAIL" };
        let counts = if c.passed() {
            format!("{} probes", c.probes)
        } else {
            format!("{} of {} probes failed", c.failed, c.probes)
        };
        let _ = writeln!(
            s,
            "<tr id=\"check-{}\"><td class=\"{status}\">{status}</td><td>{}</td><td>{counts}</td></tr>",
            c.kind.name(),
            h(c.title)
        );
        for n in &c.notes {
            let _ = writeln!(
                s,
                "<tr><td></td><td colspan=\"2\"><i>note: {}</i></td></tr>",
                h(n)
            );
        }
    }
    s.push_str("</table>\n");

    if let Some(m) = &r.matrix {
        html_matrix(&mut s, m);
    }

    let failing: Vec<&CheckResult> = r.checks.iter().filter(|c| !c.passed()).collect();
    if !failing.is_empty() {
        s.push_str("<h2>Failures</h2>\n");
        for c in failing {
            for fl in &c.failures {
                let leg = fl
                    .leg
                    .map(|l| format!(" ({} leg)", l.name()))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "<details class=\"failure\" data-check=\"{}\"><summary><b>[{}]{}</b> {}: {} <i>({} failing {})</i></summary>\n<pre>{}</pre>\n<pre>{}</pre>\n</details>",
                    c.kind.name(),
                    c.kind.name(),
                    h(&leg),
                    h(&fl.first),
                    h(&fl.reason),
                    fl.count,
                    if fl.count == 1 { "case" } else { "cases" },
                    h(&cases_text(&fl.cases)),
                    h(&trace_text(&fl.trace)),
                );
            }
        }
    }
    s.push_str("</body>\n</html>\n");
    s
}

fn html_matrix(s: &mut String, m: &Matrix) {
    let n = m.nodes.len();
    s.push_str("<h2>Pod-to-pod matrix</h2>\n<p class=\"legend\">Row: from, column: to. <span class=\"reaches\">connects</span><span class=\"request-fails\">request fails</span><span class=\"reply-fails\">reply fails</span><span class=\"untested\">not probed</span></p>\n");
    let groups = matrix_groups(m);
    let _ = writeln!(
        s,
        "<h3>By group ({} {} of nodes with the same verdicts)</h3>",
        groups.len(),
        if groups.len() == 1 { "group" } else { "groups" }
    );
    let label = |g: &[usize]| {
        if g.len() == 1 {
            m.nodes[g[0]].clone()
        } else {
            format!("{} and {} more", m.nodes[g[0]], g.len() - 1)
        }
    };
    s.push_str("<table class=\"grid groups\">\n<tr><th></th>");
    for (j, g) in groups.iter().enumerate() {
        let _ = write!(s, "<th class=\"col\">G{j} {}</th>", h(&label(g)));
    }
    s.push_str("</tr>\n");
    for (i, gi) in groups.iter().enumerate() {
        let _ = write!(s, "<tr><th>G{i} {}</th>", h(&label(gi)));
        for gj in &groups {
            let c = worst(
                gi.iter()
                    .flat_map(|&a| gj.iter().map(move |&b| m.cells[a][b])),
            );
            let _ = write!(
                s,
                "<td class=\"cell {}\" title=\"group {} → group {}: {}\"></td>",
                cell_class(c),
                h(&label(gi)),
                h(&label(gj)),
                cell_words(c)
            );
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    for (i, g) in groups.iter().enumerate() {
        let names: Vec<&str> = g.iter().map(|&k| m.nodes[k].as_str()).collect();
        let _ = writeln!(
            s,
            "<details class=\"group\"><summary>G{i}: {}</summary><p>{}</p></details>",
            crate::plural(g.len(), "node", "nodes"),
            h(&names.join(", "))
        );
    }
    let open = if n <= OPEN_GRID { " open" } else { "" };
    let _ = writeln!(
        s,
        "<details class=\"nodes\"{open}><summary>Node by node ({n} × {n})</summary>"
    );
    s.push_str("<table class=\"grid full\">\n<tr><th></th>");
    for name in &m.nodes {
        let _ = write!(s, "<th class=\"col\">{}</th>", h(name));
    }
    s.push_str("</tr>\n");
    for (i, row) in m.cells.iter().enumerate() {
        let _ = write!(s, "<tr><th>{}</th>", h(&m.nodes[i]));
        for (j, c) in row.iter().enumerate() {
            let _ = write!(
                s,
                "<td class=\"cell {}\" data-from=\"{}\" data-to=\"{}\" title=\"{} → {}: {}\">{}</td>",
                cell_class(*c),
                h(&m.nodes[i]),
                h(&m.nodes[j]),
                h(&m.nodes[i]),
                h(&m.nodes[j]),
                cell_words(*c),
                if *c == Cell::Reaches { "" } else { c.symbol() }
            );
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n</details>\n");
}
