//! Fake daemons: container runtimes, kubelet, kube-proxy, etcd and the
//! control plane. Each reads the files the plan wrote, the way the real one
//! does, and is healthy only when that configuration is coherent: the
//! apiserver's `--etcd-servers` must point at a running etcd, the certs its
//! flags name must exist, the kubelet must find the manifest directory it
//! was given. What is not modelled: image contents, API objects beyond what
//! the checks need, and anything time-dependent.

use crate::backend::add_connected;
use crate::files;
use crate::netfilter::Position;
use crate::packet::Proto;
use crate::world::*;
use ipnet::IpNet;
use kscratch_core::net::iptables::{Rule, Table};
use kscratch_core::plan::{Asset, Service, MANIFEST_DIR};
use kscratch_core::release;
use kscratch_core::scenario::Scenario;
use std::net::IpAddr;

/// docker's default bridge when the daemon is not told otherwise.
pub const DOCKER0_ADDR: &str = "172.17.0.1/16";

/// `systemctl enable --now NAME` on the node.
pub fn start_service(node: &mut Node, s: &Scenario, idx: usize, name: &str) -> Result<(), String> {
    match name {
        "docker" => start_docker(node, s, idx)?,
        "containerd" => start_containerd(node, s, idx)?,
        "kubelet" => {
            let unit = Asset::Unit(Service::Kubelet).path();
            let text = files::read(node, s, idx, unit)
                .ok_or_else(|| format!("Unit kubelet.service not found ({unit} is missing)"))?;
            if !node.binaries.contains("kubelet") {
                return Err(
                    "kubelet.service: /usr/local/bin/kubelet: No such file or directory".into(),
                );
            }
            if node.runtime.is_none() {
                return Err("kubelet: the container runtime is not running".into());
            }
            // The real kubelet exits on a flag its release does not define.
            let argv = files::unit_exec_start(&text).unwrap_or_default();
            if let Some(e) = refused_flags("kubelet", s, &argv) {
                return Err(format!("kubelet.service: {e}"));
            }
            listen(node, Proto::Tcp, 10250, "kubelet", None);
            node.services
                .insert("kubelet".into(), ServiceState { running: true });
            sync_static_pods(node, s, idx);
            return Ok(());
        }
        "kube-proxy" => {
            let unit = Asset::Unit(Service::KubeProxy).path();
            let text = files::read(node, s, idx, unit)
                .ok_or_else(|| format!("Unit kube-proxy.service not found ({unit} is missing)"))?;
            let argv = files::unit_exec_start(&text).unwrap_or_default();
            if let Some(e) = refused_flags("kube-proxy", s, &argv) {
                return Err(format!("kube-proxy.service: {e}"));
            }
            if !node.binaries.contains("kube-proxy") {
                return Err(
                    "kube-proxy.service: /usr/local/bin/kube-proxy: No such file or directory"
                        .into(),
                );
            }
            listen(node, Proto::Tcp, 10256, "kube-proxy", None);
        }
        "etcd" => {
            let unit = Asset::Unit(Service::Etcd).path();
            let text = files::read(node, s, idx, unit)
                .ok_or_else(|| format!("Unit etcd.service not found ({unit} is missing)"))?;
            let argv = files::unit_exec_start(&text).ok_or("etcd.service has no ExecStart")?;
            let problem = etcd_problem(node, &argv);
            listen_etcd(node, &argv);
            node.static_pods.insert(
                "etcd".into(),
                StaticPod {
                    manifest: unit.into(),
                    problem,
                },
            );
        }
        other => return Err(format!("Unit {other}.service not found")),
    }
    node.services
        .insert(name.into(), ServiceState { running: true });
    Ok(())
}

fn listen(node: &mut Node, proto: Proto, port: u16, process: &str, addr: Option<IpAddr>) {
    node.listeners.insert(
        (proto, port),
        Listener {
            process: process.into(),
            addr,
        },
    );
}

fn start_docker(node: &mut Node, s: &Scenario, idx: usize) -> Result<(), String> {
    // Without kscratch's drop-in, the packaged docker unit ignores
    // /etc/default/docker and dockerd starts with its defaults (docker0).
    let text = if files::exists(node, Asset::Unit(Service::Docker).path()) {
        files::read(node, s, idx, Asset::DockerDefaults.path()).unwrap_or_default()
    } else {
        String::new()
    };
    let opts = files::flags(&files::words(
        &files::env_value(&text, "DOCKER_OPTS").unwrap_or_default(),
    ));
    let flag = |k: &str, default: bool| opts.get(k).map(|v| v == "true").unwrap_or(default);
    let iptables = flag("iptables", true);
    let ip_masq = flag("ip-masq", true);
    let mtu = opts.get("mtu").and_then(|m| m.parse().ok()).unwrap_or(1500);
    let bridge = match opts.get("bridge") {
        Some(b) => {
            if !node
                .links
                .get(b)
                .is_some_and(|l| l.kind == LinkKind::Bridge)
            {
                return Err(format!(
                    "dockerd: Error starting daemon: bridge {b} not found"
                ));
            }
            b.clone()
        }
        None => {
            // No --bridge: docker creates docker0 on 172.17.0.0/16, as the guide warns.
            let addr: IpNet = DOCKER0_ADDR.parse().expect("literal");
            node.links.insert(
                "docker0".into(),
                Link {
                    name: "docker0".into(),
                    kind: LinkKind::Bridge,
                    mtu,
                    up: true,
                    addrs: vec![addr],
                    master: None,
                },
            );
            add_connected(node, "docker0", addr);
            "docker0".into()
        }
    };
    let subnet = node
        .links
        .get(&bridge)
        .and_then(|l| l.addrs.first())
        .map(|a| a.trunc());
    if iptables || ip_masq {
        if iptables {
            node.netfilter
                .ensure_chain(Table::Nat, "DOCKER")
                .map_err(|e| format!("dockerd: iptables: {e}"))?;
        }
        for r in docker_nat_rules(&bridge, subnet, iptables, ip_masq) {
            node.netfilter
                .ensure_rule(Table::Nat, r, Position::Append)
                .map_err(|e| format!("dockerd: iptables: {e}"))?;
        }
    }
    node.runtime = Some(RuntimeState::Docker {
        bridge,
        iptables,
        ip_masq,
        mtu,
    });
    Ok(())
}

/// The nat rules dockerd installs: its DOCKER chain hooks with `--iptables`,
/// and with `--ip-masq` the masquerade of everything leaving its bridge.
pub fn docker_nat_rules(
    bridge: &str,
    subnet: Option<IpNet>,
    iptables: bool,
    ip_masq: bool,
) -> Vec<Rule> {
    let mut v = Vec::new();
    let p = |t: &str| Rule::parse(t).expect("docker rules are valid iptables-save text");
    if iptables {
        v.push(p("-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER"));
        v.push(p(
            "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
        ));
        v.push(p(&format!("-A DOCKER -i {bridge} -j RETURN")));
    }
    if ip_masq {
        if let Some(net) = subnet {
            v.push(p(&format!(
                "-A POSTROUTING -s {net} ! -o {bridge} -j MASQUERADE"
            )));
        }
    }
    v
}

fn start_containerd(node: &mut Node, s: &Scenario, idx: usize) -> Result<(), String> {
    if !files::exists(node, Asset::ContainerdConfig.path()) {
        return Err(format!(
            "containerd: {} is missing",
            Asset::ContainerdConfig.path()
        ));
    }
    let text = files::read(node, s, idx, Asset::CniConfig.path())
        .ok_or_else(|| format!("containerd: no CNI config in {}", Asset::CniConfig.path()))?;
    let cni = parse_cni(&text)?;
    node.runtime = Some(RuntimeState::Cni(cni));
    Ok(())
}

/// The `bridge` plugin of a CNI conflist (or a single-plugin config).
pub fn parse_cni(text: &str) -> Result<CniBridge, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("CNI config is not JSON: {e}"))?;
    let plugins: Vec<&serde_json::Value> = match v.get("plugins").and_then(|p| p.as_array()) {
        Some(a) => a.iter().collect(),
        None => vec![&v],
    };
    let b = plugins
        .into_iter()
        .find(|p| p.get("type").and_then(|t| t.as_str()) == Some("bridge"))
        .ok_or("CNI config has no `bridge` plugin")?;
    let ipam = b.get("ipam").ok_or("bridge plugin has no ipam")?;
    let range = ipam
        .get("ranges")
        .and_then(|r| r.get(0))
        .and_then(|r| r.get(0))
        .unwrap_or(ipam);
    let subnet: IpNet = range
        .get("subnet")
        .and_then(|x| x.as_str())
        .ok_or("ipam has no subnet")?
        .parse()
        .map_err(|e| format!("ipam subnet: {e}"))?;
    let gateway = match range.get("gateway").and_then(|x| x.as_str()) {
        Some(g) => g.parse().map_err(|e| format!("ipam gateway: {e}"))?,
        None => kscratch_core::ipam::nth_host(subnet, 1),
    };
    Ok(CniBridge {
        bridge: b
            .get("bridge")
            .and_then(|x| x.as_str())
            .unwrap_or("cni0")
            .to_string(),
        subnet,
        gateway,
        is_gateway: b
            .get("isGateway")
            .and_then(|x| x.as_bool())
            .unwrap_or(false),
        ip_masq: b.get("ipMasq").and_then(|x| x.as_bool()).unwrap_or(false),
        mtu: b
            .get("mtu")
            .and_then(|x| x.as_u64())
            .map(|m| m as u32)
            .unwrap_or(1500),
    })
}

/// Where this node's kubelet looks for static pods, from its unit and config.
pub fn manifest_dir(node: &Node, s: &Scenario, idx: usize) -> Option<String> {
    let unit = files::read(node, s, idx, Asset::Unit(Service::Kubelet).path())?;
    let argv = files::unit_exec_start(&unit)?;
    let f = files::flags(&argv);
    if let Some(p) = f.get("pod-manifest-path") {
        return Some(p.clone());
    }
    let cfg = f.get("config")?;
    if s.version.features().kubelet_config_file {
        files::yaml_field(&files::read(node, s, idx, cfg)?, "staticPodPath")
    } else {
        // Before KubeletConfiguration files, `--config` named the manifest directory (the guide).
        Some(cfg.clone())
    }
}

/// The kubelet (re)reads its manifest directory and starts what it finds.
pub fn sync_static_pods(node: &mut Node, s: &Scenario, idx: usize) {
    let Some(dir) = manifest_dir(node, s, idx) else {
        return;
    };
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let manifests: Vec<String> = node
        .fs
        .files
        .keys()
        .filter(|p| p.starts_with(&prefix) && !p[prefix.len()..].contains('/'))
        .cloned()
        .collect();
    for path in manifests {
        let Some(text) = files::read(node, s, idx, &path) else {
            continue;
        };
        let Some((name, argv)) = files::manifest_command(&text) else {
            node.static_pods.insert(
                path.clone(),
                StaticPod {
                    manifest: path,
                    problem: Some("the manifest is not a pod".into()),
                },
            );
            continue;
        };
        let image_ok = node.images.iter().any(|i| text.contains(i.as_str()));
        // A control-plane binary exits on a flag (or hyperkube command) its
        // release does not have, before it listens on anything.
        let refused = match name.as_str() {
            "kube-apiserver" | "kube-controller-manager" | "kube-scheduler" => {
                control_plane_refusal(s, &name, &argv)
            }
            _ => None,
        };
        let problem = if !image_ok {
            Some(format!("image of {name} was not pulled"))
        } else if refused.is_some() {
            refused.clone()
        } else {
            match name.as_str() {
                "etcd" => etcd_problem(node, &argv),
                _ => None,
            }
        };
        match name.as_str() {
            _ if refused.is_some() => {}
            "etcd" => listen_etcd(node, &argv),
            "kube-apiserver" => listen_apiserver(node, s, &argv),
            "kube-scheduler" => {
                let port = if s.version.features().scheduler_secure_health {
                    10259
                } else {
                    10251
                };
                listen(node, Proto::Tcp, port, "kube-scheduler", None);
            }
            "kube-controller-manager" => {
                let port = if s.version.features().controller_manager_secure_health {
                    10257
                } else {
                    10252
                };
                listen(node, Proto::Tcp, port, "kube-controller-manager", None);
            }
            _ => {}
        }
        node.static_pods.insert(
            name,
            StaticPod {
                manifest: path,
                problem,
            },
        );
    }
}

/// The first flag of `argv` that release `s.version` of `component` refuses,
/// as the binary says it (`unknown flag: --insecure-port`), from the upstream
/// tables in `core/data/` (`kscratch_core::release`). Deprecated flags are
/// accepted, as the binaries accept them (with a warning on stderr, which the
/// simulator does not report).
pub fn refused_flags(component: &str, s: &Scenario, argv: &[String]) -> Option<String> {
    release::check_flags(component, s.version.minor, argv)
        .into_iter()
        .find(|f| f.verdict == release::Verdict::Refused)
        .map(|f| format!("Error: {}", f.message))
}

/// A control-plane container's refusal: its hyperkube command form, then its flags.
fn control_plane_refusal(s: &Scenario, name: &str, argv: &[String]) -> Option<String> {
    let mut flags = argv;
    if argv.first().map(String::as_str) == Some("/hyperkube") {
        let sub = argv.get(1).map(String::as_str).unwrap_or("");
        let ok = match release::release_images(s.version.minor).hyperkube {
            release::HyperkubeForm::Short => sub == name || sub == name.trim_start_matches("kube-"),
            release::HyperkubeForm::KubeNames => sub == name,
            release::HyperkubeForm::None => false,
        };
        if !ok {
            return Some(format!("/hyperkube {sub}: command not supported"));
        }
        flags = argv.get(2..).unwrap_or(&[]);
    }
    refused_flags(name, s, flags)
}

/// The ServiceAccount admission plugin without a signing key: the apiserver
/// on the MASTER_IP node rejects every pod that is not static (the DNS addon
/// among them), as the real one does. The rule is `core::release`'s.
pub fn service_account_admission(world: &World, s: &Scenario) -> Option<String> {
    let master = world.nodes.iter().position(|n| n.ip == s.master_ip)?;
    let n = &world.nodes[master];
    // Only a running apiserver admits or rejects anything.
    if !n.static_pods.contains_key("kube-apiserver") {
        return None;
    }
    let argv = |c: &str| -> Vec<String> {
        n.static_pods
            .get(c)
            .and_then(|p| files::read(n, s, master, &p.manifest))
            .and_then(|t| files::manifest_command(&t))
            .map(|(_, a)| a)
            .unwrap_or_default()
    };
    release::service_account_admission_problem(
        s.version.minor,
        &argv("kube-apiserver"),
        &argv("kube-controller-manager"),
    )
}

fn strip_binary(argv: &[String]) -> &[String] {
    argv
}

fn etcd_problem(node: &Node, argv: &[String]) -> Option<String> {
    let f = files::flags(strip_binary(argv));
    for k in [
        "cert-file",
        "key-file",
        "trusted-ca-file",
        "peer-cert-file",
        "peer-key-file",
        "peer-trusted-ca-file",
    ] {
        if let Some(p) = f.get(k) {
            if !files::exists(node, p) {
                return Some(format!("--{k}={p}: no such file"));
            }
        }
    }
    None
}

fn listen_etcd(node: &mut Node, argv: &[String]) {
    let f = files::flags(argv);
    for (key, default) in [
        ("listen-client-urls", "http://127.0.0.1:2379"),
        ("listen-peer-urls", "http://127.0.0.1:2380"),
    ] {
        let urls = f.get(key).cloned().unwrap_or_else(|| default.into());
        for u in urls.split(',') {
            if let Some((ip, port)) = url_host_port(u) {
                let addr = if ip.is_unspecified() { None } else { Some(ip) };
                // Several addresses on one port: record the first non-loopback bind.
                let e = node
                    .listeners
                    .entry((Proto::Tcp, port))
                    .or_insert(Listener {
                        process: "etcd".into(),
                        addr,
                    });
                if e.addr.is_some_and(|a| a.is_loopback()) && addr.is_some_and(|a| !a.is_loopback())
                {
                    e.addr = None;
                }
            }
        }
    }
}

fn listen_apiserver(node: &mut Node, s: &Scenario, argv: &[String]) {
    let f = files::flags(argv);
    let secure: u16 = f
        .get("secure-port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(6443);
    let bind = f
        .get("bind-address")
        .and_then(|a| a.parse::<IpAddr>().ok())
        .filter(|a| !a.is_unspecified());
    listen(node, Proto::Tcp, secure, "kube-apiserver", bind);
    let fx = s.version.features();
    if fx.insecure_flags {
        let port: u16 = f
            .get("insecure-port")
            .and_then(|p| p.parse().ok())
            .unwrap_or(8080);
        if port != 0 && fx.insecure_serving {
            let bind = f
                .get("insecure-bind-address")
                .and_then(|a| a.parse::<IpAddr>().ok())
                .unwrap_or(IpAddr::from([127, 0, 0, 1]));
            listen(
                node,
                Proto::Tcp,
                port,
                "kube-apiserver",
                if bind.is_unspecified() {
                    None
                } else {
                    Some(bind)
                },
            );
        }
    }
}

/// `https://10.0.0.1:2379` → (10.0.0.1, 2379).
pub fn url_host_port(u: &str) -> Option<(IpAddr, u16)> {
    let rest = u.split("://").nth(1)?;
    let hostport = rest.split('/').next()?;
    let (h, p) = hostport.rsplit_once(':')?;
    Some((h.trim_matches(['[', ']']).parse().ok()?, p.parse().ok()?))
}

/// Whether a component on this node answers its health check, and if not why.
pub fn health(node: &Node, s: &Scenario, component: &str) -> Result<(), String> {
    let pod = node.static_pods.get(component).ok_or_else(|| {
        format!(
            "no {component} is running on {} (its static pod or service was not started)",
            node.name
        )
    })?;
    if let Some(p) = &pod.problem {
        return Err(p.clone());
    }
    let _ = s;
    Ok(())
}

/// The cluster-level coherence of the apiserver: run after every node's
/// steps, since it depends on other nodes (etcd members).
pub fn apiserver_problem(world: &World, s: &Scenario, node: usize) -> Option<String> {
    let n = &world.nodes[node];
    let pod = n.static_pods.get("kube-apiserver")?;
    let text = files::read(n, s, node, &pod.manifest)?;
    let (_, argv) = files::manifest_command(&text)?;
    let f = files::flags(&argv);
    for k in [
        "tls-cert-file",
        "tls-private-key-file",
        "client-ca-file",
        "service-account-key-file",
        "service-account-signing-key-file",
        "token-auth-file",
        "etcd-cafile",
        "etcd-certfile",
        "etcd-keyfile",
        "kubelet-client-certificate",
        "kubelet-client-key",
        "basic-auth-file",
    ] {
        if let Some(p) = f.get(k) {
            if p != "/dev/null" && !files::exists(n, p) {
                return Some(format!("--{k}={p}: no such file on {}", n.name));
            }
        }
    }
    if let Some(range) = f.get("service-cluster-ip-range") {
        if range.parse::<IpNet>().ok() != Some(s.network.service_cidr) {
            return Some(format!(
                "--service-cluster-ip-range={range} differs from the scenario's {}",
                s.network.service_cidr
            ));
        }
    }
    let Some(servers) = f.get("etcd-servers") else {
        return Some("--etcd-servers is not set".into());
    };
    let mut reached = Vec::new();
    for u in servers.split(',') {
        let Some((ip, port)) = url_host_port(u) else {
            continue;
        };
        let target = if ip.is_loopback() {
            Some(node)
        } else {
            world.nodes.iter().position(|m| m.ip == ip)
        };
        if let Some(t) = target {
            let m = &world.nodes[t];
            let serving = m.up
                && m.static_pods
                    .get("etcd")
                    .is_some_and(|p| p.problem.is_none())
                && m.listeners.get(&(Proto::Tcp, port)).is_some_and(|l| {
                    l.process == "etcd"
                        && (l.addr.is_none() || l.addr == Some(ip) || ip.is_loopback())
                });
            if serving {
                reached.push(t);
            }
        }
    }
    if reached.is_empty() {
        return Some(format!("--etcd-servers={servers}: no etcd answers there"));
    }
    let members = s.etcd.members.len();
    let healthy = s
        .etcd
        .members
        .iter()
        .filter(|&&m| {
            world.nodes[m].up
                && world.nodes[m]
                    .static_pods
                    .get("etcd")
                    .is_some_and(|p| p.problem.is_none())
        })
        .count();
    if healthy * 2 <= members {
        return Some(format!(
            "etcd has no quorum: {healthy} of {members} members healthy"
        ));
    }
    None
}

/// `kubectl apply` needs a healthy apiserver at MASTER_IP.
pub fn require_apiserver(world: &World, s: &Scenario) -> Result<(), String> {
    let master = world
        .nodes
        .iter()
        .position(|n| n.ip == s.master_ip)
        .ok_or("no node has MASTER_IP")?;
    let n = &world.nodes[master];
    if !n.static_pods.contains_key("kube-apiserver") {
        return Err(format!("the apiserver is not running on {}", n.name));
    }
    match apiserver_problem(world, s, master) {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

/// The equivalent of validate-cluster.sh: every kubelet registered, components healthy.
pub fn validate_cluster(world: &World, s: &Scenario, at: usize) -> Result<(), String> {
    require_apiserver(world, s)?;
    let _ = at;
    let mut problems = Vec::new();
    for n in &world.nodes {
        if !n.up || !n.running("kubelet") {
            problems.push(format!(
                "node {} is NotReady (kubelet is not running)",
                n.name
            ));
        }
    }
    for (i, _) in s.control_plane_nodes() {
        let n = &world.nodes[i];
        for c in ["kube-scheduler", "kube-controller-manager"] {
            if let Err(e) = health(n, s, c) {
                problems.push(format!("{c} on {}: {e}", n.name));
            }
        }
    }
    for &m in &s.etcd.members {
        if let Err(e) = health(&world.nodes[m], s, "etcd") {
            problems.push(format!("etcd on {}: {e}", world.nodes[m].name));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The apiserver's health, as WaitHealthy sees it (local health plus cluster coherence).
pub fn apiserver_health(world: &World, s: &Scenario, node: usize) -> Result<(), String> {
    health(&world.nodes[node], s, "kube-apiserver")?;
    match apiserver_problem(world, s, node) {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

/// Static pods live in the manifest directory.
pub fn is_manifest(path: &str) -> bool {
    path.starts_with(MANIFEST_DIR)
}

#[cfg(test)]
mod release_tests {
    //! The fakes refuse what the real binaries refuse (issue 15 §4).
    use super::*;

    fn load(yaml: &str) -> Scenario {
        kscratch_core::load("t.yaml", yaml, None)
            .expect("valid")
            .scenario
    }

    #[test]
    fn control_plane_refuses_removed_flags_and_unknown_hyperkube_commands() {
        let s = load(include_str!("../../scenarios/quickstart.yaml"));
        let argv: Vec<String> = ["kube-apiserver", "--insecure-port=0", "--secure-port=6443"]
            .map(String::from)
            .into();
        assert_eq!(
            control_plane_refusal(&s, "kube-apiserver", &argv).as_deref(),
            Some("Error: unknown flag: --insecure-port")
        );
        let seed = load(include_str!("../../scenarios/seed-era.yaml"));
        let ok: Vec<String> = ["/hyperkube", "apiserver", "--insecure-port=8080"]
            .map(String::from)
            .into();
        assert_eq!(control_plane_refusal(&seed, "kube-apiserver", &ok), None);
        let s17 = load(&include_str!("../../scenarios/seed-era.yaml").replace("1.6.13", "1.17.3"));
        assert_eq!(
            control_plane_refusal(&s17, "kube-apiserver", &ok).as_deref(),
            Some("/hyperkube apiserver: command not supported")
        );
    }

    #[test]
    fn service_account_admission_without_a_key_rejects_the_dns_addon() {
        let s = load(include_str!("../../scenarios/seed-era.yaml"));
        let plan = kscratch_core::plan::plan(&s);
        let mut sim = crate::simulate(&s, &plan, &Default::default()).expect("simulates");
        assert_eq!(service_account_admission(&sim.world, &s), None);
        // The controller-manager as it was rendered before the fix: no signing key.
        let m = sim
            .world
            .nodes
            .iter()
            .position(|n| n.ip == s.master_ip)
            .unwrap();
        let path = sim.world.nodes[m].static_pods["kube-controller-manager"]
            .manifest
            .clone();
        let text = files::read(&sim.world.nodes[m], &s, m, &path).unwrap();
        let stripped: String = text
            .lines()
            .filter(|l| !l.contains("service-account-private-key-file"))
            .map(|l| format!("{l}\n"))
            .collect();
        sim.world.nodes[m].fs.files.insert(
            path,
            File {
                mode: 0o644,
                content: Content::Text(stripped),
            },
        );
        let e = service_account_admission(&sim.world, &s).expect("rejected");
        assert!(e.contains("No API token found"), "{e}");
    }
}
