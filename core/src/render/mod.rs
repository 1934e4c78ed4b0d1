//! Rendering: the bytes of every file a plan writes.
//!
//! A plan names files as [`Asset`]s; [`render`] turns an asset into the exact
//! bytes a node receives: static pod manifests (built with `k8s-openapi`'s
//! types), kubelet and kube-proxy configuration, systemd units, docker and
//! containerd configuration, the CNI bridge config, kubeconfigs, the DNS addon
//! and the apiserver's credential files.
//!
//! This module is pure, like the rest of the crate: no IO, no clock, no
//! randomness. Key material comes in through the [`Secrets`] trait. The
//! backends implement it with real keys; [`Redacted`] implements it with
//! deterministic placeholders, for golden files and for the simulator.
//!
//! Every version-dependent choice reads [`crate::scenario::Features`], the one
//! table of version boundaries; the flag tables per component are in
//! [`flags`].
//!
//! The formats written here are also parsed back, in one parser set
//! (`parse.rs`: [`Argv`], [`static_pod_command`], [`parse_unit`],
//! [`docker_opts`], the typed kubelet/kube-proxy/CNI/kubeconfig structs), so
//! that what the simulator reads is what a node reads. Parsers never panic:
//! they return a [`ParseError`] naming what they could not read.

mod cni;
mod credentials;
mod dns;
pub mod flags;
mod haproxy;
mod kubeconfig;
mod kubelet;
mod network;
mod parse;
mod pki;
mod pods;
mod rbac;
mod units;

pub use cni::{
    cni_conflist, BridgePlugin, CniConfList, CniPlugin, HostLocalIpam, IpamRange, IpamRoute,
    PortmapPlugin,
};
pub use credentials::{
    basic_auth_csv, basic_auth_users, known_tokens_csv, parse_credentials_csv, token_users,
    CredentialLine, TokenUser,
};
pub use dns::dns_addon_documents;
pub use haproxy::{Backend, Frontend, HaproxyConfig, HealthCheck, Server, HEALTH_PATH};
pub use kubeconfig::{
    kubeconfig, kubeconfig_identity, Kubeconfig, KubeconfigIdentity, NamedCluster, NamedContext,
    NamedUser,
};
pub use kubelet::{
    kube_proxy_config, kubelet_config, KubeProxyConfiguration, KubeletConfiguration,
};
pub use network::{NetworkDescription, NodeTraffic, NETWORK_CONF, NETWORK_UP, NETWORK_UP_PATH};
pub use parse::{
    container_command, docker_opts, flag_value, parse_cni_conflist, parse_env_file,
    parse_kube_proxy_config, parse_kubeconfig, parse_kubelet_config, parse_pod, parse_unit,
    static_pod_command, unit_exec_start, url_host_port, ArgFlag, Argv, StaticPodCommand,
    UnitService,
};
pub use pki::{ca_spec, cas, cert_spec, issued_certs, CertSpec, ExtKeyUsage, KeyUsage};
pub use pods::static_pod;
pub use units::{
    containerd_config, docker_defaults, logrotate, unit, unit_command, UnitCommand, HAPROXY,
};

/// The Kubernetes API types the manifests are built with, re-exported so that
/// consumers parse them with the same version.
pub use k8s_openapi;

use crate::plan::{Asset, Ca, Cert, KubeconfigUser};
use crate::scenario::{Runtime, Scenario, SecurityModel};

/// Key material and credentials, as text (PEM for keys and certificates).
///
/// `None` means the store does not hold the item; [`render`] turns that into
/// [`RenderError::MissingSecret`].
pub trait Secrets {
    /// A CA certificate (PEM).
    fn ca_cert(&self, ca: Ca) -> Option<String>;
    /// A CA private key (PEM).
    fn ca_key(&self, ca: Ca) -> Option<String>;
    /// A leaf certificate (PEM); `node` names the node of a per-node certificate.
    fn cert(&self, cert: Cert, node: Option<&str>) -> Option<String>;
    /// A leaf private key (PEM); `node` names the node of a per-node certificate.
    fn key(&self, cert: Cert, node: Option<&str>) -> Option<String>;
    /// The service-account signing key (PEM private key).
    fn service_account_key(&self) -> Option<String>;
    /// The service-account verification key (PEM public key).
    fn service_account_pub(&self) -> Option<String>;
    /// The bearer token of a user of `known_tokens.csv` (see [`token_users`]).
    fn token(&self, user: &str) -> Option<String>;
    /// The password of a user of `basic_auth.csv` (see [`basic_auth_users`]).
    fn password(&self, user: &str) -> Option<String>;
}

/// Deterministic, obviously fake key material: `<redacted: kubelet-client key for node-1>`.
///
/// Used for golden files and by the simulator, which needs the files' shape
/// (paths, flags, names) but never real keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redacted;

impl Secrets for Redacted {
    fn ca_cert(&self, ca: Ca) -> Option<String> {
        Some(format!("<redacted: {} cert>\n", ca.name()))
    }
    fn ca_key(&self, ca: Ca) -> Option<String> {
        Some(format!("<redacted: {} key>\n", ca.name()))
    }
    fn cert(&self, cert: Cert, node: Option<&str>) -> Option<String> {
        Some(format!(
            "<redacted: {} cert{}>\n",
            cert.name(),
            for_node(node)
        ))
    }
    fn key(&self, cert: Cert, node: Option<&str>) -> Option<String> {
        Some(format!(
            "<redacted: {} key{}>\n",
            cert.name(),
            for_node(node)
        ))
    }
    fn service_account_key(&self) -> Option<String> {
        Some("<redacted: service-account key>\n".into())
    }
    fn service_account_pub(&self) -> Option<String> {
        Some("<redacted: service-account public key>\n".into())
    }
    fn token(&self, user: &str) -> Option<String> {
        Some(format!("<redacted: token for {user}>"))
    }
    fn password(&self, user: &str) -> Option<String> {
        Some(format!("<redacted: password for {user}>"))
    }
}

fn for_node(node: Option<&str>) -> String {
    node.map(|n| format!(" for {n}")).unwrap_or_default()
}

/// Why an asset could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A per-node asset (kubelet config, etcd manifest, ...) was asked for without a node.
    #[error("{asset} is different on every node: render it for a node")]
    NodeRequired { asset: String },
    /// The node index is not one of the scenario's nodes.
    #[error("node index {index} is out of range: the scenario has {count} nodes")]
    NoSuchNode { index: usize, count: usize },
    /// The asset does not exist in this scenario (e.g. `basic_auth.csv` on 1.19+).
    #[error("{asset} does not apply to this scenario: {reason}")]
    NotApplicable { asset: String, reason: String },
    /// The secret store does not hold an item the asset embeds.
    #[error("the secret store holds no {what}")]
    MissingSecret { what: String },
    /// Serialization failed (a bug: the types are ours).
    #[error("cannot serialize {asset}: {message}")]
    Serialize { asset: String, message: String },
}

/// A text format could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {message}")]
pub struct ParseError {
    /// What was being parsed: "static pod manifest", "systemd unit", ...
    pub what: &'static str,
    /// What was wrong, naming the offending token or line.
    pub message: String,
}

/// The bytes of `asset` for `node` (an index into `s.nodes`).
///
/// Per-node assets (kubelet and kube-proxy config, units, the CNI config,
/// etcd's manifest, per-node certificates, the kubelet kubeconfig) need a
/// node; shared ones ignore it, except that control-plane manifests and
/// kubeconfigs use the node's own address when given one.
pub fn render(
    s: &Scenario,
    node: Option<usize>,
    asset: Asset,
    secrets: &dyn Secrets,
) -> Result<Vec<u8>, RenderError> {
    if let Some(i) = node {
        if i >= s.nodes.len() {
            return Err(RenderError::NoSuchNode {
                index: i,
                count: s.nodes.len(),
            });
        }
    }
    let text = match asset {
        Asset::CaCert(ca) => secret(secrets.ca_cert(ca), || format!("{} certificate", ca.name()))?,
        Asset::CaKey(ca) => secret(secrets.ca_key(ca), || format!("{} key", ca.name()))?,
        Asset::Cert(c) => {
            let n = cert_node(s, node, c, asset)?;
            secret(secrets.cert(c, n), || {
                format!("{} certificate{}", c.name(), for_node(n))
            })?
        }
        Asset::Key(c) => {
            let n = cert_node(s, node, c, asset)?;
            secret(secrets.key(c, n), || {
                format!("{} key{}", c.name(), for_node(n))
            })?
        }
        Asset::ServiceAccountKey => secret(secrets.service_account_key(), || {
            "service-account key".into()
        })?,
        Asset::ServiceAccountPub => secret(secrets.service_account_pub(), || {
            "service-account public key".into()
        })?,
        Asset::KnownTokens => {
            require_https(s, asset)?;
            known_tokens_csv(s, secrets)?
        }
        Asset::BasicAuth => basic_auth_csv(s, secrets)?,
        Asset::Kubeconfig(user) => {
            if user == KubeconfigUser::Kubelet {
                need_node(node, asset)?;
            }
            kubeconfig::render(s, node, user, secrets)?
        }
        Asset::StaticPod(c) => pods::render(s, node, c)?,
        Asset::KubeletConfig => kubelet::render_kubelet(s, need_node(node, asset)?)?,
        Asset::KubeProxyConfig => kubelet::render_kube_proxy(s, need_node(node, asset)?)?,
        Asset::Unit(service) => unit(s, node, service)?,
        Asset::DockerDefaults => match &s.runtime {
            Runtime::Docker(_) => docker_defaults(s),
            Runtime::Containerd => {
                return Err(not_applicable(asset, "the container runtime is containerd"))
            }
        },
        Asset::ContainerdConfig => match &s.runtime {
            Runtime::Containerd => containerd_config(s),
            Runtime::Docker(_) => {
                return Err(not_applicable(asset, "the container runtime is docker"))
            }
        },
        Asset::CniConfig => cni::render(s, need_node(node, asset)?)?,
        Asset::DnsAddon => dns::render(s)?,
        Asset::ClusterAdminsBinding => rbac::cluster_admins_binding()?,
        Asset::LogRotate => logrotate(s),
        Asset::NetworkDescription => NetworkDescription::of(s).emit(),
        Asset::NetworkUp => NETWORK_UP.to_string(),
        Asset::ApiserverProxyConfig => match HaproxyConfig::local_apiserver_proxy(s) {
            Some(c) => c.emit(),
            None => return Err(not_applicable(
                asset,
                "cluster.controlPlaneEndpoint is not a loopback address: no local apiserver proxy",
            )),
        },
    };
    Ok(text.into_bytes())
}

fn secret(v: Option<String>, what: impl FnOnce() -> String) -> Result<String, RenderError> {
    v.ok_or_else(|| RenderError::MissingSecret { what: what() })
}

fn need_node(node: Option<usize>, asset: Asset) -> Result<usize, RenderError> {
    node.ok_or_else(|| RenderError::NodeRequired {
        asset: asset.path().to_string(),
    })
}

/// The node name a certificate asset is issued for: per-node certificates need one.
fn cert_node(
    s: &Scenario,
    node: Option<usize>,
    c: Cert,
    asset: Asset,
) -> Result<Option<&str>, RenderError> {
    if c.per_node() {
        Ok(Some(s.nodes[need_node(node, asset)?].name.as_str()))
    } else {
        Ok(None)
    }
}

fn require_https(s: &Scenario, asset: Asset) -> Result<(), RenderError> {
    match s.security.model {
        SecurityModel::Https => Ok(()),
        SecurityModel::HttpFirewall => Err(not_applicable(
            asset,
            "the security model is http-firewall (no credentials)",
        )),
    }
}

fn not_applicable(asset: Asset, reason: &str) -> RenderError {
    RenderError::NotApplicable {
        asset: asset.path().to_string(),
        reason: reason.to_string(),
    }
}

fn serialize_error(asset: &str, e: impl std::fmt::Display) -> RenderError {
    RenderError::Serialize {
        asset: asset.to_string(),
        message: e.to_string(),
    }
}

/// `10.0.0.1` or `[fd00::1]`: an address as the host part of a URL.
pub(crate) fn url_host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v) => v.to_string(),
        std::net::IpAddr::V6(v) => format!("[{v}]"),
    }
}

#[cfg(test)]
mod tests;
