//! The control plane: which nodes run it, and `cluster.masterIP`.

use super::parse;
use crate::diag::{Code, Reporter};
use crate::scenario::model::Node;
use crate::scenario::raw::RawScenario;
use std::net::IpAddr;

/// Indices of the control-plane nodes; an error when there is none.
pub(super) fn nodes(nodes: &[Node], r: &mut Reporter<'_>) -> Vec<usize> {
    let cps: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.roles.control_plane)
        .map(|(i, _)| i)
        .collect();
    if cps.is_empty() && !nodes.is_empty() {
        r.error(
            Code::ControlPlane,
            "nodes",
            "no node has the control-plane role",
            "add `roles: [control-plane, etcd]` to the master node",
        );
    }
    cps
}

/// `MASTER_IP`: the given one, which must be a control-plane node's, or the first control-plane node's.
pub(super) fn master_ip(
    raw: &RawScenario,
    nodes: &[Node],
    cps: &[usize],
    r: &mut Reporter<'_>,
) -> Option<IpAddr> {
    const PATH: &str = "cluster.masterIP";
    match raw.cluster.master_ip.as_deref() {
        _ if r.is_invalid(PATH) => None,
        Some(t) => parse::ip(r, PATH, t).inspect(|ip| {
            if !cps.is_empty() && !cps.iter().any(|&i| nodes[i].ip == *ip) {
                let list: Vec<String> = cps
                    .iter()
                    .map(|&i| format!("{} ({})", nodes[i].ip, nodes[i].name))
                    .collect();
                r.error(
                    Code::ControlPlane,
                    PATH,
                    format!("{ip} is not the IP of a control-plane node"),
                    format!("control-plane nodes: {}", list.join(", ")),
                );
            }
        }),
        None => cps.first().map(|&i| nodes[i].ip),
    }
}
