//! The planner: a pure function from a validated scenario to a plan.
//!
//! It walks the guide in order. Same scenario in, same steps out: iteration
//! is over vectors in scenario order, never over hash maps.

use super::*;
use crate::net::iptables::{Rule, Table};
use crate::scenario::{EtcdRunAs, PodTraffic, Runtime, Scenario, SecurityModel};
use std::net::IpAddr;

/// Turns a validated scenario into its plan.
pub fn plan(s: &Scenario) -> Plan {
    let mut b = Builder {
        s,
        steps: Vec::with_capacity(s.nodes.len() * 28 + 64),
        deps: Vec::with_capacity(s.nodes.len() * 48 + 64),
    };
    let fx = s.version.features();
    let https = s.security.model == SecurityModel::Https;

    // PKI, on the operator's machine: CAs first, then leaves. Key material is
    // generated when the plan runs, never here.
    let mut pki = Pki::default();
    if https {
        pki.ca_cluster = Some(b.local(
            "pki/ca",
            Phase::Pki,
            Action::GenerateCa { ca: Ca::Cluster },
            &[],
        ));
        pki.ca_etcd = Some(b.local(
            "pki/etcd-ca",
            Phase::Pki,
            Action::GenerateCa { ca: Ca::Etcd },
            &[],
        ));
        if fx.front_proxy_ca {
            pki.ca_front_proxy = Some(b.local(
                "pki/front-proxy-ca",
                Phase::Pki,
                Action::GenerateCa { ca: Ca::FrontProxy },
                &[],
            ));
        }
        // The cluster-wide leaves; per-node ones are issued with their node below.
        // One list for the plan and the renderer: render::issued_certs.
        let shared = crate::render::issued_certs(s)
            .into_iter()
            .filter(|(_, n)| n.is_none())
            .map(|(c, _)| c);
        for cert in shared {
            let ca = pki.ca(cert.ca());
            let r = b.local(
                cert_key(cert),
                Phase::Pki,
                Action::IssueCert { cert, node: None },
                &[ca],
            );
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
    let mut token_users = vec!["admin".to_string(), "kubelet".into(), "kube-proxy".into()];
    if !https {
        token_users.clear();
    }
    if !token_users.is_empty() {
        pki.tokens = Some(b.local(
            "pki/tokens",
            Phase::Pki,
            Action::GenerateTokens { users: token_users },
            &[],
        ));
    }

    // Shared artifacts: one pod network table and one Service plan for all nodes.
    let vx = s.vxlan().cloned();
    let entries = s
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| PodNetworkEntry {
            node: n.name.clone(),
            node_ip: n.ip,
            pod_cidr: s.pod_cidr(i),
            bridge_addr: IpNet::new(s.bridge_addr(i), s.pod_cidr(i).prefix_len())
                .expect("prefix from a valid CIDR"),
            vtep_mac: vx.as_ref().map(|_| vtep_mac(n.ip)),
        })
        .collect();
    let artifacts = vec![
        Artifact::PodNetwork(entries),
        Artifact::ServicePlan(ServicePlan {
            service_cidr: s.network.service_cidr,
            kubernetes_ip: s.network.kubernetes_service_ip,
            dns_ip: s.network.dns_ip,
            dns_domain: s.network.dns_domain.clone(),
        }),
    ];
    if s.network.pod_traffic == PodTraffic::Fabric {
        b.push(
            Target::Fabric,
            "net/fabric-routes",
            Phase::NodeBase,
            Action::InstallFabricRoutes {
                artifact: ArtifactId::PodNetwork,
            },
            &[],
        );
    }

    let docker_leftovers = docker_default_rules();
    let masquerade = masquerade_rule(s);
    let cp_first = s
        .control_plane_nodes()
        .next()
        .map(|(i, _)| i as u32)
        .unwrap_or(0);
    let mut agent_starts = Vec::new();
    let mut etcd_healthy = Vec::new();
    let mut cp_healthy = Vec::new();

    for (i, node) in s.nodes.iter().enumerate() {
        let t = Target::Node(i as u32);
        let is_cp = node.roles.control_plane;
        let is_etcd = s.etcd.members.contains(&i);

        // Preflight: nothing is touched until every check passes.
        let mut checks = vec![
            PreflightCheck::Platform {
                os: "linux",
                arch: "x86_64",
            },
            PreflightCheck::NodeAddress {
                ip: node.ip,
                interface: s.network.interface.clone(),
            },
            PreflightCheck::Command { name: "iptables" },
            PreflightCheck::Command { name: "ip" },
            // kube-proxy needs conntrack (the guide's note on kube-proxy).
            PreflightCheck::Command { name: "conntrack" },
            PreflightCheck::PortFree { port: 10250 },
        ];
        checks.push(PreflightCheck::Command {
            name: match s.runtime {
                Runtime::Docker(_) => "dockerd",
                Runtime::Containerd => "containerd",
            },
        });
        if vx.is_some() {
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
        if is_cp {
            checks.push(PreflightCheck::PortFree {
                port: s.security.model.apiserver_port(),
            });
        }
        if is_etcd {
            checks.push(PreflightCheck::PortFree { port: 2379 });
            checks.push(PreflightCheck::PortFree { port: 2380 });
        }
        let pre = b.push(
            t,
            "preflight",
            Phase::Preflight,
            Action::Preflight { checks },
            &[],
        );

        // Binaries and images.
        let kubelet_bin = b.push(
            t,
            "bin/kubelet",
            Phase::Binaries,
            Action::InstallBinary {
                name: "kubelet",
                dest: "/usr/local/bin/kubelet",
            },
            &[pre],
        );
        let proxy_bin = b.push(
            t,
            "bin/kube-proxy",
            Phase::Binaries,
            Action::InstallBinary {
                name: "kube-proxy",
                dest: "/usr/local/bin/kube-proxy",
            },
            &[pre],
        );
        let mut images = Vec::new();
        if is_cp {
            match &s.images.hyperkube_image {
                Some(h) => images.push(b.push(
                    t,
                    "image/hyperkube",
                    Phase::Binaries,
                    Action::PullImage { image: h.clone() },
                    &[pre],
                )),
                None => {
                    for (key, c) in [
                        ("image/kube-apiserver", "kube-apiserver"),
                        ("image/kube-controller-manager", "kube-controller-manager"),
                        ("image/kube-scheduler", "kube-scheduler"),
                    ] {
                        let image = format!("{}/{c}:v{}", s.images.registry, s.version);
                        images.push(b.push(
                            t,
                            key,
                            Phase::Binaries,
                            Action::PullImage { image },
                            &[pre],
                        ));
                    }
                }
            }
        }
        let etcd_bin = match (is_etcd, s.etcd.run_as) {
            (true, EtcdRunAs::StaticPod) => Some(b.push(
                t,
                "image/etcd",
                Phase::Binaries,
                Action::PullImage {
                    image: s.etcd.image.clone(),
                },
                &[pre],
            )),
            (true, EtcdRunAs::Service) => Some(b.push(
                t,
                "bin/etcd",
                Phase::Binaries,
                Action::InstallBinary {
                    name: "etcd",
                    dest: "/usr/local/bin/etcd",
                },
                &[pre],
            )),
            _ => None,
        };

        // Node base: runtime, bridge, routes, masquerade, sysctls, housekeeping.
        let mut base = Vec::new();
        if let Runtime::Docker(_) = s.runtime {
            // The guide: remove a docker0 and nat rules left by an earlier docker.
            // Only docker's own rules go, not the whole nat table, so a re-apply keeps ours.
            base.push(b.push(
                t,
                "net/remove-docker0",
                Phase::NodeBase,
                Action::DeleteLink {
                    name: "docker0".into(),
                },
                &[pre],
            ));
            base.push(b.push(
                t,
                "net/remove-docker-nat",
                Phase::NodeBase,
                Action::DeleteIptablesRules {
                    table: Table::Nat,
                    rules: docker_leftovers.clone(),
                    chains: vec!["DOCKER".into()],
                },
                &[pre],
            ));
        }
        let brnf = b.push(
            t,
            "kernel/br_netfilter",
            Phase::NodeBase,
            Action::LoadKernelModule {
                name: "br_netfilter",
            },
            &[pre],
        );
        base.push(b.push(
            t,
            "sysctl/ip_forward",
            Phase::NodeBase,
            Action::SetSysctl {
                key: "net.ipv4.ip_forward",
                value: "1",
            },
            &[pre],
        ));
        // kube-proxy's Service rules must see bridged pod-to-pod traffic.
        base.push(b.push(
            t,
            "sysctl/bridge-nf-call-iptables",
            Phase::NodeBase,
            Action::SetSysctl {
                key: "net.bridge.bridge-nf-call-iptables",
                value: "1",
            },
            &[brnf],
        ));
        let bridge = b.push(
            t,
            "net/bridge",
            Phase::NodeBase,
            Action::CreateBridge {
                name: s.network.bridge.clone(),
                addr: IpNet::new(s.bridge_addr(i), s.pod_cidr(i).prefix_len())
                    .expect("valid prefix"),
                mtu: s.network.pod_mtu,
            },
            &base,
        );
        base.push(bridge);
        match &s.network.pod_traffic {
            PodTraffic::Routed => base.push(b.push(
                t,
                "net/pod-routes",
                Phase::NodeBase,
                Action::InstallPodRoutes {
                    artifact: ArtifactId::PodNetwork,
                    via: PodRouteVia::Underlay {
                        dev: s.network.interface.clone(),
                    },
                },
                &[pre],
            )),
            PodTraffic::Vxlan(v) => {
                let dev = VxlanDevice {
                    name: v.device.clone(),
                    vni: v.vni,
                    port: v.port,
                    local: node.ip,
                    dev: s.network.interface.clone(),
                    mtu: s.network.pod_mtu,
                    mac: vtep_mac(node.ip),
                    addr: IpNet::new(s.pod_cidr(i).network(), s.pod_cidr(i).max_prefix_len())
                        .expect("host prefix"),
                };
                let vxr = b.push(
                    t,
                    "net/vxlan",
                    Phase::NodeBase,
                    Action::CreateVxlan(Box::new(dev)),
                    &[pre],
                );
                base.push(b.push(
                    t,
                    "net/pod-routes",
                    Phase::NodeBase,
                    Action::InstallPodRoutes {
                        artifact: ArtifactId::PodNetwork,
                        via: PodRouteVia::Overlay {
                            dev: v.device.clone(),
                        },
                    },
                    &[vxr],
                ));
            }
            PodTraffic::Fabric | PodTraffic::External => {}
        }
        if let Some(rule) = &masquerade {
            base.push(b.push(
                t,
                "net/masquerade",
                Phase::NodeBase,
                Action::EnsureIptablesRule {
                    table: Table::Nat,
                    rule: rule.clone(),
                },
                &[pre],
            ));
        }
        b.push(
            t,
            "file/logrotate",
            Phase::NodeBase,
            write(Asset::LogRotate),
            &[pre],
        );
        let runtime_start = match s.runtime {
            Runtime::Docker(_) => {
                let cfg = b.push(
                    t,
                    "file/docker-defaults",
                    Phase::NodeBase,
                    write(Asset::DockerDefaults),
                    &[pre],
                );
                // docker's packaged unit does not read DOCKER_OPTS: a drop-in makes it.
                let unit = b.push(
                    t,
                    "file/docker-unit",
                    Phase::NodeBase,
                    write(Asset::Unit(Service::Docker)),
                    &[pre],
                );
                let mut deps = base.clone();
                deps.extend([cfg, unit]);
                b.push(
                    t,
                    "service/docker",
                    Phase::NodeBase,
                    Action::StartService { name: "docker" },
                    &deps,
                )
            }
            Runtime::Containerd => {
                let cfg = b.push(
                    t,
                    "file/containerd-config",
                    Phase::NodeBase,
                    write(Asset::ContainerdConfig),
                    &[pre],
                );
                let cni = b.push(
                    t,
                    "file/cni-config",
                    Phase::NodeBase,
                    write(Asset::CniConfig),
                    &[pre],
                );
                let mut deps = base.clone();
                deps.extend([cfg, cni]);
                b.push(
                    t,
                    "service/containerd",
                    Phase::NodeBase,
                    Action::StartService { name: "containerd" },
                    &deps,
                )
            }
        };

        // Node agents: kubelet and kube-proxy on every node (masters too: consistency is easier).
        let mut kubelet_deps = vec![kubelet_bin, runtime_start];
        let mut proxy_deps = vec![proxy_bin, runtime_start];
        if https {
            kubelet_deps.push(b.dist(t, "file/ca.crt", Asset::CaCert(Ca::Cluster), pki.ca_cluster));
            let serving = b.local_per_node(
                i,
                "pki/kubelet-serving",
                Cert::KubeletServing,
                pki.ca(Ca::Cluster),
            );
            let client = b.local_per_node(
                i,
                "pki/kubelet-client",
                Cert::KubeletClient,
                pki.ca(Ca::Cluster),
            );
            kubelet_deps.push(b.dist(
                t,
                "file/kubelet.crt",
                Asset::Cert(Cert::KubeletServing),
                Some(serving),
            ));
            kubelet_deps.push(b.dist(
                t,
                "file/kubelet.key",
                Asset::Key(Cert::KubeletServing),
                Some(serving),
            ));
            kubelet_deps.push(b.dist(
                t,
                "file/kubelet-kubeconfig",
                Asset::Kubeconfig(KubeconfigUser::Kubelet),
                Some(client),
            ));
            proxy_deps.push(b.dist(
                t,
                "file/kube-proxy-kubeconfig",
                Asset::Kubeconfig(KubeconfigUser::KubeProxy),
                pki.cert(Cert::KubeProxy),
            ));
        } else {
            kubelet_deps.push(b.dist(
                t,
                "file/kubelet-kubeconfig",
                Asset::Kubeconfig(KubeconfigUser::Kubelet),
                None,
            ));
            proxy_deps.push(b.dist(
                t,
                "file/kube-proxy-kubeconfig",
                Asset::Kubeconfig(KubeconfigUser::KubeProxy),
                None,
            ));
        }
        if fx.kubelet_config_file {
            kubelet_deps.push(b.push(
                t,
                "file/kubelet-config",
                Phase::NodeAgents,
                write(Asset::KubeletConfig),
                &[pre],
            ));
        }
        if fx.kube_proxy_config_file {
            proxy_deps.push(b.push(
                t,
                "file/kube-proxy-config",
                Phase::NodeAgents,
                write(Asset::KubeProxyConfig),
                &[pre],
            ));
        }
        kubelet_deps.push(b.push(
            t,
            "file/kubelet-unit",
            Phase::NodeAgents,
            write(Asset::Unit(Service::Kubelet)),
            &[pre],
        ));
        proxy_deps.push(b.push(
            t,
            "file/kube-proxy-unit",
            Phase::NodeAgents,
            write(Asset::Unit(Service::KubeProxy)),
            &[pre],
        ));
        let kubelet = b.push(
            t,
            "service/kubelet",
            Phase::NodeAgents,
            Action::StartService { name: "kubelet" },
            &kubelet_deps,
        );
        let proxy = b.push(
            t,
            "service/kube-proxy",
            Phase::NodeAgents,
            Action::StartService { name: "kube-proxy" },
            &proxy_deps,
        );
        agent_starts.extend([kubelet, proxy]);

        // etcd members.
        if is_etcd {
            let mut deps = vec![etcd_bin.expect("etcd member has its binary step")];
            if https {
                let server =
                    b.local_per_node(i, "pki/etcd-server", Cert::EtcdServer, pki.ca(Ca::Etcd));
                let peer = b.local_per_node(i, "pki/etcd-peer", Cert::EtcdPeer, pki.ca(Ca::Etcd));
                deps.push(b.dist(t, "file/etcd-ca.crt", Asset::CaCert(Ca::Etcd), pki.ca_etcd));
                for (key, asset, src) in [
                    (
                        "file/etcd-server.crt",
                        Asset::Cert(Cert::EtcdServer),
                        server,
                    ),
                    ("file/etcd-server.key", Asset::Key(Cert::EtcdServer), server),
                    ("file/etcd-peer.crt", Asset::Cert(Cert::EtcdPeer), peer),
                    ("file/etcd-peer.key", Asset::Key(Cert::EtcdPeer), peer),
                ] {
                    deps.push(b.dist(t, key, asset, Some(src)));
                }
            }
            let started = match s.etcd.run_as {
                EtcdRunAs::StaticPod => {
                    deps.push(kubelet);
                    b.push(
                        t,
                        "manifest/etcd",
                        Phase::Etcd,
                        write(Asset::StaticPod(Component::Etcd)),
                        &deps,
                    )
                }
                EtcdRunAs::Service => {
                    deps.push(b.push(
                        t,
                        "file/etcd-unit",
                        Phase::Etcd,
                        write(Asset::Unit(Service::Etcd)),
                        &[pre],
                    ));
                    b.push(
                        t,
                        "service/etcd",
                        Phase::Etcd,
                        Action::StartService { name: "etcd" },
                        &deps,
                    )
                }
            };
            let scheme = if https { "https" } else { "http" };
            etcd_healthy.push((
                i,
                started,
                format!("{scheme}://{}:2379/health", url_host(node.ip)),
            ));
        }

        // Control-plane files; their pods are written once etcd is healthy (below).
        if is_cp {
            let mut deps = images.clone();
            deps.push(kubelet);
            if https {
                let mut files: Vec<(&'static str, Asset, Option<StepRef>)> = vec![
                    ("file/ca.key", Asset::CaKey(Ca::Cluster), pki.ca_cluster),
                    (
                        "file/apiserver.crt",
                        Asset::Cert(Cert::Apiserver),
                        pki.cert(Cert::Apiserver),
                    ),
                    (
                        "file/apiserver.key",
                        Asset::Key(Cert::Apiserver),
                        pki.cert(Cert::Apiserver),
                    ),
                    (
                        "file/apiserver-kubelet-client.crt",
                        Asset::Cert(Cert::ApiserverKubeletClient),
                        pki.cert(Cert::ApiserverKubeletClient),
                    ),
                    (
                        "file/apiserver-kubelet-client.key",
                        Asset::Key(Cert::ApiserverKubeletClient),
                        pki.cert(Cert::ApiserverKubeletClient),
                    ),
                    (
                        "file/apiserver-etcd-client.crt",
                        Asset::Cert(Cert::ApiserverEtcdClient),
                        pki.cert(Cert::ApiserverEtcdClient),
                    ),
                    (
                        "file/apiserver-etcd-client.key",
                        Asset::Key(Cert::ApiserverEtcdClient),
                        pki.cert(Cert::ApiserverEtcdClient),
                    ),
                    ("file/sa.key", Asset::ServiceAccountKey, pki.sa),
                    ("file/sa.pub", Asset::ServiceAccountPub, pki.sa),
                    ("file/known_tokens.csv", Asset::KnownTokens, pki.tokens),
                    (
                        "file/admin-kubeconfig",
                        Asset::Kubeconfig(KubeconfigUser::Admin),
                        pki.cert(Cert::Admin),
                    ),
                    (
                        "file/controller-manager-kubeconfig",
                        Asset::Kubeconfig(KubeconfigUser::ControllerManager),
                        pki.cert(Cert::ControllerManager),
                    ),
                    (
                        "file/scheduler-kubeconfig",
                        Asset::Kubeconfig(KubeconfigUser::Scheduler),
                        pki.cert(Cert::Scheduler),
                    ),
                ];
                if !is_etcd {
                    files.push(("file/etcd-ca.crt", Asset::CaCert(Ca::Etcd), pki.ca_etcd));
                }
                if fx.front_proxy_ca {
                    files.push((
                        "file/front-proxy-ca.crt",
                        Asset::CaCert(Ca::FrontProxy),
                        pki.ca_front_proxy,
                    ));
                    files.push((
                        "file/front-proxy-client.crt",
                        Asset::Cert(Cert::FrontProxyClient),
                        pki.cert(Cert::FrontProxyClient),
                    ));
                    files.push((
                        "file/front-proxy-client.key",
                        Asset::Key(Cert::FrontProxyClient),
                        pki.cert(Cert::FrontProxyClient),
                    ));
                }
                if fx.admin_cluster_admins_group {
                    files.push((
                        "file/super-admin-kubeconfig",
                        Asset::Kubeconfig(KubeconfigUser::SuperAdmin),
                        pki.cert(Cert::SuperAdmin),
                    ));
                }
                if s.security.basic_auth {
                    files.push(("file/basic_auth.csv", Asset::BasicAuth, pki.tokens));
                }
                for (key, asset, src) in files {
                    deps.push(b.dist(t, key, asset, src));
                }
            } else {
                deps.push(b.dist(
                    t,
                    "file/admin-kubeconfig",
                    Asset::Kubeconfig(KubeconfigUser::Admin),
                    None,
                ));
                deps.push(b.dist(t, "file/sa.key", Asset::ServiceAccountKey, pki.sa));
                deps.push(b.dist(t, "file/sa.pub", Asset::ServiceAccountPub, pki.sa));
            }
            cp_healthy.push((i, deps));
        }
    }

    // etcd health gates the control plane.
    let mut etcd_ok = Vec::new();
    for (i, started, url) in etcd_healthy {
        etcd_ok.push(b.push(
            Target::Node(i as u32),
            "wait/etcd",
            Phase::Etcd,
            Action::WaitHealthy {
                component: "etcd",
                url,
                timeout_secs: 300,
            },
            &[started],
        ));
    }

    let mut validate_deps = agent_starts;
    let mut apiserver_ok = Vec::new();
    for (i, mut deps) in cp_healthy {
        let t = Target::Node(i as u32);
        deps.extend(etcd_ok.iter().copied());
        let api = b.push(
            t,
            "manifest/kube-apiserver",
            Phase::ControlPlane,
            write(Asset::StaticPod(Component::KubeApiserver)),
            &deps,
        );
        let cm = b.push(
            t,
            "manifest/kube-controller-manager",
            Phase::ControlPlane,
            write(Asset::StaticPod(Component::KubeControllerManager)),
            &deps,
        );
        let sched = b.push(
            t,
            "manifest/kube-scheduler",
            Phase::ControlPlane,
            write(Asset::StaticPod(Component::KubeScheduler)),
            &deps,
        );
        let api_url = match s.security.model {
            SecurityModel::Https => format!(
                "https://127.0.0.1:{}/healthz",
                s.security.model.apiserver_port()
            ),
            SecurityModel::HttpFirewall => "http://127.0.0.1:8080/healthz".into(),
        };
        let api_ok = b.push(
            t,
            "wait/kube-apiserver",
            Phase::ControlPlane,
            Action::WaitHealthy {
                component: "kube-apiserver",
                url: api_url,
                timeout_secs: 300,
            },
            &[api],
        );
        let cm_url = if fx.controller_manager_secure_health {
            "https://127.0.0.1:10257/healthz"
        } else {
            "http://127.0.0.1:10252/healthz"
        };
        let sched_url = if fx.scheduler_secure_health {
            "https://127.0.0.1:10259/healthz"
        } else {
            "http://127.0.0.1:10251/healthz"
        };
        let cm_ok = b.push(
            t,
            "wait/kube-controller-manager",
            Phase::ControlPlane,
            Action::WaitHealthy {
                component: "kube-controller-manager",
                url: cm_url.into(),
                timeout_secs: 300,
            },
            &[cm, api_ok],
        );
        let sched_ok = b.push(
            t,
            "wait/kube-scheduler",
            Phase::ControlPlane,
            Action::WaitHealthy {
                component: "kube-scheduler",
                url: sched_url.into(),
                timeout_secs: 300,
            },
            &[sched, api_ok],
        );
        apiserver_ok.push(api_ok);
        validate_deps.extend([cm_ok, sched_ok]);
    }
    validate_deps.extend(etcd_ok.iter().copied());

    // Addons: cluster DNS with the scenario's DNS IP.
    let t0 = Target::Node(cp_first);
    if s.addons.dns {
        let f = b.push(
            t0,
            "file/dns-addon",
            Phase::Addons,
            write(Asset::DnsAddon),
            &apiserver_ok,
        );
        let mut deps = apiserver_ok.clone();
        deps.push(f);
        validate_deps.push(b.push(
            t0,
            "addon/dns",
            Phase::Addons,
            Action::ApplyManifest {
                asset: Asset::DnsAddon,
                kubeconfig: KubeconfigUser::Admin,
            },
            &deps,
        ));
    }
    // From 1.29 admin.conf's group has no rights until it is bound; kubeadm
    // binds it with the super-admin credential, and so does the plan.
    if https && fx.admin_cluster_admins_group {
        let f = b.push(
            t0,
            "file/cluster-admins",
            Phase::Addons,
            write(Asset::ClusterAdminsBinding),
            &apiserver_ok,
        );
        let mut deps = apiserver_ok.clone();
        deps.push(f);
        validate_deps.push(b.push(
            t0,
            "addon/cluster-admins",
            Phase::Addons,
            Action::ApplyManifest {
                asset: Asset::ClusterAdminsBinding,
                kubeconfig: KubeconfigUser::SuperAdmin,
            },
            &deps,
        ));
    }

    // Validation: the equivalent of validate-cluster.sh.
    let mut components = vec![
        "kube-controller-manager".to_string(),
        "kube-scheduler".into(),
    ];
    components.extend(
        s.etcd
            .members
            .iter()
            .enumerate()
            .map(|(k, _)| format!("etcd-{k}")),
    );
    validate_deps.sort_unstable();
    validate_deps.dedup();
    b.push(
        t0,
        "validate/cluster",
        Phase::Validate,
        Action::ValidateCluster {
            nodes: s.nodes.iter().map(|n| n.name.clone()).collect(),
            components,
        },
        &validate_deps,
    );

    Plan {
        cluster: s.name.clone(),
        version: s.version,
        nodes: s.nodes.iter().map(|n| n.name.clone()).collect(),
        artifacts,
        steps: b.steps,
        dep_pool: b.deps,
        release_dir: s.binaries_dir.clone(),
    }
}

struct Builder<'s> {
    s: &'s Scenario,
    steps: Vec<Step>,
    deps: Vec<StepRef>,
}

impl Builder<'_> {
    fn push(
        &mut self,
        target: Target,
        key: &'static str,
        phase: Phase,
        action: Action,
        deps: &[StepRef],
    ) -> StepRef {
        let r = self.steps.len() as StepRef;
        let start = self.deps.len() as u32;
        self.deps.extend_from_slice(deps);
        self.steps.push(Step {
            target,
            key,
            phase,
            action,
            deps: start..self.deps.len() as u32,
        });
        r
    }

    fn local(
        &mut self,
        key: &'static str,
        phase: Phase,
        action: Action,
        deps: &[StepRef],
    ) -> StepRef {
        self.push(Target::Local, key, phase, action, deps)
    }

    /// A per-node certificate, issued on the operator's machine; its id is
    /// `local/<key>/<node>` (see [`Plan::step_id`]).
    fn local_per_node(
        &mut self,
        node: usize,
        key: &'static str,
        cert: Cert,
        ca: StepRef,
    ) -> StepRef {
        let name = self.s.nodes[node].name.clone();
        self.push(
            Target::Local,
            key,
            Phase::Pki,
            Action::IssueCert {
                cert,
                node: Some(name),
            },
            &[ca],
        )
    }

    /// Distribute an asset to a node, after the step that produced it.
    fn dist(
        &mut self,
        t: Target,
        key: &'static str,
        asset: Asset,
        src: Option<StepRef>,
    ) -> StepRef {
        let phase = match asset {
            Asset::Kubeconfig(KubeconfigUser::Kubelet | KubeconfigUser::KubeProxy)
            | Asset::Cert(Cert::KubeletServing)
            | Asset::Key(Cert::KubeletServing) => Phase::NodeAgents,
            Asset::Cert(Cert::EtcdServer | Cert::EtcdPeer)
            | Asset::Key(Cert::EtcdServer | Cert::EtcdPeer) => Phase::Etcd,
            _ => Phase::ControlPlane,
        };
        let phase = if key == "file/ca.crt" || key == "file/etcd-ca.crt" {
            Phase::NodeAgents.min(phase)
        } else {
            phase
        };
        self.push(t, key, phase, write(asset), src.as_slice())
    }
}

fn write(asset: Asset) -> Action {
    Action::WriteFile {
        path: asset.path(),
        mode: asset.mode(),
        asset,
    }
}

#[derive(Default)]
struct Pki {
    ca_cluster: Option<StepRef>,
    ca_etcd: Option<StepRef>,
    ca_front_proxy: Option<StepRef>,
    sa: Option<StepRef>,
    tokens: Option<StepRef>,
    shared: Vec<(Cert, StepRef)>,
}

impl Pki {
    fn ca(&self, ca: Ca) -> StepRef {
        match ca {
            Ca::Cluster => self.ca_cluster,
            Ca::Etcd => self.ca_etcd,
            Ca::FrontProxy => self.ca_front_proxy,
        }
        .expect("CA generated before its leaves")
    }
    fn cert(&self, cert: Cert) -> Option<StepRef> {
        self.shared
            .iter()
            .find(|(c, _)| *c == cert)
            .map(|(_, r)| *r)
    }
}

fn cert_key(c: Cert) -> &'static str {
    match c {
        Cert::Apiserver => "pki/apiserver",
        Cert::ApiserverKubeletClient => "pki/apiserver-kubelet-client",
        Cert::ApiserverEtcdClient => "pki/apiserver-etcd-client",
        Cert::FrontProxyClient => "pki/front-proxy-client",
        Cert::Admin => "pki/admin",
        Cert::SuperAdmin => "pki/super-admin",
        Cert::KubeletClient => "pki/kubelet-client",
        Cert::KubeletServing => "pki/kubelet-serving",
        Cert::KubeProxy => "pki/kube-proxy",
        Cert::ControllerManager => "pki/controller-manager",
        Cert::Scheduler => "pki/scheduler",
        Cert::EtcdServer => "pki/etcd-server",
        Cert::EtcdPeer => "pki/etcd-peer",
        Cert::EtcdHealthcheckClient => "pki/etcd-healthcheck-client",
    }
}

/// The guide's masquerade rule: `-A POSTROUTING ! -d CLUSTER_SUBNET -m addrtype ! --dst-type LOCAL -j MASQUERADE`.
pub fn masquerade_rule(s: &Scenario) -> Option<Rule> {
    s.network.masquerade.then(|| {
        Rule::parse(&format!(
            "-A POSTROUTING ! -d {} -m addrtype ! --dst-type LOCAL -j MASQUERADE",
            s.network.cluster_cidr
        ))
        .expect("the masquerade rule is valid iptables-save text")
    })
}

/// The nat rules a default docker daemon installs for `docker0` (172.17.0.0/16).
pub fn docker_default_rules() -> Vec<Rule> {
    [
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
        "-A DOCKER -i docker0 -j RETURN",
    ]
    .iter()
    .map(|r| Rule::parse(r).expect("docker's rules are valid iptables-save text"))
    .collect()
}

/// A stable, locally administered MAC for a node's VTEP: 0e + the IPv4 address + 00.
pub fn vtep_mac(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v) => {
            let o = v.octets();
            format!("0e:{:02x}:{:02x}:{:02x}:{:02x}:00", o[0], o[1], o[2], o[3])
        }
        IpAddr::V6(v) => {
            let o = v.octets();
            format!(
                "0e:{:02x}:{:02x}:{:02x}:{:02x}:01",
                o[12], o[13], o[14], o[15]
            )
        }
    }
}

fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v) => v.to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
    }
}
