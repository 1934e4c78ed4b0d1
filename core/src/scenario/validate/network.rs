//! The `network` section: the node, pod and Service ranges and how they fit
//! together, the Service addresses, DNS, the pod traffic mode, MTUs and
//! interface names.

use super::nodes::Nodes;
use super::{at, default_note, parse};
use crate::diag::{Code, Reporter};
use crate::ipam;
use crate::scenario::model::{Node, PodTraffic, Vxlan, VXLAN_OVERHEAD};
use crate::scenario::raw::{RawPodTraffic, RawScenario};
use ipnet::IpNet;
use std::net::IpAddr;

/// The resolved network; `None` where the scenario's value was invalid.
pub(super) struct Net {
    pub node_cidr: Option<IpNet>,
    pub cluster_cidr: Option<IpNet>,
    pub service_cidr: Option<IpNet>,
    pub node_prefix: u8,
    /// The cluster CIDR can be sliced into enough `/node_prefix` slices.
    pub slicing_ok: bool,
    pub max_pods: u32,
    pub kubernetes_ip: Option<IpAddr>,
    pub dns_ip: Option<IpAddr>,
    pub dns_domain: String,
    pub mode: RawPodTraffic,
    pub pod_traffic: PodTraffic,
    pub underlay_mtu: u32,
    pub pod_mtu: u32,
    pub bridge: String,
    pub interface: String,
    pub gateway: Option<IpAddr>,
}

const CLUSTER: &str = "network.clusterCIDR";
const SERVICE: &str = "network.serviceCIDR";
const NODE: &str = "network.nodeCIDR";
const PREFIX: &str = "network.nodePrefix";
const MAX_PODS: &str = "network.maxPods";

pub(super) fn network(raw: &RawScenario, nodes: &Nodes, r: &mut Reporter<'_>) -> Net {
    let net = &raw.network;
    let range = |r: &mut Reporter<'_>, path: &str, given: Option<&str>, default: Option<&str>| {
        if r.is_invalid(path) {
            return None;
        }
        parse::net(r, path, given.or(default)?)
    };
    let node_cidr = range(r, NODE, net.node_cidr.as_deref(), None);
    let cluster_cidr = range(
        r,
        CLUSTER,
        net.cluster_cidr.as_deref(),
        Some("10.10.0.0/16"),
    );
    let service_cidr = range(r, SERVICE, net.service_cidr.as_deref(), Some("10.0.0.0/16"));
    let node_prefix = net.node_prefix.unwrap_or(24);
    let max_pods = net.max_pods.unwrap_or(110);

    overlaps(r, node_cidr, cluster_cidr, service_cidr);
    node_addresses(
        r,
        &nodes.list,
        &nodes.ip_ok,
        node_cidr,
        cluster_cidr,
        service_cidr,
    );
    let slicing_ok = capacity(r, nodes.list.len(), cluster_cidr, node_prefix, max_pods);
    let (kubernetes_ip, dns_ip) = service_addresses(r, raw, service_cidr);

    let dns_domain = net
        .dns
        .domain
        .clone()
        .unwrap_or_else(|| "cluster.local".into());
    if !r.is_invalid("network.dns.domain") && !dns_domain.split('.').all(parse::is_dns1123_label) {
        r.error(
            Code::Name,
            "network.dns.domain",
            format!("`{dns_domain}` is not a DNS domain"),
            "use lowercase labels separated by dots, e.g. cluster.local",
        );
    }

    let (mode, pod_traffic) = pod_traffic(r, raw);
    let gateway = gateway(r, raw, nodes, node_cidr, cluster_cidr, service_cidr, mode);
    let (underlay_mtu, pod_mtu) = mtus(r, raw, mode);

    let bridge = net.bridge.clone().unwrap_or_else(|| "cbr0".into());
    let interface = net.interface.clone().unwrap_or_else(|| "eth0".into());
    for (path, name) in [
        ("network.bridge", &bridge),
        ("network.interface", &interface),
    ] {
        if !r.is_invalid(path) && !parse::is_ifname(name) {
            r.error(
                Code::Interface,
                path,
                format!("`{name}` is not a valid Linux interface name"),
                "1 to 15 characters, no '/', ':' or whitespace",
            );
        }
    }

    Net {
        node_cidr,
        cluster_cidr,
        service_cidr,
        node_prefix,
        slicing_ok,
        max_pods,
        kubernetes_ip,
        dns_ip,
        dns_domain,
        mode,
        pod_traffic,
        underlay_mtu,
        pod_mtu,
        bridge,
        interface,
        gateway,
    }
}

/// The underlay's default gateway: an underlay address that is no node's;
/// `fabric` pod traffic needs it (it is the router holding the pod routes).
fn gateway(
    r: &mut Reporter<'_>,
    raw: &RawScenario,
    nodes: &Nodes,
    node: Option<IpNet>,
    cluster: Option<IpNet>,
    service: Option<IpNet>,
    mode: RawPodTraffic,
) -> Option<IpAddr> {
    const PATH: &str = "network.gateway";
    let gateway = match raw.network.gateway.as_deref() {
        _ if r.is_invalid(PATH) => return None,
        Some(g) => parse::ip(r, PATH, g)?,
        None => {
            if mode == RawPodTraffic::Fabric && !r.is_invalid("network.podTraffic") {
                r.error(
                    Code::Gateway,
                    "network.podTraffic",
                    "`fabric` pod traffic needs network.gateway: the router that holds the pod routes",
                    "add `gateway: <the underlay router's IP>` under network",
                );
            }
            return None;
        }
    };
    if let Some(i) = nodes
        .list
        .iter()
        .zip(&nodes.ip_ok)
        .position(|(n, ok)| *ok && n.ip == gateway)
    {
        r.error(
            Code::Gateway,
            PATH,
            format!("{gateway} is the address of node `{}`", nodes.list[i].name),
            "the gateway is the underlay's router, not one of the nodes",
        );
    }
    if let Some(c) = node.filter(|c| !c.contains(&gateway)) {
        r.error(
            Code::Gateway,
            PATH,
            format!("{gateway} is outside network.nodeCIDR {c}"),
            "a default gateway must be on the nodes' own network",
        );
    }
    for (path, range) in [(CLUSTER, cluster), (SERVICE, service)] {
        if let Some(c) = range.filter(|c| c.contains(&gateway)) {
            let note = default_note(r, path);
            r.error(
                Code::Gateway,
                PATH,
                format!("{gateway} is inside {path} {c}{note}"),
                "the gateway is an underlay address",
            );
        }
    }
    Some(gateway)
}

/// Pod, Service and node ranges must be disjoint.
fn overlaps(
    r: &mut Reporter<'_>,
    node: Option<IpNet>,
    cluster: Option<IpNet>,
    service: Option<IpNet>,
) {
    let ranges = [(CLUSTER, cluster), (SERVICE, service), (NODE, node)];
    for (a, (pa, na)) in ranges.iter().enumerate() {
        for (pb, nb) in ranges.iter().skip(a + 1) {
            if let (Some(x), Some(y)) = (na, nb) {
                if parse::overlaps(x, y) {
                    // Point at the range the user wrote, when the other one is a default.
                    let (here, mine, other, theirs) = if r.map.has(pb) || !r.map.has(pa) {
                        (*pb, y, *pa, x)
                    } else {
                        (*pa, x, *pb, y)
                    };
                    let note = default_note(r, other);
                    r.error(
                        Code::Overlap,
                        here,
                        format!("{mine} overlaps {other} {theirs}{note}"),
                        "pod, service and node ranges must be disjoint: routing cannot tell them apart",
                    );
                }
            }
        }
    }
}

/// Node IPs are inside the node range and outside the pod and Service ranges.
fn node_addresses(
    r: &mut Reporter<'_>,
    nodes: &[Node],
    ip_ok: &[bool],
    node: Option<IpNet>,
    cluster: Option<IpNet>,
    service: Option<IpNet>,
) {
    for (i, n) in nodes.iter().enumerate() {
        if !ip_ok[i] {
            continue;
        }
        if let Some(c) = node {
            if !c.contains(&n.ip) {
                r.error(
                    Code::OutsideRange,
                    format!("nodes[{i}].ip"),
                    format!("{} is outside network.nodeCIDR {c}", n.ip),
                    "fix the address, or widen network.nodeCIDR to the underlay the nodes are on",
                );
            }
        }
        for (path, range) in [(CLUSTER, cluster), (SERVICE, service)] {
            if let Some(c) = range {
                if c.contains(&n.ip) {
                    let note = default_note(r, path);
                    r.error(
                        Code::OutsideRange,
                        format!("nodes[{i}].ip"),
                        format!("node IP {} is inside {path} {c}{note}", n.ip),
                        format!("node addresses must not come from the pod or service ranges: set {path} to a range the nodes do not use"),
                    );
                }
            }
        }
    }
    if node.is_none() && r.is_invalid(NODE) {
        r.not_checked(NODE, "node addresses against network.nodeCIDR", NODE);
    }
}

/// The cluster CIDR holds a slice per node, and a slice holds maxPods.
/// Returns whether IPAM can slice the range.
fn capacity(
    r: &mut Reporter<'_>,
    nodes: usize,
    cluster: Option<IpNet>,
    node_prefix: u8,
    max_pods: u32,
) -> bool {
    let Some(c) = cluster else {
        if r.is_invalid(CLUSTER) {
            r.not_checked(CLUSTER, "capacity", CLUSTER);
        }
        return false;
    };
    if let Some(bad) = r.first_invalid(&[PREFIX]) {
        r.not_checked(CLUSTER, "capacity", bad);
        return false;
    }
    let max = c.max_prefix_len();
    if node_prefix < c.prefix_len() || node_prefix > max {
        let here = at(r, PREFIX, CLUSTER);
        r.error(
            Code::Capacity,
            here,
            format!("/{node_prefix} cannot slice cluster CIDR {c}"),
            format!(
                "use a prefix between /{} and /{}",
                c.prefix_len(),
                max.saturating_sub(2)
            ),
        );
        return false;
    }
    let mut ok = true;
    let slots = ipam::slot_count(c, node_prefix);
    if slots < nodes as u128 {
        ok = false;
        let here = if r.map.has(CLUSTER) {
            CLUSTER
        } else {
            at(r, PREFIX, "nodes")
        };
        let note = default_note(r, CLUSTER);
        r.error(
            Code::Capacity,
            here,
            format!("{c}{note} holds {slots} node slices of /{node_prefix}, but the scenario has {nodes} nodes"),
            format!(
                "widen network.clusterCIDR to /{} or use a longer network.nodePrefix",
                needed_prefix(nodes, node_prefix)
            ),
        );
    }
    if !r.is_invalid(MAX_PODS) {
        let usable = ipam::pods_per_slice(max, node_prefix);
        if (max_pods as u128) > usable {
            let here = at(r, PREFIX, MAX_PODS);
            r.error(
                Code::Capacity,
                here,
                format!("a /{node_prefix} slice holds {usable} pods (network, broadcast and the bridge address take 3), less than maxPods {max_pods}"),
                format!("use network.nodePrefix /{} or lower network.maxPods", prefix_for_pods(max_pods, max)),
            );
        }
    }
    ok
}

/// The `kubernetes` Service's address and the DNS Service's.
fn service_addresses(
    r: &mut Reporter<'_>,
    raw: &RawScenario,
    service: Option<IpNet>,
) -> (Option<IpAddr>, Option<IpAddr>) {
    const DNS: &str = "network.dns.ip";
    let Some(s) = service else {
        if r.is_invalid(SERVICE) && raw.network.dns.ip.is_some() {
            r.not_checked(DNS, "the DNS Service address", SERVICE);
        }
        return (None, None);
    };
    let host_bits = s.max_prefix_len() - s.prefix_len();
    if host_bits < 2 {
        r.error(
            Code::ServiceRange,
            SERVICE,
            format!(
                "{s} is too small: it needs room for the `kubernetes` Service and the DNS Service"
            ),
            "use at least a /28; a /16 is common",
        );
        return (None, None);
    }
    if s.max_prefix_len() == 32 && host_bits > 20 {
        // kube-apiserver: "specified service-cluster-ip-range is too large; for 32-bit addresses, the mask must be >= 12".
        r.error(
            Code::ServiceRange,
            SERVICE,
            format!("{s} is too large: the apiserver accepts at most a /12 for IPv4"),
            "use a /12 or smaller, e.g. 10.0.0.0/16",
        );
        return (None, None);
    }
    let k = ipam::nth_host(s, 1);
    let dns_default = ipam::nth_host(s, 10.min((1u128 << host_bits.min(100)) - 2));
    let d = match raw.network.dns.ip.as_deref() {
        _ if r.is_invalid(DNS) => None,
        Some(t) => parse::ip(r, DNS, t),
        None => Some(dns_default),
    };
    if let Some(d) = d {
        if !s.contains(&d) {
            r.error(
                Code::ServiceRange,
                DNS,
                format!("DNS IP {d} is outside the service CIDR {s}"),
                format!("pick an address inside {s}, e.g. {dns_default}"),
            );
        } else if d == k {
            r.error(
                Code::ServiceRange,
                DNS,
                format!(
                    "{d} is the first address of {s}, which belongs to the `kubernetes` Service"
                ),
                format!("use another address, e.g. {dns_default}"),
            );
        } else if d == s.network() || d == s.broadcast() {
            r.error(
                Code::ServiceRange,
                DNS,
                format!("{d} is the network or broadcast address of {s}"),
                format!("use e.g. {dns_default}"),
            );
        }
    }
    (Some(k), d)
}

fn pod_traffic(r: &mut Reporter<'_>, raw: &RawScenario) -> (RawPodTraffic, PodTraffic) {
    let net = &raw.network;
    let mode = net.pod_traffic.unwrap_or(RawPodTraffic::Routed);
    let traffic = match mode {
        RawPodTraffic::Routed => PodTraffic::Routed,
        RawPodTraffic::Fabric => PodTraffic::Fabric,
        RawPodTraffic::External => PodTraffic::External,
        RawPodTraffic::Vxlan => {
            let x = net.vxlan.clone().unwrap_or_default();
            PodTraffic::Vxlan(Vxlan {
                vni: x.vni.unwrap_or(1),
                port: x.port.unwrap_or(4789),
                device: x.device.unwrap_or_else(|| "vxlan0".into()),
            })
        }
    };
    if r.is_invalid("network.podTraffic") {
        if net.vxlan.is_some() {
            r.not_checked("network.vxlan", "network.vxlan", "network.podTraffic");
        }
    } else if mode != RawPodTraffic::Vxlan && net.vxlan.is_some() {
        r.error(
            Code::Conflict,
            "network.vxlan",
            "vxlan settings are given but network.podTraffic is not `vxlan`",
            "set network.podTraffic: vxlan, or remove network.vxlan",
        );
    }
    (mode, traffic)
}

/// The underlay MTU and the pod MTU derived from it.
fn mtus(r: &mut Reporter<'_>, raw: &RawScenario, mode: RawPodTraffic) -> (u32, u32) {
    let net = &raw.network;
    let underlay_mtu = net.underlay_mtu.unwrap_or(1500);
    let default_pod_mtu = if mode == RawPodTraffic::Vxlan {
        underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
    } else {
        underlay_mtu
    };
    let explicit = net.vxlan.as_ref().and_then(|x| x.mtu).or(raw.runtime.mtu);
    let pod_mtu = explicit.unwrap_or(default_pod_mtu);
    if let Some(bad) = r.first_invalid(&["network.underlayMTU", "network.podTraffic"]) {
        if explicit.is_some() {
            r.not_checked("network", "the pod MTU against the underlay", bad);
        }
        return (underlay_mtu, pod_mtu);
    }
    let path = if net.vxlan.as_ref().and_then(|x| x.mtu).is_some() {
        "network.vxlan.mtu"
    } else if raw.runtime.mtu.is_some() {
        "runtime.mtu"
    } else {
        at(r, "network.underlayMTU", "network.podTraffic")
    };
    if pod_mtu > default_pod_mtu {
        // A warning, not an error: `kscratch check` proves the consequence with a trace.
        r.warn(
            Code::Mtu,
            path,
            format!(
                "pod MTU {pod_mtu} is larger than the {default_pod_mtu} bytes the underlay carries"
            ),
            format!("VXLAN adds {VXLAN_OVERHEAD} bytes; use {default_pod_mtu} or less"),
        );
    }
    if pod_mtu < 576 {
        r.error(
            Code::Mtu,
            path,
            format!("pod MTU {pod_mtu} is too small"),
            "IPv4 needs at least 576 bytes: raise network.underlayMTU or the pod MTU",
        );
    }
    (underlay_mtu, pod_mtu)
}

/// The prefix a cluster CIDR needs to hold `nodes` slices of `/node_prefix`.
fn needed_prefix(nodes: usize, node_prefix: u8) -> u8 {
    let bits = (usize::BITS - nodes.saturating_sub(1).leading_zeros()) as u8;
    node_prefix.saturating_sub(bits)
}

fn prefix_for_pods(pods: u32, max: u8) -> u8 {
    (2..=max)
        .rev()
        .find(|p| ipam::pods_per_slice(max, *p) >= pods as u128)
        .unwrap_or(0)
}
