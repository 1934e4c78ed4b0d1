//! What-if faults, applied to a converged simulated cluster.
//!
//! Faults that change how a daemon was configured (docker's bridge and
//! masquerade, the pod MTU) apply before the test pods start, as they would
//! on a real node where the daemon was restarted that way; faults that damage
//! live state (a node down, a route deleted, `ip_forward` turned off, a rule
//! deleted, a firewall rule added) apply after, to the running cluster.

use crate::components::{docker_nat_rules, DOCKER0_ADDR};
use crate::netfilter::Position;
use crate::world::*;
use ipnet::IpNet;
use kscratch_core::net::iptables::{Rule, Table};
use kscratch_core::scenario::{Fault, PodTraffic, Scenario};

/// True for faults applied before pods start.
pub fn is_config_fault(f: &Fault) -> bool {
    matches!(
        f,
        Fault::Docker0Leftover { .. } | Fault::DockerIpMasq { .. } | Fault::OverlayMtu { .. }
    )
}

pub fn apply(world: &mut World, s: &Scenario, f: &Fault) -> Result<(), String> {
    let idx = |name: &str| {
        s.node_index(name)
            .ok_or_else(|| format!("fault {f}: no node `{name}`"))
    };
    match f {
        Fault::NodeDown { node } => world.nodes[idx(node)?].up = false,
        Fault::IpForwardOff { node } => {
            world.nodes[idx(node)?]
                .sysctls
                .insert("net.ipv4.ip_forward".into(), "0".into());
        }
        Fault::RouteMissing { node, to } => {
            let n = idx(node)?;
            if s.network.pod_traffic == PodTraffic::Fabric {
                // The route lives on the fabric router: the one to this node's pods goes.
                if world
                    .underlay
                    .fabric_routes
                    .remove(&s.pod_cidr(n))
                    .is_none()
                {
                    return Err(format!(
                        "fault {f}: the fabric router has no route to {node}'s pod CIDR"
                    ));
                }
                return Ok(());
            }
            let targets: Vec<usize> = match to {
                Some(t) => vec![idx(t)?],
                None => (0..s.nodes.len()).filter(|&m| m != n).collect(),
            };
            let mut any = false;
            for t in targets {
                any |= world.nodes[n].routes.remove(s.pod_cidr(t));
            }
            if !any {
                return Err(format!("fault {f}: {node} has no pod route to remove"));
            }
        }
        Fault::Docker0Leftover { node } => {
            let n = idx(node)?;
            let addr: IpNet = DOCKER0_ADDR.parse().expect("literal");
            let nd = &mut world.nodes[n];
            nd.links.insert(
                "docker0".into(),
                Link {
                    name: "docker0".into(),
                    kind: LinkKind::Bridge,
                    mtu: 1500,
                    up: true,
                    addrs: vec![addr],
                    master: None,
                },
            );
            crate::backend::add_connected(nd, "docker0", addr);
            nd.netfilter
                .ensure_chain(Table::Nat, "DOCKER")
                .map_err(|e| e.to_string())?;
            for r in docker_nat_rules("docker0", Some(addr.trunc()), true, true) {
                nd.netfilter
                    .ensure_rule(Table::Nat, r, Position::Append)
                    .map_err(|e| e.to_string())?;
            }
            // A docker daemon that kept its defaults puts its containers on docker0.
            if let Some(RuntimeState::Docker { bridge, .. }) = &mut nd.runtime {
                *bridge = "docker0".into();
            }
        }
        Fault::DockerIpMasq { node } => {
            let n = idx(node)?;
            let nd = &mut world.nodes[n];
            let Some(RuntimeState::Docker {
                bridge, ip_masq, ..
            }) = &mut nd.runtime
            else {
                return Err(format!("fault {f}: {node} does not run docker"));
            };
            *ip_masq = true;
            let bridge = bridge.clone();
            let subnet = nd
                .links
                .get(&bridge)
                .and_then(|l| l.addrs.first())
                .map(|a| a.trunc());
            for r in docker_nat_rules(&bridge, subnet, false, true) {
                nd.netfilter
                    .ensure_rule(Table::Nat, r, Position::Append)
                    .map_err(|e| e.to_string())?;
            }
        }
        Fault::MasqueradeMissing { node } => {
            let n = idx(node)?;
            let Some(rule) = kscratch_core::plan::masquerade_rule(s) else {
                return Err(format!("fault {f}: the scenario has no masquerade rule"));
            };
            if world.nodes[n].netfilter.delete(Table::Nat, &rule).is_err() {
                return Err(format!(
                    "fault {f}: {node} has no masquerade rule to delete"
                ));
            }
        }
        Fault::OverlayMtu { mtu } => {
            for nd in &mut world.nodes {
                let bridge = match &mut nd.runtime {
                    Some(RuntimeState::Cni(c)) => {
                        c.mtu = *mtu;
                        Some(c.bridge.clone())
                    }
                    Some(RuntimeState::Docker { bridge, mtu: m, .. }) => {
                        *m = *mtu;
                        Some(bridge.clone())
                    }
                    None => None,
                };
                for l in nd.links.values_mut() {
                    if Some(&l.name) == bridge.as_ref() || matches!(l.kind, LinkKind::Vxlan(_)) {
                        l.mtu = *mtu;
                    }
                }
            }
        }
        Fault::ApiserverFirewalled => {
            let n = s
                .nodes
                .iter()
                .position(|x| x.ip == s.master_ip)
                .ok_or("no node holds MASTER_IP")?;
            let port = s.security.model.apiserver_port();
            let rule = Rule::parse(&format!("-A INPUT -p tcp -m tcp --dport {port} -j DROP"))
                .expect("valid rule");
            world.nodes[n]
                .netfilter
                .ensure_rule(Table::Filter, rule, Position::Prepend)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
