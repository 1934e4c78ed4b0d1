//! The check report: verdict, summary matrix and a trace per failure class,
//! as text for people and JSON for CI. Same world, same bytes.

use crate::checks::{CheckResult, Matrix};
use crate::classes::Classes;
use crate::walk::Hop;
use crate::Simulated;
use kscratch_core::plan::Plan;
use kscratch_core::scenario::Scenario;
use serde::Serialize;
use std::fmt;

/// Failing cases shown per failure in the text report (the JSON lists all).
const EXAMPLES: usize = 5;

/// Writes a trace of one or both legs, each under its own heading.
pub fn write_trace(f: &mut fmt::Formatter<'_>, hops: &[Hop], indent: &str) -> fmt::Result {
    let w = hops.iter().map(|h| h.at.len()).max().unwrap_or(0);
    let mut leg = None;
    for h in hops {
        if leg != Some(h.leg) {
            leg = Some(h.leg);
            writeln!(f, "{indent}{} trace:", h.leg.name())?;
        }
        writeln!(f, "{indent}  {:<w$}  {}", h.at, h.what)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub cluster: String,
    pub version: String,
    pub fingerprint: String,
    pub passed: bool,
    pub apply: ApplySummary,
    pub faults: Vec<String>,
    pub nodes: usize,
    pub pods: usize,
    pub services: usize,
    /// Equivalence classes the pair checks ran over, and the odd nodes checked one by one.
    pub classes: usize,
    pub odd_nodes: Vec<String>,
    pub checks: Vec<CheckResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix: Option<Matrix>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplySummary {
    pub steps: usize,
    pub ok: usize,
    pub changed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Failed steps and why (the first skipped steps follow from these).
    pub failures: Vec<StepFailure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepFailure {
    pub step: String,
    pub error: String,
}

impl Report {
    pub fn new(
        s: &Scenario,
        plan: &Plan,
        sim: &Simulated,
        classes: &Classes,
        checks: Vec<CheckResult>,
        matrix: Option<Matrix>,
    ) -> Report {
        let a = &sim.apply;
        let failures = plan
            .steps
            .iter()
            .zip(&a.outcomes)
            .filter_map(|(st, o)| match o {
                kscratch_core::exec::Outcome::Failed { error } => Some(StepFailure {
                    step: plan.step_id(st),
                    error: error.message.clone(),
                }),
                _ => None,
            })
            .collect::<Vec<_>>();
        let apply = ApplySummary {
            steps: plan.steps.len(),
            ok: a.count("ok"),
            changed: a.count("changed"),
            failed: a.count("failed"),
            skipped: a.count("skipped"),
            failures,
        };
        let passed =
            apply.failed == 0 && apply.skipped == 0 && checks.iter().all(CheckResult::passed);
        Report {
            cluster: s.name.clone(),
            version: s.version.to_string(),
            fingerprint: kscratch_core::plan::fingerprint(s, plan),
            passed,
            apply,
            faults: sim.faults.iter().map(|f| f.to_string()).collect(),
            nodes: sim.world.nodes.len(),
            pods: sim.world.pods.len(),
            services: sim.prepared.services.len(),
            classes: classes.classes.len(),
            odd_nodes: classes
                .odd
                .iter()
                .map(|&n| sim.world.nodes[n].name.clone())
                .collect(),
            checks,
            matrix,
        }
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("the report serializes");
        s.push('\n');
        s
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kscratch check: cluster `{}`, Kubernetes {}",
            self.cluster, self.version
        )?;
        writeln!(f, "plan {}", self.fingerprint)?;
        if !self.faults.is_empty() {
            writeln!(f, "faults: {}", self.faults.join(", "))?;
        }
        let a = &self.apply;
        writeln!(
            f,
            "apply on the simulator: {} steps — {} changed, {} ok, {} failed, {} skipped",
            a.steps, a.changed, a.ok, a.failed, a.skipped
        )?;
        for fl in &a.failures {
            writeln!(f, "  FAILED {}: {}", fl.step, fl.error)?;
        }
        let odd = if self.odd_nodes.is_empty() {
            String::new()
        } else {
            format!("; checked one by one: {}", self.odd_nodes.join(", "))
        };
        writeln!(
            f,
            "cluster: {} nodes in {} equivalence classes{odd}; {} pods, {} Services",
            self.nodes, self.classes, self.pods, self.services
        )?;
        writeln!(f)?;
        writeln!(f, "checks:")?;
        for c in &self.checks {
            let status = if c.passed() { "PASS" } else { "FAIL" };
            let counts = if c.passed() {
                format!("{} probes", c.probes)
            } else {
                format!("{} of {} probes failed", c.failed, c.probes)
            };
            writeln!(f, "  {status}  {:<50} {counts}", c.title)?;
            for n in &c.notes {
                writeln!(f, "        note: {n}")?;
            }
        }
        if let Some(m) = &self.matrix {
            writeln!(f)?;
            writeln!(
                f,
                "pod-to-pod matrix (row: from, column: to; `.` connects, `X` the request fails, `R` the reply fails, `-` not probed):"
            )?;
            let w = m.nodes.iter().map(|n| n.len()).max().unwrap_or(4) + 3;
            write!(f, "  {:w$}", "")?;
            for (j, _) in m.nodes.iter().enumerate() {
                write!(f, " {j:>2}")?;
            }
            writeln!(f)?;
            for (i, row) in m.cells.iter().enumerate() {
                write!(f, "  {:<w$}", format!("{i:>2} {}", m.nodes[i]))?;
                for cell in row {
                    write!(f, " {:>2}", cell.symbol())?;
                }
                writeln!(f)?;
            }
        }
        let failing: Vec<&CheckResult> = self.checks.iter().filter(|c| !c.passed()).collect();
        if !failing.is_empty() {
            writeln!(f)?;
            writeln!(f, "failures:")?;
            for c in failing {
                for fl in &c.failures {
                    let leg = fl
                        .leg
                        .map(|l| format!(" ({} leg)", l.name()))
                        .unwrap_or_default();
                    writeln!(f, "  [{}]{leg} {}: {}", c.kind.name(), fl.first, fl.reason)?;
                    let shown: Vec<String> = fl
                        .cases
                        .iter()
                        .flat_map(|g| g.first(EXAMPLES))
                        .take(EXAMPLES)
                        .collect();
                    writeln!(
                        f,
                        "    {} failing case{} like it: {}{}",
                        fl.count,
                        if fl.count == 1 { "" } else { "s" },
                        shown.join(", "),
                        if fl.count > shown.len() { ", ..." } else { "" }
                    )?;
                    if !fl.trace.is_empty() {
                        write_trace(f, &fl.trace, "    ")?;
                    }
                }
            }
        }
        writeln!(f)?;
        let failed = self.checks.iter().filter(|c| !c.passed()).count();
        if self.passed {
            writeln!(
                f,
                "verdict: PASS — the cluster conforms to the Kubernetes network model"
            )
        } else if a.failed + a.skipped > 0 && failed == 0 {
            writeln!(
                f,
                "verdict: FAIL — {} plan steps failed and {} were skipped on the simulator",
                a.failed, a.skipped
            )
        } else {
            writeln!(
                f,
                "verdict: FAIL — {failed} of {} checks failed",
                self.checks.len()
            )
        }
    }
}
