//! The simulated world: nodes, pods, the underlay, its router and an
//! outside host. All state lives here, in ordered collections, so that the
//! same plan always produces the same world.

use crate::routes::RouteTable;
use ipnet::IpNet;
use kscratch_core::net::route::MacAddr;
use kscratch_core::plan::Asset;
use kscratch_core::scenario::KubeVersion;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

pub type NodeId = usize;
pub type PodId = usize;

#[derive(Debug, Clone)]
pub struct World {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub underlay: Underlay,
    /// Where each address answers: pods, node links, the router, the outside host.
    pub owners: BTreeMap<IpAddr, Owner>,
}

/// Who answers for an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    Node(NodeId),
    Pod(PodId),
    Router,
    Outside,
}

/// The L2 segment the nodes share, its router, and a host beyond the router.
#[derive(Debug, Clone)]
pub struct Underlay {
    pub prefix: IpNet,
    pub mtu: u32,
    /// The underlay's gateway (`network.gateway`), if the machines have one.
    pub router_ip: Option<IpAddr>,
    /// Pod CIDR → node IP routes on the router (`fabric` mode): the cloud route table.
    pub fabric_routes: BTreeMap<IpNet, IpAddr>,
    /// A host outside the cluster, behind the router, for egress checks; it
    /// listens on every port. It exists only when there is a router.
    pub outside_ip: IpAddr,
    /// The operator's load balancer at `cluster.controlPlaneEndpoint` (one
    /// that is not a loopback address): part of the machines as handed over.
    pub load_balancer: Option<LoadBalancer>,
}

/// A TCP load balancer the operator provides in front of the apiservers, as
/// the scenario declares it: `host:port`, forwarding to every control-plane
/// node's apiserver port and skipping a backend whose apiserver is not
/// healthy. What is not modelled: its own address as a packet destination
/// (the apiserver check walks each node's connection to the backends
/// instead), its own failures, and DNS for a name.
#[derive(Debug, Clone)]
pub struct LoadBalancer {
    /// The address or DNS name clients dial.
    pub host: String,
    pub port: u16,
    /// The apiservers behind it: node name, address, port.
    pub backends: Vec<(String, IpAddr, u16)>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    /// False when the machine is off (`node-down`): it answers and forwards nothing.
    pub up: bool,
    pub fs: Vfs,
    /// Values as `sysctl` shows them. A fresh Linux has `net.ipv4.ip_forward = 0`.
    pub sysctls: BTreeMap<String, String>,
    pub modules: BTreeSet<String>,
    pub links: BTreeMap<String, Link>,
    pub routes: RouteTable,
    pub netfilter: crate::netfilter::Netfilter,
    /// Installed binaries (`/usr/local/bin/...`), each with the release it
    /// came from (its SHA-256 is that release's), and pulled images.
    pub binaries: BTreeMap<String, KubeVersion>,
    /// The Kubernetes release the installed binaries come from (the plan's
    /// release directory): their built-in flag defaults.
    pub release: Option<KubeVersion>,
    pub images: BTreeSet<String>,
    /// Services of the init system: enabled and running.
    pub services: BTreeMap<String, ServiceState>,
    /// Listening sockets: (proto, port) → who listens and on which address (None = all).
    pub listeners: BTreeMap<(crate::packet::Proto, u16), Listener>,
    /// What kube-proxy read from its unit and config file when it started.
    pub kube_proxy: Option<crate::kube_proxy::KubeProxySettings>,
    /// What the container runtime was configured with, once it started.
    pub runtime: Option<RuntimeState>,
    /// Static pods the kubelet started (component name → ok or why not).
    pub static_pods: BTreeMap<String, StaticPod>,
    /// Pods running on this node, in start order (indices into `World::pods`).
    pub pods: Vec<PodId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceState {
    pub running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub process: String,
    pub addr: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPod {
    pub manifest: String,
    /// Why the component is not healthy, if it is not.
    pub problem: Option<String>,
}

/// What a container runtime does with pod networking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeState {
    /// docker with its daemon flags.
    Docker {
        bridge: String,
        iptables: bool,
        ip_masq: bool,
        mtu: u32,
    },
    /// containerd with a CNI bridge config.
    Cni(CniBridge),
}

/// The parts of a CNI `bridge` + `host-local` config the simulator honours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniBridge {
    pub bridge: String,
    pub subnet: IpNet,
    pub gateway: IpAddr,
    pub is_gateway: bool,
    pub ip_masq: bool,
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub kind: LinkKind,
    pub mtu: u32,
    pub up: bool,
    pub addrs: Vec<IpNet>,
    /// The bridge this link is enslaved to.
    pub master: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Loopback,
    /// The NIC on the underlay segment.
    Ether,
    Bridge,
    /// The host end of a pod's veth pair.
    Veth {
        pod: PodId,
    },
    Vxlan(VxlanLink),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLink {
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub dev: String,
    pub mac: MacAddr,
    /// True once the plan installed every peer's neighbour and FDB entry from
    /// the shared pod network table (looked up there, not copied per node).
    pub shared_fdb: bool,
    /// `ip neigh`: VTEP address → MAC.
    pub neighbors: BTreeMap<IpAddr, MacAddr>,
    /// `bridge fdb`: MAC → remote underlay IP.
    pub fdb: BTreeMap<MacAddr, IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub node: NodeId,
    pub ip: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
    pub mtu: u32,
    /// The bridge its host-side veth is enslaved to.
    pub bridge: String,
    pub host_veth: String,
    /// hostNetwork pods share the node's addresses and have no veth.
    pub host_network: bool,
}

/// A node's filesystem: what the plan wrote, with modes. Contents are the
/// bytes the write step produced ([`kscratch_core::exec::StepCx::file_bytes`]),
/// shared between nodes that got the same bytes, so 5,000 nodes do not hold
/// 5,000 copies of the same unit file. Components read these bytes and
/// nothing else.
#[derive(Debug, Clone, Default)]
pub struct Vfs {
    pub files: BTreeMap<String, File>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub mode: u32,
    pub content: Arc<[u8]>,
    /// The plan's asset these bytes were rendered from, for this node, while
    /// they are unchanged; `None` for text written otherwise. Equivalence
    /// classes compare rendered files by asset: the renderer differs
    /// between nodes only in their own identity.
    pub asset: Option<Asset>,
}

impl Vfs {
    /// Writes `text` at `path`, as an operator editing the node's file would.
    pub fn write_text(&mut self, path: &str, mode: u32, text: &str) {
        self.files.insert(
            path.to_string(),
            File {
                mode,
                content: Arc::from(text.as_bytes()),
                asset: None,
            },
        );
    }
}

impl Node {
    pub fn new(name: &str, ip: IpAddr) -> Node {
        let mut sysctls = BTreeMap::new();
        sysctls.insert("net.ipv4.ip_forward".to_string(), "0".to_string());
        let mut links = BTreeMap::new();
        links.insert(
            "lo".to_string(),
            Link {
                name: "lo".into(),
                kind: LinkKind::Loopback,
                mtu: 65536,
                up: true,
                addrs: vec!["127.0.0.1/8".parse().expect("literal")],
                master: None,
            },
        );
        Node {
            name: name.to_string(),
            ip,
            up: true,
            fs: Vfs::default(),
            sysctls,
            modules: BTreeSet::new(),
            links,
            routes: RouteTable::default(),
            netfilter: crate::netfilter::Netfilter::default(),
            binaries: BTreeMap::new(),
            release: None,
            images: BTreeSet::new(),
            services: BTreeMap::new(),
            listeners: BTreeMap::new(),
            kube_proxy: None,
            runtime: None,
            static_pods: BTreeMap::new(),
            pods: Vec::new(),
        }
    }

    pub fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctls.get(key).map(String::as_str)
    }

    pub fn ip_forward(&self) -> bool {
        self.sysctl("net.ipv4.ip_forward") == Some("1")
    }

    /// Bridged traffic traverses iptables only with br_netfilter loaded and this sysctl on.
    pub fn bridge_nf(&self) -> bool {
        self.modules.contains("br_netfilter")
            && self.sysctl("net.bridge.bridge-nf-call-iptables") == Some("1")
    }

    /// Every address configured on the node (addrtype LOCAL).
    pub fn local_addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.links
            .values()
            .flat_map(|l| l.addrs.iter().map(|a| a.addr()))
    }

    pub fn is_local(&self, ip: IpAddr) -> bool {
        if let IpAddr::V4(v) = ip {
            if v.is_loopback() {
                return true;
            }
        }
        self.local_addrs().any(|a| a == ip)
    }

    /// The primary address of a link (MASQUERADE's choice of source).
    pub fn primary_addr(&self, link: &str) -> Option<IpAddr> {
        self.links
            .get(link)
            .and_then(|l| l.addrs.first())
            .map(|a| a.addr())
    }

    pub fn running(&self, service: &str) -> bool {
        self.services.get(service).is_some_and(|s| s.running)
    }
}

impl World {
    /// The machines named in `gone` leave the world (their nodes, and the
    /// addresses they answered for); the others keep their order, renumbered,
    /// as a plan without them numbers its targets. Only before the workload
    /// exists: pods are indexed by node, so with pods this refuses.
    pub fn remove_nodes(&mut self, gone: &[String]) -> Result<(), String> {
        if !self.pods.is_empty() {
            return Err("nodes can only leave the simulated world before its pods exist".into());
        }
        let mut renumber = Vec::with_capacity(self.nodes.len());
        let mut next = 0;
        for n in &self.nodes {
            if gone.contains(&n.name) {
                renumber.push(None);
            } else {
                renumber.push(Some(next));
                next += 1;
            }
        }
        self.nodes.retain(|n| !gone.contains(&n.name));
        self.owners = std::mem::take(&mut self.owners)
            .into_iter()
            .filter_map(|(ip, o)| match o {
                Owner::Node(i) => renumber[i].map(|j| (ip, Owner::Node(j))),
                other => Some((ip, other)),
            })
            .collect();
        Ok(())
    }
}
