//! `kscratch apply SCENARIO`: run the plan on real machines over SSH.
//!
//! Every step is check-then-apply, so a second apply on a converged cluster
//! reports 0 changed. Progress goes to a journal next to the scenario
//! (`x.journal.jsonl`: one JSON line per finished step with its id, outcome
//! and time, never a secret); `--resume` reads the interrupted run's journal,
//! re-checks every step (the completed ones are checked, not skipped
//! blindly) and reports what it re-checked.
//!
//! Before any step, every node is connected to, in parallel: host key
//! verified against known_hosts, authenticated, and its agent session
//! started (so `sudo -n` is proven too). A refused host key or an unusable
//! key file stops everything before anything runs. A node that cannot be
//! reached or logged into is reported once, marked unreachable, and its
//! steps are skipped with that reason while the other nodes go on.
//!
//! One apply of a cluster at a time: [`crate::apply_lock`] (a dry run,
//! which writes nothing, takes no lock).
//!
//! Progress: a bar on a terminal; otherwise (CI logs) one line per
//! finished step on stdout, so a long run is never silent.
//!
//! Exit status: 0 every step ok, changed or not applicable here; 1 a step
//! failed, a node was unreachable, a host key was refused or another apply
//! holds the lock; 2 invalid input.

use crate::apply_lock::ApplyLock;
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
    /// Units (a step, or a batch of a node's steps) in flight at once on one
    /// node. A node's units share its one agent session, which runs one
    /// request at a time: more than 1 only queues the next unit behind the
    /// running one.
    #[arg(long, value_name = "N", default_value_t = 1)]
    per_node: usize,
    /// Seconds one remote command may take (health waits get their own timeout on top).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    step_timeout: u64,
    /// Seconds to connect to a node, authenticate and start its session; a
    /// node that takes longer is marked unreachable (once, for the whole run).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    connect_timeout: u64,
    /// Instead of the plan, do this what-if fault's damage to the real
    /// machines (repeatable; the forms of `kscratch check --fault`): the very
    /// damage plan `kscratch check --fault` simulates. Needs --break-my-cluster.
    #[arg(long = "fault", value_name = "FAULT")]
    faults: Vec<String>,
    /// A change to a cluster applied before (`apply` keeps its applied
    /// record) rolls out node by node: etcd, the apiservers, the
    /// controllers, then the node agents; control-plane and etcd nodes one
    /// at a time, workers at most N at once.
    #[arg(long, value_name = "N", default_value_t = 1)]
    max_unavailable: usize,
    /// Say yes to --fault: the nodes lose routes, links, rules or services,
    /// until a plain `kscratch apply` (or more, for node-down) repairs them.
    #[arg(long)]
    break_my_cluster: bool,
    /// After a successful apply, run `kscratch verify` on the same nodes
    /// (with the same --fault, if any): the real cluster measured and held
    /// against the prediction. The exit status is then verify's.
    #[arg(long, conflicts_with = "dry_run")]
    verify: bool,
}

/// A node and why it could not be used.
type NodeError = (String, SshError);

/// A run that a refused host key or an unusable key stopped before any
/// command ran: each refusal, and exit 1.
pub(crate) fn refused_run(refused: Vec<NodeError>) -> ExitCode {
    for (_, e) in refused {
        eprintln!("error: {e}");
    }
    eprintln!("nothing was run on any node");
    ExitCode::from(1)
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
    init_tracing();
    let path = &args.scenario.scenario;
    let loaded = load::scenario(path, args.scenario.locked)?;
    eprint!("{}", loaded.warnings);
    let scenario = loaded.scenario;
    let damage = !args.faults.is_empty();
    // Nodes the applied record has and the scenario does not: their traces
    // on the remaining nodes are removed (planned like any other steps).
    let departed = match damage {
        false => crate::cmd_diff::departed(path, &scenario)?,
        true => Vec::new(),
    };
    let plan = match damage {
        false => kscratch_core::plan::plan_removing(&scenario, &departed),
        true => damage_plan(&args, &scenario)?,
    };
    if !departed.is_empty() {
        let names: Vec<String> = departed
            .iter()
            .map(|d| match d.etcd_member {
                true => format!("{} (etcd member)", d.name),
                false => d.name.clone(),
            })
            .collect();
        eprintln!(
            "removing {} the applied record has and the scenario does not: {}",
            crate::plural(departed.len(), "node", "nodes"),
            names.join(", ")
        );
    }
    let known_hosts = known_hosts_file(args.known_hosts.as_deref())?;
    let rollout = match damage {
        true => None,
        false => rollout(path, &scenario, &plan, args.max_unavailable)?,
    };
    let scenario_dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut ssh = SshConfig::new(known_hosts);
    ssh.accept_new_host_keys = args.accept_new_host_keys;
    ssh.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    let opts = SshBackendOptions {
        ssh,
        scenario_dir,
        state_dir: state_dir(path, &scenario.name),
        step_timeout: Duration::from_secs(args.step_timeout.max(1)),
        dry_run: args.dry_run,
    };
    let mut exec_opts = ExecOptions {
        max_parallel: args.parallel.max(1),
        per_target: args.per_node.max(1),
        dry_run: args.dry_run,
        rollout,
        ..ExecOptions::default()
    };
    let rt = runtime()?;
    // One apply of this cluster at a time (a dry run writes nothing and takes no lock).
    let _lock = match cluster_lock(&opts.state_dir, args.dry_run) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let backend = SshBackend::new(&scenario, &plan, opts);

    let journal = journal_path(path);
    let fingerprint = kscratch_core::plan::fingerprint(&scenario, &plan);
    let mut previous = Vec::new();
    if args.resume {
        match read_journal(&journal) {
            Ok(None) => eprintln!(
                "note: no journal at {}: nothing to resume, applying from the start",
                journal.display()
            ),
            Ok(Some(j)) => {
                for (line, why) in &j.damaged {
                    eprintln!(
                        "warning: {}:{line}: damaged journal line, ignored ({why}); a run killed while writing leaves one",
                        journal.display()
                    );
                }
                if let Some(refusal) = resume_refusal(&journal, j.plan(), &fingerprint) {
                    return Err(load::Error::Usage(format!(
                        "{refusal}\nnothing was run on any node"
                    )));
                }
                // What the interrupted run changed still restarts its services.
                let ids: BTreeMap<String, StepRef> = plan
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(i, st)| (plan.step_id(st), i as StepRef))
                    .collect();
                exec_opts.changed_earlier = j
                    .lines
                    .iter()
                    .filter_map(|l| match l {
                        JournalLine::Step { step, outcome, .. } if outcome == "changed" => {
                            ids.get(step).copied()
                        }
                        _ => None,
                    })
                    .collect();
                previous = j.lines;
            }
            Err(e) => {
                return Err(load::Error::Usage(format!(
                    "error: --resume: cannot read the journal {}: {e}\nnothing was run on any node",
                    journal.display()
                )))
            }
        }
    }
    let started = Instant::now();
    let outcome = rt.block_on(async {
        // Every node first, in parallel: a refused host key or an unusable
        // key stops everything before any command runs; a node that cannot
        // be reached or logged into is reported once and left out.
        let (refused, down): (Vec<NodeError>, Vec<NodeError>) =
            backend.connect_all().await.into_iter().partition(|(_, e)| {
                matches!(
                    e,
                    SshError::HostKey { .. }
                        | SshError::KeyFile(_)
                        | SshError::BadKey { .. }
                        | SshError::KnownHostsFile { .. }
                )
            });
        if !refused.is_empty() {
            return Err(refused);
        }
        for (node, e) in &down {
            eprintln!("error: {e}");
            tracing::debug!(node = %node, "left out of this run");
        }
        if !down.is_empty() {
            eprintln!(
                "{} of {} nodes unreachable: their steps are skipped, the other nodes go on",
                down.len(),
                scenario.nodes.len()
            );
        }
        let mut obs = ApplyObserver::new(
            &plan,
            &fingerprint,
            // A damage run is not the build: it leaves the build's journal alone.
            if args.dry_run || damage {
                None
            } else {
                Some(&journal)
            },
            args.resume,
        );
        let report = execute(&plan, &scenario, &backend, &exec_opts, &mut obs).await;
        obs.finish(&report);
        backend.pool().disconnect_all().await;
        Ok(report)
    });
    let report = match outcome {
        Ok(r) => r,
        Err(refused) => return Ok(refused_run(refused)),
    };
    let wall = started.elapsed();
    if args.dry_run {
        crate::out(&dry_run_listing(&plan, &scenario, &backend, &report));
    }
    crate::out(&summary(
        &plan,
        &report,
        wall,
        &backend,
        args.dry_run,
        "run again with --resume: every step is re-checked, finished ones are not redone",
    ));
    if args.resume && !previous.is_empty() {
        crate::out(&resume_note(&plan, &report, &previous));
    }
    let failed = report
        .outcomes
        .iter()
        .any(|o| matches!(o, Outcome::Failed { .. }))
        || !backend.pool().unreachable().is_empty();
    if !failed && !args.dry_run && !damage {
        // What `kscratch diff SCENARIO` compares with: secret-free digests
        // and texts. The record is the cluster as it now is: the removal
        // steps did their work, and a later plan has none.
        let snapshot = match departed.is_empty() {
            true => kscratch_core::diff::Snapshot::of(&scenario, &plan),
            false => {
                kscratch_core::diff::Snapshot::of(&scenario, &kscratch_core::plan::plan(&scenario))
            }
        };
        match crate::cmd_diff::record_applied(path, &snapshot) {
            Ok(p) => tracing::info!("recorded the applied plan in {}", p.display()),
            Err(e) => eprintln!(
                "warning: the cluster is applied, but the applied record could not be written ({e}); `kscratch diff SCENARIO` will compare with the previous record"
            ),
        }
    }
    if failed {
        return Ok(ExitCode::from(1));
    }
    if args.verify && !args.dry_run {
        crate::out("\nverify: measuring the applied cluster against the prediction\n");
        return crate::cmd_verify::run(crate::cmd_verify::VerifyArgs::after_apply(
            path.clone(),
            args.faults.clone(),
            args.known_hosts.clone(),
            args.accept_new_host_keys,
            args.connect_timeout,
            args.parallel,
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// A change to a cluster applied before: the diff against its applied
/// record is refused (a skipped minor version, a downgrade, a moved pod
/// CIDR) or rolled out ([`kscratch_core::rollout`]). A first apply (no
/// record) and a converged re-apply (the same fingerprint) bring every node
/// up at once. Nodes the record does not have join: no wave waits for them.
fn rollout(
    path: &Path,
    s: &Scenario,
    plan: &Plan,
    max_unavailable: usize,
) -> Result<Option<kscratch_core::rollout::Rollout>, load::Error> {
    let record = crate::cmd_diff::applied_path(path, &s.name);
    let Some(old) = crate::cmd_diff::read_applied(&record)? else {
        return Ok(None);
    };
    if old.fingerprint == kscratch_core::plan::fingerprint(s, plan) {
        return Ok(None);
    }
    let new = kscratch_core::diff::Snapshot::of(s, plan);
    let d = kscratch_core::diff::diff(&old, &new);
    if d.refused {
        return Err(load::Error::Usage(format!(
            "{}\n  (compared with the applied record {})\nnothing was run on any node",
            d.refusals().join("\n"),
            record.display()
        )));
    }
    let joining: Vec<String> = plan
        .nodes
        .iter()
        .filter(|n| !old.pod_cidrs.contains_key(*n))
        .cloned()
        .collect();
    let r = kscratch_core::rollout::rollout_joining(plan, s, max_unavailable.max(1), &joining);
    eprintln!(
        "rolling the change out over the running cluster (applied record {}) in {}:\n{}",
        record.display(),
        crate::plural(r.waves.len(), "wave", "waves"),
        r.summary()
    );
    if !joining.is_empty() {
        eprintln!(
            "joining (brought up at once, in no wave): {}",
            joining.join(", ")
        );
    }
    Ok(Some(r))
}

/// `--fault`: the faults' damage, refused without `--break-my-cluster` and
/// for a fault that does not apply to the scenario (exit 2 either way).
fn damage_plan(args: &ApplyArgs, s: &Scenario) -> Result<Plan, load::Error> {
    let faults = crate::cmd_check::faults(&args.scenario.scenario, s, &args.faults)?;
    if !args.break_my_cluster {
        return Err(load::Error::Usage(format!(
            "error: --fault {} damages the real machines; pass --break-my-cluster to do it (or `kscratch check --fault` to simulate it)",
            args.faults.join(" --fault ")
        )));
    }
    kscratch_core::plan::damage(s, &faults)
        .map(|d| d.combined())
        .map_err(|errors| {
            load::Error::Usage(
                errors
                    .iter()
                    .map(|e| format!("error: {e}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })
}

/// Journal writer and progress display.
pub(crate) struct ApplyObserver {
    journal: Option<std::fs::File>,
    bar: Option<ProgressBar>,
    started: BTreeMap<StepRef, Instant>,
    /// Without a bar (not a terminal, or CI): one line per finished step on stdout.
    lines: bool,
    finished: usize,
    total: usize,
}

impl ApplyObserver {
    /// A line for people, above the bar on a terminal, else on stderr.
    fn say(&self, line: String) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub(crate) fn new(
        plan: &Plan,
        fingerprint: &str,
        journal: Option<&Path>,
        resume: bool,
    ) -> ApplyObserver {
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
            lines: bar.is_none(),
            bar,
            started: BTreeMap::new(),
            finished: 0,
            total: plan.steps.len(),
        };
        obs.write(&JournalLine::Start {
            time_ms: now_ms(),
            plan: fingerprint.to_string(),
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

    /// No per-step lines on stdout (it carries a JSON document instead).
    pub(crate) fn without_lines(mut self) -> ApplyObserver {
        self.lines = false;
        self
    }

    pub(crate) fn finish(&mut self, report: &Report) {
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
    fn wave_started(&mut self, _plan: &Plan, rollout: &kscratch_core::rollout::Rollout, wave: u32) {
        let w = &rollout.waves[wave as usize - 1];
        self.say(format!("wave {wave}/{}: {w}", rollout.waves.len()));
    }

    fn wave_finished(
        &mut self,
        plan: &Plan,
        rollout: &kscratch_core::rollout::Rollout,
        wave: u32,
        failed: Option<StepRef>,
    ) {
        let Some(f) = failed else { return };
        let n = rollout.waves.len();
        let w = &rollout.waves[wave as usize - 1];
        let mut line = format!(
            "the rollout stopped at wave {wave}/{n} ({w}): {} failed",
            plan.step_id(&plan.steps[f as usize])
        );
        if (wave as usize) < n {
            let _ = write!(
                line,
                "; waves {}-{n} did not run, their components keep running with the settings they started with (fix the cause, then apply again)",
                wave + 1
            );
        }
        self.say(line);
    }

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
        self.finished += 1;
        // A failure is told once, on stderr (and in the summary), never also through the log.
        if let Outcome::Failed { error } = outcome {
            let line = format!("failed: {}", error.message);
            match &self.bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            }
        }
        tracing::info!(step = %id, outcome = outcome.name(), duration_ms = duration.as_millis() as u64, "step finished");
        if self.lines {
            let width = self.total.to_string().len();
            let why = match outcome {
                Outcome::Skipped { reason } => format!(": {reason}"),
                _ => String::new(),
            };
            crate::out(&format!(
                "[{:>width$}/{}] {:<12} {id} ({:.2}s){why}\n",
                self.finished,
                self.total,
                outcome.name(),
                duration.as_secs_f64()
            ));
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

/// A `--known-hosts` that is a directory or cannot be read is refused once,
/// before anything else; a missing file is fine (no host is known yet, or
/// trust on first use creates it).
/// The known_hosts file of `apply` and `verify`: `--known-hosts`, else
/// `~/.ssh/known_hosts`, checked as [`check_known_hosts`] does.
/// The async runtime the SSH commands run on: two workers (the transport
/// is IO-bound; the scripts run on the nodes).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, load::Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| load::Error::Apply(format!("cannot start the async runtime: {e}")))
}

/// The cluster's apply lock (apply and reset share it), or the exit code
/// after saying who holds it; `None` for a dry run, which changes nothing.
/// A lock left by a dead process is taken over, and said so.
pub(crate) fn cluster_lock(state_dir: &Path, dry_run: bool) -> Result<Option<ApplyLock>, ExitCode> {
    if dry_run {
        return Ok(None);
    }
    match ApplyLock::acquire(state_dir) {
        Ok(l) => {
            if let Some(pid) = &l.stale {
                eprintln!(
                    "note: {} was left by PID {pid}, which is no longer running it; taken over",
                    l.path().display()
                );
            }
            Ok(Some(l))
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("nothing was run on any node");
            Err(ExitCode::from(1))
        }
    }
}

pub(crate) fn known_hosts_file(given: Option<&Path>) -> Result<PathBuf, load::Error> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".ssh/known_hosts"),
            None => {
                return Err(load::Error::Apply(
                    "HOME is not set: pass --known-hosts FILE".into(),
                ))
            }
        },
    };
    check_known_hosts(&path)?;
    Ok(path)
}

/// Logs (`RUST_LOG`, default warnings) on stderr, for the commands that
/// talk to machines.
pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

fn check_known_hosts(path: &Path) -> Result<(), load::Error> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(load::Error::Apply(format!(
            "cannot use the known_hosts file {}: {e}",
            path.display()
        ))),
        Ok(m) if m.is_dir() => Err(load::Error::Apply(format!(
            "the known_hosts file {} is a directory: pass the file itself, e.g. {}/known_hosts",
            path.display(),
            path.display()
        ))),
        Ok(_) => std::fs::File::open(path).map(|_| ()).map_err(|e| {
            load::Error::Apply(format!(
                "cannot read the known_hosts file {}: {e}",
                path.display()
            ))
        }),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A journal as read back: the lines of its last run, and the lines that
/// could not be read (a kill while a line was written leaves a partial one).
#[derive(Debug, Default, PartialEq)]
pub struct Journal {
    /// From the last `start` on.
    pub lines: Vec<JournalLine>,
    /// `(1-based line number, why)` of every damaged line of the file.
    pub damaged: Vec<(usize, String)>,
}

impl Journal {
    /// The plan fingerprint the last run recorded.
    pub fn plan(&self) -> Option<&str> {
        match self.lines.first() {
            Some(JournalLine::Start { plan, .. }) => Some(plan),
            _ => None,
        }
    }
}

/// The journal at `path`; `Ok(None)` when there is none.
pub fn read_journal(path: &Path) -> std::io::Result<Option<Journal>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut j = Journal::default();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<JournalLine>(l) {
            Ok(line) => {
                if matches!(line, JournalLine::Start { .. }) {
                    j.lines.clear();
                }
                j.lines.push(line);
            }
            Err(e) => j.damaged.push((i + 1, e.to_string())),
        }
    }
    Ok(Some(j))
}

/// `--resume` continues the run of the same plan only: a journal written for
/// another plan (the scenario changed since) is refused, saying how to go on.
fn resume_refusal(journal: &Path, recorded: Option<&str>, fingerprint: &str) -> Option<String> {
    match recorded {
        Some(p) if p == fingerprint => None,
        Some(p) => Some(format!(
            "error: --resume: the journal {} belongs to another plan ({p}); this scenario now plans {fingerprint}\n\
             hint: the scenario changed since the interrupted run. Run `kscratch diff` to see what changed, then apply without --resume: \
             every step is checked before it runs, so what the interrupted run finished is not done again",
            journal.display()
        )),
        None => Some(format!(
            "error: --resume: the journal {} has no readable start line, so it cannot say which plan it belongs to\n\
             hint: apply without --resume: every step is checked before it runs, so nothing finished is done again",
            journal.display()
        )),
    }
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
pub(crate) fn summary(
    plan: &Plan,
    report: &Report,
    wall: Duration,
    backend: &SshBackend,
    dry_run: bool,
    rerun: &str,
) -> String {
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
    // Unreachable nodes, each once, with how many of its steps were skipped.
    let dead = backend.pool().unreachable();
    if !dead.is_empty() {
        let _ = writeln!(out, "unreachable ({} nodes):", dead.len());
        for (node, why) in &dead {
            let skipped = plan
                .steps
                .iter()
                .zip(&report.outcomes)
                .filter(|(s, o)| {
                    plan.target_name(s.target) == *node && matches!(o, Outcome::Skipped { .. })
                })
                .count();
            let _ = writeln!(out, "  {node}: {why} ({skipped} steps skipped)");
        }
    }
    // Root causes of skips (not "dependency ... was skipped"), with how many steps they took along.
    let mut roots: Vec<(String, String)> = Vec::new();
    let mut by_dep = 0;
    for (s, o) in plan.steps.iter().zip(&report.outcomes) {
        if let Outcome::Skipped { reason } = o {
            if reason.starts_with("unreachable: ") {
                continue;
            }
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
        if !dry_run {
            let _ = writeln!(out, "fix the failure and {rerun}");
        }
    }
    let stats = backend.pool().stats();
    let commands: u64 = stats.values().map(|s| s.commands).sum();
    let connects: u64 = stats.values().map(|s| s.connects).sum();
    let round_trips: u64 = stats.values().map(|s| s.round_trips).sum();
    let remote_steps = plan
        .steps
        .iter()
        .filter(|s| matches!(s.target, Target::Node(_)))
        .count()
        .max(1);
    if let Some((node, busiest)) = stats.iter().max_by_key(|(_, s)| s.busy + s.connecting) {
        // The node that took longest bounds the run; what the wall time adds
        // on top is kscratch's own: scheduling, rendering, the local PKI.
        let remote = busiest.busy + busiest.connecting;
        let own = wall.saturating_sub(remote);
        let _ = writeln!(
            out,
            "ssh: {connects} connections, {commands} remote scripts in {round_trips} round trips ({:.2} per node step); longest node {node}: {:.2}s connecting + {:.2}s in commands; wall {:.2}s = {:.2}x that; kscratch's own time {:.1} ms per step",
            round_trips as f64 / remote_steps as f64,
            busiest.connecting.as_secs_f64(),
            busiest.busy.as_secs_f64(),
            wall.as_secs_f64(),
            wall.as_secs_f64() / remote.as_secs_f64().max(1e-9),
            own.as_secs_f64() * 1000.0 / plan.steps.len().max(1) as f64,
        );
    }
    out
}

/// Per node, what the dry run found and what apply would run.
pub(crate) fn dry_run_listing(
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
    fn a_known_hosts_directory_is_refused_up_front_and_a_missing_file_is_fine() {
        let dir = std::env::temp_dir().join(format!("kscratch-kh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = check_known_hosts(&dir).unwrap_err().to_string();
        assert!(e.contains("is a directory: pass the file itself"), "{e}");
        assert!(check_known_hosts(&dir.join("absent")).is_ok());
        let f = dir.join("known_hosts");
        std::fs::write(&f, "").unwrap();
        assert!(check_known_hosts(&f).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
        // A torn last line (a killed process) is reported as damaged, with its number.
        std::fs::write(&p, text + "{\"event\":\"step\",\"ti").unwrap();
        let j = read_journal(&p).unwrap().unwrap();
        assert_eq!(j.lines, lines[2..].to_vec());
        assert_eq!(j.plan(), Some("sha256:a"));
        assert_eq!(j.damaged.len(), 1);
        assert_eq!(j.damaged[0].0, 5);
        assert_eq!(read_journal(&dir.join("absent")).unwrap(), None);
        assert_eq!(
            journal_path(Path::new("s/routed-4.yaml")),
            PathBuf::from("s/routed-4.journal.jsonl")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resume_refuses_a_journal_of_another_plan_and_says_how_to_go_on() {
        let j = Path::new("s/x.journal.jsonl");
        assert_eq!(resume_refusal(j, Some("sha256:a"), "sha256:a"), None);
        let e = resume_refusal(j, Some("sha256:a"), "sha256:b").unwrap();
        assert!(e.contains("belongs to another plan (sha256:a)"), "{e}");
        assert!(e.contains("now plans sha256:b"), "{e}");
        assert!(e.contains("apply without --resume"), "{e}");
        let e = resume_refusal(j, None, "sha256:b").unwrap();
        assert!(e.contains("no readable start line"), "{e}");
    }
}
