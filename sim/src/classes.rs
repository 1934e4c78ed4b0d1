//! Equivalence classes of nodes, so that all-pairs checks stay fast at
//! 5,000 nodes without giving up exactness.
//!
//! Two nodes are *equivalent* when their whole state — links, addresses,
//! routes, sysctls, netfilter rules, runtime, pods, listeners — is the same
//! once each node's own addresses (its IP, its pod CIDR and the addresses
//! inside it) are replaced by placeholders. Shared data (the cluster's pod
//! route table, kube-proxy's chains) is compared by identity. Equivalent
//! nodes treat every peer alike, so one representative pair per pair of
//! classes decides for all of them.
//!
//! A node is *odd* when its state names another node's address literally (a
//! stray route or rule, a removed route to one peer): such a node may treat
//! one peer differently from the others, so it is checked against every
//! node individually, both ways. The verdict is therefore exact: a node whose
//! state differs in any way is never hidden behind a representative.

use crate::world::*;
use kscratch_core::scenario::Scenario;
use std::fmt::Write as _;
use std::net::IpAddr;

/// `k: v, k: v` for a map's entries, by their text.
fn pairs<K: std::fmt::Display, V: std::fmt::Display>(m: impl Iterator<Item = (K, V)>) -> String {
    m.map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ip_bits(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

#[derive(Debug, Clone)]
pub struct Classes {
    /// Normal classes: nodes with the same normalized state, in node order.
    pub classes: Vec<Vec<NodeId>>,
    /// Odd nodes: checked against everyone.
    pub odd: Vec<NodeId>,
    class_of: Vec<Option<usize>>,
}

impl Classes {
    pub fn compute(world: &World, s: &Scenario) -> Classes {
        // Looked up, never iterated: class numbers follow node order whatever the hash.
        let mut by_sig: rustc_hash::FxHashMap<String, usize> = rustc_hash::FxHashMap::default();
        let mut classes: Vec<Vec<NodeId>> = Vec::new();
        let mut odd = Vec::new();
        let mut class_of = vec![None; world.nodes.len()];
        for n in 0..world.nodes.len() {
            let (sig, is_odd) = signature(world, s, n);
            if is_odd {
                odd.push(n);
                continue;
            }
            let next = classes.len();
            let c = *by_sig.entry(sig).or_insert(next);
            if c == next {
                classes.push(Vec::new());
            }
            classes[c].push(n);
            class_of[n] = Some(c);
        }
        Classes {
            classes,
            odd,
            class_of,
        }
    }

    /// Every node once, or a representative with the number of nodes it stands for.
    pub fn nodes(&self) -> Vec<(NodeId, usize)> {
        let mut v: Vec<(NodeId, usize)> = self.classes.iter().map(|c| (c[0], c.len())).collect();
        v.extend(self.odd.iter().map(|&o| (o, 1)));
        v.sort_unstable();
        v
    }

    /// Ordered node pairs (a, b, weight) covering every ordered pair of
    /// distinct nodes, plus (a, a) same-node pairs when `same_node`.
    pub fn node_pairs(&self, same_node: bool) -> Vec<(NodeId, NodeId, usize)> {
        let mut v = Vec::new();
        for x in &self.classes {
            for y in &self.classes {
                if std::ptr::eq(x, y) {
                    if x.len() >= 2 {
                        v.push((x[0], x[1], x.len() * (x.len() - 1)));
                    }
                    if same_node {
                        v.push((x[0], x[0], x.len()));
                    }
                } else {
                    v.push((x[0], y[0], x.len() * y.len()));
                }
            }
        }
        let all = self.class_of.len();
        for &o in &self.odd {
            for m in 0..all {
                if m != o {
                    v.push((o, m, 1));
                    if self.class_of[m].is_some() {
                        v.push((m, o, 1));
                    }
                }
            }
            if same_node {
                v.push((o, o, 1));
            }
        }
        v.sort_unstable();
        v
    }

    /// The nodes `n` stands for as a representative: its class, or itself when odd.
    pub fn members(&self, n: NodeId) -> Vec<NodeId> {
        match self.class_of[n] {
            Some(c) => self.classes[c].clone(),
            None => vec![n],
        }
    }

    /// The ordered node pairs a representative pair stands for.
    pub fn expand(&self, a: NodeId, b: NodeId) -> Vec<(NodeId, NodeId)> {
        match (self.class_of[a], self.class_of[b]) {
            (Some(x), Some(y)) if a == b => self.classes[x]
                .iter()
                .map(|&n| (n, n))
                .collect::<Vec<_>>()
                .into_iter()
                .filter(|_| x == y)
                .collect(),
            (Some(x), Some(y)) => {
                let mut v = Vec::new();
                for &p in &self.classes[x] {
                    for &q in &self.classes[y] {
                        if p != q {
                            v.push((p, q));
                        }
                    }
                }
                v
            }
            _ => vec![(a, b)],
        }
    }
}

/// The node's state with its own addresses replaced, and whether it names another node's.
fn signature(world: &World, s: &Scenario, n: NodeId) -> (String, bool) {
    let node = &world.nodes[n];
    // Every field of the node's state, named: a new field is a compile error
    // here until it is part of the signature (or said to be the node's own).
    let Node {
        name: _, // the node's own name: never decides how it treats a peer
        ip: _,   // placeholder `$NODE` below
        up,
        fs,
        sysctls,
        modules,
        links,
        routes,
        netfilter,
        binaries,
        release,
        images,
        services,
        listeners,
        kube_proxy,
        runtime,
        static_pods,
        pods,
    } = node;
    let own_cidr = s.alloc.pod_cidrs.get(n).copied();
    let odd = std::cell::Cell::new(false);
    let cluster = s.network.cluster_cidr;
    let underlay = world.underlay.prefix;
    let offset = |ip: IpAddr, base: IpAddr| -> u128 {
        match (ip, base) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a).wrapping_sub(u32::from(b))) as u128,
            (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a).wrapping_sub(u128::from(b)),
            _ => 0,
        }
    };
    // One address or prefix, written with the node's own addresses as placeholders.
    let word = |tok: &str, out: &mut String| {
        let (addr, len) = match tok.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().ok()),
            None => (tok, None),
        };
        // An IPv4 address has three dots; anything else is a plain number.
        if addr.bytes().filter(|&b| b == b'.').count() != 3 {
            out.push_str(tok);
            return;
        }
        let Ok(ip) = addr.parse::<IpAddr>() else {
            out.push_str(tok);
            return;
        };
        let suffix = tok.find('/').map_or("", |i| &tok[i..]);
        if ip == node.ip {
            let _ = write!(out, "$NODE{suffix}");
            return;
        }
        if let Some(c) =
            own_cidr.filter(|c| c.contains(&ip) && len.is_none_or(|l| l >= c.prefix_len()))
        {
            let _ = write!(out, "$POD+{}{suffix}", offset(ip, c.network()));
            return;
        }
        // A literal inside the cluster or the underlay that is narrower than the
        // whole range can single out peers: this node must be checked one by one.
        let l = len.unwrap_or(ip_bits(ip));
        let narrower = |r: ipnet::IpNet| r.contains(&ip) && l > r.prefix_len();
        if narrower(cluster) || (narrower(underlay) && Some(ip) != world.underlay.router_ip) {
            odd.set(true);
        }
        out.push_str(tok);
    };
    let norm = |text: &str, out: &mut String| {
        let mut tok = String::new();
        for ch in text.chars() {
            // IPv4 addresses and prefixes are runs of digits, dots and a slash.
            if ch.is_ascii_digit() || ch == '.' || (ch == '/' && !tok.is_empty()) {
                tok.push(ch);
            } else {
                if !tok.is_empty() {
                    word(&tok, out);
                    tok.clear();
                }
                out.push(ch);
            }
        }
        if !tok.is_empty() {
            word(&tok, out);
        }
    };
    let mut sig = String::new();
    let _ = writeln!(sig, "up={up}");
    for (k, v) in sysctls {
        let _ = writeln!(sig, "sysctl {k}={v}");
    }
    for m in modules {
        let _ = writeln!(sig, "module {m}");
    }
    for (name, l) in links {
        let kind = match &l.kind {
            LinkKind::Veth { .. } => "veth".to_string(),
            LinkKind::Vxlan(x) => format!(
                "vxlan vni {} port {} local {} dev {} shared {} neigh {{{}}} fdb {{{}}}",
                x.vni,
                x.port,
                x.local,
                x.dev,
                x.shared_fdb,
                pairs(x.neighbors.iter()),
                pairs(x.fdb.iter())
            ),
            other => format!("{other:?}"),
        };
        let addrs: Vec<String> = l.addrs.iter().map(|a| a.to_string()).collect();
        // veth names carry the pod index: only their count and bridge matter.
        let shown = if matches!(l.kind, LinkKind::Veth { .. }) {
            "veth"
        } else {
            name.as_str()
        };
        let line = format!(
            "link {shown} {kind} mtu {} up {} addrs {} master {:?}\n",
            l.mtu,
            l.up,
            addrs.join(","),
            l.master
        );
        norm(&line, &mut sig);
    }
    for r in &routes.local {
        norm(&format!("route {}\n", r.emit()), &mut sig);
    }
    if let Some(sh) = &routes.shared {
        let _ = writeln!(
            sig,
            "shared-routes {:p} {:?}",
            std::sync::Arc::as_ptr(&sh.table),
            sh.mode
        );
        if !sh.removed.is_empty() {
            // A route removed to some peers only: this node may treat them differently.
            odd.set(true);
            let _ = writeln!(sig, "removed {:?}", sh.removed);
        }
    }
    let mut addressed = String::new();
    let fp = netfilter.local_fingerprint(&mut |r| {
        addressed.push_str(&r.emit());
        addressed.push('\n');
    });
    let _ = writeln!(sig, "netfilter {fp:016x}");
    norm(&addressed, &mut sig);
    let _ = writeln!(sig, "shared-chains {:?}", netfilter.shared_id());
    norm(&format!("runtime {runtime:?}\n"), &mut sig);
    for ((proto, port), l) in listeners {
        let addr = l.addr.map(|a| a.to_string()).unwrap_or_default();
        norm(
            &format!("listen {proto:?} {port} {} {addr}\n", l.process),
            &mut sig,
        );
    }
    for (name, p) in static_pods {
        let _ = writeln!(sig, "static {name} {:?}", p.problem);
    }
    for p in pods.iter().map(|&p| &world.pods[p]) {
        norm(
            &format!(
                "pod {} {} /{} gw {} mtu {} {}\n",
                p.name, p.ip, p.prefix, p.gateway, p.mtu, p.bridge
            ),
            &mut sig,
        );
    }
    for b in binaries {
        let _ = writeln!(sig, "binary {} {}", b.0, b.1);
    }
    for i in images {
        let _ = writeln!(sig, "image {i}");
    }
    let _ = writeln!(sig, "release {release:?}");
    if let Some(k) = kube_proxy {
        // As written in its files, like a rendered file's asset: the same
        // literal server on every node is the same behaviour.
        let c = &k.config;
        let _ = writeln!(
            sig,
            "kube-proxy cluster-cidr {} masquerade-all {} bit {} localhost-nodeports {} random-fully {} liberal {} server {}",
            c.cluster_cidr.map(|n| n.to_string()).unwrap_or_default(),
            c.masquerade_all,
            c.masquerade_bit,
            c.localhost_nodeports,
            c.random_fully,
            c.conntrack_tcp_be_liberal,
            k.server
        );
    }
    for (name, st) in services {
        let _ = writeln!(sig, "service {name} running {}", st.running);
    }
    // Files: assets by identity (rendered per node from the same source),
    // hand-written text with the node's own addresses as placeholders.
    for (path, f) in &fs.files {
        match &f.asset {
            Some(a) => {
                let _ = writeln!(sig, "file {path} {:o} {a:?}", f.mode);
            }
            None => {
                let _ = write!(sig, "file {path} {:o} text ", f.mode);
                norm(&String::from_utf8_lossy(&f.content), &mut sig);
                sig.push('\n');
            }
        }
    }
    (sig, odd.get())
}
