//! The packet walk: one packet through the simulated world, hop by hop, in
//! the kernel's order — routing decision, netfilter hooks, links, the L2
//! underlay, VXLAN encapsulation, the router — recording a trace that names
//! the node, interface, route and iptables rule responsible for each turn.
//!
//! A reachability verdict is a *connection* ([`connect`]): the request, then
//! the reply sent back by whoever received it, walked through the same
//! conntrack state (so NAT is undone on the way back), with routing and
//! netfilter on every hop of both legs. The kernel's quieter rules are
//! followed: source address selection for local packets, re-routing after
//! NAT in OUTPUT, local delivery of local addresses, routes flushed from a
//! link set down, reverse-path filtering (`rp_filter`), and the receiving
//! interface's MTU.
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

/// Which half of a connection a hop belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Leg {
    /// From the client to the server (the SYN, the DNS query).
    Request,
    /// From the server back to the client (the SYN-ACK, the DNS answer).
    Reply,
}

impl Leg {
    pub fn name(self) -> &'static str {
        match self {
            Leg::Request => "request",
            Leg::Reply => "reply",
        }
    }
}

/// One line of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub leg: Leg,
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
    leg: Leg,
    /// Client sockets of connections started on a node: (node, the place
    /// that owns the socket, the tuple as the socket sees it). A reply that
    /// matches one is accepted by it, not by a listener.
    sockets: Vec<(NodeId, Place, crate::packet::Tuple)>,
    /// Set when a node routed a packet past a pod route the plan installs
    /// but the node lacks: the real cause, named when the packet is lost.
    detour: Option<String>,
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
            leg: Leg::Request,
            sockets: Vec::new(),
            detour: None,
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
            leg: self.leg,
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
    /// A node's packet with an unspecified source gets one by the kernel's
    /// rule first (see [`source_address`]).
    pub fn send(&mut self, from: Place, mut pkt: Packet, branches: &mut dyn Branches) -> Fate {
        self.budget = TTL;
        self.detour = None;
        let at = self.place_name(from);
        if let Place::Node(n) = from {
            if pkt.src.is_unspecified() {
                match source_address(self.world, n, pkt.dst) {
                    Ok(src) => pkt.src = src,
                    Err(reason) => {
                        let at = self.world.nodes[n].name.clone();
                        if self.trace {
                            self.hop(at.clone(), format!("send {pkt}"));
                        }
                        let reason = self.with_detour_of(n, pkt.dst, reason);
                        self.hop(at.clone(), format!("DROP: {reason}"));
                        return Fate::Dropped { at, reason };
                    }
                }
            }
        }
        if self.trace {
            self.hop(at, format!("send {pkt}"));
        }
        let fate = match from {
            Place::Pod(p) => self.from_pod(p, pkt, branches),
            Place::Node(n) => self.local_out(n, pkt, branches),
            Place::Router => self.router(pkt, branches),
            Place::Outside => match self.world.underlay.router_ip {
                Some(r) => {
                    if self.trace {
                        self.hop("outside", format!("default route via router {r}"));
                    }
                    self.router(pkt, branches)
                }
                None => Fate::Dropped {
                    at: "outside".into(),
                    reason: "nothing is outside: the scenario declares no network.gateway".into(),
                },
            },
        };
        // A packet lost after a node routed it past a missing pod route was
        // lost because of that route: say so first.
        let fate = match (fate, self.detour.take()) {
            (Fate::Dropped { at, reason }, Some(d)) => Fate::Dropped {
                at,
                reason: format!("{d}; then {reason}"),
            },
            (Fate::Rejected { at, reason }, Some(d)) => Fate::Rejected {
                at,
                reason: format!("{d}; then {reason}"),
            },
            (f, _) => f,
        };
        // The trace ends where the packet did.
        match &fate {
            Fate::Dropped { at, reason } => self.hop(at.clone(), format!("DROP: {reason}")),
            Fate::Rejected { at, reason } => self.hop(at.clone(), format!("REJECT: {reason}")),
            Fate::Delivered { .. } => {}
        }
        fate
    }

    /// When node `n` has no route of its own for `dst` although the plan
    /// installs one (a pod route removed from it), the sentence naming it.
    fn missing_pod_route(&self, n: NodeId, dst: IpAddr) -> Option<String> {
        let node = &self.world.nodes[n];
        let sh = node.routes.shared.as_ref()?;
        let i = sh.table.find(dst)?;
        if !sh.removed.contains(&i) {
            return None;
        }
        let e = &sh.table.entries[i];
        Some(format!(
            "{} has no route to {} ({}'s pod CIDR; the plan installs `{}`)",
            node.name,
            e.pod_cidr,
            e.node,
            crate::routes::shared_route(sh, i).emit()
        ))
    }

    fn with_detour_of(&self, n: NodeId, dst: IpAddr, reason: String) -> String {
        match self.missing_pod_route(n, dst) {
            Some(d) => format!("{d}; {reason}"),
            None => reason,
        }
    }

    /// Records that node `n` routes `dst` past a missing pod route, if it does.
    fn note_detour(&mut self, n: NodeId, dst: IpAddr) {
        if self.detour.is_none() {
            self.detour = self.missing_pod_route(n, dst);
        }
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
        if !self.world.nodes[pod.node].up {
            return Fate::Dropped {
                at: name,
                reason: "the node is down: its pods do not run".into(),
            };
        }
        if pkt.dst == pod.ip {
            // The pod's own address is local in its namespace: delivered over its `lo`.
            if self.trace {
                self.hop(
                    name,
                    format!("{} is the pod's own address: delivered over lo", pkt.dst),
                );
            }
            return self.deliver(Place::Pod(p), pkt);
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
        if let Some(l) = node.links.get(in_if).filter(|l| !l.up) {
            return Fate::Dropped {
                at: node.name.clone(),
                reason: format!("{} is down on {}: it receives nothing", l.name, node.name),
            };
        }
        if let Some(f) = self.nf(n, Hook::Prerouting, Some(in_if), None, &mut pkt, br) {
            return f;
        }
        let node = &self.world.nodes[n];
        // The input routing decision validates the source (fib_validate_source).
        if let Some(reason) = rp_filter_drop(node, in_if, pkt.src) {
            return Fate::Dropped {
                at: node.name.clone(),
                reason,
            };
        }
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
        let Some(route) = route_lookup(node, pkt.dst) else {
            let reason = self.with_detour_of(
                n,
                pkt.dst,
                format!("no route to {} in {}'s routing table", pkt.dst, node.name),
            );
            return Fate::Dropped {
                at: node.name.clone(),
                reason,
            };
        };
        self.note_detour(n, pkt.dst);
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
        let tuple = pkt.tuple().reversed();
        if let Some(&(_, owner, _)) = self.sockets.iter().find(|(m, _, t)| *m == n && *t == tuple) {
            if self.trace {
                let at = node.name.clone();
                self.hop(
                    at,
                    format!("the client socket {}:{} accepts it", pkt.dst, pkt.dport),
                );
            }
            return self.deliver(owner, pkt);
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

    /// A packet a process on node `n` sends: routed (the route also picks
    /// the source address), OUTPUT, re-routed if NAT in OUTPUT changed the
    /// destination, then POSTROUTING and out.
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
            return self.loopback(n, pkt, br);
        }
        let Some(route) = route_lookup(node, pkt.dst) else {
            let reason = self.with_detour_of(
                n,
                pkt.dst,
                format!(
                    "no route to {} in {}'s routing table (connect fails: Network is unreachable)",
                    pkt.dst, node.name
                ),
            );
            return Fate::Dropped {
                at: node.name.clone(),
                reason,
            };
        };
        if pkt.src.is_unspecified() {
            pkt.src = route
                .route
                .src
                .or_else(|| node.primary_addr(&route.dev))
                .unwrap_or(node.ip);
        }
        let before = pkt.dst;
        if let Some(f) = self.nf(n, Hook::Output, None, Some(&route.dev), &mut pkt, br) {
            return f;
        }
        let node = &self.world.nodes[n];
        let route = if pkt.dst == before {
            route
        } else {
            // NAT in OUTPUT changed the destination: the kernel routes the
            // packet again (ip_route_me_harder), the source stays.
            if node.is_local(pkt.dst) {
                if self.trace {
                    let at = node.name.clone();
                    self.hop(at, format!("re-routed after OUTPUT: {} is local", pkt.dst));
                }
                return self.loopback_after_output(n, pkt, br);
            }
            let Some(again) = route_lookup(node, pkt.dst) else {
                let reason = self.with_detour_of(
                    n,
                    pkt.dst,
                    format!(
                        "no route to {} in {}'s routing table (after OUTPUT changed the destination from {before})",
                        pkt.dst, node.name
                    ),
                );
                return Fate::Dropped {
                    at: node.name.clone(),
                    reason,
                };
            };
            if self.trace {
                let at = node.name.clone();
                self.hop(at, format!("re-routed after OUTPUT to {}", pkt.dst));
            }
            again
        };
        self.note_detour(n, pkt.dst);
        let at = node.name.clone();
        if self.trace {
            self.hop(at, format!("route {}", route.route.emit()));
        }
        self.transmit(n, &route.dev, route.next_hop, pkt, br)
    }

    /// A packet to one of the node's own addresses: OUTPUT, POSTROUTING and
    /// INPUT on `lo`, then the socket.
    fn loopback(&mut self, n: NodeId, mut pkt: Packet, br: &mut dyn Branches) -> Fate {
        let before = pkt.dst;
        if let Some(f) = self.nf(n, Hook::Output, Some("lo"), Some("lo"), &mut pkt, br) {
            return f;
        }
        if pkt.dst != before && !self.world.nodes[n].is_local(pkt.dst) {
            // DNAT in OUTPUT sent a local packet elsewhere: route it.
            let node = &self.world.nodes[n];
            let Some(route) = route_lookup(node, pkt.dst) else {
                return Fate::Dropped {
                    at: node.name.clone(),
                    reason: format!(
                        "no route to {} in {}'s routing table (after OUTPUT changed the destination from {before})",
                        pkt.dst, node.name
                    ),
                };
            };
            if self.trace {
                let at = node.name.clone();
                self.hop(
                    at,
                    format!("re-routed after OUTPUT: route {}", route.route.emit()),
                );
            }
            return self.transmit(n, &route.dev, route.next_hop, pkt, br);
        }
        self.loopback_after_output(n, pkt, br)
    }

    fn loopback_after_output(&mut self, n: NodeId, mut pkt: Packet, br: &mut dyn Branches) -> Fate {
        for hook in [Hook::Postrouting, Hook::Input] {
            if let Some(f) = self.nf(n, hook, Some("lo"), Some("lo"), &mut pkt, br) {
                return f;
            }
        }
        self.local_in(n, pkt, br)
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
                    .and_then(|e| e.vtep.as_ref().map(|(_, m)| *m))
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
                let node = &self.world.nodes[m];
                let Some(eth) = node.links.values().find(|l| {
                    l.kind == LinkKind::Ether && l.addrs.iter().any(|a| a.addr() == node.ip)
                }) else {
                    return Fate::Dropped {
                        at: node.name.clone(),
                        reason: format!("{} has no interface on the underlay", node.name),
                    };
                };
                if node.up && !eth.up {
                    return Fate::Dropped {
                        at: node.name.clone(),
                        reason: format!(
                            "{} is down on {}: it receives nothing",
                            eth.name, node.name
                        ),
                    };
                }
                if node.up && pkt.len > eth.mtu {
                    // A NIC drops frames longer than its MTU, DF or not.
                    return Fate::Dropped {
                        at: node.name.clone(),
                        reason: format!(
                            "a frame of {} bytes exceeds the MTU {} of {} on {}",
                            pkt.len, eth.mtu, eth.name, node.name
                        ),
                    };
                }
                let eth = eth.name.clone();
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

/// The route the kernel picks on `node` for `dst`: longest prefix over the
/// routes whose device exists and is up.
pub fn route_lookup(node: &Node, dst: IpAddr) -> Option<crate::routes::Lookup> {
    node.routes
        .lookup_with(dst, |dev| node.links.get(dev).is_some_and(|l| l.up))
}

/// The source address the kernel gives a packet that node `n` sends to
/// `dst` from an unbound socket: `dst` itself for a local address, else the
/// route's preferred source (`src`), else the primary address of the route's
/// device. No route: the connect fails (ENETUNREACH).
pub fn source_address(world: &World, n: NodeId, dst: IpAddr) -> Result<IpAddr, String> {
    let node = &world.nodes[n];
    if node.is_local(dst) {
        return Ok(dst);
    }
    let route = route_lookup(node, dst).ok_or_else(|| {
        format!(
            "no route to {dst} in {}'s routing table (connect fails: Network is unreachable)",
            node.name
        )
    })?;
    Ok(route
        .route
        .src
        .or_else(|| node.primary_addr(&route.dev))
        .unwrap_or(node.ip))
}

/// The reverse-path filter (`net.ipv4.conf.{all,IFACE}.rp_filter`, the
/// larger value wins): strict (1) drops a packet whose source is not routed
/// back out of the interface it came in on; loose (2) drops it only when the
/// source is not routable at all. Some(reason) when the packet is dropped.
fn rp_filter_drop(node: &Node, in_if: &str, src: IpAddr) -> Option<String> {
    let level = |k: &str| {
        node.sysctl(&format!("net.ipv4.conf.{k}.rp_filter"))
            .and_then(|v| v.parse::<u8>().ok())
            .unwrap_or(0)
    };
    let mode = level("all").max(level(in_if));
    if mode == 0 || in_if == "lo" || node.is_local(src) {
        return None;
    }
    let back = route_lookup(node, src);
    match (mode, back) {
        (1, Some(r)) if r.dev != in_if => Some(format!(
            "rp_filter=1 (strict) on {}: {src} arrived on {in_if}, but the route back to it is `{}` (dev {})",
            node.name,
            r.route.emit(),
            r.dev
        )),
        (_, None) => Some(format!(
            "rp_filter={mode} on {}: there is no route back to the source {src}",
            node.name
        )),
        _ => None,
    }
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

/// A connection's verdict: the request, then the reply of whoever received
/// it, walked through the same conntrack state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Conn {
    /// The request reached `server` looking like `seen`, and the reply came
    /// back to the client with the addresses and ports it expects.
    Established { server: Place, seen: Packet },
    /// The request was lost or refused on the way.
    RequestFailed { fate: Fate },
    /// The request reached `server`, but no acceptable reply came back.
    ReplyFailed {
        server: Place,
        seen: Packet,
        reason: String,
    },
}

impl Conn {
    pub fn established(&self) -> Option<(Place, &Packet)> {
        match self {
            Conn::Established { server, seen } => Some((*server, seen)),
            _ => None,
        }
    }

    /// Where the request ended up, when it was delivered (whatever the reply did).
    pub fn server(&self) -> Option<(Place, &Packet)> {
        match self {
            Conn::Established { server, seen } | Conn::ReplyFailed { server, seen, .. } => {
                Some((*server, seen))
            }
            Conn::RequestFailed { .. } => None,
        }
    }

    /// The leg that failed, if one did.
    pub fn failed_leg(&self) -> Option<Leg> {
        match self {
            Conn::Established { .. } => None,
            Conn::RequestFailed { .. } => Some(Leg::Request),
            Conn::ReplyFailed { .. } => Some(Leg::Reply),
        }
    }
}

impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conn::Established { seen, .. } => {
                write!(
                    f,
                    "connected: the request arrived as {seen}, the reply came back"
                )
            }
            Conn::RequestFailed { fate } => write!(f, "the request was {fate}"),
            Conn::ReplyFailed { reason, .. } => write!(f, "the reply was lost: {reason}"),
        }
    }
}

/// Runs one connection from `from`: the request `pkt` (a node's unspecified
/// source is chosen by the kernel's rule), then the reply the receiver sends
/// back, through the conntrack state the request left. The hops of both legs
/// accumulate on `w`, marked by [`Leg`].
pub fn connect(w: &mut Walker<'_>, from: Place, mut pkt: Packet, br: &mut dyn Branches) -> Conn {
    let world = w.world;
    let client_node = match from {
        Place::Node(n) => Some(n),
        Place::Pod(p) if world.pods[p].host_network => Some(world.pods[p].node),
        _ => None,
    };
    if let Some(n) = client_node {
        if pkt.src.is_unspecified() {
            if let Ok(src) = source_address(world, n, pkt.dst) {
                pkt.src = src;
            }
        }
        w.sockets.push((n, from, pkt.tuple()));
    }
    w.leg = Leg::Request;
    let fate = w.send(from, pkt.clone(), br);
    let (server, seen) = match fate {
        Fate::Delivered { to, packet } => (to, packet),
        fate => {
            w.leg = Leg::Request;
            return Conn::RequestFailed { fate };
        }
    };
    w.leg = Leg::Reply;
    let back = w.send(server, seen.reply(), br);
    w.leg = Leg::Request;
    let reason = match back {
        Fate::Delivered { to, packet } if to == from => {
            let expected = pkt.reply();
            if packet.src == expected.src
                && packet.sport == expected.sport
                && packet.dst == expected.dst
                && packet.dport == expected.dport
            {
                return Conn::Established { server, seen };
            }
            format!(
                "{} got the reply from {}:{} to {}:{}, but expects {}:{} to {}:{}: it drops it (the reply was not translated back)",
                w.place_name(from),
                packet.src,
                packet.sport,
                packet.dst,
                packet.dport,
                expected.src,
                expected.sport,
                expected.dst,
                expected.dport
            )
        }
        Fate::Delivered { to, .. } => format!(
            "delivered to {} instead of the client {}",
            w.place_name(to),
            w.place_name(from)
        ),
        fate => fate.to_string(),
    };
    Conn::ReplyFailed {
        server,
        seen,
        reason,
    }
}

/// What a TCP client at `from` observes connecting to `dst:dport`: the place
/// that accepted and the source address it saw, if the handshake completes.
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
    connect(&mut w, from, syn, branches)
        .established()
        .map(|(to, seen)| (to, seen.src))
}
