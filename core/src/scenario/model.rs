//! The resolved scenario: validated, defaults applied, addresses allocated.
//! Only this model is planned.

use super::fault::Fault;
use super::version::KubeVersion;
use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    /// `CLUSTER_NAME`: a DNS-1123 label.
    pub name: String,
    pub version: KubeVersion,
    /// `MASTER_IP`: the address every node uses to reach the apiserver,
    /// unless the scenario declares a [`ControlPlaneEndpoint`].
    pub master_ip: IpAddr,
    /// `cluster.controlPlaneEndpoint`: where node agents and kubeconfigs
    /// reach the apiserver instead of one node's `MASTER_IP`.
    pub control_plane_endpoint: Option<ControlPlaneEndpoint>,
    pub nodes: Vec<Node>,
    pub network: Network,
    pub security: Security,
    pub runtime: Runtime,
    pub etcd: Etcd,
    pub cloud: Option<CloudProvider>,
    pub addons: Addons,
    pub admission_plugins: Vec<String>,
    pub images: Images,
    /// The guide's `kubernetes/server/bin` on the operator's machine.
    pub binaries_dir: String,
    pub kubelet: KubeletOptions,
    pub faults: Vec<Fault>,
    pub alloc: Allocation,
}

/// `cluster.controlPlaneEndpoint`: an address or DNS name with a port that
/// survives losing a control-plane node. A loopback address means the
/// local proxy on every node (kubespray's localhost load balancer): kscratch
/// installs an haproxy there that balances over every apiserver with health
/// checks. Any other address or name is a load balancer or VIP the operator
/// provides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlPlaneEndpoint {
    pub host: EndpointHost,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointHost {
    Ip(IpAddr),
    Name(String),
}

impl ControlPlaneEndpoint {
    /// The local proxy's port when the endpoint is a loopback address.
    pub fn local_proxy_port(&self) -> Option<u16> {
        match self.host {
            EndpointHost::Ip(ip) if ip.is_loopback() => Some(self.port),
            _ => None,
        }
    }
    /// The host as a URL writes it.
    pub fn host_text(&self) -> String {
        match &self.host {
            EndpointHost::Ip(ip) => ip.to_string(),
            EndpointHost::Name(n) => n.clone(),
        }
    }
}

impl std::fmt::Display for ControlPlaneEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host_text(), self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    pub roles: Roles,
    pub ssh: Ssh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Roles {
    pub control_plane: bool,
    pub etcd: bool,
    pub worker: bool,
}

impl Roles {
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.control_plane {
            v.push("control-plane");
        }
        if self.etcd {
            v.push("etcd");
        }
        if self.worker {
            v.push("worker");
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ssh {
    pub user: String,
    pub port: u16,
    /// Private key path; None means ssh-agent.
    pub key: Option<String>,
    pub sudo: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Network {
    /// The underlay the nodes live on, when the scenario names it.
    pub node_cidr: Option<IpNet>,
    /// `CLUSTER_SUBNET`: every pod IP comes from here.
    pub cluster_cidr: IpNet,
    /// Prefix length of each node's slice (`NODE_X_POD_CIDR`).
    pub node_prefix: u8,
    pub max_pods: u32,
    /// `SERVICE_CLUSTER_IP_RANGE`.
    pub service_cidr: IpNet,
    /// First address of the service range: the `kubernetes` Service.
    pub kubernetes_service_ip: IpAddr,
    pub dns_ip: IpAddr,
    pub dns_domain: String,
    pub pod_traffic: PodTraffic,
    /// The guide's `iptables -t nat -A POSTROUTING ! -d CLUSTER_SUBNET -m addrtype ! --dst-type LOCAL -j MASQUERADE`.
    pub masquerade: bool,
    pub underlay_mtu: u32,
    /// MTU of the bridge and the pod interfaces.
    pub pod_mtu: u32,
    pub bridge: String,
    /// The node's underlay interface (routes and vxlan use it).
    pub interface: String,
    /// The underlay's default gateway, when the machines have one: every node
    /// came with `default via GATEWAY dev IFACE`, and in `fabric` mode it is
    /// the router holding the pod routes. None: the nodes have no default
    /// route (nothing outside the underlay is reachable).
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum PodTraffic {
    /// Every node holds a route to every other node's pod CIDR via that node's IP.
    Routed,
    /// The underlay router (cloud route table) holds the routes: the guide's "Routes interface".
    Fabric,
    /// A VXLAN overlay between the nodes.
    Vxlan(Vxlan),
    /// The operator manages pod routing; kscratch only checks.
    External,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vxlan {
    pub vni: u32,
    pub port: u16,
    pub device: String,
}

/// VXLAN over IPv4 adds 50 bytes: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Security {
    pub model: SecurityModel,
    pub extra_sans: Vec<String>,
    pub basic_auth: bool,
    /// The apiserver also serves plain HTTP on 8080 (insecure port).
    pub insecure_port: bool,
    pub allow_privileged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityModel {
    /// Plain HTTP to the apiserver on port 8080, protected by a firewall.
    HttpFirewall,
    /// HTTPS on 443 with certs and tokens.
    Https,
}

impl SecurityModel {
    /// The port nodes use to reach the apiserver at `MASTER_IP`.
    pub fn apiserver_port(self) -> u16 {
        match self {
            SecurityModel::HttpFirewall => crate::ports::APISERVER_INSECURE,
            SecurityModel::Https => crate::ports::APISERVER_HTTPS,
        }
    }
    pub fn scheme(self) -> &'static str {
        match self {
            SecurityModel::HttpFirewall => "http",
            SecurityModel::Https => "https",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Runtime {
    Docker(DockerOptions),
    Containerd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DockerOptions {
    pub ip_masq: bool,
    pub iptables: bool,
    pub nofile: u64,
    pub insecure_registry: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Etcd {
    /// Indices into `Scenario::nodes`, in the order the scenario lists them.
    pub members: Vec<usize>,
    pub data_dir: String,
    pub durable: bool,
    pub image: String,
    pub run_as: EtcdRunAs,
}

/// How etcd runs: as a static pod under the kubelet (the guide), or as a
/// service of the init system (machines without a kubelet-run control plane).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EtcdRunAs {
    StaticPod,
    Service,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloudProvider {
    pub name: String,
    pub config: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Addons {
    pub dns: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Images {
    pub registry: String,
    pub hyperkube: bool,
    /// `HYPERKUBE_IMAGE` when hyperkube is used.
    pub hyperkube_image: Option<String>,
}

/// Kubelet settings the scenario states explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct KubeletOptions {
    /// KubeletConfiguration `failCgroupV1`, when the scenario sets it (1.31+).
    pub fail_cgroup_v1: Option<bool>,
}

/// What IPAM decided: one pod CIDR per node, in node order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allocation {
    pub pod_cidrs: Vec<IpNet>,
}

impl Scenario {
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
    pub fn pod_cidr(&self, node: usize) -> IpNet {
        self.alloc.pod_cidrs[node]
    }
    /// `NODE_X_BRIDGE_ADDR`: the first host address of the node's pod CIDR.
    pub fn bridge_addr(&self, node: usize) -> IpAddr {
        crate::ipam::nth_host(self.alloc.pod_cidrs[node], 1)
    }
    pub fn control_plane_nodes(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.roles.control_plane)
    }
    /// The apiserver URL node agents and kubeconfigs use: the control-plane
    /// endpoint when there is one, else the guide's `https://$MASTER_IP`
    /// (`http://$MASTER_IP:8080` with http-firewall). The scheme's default
    /// port (443, 80) is left out.
    pub fn apiserver_url(&self) -> String {
        let scheme = self.security.model.scheme();
        let (host, port) = match &self.control_plane_endpoint {
            Some(e) => (e.host_text(), e.port),
            None => (
                self.master_ip.to_string(),
                self.security.model.apiserver_port(),
            ),
        };
        match (self.security.model, port) {
            (SecurityModel::Https, 443) | (SecurityModel::HttpFirewall, 80) => {
                format!("{scheme}://{host}")
            }
            _ => format!("{scheme}://{host}:{port}"),
        }
    }
    /// The port of the local apiserver proxy every node runs, when the
    /// control-plane endpoint is a loopback address.
    pub fn local_apiserver_proxy(&self) -> Option<u16> {
        self.control_plane_endpoint
            .as_ref()
            .and_then(ControlPlaneEndpoint::local_proxy_port)
    }
    pub fn vxlan(&self) -> Option<&Vxlan> {
        match &self.network.pod_traffic {
            PodTraffic::Vxlan(v) => Some(v),
            _ => None,
        }
    }
}
