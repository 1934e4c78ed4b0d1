//! Differential: the reachability the real kernel shows on the testbed must
//! equal what the simulator predicts for the same scenario and the same
//! faults. A disagreement is a bug in one of the two.
//!
//! For each scenario (routed and VXLAN, 4 nodes) the plan is applied over
//! SSH and two pods per node are attached with the real CNI plugins. Then,
//! stage by stage, faults are added: each stage's new faults are compiled to
//! their damage plan (`kscratch_core::plan::damage`, what `kscratch apply
//! --fault` runs) and executed over SSH on the real nodes, while the
//! simulator runs the same damage plan on its nodes. At every stage the real
//! cluster is measured and held against the simulator's verdict for the
//! same connections (request and reply).
//!
//! Where every node answers over SSH, the product measures: `kscratch verify
//! --fault ...` with the stage's faults must find every cell as predicted
//! (exit 0, or 1 when the prediction itself fails a check; no disagreement):
//! - every probe to every probe, same-node pairs and a probe to its own IP
//!   included, with the source address the receiver saw;
//! - every node to its own probes;
//! - pod-MTU DF datagrams between nodes;
//! - every node to the apiserver endpoint (a stand-in listener, as in the
//!   verify tests: the testbed runs no apiserver).
//!
//! The test's own harness measures what verify cannot hold against a
//! prediction, on the test's own pods:
//! - every pod to the outside host (egress, masqueraded or not, with the
//!   source address it saw: verify's egress target only says whether it
//!   answered);
//! - pods and nodes to the simulator's own test Services (`kscratch/*`),
//!   through its kube-proxy rules loaded into each real node with
//!   `iptables-restore` where the simulator's kube-proxy programmed them
//!   (these Services exist only in the simulation: verify measures only the
//!   Services every real cluster has, where a kube-proxy process runs).
//!
//! Once a node is down or its NIC is, verify cannot run (it refuses an
//! unreachable node, exit 2): those stages are measured by the harness
//! alone, every pod to every pod and every node to its own pods included.
//! Verify's probes are CNI ADDs, which turn `ip_forward` on again on every
//! node (the bridge plugin with `isGateway`); the harness's prediction after
//! a verify run includes them (`kscratch_sim::verify::probes_attached`).
//!
//! A fault that breaks one direction shows in both cells of the pair: the
//! matrix holds both directions, and every cell is asserted.
//!
//! Two damage actions would reach beyond a node on this shared kernel, and
//! only those are done the testbed's way (see [`OnTheTestbed`]): switching
//! the machine off (its links go down instead) and unloading br_netfilter
//! (the namespace's `net.bridge.bridge-nf-call-iptables=0` instead, the
//! per-namespace switch of the same hook). Restarting containerd holds by
//! itself: the testbed has none, and its CNI ADDs read the config from disk. Scaling the DNS Deployment is not
//! applicable here (no apiserver). Faults about docker do not apply
//! to these containerd scenarios, and the testbed has no apiserver or DNS
//! pod: `dns-pod-down` and `kube-proxy-down` act on the simulator's Services
//! and on which nodes get the Service rules.

use super::apply::{apply_in_process, check_tools, plugin_config, scenario_copy};
use super::support::{self, Error, Pod, Probe, Result, Testbed};
use super::verify::{nothing_left, stand_in_apiserver, verify_json};
use kscratch_backends::ssh::SshConfig;
use kscratch_backends::ssh_backend::{state_dir, SshBackend, SshBackendOptions};
use kscratch_core::exec::{
    self, Backend, ExecOptions, Outcome, Probe as StepProbe, StepCx, StepError,
};
use kscratch_core::plan::{Action, Service};
use kscratch_core::scenario::Fault;
use kscratch_core::Scenario;
use kscratch_sim::netfilter::{explore, TakeFirst};
use kscratch_sim::walk::{tcp_connect, Place};
use kscratch_sim::CheckOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Cumulative stages: each adds faults on top of the earlier ones.
type Stages = &'static [(&'static str, &'static [&'static str])];

const ROUTED: Stages = &[
    ("converged", &[]),
    (
        "node1 lost its route to node3's pods; FORWARD DROP on node2",
        &["route-missing:node1:node3", "forward-drop:node2"],
    ),
    (
        "... br_netfilter off on node2; strict rp_filter and no masquerade rule on node3",
        &[
            "br-netfilter-off:node2",
            "rp-filter-strict:node3",
            "masquerade-missing:node3",
        ],
    ),
    (
        "... ip_forward=0 and a 1400-byte NIC on node4; kube-proxy down on node3; apiserver firewalled; DNS pod down",
        &[
            "ip-forward-off:node4",
            "underlay-mtu:node4:1400",
            "kube-proxy-down:node3",
            "apiserver-firewalled",
            "dns-pod-down",
        ],
    ),
    (
        "... node4's NIC down; node3 off",
        &["nic-down:node4", "node-down:node3"],
    ),
];

const VXLAN: Stages = &[
    ("converged", &[]),
    (
        "node1 lost its FDB entry for node3; node2 its neighbour entry for node4",
        &["fdb-missing:node1:node3", "neigh-missing:node2:node4"],
    ),
    (
        "... node3 lost its route to node1's pods; the pod MTU raised to 1500; a 1400-byte NIC on node4",
        &[
            "route-missing:node3:node1",
            "overlay-mtu:1500",
            "underlay-mtu:node4:1400",
        ],
    ),
    (
        "... strict rp_filter on node4; br_netfilter off on node1; FORWARD DROP on node3",
        &[
            "rp-filter-strict:node4",
            "br-netfilter-off:node1",
            "forward-drop:node3",
        ],
    ),
    ("... node2's NIC down", &["nic-down:node2"]),
];

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn routed_cluster_on_the_real_kernel_agrees_with_the_simulator() -> Result<()> {
    differential("routed-4.yaml", ROUTED)
}

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn vxlan_cluster_on_the_real_kernel_agrees_with_the_simulator() -> Result<()> {
    differential("vxlan-4.yaml", VXLAN)
}

#[test]
fn the_stages_inject_every_fault_kind_that_applies_to_the_testbed() {
    let kinds: BTreeSet<&str> = ROUTED
        .iter()
        .chain(VXLAN)
        .flat_map(|(_, f)| f.iter())
        .map(|f| Fault::parse(f).expect("fault text").kind())
        .collect();
    for (k, _, _) in kscratch_core::scenario::fault::FAULT_KINDS {
        // The testbed runs containerd: docker's faults are refused for it, with a hint.
        if k.starts_with("docker") {
            continue;
        }
        assert!(kinds.contains(k), "no stage injects {k}");
    }
}

/// What one probe saw: the source address the receiver saw, or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Reached(IpAddr),
    Unreachable,
}

fn differential(file: &str, stages: Stages) -> Result<()> {
    support::require();
    check_tools()?;
    let tb = Testbed::up(
        &format!("differential_{}", file.trim_end_matches(".yaml")),
        4,
    )?;
    let path = scenario_copy(&tb, file, 4)?;
    let mut apiserver = stand_in_apiserver(&tb, &path)?;
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

    let mut faults: Vec<Fault> = Vec::new();
    let mut wrong: Vec<String> = Vec::new();
    let names: Vec<&str> = tb.nodes().iter().map(|n| n.name.as_str()).collect();
    let mut verify_ran = false;
    for (title, new) in stages {
        let new: Vec<Fault> = new
            .iter()
            .map(|f| Fault::parse(f).expect("fault text"))
            .collect();
        if !new.is_empty() {
            inject(&tb, &path, &scenario, &new)?;
        }
        faults.extend(new);
        let mut sim = kscratch_sim::simulate(
            &scenario,
            &plan,
            &CheckOptions {
                faults: faults.clone(),
                ..Default::default()
            },
        )
        .map_err(|e| Error::new(e.to_string()))?;
        sync_service_rules(&tb, &scenario, &sim)?;
        let mut disagree: Vec<String> = Vec::new();
        // Verify needs every node over SSH; a node that is off or whose NIC
        // is down leaves the stage to the harness.
        let reachable = !faults
            .iter()
            .any(|f| matches!(f, Fault::NodeDown { .. } | Fault::NicDown { .. }));
        if reachable {
            disagree.extend(verify_agrees(&tb, &path, &faults, file, title)?);
            verify_ran = true;
        }
        if verify_ran {
            kscratch_sim::verify::probes_attached(&mut sim, &names).map_err(Error::new)?;
        }
        let mut real = measure(&tb, &pods, !reachable)?;
        let mut predicted = predict(&sim, &pods, !reachable)?;
        // The testbed cannot switch a machine off: its links go down, but its
        // pods' namespaces keep running, so a pod there still reaches itself
        // and its neighbour over the bridge. On a machine that is really off
        // nothing runs (the simulator's verdict). Those cells cannot be
        // compared here; every cell that crosses the machine's links still is.
        let off: Vec<String> = faults
            .iter()
            .filter_map(|f| match f {
                Fault::NodeDown { node } => Some(format!("{node}-")),
                _ => None,
            })
            .collect();
        let inside_off = |k: &(String, String)| {
            off.iter()
                .any(|n| k.0.starts_with(n.as_str()) && k.1.starts_with(n.as_str()))
        };
        let skipped = real.keys().filter(|k| inside_off(k)).count();
        if skipped > 0 {
            println!(
                "[{file}] {title}: {skipped} cells inside a switched-off node not compared (the testbed only takes its links down)"
            );
        }
        real.retain(|k, _| !inside_off(k));
        predicted.retain(|k, _| !inside_off(k));
        disagree.extend(
            real.iter()
                .filter(|(k, v)| predicted.get(*k) != Some(*v))
                .map(|(k, v)| {
                    format!(
                        "  {} → {}: real {v:?}, simulator {:?}",
                        k.0,
                        k.1,
                        predicted.get(k)
                    )
                }),
        );
        disagree.extend(
            predicted
                .keys()
                .filter(|k| !real.contains_key(*k))
                .map(|k| format!("  {} → {}: not measured", k.0, k.1)),
        );
        disagree.extend(services_agree(&tb, &sim, &pods, file, title)?);
        let reached = real
            .values()
            .filter(|v| matches!(v, Seen::Reached(_)))
            .count();
        println!(
            "[{file}] {title}: {} cells, {reached} reached; real kernel and simulator agree: {}",
            real.len(),
            disagree.is_empty()
        );
        for d in &disagree {
            println!("{d}");
        }
        if !disagree.is_empty() {
            wrong.push(format!("[{file}] {title}:\n{}", disagree.join("\n")));
        }
    }
    let _ = apiserver.kill();
    let _ = apiserver.wait();
    assert!(
        wrong.is_empty(),
        "the real kernel and the simulator disagree:\n{}",
        wrong.join("\n")
    );
    Ok(())
}

/// `kscratch verify --format json` with the stage's faults: every cell it
/// measures must agree with its prediction, and it leaves nothing behind.
/// Returns the disagreements.
fn verify_agrees(
    tb: &Testbed,
    path: &Path,
    faults: &[Fault],
    file: &str,
    title: &str,
) -> Result<Vec<String>> {
    let texts: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
    let mut args: Vec<&str> = Vec::new();
    for f in &texts {
        args.extend(["--fault", f.as_str()]);
    }
    let started = Instant::now();
    let v = verify_json(
        &path.display().to_string(),
        &tb.description.known_hosts.display().to_string(),
        &args,
    )?;
    let len = |k: &str| v.doc[k].as_array().map_or(0, Vec::len);
    println!(
        "[{file}] {title}: kscratch verify: exit {:?} in {:.1} s, {} cells, {} pod-MTU, {} apiserver, {} Service cells; {} disagree",
        v.code,
        started.elapsed().as_secs_f64(),
        len("cells"),
        len("mtu"),
        len("apiserver"),
        len("services"),
        v.doc["disagreements"]
    );
    if !matches!(v.code, Some(0) | Some(1)) {
        return Err(Error::new(format!(
            "kscratch verify exited {:?}:\n{}",
            v.code, v.stderr
        )));
    }
    nothing_left(tb)?;
    let mut wrong: Vec<String> = v
        .wrong()
        .lines()
        .map(|l| format!("  verify: {l}"))
        .collect();
    if wrong.is_empty() && v.doc["disagreements"] != 0 {
        wrong.push(format!(
            "  verify counts {} disagreements",
            v.doc["disagreements"]
        ));
    }
    Ok(wrong)
}

/// Runs the faults' damage plan on the real nodes, as `kscratch apply
/// --fault` does (the same plan, the same SSH backend and executor).
fn inject(tb: &Testbed, path: &Path, s: &Scenario, faults: &[Fault]) -> Result<()> {
    let damage = kscratch_core::plan::damage(s, faults)
        .map_err(|e| Error::new(format!("{e:?}")))?
        .combined();
    let opts = SshBackendOptions {
        ssh: SshConfig::new(tb.description.known_hosts.clone()),
        scenario_dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        state_dir: state_dir(path, &s.name),
        step_timeout: Duration::from_secs(60),
        dry_run: false,
    };
    let ssh = SshBackend::new(s, &damage, opts);
    let backend = OnTheTestbed { ssh: &ssh, tb };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::new(e.to_string()))?;
    let report = rt.block_on(async {
        let r = exec::execute(
            &damage,
            s,
            &backend,
            &ExecOptions::default(),
            &mut exec::Quiet,
        )
        .await;
        ssh.pool().disconnect_all().await;
        r
    });
    let mut failed = Vec::new();
    for (step, o) in damage.steps.iter().zip(&report.outcomes) {
        let id = damage.step_id(step);
        match o {
            Outcome::Failed { error } => failed.push(format!("{id}: {}", error.message)),
            Outcome::Skipped { reason } => println!("  damage {id}: skipped: {reason}"),
            _ => println!("  damage {id}: {}", o.name()),
        }
    }
    if !failed.is_empty() {
        return Err(Error::new(format!(
            "the damage failed on the testbed:\n{}",
            failed.join("\n")
        )));
    }
    // A NIC goes down two seconds after its step reported (the SSH session runs over it).
    std::thread::sleep(Duration::from_secs(3));
    Ok(())
}

/// The SSH backend, except for the two actions whose real form would reach
/// beyond the node on this shared kernel.
struct OnTheTestbed<'a> {
    ssh: &'a SshBackend,
    tb: &'a Testbed,
}

impl OnTheTestbed<'_> {
    fn netns(&self, cx: &StepCx<'_>) -> std::result::Result<String, StepError> {
        let name = cx
            .node()
            .map(|i| cx.scenario.nodes[i].name.clone())
            .ok_or_else(|| StepError::failed("not a node step"))?;
        self.tb
            .node(&name)
            .map(|n| n.netns.clone())
            .map_err(|e| StepError::failed(e.to_string()))
    }

    fn run(&self, netns: &str, argv: &[&str]) -> std::result::Result<String, StepError> {
        self.tb
            .run_in(netns, argv)
            .map_err(|e| StepError::failed(e.to_string()))
    }

    /// The links a powered-off machine would leave without carrier: all but `lo`.
    fn links_up(&self, netns: &str) -> std::result::Result<Vec<String>, StepError> {
        let out = self.run(netns, &["ip", "-o", "link", "show", "up"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n != "lo")
            .collect())
    }
}

#[async_trait::async_trait]
impl Backend for OnTheTestbed<'_> {
    async fn check(&self, cx: &StepCx<'_>) -> std::result::Result<StepProbe, StepError> {
        match &cx.step.action {
            // A machine switched off: every link of the node goes down instead
            // (its pods' veths lose their carrier with it).
            Action::PowerOff => {
                let ns = self.netns(cx)?;
                Ok(if self.links_up(&ns)?.is_empty() {
                    StepProbe::Satisfied
                } else {
                    StepProbe::Needed
                })
            }
            // The module is shared by every namespace on this kernel; the
            // namespace's own switch of the same hook is turned off instead.
            Action::UnloadKernelModule {
                name: "br_netfilter",
            } => {
                let ns = self.netns(cx)?;
                let v = self.run(&ns, &["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"])?;
                Ok(if v.trim() == "0" {
                    StepProbe::Satisfied
                } else {
                    StepProbe::Needed
                })
            }
            // The testbed runs no containerd: the restart that makes it reread
            // its configuration holds by itself, since every CNI ADD here (the
            // test's pods, verify's probes) reads the conflist from disk. (The
            // SSH backend would call it not applicable: a skip, where the
            // simulator restarts containerd.)
            Action::StartService {
                name: Service::Containerd,
            } => Ok(StepProbe::Satisfied),
            // kubectl is there, the apiserver is not: the DNS Deployment exists only in the simulator.
            Action::ScaleDeployment { .. } => Ok(StepProbe::NotApplicable(
                "the testbed runs no apiserver and no DNS pod".into(),
            )),
            _ => self.ssh.check(cx).await,
        }
    }

    async fn apply(&self, cx: &StepCx<'_>) -> std::result::Result<(), StepError> {
        match &cx.step.action {
            Action::PowerOff => {
                let ns = self.netns(cx)?;
                for l in self.links_up(&ns)? {
                    self.run(&ns, &["ip", "link", "set", "dev", &l, "down"])?;
                }
                Ok(())
            }
            Action::UnloadKernelModule {
                name: "br_netfilter",
            } => {
                let ns = self.netns(cx)?;
                self.run(
                    &ns,
                    &["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0"],
                )
                .map(|_| ())
            }
            // No containerd to restart (see `check`).
            Action::StartService {
                name: Service::Containerd,
            } => Ok(()),
            _ => self.ssh.apply(cx).await,
        }
    }
}

/// kube-proxy's rules on each real node are what the simulator's kube-proxy
/// programmed there: its rules for the probe Services where it ran and could
/// list them, none where it did not.
fn sync_service_rules(tb: &Testbed, s: &Scenario, sim: &kscratch_sim::Simulated) -> Result<()> {
    let services = probe_services(sim);
    let rules = kscratch_sim::prepare::kube_proxy_rules(&services, s.network.cluster_cidr)
        .map_err(Error::new)?;
    let restore = rules.ruleset().emit();
    for node in tb.nodes() {
        // First what an earlier stage loaded goes: every KUBE-* chain and jump.
        let saved = tb.run_in(&node.netns, &["iptables-save"])?;
        let kept: String = saved
            .lines()
            .filter(|l| !l.contains("KUBE-"))
            .map(|l| format!("{l}\n"))
            .collect();
        restore_rules(&node.netns, &kept, false)?;
        let programmed = sim
            .world
            .nodes
            .iter()
            .find(|n| n.name == node.name)
            .is_some_and(|n| n.up && n.running("kube-proxy"))
            && !sim.prepared.no_proxy.iter().any(|(n, _)| *n == node.name);
        if programmed {
            restore_rules(&node.netns, &restore, true)?;
        }
    }
    Ok(())
}

fn restore_rules(netns: &str, text: &str, noflush: bool) -> Result<()> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, "iptables-restore"]);
    if noflush {
        c.arg("--noflush");
    }
    let out = support::run_bounded_with_stdin(&mut c, text.as_bytes(), Duration::from_secs(30))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "iptables-restore in {netns}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn probe_services(sim: &kscratch_sim::Simulated) -> Vec<kscratch_sim::prepare::ServiceDef> {
    sim.prepared
        .services
        .iter()
        .filter(|d| d.namespace == "kscratch")
        .cloned()
        .collect()
}

type Matrix = BTreeMap<(String, String), Seen>;

fn seen(p: Probe) -> Seen {
    match p {
        Probe::Reached { peer } => Seen::Reached(peer),
        Probe::Unreachable { .. } => Seen::Unreachable,
    }
}

/// Real connections: every pod to the outside host; with `cells`, every
/// pod to every pod (on its own node and to its own IP too) and every node
/// to its own pods.
fn measure(tb: &Testbed, pods: &[Pod], cells: bool) -> Result<Matrix> {
    let mut m = Matrix::new();
    for from in pods {
        for to in pods.iter().filter(|_| cells) {
            m.insert(
                (from.name.clone(), to.name.clone()),
                seen(tb.probe_pod_to_pod(from, to)?),
            );
        }
        let out = &tb.description.outside;
        let s = tb.tcp_probe(
            &from.netns,
            &out.netns,
            SocketAddr::new(IpAddr::V4(out.ip), next_port()),
        )?;
        m.insert((from.name.clone(), "outside".into()), seen(s));
    }
    for node in tb.nodes().iter().filter(|_| cells) {
        for to in pods.iter().filter(|p| p.node == node.name) {
            let s = tb.tcp_probe(
                &node.netns,
                &to.netns,
                SocketAddr::new(IpAddr::V4(to.ip()), next_port()),
            )?;
            m.insert((node.name.clone(), to.name.clone()), seen(s));
        }
    }
    Ok(m)
}

fn next_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static PORT: AtomicU16 = AtomicU16::new(31000);
    PORT.fetch_add(1, Ordering::Relaxed)
}

/// The testbed pod's counterpart in the simulator (same node, same address).
fn sim_pod(w: &kscratch_sim::world::World, p: &Pod) -> Result<(Place, IpAddr)> {
    let n = w
        .nodes
        .iter()
        .position(|n| n.name == p.node)
        .ok_or_else(|| Error::new(format!("no node {} in the simulator", p.node)))?;
    let name = format!("probe-{}", p.name.rsplit('-').next().unwrap_or(""));
    let id = w
        .pods
        .iter()
        .position(|q| q.node == n && q.name == name)
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
}

fn sim_node(w: &kscratch_sim::world::World, name: &str) -> Result<usize> {
    w.nodes
        .iter()
        .position(|n| n.name == name)
        .ok_or_else(|| Error::new(format!("no node {name} in the simulator")))
}

/// The simulator's verdict for the same connections (the request, then the reply).
fn predict(sim: &kscratch_sim::Simulated, pods: &[Pod], cells: bool) -> Result<Matrix> {
    let w = &sim.world;
    let mut m = Matrix::new();
    let verdict = |r: Option<(Place, IpAddr)>, want: Place| match r {
        Some((at, peer)) if at == want => Seen::Reached(peer),
        _ => Seen::Unreachable,
    };
    for from in pods {
        let (src_place, src) = sim_pod(w, from)?;
        for to in pods.iter().filter(|_| cells) {
            let (dst_place, dst) = sim_pod(w, to)?;
            let r = tcp_connect(w, src_place, src, dst, 8080, &mut TakeFirst);
            m.insert((from.name.clone(), to.name.clone()), verdict(r, dst_place));
        }
        let r = tcp_connect(
            w,
            src_place,
            src,
            w.underlay.outside_ip,
            8080,
            &mut TakeFirst,
        );
        m.insert(
            (from.name.clone(), "outside".into()),
            verdict(r, Place::Outside),
        );
    }
    for to in pods.iter().filter(|_| cells) {
        let n = sim_node(w, &to.node)?;
        let (dst_place, dst) = sim_pod(w, to)?;
        let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let r = tcp_connect(w, Place::Node(n), unspecified, dst, 8080, &mut TakeFirst);
        m.insert((to.node.clone(), to.name.clone()), verdict(r, dst_place));
    }
    Ok(m)
}

/// Pods (`-b`, whose Service endpoint on their own node is another pod)
/// and nodes to each probe Service VIP: every endpoint a real connection
/// lands on must be one the simulator predicts, and the VIP answers on the
/// real kernel exactly when the simulator says it can. Returns the
/// disagreements.
fn services_agree(
    tb: &Testbed,
    sim: &kscratch_sim::Simulated,
    pods: &[Pod],
    file: &str,
    title: &str,
) -> Result<Vec<String>> {
    let w = &sim.world;
    let mut wrong = Vec::new();
    let mut sources: Vec<(String, String, Place, IpAddr)> = Vec::new();
    for p in pods.iter().filter(|p| p.name.ends_with("-b")) {
        let (place, ip) = sim_pod(w, p)?;
        sources.push((p.name.clone(), p.netns.clone(), place, ip));
    }
    for n in tb.nodes() {
        let i = sim_node(w, &n.name)?;
        sources.push((
            n.name.clone(),
            n.netns.clone(),
            Place::Node(i),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ));
    }
    for svc in probe_services(sim) {
        let endpoints: Vec<&Pod> = pods
            .iter()
            .filter(|p| {
                svc.endpoints
                    .iter()
                    .any(|(ip, _)| *ip == IpAddr::V4(p.ip()))
            })
            .collect();
        for (name, netns, place, src) in &sources {
            let predicted: BTreeSet<IpAddr> = explore(1000, |br| {
                tcp_connect(w, *place, *src, svc.cluster_ip, svc.port, br)
            })
            .map_err(|e| Error::new(e.to_string()))?
            .into_iter()
            .filter_map(|o| o.value)
            .filter_map(|(at, _)| match at {
                Place::Pod(p) => Some(w.pods[p].ip),
                _ => None,
            })
            .collect();
            // Real tries sample the endpoints the kernel's statistic branches
            // pick, each with probability 1/n: enough tries that missing every
            // predicted endpoint has a chance below 1/1000, fewer once every
            // predicted endpoint was seen.
            let mut seen = BTreeSet::new();
            let n = endpoints.len().max(1) as f64;
            let miss = 1.0 - predicted.len() as f64 / n;
            let tries = if predicted.is_empty() {
                2
            } else if miss <= 0.0 {
                8
            } else {
                ((0.001f64).ln() / miss.ln()).ceil().max(8.0) as usize
            };
            for _ in 0..tries {
                if let Some(ep) = vip_probe(netns, &endpoints, svc.cluster_ip, svc.port)? {
                    seen.insert(ep);
                }
                if seen == predicted {
                    break;
                }
            }
            println!(
                "[{file}] {title}: {} from {name}: real endpoints {seen:?}, simulator {predicted:?}",
                svc.key()
            );
            if seen.is_empty() != predicted.is_empty() || !seen.is_subset(&predicted) {
                wrong.push(format!(
                    "  {name} → {} ({}:{}): real endpoints {seen:?}, simulator {predicted:?}",
                    svc.key(),
                    svc.cluster_ip,
                    svc.port
                ));
            }
        }
    }
    Ok(wrong)
}

/// One connection from `from` to `vip:port`, with a listener on every
/// endpoint pod; returns the endpoint that accepted it.
fn vip_probe(
    from_netns: &str,
    endpoints: &[&Pod],
    vip: IpAddr,
    port: u16,
) -> Result<Option<IpAddr>> {
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
                from_netns,
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
