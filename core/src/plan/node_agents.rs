//! Node agents: kubelet and kube-proxy on every node (control-plane nodes
//! too: consistency is easier), with their credentials, configs and units,
//! and the local apiserver proxy they dial when the scenario has one.

use super::builder::Builder;
use super::context::{Agents, Binaries, Cluster, NodeCx};
use super::*;

pub(super) fn node(
    b: &mut Builder<'_>,
    cx: &Cluster<'_>,
    n: &NodeCx<'_>,
    pre: StepRef,
    bins: &Binaries,
    runtime: StepRef,
) -> Agents {
    let t = n.t;
    let pki = &cx.pki;
    let mut kubelet_deps = vec![bins.kubelet, runtime];
    let mut proxy_deps = vec![bins.kube_proxy, runtime];
    let kubelet_kubeconfig = Asset::Kubeconfig(KubeconfigUser::Kubelet);
    let proxy_kubeconfig = Asset::Kubeconfig(KubeconfigUser::KubeProxy);
    if cx.https {
        kubelet_deps.push(b.dist(t, Asset::CaCert(Ca::Cluster), pki.ca_step(Ca::Cluster)));
        let ca = pki.ca(Ca::Cluster);
        let serving = b.issue(Cert::KubeletServing, Some(n.i), ca);
        let client = b.issue(Cert::KubeletClient, Some(n.i), ca);
        for (asset, src) in [
            (Asset::Cert(Cert::KubeletServing), serving),
            (Asset::Key(Cert::KubeletServing), serving),
            (kubelet_kubeconfig, client),
        ] {
            kubelet_deps.push(b.dist(t, asset, Some(src)));
        }
        proxy_deps.push(b.dist(t, proxy_kubeconfig, pki.cert(Cert::KubeProxy)));
    } else {
        kubelet_deps.push(b.dist(t, kubelet_kubeconfig, None));
        proxy_deps.push(b.dist(t, proxy_kubeconfig, None));
    }
    if cx.fx.kubelet_config_file {
        kubelet_deps.push(b.write(t, Phase::NodeAgents, Asset::KubeletConfig, &[pre]));
    }
    if cx.fx.kube_proxy_config_file {
        proxy_deps.push(b.write(t, Phase::NodeAgents, Asset::KubeProxyConfig, &[pre]));
    }
    // The local apiserver proxy (a loopback `cluster.controlPlaneEndpoint`),
    // started before the agents that dial it.
    if cx.s.local_apiserver_proxy().is_some() {
        let config = b.write(t, Phase::NodeAgents, Asset::ApiserverProxyConfig, &[pre]);
        let unit = b.write(
            t,
            Phase::NodeAgents,
            Asset::Unit(Service::ApiserverProxy),
            &[pre],
        );
        let proxy = b.start(
            t,
            Phase::NodeAgents,
            Service::ApiserverProxy,
            &[config, unit],
        );
        kubelet_deps.push(proxy);
        proxy_deps.push(proxy);
    }
    kubelet_deps.push(b.write(t, Phase::NodeAgents, Asset::Unit(Service::Kubelet), &[pre]));
    proxy_deps.push(b.write(
        t,
        Phase::NodeAgents,
        Asset::Unit(Service::KubeProxy),
        &[pre],
    ));
    Agents {
        kubelet: b.start(t, Phase::NodeAgents, Service::Kubelet, &kubelet_deps),
        kube_proxy: b.start(t, Phase::NodeAgents, Service::KubeProxy, &proxy_deps),
    }
}
