//! `kscratch verify`: the real cluster's measured connections held against
//! the simulator's prediction for the same scenario and faults. Pure: the
//! measurements come in as data (`kscratch_backends::verify` makes them).
//!
//! Every real probe stands for a test pod the simulator starts on the same
//! node (its kubelet starts `probe-a` and `probe-b` on every node that runs
//! pods): a connection between two probes on different nodes is predicted
//! by `probe-a` to `probe-a`, between two probes of one node by `probe-a` to
//! `probe-b`, and a probe to itself by `probe-a` to its own address. The
//! addresses differ (host-local on a real node hands out whatever is free),
//! so what the receiver saw is compared by meaning: the sender's own
//! address, a node's address (masqueraded), or the same literal address
//! (a node's bridge address, when a node reaches its own pods).

use crate::netfilter::TakeFirst;
use crate::packet::Proto;
use crate::prepare::POD_PORT;
use crate::walk::{tcp_connect, Place};
use crate::Simulated;
use serde::Serialize;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// A probe that was made on a real node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RealProbe {
    /// `NODE/pI`.
    pub name: String,
    pub node: String,
    pub index: usize,
    pub ip: IpAddr,
}

/// What one connection did, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Seen {
    /// Connected and answered; `peer` is what the receiver saw as the
    /// source: `sender` (the client's own address), `node:NAME` (a node's
    /// address: masqueraded), or a literal address.
    Reaches { peer: String },
    /// No connection (or no answer); `detail` is the real client's complaint.
    Fails {
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

impl Seen {
    /// Same verdict and same peer; a failure's detail does not count.
    pub fn agrees(&self, other: &Seen) -> bool {
        match (self, other) {
            (Seen::Reaches { peer: a }, Seen::Reaches { peer: b }) => a == b,
            (Seen::Fails { .. }, Seen::Fails { .. }) => true,
            _ => false,
        }
    }

    fn short(&self) -> &'static str {
        match self {
            Seen::Reaches { .. } => "reaches",
            Seen::Fails { .. } => "fails",
        }
    }
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Reaches { peer } if peer == ECHOED => {
                f.write_str("reaches (the full-size packet came back whole)")
            }
            Seen::Reaches { peer } if peer == ANSWERED => {
                f.write_str("reaches (the server answered the request)")
            }
            Seen::Reaches { peer } if peer == "sender" => {
                f.write_str("reaches (the receiver saw the sender's own address)")
            }
            Seen::Reaches { peer } => match peer.strip_prefix("node:") {
                Some(n) => write!(f, "reaches (the receiver saw {n}'s address)"),
                None => write!(f, "reaches (the receiver saw {peer})"),
            },
            Seen::Fails { detail: Some(d) } => write!(f, "fails ({d})"),
            Seen::Fails { detail: None } => f.write_str("fails"),
        }
    }
}

/// What the receiver saw, by meaning.
pub fn peer_name(peer: IpAddr, sender: Option<IpAddr>, nodes: &[(String, IpAddr)]) -> String {
    if Some(peer) == sender {
        return "sender".into();
    }
    match nodes.iter().find(|(_, ip)| *ip == peer) {
        Some((n, _)) => format!("node:{n}"),
        None => peer.to_string(),
    }
}

/// One measured cell and its prediction.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub from: String,
    pub to: String,
    pub real: Seen,
    pub predicted: Seen,
    pub agrees: bool,
    /// The simulator's hop-by-hop trace of the predicted connection, for a
    /// cell that disagrees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// Where a cell starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client<'a> {
    Probe(&'a RealProbe),
    Node(&'a str),
}

/// The simulator's test pod standing for probe `p` as the client or the
/// server of a connection from `from`.
fn stand_in(sim: &Simulated, p: &RealProbe, from: Option<&RealProbe>) -> Option<usize> {
    let w = &sim.world;
    let n = w.nodes.iter().position(|n| n.name == p.node)?;
    let name = match from {
        Some(f) if f.node == p.node && f.index != p.index => "probe-b",
        _ => "probe-a",
    };
    w.pods.iter().position(|q| q.node == n && q.name == name)
}

/// True when the simulator has the test pods that stand for probes on `node`.
pub fn predicts_pods_on(sim: &Simulated, node: &str) -> bool {
    let w = &sim.world;
    w.nodes
        .iter()
        .position(|n| n.name == node)
        .is_some_and(|n| {
            ["probe-a", "probe-b"]
                .iter()
                .all(|name| w.pods.iter().any(|q| q.node == n && q.name == *name))
        })
}

/// Verify's probes are pods attached by each node's own CNI config after
/// the faults, and a CNI ADD changes the host: the bridge plugin with
/// `isGateway` turns `net.ipv4.ip_forward` on again and puts the gateway
/// address back on the bridge, on every ADD (as a kubelet starting any pod
/// would). The prediction verify holds its measurements against is the
/// simulated cluster after those ADDs on the `nodes` it probes; `kscratch
/// check` (no pod started after the faults) keeps the fault as is.
pub fn probes_attached(sim: &mut Simulated, nodes: &[&str]) -> Result<(), String> {
    for name in nodes {
        let n = sim
            .world
            .nodes
            .iter()
            .position(|x| x.name == *name)
            .ok_or_else(|| format!("no node {name} in the simulation"))?;
        crate::prepare::cni_add_on(&mut sim.world, n)?;
    }
    Ok(())
}

/// The simulator's verdict for one cell, with the trace's endpoints.
pub fn predict(
    sim: &Simulated,
    from: Client<'_>,
    to: &RealProbe,
    nodes: &[(String, IpAddr)],
) -> Option<(Seen, String, String)> {
    let w = &sim.world;
    let (place, src, from_name, client) = match from {
        Client::Probe(p) => {
            let i = stand_in(sim, p, None)?;
            (
                Place::Pod(i),
                w.pods[i].ip,
                format!("{}/{}", p.node, w.pods[i].name),
                Some(p),
            )
        }
        Client::Node(n) => {
            let i = w.nodes.iter().position(|x| x.name == n)?;
            (
                Place::Node(i),
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                n.to_string(),
                None,
            )
        }
    };
    let t = stand_in(sim, to, client)?;
    let dst = w.pods[t].ip;
    let seen = match tcp_connect(w, place, src, dst, POD_PORT, &mut TakeFirst) {
        Some((at, peer)) if at == Place::Pod(t) => Seen::Reaches {
            peer: peer_name(
                peer,
                match place {
                    Place::Pod(_) => Some(src),
                    _ => None,
                },
                nodes,
            ),
        },
        _ => Seen::Fails { detail: None },
    };
    Some((seen, from_name, format!("{}/{}", to.node, w.pods[t].name)))
}

/// The peer of a pod-MTU cell that went through: the datagram came back whole.
pub const ECHOED: &str = "echoed";

/// The simulator's verdict for a pod-MTU packet from `from` to `to` (both
/// ways, full size, as its MTU check sends them), with the trace's endpoints.
pub fn predict_mtu(
    sim: &Simulated,
    from: &RealProbe,
    to: &RealProbe,
) -> Option<(Seen, String, String)> {
    let w = &sim.world;
    let (x, y) = (stand_in(sim, from, None)?, stand_in(sim, to, None)?);
    let mut pkt = crate::packet::Packet::tcp(w.pods[x].ip, 46000, w.pods[y].ip, POD_PORT);
    pkt.len = w.pods[x].mtu;
    let mut walker = crate::walk::Walker::quiet(w);
    let conn = crate::walk::connect(&mut walker, Place::Pod(x), pkt, &mut TakeFirst);
    let seen = match conn.established() {
        Some((at, _)) if at == Place::Pod(y) => Seen::Reaches {
            peer: ECHOED.into(),
        },
        _ => Seen::Fails { detail: None },
    };
    Some((
        seen,
        format!("{}/{}", from.node, w.pods[x].name),
        format!("{}/{}", to.node, w.pods[y].name),
    ))
}

/// The simulator's trace of a predicted connection, as `kscratch trace` prints it.
pub fn trace_text(sim: &Simulated, from: &str, to: &str) -> String {
    match crate::trace::trace(sim, from, to, Proto::Tcp) {
        Ok(t) => t.to_string(),
        Err(e) => format!("(no trace: {e})\n"),
    }
}

/// The apiserver endpoint as the nodes' kubeconfigs name it: the
/// scenario's `controlPlaneEndpoint`, else `MASTER_IP` on the security
/// model's port.
pub fn apiserver_endpoint(s: &kscratch_core::Scenario) -> (String, u16) {
    match &s.control_plane_endpoint {
        Some(e) => (e.host_text(), e.port),
        None => (s.master_ip.to_string(), s.security.model.apiserver_port()),
    }
}

/// The peer of an apiserver cell that went through: something answered.
pub const ANSWERED: &str = "answered";

/// The simulator's verdict for node `node` to the apiserver endpoint: the
/// apiserver check's verdict for that node's connection.
pub fn predict_apiserver(sim: &Simulated, s: &kscratch_core::Scenario, node: &str) -> Option<Seen> {
    let n = sim.world.nodes.iter().position(|x| x.name == node)?;
    Some(
        match crate::checks::node_reaches_apiserver(&sim.world, s, n) {
            Ok(()) => Seen::Reaches {
                peer: ANSWERED.into(),
            },
            Err(reason) => Seen::Fails {
                detail: Some(reason),
            },
        },
    )
}

/// The Services verify measures on a real cluster: those kube-proxy
/// programs in every cluster, `default/kubernetes` and the DNS Service's
/// TCP port. The simulator's own test Services (`kscratch/*`, `scale/*`)
/// exist only in the simulation (verify creates no API objects), and a UDP
/// port has no handshake to measure; both are said in `not measured`.
pub fn real_services(sim: &Simulated) -> (Vec<&crate::prepare::ServiceDef>, Vec<String>) {
    let mut measured = Vec::new();
    let mut notes = Vec::new();
    for d in &sim.prepared.services {
        let real = (d.namespace == "default" && d.name == "kubernetes")
            || (d.namespace == "kube-system" && d.name == "kube-dns");
        if !real {
            notes.push(format!(
                "Service {} ({}): exists only in the simulation (verify creates no API objects)",
                d.key(),
                d.cluster_ip
            ));
        } else if d.proto != Proto::Tcp {
            notes.push(format!(
                "Service {} ({}, UDP): a datagram has no handshake to measure",
                d.key(),
                d.cluster_ip
            ));
        } else {
            measured.push(d);
        }
    }
    (measured, notes)
}

/// An address as verify names a Service endpoint, by meaning: a node
/// (`node1`), a pod on a node (`pod on node1`, by the node's pod CIDR), or
/// the address itself.
pub fn endpoint_name(s: &kscratch_core::Scenario, ip: IpAddr) -> String {
    if let Some(n) = s.nodes.iter().find(|n| n.ip == ip) {
        return n.name.clone();
    }
    match s.alloc.pod_cidrs.iter().position(|c| c.contains(&ip)) {
        Some(k) if k < s.nodes.len() => format!("pod on {}", s.nodes[k].name),
        _ => ip.to_string(),
    }
}

/// What the simulator predicts for connections from `from` to a Service's
/// VIP, over every `statistic` branch.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VipPrediction {
    /// The endpoints a connection lands on ([`endpoint_name`]), each with
    /// the probability that one connection lands there.
    pub endpoints: Vec<(String, f64)>,
    /// The probability that a connection fails.
    pub fails: f64,
}

/// The simulator's prediction for `from` to `svc`'s VIP and port.
pub fn predict_vip(
    sim: &Simulated,
    s: &kscratch_core::Scenario,
    from: Client<'_>,
    svc: &crate::prepare::ServiceDef,
) -> Option<Result<VipPrediction, String>> {
    let w = &sim.world;
    let (place, src) = match from {
        Client::Probe(p) => {
            // The second probe of a node stands for `probe-b`, the first for `probe-a`.
            let n = w.nodes.iter().position(|n| n.name == p.node)?;
            let name = if p.index == 0 { "probe-a" } else { "probe-b" };
            let i = w.pods.iter().position(|q| q.node == n && q.name == name)?;
            (Place::Pod(i), w.pods[i].ip)
        }
        Client::Node(n) => (
            Place::Node(w.nodes.iter().position(|x| x.name == n)?),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ),
    };
    let outcomes = match crate::netfilter::explore(1000, |br| {
        tcp_connect(w, place, src, svc.cluster_ip, svc.port, br)
    }) {
        Ok(o) => o,
        Err(e) => return Some(Err(e.to_string())),
    };
    let mut endpoints: std::collections::BTreeMap<String, f64> = Default::default();
    let mut fails = 0.0;
    for o in outcomes {
        let at = match o.value {
            Some((Place::Pod(p), _)) => Some(w.pods[p].ip),
            Some((Place::Node(m), _)) => Some(w.nodes[m].ip),
            _ => None,
        };
        match at {
            Some(ip) => *endpoints.entry(endpoint_name(s, ip)).or_default() += o.probability,
            None => fails += o.probability,
        }
    }
    Some(Ok(VipPrediction {
        endpoints: endpoints.into_iter().collect(),
        fails,
    }))
}

/// How many connections verify makes to a VIP: enough that each predicted
/// endpoint (the least likely one first) is hit with a chance of 99% or
/// more, at least 8 and at most 32. A real endpoint the prediction does not
/// have, taken with probability `q`, is missed by all `t` tries with
/// probability `(1 - q)^t` ([`miss_probability`]).
pub fn vip_tries(p: &VipPrediction) -> usize {
    let least = p.endpoints.iter().map(|(_, q)| *q).fold(1.0f64, f64::min);
    if p.endpoints.is_empty() || least >= 1.0 {
        return 8;
    }
    ((0.01f64).ln() / (1.0 - least).ln())
        .ceil()
        .clamp(8.0, 32.0) as usize
}

/// The chance that `tries` connections never land on an endpoint taken
/// with probability `q` each time.
pub fn miss_probability(q: f64, tries: usize) -> f64 {
    (1.0 - q).powi(tries as i32)
}

/// Connections from one client to one Service VIP, real against predicted.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceCell {
    pub from: String,
    /// `NAMESPACE/NAME:PORT`.
    pub service: String,
    pub vip: String,
    pub tries: usize,
    /// Real connections that completed the handshake.
    pub connected: usize,
    /// The endpoints the real connections landed on (from the node's
    /// conntrack table), with how many landed on each; empty when the
    /// node has no `conntrack` tool (then only `connected` is compared).
    pub real_endpoints: Vec<(String, usize)>,
    pub endpoints_known: bool,
    pub predicted: VipPrediction,
    /// The chance that these tries miss the least likely predicted endpoint.
    pub miss_probability: f64,
    pub agrees: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ServiceCell {
    /// Real connections held against the prediction, allowing for the
    /// sampling of `statistic` branches: every endpoint reached is a
    /// predicted one, a connection fails only where the prediction has a
    /// failing branch, and one connects only where it has an endpoint.
    pub fn judge(&mut self) {
        let failed = self.tries - self.connected;
        let mut why = Vec::new();
        // Probabilities are sums of products: a failing branch below one in
        // a billion is rounding, not a prediction.
        if failed > 0 && self.predicted.fails < 1e-9 {
            why.push(format!("{failed} of {} connections failed", self.tries));
        }
        if self.connected > 0 && self.predicted.endpoints.is_empty() {
            why.push(format!("{} connections went through", self.connected));
        }
        for (e, _) in &self.real_endpoints {
            if !self.predicted.endpoints.iter().any(|(p, _)| p == e) {
                why.push(format!(
                    "a connection landed on {e}, which is not predicted"
                ));
            }
        }
        self.agrees = why.is_empty();
        if !why.is_empty() {
            self.detail = Some(why.join("; "));
        }
    }
}

/// One probe's connection to the operator's egress target.
#[derive(Debug, Clone, Serialize)]
pub struct Egress {
    pub from: String,
    pub target: String,
    /// The TCP handshake completed.
    pub connects: bool,
}

/// Up to this many measured nodes, verify measures every ordered node pair
/// (each probe to every probe); above it, a sample ([`sample_pairs`]). At
/// 16 nodes and 2 probes that is 1,024 connections, a few seconds.
pub const ALL_PAIRS_UP_TO: usize = 16;

/// Above [`ALL_PAIRS_UP_TO`], the node pairs drawn for each ordered pair of
/// equivalence classes (same-class pairs included).
pub const PAIRS_PER_CLASS_PAIR: usize = 2;

/// The measured nodes grouped as the simulator sees them: the equivalence
/// classes ([`crate::classes::Classes`]) restricted to `measured` (positions
/// in that list), and the odd nodes: those the classes call odd and every
/// node alone in its class (its state differs from every other node's).
pub fn strata(
    sim: &Simulated,
    s: &kscratch_core::Scenario,
    measured: &[&str],
) -> (Vec<Vec<usize>>, Vec<usize>) {
    let classes = crate::classes::Classes::compute(&sim.world, s);
    let at = |n: usize| {
        let name = &sim.world.nodes[n].name;
        measured.iter().position(|m| m == name)
    };
    let mut odd: Vec<usize> = classes.odd.iter().filter_map(|&n| at(n)).collect();
    let mut strata = Vec::new();
    for c in &classes.classes {
        let members: Vec<usize> = c.iter().filter_map(|&n| at(n)).collect();
        match members.len() {
            0 => {}
            1 => odd.push(members[0]),
            _ => strata.push(members),
        }
    }
    // A measured node the simulator does not know stands alone.
    for k in 0..measured.len() {
        if !odd.contains(&k) && !strata.iter().any(|c| c.contains(&k)) {
            odd.push(k);
        }
    }
    odd.sort_unstable();
    (strata, odd)
}

/// Which ordered node pairs `(from, to)` (positions among `n` measured
/// nodes; `from == to` is a node's probes to each other) verify measures.
///
/// Up to `all_up_to` nodes: every pair. Above it, a sample that repeats
/// for the same `seed`:
/// - every node with itself (its own probes, and the node to its pods);
/// - every odd node against every node, both ways;
/// - for each ordered pair of strata, [`PAIRS_PER_CLASS_PAIR`] pairs drawn
///   from it (two different nodes; fewer when it has fewer);
/// - every node at least once as the source and once as the target of a
///   pair with another node (a partner drawn at random).
///
/// The draws come from SplitMix64, written out here rather than taken from
/// a crate whose generator may change between versions: a seed printed
/// today must give the same sample in a later kscratch.
pub fn sample_pairs(
    n: usize,
    strata: &[Vec<usize>],
    odd: &[usize],
    seed: u64,
    all_up_to: usize,
) -> std::collections::BTreeSet<(usize, usize)> {
    let mut out = std::collections::BTreeSet::new();
    if n <= all_up_to {
        for a in 0..n {
            for b in 0..n {
                out.insert((a, b));
            }
        }
        return out;
    }
    let mut rng = SplitMix64(seed);
    for a in 0..n {
        out.insert((a, a));
    }
    for &o in odd {
        for m in 0..n {
            out.insert((o, m));
            out.insert((m, o));
        }
    }
    for x in strata {
        for y in strata {
            let candidates = if std::ptr::eq(x, y) {
                x.len() * (x.len() - 1)
            } else {
                x.len() * y.len()
            };
            let want = PAIRS_PER_CLASS_PAIR.min(candidates);
            let mut drawn = std::collections::BTreeSet::new();
            // Bounded: with at least two candidates per wanted pair, a
            // duplicate draw is rarer than one in two.
            for _ in 0..want * 32 {
                if drawn.len() == want {
                    break;
                }
                let (a, b) = (x[rng.below(x.len())], y[rng.below(y.len())]);
                if a != b {
                    drawn.insert((a, b));
                }
            }
            out.extend(drawn);
        }
    }
    if n >= 2 {
        for a in 0..n {
            if !out.iter().any(|&(f, t)| f == a && t != a) {
                let b = (a + 1 + rng.below(n - 1)) % n;
                out.insert((a, b));
            }
            if !out.iter().any(|&(f, t)| t == a && f != a) {
                let b = (a + 1 + rng.below(n - 1)) % n;
                out.insert((b, a));
            }
        }
    }
    out
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a fixed, documented sequence per seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0); the modulo bias is below 2^-40 for any
    /// cluster size and does not matter for a sample.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// How the measured node pairs were chosen, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sampling {
    /// Every node pair is measured up to this many nodes.
    pub all_pairs_up_to: usize,
    /// True when the pairs are a sample (more nodes than `all_pairs_up_to`).
    pub sampled: bool,
    /// The sample's seed (`--seed` repeats it); absent when nothing was sampled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Ordered node pairs measured (a node with itself included), and of how many.
    pub node_pairs: usize,
    pub of: usize,
    /// Nodes measured against every node because their state differs from
    /// every other node's (odd, or alone in their equivalence class).
    pub odd_nodes: Vec<String>,
    /// The measured node pairs `[from, to]`, when sampled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<[String; 2]>,
}

/// Everything `kscratch verify` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub cluster: String,
    pub faults: Vec<String>,
    pub probes_per_node: usize,
    pub probes: Vec<RealProbe>,
    /// Which node pairs were measured: all of them, or a sample.
    pub sampling: Sampling,
    /// Pod to pod (every probe to every probe, itself included), then each
    /// node to its own probes.
    pub cells: Vec<CellResult>,
    /// Pod-MTU packets: one DF datagram of the pod MTU from each node's
    /// first probe to every other node's first probe, echoed back.
    pub mtu: Vec<CellResult>,
    /// Each node to the apiserver endpoint (`to` is `apiserver HOST:PORT`):
    /// a TCP handshake and a plain HTTP request, which a TLS apiserver
    /// answers with `400 Bad Request` (any answer counts).
    pub apiserver: Vec<CellResult>,
    /// The cells that disagree (in `cells`, `mtu`, `apiserver` and
    /// `services`, with `agrees: false`).
    pub disagreements: usize,
    /// Probes and nodes to the Service VIPs, where kube-proxy runs.
    pub services: Vec<ServiceCell>,
    /// Each probe to the operator's `--egress-target`: measured, not
    /// compared (the simulator's outside host stands for no real address).
    pub egress: Vec<Egress>,
    /// What this run could not measure, and why (never counted as a pass).
    pub not_measured: Vec<String>,
    /// `kscratch check` on the same scenario and faults.
    pub prediction_passed: bool,
    /// The titles of the checks the prediction fails.
    pub prediction_failures: Vec<String>,
    /// Every cell agrees and the prediction passes.
    pub passed: bool,
}

impl VerifyReport {
    pub fn disagreeing(&self) -> impl Iterator<Item = &CellResult> {
        self.cells
            .iter()
            .chain(&self.mtu)
            .chain(&self.apiserver)
            .filter(|c| !c.agrees)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kscratch verify {}: {} probes ({} per node), {} connections measured",
            self.cluster,
            self.probes.len(),
            self.probes_per_node,
            self.cells.len()
        )?;
        if !self.faults.is_empty() {
            writeln!(f, "predicted with faults: {}", self.faults.join(", "))?;
        }
        let sm = &self.sampling;
        if let (true, Some(seed)) = (sm.sampled, sm.seed) {
            writeln!(
                f,
                "sampled: {} of {} node pairs, stratified over the simulator's equivalence classes (more than {} nodes); seed {seed} (`--seed {seed}` repeats this sample); unmeasured cells show `-`",
                sm.node_pairs, sm.of, sm.all_pairs_up_to
            )?;
        }
        if !sm.odd_nodes.is_empty() && sm.sampled {
            writeln!(
                f,
                "measured against every node (their state differs from every other node's): {}",
                sm.odd_nodes.join(", ")
            )?;
        }
        writeln!(
            f,
            "\npod to pod, real against predicted (row: from, column: to; `.` both connect as predicted, `x` both fail, `!` they disagree):"
        )?;
        let width = self.probes.iter().map(|p| p.name.len()).max().unwrap_or(0);
        write!(f, "  {:width$}", "")?;
        for j in 0..self.probes.len() {
            write!(f, " {:>2}", j + 1)?;
        }
        writeln!(f)?;
        for (i, p) in self.probes.iter().enumerate() {
            write!(f, "  {:width$}", p.name)?;
            for q in &self.probes {
                let c = self
                    .cells
                    .iter()
                    .find(|c| c.from == p.name && c.to == q.name);
                let sym = match c {
                    None => "-",
                    Some(c) if !c.agrees => "!",
                    Some(c) => match c.real {
                        Seen::Reaches { .. } => ".",
                        Seen::Fails { .. } => "x",
                    },
                };
                write!(f, "  {sym}")?;
            }
            writeln!(f, "   {}", i + 1)?;
        }
        writeln!(f, "\nnode to its own pods:")?;
        for c in self.cells.iter().filter(|c| !c.from.contains('/')) {
            let mark = if c.agrees { " " } else { "!" };
            writeln!(f, "  {mark} {} → {}: real {}", c.from, c.to, c.real)?;
        }
        if !self.mtu.is_empty() {
            let through = self
                .mtu
                .iter()
                .filter(|c| matches!(c.real, Seen::Reaches { .. }))
                .count();
            writeln!(
                f,
                "\npod-MTU packets between nodes (DF, echoed back): {through} of {} came back whole, {} as predicted",
                self.mtu.len(),
                self.mtu.iter().filter(|c| c.agrees).count()
            )?;
            for c in self.mtu.iter().filter(|c| !c.agrees) {
                writeln!(f, "  ! {} → {}: real {}", c.from, c.to, c.real)?;
            }
        }
        if let Some(first) = self.apiserver.first() {
            writeln!(f, "\nnodes to the {}:", first.to)?;
            for c in &self.apiserver {
                let mark = if c.agrees { " " } else { "!" };
                writeln!(f, "  {mark} {}: real {}", c.from, c.real)?;
            }
        }
        if !self.services.is_empty() {
            writeln!(
                f,
                "\nService VIPs, where kube-proxy runs (several connections each: the endpoint is drawn per connection):"
            )?;
            for c in &self.services {
                let mark = if c.agrees { " " } else { "!" };
                let real: Vec<String> = c
                    .real_endpoints
                    .iter()
                    .map(|(e, k)| format!("{e} ×{k}"))
                    .collect();
                let predicted: Vec<&str> = c
                    .predicted
                    .endpoints
                    .iter()
                    .map(|(e, _)| e.as_str())
                    .collect();
                writeln!(
                    f,
                    "  {mark} {} → {} ({}): {} of {} connected{}; predicted {}{}",
                    c.from,
                    c.service,
                    c.vip,
                    c.connected,
                    c.tries,
                    if c.endpoints_known {
                        format!(
                            ", on {}",
                            if real.is_empty() {
                                "none".into()
                            } else {
                                real.join(", ")
                            }
                        )
                    } else {
                        String::new()
                    },
                    if predicted.is_empty() {
                        "no endpoint".into()
                    } else {
                        predicted.join(", ")
                    },
                    c.detail
                        .as_ref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                )?;
            }
        }
        if let Some(e) = self.egress.first() {
            writeln!(
                f,
                "\negress to {} (measured, not compared: the simulator's outside host stands for no real address):",
                e.target
            )?;
            for e in &self.egress {
                let v = if e.connects { "connects" } else { "fails" };
                writeln!(f, "  {} → {}: {v}", e.from, e.target)?;
            }
        }
        for n in &self.not_measured {
            writeln!(f, "not measured: {n}")?;
        }
        if self.disagreements > 0 {
            writeln!(
                f,
                "\n{} cells disagree with the prediction:",
                self.disagreements
            )?;
            for c in self.disagreeing() {
                writeln!(
                    f,
                    "\n! {} → {}: real: {}; predicted: {}",
                    c.from,
                    c.to,
                    c.real.short(),
                    c.predicted.short()
                )?;
                writeln!(f, "  real: {}\n  predicted: {}", c.real, c.predicted)?;
                if let Some(t) = &c.trace {
                    writeln!(f, "  the prediction's trace:")?;
                    for l in t.lines() {
                        writeln!(f, "    {l}")?;
                    }
                }
            }
        }
        writeln!(f)?;
        if self.prediction_passed {
            writeln!(f, "prediction: kscratch check passes")?;
        } else {
            writeln!(
                f,
                "prediction: kscratch check fails: {}",
                self.prediction_failures.join("; ")
            )?;
        }
        writeln!(
            f,
            "verdict: {}",
            match (self.disagreements, self.prediction_passed) {
                (0, true) => "PASS: the real cluster behaves as proven".to_string(),
                (0, false) =>
                    "FAIL: the real cluster behaves as predicted, and the prediction fails a check"
                        .to_string(),
                (n, _) => format!("FAIL: {n} cells disagree with the prediction"),
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The bundled guide-routed scenario and its plan.
    fn guide_routed() -> (kscratch_core::Scenario, kscratch_core::plan::Plan) {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scenarios/guide-routed.yaml"
        ))
        .unwrap();
        let s = kscratch_core::load("guide-routed.yaml", &text, None)
            .unwrap()
            .scenario;
        let plan = kscratch_core::plan::plan(&s);
        (s, plan)
    }

    /// The simulated cluster with one fault.
    fn with_fault(
        s: &kscratch_core::Scenario,
        plan: &kscratch_core::plan::Plan,
        fault: &str,
    ) -> Simulated {
        let faults = vec![kscratch_core::scenario::Fault::parse(fault).unwrap()];
        crate::simulate(
            s,
            plan,
            &crate::CheckOptions {
                faults,
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn what_the_receiver_saw_is_named_by_meaning() {
        let nodes = vec![("node1".to_string(), ip("198.51.100.1"))];
        assert_eq!(
            peer_name(ip("10.10.1.5"), Some(ip("10.10.1.5")), &nodes),
            "sender"
        );
        assert_eq!(
            peer_name(ip("198.51.100.1"), Some(ip("10.10.1.5")), &nodes),
            "node:node1"
        );
        assert_eq!(peer_name(ip("10.10.1.1"), None, &nodes), "10.10.1.1");
    }

    #[test]
    fn cells_agree_on_verdict_and_peer_not_on_the_failure_detail() {
        let r = |p: &str| Seen::Reaches { peer: p.into() };
        let fails = |d: Option<&str>| Seen::Fails {
            detail: d.map(String::from),
        };
        assert!(r("sender").agrees(&r("sender")));
        assert!(!r("sender").agrees(&r("node:node1")));
        assert!(!r("sender").agrees(&fails(None)));
        assert!(fails(Some("Connection timed out")).agrees(&fails(None)));
        assert_eq!(
            r("node:node2").to_string(),
            "reaches (the receiver saw node2's address)"
        );
    }

    #[test]
    fn every_pair_up_to_the_limit_and_above_it_a_sample_that_repeats_for_its_seed() {
        let all = sample_pairs(4, &[vec![0, 1, 2, 3]], &[], 7, 4);
        assert_eq!(all.len(), 16);
        // 40 nodes: two classes of 18, and 4 odd ones.
        let strata = vec![(0..18).collect::<Vec<_>>(), (18..36).collect()];
        let odd = vec![36, 37, 38, 39];
        let a = sample_pairs(40, &strata, &odd, 42, ALL_PAIRS_UP_TO);
        let b = sample_pairs(40, &strata, &odd, 42, ALL_PAIRS_UP_TO);
        assert_eq!(a, b, "the same seed gives the same sample");
        let c = sample_pairs(40, &strata, &odd, 43, ALL_PAIRS_UP_TO);
        assert_ne!(a, c, "another seed draws other pairs");
        assert!(a.len() < 40 * 40 / 4, "{} pairs is no sample", a.len());
        for &o in &odd {
            for m in 0..40 {
                assert!(a.contains(&(o, m)) && a.contains(&(m, o)), "{o} with {m}");
                assert!(c.contains(&(o, m)) && c.contains(&(m, o)), "{o} with {m}");
            }
        }
        for k in 0..40 {
            assert!(a.contains(&(k, k)), "{k} with itself");
            assert!(a.iter().any(|&(f, t)| f == k && t != k), "{k} as a source");
            assert!(a.iter().any(|&(f, t)| t == k && f != k), "{k} as a target");
        }
        for x in &strata {
            for y in &strata {
                let n = a
                    .iter()
                    .filter(|(f, t)| f != t && x.contains(f) && y.contains(t))
                    .count();
                assert!(n >= PAIRS_PER_CLASS_PAIR, "{n} pairs between two classes");
            }
        }
    }

    #[test]
    fn vip_cells_allow_for_the_sampling_of_statistic_branches() {
        let one = VipPrediction {
            endpoints: vec![("node1".into(), 1.0)],
            fails: 0.0,
        };
        assert_eq!(vip_tries(&one), 8);
        let third = 1.0 / 3.0;
        let three = VipPrediction {
            endpoints: vec![
                ("node1".into(), third),
                ("node2".into(), third),
                ("node3".into(), third),
            ],
            fails: 0.0,
        };
        // (2/3)^12 < 1% <= (2/3)^11: every endpoint is hit with 99%.
        assert_eq!(vip_tries(&three), 12);
        assert!(miss_probability(third, 12) < 0.01);
        let cell = |predicted: &VipPrediction, connected: usize, landed: &[(&str, usize)]| {
            let mut c = ServiceCell {
                from: "node2".into(),
                service: "default/kubernetes:443".into(),
                vip: "10.0.0.1".into(),
                tries: 8,
                connected,
                real_endpoints: landed.iter().map(|(e, k)| (e.to_string(), *k)).collect(),
                endpoints_known: true,
                predicted: predicted.clone(),
                miss_probability: 0.0,
                agrees: false,
                detail: None,
            };
            c.judge();
            c
        };
        // Two of three endpoints seen: a sample, not a disagreement.
        assert!(cell(&three, 8, &[("node1", 5), ("node3", 3)]).agrees);
        let stray = cell(&three, 8, &[("node1", 7), ("node4", 1)]);
        assert!(!stray.agrees);
        assert!(stray
            .detail
            .unwrap()
            .contains("node4, which is not predicted"));
        let failing = cell(&one, 6, &[("node1", 6)]);
        assert!(!failing.agrees);
        assert!(failing
            .detail
            .unwrap()
            .contains("2 of 8 connections failed"));
        let none = VipPrediction {
            endpoints: vec![],
            fails: 1.0,
        };
        assert!(cell(&none, 0, &[]).agrees);
        assert!(!cell(&none, 1, &[("node1", 1)]).agrees);
    }

    #[test]
    fn a_faulted_node_is_odd_and_measured_against_every_node() {
        let (s, plan) = guide_routed();
        let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
        let healthy = crate::simulate(&s, &plan, &Default::default()).unwrap();
        let (strata, odd) = strata(&healthy, &s, &names);
        let grouped: usize = strata.iter().map(Vec::len).sum::<usize>() + odd.len();
        assert_eq!(grouped, names.len());
        let broken = with_fault(&s, &plan, "route-missing:node-1:node-3");
        let (strata, odd) = super::strata(&broken, &s, &names);
        let one = names.iter().position(|n| *n == "node-1").unwrap();
        assert!(odd.contains(&one), "{strata:?} {odd:?}");
        let pairs = sample_pairs(names.len(), &strata, &odd, 1, 0);
        for m in 0..names.len() {
            assert!(pairs.contains(&(one, m)) && pairs.contains(&(m, one)));
        }
    }

    #[test]
    fn probes_stand_for_the_simulators_test_pods_and_faults_change_the_prediction() {
        let (s, plan) = guide_routed();
        let nodes: Vec<(String, IpAddr)> = s.nodes.iter().map(|n| (n.name.clone(), n.ip)).collect();
        let probe = |node: &str, index: usize| RealProbe {
            name: format!("{node}/p{index}"),
            node: node.into(),
            index,
            ip: ip("10.99.0.1"),
        };
        let (a, b, c) = (probe("node-1", 0), probe("node-1", 1), probe("node-3", 0));
        let healthy = crate::simulate(&s, &plan, &Default::default()).unwrap();
        assert!(predicts_pods_on(&healthy, "node-1"));
        let (seen, from, to) = predict(&healthy, Client::Probe(&a), &c, &nodes).unwrap();
        assert_eq!(
            seen,
            Seen::Reaches {
                peer: "sender".into()
            }
        );
        assert_eq!(
            (from.as_str(), to.as_str()),
            ("node-1/probe-a", "node-3/probe-a")
        );
        let (_, _, to) = predict(&healthy, Client::Probe(&a), &b, &nodes).unwrap();
        assert_eq!(to, "node-1/probe-b");
        let (seen, from, _) = predict(&healthy, Client::Node("node-1"), &a, &nodes).unwrap();
        assert_eq!(from, "node-1");
        assert!(matches!(seen, Seen::Reaches { .. }), "{seen:?}");

        let broken = with_fault(&s, &plan, "route-missing:node-1:node-3");
        let (seen, from, to) = predict(&broken, Client::Probe(&a), &c, &nodes).unwrap();
        assert_eq!(seen, Seen::Fails { detail: None });
        // The reply leg fails the other way: both directions break.
        let (back, _, _) = predict(&broken, Client::Probe(&c), &a, &nodes).unwrap();
        assert_eq!(back, Seen::Fails { detail: None });
        let t = trace_text(&broken, &from, &to);
        assert!(
            t.starts_with("trace node-1/probe-a → node-3/probe-a"),
            "{t}"
        );
    }

    #[test]
    fn a_probe_attached_with_is_gateway_turns_ip_forward_on_again() {
        let (s, plan) = guide_routed();
        let nodes: Vec<(String, IpAddr)> = s.nodes.iter().map(|n| (n.name.clone(), n.ip)).collect();
        let probe = |node: &str| RealProbe {
            name: format!("{node}/p0"),
            node: node.into(),
            index: 0,
            ip: ip("10.99.0.1"),
        };
        let (a, c) = (probe("node-1"), probe("node-3"));
        let mut sim = with_fault(&s, &plan, "ip-forward-off:node-3");
        // The fault on its own: node-3 forwards nothing to its pods.
        let (seen, _, _) = predict(&sim, Client::Probe(&a), &c, &nodes).unwrap();
        assert_eq!(seen, Seen::Fails { detail: None });
        // Probes attached on node-1 only leave node-3 as it is.
        probes_attached(&mut sim, &["node-1"]).unwrap();
        let (seen, _, _) = predict(&sim, Client::Probe(&a), &c, &nodes).unwrap();
        assert_eq!(seen, Seen::Fails { detail: None });
        // A probe attached on node-3 (the bridge plugin with isGateway) heals it.
        probes_attached(&mut sim, &["node-1", "node-3"]).unwrap();
        let n3 = sim
            .world
            .nodes
            .iter()
            .position(|n| n.name == "node-3")
            .unwrap();
        assert!(sim.world.nodes[n3].ip_forward());
        let (seen, _, _) = predict(&sim, Client::Probe(&a), &c, &nodes).unwrap();
        assert_eq!(
            seen,
            Seen::Reaches {
                peer: "sender".into()
            }
        );
        assert!(probes_attached(&mut sim, &["node-9"]).is_err());
    }
}
