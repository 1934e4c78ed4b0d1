//! kubeconfigs, following the guide's template: one cluster named after the
//! scenario, one user, one context `<user>@<cluster>` made current.
//!
//! With https the CA and the client certificate and key are embedded
//! (`*-data`, base64), so a kubeconfig is one self-contained file; with
//! http-firewall the server is `http://MASTER_IP:8080` and there are no
//! credentials.

use super::{serialize_error, url_host, RenderError, Secrets};
use crate::plan::{Ca, Cert, KubeconfigUser};
use crate::scenario::{Scenario, SecurityModel};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// A kubeconfig file (`apiVersion: v1`, `kind: Config`), the subset kscratch writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub clusters: Vec<NamedCluster>,
    pub users: Vec<NamedUser>,
    pub contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    pub current_context: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: ClusterEntry,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEntry {
    pub server: String,
    #[serde(
        rename = "certificate-authority-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub certificate_authority_data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: UserEntry,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    #[serde(
        rename = "client-certificate-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_certificate_data: Option<String>,
    #[serde(
        rename = "client-key-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_key_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: ContextEntry,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextEntry {
    pub cluster: String,
    pub user: String,
}

/// Who a kubeconfig speaks for and where it points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeconfigIdentity {
    /// The user entry's name: the identity the apiserver sees (the client cert's CN).
    pub user: String,
    /// The client certificate embedded with https.
    pub cert: Cert,
    /// The apiserver URL.
    pub server: String,
}

/// The identity and server of a kubeconfig for `node`.
///
/// Node agents and the admin use `MASTER_IP`, or `cluster.controlPlaneEndpoint`
/// when the scenario declares one; the controller-manager and the
/// scheduler on a control-plane node use that node's own address (a SAN of the
/// apiserver certificate), so each control-plane node keeps working alone.
pub fn kubeconfig_identity(
    s: &Scenario,
    node: Option<usize>,
    user: KubeconfigUser,
) -> KubeconfigIdentity {
    let (name, cert) = match user {
        KubeconfigUser::Admin => ("kubernetes-admin".to_string(), Cert::Admin),
        KubeconfigUser::SuperAdmin => ("kubernetes-super-admin".to_string(), Cert::SuperAdmin),
        KubeconfigUser::Kubelet => (
            format!(
                "system:node:{}",
                node.and_then(|i| s.nodes.get(i))
                    .map_or("", |n| n.name.as_str())
            ),
            Cert::KubeletClient,
        ),
        KubeconfigUser::KubeProxy => ("system:kube-proxy".to_string(), Cert::KubeProxy),
        KubeconfigUser::ControllerManager => (
            "system:kube-controller-manager".to_string(),
            Cert::ControllerManager,
        ),
        KubeconfigUser::Scheduler => ("system:kube-scheduler".to_string(), Cert::Scheduler),
    };
    let local_cp = node
        .and_then(|i| s.nodes.get(i))
        .filter(|n| n.roles.control_plane);
    let server = match (user, local_cp) {
        (KubeconfigUser::ControllerManager | KubeconfigUser::Scheduler, Some(n)) => {
            match s.security.model {
                // 443 is https's default port: the guide's `https://$MASTER_IP`.
                SecurityModel::Https => format!("https://{}", url_host(n.ip)),
                SecurityModel::HttpFirewall => format!("http://{}:8080", url_host(n.ip)),
            }
        }
        // MASTER_IP, or the control-plane endpoint when the scenario has one.
        _ => s.apiserver_url(),
    };
    KubeconfigIdentity {
        user: name,
        cert,
        server,
    }
}

/// The kubeconfig of `user` for `node`, with key material from `secrets`.
pub fn kubeconfig(
    s: &Scenario,
    node: Option<usize>,
    user: KubeconfigUser,
    secrets: &dyn Secrets,
) -> Result<Kubeconfig, RenderError> {
    let id = kubeconfig_identity(s, node, user);
    let b64 = |t: String| base64::engine::general_purpose::STANDARD.encode(t.as_bytes());
    let (ca, creds) = match s.security.model {
        SecurityModel::Https => {
            let node_name = if id.cert.per_node() {
                node.and_then(|i| s.nodes.get(i)).map(|n| n.name.as_str())
            } else {
                None
            };
            let missing = |what: &str| RenderError::MissingSecret {
                what: format!(
                    "{} {what} for the {} kubeconfig",
                    id.cert.name(),
                    user.name()
                ),
            };
            let ca = secrets
                .ca_cert(Ca::Cluster)
                .ok_or_else(|| RenderError::MissingSecret {
                    what: "ca certificate".into(),
                })?;
            let cert = secrets
                .cert(id.cert, node_name)
                .ok_or_else(|| missing("certificate"))?;
            let key = secrets
                .key(id.cert, node_name)
                .ok_or_else(|| missing("key"))?;
            (
                Some(b64(ca)),
                UserEntry {
                    client_certificate_data: Some(b64(cert)),
                    client_key_data: Some(b64(key)),
                    token: None,
                },
            )
        }
        SecurityModel::HttpFirewall => (None, UserEntry::default()),
    };
    let context = format!("{}@{}", id.user, s.name);
    Ok(Kubeconfig {
        api_version: "v1".into(),
        kind: "Config".into(),
        clusters: vec![NamedCluster {
            name: s.name.clone(),
            cluster: ClusterEntry {
                server: id.server,
                certificate_authority_data: ca,
            },
        }],
        users: vec![NamedUser {
            name: id.user.clone(),
            user: creds,
        }],
        contexts: vec![NamedContext {
            name: context.clone(),
            context: ContextEntry {
                cluster: s.name.clone(),
                user: id.user,
            },
        }],
        current_context: context,
    })
}

pub(super) fn render(
    s: &Scenario,
    node: Option<usize>,
    user: KubeconfigUser,
    secrets: &dyn Secrets,
) -> Result<String, RenderError> {
    if user == KubeconfigUser::SuperAdmin
        && !(s.security.model == SecurityModel::Https
            && s.version.features().admin_cluster_admins_group)
    {
        return Err(super::not_applicable(
            crate::plan::Asset::Kubeconfig(user),
            "a separate super-admin exists from Kubernetes 1.29, with https",
        ));
    }
    let k = kubeconfig(s, node, user, secrets)?;
    serde_yaml::to_string(&k).map_err(|e| serialize_error("kubeconfig", e))
}
