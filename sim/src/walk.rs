//! The packet walk: one packet through the simulated world, hop by hop, in
//! the kernel's order — routing decision, netfilter hooks, links, the L2
//! underlay, VXLAN encapsulation, the router — recording a trace that names
//! the node, interface, route and iptables rule responsible for each turn.
//!
//! Not modelled: ARP timing, TCP state beyond conntrack, fragmentation (a
//! packet larger than a link's MTU with DF set is dropped, as the kernel does
//! after sending ICMP "fragmentation needed"), ICMP errors as packets.

use crate::netfilter::{Branches, Conntrack, Hook, HookCx, LocalAddresses, Verdict};
use crate::packet::{Packet, Proto};
use crate::world::*;
use kscratch_core::scenario::VXLAN_OVERHEAD;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// Where a packet starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "kebab-case")]
pub enum Place {
    Pod(PodId),
    Node(NodeId),
    Router,
    Outside,
}

/// One line of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    /// `node-1`, `pod node-1/probe-a`, `underlay`, `router`, `outside`.
    pub at: String,
    pub what: String,
}

/// How a walk ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "fate", rename_all = "kebab-case")]
pub enum Fate {
    /// The packet reached `to`, looking like `packet` (after any NAT).
    Delivered { to: Place, packet: Packet },
    /// Dropped silently: the sender sees a timeout.
    Dropped { at: String, reason: String },
    /// Refused: the sender sees an error (REJECT, no listener).
    Rejected { at: String, reason: String },
}

impl Fate {
    pub fn delivered_to(&self) -> Option<(Place, &Packet)> {
        match self {
            Fate::Delivered { to, packet } => Some((*to, packet)),
            _ => None,
        }
    }
}

/// A walk with its own connection tracking, so a forward packet and its
/// reply can be walked in turn and NAT is undone on the way back.
pub struct Walker<'w> {
    pub world: &'w World,
    pub conntrack: BTreeMap<NodeId, Conntrack>,
    pub hops: Vec<Hop>,
    budget: u32,
    /// The inner packet of a VXLAN frame in flight, until the remote end decapsulates it.
    inner: Option<Packet>,
    trace: bool,
}

/// Guard against routing loops: a real packet's TTL.
const TTL: u32 = 64;

impl<'w> Walker<'w> {
    /// A walker that records every hop.
    pub fn new(world: &'w World) -> Walker<'w> {
        Walker {
            world,
            conntrack: BTreeMap::new(),
            hops: Vec::new(),
            budget: TTL,
            inner: None,
            trace: true,
        }
    }

    /// A walker that records nothing: for probes expected to pass, which are
    /// walked again with tracing on only when they fail.
    pub fn quiet(world: &'w World) -> Walker<'w> {
        Walker {
            trace: false,
            ..Walker::new(world)
        }
    }

    fn hop(&mut self, at: impl Into<String>, what: impl Into<String>) {
        self.hops.push(Hop {
            at: at.into(),
            what: what.into(),
        });
    }

    pub fn place_name(&self, p: Place) -> String {
        match p {
            Place::Pod(i) => {
                let pod = &self.world.pods[i];
                format!("pod {}/{}", self.world.nodes[pod.node].name, pod.name)
            }
            Place::Node(i) => self.world.nodes[i].name.clone(),
            Place::Router => "router".into(),
            Place::Outside => "outside".into(),
        }
    }

    /// Sends `pkt` from `from`, following it until it is delivered or lost.
    pub fn send(&mut self, from: Place, pkt: Packet, branches: &mut dyn Branches) -> Fate {
        self.budget = TTL;
        let at = self.place_name(from);
        if self.trace {
            self.hop(at, format!("send {pkt}"));
        }
        let fate = match from {
            Place::Pod(p) => self.from_pod(p, pkt, branches),
            Place::Node(n) => self.local_out(n, pkt, branches),
            Place::Router => self.router(pkt, branches),
            Place::Outside => {
                if self.trace {
                    self.hop(
                        "outside",
                        format!("default route via router {}", self.world.underlay.router_ip),
                    );
                }
                self.router(pkt, branches)
            }
        };
        // The trace ends where the packet did.
        match &fate {
            Fate::Dropped { at, reason } => self.hop(at.clone(), format!("DROP: {reason}")),
            Fate::Rejected { at, reason } => self.hop(at.clone(), format!("REJECT: {reason}")),
            Fate::Delivered { .. } => {}
        }
        fate
    }

    // "From" the pod, as the packet travels: not a conversion constructor.
    #[allow(clippy::wrong_self_convention)]
    fn from_pod(&mut self, p: PodId, pkt: Packet, br: &mut dyn Branches) -> Fate {
        let pod = &self.world.pods[p];
        let name = self.place_name(Place::Pod(p));
        if pod.host_network {
            return self.local_out(pod.node, pkt, br);
        }
        if pkt.len > pod.mtu && pkt.df {
            return Fate::Dropped {
                at: name,
                reason: format!(
                    "packet of {} bytes exceeds the pod's eth0 MTU {}",
                    pkt.len, pod.mtu
                ),
            };
        }
        let on_link = ipnet::IpNet::new(pod.ip, pod.prefix)
            .map(|n| n.trunc().contains(&pkt.dst))
            .unwrap_or(false);
        let node = pod.node;
        let bridge = pod.bridge.clone();
        if on_link {
            if self.trace {
                self.hop(
                    name,
                    format!(
                        "{} is on-link: eth0 → {} ({} bridge port {})",
                        pkt.dst, bridge, self.world.nodes[node].name, pod.host_veth
                    ),
                );
            }
            self.bridged(node, &bridge, Some(p), pkt, br)
        } else {
            if self.trace {
                self.hop(
                    name,
                    format!(
                        "default via {} dev eth0 → {} bridge {}",
                        pod.gateway, self.world.nodes[node].name, bridge
                    ),
                );
            }
            self.node_in(node, &bridge, pkt, br)
        }
    }

    /// A frame switched by a bridge between two of its ports (same L2).
    fn bridged(
        &mut self,
        n: NodeId,
        bridge: &str,
        from: Option<PodId>,
        mut pkt: Packet,
        br: &mut dyn Branches,
    ) -> Fate {
        let node = &self.world.nodes[n];
        if !node.up {
            return Fate::Dropped {
                at: node.name.clone(),
                reason: "the node is down".into(),
            };
        }
        if node
            .links
            .get(bridge)
            .and_then(|l| l.addrs.iter().find(|a| a.addr() == pkt.dst))
            .is_some()
        {
            // Addressed to the bridge itself: up into the node's stack.
            return self.node_in(n, bridge, pkt, br);
        }
        if node.bridge_nf() {
            // br_netfilter: bridged IP traffic traverses iptables with in = out = the bridge.
            for hook in [Hook::Prerouting, Hook::Forward, Hook::Postrouting] {
                if let Some(f) = self.nf(n, hook, Some(bridge), Some(bridge), &mut pkt, br) {
                    return f;
                }
            }
        }
        match self.world.owners.get(&pkt.dst) {
            Some(Owner::Pod(q))
                if self.world.pods[*q].node == n
                    && self.world.pods[*q].bridge == bridge
                    && Some(*q) != from =>
            {
                let q = *q;
                let at = node.name.clone();
                if self.trace {
                    self.hop(
                        at,
                        format!(
                            "{bridge} forwards to port {} → {}",
                            self.world.pods[q].host_veth,
                            self.place_name(Place::Pod(q))
                        ),
                    );
                }
                self.deliver(Place::Pod(q), pkt)
            }
            _ => Fate::Dropped {
                at: node.name.clone(),
                reason: format!("no neighbour answers ARP for {} on {bridge}", pkt.dst),
            },
        }
    }

    fn deliver(&mut self, to: Place, pkt: Packet) -> Fate {
        let at = self.place_name(to);
        if self.trace {
            self.hop(at, format!("received {pkt}"));
        }
        Fate::Delivered { to, packet: pkt }
    }

    /// Runs one netfilter hook; Some(fate) when the packet does not continue.
    fn nf(
        &mut self,
        n: NodeId,
        hook: Hook,
        in_if: Option<&str>,
        out_if: Option<&str>,
        pkt: &mut Packet,
        br: &mut dyn Branches,
    ) -> Option<Fate> {
        let node = &self.world.nodes[n];
        let cx = HookCx {
            in_iface: in_if,
            out_iface: out_if,
            addrs: node as &dyn LocalAddresses,
            next_hop: None,
        };
        let ct = self.conntrack.entry(n).or_default();
        let verdict = if self.trace {
            let mut entries = Vec::new();
            let before = pkt.clone();
            let v = node.netfilter.hook(hook, pkt, &cx, ct, br, &mut entries);
            let at = node.name.clone();
            for e in entries {
                self.hop(at.clone(), e.to_string());
            }
            if *pkt != before {
                self.hop(at, format!("{hook}: now {pkt}"));
            }
            v
        } else {
            node.netfilter.hook_untraced(hook, pkt, &cx, ct, br)
        };
        if verdict == Verdict::Accept {
            return None;
        }
        let at = node.name.clone();
        match verdict {
            Verdict::Accept => None,
            Verdict::Drop { by } => Some(Fate::Dropped {
                at,
                reason: format!("{hook}: dropped by {by}"),
            }),
            Verdict::Reject { by, .. } => Some(Fate::Rejected {
                at,
                reason: format!("{hook}: rejected by {by}"),
            }),
            Verdict::Error(e) => Some(Fate::Dropped {
                at,
                reason: format!("{hook}: {e}"),
            }),
        }
    }

    /// A packet arriving on `in_if` of node `n`.
    fn node_in(&mut self, n: NodeId, in_if: &str, mut pkt: Packet, br: &mut dyn Branches) -> Fate {
        if self.budget == 0 {
            return Fate::Dropped {
                at: self.world.nodes[n].name.clone(),
                reason: "TTL exceeded: a routing loop".into(),
            };
        }
        self.budget -= 1;
        let node = &self.world.nodes[n];
        if !node.up {
            return Fate::Dropped {
                at: node.name.clone(),
                reason: "the node is down".into(),
            };
        }
        if let Some(f) = self.nf(n, Hook::Prerouting, Some(in_if), None, &mut pkt, br) {
            return f;
        }
        let node = &self.world.nodes[n];
        if node.is_local(pkt.dst) {
            if let Some(f) = self.nf(n, Hook::Input, Some(in_if), None, &mut pkt, br) {
                return f;
            }
            return self.local_in(n, pkt, br);
        }
        if !node.ip_forward() {
            return Fate::Dropped {
                at: node.name.clone(),
                reason: format!(
                    "net.ipv4.ip_forward=0: {} does not forward {} from {in_if}",
                    node.name, pkt.dst
                ),
            };
        }
        let Some(route) = node.routes.lookup(pkt.dst) else {
            return Fate::Dropped {
                at: node.name.clone(),
                reason: format!("no route to {} in {}'s routing table", pkt.dst, node.name),
            };
        };
        let at = node.name.clone();
        if self.trace {
            self.hop(at, format!("route {}", route.route.emit()));
        }
        if let Some(f) = self.nf(
            n,
            Hook::Forward,
            Some(in_if),
            Some(&route.dev),
            &mut pkt,
            br,
        ) {
            return f;
        }
        self.transmit(n, &route.dev, route.next_hop, pkt, br)
    }

    /// Delivery to a process on the node (or VXLAN decapsulation).
    fn local_in(&mut self, n: NodeId, pkt: Packet, br: &mut dyn Branches) -> Fate {
        let node = &self.world.nodes[n];
        if pkt.proto == Proto::Udp {
            let vx = node.links.values().find_map(|l| match &l.kind {
                LinkKind::Vxlan(x) if x.port == pkt.dport && l.up => Some((l.name.clone(), l.mtu)),
                _ => None,
            });
            if let Some((dev, mtu)) = vx {
                if let Some(inner) = self.inner.take() {
                    let at = node.name.clone();
                    if self.trace {
                        self.hop(at.clone(), format!("{dev}: decapsulated {inner}"));
                    }
                    if inner.len > mtu && inner.df {
                        return Fate::Dropped {
                            at,
                            reason: format!(
                                "inner packet of {} bytes exceeds {dev} MTU {mtu}",
                                inner.len
                            ),
                        };
                    }
                    return self.node_in(n, &dev, inner, br);
                }
            }
        }
        match node.listeners.get(&(pkt.proto, pkt.dport)) {
            Some(l)
                if l.addr.is_none()
                    || l.addr == Some(pkt.dst)
                    || (l.addr.is_some_and(|a| a.is_loopback()) && is_loopback(pkt.dst)) =>
            {
                let at = node.name.clone();
                if self.trace {
                    self.hop(
                        at,
                        format!("{} accepts on {}:{}", l.process, pkt.dst, pkt.dport),
                    );
                }
                self.deliver(Place::Node(n), pkt)
            }
            Some(l) => Fate::Rejected {
                at: node.name.clone(),
                reason: format!(
                    "{} listens on {}:{} only, not {}",
                    l.process,
                    l.addr.map(|a| a.to_string()).unwrap_or_default(),
                    pkt.dport,
                    pkt.dst
                ),
            },
            None => Fate::Rejected {
                at: node.name.clone(),
                reason: format!(
                    "connection refused: nothing listens on {}:{}/{}",
                    pkt.dst,
                    pkt.dport,
                    pkt.proto.name()
                ),
            },
        }
    }

    /// A packet a process on node `n` sends.
    fn local_out(&mut self, n: NodeId, mut pkt: Packet, br: &mut dyn Branches) -> Fate {
        let node = &self.world.nodes[n];
        if !node.up {
            return Fate::Dropped {
                at: node.name.clone(),
                reason: "the node is down".into(),
            };
        }
        if node.is_local(pkt.dst) {
            if pkt.src.is_unspecified() {
                pkt.src = pkt.dst;
            }
            for hook in [Hook::Output, Hook::Postrouting, Hook::Input] {
                if let Some(f) = self.nf(n, hook, Some("lo"), Some("lo"), &mut pkt, br) {
                    return f;
                }
            }
            return self.local_in(n, pkt, br);
        }
        let Some(route) = node.routes.lookup(pkt.dst) else {
            return Fate::Dropped {
                at: node.name.clone(),
                reason: format!("no route to {} in {}'s routing table", pkt.dst, node.name),
            };
        };
        if pkt.src.is_unspecified() {
            pkt.src = route
                .route
                .src
                .or_else(|| node.primary_addr(&route.dev))
                .unwrap_or(node.ip);
        }
        if let Some(f) = self.nf(n, Hook::Output, None, Some(&route.dev), &mut pkt, br) {
            return f;
        }
        // OUTPUT DNAT (a node reaching a Service VIP) re-routes the packet.
        let node = &self.world.nodes[n];
        let route = if crate::routes::covers(&route.route, pkt.dst) {
            route
        } else {
            node.routes.lookup(pkt.dst).unwrap_or(route)
        };
        if node.is_local(pkt.dst) {
            return self.local_in(n, pkt, br);
        }
        let at = node.name.clone();
        if self.trace {
            self.hop(at, format!("route {}", route.route.emit()));
        }
        self.transmit(n, &route.dev, route.next_hop, pkt, br)
    }

    /// POSTROUTING, then out of `dev` towards `next_hop`.
    fn transmit(
        &mut self,
        n: NodeId,
        dev: &str,
        next_hop: IpAddr,
        mut pkt: Packet,
        br: &mut dyn Branches,
    ) -> Fate {
        if let Some(f) = self.nf(n, Hook::Postrouting, None, Some(dev), &mut pkt, br) {
            return f;
        }
        let node = &self.world.nodes[n];
        let at = node.name.clone();
        let Some(link) = node.links.get(dev) else {
            return Fate::Dropped {
                at,
                reason: format!("route names {dev}, which does not exist"),
            };
        };
        if !link.up {
            return Fate::Dropped {
                at,
                reason: format!("{dev} is down"),
            };
        }
        if pkt.len > link.mtu && pkt.df {
            return Fate::Dropped { at, reason: format!("packet of {} bytes exceeds the MTU {} of {dev} on {} (DF set: fragmentation needed)", pkt.len, link.mtu, node.name) };
        }
        match &link.kind {
            LinkKind::Bridge => {
                if self.trace {
                    self.hop(at, format!("out {dev} to {next_hop}"));
                }
                match self.world.owners.get(&next_hop) {
                    Some(Owner::Pod(q))
                        if self.world.pods[*q].node == n && self.world.pods[*q].bridge == dev =>
                    {
                        let q = *q;
                        self.deliver(Place::Pod(q), pkt)
                    }
                    _ => Fate::Dropped {
                        at: node.name.clone(),
                        reason: format!("no neighbour answers ARP for {next_hop} on {dev}"),
                    },
                }
            }
            LinkKind::Veth { pod } => {
                let q = *pod;
                self.deliver(Place::Pod(q), pkt)
            }
            LinkKind::Loopback => self.local_in(n, pkt, br),
            LinkKind::Ether => {
                if self.trace {
                    self.hop(
                        at,
                        format!("out {dev} (mtu {}) to {next_hop} on the underlay", link.mtu),
                    );
                }
                self.underlay(next_hop, pkt, br)
            }
            LinkKind::Vxlan(x) => {
                let x = x.clone();
                self.vxlan_out(n, dev, &x, next_hop, pkt, br)
            }
        }
    }

    fn vxlan_out(
        &mut self,
        n: NodeId,
        dev: &str,
        x: &VxlanLink,
        vtep: IpAddr,
        pkt: Packet,
        br: &mut dyn Branches,
    ) -> Fate {
        let node = &self.world.nodes[n];
        let at = node.name.clone();
        let shared = node
            .routes
            .shared
            .as_ref()
            .filter(|_| x.shared_fdb)
            .map(|s| s.table.clone());
        let mac = x.neighbors.get(&vtep).cloned().or_else(|| {
            shared.as_ref().and_then(|t| {
                t.entries
                    .iter()
                    .find(|e| e.vtep.as_ref().is_some_and(|(ip, _)| *ip == vtep))
                    .and_then(|e| e.vtep.as_ref().map(|(_, m)| m.clone()))
            })
        });
        let Some(mac) = mac else {
            return Fate::Dropped {
                at,
                reason: format!("{dev}: no neighbour entry for VTEP {vtep}"),
            };
        };
        let remote = x.fdb.get(&mac).copied().or_else(|| {
            shared.as_ref().and_then(|t| {
                t.entries
                    .iter()
                    .find(|e| e.vtep.as_ref().is_some_and(|(_, m)| *m == mac))
                    .map(|e| e.node_ip)
            })
        });
        let Some(remote) = remote else {
            return Fate::Dropped {
                at,
                reason: format!("{dev}: no FDB entry for {mac}"),
            };
        };
        let outer_len = pkt.len + VXLAN_OVERHEAD;
        if self.trace {
            self.hop(
                at.clone(),
                format!(
                    "{dev}: encapsulate VNI {} to {remote}:{} (outer {} bytes)",
                    x.vni, x.port, outer_len
                ),
            );
        }
        let Some(link) = node.links.get(&x.dev) else {
            return Fate::Dropped {
                at,
                reason: format!("{dev}: underlay device {} does not exist", x.dev),
            };
        };
        if outer_len > link.mtu {
            return Fate::Dropped {
                at,
                reason: format!(
                    "VXLAN packet of {outer_len} bytes ({} + {VXLAN_OVERHEAD} encapsulation) exceeds the MTU {} of {} on {}: the pod MTU is too large for the overlay",
                    pkt.len, link.mtu, x.dev, node.name
                ),
            };
        }
        let outer = Packet {
            src: x.local,
            dst: remote,
            proto: Proto::Udp,
            sport: 49152 + (pkt.sport % 16384),
            dport: x.port,
            len: outer_len,
            mark: 0,
            df: false,
        };
        self.inner = Some(pkt);
        self.underlay(remote, outer, br)
    }

    /// The L2 underlay: whoever owns `next_hop` receives the frame.
    fn underlay(&mut self, next_hop: IpAddr, pkt: Packet, br: &mut dyn Branches) -> Fate {
        if pkt.len > self.world.underlay.mtu && pkt.df {
            return Fate::Dropped {
                at: "underlay".into(),
                reason: format!(
                    "packet of {} bytes exceeds the underlay MTU {}",
                    pkt.len, self.world.underlay.mtu
                ),
            };
        }
        match self.world.owners.get(&next_hop) {
            Some(Owner::Node(m)) => {
                let m = *m;
                let eth = self.world.nodes[m]
                    .links
                    .values()
                    .find(|l| l.kind == LinkKind::Ether)
                    .map(|l| l.name.clone())
                    .unwrap_or_else(|| "eth0".into());
                self.node_in(m, &eth, pkt, br)
            }
            Some(Owner::Router) => self.router(pkt, br),
            _ => Fate::Dropped {
                at: "underlay".into(),
                reason: format!("no host answers ARP for {next_hop} on the underlay"),
            },
        }
    }

    /// The underlay's router: node network, fabric routes, and the outside.
    fn router(&mut self, pkt: Packet, br: &mut dyn Branches) -> Fate {
        if self.budget == 0 {
            return Fate::Dropped {
                at: "router".into(),
                reason: "TTL exceeded: a routing loop".into(),
            };
        }
        self.budget -= 1;
        let u = &self.world.underlay;
        if pkt.dst == u.outside_ip {
            if self.trace {
                self.hop("router", format!("{} is on the outside network", pkt.dst));
            }
            return self.deliver(Place::Outside, pkt);
        }
        if u.prefix.contains(&pkt.dst) {
            if self.trace {
                self.hop("router", format!("{} is on the underlay", pkt.dst));
            }
            return self.underlay(pkt.dst, pkt, br);
        }
        let fabric = u
            .fabric_routes
            .iter()
            .filter(|(net, _)| net.contains(&pkt.dst))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(n, v)| (*n, *v));
        if let Some((net, via)) = fabric {
            if self.trace {
                self.hop("router", format!("fabric route {net} via {via}"));
            }
            return self.underlay(via, pkt, br);
        }
        Fate::Dropped { at: "router".into(), reason: format!("the router has no route to {} (pod addresses are not routable outside the cluster)", pkt.dst) }
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fate::Delivered { packet, .. } => write!(f, "delivered as {packet}"),
            Fate::Dropped { at, reason } => write!(f, "dropped at {at}: {reason}"),
            Fate::Rejected { at, reason } => write!(f, "rejected at {at}: {reason}"),
        }
    }
}

impl LocalAddresses for Node {
    fn addresses(&self) -> Box<dyn Iterator<Item = (&str, ipnet::IpNet)> + '_> {
        Box::new(
            self.links
                .values()
                .flat_map(|l| l.addrs.iter().map(move |a| (l.name.as_str(), *a))),
        )
    }
}

/// What a TCP client at `from` would observe connecting to `dst:dport`: the
/// place that accepted and the source address it saw, if the handshake
/// completes (the SYN is delivered and the SYN-ACK comes back to `from`
/// through conntrack's reverse NAT); None if either direction is lost.
/// This is what a real probe (socat) on the testbed reports.
pub fn tcp_connect(
    world: &World,
    from: Place,
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
    branches: &mut dyn Branches,
) -> Option<(Place, IpAddr)> {
    let mut w = Walker::quiet(world);
    let syn = Packet::tcp(src, 46000, dst, dport);
    let (to, seen) = match w.send(from, syn, branches) {
        Fate::Delivered { to, packet } => (to, packet),
        _ => return None,
    };
    match w.send(to, seen.reply(), &mut crate::netfilter::TakeFirst) {
        Fate::Delivered { to: back, .. } if back == from => Some((to, seen.src)),
        _ => None,
    }
}
