//! The cluster DNS addon (the guide's "Starting Cluster Services"): a
//! `kube-dns` Service on the scenario's DNS IP, in front of CoreDNS (1.11+)
//! or kube-dns (before), built with `k8s-openapi` types as one multi-document
//! YAML file that `kubectl apply -f` takes whole.
//!
//! Image tags follow what kubeadm shipped with each release (its constants).

use super::{serialize_error, RenderError};
use crate::plan::Asset;
use crate::scenario::Scenario;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    KeyToPath, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

const NS: &str = "kube-system";

/// The addon's objects, one YAML document each, in the order they must be created.
pub fn dns_addon_documents(s: &Scenario) -> Result<Vec<String>, RenderError> {
    let fx = s.version.features();
    let mut docs = Vec::new();
    if fx.coredns {
        docs.push(yaml(&service_account("coredns"))?);
        docs.push(yaml(&coredns_cluster_role())?);
        docs.push(yaml(&coredns_binding())?);
        docs.push(yaml(&coredns_config(s))?);
        docs.push(yaml(&coredns_deployment(s))?);
    } else {
        docs.push(yaml(&service_account("kube-dns"))?);
        docs.push(yaml(&ConfigMap {
            metadata: meta("kube-dns"),
            ..Default::default()
        })?);
        let d = serde_yaml::to_value(kube_dns_deployment(s))
            .map_err(|e| serialize_error(Asset::DnsAddon.path(), e))?;
        docs.push(deployment_api_version(d, fx.apps_v1)?);
    }
    docs.push(yaml(&dns_service(s))?);
    Ok(docs)
}

pub(super) fn render(s: &Scenario) -> Result<String, RenderError> {
    Ok(dns_addon_documents(s)?.join("---\n"))
}

fn yaml<T: serde::Serialize>(v: &T) -> Result<String, RenderError> {
    serde_yaml::to_string(v).map_err(|e| serialize_error(Asset::DnsAddon.path(), e))
}

/// Before 1.9 Deployments are `extensions/v1beta1`; the fields kscratch uses are the same.
fn deployment_api_version(mut v: serde_yaml::Value, apps_v1: bool) -> Result<String, RenderError> {
    if !apps_v1 {
        if let serde_yaml::Value::Mapping(m) = &mut v {
            m.insert("apiVersion".into(), "extensions/v1beta1".into());
        }
    }
    serde_yaml::to_string(&v).map_err(|e| serialize_error(Asset::DnsAddon.path(), e))
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        labels: Some(labels()),
        ..Default::default()
    }
}

/// `k8s-app: kube-dns`: the label every DNS addon generation has used, so the Service selects either.
fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())])
}

fn service_account(name: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn coredns_cluster_role() -> ClusterRole {
    let rule = |groups: &[&str], resources: &[&str]| PolicyRule {
        api_groups: Some(groups.iter().map(|g| g.to_string()).collect()),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: vec!["list".into(), "watch".into()],
        ..Default::default()
    };
    ClusterRole {
        metadata: ObjectMeta {
            name: Some("system:coredns".into()),
            ..Default::default()
        },
        rules: Some(vec![
            rule(&[""], &["endpoints", "services", "pods", "namespaces"]),
            rule(&["discovery.k8s.io"], &["endpointslices"]),
        ]),
        ..Default::default()
    }
}

fn coredns_binding() -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some("system:coredns".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "system:coredns".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "coredns".into(),
            namespace: Some(NS.into()),
            ..Default::default()
        }]),
    }
}

/// What each release's CoreDNS understands (kubeadm's Corefile of that release).
struct CorednsRelease {
    image: String,
    /// The `ready` plugin (CoreDNS 1.5+, Kubernetes 1.16+).
    ready: bool,
    /// `forward` replaced `proxy` in kubeadm's Corefile in 1.14.
    forward: bool,
}

fn coredns_release(s: &Scenario) -> CorednsRelease {
    let minor = s.version.minor;
    // kubeadm's CoreDNSVersion of the release (core/data/images.tsv).
    let tag = &crate::release::release_images(minor).dns_tag;
    // From 1.21 the image moved to `coredns/coredns`.
    let path = if minor >= 21 {
        "coredns/coredns"
    } else {
        "coredns"
    };
    CorednsRelease {
        image: format!("{}/{path}:{tag}", s.images.registry),
        ready: minor >= 16,
        forward: minor >= 14,
    }
}

fn corefile(s: &Scenario, r: &CorednsRelease) -> String {
    let domain = &s.network.dns_domain;
    let health = if r.ready {
        "health {\n       lameduck 5s\n    }\n    ready"
    } else {
        "health"
    };
    let upstream = if r.forward {
        "forward . /etc/resolv.conf"
    } else {
        "proxy . /etc/resolv.conf"
    };
    format!(
        ".:53 {{\n    errors\n    {health}\n    kubernetes {domain} in-addr.arpa ip6.arpa {{\n       pods insecure\n       fallthrough in-addr.arpa ip6.arpa\n       ttl 30\n    }}\n    prometheus :9153\n    {upstream}\n    cache 30\n    loop\n    reload\n    loadbalance\n}}\n"
    )
}

fn coredns_config(s: &Scenario) -> ConfigMap {
    let r = coredns_release(s);
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("coredns".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("Corefile".to_string(), corefile(s, &r))])),
        ..Default::default()
    }
}

fn dns_ports() -> Vec<ContainerPort> {
    vec![
        ContainerPort {
            name: Some("dns".into()),
            container_port: 53,
            protocol: Some("UDP".into()),
            ..Default::default()
        },
        ContainerPort {
            name: Some("dns-tcp".into()),
            container_port: 53,
            protocol: Some("TCP".into()),
            ..Default::default()
        },
    ]
}

fn probe(path: &str, port: i32, scheme: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            scheme: Some(scheme.into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(60),
        timeout_seconds: Some(5),
        success_threshold: Some(1),
        failure_threshold: Some(5),
        ..Default::default()
    }
}

fn requests(cpu: &str, memory: &str, limit_memory: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(limit_memory.into()),
        )])),
        ..Default::default()
    }
}

/// DNS must run before workers join and on tainted control-plane nodes.
fn tolerations() -> Vec<Toleration> {
    let no_schedule = |key: &str| Toleration {
        key: Some(key.into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    };
    vec![
        Toleration {
            key: Some("CriticalAddonsOnly".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        },
        no_schedule("node-role.kubernetes.io/control-plane"),
        no_schedule("node-role.kubernetes.io/master"),
    ]
}

fn deployment(name: &str, service_account: &str, pod: PodSpec) -> Deployment {
    Deployment {
        metadata: meta(name),
        spec: DeploymentSpec {
            replicas: Some(2),
            selector: LabelSelector {
                match_labels: Some(labels()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(service_account.into()),
                    dns_policy: Some("Default".into()),
                    tolerations: Some(tolerations()),
                    ..pod
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn coredns_deployment(s: &Scenario) -> Deployment {
    let r = coredns_release(s);
    let mut ports = dns_ports();
    ports.push(ContainerPort {
        name: Some("metrics".into()),
        container_port: 9153,
        protocol: Some("TCP".into()),
        ..Default::default()
    });
    let container = Container {
        name: "coredns".into(),
        image: Some(r.image.clone()),
        args: Some(vec!["-conf".into(), "/etc/coredns/Corefile".into()]),
        ports: Some(ports),
        volume_mounts: Some(vec![VolumeMount {
            name: "config-volume".into(),
            mount_path: "/etc/coredns".into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        liveness_probe: Some(probe("/health", 8080, "HTTP")),
        readiness_probe: Some(Probe {
            initial_delay_seconds: None,
            ..if r.ready {
                probe("/ready", 8181, "HTTP")
            } else {
                probe("/health", 8080, "HTTP")
            }
        }),
        resources: Some(requests("100m", "70Mi", "170Mi")),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            read_only_root_filesystem: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = PodSpec {
        priority_class_name: Some("system-cluster-critical".into()),
        containers: vec![container],
        volumes: Some(vec![Volume {
            name: "config-volume".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "coredns".into(),
                items: Some(vec![KeyToPath {
                    key: "Corefile".into(),
                    path: "Corefile".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };
    deployment("coredns", "coredns", pod)
}

/// kube-dns 1.14.x (kubedns + dnsmasq + sidecar), as cluster/addons/dns shipped it.
fn kube_dns_deployment(s: &Scenario) -> Deployment {
    // kubeadm's KubeDNSVersion of the release (core/data/images.tsv).
    let tag = &crate::release::release_images(s.version.minor).dns_tag;
    let image = |name: &str| format!("{}/k8s-dns-{name}-amd64:{tag}", s.images.registry);
    let domain = &s.network.dns_domain;
    let probe_target = format!("kubernetes.default.svc.{domain}");
    let kubedns = Container {
        name: "kubedns".into(),
        image: Some(image("kube-dns")),
        args: Some(vec![
            format!("--domain={domain}."),
            "--dns-port=10053".into(),
            "--config-dir=/kube-dns-config".into(),
            "--v=2".into(),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("dns-local".into()),
                container_port: 10053,
                protocol: Some("UDP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("dns-tcp-local".into()),
                container_port: 10053,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        volume_mounts: Some(vec![VolumeMount {
            name: "kube-dns-config".into(),
            mount_path: "/kube-dns-config".into(),
            ..Default::default()
        }]),
        liveness_probe: Some(probe("/healthcheck/kubedns", 10054, "HTTP")),
        readiness_probe: Some(Probe {
            initial_delay_seconds: Some(3),
            ..probe("/readiness", 8081, "HTTP")
        }),
        resources: Some(requests("100m", "70Mi", "170Mi")),
        ..Default::default()
    };
    let dnsmasq = Container {
        name: "dnsmasq".into(),
        image: Some(image("dnsmasq-nanny")),
        args: Some(
            [
                "-v=2",
                "-logtostderr",
                "-configDir=/etc/k8s/dns/dnsmasq-nanny",
                "-restartDnsmasq=true",
                "--",
                "-k",
                "--cache-size=1000",
                "--log-facility=-",
                &format!("--server=/{domain}/127.0.0.1#10053"),
                "--server=/in-addr.arpa/127.0.0.1#10053",
                "--server=/ip6.arpa/127.0.0.1#10053",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect(),
        ),
        ports: Some(dns_ports()),
        volume_mounts: Some(vec![VolumeMount {
            name: "kube-dns-config".into(),
            mount_path: "/etc/k8s/dns/dnsmasq-nanny".into(),
            ..Default::default()
        }]),
        liveness_probe: Some(probe("/healthcheck/dnsmasq", 10054, "HTTP")),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("150m".into())),
                ("memory".to_string(), Quantity("20Mi".into())),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sidecar = Container {
        name: "sidecar".into(),
        image: Some(image("sidecar")),
        args: Some(vec![
            "--v=2".into(),
            "--logtostderr".into(),
            format!("--probe=kubedns,127.0.0.1:10053,{probe_target},5,A"),
            format!("--probe=dnsmasq,127.0.0.1:53,{probe_target},5,A"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: 10054,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        liveness_probe: Some(probe("/metrics", 10054, "HTTP")),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("20Mi".into())),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![kubedns, dnsmasq, sidecar],
        volumes: Some(vec![Volume {
            name: "kube-dns-config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "kube-dns".into(),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };
    deployment("kube-dns", "kube-dns", pod)
}

/// The `kube-dns` Service on the scenario's DNS IP (the kubelets' `clusterDNS`).
fn dns_service(s: &Scenario) -> Service {
    let fx = s.version.features();
    let mut ports = vec![
        ServicePort {
            name: Some("dns".into()),
            port: 53,
            protocol: Some("UDP".into()),
            target_port: Some(IntOrString::Int(53)),
            ..Default::default()
        },
        ServicePort {
            name: Some("dns-tcp".into()),
            port: 53,
            protocol: Some("TCP".into()),
            target_port: Some(IntOrString::Int(53)),
            ..Default::default()
        },
    ];
    if fx.coredns {
        ports.push(ServicePort {
            name: Some("metrics".into()),
            port: 9153,
            protocol: Some("TCP".into()),
            target_port: Some(IntOrString::Int(9153)),
            ..Default::default()
        });
    }
    Service {
        metadata: meta("kube-dns"),
        spec: Some(ServiceSpec {
            cluster_ip: Some(s.network.dns_ip.to_string()),
            selector: Some(labels()),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}
