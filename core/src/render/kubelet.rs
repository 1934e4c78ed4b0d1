//! The kubelet's and kube-proxy's configuration files
//! (`KubeletConfiguration`, `KubeProxyConfiguration`), for the versions that
//! read them (1.10+). Older versions get the same settings as flags
//! ([`super::flags::kubelet`], [`super::flags::kube_proxy`]).
//!
//! The structs are the subset kscratch writes; they deserialize too, so the
//! simulator reads a node's config the way the kubelet does.

use super::flags::{self, CONTAINERD_ENDPOINT};
use super::{not_applicable, serialize_error, RenderError};
use crate::plan::{Asset, Ca, Cert, KubeconfigUser, MANIFEST_DIR};
use crate::scenario::{Runtime, Scenario, SecurityModel};
use serde::{Deserialize, Serialize};

/// `kubelet.config.k8s.io/v1beta1` `KubeletConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfiguration {
    pub api_version: String,
    pub kind: String,
    /// The static pod directory: the guide's kubelet `--config` (later `--pod-manifest-path`).
    pub static_pod_path: String,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub max_pods: u32,
    pub authentication: KubeletAuthentication,
    pub authorization: KubeletAuthorization,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_private_key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_runtime_endpoint: Option<String>,
    /// Only without a control plane (standalone); in a cluster the kubelet gets it from its Node.
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    /// `failCgroupV1` (1.31+), only where the scenario sets it.
    #[serde(
        rename = "failCgroupV1",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub fail_cgroup_v1: Option<bool>,
    /// The taints a control-plane node registers with (1.23+; before, `--register-with-taints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_with_taints: Option<Vec<Taint>>,
}

/// A node taint as the KubeletConfiguration writes it (`core/v1` `Taint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taint {
    pub key: String,
    pub effect: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeletAuthentication {
    pub anonymous: Enabled,
    pub webhook: Enabled,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enabled {
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509 {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeletAuthorization {
    /// `Webhook` (ask the apiserver) with https, `AlwaysAllow` behind the guide's firewall.
    pub mode: String,
}

/// `kubeproxy.config.k8s.io/v1alpha1` `KubeProxyConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    pub api_version: String,
    pub kind: String,
    pub client_connection: ClientConnection,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    pub hostname_override: String,
    pub mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConnection {
    pub kubeconfig: String,
}

/// The KubeletConfiguration of `node` (for versions with `kubelet_config_file`).
pub fn kubelet_config(s: &Scenario, node: usize) -> Result<KubeletConfiguration, RenderError> {
    let fx = s.version.features();
    if !fx.kubelet_config_file {
        return Err(not_applicable(Asset::KubeletConfig, &format!("the kubelet reads a config file from Kubernetes 1.10; this scenario is {} (flags only)", s.version)));
    }
    if node >= s.nodes.len() {
        return Err(RenderError::NoSuchNode {
            index: node,
            count: s.nodes.len(),
        });
    }
    let tls = s.security.model == SecurityModel::Https;
    let containerd = matches!(s.runtime, Runtime::Containerd);
    Ok(KubeletConfiguration {
        api_version: "kubelet.config.k8s.io/v1beta1".into(),
        kind: "KubeletConfiguration".into(),
        static_pod_path: MANIFEST_DIR.into(),
        cluster_dns: vec![s.network.dns_ip.to_string()],
        cluster_domain: s.network.dns_domain.clone(),
        max_pods: s.network.max_pods,
        // With https only the apiserver (its kubelet-client cert) and
        // webhook-authorized tokens reach the kubelet's API.
        authentication: KubeletAuthentication {
            anonymous: Enabled { enabled: !tls },
            webhook: Enabled { enabled: tls },
            x509: tls.then(|| X509 {
                client_ca_file: Asset::CaCert(Ca::Cluster).path().into(),
            }),
        },
        authorization: KubeletAuthorization {
            mode: if tls { "Webhook" } else { "AlwaysAllow" }.into(),
        },
        tls_cert_file: tls.then(|| Asset::Cert(Cert::KubeletServing).path().into()),
        tls_private_key_file: tls.then(|| Asset::Key(Cert::KubeletServing).path().into()),
        // containerd is configured with SystemdCgroup; both sides must agree.
        cgroup_driver: containerd.then(|| "systemd".into()),
        container_runtime_endpoint: (containerd && fx.kubelet_runtime_endpoint_in_config)
            .then(|| CONTAINERD_ENDPOINT.into()),
        pod_cidr: flags::standalone(s).then(|| s.pod_cidr(node).to_string()),
        fail_cgroup_v1: s.kubelet.fail_cgroup_v1.filter(|_| {
            crate::release::field_state("kubelet-config", s.version.minor, "failCgroupV1")
                .accepted()
        }),
        register_with_taints: {
            let n = &s.nodes[node];
            (n.roles.control_plane && !n.roles.worker && flags::kubelet_taints_in_config(s)).then(
                || {
                    let t = flags::control_plane_taint(&fx);
                    let (key, effect) = t.split_once(':').unwrap_or((t, "NoSchedule"));
                    vec![Taint {
                        key: key.into(),
                        effect: effect.into(),
                    }]
                },
            )
        },
    })
}

/// The KubeProxyConfiguration of `node` (for versions with `kube_proxy_config_file`).
pub fn kube_proxy_config(s: &Scenario, node: usize) -> Result<KubeProxyConfiguration, RenderError> {
    if !s.version.features().kube_proxy_config_file {
        return Err(not_applicable(Asset::KubeProxyConfig, &format!("kube-proxy reads a config file from Kubernetes 1.10; this scenario is {} (flags only)", s.version)));
    }
    let n = s.nodes.get(node).ok_or(RenderError::NoSuchNode {
        index: node,
        count: s.nodes.len(),
    })?;
    Ok(KubeProxyConfiguration {
        api_version: "kubeproxy.config.k8s.io/v1alpha1".into(),
        kind: "KubeProxyConfiguration".into(),
        client_connection: ClientConnection {
            kubeconfig: Asset::Kubeconfig(KubeconfigUser::KubeProxy).path().into(),
        },
        cluster_cidr: s.network.cluster_cidr.to_string(),
        hostname_override: n.name.clone(),
        mode: "iptables".into(),
    })
}

pub(super) fn render_kubelet(s: &Scenario, node: usize) -> Result<String, RenderError> {
    serde_yaml::to_string(&kubelet_config(s, node)?)
        .map_err(|e| serialize_error(Asset::KubeletConfig.path(), e))
}

pub(super) fn render_kube_proxy(s: &Scenario, node: usize) -> Result<String, RenderError> {
    serde_yaml::to_string(&kube_proxy_config(s, node)?)
        .map_err(|e| serialize_error(Asset::KubeProxyConfig.path(), e))
}
