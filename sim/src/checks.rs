//! The checks: the Kubernetes network model, proven or refuted with traces.
//!
//! 1. pod → pod on every node pair, the receiver seeing the sender's pod IP;
//! 2. node → its own pods;
//! 3. pod → Service VIP reaches every endpoint (the set over all `statistic`
//!    branches); a Service without endpoints is rejected;
//! 4. pod → outside is masqueraded to the node IP, and the reply comes back;
//! 5. node → apiserver at MASTER_IP on the security model's port, and the
//!    control-plane health endpoints answer;
//! 6. a packet of the pod MTU crosses between nodes (the overlay's MTU).
//!
//! Pairs are checked per equivalence class of nodes (see [`crate::classes`]):
//! nodes whose state is the same up to their own addresses behave the same,
//! and any node whose state differs — a missing route, a stray rule — forms
//! its own class and is checked against every other node.

use crate::classes::Classes;
use crate::netfilter::{explore, TakeFirst};
use crate::packet::{Packet, Proto};
use crate::prepare::{Prepared, ServiceDef, POD_PORT};
use crate::walk::{Fate, Hop, Place, Walker};
use crate::world::*;
use kscratch_core::scenario::Scenario;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    PodToPod,
    NodeToPod,
    Services,
    Egress,
    Apiserver,
    Mtu,
}

impl CheckKind {
    pub const ALL: [CheckKind; 6] = [
        CheckKind::PodToPod,
        CheckKind::NodeToPod,
        CheckKind::Services,
        CheckKind::Egress,
        CheckKind::Apiserver,
        CheckKind::Mtu,
    ];
    pub fn title(self) -> &'static str {
        match self {
            CheckKind::PodToPod => "pod-to-pod without NAT",
            CheckKind::NodeToPod => "node to its own pods",
            CheckKind::Services => "Service VIPs reach their endpoints",
            CheckKind::Egress => "egress masqueraded to the node IP",
            CheckKind::Apiserver => "nodes reach the apiserver; control plane healthy",
            CheckKind::Mtu => "pod-MTU packets cross between nodes",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::PodToPod => "pod-to-pod",
            CheckKind::NodeToPod => "node-to-pod",
            CheckKind::Services => "services",
            CheckKind::Egress => "egress",
            CheckKind::Apiserver => "apiserver",
            CheckKind::Mtu => "mtu",
        }
    }
}

/// One way a check failed, with every case that failed that way and one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// What went wrong, with node names and addresses.
    pub reason: String,
    /// How many probes (node pairs, services, nodes) failed this way.
    pub count: usize,
    /// A few of them (`from → to`).
    pub examples: Vec<String>,
    /// The hop-by-hop trace of the first one.
    pub trace: Vec<Hop>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    pub kind: CheckKind,
    pub title: &'static str,
    /// Probes represented (node pairs, pod × service, nodes...), and how many failed.
    pub probes: usize,
    pub failed: usize,
    pub failures: Vec<Failure>,
    /// Cases the check could not run, with why (e.g. no pods on a node).
    pub notes: Vec<String>,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.failed == 0
    }
}

/// Pod-to-pod reachability between nodes: `matrix[a][b]` for small clusters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Matrix {
    pub nodes: Vec<String>,
    pub ok: Vec<Vec<bool>>,
}

#[derive(Default)]
struct Collector {
    probes: usize,
    failed: usize,
    by_reason: BTreeMap<String, Failure>,
    order: Vec<String>,
    notes: Vec<String>,
}

const EXAMPLES: usize = 5;
/// Paths explored through `statistic` branches for one probe (endpoints of one Service).
pub const MAX_PATHS: usize = 100_000;

impl Collector {
    fn pass(&mut self, n: usize) {
        self.probes += n;
    }
    fn fail(&mut self, n: usize, reason: String, example: String, trace: &[Hop]) {
        self.probes += n;
        self.failed += n;
        let key = normalize(&reason);
        let f = self.by_reason.entry(key.clone()).or_insert_with(|| {
            self.order.push(key.clone());
            Failure {
                reason: reason.clone(),
                count: 0,
                examples: vec![],
                trace: trace.to_vec(),
            }
        });
        f.count += n;
        if f.examples.len() < EXAMPLES {
            f.examples.push(example);
        }
    }
    fn finish(mut self, kind: CheckKind) -> CheckResult {
        let failures = self
            .order
            .iter()
            .filter_map(|k| self.by_reason.remove(k))
            .collect();
        CheckResult {
            kind,
            title: kind.title(),
            probes: self.probes,
            failed: self.failed,
            failures,
            notes: self.notes,
        }
    }
}

/// Groups failures that differ only in addresses ("no route to 10.10.2.3" and "… 10.10.2.4").
fn normalize(reason: &str) -> String {
    reason
        .split(|c: char| c.is_whitespace())
        .map(|w| {
            let core = w.trim_matches(|c: char| {
                !c.is_ascii_alphanumeric() && c != '.' && c != ':' && c != '/'
            });
            let ip = core.split(['/', ':']).next().unwrap_or("");
            if ip.parse::<IpAddr>().is_ok() {
                "*"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Everything the checks need to know beyond the world.
pub struct CheckInput<'a> {
    pub world: &'a World,
    pub scenario: &'a Scenario,
    pub prepared: &'a Prepared,
    pub classes: &'a Classes,
}

pub fn run_all(inp: &CheckInput<'_>) -> (Vec<CheckResult>, Option<Matrix>) {
    let (pod_to_pod, matrix) = pod_to_pod(inp);
    let mtu = pod_to_pod_mtu(inp);
    (
        vec![
            pod_to_pod,
            node_to_pod(inp),
            services(inp),
            egress(inp),
            apiserver(inp),
            mtu,
        ],
        matrix,
    )
}

fn pods_on(world: &World, n: NodeId) -> Vec<PodId> {
    world.nodes[n]
        .pods
        .iter()
        .copied()
        .filter(|&p| world.pods[p].name.starts_with("probe-"))
        .collect()
}

fn single(w: &mut Walker<'_>, from: Place, pkt: Packet) -> Fate {
    w.send(from, pkt, &mut TakeFirst)
}

/// A pod-to-pod probe: delivered to the right pod, source unchanged. Walked
/// quietly; a failure is walked again with the trace on.
fn probe_pod(world: &World, a: PodId, b: PodId, len: u32) -> (Result<(), String>, Vec<Hop>) {
    let walk = |traced: bool| {
        let mut w = if traced {
            Walker::new(world)
        } else {
            Walker::quiet(world)
        };
        let (src, dst) = (world.pods[a].ip, world.pods[b].ip);
        let mut pkt = Packet::tcp(src, 40000 + a as u16 % 20000, dst, POD_PORT);
        pkt.len = len;
        let fate = single(&mut w, Place::Pod(a), pkt);
        let res = match fate.delivered_to() {
            Some((Place::Pod(p), got)) if p == b && got.src == src => Ok(()),
            Some((Place::Pod(p), got)) if p == b => Err(format!(
                "{} received the packet from {} instead of {}: pod traffic was NATed",
                w.place_name(Place::Pod(b)),
                got.src,
                src
            )),
            Some((to, _)) => Err(format!(
                "delivered to {} instead of {}",
                w.place_name(to),
                w.place_name(Place::Pod(b))
            )),
            None => Err(fate.to_string()),
        };
        (res, w.hops)
    };
    match walk(false) {
        (Ok(()), hops) => (Ok(()), hops),
        (Err(_), _) => walk(true),
    }
}

pub fn pod_to_pod(inp: &CheckInput<'_>) -> (CheckResult, Option<Matrix>) {
    let world = inp.world;
    let mut c = Collector::default();
    let n = world.nodes.len();
    let small = n <= 32;
    let mut ok = vec![vec![true; n]; n];
    for (a, b, weight) in inp.classes.node_pairs(true) {
        let (pa, pb) = (pods_on(world, a), pods_on(world, b));
        if pa.is_empty() || pb.len() < if a == b { 2 } else { 1 } {
            continue;
        }
        // Two pods on one node: the second as receiver; across nodes: first to first.
        let (x, y) = if a == b {
            (pa[0], pb[1])
        } else {
            (pa[0], pb[0])
        };
        let (res, hops) = probe_pod(world, x, y, 60);
        match res {
            Ok(()) => c.pass(weight),
            Err(e) => {
                c.fail(
                    weight,
                    e,
                    format!("{} → {}", world.nodes[a].name, world.nodes[b].name),
                    &hops,
                );
                if small {
                    for (p, q) in inp.classes.expand(a, b) {
                        ok[p][q] = false;
                    }
                }
            }
        }
    }
    for (name, why) in &inp.prepared.no_pods {
        c.notes.push(format!("no test pods on {name}: {why}"));
        if small {
            if let Some(i) = world.nodes.iter().position(|x| &x.name == name) {
                for j in 0..n {
                    ok[i][j] = false;
                    ok[j][i] = false;
                }
            }
        }
        c.fail(
            1,
            format!("no test pods on {name}: {why}"),
            name.clone(),
            &[],
        );
    }

    let matrix = small.then(|| Matrix {
        nodes: world.nodes.iter().map(|x| x.name.clone()).collect(),
        ok,
    });
    (c.finish(CheckKind::PodToPod), matrix)
}

fn pod_to_pod_mtu(inp: &CheckInput<'_>) -> CheckResult {
    let world = inp.world;
    let mut c = Collector::default();
    for (a, b, weight) in inp.classes.node_pairs(false) {
        let (pa, pb) = (pods_on(world, a), pods_on(world, b));
        let (Some(&x), Some(&y)) = (pa.first(), pb.first()) else {
            continue;
        };
        let len = world.pods[x].mtu;
        let (res, hops) = probe_pod(world, x, y, len);
        match res {
            Ok(()) => c.pass(weight),
            Err(e) => c.fail(
                weight,
                e,
                format!(
                    "{} → {} ({len} bytes)",
                    world.nodes[a].name, world.nodes[b].name
                ),
                &hops,
            ),
        }
    }
    c.finish(CheckKind::Mtu)
}

/// Runs a probe quietly and, only if it fails, once more with the trace on.
fn probe(
    world: &World,
    run: impl Fn(&mut Walker<'_>) -> Result<(), String>,
) -> Result<(), (String, Vec<Hop>)> {
    if run(&mut Walker::quiet(world)).is_ok() {
        return Ok(());
    }
    let mut w = Walker::new(world);
    match run(&mut w) {
        // A probe is deterministic: the traced walk fails the same way.
        Ok(()) => Err((
            "the probe failed without a trace, then passed: the walk is not deterministic".into(),
            w.hops,
        )),
        Err(e) => Err((e, w.hops)),
    }
}

fn node_to_pod(inp: &CheckInput<'_>) -> CheckResult {
    let world = inp.world;
    let mut c = Collector::default();
    for (n, weight) in inp.classes.nodes() {
        for p in pods_on(world, n) {
            let r = probe(world, |w| {
                let dst = world.pods[p].ip;
                let pkt = Packet::tcp(IpAddr::from([0, 0, 0, 0]), 50000, dst, POD_PORT);
                let fate = single(w, Place::Node(n), pkt);
                match fate.delivered_to() {
                    Some((Place::Pod(q), _)) if q == p => Ok(()),
                    Some((to, _)) => Err(format!("delivered to {} instead", w.place_name(to))),
                    None => Err(fate.to_string()),
                }
            });
            match r {
                Ok(()) => c.pass(weight),
                Err((reason, hops)) => c.fail(
                    weight,
                    reason,
                    format!("{} → {}", world.nodes[n].name, pod_label(world, p)),
                    &hops,
                ),
            }
        }
    }
    c.finish(CheckKind::NodeToPod)
}

fn services(inp: &CheckInput<'_>) -> CheckResult {
    let world = inp.world;
    let mut c = Collector::default();
    for (name, why) in &inp.prepared.no_proxy {
        c.notes
            .push(format!("kube-proxy on {name} programmed nothing: {why}"));
    }
    let wanted: Vec<BTreeSet<(IpAddr, u16)>> = inp
        .prepared
        .services
        .iter()
        .map(|s| s.endpoints.iter().copied().collect())
        .collect();
    for (n, weight) in inp.classes.nodes() {
        let Some(&pod) = pods_on(world, n).first() else {
            continue;
        };
        for (svc, want) in inp.prepared.services.iter().zip(&wanted) {
            if svc.proto == Proto::Udp && svc.name == "kube-dns" {
                // One protocol is enough to prove the DNS VIP; TCP is checked.
                continue;
            }
            let ex = format!(
                "{} → {} ({}:{})",
                pod_label(world, pod),
                svc.key(),
                svc.cluster_ip,
                svc.port
            );
            match service_probe(world, pod, svc, want, false) {
                Ok(()) => c.pass(weight),
                Err(_) => {
                    let (reason, hops) = service_probe(world, pod, svc, want, true).err().unwrap_or_else(|| ("the probe failed without a trace, then passed: the walk is not deterministic".into(), vec![]));
                    c.fail(weight, reason, ex, &hops);
                }
            }
        }
    }
    c.finish(CheckKind::Services)
}

/// Every path from `pod` to the Service's VIP, over all `statistic` branches:
/// the set of endpoints reached must be the Service's endpoints, and a
/// Service without endpoints must be rejected.
fn service_probe(
    world: &World,
    pod: PodId,
    svc: &ServiceDef,
    want: &BTreeSet<(IpAddr, u16)>,
    traced: bool,
) -> Result<(), (String, Vec<Hop>)> {
    let src = world.pods[pod].ip;
    let outcomes = explore(MAX_PATHS, |br| {
        let mut w = if traced {
            Walker::new(world)
        } else {
            Walker::quiet(world)
        };
        let mut pkt = Packet::tcp(src, 41000, svc.cluster_ip, svc.port);
        pkt.proto = svc.proto;
        let fate = w.send(Place::Pod(pod), pkt, br);
        (fate, w.hops)
    })
    .map_err(|e| (format!("Service {}: {e}", svc.key()), vec![]))?;
    let mut reached: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
    let mut first_trace: Option<Vec<Hop>> = None;
    let mut problem: Option<String> = None;
    let mut rejected = false;
    for o in outcomes {
        let (fate, hops) = o.value;
        match fate {
            Fate::Delivered { to, packet } => {
                let ep = (packet.dst, packet.dport);
                let right_place = match to {
                    Place::Pod(q) => world.pods[q].ip == packet.dst,
                    Place::Node(m) => world.nodes[m].is_local(packet.dst),
                    _ => false,
                };
                if right_place && want.contains(&ep) {
                    reached.insert(ep);
                    if first_trace.is_none() {
                        first_trace = Some(hops);
                    }
                } else if problem.is_none() {
                    problem = Some(format!(
                        "reached {}:{} which is not an endpoint",
                        packet.dst, packet.dport
                    ));
                    first_trace = Some(hops);
                }
            }
            Fate::Rejected { .. } if want.is_empty() => rejected = true,
            other => {
                if problem.is_none() {
                    problem = Some(other.to_string());
                    first_trace = Some(hops);
                }
            }
        }
    }
    let trace = first_trace.unwrap_or_default();
    if want.is_empty() {
        return match (rejected, problem) {
            (true, None) => Ok(()),
            (_, p) => Err((
                format!(
                    "Service {} has no endpoints and must be rejected, but: {}",
                    svc.key(),
                    p.unwrap_or_else(|| "it was not rejected".into())
                ),
                trace,
            )),
        };
    }
    if let Some(p) = problem {
        return Err((format!("Service {}: {p}", svc.key()), trace));
    }
    if &reached != want {
        let missing: Vec<String> = want
            .difference(&reached)
            .map(|(i, p)| format!("{i}:{p}"))
            .collect();
        return Err((
            format!(
                "Service {} never reaches endpoints {}",
                svc.key(),
                missing.join(", ")
            ),
            trace,
        ));
    }
    Ok(())
}

fn pod_label(world: &World, p: PodId) -> String {
    format!(
        "{}/{}",
        world.nodes[world.pods[p].node].name, world.pods[p].name
    )
}

fn egress(inp: &CheckInput<'_>) -> CheckResult {
    let world = inp.world;
    let s = inp.scenario;
    let mut c = Collector::default();
    for (n, weight) in inp.classes.nodes() {
        let Some(&pod) = pods_on(world, n).first() else {
            continue;
        };
        let out = world.underlay.outside_ip;
        let r = probe(world, |w| {
            let src = world.pods[pod].ip;
            let fate = single(w, Place::Pod(pod), Packet::tcp(src, 42000, out, 80));
            let seen = match fate.delivered_to() {
                Some((Place::Outside, got)) => got.clone(),
                _ => return Err(fate.to_string()),
            };
            let node_ip = world.nodes[n].ip;
            if s.network.masquerade && seen.src != node_ip {
                return Err(format!("the outside host saw source {} instead of the node IP {node_ip}: not masqueraded", seen.src));
            }
            // The reply: conntrack must translate it back to the pod.
            let fate = single(w, Place::Outside, seen.reply());
            match fate.delivered_to() {
                Some((Place::Pod(q), got)) if q == pod && got.dst == src => Ok(()),
                _ => Err(format!("the reply did not come back to the pod: {fate}")),
            }
        });
        match r {
            Ok(()) => c.pass(weight),
            Err((reason, hops)) => c.fail(
                weight,
                reason,
                format!("{} → outside {out}:80", pod_label(world, pod)),
                &hops,
            ),
        }
    }
    c.finish(CheckKind::Egress)
}

fn apiserver(inp: &CheckInput<'_>) -> CheckResult {
    let world = inp.world;
    let s = inp.scenario;
    let mut c = Collector::default();
    let port = s.security.model.apiserver_port();
    let master = s.master_ip;
    for (n, weight) in inp.classes.nodes() {
        let r = probe(world, |w| {
            let fate = single(
                w,
                Place::Node(n),
                Packet::tcp(IpAddr::from([0, 0, 0, 0]), 43000, master, port),
            );
            match fate.delivered_to() {
                Some((Place::Node(m), _))
                    if world.nodes[m].ip == master
                        && world.nodes[m]
                            .listeners
                            .get(&(Proto::Tcp, port))
                            .is_some_and(|l| l.process == "kube-apiserver") =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "the apiserver at {master}:{port} does not answer: {fate}"
                )),
            }
        });
        match r {
            Ok(()) => c.pass(weight),
            Err((reason, hops)) => c.fail(
                weight,
                reason,
                format!("{} → {master}:{port}", world.nodes[n].name),
                &hops,
            ),
        }
    }
    // Health endpoints of every control-plane component and etcd member.
    for (i, node) in s.control_plane_nodes() {
        let checks: [(&str, Result<(), String>); 3] = [
            (
                "kube-apiserver",
                crate::components::apiserver_health(world, i),
            ),
            (
                "kube-scheduler",
                crate::components::health(&world.nodes[i], "kube-scheduler"),
            ),
            (
                "kube-controller-manager",
                crate::components::health(&world.nodes[i], "kube-controller-manager"),
            ),
        ];
        for (comp, r) in checks {
            match r {
                Ok(()) => c.pass(1),
                Err(e) => c.fail(
                    1,
                    format!("{comp} on {} is not healthy: {e}", node.name),
                    node.name.clone(),
                    &[],
                ),
            }
        }
    }
    for &m in &s.etcd.members {
        match crate::components::health(&world.nodes[m], "etcd") {
            Ok(()) => c.pass(1),
            Err(e) => c.fail(
                1,
                format!("etcd on {} is not healthy: {e}", world.nodes[m].name),
                world.nodes[m].name.clone(),
                &[],
            ),
        }
    }
    c.finish(CheckKind::Apiserver)
}
