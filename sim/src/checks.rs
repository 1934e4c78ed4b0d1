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
use crate::walk::{connect, Conn, Fate, Hop, Leg, Place, Walker};
use crate::world::*;
use kscratch_core::plan::Component;
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

/// One way a check failed: every case that failed that way, and the trace
/// of the first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// What went wrong for `first`, with that case's own names and addresses.
    pub reason: String,
    /// For connection probes: the leg that failed (`request` or `reply`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leg: Option<Leg>,
    /// The case `reason` and `trace` describe (`from → to`).
    pub first: String,
    /// How many probes (node pairs, services, nodes) failed this way.
    pub count: usize,
    /// Every failing case, in groups (see [`CaseGroup`]).
    pub cases: Vec<CaseGroup>,
    /// The hop-by-hop trace of `first`, both legs.
    pub trace: Vec<Hop>,
}

/// Failing cases: every `from` with every `to` (as [`Pairing`] says). Whole
/// equivalence classes fail together, so a group keeps a 5,000-node failure
/// to two lists instead of 25 million pairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseGroup {
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub pairing: Pairing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pairing {
    /// Every (f, t) in from × to with f ≠ t.
    EachToEach,
    /// Each node of `from` with itself (`to` repeats `from`).
    SameNode,
}

impl CaseGroup {
    fn single(from: String, to: String) -> CaseGroup {
        CaseGroup {
            from: vec![from],
            to: vec![to],
            pairing: Pairing::EachToEach,
        }
    }

    /// How many cases the group holds.
    pub fn len(&self) -> usize {
        match self.pairing {
            Pairing::SameNode => self.from.len(),
            Pairing::EachToEach => {
                let same = self.from.iter().filter(|f| self.to.contains(f)).count();
                self.from.len() * self.to.len() - same
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `k` cases as `from → to`.
    pub fn first(&self, k: usize) -> Vec<String> {
        match self.pairing {
            Pairing::SameNode => self
                .from
                .iter()
                .take(k)
                .map(|f| format!("{f} → {f}"))
                .collect(),
            Pairing::EachToEach => self
                .from
                .iter()
                .flat_map(|f| self.to.iter().filter(move |t| *t != f).map(move |t| (f, t)))
                .take(k)
                .map(|(f, t)| format!("{f} → {t}"))
                .collect(),
        }
    }
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

/// A cell of the pod-to-pod matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cell {
    /// The connection is established (the receiver saw the sender's pod IP).
    Reaches,
    /// The request never arrives (or arrives NATed, or at the wrong pod).
    RequestFails,
    /// The request arrives, the reply does not come back.
    ReplyFails,
    /// Not probed: a node without test pods.
    Untested,
}

impl Cell {
    pub fn symbol(self) -> &'static str {
        match self {
            Cell::Reaches => ".",
            Cell::RequestFails => "X",
            Cell::ReplyFails => "R",
            Cell::Untested => "-",
        }
    }
}

/// Pod-to-pod connections between nodes, same-node cells on the diagonal:
/// `cells[a][b]` for small clusters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Matrix {
    pub nodes: Vec<String>,
    pub cells: Vec<Vec<Cell>>,
}

#[derive(Default)]
struct Collector {
    probes: usize,
    failed: usize,
    by_reason: BTreeMap<(Option<Leg>, String), Failure>,
    order: Vec<(Option<Leg>, String)>,
    notes: Vec<String>,
}

/// Paths explored through `statistic` branches for one probe (endpoints of one Service).
pub const MAX_PATHS: usize = 100_000;

impl Collector {
    fn pass(&mut self, n: usize) {
        self.probes += n;
    }
    fn fail(&mut self, n: usize, e: ProbeError, first: String, cases: CaseGroup) {
        self.probes += n;
        self.failed += n;
        let key = (e.leg, normalize(&e.reason));
        let f = self.by_reason.entry(key.clone()).or_insert_with(|| {
            self.order.push(key.clone());
            Failure {
                first,
                reason: e.reason,
                leg: e.leg,
                count: 0,
                cases: vec![],
                trace: e.trace,
            }
        });
        f.count += n;
        f.cases.push(cases);
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

/// Why one probe failed: the reason (with the probe's own addresses), the
/// leg, and the traced walk of both legs.
struct ProbeError {
    reason: String,
    leg: Option<Leg>,
    trace: Vec<Hop>,
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
    /// Components a rollout has down on purpose right now (node,
    /// component): their own health is not required (a note says so);
    /// everything else, reaching the apiserver included, still is.
    pub restarting: &'a [(usize, Component)],
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

fn names(world: &World, nodes: &[NodeId]) -> Vec<String> {
    nodes.iter().map(|&n| world.nodes[n].name.clone()).collect()
}

/// The cases a representative pair (a, b) from [`Classes::node_pairs`] stands for.
fn pair_group(inp: &CheckInput<'_>, a: NodeId, b: NodeId) -> CaseGroup {
    if inp.classes.odd.contains(&a) || inp.classes.odd.contains(&b) {
        // A pair with an odd node is probed on its own (weight 1).
        let (x, y) = (
            inp.world.nodes[a].name.clone(),
            inp.world.nodes[b].name.clone(),
        );
        return CaseGroup {
            from: vec![x],
            to: vec![y],
            pairing: if a == b {
                Pairing::SameNode
            } else {
                Pairing::EachToEach
            },
        };
    }
    let (from, to) = (inp.classes.members(a), inp.classes.members(b));
    CaseGroup {
        from: names(inp.world, &from),
        to: names(inp.world, &to),
        pairing: if a == b {
            Pairing::SameNode
        } else {
            Pairing::EachToEach
        },
    }
}

/// The cases a representative node from [`Classes::nodes`] stands for, towards one target.
fn node_group(inp: &CheckInput<'_>, n: NodeId, to: String) -> CaseGroup {
    CaseGroup {
        from: names(inp.world, &inp.classes.members(n)),
        to: vec![to],
        pairing: Pairing::EachToEach,
    }
}

/// Runs a connection probe quietly and, only if it fails, once more with the
/// trace on. `judge` turns the connection into a verdict.
fn probe(
    world: &World,
    from: Place,
    pkt: &Packet,
    judge: impl Fn(&Walker<'_>, &Conn) -> Result<(), String>,
) -> Result<(), ProbeError> {
    let run = |traced: bool| {
        let mut w = if traced {
            Walker::new(world)
        } else {
            Walker::quiet(world)
        };
        let c = connect(&mut w, from, pkt.clone(), &mut TakeFirst);
        let verdict = judge(&w, &c);
        (verdict, c.failed_leg(), w.hops)
    };
    if let (Ok(()), _, _) = run(false) {
        return Ok(());
    }
    match run(true) {
        (Ok(()), _, hops) => Err(ProbeError {
            reason: "the probe failed without a trace, then passed: the walk is not deterministic"
                .into(),
            leg: None,
            trace: hops,
        }),
        (Err(reason), leg, hops) => Err(ProbeError {
            reason,
            leg,
            trace: hops,
        }),
    }
}

/// The usual judgement: the connection is established with `want`; a
/// failed leg is reported as such.
fn established_with(
    w: &Walker<'_>,
    c: &Conn,
    want: Place,
    check_seen: impl Fn(&Packet) -> Result<(), String>,
) -> Result<(), String> {
    match c.server() {
        Some((to, _)) if to != want => Err(format!(
            "the request was delivered to {} instead of {}",
            w.place_name(to),
            w.place_name(want)
        )),
        Some((_, seen)) => {
            if let Err(e) = check_seen(seen) {
                return Err(match c {
                    Conn::ReplyFailed { reason, .. } => {
                        format!("{e}; and the reply was lost too: {reason}")
                    }
                    _ => e,
                });
            }
            match c {
                Conn::Established { .. } => Ok(()),
                other => Err(other.to_string()),
            }
        }
        None => Err(c.to_string()),
    }
}

/// A pod-to-pod connection: established with the right pod, which saw the
/// sender's own pod IP.
fn pod_conn(world: &World, a: PodId, b: PodId, len: u32) -> Result<(), ProbeError> {
    let (src, dst) = (world.pods[a].ip, world.pods[b].ip);
    let mut pkt = Packet::tcp(src, 40000 + a as u16 % 20000, dst, POD_PORT);
    pkt.len = len;
    probe(world, Place::Pod(a), &pkt, |w, c| {
        established_with(w, c, Place::Pod(b), |seen| {
            if seen.src == src {
                Ok(())
            } else {
                Err(format!(
                    "{} received the request from {} instead of {}: pod traffic was NATed",
                    w.place_name(Place::Pod(b)),
                    seen.src,
                    src
                ))
            }
        })
    })
}

fn cell_of(e: &ProbeError) -> Cell {
    match e.leg {
        Some(Leg::Reply) => Cell::ReplyFails,
        _ => Cell::RequestFails,
    }
}

pub fn pod_to_pod(inp: &CheckInput<'_>) -> (CheckResult, Option<Matrix>) {
    let world = inp.world;
    let mut c = Collector::default();
    let n = world.nodes.len();
    let small = n <= 32;
    let mut cells = vec![vec![Cell::Reaches; n]; n];
    let mark = |cells: &mut Vec<Vec<Cell>>, a: NodeId, b: NodeId, cell: Cell| {
        if small {
            for (p, q) in inp.classes.expand(a, b) {
                if cells[p][q] == Cell::Reaches {
                    cells[p][q] = cell;
                }
            }
        }
    };
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
        match pod_conn(world, x, y, 60) {
            Ok(()) => c.pass(weight),
            Err(e) => {
                mark(&mut cells, a, b, cell_of(&e));
                let first = format!("{} → {}", pod_label(world, x), pod_label(world, y));
                c.fail(weight, e, first, pair_group(inp, a, b));
            }
        }
    }
    // A pod reaches its own IP (delivered inside its namespace).
    for (a, weight) in inp.classes.nodes() {
        let Some(&x) = pods_on(world, a).first() else {
            continue;
        };
        match pod_conn(world, x, x, 60) {
            Ok(()) => c.pass(weight),
            Err(e) => {
                mark(&mut cells, a, a, cell_of(&e));
                let first = format!("{} → its own IP {}", pod_label(world, x), world.pods[x].ip);
                c.fail(weight, e, first, pair_group(inp, a, a));
            }
        }
    }
    for (name, why) in &inp.prepared.no_pods {
        c.notes.push(format!("no test pods on {name}: {why}"));
        if let Some(i) = world.nodes.iter().position(|x| &x.name == name) {
            if small {
                for j in 0..n {
                    cells[i][j] = Cell::Untested;
                    cells[j][i] = Cell::Untested;
                }
            }
        }
        c.fail(
            1,
            ProbeError {
                reason: format!("no test pods on {name}: {why}"),
                leg: None,
                trace: vec![],
            },
            name.clone(),
            CaseGroup::single(name.clone(), name.clone()),
        );
    }

    let matrix = small.then(|| Matrix {
        nodes: world.nodes.iter().map(|x| x.name.clone()).collect(),
        cells,
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
        // Full-size segments both ways, as a bulk transfer sends them.
        let len = world.pods[x].mtu;
        match pod_conn(world, x, y, len) {
            Ok(()) => c.pass(weight),
            Err(e) => {
                let first = format!(
                    "{} → {} ({len} bytes)",
                    pod_label(world, x),
                    pod_label(world, y)
                );
                c.fail(weight, e, first, pair_group(inp, a, b));
            }
        }
    }
    c.finish(CheckKind::Mtu)
}

fn node_to_pod(inp: &CheckInput<'_>) -> CheckResult {
    let world = inp.world;
    let mut c = Collector::default();
    for (n, weight) in inp.classes.nodes() {
        for p in pods_on(world, n) {
            let pkt = Packet::tcp(
                IpAddr::from([0, 0, 0, 0]),
                50000,
                world.pods[p].ip,
                POD_PORT,
            );
            let r = probe(world, Place::Node(n), &pkt, |w, c| {
                established_with(w, c, Place::Pod(p), |_| Ok(()))
            });
            match r {
                Ok(()) => c.pass(weight),
                Err(e) => {
                    let first = format!("{} → {}", world.nodes[n].name, pod_label(world, p));
                    let to = world.pods[p].name.clone();
                    c.fail(
                        weight,
                        e,
                        first,
                        node_group(inp, n, format!("own pod {to}")),
                    );
                }
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
    // Cluster DNS is part of the network model: its Service must have a
    // ready endpoint (an empty one is rejected, which no pod can use).
    for svc in &inp.prepared.services {
        if svc.namespace == "kube-system" && svc.name == "kube-dns" && svc.endpoints.is_empty() {
            c.fail(
                1,
                ProbeError {
                    reason: format!(
                        "the cluster DNS Service {} has no endpoints: no DNS pod is running, so no pod can resolve names",
                        svc_label(svc)
                    ),
                    leg: None,
                    trace: vec![],
                },
                svc_label(svc),
                CaseGroup::single("cluster".into(), svc_label(svc)),
            );
        }
    }
    let wanted: Vec<BTreeSet<(IpAddr, u16)>> = inp
        .prepared
        .services
        .iter()
        .map(|s| s.endpoints.iter().copied().collect())
        .collect();
    for (n, weight) in inp.classes.nodes() {
        // From a pod on the node, and from the node itself.
        let mut clients: Vec<(Place, IpAddr, String)> = Vec::new();
        if let Some(&pod) = pods_on(world, n).first() {
            clients.push((Place::Pod(pod), world.pods[pod].ip, pod_label(world, pod)));
        }
        clients.push((
            Place::Node(n),
            IpAddr::from([0, 0, 0, 0]),
            world.nodes[n].name.clone(),
        ));
        for (from, src, label) in &clients {
            for (svc, want) in inp.prepared.services.iter().zip(&wanted) {
                let first = format!(
                    "{label} → {} ({}:{})",
                    svc_label(svc),
                    svc.cluster_ip,
                    svc.port
                );
                match service_probe(world, *from, *src, svc, want, false) {
                    Ok(()) => c.pass(weight),
                    Err(_) => {
                        let e = service_probe(world, *from, *src, svc, want, true)
                            .err()
                            .unwrap_or(ProbeError {
                                reason: "the probe failed without a trace, then passed: the walk is not deterministic".into(),
                                leg: None,
                                trace: vec![],
                            });
                        let mut group = node_group(inp, n, svc_label(svc));
                        if let Place::Pod(_) = from {
                            group.from =
                                group.from.iter().map(|f| format!("pods on {f}")).collect();
                        }
                        c.fail(weight, e, first, group);
                    }
                }
            }
        }
    }
    c.finish(CheckKind::Services)
}

/// Every connection from `from` to the Service's VIP, over all `statistic`
/// branches: the set of endpoints reached by established connections must
/// be the Service's endpoints, and a Service without endpoints must be
/// rejected.
fn service_probe(
    world: &World,
    from: Place,
    src: IpAddr,
    svc: &ServiceDef,
    want: &BTreeSet<(IpAddr, u16)>,
    traced: bool,
) -> Result<(), ProbeError> {
    let outcomes = explore(MAX_PATHS, |br| {
        let mut w = if traced {
            Walker::new(world)
        } else {
            Walker::quiet(world)
        };
        let mut pkt = Packet::tcp(src, 41000, svc.cluster_ip, svc.port);
        pkt.proto = svc.proto;
        let conn = connect(&mut w, from, pkt, br);
        (conn, w.hops)
    })
    .map_err(|e| ProbeError {
        reason: format!("Service {}: {e}", svc.key()),
        leg: None,
        trace: vec![],
    })?;
    let mut reached: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
    let mut first_trace: Option<Vec<Hop>> = None;
    let mut problem: Option<(String, Option<Leg>)> = None;
    let mut rejected = false;
    for o in outcomes {
        let (conn, hops) = o.value;
        match &conn {
            Conn::RequestFailed {
                fate: Fate::Rejected { .. },
            } if want.is_empty() => rejected = true,
            Conn::Established { server, seen } => {
                let ep = (seen.dst, seen.dport);
                let right_place = match server {
                    Place::Pod(q) => world.pods[*q].ip == seen.dst,
                    Place::Node(m) => world.nodes[*m].is_local(seen.dst),
                    _ => false,
                };
                if right_place && want.contains(&ep) {
                    reached.insert(ep);
                    if first_trace.is_none() {
                        first_trace = Some(hops);
                    }
                } else if problem.is_none() {
                    problem = Some((
                        format!(
                            "reached {}:{} which is not an endpoint",
                            seen.dst, seen.dport
                        ),
                        None,
                    ));
                    first_trace = Some(hops);
                }
            }
            other => {
                if problem.is_none() {
                    let via = other
                        .server()
                        .map(|(_, seen)| format!(" (through endpoint {}:{})", seen.dst, seen.dport))
                        .unwrap_or_default();
                    problem = Some((format!("{other}{via}"), other.failed_leg()));
                    first_trace = Some(hops);
                }
            }
        }
    }
    let trace = first_trace.unwrap_or_default();
    if want.is_empty() {
        return match (rejected, problem) {
            (true, None) => Ok(()),
            (_, p) => {
                let (what, leg) = p.unwrap_or_else(|| ("it was not rejected".into(), None));
                Err(ProbeError {
                    reason: format!(
                        "Service {} has no endpoints and must be rejected, but: {what}",
                        svc.key()
                    ),
                    leg,
                    trace,
                })
            }
        };
    }
    if let Some((p, leg)) = problem {
        return Err(ProbeError {
            reason: format!("Service {}: {p}", svc.key()),
            leg,
            trace,
        });
    }
    if &reached != want {
        let missing: Vec<String> = want
            .difference(&reached)
            .map(|(i, p)| format!("{i}:{p}"))
            .collect();
        return Err(ProbeError {
            reason: format!(
                "Service {} never reaches endpoints {}",
                svc.key(),
                missing.join(", ")
            ),
            leg: None,
            trace,
        });
    }
    Ok(())
}

/// A Service port as the report names it: UDP ports say so.
fn svc_label(svc: &ServiceDef) -> String {
    match svc.proto {
        Proto::Udp => format!("{}/udp", svc.key()),
        _ => svc.key(),
    }
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
    if world.underlay.router_ip.is_none() {
        c.notes.push(
            "egress not checked: the scenario declares no network.gateway, so nothing outside the underlay exists"
                .into(),
        );
        return c.finish(CheckKind::Egress);
    }
    let out = world.underlay.outside_ip;
    for (n, weight) in inp.classes.nodes() {
        let Some(&pod) = pods_on(world, n).first() else {
            continue;
        };
        let src = world.pods[pod].ip;
        let node_ip = world.nodes[n].ip;
        let pkt = Packet::tcp(src, 42000, out, 80);
        let r = probe(world, Place::Pod(pod), &pkt, |w, c| {
            established_with(w, c, Place::Outside, |seen| {
                if s.network.masquerade && seen.src != node_ip {
                    Err(format!(
                        "the outside host saw source {} instead of the node IP {node_ip}: not masqueraded",
                        seen.src
                    ))
                } else {
                    Ok(())
                }
            })
        });
        match r {
            Ok(()) => c.pass(weight),
            Err(e) => {
                let first = format!("{} → outside {out}:80", pod_label(world, pod));
                c.fail(
                    weight,
                    e,
                    first,
                    node_group(inp, n, format!("outside {out}:80")),
                );
            }
        }
    }
    c.finish(CheckKind::Egress)
}

fn apiserver(inp: &CheckInput<'_>) -> CheckResult {
    let world = inp.world;
    let s = inp.scenario;
    let mut c = Collector::default();
    let (master, port) = match &s.control_plane_endpoint {
        Some(e) => (e.host_text(), e.port),
        None => (s.master_ip.to_string(), s.security.model.apiserver_port()),
    };
    let down: Vec<&str> = world
        .nodes
        .iter()
        .filter(|n| !n.up)
        .map(|n| n.name.as_str())
        .collect();
    if !down.is_empty() {
        c.notes.push(format!(
            "{} down: not a client, and its components are not judged; the other nodes must carry the cluster",
            down.join(", ")
        ));
    }
    if world.underlay.load_balancer.is_some() {
        c.notes.push(format!(
            "the load balancer at {master}:{port} is outside the simulated machines: each node's connections to its backends, every control-plane node's apiserver, are walked instead"
        ));
    }
    for (n, weight) in inp.classes.nodes() {
        if !world.nodes[n].up {
            continue;
        }
        let r = match &s.control_plane_endpoint {
            Some(e) => endpoint_probe(world, n, e),
            None => master_probe(world, n, s.master_ip, port),
        };
        match r {
            Ok(()) => c.pass(weight),
            Err(e) => {
                let first = format!("{} → {master}:{port}", world.nodes[n].name);
                c.fail(
                    weight,
                    e,
                    first,
                    node_group(inp, n, format!("{master}:{port}")),
                );
            }
        }
    }
    // Health endpoints of every control-plane component and etcd member.
    let health_failure = |reason: String| ProbeError {
        reason,
        leg: None,
        trace: vec![],
    };
    for (i, node) in s.control_plane_nodes() {
        if !world.nodes[i].up {
            continue;
        }
        let checks: [(Component, Result<(), String>); 3] = [
            (
                Component::KubeApiserver,
                crate::components::apiserver_health(world, i),
            ),
            (
                Component::KubeScheduler,
                crate::components::health(&world.nodes[i], Component::KubeScheduler.name()),
            ),
            (
                Component::KubeControllerManager,
                crate::components::health(&world.nodes[i], Component::KubeControllerManager.name()),
            ),
        ];
        for (component, r) in checks {
            let comp = component.name();
            if inp.restarting.contains(&(i, component)) {
                c.notes.push(format!(
                    "{comp} on {} is restarting (rollout): its health is not required",
                    node.name
                ));
                continue;
            }
            match r {
                Ok(()) => c.pass(1),
                Err(e) => c.fail(
                    1,
                    health_failure(format!("{comp} on {} is not healthy: {e}", node.name)),
                    node.name.clone(),
                    CaseGroup::single(node.name.clone(), comp.to_string()),
                ),
            }
        }
    }
    for &m in &s.etcd.members {
        if !world.nodes[m].up {
            continue;
        }
        let name = world.nodes[m].name.clone();
        if inp.restarting.contains(&(m, Component::Etcd)) {
            c.notes.push(format!(
                "etcd on {name} is restarting (rollout): its health is not required"
            ));
            continue;
        }
        match crate::components::health(&world.nodes[m], "etcd") {
            Ok(()) => c.pass(1),
            Err(e) => c.fail(
                1,
                health_failure(format!("etcd on {name} is not healthy: {e}")),
                name.clone(),
                CaseGroup::single(name, "etcd".into()),
            ),
        }
    }
    c.finish(CheckKind::Apiserver)
}

/// Node `n`'s connection to the apiserver endpoint, as the apiserver check
/// probes it (the components' own health checks aside): `kscratch verify`
/// holds its real connection against this.
pub(crate) fn node_reaches_apiserver(world: &World, s: &Scenario, n: NodeId) -> Result<(), String> {
    match &s.control_plane_endpoint {
        Some(e) => endpoint_probe(world, n, e),
        None => master_probe(world, n, s.master_ip, s.security.model.apiserver_port()),
    }
    .map_err(|e| e.reason)
}

/// A connection from node `n` to the apiserver at `MASTER_IP`: the node
/// holding that address answers with its kube-apiserver.
fn master_probe(world: &World, n: NodeId, master: IpAddr, port: u16) -> Result<(), ProbeError> {
    let pkt = Packet::tcp(IpAddr::from([0, 0, 0, 0]), 43000, master, port);
    probe(world, Place::Node(n), &pkt, |_, c| {
        let answered = c.established().is_some_and(|(to, _)| {
            matches!(to, Place::Node(m)
                if world.nodes[m].ip == master
                    && world.nodes[m]
                        .listeners
                        .get(&(Proto::Tcp, port))
                        .is_some_and(|l| l.process == "kube-apiserver"))
        });
        if answered {
            Ok(())
        } else {
            Err(format!(
                "the apiserver at {master}:{port} does not answer: {c}"
            ))
        }
    })
}

/// Node `n` reaches a healthy apiserver through the control-plane endpoint.
/// A local proxy: the connection to it on loopback, then the proxy's own
/// connections to the servers of its rendered configuration, each walked
/// from the node. The operator's load balancer: its backends, walked from
/// the node (the balancer itself is not a simulated machine). Some server
/// must answer with a kube-apiserver that is healthy (what the health check
/// asks); a server the proxy does not health-check must answer too, since it
/// still gets connections.
fn endpoint_probe(
    world: &World,
    n: NodeId,
    e: &kscratch_core::scenario::ControlPlaneEndpoint,
) -> Result<(), ProbeError> {
    let plain = |reason: String| ProbeError {
        reason,
        leg: None,
        trace: vec![],
    };
    let servers: Vec<(String, IpAddr, u16, bool)> = match e.host {
        kscratch_core::scenario::EndpointHost::Ip(ip) if ip.is_loopback() => {
            let pkt = Packet::tcp(IpAddr::from([0, 0, 0, 0]), 43000, ip, e.port);
            probe(world, Place::Node(n), &pkt, |w, c| {
                established_with(w, c, Place::Node(n), |_| Ok(()))?;
                match world.nodes[n].listeners.get(&(Proto::Tcp, e.port)) {
                    Some(l) if l.process == crate::components::HAPROXY => Ok(()),
                    Some(l) => Err(format!(
                        "{} answers at {e} on {} instead of the apiserver proxy",
                        l.process, world.nodes[n].name
                    )),
                    None => Err(format!("nothing listens at {e} on {}", world.nodes[n].name)),
                }
            })?;
            let config =
                crate::components::apiserver_proxy_config(&world.nodes[n]).map_err(plain)?;
            let backend = config.route(ip, e.port).ok_or_else(|| {
                plain(format!(
                    "haproxy on {}: no frontend binds {e}",
                    world.nodes[n].name
                ))
            })?;
            backend
                .servers
                .iter()
                .map(|s| (s.name.clone(), s.addr, s.port, s.check))
                .collect()
        }
        _ => world
            .underlay
            .load_balancer
            .iter()
            .flat_map(|lb| lb.backends.iter())
            .map(|(name, ip, port)| (name.clone(), *ip, *port, true))
            .collect(),
    };
    let mut failures: Vec<(String, ProbeError)> = Vec::new();
    let mut served = false;
    for (name, ip, port, check) in servers {
        let r = master_probe(world, n, ip, port).and_then(|()| {
            let m = world.nodes.iter().position(|x| x.ip == ip);
            m.map_or(Err(format!("no node holds {ip}")), |m| {
                crate::components::apiserver_health(world, m)
            })
            .map_err(|reason| plain(format!("its apiserver is not healthy: {reason}")))
        });
        match r {
            Ok(()) => served = true,
            Err(err) if !check => {
                return Err(ProbeError {
                    reason: format!(
                        "server {name} ({ip}:{port}) is not health-checked and gets connections, but {}",
                        err.reason
                    ),
                    ..err
                })
            }
            Err(err) => failures.push((name, err)),
        }
    }
    if served {
        return Ok(());
    }
    let reasons: Vec<String> = failures
        .iter()
        .map(|(name, err)| format!("{name}: {}", err.reason))
        .collect();
    let reason = if reasons.is_empty() {
        format!("the endpoint {e} has no servers")
    } else {
        format!("no healthy apiserver behind {e}: {}", reasons.join("; "))
    };
    Err(match failures.into_iter().next() {
        Some((_, first)) => ProbeError { reason, ..first },
        None => plain(reason),
    })
}
