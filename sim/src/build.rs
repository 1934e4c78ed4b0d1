//! The world before the plan: machines as the operator hands them over.
//!
//! Each node has `lo` and its underlay NIC with the node IP, a connected
//! route, `ip_forward=0`, and a default route only when the scenario declares
//! the underlay's gateway (`network.gateway`): nothing the scenario does not
//! say exists is invented. The gateway is the underlay's router; beyond it
//! sits one outside host for egress checks. Without a gateway there is no
//! router and nothing outside the underlay. A control-plane endpoint that
//! is not a loopback address is the operator's load balancer
//! ([`LoadBalancer`]).

use crate::backend::add_connected;
use crate::world::*;
use ipnet::IpNet;
use kscratch_core::net::route::{Route, RouteDst};
use kscratch_core::scenario::Scenario;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub fn world(s: &Scenario) -> World {
    let prefix = s
        .network
        .node_cidr
        .unwrap_or_else(|| covering(s.nodes.iter().map(|n| n.ip)));
    let router_ip = s.network.gateway;
    let taken = |ip: &IpAddr| {
        s.network.cluster_cidr.contains(ip)
            || s.network.service_cidr.contains(ip)
            || prefix.contains(ip)
    };
    // TEST-NET-3, or the benchmarking range if the scenario uses TEST-NET-3.
    let outside_ip: IpAddr = ["203.0.113.10", "198.18.0.10", "192.0.2.10"]
        .iter()
        .map(|s| s.parse().expect("literal"))
        .find(|ip| !taken(ip))
        .unwrap_or(IpAddr::from([203, 0, 113, 10]));
    let mut owners = BTreeMap::new();
    if let Some(r) = router_ip {
        owners.insert(r, Owner::Router);
        owners.insert(outside_ip, Owner::Outside);
    }
    let mut nodes = Vec::with_capacity(s.nodes.len());
    for (i, n) in s.nodes.iter().enumerate() {
        let mut node = Node::new(&n.name, n.ip);
        let dev = s.network.interface.clone();
        let addr = IpNet::new(n.ip, prefix.prefix_len()).expect("prefix of a valid CIDR");
        node.links.insert(
            dev.clone(),
            Link {
                name: dev.clone(),
                kind: LinkKind::Ether,
                mtu: s.network.underlay_mtu,
                up: true,
                addrs: vec![addr],
                master: None,
            },
        );
        add_connected(&mut node, &dev, addr);
        if let Some(gw) = router_ip {
            let mut default = Route::new(RouteDst::Default);
            default.via = Some(gw);
            default.dev = Some(dev);
            node.routes.local.push(default);
        }
        owners.insert(n.ip, Owner::Node(i));
        nodes.push(node);
    }
    World {
        nodes,
        pods: Vec::new(),
        underlay: Underlay {
            prefix,
            mtu: s.network.underlay_mtu,
            router_ip,
            fabric_routes: BTreeMap::new(),
            outside_ip,
            load_balancer: s
                .control_plane_endpoint
                .as_ref()
                .filter(|e| e.local_proxy_port().is_none())
                .map(|e| LoadBalancer {
                    host: e.host_text(),
                    port: e.port,
                    backends: s
                        .control_plane_nodes()
                        .map(|(_, n)| (n.name.clone(), n.ip, s.security.model.apiserver_port()))
                        .collect(),
                }),
        },
        owners,
    }
}

/// The smallest prefix holding every address (at least a /24).
fn covering(ips: impl Iterator<Item = IpAddr>) -> IpNet {
    let v4: Vec<u32> = ips
        .filter_map(|ip| match ip {
            IpAddr::V4(a) => Some(u32::from(a)),
            IpAddr::V6(_) => None,
        })
        .collect();
    let (lo, hi) = (
        v4.iter().min().copied().unwrap_or(0),
        v4.iter().max().copied().unwrap_or(0),
    );
    let mut len = 24u8.min(32 - (32 - (lo ^ hi).leading_zeros()) as u8);
    if (lo ^ hi) == 0 {
        len = 24;
    }
    IpNet::new(IpAddr::V4(lo.into()), len)
        .expect("valid prefix")
        .trunc()
}
