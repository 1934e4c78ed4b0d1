//! systemd units, docker's defaults file, containerd's config and logrotate.
//!
//! Every unit restarts its daemon when it dies (`Restart=always`): the
//! guide's "liveness-monitoring", done by the init system. ExecStart lines
//! are continued with `\`, one flag per line; [`super::unit_exec_start`]
//! reads them back.

use super::flags::{self, Flag};
use super::{not_applicable, RenderError};
use crate::plan::{Asset, Service};
use crate::scenario::{EtcdRunAs, Runtime, Scenario};

/// Debian's haproxy binary: the local apiserver proxy comes from the distribution.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// The systemd unit (or, for docker, the drop-in) of `service` on `node`.
pub fn unit(s: &Scenario, node: Option<usize>, service: Service) -> Result<String, RenderError> {
    let asset = Asset::Unit(service);
    let need = || -> Result<usize, RenderError> {
        let i = node.ok_or_else(|| RenderError::NodeRequired {
            asset: asset.path().to_string(),
        })?;
        if i >= s.nodes.len() {
            return Err(RenderError::NoSuchNode {
                index: i,
                count: s.nodes.len(),
            });
        }
        Ok(i)
    };
    let runtime_unit = match s.runtime {
        Runtime::Docker(_) => "docker.service",
        Runtime::Containerd => "containerd.service",
    };
    Ok(match service {
        Service::Kubelet => {
            let i = need()?;
            service_unit(
                "kubelet: the Kubernetes node agent",
                &[runtime_unit],
                "/usr/local/bin/kubelet",
                &flags::kubelet(s, i),
                &[],
            )
        }
        Service::KubeProxy => {
            let i = need()?;
            service_unit(
                "kube-proxy: Kubernetes Service rules",
                &["network-online.target"],
                "/usr/local/bin/kube-proxy",
                &flags::kube_proxy(s, i),
                &[],
            )
        }
        Service::Etcd => {
            let i = need()?;
            if s.etcd.run_as != EtcdRunAs::Service {
                return Err(not_applicable(
                    asset,
                    "etcd runs as a static pod (etcd.runAs: static-pod)",
                ));
            }
            if !s.etcd.members.contains(&i) {
                return Err(not_applicable(
                    asset,
                    &format!("node `{}` is not an etcd member", s.nodes[i].name),
                ));
            }
            // The release binary's version is unknown here: no metrics listener.
            service_unit(
                "etcd: the cluster's key-value store",
                &["network-online.target"],
                "/usr/local/bin/etcd",
                &flags::etcd(s, i, false),
                &["Type=notify"],
            )
        }
        // A oneshot: the node's pod network at boot, before the runtime and
        // the agents (see render/network.rs for why this mechanism).
        Service::Network => format!(
            "# Written by kscratch.\n[Unit]\n\
             Description=kscratch-network: this node's pod network (bridge, routes, VXLAN, masquerade)\n\
             After=network-online.target\nWants=network-online.target\n\
             Before=containerd.service docker.service kubelet.service kube-proxy.service\n\n\
             [Service]\n\
             Type=oneshot\nRemainAfterExit=yes\n\
             ExecStart=/bin/sh {up} {conf}\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            up = Asset::NetworkUp.path(),
            conf = Asset::NetworkDescription.path(),
        ),
        Service::ApiserverProxy => {
            if s.local_apiserver_proxy().is_none() {
                return Err(not_applicable(
                    asset,
                    "cluster.controlPlaneEndpoint is not a loopback address: no local apiserver proxy",
                ));
            }
            // haproxy in the foreground (`-db`), reading only kscratch's file:
            // the distribution's own haproxy.service and its
            // /etc/haproxy/haproxy.cfg are left alone. It starts before the
            // node agents that dial it.
            format!(
                "# Written by kscratch.\n[Unit]\n\
                 Description=kscratch-apiserver-proxy: the local apiserver load balancer\n\
                 After=network-online.target\nWants=network-online.target\n\
                 Before=kubelet.service kube-proxy.service\n\n\
                 [Service]\n\
                 ExecStart={HAPROXY} -db -f {cfg}\n\
                 Restart=always\nRestartSec=5\n\n\
                 [Install]\nWantedBy=multi-user.target\n",
                cfg = Asset::ApiserverProxyConfig.path(),
            )
        }
        Service::Docker => match &s.runtime {
            Runtime::Docker(d) => format!(
                "# Written by kscratch: docker reads its options from /etc/default/docker.\n\
                 [Service]\n\
                 EnvironmentFile=-{defaults}\n\
                 ExecStart=\n\
                 ExecStart=/usr/bin/env dockerd $DOCKER_OPTS\n\
                 LimitNOFILE={nofile}\n\
                 Restart=always\n\
                 RestartSec=5\n",
                defaults = Asset::DockerDefaults.path(),
                nofile = d.nofile,
            ),
            Runtime::Containerd => {
                return Err(not_applicable(asset, "the container runtime is containerd"))
            }
        },
        Service::Containerd => match &s.runtime {
            Runtime::Containerd => {
                let f = [Flag {
                    name: "config",
                    value: Asset::ContainerdConfig.path().into(),
                }];
                service_unit(
                    "containerd: the container runtime",
                    &["network.target", "local-fs.target"],
                    "/usr/bin/env containerd",
                    &f,
                    &[
                        "Type=notify",
                        "Delegate=yes",
                        "KillMode=process",
                        "LimitNOFILE=infinity",
                        "LimitNPROC=infinity",
                        "TasksMax=infinity",
                        "OOMScoreAdjust=-999",
                    ],
                )
            }
            Runtime::Docker(_) => {
                return Err(not_applicable(asset, "the container runtime is docker"))
            }
        },
    })
}

fn service_unit(
    description: &str,
    after: &[&str],
    program: &str,
    flags: &[Flag],
    extra: &[&str],
) -> String {
    let mut out = String::new();
    out.push_str("# Written by kscratch.\n[Unit]\n");
    out.push_str(&format!("Description={description}\n"));
    for a in after {
        out.push_str(&format!("After={a}\nWants={a}\n"));
    }
    out.push_str("\n[Service]\n");
    for e in extra {
        out.push_str(e);
        out.push('\n');
    }
    out.push_str("ExecStart=");
    out.push_str(program);
    for f in flags {
        out.push_str(" \\\n  ");
        out.push_str(&f.arg());
    }
    out.push('\n');
    out.push_str("Restart=always\nRestartSec=5\n\n[Install]\nWantedBy=multi-user.target\n");
    out
}

/// `/etc/default/docker`: the guide's options for its own bridge.
///
/// `--bridge=cbr0` attaches containers to the bridge kscratch created with
/// `NODE_X_BRIDGE_ADDR`; `--iptables=false` leaves iptables to kube-proxy;
/// `--ip-masq=false` keeps pod source addresses (kscratch masquerades only
/// traffic leaving the cluster); `--mtu` is the pod MTU.
pub fn docker_defaults(s: &Scenario) -> String {
    let d = match &s.runtime {
        Runtime::Docker(d) => d,
        Runtime::Containerd => return String::new(),
    };
    let mut opts = vec![
        format!("--bridge={}", s.network.bridge),
        format!("--iptables={}", d.iptables),
        format!("--ip-masq={}", d.ip_masq),
        format!("--mtu={}", s.network.pod_mtu),
    ];
    if let Some(r) = &d.insecure_registry {
        opts.push(format!("--insecure-registry={r}"));
    }
    format!("# Written by kscratch: docker options for the pod bridge.\nDOCKER_OPTS=\"{}\"\nDOCKER_NOFILE={}\n", opts.join(" "), d.nofile)
}

/// The pause image containerd's CRI uses for pod sandboxes: kubeadm's
/// `PauseVersion` of the release (`core/data/images.tsv`).
fn pause_image(s: &Scenario) -> String {
    let tag = &crate::release::release_images(s.version.minor).pause;
    format!("{}/pause:{tag}", s.images.registry)
}

/// `/etc/containerd/config.toml` (format version 2, which containerd 1.5+
/// reads and 2.x migrates): CNI from `/opt/cni/bin` and `/etc/cni/net.d`,
/// runc with the systemd cgroup driver (the kubelet is told the same).
pub fn containerd_config(s: &Scenario) -> String {
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        "# Written by kscratch.\n\
         version = 2\n\
         \n\
         [{cri}]\n\
         \x20 sandbox_image = \"{pause}\"\n\
         \n\
         [{cri}.cni]\n\
         \x20 bin_dir = \"/opt/cni/bin\"\n\
         \x20 conf_dir = \"/etc/cni/net.d\"\n\
         \n\
         [{cri}.containerd.runtimes.runc]\n\
         \x20 runtime_type = \"io.containerd.runc.v2\"\n\
         \n\
         [{cri}.containerd.runtimes.runc.options]\n\
         \x20 SystemdCgroup = true\n",
        pause = pause_image(s),
    )
}

/// `/etc/logrotate.d/kubernetes`: the guide's "log rotation for all node
/// components". Daemons under systemd log to the journal; this covers
/// components redirected to files and, with docker, its json-file logs.
pub fn logrotate(s: &Scenario) -> String {
    let mut out = String::from("# Written by kscratch.\n");
    let block = |paths: &str| {
        format!("{paths} {{\n    rotate 5\n    copytruncate\n    missingok\n    notifempty\n    compress\n    maxsize 100M\n    daily\n}}\n")
    };
    out.push_str(&block("/var/log/kubelet.log /var/log/kube-proxy.log /var/log/kube-apiserver.log /var/log/kube-controller-manager.log /var/log/kube-scheduler.log /var/log/etcd.log"));
    if matches!(s.runtime, Runtime::Docker(_)) {
        out.push_str(&block("/var/lib/docker/containers/*/*-json.log"));
    }
    out
}
