//! After the plan: what a running cluster does by itself before anyone
//! checks it. The kubelet starts test pods through the node's container
//! runtime (CNI `bridge` + `host-local`, or docker's bridge), the apiserver
//! holds the Services, and every running kube-proxy that can reach its
//! apiserver programs their iptables rules with the settings it read from
//! its own files.
//!
//! What a real cluster gets from its API comes in through one typed input,
//! [`ApiObjects`]; everything else is read from the nodes: the `kubernetes`
//! Service's address from the apiserver's `--service-cluster-ip-range` and its
//! endpoints from the running apiservers' flags, kube-proxy's cluster CIDR
//! from its config file.

use crate::components;
use crate::kube_proxy::KubeProxyConfig;
use crate::netfilter::Position;
use crate::packet::Proto;
use crate::world::*;
use ipnet::IpNet;
use kscratch_core::net::iptables::{Rule, Table};
use kscratch_core::plan::{Action, Artifact, Asset, Plan};
use kscratch_core::render::{self as r, Argv};
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Test pods per node (the checks need two to tell a pod from its node).
pub const PODS_PER_NODE: usize = 2;
/// Test pods listen here (any port works; this one is what Services target).
pub const POD_PORT: u16 = 8080;
/// How many nodes' pods the `kscratch/probe` Service selects at most.
pub const PROBE_SERVICE_NODES: usize = 64;

/// What the cluster's API holds beyond what the nodes' files say: the
/// objects a real cluster gets through `kubectl apply` and its controllers.
/// This is the simulator's one input besides the plan's steps; nothing in
/// [`prepare`] reads the scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiObjects {
    /// Pods that every node's kubelet is asked to run (a DaemonSet), by name.
    pub node_pods: Vec<String>,
    /// The DNS addon's objects, when the plan applies it: its Deployment's
    /// pod (scheduled on the first node that runs pods) and its `kube-dns`
    /// Service, which asks for this cluster IP.
    pub dns: Option<IpAddr>,
    /// Whether the DNS addon's `kubectl apply` succeeded. When it did not,
    /// its Service is still expected by the checks but exists nowhere.
    pub dns_applied: bool,
    /// Synthetic Services added to the test ones (scale runs).
    pub extra_services: usize,
    /// The Service range the plan configured. Only used to list the
    /// expected Services when no apiserver's `--service-cluster-ip-range`
    /// can be read (then nothing programs them and their checks fail,
    /// rather than pass with nothing to check).
    pub planned_service_range: Option<IpNet>,
}

impl ApiObjects {
    /// The objects of a `kscratch check` run: the test pods, and what the
    /// plan applied through the apiserver (`applied`, from the simulated
    /// executor). The DNS Service's address is the one the plan rendered
    /// into the addon manifest (its Service plan artifact).
    pub fn for_check(plan: &Plan, applied: &BTreeSet<Asset>, extra_services: usize) -> ApiObjects {
        let service_plan = plan.artifacts.iter().find_map(|a| match a {
            Artifact::ServicePlan(p) => Some(p),
            _ => None,
        });
        let applies_dns = plan.steps.iter().any(|st| {
            matches!(
                st.action,
                Action::ApplyManifest {
                    asset: Asset::DnsAddon,
                    ..
                }
            )
        });
        let dns = service_plan.filter(|_| applies_dns).map(|p| p.dns_ip);
        ApiObjects {
            node_pods: (0..PODS_PER_NODE)
                .map(|k| format!("probe-{}", (b'a' + k as u8) as char))
                .collect(),
            dns,
            dns_applied: applied.contains(&Asset::DnsAddon),
            extra_services,
            planned_service_range: service_plan.map(|p| p.service_cidr),
        }
    }
}

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
    /// Every Service the checks expect, including any the apiserver refused.
    pub services: Vec<ServiceDef>,
    /// Nodes where test pods could not be started, with the reason.
    pub no_pods: Vec<(String, String)>,
    /// Nodes whose kube-proxy programmed no rules, with the reason.
    pub no_proxy: Vec<(String, String)>,
    /// Services the apiserver refused (`ns/name:port`, why): no kube-proxy
    /// programs them, so their checks fail.
    pub refused: Vec<(String, String)>,
}

/// Starts the API's pods, creates its Services and lets every kube-proxy
/// program them.
pub fn prepare(world: &mut World, api: &ApiObjects) -> Prepared {
    let mut out = Prepared::default();
    for n in 0..world.nodes.len() {
        for name in &api.node_pods {
            if let Err(e) = start_pod(world, n, name) {
                out.no_pods.push((world.nodes[n].name.clone(), e));
                break;
            }
        }
    }
    let apiserver = first_healthy_apiserver(world);
    let mut dns_pod = None;
    if apiserver.is_ok() && api.dns.is_some() && api.dns_applied {
        // The DNS addon's Deployment lands on the first node that can run pods.
        if let Some(n) = (0..world.nodes.len()).find(|&n| world.pods.iter().any(|p| p.node == n)) {
            if start_pod(world, n, "coredns").is_ok() {
                dns_pod = Some(world.pods.len() - 1);
            }
        }
    }
    let range = match components::service_range(world) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            out.refused.push(("*".into(), e));
            None
        }
        None => None,
    };
    out.services = match range.or(api.planned_service_range) {
        Some(range) => services(world, api, range, dns_pod),
        None => vec![],
    };
    for svc in &out.services {
        if svc.name == "kube-dns" && !api.dns_applied {
            out.refused.push((
                svc.key(),
                "the DNS addon was not applied (its kubectl apply step did not succeed)".into(),
            ));
        } else if let Some(range) = range {
            if !range.contains(&svc.cluster_ip) {
                out.refused.push((
                    svc.key(),
                    format!("spec.clusterIPs: Invalid value: \"{}\": provided IP is not in the valid range. The range of valid IPs is {range}", svc.cluster_ip),
                ));
            }
        }
    }
    let created: Vec<ServiceDef> = out
        .services
        .iter()
        .filter(|s| !out.refused.iter().any(|(k, _)| *k == s.key()))
        .cloned()
        .collect();
    // kube-proxy's rules depend only on its settings: one rule set per
    // distinct configuration, shared by the nodes that have it.
    let mut programmed: Vec<(
        KubeProxyConfig,
        Result<crate::kube_proxy::KubeProxyRules, String>,
    )> = Vec::new();
    for n in 0..world.nodes.len() {
        let node = &world.nodes[n];
        let why = if !node.up {
            Some("the node is down".to_string())
        } else if !node.running("kube-proxy") {
            Some("kube-proxy is not running".to_string())
        } else {
            match &node.kube_proxy {
                None => Some("kube-proxy read no configuration".to_string()),
                Some(k) => match components::apiserver_at(world, n, &k.server) {
                    Err(e) => Some(format!("kube-proxy cannot list Services: {e}")),
                    Ok(_) => None,
                },
            }
        };
        if let Some(w) = why {
            out.no_proxy.push((node.name.clone(), w));
            continue;
        }
        let config = node
            .kube_proxy
            .as_ref()
            .expect("checked above")
            .config
            .clone();
        let k = match programmed.iter().position(|(c, _)| *c == config) {
            Some(k) => k,
            None => {
                let rules = kube_proxy_rules_for(&created, &config);
                programmed.push((config, rules));
                programmed.len() - 1
            }
        };
        match &programmed[k].1 {
            Ok(rules) => {
                if let Err(e) = rules.install(&mut world.nodes[n].netfilter) {
                    out.no_proxy.push((
                        world.nodes[n].name.clone(),
                        format!("kube-proxy: iptables-restore failed: {e}"),
                    ));
                }
            }
            Err(e) => out.no_proxy.push((world.nodes[n].name.clone(), e.clone())),
        }
    }
    out
}

/// The first node whose apiserver is healthy: where controllers and the
/// scheduler find the API.
fn first_healthy_apiserver(world: &World) -> Result<usize, String> {
    (0..world.nodes.len())
        .find(|&i| {
            world.nodes[i].up
                && world.nodes[i].static_pods.contains_key("kube-apiserver")
                && components::apiserver_health(world, i).is_ok()
        })
        .ok_or_else(|| "no apiserver is healthy".to_string())
}

/// The apiserver endpoint a running apiserver registers for the
/// `kubernetes` Service: `--advertise-address` (else the node's address)
/// and `--secure-port` (else 6443).
fn apiserver_endpoint(n: &Node) -> Option<(IpAddr, u16)> {
    let pod = n.static_pods.get("kube-apiserver")?;
    let text = crate::files::read(n, &pod.manifest).ok()?;
    let argv = Argv::parse(&r::static_pod_command(text).ok()?.argv).ok()?;
    let ip = argv
        .parsed::<IpAddr>("advertise-address")
        .ok()
        .flatten()
        .unwrap_or(n.ip);
    let port = argv
        .parsed::<u16>("secure-port")
        .ok()
        .flatten()
        .unwrap_or(6443);
    Some((ip, port))
}

/// The `kubernetes` Service's endpoints after apiservers stopped or
/// started gracefully: with the lease reconciler (1.11+) a stopping
/// apiserver deletes its lease and its endpoint, and a starting one adds
/// them back; with the master-count reconciler an endpoint stays until
/// `--apiserver-count` apiservers overwrite it, so nothing is removed.
/// Returns whether the endpoints changed.
pub fn register_apiservers(world: &World, prepared: &mut Prepared, lease: bool) -> bool {
    let running: Vec<(IpAddr, u16)> = world
        .nodes
        .iter()
        .filter(|n| n.up)
        .filter_map(apiserver_endpoint)
        .collect();
    let Some(svc) = prepared
        .services
        .iter_mut()
        .find(|d| d.namespace == "default" && d.name == "kubernetes")
    else {
        return false;
    };
    let mut eps = running;
    if !lease {
        for e in &svc.endpoints {
            if !eps.contains(e) {
                eps.push(*e);
            }
        }
        eps.sort();
    }
    let changed = eps != svc.endpoints;
    svc.endpoints = eps;
    changed
}

fn services(
    world: &World,
    api: &ApiObjects,
    range: IpNet,
    dns_pod: Option<PodId>,
) -> Vec<ServiceDef> {
    // The apiserver gives `kubernetes` the range's first address.
    let kubernetes_ip = kscratch_core::ipam::nth_host(range, 1);
    let svc = range;
    let mut used: BTreeSet<IpAddr> = [kubernetes_ip].into();
    used.extend(api.dns);
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
    let apiserver_eps: Vec<(IpAddr, u16)> =
        world.nodes.iter().filter_map(apiserver_endpoint).collect();
    v.push(ServiceDef {
        namespace: "default".into(),
        name: "kubernetes".into(),
        cluster_ip: kubernetes_ip,
        port: 443,
        proto: Proto::Tcp,
        endpoints: apiserver_eps,
    });
    if let Some(dns_ip) = api.dns {
        let eps: Vec<(IpAddr, u16)> = dns_pod
            .map(|p| (world.pods[p].ip, 53))
            .into_iter()
            .collect();
        v.push(ServiceDef {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            cluster_ip: dns_ip,
            port: 53,
            proto: Proto::Udp,
            endpoints: eps.clone(),
        });
        v.push(ServiceDef {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            cluster_ip: dns_ip,
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
    for i in 0..api.extra_services {
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
fn start_pod(world: &mut World, n: NodeId, name: &str) -> Result<(), String> {
    let node = &world.nodes[n];
    if !node.up {
        return Err("the node is down".into());
    }
    if !node.running("kubelet") {
        return Err("kubelet is not running".into());
    }
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
    bridge_add_host_side(node, &bridge, subnet, gateway, mtu, sets_forward)?;
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

/// What every CNI ADD of the `bridge` plugin does on the host, whichever
/// pod it is for: it creates the bridge if needed and, as gateway
/// (`isGateway`), gives it the gateway address and turns on
/// `net.ipv4.ip_forward` (upstream containernetworking/plugins bridge.go,
/// `cmdAdd`: `ensureAddr` then `enableIPForward` on every ADD, not only the
/// first). So a pod start heals `ip_forward=0` and a lost bridge address.
fn bridge_add_host_side(
    node: &mut Node,
    bridge: &str,
    subnet: IpNet,
    gateway: IpAddr,
    mtu: u32,
    is_gateway: bool,
) -> Result<(), String> {
    let link = node
        .links
        .entry(bridge.to_string())
        .or_insert_with(|| Link {
            name: bridge.to_string(),
            kind: LinkKind::Bridge,
            mtu,
            up: true,
            addrs: vec![],
            master: None,
        });
    let gw_net = IpNet::new(gateway, subnet.prefix_len()).map_err(|e| e.to_string())?;
    let mut added = false;
    if is_gateway && !link.addrs.contains(&gw_net) {
        link.addrs.push(gw_net);
        added = true;
    }
    if added {
        crate::backend::add_connected(node, bridge, gw_net);
    }
    if is_gateway {
        node.sysctls
            .insert("net.ipv4.ip_forward".into(), "1".into());
    }
    Ok(())
}

/// The host side of pods attached with the node's own CNI config after
/// everything else (kscratch verify's probes are such CNI ADDs, made after
/// any damage): [`bridge_add_host_side`] on node `n`, when it runs
/// containerd with a CNI bridge config. The pods themselves are not added:
/// the simulator's test pods stand for them.
pub fn cni_add_on(world: &mut World, n: NodeId) -> Result<(), String> {
    let node = &mut world.nodes[n];
    let Some(RuntimeState::Cni(c)) = node.runtime.clone().filter(|_| node.up) else {
        return Ok(());
    };
    bridge_add_host_side(node, &c.bridge, c.subnet, c.gateway, c.mtu, c.is_gateway)
}

/// What a kube-proxy with the default settings and this cluster CIDR
/// programs for these Services (the testbed loads exactly these rules).
pub fn kube_proxy_rules(
    services: &[ServiceDef],
    cluster_cidr: IpNet,
) -> Result<crate::kube_proxy::KubeProxyRules, String> {
    kube_proxy_rules_for(
        services,
        &KubeProxyConfig {
            cluster_cidr: Some(cluster_cidr),
            ..KubeProxyConfig::default()
        },
    )
}

/// What a kube-proxy with these settings programs for these Services.
pub fn kube_proxy_rules_for(
    services: &[ServiceDef],
    cfg: &KubeProxyConfig,
) -> Result<crate::kube_proxy::KubeProxyRules, String> {
    use crate::kube_proxy::{
        sync, ClusterService, Endpoint, EndpointsMap, ServicePort, ServicePortName,
    };
    let mut svcs: Vec<ClusterService> = Vec::new();
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
                svcs.push(ClusterService {
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
    sync(cfg, &svcs, &eps).map_err(|e| format!("kube-proxy: {e}"))
}
