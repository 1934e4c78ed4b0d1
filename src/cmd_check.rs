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
    /// Forms: node-down:NODE, route-missing:NODE[:TO_NODE], ip-forward-off:NODE,
    /// docker0-leftover:NODE, docker-ip-masq:NODE, masquerade-missing:NODE,
    /// overlay-mtu:BYTES, apiserver-firewalled.
    #[arg(long = "fault", value_name = "FAULT")]
    pub faults: Vec<String>,
    /// Output: a readable report, or JSON for CI.
    #[arg(long, value_enum, default_value_t = crate::Format::Text)]
    pub format: crate::Format,
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

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
}

fn faults(path: &std::path::Path, list: &[String]) -> Result<Vec<Fault>, load::Error> {
    let mut out = Vec::new();
    for f in list {
        out.push(
            Fault::parse(f).map_err(|e| load::Error::Usage(format!("error: --fault {f}: {e}")))?,
        );
    }
    let _ = path;
    Ok(out)
}

pub fn check(args: CheckArgs) -> Result<ExitCode, load::Error> {
    let loaded = load::scenario(&args.scenario.scenario, args.scenario.locked)?;
    eprint!("{}", loaded.warnings);
    let s = &loaded.scenario;
    let fs = faults(&args.scenario.scenario, &args.faults)?;
    for f in &fs {
        for n in f.nodes() {
            if s.node_index(n).is_none() {
                return Err(load::Error::Usage(format!(
                    "error: --fault {f}: no node `{n}` in {}",
                    args.scenario.scenario.display()
                )));
            }
        }
    }
    let plan = kscratch_core::plan::plan(s);
    let report = kscratch_sim::check(
        s,
        &plan,
        &CheckOptions {
            faults: fs,
            extra_services: args.extra_services,
        },
    )
    .map_err(load::Error::Usage)?;
    match args.format {
        crate::Format::Text => crate::out(&format!("{report}")),
        crate::Format::Json => crate::out(&report.to_json()),
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn trace(args: TraceArgs) -> Result<ExitCode, load::Error> {
    let loaded = load::scenario(&args.scenario.scenario, args.scenario.locked)?;
    eprint!("{}", loaded.warnings);
    let s = &loaded.scenario;
    let fs = faults(&args.scenario.scenario, &args.faults)?;
    let plan = kscratch_core::plan::plan(s);
    let sim = kscratch_sim::simulate(
        s,
        &plan,
        &CheckOptions {
            faults: fs,
            extra_services: 0,
        },
    )
    .map_err(load::Error::Usage)?;
    let proto = match args.proto {
        ProtoArg::Tcp => Proto::Tcp,
        ProtoArg::Udp => Proto::Udp,
    };
    let t = kscratch_sim::trace::trace(&sim, &args.from, &args.to, proto)
        .map_err(|e| load::Error::Usage(format!("error: {e}")))?;
    match args.format {
        crate::Format::Text => crate::out(&format!("{t}")),
        crate::Format::Json => crate::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&t).expect("trace serializes")
        )),
    }
    Ok(if t.connected() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
