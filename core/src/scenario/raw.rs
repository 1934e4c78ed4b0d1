//! The raw scenario: serde's view of the YAML, before any validation.
//!
//! Addresses are kept as text here so that validation, not serde, reports
//! them, with a path, a position and a hint. Unknown keys are errors.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawScenario {
    pub cluster: RawCluster,
    pub nodes: Vec<RawNode>,
    #[serde(default)]
    pub network: RawNetwork,
    #[serde(default)]
    pub security: RawSecurity,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub etcd: RawEtcd,
    #[serde(default)]
    pub cloud_provider: Option<RawCloudProvider>,
    #[serde(default)]
    pub addons: RawAddons,
    #[serde(default)]
    pub admission_plugins: Option<Vec<String>>,
    #[serde(default)]
    pub images: RawImages,
    #[serde(default)]
    pub binaries: RawBinaries,
    #[serde(default)]
    pub kubelet: RawKubelet,
    /// What-if faults applied by `kscratch check` after the plan has run.
    #[serde(default)]
    pub faults: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCluster {
    pub name: String,
    pub kubernetes_version: String,
    #[serde(rename = "masterIP")]
    pub master_ip: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawNode {
    pub name: String,
    pub ip: String,
    #[serde(default)]
    pub roles: Option<Vec<RawRole>>,
    #[serde(default)]
    pub ssh: RawSsh,
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawRole {
    ControlPlane,
    Etcd,
    Worker,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSsh {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub key: Option<String>,
    pub sudo: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawNetwork {
    #[serde(rename = "nodeCIDR")]
    pub node_cidr: Option<String>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    pub node_prefix: Option<u8>,
    pub max_pods: Option<u32>,
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: Option<String>,
    #[serde(default)]
    pub dns: RawDns,
    pub pod_traffic: Option<RawPodTraffic>,
    #[serde(default)]
    pub vxlan: Option<RawVxlan>,
    pub masquerade: Option<bool>,
    #[serde(rename = "underlayMTU")]
    pub underlay_mtu: Option<u32>,
    pub bridge: Option<String>,
    pub interface: Option<String>,
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawDns {
    pub ip: Option<String>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawPodTraffic {
    Routed,
    Fabric,
    Vxlan,
    External,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawVxlan {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    #[serde(rename = "mtu")]
    pub mtu: Option<u32>,
    pub device: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSecurity {
    pub model: Option<RawSecurityModel>,
    #[serde(default, rename = "extraSANs")]
    pub extra_sans: Vec<String>,
    pub basic_auth: Option<bool>,
    pub insecure_port: Option<bool>,
    pub allow_privileged: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawSecurityModel {
    HttpFirewall,
    Https,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRuntime {
    pub kind: Option<RawRuntimeKind>,
    pub mtu: Option<u32>,
    /// docker only: `--ip-masq` (the guide says false when pod IPs are routable).
    pub ip_masq: Option<bool>,
    /// docker only: `--iptables`.
    pub iptables: Option<bool>,
    pub nofile: Option<u64>,
    pub insecure_registry: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawRuntimeKind {
    Docker,
    Containerd,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEtcd {
    pub members: Option<Vec<String>>,
    pub data_dir: Option<String>,
    pub durable: Option<bool>,
    pub version: Option<String>,
    pub run_as: Option<RawEtcdRunAs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawEtcdRunAs {
    StaticPod,
    Service,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCloudProvider {
    pub name: String,
    pub config: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAddons {
    pub dns: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawImages {
    pub registry: Option<String>,
    pub hyperkube: Option<bool>,
    pub etcd: Option<String>,
}

/// Kubelet settings a scenario may state explicitly.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawKubelet {
    /// KubeletConfiguration `failCgroupV1` (1.31+): `false` lets a 1.35+
    /// kubelet start on a cgroup v1 host.
    pub fail_cgroup_v1: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBinaries {
    /// The guide's `kubernetes/server/bin`, on the machine running kscratch.
    pub dir: Option<String>,
}
