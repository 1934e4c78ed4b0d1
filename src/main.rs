//! The `kscratch` command: flag parsing, file IO, printing and exit codes.
//! Everything else lives in the library crates.

mod cmd_apply;
mod cmd_check;
mod cmd_render;
mod load;

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
#[command(name = "kscratch", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a scenario: every problem at once, with file, YAML path, line and column.
    ///
    /// Example: kscratch validate scenarios/guide-routed.yaml
    Validate(ScenarioArgs),
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
}

#[derive(clap::Args)]
struct ScenarioArgs {
    /// The scenario file.
    scenario: PathBuf,
    /// Fail instead of writing the IPAM lock when allocations would change (for CI).
    #[arg(long)]
    locked: bool,
}

/// Report format of `check` and `trace`.
#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum PlanFormat {
    Text,
    Json,
    Dot,
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
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprint!("{e}");
            if !e.to_string().ends_with('\n') {
                eprintln!();
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, load::Error> {
    match cli.command {
        Command::Apply(args) => cmd_apply::run(args),
        Command::Check(args) => cmd_check::check(args),
        Command::Trace(args) => cmd_check::trace(args),
        Command::Validate(args) => {
            let loaded = load::scenario(&args.scenario, args.locked)?;
            eprint!("{}", loaded.warnings);
            out(&format!(
                "{}: valid ({} nodes, Kubernetes {})\n",
                args.scenario.display(),
                loaded.scenario.nodes.len(),
                loaded.scenario.version
            ));
            Ok(ExitCode::SUCCESS)
        }
        Command::Render { scenario, out } => {
            cmd_render::run(&scenario.scenario, scenario.locked, &out)
        }
        Command::Plan { scenario, format } => {
            let loaded = load::scenario(&scenario.scenario, scenario.locked)?;
            let plan = kscratch_core::plan::plan(&loaded.scenario);
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
                PlanFormat::Json => out(&kscratch_core::plan::to_json(&plan)),
                PlanFormat::Dot => out(&kscratch_core::plan::to_dot(&plan)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
