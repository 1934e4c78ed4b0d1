//! `kscratch check` and `kscratch trace`: the simulator's commands.

use crate::load;
use kscratch_core::scenario::Fault;
use kscratch_sim::packet::Proto;
use kscratch_sim::CheckOptions;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub scenario: crate::ScenarioArgs,
    /// Apply a what-if fault after the plan has run, then check (repeatable).
    /// Forms: node-down:NODE, nic-down:NODE, route-missing:NODE[:TO_NODE],
    /// ip-forward-off:NODE, forward-drop:NODE, rp-filter-strict:NODE,
    /// br-netfilter-off:NODE, underlay-mtu:NODE:BYTES, fdb-missing:NODE:TO_NODE,
    /// neigh-missing:NODE:TO_NODE, kube-proxy-down:NODE, dns-pod-down,
    /// docker0-leftover:NODE, docker-ip-masq:NODE, masquerade-missing:NODE,
    /// overlay-mtu:BYTES, apiserver-firewalled. `kscratch apply --fault` runs
    /// the same damage on real machines.
    #[arg(long = "fault", value_name = "FAULT")]
    pub faults: Vec<String>,
    /// Output: a readable report, JSON, JUnit XML for CI test reporters, or
    /// one self-contained HTML page.
    #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
    pub format: CheckFormat,
    /// Prove a change instead: apply this OLD scenario to the simulated
    /// cluster, then roll SCENARIO out over it wave by wave, as `apply` does
    /// on a cluster applied before, and run every check while each wave's
    /// components are down and after each wave.
    #[arg(long, value_name = "OLD", conflicts_with = "faults")]
    pub from: Option<std::path::PathBuf>,
    /// With --from: workers whose node agents restart at once.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "from")]
    pub max_unavailable: usize,
    /// Add this many synthetic Services to the test ones (scale runs).
    #[arg(long, default_value_t = 0, hide = true)]
    pub extra_services: usize,
}

#[derive(clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub scenario: crate::ScenarioArgs,
    /// Where the packet starts: NODE, NODE/POD (probe-a, probe-b, coredns) or `outside`.
    #[arg(long)]
    pub from: String,
    /// Where it goes: NODE, NODE:PORT, NODE/POD, svc:NAMESPACE/NAME[:PORT], IP:PORT or `outside`.
    #[arg(long)]
    pub to: String,
    /// Transport protocol of the probe.
    #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
    pub proto: ProtoArg,
    /// Apply a what-if fault first (repeatable; see `kscratch check --help`).
    #[arg(long = "fault", value_name = "FAULT")]
    pub faults: Vec<String>,
    #[arg(long, value_enum, default_value_t = crate::Format::Text)]
    pub format: crate::Format,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum CheckFormat {
    Text,
    Json,
    Junit,
    Html,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
}

/// Parses `--fault` values and checks each against the scenario (and the
/// scenario's own `faults:`): a fault that does not apply is a usage error
/// (exit 2) with a hint, before anything runs.
pub fn faults(
    path: &std::path::Path,
    s: &kscratch_core::Scenario,
    list: &[String],
) -> Result<Vec<Fault>, load::Error> {
    let mut out = Vec::new();
    for f in list {
        out.push(
            Fault::parse(f).map_err(|e| load::Error::Usage(format!("error: --fault {f}: {e}")))?,
        );
    }
    let problems: Vec<String> = s
        .faults
        .iter()
        .chain(&out)
        .filter_map(|f| kscratch_core::plan::damage::check(s, f).err())
        .map(|e| format!("error: {e} [{}]", path.display()))
        .collect();
    if !problems.is_empty() {
        return Err(load::Error::Usage(problems.join("\n")));
    }
    Ok(out)
}

pub fn check(args: CheckArgs) -> Result<ExitCode, load::Error> {
    let loaded = match load::scenario_read_only(&args.scenario.scenario, args.scenario.locked) {
        Err(e) if args.format == CheckFormat::Json => return crate::machine_error(e, false),
        r => r?,
    };
    crate::diag(&loaded.warnings.to_string());
    let s = &loaded.scenario;
    if let Some(old) = &args.from {
        return check_rollout(&args, old, s);
    }
    let fs = faults(&args.scenario.scenario, s, &args.faults)?;
    let plan = kscratch_core::plan::plan(s);
    let report = kscratch_sim::check(
        s,
        &plan,
        &CheckOptions {
            faults: fs,
            extra_services: args.extra_services,
        },
    )
    .map_err(|e| load::Error::Usage(e.to_string()))?;
    match args.format {
        CheckFormat::Text => crate::out(&format!("{report}")),
        CheckFormat::Json => crate::out(&crate::output::json("check", &report)),
        CheckFormat::Junit => crate::out(&crate::report_formats::junit(&report)),
        CheckFormat::Html => crate::out(&crate::report_formats::html(&report)),
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `check NEW --from OLD`: the rollout of a change, proven wave by wave;
/// a removal of nodes (NEW has fewer), applied and searched for traces.
fn check_rollout(
    args: &CheckArgs,
    old_path: &std::path::Path,
    new: &kscratch_core::Scenario,
) -> Result<ExitCode, load::Error> {
    if !matches!(args.format, CheckFormat::Text | CheckFormat::Json) {
        return Err(load::Error::Usage(
            "error: check --from prints text or JSON (--format text|json)".into(),
        ));
    }
    let old_loaded = match load::scenario_read_only(old_path, args.scenario.locked) {
        Err(e) if args.format == CheckFormat::Json => return crate::machine_error(e, false),
        r => r?,
    };
    crate::diag(&old_loaded.warnings.to_string());
    let old = &old_loaded.scenario;
    let old_plan = kscratch_core::plan::plan(old);
    let old_snapshot = kscratch_core::diff::Snapshot::of(old, &old_plan);
    // Nodes OLD has and NEW does not are removed, as apply removes them.
    let departed = old_snapshot
        .departed(new)
        .map_err(|e| load::Error::Usage(format!("error: {}: {e}", old_path.display())))?;
    let new_plan = kscratch_core::plan::plan_removing(new, &departed);
    // What apply refuses is not simulated either.
    let d = kscratch_core::diff::diff(
        &old_snapshot,
        &kscratch_core::diff::Snapshot::of(new, &new_plan),
    );
    if d.refused {
        return Err(load::Error::Usage(d.refusals().join("\n")));
    }
    if !departed.is_empty() {
        let r = kscratch_sim::removal::remove(old, &old_plan, new, &new_plan)
            .map_err(|e| load::Error::Usage(format!("error: {e}")))?;
        match args.format {
            CheckFormat::Json => crate::out(&crate::output::json("removal", &r)),
            _ => crate::out(&r.to_string()),
        }
        return Ok(if r.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let r = kscratch_sim::rollout::rollout(old, &old_plan, new, &new_plan, args.max_unavailable)
        .map_err(|e| load::Error::Usage(format!("error: {e}")))?;
    match args.format {
        CheckFormat::Json => crate::out(&crate::output::json("rollout", &r)),
        _ => crate::out(&r.to_string()),
    }
    Ok(if r.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn trace(args: TraceArgs) -> Result<ExitCode, load::Error> {
    let loaded = match load::scenario_read_only(&args.scenario.scenario, args.scenario.locked) {
        Err(e) if args.format == crate::Format::Json => return crate::machine_error(e, false),
        r => r?,
    };
    crate::diag(&loaded.warnings.to_string());
    let s = &loaded.scenario;
    let fs = faults(&args.scenario.scenario, s, &args.faults)?;
    let plan = kscratch_core::plan::plan(s);
    let sim = kscratch_sim::simulate(
        s,
        &plan,
        &CheckOptions {
            faults: fs,
            extra_services: 0,
        },
    )
    .map_err(|e| load::Error::Usage(e.to_string()))?;
    let proto = match args.proto {
        ProtoArg::Tcp => Proto::Tcp,
        ProtoArg::Udp => Proto::Udp,
    };
    let t = kscratch_sim::trace::trace(&sim, &args.from, &args.to, proto)
        .map_err(|e| load::Error::Usage(format!("error: {e}")))?;
    match args.format {
        crate::Format::Text => crate::out(&format!("{t}")),
        crate::Format::Json => crate::out(&crate::output::json("trace", &t)),
    }
    Ok(if t.connected() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
