//! The content half of the plan fingerprint: a digest of every file the plan
//! writes, so that a changed flag, SAN, kubelet or CNI setting, or unit moves
//! the fingerprint even though the step graph (which names files as assets)
//! stays the same.
//!
//! Non-secret files are digested by their rendered bytes. Secret files
//! (keys, certificates, tokens, kubeconfigs with embedded client keys) are
//! digested by what they are made from: their rendering with [`Redacted`]
//! placeholders (every byte that is not key material) plus the spec of the
//! certificate they carry (subject, SANs, usages, key type). Key material
//! never enters a digest, so a re-render with the same spec leaves the
//! fingerprint alone, and a digest can be recorded and shown without leaking
//! anything.
//!
//! Not covered: the bytes of release binaries (`InstallBinary`), which live on
//! the operator's machine, not in the scenario; apply compares them by SHA-256
//! on every run.

use super::{Action, Asset, Ca, Cert, Plan, Target};
use crate::render::{self, ca_spec, cert_spec, kubeconfig_identity, Redacted};
use crate::scenario::Scenario;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The digest of one file a plan writes on one target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileDigest {
    /// The target's name: a node, or `local` for the operator's machine.
    pub target: String,
    pub path: String,
    /// `sha256:<hex>`; see the module docs for what a secret's digest covers.
    pub sha256: String,
    /// Key material or credentials: shown by name only, never as content.
    pub secret: bool,
}

/// Whether an asset carries key material or credentials.
pub fn is_secret(asset: Asset) -> bool {
    match asset {
        Asset::CaCert(_)
        | Asset::CaKey(_)
        | Asset::Cert(_)
        | Asset::Key(_)
        | Asset::ServiceAccountKey
        | Asset::ServiceAccountPub
        | Asset::KnownTokens
        | Asset::BasicAuth
        | Asset::Kubeconfig(_) => true,
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
        | Asset::NetworkUp => false,
    }
}

/// The digest of every `WriteFile` step, in plan order.
pub fn file_digests(s: &Scenario, plan: &Plan) -> Vec<FileDigest> {
    // Files with the same bytes on every node are digested once.
    let mut shared: std::collections::BTreeMap<Asset, String> = Default::default();
    plan.steps
        .iter()
        .filter_map(|step| match &step.action {
            Action::WriteFile { path, asset, .. } => {
                let node = match step.target {
                    Target::Node(i) => Some(i as usize),
                    Target::Local | Target::Fabric => None,
                };
                let sha256 = if asset.same_on_every_node() {
                    shared
                        .entry(*asset)
                        .or_insert_with(|| asset_digest(s, node, *asset))
                        .clone()
                } else {
                    asset_digest(s, node, *asset)
                };
                Some(FileDigest {
                    target: plan.target_name(step.target).to_string(),
                    path: (*path).to_string(),
                    sha256,
                    secret: is_secret(*asset),
                })
            }
            _ => None,
        })
        .collect()
}

/// `sha256:` of the asset's content, as the module docs define it.
pub fn asset_digest(s: &Scenario, node: Option<usize>, asset: Asset) -> String {
    rendered_digest(s, node, asset).0
}

/// The asset's digest and its rendered bytes (with [`Redacted`] key
/// material), for callers that need both without rendering twice.
pub fn rendered_digest(
    s: &Scenario,
    node: Option<usize>,
    asset: Asset,
) -> (String, Option<Vec<u8>>) {
    let mut h = Sha256::new();
    let bytes = match render::render(s, node, asset, &Redacted) {
        Ok(bytes) => {
            h.update(&bytes);
            Some(bytes)
        }
        // Deterministic too: a plan whose asset cannot render digests the reason.
        Err(e) => {
            h.update(format!("unrenderable: {e}").as_bytes());
            None
        }
    };
    if let Some(spec) = carried_spec(s, node, asset) {
        h.update(b"\0spec ");
        h.update(spec.as_bytes());
    }
    (hex(&h.finalize()), bytes)
}

/// The fingerprint of the certificate spec a secret file carries, if any:
/// what makes a certificate (and a kubeconfig embedding one) change.
fn carried_spec(s: &Scenario, node: Option<usize>, asset: Asset) -> Option<String> {
    let cert = |c: Cert| cert_spec(s, c, node).ok().map(|sp| sp.fingerprint());
    let ca = |c: Ca| Some(ca_spec(s, c).fingerprint());
    match asset {
        Asset::CaCert(c) | Asset::CaKey(c) => ca(c),
        Asset::Cert(c) | Asset::Key(c) => cert(c),
        Asset::Kubeconfig(user) => cert(kubeconfig_identity(s, node, user).cert),
        // Key pairs and tokens carry no spec beyond their kind and users,
        // which the redacted rendering already names.
        Asset::ServiceAccountKey
        | Asset::ServiceAccountPub
        | Asset::KnownTokens
        | Asset::BasicAuth
        | Asset::StaticPod(_)
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

/// `sha256:` of the canonical step graph and of every file's digest: the
/// plan fingerprint. A plan drift, in steps or in any file's content, shows
/// up as a new fingerprint.
pub fn fingerprint_of(plan_json: &str, files: &[FileDigest]) -> String {
    let mut h = Sha256::new();
    h.update(plan_json.as_bytes());
    for f in files {
        h.update(format!("\0{} {} {}", f.target, f.path, f.sha256).as_bytes());
    }
    hex(&h.finalize())
}

/// The plan fingerprint of `plan`, planned from `s`.
pub fn fingerprint(s: &Scenario, plan: &Plan) -> String {
    fingerprint_of(&super::to_json(plan), &file_digests(s, plan))
}

/// `sha256:<hex>` of a digest's bytes.
pub(crate) fn hex(digest: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(7 + 2 * digest.len());
    s.push_str("sha256:");
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}
