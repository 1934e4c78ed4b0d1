//! `kscratch reset SCENARIO NODE...`: take back what kscratch put on nodes.
//!
//! The teardown plan comes from `kscratch_core::plan::reset` (the nodes' own
//! apply plan, inverted); it runs through the one executor on the SSH
//! backend, check-then-apply, so a second reset changes nothing. Only the
//! nodes being reset are connected to. `--dry-run` checks every step and
//! lists what would change, touching nothing.
//!
//! Refusals exit 2 before any connection: a node that is not in the
//! scenario, and (without `--force`) resetting every etcd member, every
//! control-plane node, or enough etcd members to lose quorum.
//!
//! A reset takes the cluster's apply lock ([`crate::apply_lock`]): not
//! while an apply (or another reset) of the same cluster runs.
//!
//! Exit status: 0 every step ok or changed, 1 a step failed, a node was
//! unreachable, a host key was refused or the lock is held, 2 invalid input
//! or a refusal.

use crate::cmd_apply::{
    dry_run_listing, init_tracing, known_hosts_file, refused_run, summary, ApplyObserver,
};
use crate::load;
use kscratch_backends::ssh::{SshConfig, SshError};
use kscratch_backends::ssh_backend::{state_dir, SshBackend, SshBackendOptions};
use kscratch_core::exec::{execute, ExecOptions, Outcome, Report};
use kscratch_core::plan::{Plan, ResetOptions};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// A node and why it could not be used.
type NodeError = (String, SshError);

#[derive(clap::Args)]
pub struct ResetArgs {
    #[command(flatten)]
    scenario: crate::ScenarioArgs,
    /// The nodes to reset, by their scenario names.
    #[arg(value_name = "NODE", required = true)]
    nodes: Vec<String>,
    /// Check every teardown step on the nodes and print what would change
    /// and the exact commands; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also empty the etcd data dir of the reset etcd members (the cluster's data, if they were its last copy).
    #[arg(long)]
    delete_etcd_data: bool,
    /// Reset the last etcd member or control-plane node, or enough etcd members to lose quorum.
    #[arg(long)]
    force: bool,
    /// Trust an unknown host key on first use and record it (hashed) in known_hosts.
    #[arg(long)]
    accept_new_host_keys: bool,
    /// The OpenSSH known_hosts file host keys are verified against [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Steps in flight at once, over all nodes (each node's teardown is one chain).
    #[arg(long, value_name = "N", default_value_t = 16)]
    parallel: usize,
    /// Seconds one remote command may take.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    step_timeout: u64,
    /// Seconds to connect to a node, authenticate and start its session.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    connect_timeout: u64,
    /// Output: the per-node listing and totals as text, or one JSON document.
    #[arg(long, value_enum, default_value_t = crate::Format::Text)]
    format: crate::Format,
}

pub fn run(args: ResetArgs) -> Result<ExitCode, load::Error> {
    init_tracing();
    let path = &args.scenario.scenario;
    let loaded = load::scenario_read_only(path, args.scenario.locked)?;
    eprint!("{}", loaded.warnings);
    let scenario = loaded.scenario;
    let opts = ResetOptions {
        delete_etcd_data: args.delete_etcd_data,
        force: args.force,
    };
    let reset = kscratch_core::plan::reset(&scenario, &args.nodes, &opts).map_err(|refusals| {
        let mut text: Vec<String> = refusals.iter().map(|r| format!("error: {r}")).collect();
        text.push("nothing was run on any node".into());
        load::Error::Usage(text.join("\n"))
    })?;
    for n in &reset.notes {
        eprintln!("note: {n}");
    }
    let plan = reset.plan;
    let known_hosts = known_hosts_file(args.known_hosts.as_deref())?;
    let scenario_dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut ssh = SshConfig::new(known_hosts);
    ssh.accept_new_host_keys = args.accept_new_host_keys;
    ssh.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    let backend_opts = SshBackendOptions {
        ssh,
        scenario_dir,
        state_dir: state_dir(path, &scenario.name),
        step_timeout: Duration::from_secs(args.step_timeout.max(1)),
        dry_run: args.dry_run,
    };
    let exec_opts = ExecOptions {
        max_parallel: args.parallel.max(1),
        per_target: 1,
        dry_run: args.dry_run,
        ..ExecOptions::default()
    };
    let rt = crate::cmd_apply::runtime()?;
    // Not while an apply of this cluster runs (nor another reset): the
    // same lock (a dry run changes nothing and takes none).
    let _lock = match crate::cmd_apply::cluster_lock(&backend_opts.state_dir, args.dry_run) {
        Ok(l) => l,
        Err(code) => return Ok(code),
    };
    let backend = SshBackend::new(&scenario, &plan, backend_opts);
    let fingerprint = kscratch_core::plan::fingerprint(&scenario, &plan);
    let started = Instant::now();
    let outcome = rt.block_on(async {
        let (refused, down): (Vec<NodeError>, Vec<NodeError>) = backend
            .connect_planned()
            .await
            .into_iter()
            .partition(|(_, e)| {
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
        for (_, e) in &down {
            eprintln!("error: {e}");
        }
        let mut obs = ApplyObserver::new(&plan, &fingerprint, None, false);
        if args.format == crate::Format::Json {
            obs = obs.without_lines();
        }
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
    let failed = report
        .outcomes
        .iter()
        .any(|o| matches!(o, Outcome::Failed { .. }))
        || !backend.pool().unreachable().is_empty();
    match args.format {
        crate::Format::Text => {
            if args.dry_run {
                crate::out(&dry_run_listing(&plan, &scenario, &backend, &report));
            }
            crate::out(&summary(
                &plan,
                &report,
                wall,
                &backend,
                args.dry_run,
                "reset again: every step is re-checked, what is gone counts as done",
            ));
        }
        crate::Format::Json => crate::out(&json(
            &plan,
            &report,
            &args.nodes,
            args.dry_run,
            &reset.notes,
        )),
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `reset --format json`: every step with its action and outcome, and the totals.
fn json(plan: &Plan, report: &Report, nodes: &[String], dry_run: bool, notes: &[String]) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct StepDoc<'a> {
        id: String,
        action: &'a kscratch_core::plan::Action,
        outcome: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Totals {
        ok: usize,
        changed: usize,
        would_change: usize,
        failed: usize,
        skipped: usize,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc<'a> {
        cluster: &'a str,
        nodes: &'a [String],
        dry_run: bool,
        notes: &'a [String],
        steps: Vec<StepDoc<'a>>,
        totals: Totals,
    }
    let steps = plan
        .steps
        .iter()
        .zip(&report.outcomes)
        .map(|(s, o)| StepDoc {
            id: plan.step_id(s),
            action: &s.action,
            outcome: o.name(),
            detail: match o {
                Outcome::Failed { error } => Some(error.message.clone()),
                Outcome::Skipped { reason } => Some(reason.clone()),
                _ => None,
            },
        })
        .collect();
    crate::output::json(
        "reset",
        &Doc {
            cluster: &plan.cluster,
            nodes,
            dry_run,
            notes,
            steps,
            totals: Totals {
                ok: report.count("ok"),
                changed: report.count("changed"),
                would_change: report.count("would-change"),
                failed: report.count("failed"),
                skipped: report.count("skipped"),
            },
        },
    )
}
