//! Assets: the files a plan places, named by what they are. Paths and modes
//! live here, in one place; the bytes are rendered separately.

use super::action::{Ca, Cert};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "asset", content = "of", rename_all = "kebab-case")]
pub enum Asset {
    CaCert(Ca),
    CaKey(Ca),
    Cert(Cert),
    Key(Cert),
    ServiceAccountKey,
    ServiceAccountPub,
    KnownTokens,
    BasicAuth,
    Kubeconfig(KubeconfigUser),
    StaticPod(Component),
    KubeletConfig,
    KubeProxyConfig,
    Unit(Service),
    DockerDefaults,
    ContainerdConfig,
    CniConfig,
    DnsAddon,
    /// `kubeadm:cluster-admins` → `cluster-admin` (1.29+).
    ClusterAdminsBinding,
    LogRotate,
    /// The local apiserver proxy's haproxy configuration.
    ApiserverProxyConfig,
    /// The cluster's pod network as `kscratch-network` re-applies it at boot.
    NetworkDescription,
    /// The re-applier `kscratch-network.service` runs.
    NetworkUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubeconfigUser {
    Admin,
    SuperAdmin,
    Kubelet,
    KubeProxy,
    ControllerManager,
    Scheduler,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    Kubelet,
    KubeProxy,
    Docker,
    Containerd,
    Etcd,
    /// The local apiserver proxy (haproxy from the distribution).
    ApiserverProxy,
    /// The node network at boot: a oneshot that re-applies the description.
    Network,
}

/// The guide keeps certs and credentials in /srv/kubernetes.
pub const PKI_DIR: &str = "/srv/kubernetes";
/// The kubelet's static pod directory (`--pod-manifest-path` / `staticPodPath`).
pub const MANIFEST_DIR: &str = "/etc/kubernetes/manifests";

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Etcd,
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
        }
    }
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Kubelet => "kubelet",
            Service::KubeProxy => "kube-proxy",
            Service::Docker => "docker",
            Service::Containerd => "containerd",
            Service::Etcd => "etcd",
            Service::ApiserverProxy => "kscratch-apiserver-proxy",
            Service::Network => "kscratch-network",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl KubeconfigUser {
    pub fn name(self) -> &'static str {
        match self {
            KubeconfigUser::Admin => "admin",
            KubeconfigUser::SuperAdmin => "super-admin",
            KubeconfigUser::Kubelet => "kubelet",
            KubeconfigUser::KubeProxy => "kube-proxy",
            KubeconfigUser::ControllerManager => "controller-manager",
            KubeconfigUser::Scheduler => "scheduler",
        }
    }
}

impl Asset {
    /// Where the asset lives on a node.
    pub fn path(self) -> &'static str {
        use Ca::*;
        use Cert::*;
        match self {
            Asset::CaCert(Cluster) => "/srv/kubernetes/ca.crt",
            Asset::CaKey(Cluster) => "/srv/kubernetes/ca.key",
            Asset::CaCert(Etcd) => "/srv/kubernetes/etcd/ca.crt",
            Asset::CaKey(Etcd) => "/srv/kubernetes/etcd/ca.key",
            Asset::CaCert(FrontProxy) => "/srv/kubernetes/front-proxy-ca.crt",
            Asset::CaKey(FrontProxy) => "/srv/kubernetes/front-proxy-ca.key",
            Asset::Cert(KubeletClient) => "/var/lib/kubelet/pki/kubelet-client.crt",
            Asset::Key(KubeletClient) => "/var/lib/kubelet/pki/kubelet-client.key",
            Asset::Cert(KubeletServing) => "/var/lib/kubelet/pki/kubelet.crt",
            Asset::Key(KubeletServing) => "/var/lib/kubelet/pki/kubelet.key",
            Asset::Cert(KubeProxy) => "/var/lib/kube-proxy/pki/kube-proxy.crt",
            Asset::Key(KubeProxy) => "/var/lib/kube-proxy/pki/kube-proxy.key",
            Asset::Cert(EtcdServer) => "/srv/kubernetes/etcd/server.crt",
            Asset::Key(EtcdServer) => "/srv/kubernetes/etcd/server.key",
            Asset::Cert(EtcdPeer) => "/srv/kubernetes/etcd/peer.crt",
            Asset::Key(EtcdPeer) => "/srv/kubernetes/etcd/peer.key",
            Asset::Cert(EtcdHealthcheckClient) => "/srv/kubernetes/etcd/healthcheck-client.crt",
            Asset::Key(EtcdHealthcheckClient) => "/srv/kubernetes/etcd/healthcheck-client.key",
            Asset::Cert(Apiserver) => "/srv/kubernetes/apiserver.crt",
            Asset::Key(Apiserver) => "/srv/kubernetes/apiserver.key",
            Asset::Cert(ApiserverKubeletClient) => "/srv/kubernetes/apiserver-kubelet-client.crt",
            Asset::Key(ApiserverKubeletClient) => "/srv/kubernetes/apiserver-kubelet-client.key",
            Asset::Cert(ApiserverEtcdClient) => "/srv/kubernetes/apiserver-etcd-client.crt",
            Asset::Key(ApiserverEtcdClient) => "/srv/kubernetes/apiserver-etcd-client.key",
            Asset::Cert(FrontProxyClient) => "/srv/kubernetes/front-proxy-client.crt",
            Asset::Key(FrontProxyClient) => "/srv/kubernetes/front-proxy-client.key",
            Asset::Cert(Admin) => "/srv/kubernetes/admin.crt",
            Asset::Key(Admin) => "/srv/kubernetes/admin.key",
            Asset::Cert(SuperAdmin) => "/srv/kubernetes/super-admin.crt",
            Asset::Key(SuperAdmin) => "/srv/kubernetes/super-admin.key",
            Asset::Cert(ControllerManager) => "/srv/kubernetes/controller-manager.crt",
            Asset::Key(ControllerManager) => "/srv/kubernetes/controller-manager.key",
            Asset::Cert(Scheduler) => "/srv/kubernetes/scheduler.crt",
            Asset::Key(Scheduler) => "/srv/kubernetes/scheduler.key",
            Asset::ServiceAccountKey => "/srv/kubernetes/sa.key",
            Asset::ServiceAccountPub => "/srv/kubernetes/sa.pub",
            Asset::KnownTokens => "/srv/kubernetes/known_tokens.csv",
            Asset::BasicAuth => "/srv/kubernetes/basic_auth.csv",
            Asset::Kubeconfig(KubeconfigUser::Kubelet) => "/var/lib/kubelet/kubeconfig",
            Asset::Kubeconfig(KubeconfigUser::KubeProxy) => "/var/lib/kube-proxy/kubeconfig",
            Asset::Kubeconfig(KubeconfigUser::Admin) => "/etc/kubernetes/admin.conf",
            Asset::Kubeconfig(KubeconfigUser::SuperAdmin) => "/etc/kubernetes/super-admin.conf",
            Asset::Kubeconfig(KubeconfigUser::ControllerManager) => {
                "/etc/kubernetes/controller-manager.conf"
            }
            Asset::Kubeconfig(KubeconfigUser::Scheduler) => "/etc/kubernetes/scheduler.conf",
            Asset::StaticPod(Component::Etcd) => "/etc/kubernetes/manifests/etcd.yaml",
            Asset::StaticPod(Component::KubeApiserver) => {
                "/etc/kubernetes/manifests/kube-apiserver.yaml"
            }
            Asset::StaticPod(Component::KubeControllerManager) => {
                "/etc/kubernetes/manifests/kube-controller-manager.yaml"
            }
            Asset::StaticPod(Component::KubeScheduler) => {
                "/etc/kubernetes/manifests/kube-scheduler.yaml"
            }
            Asset::KubeletConfig => "/var/lib/kubelet/config.yaml",
            Asset::KubeProxyConfig => "/var/lib/kube-proxy/config.yaml",
            Asset::Unit(Service::Kubelet) => "/etc/systemd/system/kubelet.service",
            Asset::Unit(Service::KubeProxy) => "/etc/systemd/system/kube-proxy.service",
            Asset::Unit(Service::Docker) => "/etc/systemd/system/docker.service.d/10-kscratch.conf",
            Asset::Unit(Service::Containerd) => "/etc/systemd/system/containerd.service",
            Asset::Unit(Service::Etcd) => "/etc/systemd/system/etcd.service",
            Asset::Unit(Service::ApiserverProxy) => {
                "/etc/systemd/system/kscratch-apiserver-proxy.service"
            }
            Asset::ApiserverProxyConfig => "/etc/kubernetes/apiserver-proxy.cfg",
            Asset::Unit(Service::Network) => "/etc/systemd/system/kscratch-network.service",
            Asset::NetworkDescription => crate::render::NETWORK_CONF,
            Asset::NetworkUp => crate::render::NETWORK_UP_PATH,
            Asset::DockerDefaults => "/etc/default/docker",
            Asset::ContainerdConfig => "/etc/containerd/config.toml",
            Asset::CniConfig => "/etc/cni/net.d/10-kscratch.conflist",
            Asset::DnsAddon => "/etc/kubernetes/addons/dns.yaml",
            Asset::ClusterAdminsBinding => "/etc/kubernetes/addons/cluster-admins.yaml",
            Asset::LogRotate => "/etc/logrotate.d/kubernetes",
        }
    }

    /// Secrets: private keys, tokens, passwords and the kubeconfigs that embed them.
    pub fn is_secret(self) -> bool {
        matches!(
            self,
            Asset::CaKey(_)
                | Asset::Key(_)
                | Asset::ServiceAccountKey
                | Asset::KnownTokens
                | Asset::BasicAuth
                | Asset::Kubeconfig(_)
        )
    }

    /// Files whose bytes do not depend on the node they go to. Some are
    /// O(nodes) in size (the network description lists every node), so
    /// whoever renders every node's files renders these once per plan.
    pub fn same_on_every_node(self) -> bool {
        matches!(
            self,
            Asset::NetworkDescription
                | Asset::NetworkUp
                | Asset::Unit(Service::Network)
                | Asset::ApiserverProxyConfig
                | Asset::Unit(Service::ApiserverProxy)
        )
    }

    /// 0600 for secrets, 0644 for everything else.
    pub fn mode(self) -> u32 {
        if self.is_secret() {
            0o600
        } else {
            0o644
        }
    }
}

/// The drop-in that persists a `SetSysctl` (one file per key, so that steps
/// running in parallel never write the same file).
pub fn sysctl_dropin(key: &str) -> String {
    format!("/etc/sysctl.d/90-kscratch-{key}.conf")
}

/// The drop-in that loads a `LoadKernelModule`'s module at boot.
pub fn module_dropin(name: &str) -> String {
    format!("/etc/modules-load.d/kscratch-{name}.conf")
}
