//! Static pod manifests for etcd and the control plane, built with
//! `k8s-openapi`'s `Pod` type from the guide's pod templates: host network,
//! the component's flags as the command, hostPath volumes for
//! `/srv/kubernetes` and `/etc/ssl`, and a liveness probe.

use super::flags::{self, Flag};
use super::{not_applicable, serialize_error, RenderError};
use crate::plan::{Asset, Component, KubeconfigUser, PKI_DIR};
use crate::scenario::{EtcdRunAs, Scenario, SecurityModel};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, HostPathVolumeSource, Pod, PodSpec, Probe,
    ResourceRequirements, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// The static pod of `c` on `node`. etcd needs a node that is an etcd member.
pub fn static_pod(s: &Scenario, node: Option<usize>, c: Component) -> Result<Pod, RenderError> {
    let asset = Asset::StaticPod(c);
    if let Some(i) = node {
        if i >= s.nodes.len() {
            return Err(RenderError::NoSuchNode {
                index: i,
                count: s.nodes.len(),
            });
        }
    }
    let fx = s.version.features();
    let tls = s.security.model == SecurityModel::Https;
    if c != Component::Etcd {
        if let Some(n) = node.and_then(|i| s.nodes.get(i)) {
            if !n.roles.control_plane {
                return Err(not_applicable(
                    asset,
                    &format!("node `{}` is not a control-plane node", n.name),
                ));
            }
        }
    }
    let mut mounts: Vec<Mount> = Vec::new();
    let mut ports = Vec::new();
    let (image, flags, probe, cpu, memory): (String, Vec<Flag>, Probe, &str, Option<&str>) = match c
    {
        Component::KubeApiserver => {
            mounts.push(Mount::dir("srvkube", PKI_DIR, true));
            // Root certificates for talking to a cloud provider (the guide's `etcssl`).
            mounts.push(Mount::dir("etcssl", "/etc/ssl", true));
            let f = flags::kube_apiserver(s, node);
            let probe = if tls {
                let port = s.security.model.apiserver_port();
                ports.push(port_named("https", port));
                http_probe("HTTPS", port, "/healthz")
            } else {
                http_probe("HTTP", flags::INSECURE_PORT, "/healthz")
            };
            if f.iter().any(|f| f.name == "insecure-bind-address") {
                ports.push(port_named("local", flags::INSECURE_PORT));
            }
            (control_plane_image(s, c), f, probe, "250m", None)
        }
        Component::KubeControllerManager => {
            mounts.push(Mount::dir("srvkube", PKI_DIR, true));
            mounts.push(Mount::dir("etcssl", "/etc/ssl", true));
            if tls {
                mounts.push(Mount::file(
                    "kubeconfig",
                    Asset::Kubeconfig(KubeconfigUser::ControllerManager).path(),
                ));
            }
            let probe = if fx.controller_manager_secure_health {
                http_probe("HTTPS", 10257, "/healthz")
            } else {
                http_probe("HTTP", 10252, "/healthz")
            };
            (
                control_plane_image(s, c),
                flags::kube_controller_manager(s),
                probe,
                "200m",
                None,
            )
        }
        Component::KubeScheduler => {
            if tls {
                mounts.push(Mount::file(
                    "kubeconfig",
                    Asset::Kubeconfig(KubeconfigUser::Scheduler).path(),
                ));
            }
            let probe = if fx.scheduler_secure_health {
                http_probe("HTTPS", 10259, "/healthz")
            } else {
                http_probe("HTTP", 10251, "/healthz")
            };
            (
                control_plane_image(s, c),
                flags::kube_scheduler(s),
                probe,
                "100m",
                None,
            )
        }
        Component::Etcd => {
            if s.etcd.run_as == EtcdRunAs::Service {
                return Err(not_applicable(
                    asset,
                    "etcd runs as a service (etcd.runAs: service)",
                ));
            }
            let i = node.ok_or_else(|| RenderError::NodeRequired {
                asset: asset.path().to_string(),
            })?;
            if !s.etcd.members.contains(&i) {
                return Err(not_applicable(
                    asset,
                    &format!("node `{}` is not an etcd member", s.nodes[i].name),
                ));
            }
            let metrics = etcd_has_metrics_listener(&s.etcd.image);
            // hostPath.type arrived in 1.8 (core/data/fields.tsv); before, a
            // missing hostPath directory is created by the runtime anyway.
            let typed =
                crate::release::field_state("pod", s.version.minor, "spec.volumes.hostPath.type")
                    .accepted();
            mounts.push(Mount {
                type_: typed.then_some("DirectoryOrCreate"),
                ..Mount::dir("etcd-data", &s.etcd.data_dir, false)
            });
            if tls {
                mounts.push(Mount::dir("etcd-certs", &format!("{PKI_DIR}/etcd"), true));
            }
            // With client-cert-auth the client port answers only to certificates
            // the kubelet's prober does not have: probe the plain metrics
            // listener where etcd has one, else the TCP port.
            let probe = if metrics {
                http_probe("HTTP", 2381, "/health")
            } else if tls {
                Probe {
                    tcp_socket: Some(TCPSocketAction {
                        host: Some("127.0.0.1".into()),
                        port: IntOrString::Int(2379),
                    }),
                    ..probe_timing()
                }
            } else {
                http_probe("HTTP", 2379, "/health")
            };
            (
                s.etcd.image.clone(),
                flags::etcd(s, i, metrics),
                probe,
                "100m",
                Some("100Mi"),
            )
        }
    };
    if let Some(cfg) = s.cloud.as_ref().and_then(|c| c.config.as_deref()) {
        if matches!(
            c,
            Component::KubeApiserver | Component::KubeControllerManager
        ) {
            mounts.push(Mount::file("cloud-config", cfg));
        }
    }

    let mut command = flags::command(s, c);
    command.extend(flags::args(&flags));
    let mut requests = BTreeMap::from([("cpu".to_string(), Quantity(cpu.into()))]);
    if let Some(m) = memory {
        requests.insert("memory".into(), Quantity(m.into()));
    }
    let container = Container {
        name: c.name().into(),
        image: Some(image),
        command: Some(command),
        ports: (!ports.is_empty()).then_some(ports),
        volume_mounts: (!mounts.is_empty())
            .then(|| mounts.iter().map(Mount::volume_mount).collect()),
        liveness_probe: Some(probe),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(c.name().into()),
            namespace: Some("kube-system".into()),
            labels: Some(BTreeMap::from([
                ("component".to_string(), c.name().to_string()),
                ("tier".to_string(), "control-plane".to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            host_network: Some(true),
            containers: vec![container],
            volumes: (!mounts.is_empty()).then(|| mounts.iter().map(Mount::volume).collect()),
            ..Default::default()
        }),
        status: None,
    })
}

pub(super) fn render(
    s: &Scenario,
    node: Option<usize>,
    c: Component,
) -> Result<String, RenderError> {
    let pod = static_pod(s, node, c)?;
    serde_yaml::to_string(&pod).map_err(|e| serialize_error(Asset::StaticPod(c).path(), e))
}

/// `HYPERKUBE_IMAGE` with hyperkube, else the component's own image (as the plan pulls it).
fn control_plane_image(s: &Scenario, c: Component) -> String {
    match &s.images.hyperkube_image {
        Some(h) if s.images.hyperkube => h.clone(),
        _ => format!("{}/{}:v{}", s.images.registry, c.name(), s.version),
    }
}

/// etcd 3.3 added `--listen-metrics-urls`. The version is read from the
/// image tag (`etcd:3.5.16-0`); an unreadable tag gets the older behaviour.
fn etcd_has_metrics_listener(image: &str) -> bool {
    let tag = image
        .rsplit('/')
        .next()
        .and_then(|last| last.split_once(':'))
        .map_or("", |(_, t)| t);
    let mut parts = tag.trim_start_matches('v').split(['.', '-']);
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    matches!((major, minor), (Some(ma), Some(mi)) if (ma, mi) >= (3, 3))
}

/// The guide's probe timing: 15 s initial delay, 15 s timeout; kubeadm's 8 failures.
fn probe_timing() -> Probe {
    Probe {
        initial_delay_seconds: Some(15),
        timeout_seconds: Some(15),
        failure_threshold: Some(8),
        ..Default::default()
    }
}

fn http_probe(scheme: &str, port: u16, path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            scheme: Some(scheme.into()),
            host: Some("127.0.0.1".into()),
            port: IntOrString::Int(port.into()),
            path: Some(path.into()),
            ..Default::default()
        }),
        ..probe_timing()
    }
}

fn port_named(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port.into(),
        host_port: Some(port.into()),
        ..Default::default()
    }
}

/// A hostPath volume and its mount at the same path.
struct Mount {
    name: &'static str,
    path: String,
    read_only: bool,
    type_: Option<&'static str>,
}

impl Mount {
    fn dir(name: &'static str, path: &str, read_only: bool) -> Mount {
        Mount {
            name,
            path: path.into(),
            read_only,
            type_: None,
        }
    }
    fn file(name: &'static str, path: &str) -> Mount {
        Mount {
            name,
            path: path.into(),
            read_only: true,
            type_: None,
        }
    }
    fn volume(&self) -> Volume {
        Volume {
            name: self.name.into(),
            host_path: Some(HostPathVolumeSource {
                path: self.path.clone(),
                type_: self.type_.map(String::from),
            }),
            ..Default::default()
        }
    }
    fn volume_mount(&self) -> VolumeMount {
        VolumeMount {
            name: self.name.into(),
            mount_path: self.path.clone(),
            read_only: self.read_only.then_some(true),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::etcd_has_metrics_listener;

    #[test]
    fn etcd_metrics_listener_follows_the_image_tag() {
        assert!(etcd_has_metrics_listener("registry.k8s.io/etcd:3.5.16-0"));
        assert!(etcd_has_metrics_listener("quay.io/coreos/etcd:v3.3.10"));
        assert!(!etcd_has_metrics_listener(
            "gcr.io/google-containers/etcd:3.0.17"
        ));
        assert!(!etcd_has_metrics_listener("localhost:5000/etcd"));
        assert!(!etcd_has_metrics_listener("etcd:latest"));
    }
}
