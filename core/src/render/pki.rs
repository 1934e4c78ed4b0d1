//! Certificate specs: what each certificate of the cluster says about itself.
//!
//! The layout follows kubeadm's PKI adapted to the guide's files: a cluster
//! CA, a separate etcd CA, a front-proxy CA where the version uses the
//! aggregation layer, and one leaf per identity. A spec is data only; the
//! backends turn it into keys and signatures. Its fingerprint changes exactly
//! when the certificate would have to be re-issued.

use super::RenderError;
use crate::plan::{Ca, Cert};
use crate::scenario::{EndpointHost, Scenario, SecurityModel};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr};

/// Everything that goes into a certificate except the key and the dates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSpec {
    /// The CA that signs it; for a CA, itself.
    #[serde(with = "ca_name")]
    pub ca: Ca,
    /// A CA certificate (basic constraints CA:TRUE, self-signed).
    pub is_ca: bool,
    /// Subject CN: the user name Kubernetes sees for client certificates.
    pub common_name: String,
    /// Subject O: the groups Kubernetes sees for client certificates.
    pub organizations: Vec<String>,
    /// DNS subject alternative names, in a stable order.
    pub dns_names: Vec<String>,
    /// IP subject alternative names, in a stable order.
    pub ip_addresses: Vec<IpAddr>,
    pub key_usages: Vec<KeyUsage>,
    pub extended_key_usages: Vec<ExtKeyUsage>,
    /// How long the certificate is valid from the moment it is issued.
    pub validity_days: u32,
}

/// X.509 key usages kscratch sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyUsage {
    DigitalSignature,
    KeyEncipherment,
    KeyCertSign,
    CrlSign,
}

/// X.509 extended key usages kscratch sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtKeyUsage {
    ServerAuth,
    ClientAuth,
}

/// CAs live ten years, leaves one (kubeadm's defaults).
const CA_DAYS: u32 = 3650;
const LEAF_DAYS: u32 = 365;

impl CertSpec {
    /// `sha256:<hex>` of the spec's canonical JSON: equal specs, equal fingerprints.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        crate::plan::digest::hex(&Sha256::digest(&json))
    }

    /// What changed from `old` to `self`, one line each, e.g. `SANs changed: +10.1.0.100`.
    /// Empty when the specs are equal.
    pub fn changes_from(&self, old: &CertSpec) -> Vec<String> {
        let mut out = Vec::new();
        if self.ca != old.ca {
            out.push(format!(
                "issuer changed: {} → {}",
                old.ca.name(),
                self.ca.name()
            ));
        }
        if self.is_ca != old.is_ca {
            out.push(format!("CA flag changed: {} → {}", old.is_ca, self.is_ca));
        }
        if self.common_name != old.common_name {
            out.push(format!(
                "CN changed: {} → {}",
                old.common_name, self.common_name
            ));
        }
        if self.organizations != old.organizations {
            out.push(format!(
                "O changed: {}",
                list_diff(&old.organizations, &self.organizations)
            ));
        }
        let sans = |s: &CertSpec| -> Vec<String> {
            s.dns_names
                .iter()
                .cloned()
                .chain(s.ip_addresses.iter().map(|ip| ip.to_string()))
                .collect()
        };
        let (old_sans, new_sans) = (sans(old), sans(self));
        if old_sans != new_sans {
            out.push(format!("SANs changed: {}", list_diff(&old_sans, &new_sans)));
        }
        if self.key_usages != old.key_usages {
            out.push(format!(
                "key usages changed: {:?} → {:?}",
                old.key_usages, self.key_usages
            ));
        }
        if self.extended_key_usages != old.extended_key_usages {
            out.push(format!(
                "extended key usages changed: {:?} → {:?}",
                old.extended_key_usages, self.extended_key_usages
            ));
        }
        if self.validity_days != old.validity_days {
            out.push(format!(
                "validity changed: {} → {} days",
                old.validity_days, self.validity_days
            ));
        }
        out
    }
}

/// `+added -removed`, in list order; `reordered` when only the order differs.
fn list_diff(old: &[String], new: &[String]) -> String {
    let mut parts: Vec<String> = new
        .iter()
        .filter(|n| !old.contains(n))
        .map(|n| format!("+{n}"))
        .collect();
    parts.extend(
        old.iter()
            .filter(|o| !new.contains(o))
            .map(|o| format!("-{o}")),
    );
    if parts.is_empty() {
        "reordered".into()
    } else {
        parts.join(" ")
    }
}

/// The CAs an https scenario has: cluster and etcd, plus front-proxy where the
/// version uses the aggregation layer. None for http-firewall.
pub fn cas(s: &Scenario) -> Vec<Ca> {
    if s.security.model != SecurityModel::Https {
        return Vec::new();
    }
    let mut v = vec![Ca::Cluster, Ca::Etcd];
    if s.version.features().front_proxy_ca {
        v.push(Ca::FrontProxy);
    }
    v
}

/// Every leaf certificate an https scenario issues, with the node of each
/// per-node one: the same set as the plan's `IssueCert` steps.
pub fn issued_certs(s: &Scenario) -> Vec<(Cert, Option<usize>)> {
    if s.security.model != SecurityModel::Https {
        return Vec::new();
    }
    let fx = s.version.features();
    let mut v: Vec<(Cert, Option<usize>)> = [
        Cert::Apiserver,
        Cert::ApiserverKubeletClient,
        Cert::ApiserverEtcdClient,
        Cert::Admin,
        Cert::KubeProxy,
        Cert::ControllerManager,
        Cert::Scheduler,
        Cert::EtcdHealthcheckClient,
    ]
    .into_iter()
    .map(|c| (c, None))
    .collect();
    if fx.front_proxy_ca {
        v.push((Cert::FrontProxyClient, None));
    }
    if fx.admin_cluster_admins_group {
        v.push((Cert::SuperAdmin, None));
    }
    for i in 0..s.nodes.len() {
        v.push((Cert::KubeletServing, Some(i)));
        v.push((Cert::KubeletClient, Some(i)));
    }
    for &m in &s.etcd.members {
        v.push((Cert::EtcdServer, Some(m)));
        v.push((Cert::EtcdPeer, Some(m)));
    }
    v
}

/// The spec of a CA: CN `kubernetes` / `etcd-ca` / `front-proxy-ca`, as kubeadm names them.
pub fn ca_spec(_s: &Scenario, ca: Ca) -> CertSpec {
    let cn = match ca {
        Ca::Cluster => "kubernetes",
        Ca::Etcd => "etcd-ca",
        Ca::FrontProxy => "front-proxy-ca",
    };
    CertSpec {
        ca,
        is_ca: true,
        common_name: cn.into(),
        organizations: Vec::new(),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        key_usages: vec![
            KeyUsage::DigitalSignature,
            KeyUsage::KeyEncipherment,
            KeyUsage::KeyCertSign,
            KeyUsage::CrlSign,
        ],
        extended_key_usages: Vec::new(),
        validity_days: CA_DAYS,
    }
}

/// The spec of a leaf certificate. Per-node certificates (kubelet client and
/// serving, etcd server and peer) need `node`.
pub fn cert_spec(s: &Scenario, cert: Cert, node: Option<usize>) -> Result<CertSpec, RenderError> {
    let fx = s.version.features();
    let node = if cert.per_node() {
        let i = node.ok_or_else(|| RenderError::NodeRequired {
            asset: format!("the {} certificate", cert.name()),
        })?;
        Some(s.nodes.get(i).ok_or(RenderError::NoSuchNode {
            index: i,
            count: s.nodes.len(),
        })?)
    } else {
        None
    };
    let client = || {
        (
            vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
            vec![ExtKeyUsage::ClientAuth],
        )
    };
    let server = || {
        (
            vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
            vec![ExtKeyUsage::ServerAuth],
        )
    };
    let both = || {
        (
            vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
            vec![ExtKeyUsage::ServerAuth, ExtKeyUsage::ClientAuth],
        )
    };
    let mut dns: Vec<String> = Vec::new();
    let mut ips: Vec<IpAddr> = Vec::new();
    let (cn, orgs, (ku, eku)): (String, Vec<&str>, _) = match cert {
        Cert::Apiserver => {
            // Every name a client may use for the apiserver: MASTER_IP, the
            // control-plane endpoint (the local proxy's 127.0.0.1 too: TLS
            // passes through it), each
            // control-plane node, the `kubernetes` Service (first IP of the
            // service range) and its DNS names, plus the scenario's extras.
            ips.push(s.master_ip);
            match s.control_plane_endpoint.as_ref().map(|e| &e.host) {
                Some(EndpointHost::Ip(ip)) if !ips.contains(ip) => ips.push(*ip),
                Some(EndpointHost::Name(n)) => dns.push(n.clone()),
                Some(EndpointHost::Ip(_)) | None => {}
            }
            for (_, n) in s.control_plane_nodes() {
                ips.push(n.ip);
            }
            ips.push(s.network.kubernetes_service_ip);
            dns.extend([
                "kubernetes".to_string(),
                "kubernetes.default".into(),
                "kubernetes.default.svc".into(),
                format!("kubernetes.default.svc.{}", s.network.dns_domain),
            ]);
            for (_, n) in s.control_plane_nodes() {
                dns.push(n.name.clone());
            }
            for san in &s.security.extra_sans {
                match san.parse::<IpAddr>() {
                    Ok(ip) => ips.push(ip),
                    Err(_) => dns.push(san.clone()),
                }
            }
            ("kube-apiserver".into(), vec![], server())
        }
        // The apiserver's identity towards kubelets: full access to their API.
        Cert::ApiserverKubeletClient => (
            "kube-apiserver-kubelet-client".into(),
            vec!["system:masters"],
            client(),
        ),
        Cert::ApiserverEtcdClient => ("kube-apiserver-etcd-client".into(), vec![], client()),
        Cert::FrontProxyClient => ("front-proxy-client".into(), vec![], client()),
        // From 1.29 kubeadm's admin is bound through `kubeadm:cluster-admins`
        // (revocable) and a separate super-admin keeps system:masters.
        Cert::Admin if fx.admin_cluster_admins_group => (
            "kubernetes-admin".into(),
            vec!["kubeadm:cluster-admins"],
            client(),
        ),
        Cert::Admin => ("kubernetes-admin".into(), vec!["system:masters"], client()),
        Cert::SuperAdmin => (
            "kubernetes-super-admin".into(),
            vec!["system:masters"],
            client(),
        ),
        Cert::KubeletClient => {
            let n = node.expect("per-node");
            (
                format!("system:node:{}", n.name),
                vec!["system:nodes"],
                client(),
            )
        }
        Cert::KubeletServing => {
            let n = node.expect("per-node");
            dns.push(n.name.clone());
            ips.push(n.ip);
            (
                format!("system:node:{}", n.name),
                vec!["system:nodes"],
                server(),
            )
        }
        Cert::KubeProxy => ("system:kube-proxy".into(), vec![], client()),
        Cert::ControllerManager => ("system:kube-controller-manager".into(), vec![], client()),
        Cert::Scheduler => ("system:kube-scheduler".into(), vec![], client()),
        // etcd serves clients and peers and is a client of its peers; the
        // loopback names let local tools (and tests) reach it.
        Cert::EtcdServer | Cert::EtcdPeer => {
            let n = node.expect("per-node");
            dns.extend([n.name.clone(), "localhost".into()]);
            ips.extend([n.ip, IpAddr::V4(Ipv4Addr::LOCALHOST)]);
            (n.name.clone(), vec![], both())
        }
        Cert::EtcdHealthcheckClient => ("kube-etcd-healthcheck-client".into(), vec![], client()),
    };
    Ok(CertSpec {
        ca: cert.ca(),
        is_ca: false,
        common_name: cn,
        organizations: orgs.into_iter().map(String::from).collect(),
        dns_names: dedup(dns),
        ip_addresses: dedup(ips),
        key_usages: ku,
        extended_key_usages: eku,
        validity_days: LEAF_DAYS,
    })
}

/// Drops repeats, keeping the first occurrence (MASTER_IP is usually a node IP too).
fn dedup<T: PartialEq>(v: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// `Ca` is serialized by the plan as `cluster` / `etcd` / `front-proxy`; this
/// reads the same names back (specs are stored next to the keys).
mod ca_name {
    use crate::plan::Ca;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(ca: &Ca, s: S) -> Result<S::Ok, S::Error> {
        ca.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ca, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "cluster" => Ok(Ca::Cluster),
            "etcd" => Ok(Ca::Etcd),
            "front-proxy" => Ok(Ca::FrontProxy),
            other => Err(serde::de::Error::custom(format!(
                "`{other}` is not a CA: expected cluster, etcd or front-proxy"
            ))),
        }
    }
}
