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
//! (Ctrl-C), after removing what it made.

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
    let sim = kscratch_sim::simulate(s, &plan, &opts)
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
    let run = Run::new(seed, args.probes_per_node, kscratch_sim::prepare::POD_PORT);
    // Which node pairs: all, or a sample over the simulator's classes.
    let names: Vec<&str> = measured.iter().map(|&i| s.nodes[i].name.as_str()).collect();
    let sample_seed = args.seed.unwrap_or(seed >> 1);
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
    let started = Instant::now();
    let measured_run = rt.block_on(async {
        let runs: Vec<Run> = measured.iter().map(|&i| run.on_node(i)).collect();
        // Ctrl-C stops the measuring where it is; what was made is removed all the same.
        let r = tokio::select! {
            r = measure(&backend, &eps, &runs, args.parallel, egress, &nodes, &pair_names) => r,
            () = interrupted() => {
                eprintln!("interrupted: removing what verify made on the nodes");
                let (mut messages, leftovers) =
                    cleanup(backend.pool(), &eps, &runs, args.parallel).await;
                messages.extend(leftovers.iter().map(|l| format!("cleanup left {l}")));
                Err(Stop { messages, created: true, interrupted: true })
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
    let disagreements = cells.iter().chain(&mtu_cells).filter(|c| !c.agrees).count();
    let report = VerifyReport {
        cluster: s.name.clone(),
        faults: sim.faults.iter().map(|f| f.to_string()).collect(),
        probes_per_node: args.probes_per_node,
        probes: m.probes.clone(),
        sampling,
        cells,
        mtu: mtu_cells,
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
    proxy_notes: Vec<String>,
    leftovers: Vec<String>,
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

async fn measure(
    backend: &SshBackend,
    eps: &[&Endpoint],
    runs: &[Run],
    parallel: usize,
    egress: Option<SocketAddrV4>,
    nodes: &[(String, IpAddr)],
    pairs: &std::collections::BTreeSet<(&str, &str)>,
) -> Result<Measured, Stop> {
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
    let answers = remote::on_nodes(pool, eps, parallel, PHASE_TIMEOUT, |_| {
        remote::prepare_script()
    })
    .await;
    let mut prepared = Vec::new();
    let mut problems = Vec::new();
    for (ep, a) in eps.iter().zip(answers) {
        match failed(ep, "cannot measure", a)
            .and_then(|out| remote::parse_prepare(&out).map_err(|e| format!("{}: {e}", ep.node)))
        {
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
        proxy_notes: prepared
            .iter()
            .zip(eps)
            .map(|(p, ep)| {
                if p.kube_proxy_running {
                    format!("Service VIPs from {}: kube-proxy runs there, but this version of verify does not probe Services", ep.node)
                } else {
                    format!("Service VIPs from {}: not measurable here: kube-proxy not running", ep.node)
                }
            })
            .collect(),
        leftovers: Vec::new(),
    };
    if problems.is_empty() {
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
        let answers = remote::on_nodes(pool, eps, parallel, PHASE_TIMEOUT, |k| {
            let conns: Vec<Connect> = plans[k].iter().map(|c| c.0.clone()).collect();
            remote::measure_script(&runs[k], &conns)
        })
        .await;
        for ((ep, a), plan) in eps.iter().zip(answers).zip(&plans) {
            let conns: Vec<Connect> = plan.iter().map(|c| c.0.clone()).collect();
            let seen = match failed(ep, "cannot measure", a).and_then(|out| {
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
                            Observed::Connected | Observed::Echoed => {
                                fails("connected, but no answer came back".into())
                            }
                        };
                        result.cells.push((from, to, seen));
                    }
                }
            }
        }
    }

    // Cleanup on every node, then proof that nothing is left.
    let (more, leftovers) = cleanup(pool, eps, runs, parallel).await;
    problems.extend(more);
    result.leftovers = leftovers;
    if !problems.is_empty() {
        problems.extend(result.leftovers.iter().map(|l| format!("cleanup left {l}")));
        return Err(Stop {
            messages: problems,
            created: true,
            interrupted: false,
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

/// Resolves on Ctrl-C (SIGINT); never, when the handler cannot be installed.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
