//! The planner: a pure function from a validated scenario to a plan.
//!
//! It walks the guide in order, one module per [`Phase`]; this file only
//! orders them. Same scenario in, same steps out: iteration is over vectors
//! in scenario order, never over hash maps.

use super::builder::Builder;
use super::context::{Cluster, NodeCx};
use super::*;
use crate::scenario::Scenario;

pub use super::node_base::{
    bridge_mac, docker_default_rules, masquerade_rule, pod_network_entries, vtep_mac,
};

/// Turns a validated scenario into its plan.
pub fn plan(s: &Scenario) -> Plan {
    plan_removing(s, &[])
}

/// The plan of `s` applied over a cluster that also had the `departed`
/// nodes: [`plan`]'s steps, and the removal steps of each departed node
/// (its routes, FDB and neighbour entries on the remaining nodes, its etcd
/// membership and its Node object; see [`super::removal`]).
pub fn plan_removing(s: &Scenario, departed: &[Departed]) -> Plan {
    let mut b = Builder::new(s);
    let mut cx = Cluster::new(s);
    cx.pki = pki::cluster(&mut b, &cx);
    let artifacts = node_base::artifacts(s);
    node_base::fabric(&mut b, &cx);
    let rules = node_base::rules(s);

    // Per node, phase by phase; etcd members and control-plane nodes are
    // finished below, once every node is built.
    let mut agent_starts = Vec::new();
    let mut etcd_members = Vec::new();
    let mut control_planes = Vec::new();
    let mut pres = Vec::with_capacity(s.nodes.len());
    let mut etcd_targets = Vec::new();
    for i in 0..s.nodes.len() {
        let n = NodeCx::new(s, i);
        let pre = preflight::node(&mut b, &cx, &n);
        pres.push(pre);
        let bins = binaries::node(&mut b, &cx, &n, pre);
        let runtime = node_base::node(&mut b, &cx, &rules, &n, pre);
        let agents = node_agents::node(&mut b, &cx, &n, pre, &bins, runtime);
        agent_starts.extend([agents.kubelet, agents.kube_proxy]);
        if n.etcd {
            etcd_targets.push(n.t);
            etcd_members.push(etcd::member(&mut b, &cx, &n, pre, &bins, &agents));
        }
        if n.control_plane {
            control_planes.push(control_plane::files(&mut b, &cx, &n, &bins, &agents));
        }
    }

    // etcd health gates the control plane.
    let etcd_ok = etcd::wait_healthy(&mut b, etcd_members);
    let cp = control_plane::start(&mut b, &cx, control_planes, &etcd_ok);

    // Cluster-wide steps run on the first control-plane node.
    let t0 = Target::Node(
        s.control_plane_nodes()
            .next()
            .map(|(i, _)| i as u32)
            .unwrap_or(0),
    );
    let addons = addons::cluster(&mut b, &cx, t0, &cp.apiserver_ok);
    let members: Vec<(Target, StepRef)> = etcd_targets.into_iter().zip(etcd_ok.clone()).collect();
    removal::steps(
        &mut b,
        &cx,
        departed,
        &removal::Gates {
            pre: &pres,
            etcd_ok: &members,
            apiserver_ok: &cp.apiserver_ok,
            t0,
        },
    );

    let mut waits = agent_starts;
    waits.extend(cp.healthy);
    waits.extend(etcd_ok);
    waits.extend(addons);
    validate::cluster(&mut b, &cx, t0, waits);

    b.finish(artifacts, departed.iter().map(|d| d.name.clone()).collect())
}
