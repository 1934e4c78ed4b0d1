//! Node base: the container runtime, the pod bridge, pod routes, masquerade,
//! sysctls and housekeeping. Also the data all nodes share (the pod network
//! table and the Service plan) and the fabric's routes.

use super::builder::Builder;
use super::context::{Cluster, NetRules, NodeCx};
use super::*;
use crate::net::iptables::{Rule, Table};
use crate::net::route::MacAddr;
use crate::scenario::{PodTraffic, Runtime, Scenario};
use std::net::IpAddr;

/// Every node's entry of the pod network table: its pod CIDR, bridge
/// address and (for VXLAN) VTEP MAC. The plan's artifact and each node's
/// boot-time network description are made from this one list.
pub fn pod_network_entries(s: &Scenario) -> Vec<PodNetworkEntry> {
    let vxlan = s.vxlan().is_some();
    s.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| PodNetworkEntry {
            node: n.name.clone(),
            node_ip: n.ip,
            pod_cidr: s.pod_cidr(i),
            bridge_addr: IpNet::new(s.bridge_addr(i), s.pod_cidr(i).prefix_len())
                .expect("prefix from a valid CIDR"),
            vtep_mac: vxlan.then(|| vtep_mac(n.ip)),
        })
        .collect()
}

/// One pod network table and one Service plan for all nodes.
pub(super) fn artifacts(s: &Scenario) -> Vec<Artifact> {
    vec![
        Artifact::PodNetwork(pod_network_entries(s)),
        Artifact::ServicePlan(ServicePlan {
            service_cidr: s.network.service_cidr,
            kubernetes_ip: s.network.kubernetes_service_ip,
            dns_ip: s.network.dns_ip,
            dns_domain: s.network.dns_domain.clone(),
        }),
    ]
}

/// `fabric` pod traffic: the underlay router holds every node's pod route.
pub(super) fn fabric(b: &mut Builder<'_>, cx: &Cluster<'_>) {
    if cx.s.network.pod_traffic == PodTraffic::Fabric {
        b.push(
            Target::Fabric,
            "net/fabric-routes",
            Phase::NodeBase,
            Action::InstallFabricRoutes {
                artifact: ArtifactId::PodNetwork,
            },
            &[],
        );
    }
}

pub(super) fn rules(s: &Scenario) -> NetRules {
    NetRules {
        docker_leftovers: docker_default_rules(),
        masquerade: masquerade_rule(s),
    }
}

/// The node's base; returns the started container runtime, which the agents need.
pub(super) fn node(
    b: &mut Builder<'_>,
    cx: &Cluster<'_>,
    rules: &NetRules,
    n: &NodeCx<'_>,
    pre: StepRef,
) -> StepRef {
    let s = cx.s;
    let t = n.t;
    let mut base = Vec::new();
    if let Runtime::Docker(_) = s.runtime {
        // The guide: remove a docker0 and nat rules left by an earlier docker.
        // Only docker's own rules go, not the whole nat table, so a re-apply keeps ours.
        base.push(b.push(
            t,
            "net/remove-docker0",
            Phase::NodeBase,
            Action::DeleteLink {
                name: "docker0".into(),
            },
            &[pre],
        ));
        base.push(b.push(
            t,
            "net/remove-docker-nat",
            Phase::NodeBase,
            Action::DeleteIptablesRules {
                table: Table::Nat,
                rules: rules.docker_leftovers.clone(),
                chains: vec!["DOCKER".into()],
            },
            &[pre],
        ));
    }
    let brnf = b.push(
        t,
        "kernel/br_netfilter",
        Phase::NodeBase,
        Action::LoadKernelModule {
            name: "br_netfilter",
        },
        &[pre],
    );
    base.push(b.push(
        t,
        "sysctl/ip_forward",
        Phase::NodeBase,
        Action::SetSysctl {
            key: "net.ipv4.ip_forward",
            value: "1",
        },
        &[pre],
    ));
    // kube-proxy's Service rules must see bridged pod-to-pod traffic.
    base.push(b.push(
        t,
        "sysctl/bridge-nf-call-iptables",
        Phase::NodeBase,
        Action::SetSysctl {
            key: "net.bridge.bridge-nf-call-iptables",
            value: "1",
        },
        &[brnf],
    ));
    let bridge = b.push(
        t,
        "net/bridge",
        Phase::NodeBase,
        Action::CreateBridge {
            name: s.network.bridge.clone(),
            addr: n.bridge_addr,
            mtu: s.network.pod_mtu,
        },
        &base,
    );
    base.push(bridge);
    pod_routes(b, cx, n, pre, &mut base);
    if let Some(rule) = &rules.masquerade {
        base.push(b.push(
            t,
            "net/masquerade",
            Phase::NodeBase,
            Action::EnsureIptablesRule {
                table: Table::Nat,
                rule: rule.clone(),
            },
            &[pre],
        ));
    }
    b.write(t, Phase::NodeBase, Asset::LogRotate, &[pre]);
    // The same network at every boot: `kscratch-network` re-applies the
    // description (render/network.rs). Run once here, after the steps it
    // repeats, it changes nothing; the runtime starts after it.
    let files: Vec<StepRef> = [
        Asset::NetworkDescription,
        Asset::NetworkUp,
        Asset::Unit(Service::Network),
    ]
    .into_iter()
    .map(|f| b.write(t, Phase::NodeBase, f, &[pre]))
    .collect();
    let mut deps = base.clone();
    deps.extend(files);
    base.push(b.start(t, Phase::NodeBase, Service::Network, &deps));
    runtime(b, cx, n, pre, base)
}

/// Routes to the other nodes' pods, over the underlay or the overlay.
fn pod_routes(
    b: &mut Builder<'_>,
    cx: &Cluster<'_>,
    n: &NodeCx<'_>,
    pre: StepRef,
    base: &mut Vec<StepRef>,
) {
    let s = cx.s;
    let t = n.t;
    match &s.network.pod_traffic {
        PodTraffic::Routed => base.push(b.push(
            t,
            "net/pod-routes",
            Phase::NodeBase,
            Action::InstallPodRoutes {
                artifact: ArtifactId::PodNetwork,
                via: PodRouteVia::Underlay {
                    dev: s.network.interface.clone(),
                },
            },
            &[pre],
        )),
        PodTraffic::Vxlan(v) => {
            let dev = VxlanDevice {
                name: v.device.clone(),
                vni: v.vni,
                port: v.port,
                local: n.node.ip,
                dev: s.network.interface.clone(),
                mtu: s.network.pod_mtu,
                mac: vtep_mac(n.node.ip),
                addr: IpNet::new(n.pod_cidr.network(), n.pod_cidr.max_prefix_len())
                    .expect("host prefix"),
            };
            let vxr = b.push(
                t,
                "net/vxlan",
                Phase::NodeBase,
                Action::CreateVxlan(Box::new(dev)),
                &[pre],
            );
            base.push(b.push(
                t,
                "net/pod-routes",
                Phase::NodeBase,
                Action::InstallPodRoutes {
                    artifact: ArtifactId::PodNetwork,
                    via: PodRouteVia::Overlay {
                        dev: v.device.clone(),
                    },
                },
                &[vxr],
            ));
        }
        PodTraffic::Fabric | PodTraffic::External => {}
    }
}

/// The container runtime's files and its start, after the whole base.
fn runtime(
    b: &mut Builder<'_>,
    cx: &Cluster<'_>,
    n: &NodeCx<'_>,
    pre: StepRef,
    mut deps: Vec<StepRef>,
) -> StepRef {
    let t = n.t;
    let (files, service): (&[Asset], Service) = match cx.s.runtime {
        // docker's packaged unit does not read DOCKER_OPTS: a drop-in makes it.
        Runtime::Docker(_) => (
            &[Asset::DockerDefaults, Asset::Unit(Service::Docker)],
            Service::Docker,
        ),
        Runtime::Containerd => (
            &[Asset::ContainerdConfig, Asset::CniConfig],
            Service::Containerd,
        ),
    };
    for &f in files {
        deps.push(b.write(t, Phase::NodeBase, f, &[pre]));
    }
    b.start(t, Phase::NodeBase, service, &deps)
}

/// The guide's masquerade rule: `-A POSTROUTING ! -d CLUSTER_SUBNET -m addrtype ! --dst-type LOCAL -j MASQUERADE`.
pub fn masquerade_rule(s: &Scenario) -> Option<Rule> {
    s.network.masquerade.then(|| {
        Rule::parse(&format!(
            "-A POSTROUTING ! -d {} -m addrtype ! --dst-type LOCAL -j MASQUERADE",
            s.network.cluster_cidr
        ))
        .expect("the masquerade rule is valid iptables-save text")
    })
}

/// The nat rules a default docker daemon installs for `docker0` (172.17.0.0/16).
pub fn docker_default_rules() -> Vec<Rule> {
    [
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
        "-A DOCKER -i docker0 -j RETURN",
    ]
    .iter()
    .map(|r| Rule::parse(r).expect("docker's rules are valid iptables-save text"))
    .collect()
}

/// The MAC `cbr0` is given: 0a:58 + the last four octets of its address,
/// the locally administered prefix the CNI plugins use for addresses they
/// derive from an IP. A bridge whose MAC was never set follows the lowest
/// MAC of its ports and becomes 00:00:00:00:00:00 when the last port leaves,
/// so every pod start or stop could change the gateway MAC that the other
/// pods have cached; a set MAC stays (the kernel's `addr_assign_type` 3).
pub fn bridge_mac(addr: IpAddr) -> MacAddr {
    let o = match addr {
        IpAddr::V4(v) => v.octets(),
        IpAddr::V6(v) => {
            let o = v.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]])
}

/// A stable, locally administered MAC for a node's VTEP: 0e + the IPv4 address + 00.
pub fn vtep_mac(ip: IpAddr) -> MacAddr {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            MacAddr([0x0e, o[0], o[1], o[2], o[3], 0x00])
        }
        IpAddr::V6(v) => {
            let o = v.octets();
            MacAddr([0x0e, o[12], o[13], o[14], o[15], 0x01])
        }
    }
}
