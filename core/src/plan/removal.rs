//! Removal: a node that left the scenario, removed from the cluster it was
//! applied to.
//!
//! The departed nodes come in as data (the applied record has them, the
//! scenario does not: `diff::Snapshot::departed`); nothing here reads a
//! file. For each of them the plan gets its own steps, with ids that name
//! it (`node-2/remove/route/node-4`):
//! - on every remaining node, what `net/pod-routes` installed for it: its
//!   pod route (routed), or its route, neighbour and FDB entry (vxlan);
//! - on the fabric router, its pod route (`fabric`; listed for the
//!   operator where the router is not managed, as the adds are);
//! - if it was an etcd member, `etcdctl member remove` on the first
//!   remaining member, once that member is healthy;
//! - its Node object, deleted through the apiserver once it is healthy.
//!
//! kscratch writes no iptables rule or ipset entry naming a node's
//! addresses (the masquerade rule names the cluster CIDR), so there is
//! none to remove. A departed node's pod CIDR or address that a remaining
//! node now holds is left alone: `net/pod-routes` replaces those entries.
//! Every step is a delete whose check is "already absent", so a re-run
//! changes nothing. Whether removing the etcd members keeps quorum is
//! decided before anything runs (`diff::etcd_quorum_finding`).

use super::builder::Builder;
use super::context::Cluster;
use super::*;
use crate::net::route::{FdbEntry, MacAddr, Neighbor, Route, RouteDst};
use crate::scenario::PodTraffic;
use std::net::IpAddr;

/// A node the applied record has and the scenario does not, with what the
/// record says the cluster holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departed {
    pub name: String,
    pub node_ip: IpAddr,
    pub pod_cidr: IpNet,
    /// Its VTEP MAC (vxlan clusters).
    pub vtep_mac: Option<MacAddr>,
    /// It was an etcd member.
    pub etcd_member: bool,
}

/// What the removal steps wait for: each remaining node's preflight, the
/// etcd members' health waits (target, step) and the apiservers'.
pub(super) struct Gates<'a> {
    pub pre: &'a [StepRef],
    pub etcd_ok: &'a [(Target, StepRef)],
    pub apiserver_ok: &'a [StepRef],
    /// Where cluster-wide steps run (the first control-plane node).
    pub t0: Target,
}

/// The removal steps of every departed node, in the order given.
pub(super) fn steps(b: &mut Builder<'_>, cx: &Cluster<'_>, departed: &[Departed], g: &Gates<'_>) {
    if departed.is_empty() {
        return;
    }
    let s = cx.s;
    let entries = pod_network_entries(s);
    for (k, d) in departed.iter().enumerate() {
        let about = Some(k as u32);
        // What a remaining node now holds is replaced by `net/pod-routes`, not deleted.
        let cidr_taken = entries.iter().any(|e| e.pod_cidr == d.pod_cidr);
        let ip_taken = entries.iter().any(|e| e.node_ip == d.node_ip);
        match &s.network.pod_traffic {
            PodTraffic::Routed if !cidr_taken => {
                let route = Route::via(d.pod_cidr, d.node_ip, &s.network.interface);
                for (i, pre) in g.pre.iter().enumerate() {
                    b.push_about(
                        Target::Node(i as u32),
                        "remove/route",
                        about,
                        Phase::NodeBase,
                        Action::DeleteRoutes {
                            routes: vec![route.clone()],
                        },
                        &[*pre],
                    );
                }
            }
            PodTraffic::Vxlan(v) => {
                let vtep = d.pod_cidr.network();
                let mac = d.vtep_mac.unwrap_or_else(|| vtep_mac(d.node_ip));
                let route = Route {
                    onlink: true,
                    ..Route::via(d.pod_cidr, vtep, &v.device)
                };
                for (i, pre) in g.pre.iter().enumerate() {
                    let t = Target::Node(i as u32);
                    if !cidr_taken {
                        let r = b.push_about(
                            t,
                            "remove/route",
                            about,
                            Phase::NodeBase,
                            Action::DeleteRoutes {
                                routes: vec![route.clone()],
                            },
                            &[*pre],
                        );
                        b.push_about(
                            t,
                            "remove/neigh",
                            about,
                            Phase::NodeBase,
                            Action::DeleteNeighbors {
                                entries: vec![Neighbor::permanent(vtep, &v.device, mac)],
                            },
                            &[r],
                        );
                    }
                    if !ip_taken {
                        b.push_about(
                            t,
                            "remove/fdb",
                            about,
                            Phase::NodeBase,
                            Action::DeleteFdbEntries {
                                entries: vec![FdbEntry::vxlan(mac, &v.device, d.node_ip)],
                            },
                            &[*pre],
                        );
                    }
                }
            }
            PodTraffic::Fabric if !cidr_taken => {
                b.push_about(
                    Target::Fabric,
                    "remove/fabric-route",
                    about,
                    Phase::NodeBase,
                    Action::DeleteRoutes {
                        routes: vec![Route {
                            via: Some(d.node_ip),
                            ..Route::new(RouteDst::Net(d.pod_cidr))
                        }],
                    },
                    &[],
                );
            }
            PodTraffic::Routed | PodTraffic::Fabric | PodTraffic::External => {}
        }
        if d.etcd_member {
            if let Some((t @ Target::Node(i), ok)) = g.etcd_ok.first() {
                let scheme = s.security.model.scheme();
                let host = match s.nodes[*i as usize].ip {
                    IpAddr::V4(v) => v.to_string(),
                    IpAddr::V6(v) => format!("[{v}]"),
                };
                b.push_about(
                    *t,
                    "remove/etcd-member",
                    about,
                    Phase::Etcd,
                    Action::RemoveEtcdMember {
                        name: d.name.clone(),
                        endpoint: format!("{scheme}://{host}:2379"),
                    },
                    &[*ok],
                );
            }
        }
        if !s.nodes.is_empty() {
            b.push_about(
                g.t0,
                "remove/node-object",
                about,
                Phase::Addons,
                Action::DeleteNode {
                    name: d.name.clone(),
                },
                g.apiserver_ok,
            );
        }
    }
}
