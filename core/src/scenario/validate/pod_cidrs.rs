//! Pod CIDRs per node (IPAM), last: it needs valid ranges and node names.

use super::network::Net;
use super::nodes::Nodes;
use super::parse;
use crate::diag::{Code, Reporter};
use crate::ipam::{self, IpamLock, LockChange, PodCidrRequest};
use crate::scenario::model::Allocation;
use crate::scenario::raw::RawScenario;

pub(super) struct Ipam {
    pub alloc: Allocation,
    pub lock: IpamLock,
    pub changes: Vec<LockChange>,
}

pub(super) fn allocate(
    raw: &RawScenario,
    nodes: &Nodes,
    net: &Net,
    lock: Option<&IpamLock>,
    r: &mut Reporter<'_>,
) -> Option<Ipam> {
    let Some(c) = net.cluster_cidr.filter(|_| net.slicing_ok) else {
        if net.cluster_cidr.is_none()
            && r.is_invalid("network.clusterCIDR")
            && raw.nodes.iter().any(|n| n.pod_cidr.is_some())
        {
            r.not_checked(
                "network.clusterCIDR",
                "pinned pod CIDRs",
                "network.clusterCIDR",
            );
        }
        return None;
    };
    if !nodes.names_ok {
        r.not_checked("nodes", "pod CIDR allocation", "a node name");
        return None;
    }
    let mut requests = Vec::with_capacity(raw.nodes.len());
    let mut pins_ok = true;
    for (i, n) in raw.nodes.iter().enumerate() {
        let path = format!("nodes[{i}].podCIDR");
        let pin = match n.pod_cidr.as_deref() {
            _ if r.is_invalid(&path) => {
                pins_ok = false;
                None
            }
            Some(s) => {
                let p = parse::net(r, &path, s);
                pins_ok &= p.is_some();
                p
            }
            None => None,
        };
        requests.push(PodCidrRequest {
            name: n.name.as_deref().unwrap_or_default(),
            pin,
        });
    }
    if !pins_ok {
        return None;
    }
    match ipam::allocate(c, net.node_prefix, &requests, lock) {
        Ok(a) => {
            for w in &a.warnings {
                r.warn(
                    Code::PodCidr,
                    format!("nodes[{}].podCIDR", w.node),
                    w.message.clone(),
                    w.hint
                        .clone()
                        .unwrap_or_else(|| "remove the pin to keep the locked slice".into()),
                );
            }
            let (lock, changes) = ipam::update_lock(c, &requests, &a, lock);
            Some(Ipam {
                alloc: Allocation {
                    pod_cidrs: a.pod_cidrs,
                },
                lock,
                changes,
            })
        }
        Err(errs) => {
            for e in errs {
                r.error(
                    Code::PodCidr,
                    format!("nodes[{}].podCIDR", e.node),
                    e.message,
                    e.hint
                        .unwrap_or_else(|| format!("pick a /{} inside {c}", net.node_prefix)),
                );
            }
            None
        }
    }
}
