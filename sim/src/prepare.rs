//! After the plan: what a running cluster does by itself before anyone
//! checks it. The kubelet starts test pods through the node's container
//! runtime (CNI `bridge` + `host-local`, or docker's bridge), the apiserver
//! holds test Services, and every running kube-proxy that can reach the
//! apiserver programs their iptables rules.

use crate::components;
use crate::netfilter::Position;
use crate::packet::Proto;
use crate::world::*;
use ipnet::IpNet;
use kscratch_core::net::iptables::{Rule, Table};
use kscratch_core::scenario::Scenario;
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Test pods per node (the checks need two to tell a pod from its node).
pub const PODS_PER_NODE: usize = 2;
/// Test pods listen here (any port works; this one is what Services target).
pub const POD_PORT: u16 = 8080;
/// How many nodes' pods the `kscratch/probe` Service selects at most.
pub const PROBE_SERVICE_NODES: usize = 64;

/// A Service as the checks know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceDef {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub endpoints: Vec<(IpAddr, u16)>,
}

impl ServiceDef {
    pub fn key(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// What `prepare` did, for the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Prepared {
    pub services: Vec<ServiceDef>,
    /// Nodes where test pods could not be started, with the reason.
    pub no_pods: Vec<(String, String)>,
    /// Nodes whose kube-proxy programmed no rules, with the reason.
    pub no_proxy: Vec<(String, String)>,
}

/// Starts test pods, creates test Services and lets kube-proxy program them.
/// `extra_services` adds that many synthetic Services (for scale runs).
pub fn prepare(world: &mut World, s: &Scenario, extra_services: usize) -> Prepared {
    let mut out = Prepared::default();
    for n in 0..world.nodes.len() {
        for k in 0..PODS_PER_NODE {
            let name = format!("probe-{}", (b'a' + k as u8) as char);
            if let Err(e) = start_pod(world, s, n, &name) {
                out.no_pods.push((world.nodes[n].name.clone(), e));
                break;
            }
        }
    }
    let apiserver = components::require_apiserver(world, s);
    let mut dns_pod = None;
    // The apiserver's admission: without a service-account signing key the
    // ServiceAccount plugin rejects the DNS addon's pods (not the probe pods,
    // which the test starts through the runtime, like static pods).
    let admission = apiserver
        .is_ok()
        .then(|| components::service_account_admission(world, s))
        .flatten();
    if let Some(e) = &admission {
        out.no_pods
            .push(("the DNS addon (kube-system)".into(), e.clone()));
    }
    if apiserver.is_ok() && admission.is_none() && world.nodes.iter().any(|_| true) {
        // The DNS addon's Deployment lands on the first node that can run pods.
        if let Some(n) = (0..world.nodes.len()).find(|&n| world.pods.iter().any(|p| p.node == n)) {
            if start_pod(world, s, n, "coredns").is_ok() {
                dns_pod = Some(world.pods.len() - 1);
            }
        }
    }
    out.services = services(world, s, dns_pod, extra_services);
    let programmed = kube_proxy_rules(&out.services, s.network.cluster_cidr);
    for n in 0..world.nodes.len() {
        let node = &world.nodes[n];
        let why = if !node.up {
            Some("the node is down".to_string())
        } else if !node.running("kube-proxy") {
            Some("kube-proxy is not running".to_string())
        } else if let Err(e) = &apiserver {
            Some(format!("kube-proxy cannot list Services: {e}"))
        } else {
            None
        };
        match why {
            Some(w) => out.no_proxy.push((node.name.clone(), w)),
            None => match &programmed {
                Ok(rules) => {
                    if let Err(e) = rules.install(&mut world.nodes[n].netfilter) {
                        out.no_proxy.push((
                            world.nodes[n].name.clone(),
                            format!("kube-proxy: iptables-restore failed: {e}"),
                        ));
                    }
                }
                Err(e) => out.no_proxy.push((world.nodes[n].name.clone(), e.clone())),
            },
        }
    }
    out
}

fn services(world: &World, s: &Scenario, dns_pod: Option<PodId>, extra: usize) -> Vec<ServiceDef> {
    let svc = s.network.service_cidr;
    let mut used: BTreeSet<IpAddr> = [s.network.kubernetes_service_ip, s.network.dns_ip].into();
    let mut next = 100u128;
    let mut vip = || loop {
        let ip = kscratch_core::ipam::nth_host(svc, next);
        next += 1;
        if svc.contains(&ip) && ip != svc.broadcast() && used.insert(ip) {
            return ip;
        }
        if !svc.contains(&ip) {
            return ip;
        }
    };
    let mut v = Vec::new();
    let apiserver_eps: Vec<(IpAddr, u16)> = s
        .control_plane_nodes()
        .filter_map(|(i, n)| {
            world.nodes[i]
                .listeners
                .iter()
                .find(|(k, l)| l.process == "kube-apiserver" && k.1 != 8080)
                .map(|(k, _)| (n.ip, k.1))
        })
        .collect();
    v.push(ServiceDef {
        namespace: "default".into(),
        name: "kubernetes".into(),
        cluster_ip: s.network.kubernetes_service_ip,
        port: 443,
        proto: Proto::Tcp,
        endpoints: apiserver_eps,
    });
    if s.addons.dns {
        let eps: Vec<(IpAddr, u16)> = dns_pod
            .map(|p| (world.pods[p].ip, 53))
            .into_iter()
            .collect();
        v.push(ServiceDef {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            cluster_ip: s.network.dns_ip,
            port: 53,
            proto: Proto::Udp,
            endpoints: eps.clone(),
        });
        v.push(ServiceDef {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            cluster_ip: s.network.dns_ip,
            port: 53,
            proto: Proto::Tcp,
            endpoints: eps,
        });
    }
    // The probe Service selects `probe-a` on up to PROBE_SERVICE_NODES nodes
    // spread evenly over the cluster (all of them in clusters that small).
    // Its check proves the VIP machinery — DNAT to every endpoint over every
    // statistic branch, hairpin, conntrack — while pod reachability between
    // every pair of nodes is the pod-to-pod check's job. Exploring a
    // statistic chain costs the square of its length, so a 5,000-endpoint
    // chain would cost seconds to prove nothing new.
    let all: Vec<(IpAddr, u16)> = world
        .pods
        .iter()
        .filter(|p| p.name == "probe-a")
        .map(|p| (p.ip, POD_PORT))
        .collect();
    let stride = all.len().div_ceil(PROBE_SERVICE_NODES).max(1);
    let probes: Vec<(IpAddr, u16)> = all.iter().step_by(stride).copied().collect();
    v.push(ServiceDef {
        namespace: "kscratch".into(),
        name: "probe".into(),
        cluster_ip: vip(),
        port: 80,
        proto: Proto::Tcp,
        endpoints: probes.clone(),
    });
    v.push(ServiceDef {
        namespace: "kscratch".into(),
        name: "empty".into(),
        cluster_ip: vip(),
        port: 80,
        proto: Proto::Tcp,
        endpoints: vec![],
    });
    for i in 0..extra {
        let eps = if probes.is_empty() {
            vec![]
        } else {
            (0..3).map(|k| probes[(i * 3 + k) % probes.len()]).collect()
        };
        v.push(ServiceDef {
            namespace: "scale".into(),
            name: format!("svc-{i}"),
            cluster_ip: vip(),
            port: 80,
            proto: Proto::Tcp,
            endpoints: eps,
        });
    }
    v
}

/// The kubelet asks the runtime for a pod sandbox with networking.
fn start_pod(world: &mut World, s: &Scenario, n: NodeId, name: &str) -> Result<(), String> {
    let node = &world.nodes[n];
    if !node.up {
        return Err("the node is down".into());
    }
    if !node.running("kubelet") {
        return Err("kubelet is not running".into());
    }
    let _ = s;
    let (bridge, subnet, gateway, mtu, ip_masq, sets_forward) = match &node.runtime {
        Some(RuntimeState::Cni(c)) => (
            c.bridge.clone(),
            c.subnet,
            c.gateway,
            c.mtu,
            c.ip_masq,
            c.is_gateway,
        ),
        Some(RuntimeState::Docker { bridge, mtu, .. }) => {
            let addr = node
                .links
                .get(bridge)
                .and_then(|l| l.addrs.first())
                .copied()
                .ok_or_else(|| format!("docker bridge {bridge} has no address"))?;
            (
                bridge.clone(),
                addr.trunc(),
                addr.addr(),
                *mtu,
                false,
                false,
            )
        }
        None => return Err("no container runtime is running".into()),
    };
    // host-local / docker IPAM: the lowest free address after the gateway.
    let taken: BTreeSet<IpAddr> = world.nodes[n]
        .pods
        .iter()
        .map(|&p| world.pods[p].ip)
        .collect();
    let mut k = 2u128;
    let ip = loop {
        let ip = kscratch_core::ipam::nth_host(subnet, k);
        if !subnet.contains(&ip) || ip == subnet.broadcast() {
            return Err(format!("no free address in {subnet}"));
        }
        if ip != gateway && !taken.contains(&ip) {
            break ip;
        }
        k += 1;
    };
    let pod_id = world.pods.len();
    let veth = format!("veth{pod_id:04x}");
    let node = &mut world.nodes[n];
    // The CNI bridge plugin creates the bridge if needed and, as gateway,
    // gives it the gateway address and turns on ip_forward.
    let link = node.links.entry(bridge.clone()).or_insert_with(|| Link {
        name: bridge.clone(),
        kind: LinkKind::Bridge,
        mtu,
        up: true,
        addrs: vec![],
        master: None,
    });
    let gw_net = IpNet::new(gateway, subnet.prefix_len()).map_err(|e| e.to_string())?;
    let mut added = false;
    if sets_forward && !link.addrs.contains(&gw_net) {
        link.addrs.push(gw_net);
        added = true;
    }
    if added {
        crate::backend::add_connected(node, &bridge, gw_net);
    }
    if sets_forward {
        node.sysctls
            .insert("net.ipv4.ip_forward".into(), "1".into());
    }
    node.links.insert(
        veth.clone(),
        Link {
            name: veth.clone(),
            kind: LinkKind::Veth { pod: pod_id },
            mtu,
            up: true,
            addrs: vec![],
            master: Some(bridge.clone()),
        },
    );
    if ip_masq {
        // The bridge plugin's ipMasq: masquerade the pod's traffic leaving its subnet.
        let chain = "CNI-KSCRATCH";
        let r = |t: String| Rule::parse(&t).expect("valid rule text");
        let nf = &mut node.netfilter;
        nf.ensure_chain(Table::Nat, chain)
            .map_err(|e| e.to_string())?;
        for rule in [
            format!("-A {chain} -d {subnet} -j ACCEPT"),
            format!("-A {chain} ! -d 224.0.0.0/4 -j MASQUERADE"),
            format!("-A POSTROUTING -s {ip}/32 -j {chain}"),
        ] {
            nf.ensure_rule(Table::Nat, r(rule), Position::Append)
                .map_err(|e| e.to_string())?;
        }
    }
    world.nodes[n].pods.push(pod_id);
    world.pods.push(Pod {
        name: name.into(),
        node: n,
        ip,
        prefix: subnet.prefix_len(),
        gateway,
        mtu,
        bridge,
        host_veth: veth,
        host_network: false,
    });
    world.owners.insert(ip, Owner::Pod(pod_id));
    Ok(())
}

/// What kube-proxy programs for these Services (the same on every node).
pub fn kube_proxy_rules(
    services: &[ServiceDef],
    cluster_cidr: IpNet,
) -> Result<crate::kube_proxy::KubeProxyRules, String> {
    use crate::kube_proxy::{
        sync, Endpoint, EndpointsMap, KubeProxyConfig, Service, ServicePort, ServicePortName,
    };
    let mut svcs: Vec<Service> = Vec::new();
    let mut index: std::collections::BTreeMap<(&str, &str), usize> =
        std::collections::BTreeMap::new();
    let mut eps: EndpointsMap = EndpointsMap::new();
    for d in services {
        // One Service object per (namespace, name); each port named by protocol and number.
        let port_name = format!("{}-{}", d.proto.name(), d.port);
        let port = ServicePort {
            name: port_name.clone(),
            protocol: d.proto,
            port: d.port,
            node_port: None,
        };
        match index.get(&(d.namespace.as_str(), d.name.as_str())) {
            Some(&k) => svcs[k].ports.push(port),
            None => {
                index.insert((d.namespace.as_str(), d.name.as_str()), svcs.len());
                svcs.push(Service {
                    namespace: d.namespace.clone(),
                    name: d.name.clone(),
                    cluster_ip: d.cluster_ip,
                    ports: vec![port],
                });
            }
        }
        let list = d
            .endpoints
            .iter()
            .map(|(ip, p)| Endpoint {
                ip: *ip,
                port: *p,
                node: String::new(),
            })
            .collect();
        eps.insert(
            ServicePortName::new(&d.namespace, &d.name, &port_name),
            list,
        );
    }
    let cfg = KubeProxyConfig {
        cluster_cidr: Some(cluster_cidr),
        ..KubeProxyConfig::default()
    };
    sync(&cfg, &svcs, &eps).map_err(|e| format!("kube-proxy: {e}"))
}
