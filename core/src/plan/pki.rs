//! PKI, on the operator's machine: CAs first, then the cluster-wide leaves,
//! the service-account key and the tokens. Key material is generated when
//! the plan runs, never here. Per-node leaves are issued with their node
//! ([`super::node_agents`], [`super::etcd`]).

use super::builder::Builder;
use super::context::Cluster;
use super::*;

/// The PKI steps later phases distribute from.
#[derive(Default)]
pub(super) struct Pki {
    ca_cluster: Option<StepRef>,
    ca_etcd: Option<StepRef>,
    ca_front_proxy: Option<StepRef>,
    pub sa: Option<StepRef>,
    pub tokens: Option<StepRef>,
    shared: Vec<(Cert, StepRef)>,
}

impl Pki {
    /// The step that generated a CA (HTTPS only).
    pub fn ca(&self, ca: Ca) -> StepRef {
        self.ca_step(ca).expect("CA generated before its leaves")
    }
    /// The step that generated a CA, if the security model has one.
    pub fn ca_step(&self, ca: Ca) -> Option<StepRef> {
        match ca {
            Ca::Cluster => self.ca_cluster,
            Ca::Etcd => self.ca_etcd,
            Ca::FrontProxy => self.ca_front_proxy,
        }
    }
    /// The step that issued a cluster-wide certificate, if any.
    pub fn cert(&self, cert: Cert) -> Option<StepRef> {
        self.shared
            .iter()
            .find(|(c, _)| *c == cert)
            .map(|(_, r)| *r)
    }
    /// The cluster-wide step a node's copy of `asset` comes from: none for
    /// what is not cluster-wide key material, or not generated in this
    /// security model.
    pub fn source(&self, asset: Asset) -> Option<StepRef> {
        match asset {
            Asset::CaCert(ca) | Asset::CaKey(ca) => self.ca_step(ca),
            Asset::Cert(c) | Asset::Key(c) => self.cert(c),
            Asset::Kubeconfig(u) => self.cert(match u {
                KubeconfigUser::Admin => Cert::Admin,
                KubeconfigUser::SuperAdmin => Cert::SuperAdmin,
                KubeconfigUser::Kubelet => Cert::KubeletClient,
                KubeconfigUser::KubeProxy => Cert::KubeProxy,
                KubeconfigUser::ControllerManager => Cert::ControllerManager,
                KubeconfigUser::Scheduler => Cert::Scheduler,
            }),
            Asset::ServiceAccountKey | Asset::ServiceAccountPub => self.sa,
            Asset::KnownTokens | Asset::BasicAuth => self.tokens,
            Asset::StaticPod(_)
            | Asset::KubeletConfig
            | Asset::KubeProxyConfig
            | Asset::Unit(_)
            | Asset::DockerDefaults
            | Asset::ContainerdConfig
            | Asset::CniConfig
            | Asset::DnsAddon
            | Asset::ClusterAdminsBinding
            | Asset::LogRotate
            | Asset::ApiserverProxyConfig
            | Asset::NetworkDescription
            | Asset::NetworkUp => None,
        }
    }
}

fn ca_key(ca: Ca) -> &'static str {
    match ca {
        Ca::Cluster => "pki/ca",
        Ca::Etcd => "pki/etcd-ca",
        Ca::FrontProxy => "pki/front-proxy-ca",
    }
}

pub(super) fn cluster(b: &mut Builder<'_>, cx: &Cluster<'_>) -> Pki {
    let s = cx.s;
    let mut pki = Pki::default();
    if cx.https {
        let mut cas = vec![Ca::Cluster, Ca::Etcd];
        if cx.fx.front_proxy_ca {
            cas.push(Ca::FrontProxy);
        }
        for ca in cas {
            let r = b.local(ca_key(ca), Phase::Pki, Action::GenerateCa { ca }, &[]);
            match ca {
                Ca::Cluster => pki.ca_cluster = Some(r),
                Ca::Etcd => pki.ca_etcd = Some(r),
                Ca::FrontProxy => pki.ca_front_proxy = Some(r),
            }
        }
        // The cluster-wide leaves; per-node ones are issued with their node.
        // One list for the plan and the renderer: render::issued_certs.
        let shared = crate::render::issued_certs(s)
            .into_iter()
            .filter(|(_, n)| n.is_none())
            .map(|(c, _)| c);
        for cert in shared {
            let r = b.issue(cert, None, pki.ca(cert.ca()));
            pki.shared.push((cert, r));
        }
    }
    // Every security model: the ServiceAccount admission plugin rejects pods
    // until the token controller, which needs this key, has minted their token.
    pki.sa = Some(b.local(
        "pki/service-account-key",
        Phase::Pki,
        Action::GenerateServiceAccountKey,
        &[],
    ));
    // Bearer tokens only where the apiserver checks them (HTTPS).
    if cx.https {
        let users = vec!["admin".to_string(), "kubelet".into(), "kube-proxy".into()];
        pki.tokens = Some(b.local(
            "pki/tokens",
            Phase::Pki,
            Action::GenerateTokens { users },
            &[],
        ));
    }
    pki
}
