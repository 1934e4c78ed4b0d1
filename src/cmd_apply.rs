//! `kscratch apply SCENARIO`: run the plan on real machines over SSH.
//!
//! Every step is check-then-apply, so a second apply on a converged cluster
//! reports 0 changed. Progress goes to a journal next to the scenario
//! (`x.journal.jsonl`: one JSON line per finished step with its id, outcome
//! and time, never a secret); `--resume` reads the interrupted run's journal,
//! re-checks every step (the completed ones are checked, not skipped
//! blindly) and reports what it re-checked. Host keys are verified against
//! known_hosts before anything runs on any node.
//!
//! Exit status: 0 every step ok, changed or not applicable here; 1 a step
//! failed or a host key was refused; 2 invalid input.

use crate::load;
use indicatif::{ProgressBar, ProgressStyle};
use kscratch_backends::shell_render::Rendered;
use kscratch_backends::ssh::{SshConfig, SshError};
use kscratch_backends::ssh_backend::{state_dir, SshBackend, SshBackendOptions};
use kscratch_core::exec::{execute, ExecOptions, Observer, Outcome, Report, StepCx};
use kscratch_core::plan::{Plan, StepRef, Target};
use kscratch_core::Scenario;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    scenario: crate::ScenarioArgs,
    /// Check every step on the nodes and print, per node, what would change
    /// and the exact commands and files it would take; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Continue an interrupted or failed apply: every step is checked again
    /// (completed steps are re-checked, not skipped blindly).
    #[arg(long)]
    resume: bool,
    /// Trust an unknown host key on first use and record it (hashed) in known_hosts.
    #[arg(long)]
    accept_new_host_keys: bool,
    /// The OpenSSH known_hosts file host keys are verified against [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Steps in flight at once, over all nodes.
    #[arg(long, value_name = "N", default_value_t = 16)]
    parallel: usize,
    /// Steps in flight at once on one node.
    #[arg(long, value_name = "N", default_value_t = 1)]
    per_node: usize,
    /// Seconds one remote command may take (health waits get their own timeout on top).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    step_timeout: u64,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum JournalLine {
    Start {
        time_ms: u64,
        plan: String,
        steps: usize,
        resume: bool,
    },
    Step {
        time_ms: u64,
        step: String,
        outcome: String,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    End {
        time_ms: u64,
        ok: usize,
        changed: usize,
        failed: usize,
        skipped: usize,
    },
}

/// `scenarios/x.yaml` → `scenarios/x.journal.jsonl`.
pub fn journal_path(scenario: &Path) -> PathBuf {
    let stem = scenario
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    scenario.with_file_name(format!("{stem}.journal.jsonl"))
}

pub fn run(args: ApplyArgs) -> Result<ExitCode, load::Error> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let path = &args.scenario.scenario;
    let loaded = load::scenario(path, args.scenario.locked)?;
    eprint!("{}", loaded.warnings);
    let scenario = loaded.scenario;
    let plan = kscratch_core::plan::plan(&scenario);
    let known_hosts = match &args.known_hosts {
        Some(p) => p.clone(),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".ssh/known_hosts"),
            None => {
                return Err(load::Error::Apply(
                    "HOME is not set: pass --known-hosts FILE".into(),
                ))
            }
        },
    };
    let scenario_dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut ssh = SshConfig::new(known_hosts);
    ssh.accept_new_host_keys = args.accept_new_host_keys;
    let opts = SshBackendOptions {
        ssh,
        scenario_dir,
        state_dir: state_dir(path, &scenario.name),
        step_timeout: Duration::from_secs(args.step_timeout.max(1)),
        dry_run: args.dry_run,
    };
    let exec_opts = ExecOptions {
        max_parallel: args.parallel.max(1),
        per_target: args.per_node.max(1),
        dry_run: args.dry_run,
        ..ExecOptions::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| load::Error::Apply(format!("cannot start the async runtime: {e}")))?;
    let backend = SshBackend::new(&scenario, &plan, opts);

    let journal = journal_path(path);
    let previous = if args.resume {
        read_journal(&journal)
    } else {
        Vec::new()
    };
    if args.resume && previous.is_empty() {
        eprintln!(
            "note: no journal at {}: nothing to resume, applying from the start",
            journal.display()
        );
    }
    let started = Instant::now();
    let outcome = rt.block_on(async {
        // Host keys first, on every node: a refused key stops everything before any command runs.
        let refused: Vec<(String, SshError)> = backend
            .connect_all()
            .await
            .into_iter()
            .filter(|(_, e)| {
                matches!(
                    e,
                    SshError::HostKey { .. } | SshError::KeyFile(_) | SshError::BadKey { .. }
                )
            })
            .collect();
        if !refused.is_empty() {
            return Err(refused);
        }
        let mut obs = ApplyObserver::new(
            &plan,
            if args.dry_run { None } else { Some(&journal) },
            args.resume,
        );
        let report = execute(&plan, &scenario, &backend, &exec_opts, &mut obs).await;
        obs.finish(&report);
        backend.pool().disconnect_all().await;
        Ok(report)
    });
    let report = match outcome {
        Ok(r) => r,
        Err(refused) => {
            for (node, e) in refused {
                eprintln!("error: {node}: {e}");
            }
            eprintln!("nothing was run on any node");
            return Ok(ExitCode::from(1));
        }
    };
    let wall = started.elapsed();
    if args.dry_run {
        crate::out(&dry_run_listing(&plan, &scenario, &backend, &report));
    }
    crate::out(&summary(&plan, &report, wall, &backend));
    if args.resume && !previous.is_empty() {
        crate::out(&resume_note(&plan, &report, &previous));
    }
    let failed = report
        .outcomes
        .iter()
        .any(|o| matches!(o, Outcome::Failed { .. }));
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Journal writer and progress display.
struct ApplyObserver {
    journal: Option<std::fs::File>,
    bar: Option<ProgressBar>,
    started: BTreeMap<StepRef, Instant>,
}

impl ApplyObserver {
    fn new(plan: &Plan, journal: Option<&Path>, resume: bool) -> ApplyObserver {
        let file = match journal {
            None => None,
            Some(p) => {
                let mut o = std::fs::OpenOptions::new();
                o.create(true);
                if resume {
                    o.append(true);
                } else {
                    o.write(true).truncate(true);
                }
                match o.open(p) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        eprintln!("warning: cannot write the journal {}: {e}; --resume will not know this run", p.display());
                        None
                    }
                }
            }
        };
        let interactive = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bar = interactive.then(|| {
            let b = ProgressBar::new(plan.steps.len() as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
            ) {
                b.set_style(style);
            }
            b
        });
        let mut obs = ApplyObserver {
            journal: file,
            bar,
            started: BTreeMap::new(),
        };
        obs.write(&JournalLine::Start {
            time_ms: now_ms(),
            plan: kscratch_core::plan::fingerprint(plan),
            steps: plan.steps.len(),
            resume,
        });
        obs
    }

    fn write(&mut self, line: &JournalLine) {
        if let Some(f) = &mut self.journal {
            if let Ok(text) = serde_json::to_string(line) {
                // One write per line, flushed: a killed process leaves whole lines.
                let _ = f.write_all(format!("{text}\n").as_bytes());
                let _ = f.flush();
            }
        }
    }

    fn finish(&mut self, report: &Report) {
        self.write(&JournalLine::End {
            time_ms: now_ms(),
            ok: report.count("ok") + report.count("would-change"),
            changed: report.count("changed"),
            failed: report.count("failed"),
            skipped: report.count("skipped"),
        });
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Observer for ApplyObserver {
    fn started(&mut self, plan: &Plan, step: StepRef) {
        self.started.insert(step, Instant::now());
        if let Some(b) = &self.bar {
            b.set_message(plan.step_id(&plan.steps[step as usize]));
        }
    }

    fn finished(&mut self, plan: &Plan, step: StepRef, outcome: &Outcome) {
        let id = plan.step_id(&plan.steps[step as usize]);
        let duration = self
            .started
            .remove(&step)
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let detail = match outcome {
            Outcome::Failed { error } => Some(error.message.clone()),
            Outcome::Skipped { reason } => Some(reason.clone()),
            _ => None,
        };
        match outcome {
            Outcome::Failed { error } => {
                tracing::error!(step = %id, kind = ?error.kind, "{}", error.message);
                let line = format!("failed: {}", error.message);
                match &self.bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            o => {
                tracing::info!(step = %id, outcome = o.name(), duration_ms = duration.as_millis() as u64, "step finished")
            }
        }
        self.write(&JournalLine::Step {
            time_ms: now_ms(),
            step: id,
            outcome: outcome.name().into(),
            duration_ms: duration.as_millis() as u64,
            detail,
        });
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The lines of the last run in the journal (from its last `start`).
pub fn read_journal(path: &Path) -> Vec<JournalLine> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let lines: Vec<JournalLine> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let last_start = lines
        .iter()
        .rposition(|l| matches!(l, JournalLine::Start { .. }))
        .unwrap_or(0);
    lines[last_start..].to_vec()
}

/// What `--resume` re-checked: the steps the interrupted run had completed,
/// and how they stood now.
fn resume_note(plan: &Plan, report: &Report, previous: &[JournalLine]) -> String {
    let mut done: BTreeMap<&str, &str> = BTreeMap::new();
    let mut interrupted = true;
    for l in previous {
        match l {
            JournalLine::Step { step, outcome, .. } => {
                done.insert(step.as_str(), outcome.as_str());
            }
            JournalLine::End { .. } => interrupted = false,
            JournalLine::Start { .. } => {}
        }
    }
    let mut rechecked = 0;
    let mut drifted = Vec::new();
    let mut finished_now = 0;
    for (s, o) in plan.steps.iter().zip(&report.outcomes) {
        let id = plan.step_id(s);
        match done.get(id.as_str()) {
            Some(&("ok" | "changed")) => {
                rechecked += 1;
                if o.name() == "changed" {
                    drifted.push(id);
                }
            }
            _ => {
                if o.succeeded() {
                    finished_now += 1;
                }
            }
        }
    }
    let mut out = String::new();
    let completed = done
        .values()
        .filter(|o| matches!(**o, "ok" | "changed"))
        .count();
    let _ = writeln!(
        out,
        "resume: the previous run {} with {completed} of {} steps completed; those {rechecked} were re-checked ({} still in place, {} changed again), {finished_now} other steps completed now",
        if interrupted { "was interrupted" } else { "had ended" },
        plan.steps.len(),
        rechecked - drifted.len(),
        drifted.len()
    );
    for d in drifted {
        let _ = writeln!(out, "  changed again: {d}");
    }
    out
}

/// The per-node table, the skip reasons, the state of nodes after a
/// failure and the SSH figures.
fn summary(plan: &Plan, report: &Report, wall: Duration, backend: &SshBackend) -> String {
    let mut out = String::new();
    let per = report.per_target(plan);
    let _ = writeln!(
        out,
        "{:<16} {:>5} {:>8} {:>7} {:>8}",
        "target", "ok", "changed", "failed", "skipped"
    );
    for (t, counts) in &per {
        let c = |n: &str| counts.get(n).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<16} {:>5} {:>8} {:>7} {:>8}",
            plan.target_name(*t),
            c("ok") + c("would-change"),
            c("changed"),
            c("failed"),
            c("skipped")
        );
    }
    let _ = writeln!(
        out,
        "total: {} ok, {} changed, {} failed, {} skipped{} in {:.1}s",
        report.count("ok"),
        report.count("changed"),
        report.count("failed"),
        report.count("skipped"),
        if report.count("would-change") > 0 {
            format!(", {} would change", report.count("would-change"))
        } else {
            String::new()
        },
        wall.as_secs_f64()
    );
    // Root causes of skips (not "dependency ... was skipped"), with how many steps they took along.
    let mut roots: Vec<(String, String)> = Vec::new();
    let mut by_dep = 0;
    for (s, o) in plan.steps.iter().zip(&report.outcomes) {
        if let Outcome::Skipped { reason } = o {
            if reason.starts_with("dependency ") {
                by_dep += 1;
            } else {
                roots.push((plan.step_id(s), reason.clone()));
            }
        }
    }
    if !roots.is_empty() {
        let _ = writeln!(
            out,
            "not applicable here ({} steps, and {by_dep} steps that depend on them):",
            roots.len()
        );
        for (id, r) in &roots {
            let _ = writeln!(out, "  {id}: {r}");
        }
    }
    if report.count("failed") > 0 {
        let _ = writeln!(out, "state of each node:");
        for t in per.keys() {
            let mut done = 0;
            let mut failed = Vec::new();
            let mut not_reached = Vec::new();
            for (s, o) in plan
                .steps
                .iter()
                .zip(&report.outcomes)
                .filter(|(s, _)| s.target == *t)
            {
                match o {
                    Outcome::Ok | Outcome::Changed | Outcome::WouldChange => done += 1,
                    Outcome::Failed { error } => {
                        failed.push(format!("{}: {}", plan.step_id(s), error.message))
                    }
                    Outcome::Skipped { reason } if reason.starts_with("dependency ") => {
                        not_reached.push(plan.step_id(s))
                    }
                    Outcome::Skipped { .. } => {}
                }
            }
            let _ = writeln!(
                out,
                "  {}: {done} steps done, {} failed, {} not reached",
                plan.target_name(*t),
                failed.len(),
                not_reached.len()
            );
            for f in failed {
                let _ = writeln!(out, "    FAILED {f}");
            }
            if !not_reached.is_empty() {
                let _ = writeln!(out, "    not reached: {}", not_reached.join(", "));
            }
        }
        let _ = writeln!(out, "fix the failure and run again with --resume: every step is re-checked, finished ones are not redone");
    }
    let stats = backend.pool().stats();
    let commands: u64 = stats.values().map(|s| s.commands).sum();
    let connects: u64 = stats.values().map(|s| s.connects).sum();
    let remote_steps = plan
        .steps
        .iter()
        .filter(|s| matches!(s.target, Target::Node(_)))
        .count()
        .max(1);
    if let Some((node, busiest)) = stats.iter().max_by_key(|(_, s)| s.busy) {
        let _ = writeln!(
            out,
            "ssh: {connects} connections, {commands} remote commands ({:.2} per node step); longest node {node}: {:.1}s in commands, wall time {:.1}s",
            commands as f64 / remote_steps as f64,
            busiest.busy.as_secs_f64(),
            wall.as_secs_f64()
        );
    }
    out
}

/// Per node, what the dry run found and what apply would run.
fn dry_run_listing(
    plan: &Plan,
    scenario: &Scenario,
    backend: &SshBackend,
    report: &Report,
) -> String {
    let mut by_target: BTreeMap<Target, Vec<usize>> = BTreeMap::new();
    for (i, s) in plan.steps.iter().enumerate() {
        by_target.entry(s.target).or_default().push(i);
    }
    let mut out = String::new();
    for (t, steps) in by_target {
        let _ = writeln!(out, "== {} ==", plan.target_name(t));
        for i in steps {
            let s = &plan.steps[i];
            let id = plan.step_id(s);
            let o = &report.outcomes[i];
            match o {
                Outcome::WouldChange => {
                    let _ = writeln!(out, "[would change] {id}");
                    let cx = StepCx {
                        plan,
                        scenario,
                        index: i as StepRef,
                        step: s,
                    };
                    match backend.render_step(&cx) {
                        Ok(Rendered::Remote(r)) => {
                            for l in r.apply.text.lines() {
                                let _ = writeln!(out, "    {l}");
                            }
                            if let Some(sum) = r.apply.stdin_summary() {
                                let _ = writeln!(out, "    ({sum})");
                            }
                        }
                        Ok(Rendered::Local(what)) => {
                            let _ = writeln!(out, "    on this machine: {what}");
                        }
                        Ok(Rendered::NotApplicable(r)) => {
                            let _ = writeln!(out, "    not applicable: {r}");
                        }
                        Err(e) => {
                            let _ = writeln!(out, "    cannot render: {e}");
                        }
                    }
                }
                Outcome::Skipped { reason } => {
                    let _ = writeln!(out, "[skipped] {id}: {reason}");
                }
                Outcome::Failed { error } => {
                    let _ = writeln!(out, "[failed] {id}: {}", error.message);
                }
                other => {
                    let _ = writeln!(out, "[{}] {id}", other.name());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_round_trip_and_the_last_run_is_read() {
        let dir = std::env::temp_dir().join(format!("kscratch-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.journal.jsonl");
        let lines = [
            JournalLine::Start {
                time_ms: 1,
                plan: "sha256:a".into(),
                steps: 3,
                resume: false,
            },
            JournalLine::Step {
                time_ms: 2,
                step: "n/a".into(),
                outcome: "changed".into(),
                duration_ms: 1,
                detail: None,
            },
            JournalLine::Start {
                time_ms: 3,
                plan: "sha256:a".into(),
                steps: 3,
                resume: true,
            },
            JournalLine::Step {
                time_ms: 4,
                step: "n/b".into(),
                outcome: "failed".into(),
                duration_ms: 1,
                detail: Some("boom".into()),
            },
        ];
        let text: String = lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect();
        // A torn last line (a killed process) is ignored.
        std::fs::write(&p, text + "{\"event\":\"step\",\"ti").unwrap();
        assert_eq!(read_journal(&p), lines[2..].to_vec());
        assert_eq!(
            journal_path(Path::new("s/routed-4.yaml")),
            PathBuf::from("s/routed-4.journal.jsonl")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
