//! Raw spec → resolved model, one YAML section per file. Collects every
//! problem; never panics.
//!
//! Each section reads its part of the raw spec and reports what is wrong with
//! it. A check that needs a field which was invalid is skipped with a note
//! ("capacity not checked: network.clusterCIDR is invalid"); every other check
//! still runs. The sections, in the order they run:
//! - `cluster`: the version and the cluster name;
//! - `nodes`: names, addresses, roles, SSH;
//! - `network`: ranges, capacity, Service addresses, DNS, pod traffic, the
//!   underlay gateway, MTUs;
//! - `control_plane`: the control-plane nodes and `cluster.masterIP`;
//! - `security`, `runtime`, `etcd`: their sections;
//! - `extras`: cloud provider, images, admission plugins, binaries, faults;
//! - `pod_cidrs`: IPAM, last, since it needs valid ranges and node names.

mod cluster;
mod control_plane;
mod etcd;
mod extras;
mod network;
mod nodes;
mod parse;
mod pod_cidrs;
mod runtime;
mod security;

use super::model::*;
use super::raw::RawScenario;
use super::version::{self, Features, KubeVersion};
use super::Loaded;
use crate::diag::{Code, Diagnostics, Reporter};
use crate::ipam::IpamLock;

/// The version the checks run against: the scenario's when it is valid.
pub(super) struct Ver {
    /// None when `cluster.kubernetesVersion` is missing or invalid: checks
    /// that depend on the version are skipped, defaults follow the newest.
    pub known: Option<KubeVersion>,
    pub v: KubeVersion,
    pub feat: Features,
}

/// Host requirements (core/data/host.tsv): cgroup v2 from 1.35 unless the
/// scenario says `failCgroupV1: false`, explicitly and with a warning.
fn host_requirements(raw: &RawScenario, ver: &Ver, r: &mut Reporter<'_>) {
    let v = ver.v;
    match raw.kubelet.fail_cgroup_v1 {
        Some(_) if ver.known.is_some() && v.minor < 31 => r.error(
            Code::Removed,
            "kubelet.failCgroupV1",
            format!("failCgroupV1 arrived in the KubeletConfiguration in Kubernetes 1.31 (KEP-4569); this scenario is {v}"),
            "remove it: older kubelets run on cgroup v1",
        ),
        Some(false) if v.minor >= 35 => r.warn(
            Code::Advice,
            "kubelet.failCgroupV1",
            format!("Kubernetes {v} no longer supports cgroup v1 (KEP-5573): with failCgroupV1: false its kubelet starts on a cgroup v1 host, and preflight skips the cgroup v2 check"),
            "move the nodes to cgroup v2 and drop this setting",
        ),
        None if ver.known.is_some() && v.minor >= 35 => r.warn(
            Code::Advice,
            "cluster.kubernetesVersion",
            format!("the kubelet of Kubernetes {v} refuses to start on cgroup v1 hosts (failCgroupV1 defaults to true, KEP-5573): preflight requires cgroup v2 on every node; the real-kernel testbed runs no kubelet and does not prove it"),
            "on cgroup v1 hosts, set kubelet.failCgroupV1: false (unsupported upstream)",
        ),
        _ => {}
    }
}

pub(super) fn validate(
    raw: &RawScenario,
    lock: Option<&IpamLock>,
    mut r: Reporter<'_>,
) -> Result<Loaded, Diagnostics> {
    // Version first: many checks depend on it.
    let known = cluster::version(raw, &mut r);
    let v = known.unwrap_or(version::NEWEST);
    let ver = Ver {
        known,
        v,
        feat: v.features(),
    };
    if known.is_none() {
        r.not_checked(
            "cluster.kubernetesVersion",
            "options tied to a Kubernetes release",
            "cluster.kubernetesVersion",
        );
    }
    cluster::name(raw, &mut r);
    let mut nodes = nodes::nodes(raw, &mut r);
    let net = network::network(raw, &nodes, &mut r);
    let cps = control_plane::nodes(&nodes.list, &mut r);
    let master_ip = control_plane::master_ip(raw, &nodes.list, &cps, &mut r);
    let security = security::security(raw, &ver, &mut r);
    let control_plane_endpoint =
        control_plane::endpoint(raw, &nodes.list, &cps, &net, security.model, &mut r);
    let runtime = runtime::runtime(raw, &ver, net.mode, &mut r);
    let etcd = etcd::etcd(raw, &ver, &mut nodes.list, &cps, &mut r);
    let extras = extras::extras(raw, &ver, &runtime, &nodes.list, &mut r);
    let ipam = pod_cidrs::allocate(raw, &nodes, &net, lock, &mut r);
    host_requirements(raw, &ver, &mut r);

    match (
        r.has_errors(),
        known,
        master_ip,
        net.cluster_cidr,
        net.service_cidr,
        net.kubernetes_ip,
        net.dns_ip,
        ipam,
    ) {
        (
            false,
            Some(version),
            Some(master_ip),
            Some(cluster_cidr),
            Some(service_cidr),
            Some(kubernetes_service_ip),
            Some(dns_ip),
            Some(ipam),
        ) => {
            let scenario = Scenario {
                name: raw.cluster.name.clone().unwrap_or_default(),
                version,
                master_ip,
                control_plane_endpoint,
                nodes: nodes.list,
                network: Network {
                    node_cidr: net.node_cidr,
                    cluster_cidr,
                    node_prefix: net.node_prefix,
                    max_pods: net.max_pods,
                    service_cidr,
                    kubernetes_service_ip,
                    dns_ip,
                    dns_domain: net.dns_domain,
                    pod_traffic: net.pod_traffic,
                    masquerade: raw.network.masquerade.unwrap_or(true),
                    underlay_mtu: net.underlay_mtu,
                    pod_mtu: net.pod_mtu,
                    bridge: net.bridge,
                    interface: net.interface,
                    gateway: net.gateway,
                },
                security,
                runtime,
                etcd,
                cloud: extras.cloud,
                addons: Addons {
                    dns: raw.addons.dns.unwrap_or(true),
                },
                admission_plugins: extras.admission_plugins,
                images: extras.images,
                binaries_dir: extras.binaries_dir,
                kubelet: KubeletOptions {
                    fail_cgroup_v1: raw.kubelet.fail_cgroup_v1,
                },
                faults: extras.faults,
                alloc: ipam.alloc,
            };
            Ok(Loaded {
                scenario,
                warnings: r.finish(),
                lock: ipam.lock,
                lock_changes: ipam.changes,
            })
        }
        _ => {
            if !r.has_errors() {
                // Every None above comes with an error; this is a guard, not a path.
                r.error(
                    Code::Syntax,
                    "",
                    "the scenario could not be resolved",
                    "please report this: every unresolved field should have its own error",
                );
            }
            Err(r.finish())
        }
    }
}

/// `path` when the document gives it, else `fallback`: an error about a
/// defaulted value points at the field that made it matter.
pub(super) fn at<'p>(r: &Reporter<'_>, path: &'p str, fallback: &'p str) -> &'p str {
    if r.map.has(path) {
        path
    } else {
        fallback
    }
}

/// " (the default)" when the document does not give `path`.
pub(super) fn default_note(r: &Reporter<'_>, path: &str) -> &'static str {
    if r.map.has(path) {
        ""
    } else {
        " (the default)"
    }
}
