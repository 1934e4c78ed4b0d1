//! The `kscratch` command: flag parsing, file IO, printing and exit codes.
//! Everything else lives in the library crates.

mod apply_lock;
mod cmd_apply;
mod cmd_check;
mod cmd_diff;
mod cmd_render;
mod cmd_reset;
mod cmd_verify;
mod load;
mod output;
mod report_formats;

pub(crate) use kscratch_core::diag::plural;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Build Kubernetes clusters from scratch, and prove they work before touching hardware.
///
/// A scenario (YAML) declares the cluster. `plan` turns it into a deterministic
/// step graph, `check` runs that graph on a simulated cluster and proves the
/// Kubernetes network model. Exit codes: 0 success, 1 a check failed,
/// 2 invalid input.
#[derive(Parser)]
#[command(name = "kscratch", version = VERSION, long_version = LONG_VERSION, propagate_version = true)]
struct Cli {
    /// Say more: list each IPAM lock change instead of a summary.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

/// `0.1.0 (git 1a2b3c4d)`: the revision comes from build.rs, `unknown` in a tarball build.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("KSCRATCH_GIT_REV"),
    ")"
);
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("KSCRATCH_GIT_REV"),
    ")\nKubernetes ",
    env!("KSCRATCH_K8S_RANGE"),
    " (the releases kscratch renders flags for)"
);

#[derive(Subcommand)]
enum Command {
    /// Validate a scenario: every problem at once, with file, YAML path, line and column.
    ///
    /// Never writes a file; an IPAM lock that is missing or out of date is a warning.
    ///
    /// Example: kscratch validate scenarios/guide-routed.yaml --format sarif > kscratch.sarif
    Validate {
        #[command(flatten)]
        scenario: ScenarioArgs,
        /// Output: readable text on stderr, a JSON document, or SARIF 2.1.0 for code-scanning UIs.
        #[arg(long, value_enum, default_value_t = ValidateFormat::Text)]
        format: ValidateFormat,
    },
    /// Plan a scenario: phases, steps per node, the address allocation and a fingerprint.
    ///
    /// Example: kscratch plan scenarios/guide-routed.yaml --format json > plan.json
    Plan {
        #[command(flatten)]
        scenario: ScenarioArgs,
        /// Output format: a readable summary, the full plan as JSON, or a Graphviz graph.
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
    },
    /// Render every file the plan writes, per node, into a directory tree; keys are generated once and reused.
    ///
    /// Example: kscratch render scenarios/guide-routed.yaml --out out/
    Render {
        #[command(flatten)]
        scenario: ScenarioArgs,
        /// Output directory: DIR/<node>/<path> per node, DIR/local/ for the operator (key store, admin kubeconfig).
        #[arg(long)]
        out: PathBuf,
    },
    /// Dry-run a scenario on a simulated cluster and prove the Kubernetes network model.
    ///
    /// Plans the scenario, runs the plan on virtual nodes, starts test pods and
    /// Services, then checks pod-to-pod, node-to-pod, Service VIPs, masqueraded
    /// egress, the apiserver and the pod MTU; every failure comes with a
    /// hop-by-hop trace. Exit 0 when the cluster conforms, 1 when a check fails,
    /// 2 for invalid input.
    ///
    /// Example: kscratch check scenarios/guide-routed.yaml --fault route-missing:node-1:node-3
    Check(cmd_check::CheckArgs),
    /// Follow one packet through the simulated cluster, hop by hop.
    ///
    /// Example: kscratch trace scenarios/guide-routed.yaml --from node-1/probe-a --to svc:kscratch/probe
    Trace(cmd_check::TraceArgs),
    /// Apply a scenario to real machines over SSH: check-then-apply every step, idempotently.
    ///
    /// Example: kscratch apply scenarios/guide-routed.yaml --known-hosts ~/.ssh/known_hosts
    Apply(cmd_apply::ApplyArgs),
    /// Measure the real cluster over SSH and hold it against the simulator's prediction, cell by cell.
    ///
    /// On every node that runs pods: probes attached by the node's own CNI
    /// config and plugins, real TCP connections (one line each way) between
    /// every pair of probes and from each node to its own, then everything
    /// removed again. Exit 0 when every cell agrees and the prediction passes
    /// `check`, 1 when a cell disagrees or a check fails, 2 for invalid input
    /// or a node that cannot be reached or measured.
    ///
    /// Example: kscratch verify scenarios/guide-routed.yaml --known-hosts ~/.ssh/known_hosts
    Verify(cmd_verify::VerifyArgs),
    /// Take back what kscratch put on nodes: services, static pods, the pod network, its iptables rules, its files.
    ///
    /// The teardown is the nodes' own apply plan inverted, in reverse
    /// dependency order, check-then-apply (a second reset changes nothing).
    /// Other people's rules and files stay; the etcd data dir only goes with
    /// --delete-etcd-data. Refused (exit 2, nothing touched): a node that is
    /// not in the scenario, and without --force the last etcd member, the
    /// last control-plane node, or enough etcd members to lose quorum.
    ///
    /// Example: kscratch reset scenarios/guide-routed.yaml node-3 --dry-run
    Reset(cmd_reset::ResetArgs),
    /// Show what a changed scenario does before it runs: steps, files (with a unified diff), restarts, disruptive changes.
    ///
    /// No SSH: `diff OLD.yaml NEW.yaml` compares two scenarios, `diff SCENARIO`
    /// compares with the plan last applied from it. Never writes a file. Exit
    /// 0 for no change, 1 for changes, 2 for invalid input or a refused change.
    ///
    /// Example: kscratch diff scenarios/guide-routed.yaml scenarios/diff/guide-routed-max-pods.yaml
    Diff(cmd_diff::DiffArgs),
    /// Print a shell completion script.
    ///
    /// Example: kscratch completions bash > /etc/bash_completion.d/kscratch
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff).
    ///
    /// Example: kscratch man > /usr/local/share/man/man1/kscratch.1
    Man,
}

#[derive(clap::Args)]
struct ScenarioArgs {
    /// The scenario file.
    scenario: PathBuf,
    /// Fail instead of writing the IPAM lock when allocations would change (for CI).
    #[arg(long)]
    locked: bool,
}

/// Report format of `trace`.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum ValidateFormat {
    Text,
    Json,
    Sarif,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum PlanFormat {
    Text,
    Json,
    Dot,
}

/// Prints diagnostics text on stderr: the severity words in colour when
/// stderr is a terminal and `NO_COLOR` is not set (https://no-color.org).
pub(crate) fn diag(text: &str) {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    if !colour {
        eprint!("{text}");
        return;
    }
    for line in text.split_inclusive('\n') {
        let paint = [("error", "31"), ("warning", "33"), ("note", "36")]
            .into_iter()
            .find(|(w, _)| {
                line.starts_with(&format!("{w}[")) || line.starts_with(&format!("{w}:"))
            });
        match paint {
            Some((w, c)) => eprint!("\x1b[1;{c}m{w}\x1b[0m{}", &line[w.len()..]),
            None => eprint!("{line}"),
        }
    }
}

/// Writes to stdout; a reader that went away (`kscratch plan | head`) ends
/// the command quietly instead of with a panic.
pub(crate) fn out(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(2);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    load::VERBOSE.store(cli.verbose, std::sync::atomic::Ordering::Relaxed);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let mut text = e.to_string();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            diag(&text);
            ExitCode::from(2)
        }
    }
}

/// Under a machine format, an invalid scenario is a document on stdout too
/// (exit 2): JSON diagnostics, or SARIF results. Other errors stay text.
pub(crate) fn machine_error(e: load::Error, sarif: bool) -> Result<ExitCode, load::Error> {
    match e {
        load::Error::Invalid(d) => {
            let file = d.0.first().map(|x| x.file.clone()).unwrap_or_default();
            if sarif {
                out(&output::sarif(&d));
            } else {
                out(&output::validation_json(&file, &d, None));
            }
            diag(&d.to_string());
            Ok(ExitCode::from(2))
        }
        other => Err(other),
    }
}

fn run(cli: Cli) -> Result<ExitCode, load::Error> {
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kscratch", &mut buf);
            out(&String::from_utf8_lossy(&buf));
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut buf = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut buf)
                .map_err(|e| {
                    load::Error::Usage(format!("error: cannot render the man page: {e}"))
                })?;
            out(&String::from_utf8_lossy(&buf));
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply(args) => cmd_apply::run(args),
        Command::Diff(args) => cmd_diff::run(args),
        Command::Reset(args) => cmd_reset::run(args),
        Command::Verify(args) => cmd_verify::run(args),
        Command::Check(args) => cmd_check::check(args),
        Command::Trace(args) => cmd_check::trace(args),
        Command::Validate { scenario, format } => {
            let file = scenario.scenario.display().to_string();
            let loaded = match load::scenario_read_only(&scenario.scenario, scenario.locked) {
                Ok(l) => l,
                Err(e) if format != ValidateFormat::Text => {
                    return machine_error(e, format == ValidateFormat::Sarif)
                }
                Err(e) => return Err(e),
            };
            let s = &loaded.scenario;
            match format {
                ValidateFormat::Text => {
                    diag(&loaded.warnings.to_string());
                    out(&format!(
                        "{file}: valid ({}, Kubernetes {})\n",
                        plural(s.nodes.len(), "node", "nodes"),
                        s.version
                    ));
                }
                ValidateFormat::Json => out(&output::validation_json(
                    &file,
                    &loaded.warnings,
                    Some((s.nodes.len(), s.version.to_string())),
                )),
                ValidateFormat::Sarif => out(&output::sarif(&loaded.warnings)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Render { scenario, out } => {
            cmd_render::run(&scenario.scenario, scenario.locked, &out)
        }
        Command::Plan { scenario, format } => {
            let loaded = match load::scenario(&scenario.scenario, scenario.locked) {
                Err(e) if format == PlanFormat::Json => return machine_error(e, false),
                r => r?,
            };
            // Nodes the applied record has and the scenario does not get removal steps.
            let departed = cmd_diff::departed(&scenario.scenario, &loaded.scenario)?;
            let plan = kscratch_core::plan::plan_removing(&loaded.scenario, &departed);
            match format {
                PlanFormat::Text => {
                    out(&format!(
                        "{}",
                        kscratch_core::plan::Summary {
                            scenario: &loaded.scenario,
                            plan: &plan
                        }
                    ));
                    if !loaded.warnings.0.is_empty() {
                        out("\n");
                        out(&loaded.warnings.to_string());
                    }
                }
                PlanFormat::Json => out(&output::plan_json(&loaded.scenario, &plan)),
                PlanFormat::Dot => out(&kscratch_core::plan::to_dot(&plan)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
