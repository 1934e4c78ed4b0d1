//! Kubernetes versions and the one table of what each version understands.
//!
//! Every boundary carries its source. The planner asks this table, never
//! compares version numbers itself, so a boundary is fixed in one place.

use serde::Serialize;
use std::fmt;

/// A Kubernetes release: `1.6`, `1.29.4`, `v1.30.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct KubeVersion {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

/// The oldest and newest minor releases kscratch knows flags for.
pub const OLDEST: KubeVersion = KubeVersion::new(1, 6, 0);
pub const NEWEST: KubeVersion = KubeVersion::new(1, 35, 0);

impl KubeVersion {
    pub const fn new(major: u16, minor: u16, patch: u16) -> Self {
        KubeVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `1.6`, `1.6.13` or `v1.6.13`.
    pub fn parse(s: &str) -> Result<KubeVersion, String> {
        let t = s.trim().strip_prefix('v').unwrap_or(s.trim());
        let parts: Vec<&str> = t.split('.').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(format!(
                "`{s}` is not a version: expected MAJOR.MINOR or MAJOR.MINOR.PATCH"
            ));
        }
        let num = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("`{p}` in `{s}` is not a number"))
        };
        Ok(KubeVersion::new(
            num(parts[0])?,
            num(parts[1])?,
            if parts.len() == 3 { num(parts[2])? } else { 0 },
        ))
    }

    fn at_least(self, minor: u16) -> bool {
        (self.major, self.minor) >= (1, minor)
    }

    /// True when this version is within the range kscratch renders flags for.
    pub fn supported(self) -> bool {
        self.major == 1
            && self >= OLDEST
            && (self.major, self.minor) <= (NEWEST.major, NEWEST.minor)
    }

    /// The version whose features decide flag rendering.
    pub fn features(self) -> Features {
        Features::of(self)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What a version has. One field per decision the planner makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Features {
    /// apiserver `--basic-auth-file`: removed in 1.19 (CHANGELOG-1.19, kubernetes#89069).
    pub basic_auth: bool,
    /// apiserver insecure serving (`--insecure-port` other than 0): disabled in 1.20
    /// (CHANGELOG-1.20, kubernetes#95856); the flags themselves were removed in 1.24 (kubernetes#106859).
    pub insecure_serving: bool,
    /// `--insecure-bind-address`/`--insecure-port` still parse (even if only as 0): before 1.24.
    pub insecure_flags: bool,
    /// dockershim inside the kubelet: removed in 1.24 (KEP-2221).
    pub dockershim: bool,
    /// hyperkube images were last published for 1.18 (kubernetes#88676 removed hyperkube in 1.19).
    pub hyperkube: bool,
    /// `--enable-admission-plugins` replaced `--admission-control` in 1.10 (kubernetes#58123).
    pub enable_admission_plugins: bool,
    /// kubelet reads a KubeletConfiguration file (`--config`, staticPodPath) from 1.10
    /// (beta, kubernetes#60084); before, `--pod-manifest-path` and flags.
    pub kubelet_config_file: bool,
    /// kubelet `--require-kubeconfig` was needed with `--kubeconfig` up to 1.7; removed in 1.10.
    pub kubelet_require_kubeconfig: bool,
    /// kube-proxy reads a KubeProxyConfiguration file (`--config`) from 1.10.
    pub kube_proxy_config_file: bool,
    /// `--service-account-issuer` and `--service-account-signing-key-file` are required from 1.20
    /// (BoundServiceAccountTokenVolume, kubernetes#95896).
    pub service_account_issuer: bool,
    /// Separate etcd CA and front-proxy CA, as kubeadm lays them out (kubeadm 1.9+; aggregation layer 1.7+).
    pub front_proxy_ca: bool,
    /// kube-scheduler's insecure health port 10251 was removed in 1.23 (kubernetes#106865):
    /// health is on https 10259 from then.
    pub scheduler_secure_health: bool,
    /// kube-controller-manager serves health on https 10257 only from 1.22
    /// (insecure `--port` removed, kubernetes#101879).
    pub controller_manager_secure_health: bool,
    /// kubeadm gives the admin kubeconfig the `kubeadm:cluster-admins` group from 1.29
    /// and a separate `super-admin.conf` (system:masters).
    pub admin_cluster_admins_group: bool,
    /// kubelet `--network-plugin` (kubenet/cni): removed with dockershim in 1.24.
    pub kubelet_network_plugin_flag: bool,
    /// apiserver `--authorization-mode=Node`: the Node authorizer arrived in 1.7
    /// (CHANGELOG-1.7, kubernetes#46076); 1.6 has RBAC (beta) only.
    pub node_authorizer: bool,
    /// kubelet `--allow-privileged`: deprecated in 1.13, removed in 1.15 (CHANGELOG-1.15).
    pub kubelet_allow_privileged_flag: bool,
    /// kubelet `--container-runtime` (`docker` or `remote`): removed in 1.27 (CHANGELOG-1.27);
    /// from then the kubelet only talks CRI to its endpoint.
    pub kubelet_container_runtime_flag: bool,
    /// KubeletConfiguration `containerRuntimeEndpoint` replaces the
    /// `--container-runtime-endpoint` flag from 1.27 (CHANGELOG-1.27).
    pub kubelet_runtime_endpoint_in_config: bool,
    /// Control-plane nodes are tainted `node-role.kubernetes.io/control-plane` from 1.24;
    /// before, `node-role.kubernetes.io/master` (kubeadm CHANGELOG-1.24, kubernetes/kubeadm#2200).
    pub control_plane_taint: bool,
    /// CoreDNS is the cluster DNS from 1.11 (CHANGELOG-1.11: CoreDNS GA, kubeadm's default);
    /// before, kube-dns.
    pub coredns: bool,
    /// Deployments are served as `apps/v1` from 1.9 (CHANGELOG-1.9: Workloads API GA);
    /// before, `extensions/v1beta1`.
    pub apps_v1: bool,
    /// The apiserver reconciles the `kubernetes` endpoints with leases from 1.11
    /// (CHANGELOG-1.11, `--endpoint-reconciler-type=lease` default); before, HA needs `--apiserver-count`.
    pub endpoint_reconciler_lease: bool,
    /// containerd's built-in CRI plugin (containerd 1.1) serves the kubelet from 1.10
    /// (kubernetes.io blog 2018-05-24, "Kubernetes Containerd Integration Goes GA");
    /// before, the kubelet talks to docker only.
    pub containerd_cri: bool,
}

impl Features {
    pub fn of(v: KubeVersion) -> Features {
        Features {
            basic_auth: !v.at_least(19),
            insecure_serving: !v.at_least(20),
            insecure_flags: !v.at_least(24),
            dockershim: !v.at_least(24),
            hyperkube: !v.at_least(19),
            enable_admission_plugins: v.at_least(10),
            kubelet_config_file: v.at_least(10),
            kubelet_require_kubeconfig: !v.at_least(8),
            kube_proxy_config_file: v.at_least(10),
            service_account_issuer: v.at_least(20),
            front_proxy_ca: v.at_least(9),
            scheduler_secure_health: v.at_least(23),
            controller_manager_secure_health: v.at_least(22),
            admin_cluster_admins_group: v.at_least(29),
            kubelet_network_plugin_flag: !v.at_least(24),
            node_authorizer: v.at_least(7),
            kubelet_allow_privileged_flag: !v.at_least(15),
            kubelet_container_runtime_flag: !v.at_least(27),
            kubelet_runtime_endpoint_in_config: v.at_least(27),
            control_plane_taint: v.at_least(24),
            coredns: v.at_least(11),
            apps_v1: v.at_least(9),
            endpoint_reconciler_lease: v.at_least(11),
            containerd_cri: v.at_least(10),
        }
    }
}

/// In-tree cloud providers and the release that removed each (KEP-2395).
pub const CLOUD_PROVIDERS: &[(&str, Option<KubeVersion>)] = &[
    ("aws", Some(KubeVersion::new(1, 27, 0))),
    ("azure", Some(KubeVersion::new(1, 30, 0))),
    ("cloudstack", Some(KubeVersion::new(1, 16, 0))),
    ("external", None),
    ("gce", Some(KubeVersion::new(1, 31, 0))),
    ("openstack", Some(KubeVersion::new(1, 26, 0))),
    ("ovirt", Some(KubeVersion::new(1, 16, 0))),
    ("photon", Some(KubeVersion::new(1, 16, 0))),
    ("vsphere", Some(KubeVersion::new(1, 30, 0))),
];

/// The admission plugins recommended for a version (the guide's `$RECOMMENDED_LIST`).
pub fn recommended_admission_plugins(v: KubeVersion) -> Vec<&'static str> {
    if v.at_least(10) {
        // From 1.10 the apiserver enables the recommended set by default; these are the
        // ones kubeadm lists explicitly.
        vec!["NodeRestriction"]
    } else {
        // The 1.6-era recommendation (admission-controllers docs of that release).
        vec![
            "NamespaceLifecycle",
            "LimitRanger",
            "ServiceAccount",
            "PersistentVolumeLabel",
            "DefaultStorageClass",
            "ResourceQuota",
            "DefaultTolerationSeconds",
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_people_write() {
        assert_eq!(
            KubeVersion::parse("1.6").unwrap(),
            KubeVersion::new(1, 6, 0)
        );
        assert_eq!(
            KubeVersion::parse("v1.29.4").unwrap(),
            KubeVersion::new(1, 29, 4)
        );
        assert!(KubeVersion::parse("1").is_err());
        assert!(KubeVersion::parse("1.x").is_err());
        assert!(KubeVersion::parse("").is_err());
    }

    #[test]
    fn boundaries_fall_where_the_changelogs_put_them() {
        let f = |s| KubeVersion::parse(s).unwrap().features();
        assert!(f("1.18").basic_auth && !f("1.19").basic_auth);
        assert!(f("1.19").insecure_serving && !f("1.20").insecure_serving);
        assert!(f("1.23").dockershim && !f("1.24").dockershim);
        assert!(f("1.18").hyperkube && !f("1.19").hyperkube);
        assert!(!f("1.9").kubelet_config_file && f("1.10").kubelet_config_file);
    }

    #[test]
    fn rendering_boundaries_fall_where_the_changelogs_put_them() {
        let f = |s| KubeVersion::parse(s).unwrap().features();
        assert!(!f("1.6").node_authorizer && f("1.7").node_authorizer);
        assert!(
            f("1.14").kubelet_allow_privileged_flag && !f("1.15").kubelet_allow_privileged_flag
        );
        assert!(
            f("1.26").kubelet_container_runtime_flag && !f("1.27").kubelet_container_runtime_flag
        );
        assert!(
            !f("1.26").kubelet_runtime_endpoint_in_config
                && f("1.27").kubelet_runtime_endpoint_in_config
        );
        assert!(!f("1.23").control_plane_taint && f("1.24").control_plane_taint);
        assert!(!f("1.10").coredns && f("1.11").coredns);
        assert!(!f("1.8").apps_v1 && f("1.9").apps_v1);
        assert!(!f("1.10").endpoint_reconciler_lease && f("1.11").endpoint_reconciler_lease);
    }
}
