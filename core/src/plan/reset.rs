//! Teardown plans: `kscratch reset NODE...` takes back what the plan put on
//! a node, as ordinary typed actions run by the same executor.
//!
//! The teardown is derived from the node's own apply plan ([`super::plan`]),
//! step by step inverted, so that it removes exactly what kscratch put there
//! and nothing else:
//!
//! | apply step | teardown |
//! |---|---|
//! | `WriteFile` of a static pod manifest | `DeleteFile` first: a running kubelet stops the pod |
//! | `StartService` | `DisableService` (stopped, disabled, the supervisor's files gone) |
//! | `StartService` of kube-proxy | also `DeleteIptablesChains` of `KUBE-*` in mangle, filter and nat (`kube-proxy --cleanup`) |
//! | `EnsureIptablesRule` | `DeleteIptablesRules` of exactly that rule (other rules in the chain stay) |
//! | `InstallPodRoutes` | `DeleteRoutes` of each route; overlay: its neighbour and FDB entries too |
//! | `CreateVxlan`, `CreateBridge` | `DeleteLink` |
//! | `WriteFile`, `InstallBinary` | `DeleteFile` of its path |
//! | `SetSysctl`, `LoadKernelModule` | `DeleteFile` of its drop-in (the running value and the module stay) |
//! | (the etcd data dir) | `ClearDirectory`, only with `delete_etcd_data` |
//!
//! Steps that change nothing on the node (preflight, health waits, the
//! cluster validation), the operator's PKI, pulled images and what the plan
//! itself deleted (docker's leftovers) have no teardown. Directories are
//! left: kscratch cannot tell one it created from one that was there.
//!
//! The order is the apply order reversed within five stages: static pods,
//! services, the node network, files, the etcd data. Each node's steps form
//! one chain; nodes are independent of each other.
//!
//! Refusals (nothing runs): a node that is not in the scenario, and
//! resetting every etcd member, every control-plane node, or so many etcd
//! members that the rest lose quorum (reset does not remove a member from
//! the cluster: the remaining members still count it), unless `force`.

use super::{
    module_dropin, pod_network_entries, sysctl_dropin, Action, Asset, Phase, Plan, PodRouteVia,
    Service, Step, Target,
};
use crate::net::iptables::{Rule, Table};
use crate::net::route::{FdbEntry, Neighbor, Route};
use crate::scenario::Scenario;
use std::fmt;

/// The chains kube-proxy (and the kubelet) program: all of Kubernetes'
/// `KUBE-*` chains.
pub const KUBE_CHAINS: &str = "KUBE-*";

/// What the operator asked for besides the nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetOptions {
    /// Empty the etcd data dir of the reset etcd members.
    pub delete_etcd_data: bool,
    /// Reset the last etcd member or control-plane node, or break quorum.
    pub force: bool,
}

/// A teardown plan and what the operator should know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reset {
    pub plan: Plan,
    /// Things reset leaves in place on purpose (an etcd membership, ...).
    pub notes: Vec<String>,
}

/// Why a reset is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetRefusal {
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ResetRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ResetRefusal {}

/// The teardown plan of `nodes` (named as in the scenario, each once; the
/// order given does not matter). All refusals are returned at once.
pub fn reset(s: &Scenario, nodes: &[String], o: &ResetOptions) -> Result<Reset, Vec<ResetRefusal>> {
    let mut refusals = Vec::new();
    let mut chosen: Vec<usize> = Vec::new();
    let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    for name in nodes {
        match s.node_index(name) {
            Some(i) if !chosen.contains(&i) => chosen.push(i),
            Some(_) => {}
            None => {
                let hint = crate::diag::did_you_mean(name, names.iter().copied())
                    .map(|m| format!("did you mean `{m}`? the nodes are {}", names.join(", ")))
                    .unwrap_or_else(|| format!("the nodes are {}", names.join(", ")));
                refusals.push(ResetRefusal {
                    message: format!("no node `{name}` in the scenario"),
                    hint: Some(hint),
                });
            }
        }
    }
    if nodes.is_empty() {
        refusals.push(ResetRefusal {
            message: "no node to reset".into(),
            hint: Some(format!("name one or more of {}", names.join(", "))),
        });
    }
    chosen.sort_unstable();
    let mut notes = Vec::new();
    if refusals.is_empty() {
        membership(s, &chosen, o, &mut refusals, &mut notes);
    }
    if !refusals.is_empty() {
        return Err(refusals);
    }
    let apply = super::plan(s);
    let mut b = Chains::default();
    for &i in &chosen {
        b.node(s, &apply, i, o);
    }
    Ok(Reset {
        plan: Plan {
            cluster: s.name.clone(),
            version: s.version,
            nodes: s.nodes.iter().map(|n| n.name.clone()).collect(),
            artifacts: Vec::new(),
            steps: b.steps,
            dep_pool: b.deps,
            release_dir: s.binaries_dir.clone(),
            departed: Vec::new(),
        },
        notes,
    })
}

/// The etcd and control-plane arithmetic.
fn membership(
    s: &Scenario,
    chosen: &[usize],
    o: &ResetOptions,
    refusals: &mut Vec<ResetRefusal>,
    notes: &mut Vec<String>,
) {
    let name = |i: usize| s.nodes[i].name.as_str();
    let force = "pass --force to reset them anyway: the cluster's data and API may go with them";
    let members = &s.etcd.members;
    let reset_members: Vec<usize> = members
        .iter()
        .copied()
        .filter(|m| chosen.contains(m))
        .collect();
    let (n, k) = (members.len(), reset_members.len());
    let quorum = n / 2 + 1;
    if k > 0 && !o.force {
        if k == n {
            refusals.push(ResetRefusal {
                message: format!(
                    "resetting {} would leave 0 of the {n} etcd members ({}): the cluster's data would be gone",
                    list(reset_members.iter().map(|&i| name(i))),
                    list(members.iter().map(|&i| name(i)))
                ),
                hint: Some(force.into()),
            });
        } else if n - k < quorum {
            refusals.push(ResetRefusal {
                message: format!(
                    "resetting {} leaves {} of {n} etcd members running, and quorum needs {quorum} of {n}: reset does not remove a member, so the rest still count it",
                    list(reset_members.iter().map(|&i| name(i))),
                    n - k
                ),
                hint: Some(format!(
                    "reset at most {} at a time, or {force}",
                    crate::diag::plural(n - quorum, "etcd member", "etcd members")
                )),
            });
        }
    }
    if k > 0 && k < n {
        notes.push(format!(
            "{} stays a member of the etcd cluster: reset does not run `etcdctl member remove`; {} of {n} members remain, quorum is {quorum}. Remove the member from the scenario and apply, or run `etcdctl member remove` on a remaining member",
            list(reset_members.iter().map(|&i| name(i))),
            n - k
        ));
    }
    let cps: Vec<usize> = s.control_plane_nodes().map(|(i, _)| i).collect();
    let reset_cps = cps.iter().filter(|c| chosen.contains(c)).count();
    if !cps.is_empty() && reset_cps == cps.len() && !o.force {
        refusals.push(ResetRefusal {
            message: format!(
                "resetting {} would leave 0 of the {} control-plane nodes: no apiserver would remain",
                list(
                    cps.iter()
                        .filter(|c| chosen.contains(c))
                        .map(|&i| name(i))
                ),
                cps.len()
            ),
            hint: Some(force.into()),
        });
    }
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

/// The stages of a teardown, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    StaticPods,
    Services,
    Network,
    Files,
    EtcdData,
}

#[derive(Default)]
struct Chains {
    steps: Vec<Step>,
    deps: Vec<u32>,
}

impl Chains {
    /// Node `i`'s teardown, from its steps in `apply`.
    fn node(&mut self, s: &Scenario, apply: &Plan, i: usize, o: &ResetOptions) {
        let t = Target::Node(i as u32);
        let mut undo: Vec<(Stage, usize, &'static str, Action)> = Vec::new();
        for (order, st) in apply
            .steps
            .iter()
            .enumerate()
            .filter(|(_, st)| st.target == t)
        {
            for (stage, key, action) in inverse(s, apply, i, st) {
                undo.push((stage, order, key, action));
            }
        }
        if o.delete_etcd_data && s.etcd.members.contains(&i) {
            undo.push((
                Stage::EtcdData,
                0,
                "etcd/data-dir",
                Action::ClearDirectory {
                    path: s.etcd.data_dir.clone(),
                },
            ));
        }
        // Stage by stage; within a stage, the apply order reversed (the
        // actions one apply step expands to keep their own order).
        undo.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut prev: Option<u32> = None;
        for (_, _, key, action) in undo {
            let start = self.deps.len() as u32;
            self.deps.extend(prev);
            prev = Some(self.steps.len() as u32);
            self.steps.push(Step {
                target: t,
                key,
                phase: Phase::Reset,
                action,
                deps: start..self.deps.len() as u32,
                subject: None,
            });
        }
    }
}

/// What takes back apply step `st` on node `i`: zero or more actions, each
/// with its stage and key (the apply step's key, so that `node/file/ca.crt`
/// is the step that wrote a file and the one that removes it).
fn inverse(s: &Scenario, apply: &Plan, i: usize, st: &Step) -> Vec<(Stage, &'static str, Action)> {
    let k = st.key;
    let file = |path: String| vec![(Stage::Files, k, Action::DeleteFile { path })];
    match &st.action {
        Action::WriteFile {
            path,
            asset: Asset::StaticPod(_),
            ..
        } => vec![(
            Stage::StaticPods,
            k,
            Action::DeleteFile {
                path: path.to_string(),
            },
        )],
        Action::WriteFile { path, .. } => file(path.to_string()),
        Action::WriteText { path, .. } => file(path.to_string()),
        Action::InstallBinary { dest, .. } => file(dest.to_string()),
        Action::SetSysctl { key, .. } => file(sysctl_dropin(key)),
        Action::LoadKernelModule { name } => file(module_dropin(name)),
        Action::StartService {
            name: Service::KubeProxy,
        } => {
            // Its rules stay when it stops: its chains go with the network,
            // as `kube-proxy --cleanup` would remove them (the kubelet's
            // KUBE-* chains too).
            let mut v = vec![(
                Stage::Services,
                k,
                Action::DisableService {
                    name: Service::KubeProxy,
                },
            )];
            for (key, table) in [
                ("kube-proxy/chains-mangle", Table::Mangle),
                ("kube-proxy/chains-filter", Table::Filter),
                ("kube-proxy/chains-nat", Table::Nat),
            ] {
                v.push((
                    Stage::Network,
                    key,
                    Action::DeleteIptablesChains {
                        table,
                        chains: vec![KUBE_CHAINS.into()],
                    },
                ));
            }
            v
        }
        Action::StartService { name } => {
            vec![(Stage::Services, k, Action::DisableService { name: *name })]
        }
        Action::CreateBridge { name, .. } => {
            vec![(Stage::Network, k, Action::DeleteLink { name: name.clone() })]
        }
        Action::CreateVxlan(dev) => vec![(
            Stage::Network,
            k,
            Action::DeleteLink {
                name: dev.name.clone(),
            },
        )],
        Action::EnsureIptablesRule { table, rule } | Action::InsertIptablesRule { table, rule } => {
            vec![(
                Stage::Network,
                k,
                Action::DeleteIptablesRules {
                    table: *table,
                    rules: vec![Rule::clone(rule)],
                    chains: Vec::new(),
                },
            )]
        }
        Action::InstallPodRoutes { via, .. } => pod_routes(s, apply, i, k, via),
        // Nothing on the node to take back: checks, waits, the operator's
        // PKI, the fabric router (not the node's), images the runtime keeps,
        // what apply itself deleted, and what runs through the apiserver.
        Action::Preflight { .. }
        | Action::PullImage { .. }
        | Action::GenerateCa { .. }
        | Action::IssueCert { .. }
        | Action::GenerateServiceAccountKey
        | Action::GenerateTokens { .. }
        | Action::InstallFabricRoutes { .. }
        | Action::WaitHealthy { .. }
        | Action::ApplyManifest { .. }
        | Action::ValidateCluster { .. }
        | Action::DeleteLink { .. }
        | Action::DeleteIptablesRules { .. }
        | Action::DeleteRoutes { .. }
        | Action::SetLinkDown { .. }
        | Action::SetLinkMtu { .. }
        | Action::DeleteFdbEntries { .. }
        | Action::DeleteNeighbors { .. }
        | Action::StopService { .. }
        | Action::DeleteFile { .. }
        | Action::UnloadKernelModule { .. }
        | Action::ScaleDeployment { .. }
        | Action::PowerOff
        | Action::DisableService { .. }
        | Action::ClearDirectory { .. }
        | Action::DeleteIptablesChains { .. }
        | Action::RemoveEtcdMember { .. }
        | Action::DeleteNode { .. } => Vec::new(),
    }
}

/// The routes to the other nodes' pods, as `InstallPodRoutes` installs them
/// from the pod network table; over the overlay also each remote VTEP's
/// neighbour and FDB entry (routes first, then neighbours, then FDB: the
/// reverse of how they came).
fn pod_routes(
    s: &Scenario,
    apply: &Plan,
    i: usize,
    k: &'static str,
    via: &PodRouteVia,
) -> Vec<(Stage, &'static str, Action)> {
    let table = match apply.pod_network() {
        [] => pod_network_entries(s),
        t => t.to_vec(),
    };
    let me = &s.nodes[i].name;
    let others = table.iter().filter(|e| &e.node != me);
    match via {
        PodRouteVia::Underlay { dev } => vec![(
            Stage::Network,
            k,
            Action::DeleteRoutes {
                routes: others
                    .map(|e| Route::via(e.pod_cidr, e.node_ip, dev))
                    .collect(),
            },
        )],
        PodRouteVia::Overlay { dev } => {
            let (mut routes, mut neigh, mut fdb) = (Vec::new(), Vec::new(), Vec::new());
            for e in others {
                let vtep = e.pod_cidr.network();
                routes.push(Route {
                    onlink: true,
                    ..Route::via(e.pod_cidr, vtep, dev)
                });
                if let Some(mac) = e.vtep_mac {
                    neigh.push(Neighbor::permanent(vtep, dev, mac));
                    fdb.push(FdbEntry::vxlan(mac, dev, e.node_ip));
                }
            }
            vec![
                (Stage::Network, k, Action::DeleteRoutes { routes }),
                (
                    Stage::Network,
                    "net/pod-neighbors",
                    Action::DeleteNeighbors { entries: neigh },
                ),
                (
                    Stage::Network,
                    "net/pod-fdb",
                    Action::DeleteFdbEntries { entries: fdb },
                ),
            ]
        }
    }
}
