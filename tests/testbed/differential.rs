//! Differential: the reachability the real kernel shows on the testbed must
//! equal what the simulator predicts for the same scenario and the same
//! faults. A disagreement is a bug in one of the two.
//!
//! For each scenario (routed and VXLAN, 4 nodes) the plan is applied over
//! SSH, two pods per node are attached with the real CNI plugins, and then,
//! stage by stage, faults are added on the real nodes and in the simulator
//! alike: a pod route removed on one node, `ip_forward=0` on another, the
//! masquerade rule deleted on a third. At each stage every probe — pod to
//! pod across and within nodes, pod to the outside host — is measured with a
//! real TCP handshake and compared with the simulator's prediction for the
//! same handshake (the SYN delivered and the SYN-ACK back). Finally the
//! simulator's own kube-proxy rules are loaded into the real nodes with
//! `iptables-restore`, and Service VIPs are probed on both sides.

use super::apply::{apply_in_process, check_tools, plugin_config, scenario_copy};
use super::support::{self, Error, Pod, Probe, Result, Testbed};
use kscratch_core::scenario::Fault;
use kscratch_sim::netfilter::{explore, TakeFirst};
use kscratch_sim::walk::{tcp_connect, Place};
use kscratch_sim::CheckOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Fresh ports, so a probe never meets a previous probe's listener.
static PORT: AtomicU16 = AtomicU16::new(31000);

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn routed_cluster_on_the_real_kernel_agrees_with_the_simulator() -> Result<()> {
    differential("routed-4.yaml", "route-missing:node1:node3")
}

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn vxlan_cluster_on_the_real_kernel_agrees_with_the_simulator() -> Result<()> {
    differential("vxlan-4.yaml", "route-missing:node1:node3")
}

/// What one probe saw: the source address the receiver saw, or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Reached(IpAddr),
    Unreachable,
}

fn differential(file: &str, route_fault: &str) -> Result<()> {
    support::require();
    check_tools()?;
    let tb = Testbed::up(
        &format!("differential_{}", file.trim_end_matches(".yaml")),
        4,
    )?;
    let path = scenario_copy(&tb, file, 4)?;
    let applied = apply_in_process(&path, &tb.description.known_hosts)?;
    let text = std::fs::read_to_string(&path).map_err(|e| Error::new(e.to_string()))?;
    let scenario = kscratch_core::load(&path.display().to_string(), &text, None)
        .map_err(|d| Error::new(d.to_string()))?
        .scenario;
    let plan = kscratch_core::plan::plan(&scenario);
    assert_eq!(
        plan.pod_network(),
        applied.plan.pod_network(),
        "the simulator plans the same pod network as the apply did"
    );

    // Two pods per node, in the order the simulator's kubelet starts them, so
    // host-local gives them the same addresses on both sides.
    let mut pods = Vec::new();
    for node in tb.nodes() {
        let conflist = tb.node_run(node, &["cat", "/etc/cni/net.d/10-kscratch.conflist"])?;
        let config = plugin_config(&conflist)?;
        for suffix in ["a", "b"] {
            pods.push(tb.create_pod(node, &format!("{}-{suffix}", node.name), &config)?);
        }
    }

    let stages: Vec<(&str, Vec<&str>)> = vec![
        ("converged", vec![]),
        ("pod route removed on node1", vec![route_fault]),
        (
            "... and ip_forward=0 on node2",
            vec![route_fault, "ip-forward-off:node2"],
        ),
        (
            "... and masquerade rule deleted on node3",
            vec![
                route_fault,
                "ip-forward-off:node2",
                "masquerade-missing:node3",
            ],
        ),
    ];
    let mut applied_faults: BTreeSet<&str> = BTreeSet::new();
    for (title, faults) in &stages {
        for f in faults {
            if applied_faults.insert(f) {
                break_real_node(&tb, &scenario, f)?;
            }
        }
        let faults: Vec<Fault> = faults
            .iter()
            .map(|f| Fault::parse(f).expect("fault text"))
            .collect();
        let sim = kscratch_sim::simulate(
            &scenario,
            &plan,
            &CheckOptions {
                faults,
                ..Default::default()
            },
        )
        .map_err(Error::new)?;
        let (real, predicted) = (measure(&tb, &pods)?, predict(&sim, &pods)?);
        let wrong: Vec<String> = real
            .iter()
            .filter(|(k, v)| predicted.get(*k) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "  {} → {}: real {v:?}, simulator {:?}",
                    k.0,
                    k.1,
                    predicted.get(k)
                )
            })
            .collect();
        let reached = real
            .values()
            .filter(|v| matches!(v, Seen::Reached(_)))
            .count();
        println!(
            "[{file}] {title}: {} probes, {reached} reached; real kernel and simulator agree: {}",
            real.len(),
            wrong.is_empty()
        );
        assert!(
            wrong.is_empty(),
            "[{file}] {title}: the real kernel and the simulator disagree:\n{}",
            wrong.join("\n")
        );
        assert_eq!(real.len(), predicted.len());
    }

    // Services on top of the last stage: the faults stay, on both sides.
    let last: Vec<Fault> = stages
        .last()
        .map(|(_, f)| {
            f.iter()
                .map(|f| Fault::parse(f).expect("fault text"))
                .collect()
        })
        .unwrap_or_default();
    services_agree(&tb, &scenario, &plan, &pods, &last, file)?;
    Ok(())
}

/// The fault, done to the real node by hand.
fn break_real_node(tb: &Testbed, s: &kscratch_core::Scenario, fault: &str) -> Result<()> {
    let run =
        |node: &str, argv: &[&str]| -> Result<()> { tb.node_run(tb.node(node)?, argv).map(|_| ()) };
    match Fault::parse(fault).map_err(Error::new)? {
        Fault::RouteMissing { node, to: Some(to) } => {
            let cidr = s
                .pod_cidr(s.node_index(&to).expect("node of the scenario"))
                .to_string();
            run(&node, &["ip", "route", "del", &cidr])
        }
        Fault::IpForwardOff { node } => {
            run(&node, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
        }
        Fault::MasqueradeMissing { node } => {
            let rule = kscratch_core::plan::masquerade_rule(s).expect("the scenario masquerades");
            let mut argv = vec![
                "iptables".to_string(),
                "-t".into(),
                "nat".into(),
                "-D".into(),
                rule.chain.clone(),
            ];
            argv.extend(rule.to_args());
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            run(&node, &argv)
        }
        other => Err(Error::new(format!("no real-node form for {other}"))),
    }
}

type Matrix = BTreeMap<(String, String), Seen>;

/// Real handshakes: every pod to every pod (also on its own node), and to the outside host.
fn measure(tb: &Testbed, pods: &[Pod]) -> Result<Matrix> {
    let mut m = Matrix::new();
    for from in pods {
        for to in pods.iter().filter(|to| to.name != from.name) {
            let seen = match tb.probe_pod_to_pod(from, to)? {
                Probe::Reached { peer } => Seen::Reached(peer),
                Probe::Unreachable { .. } => Seen::Unreachable,
            };
            m.insert((from.name.clone(), to.name.clone()), seen);
        }
        let out = &tb.description.outside;
        let port = PORT.fetch_add(1, Ordering::Relaxed);
        let seen = match tb.tcp_probe(
            &from.netns,
            &out.netns,
            SocketAddr::new(IpAddr::V4(out.ip), port),
        )? {
            Probe::Reached { peer } => Seen::Reached(peer),
            Probe::Unreachable { .. } => Seen::Unreachable,
        };
        m.insert((from.name.clone(), "outside".into()), seen);
    }
    Ok(m)
}

/// The simulator's prediction of the same handshakes.
fn predict(sim: &kscratch_sim::Simulated, pods: &[Pod]) -> Result<Matrix> {
    let w = &sim.world;
    let place = |p: &Pod| -> Result<(Place, IpAddr)> {
        let n = w
            .nodes
            .iter()
            .position(|n| n.name == p.node)
            .ok_or_else(|| Error::new(format!("no node {} in the simulator", p.node)))?;
        let name = format!("probe-{}", p.name.rsplit('-').next().unwrap_or(""));
        let id = w.nodes[n]
            .pods
            .iter()
            .copied()
            .find(|&q| w.pods[q].name == name)
            .ok_or_else(|| Error::new(format!("no pod {name} on {} in the simulator", p.node)))?;
        let ip = w.pods[id].ip;
        if ip != IpAddr::V4(p.ip()) {
            return Err(Error::new(format!(
                "pod {} is {} on the testbed but {ip} in the simulator",
                p.name,
                p.ip()
            )));
        }
        Ok((Place::Pod(id), ip))
    };
    let mut m = Matrix::new();
    for from in pods {
        let (src_place, src) = place(from)?;
        for to in pods.iter().filter(|to| to.name != from.name) {
            let (dst_place, dst) = place(to)?;
            let seen = match tcp_connect(w, src_place, src, dst, 8080, &mut TakeFirst) {
                Some((at, peer)) if at == dst_place => Seen::Reached(peer),
                Some(_) | None => Seen::Unreachable,
            };
            m.insert((from.name.clone(), to.name.clone()), seen);
        }
        let seen = match tcp_connect(
            w,
            src_place,
            src,
            w.underlay.outside_ip,
            8080,
            &mut TakeFirst,
        ) {
            Some((Place::Outside, peer)) => Seen::Reached(peer),
            _ => Seen::Unreachable,
        };
        m.insert((from.name.clone(), "outside".into()), seen);
    }
    Ok(m)
}

/// The simulator's kube-proxy rules for its probe Services, loaded into the
/// real nodes: every endpoint a real VIP connection lands on must be one the
/// simulator predicts, and a Service without endpoints refuses on both sides.
fn services_agree(
    tb: &Testbed,
    s: &kscratch_core::Scenario,
    plan: &kscratch_core::plan::Plan,
    pods: &[Pod],
    faults: &[Fault],
    file: &str,
) -> Result<()> {
    let sim = kscratch_sim::simulate(
        s,
        plan,
        &CheckOptions {
            faults: faults.to_vec(),
            ..Default::default()
        },
    )
    .map_err(Error::new)?;
    let services: Vec<_> = sim
        .prepared
        .services
        .iter()
        .filter(|d| d.namespace == "kscratch")
        .cloned()
        .collect();
    let rules = kscratch_sim::prepare::kube_proxy_rules(&services, s.network.cluster_cidr)
        .map_err(Error::new)?;
    let restore = rules.ruleset().emit();
    for node in tb.nodes() {
        let out = support::run_bounded_with_stdin(
            Command::new("ip").args([
                "netns",
                "exec",
                &node.netns,
                "iptables-restore",
                "--noflush",
            ]),
            restore.as_bytes(),
            Duration::from_secs(30),
        )?;
        if !out.status.success() {
            return Err(Error::new(format!(
                "iptables-restore on {}: {}",
                node.name,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    let w = &sim.world;
    for svc in &services {
        for from in pods.iter().filter(|p| p.name.ends_with("-a")) {
            let n = w
                .nodes
                .iter()
                .position(|n| n.name == from.node)
                .expect("node");
            let q = w.nodes[n]
                .pods
                .iter()
                .copied()
                .find(|&q| w.pods[q].name == "probe-a")
                .expect("probe pod");
            // Every endpoint the simulator says the VIP can reach from here.
            let predicted: BTreeSet<IpAddr> = explore(1000, |br| {
                tcp_connect(w, Place::Pod(q), w.pods[q].ip, svc.cluster_ip, svc.port, br)
            })
            .map_err(|e| Error::new(e.to_string()))?
            .into_iter()
            .filter_map(|o| o.value)
            .filter_map(|(at, _)| match at {
                Place::Pod(p) => Some(w.pods[p].ip),
                _ => None,
            })
            .collect();
            let endpoints: Vec<&Pod> = pods
                .iter()
                .filter(|p| {
                    svc.endpoints
                        .iter()
                        .any(|(ip, _)| *ip == IpAddr::V4(p.ip()))
                })
                .collect();
            // Real tries sample the endpoints the kernel's statistic branches
            // pick: up to 16 (all unreachable branches 16 times running has a
            // chance of 2^-16 when half the endpoints answer), fewer once
            // every predicted endpoint was seen.
            let mut seen = BTreeSet::new();
            let tries = if predicted.is_empty() { 2 } else { 16 };
            for _ in 0..tries {
                if let Some(ep) = vip_probe(from, &endpoints, svc.cluster_ip, svc.port)? {
                    seen.insert(ep);
                }
                if seen == predicted {
                    break;
                }
            }
            println!(
                "[{file}] {} from {}: real endpoints {seen:?}, simulator {predicted:?}",
                svc.key(),
                from.name
            );
            // All real endpoints must be predicted, and the VIP answers on
            // the real kernel exactly when the simulator says it can.
            assert_eq!(
                seen.is_empty(),
                predicted.is_empty(),
                "{} from {}: real endpoints {seen:?}, simulator {predicted:?}",
                svc.key(),
                from.name
            );
            assert!(
                seen.is_subset(&predicted),
                "{} from {}: real endpoints {seen:?} not all predicted {predicted:?}",
                svc.key(),
                from.name
            );
            if svc.endpoints.is_empty() {
                assert!(
                    predicted.is_empty(),
                    "{}: a Service without endpoints must refuse",
                    svc.key()
                );
            }
        }
    }
    Ok(())
}

/// One connection from `from` to `vip:port`, with a listener on every
/// endpoint pod; returns the endpoint that accepted it.
fn vip_probe(from: &Pod, endpoints: &[&Pod], vip: IpAddr, port: u16) -> Result<Option<IpAddr>> {
    let mut listeners: Vec<Child> = Vec::new();
    let result = (|| -> Result<Option<IpAddr>> {
        for ep in endpoints {
            let child = support::spawn_in(
                &ep.netns,
                &[
                    "socat",
                    "-T5",
                    "TCP-LISTEN:8080,reuseaddr",
                    &format!("SYSTEM:echo at={}", ep.ip()),
                ],
            )?;
            listeners.push(child);
        }
        for ep in endpoints {
            wait_listening(&ep.netns)?;
        }
        let out = support::run_bounded(
            Command::new("ip").args([
                "netns",
                "exec",
                &from.netns,
                "socat",
                "-t3",
                "-T5",
                "-",
                &format!("TCP4:{vip}:{port},connect-timeout=2"),
            ]),
            Duration::from_secs(10),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("at="))
            .and_then(|ip| ip.parse().ok()))
    })();
    for mut l in listeners {
        let _ = l.kill();
        let _ = l.wait();
    }
    result
}

fn wait_listening(netns: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = support::exec_in(netns, &["ss", "-Hltn", "sport = :8080"])?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::new(format!(
                "no listener on :8080 in {netns} after 5 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
