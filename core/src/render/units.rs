//! systemd units, docker's defaults file, containerd's config and logrotate.
//!
//! Every unit restarts its daemon when it dies (`Restart=always`): the
//! guide's "liveness-monitoring", done by the init system. ExecStart lines
//! are continued with `\`, one flag per line. [`unit_command`] gives the
//! same words typed (for the shell backend's supervisor); the simulator,
//! which follows the node's files, reads them back with
//! [`super::unit_exec_start`].

use super::flags::{self, Flag};
use super::{not_applicable, RenderError};
use crate::plan::{Asset, Service};
use crate::scenario::{EtcdRunAs, Runtime, Scenario};

/// Debian's haproxy binary: the local apiserver proxy comes from the distribution.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// What a service's unit runs, as words before they are written into its
/// `ExecStart=`: the program (behind `/usr/bin/env` when the unit finds it
/// on the PATH) and its arguments, `$VAR` references as written, and the
/// environment files the unit reads (each optional: `EnvironmentFile=-`).
/// [`unit`] writes these words; the shell backend's supervisor runs the
/// same words where there is no systemd, so nothing parses the unit back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitCommand {
    pub argv: Vec<String>,
    pub environment_files: Vec<String>,
    /// Runs once and is done (`Type=oneshot`): the supervisor runs it once,
    /// not in a restart loop.
    pub oneshot: bool,
}

/// The command of `service`'s unit on `node` (see [`UnitCommand`]).
pub fn unit_command(
    s: &Scenario,
    node: Option<usize>,
    service: Service,
) -> Result<UnitCommand, RenderError> {
    Ok(spec(s, node, service)?.command())
}

/// The systemd unit (or, for docker, the drop-in) of `service` on `node`.
pub fn unit(s: &Scenario, node: Option<usize>, service: Service) -> Result<String, RenderError> {
    let spec = spec(s, node, service)?;
    if let (Service::Docker, Runtime::Docker(d)) = (service, &s.runtime) {
        // docker's packaged unit stays; the drop-in resets its ExecStart.
        let env = spec
            .environment_files
            .iter()
            .map(|f| format!("EnvironmentFile=-{f}\n"))
            .collect::<String>();
        return Ok(format!(
            "# Written by kscratch: docker reads its options from /etc/default/docker.\n\
             [Service]\n\
             {env}\
             ExecStart=\n\
             ExecStart={exec}\n\
             LimitNOFILE={nofile}\n\
             Restart=always\n\
             RestartSec=5\n",
            exec = spec.command().argv.join(" "),
            nofile = d.nofile,
        ));
    }
    Ok(service_unit(&spec))
}

/// A unit before it is text.
struct Spec {
    /// `[Unit]` settings (a drop-in such as docker's keeps the packaged ones).
    description: &'static str,
    after: Vec<&'static str>,
    /// Units this one starts before (`Before=`).
    before: &'static [&'static str],
    /// The program's words: `/usr/local/bin/kubelet`, `/usr/bin/env containerd`.
    program: &'static [&'static str],
    /// Arguments after the program, one per continuation line in the unit.
    args: Vec<String>,
    /// `[Service]` settings before `ExecStart=`.
    extra: &'static [&'static str],
    environment_files: Vec<String>,
    /// `Type=oneshot` with `RemainAfterExit=yes`: runs once (at boot) and
    /// is done, never restarted.
    oneshot: bool,
}

impl Spec {
    fn command(&self) -> UnitCommand {
        UnitCommand {
            argv: self
                .program
                .iter()
                .map(|w| w.to_string())
                .chain(self.args.iter().cloned())
                .collect(),
            environment_files: self.environment_files.clone(),
            oneshot: self.oneshot,
        }
    }
}

fn spec(s: &Scenario, node: Option<usize>, service: Service) -> Result<Spec, RenderError> {
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
    let args = |f: &[Flag]| f.iter().map(Flag::arg).collect::<Vec<_>>();
    Ok(match service {
        Service::Kubelet => {
            let i = need()?;
            Spec {
                description: "kubelet: the Kubernetes node agent",
                before: &[],
                after: vec![runtime_unit],
                program: &["/usr/local/bin/kubelet"],
                args: args(&flags::kubelet(s, i)),
                extra: &[],
                environment_files: Vec::new(),
                oneshot: false,
            }
        }
        Service::KubeProxy => {
            let i = need()?;
            Spec {
                description: "kube-proxy: Kubernetes Service rules",
                before: &[],
                after: vec!["network-online.target"],
                program: &["/usr/local/bin/kube-proxy"],
                args: args(&flags::kube_proxy(s, i)),
                extra: &[],
                environment_files: Vec::new(),
                oneshot: false,
            }
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
            Spec {
                description: "etcd: the cluster's key-value store",
                before: &[],
                after: vec!["network-online.target"],
                program: &["/usr/local/bin/etcd"],
                args: args(&flags::etcd(s, i, false)),
                extra: &["Type=notify"],
                environment_files: Vec::new(),
                oneshot: false,
            }
        }
        // A oneshot: the node's pod network at boot, before the runtime and
        // the agents (see render/network.rs for why this mechanism).
        Service::Network => Spec {
            description:
                "kscratch-network: this node's pod network (bridge, routes, VXLAN, masquerade)",
            after: vec!["network-online.target"],
            before: &[
                "containerd.service",
                "docker.service",
                "kubelet.service",
                "kube-proxy.service",
            ],
            program: &["/bin/sh"],
            args: vec![
                Asset::NetworkUp.path().into(),
                Asset::NetworkDescription.path().into(),
            ],
            extra: &[],
            environment_files: Vec::new(),
            oneshot: true,
        },
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
            Spec {
                description: "kscratch-apiserver-proxy: the local apiserver load balancer",
                after: vec!["network-online.target"],
                before: &["kubelet.service", "kube-proxy.service"],
                program: &[HAPROXY],
                args: vec![
                    "-db".into(),
                    "-f".into(),
                    Asset::ApiserverProxyConfig.path().into(),
                ],
                extra: &[],
                environment_files: Vec::new(),
                oneshot: false,
            }
        }
        Service::Docker => match &s.runtime {
            Runtime::Docker(_) => Spec {
                description: "",
                before: &[],
                after: Vec::new(),
                program: &["/usr/bin/env", "dockerd"],
                args: vec!["$DOCKER_OPTS".into()],
                extra: &[],
                environment_files: vec![Asset::DockerDefaults.path().into()],
                oneshot: false,
            },
            Runtime::Containerd => {
                return Err(not_applicable(asset, "the container runtime is containerd"))
            }
        },
        Service::Containerd => match &s.runtime {
            Runtime::Containerd => Spec {
                description: "containerd: the container runtime",
                before: &[],
                after: vec!["network.target", "local-fs.target"],
                program: &["/usr/bin/env", "containerd"],
                args: args(&[Flag {
                    name: "config",
                    value: Asset::ContainerdConfig.path().into(),
                }]),
                extra: &[
                    "Type=notify",
                    "Delegate=yes",
                    "KillMode=process",
                    "LimitNOFILE=infinity",
                    "LimitNPROC=infinity",
                    "TasksMax=infinity",
                    "OOMScoreAdjust=-999",
                ],
                environment_files: Vec::new(),
                oneshot: false,
            },
            Runtime::Docker(_) => {
                return Err(not_applicable(asset, "the container runtime is docker"))
            }
        },
    })
}

fn service_unit(spec: &Spec) -> String {
    let mut out = String::new();
    out.push_str("# Written by kscratch.\n[Unit]\n");
    out.push_str(&format!("Description={}\n", spec.description));
    for a in &spec.after {
        out.push_str(&format!("After={a}\nWants={a}\n"));
    }
    if !spec.before.is_empty() {
        out.push_str(&format!("Before={}\n", spec.before.join(" ")));
    }
    out.push_str("\n[Service]\n");
    if spec.oneshot {
        out.push_str("Type=oneshot\nRemainAfterExit=yes\n");
    }
    for e in spec.extra {
        out.push_str(e);
        out.push('\n');
    }
    for f in &spec.environment_files {
        out.push_str(&format!("EnvironmentFile=-{f}\n"));
    }
    out.push_str("ExecStart=");
    out.push_str(&spec.program.join(" "));
    for a in &spec.args {
        out.push_str(" \\\n  ");
        out.push_str(a);
    }
    out.push('\n');
    if !spec.oneshot {
        out.push_str("Restart=always\nRestartSec=5\n");
    }
    out.push_str("\n[Install]\nWantedBy=multi-user.target\n");
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
