//! Unit tests of rendering: flags per version, formats that parse back,
//! certificate specs. Real tools (openssl, kubectl, etcd) check the files in
//! the integration tests.

use super::*;
use crate::plan::{Component, Service};
use crate::scenario::{EtcdRunAs, KubeVersion};

fn scenario(yaml: &str) -> Scenario {
    match crate::load("test.yaml", yaml, None) {
        Ok(l) => l.scenario,
        Err(d) => panic!("test scenario is invalid:\n{d}"),
    }
}

fn guide() -> Scenario {
    scenario(include_str!("../../../scenarios/guide-routed.yaml"))
}
fn ha() -> Scenario {
    scenario(include_str!("../../../scenarios/https-ha.yaml"))
}
fn seed() -> Scenario {
    scenario(include_str!("../../../scenarios/seed-era.yaml"))
}

fn text(s: &Scenario, node: Option<usize>, asset: Asset) -> String {
    String::from_utf8(
        render(s, node, asset, &Redacted).unwrap_or_else(|e| panic!("{asset:?}: {e}")),
    )
    .expect("utf-8")
}

fn argv(s: &Scenario, node: Option<usize>, c: Component) -> Vec<String> {
    container_command(&text(s, node, Asset::StaticPod(c))).expect("manifest parses")
}

/// A minimal scenario at another version, for flag boundaries.
fn at_version(v: &str, extra: &str) -> Scenario {
    scenario(&format!(
        "cluster:\n  name: t\n  kubernetesVersion: \"{v}\"\nnodes:\n  - name: m\n    ip: 10.9.0.2\n    roles: [control-plane, etcd, worker]\n  - name: w\n    ip: 10.9.0.3\n{extra}"
    ))
}

#[test]
fn render_apiserver_flags_name_every_etcd_member_over_https() {
    let s = ha();
    let a = argv(&s, Some(1), Component::KubeApiserver);
    assert_eq!(a[0], "kube-apiserver");
    assert_eq!(
        flag_value(&a, "etcd-servers"),
        Some("https://10.1.0.11:2379,https://10.1.0.12:2379,https://10.1.0.13:2379")
    );
    assert_eq!(
        flag_value(&a, "etcd-certfile"),
        Some("/srv/kubernetes/apiserver-etcd-client.crt")
    );
    assert_eq!(flag_value(&a, "secure-port"), Some("443"));
    assert_eq!(flag_value(&a, "advertise-address"), Some("10.1.0.12"));
    assert_eq!(
        flag_value(&a, "service-cluster-ip-range"),
        Some("10.33.0.0/16")
    );
    assert_eq!(
        flag_value(&a, "tls-cert-file"),
        Some("/srv/kubernetes/apiserver.crt")
    );
    assert_eq!(
        flag_value(&a, "service-account-issuer"),
        Some("https://kubernetes.default.svc.cluster.local")
    );
    assert_eq!(
        flag_value(&a, "service-account-signing-key-file"),
        Some("/srv/kubernetes/sa.key")
    );
    assert_eq!(
        flag_value(&a, "enable-admission-plugins"),
        Some("NodeRestriction")
    );
    assert_eq!(flag_value(&a, "authorization-mode"), Some("Node,RBAC"));
    // 1.31: no insecure flags, no basic auth, no admission-control.
    for gone in [
        "insecure-bind-address",
        "insecure-port",
        "basic-auth-file",
        "admission-control",
        "apiserver-count",
    ] {
        assert_eq!(flag_value(&a, gone), None, "{gone}");
    }
}

#[test]
fn render_seed_era_follows_the_guide_templates() {
    let s = seed();
    let a = argv(&s, Some(0), Component::KubeApiserver);
    assert_eq!(&a[..2], ["/hyperkube", "apiserver"]);
    assert_eq!(flag_value(&a, "insecure-bind-address"), Some("0.0.0.0"));
    assert_eq!(flag_value(&a, "insecure-port"), Some("8080"));
    assert_eq!(flag_value(&a, "token-auth-file"), Some("/dev/null"));
    assert_eq!(
        flag_value(&a, "etcd-servers"),
        Some("http://192.168.10.2:2379")
    );
    assert!(flag_value(&a, "admission-control").is_some_and(|v| v.contains("ServiceAccount")));
    for absent in [
        "enable-admission-plugins",
        "secure-port",
        "client-ca-file",
        "service-account-issuer",
        "tls-cert-file",
        "authorization-mode",
    ] {
        assert_eq!(flag_value(&a, absent), None, "{absent}");
    }
    let cm = argv(&s, Some(0), Component::KubeControllerManager);
    assert_eq!(&cm[..2], ["/hyperkube", "controller-manager"]);
    assert_eq!(flag_value(&cm, "master"), Some("127.0.0.1:8080"));
    assert_eq!(flag_value(&cm, "allocate-node-cidrs"), Some("true"));
    assert_eq!(flag_value(&cm, "cluster-cidr"), Some("10.10.0.0/16"));
    assert_eq!(flag_value(&cm, "node-cidr-mask-size"), Some("24"));
    assert_eq!(flag_value(&cm, "kubeconfig"), None);
    let sched = argv(&s, Some(0), Component::KubeScheduler);
    assert_eq!(flag_value(&sched, "master"), Some("127.0.0.1:8080"));

    // The kubelet: flags only, --require-kubeconfig, docker's own bridge (no network plugin).
    let k =
        unit_exec_start(&text(&s, Some(1), Asset::Unit(Service::Kubelet))).expect("unit parses");
    assert_eq!(k[0], "/usr/local/bin/kubelet");
    assert_eq!(
        flag_value(&k, "pod-manifest-path"),
        Some("/etc/kubernetes/manifests")
    );
    assert_eq!(flag_value(&k, "require-kubeconfig"), Some("true"));
    assert_eq!(flag_value(&k, "cluster-dns"), Some("10.0.0.10"));
    assert_eq!(flag_value(&k, "allow-privileged"), Some("true"));
    for absent in ["config", "network-plugin", "container-runtime", "pod-cidr"] {
        assert_eq!(flag_value(&k, absent), None, "{absent}");
    }
    assert!(matches!(
        render(&s, Some(1), Asset::KubeletConfig, &Redacted),
        Err(RenderError::NotApplicable { .. })
    ));

    let p =
        unit_exec_start(&text(&s, Some(1), Asset::Unit(Service::KubeProxy))).expect("unit parses");
    assert_eq!(flag_value(&p, "master"), Some("http://192.168.10.2:8080"));
    assert_eq!(flag_value(&p, "proxy-mode"), Some("iptables"));

    let kc: Kubeconfig = serde_yaml::from_str(&text(
        &s,
        Some(1),
        Asset::Kubeconfig(KubeconfigUser::Kubelet),
    ))
    .expect("kubeconfig parses");
    assert_eq!(kc.clusters[0].cluster.server, "http://192.168.10.2:8080");
    assert_eq!(kc.clusters[0].cluster.certificate_authority_data, None);
    assert_eq!(kc.current_context, "system:node:kube-node-1@seed");
}

#[test]
fn render_docker_defaults_are_the_guides_options() {
    let s = seed();
    let d = text(&s, None, Asset::DockerDefaults);
    assert_eq!(
        docker_opts(&d).expect("parses"),
        [
            "--bridge=cbr0",
            "--iptables=false",
            "--ip-masq=false",
            "--mtu=1500"
        ]
    );
    assert_eq!(
        parse_env_file(&d)
            .expect("parses")
            .get("DOCKER_NOFILE")
            .map(String::as_str),
        Some("1000000")
    );
    let drop_in = text(&s, Some(0), Asset::Unit(Service::Docker));
    assert_eq!(
        unit_exec_start(&drop_in).expect("parses"),
        ["/usr/bin/env", "dockerd", "$DOCKER_OPTS"]
    );
    assert!(drop_in.contains("Restart=always"));
}

#[test]
fn render_version_boundaries_switch_flags() {
    // --admission-control before 1.10, --enable-admission-plugins after.
    let old = argv(&at_version("1.9", ""), Some(0), Component::KubeApiserver);
    assert!(
        flag_value(&old, "admission-control").is_some()
            && flag_value(&old, "enable-admission-plugins").is_none()
    );
    // 1.19: https with insecure flags still parsed, insecure port closed.
    let a19 = argv(&at_version("1.19", ""), Some(0), Component::KubeApiserver);
    assert_eq!(flag_value(&a19, "insecure-port"), Some("0"));
    assert_eq!(flag_value(&a19, "service-account-issuer"), None);
    let a20 = argv(&at_version("1.20", ""), Some(0), Component::KubeApiserver);
    assert!(flag_value(&a20, "service-account-issuer").is_some());
    let a24 = argv(&at_version("1.24", ""), Some(0), Component::KubeApiserver);
    assert_eq!(flag_value(&a24, "insecure-port"), None);
    // Basic auth only where the version has it and the scenario asks.
    let ba = at_version("1.18", "security:\n  basicAuth: true\n");
    assert_eq!(
        flag_value(
            &argv(&ba, Some(0), Component::KubeApiserver),
            "basic-auth-file"
        ),
        Some("/srv/kubernetes/basic_auth.csv")
    );
    let csv = parse_credentials_csv(&text(&ba, None, Asset::BasicAuth)).expect("parses");
    assert_eq!(csv[0].user, "admin");
    assert_eq!(csv[0].groups, ["system:masters"]);
    assert!(matches!(
        render(&guide(), None, Asset::BasicAuth, &Redacted),
        Err(RenderError::NotApplicable { .. })
    ));

    // The kubelet and containerd: --container-runtime=remote while the kubelet
    // defaults to docker (to 1.23); 1.24-1.26 only warn about it (deprecated).
    let k23 = at_version("1.23", "runtime:\n  kind: containerd\n");
    let f23 = unit_exec_start(&text(&k23, Some(1), Asset::Unit(Service::Kubelet))).expect("parses");
    assert_eq!(flag_value(&f23, "container-runtime"), Some("remote"));
    let k26 = at_version("1.26", "runtime:\n  kind: containerd\n");
    let f26 = unit_exec_start(&text(&k26, Some(1), Asset::Unit(Service::Kubelet))).expect("parses");
    assert_eq!(flag_value(&f26, "container-runtime"), None);
    assert_eq!(
        flag_value(&f26, "container-runtime-endpoint"),
        Some("unix:///run/containerd/containerd.sock")
    );
    let g = guide();
    let f29 = unit_exec_start(&text(&g, Some(1), Asset::Unit(Service::Kubelet))).expect("parses");
    assert_eq!(flag_value(&f29, "container-runtime"), None);
    assert_eq!(flag_value(&f29, "container-runtime-endpoint"), None);
    let cfg: KubeletConfiguration =
        serde_yaml::from_str(&text(&g, Some(1), Asset::KubeletConfig)).expect("parses");
    assert_eq!(
        cfg.container_runtime_endpoint.as_deref(),
        Some("unix:///run/containerd/containerd.sock")
    );

    // Health ports move to https with the version.
    let cm21 = text(
        &at_version("1.21", ""),
        Some(0),
        Asset::StaticPod(Component::KubeControllerManager),
    );
    assert!(cm21.contains("port: 10252"));
    let cm22 = text(
        &at_version("1.22", ""),
        Some(0),
        Asset::StaticPod(Component::KubeControllerManager),
    );
    assert!(cm22.contains("port: 10257") && cm22.contains("scheme: HTTPS"));
}

#[test]
fn render_kubelet_config_carries_the_guides_settings() {
    let s = guide();
    let cfg: KubeletConfiguration =
        serde_yaml::from_str(&text(&s, Some(2), Asset::KubeletConfig)).expect("parses");
    assert_eq!(cfg.static_pod_path, "/etc/kubernetes/manifests");
    assert_eq!(cfg.cluster_dns, ["10.0.0.10"]);
    assert_eq!(cfg.cluster_domain, "cluster.local");
    assert_eq!(
        cfg.authentication
            .x509
            .as_ref()
            .map(|x| x.client_ca_file.as_str()),
        Some("/srv/kubernetes/ca.crt")
    );
    assert_eq!(
        cfg.tls_cert_file.as_deref(),
        Some("/var/lib/kubelet/pki/kubelet.crt")
    );
    assert_eq!(cfg.max_pods, 110);
    // A cluster has a control plane: the pod CIDR comes from the Node object.
    assert_eq!(cfg.pod_cidr, None);
    let flags = unit_exec_start(&text(&s, Some(2), Asset::Unit(Service::Kubelet))).expect("parses");
    assert_eq!(
        flag_value(&flags, "config"),
        Some("/var/lib/kubelet/config.yaml")
    );
    assert_eq!(
        flag_value(&flags, "kubeconfig"),
        Some("/var/lib/kubelet/kubeconfig")
    );
    assert_eq!(flag_value(&flags, "hostname-override"), Some("node-2"));
    assert_eq!(flag_value(&flags, "node-ip"), Some("192.168.1.13"));
    // --register-node=true is the default, and deprecated from 1.23.
    assert_eq!(flag_value(&flags, "register-node"), None);
    assert_eq!(flag_value(&flags, "network-plugin"), None);
    // Units restart their daemon: the guide's liveness supervision.
    assert!(text(&s, Some(2), Asset::Unit(Service::Kubelet)).contains("\nRestart=always\n"));

    let proxy: KubeProxyConfiguration =
        serde_yaml::from_str(&text(&s, Some(2), Asset::KubeProxyConfig)).expect("parses");
    assert_eq!(proxy.cluster_cidr, "10.10.0.0/16");
    assert_eq!(proxy.mode, "iptables");
    assert_eq!(
        proxy.client_connection.kubeconfig,
        "/var/lib/kube-proxy/kubeconfig"
    );
}

#[test]
fn render_control_plane_only_nodes_are_tainted() {
    // 1.23+: registerWithTaints in the KubeletConfiguration, not the deprecated flag.
    let s = ha();
    let cp = unit_exec_start(&text(&s, Some(0), Asset::Unit(Service::Kubelet))).expect("parses");
    assert_eq!(flag_value(&cp, "register-with-taints"), None);
    let cfg: KubeletConfiguration =
        serde_yaml::from_str(&text(&s, Some(0), Asset::KubeletConfig)).expect("parses");
    let t = cfg
        .register_with_taints
        .expect("control-plane node is tainted");
    assert_eq!(t[0].key, "node-role.kubernetes.io/control-plane");
    assert_eq!(t[0].effect, "NoSchedule");
    let w = unit_exec_start(&text(&s, Some(3), Asset::Unit(Service::Kubelet))).expect("parses");
    assert_eq!(flag_value(&w, "register-with-taints"), None);
    let wcfg: KubeletConfiguration =
        serde_yaml::from_str(&text(&s, Some(3), Asset::KubeletConfig)).expect("parses");
    assert_eq!(wcfg.register_with_taints, None);
    // 1.22: the flag, with the old taint key.
    let old = at_version("1.22", "");
    let mut old = old;
    old.nodes[0].roles.worker = false;
    let f = unit_exec_start(&text(&old, Some(0), Asset::Unit(Service::Kubelet))).expect("parses");
    assert_eq!(
        flag_value(&f, "register-with-taints"),
        Some("node-role.kubernetes.io/master:NoSchedule")
    );
}

/// Issue 15's findings, one test each: each failed on the output before the fix.
#[test]
fn render_hyperkube_uses_the_command_names_its_image_has() {
    let short = at_version("1.14", "runtime:\n  kind: docker\n");
    assert_eq!(
        argv(&short, Some(0), Component::KubeApiserver)[..2],
        ["/hyperkube", "apiserver"]
    );
    for v in ["1.15", "1.17", "1.18"] {
        let s = at_version(v, "runtime:\n  kind: docker\n");
        assert!(
            s.images.hyperkube,
            "{v}: hyperkube is the docker default up to 1.18"
        );
        for c in [
            Component::KubeApiserver,
            Component::KubeControllerManager,
            Component::KubeScheduler,
        ] {
            assert_eq!(
                argv(&s, Some(0), c)[..2],
                ["/hyperkube".to_string(), c.name().to_string()],
                "{v}"
            );
        }
    }
}

#[test]
fn render_late_patch_releases_pull_from_registry_k8s_io() {
    for v in ["1.19.16", "1.24.17"] {
        let s = at_version(v, "");
        assert_eq!(s.images.registry, "registry.k8s.io", "{v}");
        assert!(s.etcd.image.starts_with("registry.k8s.io/etcd:"), "{v}");
        let pod = text(&s, Some(0), Asset::StaticPod(Component::KubeApiserver));
        assert!(
            pod.contains(&format!("image: registry.k8s.io/kube-apiserver:v{v}")),
            "{v}"
        );
    }
}

#[test]
fn render_http_firewall_clusters_get_a_service_account_key() {
    let s = seed();
    let api = argv(&s, Some(0), Component::KubeApiserver);
    assert!(flag_value(&api, "admission-control").is_some_and(|v| v.contains("ServiceAccount")));
    assert_eq!(
        flag_value(&api, "service-account-key-file"),
        Some("/srv/kubernetes/sa.pub")
    );
    let cm = argv(&s, Some(0), Component::KubeControllerManager);
    assert_eq!(
        flag_value(&cm, "service-account-private-key-file"),
        Some("/srv/kubernetes/sa.key")
    );
    assert_eq!(
        crate::release::service_account_admission_problem(6, &api, &cm),
        None
    );
    let p = crate::plan::plan(&s);
    let written: Vec<&str> = p
        .steps
        .iter()
        .filter_map(|st| match &st.action {
            crate::plan::Action::WriteFile { path, .. } => Some(*path),
            _ => None,
        })
        .collect();
    assert!(
        written.contains(&"/srv/kubernetes/sa.key") && written.contains(&"/srv/kubernetes/sa.pub")
    );
}

#[test]
fn render_default_images_are_the_ones_kubeadm_tested() {
    let etcd = |v| at_version(v, "").etcd.image;
    assert_eq!(etcd("1.18"), "gcr.io/google-containers/etcd:3.4.3-0");
    assert_eq!(etcd("1.34"), "registry.k8s.io/etcd:3.6.4-0");
    assert_eq!(etcd("1.30"), "registry.k8s.io/etcd:3.5.12-0");
    let dns = text(&at_version("1.35", ""), None, Asset::DnsAddon);
    assert!(dns.contains("image: registry.k8s.io/coredns/coredns:v1.13.1"));
    let cfg = text(
        &at_version("1.30", "runtime:\n  kind: containerd\n"),
        None,
        Asset::ContainerdConfig,
    );
    assert!(cfg.contains("sandbox_image = \"registry.k8s.io/pause:3.9\""));
}

#[test]
fn render_no_host_path_type_before_1_8() {
    let seed = text(&seed(), Some(0), Asset::StaticPod(Component::Etcd));
    assert!(!seed.contains("type:"), "{seed}");
    let s18 = text(
        &at_version("1.8", "runtime:\n  kind: docker\n"),
        Some(0),
        Asset::StaticPod(Component::Etcd),
    );
    assert!(s18.contains("type: DirectoryOrCreate"));
}

#[test]
fn render_insecure_port_only_while_it_defaults_open() {
    let a19 = argv(&at_version("1.19", ""), Some(0), Component::KubeApiserver);
    assert_eq!(flag_value(&a19, "insecure-port"), Some("0"));
    let a20 = argv(&at_version("1.20", ""), Some(0), Component::KubeApiserver);
    assert_eq!(flag_value(&a20, "insecure-port"), None);
}

#[test]
fn render_cni_config_is_the_nodes_bridge_and_pod_cidr() {
    let s = ha();
    let c: CniConfList =
        serde_json::from_str(&text(&s, Some(5), Asset::CniConfig)).expect("parses");
    let CniPlugin::Bridge(b) = &c.plugins[0] else {
        panic!("first plugin is the bridge: {c:?}")
    };
    assert_eq!(b.bridge, "cbr0");
    assert!(b.is_gateway && !b.ip_masq);
    assert_eq!(b.ipam.kind, "host-local");
    assert_eq!(
        b.ipam.ranges[0][0],
        IpamRange {
            subnet: "10.32.9.0/24".into(),
            gateway: "10.32.9.1".into()
        }
    );
    assert_eq!(b.ipam.routes[0].dst, "0.0.0.0/0");
    assert_eq!(b.mtu, s.network.pod_mtu);
    assert!(matches!(c.plugins[1], CniPlugin::Portmap(_)));
    let vx = scenario(include_str!("../../../scenarios/vxlan-overlay.yaml"));
    let c: CniConfList =
        serde_json::from_str(&text(&vx, Some(0), Asset::CniConfig)).expect("parses");
    let CniPlugin::Bridge(b) = &c.plugins[0] else {
        panic!("bridge")
    };
    assert_eq!(b.mtu, 1450);
}

#[test]
fn render_etcd_members_form_one_cluster() {
    let s = ha();
    let a = argv(&s, Some(2), Component::Etcd);
    assert_eq!(a[0], "etcd");
    assert_eq!(flag_value(&a, "name"), Some("cp-3"));
    assert_eq!(
        flag_value(&a, "initial-cluster"),
        Some("cp-1=https://10.1.0.11:2380,cp-2=https://10.1.0.12:2380,cp-3=https://10.1.0.13:2380")
    );
    assert_eq!(
        flag_value(&a, "listen-client-urls"),
        Some("https://10.1.0.13:2379,https://127.0.0.1:2379")
    );
    assert_eq!(
        flag_value(&a, "listen-peer-urls"),
        Some("https://10.1.0.13:2380")
    );
    assert_eq!(flag_value(&a, "client-cert-auth"), Some("true"));
    assert_eq!(flag_value(&a, "peer-client-cert-auth"), Some("true"));
    assert_eq!(flag_value(&a, "data-dir"), Some("/var/lib/etcd"));
    assert_eq!(
        flag_value(&a, "trusted-ca-file"),
        Some("/srv/kubernetes/etcd/ca.crt")
    );
    // Workers are not members.
    assert!(matches!(
        render(&s, Some(3), Asset::StaticPod(Component::Etcd), &Redacted),
        Err(RenderError::NotApplicable { .. })
    ));
    assert!(matches!(
        render(&s, None, Asset::StaticPod(Component::Etcd), &Redacted),
        Err(RenderError::NodeRequired { .. })
    ));

    // As a systemd service, the same flags.
    let mut svc = s.clone();
    svc.etcd.run_as = EtcdRunAs::Service;
    let u = unit_exec_start(&text(&svc, Some(2), Asset::Unit(Service::Etcd))).expect("parses");
    assert_eq!(u[0], "/usr/local/bin/etcd");
    assert_eq!(
        flag_value(&u, "initial-cluster"),
        flag_value(&a, "initial-cluster")
    );
}

#[test]
fn render_static_pods_have_probes_and_host_paths() {
    let s = guide();
    let pod = parse_pod(&text(
        &s,
        Some(0),
        Asset::StaticPod(Component::KubeApiserver),
    ))
    .expect("parses");
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.host_network, Some(true));
    let c = &spec.containers[0];
    let probe = c
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("http probe");
    assert_eq!(probe.scheme.as_deref(), Some("HTTPS"));
    let vols: Vec<String> = spec
        .volumes
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    assert_eq!(vols, ["/srv/kubernetes", "/etc/ssl"]);
    assert_eq!(
        c.image.as_deref(),
        Some("registry.k8s.io/kube-apiserver:v1.29.4")
    );
    assert!(matches!(
        render(
            &s,
            Some(1),
            Asset::StaticPod(Component::KubeApiserver),
            &Redacted
        ),
        Err(RenderError::NotApplicable { .. })
    ));
}

#[test]
fn render_kubeconfigs_follow_the_guides_template() {
    let s = guide();
    let kc: Kubeconfig = serde_yaml::from_str(&text(
        &s,
        Some(1),
        Asset::Kubeconfig(KubeconfigUser::Kubelet),
    ))
    .expect("parses");
    assert_eq!(kc.clusters[0].name, "guide");
    assert_eq!(kc.clusters[0].cluster.server, "https://192.168.1.11");
    assert_eq!(kc.users[0].name, "system:node:node-1");
    assert_eq!(kc.current_context, "system:node:node-1@guide");
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(kc.users[0].user.client_key_data.as_deref().expect("key"))
        .expect("base64");
    assert_eq!(
        String::from_utf8(key).expect("utf-8"),
        "<redacted: kubelet-client key for node-1>\n"
    );
    // The HA control plane's own components talk to their own node.
    let h = ha();
    let cm: Kubeconfig = serde_yaml::from_str(&text(
        &h,
        Some(2),
        Asset::Kubeconfig(KubeconfigUser::ControllerManager),
    ))
    .expect("parses");
    assert_eq!(cm.clusters[0].cluster.server, "https://10.1.0.13");
    // Super-admin only where the version has it.
    assert!(render(
        &s,
        Some(0),
        Asset::Kubeconfig(KubeconfigUser::SuperAdmin),
        &Redacted
    )
    .is_ok());
    assert!(matches!(
        render(
            &at_version("1.28", ""),
            Some(0),
            Asset::Kubeconfig(KubeconfigUser::SuperAdmin),
            &Redacted
        ),
        Err(RenderError::NotApplicable { .. })
    ));
}

#[test]
fn render_known_tokens_use_the_apiservers_format() {
    let s = guide();
    let t = text(&s, Some(0), Asset::KnownTokens);
    assert_eq!(
        t,
        "<redacted: token for admin>,admin,admin,\"kubeadm:cluster-admins\"\n<redacted: token for kubelet>,kubelet,kubelet,\"system:nodes\"\n<redacted: token for kube-proxy>,system:kube-proxy,kube-proxy\n"
    );
    let lines = parse_credentials_csv(&t).expect("parses");
    assert_eq!(lines.len(), 3);
    assert!(lines[2].groups.is_empty());
    assert!(parse_credentials_csv("tok,user").is_err());
    assert!(parse_credentials_csv("tok,user,uid,\"a,b").is_err());
    assert!(matches!(
        render(&seed(), None, Asset::KnownTokens, &Redacted),
        Err(RenderError::NotApplicable { .. })
    ));
}

#[test]
fn render_dns_addon_uses_the_scenarios_dns_ip() {
    let s = ha();
    let docs = dns_addon_documents(&s).expect("renders");
    let svc: k8s_openapi::api::core::v1::Service =
        serde_yaml::from_str(docs.last().expect("service")).expect("parses");
    assert_eq!(
        svc.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("10.33.0.10")
    );
    assert!(docs
        .iter()
        .any(|d| d.contains("kind: Deployment")
            && d.contains("registry.k8s.io/coredns/coredns:v1.11.3")));
    assert!(docs
        .iter()
        .any(|d| d.contains("kubernetes cluster.local in-addr.arpa ip6.arpa")));
    // kube-dns, as extensions/v1beta1, for the guide's era.
    let old = dns_addon_documents(&seed()).expect("renders");
    assert!(old
        .iter()
        .any(|d| d.contains("apiVersion: extensions/v1beta1")
            && d.contains("k8s-dns-kube-dns-amd64:1.14.1")));
}

#[test]
fn render_cert_specs_carry_the_issue_3_names() {
    let s = ha();
    let api = cert_spec(&s, Cert::Apiserver, None).expect("spec");
    let ips: Vec<String> = api.ip_addresses.iter().map(|i| i.to_string()).collect();
    assert_eq!(
        ips,
        [
            "10.1.0.11",
            "10.1.0.12",
            "10.1.0.13",
            "10.33.0.1",
            "10.1.0.100"
        ]
    );
    assert_eq!(
        api.dns_names,
        [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "cp-1",
            "cp-2",
            "cp-3",
            "api.ha.example.internal"
        ]
    );
    assert_eq!(api.extended_key_usages, [ExtKeyUsage::ServerAuth]);
    let admin = cert_spec(&s, Cert::Admin, None).expect("spec");
    assert_eq!(
        (admin.common_name.as_str(), admin.organizations.as_slice()),
        (
            "kubernetes-admin",
            &["kubeadm:cluster-admins".to_string()][..]
        )
    );
    let old_admin = cert_spec(&at_version("1.28", ""), Cert::Admin, None).expect("spec");
    assert_eq!(old_admin.organizations, ["system:masters"]);
    let kc = cert_spec(&s, Cert::KubeletClient, Some(4)).expect("spec");
    assert_eq!(
        (kc.common_name.as_str(), kc.organizations.as_slice()),
        ("system:node:worker-2", &["system:nodes".to_string()][..])
    );
    let peer = cert_spec(&s, Cert::EtcdPeer, Some(1)).expect("spec");
    assert_eq!(peer.dns_names, ["cp-2", "localhost"]);
    assert_eq!(
        peer.ip_addresses
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>(),
        ["10.1.0.12", "127.0.0.1"]
    );
    assert_eq!(peer.ca, Ca::Etcd);
    assert!(matches!(
        cert_spec(&s, Cert::EtcdPeer, None),
        Err(RenderError::NodeRequired { .. })
    ));
    assert!(matches!(
        cert_spec(&s, Cert::EtcdPeer, Some(99)),
        Err(RenderError::NoSuchNode { .. })
    ));
}

#[test]
fn render_cert_fingerprints_change_with_the_spec_and_explain_why() {
    let s = ha();
    let a = cert_spec(&s, Cert::Apiserver, None).expect("spec");
    assert_eq!(
        a.fingerprint(),
        cert_spec(&s, Cert::Apiserver, None)
            .expect("spec")
            .fingerprint()
    );
    let mut s2 = s.clone();
    s2.security.extra_sans.push("10.1.0.200".into());
    let b = cert_spec(&s2, Cert::Apiserver, None).expect("spec");
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_eq!(b.changes_from(&a), ["SANs changed: +10.1.0.200"]);
    assert!(a.changes_from(&a).is_empty());
    // Specs round-trip through JSON (they are stored next to the keys).
    let back: CertSpec =
        serde_json::from_str(&serde_json::to_string(&b).expect("json")).expect("parses");
    assert_eq!(back, b);
}

#[test]
fn render_issued_certs_match_the_plans_issue_steps() {
    for s in [guide(), ha(), seed()] {
        let plan = crate::plan::plan(&s);
        let mut from_plan: Vec<(Cert, Option<usize>)> = plan
            .steps
            .iter()
            .filter_map(|st| match &st.action {
                crate::plan::Action::IssueCert { cert, node } => {
                    Some((*cert, node.as_ref().and_then(|n| s.node_index(n))))
                }
                _ => None,
            })
            .collect();
        let mut ours = issued_certs(&s);
        from_plan.sort();
        ours.sort();
        assert_eq!(ours, from_plan, "{}", s.name);
        let plan_cas: Vec<Ca> = plan
            .steps
            .iter()
            .filter_map(|st| {
                if let crate::plan::Action::GenerateCa { ca } = st.action {
                    Some(ca)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(cas(&s), plan_cas);
        let plan_users: Vec<String> = plan
            .steps
            .iter()
            .find_map(|st| {
                if let crate::plan::Action::GenerateTokens { users } = &st.action {
                    Some(users.clone())
                } else {
                    None
                }
            })
            .unwrap_or_default();
        assert_eq!(
            token_users(&s)
                .iter()
                .map(|u| u.key.to_string())
                .collect::<Vec<_>>(),
            plan_users
        );
    }
}

#[test]
fn render_every_planned_file_for_every_bundled_scenario() {
    for (name, yaml) in [
        (
            "guide-routed",
            include_str!("../../../scenarios/guide-routed.yaml"),
        ),
        ("https-ha", include_str!("../../../scenarios/https-ha.yaml")),
        (
            "quickstart",
            include_str!("../../../scenarios/quickstart.yaml"),
        ),
        ("seed-era", include_str!("../../../scenarios/seed-era.yaml")),
        (
            "vxlan-overlay",
            include_str!("../../../scenarios/vxlan-overlay.yaml"),
        ),
    ] {
        let s = scenario(yaml);
        let plan = crate::plan::plan(&s);
        for st in &plan.steps {
            if let crate::plan::Action::WriteFile { asset, .. } = st.action {
                let node = match st.target {
                    crate::plan::Target::Node(i) => Some(i as usize),
                    _ => None,
                };
                let a = render(&s, node, asset, &Redacted);
                let a = a.unwrap_or_else(|e| panic!("{name}: {}: {e}", plan.step_id(st)));
                // Rendering is deterministic.
                assert_eq!(render(&s, node, asset, &Redacted).ok(), Some(a));
            }
        }
    }
}

/// The typed command of every unit is exactly what its `ExecStart=` and
/// `EnvironmentFile=` lines say when read back as systemd does, so the
/// shell backend's supervisor (which runs the typed words) and systemd
/// (which runs the text) start the same daemon.
#[test]
fn every_unit_command_is_what_its_unit_text_says() {
    let mut checked = 0;
    for yaml in [
        include_str!("../../../scenarios/guide-routed.yaml"),
        include_str!("../../../scenarios/https-ha.yaml"),
        include_str!("../../../scenarios/quickstart.yaml"),
        include_str!("../../../scenarios/seed-era.yaml"),
        include_str!("../../../scenarios/vxlan-overlay.yaml"),
    ] {
        let s = scenario(yaml);
        for node in 0..s.nodes.len() {
            for svc in [
                Service::Kubelet,
                Service::KubeProxy,
                Service::Docker,
                Service::Containerd,
                Service::Etcd,
            ] {
                let Ok(text) = unit(&s, Some(node), svc) else {
                    assert!(unit_command(&s, Some(node), svc).is_err());
                    continue;
                };
                let cmd = unit_command(&s, Some(node), svc).expect("a unit has a command");
                let read = parse_unit(&text).expect("the unit parses");
                assert_eq!(Some(&cmd.argv), read.exec_start.as_ref(), "{svc:?}");
                let files: Vec<(String, bool)> = cmd
                    .environment_files
                    .iter()
                    .map(|f| (f.clone(), true))
                    .collect();
                assert_eq!(files, read.environment_files, "{svc:?}");
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} units");
}

#[test]
fn render_rejects_bad_nodes_without_panicking() {
    let s = guide();
    assert!(matches!(
        render(&s, Some(99), Asset::KubeletConfig, &Redacted),
        Err(RenderError::NoSuchNode {
            index: 99,
            count: 4
        })
    ));
    assert!(matches!(
        render(&s, None, Asset::CniConfig, &Redacted),
        Err(RenderError::NodeRequired { .. })
    ));
    assert!(matches!(
        render(&s, None, Asset::Cert(Cert::KubeletServing), &Redacted),
        Err(RenderError::NodeRequired { .. })
    ));
    struct Empty;
    impl Secrets for Empty {
        fn ca_cert(&self, _: Ca) -> Option<String> {
            None
        }
        fn ca_key(&self, _: Ca) -> Option<String> {
            None
        }
        fn cert(&self, _: Cert, _: Option<&str>) -> Option<String> {
            None
        }
        fn key(&self, _: Cert, _: Option<&str>) -> Option<String> {
            None
        }
        fn service_account_key(&self) -> Option<String> {
            None
        }
        fn service_account_pub(&self) -> Option<String> {
            None
        }
        fn token(&self, _: &str) -> Option<String> {
            None
        }
        fn password(&self, _: &str) -> Option<String> {
            None
        }
    }
    let e = render(
        &s,
        Some(1),
        Asset::Kubeconfig(KubeconfigUser::Kubelet),
        &Empty,
    )
    .expect_err("no secrets");
    assert!(matches!(e, RenderError::MissingSecret { .. }), "{e}");
    let _ = KubeVersion::new(1, 6, 0);
}

#[test]
fn render_parsers_report_the_offending_token() {
    assert!(unit_exec_start("[Service]\nRestart=always\n")
        .expect_err("no exec")
        .message
        .contains("ExecStart"));
    assert!(unit_exec_start("[Service]\nExecStart=/bin/a \"b\n")
        .expect_err("quote")
        .message
        .contains("unterminated"));
    assert_eq!(
        unit_exec_start("[Service]\nExecStart=/bin/a\nExecStart=\nExecStart=/bin/b 'x y'\n")
            .expect("parses"),
        ["/bin/b", "x y"]
    );
    assert!(parse_env_file("DOCKER_OPTS=\"--a\nX=1\n")
        .expect_err("quote")
        .message
        .contains("line 1"));
    assert!(parse_env_file("1X=a\n")
        .expect_err("name")
        .message
        .contains("`1X`"));
    assert!(parse_env_file("just words\n").is_err());
    assert!(container_command(
        "kind: Pod\napiVersion: v1\nmetadata: {}\nspec:\n  containers: []\n"
    )
    .is_err());
    assert!(container_command("not: [a pod").is_err());
    let a: Vec<String> = ["--a=1", "--ab=2", "--b", "--a=3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(flag_value(&a, "a"), Some("3"));
    assert_eq!(flag_value(&a, "b"), Some("true"));
    assert_eq!(flag_value(&a, "c"), None);
}

#[test]
fn render_1_35_requires_cgroup_v2_unless_fail_cgroup_v1_is_false() {
    use crate::plan::{Action, PreflightCheck};
    let checks = |s: &Scenario| -> Vec<PreflightCheck> {
        crate::plan::plan(s)
            .steps
            .iter()
            .find_map(|st| match &st.action {
                Action::Preflight { checks } => Some(checks.clone()),
                _ => None,
            })
            .expect("a preflight step")
    };
    let cg = |c: &[PreflightCheck]| {
        c.iter()
            .any(|c| matches!(c, PreflightCheck::CgroupV2 { .. }))
    };
    let swap = |c: &[PreflightCheck]| {
        c.iter()
            .any(|c| matches!(c, PreflightCheck::SwapOff { .. }))
    };
    let s35 = at_version("1.35", "");
    let c = checks(&s35);
    assert!(cg(&c) && swap(&c));
    assert!(c.contains(&PreflightCheck::KernelModule {
        name: "br_netfilter"
    }));
    let c34 = checks(&at_version("1.34", ""));
    assert!(!cg(&c34) && swap(&c34));
    assert!(!swap(&checks(&seed())), "1.6 kubelets run with swap");
    // Explicitly off: no cgroup v2 check, the setting is written, and validation warns.
    let yaml = "cluster:\n  name: t\n  kubernetesVersion: \"1.35.0\"\nnodes:\n  - name: m\n    ip: 10.9.0.2\nkubelet:\n  failCgroupV1: false\n";
    let l = crate::load("t.yaml", yaml, None).expect("valid");
    assert!(l
        .warnings
        .warnings()
        .any(|w| w.message.contains("no longer supports cgroup v1")));
    assert!(!cg(&checks(&l.scenario)));
    let cfg: KubeletConfiguration =
        serde_yaml::from_str(&text(&l.scenario, Some(0), Asset::KubeletConfig)).expect("parses");
    assert_eq!(cfg.fail_cgroup_v1, Some(false));
    // Before 1.31 the field does not exist.
    let old = yaml.replace("1.35.0", "1.30.0");
    let e = crate::load("t.yaml", &old, None).expect_err("invalid");
    assert!(e.to_string().contains("failCgroupV1 arrived"), "{e}");
}
