//! The control plane: its files on each control-plane node, then (once etcd
//! is healthy) the apiserver, controller-manager and scheduler static pods
//! and their health waits.

use super::builder::Builder;
use super::context::{Agents, Binaries, Cluster, ControlPlaneNode, NodeCx};
use super::*;
use crate::scenario::SecurityModel;

/// The files a control-plane node needs before its pods; the pods come in [`start`].
pub(super) fn files(
    b: &mut Builder<'_>,
    cx: &Cluster<'_>,
    n: &NodeCx<'_>,
    bins: &Binaries,
    agents: &Agents,
) -> ControlPlaneNode {
    let mut ready = bins.images.clone();
    ready.push(agents.kubelet);
    for asset in assets(cx, n) {
        ready.push(b.dist(n.t, asset, cx.pki.source(asset)));
    }
    ControlPlaneNode { t: n.t, ready }
}

/// What the control plane reads, in the order it is placed.
fn assets(cx: &Cluster<'_>, n: &NodeCx<'_>) -> Vec<Asset> {
    use Cert::*;
    if !cx.https {
        return vec![
            Asset::Kubeconfig(KubeconfigUser::Admin),
            Asset::ServiceAccountKey,
            Asset::ServiceAccountPub,
        ];
    }
    let mut v = vec![
        Asset::CaKey(Ca::Cluster),
        Asset::Cert(Apiserver),
        Asset::Key(Apiserver),
        Asset::Cert(ApiserverKubeletClient),
        Asset::Key(ApiserverKubeletClient),
        Asset::Cert(ApiserverEtcdClient),
        Asset::Key(ApiserverEtcdClient),
        Asset::ServiceAccountKey,
        Asset::ServiceAccountPub,
        Asset::KnownTokens,
        Asset::Kubeconfig(KubeconfigUser::Admin),
        Asset::Kubeconfig(KubeconfigUser::ControllerManager),
        Asset::Kubeconfig(KubeconfigUser::Scheduler),
    ];
    // An etcd member already has the etcd CA (etcd phase).
    if !n.etcd {
        v.push(Asset::CaCert(Ca::Etcd));
    }
    if cx.fx.front_proxy_ca {
        v.extend([
            Asset::CaCert(Ca::FrontProxy),
            Asset::Cert(FrontProxyClient),
            Asset::Key(FrontProxyClient),
        ]);
    }
    if cx.fx.admin_cluster_admins_group {
        v.push(Asset::Kubeconfig(KubeconfigUser::SuperAdmin));
    }
    if cx.s.security.basic_auth {
        v.push(Asset::BasicAuth);
    }
    v
}

/// What the control plane produced for the phases after it.
pub(super) struct Started {
    /// One apiserver health wait per control-plane node.
    pub apiserver_ok: Vec<StepRef>,
    /// The controller-manager and scheduler health waits.
    pub healthy: Vec<StepRef>,
}

/// Each control-plane node's pods, once every etcd member is healthy.
pub(super) fn start(
    b: &mut Builder<'_>,
    cx: &Cluster<'_>,
    nodes: Vec<ControlPlaneNode>,
    etcd_ok: &[StepRef],
) -> Started {
    let s = cx.s;
    let mut out = Started {
        apiserver_ok: Vec::new(),
        healthy: Vec::new(),
    };
    let api_url = match s.security.model {
        SecurityModel::Https => format!(
            "https://127.0.0.1:{}/healthz",
            s.security.model.apiserver_port()
        ),
        SecurityModel::HttpFirewall => "http://127.0.0.1:8080/healthz".into(),
    };
    let cm_url = if cx.fx.controller_manager_secure_health {
        "https://127.0.0.1:10257/healthz"
    } else {
        "http://127.0.0.1:10252/healthz"
    };
    let sched_url = if cx.fx.scheduler_secure_health {
        "https://127.0.0.1:10259/healthz"
    } else {
        "http://127.0.0.1:10251/healthz"
    };
    for ControlPlaneNode { t, mut ready } in nodes {
        ready.extend_from_slice(etcd_ok);
        let pod =
            |b: &mut Builder<'_>, c| b.write(t, Phase::ControlPlane, Asset::StaticPod(c), &ready);
        let api = pod(b, Component::KubeApiserver);
        let cm = pod(b, Component::KubeControllerManager);
        let sched = pod(b, Component::KubeScheduler);
        let phase = Phase::ControlPlane;
        let api_ok = b.wait_healthy(t, phase, Component::KubeApiserver, api_url.clone(), &[api]);
        let cm_ok = b.wait_healthy(
            t,
            phase,
            Component::KubeControllerManager,
            cm_url.into(),
            &[cm, api_ok],
        );
        let sched_ok = b.wait_healthy(
            t,
            phase,
            Component::KubeScheduler,
            sched_url.into(),
            &[sched, api_ok],
        );
        out.apiserver_ok.push(api_ok);
        out.healthy.extend([cm_ok, sched_ok]);
    }
    out
}
