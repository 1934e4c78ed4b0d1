//! The `cluster` section: the Kubernetes version and the cluster name.

use super::parse::is_dns1123_label;
use crate::diag::{Code, Reporter};
use crate::scenario::raw::RawScenario;
use crate::scenario::version::{self, KubeVersion};

/// The scenario's version when it is valid and supported.
pub(super) fn version(raw: &RawScenario, r: &mut Reporter<'_>) -> Option<KubeVersion> {
    let text = raw.cluster.kubernetes_version.as_deref()?;
    let path = "cluster.kubernetesVersion";
    let range = format!(
        "kscratch knows flags for {}.{} to {}.{}",
        version::OLDEST.major,
        version::OLDEST.minor,
        version::NEWEST.major,
        version::NEWEST.minor
    );
    match KubeVersion::parse(text) {
        Ok(v) if v.supported() => Some(v),
        Ok(v) => {
            r.invalid(
                Code::Version,
                path,
                format!("Kubernetes {v} is outside the supported range"),
                range,
            );
            None
        }
        Err(e) => {
            r.invalid(
                Code::Version,
                path,
                e,
                format!("write it as a quoted string, e.g. \"1.29.4\"; {range}"),
            );
            None
        }
    }
}

pub(super) fn name(raw: &RawScenario, r: &mut Reporter<'_>) {
    let Some(name) = raw.cluster.name.as_deref() else {
        return;
    };
    if !is_dns1123_label(name) {
        r.error(
            Code::Name,
            "cluster.name",
            format!("`{name}` is not a DNS-1123 label"),
            "use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
        );
    }
}
