//! Raw spec → resolved model. Collects every problem; never panics.

use super::fault::Fault;
use super::model::*;
use super::raw::*;
use super::version::{self, KubeVersion};
use super::Loaded;
use crate::diag::{did_you_mean, Diagnostics, Reporter};
use crate::ipam::{self, IpamLock, PodCidrRequest};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub(super) fn validate(
    raw: &RawScenario,
    lock: Option<&IpamLock>,
    mut r: Reporter<'_>,
) -> Result<Loaded, Diagnostics> {
    // Version first: many checks depend on it.
    let version = match KubeVersion::parse(&raw.cluster.kubernetes_version) {
        Ok(v) if v.supported() => Some(v),
        Ok(v) => {
            r.error(
                "cluster.kubernetesVersion",
                format!("Kubernetes {v} is outside the supported range"),
                Some(format!(
                    "kscratch knows flags for {}.{} to {}.{}",
                    version::OLDEST.major,
                    version::OLDEST.minor,
                    version::NEWEST.major,
                    version::NEWEST.minor
                )),
            );
            None
        }
        Err(e) => {
            r.error(
                "cluster.kubernetesVersion",
                e,
                Some("write it as a string, e.g. \"1.29.4\"".into()),
            );
            None
        }
    };
    let v = version.unwrap_or(version::NEWEST);
    let feat = v.features();

    if !is_dns1123_label(&raw.cluster.name) {
        r.error(
            "cluster.name",
            format!("`{}` is not a DNS-1123 label", raw.cluster.name),
            Some("use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit".into()),
        );
    }

    // Nodes.
    if raw.nodes.is_empty() {
        r.error("nodes", "a cluster needs at least one node", None);
    }
    let single = raw.nodes.len() == 1;
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ips: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut nodes = Vec::with_capacity(raw.nodes.len());
    for (i, n) in raw.nodes.iter().enumerate() {
        let p = format!("nodes[{i}]");
        if !is_dns1123_subdomain(&n.name) {
            r.error(
                format!("{p}.name"),
                format!("`{}` is not a valid node name", n.name),
                Some(
                    "node names are DNS-1123 subdomains: lowercase letters, digits, '-' and '.'"
                        .into(),
                ),
            );
        }
        if let Some(first) = names.insert(&n.name, i) {
            r.error(
                format!("{p}.name"),
                format!("duplicate node name `{}` (also nodes[{first}])", n.name),
                None,
            );
            names.insert(&raw.nodes[first].name, first);
        }
        let ip = parse_ip(&mut r, &format!("{p}.ip"), &n.ip);
        if let Some(ip) = ip {
            if let Some(first) = ips.insert(ip, i) {
                r.error(
                    format!("{p}.ip"),
                    format!("duplicate node IP {ip} (also nodes[{first}].ip)"),
                    None,
                );
                ips.insert(ip, first);
            }
        }
        let roles = match &n.roles {
            Some(list) => {
                if list.is_empty() {
                    r.error(
                        format!("{p}.roles"),
                        "a node needs at least one role",
                        Some("control-plane, etcd, worker".into()),
                    );
                }
                Roles {
                    control_plane: list.contains(&RawRole::ControlPlane),
                    etcd: list.contains(&RawRole::Etcd),
                    worker: list.contains(&RawRole::Worker),
                }
            }
            None if single => Roles {
                control_plane: true,
                etcd: true,
                worker: true,
            },
            None => Roles {
                worker: true,
                ..Roles::default()
            },
        };
        if n.ssh.port == Some(0) {
            r.error(
                format!("{p}.ssh.port"),
                "port 0 is not a valid SSH port",
                None,
            );
        }
        let user = n.ssh.user.clone().unwrap_or_else(|| "root".into());
        nodes.push(Node {
            name: n.name.clone(),
            ip: ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            roles,
            ssh: Ssh {
                sudo: n.ssh.sudo.unwrap_or(user != "root"),
                user,
                port: n.ssh.port.unwrap_or(22),
                key: n.ssh.key.clone(),
            },
        });
    }

    // Network ranges.
    let net = &raw.network;
    let node_cidr = net
        .node_cidr
        .as_deref()
        .and_then(|s| parse_net(&mut r, "network.nodeCIDR", s));
    let cluster_cidr = parse_net(
        &mut r,
        "network.clusterCIDR",
        net.cluster_cidr.as_deref().unwrap_or("10.10.0.0/16"),
    );
    let service_cidr = parse_net(
        &mut r,
        "network.serviceCIDR",
        net.service_cidr.as_deref().unwrap_or("10.0.0.0/16"),
    );
    let node_prefix = net.node_prefix.unwrap_or(24);
    let max_pods = net.max_pods.unwrap_or(110);

    let ranges = [
        ("network.clusterCIDR", cluster_cidr),
        ("network.serviceCIDR", service_cidr),
        ("network.nodeCIDR", node_cidr),
    ];
    for (a, (pa, na)) in ranges.iter().enumerate() {
        for (pb, nb) in ranges.iter().skip(a + 1) {
            if let (Some(x), Some(y)) = (na, nb) {
                if overlaps(x, y) {
                    r.error(*pb, format!("{y} overlaps {pa} {x}"), Some("pod, service and node ranges must be disjoint: routing cannot tell them apart".into()));
                }
            }
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if raw.nodes[i].ip.parse::<IpAddr>().is_err() {
            continue;
        }
        if let Some(c) = node_cidr {
            if !c.contains(&n.ip) {
                r.error(
                    format!("nodes[{i}].ip"),
                    format!("{} is outside network.nodeCIDR {c}", n.ip),
                    None,
                );
            }
        }
        for (path, range) in [
            ("network.clusterCIDR", cluster_cidr),
            ("network.serviceCIDR", service_cidr),
        ] {
            if let Some(c) = range {
                if c.contains(&n.ip) {
                    r.error(
                        format!("nodes[{i}].ip"),
                        format!("node IP {} is inside {path} {c}", n.ip),
                        Some("node addresses must not come from the pod or service ranges".into()),
                    );
                }
            }
        }
    }

    if let Some(c) = cluster_cidr {
        let max = c.max_prefix_len();
        if node_prefix < c.prefix_len() || node_prefix > max {
            r.error(
                "network.nodePrefix",
                format!("/{node_prefix} cannot slice cluster CIDR {c}"),
                Some(format!(
                    "use a prefix between /{} and /{}",
                    c.prefix_len(),
                    max.saturating_sub(2)
                )),
            );
        } else {
            let slots = ipam::slot_count(c, node_prefix);
            if slots < nodes.len() as u128 {
                r.error(
                    "network.clusterCIDR",
                    format!("{c} holds {slots} node slices of /{node_prefix}, but the scenario has {} nodes", nodes.len()),
                    Some(format!("widen the cluster CIDR to /{} or use a longer network.nodePrefix", needed_prefix(nodes.len(), node_prefix))),
                );
            }
            let usable = ipam::pods_per_slice(max, node_prefix);
            if (max_pods as u128) > usable {
                r.error(
                    "network.nodePrefix",
                    format!("a /{node_prefix} slice holds {usable} pods (network, broadcast and the bridge address take 3), less than maxPods {max_pods}"),
                    Some(format!("use network.nodePrefix /{} or lower network.maxPods", prefix_for_pods(max_pods, max))),
                );
            }
        }
    }
    if max_pods == 0 {
        r.error("network.maxPods", "maxPods must be at least 1", None);
    }

    // Service range and the addresses carved from it.
    let mut kubernetes_ip = None;
    let mut dns_ip = None;
    if let Some(s) = service_cidr {
        let host_bits = s.max_prefix_len() - s.prefix_len();
        if host_bits < 2 {
            r.error("network.serviceCIDR", format!("{s} is too small: it needs room for the `kubernetes` Service and the DNS Service"), Some("use at least a /28; a /16 is common".into()));
        } else if s.max_prefix_len() == 32 && host_bits > 20 {
            // kube-apiserver: "specified service-cluster-ip-range is too large; for 32-bit addresses, the mask must be >= 12".
            r.error(
                "network.serviceCIDR",
                format!("{s} is too large: the apiserver accepts at most a /12 for IPv4"),
                Some("use a /12 or smaller, e.g. 10.0.0.0/16".into()),
            );
        } else {
            let k = ipam::nth_host(s, 1);
            kubernetes_ip = Some(k);
            let dns_default = ipam::nth_host(s, 10.min((1u128 << host_bits.min(100)) - 2));
            let d = match net.dns.ip.as_deref() {
                Some(t) => parse_ip(&mut r, "network.dns.ip", t),
                None => Some(dns_default),
            };
            if let Some(d) = d {
                if !s.contains(&d) {
                    r.error(
                        "network.dns.ip",
                        format!("DNS IP {d} is outside the service CIDR {s}"),
                        Some(format!("pick an address inside {s}, e.g. {dns_default}")),
                    );
                } else if d == k {
                    r.error("network.dns.ip", format!("{d} is the first address of {s}, which belongs to the `kubernetes` Service"), Some(format!("use another address, e.g. {dns_default}")));
                } else if d == s.network() || d == s.broadcast() {
                    r.error(
                        "network.dns.ip",
                        format!("{d} is the network or broadcast address of {s}"),
                        Some(format!("use e.g. {dns_default}")),
                    );
                }
                dns_ip = Some(d);
            }
        }
    }
    let dns_domain = net
        .dns
        .domain
        .clone()
        .unwrap_or_else(|| "cluster.local".into());
    if !dns_domain.split('.').all(is_dns1123_label) {
        r.error(
            "network.dns.domain",
            format!("`{dns_domain}` is not a DNS domain"),
            Some("e.g. cluster.local".into()),
        );
    }

    // Pod traffic and MTUs.
    let underlay_mtu = net.underlay_mtu.unwrap_or(1500);
    if !(576..=9216).contains(&underlay_mtu) {
        r.error(
            "network.underlayMTU",
            format!("MTU {underlay_mtu} is out of range"),
            Some("Ethernet MTUs are between 576 and 9216; 1500 is usual".into()),
        );
    }
    let mode = net.pod_traffic.unwrap_or(RawPodTraffic::Routed);
    let gateway = net
        .gateway
        .as_deref()
        .and_then(|g| parse_ip(&mut r, "network.gateway", g));
    if let Some(g) = gateway {
        if let Some(i) = nodes.iter().position(|n| n.ip == g) {
            r.error(
                "network.gateway",
                format!("{g} is the address of node `{}`", nodes[i].name),
                Some("the gateway is the underlay's router, not one of the nodes".into()),
            );
        }
        if let Some(c) = node_cidr.filter(|c| !c.contains(&g)) {
            r.error(
                "network.gateway",
                format!("{g} is outside network.nodeCIDR {c}"),
                Some("a default gateway must be on the nodes' own network".into()),
            );
        }
        for (path, range) in [
            ("network.clusterCIDR", cluster_cidr),
            ("network.serviceCIDR", service_cidr),
        ] {
            if let Some(c) = range.filter(|c| c.contains(&g)) {
                r.error(
                    "network.gateway",
                    format!("{g} is inside {path} {c}"),
                    Some("the gateway is an underlay address".into()),
                );
            }
        }
    } else if mode == RawPodTraffic::Fabric {
        r.error(
            "network.podTraffic",
            "`fabric` pod traffic needs network.gateway: the router that holds the pod routes",
            Some("add `gateway: <the underlay router's IP>` under network".into()),
        );
    }
    let pod_traffic = match mode {
        RawPodTraffic::Routed => PodTraffic::Routed,
        RawPodTraffic::Fabric => PodTraffic::Fabric,
        RawPodTraffic::External => PodTraffic::External,
        RawPodTraffic::Vxlan => {
            let x = net.vxlan.clone().unwrap_or_default();
            let vni = x.vni.unwrap_or(1);
            if vni == 0 || vni >= 1 << 24 {
                r.error(
                    "network.vxlan.vni",
                    format!("VNI {vni} is out of range"),
                    Some("a VXLAN network identifier is 1..16777215".into()),
                );
            }
            PodTraffic::Vxlan(Vxlan {
                vni,
                port: x.port.unwrap_or(4789),
                device: x.device.unwrap_or_else(|| "vxlan0".into()),
            })
        }
    };
    if mode != RawPodTraffic::Vxlan && net.vxlan.is_some() {
        r.error(
            "network.vxlan",
            "vxlan settings are given but network.podTraffic is not `vxlan`",
            Some("set network.podTraffic: vxlan, or remove network.vxlan".into()),
        );
    }
    let default_pod_mtu = if mode == RawPodTraffic::Vxlan {
        underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
    } else {
        underlay_mtu
    };
    let pod_mtu = net
        .vxlan
        .as_ref()
        .and_then(|x| x.mtu)
        .or(raw.runtime.mtu)
        .unwrap_or(default_pod_mtu);
    if pod_mtu > default_pod_mtu {
        let path = if net.vxlan.as_ref().and_then(|x| x.mtu).is_some() {
            "network.vxlan.mtu"
        } else {
            "runtime.mtu"
        };
        // A warning, not an error: `kscratch check` proves the consequence with a trace.
        r.warn(
            path,
            format!(
                "pod MTU {pod_mtu} is larger than the {default_pod_mtu} bytes the underlay carries"
            ),
            Some(format!(
                "VXLAN adds {VXLAN_OVERHEAD} bytes; use {default_pod_mtu} or less"
            )),
        );
    }
    if pod_mtu < 576 {
        r.error(
            "runtime.mtu",
            format!("pod MTU {pod_mtu} is too small"),
            None,
        );
    }
    let bridge = net.bridge.clone().unwrap_or_else(|| "cbr0".into());
    let interface = net.interface.clone().unwrap_or_else(|| "eth0".into());
    for (path, name) in [
        ("network.bridge", &bridge),
        ("network.interface", &interface),
    ] {
        if !is_ifname(name) {
            r.error(
                path,
                format!("`{name}` is not a valid Linux interface name"),
                Some("1 to 15 characters, no '/', ':' or whitespace".into()),
            );
        }
    }

    // Control plane.
    let cps: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.roles.control_plane)
        .map(|(i, _)| i)
        .collect();
    if cps.is_empty() && !nodes.is_empty() {
        r.error(
            "nodes",
            "no node has the control-plane role",
            Some("add `roles: [control-plane, etcd]` to the master node".into()),
        );
    }
    let master_ip = match raw.cluster.master_ip.as_deref() {
        Some(t) => parse_ip(&mut r, "cluster.masterIP", t).inspect(|ip| {
            if !cps.is_empty() && !cps.iter().any(|&i| nodes[i].ip == *ip) {
                let list: Vec<String> = cps
                    .iter()
                    .map(|&i| format!("{} ({})", nodes[i].ip, nodes[i].name))
                    .collect();
                r.error(
                    "cluster.masterIP",
                    format!("{ip} is not the IP of a control-plane node"),
                    Some(format!("control-plane nodes: {}", list.join(", "))),
                );
            }
        }),
        None => cps.first().map(|&i| nodes[i].ip),
    };

    // Security.
    let model = match raw.security.model.unwrap_or(RawSecurityModel::Https) {
        RawSecurityModel::Https => SecurityModel::Https,
        RawSecurityModel::HttpFirewall => SecurityModel::HttpFirewall,
    };
    let basic_auth = raw.security.basic_auth.unwrap_or(false);
    let insecure_port = raw
        .security
        .insecure_port
        .unwrap_or(model == SecurityModel::HttpFirewall);
    if version.is_some() {
        if basic_auth && !feat.basic_auth {
            r.error(
                "security.basicAuth",
                format!("--basic-auth-file was removed in Kubernetes 1.19; this scenario is {v}"),
                Some("use client certificates or tokens".into()),
            );
        }
        if model == SecurityModel::HttpFirewall && !feat.insecure_serving {
            r.error("security.model", format!("http-firewall needs the apiserver's insecure port, disabled in Kubernetes 1.20 (flags removed in 1.24); this scenario is {v}"), Some("use `model: https`".into()));
        } else if insecure_port && !feat.insecure_serving {
            r.error(
                "security.insecurePort",
                format!("insecure serving was disabled in Kubernetes 1.20; this scenario is {v}"),
                Some("remove security.insecurePort".into()),
            );
        }
    }
    if model == SecurityModel::HttpFirewall && !raw.security.extra_sans.is_empty() {
        r.warn(
            "security.extraSANs",
            "extra SANs are unused without https",
            None,
        );
    }
    for (i, san) in raw.security.extra_sans.iter().enumerate() {
        if san.parse::<IpAddr>().is_err() && !san.split('.').all(is_dns1123_label) {
            r.error(
                format!("security.extraSANs[{i}]"),
                format!("`{san}` is neither an IP address nor a DNS name"),
                None,
            );
        }
    }

    // Container runtime.
    let kind = raw.runtime.kind.unwrap_or(if feat.dockershim {
        RawRuntimeKind::Docker
    } else {
        RawRuntimeKind::Containerd
    });
    let runtime = match kind {
        RawRuntimeKind::Docker => {
            if version.is_some() && !feat.dockershim {
                r.error("runtime.kind", format!("dockershim was removed from the kubelet in Kubernetes 1.24; this scenario is {v}"), Some("use `kind: containerd`".into()));
            }
            let ip_masq = raw.runtime.ip_masq.unwrap_or(false);
            if ip_masq && mode != RawPodTraffic::External {
                r.warn("runtime.ipMasq", "docker --ip-masq=true rewrites pod source addresses leaving the bridge, including pod-to-pod traffic across nodes", Some("the guide sets --ip-masq=false when pod IPs are routable".into()));
            }
            Runtime::Docker(DockerOptions {
                ip_masq,
                iptables: raw.runtime.iptables.unwrap_or(false),
                nofile: raw.runtime.nofile.unwrap_or(1_000_000),
                insecure_registry: raw.runtime.insecure_registry.clone(),
            })
        }
        RawRuntimeKind::Containerd => {
            if version.is_some() && !feat.containerd_cri {
                r.error("runtime.kind", format!("the kubelet talks CRI to containerd from Kubernetes 1.10 (containerd 1.1's CRI plugin); this scenario is {v}"), Some("use `kind: docker`".into()));
            }
            for (path, set) in [
                ("runtime.ipMasq", raw.runtime.ip_masq.is_some()),
                ("runtime.iptables", raw.runtime.iptables.is_some()),
                ("runtime.nofile", raw.runtime.nofile.is_some()),
                (
                    "runtime.insecureRegistry",
                    raw.runtime.insecure_registry.is_some(),
                ),
            ] {
                if set {
                    r.error(
                        path,
                        "this is a docker option, but runtime.kind is containerd",
                        Some("remove it, or set runtime.kind: docker".into()),
                    );
                }
            }
            Runtime::Containerd
        }
    };

    // etcd.
    let members: Vec<usize> = match &raw.etcd.members {
        Some(list) => {
            let mut out = Vec::new();
            for (i, m) in list.iter().enumerate() {
                match nodes.iter().position(|n| &n.name == m) {
                    Some(idx) if out.contains(&idx) => r.error(
                        format!("etcd.members[{i}]"),
                        format!("`{m}` is listed twice"),
                        None,
                    ),
                    Some(idx) => out.push(idx),
                    None => {
                        let hint = did_you_mean(m, nodes.iter().map(|n| n.name.as_str()))
                            .map(|s| format!("did you mean `{s}`?"));
                        r.error(
                            format!("etcd.members[{i}]"),
                            format!("etcd member `{m}` is not a node of this scenario"),
                            hint,
                        );
                    }
                }
            }
            for (i, n) in nodes.iter().enumerate() {
                if n.roles.etcd && !out.contains(&i) {
                    r.error(
                        format!("nodes[{i}].roles"),
                        format!(
                            "node `{}` has the etcd role but is not in etcd.members",
                            n.name
                        ),
                        Some("add it to etcd.members or drop the role".into()),
                    );
                }
            }
            out
        }
        None => {
            let with_role: Vec<usize> = nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.roles.etcd)
                .map(|(i, _)| i)
                .collect();
            if with_role.is_empty() {
                cps.first().copied().into_iter().collect()
            } else {
                with_role
            }
        }
    };
    for &m in &members {
        nodes[m].roles.etcd = true;
    }
    // Count what the user listed: a typo'd member is still a member they meant.
    let count = raw.etcd.members.as_ref().map_or(members.len(), Vec::len);
    if count > 0 && count.is_multiple_of(2) {
        r.error("etcd.members", format!("{count} etcd members: an even count tolerates no more failures than {} and makes a split vote possible", count - 1), Some(format!("use {} or {} members", count - 1, count + 1)));
    } else if count > 5 {
        r.error(
            "etcd.members",
            format!("{count} etcd members is too many: every write waits for a majority"),
            Some("the guide recommends 3 or 5".into()),
        );
    }
    let durable = raw.etcd.durable.unwrap_or(true);
    if !durable && count == 1 {
        r.warn(
            "etcd.durable",
            "a single etcd member on non-durable storage loses the cluster state with the machine",
            Some("the guide: run 3 or 5 members when storage is not durable".into()),
        );
    }
    let etcd = Etcd {
        members,
        data_dir: raw
            .etcd
            .data_dir
            .clone()
            .unwrap_or_else(|| "/var/lib/etcd".into()),
        durable,
        image: raw
            .images
            .etcd
            .clone()
            .unwrap_or_else(|| default_etcd_image(v)),
        run_as: match raw.etcd.run_as {
            Some(RawEtcdRunAs::Service) => EtcdRunAs::Service,
            _ => EtcdRunAs::StaticPod,
        },
    };
    if !etcd.data_dir.starts_with('/') {
        r.error(
            "etcd.dataDir",
            format!("`{}` is not an absolute path", etcd.data_dir),
            None,
        );
    }

    // Cloud provider.
    let cloud = raw.cloud_provider.as_ref().map(|c| {
        match version::CLOUD_PROVIDERS.iter().find(|(n, _)| *n == c.name) {
            None => {
                let hint = did_you_mean(&c.name, version::CLOUD_PROVIDERS.iter().map(|(n, _)| *n)).map(|s| format!("did you mean `{s}`?")).or_else(|| Some("omit cloudProvider for bare metal".into()));
                r.error("cloudProvider.name", format!("unknown cloud provider `{}`", c.name), hint);
            }
            Some((name, Some(removed))) if version.is_some() && v >= *removed => {
                r.error("cloudProvider.name", format!("the in-tree `{name}` cloud provider was removed in Kubernetes {}.{}; this scenario is {v}", removed.major, removed.minor), Some("use `external` with the provider's cloud-controller-manager".into()));
            }
            Some((name, _)) => {
                if c.config.is_none() && ["aws", "gce", "openstack", "ovirt"].contains(name) {
                    r.warn("cloudProvider", format!("`{name}` usually needs a config file (--cloud-config)"), Some("set cloudProvider.config".into()));
                }
            }
        }
        CloudProvider { name: c.name.clone(), config: c.config.clone() }
    });

    // Images.
    let hyperkube = raw
        .images
        .hyperkube
        .unwrap_or(feat.hyperkube && matches!(runtime, Runtime::Docker(_)));
    if hyperkube && version.is_some() && !feat.hyperkube {
        r.error(
            "images.hyperkube",
            format!(
                "hyperkube images were last published for Kubernetes 1.18; this scenario is {v}"
            ),
            Some("remove images.hyperkube: the per-component images are used".into()),
        );
    }
    let registry = raw
        .images
        .registry
        .clone()
        .unwrap_or_else(|| default_registry(v).into());
    let images = Images {
        hyperkube_image: hyperkube.then(|| format!("{registry}/hyperkube:v{v}")),
        registry,
        hyperkube,
    };

    // Host requirements (core/data/host.tsv): cgroup v2 from 1.35 unless
    // the scenario says failCgroupV1: false, explicitly and with a warning.
    match raw.kubelet.fail_cgroup_v1 {
        Some(_) if version.is_some() && v.minor < 31 => r.error(
            "kubelet.failCgroupV1",
            format!("failCgroupV1 arrived in the KubeletConfiguration in Kubernetes 1.31 (KEP-4569); this scenario is {v}"),
            Some("remove it: older kubelets run on cgroup v1".into()),
        ),
        Some(false) if v.minor >= 35 => r.warn(
            "kubelet.failCgroupV1",
            format!("Kubernetes {v} no longer supports cgroup v1 (KEP-5573): with failCgroupV1: false its kubelet starts on a cgroup v1 host, and preflight skips the cgroup v2 check"),
            Some("move the nodes to cgroup v2 and drop this setting".into()),
        ),
        None if version.is_some() && v.minor >= 35 => r.warn(
            "cluster.kubernetesVersion",
            format!("the kubelet of Kubernetes {v} refuses to start on cgroup v1 hosts (failCgroupV1 defaults to true, KEP-5573): preflight requires cgroup v2 on every node; the real-kernel testbed runs no kubelet and does not prove it"),
            Some("on cgroup v1 hosts, set kubelet.failCgroupV1: false (unsupported upstream)".into()),
        ),
        _ => {}
    }

    let admission_plugins = raw.admission_plugins.clone().unwrap_or_else(|| {
        version::recommended_admission_plugins(v)
            .into_iter()
            .map(String::from)
            .collect()
    });

    let mut faults = Vec::new();
    for (i, f) in raw.faults.iter().enumerate() {
        match Fault::parse(f) {
            Ok(fault) => {
                for n in fault.nodes() {
                    if !nodes.iter().any(|x| x.name == n) {
                        let hint = did_you_mean(n, nodes.iter().map(|x| x.name.as_str()))
                            .map(|s| format!("did you mean `{s}`?"));
                        r.error(
                            format!("faults[{i}]"),
                            format!("fault names node `{n}`, which is not in the scenario"),
                            hint,
                        );
                    }
                }
                faults.push(fault);
            }
            Err(e) => r.error(format!("faults[{i}]"), e, None),
        }
    }

    // IPAM last: it needs valid ranges and node names.
    let mut alloc = None;
    let mut new_lock = IpamLock::default();
    let mut lock_changes = Vec::new();
    if let Some(c) = cluster_cidr.filter(|_| !r.has_errors()) {
        let mut requests = Vec::with_capacity(nodes.len());
        for (i, n) in raw.nodes.iter().enumerate() {
            let pin = n
                .pod_cidr
                .as_deref()
                .and_then(|s| parse_net(&mut r, &format!("nodes[{i}].podCIDR"), s));
            requests.push(PodCidrRequest { name: &n.name, pin });
        }
        match ipam::allocate(c, node_prefix, &requests, lock) {
            Ok(a) => {
                for w in &a.warnings {
                    r.warn(
                        format!("nodes[{}].podCIDR", w.node),
                        w.message.clone(),
                        None,
                    );
                }
                (new_lock, lock_changes) = ipam::update_lock(c, &requests, &a, lock);
                alloc = Some(Allocation {
                    pod_cidrs: a.pod_cidrs,
                });
            }
            Err(errs) => {
                for e in errs {
                    r.error(format!("nodes[{}].podCIDR", e.node), e.message, e.hint);
                }
            }
        }
    }

    match (
        r.has_errors(),
        version,
        master_ip,
        cluster_cidr,
        service_cidr,
        kubernetes_ip,
        dns_ip,
        alloc,
    ) {
        (
            false,
            Some(version),
            Some(master_ip),
            Some(cluster_cidr),
            Some(service_cidr),
            Some(kubernetes_service_ip),
            Some(dns_ip),
            Some(alloc),
        ) => {
            let scenario = Scenario {
                name: raw.cluster.name.clone(),
                version,
                master_ip,
                nodes,
                network: Network {
                    node_cidr,
                    cluster_cidr,
                    node_prefix,
                    max_pods,
                    service_cidr,
                    kubernetes_service_ip,
                    dns_ip,
                    dns_domain,
                    pod_traffic,
                    masquerade: net.masquerade.unwrap_or(true),
                    underlay_mtu,
                    pod_mtu,
                    bridge,
                    interface,
                    gateway,
                },
                security: Security {
                    model,
                    extra_sans: raw.security.extra_sans.clone(),
                    basic_auth,
                    insecure_port,
                    allow_privileged: raw.security.allow_privileged.unwrap_or(true),
                },
                runtime,
                etcd,
                cloud,
                addons: Addons {
                    dns: raw.addons.dns.unwrap_or(true),
                },
                admission_plugins,
                images,
                binaries_dir: raw
                    .binaries
                    .dir
                    .clone()
                    .unwrap_or_else(|| "kubernetes/server/bin".into()),
                kubelet: KubeletOptions {
                    fail_cgroup_v1: raw.kubelet.fail_cgroup_v1,
                },
                faults,
                alloc,
            };
            Ok(Loaded {
                scenario,
                warnings: r.finish(),
                lock: new_lock,
                lock_changes,
            })
        }
        _ => {
            if !r.has_errors() {
                // Every None above comes with an error; this is a guard, not a path.
                r.error("", "the scenario could not be resolved", None);
            }
            Err(r.finish())
        }
    }
}

fn parse_ip(r: &mut Reporter<'_>, path: &str, s: &str) -> Option<IpAddr> {
    match s.trim().parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => {
            r.error(
                path,
                format!("{s} is an IPv6 address; kscratch plans IPv4 clusters only for now"),
                None,
            );
            None
        }
        Ok(ip) => Some(ip),
        Err(_) => {
            let hint = if s.contains('/') {
                Some("this is an address, not a CIDR: drop the /prefix".to_string())
            } else {
                None
            };
            r.error(path, format!("`{s}` is not an IP address"), hint);
            None
        }
    }
}

fn parse_net(r: &mut Reporter<'_>, path: &str, s: &str) -> Option<IpNet> {
    match s.trim().parse::<IpNet>() {
        Ok(IpNet::V6(_)) => {
            r.error(
                path,
                format!("{s} is an IPv6 range; kscratch plans IPv4 clusters only for now"),
                None,
            );
            None
        }
        Ok(n) if n.trunc() != n => {
            r.error(
                path,
                format!("{s} has host bits set"),
                Some(format!("did you mean {}?", n.trunc())),
            );
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            r.error(
                path,
                format!("`{s}` is not a CIDR"),
                Some("write it as ADDRESS/PREFIX, e.g. 10.10.0.0/16".into()),
            );
            None
        }
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The prefix a cluster CIDR needs to hold `nodes` slices of `/node_prefix`.
fn needed_prefix(nodes: usize, node_prefix: u8) -> u8 {
    let bits = (usize::BITS - nodes.saturating_sub(1).leading_zeros()) as u8;
    node_prefix.saturating_sub(bits)
}

fn prefix_for_pods(pods: u32, max: u8) -> u8 {
    (2..=max)
        .rev()
        .find(|p| ipam::pods_per_slice(max, *p) >= pods as u128)
        .unwrap_or(0)
}

fn default_registry(v: KubeVersion) -> &'static str {
    crate::release::default_registry(v)
}

fn default_etcd_image(v: KubeVersion) -> String {
    // The etcd kubeadm shipped with the release (core/data/images.tsv).
    let tag = &crate::release::release_images(v.minor).etcd;
    format!("{}/etcd:{tag}", default_registry(v))
}

pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && !s.contains(['/', ':'])
        && !s.chars().any(char::is_whitespace)
        && s != "."
        && s != ".."
}
