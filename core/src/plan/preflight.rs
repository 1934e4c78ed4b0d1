//! Preflight: checks that change nothing, so nothing is touched on a node
//! until every check passes.

use super::builder::Builder;
use super::context::{Cluster, NodeCx};
use super::*;
use crate::ports;
use crate::scenario::Runtime;

/// The node's one preflight step; every other step on the node depends on it.
pub(super) fn node(b: &mut Builder<'_>, cx: &Cluster<'_>, n: &NodeCx<'_>) -> StepRef {
    let s = cx.s;
    let mut checks = vec![
        PreflightCheck::Platform {
            os: "linux",
            arch: "x86_64",
        },
        PreflightCheck::NodeAddress {
            ip: n.node.ip,
            interface: s.network.interface.clone(),
        },
        PreflightCheck::Command { name: "iptables" },
        PreflightCheck::Command { name: "ip" },
        // kube-proxy needs conntrack (the guide's note on kube-proxy).
        PreflightCheck::Command { name: "conntrack" },
        PreflightCheck::PortFree {
            port: ports::KUBELET,
            held_by: None,
        },
    ];
    checks.push(PreflightCheck::Command {
        name: match s.runtime {
            Runtime::Docker(_) => "dockerd",
            Runtime::Containerd => "containerd",
        },
    });
    if s.vxlan().is_some() {
        checks.push(PreflightCheck::KernelModule { name: "vxlan" });
    }
    // What this release's kubelet refuses to start without (core/data/host.tsv).
    for req in crate::release::host_requirements(s.version.minor) {
        let name: &'static str = &req.name;
        let source: &'static str = &req.source;
        match name {
            "cgroup-v2" if s.kubelet.fail_cgroup_v1 == Some(false) => {}
            "cgroup-v2" => checks.push(PreflightCheck::CgroupV2 { source }),
            "swap-off" => checks.push(PreflightCheck::SwapOff { source }),
            _ => {
                if let Some(m) = name.strip_prefix("module:") {
                    checks.push(PreflightCheck::KernelModule { name: m });
                }
            }
        }
    }
    if n.control_plane {
        checks.push(PreflightCheck::PortFree {
            port: s.security.model.apiserver_port(),
            held_by: None,
        });
    }
    if n.etcd {
        checks.push(PreflightCheck::PortFree {
            port: ports::ETCD_CLIENT,
            held_by: None,
        });
        checks.push(PreflightCheck::PortFree {
            port: ports::ETCD_PEER,
            held_by: None,
        });
    }
    // The local apiserver proxy: Debian's haproxy, on the endpoint's port.
    if let Some(port) = s.local_apiserver_proxy() {
        checks.push(PreflightCheck::Command { name: "haproxy" });
        checks.push(PreflightCheck::PortFree {
            port,
            held_by: Some(ports::Daemon::ApiserverProxy),
        });
    }
    b.push(
        n.t,
        "preflight",
        Phase::Preflight,
        Action::Preflight { checks },
        &[],
    )
}
