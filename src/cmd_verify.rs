//! `kscratch verify SCENARIO`: measure the real cluster and hold it against
//! the simulator's prediction for the same scenario and faults.
//!
//! Over SSH, with apply's connection rules (host keys verified against
//! known_hosts, `--accept-new-host-keys`, `sudo -n`), on every node that
//! runs pods: probes attached by the node's own CNI config and plugins,
//! real TCP connections with one line each way between every pair of
//! probes (the same node and a probe to itself included) and from each node
//! to its own probes, then cleanup (CNI DEL, namespaces, listeners, files),
//! also when a step failed. The node side is `kscratch_backends::verify`,
//! the comparison `kscratch_sim::verify`.
//!
//! Exit status: 0 every cell agrees and the prediction passes `check`; 1 a
//! cell disagrees, the prediction fails a check, or cleanup left something;
//! 2 invalid input, a node that cannot be reached or measured (nothing is
//! created on any node before every node answered); 130 interrupted
//! (Ctrl-C), after the scripts running on the nodes end and what it made
//! is removed.

use crate::load;
use kscratch_backends::ssh::{Endpoint, Output, SshConfig, SshError};
use kscratch_backends::ssh_backend::{state_dir, SshBackend, SshBackendOptions};
use kscratch_backends::verify::{self as remote, Connect, Observed, Run};
use kscratch_sim::verify::{
    self as cmp, CellResult, Client, Egress, RealProbe, Seen, VerifyReport,
};
use kscratch_sim::CheckOptions;
use std::net::{IpAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    scenario: crate::ScenarioArgs,
    /// Predict with this what-if fault (repeatable; the forms of `kscratch
    /// check --fault`): after `kscratch apply --fault F --break-my-cluster`,
    /// `verify --fault F` must agree cell by cell.
    #[arg(long = "fault", value_name = "FAULT")]
    faults: Vec<String>,
    /// Output: a readable report, or JSON with both verdicts of every cell.
    #[arg(long, value_enum, default_value_t = crate::Format::Text)]
    format: crate::Format,
    /// Probe endpoints per node (1-8).
    #[arg(long, value_name = "N", default_value_t = 2)]
    probes_per_node: usize,
    /// Nodes worked on at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    parallel: usize,
    /// Also measure egress from every probe to this operator-given TCP
    /// endpoint (IP:PORT); verify sends nothing anywhere else outside the
    /// cluster.
    #[arg(long, value_name = "IP:PORT")]
    egress_target: Option<String>,
    /// Trust an unknown host key on first use and record it (hashed) in known_hosts.
    #[arg(long)]
    accept_new_host_keys: bool,
    /// The OpenSSH known_hosts file host keys are verified against [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Seconds to connect to a node, authenticate and start its session.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    connect_timeout: u64,
    /// Measure every node pair up to this many nodes; above it, a sample
    /// stratified over the simulator's equivalence classes (odd nodes
    /// always against every node).
    #[arg(long, value_name = "N", default_value_t = cmp::ALL_PAIRS_UP_TO)]
    all_pairs_up_to: usize,
    /// The sample's seed (the report prints the one it used): the same
    /// seed on the same cluster and faults measures the same cells.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Only remove what earlier verify runs left on the nodes when their
    /// owner is gone (killed, its machine rebooted), then exit; every run
    /// also does this before it makes anything.
    #[arg(long)]
    cleanup_only: bool,
}

impl VerifyArgs {
    /// `apply --verify`: verify what apply just did, with its connection
    /// settings and faults (the IPAM lock is already written: `--locked`).
    pub fn after_apply(
        scenario: PathBuf,
        faults: Vec<String>,
        known_hosts: Option<PathBuf>,
        accept_new_host_keys: bool,
        connect_timeout: u64,
        parallel: usize,
    ) -> VerifyArgs {
        VerifyArgs {
            scenario: crate::ScenarioArgs {
                scenario,
                locked: true,
            },
            faults,
            format: crate::Format::Text,
            probes_per_node: 2,
            parallel,
            egress_target: None,
            accept_new_host_keys,
            known_hosts,
            connect_timeout,
            all_pairs_up_to: cmp::ALL_PAIRS_UP_TO,
            seed: None,
            cleanup_only: false,
        }
    }
}

/// Seconds each remote phase may take on a node.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(args: VerifyArgs) -> Result<ExitCode, load::Error> {
    crate::cmd_apply::init_tracing();
    let json = matches!(args.format, crate::Format::Json);
    let path = &args.scenario.scenario;
    let loaded = match load::scenario_read_only(path, args.scenario.locked) {
        Err(e) if json => return crate::machine_error(e, false),
        r => r?,
    };
    crate::diag(&loaded.warnings.to_string());
    let s = &loaded.scenario;
    let faults = crate::cmd_check::faults(path, s, &args.faults)?;
    if !(1..=8).contains(&args.probes_per_node) {
        return Err(load::Error::Usage(format!(
            "error: --probes-per-node {}: use 1 to 8",
            args.probes_per_node
        )));
    }
    let egress = match &args.egress_target {
        None => None,
        Some(t) => Some(t.parse::<SocketAddrV4>().map_err(|_| {
            load::Error::Usage(format!(
                "error: --egress-target {t:?} is not IP:PORT (an IPv4 address and a TCP port, e.g. 203.0.113.10:443)"
            ))
        })?),
    };
    let known_hosts = crate::cmd_apply::known_hosts_file(args.known_hosts.as_deref())?;

    // The prediction first: it needs no machine.
    let plan = kscratch_core::plan::plan(s);
    let opts = CheckOptions {
        faults,
        extra_services: 0,
    };
    let mut sim = kscratch_sim::simulate(s, &plan, &opts)
        .map_err(|e| load::Error::Usage(format!("error: {e}")))?;
    let check = kscratch_sim::check(s, &plan, &opts)
        .map_err(|e| load::Error::Usage(format!("error: {e}")))?;
    let nodes: Vec<(String, IpAddr)> = s.nodes.iter().map(|n| (n.name.clone(), n.ip)).collect();
    let mut not_measured = Vec::new();
    let measured: Vec<usize> = (0..s.nodes.len())
        .filter(|&i| {
            let ok = cmp::predicts_pods_on(&sim, &s.nodes[i].name);
            if !ok {
                not_measured.push(format!(
                    "{}: no pods run there in the plan, so no probe either",
                    s.nodes[i].name
                ));
            }
            ok
        })
        .collect();

    let mut ssh = SshConfig::new(known_hosts);
    ssh.accept_new_host_keys = args.accept_new_host_keys;
    ssh.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    let backend = SshBackend::new(
        s,
        &plan,
        SshBackendOptions {
            ssh,
            scenario_dir: path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            state_dir: state_dir(path, &s.name),
            step_timeout: PHASE_TIMEOUT,
            dry_run: true,
        },
    );
    let eps: Vec<&Endpoint> = measured
        .iter()
        .filter_map(|&i| backend.endpoint(i))
        .collect();
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let me = remote::Owner::this_process();
    let run = Run {
        owner: me.to_string(),
        ..Run::new(seed, args.probes_per_node, kscratch_sim::prepare::POD_PORT)
    };
    // Which node pairs: all, or a sample over the simulator's classes.
    let names: Vec<&str> = measured.iter().map(|&i| s.nodes[i].name.as_str()).collect();
    // The probes are CNI ADDs made after the faults: the prediction is the
    // cluster after them (an ADD turns ip_forward on again, as any pod start
    // does; `cmp::probes_attached`).
    cmp::probes_attached(&mut sim, &names)
        .map_err(|e| load::Error::Usage(format!("error: {e}")))?;
    // 32 bits by default: short to type, exact in any JSON reader.
    let sample_seed = args.seed.unwrap_or((seed >> 16) & 0xffff_ffff);
    let (strata, odd) = cmp::strata(&sim, s, &names);
    let pairs = cmp::sample_pairs(
        names.len(),
        &strata,
        &odd,
        sample_seed,
        args.all_pairs_up_to,
    );
    let sampled = names.len() > args.all_pairs_up_to;
    let sampling = cmp::Sampling {
        all_pairs_up_to: args.all_pairs_up_to,
        sampled,
        seed: sampled.then_some(sample_seed),
        node_pairs: pairs.len(),
        of: names.len() * names.len(),
        odd_nodes: odd.iter().map(|&k| names[k].to_string()).collect(),
        pairs: if sampled {
            pairs
                .iter()
                .map(|&(a, b)| [names[a].to_string(), names[b].to_string()])
                .collect()
        } else {
            Vec::new()
        },
    };
    let pair_names: std::collections::BTreeSet<(&str, &str)> =
        pairs.iter().map(|&(a, b)| (names[a], names[b])).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| load::Error::Usage(format!("error: cannot start the async runtime: {e}")))?;
    if args.cleanup_only {
        let problems = rt.block_on(async {
            let refused: Vec<String> = backend
                .connect_all()
                .await
                .into_iter()
                .map(|(_, e)| e.to_string())
                .collect();
            let problems = if refused.is_empty() {
                let nodes: Vec<usize> = measured.clone();
                let listed =
                    remote::on_nodes(backend.pool(), &eps, args.parallel, PHASE_TIMEOUT, |k| {
                        remote::runs_script(nodes[k])
                    })
                    .await
                    .into_iter()
                    .zip(&eps)
                    .map(|(a, ep)| {
                        failed(ep, "listing earlier verify runs", a).map(|o| remote::parse_runs(&o))
                    })
                    .collect();
                let (said, problems) =
                    reap(backend.pool(), &eps, &nodes, &me, args.parallel, listed).await;
                if said.is_empty() && problems.is_empty() {
                    eprintln!("no run left by a verify that is gone");
                }
                problems
            } else {
                refused
            };
            backend.pool().disconnect_all().await;
            problems
        });
        for l in &problems {
            eprintln!("error: {l}");
        }
        return Ok(if problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    }
    let apiserver = cmp::apiserver_endpoint(s);
    // Service VIPs: from each node and its last probe, to every Service a
    // real cluster has, as many tries as the prediction's endpoints need.
    let (services, service_notes) = cmp::real_services(&sim);
    let mut vips: Vec<VipPlanned> = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let last = RealProbe {
            name: format!("{name}/p{}", args.probes_per_node - 1),
            node: name.to_string(),
            index: args.probes_per_node - 1,
            ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        };
        for (from, client) in [
            (None, Client::Node(name)),
            (Some(last.index), Client::Probe(&last)),
        ] {
            for (v, svc) in services.iter().enumerate() {
                match cmp::predict_vip(&sim, s, client, svc) {
                    Some(Ok(predicted)) => vips.push(VipPlanned {
                        node: k,
                        from,
                        service: v,
                        tries: cmp::vip_tries(&predicted),
                        predicted,
                    }),
                    Some(Err(e)) => not_measured.push(format!(
                        "Service {} from {}: the prediction has too many paths ({e})",
                        svc.key(),
                        match client {
                            Client::Probe(p) => p.name.clone(),
                            Client::Node(n) => n.to_string(),
                        }
                    )),
                    None => {}
                }
            }
        }
    }
    let vip_targets: Vec<(IpAddr, u16)> = services.iter().map(|d| (d.cluster_ip, d.port)).collect();
    let targets = Targets {
        egress,
        nodes: &nodes,
        pairs: &pair_names,
        apiserver: &apiserver,
        vips: &vips,
        vip_targets: &vip_targets,
    };
    let started = Instant::now();
    let measured_run = rt.block_on(async {
        let runs: Vec<Run> = measured.iter().map(|&i| run.on_node(i)).collect();
        // Ctrl-C stops the run at the end of the scripts running on the
        // nodes, then what was made is removed through the same sessions.
        // Abandoning a script half-way would make the cleanup run in a new
        // session alongside it, and a probe made after the cleanup looked
        // would stay. A second Ctrl-C stops at once.
        let stop = AtomicBool::new(false);
        let run = measure(&backend, &eps, &runs, &me, args.parallel, &targets, &stop);
        tokio::pin!(run);
        let r = tokio::select! {
            r = &mut run => r,
            () = interrupted() => {
                eprintln!(
                    "interrupted: removing what verify made on the nodes once the scripts running there end (Ctrl-C again stops at once)"
                );
                stop.store(true, Ordering::Relaxed);
                tokio::select! {
                    r = &mut run => r,
                    () = interrupted() => Err(Stop {
                        messages: vec![
                            "interrupted again: what verify made may be left on the nodes; the next `kscratch verify` (or `--cleanup-only`) removes it".into(),
                        ],
                        created: true,
                        interrupted: true,
                    }),
                }
            }
        };
        backend.pool().disconnect_all().await;
        r
    });
    let wall = started.elapsed();
    let m = match measured_run {
        Ok(m) => m,
        Err(Stop {
            messages,
            created,
            interrupted,
        }) => {
            for l in &messages {
                eprintln!("error: {l}");
            }
            if !created {
                eprintln!("nothing was created on any node");
            } else if messages.is_empty() {
                eprintln!("everything verify made on the nodes was removed");
            }
            // 130: the shell's status for a command ended by SIGINT.
            return Ok(ExitCode::from(if interrupted { 130 } else { 2 }));
        }
    };
    for l in &m.leftovers {
        eprintln!("error: cleanup left {l}");
    }

    // Real against predicted, cell by cell.
    let mut cells = Vec::new();
    for (from, to, seen) in &m.cells {
        let client = match from {
            Some(p) => Client::Probe(&m.probes[*p]),
            None => Client::Node(&m.probes[*to].node),
        };
        let to = &m.probes[*to];
        let Some((predicted, tf, tt)) = cmp::predict(&sim, client, to, &nodes) else {
            continue;
        };
        let agrees = seen.agrees(&predicted);
        cells.push(CellResult {
            from: match client {
                Client::Probe(p) => p.name.clone(),
                Client::Node(n) => n.to_string(),
            },
            to: to.name.clone(),
            real: seen.clone(),
            predicted,
            agrees,
            trace: (!agrees).then(|| cmp::trace_text(&sim, &tf, &tt)),
        });
    }
    not_measured.extend(m.proxy_notes);
    let mut mtu_cells = Vec::new();
    for (p, q, seen) in &m.mtu {
        let (from, to) = (&m.probes[*p], &m.probes[*q]);
        let Some((predicted, tf, tt)) = cmp::predict_mtu(&sim, from, to) else {
            continue;
        };
        let agrees = seen.agrees(&predicted);
        mtu_cells.push(CellResult {
            from: from.name.clone(),
            to: to.name.clone(),
            real: seen.clone(),
            predicted,
            agrees,
            trace: (!agrees).then(|| cmp::trace_text(&sim, &tf, &tt)),
        });
    }
    let target = format!("apiserver {}:{}", apiserver.0, apiserver.1);
    let apiserver_cells: Vec<CellResult> = m
        .apiserver
        .iter()
        .filter_map(|(node, seen)| {
            let predicted = cmp::predict_apiserver(&sim, s, node)?;
            let agrees = seen.agrees(&predicted);
            Some(CellResult {
                from: node.clone(),
                to: target.clone(),
                real: seen.clone(),
                // The simulator's reason is in the predicted failure's detail.
                predicted,
                agrees,
                trace: None,
            })
        })
        .collect();
    not_measured.extend(service_notes);
    let mut service_cells: Vec<cmp::ServiceCell> = Vec::new();
    for (i, seen) in &m.vips {
        let planned = &vips[*i];
        let svc = services[planned.service];
        let mut connected = 0;
        let mut tried = 0;
        let mut known = true;
        let mut landed: std::collections::BTreeMap<String, usize> = Default::default();
        let mut complaints = Vec::new();
        for o in seen {
            match o {
                remote::VipSeen::Connected { endpoint } => {
                    tried += 1;
                    connected += 1;
                    match endpoint {
                        Some(ip) => *landed.entry(cmp::endpoint_name(s, *ip)).or_default() += 1,
                        None => known = false,
                    }
                }
                remote::VipSeen::Failed { detail } => {
                    tried += 1;
                    complaints.push(detail.clone());
                }
                remote::VipSeen::NotTried { detail } => complaints.push(detail.clone()),
            }
        }
        let name = names[planned.node];
        let mut cell = cmp::ServiceCell {
            from: match planned.from {
                Some(p) => format!("{name}/p{p}"),
                None => name.to_string(),
            },
            service: svc.key(),
            vip: svc.cluster_ip.to_string(),
            tries: tried,
            connected,
            real_endpoints: if known {
                landed.into_iter().collect()
            } else {
                Vec::new()
            },
            endpoints_known: known,
            miss_probability: planned
                .predicted
                .endpoints
                .iter()
                .map(|(_, q)| cmp::miss_probability(*q, tried))
                .fold(0.0, f64::max),
            predicted: planned.predicted.clone(),
            agrees: false,
            detail: None,
        };
        cell.judge();
        if !cell.agrees {
            if let Some(c) = complaints.first() {
                cell.detail = Some(format!(
                    "{}; real: {c}",
                    cell.detail.take().unwrap_or_default()
                ));
            }
        }
        service_cells.push(cell);
    }
    if egress.is_none() {
        not_measured.push(
            "egress: no --egress-target given (verify sends nothing outside the cluster unasked)"
                .into(),
        );
    }
    let egress_cells: Vec<Egress> = egress
        .map(|t| {
            m.egress
                .iter()
                .map(|(p, ok)| Egress {
                    from: m.probes[*p].name.clone(),
                    target: t.to_string(),
                    connects: *ok,
                })
                .collect()
        })
        .unwrap_or_default();
    let disagreements = cells
        .iter()
        .chain(&mtu_cells)
        .chain(&apiserver_cells)
        .filter(|c| !c.agrees)
        .count()
        + service_cells.iter().filter(|c| !c.agrees).count();
    let report = VerifyReport {
        cluster: s.name.clone(),
        faults: sim.faults.iter().map(|f| f.to_string()).collect(),
        probes_per_node: args.probes_per_node,
        probes: m.probes.clone(),
        sampling,
        cells,
        mtu: mtu_cells,
        apiserver: apiserver_cells,
        services: service_cells,
        disagreements,
        egress: egress_cells,
        not_measured,
        prediction_passed: check.passed,
        prediction_failures: check
            .checks
            .iter()
            .filter(|c| !c.passed())
            .map(|c| format!("{} ({} of {} probes fail)", c.title, c.failed, c.probes))
            .collect(),
        passed: disagreements == 0 && check.passed && m.leftovers.is_empty(),
    };
    if json {
        crate::out(&crate::output::json("verify", &report));
    } else {
        crate::out(&report.to_string());
        crate::out(&format!(
            "measured in {:.2} s on {} nodes\n",
            wall.as_secs_f64(),
            eps.len()
        ));
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What one measured connection stands for.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// From a probe (or, `None`, its node) to a probe.
    Pod(Option<usize>, usize),
    /// A DF datagram of the pod MTU, from a probe to a probe on another node.
    Mtu(usize, usize),
    /// From a probe to `--egress-target`.
    Egress(usize),
}

/// What the run measured on the real nodes.
struct Measured {
    probes: Vec<RealProbe>,
    /// From a probe (`Some`) or from the target probe's node (`None`), to a probe; what it saw.
    cells: Vec<(Option<usize>, usize, Seen)>,
    /// From each probe to `--egress-target`: did it connect.
    egress: Vec<(usize, bool)>,
    /// Pod-MTU datagrams between nodes: from, to, what came back.
    mtu: Vec<(usize, usize, Seen)>,
    /// Each node (its name) to the apiserver endpoint.
    apiserver: Vec<(String, Seen)>,
    /// Each planned VIP connection set (its index in the plan) measured on
    /// a node where kube-proxy runs: what every try saw.
    vips: Vec<(usize, Vec<remote::VipSeen>)>,
    proxy_notes: Vec<String>,
    leftovers: Vec<String>,
}

/// What a run measures besides the probes' own pairs.
struct Targets<'a> {
    /// `--egress-target`.
    egress: Option<SocketAddrV4>,
    /// Every node of the scenario, to name what a receiver saw.
    nodes: &'a [(String, IpAddr)],
    /// The node pairs measured (all, or a sample).
    pairs: &'a std::collections::BTreeSet<(&'a str, &'a str)>,
    /// The apiserver endpoint, as the kubeconfigs name it.
    apiserver: &'a (String, u16),
    /// Service VIP connections, and each Service's VIP and port.
    vips: &'a [VipPlanned],
    vip_targets: &'a [(IpAddr, u16)],
}

/// Connections planned from one node (its position among the measured
/// nodes), or its probe `from`, to one Service, with the prediction.
struct VipPlanned {
    node: usize,
    from: Option<usize>,
    service: usize,
    predicted: cmp::VipPrediction,
    tries: usize,
}

/// Why the run stopped before measuring; `created` when probes were made
/// (and then removed again) on some node.
struct Stop {
    messages: Vec<String>,
    created: bool,
    interrupted: bool,
}

fn failed(ep: &Endpoint, what: &str, r: Result<Output, SshError>) -> Result<String, String> {
    match r {
        Ok(o) if o.status == Some(0) => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{}: {what}: {}{}",
            ep.node,
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Measures; `stop` (Ctrl-C) is looked at between the rounds of scripts:
/// set, the run creates nothing more, measures nothing more, and removes
/// what it made.
async fn measure(
    backend: &SshBackend,
    eps: &[&Endpoint],
    runs: &[Run],
    me: &remote::Owner,
    parallel: usize,
    targets: &Targets<'_>,
    stop: &AtomicBool,
) -> Result<Measured, Stop> {
    let stopped = || stop.load(Ordering::Relaxed);
    let interrupted_before_creating = || Stop {
        messages: Vec::new(),
        created: false,
        interrupted: true,
    };
    let Targets {
        egress,
        nodes,
        pairs,
        apiserver,
        vips,
        vip_targets,
    } = *targets;
    let pool = backend.pool();
    // Every node first: host key, login, sudo; a node that cannot be used stops the run.
    let refused: Vec<String> = backend
        .connect_all()
        .await
        .into_iter()
        .map(|(_, e)| e.to_string())
        .collect();
    if !refused.is_empty() {
        return Err(Stop {
            messages: refused,
            created: false,
            interrupted: false,
        });
    }
    if stopped() {
        return Err(interrupted_before_creating());
    }
    // The checks, and the runs earlier verifies left, in one round trip.
    let answers = remote::on_nodes(pool, eps, parallel, PHASE_TIMEOUT, |k| {
        remote::runs_then_prepare_script(runs[k].node)
    })
    .await;
    let mut prepared = Vec::new();
    let mut problems = Vec::new();
    let mut listed = Vec::new();
    for (ep, a) in eps.iter().zip(answers) {
        let out = failed(ep, "cannot measure", a);
        listed.push(out.clone().map(|o| remote::parse_runs(&o)));
        match out.and_then(|out| {
            remote::parse_prepare(remote::after_runs(&out)).map_err(|e| format!("{}: {e}", ep.node))
        }) {
            Ok(p) => prepared.push(p),
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(Stop {
            messages: problems,
            created: false,
            interrupted: false,
        });
    }
    // What killed runs left is removed first (said on stderr); a failure
    // there is reported and does not stop this run.
    let indices: Vec<usize> = runs.iter().map(|r| r.node).collect();
    for l in reap(pool, eps, &indices, me, parallel, listed).await.1 {
        eprintln!("error: {l}");
    }
    if stopped() {
        return Err(interrupted_before_creating());
    }

    // From here on, cleanup runs whatever happens.
    let answers = remote::on_nodes(pool, eps, parallel, PHASE_TIMEOUT, |k| {
        remote::up_script(&runs[k], &prepared[k].cni_bin, &prepared[k].network)
    })
    .await;
    let mut probes = Vec::new();
    for ((ep, a), run) in eps.iter().zip(answers).zip(runs) {
        match failed(ep, "cannot create the probes", a)
            .and_then(|out| remote::parse_up(run, &out).map_err(|e| format!("{}: {e}", ep.node)))
        {
            Ok(ips) => probes.extend(ips.into_iter().enumerate().map(|(i, ip)| RealProbe {
                name: format!("{}/p{i}", ep.node),
                node: ep.node.clone(),
                index: i,
                ip: IpAddr::V4(ip),
            })),
            Err(e) => problems.push(e),
        }
    }
    let mut result = Measured {
        probes,
        cells: Vec::new(),
        egress: Vec::new(),
        mtu: Vec::new(),
        apiserver: Vec::new(),
        vips: Vec::new(),
        proxy_notes: prepared
            .iter()
            .zip(eps)
            .filter(|(p, _)| !p.kube_proxy_running)
            .map(|(_, ep)| {
                format!(
                    "Service VIPs from {}: not measurable here: kube-proxy not running",
                    ep.node
                )
            })
            .collect(),
        leftovers: Vec::new(),
    };
    // Each node's answer to the measuring script, and its VIP connections.
    let mut outs: Vec<Result<String, String>> = Vec::new();
    let mut vip_plans: Vec<Vec<(usize, remote::VipTry)>> = Vec::new();
    if problems.is_empty() && !stopped() {
        // Per node: its probes to every probe, the node to its own probes,
        // its first probe's DF datagram to every other node's first probe,
        // and egress.
        let plans: Vec<Vec<(Connect, Kind)>> = eps
            .iter()
            .zip(&prepared)
            .map(|(ep, prep)| {
                let port = runs[0].port;
                let probes = &result.probes;
                let mine: Vec<usize> = (0..probes.len())
                    .filter(|&p| probes[p].node == ep.node)
                    .collect();
                let conn = |from: Option<usize>, to: IpAddr| Connect {
                    from: from.map(|p| probes[p].index),
                    to,
                    port,
                    df_payload: None,
                };
                let mut v = Vec::new();
                let paired = |to: &RealProbe| pairs.contains(&(ep.node.as_str(), to.node.as_str()));
                for &p in &mine {
                    for (q, to) in probes.iter().enumerate() {
                        if paired(to) {
                            v.push((conn(Some(p), to.ip), Kind::Pod(Some(p), q)));
                        }
                    }
                    if let Some(t) = egress {
                        let c = Connect {
                            port: t.port(),
                            ..conn(Some(p), IpAddr::V4(*t.ip()))
                        };
                        v.push((c, Kind::Egress(p)));
                    }
                }
                for &q in &mine {
                    v.push((conn(None, probes[q].ip), Kind::Pod(None, q)));
                }
                if let Some(&p) = mine.first() {
                    // IPv4 and UDP headers: the datagram is one pod-MTU packet.
                    let size = prep.mtu.saturating_sub(28);
                    for (q, to) in probes.iter().enumerate() {
                        if to.index == 0 && to.node != ep.node && paired(to) {
                            let c = Connect {
                                df_payload: Some(size),
                                ..conn(Some(p), to.ip)
                            };
                            v.push((c, Kind::Mtu(p, q)));
                        }
                    }
                }
                v
            })
            .collect();
        // Service VIPs from the nodes where kube-proxy runs (and their last
        // probe), measured alongside, as is each node's apiserver endpoint:
        // one script per node.
        // Source ports above the kernel's ephemeral range (ending at 60999 by
        // default), from a base that differs per run: an earlier run's
        // entries may still be in conntrack (TIME_WAIT, two minutes).
        let base = 61000 + (u32::from_str_radix(&runs[0].id, 16).unwrap_or(0) % 3000) as u16;
        vip_plans = (0..eps.len())
            .map(|k| {
                let mut v = Vec::new();
                if !prepared[k].kube_proxy_running {
                    return v;
                }
                for (i, planned) in vips.iter().enumerate().filter(|(_, p)| p.node == k) {
                    let (vip, port) = vip_targets[planned.service];
                    for _ in 0..planned.tries {
                        let sport = base + v.len() as u16;
                        v.push((
                            i,
                            remote::VipTry {
                                from: planned.from,
                                vip,
                                port,
                                sport,
                                src: planned.from.and_then(|i| {
                                    result
                                        .probes
                                        .iter()
                                        .find(|p| p.node == eps[k].node && p.index == i)
                                        .map(|p| p.ip)
                                }),
                            },
                        ));
                    }
                }
                v
            })
            .collect();
        let (host, port) = apiserver;
        let answers = remote::on_nodes(pool, eps, parallel, PHASE_TIMEOUT, |k| {
            let conns: Vec<Connect> = plans[k].iter().map(|c| c.0.clone()).collect();
            let tries: Vec<remote::VipTry> = vip_plans[k].iter().map(|t| t.1.clone()).collect();
            remote::together(&[
                remote::measure_script(&runs[k], &conns),
                remote::vip_script(&runs[k], &tries),
                remote::apiserver_script(host, *port),
            ])
        })
        .await;
        outs = eps
            .iter()
            .zip(answers)
            .map(|(ep, a)| failed(ep, "cannot measure", a))
            .collect();
        for ((ep, out), plan) in eps.iter().zip(&outs).zip(&plans) {
            let conns: Vec<Connect> = plan.iter().map(|c| c.0.clone()).collect();
            let seen = match out.clone().and_then(|out| {
                remote::parse_measure(&conns, &out).map_err(|e| format!("{}: {e}", ep.node))
            }) {
                Ok(seen) => seen,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            for ((_, kind), o) in plan.iter().zip(seen) {
                let fails = |detail: String| Seen::Fails {
                    detail: Some(detail),
                };
                match *kind {
                    Kind::Egress(p) => result
                        .egress
                        .push((p, !matches!(o, Observed::Failed { .. }))),
                    Kind::Mtu(p, q) => result.mtu.push((
                        p,
                        q,
                        match o {
                            Observed::Echoed => Seen::Reaches {
                                peer: cmp::ECHOED.into(),
                            },
                            Observed::Failed { detail } => fails(detail),
                            other => fails(format!("{other:?}")),
                        },
                    )),
                    Kind::Pod(from, to) => {
                        let sender = from.map(|p| result.probes[p].ip);
                        let seen = match o {
                            Observed::Reached { peer } => Seen::Reaches {
                                peer: cmp::peer_name(peer, sender, nodes),
                            },
                            Observed::Failed { detail } => fails(detail),
                            Observed::Connected | Observed::Echoed | Observed::Answered { .. } => {
                                fails("connected, but no answer came back".into())
                            }
                        };
                        result.cells.push((from, to, seen));
                    }
                }
            }
        }
    }

    // What each node's VIP connections saw.
    if problems.is_empty() && !outs.is_empty() {
        for ((ep, out), plan) in eps.iter().zip(&outs).zip(&vip_plans) {
            if plan.is_empty() {
                continue;
            }
            let Ok(out) = out else { continue };
            let tries: Vec<remote::VipTry> = plan.iter().map(|t| t.1.clone()).collect();
            match remote::parse_vip(&tries, out).map_err(|e| format!("{}: {e}", ep.node)) {
                Ok(seen) => {
                    let mut by: std::collections::BTreeMap<usize, Vec<remote::VipSeen>> =
                        Default::default();
                    for ((i, _), o) in plan.iter().zip(seen) {
                        by.entry(*i).or_default().push(o);
                    }
                    result.vips.extend(by);
                }
                Err(e) => problems.push(e),
            }
        }
    }

    // Each node to the apiserver endpoint; nothing is made for it.
    if problems.is_empty() && !outs.is_empty() {
        for (ep, out) in eps.iter().zip(&outs) {
            let Ok(out) = out else { continue };
            match remote::parse_apiserver(out).map_err(|e| format!("{}: {e}", ep.node)) {
                Ok(Observed::Answered { .. }) => result.apiserver.push((
                    ep.node.clone(),
                    Seen::Reaches {
                        peer: cmp::ANSWERED.into(),
                    },
                )),
                Ok(Observed::Failed { detail }) => result.apiserver.push((
                    ep.node.clone(),
                    Seen::Fails {
                        detail: Some(detail),
                    },
                )),
                Ok(other) => problems.push(format!("{}: apiserver: {other:?}", ep.node)),
                Err(e) => problems.push(e),
            }
        }
    }

    // Cleanup on every node, then proof that nothing is left.
    let (more, leftovers) = cleanup(pool, eps, runs, parallel).await;
    problems.extend(more);
    result.leftovers = leftovers;
    if !problems.is_empty() || stopped() {
        problems.extend(result.leftovers.iter().map(|l| format!("cleanup left {l}")));
        return Err(Stop {
            messages: problems,
            created: true,
            interrupted: stopped(),
        });
    }
    Ok(result)
}

/// Removes what the run made on every node (safe where nothing was made),
/// then lists what is still there: (problems, leftovers).
async fn cleanup(
    pool: &kscratch_backends::ssh::SshPool,
    eps: &[&Endpoint],
    runs: &[Run],
    parallel: usize,
) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut leftovers = Vec::new();
    let answers = remote::on_nodes(pool, eps, parallel, PHASE_TIMEOUT, |k| {
        remote::cleanup_script(&runs[k])
    })
    .await;
    for (ep, a) in eps.iter().zip(answers) {
        if let Err(e) = failed(ep, "cleanup", a) {
            problems.push(e);
        }
    }
    let answers = remote::on_nodes(pool, eps, parallel, PHASE_TIMEOUT, |k| {
        remote::leftovers_script(&runs[k])
    })
    .await;
    for (ep, a) in eps.iter().zip(answers) {
        match failed(ep, "checking for leftovers", a) {
            Ok(out) => {
                leftovers.extend(out.lines().map(|l| format!("{} on {}", l.trim(), ep.node)))
            }
            Err(e) => problems.push(e),
        }
    }
    (problems, leftovers)
}

/// Of the runs `listed` on each node (`eps[k]` is the scenario's node
/// `nodes[k]`, its runs listed by [`remote::runs_script`]), finds those whose owner is gone and removes what they left, CNI DEL
/// included: (what was removed, problems). Each removal is said on stderr.
async fn reap(
    pool: &kscratch_backends::ssh::SshPool,
    eps: &[&Endpoint],
    nodes: &[usize],
    me: &remote::Owner,
    parallel: usize,
    listed: Vec<Result<Vec<remote::FoundRun>, String>>,
) -> (Vec<String>, Vec<String>) {
    let mut said = Vec::new();
    let mut problems = Vec::new();
    let mut gone: Vec<Vec<(Run, String)>> = vec![Vec::new(); eps.len()];
    for (k, (ep, found_runs)) in eps.iter().zip(listed).enumerate() {
        match found_runs {
            Ok(found_runs) => {
                for found in found_runs {
                    match remote::owner_gone(&found, me, remote::process_alive) {
                        Some(why) => gone[k].push((Run::found(&found.id, nodes[k]), why)),
                        None => {
                            tracing::debug!(node = %ep.node, run = %found.id, "a verify run that may still be running: left alone")
                        }
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }
    if gone.iter().all(Vec::is_empty) {
        return (said, problems);
    }
    // One script per node: each run's cleanup in a subshell, then what is left.
    let both = |k: usize| {
        let mut text = String::from("st=0\n");
        for (r, _) in &gone[k] {
            text.push_str(&format!(
                "(\n{}\n) || st=5\n",
                remote::cleanup_script(r).text
            ));
        }
        for (r, _) in &gone[k] {
            text.push_str(&format!("(\n{}\n)\n", remote::leftovers_script(r).text));
        }
        text.push_str("exit $st\n");
        kscratch_backends::shell_render::Script {
            text,
            stdin: kscratch_backends::shell_render::Stdin::Empty,
        }
    };
    let answers = remote::on_nodes(pool, eps, parallel, PHASE_TIMEOUT, both).await;
    for (k, (ep, a)) in eps.iter().zip(answers).enumerate() {
        if gone[k].is_empty() {
            continue;
        }
        match failed(ep, "removing what a killed verify run left", a) {
            Ok(out) if out.trim().is_empty() => {
                for (r, why) in &gone[k] {
                    let l = format!("{}: removed what verify run {} left ({why})", ep.node, r.id);
                    eprintln!("{l}");
                    said.push(l);
                }
            }
            Ok(out) => problems.extend(
                out.lines()
                    .map(|l| format!("a killed verify run left {} on {}", l.trim(), ep.node)),
            ),
            Err(e) => problems.push(e),
        }
    }
    (said, problems)
}

/// Resolves on Ctrl-C (SIGINT); never, when the handler cannot be installed.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
