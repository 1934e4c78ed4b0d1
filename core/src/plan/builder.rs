//! The plan builder: owns the step vector and the flat dependency pool, and
//! forms each step's key from what the step does (its asset, service,
//! component or certificate), so no phase spells a key by hand.

use super::*;
use crate::scenario::Scenario;

pub(super) struct Builder<'s> {
    s: &'s Scenario,
    steps: Vec<Step>,
    deps: Vec<StepRef>,
}

impl<'s> Builder<'s> {
    pub(super) fn new(s: &'s Scenario) -> Self {
        Builder {
            s,
            steps: Vec::with_capacity(s.nodes.len() * 28 + 64),
            deps: Vec::with_capacity(s.nodes.len() * 48 + 64),
        }
    }

    /// The one place a step is appended: its deps go into the shared pool.
    pub(super) fn push(
        &mut self,
        target: Target,
        key: &'static str,
        phase: Phase,
        action: Action,
        deps: &[StepRef],
    ) -> StepRef {
        self.push_about(target, key, None, phase, action, deps)
    }

    /// A step about departed node `subject` (an index into the plan's
    /// departed nodes): its id is `<target>/<key>/<that node>`.
    pub(super) fn push_about(
        &mut self,
        target: Target,
        key: &'static str,
        subject: Option<u32>,
        phase: Phase,
        action: Action,
        deps: &[StepRef],
    ) -> StepRef {
        let r = self.steps.len() as StepRef;
        let start = self.deps.len() as u32;
        self.deps.extend_from_slice(deps);
        self.steps.push(Step {
            target,
            key,
            phase,
            action,
            deps: start..self.deps.len() as u32,
            subject,
        });
        r
    }

    /// A step on the operator's machine.
    pub(super) fn local(
        &mut self,
        key: &'static str,
        phase: Phase,
        action: Action,
        deps: &[StepRef],
    ) -> StepRef {
        self.push(Target::Local, key, phase, action, deps)
    }

    /// A certificate issued on the operator's machine: cluster-wide when
    /// `node` is `None`, else for that node, with the id
    /// `local/<key>/<node>` (see [`Plan::step_id`]).
    pub(super) fn issue(&mut self, cert: Cert, node: Option<usize>, ca: StepRef) -> StepRef {
        let node = node.map(|i| self.s.nodes[i].name.clone());
        self.local(
            cert_key(cert),
            Phase::Pki,
            Action::IssueCert { cert, node },
            &[ca],
        )
    }

    /// Write a rendered asset on a node; the key is the asset's ([`asset_key`]).
    pub(super) fn write(
        &mut self,
        t: Target,
        phase: Phase,
        asset: Asset,
        deps: &[StepRef],
    ) -> StepRef {
        self.push(t, asset_key(asset), phase, write(asset), deps)
    }

    /// Distribute key material to a node, after the step that produced it
    /// (none in the HTTP model, where the file carries no secret from PKI).
    /// The phase is the asset's consumer's ([`dist_phase`]).
    pub(super) fn dist(&mut self, t: Target, asset: Asset, src: Option<StepRef>) -> StepRef {
        self.write(t, dist_phase(asset), asset, src.as_slice())
    }

    /// Enable and start a service whose unit is among `deps`.
    pub(super) fn start(
        &mut self,
        t: Target,
        phase: Phase,
        service: Service,
        deps: &[StepRef],
    ) -> StepRef {
        self.push(
            t,
            service_key(service),
            phase,
            Action::StartService { name: service },
            deps,
        )
    }

    /// Poll a component's health endpoint until it answers.
    pub(super) fn wait_healthy(
        &mut self,
        t: Target,
        phase: Phase,
        component: Component,
        url: String,
        deps: &[StepRef],
    ) -> StepRef {
        self.push(
            t,
            wait_key(component),
            phase,
            Action::WaitHealthy {
                component,
                url,
                timeout_secs: 300,
            },
            deps,
        )
    }

    pub(super) fn finish(self, artifacts: Vec<Artifact>, departed: Vec<String>) -> Plan {
        let s = self.s;
        Plan {
            cluster: s.name.clone(),
            version: s.version,
            nodes: s.nodes.iter().map(|n| n.name.clone()).collect(),
            artifacts,
            steps: self.steps,
            dep_pool: self.deps,
            release_dir: s.binaries_dir.clone(),
            departed,
        }
    }
}

fn write(asset: Asset) -> Action {
    Action::WriteFile {
        path: asset.path(),
        mode: asset.mode(),
        asset,
    }
}

/// The phase a distributed file belongs to: that of the first thing on the
/// node that reads it.
fn dist_phase(asset: Asset) -> Phase {
    match asset {
        // Trust anchors go out with the node agents, before any leaf that chains to them.
        Asset::CaCert(Ca::Cluster | Ca::Etcd) => Phase::NodeAgents,
        Asset::Kubeconfig(KubeconfigUser::Kubelet | KubeconfigUser::KubeProxy)
        | Asset::Cert(Cert::KubeletServing)
        | Asset::Key(Cert::KubeletServing) => Phase::NodeAgents,
        Asset::Cert(Cert::EtcdServer | Cert::EtcdPeer)
        | Asset::Key(Cert::EtcdServer | Cert::EtcdPeer) => Phase::Etcd,
        _ => Phase::ControlPlane,
    }
}

/// The key of the step that writes `asset` on a node: `file/<name>`, or
/// `manifest/<component>` for a static pod.
pub(super) fn asset_key(asset: Asset) -> &'static str {
    use Ca::*;
    use Cert::*;
    match asset {
        Asset::CaCert(Cluster) => "file/ca.crt",
        Asset::CaKey(Cluster) => "file/ca.key",
        Asset::CaCert(Etcd) => "file/etcd-ca.crt",
        Asset::CaKey(Etcd) => "file/etcd-ca.key",
        Asset::CaCert(FrontProxy) => "file/front-proxy-ca.crt",
        Asset::CaKey(FrontProxy) => "file/front-proxy-ca.key",
        Asset::Cert(KubeletClient) => "file/kubelet-client.crt",
        Asset::Key(KubeletClient) => "file/kubelet-client.key",
        Asset::Cert(KubeletServing) => "file/kubelet.crt",
        Asset::Key(KubeletServing) => "file/kubelet.key",
        Asset::Cert(KubeProxy) => "file/kube-proxy.crt",
        Asset::Key(KubeProxy) => "file/kube-proxy.key",
        Asset::Cert(EtcdServer) => "file/etcd-server.crt",
        Asset::Key(EtcdServer) => "file/etcd-server.key",
        Asset::Cert(EtcdPeer) => "file/etcd-peer.crt",
        Asset::Key(EtcdPeer) => "file/etcd-peer.key",
        Asset::Cert(EtcdHealthcheckClient) => "file/etcd-healthcheck-client.crt",
        Asset::Key(EtcdHealthcheckClient) => "file/etcd-healthcheck-client.key",
        Asset::Cert(Apiserver) => "file/apiserver.crt",
        Asset::Key(Apiserver) => "file/apiserver.key",
        Asset::Cert(ApiserverKubeletClient) => "file/apiserver-kubelet-client.crt",
        Asset::Key(ApiserverKubeletClient) => "file/apiserver-kubelet-client.key",
        Asset::Cert(ApiserverEtcdClient) => "file/apiserver-etcd-client.crt",
        Asset::Key(ApiserverEtcdClient) => "file/apiserver-etcd-client.key",
        Asset::Cert(FrontProxyClient) => "file/front-proxy-client.crt",
        Asset::Key(FrontProxyClient) => "file/front-proxy-client.key",
        Asset::Cert(Admin) => "file/admin.crt",
        Asset::Key(Admin) => "file/admin.key",
        Asset::Cert(SuperAdmin) => "file/super-admin.crt",
        Asset::Key(SuperAdmin) => "file/super-admin.key",
        Asset::Cert(ControllerManager) => "file/controller-manager.crt",
        Asset::Key(ControllerManager) => "file/controller-manager.key",
        Asset::Cert(Scheduler) => "file/scheduler.crt",
        Asset::Key(Scheduler) => "file/scheduler.key",
        Asset::ServiceAccountKey => "file/sa.key",
        Asset::ServiceAccountPub => "file/sa.pub",
        Asset::KnownTokens => "file/known_tokens.csv",
        Asset::BasicAuth => "file/basic_auth.csv",
        Asset::Kubeconfig(KubeconfigUser::Admin) => "file/admin-kubeconfig",
        Asset::Kubeconfig(KubeconfigUser::SuperAdmin) => "file/super-admin-kubeconfig",
        Asset::Kubeconfig(KubeconfigUser::Kubelet) => "file/kubelet-kubeconfig",
        Asset::Kubeconfig(KubeconfigUser::KubeProxy) => "file/kube-proxy-kubeconfig",
        Asset::Kubeconfig(KubeconfigUser::ControllerManager) => {
            "file/controller-manager-kubeconfig"
        }
        Asset::Kubeconfig(KubeconfigUser::Scheduler) => "file/scheduler-kubeconfig",
        Asset::StaticPod(Component::Etcd) => "manifest/etcd",
        Asset::StaticPod(Component::KubeApiserver) => "manifest/kube-apiserver",
        Asset::StaticPod(Component::KubeControllerManager) => "manifest/kube-controller-manager",
        Asset::StaticPod(Component::KubeScheduler) => "manifest/kube-scheduler",
        Asset::KubeletConfig => "file/kubelet-config",
        Asset::KubeProxyConfig => "file/kube-proxy-config",
        Asset::Unit(Service::Kubelet) => "file/kubelet-unit",
        Asset::Unit(Service::KubeProxy) => "file/kube-proxy-unit",
        Asset::Unit(Service::Docker) => "file/docker-unit",
        Asset::Unit(Service::Containerd) => "file/containerd-unit",
        Asset::Unit(Service::Etcd) => "file/etcd-unit",
        Asset::Unit(Service::ApiserverProxy) => "file/apiserver-proxy-unit",
        Asset::ApiserverProxyConfig => "file/apiserver-proxy-config",
        Asset::Unit(Service::Network) => "file/network-unit",
        Asset::NetworkDescription => "file/network-conf",
        Asset::NetworkUp => "file/network-up",
        Asset::DockerDefaults => "file/docker-defaults",
        Asset::ContainerdConfig => "file/containerd-config",
        Asset::CniConfig => "file/cni-config",
        Asset::DnsAddon => "file/dns-addon",
        Asset::ClusterAdminsBinding => "file/cluster-admins",
        Asset::LogRotate => "file/logrotate",
    }
}

/// `service/<name>`.
fn service_key(s: Service) -> &'static str {
    match s {
        Service::Kubelet => "service/kubelet",
        Service::KubeProxy => "service/kube-proxy",
        Service::Docker => "service/docker",
        Service::Containerd => "service/containerd",
        Service::Etcd => "service/etcd",
        Service::ApiserverProxy => "service/apiserver-proxy",
        Service::Network => "service/network",
    }
}

/// `wait/<component>`.
fn wait_key(c: Component) -> &'static str {
    match c {
        Component::Etcd => "wait/etcd",
        Component::KubeApiserver => "wait/kube-apiserver",
        Component::KubeControllerManager => "wait/kube-controller-manager",
        Component::KubeScheduler => "wait/kube-scheduler",
    }
}

/// `image/<component>`: the image a control-plane component runs from.
pub(super) fn image_key(c: Component) -> &'static str {
    match c {
        Component::Etcd => "image/etcd",
        Component::KubeApiserver => "image/kube-apiserver",
        Component::KubeControllerManager => "image/kube-controller-manager",
        Component::KubeScheduler => "image/kube-scheduler",
    }
}

/// `pki/<cert>`: the step that issues a certificate.
pub(super) fn cert_key(c: Cert) -> &'static str {
    match c {
        Cert::Apiserver => "pki/apiserver",
        Cert::ApiserverKubeletClient => "pki/apiserver-kubelet-client",
        Cert::ApiserverEtcdClient => "pki/apiserver-etcd-client",
        Cert::FrontProxyClient => "pki/front-proxy-client",
        Cert::Admin => "pki/admin",
        Cert::SuperAdmin => "pki/super-admin",
        Cert::KubeletClient => "pki/kubelet-client",
        Cert::KubeletServing => "pki/kubelet-serving",
        Cert::KubeProxy => "pki/kube-proxy",
        Cert::ControllerManager => "pki/controller-manager",
        Cert::Scheduler => "pki/scheduler",
        Cert::EtcdServer => "pki/etcd-server",
        Cert::EtcdPeer => "pki/etcd-peer",
        Cert::EtcdHealthcheckClient => "pki/etcd-healthcheck-client",
    }
}
