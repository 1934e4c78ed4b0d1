//! Typed actions: what a step does, as data.
//!
//! The simulator interprets these values; the SSH backend renders the same
//! values to idempotent shell. Anything with a text syntax of its own
//! (iptables rules, routes) is a typed value from [`crate::net`].

use super::{ArtifactId, Asset, Component, Service};
use crate::net::iptables::{Rule, Table};
use crate::net::route::{FdbEntry, MacAddr, Neighbor, Route};
use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Checks that change nothing: fail early, before anything is touched.
    Preflight { checks: Vec<PreflightCheck> },
    /// Copy `name` from the plan's release directory (the guide's
    /// `kubernetes/server/bin`) to `dest`, unless the node has the same SHA-256.
    InstallBinary {
        name: &'static str,
        dest: &'static str,
    },
    /// Make a container image available to the node's runtime.
    PullImage { image: String },
    /// Generate a CA key pair (on the operator's machine).
    GenerateCa { ca: Ca },
    /// Issue a certificate signed by its CA. `node` names the node a per-node cert is for.
    IssueCert { cert: Cert, node: Option<String> },
    /// The service-account signing key pair.
    GenerateServiceAccountKey,
    /// Bearer tokens for the apiserver's `--token-auth-file`, from the OS's secure RNG.
    GenerateTokens { users: Vec<String> },
    /// Put a rendered asset on the target with this mode.
    WriteFile {
        path: &'static str,
        mode: u32,
        asset: Asset,
    },
    /// `sysctl -w key=value`, persisted in /etc/sysctl.d.
    SetSysctl {
        key: &'static str,
        value: &'static str,
    },
    /// `modprobe name`, persisted in /etc/modules-load.d.
    LoadKernelModule { name: &'static str },
    /// Remove a leftover link if it exists (docker's `docker0`).
    DeleteLink { name: String },
    /// Remove leftover rules and chains if they exist (docker's nat rules).
    DeleteIptablesRules {
        table: Table,
        rules: Vec<Rule>,
        chains: Vec<String>,
    },
    /// Create the pod bridge (`cbr0`) with `NODE_X_BRIDGE_ADDR` and bring it up.
    CreateBridge { name: String, addr: IpNet, mtu: u32 },
    /// Create the VXLAN device of the overlay.
    CreateVxlan(Box<VxlanDevice>),
    /// Routes to every other node's pod CIDR, from the shared pod network table.
    InstallPodRoutes {
        artifact: ArtifactId,
        via: PodRouteVia,
    },
    /// Routes for every node's pod CIDR on the underlay router (`fabric`).
    InstallFabricRoutes { artifact: ArtifactId },
    /// Append the rule unless an identical one exists (`iptables -C || iptables -A`).
    EnsureIptablesRule { table: Table, rule: Rule },
    /// Enable and (re)start a service whose unit was written before; the init
    /// system restarts it when it dies (the guide's liveness supervision).
    StartService { name: Service },
    /// Poll until the endpoint answers healthy, or fail after the timeout.
    WaitHealthy {
        component: Component,
        url: String,
        timeout_secs: u32,
    },
    /// `kubectl apply` a rendered manifest with this user's kubeconfig.
    ApplyManifest {
        asset: Asset,
        kubeconfig: super::KubeconfigUser,
    },
    /// The equivalent of `validate-cluster.sh`: nodes Ready, components healthy.
    ValidateCluster {
        nodes: Vec<String>,
        components: Vec<String>,
    },

    // Damage: what a what-if fault does to a running node (see
    // `plan::damage`). Each is something an operator's machine can have.
    /// `ip route del ROUTE` for each route that exists (on `Target::Fabric`:
    /// the underlay router's routes).
    DeleteRoutes { routes: Vec<Route> },
    /// Insert the rule at the top of its chain unless an identical one exists
    /// (`iptables -C || iptables -I CHAIN 1`).
    InsertIptablesRule { table: Table, rule: Rule },
    /// `ip link set dev NAME down`: the link stays configured but passes nothing.
    SetLinkDown { name: String },
    /// `ip link set dev NAME mtu MTU`.
    SetLinkMtu { name: String, mtu: u32 },
    /// `bridge fdb del` each entry that exists.
    DeleteFdbEntries { entries: Vec<FdbEntry> },
    /// `ip neigh del` each entry that exists.
    DeleteNeighbors { entries: Vec<Neighbor> },
    /// Stop a service (it stays enabled); what it programmed (iptables rules)
    /// stays. Followed by `StartService`, a restart that rereads its configuration.
    StopService { name: Service },
    /// Remove a file if it exists (a unit drop-in lost, for example; a file
    /// the plan wrote, on `kscratch reset`).
    DeleteFile { path: String },
    /// `modprobe -r NAME`, and the module's persisted load entry removed.
    UnloadKernelModule { name: &'static str },
    /// Put hand-edited text on the target (a daemon's config changed by an
    /// operator): the text is shown in the plan, so never a secret.
    WriteText {
        path: &'static str,
        mode: u32,
        text: String,
    },
    /// `kubectl scale deployment` with this user's kubeconfig.
    ScaleDeployment {
        namespace: String,
        name: String,
        replicas: u32,
        kubeconfig: super::KubeconfigUser,
    },
    /// The machine is switched off.
    PowerOff,

    // Reset: what `kscratch reset` does to take back what a plan put on a
    // node (see `plan::reset`).
    /// Stop a service and disable it; without an init system, stop its
    /// supervisor and remove what kscratch kept to run it (pid file, run
    /// script, log, done marker). Absent or stopped and disabled: satisfied.
    /// Its unit file goes in a `DeleteFile` of its own.
    DisableService { name: Service },
    /// Empty a directory (the etcd data dir): what is in it goes, the
    /// directory stays. Absent or empty: satisfied.
    ClearDirectory { path: String },
    /// Delete the user-defined chains of `table` that `chains` name (a
    /// trailing `*` names a prefix: `KUBE-*`), after deleting every rule of
    /// another chain that jumps to one of them: what `kube-proxy --cleanup`
    /// does to its chains. Other rules and chains stay. None left: satisfied.
    DeleteIptablesChains { table: Table, chains: Vec<String> },

    // Removal: what a node that left the scenario leaves on the remaining
    // ones (see `plan::removal`); its routes, FDB and neighbour entries go
    // with `DeleteRoutes`, `DeleteFdbEntries` and `DeleteNeighbors`.
    /// `etcdctl member remove` the member `name`, asked through the client
    /// URL `endpoint` of the member the step runs on, unless `member list`
    /// no longer has it.
    RemoveEtcdMember { name: String, endpoint: String },
    /// `kubectl delete node NAME` with the admin kubeconfig unless the Node
    /// object is absent. When the apiserver does not answer, the step is not
    /// applicable here (skipped with that reason: the object stays until it
    /// is deleted by hand), not a failure.
    DeleteNode { name: String },
}

impl Action {
    /// Whether a chain name is one a [`Action::DeleteIptablesChains`]
    /// pattern list names: equal to an entry, or starting with an entry's
    /// part before its trailing `*`.
    pub fn chain_named(patterns: &[String], chain: &str) -> bool {
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => chain.starts_with(prefix),
            None => chain == p,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "check", rename_all = "kebab-case")]
pub enum PreflightCheck {
    /// Linux on x86_64, as the guide requires.
    Platform {
        os: &'static str,
        arch: &'static str,
    },
    /// A command the node needs is installed (`conntrack` for kube-proxy, ...).
    Command {
        name: &'static str,
    },
    KernelModule {
        name: &'static str,
    },
    /// The unified cgroup hierarchy: `/sys/fs/cgroup` is cgroup2fs.
    /// `source` cites the release rule (core/data/host.tsv).
    CgroupV2 {
        source: &'static str,
    },
    /// No swap is active. `source` cites the release rule (core/data/host.tsv).
    SwapOff {
        source: &'static str,
    },
    /// Nothing listens on this TCP port yet, except, on a re-apply, the
    /// daemon kscratch started there: `held_by`, else the one
    /// [`crate::ports::owner`] names for the port.
    PortFree {
        port: u16,
        #[serde(skip_serializing_if = "Option::is_none")]
        held_by: Option<crate::ports::Daemon>,
    },
    /// The node's address is configured on the named interface.
    NodeAddress {
        ip: IpAddr,
        interface: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "via", rename_all = "kebab-case")]
pub enum PodRouteVia {
    /// `ip route replace CIDR via NODE_IP dev IFACE`.
    Underlay { dev: String },
    /// `ip route replace CIDR via VTEP dev vxlan0 onlink`, with neighbor and FDB entries.
    Overlay { dev: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    /// The underlay interface the tunnel runs over.
    pub dev: String,
    pub mtu: u32,
    /// A stable MAC so that peers' FDB entries stay valid across re-creation.
    pub mac: MacAddr,
    /// The VTEP address: the pod CIDR's network address, `/32` (flannel's layout).
    pub addr: IpNet,
}

/// Certificate authorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ca {
    Cluster,
    Etcd,
    FrontProxy,
}

/// Leaf certificates. Per-node ones get their node from the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cert {
    Apiserver,
    ApiserverKubeletClient,
    ApiserverEtcdClient,
    FrontProxyClient,
    Admin,
    SuperAdmin,
    KubeletClient,
    KubeletServing,
    KubeProxy,
    ControllerManager,
    Scheduler,
    EtcdServer,
    EtcdPeer,
    EtcdHealthcheckClient,
}

impl Cert {
    pub fn ca(self) -> Ca {
        match self {
            Cert::ApiserverEtcdClient
            | Cert::EtcdServer
            | Cert::EtcdPeer
            | Cert::EtcdHealthcheckClient => Ca::Etcd,
            Cert::FrontProxyClient => Ca::FrontProxy,
            _ => Ca::Cluster,
        }
    }
    pub fn per_node(self) -> bool {
        matches!(
            self,
            Cert::KubeletClient | Cert::KubeletServing | Cert::EtcdServer | Cert::EtcdPeer
        )
    }
    pub fn name(self) -> &'static str {
        match self {
            Cert::Apiserver => "apiserver",
            Cert::ApiserverKubeletClient => "apiserver-kubelet-client",
            Cert::ApiserverEtcdClient => "apiserver-etcd-client",
            Cert::FrontProxyClient => "front-proxy-client",
            Cert::Admin => "admin",
            Cert::SuperAdmin => "super-admin",
            Cert::KubeletClient => "kubelet-client",
            Cert::KubeletServing => "kubelet-serving",
            Cert::KubeProxy => "kube-proxy",
            Cert::ControllerManager => "controller-manager",
            Cert::Scheduler => "scheduler",
            Cert::EtcdServer => "etcd-server",
            Cert::EtcdPeer => "etcd-peer",
            Cert::EtcdHealthcheckClient => "etcd-healthcheck-client",
        }
    }
}

impl Ca {
    pub fn name(self) -> &'static str {
        match self {
            Ca::Cluster => "ca",
            Ca::Etcd => "etcd-ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }
}
