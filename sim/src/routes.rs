//! A node's routing table: longest-prefix match over local routes and the
//! cluster-wide pod route table.
//!
//! Every node of a routed or overlay cluster holds a route to every other
//! node's pod CIDR. Copying 5,000 routes into 5,000 tables would make the
//! simulator O(nodes²); instead each node references the one shared table
//! (the plan's `PodNetwork` artifact) and records only its own exceptions —
//! the routes a fault removed. A lookup behaves exactly as if the routes were
//! copied: longest prefix wins, and a local route of equal length is preferred
//! (the kernel refuses duplicates, so that case only arises from a fault).

use ipnet::IpNet;
use kscratch_core::ipam;
use kscratch_core::net::route::{Route, RouteDst, RouteType};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

/// The shared pod route table: one entry per node, indexed by pod CIDR slice.
#[derive(Debug, Clone)]
pub struct PodRoutes {
    pub cluster_cidr: IpNet,
    pub node_prefix: u8,
    /// Per node: (pod CIDR, node IP, VTEP address and MAC for overlays).
    pub entries: Vec<PodRouteEntry>,
    by_slot: BTreeMap<u128, usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRouteEntry {
    pub node: String,
    pub pod_cidr: IpNet,
    pub node_ip: IpAddr,
    pub vtep: Option<(IpAddr, kscratch_core::net::route::MacAddr)>,
}

impl PodRoutes {
    pub fn new(cluster_cidr: IpNet, node_prefix: u8, entries: Vec<PodRouteEntry>) -> PodRoutes {
        let by_slot = entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                ipam::slice_index(cluster_cidr, node_prefix, e.pod_cidr).map(|s| (s, i))
            })
            .collect();
        PodRoutes {
            cluster_cidr,
            node_prefix,
            entries,
            by_slot,
        }
    }

    /// The entry whose pod CIDR holds `dst`.
    pub fn find(&self, dst: IpAddr) -> Option<usize> {
        if !self.cluster_cidr.contains(&dst) {
            return None;
        }
        let slot = ipam::slice_index(
            self.cluster_cidr,
            self.node_prefix,
            IpNet::new(dst, self.node_prefix).ok()?.trunc(),
        )?;
        self.by_slot.get(&slot).copied()
    }
}

/// How a node uses the shared table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRouteMode {
    /// `CIDR via NODE_IP dev IFACE`.
    Underlay { dev: String },
    /// `CIDR via VTEP dev vxlan0 onlink` (+ neighbour and FDB entries).
    Overlay { dev: String },
}

#[derive(Debug, Clone)]
pub struct SharedRoutes {
    pub table: Arc<PodRoutes>,
    pub mode: PodRouteMode,
    /// This node's own entry: no route to itself.
    pub own: Option<usize>,
    /// Entries removed on this node (`ip route del`).
    pub removed: BTreeSet<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Connected and static routes, as `ip route` would list them.
    pub local: Vec<Route>,
    pub shared: Option<SharedRoutes>,
}

/// The result of a lookup: the route, as the kernel would print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub route: Route,
    /// The next hop on the link: the gateway, or the destination itself.
    pub next_hop: IpAddr,
    pub dev: String,
}

impl RouteTable {
    /// Longest-prefix match for `dst`.
    pub fn lookup(&self, dst: IpAddr) -> Option<Lookup> {
        self.lookup_with(dst, |_| true)
    }

    /// Longest-prefix match for `dst` over the routes whose device is
    /// usable: the kernel flushes the IPv4 routes of a link set down, so a
    /// down link's routes are skipped as if gone.
    pub fn lookup_with(&self, dst: IpAddr, usable: impl Fn(&str) -> bool) -> Option<Lookup> {
        let mut best: Option<(u8, Route)> = None;
        for r in &self.local {
            if r.kind != RouteType::Unicast || r.dev.as_deref().is_some_and(|d| !usable(d)) {
                continue;
            }
            let (net, len) = match r.dst {
                RouteDst::Default => (None, 0),
                RouteDst::Net(n) => (Some(n), n.prefix_len()),
            };
            if net.is_some_and(|n| !n.contains(&dst)) {
                continue;
            }
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, r.clone()));
            }
        }
        if let Some(sh) = self.shared.as_ref().filter(|sh| usable(sh.mode.dev())) {
            if let Some(i) = sh.table.find(dst) {
                if Some(i) != sh.own
                    && !sh.removed.contains(&i)
                    && best.as_ref().is_none_or(|(l, _)| sh.table.node_prefix > *l)
                {
                    best = Some((sh.table.node_prefix, shared_route(sh, i)));
                }
            }
        }
        let (_, route) = best?;
        let dev = route.dev.clone()?;
        Some(Lookup {
            next_hop: route.via.unwrap_or(dst),
            dev,
            route,
        })
    }

    /// Every route as `ip route show` would list it (shared ones expanded): for dumps and tests.
    pub fn list(&self) -> Vec<Route> {
        let mut v = self.local.clone();
        if let Some(sh) = &self.shared {
            for i in 0..sh.table.entries.len() {
                if Some(i) != sh.own && !sh.removed.contains(&i) {
                    v.push(shared_route(sh, i));
                }
            }
        }
        v
    }

    /// Removes the routes to `dst` (local or shared); true when one existed.
    pub fn remove(&mut self, dst: IpNet) -> bool {
        let before = self.local.len();
        self.local.retain(|r| r.dst != RouteDst::Net(dst));
        let mut removed = self.local.len() != before;
        if let Some(sh) = &mut self.shared {
            if let Some(i) = sh
                .table
                .find(dst.network())
                .filter(|&i| sh.table.entries[i].pod_cidr == dst)
            {
                if Some(i) != sh.own {
                    removed |= sh.removed.insert(i);
                }
            }
        }
        removed
    }
}

impl PodRouteMode {
    /// The device the pod routes go out of.
    pub fn dev(&self) -> &str {
        match self {
            PodRouteMode::Underlay { dev } | PodRouteMode::Overlay { dev } => dev,
        }
    }
}

/// Entry `i` of the shared table as this node's `ip route` lists it.
pub fn shared_route(sh: &SharedRoutes, i: usize) -> Route {
    entry_route(&sh.mode, &sh.table.entries[i])
}

/// A pod network table entry as a node using it in `mode` lists its route.
pub fn entry_route(mode: &PodRouteMode, e: &PodRouteEntry) -> Route {
    let mut r = Route::new(RouteDst::Net(e.pod_cidr));
    match mode {
        PodRouteMode::Underlay { dev } => {
            r.via = Some(e.node_ip);
            r.dev = Some(dev.clone());
        }
        PodRouteMode::Overlay { dev } => {
            r.via = e.vtep.as_ref().map(|(ip, _)| *ip);
            r.dev = Some(dev.clone());
            r.onlink = true;
        }
    }
    r
}

/// Whether a route's destination covers `ip`.
pub fn covers(r: &Route, ip: IpAddr) -> bool {
    match r.dst {
        RouteDst::Default => true,
        RouteDst::Net(n) => n.contains(&ip),
    }
}
