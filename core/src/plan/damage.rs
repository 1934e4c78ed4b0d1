//! Damage plans: what a what-if [`Fault`] does, as ordinary typed actions.
//!
//! A fault is damage a real machine can have — a route gone, a link down, a
//! rule inserted, a sysctl flipped, a service stopped. [`damage`] compiles a
//! list of faults into two small [`Plan`]s of those actions, run by the same
//! executor on any backend: the simulator (`kscratch check --fault`) and real
//! machines (`kscratch apply --fault`) get exactly the same damage.
//!
//! A fault that does not apply to the scenario (a node that does not exist,
//! an FDB entry on a cluster without VXLAN, docker's masquerade on a
//! containerd cluster) is refused here, with a hint, before anything runs.

use super::{masquerade_rule, vtep_mac, Action, KubeconfigUser, Phase, Plan, Step, Target};
use crate::net::iptables::{Rule, Table};
use crate::net::route::{FdbEntry, MacAddr, Neighbor, Route, RouteDst};
use crate::plan::{Asset, Service};
use crate::scenario::{Fault, PodTraffic, Runtime, Scenario};
use std::fmt;

/// The damage of a list of faults, in two stages.
#[derive(Debug, Clone, PartialEq)]
pub struct Damage {
    /// Changes to a daemon's configuration, which take effect when the
    /// daemon restarts: the simulator runs them before the workload (test
    /// pods and Services) exists. On real machines they run first.
    pub before_workload: Plan,
    /// Damage to the running cluster.
    pub live: Plan,
}

impl Damage {
    /// Both stages in order, as one plan: what `kscratch apply --fault` runs.
    pub fn combined(&self) -> Plan {
        let mut p = self.before_workload.clone();
        let offset = p.steps.len() as u32;
        let pool = p.dep_pool.len() as u32;
        p.dep_pool
            .extend(self.live.dep_pool.iter().map(|d| d + offset));
        p.steps.extend(self.live.steps.iter().map(|s| Step {
            deps: s.deps.start + pool..s.deps.end + pool,
            ..s.clone()
        }));
        p
    }

    pub fn is_empty(&self) -> bool {
        self.before_workload.steps.is_empty() && self.live.steps.is_empty()
    }
}

/// A fault that cannot apply to the scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultError {
    pub fault: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fault {}: {}", self.fault, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for FaultError {}

/// Compiles `faults` into their damage plans. Every fault is checked
/// against the scenario; all problems are returned at once.
pub fn damage(s: &Scenario, faults: &[Fault]) -> Result<Damage, Vec<FaultError>> {
    let mut before = Builder::new(s);
    let mut live = Builder::new(s);
    let mut errors = Vec::new();
    for f in faults {
        let b = if f.before_workload() {
            &mut before
        } else {
            &mut live
        };
        match compile(s, f) {
            Ok(steps) => b.chain(steps),
            Err((message, hint)) => errors.push(FaultError {
                fault: f.to_string(),
                message,
                hint,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Damage {
        before_workload: before.finish(),
        live: live.finish(),
    })
}

/// The one fault check callers without a plan need (validation, the CLI).
pub fn check(s: &Scenario, f: &Fault) -> Result<(), FaultError> {
    compile(s, f)
        .map(|_| ())
        .map_err(|(message, hint)| FaultError {
            fault: f.to_string(),
            message,
            hint,
        })
}

type Problem = (String, Option<String>);

fn problem(message: impl Into<String>, hint: impl Into<String>) -> Problem {
    (message.into(), Some(hint.into()))
}

struct Builder<'s> {
    s: &'s Scenario,
    steps: Vec<Step>,
    deps: Vec<u32>,
}

impl<'s> Builder<'s> {
    fn new(s: &'s Scenario) -> Self {
        Builder {
            s,
            steps: Vec::new(),
            deps: Vec::new(),
        }
    }

    /// One fault's steps: each depends on the one before it on the same
    /// target, so that a config file is written before its daemon
    /// restarts. Steps on different targets do not wait for each other: a
    /// step skipped on one node (its daemon not installed there) must not
    /// silently hold back the fault on every later node.
    fn chain(&mut self, steps: Vec<(Target, &'static str, Action)>) {
        let mut prev: std::collections::BTreeMap<Target, u32> = Default::default();
        for (target, key, action) in steps {
            let start = self.deps.len() as u32;
            self.deps.extend(prev.get(&target).copied());
            prev.insert(target, self.steps.len() as u32);
            self.steps.push(Step {
                target,
                key,
                phase: Phase::Damage,
                action,
                deps: start..self.deps.len() as u32,
                subject: None,
            });
        }
    }

    fn finish(self) -> Plan {
        Plan {
            cluster: self.s.name.clone(),
            version: self.s.version,
            nodes: self.s.nodes.iter().map(|n| n.name.clone()).collect(),
            artifacts: Vec::new(),
            steps: self.steps,
            dep_pool: self.deps,
            release_dir: self.s.binaries_dir.clone(),
            departed: Vec::new(),
        }
    }
}

fn node_index(s: &Scenario, name: &str) -> Result<usize, Problem> {
    s.node_index(name).ok_or_else(|| {
        let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
        let hint = crate::diag::did_you_mean(name, names.iter().copied())
            .map(|m| format!("did you mean `{m}`?"))
            .unwrap_or_else(|| format!("the nodes are {}", names.join(", ")));
        (format!("no node `{name}` in the scenario"), Some(hint))
    })
}

fn mode_name(p: &PodTraffic) -> &'static str {
    match p {
        PodTraffic::Routed => "routed",
        PodTraffic::Fabric => "fabric",
        PodTraffic::Vxlan(_) => "vxlan",
        PodTraffic::External => "external",
    }
}

/// The pod route `node` holds to `to`'s pod CIDR, as the plan installs it.
fn pod_route(s: &Scenario, to: usize) -> Option<Route> {
    let cidr = s.pod_cidr(to);
    match &s.network.pod_traffic {
        PodTraffic::Routed => Some(Route::via(cidr, s.nodes[to].ip, &s.network.interface)),
        PodTraffic::Vxlan(v) => Some(Route {
            onlink: true,
            ..Route::via(cidr, cidr.network(), &v.device)
        }),
        PodTraffic::Fabric | PodTraffic::External => None,
    }
}

fn vxlan_peer(
    s: &Scenario,
    f: &Fault,
    node: &str,
    to: &str,
) -> Result<(usize, String, MacAddr, usize), Problem> {
    let PodTraffic::Vxlan(v) = &s.network.pod_traffic else {
        return Err(problem(
            format!(
                "the cluster has no VXLAN overlay (pod traffic is {})",
                mode_name(&s.network.pod_traffic)
            ),
            format!("{} applies to `network.podTraffic: vxlan`", f.kind()),
        ));
    };
    let n = node_index(s, node)?;
    let t = node_index(s, to)?;
    if n == t {
        return Err(problem(
            format!("{node} holds no VXLAN entry for itself"),
            "name another node as TO_NODE",
        ));
    }
    Ok((n, v.device.clone(), vtep_mac(s.nodes[t].ip), t))
}

fn runtime_service(s: &Scenario) -> Service {
    match s.runtime {
        Runtime::Docker(_) => Service::Docker,
        Runtime::Containerd => Service::Containerd,
    }
}

/// The bytes of `asset` for node `i` as a differently configured scenario renders them.
fn rendered(s: &Scenario, i: usize, asset: Asset) -> Result<String, Problem> {
    let b = crate::render::render(s, Some(i), asset, &crate::render::Redacted)
        .map_err(|e| (format!("{}: {e}", asset.path()), None))?;
    String::from_utf8(b).map_err(|_| (format!("{} is not text", asset.path()), None))
}

fn compile(s: &Scenario, f: &Fault) -> Result<Vec<(Target, &'static str, Action)>, Problem> {
    let on = |i: usize| Target::Node(i as u32);
    Ok(match f {
        Fault::NodeDown { node } => {
            vec![(
                on(node_index(s, node)?),
                "fault/node-down",
                Action::PowerOff,
            )]
        }
        Fault::NicDown { node } => vec![(
            on(node_index(s, node)?),
            "fault/nic-down",
            Action::SetLinkDown {
                name: s.network.interface.clone(),
            },
        )],
        Fault::RouteMissing { node, to } => {
            let n = node_index(s, node)?;
            let targets: Vec<usize> = match to {
                Some(t) => {
                    let t = node_index(s, t)?;
                    if t == n {
                        return Err(problem(
                            format!("{node} has no route to its own pod CIDR"),
                            "name another node as TO_NODE",
                        ));
                    }
                    vec![t]
                }
                None => (0..s.nodes.len()).filter(|&m| m != n).collect(),
            };
            match &s.network.pod_traffic {
                PodTraffic::External => {
                    return Err(problem(
                        "pod traffic is external: kscratch installs no pod routes",
                        "route-missing applies to routed, fabric and vxlan clusters",
                    ))
                }
                PodTraffic::Fabric => {
                    // The routes live on the fabric router: the one to this node's pods goes.
                    if to.is_some() {
                        return Err(problem(
                            "on a fabric cluster the pod routes live on the underlay router, not on the nodes",
                            format!("use route-missing:{node} (the router's route to {node}'s pods)"),
                        ));
                    }
                    let cidr = s.pod_cidr(n);
                    vec![(
                        Target::Fabric,
                        "fault/route-missing",
                        Action::DeleteRoutes {
                            routes: vec![Route {
                                via: Some(s.nodes[n].ip),
                                ..Route::new(RouteDst::Net(cidr))
                            }],
                        },
                    )]
                }
                PodTraffic::Routed | PodTraffic::Vxlan(_) => {
                    if targets.is_empty() {
                        return Err(problem(
                            format!("{node} has no pod route to remove: the cluster has one node"),
                            "route-missing needs at least two nodes",
                        ));
                    }
                    vec![(
                        on(n),
                        "fault/route-missing",
                        Action::DeleteRoutes {
                            routes: targets.iter().filter_map(|&t| pod_route(s, t)).collect(),
                        },
                    )]
                }
            }
        }
        Fault::IpForwardOff { node } => vec![(
            on(node_index(s, node)?),
            "fault/ip-forward-off",
            Action::SetSysctl {
                key: "net.ipv4.ip_forward",
                value: "0",
            },
        )],
        Fault::ForwardDrop { node } => vec![(
            on(node_index(s, node)?),
            "fault/forward-drop",
            Action::InsertIptablesRule {
                table: Table::Filter,
                rule: Rule::parse("-A FORWARD -j DROP").expect("valid rule"),
            },
        )],
        Fault::RpFilterStrict { node } => vec![(
            on(node_index(s, node)?),
            "fault/rp-filter-strict",
            // The kernel uses the larger of `all` and the device's value: `all=1` is strict everywhere.
            Action::SetSysctl {
                key: "net.ipv4.conf.all.rp_filter",
                value: "1",
            },
        )],
        Fault::BrNetfilterOff { node } => vec![(
            on(node_index(s, node)?),
            "fault/br-netfilter-off",
            Action::UnloadKernelModule {
                name: "br_netfilter",
            },
        )],
        Fault::UnderlayMtu { node, mtu } => {
            let n = node_index(s, node)?;
            let under = s.network.underlay_mtu;
            if *mtu >= under {
                return Err(problem(
                    format!("{mtu} is not smaller than the underlay MTU {under}"),
                    format!(
                        "give a value below {under}, e.g. underlay-mtu:{node}:{}",
                        under - 100
                    ),
                ));
            }
            if *mtu < 576 {
                return Err(problem(
                    format!("an MTU of {mtu} is below IPv4's minimum reassembly size of 576"),
                    "give a value between 576 and the underlay MTU",
                ));
            }
            vec![(
                on(n),
                "fault/underlay-mtu",
                Action::SetLinkMtu {
                    name: s.network.interface.clone(),
                    mtu: *mtu,
                },
            )]
        }
        Fault::FdbMissing { node, to } => {
            let (n, dev, mac, t) = vxlan_peer(s, f, node, to)?;
            vec![(
                on(n),
                "fault/fdb-missing",
                Action::DeleteFdbEntries {
                    entries: vec![FdbEntry::vxlan(mac, &dev, s.nodes[t].ip)],
                },
            )]
        }
        Fault::NeighMissing { node, to } => {
            let (n, dev, mac, t) = vxlan_peer(s, f, node, to)?;
            vec![(
                on(n),
                "fault/neigh-missing",
                Action::DeleteNeighbors {
                    entries: vec![Neighbor::permanent(s.pod_cidr(t).network(), &dev, mac)],
                },
            )]
        }
        Fault::KubeProxyDown { node } => vec![(
            on(node_index(s, node)?),
            "fault/kube-proxy-down",
            Action::StopService {
                name: Service::KubeProxy,
            },
        )],
        Fault::DnsPodDown => {
            if !s.addons.dns {
                return Err(problem(
                    "the scenario has no DNS addon",
                    "dns-pod-down applies when `addons.dns` is true",
                ));
            }
            let (cp, _) = s
                .control_plane_nodes()
                .next()
                .ok_or_else(|| problem("the scenario has no control-plane node", "add one"))?;
            let name = if s.version.features().coredns {
                "coredns"
            } else {
                "kube-dns"
            };
            vec![(
                on(cp),
                "fault/dns-pod-down",
                Action::ScaleDeployment {
                    namespace: "kube-system".into(),
                    name: name.into(),
                    replicas: 0,
                    kubeconfig: KubeconfigUser::Admin,
                },
            )]
        }
        Fault::Docker0Leftover { node } => {
            let n = node_index(s, node)?;
            docker_only(s, f)?;
            vec![
                (
                    on(n),
                    "fault/docker0-leftover",
                    Action::DeleteFile {
                        path: Asset::Unit(Service::Docker).path().into(),
                    },
                ),
                (
                    on(n),
                    "fault/docker0-leftover/stop",
                    Action::StopService {
                        name: Service::Docker,
                    },
                ),
                (
                    on(n),
                    "fault/docker0-leftover/start",
                    Action::StartService {
                        name: Service::Docker,
                    },
                ),
            ]
        }
        Fault::DockerIpMasq { node } => {
            let n = node_index(s, node)?;
            let d = docker_only(s, f)?;
            if d.ip_masq {
                return Err(problem(
                    "docker already runs with --ip-masq=true in this scenario",
                    "runtime.docker.ipMasq is true: there is nothing to break",
                ));
            }
            let mut wrong = s.clone();
            if let Runtime::Docker(d) = &mut wrong.runtime {
                d.ip_masq = true;
            }
            vec![
                (
                    on(n),
                    "fault/docker-ip-masq",
                    Action::WriteText {
                        path: Asset::DockerDefaults.path(),
                        mode: Asset::DockerDefaults.mode(),
                        text: rendered(&wrong, n, Asset::DockerDefaults)?,
                    },
                ),
                (
                    on(n),
                    "fault/docker-ip-masq/stop",
                    Action::StopService {
                        name: Service::Docker,
                    },
                ),
                (
                    on(n),
                    "fault/docker-ip-masq/start",
                    Action::StartService {
                        name: Service::Docker,
                    },
                ),
            ]
        }
        Fault::MasqueradeMissing { node } => {
            let n = node_index(s, node)?;
            let Some(rule) = masquerade_rule(s) else {
                return Err(problem(
                    "the scenario installs no masquerade rule",
                    "network.masquerade is false",
                ));
            };
            vec![(
                on(n),
                "fault/masquerade-missing",
                Action::DeleteIptablesRules {
                    table: Table::Nat,
                    rules: vec![rule],
                    chains: vec![],
                },
            )]
        }
        Fault::OverlayMtu { mtu } => {
            let PodTraffic::Vxlan(_) = &s.network.pod_traffic else {
                return Err(problem(
                    format!(
                        "the cluster has no overlay (pod traffic is {})",
                        mode_name(&s.network.pod_traffic)
                    ),
                    "overlay-mtu applies to `network.podTraffic: vxlan`; for a small NIC use underlay-mtu:NODE:BYTES",
                ));
            };
            if *mtu <= s.network.pod_mtu {
                return Err(problem(
                    format!("{mtu} does not raise the pod MTU {}", s.network.pod_mtu),
                    format!("give a value above {}", s.network.pod_mtu),
                ));
            }
            // The pod MTU as if the scenario had said `network.podMTU: mtu`;
            // the VXLAN device keeps its MTU: the kernel refuses one that
            // leaves no room for the encapsulation.
            let mut wrong = s.clone();
            wrong.network.pod_mtu = *mtu;
            let (asset, restart) = match s.runtime {
                Runtime::Docker(_) => (Asset::DockerDefaults, runtime_service(s)),
                Runtime::Containerd => (Asset::CniConfig, runtime_service(s)),
            };
            let mut v = Vec::new();
            for i in 0..s.nodes.len() {
                v.push((
                    on(i),
                    "fault/overlay-mtu/bridge",
                    Action::SetLinkMtu {
                        name: s.network.bridge.clone(),
                        mtu: *mtu,
                    },
                ));
                v.push((
                    on(i),
                    "fault/overlay-mtu",
                    Action::WriteText {
                        path: asset.path(),
                        mode: asset.mode(),
                        text: rendered(&wrong, i, asset)?,
                    },
                ));
                v.push((
                    on(i),
                    "fault/overlay-mtu/stop",
                    Action::StopService { name: restart },
                ));
                v.push((
                    on(i),
                    "fault/overlay-mtu/start",
                    Action::StartService { name: restart },
                ));
            }
            v
        }
        Fault::ApiserverFirewalled => {
            let n = s
                .nodes
                .iter()
                .position(|x| x.ip == s.master_ip)
                .ok_or_else(|| {
                    problem(
                        format!("no node holds MASTER_IP {}", s.master_ip),
                        "masterIP must be one of the nodes' addresses",
                    )
                })?;
            let port = s.security.model.apiserver_port();
            vec![(
                on(n),
                "fault/apiserver-firewalled",
                Action::InsertIptablesRule {
                    table: Table::Filter,
                    rule: Rule::parse(&format!("-A INPUT -p tcp -m tcp --dport {port} -j DROP"))
                        .expect("valid rule"),
                },
            )]
        }
    })
}

fn docker_only<'a>(
    s: &'a Scenario,
    f: &Fault,
) -> Result<&'a crate::scenario::DockerOptions, Problem> {
    match &s.runtime {
        Runtime::Docker(d) => Ok(d),
        Runtime::Containerd => Err(problem(
            "the nodes run containerd, not docker",
            format!("{} applies to `runtime: docker`", f.kind()),
        )),
    }
}
