//! The flag tables: one function per component, each a list of rows that
//! read [`Features`] for every version-dependent choice.
//!
//! The version boundaries themselves live in `scenario::version` with their
//! sources; nothing here compares version numbers. The rows follow the
//! guide's advice for each component (its "flags to consider" lists) and
//! kubeadm's choices where the guide predates a feature.
//!
//! The per-node functions take `node` as an index into `s.nodes` and index
//! it directly (like a slice): [`super::render`] checks the index first and
//! returns [`super::RenderError::NoSuchNode`] for a bad one.

use super::url_host;
use crate::plan::{Asset, Ca, Cert, Component, KubeconfigUser, MANIFEST_DIR};
use crate::release::{self, HyperkubeForm};
use crate::scenario::{Features, Runtime, Scenario, SecurityModel};
use std::net::IpAddr;

/// One command-line flag, `--name=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: &'static str,
    pub value: String,
}

impl Flag {
    /// `--name=value`.
    pub fn arg(&self) -> String {
        format!("--{}={}", self.name, self.value)
    }
}

/// The flags as arguments, in table order.
pub fn args(flags: &[Flag]) -> Vec<String> {
    flags.iter().map(Flag::arg).collect()
}

/// containerd's CRI socket.
pub const CONTAINERD_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";
/// The insecure port of the guide's era (`http://127.0.0.1:8080`).
pub const INSECURE_PORT: u16 = crate::ports::APISERVER_INSECURE;

#[derive(Default)]
struct Table(Vec<Flag>);

impl Table {
    fn set(&mut self, name: &'static str, value: impl Into<String>) {
        self.0.push(Flag {
            name,
            value: value.into(),
        });
    }
    /// The flags sorted by name (as kubeadm writes them): the order of the
    /// rows above never shows in a manifest.
    fn done(mut self) -> Vec<Flag> {
        self.0.sort_by(|a, b| a.name.cmp(b.name));
        self.0
    }
}

fn path(a: Asset) -> &'static str {
    a.path()
}

/// The program and leading arguments of a control-plane component:
/// `/hyperkube apiserver` with hyperkube images up to 1.14 (the guide),
/// `/hyperkube kube-apiserver` from 1.15 (the short aliases were removed,
/// kubernetes#76953), else `kube-apiserver`. The form per release is in
/// `core/data/images.tsv`.
pub fn command(s: &Scenario, c: Component) -> Vec<String> {
    match c {
        Component::Etcd => vec!["etcd".into()],
        _ if s.images.hyperkube => {
            let sub = match release::release_images(s.version.minor).hyperkube {
                HyperkubeForm::Short => c.name().trim_start_matches("kube-"),
                // Validation refuses hyperkube where no image exists; the kube-*
                // names are the ones every hyperkube understood.
                HyperkubeForm::KubeNames | HyperkubeForm::None => c.name(),
            };
            vec!["/hyperkube".into(), sub.into()]
        }
        _ => vec![c.name().into()],
    }
}

/// True when `component` of this scenario's release has `--flag` (from
/// `core/data/flags.tsv`): a flag that is rendered exactly where its release
/// has it needs a row there and a line here, nothing else.
pub fn has(s: &Scenario, component: &str, flag: &str) -> bool {
    release::has_flag(component, s.version.minor, flag)
}

fn https(s: &Scenario) -> bool {
    s.security.model == SecurityModel::Https
}

fn node_ip(s: &Scenario, node: Option<usize>) -> IpAddr {
    node.and_then(|i| s.nodes.get(i))
        .map_or(s.master_ip, |n| n.ip)
}

/// The etcd client URLs the apiserver uses: every member.
pub fn etcd_servers(s: &Scenario) -> String {
    let scheme = s.security.model.scheme();
    s.etcd
        .members
        .iter()
        .filter_map(|&m| s.nodes.get(m))
        .map(|n| format!("{scheme}://{}:2379", url_host(n.ip)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether the apiserver serves the insecure port, and on which address.
///
/// The guide binds it to `$MASTER_IP` for http-firewall, but its own pod
/// template probes `127.0.0.1:8080` and points the scheduler and
/// controller-manager at `127.0.0.1:8080`; only `0.0.0.0` serves both. With
/// https it stays on loopback, for the local components only.
fn insecure_bind(s: &Scenario, fx: &Features) -> Option<&'static str> {
    if !(fx.insecure_flags && fx.insecure_serving && s.security.insecure_port) {
        return None;
    }
    Some(if https(s) { "127.0.0.1" } else { "0.0.0.0" })
}

/// kube-apiserver. `node` is the control-plane node it runs on (its address is advertised).
pub fn kube_apiserver(s: &Scenario, node: Option<usize>) -> Vec<Flag> {
    let fx = s.version.features();
    let mut t = Table::default();
    let tls = https(s);
    let cps = s.control_plane_nodes().count();
    t.set("advertise-address", node_ip(s, node).to_string());
    if s.security.allow_privileged {
        t.set("allow-privileged", "true");
    }
    if !fx.endpoint_reconciler_lease && cps > 1 {
        t.set("apiserver-count", cps.to_string());
    }
    if tls {
        t.set(
            "authorization-mode",
            if fx.node_authorizer {
                "Node,RBAC"
            } else {
                "RBAC"
            },
        );
    }
    if tls && s.security.basic_auth && fx.basic_auth {
        t.set("basic-auth-file", path(Asset::BasicAuth));
    }
    if tls {
        t.set("client-ca-file", path(Asset::CaCert(Ca::Cluster)));
    }
    cloud(s, &mut t);
    if !s.admission_plugins.is_empty() {
        let name = if fx.enable_admission_plugins {
            "enable-admission-plugins"
        } else {
            "admission-control"
        };
        t.set(name, s.admission_plugins.join(","));
    }
    if tls {
        t.set("etcd-cafile", path(Asset::CaCert(Ca::Etcd)));
        t.set(
            "etcd-certfile",
            path(Asset::Cert(Cert::ApiserverEtcdClient)),
        );
        t.set("etcd-keyfile", path(Asset::Key(Cert::ApiserverEtcdClient)));
    }
    t.set("etcd-servers", etcd_servers(s));
    // Until 1.20 the insecure port defaults to 8080: https turns it off with
    // 0. From 1.20 it is off and the flag (deprecated since 1.10) is not rendered.
    if fx.insecure_flags && fx.insecure_serving {
        match insecure_bind(s, &fx) {
            Some(addr) => {
                t.set("insecure-bind-address", addr);
                t.set("insecure-port", INSECURE_PORT.to_string());
            }
            None => t.set("insecure-port", "0"),
        }
    }
    if tls {
        // The apiserver verifies kubelets' serving certificates (issued with the node IP).
        t.set(
            "kubelet-certificate-authority",
            path(Asset::CaCert(Ca::Cluster)),
        );
        t.set(
            "kubelet-client-certificate",
            path(Asset::Cert(Cert::ApiserverKubeletClient)),
        );
        t.set(
            "kubelet-client-key",
            path(Asset::Key(Cert::ApiserverKubeletClient)),
        );
        t.set(
            "kubelet-preferred-address-types",
            "InternalIP,ExternalIP,Hostname",
        );
    }
    if tls && fx.front_proxy_ca {
        t.set(
            "proxy-client-cert-file",
            path(Asset::Cert(Cert::FrontProxyClient)),
        );
        t.set(
            "proxy-client-key-file",
            path(Asset::Key(Cert::FrontProxyClient)),
        );
        t.set("requestheader-allowed-names", "front-proxy-client");
        t.set(
            "requestheader-client-ca-file",
            path(Asset::CaCert(Ca::FrontProxy)),
        );
        t.set("requestheader-extra-headers-prefix", "X-Remote-Extra-");
        t.set("requestheader-group-headers", "X-Remote-Group");
        t.set("requestheader-username-headers", "X-Remote-User");
    }
    if tls {
        t.set("secure-port", s.security.model.apiserver_port().to_string());
    }
    if tls && fx.service_account_issuer {
        t.set(
            "service-account-issuer",
            format!("https://kubernetes.default.svc.{}", s.network.dns_domain),
        );
    }
    // The ServiceAccount admission plugin needs tokens, which need a key pair,
    // whatever the security model (http-firewall included).
    t.set("service-account-key-file", path(Asset::ServiceAccountPub));
    if tls && fx.service_account_issuer {
        t.set(
            "service-account-signing-key-file",
            path(Asset::ServiceAccountKey),
        );
    }
    t.set(
        "service-cluster-ip-range",
        s.network.service_cidr.to_string(),
    );
    if tls {
        t.set("tls-cert-file", path(Asset::Cert(Cert::Apiserver)));
        t.set("tls-private-key-file", path(Asset::Key(Cert::Apiserver)));
        t.set("token-auth-file", path(Asset::KnownTokens));
    } else {
        // The guide's firewall-only model: no tokens.
        t.set("token-auth-file", "/dev/null");
    }
    t.done()
}

/// kube-controller-manager (the guide's "flags to consider", plus kubeadm's credentials).
pub fn kube_controller_manager(s: &Scenario) -> Vec<Flag> {
    let fx = s.version.features();
    let mut t = Table::default();
    let tls = https(s);
    let kubeconfig = path(Asset::Kubeconfig(KubeconfigUser::ControllerManager));
    if fx.controller_manager_secure_health {
        t.set("bind-address", "127.0.0.1");
    } else {
        t.set("address", "127.0.0.1");
    }
    // kscratch allocates each node's pod CIDR itself (the IPAM lock) and
    // configures the bridges with it; the range allocator fills Node.spec.podCIDR.
    t.set("allocate-node-cidrs", "true");
    if tls && fx.controller_manager_secure_health {
        t.set("authentication-kubeconfig", kubeconfig);
        t.set("authorization-kubeconfig", kubeconfig);
    }
    cloud(s, &mut t);
    t.set("cluster-cidr", s.network.cluster_cidr.to_string());
    t.set("cluster-name", s.name.clone());
    if tls {
        t.set(
            "cluster-signing-cert-file",
            path(Asset::CaCert(Ca::Cluster)),
        );
        t.set("cluster-signing-key-file", path(Asset::CaKey(Ca::Cluster)));
        t.set("kubeconfig", kubeconfig);
    }
    t.set("leader-elect", "true");
    if !tls {
        t.set("master", format!("127.0.0.1:{INSECURE_PORT}"));
    }
    t.set("node-cidr-mask-size", s.network.node_prefix.to_string());
    if tls {
        t.set("root-ca-file", path(Asset::CaCert(Ca::Cluster)));
    }
    // The token controller mints service-account tokens only with the signing key.
    t.set(
        "service-account-private-key-file",
        path(Asset::ServiceAccountKey),
    );
    t.set(
        "service-cluster-ip-range",
        s.network.service_cidr.to_string(),
    );
    if tls {
        t.set("use-service-account-credentials", "true");
    }
    t.done()
}

/// kube-scheduler. The guide: "typically, no additional flags are required".
pub fn kube_scheduler(s: &Scenario) -> Vec<Flag> {
    let fx = s.version.features();
    let mut t = Table::default();
    let tls = https(s);
    let kubeconfig = path(Asset::Kubeconfig(KubeconfigUser::Scheduler));
    if fx.scheduler_secure_health {
        t.set("bind-address", "127.0.0.1");
    } else {
        t.set("address", "127.0.0.1");
    }
    if tls && fx.scheduler_secure_health {
        t.set("authentication-kubeconfig", kubeconfig);
        t.set("authorization-kubeconfig", kubeconfig);
    }
    if tls {
        t.set("kubeconfig", kubeconfig);
    }
    t.set("leader-elect", "true");
    if !tls {
        t.set("master", format!("127.0.0.1:{INSECURE_PORT}"));
    }
    t.done()
}

/// The taint a control-plane node without the worker role registers with.
pub fn control_plane_taint(fx: &Features) -> &'static str {
    if fx.control_plane_taint {
        "node-role.kubernetes.io/control-plane:NoSchedule"
    } else {
        "node-role.kubernetes.io/master:NoSchedule"
    }
}

/// The KubeletConfiguration carries `registerWithTaints` (1.23+, `core/data/fields.tsv`).
pub fn kubelet_taints_in_config(s: &Scenario) -> bool {
    s.version.features().kubelet_config_file
        && release::field_state("kubelet-config", s.version.minor, "registerWithTaints")
            == release::State::Present
}

/// No control-plane node at all: the kubelet runs standalone (`--pod-cidr`).
pub fn standalone(s: &Scenario) -> bool {
    s.control_plane_nodes().next().is_none()
}

/// The kubelet's command line on `node`. With a config file (1.10+) most
/// settings live in the KubeletConfiguration and only node identity,
/// credentials and runtime selection stay flags.
pub fn kubelet(s: &Scenario, node: usize) -> Vec<Flag> {
    let fx = s.version.features();
    let mut t = Table::default();
    let n = &s.nodes[node];
    let tls = https(s);
    let containerd = matches!(s.runtime, Runtime::Containerd);
    if fx.kubelet_allow_privileged_flag && s.security.allow_privileged {
        t.set("allow-privileged", "true");
    }
    if !fx.kubelet_config_file {
        if tls {
            t.set("anonymous-auth", "false");
            t.set("authentication-token-webhook", "true");
            t.set("authorization-mode", "Webhook");
            t.set("client-ca-file", path(Asset::CaCert(Ca::Cluster)));
        }
        if containerd {
            t.set("cgroup-driver", "systemd");
        }
    }
    cloud(s, &mut t);
    if !fx.kubelet_config_file {
        t.set("cluster-dns", s.network.dns_ip.to_string());
        t.set("cluster-domain", s.network.dns_domain.clone());
    }
    if fx.kubelet_config_file {
        t.set("config", path(Asset::KubeletConfig));
    }
    // The guide runs docker with its own bridge (cbr0) and no kubelet network
    // plugin: docker attaches pods to cbr0. containerd gets CNI from its config.
    // Needed only while the kubelet defaults to docker (dockershim, to 1.23);
    // 1.24-1.26 accept only `remote` and warn that the flag is deprecated.
    if containerd && fx.dockershim {
        t.set("container-runtime", "remote");
    }
    if containerd && !fx.kubelet_runtime_endpoint_in_config {
        t.set("container-runtime-endpoint", CONTAINERD_ENDPOINT);
    }
    // The node is named as in the scenario, whatever the machine's hostname:
    // its client certificate says system:node:<name>.
    t.set("hostname-override", n.name.clone());
    t.set(
        "kubeconfig",
        path(Asset::Kubeconfig(KubeconfigUser::Kubelet)),
    );
    if !fx.kubelet_config_file {
        t.set("max-pods", s.network.max_pods.to_string());
    }
    t.set("node-ip", n.ip.to_string());
    if !fx.kubelet_config_file {
        if standalone(s) {
            t.set("pod-cidr", s.pod_cidr(node).to_string());
        }
        t.set("pod-manifest-path", MANIFEST_DIR);
    }
    // The kubelet registers its node by default (--register-node=true); from
    // 1.23 the taints go in the config file (registerWithTaints).
    if n.roles.control_plane && !n.roles.worker && !kubelet_taints_in_config(s) {
        t.set("register-with-taints", control_plane_taint(&fx));
    }
    if fx.kubelet_require_kubeconfig {
        t.set("require-kubeconfig", "true");
    }
    if !fx.kubelet_config_file && tls {
        t.set("tls-cert-file", path(Asset::Cert(Cert::KubeletServing)));
        t.set(
            "tls-private-key-file",
            path(Asset::Key(Cert::KubeletServing)),
        );
    }
    t.done()
}

/// kube-proxy's command line on `node`: the config file from 1.10, flags before.
pub fn kube_proxy(s: &Scenario, node: usize) -> Vec<Flag> {
    let fx = s.version.features();
    let mut t = Table::default();
    if fx.kube_proxy_config_file {
        t.set("config", path(Asset::KubeProxyConfig));
        return t.done();
    }
    t.set("cluster-cidr", s.network.cluster_cidr.to_string());
    t.set("hostname-override", s.nodes[node].name.clone());
    t.set(
        "kubeconfig",
        path(Asset::Kubeconfig(KubeconfigUser::KubeProxy)),
    );
    t.set("master", apiserver_url(s));
    t.set("proxy-mode", "iptables");
    t.done()
}

/// The guide's `--master` for node agents: `https://$MASTER_IP` or
/// `http://$MASTER_IP:8080`, or the control-plane endpoint when there is one.
pub fn apiserver_url(s: &Scenario) -> String {
    s.apiserver_url()
}

/// etcd's metrics listener for health probes (`--listen-metrics-urls`, etcd 3.3+).
pub const ETCD_METRICS_URL: &str = "http://127.0.0.1:2381";

/// etcd member `node`'s flags. `metrics` adds the plain-HTTP health
/// listener (the static pod probes it; etcd 3.3+ only).
pub fn etcd(s: &Scenario, node: usize, metrics: bool) -> Vec<Flag> {
    let mut t = Table::default();
    let n = &s.nodes[node];
    let tls = https(s);
    let scheme = s.security.model.scheme();
    let host = url_host(n.ip);
    t.set("advertise-client-urls", format!("{scheme}://{host}:2379"));
    if tls {
        t.set("cert-file", path(Asset::Cert(Cert::EtcdServer)));
        t.set("client-cert-auth", "true");
    }
    t.set("data-dir", s.etcd.data_dir.clone());
    t.set(
        "initial-advertise-peer-urls",
        format!("{scheme}://{host}:2380"),
    );
    let cluster: Vec<String> = s
        .etcd
        .members
        .iter()
        .filter_map(|&m| s.nodes.get(m))
        .map(|m| format!("{}={scheme}://{}:2380", m.name, url_host(m.ip)))
        .collect();
    t.set("initial-cluster", cluster.join(","));
    t.set("initial-cluster-state", "new");
    t.set("initial-cluster-token", format!("{}-etcd", s.name));
    if tls {
        t.set("key-file", path(Asset::Key(Cert::EtcdServer)));
    }
    t.set(
        "listen-client-urls",
        format!("{scheme}://{host}:2379,{scheme}://127.0.0.1:2379"),
    );
    if metrics {
        t.set("listen-metrics-urls", ETCD_METRICS_URL);
    }
    t.set("listen-peer-urls", format!("{scheme}://{host}:2380"));
    t.set("name", n.name.clone());
    if tls {
        t.set("peer-cert-file", path(Asset::Cert(Cert::EtcdPeer)));
        t.set("peer-client-cert-auth", "true");
        t.set("peer-key-file", path(Asset::Key(Cert::EtcdPeer)));
        t.set("peer-trusted-ca-file", path(Asset::CaCert(Ca::Etcd)));
        t.set("trusted-ca-file", path(Asset::CaCert(Ca::Etcd)));
    }
    t.done()
}

/// `--cloud-provider` and `--cloud-config`, where the scenario names a provider.
fn cloud(s: &Scenario, t: &mut Table) {
    if let Some(c) = &s.cloud {
        t.set("cloud-provider", c.name.clone());
        if let Some(cfg) = &c.config {
            t.set("cloud-config", cfg.clone());
        }
    }
}
