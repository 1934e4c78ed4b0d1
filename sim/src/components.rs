//! Fake daemons: container runtimes, kubelet, kube-proxy, etcd and the
//! control plane. Each reads the files the plan wrote on its node, through
//! the one parser set in `kscratch_core::render` (units, flags, manifests,
//! configs), the way the real one does, and is healthy only when that
//! configuration is coherent: the apiserver's `--etcd-servers` must point at
//! a running etcd with quorum among the members its `--initial-cluster`
//! names, the certs its flags name must exist, the kubelet must find the
//! manifest directory its unit and config give it, ports are the ones the
//! flags say (or the binary's default for its release). Nothing here reads
//! the scenario. What is not modelled: image contents, API objects beyond
//! what the checks need, and anything time-dependent.

use crate::backend::add_connected;
use crate::files;
use crate::kube_proxy::{KubeProxyConfig, KubeProxySettings};
use crate::netfilter::Position;
use crate::packet::Proto;
use crate::world::*;
use ipnet::IpNet;
use kscratch_core::net::iptables::{Rule, Table};
use kscratch_core::plan::{Asset, Component, KubeconfigUser, Service, MANIFEST_DIR};
use kscratch_core::ports::{self, Daemon};
use kscratch_core::release;
use kscratch_core::render::{self as r, Argv};
use kscratch_core::scenario::{Features, KubeVersion};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// docker's default bridge when the daemon is not told otherwise.
pub const DOCKER0_ADDR: &str = "172.17.0.1/16";

/// The URL kubectl uses without a kubeconfig (the guide's insecure port).
const KUBECTL_DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// `systemctl enable --now NAME` on the node.
pub fn start_service(node: &mut Node, service: Service) -> Result<(), String> {
    match service {
        Service::Docker => start_docker(node)?,
        Service::Containerd => start_containerd(node)?,
        Service::Kubelet => {
            let argv = unit_argv(node, Service::Kubelet, "kubelet")?;
            if !node.binaries.contains_key("kubelet") {
                return Err(
                    "kubelet.service: /usr/local/bin/kubelet: No such file or directory".into(),
                );
            }
            if let Some(w) = argv.positional.first() {
                return Err(format!("kubelet: unknown command {w}"));
            }
            if node.runtime.is_none() {
                return Err("kubelet: the container runtime is not running".into());
            }
            // The real kubelet exits on a flag its release does not define.
            if let Some(e) = refused_flags("kubelet", node.release, &argv) {
                return Err(format!("kubelet.service: {e}"));
            }
            // The kubelet refuses to start when its config file is unreadable.
            manifest_dir(node, &argv)?;
            let port = argv
                .parsed::<u16>("port")
                .map_err(|e| format!("kubelet: {e}"))?
                .unwrap_or(ports::KUBELET);
            listen(node, Proto::Tcp, port, Daemon::Kubelet.name(), None);
            node.services
                .insert("kubelet".into(), ServiceState { running: true });
            sync_static_pods(node);
            return Ok(());
        }
        Service::KubeProxy => {
            let argv = unit_argv(node, Service::KubeProxy, "kube-proxy")?;
            if let Some(e) = refused_flags("kube-proxy", node.release, &argv) {
                return Err(format!("kube-proxy.service: {e}"));
            }
            if !node.binaries.contains_key("kube-proxy") {
                return Err(
                    "kube-proxy.service: /usr/local/bin/kube-proxy: No such file or directory"
                        .into(),
                );
            }
            let settings = kube_proxy_settings(node, &argv)?;
            node.kube_proxy = Some(settings);
            listen(
                node,
                Proto::Tcp,
                ports::KUBE_PROXY_HEALTHZ,
                Daemon::KubeProxy.name(),
                None,
            );
        }
        Service::Network => {
            // The simulator's backend runs the re-applier itself: it needs
            // the shared pod route table (sim/src/backend.rs).
            return Err("kscratch-network is run by the simulator's backend".into());
        }
        Service::ApiserverProxy => {
            // haproxy binds each frontend of the file its unit's `-f` names.
            // The distribution's package is taken as installed, like
            // iptables (preflight checks it on real machines).
            let config = apiserver_proxy_config(node)?;
            for f in &config.frontends {
                let (ip, port) = f.bind;
                if let Some(l) = node
                    .listeners
                    .get(&(Proto::Tcp, port))
                    .filter(|l| l.process != HAPROXY)
                {
                    return Err(format!(
                        "haproxy: Starting frontend {}: cannot bind socket (Address already in use) [{ip}:{port}], held by {}",
                        f.name, l.process
                    ));
                }
                listen(
                    node,
                    Proto::Tcp,
                    port,
                    HAPROXY,
                    (!ip.is_unspecified()).then_some(ip),
                );
            }
        }
        Service::Etcd => {
            let argv = unit_argv(node, Service::Etcd, "etcd")?;
            let unit = Asset::Unit(Service::Etcd).path();
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
    }
    node.services
        .insert(service.name().into(), ServiceState { running: true });
    Ok(())
}

/// The local apiserver proxy's process, as `ss -p` names it.
pub const HAPROXY: &str = "haproxy";

/// The process that holds a service's sockets: what a stop closes.
pub fn process_of(service: Service) -> &'static str {
    match service {
        Service::ApiserverProxy => HAPROXY,
        other => other.name(),
    }
}

/// The local apiserver proxy's configuration on `node`: the file its
/// unit's `-f` names, through the one haproxy parser. The simulator reads it
/// when it routes a connection, not only at start: a file changed without
/// a restart is followed at once, where real haproxy would keep the old one.
pub fn apiserver_proxy_config(node: &Node) -> Result<r::HaproxyConfig, String> {
    let unit = Asset::Unit(Service::ApiserverProxy).path();
    let text = files::read(node, unit).map_err(|_| {
        format!("Unit kscratch-apiserver-proxy.service not found ({unit} is missing)")
    })?;
    let words = r::unit_exec_start(text).map_err(|e| format!("{unit}: {e}"))?;
    let path = words
        .windows(2)
        .find(|w| w[0] == "-f")
        .map(|w| w[1].clone())
        .ok_or_else(|| format!("{unit}: haproxy is given no configuration file (-f)"))?;
    let text = files::read(node, &path).map_err(|e| format!("haproxy: {path}: {e}"))?;
    r::HaproxyConfig::parse(text).map_err(|e| format!("haproxy: {path}: {e}"))
}

/// The apiserver a connection to the proxy listening at `ip:port` on
/// `node` ends at: haproxy skips a server that fails its health check
/// (`GET /healthz`: a healthy apiserver answers, modelled by
/// [`apiserver_health`]) and sends connections round-robin over the
/// others, so one server without `check` that does not answer fails some
/// of them: the first such server is the verdict. What is not modelled:
/// timing (check intervals, `rise`/`fall`), TLS of the check, and balance
/// beyond "any healthy server".
pub fn via_apiserver_proxy(
    world: &World,
    node: usize,
    ip: IpAddr,
    port: u16,
) -> Result<usize, String> {
    let n = &world.nodes[node];
    if !n.running(Service::ApiserverProxy.name()) {
        return Err(format!(
            "dial {ip}:{port}: the apiserver proxy on {} is not running",
            n.name
        ));
    }
    let config = apiserver_proxy_config(n)?;
    let backend = config
        .route(ip, port)
        .ok_or_else(|| format!("haproxy on {}: no frontend binds {ip}:{port}", n.name))?;
    let mut down = Vec::new();
    let mut chosen = None;
    for s in &backend.servers {
        let url = format!("tcp://{}:{}", s.addr, s.port);
        match apiserver_direct(world, node, &url) {
            Ok(t) => chosen = chosen.or(Some(t)),
            Err(e) if !s.check => {
                return Err(format!(
                    "haproxy on {}: server {} is not health-checked and gets connections, but {e}",
                    n.name, s.name
                ))
            }
            Err(e) => down.push(format!("{} ({e})", s.name)),
        }
    }
    chosen.ok_or_else(|| {
        format!(
            "haproxy on {}: backend {} has no server available: {}",
            n.name,
            backend.name,
            down.join("; ")
        )
    })
}

/// The command line systemd runs for `service`: its unit's `ExecStart=`
/// with the unit's environment files expanded.
fn unit_argv(node: &Node, service: Service, name: &str) -> Result<Argv, String> {
    let path = Asset::Unit(service).path();
    let text = files::read(node, path)
        .map_err(|_| format!("Unit {name}.service not found ({path} is missing)"))?;
    let unit = r::parse_unit(text).map_err(|e| format!("{path}: {e}"))?;
    let argv = unit
        .argv(&environment(node, &unit)?)
        .ok_or_else(|| format!("{name}.service has no ExecStart"))?;
    Argv::parse(&argv).map_err(|e| format!("{path}: {e}"))
}

/// The variables of a unit's `EnvironmentFile=`s, later files winning.
fn environment(node: &Node, unit: &r::UnitService) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for (path, optional) in &unit.environment_files {
        match files::read(node, path) {
            Ok(text) => env.extend(r::parse_env_file(text).map_err(|e| format!("{path}: {e}"))?),
            Err(_) if *optional => {}
            Err(e) => return Err(format!("Failed to load environment files: {e}")),
        }
    }
    Ok(env)
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

fn start_docker(node: &mut Node) -> Result<(), String> {
    // Without kscratch's drop-in, the packaged docker unit runs dockerd with
    // its defaults (docker0), ignoring /etc/default/docker.
    let argv = if files::exists(node, Asset::Unit(Service::Docker).path()) {
        let a = unit_argv(node, Service::Docker, "docker")?;
        // `/usr/bin/env dockerd ...`: env runs its first non-assignment word.
        if a.program_name() == "env" {
            let words: Vec<&String> = a
                .positional
                .iter()
                .skip_while(|w| w.contains('='))
                .collect();
            let mut full: Vec<String> = words
                .first()
                .map(|w| vec![w.to_string()])
                .unwrap_or_default();
            full.extend(a.flags.iter().map(|f| match &f.value {
                Some(v) => format!("--{}={v}", f.name),
                None => format!("--{}", f.name),
            }));
            full.extend(words.iter().skip(1).map(|w| w.to_string()));
            Argv::parse(&full).map_err(|e| format!("docker.service: {e}"))?
        } else {
            a
        }
    } else {
        Argv {
            program: "dockerd".into(),
            ..Argv::default()
        }
    };
    let e = |e: r::ParseError| format!("dockerd: {e}");
    let iptables = argv.bool("iptables", true).map_err(e)?;
    let ip_masq = argv.bool("ip-masq", true).map_err(e)?;
    let mtu = argv.parsed::<u32>("mtu").map_err(e)?.unwrap_or(1500);
    let bridge = match argv.get("bridge") {
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
            b.to_string()
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

fn start_containerd(node: &mut Node) -> Result<(), String> {
    // The packaged unit runs `containerd` with its default config path.
    let config = if files::exists(node, Asset::Unit(Service::Containerd).path()) {
        let argv = unit_argv(node, Service::Containerd, "containerd")?;
        argv.get("config").map(String::from)
    } else {
        None
    }
    .unwrap_or_else(|| "/etc/containerd/config.toml".into());
    if !files::exists(node, &config) {
        return Err(format!(
            "containerd: failed to load TOML: {config}: no such file"
        ));
    }
    // containerd's CRI plugin loads the first CNI config of its conf dir, in
    // name order. The conf dir is the CRI default, which kscratch's
    // config.toml also sets: the simulator does not parse TOML, so a changed
    // `conf_dir` there is not followed.
    let conf_dir = "/etc/cni/net.d";
    let conf = files::list_dir(node, conf_dir)
        .into_iter()
        .find(|p| p.ends_with(".conflist") || p.ends_with(".conf") || p.ends_with(".json"))
        .ok_or_else(|| format!("containerd: no network config found in {conf_dir}"))?;
    let text = files::read(node, &conf)?;
    let cni = parse_cni(text).map_err(|e| format!("containerd: {conf}: {e}"))?;
    node.runtime = Some(RuntimeState::Cni(cni));
    Ok(())
}

/// The `bridge` plugin of a CNI conflist, as libcni and the plugin read it.
pub fn parse_cni(text: &str) -> Result<CniBridge, String> {
    let list = r::parse_cni_conflist(text).map_err(|e| e.to_string())?;
    let b = list
        .plugins
        .iter()
        .find_map(|p| match p {
            r::CniPlugin::Bridge(b) => Some(b),
            _ => None,
        })
        .ok_or("CNI config has no `bridge` plugin")?;
    let range = b
        .ipam
        .ranges
        .first()
        .and_then(|r| r.first())
        .ok_or("host-local ipam has no range")?;
    let subnet: IpNet = range
        .subnet
        .parse()
        .map_err(|e| format!("ipam subnet `{}`: {e}", range.subnet))?;
    let gateway = if range.gateway.is_empty() {
        kscratch_core::ipam::nth_host(subnet, 1)
    } else {
        range
            .gateway
            .parse()
            .map_err(|e| format!("ipam gateway `{}`: {e}", range.gateway))?
    };
    Ok(CniBridge {
        bridge: if b.bridge.is_empty() {
            "cni0".into()
        } else {
            b.bridge.clone()
        },
        subnet,
        gateway,
        is_gateway: b.is_gateway,
        ip_masq: b.ip_masq,
        mtu: if b.mtu == 0 { 1500 } else { b.mtu },
    })
}

/// Where the kubelet with this command line looks for static pods:
/// `--pod-manifest-path`, else `staticPodPath` of its `--config` file
/// (1.10+), else the `--config` directory itself (the guide's kubelets,
/// before KubeletConfiguration files). The release is the installed binary's.
fn manifest_dir(node: &Node, argv: &Argv) -> Result<Option<String>, String> {
    if let Some(p) = argv.get("pod-manifest-path") {
        return Ok(Some(p.to_string()));
    }
    let Some(cfg) = argv.get("config") else {
        return Ok(None);
    };
    let config_file = node
        .release
        .map(|v| v.features().kubelet_config_file)
        .ok_or("kubelet: the release of the kubelet binary is unknown")?;
    if !config_file {
        return Ok(Some(cfg.to_string()));
    }
    let text = files::read(node, cfg)
        .map_err(|e| format!("kubelet: failed to load Kubelet config file {cfg}: {e}"))?;
    let kc = r::parse_kubelet_config(text)
        .map_err(|e| format!("kubelet: failed to load Kubelet config file {cfg}: {e}"))?;
    Ok((!kc.static_pod_path.is_empty()).then_some(kc.static_pod_path))
}

/// The kubelet (re)reads its manifest directory: it stops the pods whose
/// manifest is gone and (re)starts what it finds. A pod that restarts
/// first closes the sockets of the container it replaces.
pub fn sync_static_pods(node: &mut Node) {
    let Ok(argv) = unit_argv(node, Service::Kubelet, "kubelet") else {
        return;
    };
    let Ok(Some(dir)) = manifest_dir(node, &argv) else {
        return;
    };
    let present = files::list_dir(node, &dir);
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let gone: Vec<String> = node
        .static_pods
        .iter()
        .filter(|(_, p)| p.manifest.starts_with(&prefix) && !present.contains(&p.manifest))
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        node.static_pods.remove(&name);
        node.listeners.retain(|_, l| l.process != name);
    }
    for path in present {
        let Ok(text) = files::read(node, &path) else {
            continue;
        };
        let pod = match r::static_pod_command(text) {
            Ok(p) => p,
            Err(e) => {
                node.static_pods.insert(
                    path.clone(),
                    StaticPod {
                        manifest: path,
                        problem: Some(format!("the manifest is not a pod: {e}")),
                    },
                );
                continue;
            }
        };
        let image = pod.image.clone().unwrap_or_default();
        let argv = Argv::parse(&pod.argv);
        let mut problem = if !node.images.contains(&image) {
            Some(format!("image {image} of {} was not pulled", pod.name))
        } else {
            None
        };
        match argv {
            Err(e) => problem = problem.or(Some(e.to_string())),
            Ok(argv) => {
                let release = image_release(&image).or(node.release);
                let what = component(&argv).to_string();
                node.listeners.retain(|_, l| l.process != what);
                let started = run_container(node, &pod.name, &what, &argv, release);
                if let Err(e) = started {
                    problem = problem.or(Some(e));
                }
            }
        }
        node.static_pods.insert(
            pod.name,
            StaticPod {
                manifest: path,
                problem,
            },
        );
    }
}

/// What a container's command runs, and its flags: `kube-apiserver`, or
/// hyperkube's `/hyperkube apiserver` (the guide's images).
fn component(argv: &Argv) -> &str {
    if argv.program_name() == "hyperkube" {
        match argv.positional.first().map(String::as_str) {
            Some("apiserver" | "kube-apiserver") => "kube-apiserver",
            Some("controller-manager" | "kube-controller-manager") => "kube-controller-manager",
            Some("scheduler" | "kube-scheduler") => "kube-scheduler",
            Some("proxy" | "kube-proxy") => "kube-proxy",
            Some("kubelet") => "kubelet",
            _ => "hyperkube",
        }
    } else {
        argv.program_name()
    }
}

/// The release in an image tag: `registry.k8s.io/kube-apiserver:v1.29.4` → 1.29.4.
fn image_release(image: &str) -> Option<KubeVersion> {
    let name = image.rsplit('/').next()?;
    let tag = name.split_once(':')?.1;
    let tag = tag.split(['-', '+', '@']).next()?;
    KubeVersion::parse(tag).ok()
}

/// Starts what a static pod's container runs: its listeners, from its flags
/// and its release's defaults. An error is why the component is unhealthy.
/// The first flag of `argv` that `release` of `component` refuses, as the
/// binary says it (`unknown flag: --insecure-port`), from the upstream tables
/// in `core/data/` (`kscratch_core::release`). Deprecated flags are accepted,
/// as the binaries accept them (with a warning on stderr, which the simulator
/// does not report). An unknown release is not judged.
pub fn refused_flags(component: &str, release: Option<KubeVersion>, argv: &Argv) -> Option<String> {
    let v = release?;
    let words: Vec<String> = argv
        .flags
        .iter()
        .map(|f| match &f.value {
            Some(x) => format!("--{}={x}", f.name),
            None => format!("--{}", f.name),
        })
        .collect();
    release::check_flags(component, v.minor, &words)
        .into_iter()
        .find(|f| f.verdict == release::Verdict::Refused)
        .map(|f| format!("Error: {}", f.message))
}

fn run_container(
    node: &mut Node,
    pod: &str,
    what: &str,
    argv: &Argv,
    release: Option<KubeVersion>,
) -> Result<(), String> {
    let cobra_args = |argv: &Argv| -> Result<(), String> {
        let extra: &[String] = if argv.program_name() == "hyperkube" {
            argv.positional.get(1..).unwrap_or(&[])
        } else {
            &argv.positional
        };
        match extra.first() {
            Some(_) => Err(format!(
                "\"{what}\" does not take any arguments, got {extra:?}"
            )),
            None => Ok(()),
        }
    };
    let features = || -> Result<Features, String> {
        release
            .map(KubeVersion::features)
            .ok_or_else(|| format!("the release of {pod}'s image is unknown"))
    };
    let port = |name: &str| -> Result<Option<u16>, String> {
        argv.parsed::<u16>(name).map_err(|e| e.to_string())
    };
    // A control-plane binary exits on a hyperkube command or a flag its
    // release does not have, before it listens on anything.
    if let ("kube-apiserver" | "kube-controller-manager" | "kube-scheduler", Some(v)) =
        (what, release)
    {
        if argv.program_name() == "hyperkube" {
            let sub = argv.positional.first().map(String::as_str).unwrap_or("");
            let ok = match release::release_images(v.minor).hyperkube {
                release::HyperkubeForm::Short => {
                    sub == what || sub == what.trim_start_matches("kube-")
                }
                release::HyperkubeForm::KubeNames => sub == what,
                release::HyperkubeForm::None => false,
            };
            if !ok {
                return Err(format!("/hyperkube {sub}: command not supported"));
            }
        }
        if let Some(e) = refused_flags(what, release, argv) {
            return Err(e);
        }
    }
    match what {
        "etcd" => {
            listen_etcd(node, argv);
            match etcd_problem(node, argv) {
                Some(p) => Err(p),
                None => Ok(()),
            }
        }
        "kube-apiserver" => {
            cobra_args(argv)?;
            listen_apiserver(node, argv, &features()?)
        }
        "kube-scheduler" => {
            cobra_args(argv)?;
            // The health port: the secure one from 1.23 (10251 was removed),
            // before that the insecure `--port`.
            let p = if features()?.scheduler_secure_health {
                port("secure-port")?.unwrap_or(10259)
            } else {
                port("port")?.unwrap_or(10251)
            };
            if p != 0 {
                listen(node, Proto::Tcp, p, "kube-scheduler", None);
            }
            Ok(())
        }
        "kube-controller-manager" => {
            cobra_args(argv)?;
            let p = if features()?.controller_manager_secure_health {
                port("secure-port")?.unwrap_or(10257)
            } else {
                port("port")?.unwrap_or(10252)
            };
            if p != 0 {
                listen(node, Proto::Tcp, p, "kube-controller-manager", None);
            }
            Ok(())
        }
        // Other static pods run; the checks do not depend on what they serve.
        _ => Ok(()),
    }
}

/// What kube-proxy with this command line programs: its `--config` file
/// (KubeProxyConfiguration, whose settings then win over flags), else its
/// flags. Only the iptables proxier is modelled.
pub fn kube_proxy_settings(node: &Node, argv: &Argv) -> Result<KubeProxySettings, String> {
    let e = |e: r::ParseError| format!("kube-proxy: {e}");
    let (cidr, mode, kubeconfig, master) = match argv.get("config") {
        Some(path) => {
            let text = files::read(node, path)
                .map_err(|err| format!("kube-proxy: failed to load config file {path}: {err}"))?;
            let c = r::parse_kube_proxy_config(text)
                .map_err(|err| format!("kube-proxy: failed to load config file {path}: {err}"))?;
            let kubeconfig = (!c.client_connection.kubeconfig.is_empty())
                .then(|| c.client_connection.kubeconfig.clone());
            (c.cluster_cidr, c.mode, kubeconfig, None)
        }
        None => (
            argv.get("cluster-cidr").unwrap_or("").to_string(),
            argv.get("proxy-mode").unwrap_or("").to_string(),
            argv.get("kubeconfig").map(String::from),
            argv.get("master").map(String::from),
        ),
    };
    if !(mode.is_empty() || mode == "iptables") {
        return Err(format!(
            "kube-proxy: proxy mode `{mode}` is not modelled by the simulator (only iptables)"
        ));
    }
    let cluster_cidr = if cidr.is_empty() {
        None
    } else {
        Some(
            cidr.parse::<IpNet>()
                .map_err(|err| format!("kube-proxy: invalid clusterCIDR `{cidr}`: {err}"))?,
        )
    };
    let config = KubeProxyConfig {
        cluster_cidr,
        masquerade_all: argv.get("config").is_none()
            && argv.bool("masquerade-all", false).map_err(e)?,
        ..KubeProxyConfig::default()
    };
    // `--master` overrides the kubeconfig's server.
    let server = match (master, kubeconfig) {
        (Some(m), _) => m,
        (None, Some(path)) => kubeconfig_server(node, &path)?,
        (None, None) => KUBECTL_DEFAULT_SERVER.into(),
    };
    Ok(KubeProxySettings { config, server })
}

/// The server a kubeconfig file on the node points at.
fn kubeconfig_server(node: &Node, path: &str) -> Result<String, String> {
    let text = files::read(node, path)?;
    let kc = r::parse_kubeconfig(text).map_err(|e| format!("{path}: {e}"))?;
    kc.current_server()
        .map(String::from)
        .ok_or_else(|| format!("{path}: the current context names no cluster"))
}

fn etcd_problem(node: &Node, argv: &Argv) -> Option<String> {
    for k in [
        "cert-file",
        "key-file",
        "trusted-ca-file",
        "peer-cert-file",
        "peer-key-file",
        "peer-trusted-ca-file",
    ] {
        if let Some(p) = argv.get(k) {
            if !files::exists(node, p) {
                return Some(format!("--{k}={p}: no such file"));
            }
        }
    }
    None
}

fn listen_etcd(node: &mut Node, argv: &Argv) {
    for (key, default) in [
        ("listen-client-urls", "http://127.0.0.1:2379"),
        ("listen-peer-urls", "http://127.0.0.1:2380"),
    ] {
        let urls = argv.get(key).unwrap_or(default);
        for u in urls.split(',') {
            if let Some((ip, port)) = r::url_host_port(u) {
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

fn listen_apiserver(node: &mut Node, argv: &Argv, fx: &Features) -> Result<(), String> {
    let e = |e: r::ParseError| e.to_string();
    let secure = argv
        .parsed::<u16>("secure-port")
        .map_err(e)?
        .unwrap_or(ports::APISERVER_SECURE_DEFAULT);
    let bind = argv
        .parsed::<IpAddr>("bind-address")
        .map_err(e)?
        .filter(|a| !a.is_unspecified());
    listen(node, Proto::Tcp, secure, Daemon::KubeApiserver.name(), bind);
    if fx.insecure_flags {
        let port = argv
            .parsed::<u16>("insecure-port")
            .map_err(e)?
            .unwrap_or(ports::APISERVER_INSECURE);
        if port != 0 && fx.insecure_serving {
            let bind = argv
                .parsed::<IpAddr>("insecure-bind-address")
                .map_err(e)?
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
    Ok(())
}

/// Whether a component on this node answers its health check, and if not why.
pub fn health(node: &Node, component: &str) -> Result<(), String> {
    let pod = node.static_pods.get(component).ok_or_else(|| {
        format!(
            "no {component} is running on {} (its static pod or service was not started)",
            node.name
        )
    })?;
    match &pod.problem {
        Some(p) => Err(p.clone()),
        None => Ok(()),
    }
}

/// `WaitHealthy`: the component answers at `url` (something of its own
/// listens on that port and address of this node) and is healthy.
pub fn wait_healthy(
    world: &World,
    node: usize,
    component: Component,
    url: &str,
) -> Result<(), String> {
    let n = &world.nodes[node];
    let (ip, port) =
        r::url_host_port(url).ok_or_else(|| format!("cannot read the health URL `{url}`"))?;
    let listening = n.listeners.get(&(Proto::Tcp, port)).is_some_and(|l| {
        l.process == component.name()
            && (ip.is_loopback() || n.is_local(ip))
            && l.addr
                .is_none_or(|a| a == ip || (a.is_loopback() && ip.is_loopback()))
    });
    if !listening {
        // Health first: a component that did not start says why.
        if component == Component::KubeApiserver {
            apiserver_health(world, node)?;
        } else {
            health(n, component.name())?;
        }
        return Err(format!(
            "connection refused: nothing of {component} listens at {url}"
        ));
    }
    if component == Component::KubeApiserver {
        apiserver_health(world, node)
    } else {
        health(n, component.name())
    }
}

/// The argv of the apiserver's static pod on `node`, as its manifest says.
fn apiserver_argv(n: &Node) -> Option<Argv> {
    let pod = n.static_pods.get("kube-apiserver")?;
    let text = files::read(n, &pod.manifest).ok()?;
    Argv::parse(&r::static_pod_command(text).ok()?.argv).ok()
}

/// The `--service-cluster-ip-range` of the first running apiserver: where
/// Service cluster IPs come from. `None` without a running apiserver.
pub fn service_range(world: &World) -> Option<Result<IpNet, String>> {
    world.nodes.iter().find_map(|n| {
        let argv = apiserver_argv(n)?;
        let range = argv
            .get("service-cluster-ip-range")
            .unwrap_or("10.0.0.0/24");
        Some(
            range
                .split(',')
                .next()
                .unwrap_or(range)
                .parse::<IpNet>()
                .map_err(|e| format!("--service-cluster-ip-range={range}: {e}")),
        )
    })
}

/// The cluster-level coherence of the apiserver: run after every node's
/// steps, since it depends on other nodes (etcd members).
pub fn apiserver_problem(world: &World, node: usize) -> Option<String> {
    let n = &world.nodes[node];
    let f = apiserver_argv(n)?;
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
        if let Err(e) = range.parse::<IpNet>() {
            return Some(format!("--service-cluster-ip-range={range}: {e}"));
        }
    }
    let Some(servers) = f.get("etcd-servers") else {
        return Some("--etcd-servers is not set".into());
    };
    let mut reached = None;
    for u in servers.split(',') {
        let Some((ip, port)) = r::url_host_port(u) else {
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
                reached = reached.or(Some(t));
            }
        }
    }
    let Some(first) = reached else {
        return Some(format!("--etcd-servers={servers}: no etcd answers there"));
    };
    // Quorum among the members the reached etcd was started with.
    let members = etcd_members(world, first);
    let healthy = members
        .iter()
        .filter(|m| {
            m.is_some_and(|m| {
                world.nodes[m].up
                    && world.nodes[m]
                        .static_pods
                        .get("etcd")
                        .is_some_and(|p| p.problem.is_none())
            })
        })
        .count();
    if healthy * 2 <= members.len() {
        return Some(format!(
            "etcd has no quorum: {healthy} of {} members healthy",
            members.len()
        ));
    }
    None
}

/// The member names of the `--initial-cluster` the etcd on `node` was
/// started with (`name=peer-url,...`), `None` when no etcd runs there.
pub fn etcd_initial_names(node: &Node) -> Option<Vec<String>> {
    let p = node.static_pods.get("etcd")?;
    let text = files::read(node, &p.manifest).ok()?;
    let words = if p.manifest == Asset::Unit(Service::Etcd).path() {
        r::unit_exec_start(text).ok()?
    } else {
        r::static_pod_command(text).ok()?.argv
    };
    let argv = Argv::parse(&words).ok()?;
    Some(match argv.get("initial-cluster") {
        Some(c) => c
            .split(',')
            .filter_map(|m| m.split_once('='))
            .map(|(name, _)| name.to_string())
            .collect(),
        None => argv.get("name").map(String::from).into_iter().collect(),
    })
}

/// The members of the etcd cluster the etcd on `node` belongs to, from its
/// `--initial-cluster` (`name=peer-url,...`): the node each peer URL is on,
/// `None` for a peer on no node. Without the flag etcd is a cluster of one.
fn etcd_members(world: &World, node: usize) -> Vec<Option<usize>> {
    let n = &world.nodes[node];
    let argv = n.static_pods.get("etcd").and_then(|p| {
        let text = files::read(n, &p.manifest).ok()?;
        let words = if p.manifest == Asset::Unit(Service::Etcd).path() {
            r::unit_exec_start(text).ok()?
        } else {
            r::static_pod_command(text).ok()?.argv
        };
        Argv::parse(&words).ok()
    });
    let Some(cluster) = argv.as_ref().and_then(|a| a.get("initial-cluster")) else {
        return vec![Some(node)];
    };
    cluster
        .split(',')
        .filter_map(|m| m.split_once('='))
        .map(|(_, url)| {
            let (ip, _) = r::url_host_port(url)?;
            if ip.is_loopback() {
                Some(node)
            } else {
                world.nodes.iter().position(|m| m.ip == ip)
            }
        })
        .collect()
}

/// The healthy apiserver that answers at `server` for a client on `from`:
/// `kubectl --kubeconfig`, kube-proxy, the kubelet; through the local
/// apiserver proxy when that is what listens there.
pub fn apiserver_at(world: &World, from: usize, server: &str) -> Result<usize, String> {
    if let Some(lb) = load_balancer_at(world, server) {
        let mut down = Vec::new();
        for (name, ip, port) in &lb.backends {
            match apiserver_direct(world, from, &format!("tcp://{ip}:{port}")) {
                Ok(t) => return Ok(t),
                Err(e) => down.push(format!("{name} ({e})")),
            }
        }
        return Err(format!(
            "the load balancer at {}:{} has no healthy apiserver: {}",
            lb.host,
            lb.port,
            down.join("; ")
        ));
    }
    let (ip, port) = r::url_host_port(server)
        .ok_or_else(|| format!("cannot read the apiserver URL `{server}`"))?;
    let local = ip.is_loopback() || world.nodes[from].is_local(ip);
    let proxied = world.nodes[from]
        .listeners
        .get(&(Proto::Tcp, port))
        .is_some_and(|l| l.process == HAPROXY && l.addr.is_none_or(|a| a == ip));
    if local && proxied && world.nodes[from].up {
        return via_apiserver_proxy(world, from, ip, port);
    }
    apiserver_direct(world, from, server)
}

/// The operator's load balancer when `server` (`scheme://host[:port]`) names it.
fn load_balancer_at<'w>(world: &'w World, server: &str) -> Option<&'w LoadBalancer> {
    let lb = world.underlay.load_balancer.as_ref()?;
    let (scheme, rest) = server.split_once("://")?;
    let hostport = rest.split('/').next()?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()?),
        None => (
            hostport,
            match scheme {
                "https" => 443,
                "http" => 80,
                _ => return None,
            },
        ),
    };
    (host == lb.host && port == lb.port).then_some(lb)
}

/// [`apiserver_at`] without a proxy: the apiserver itself must answer.
fn apiserver_direct(world: &World, from: usize, server: &str) -> Result<usize, String> {
    let (ip, port) = r::url_host_port(server)
        .ok_or_else(|| format!("cannot read the apiserver URL `{server}`"))?;
    let target = if ip.is_loopback() || world.nodes[from].is_local(ip) {
        Some(from)
    } else {
        world
            .nodes
            .iter()
            .position(|m| m.ip == ip || m.is_local(ip))
    };
    let Some(t) = target else {
        return Err(format!("dial {server}: no host answers at {ip}"));
    };
    let m = &world.nodes[t];
    if !m.up {
        return Err(format!("dial {server}: {} is down", m.name));
    }
    if !m.static_pods.contains_key("kube-apiserver") {
        return Err(format!("the apiserver is not running on {}", m.name));
    }
    let serving = m.listeners.get(&(Proto::Tcp, port)).is_some_and(|l| {
        l.process == "kube-apiserver"
            && l.addr
                .is_none_or(|a| a == ip || (a.is_loopback() && ip.is_loopback()))
    });
    if !serving {
        return Err(format!(
            "dial {server}: connection refused (the apiserver on {} does not listen on port {port})",
            m.name
        ));
    }
    apiserver_health(world, t)?;
    Ok(t)
}

/// The server kubectl on `node` uses with this user's kubeconfig (the
/// insecure local port when the file is not there, as kubectl defaults).
pub fn kubectl_server(node: &Node, user: KubeconfigUser) -> Result<String, String> {
    let path = Asset::Kubeconfig(user).path();
    if files::exists(node, path) {
        kubeconfig_server(node, path)
    } else {
        Ok(KUBECTL_DEFAULT_SERVER.into())
    }
}

/// The equivalent of validate-cluster.sh, run with the admin kubeconfig on
/// `at`: the apiserver answers, the named nodes' kubelets are registered
/// (running), the components it lists are healthy (`etcd-K` is the K-th
/// server of the apiserver's `--etcd-servers`).
pub fn validate_cluster(
    world: &World,
    at: usize,
    nodes: &[String],
    components: &[String],
) -> Result<(), String> {
    let server = kubectl_server(&world.nodes[at], KubeconfigUser::Admin)?;
    let api = apiserver_at(world, at, &server)?;
    let mut problems = Vec::new();
    for name in nodes {
        let ready = world
            .nodes
            .iter()
            .find(|n| &n.name == name)
            .is_some_and(|n| n.up && n.running("kubelet"));
        if !ready {
            problems.push(format!("node {name} is NotReady (kubelet is not running)"));
        }
    }
    // componentstatuses: the scheduler and controller-manager next to each
    // apiserver, and every etcd server the apiserver names.
    for (i, n) in world.nodes.iter().enumerate() {
        if !n.static_pods.contains_key("kube-apiserver") {
            continue;
        }
        for c in ["kube-scheduler", "kube-controller-manager"] {
            if components.iter().any(|x| x == c) {
                if let Err(e) = health(&world.nodes[i], c) {
                    problems.push(format!("{c} on {}: {e}", n.name));
                }
            }
        }
    }
    let servers: Vec<String> = apiserver_argv(&world.nodes[api])
        .and_then(|a| a.get("etcd-servers").map(String::from))
        .map(|s| s.split(',').map(String::from).collect())
        .unwrap_or_default();
    for c in components {
        let Some(k) = c
            .strip_prefix("etcd-")
            .and_then(|k| k.parse::<usize>().ok())
        else {
            continue;
        };
        let Some(url) = servers.get(k) else {
            problems.push(format!("{c}: the apiserver names no such etcd server"));
            continue;
        };
        let Some((ip, _)) = r::url_host_port(url) else {
            problems.push(format!("{c}: cannot read `{url}`"));
            continue;
        };
        let m = if ip.is_loopback() {
            Some(api)
        } else {
            world.nodes.iter().position(|n| n.ip == ip)
        };
        match m {
            Some(m) => {
                if let Err(e) = health(&world.nodes[m], "etcd") {
                    problems.push(format!("etcd on {}: {e}", world.nodes[m].name));
                }
            }
            None => problems.push(format!("{c}: no node answers at {url}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The apiserver's health, as WaitHealthy sees it (local health plus cluster coherence).
pub fn apiserver_health(world: &World, node: usize) -> Result<(), String> {
    health(&world.nodes[node], "kube-apiserver")?;
    match apiserver_problem(world, node) {
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

    fn argv(words: &[&str]) -> Argv {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        Argv::parse(&words).expect("parses")
    }

    #[test]
    fn control_plane_refuses_removed_flags_and_unknown_hyperkube_commands() {
        let v130 = Some(KubeVersion::new(1, 30, 4));
        assert_eq!(
            refused_flags(
                "kube-apiserver",
                v130,
                &argv(&["kube-apiserver", "--insecure-port=0", "--secure-port=6443"])
            )
            .as_deref(),
            Some("Error: unknown flag: --insecure-port")
        );
        let hyperkube = argv(&["/hyperkube", "apiserver", "--insecure-port=8080"]);
        let mut node = Node::new("n", "10.0.0.1".parse().unwrap());
        let e = run_container(
            &mut node,
            "kube-apiserver",
            "kube-apiserver",
            &hyperkube,
            Some(KubeVersion::new(1, 17, 3)),
        )
        .unwrap_err();
        assert_eq!(e, "/hyperkube apiserver: command not supported");
        assert_eq!(
            refused_flags(
                "kube-apiserver",
                Some(KubeVersion::new(1, 6, 13)),
                &hyperkube
            ),
            None
        );
    }
}
