//! The `runtime` section: docker or containerd, and docker's options.

use super::Ver;
use crate::diag::{Code, Reporter};
use crate::scenario::model::{DockerOptions, Runtime};
use crate::scenario::raw::{RawPodTraffic, RawRuntimeKind, RawScenario};

pub(super) fn runtime(
    raw: &RawScenario,
    ver: &Ver,
    mode: RawPodTraffic,
    r: &mut Reporter<'_>,
) -> Runtime {
    let rt = &raw.runtime;
    let kind = rt.kind.unwrap_or(if ver.feat.dockershim {
        RawRuntimeKind::Docker
    } else {
        RawRuntimeKind::Containerd
    });
    if r.is_invalid("runtime.kind") {
        let docker_only = rt.ip_masq.is_some()
            || rt.iptables.is_some()
            || rt.nofile.is_some()
            || rt.insecure_registry.is_some();
        if docker_only {
            r.not_checked("runtime", "docker's options", "runtime.kind");
        }
        return Runtime::Containerd;
    }
    match kind {
        RawRuntimeKind::Docker => {
            if let Some(v) = ver.known.filter(|_| !ver.feat.dockershim) {
                r.error(
                    Code::Removed,
                    "runtime.kind",
                    format!("dockershim was removed from the kubelet in Kubernetes 1.24; this scenario is {v}"),
                    "use `kind: containerd`",
                );
            }
            let ip_masq = rt.ip_masq.unwrap_or(false);
            if ip_masq && mode != RawPodTraffic::External && !r.is_invalid("network.podTraffic") {
                r.warn(
                    Code::Advice,
                    "runtime.ipMasq",
                    "docker --ip-masq=true rewrites pod source addresses leaving the bridge, including pod-to-pod traffic across nodes",
                    "the guide sets --ip-masq=false when pod IPs are routable",
                );
            }
            Runtime::Docker(DockerOptions {
                ip_masq,
                iptables: rt.iptables.unwrap_or(false),
                nofile: rt.nofile.unwrap_or(1_000_000),
                insecure_registry: rt.insecure_registry.clone(),
            })
        }
        RawRuntimeKind::Containerd => {
            if let Some(v) = ver.known.filter(|_| !ver.feat.containerd_cri) {
                r.error(
                    Code::Removed,
                    "runtime.kind",
                    format!("the kubelet talks CRI to containerd from Kubernetes 1.10 (containerd 1.1's CRI plugin); this scenario is {v}"),
                    "use `kind: docker`",
                );
            }
            let note = super::default_note(r, "runtime.kind");
            for (path, set) in [
                ("runtime.ipMasq", rt.ip_masq.is_some()),
                ("runtime.iptables", rt.iptables.is_some()),
                ("runtime.nofile", rt.nofile.is_some()),
                ("runtime.insecureRegistry", rt.insecure_registry.is_some()),
            ] {
                if set {
                    r.error(
                        Code::Conflict,
                        path,
                        format!("this is a docker option, but runtime.kind is containerd{note}"),
                        "remove it, or set runtime.kind: docker",
                    );
                }
            }
            Runtime::Containerd
        }
    }
}
