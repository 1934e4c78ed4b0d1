//! Rollouts: the order in which a change reaches a running cluster.
//!
//! A first apply brings every node up at once. A change to a running cluster
//! (a flag, a certificate, a new Kubernetes version) instead restarts its
//! components in the order kubeadm and the upstream version-skew policy
//! require: every etcd member, one at a time; then every apiserver, one at a
//! time; then each node's controller-manager and scheduler; then the node
//! agents (kubelet, kube-proxy, the container runtime) on control-plane and
//! etcd nodes one at a time, and on workers in batches of `max_unavailable`.
//!
//! A [`Rollout`] assigns each step a wave. A wave is one stage on a set of
//! nodes: the steps that (re)start that stage's components there and wait
//! for them to answer healthy. The executor starts a wave's steps only when
//! every earlier wave has finished, and stops the rollout at the first wave
//! with a failed step ([`crate::exec`]). Steps that restart nothing (files,
//! routes, binaries) belong to no wave: they run as soon as their
//! dependencies allow, and a running process keeps reading its old inputs
//! until its wave restarts it. A step that depends on a wave's step joins
//! that wave (it cannot run earlier anyway).
//!
//! A dependency of a wave's step on a step of a *later* wave is relaxed:
//! the planner's "the etcd manifest needs a running kubelet" is a first
//! bring-up order, and in a running cluster the kubelet still running from
//! before satisfies it. If it does not run, the wave's health wait fails
//! and the rollout stops there.
//!
//! Pure: the same plan and the same `max_unavailable` give the same waves.

use crate::plan::{Action, Asset, Component, Plan, Service, StepRef, Target};
use crate::scenario::Scenario;
use serde::Serialize;
use std::fmt;

/// The stages of a rollout, in the order the version-skew policy requires
/// (<https://kubernetes.io/releases/version-skew-policy/#supported-component-upgrade-order>):
/// etcd before the apiservers it serves, the apiservers before the
/// controllers and the kubelets that talk to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Etcd,
    Apiserver,
    /// kube-controller-manager and kube-scheduler.
    Controllers,
    /// kubelet, kube-proxy and the container runtime.
    NodeAgents,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::Etcd,
        Stage::Apiserver,
        Stage::Controllers,
        Stage::NodeAgents,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Etcd => "etcd",
            Stage::Apiserver => "kube-apiserver",
            Stage::Controllers => "kube-controller-manager, kube-scheduler",
            Stage::NodeAgents => "node agents",
        }
    }

    fn of_component(c: Component) -> Stage {
        match c {
            Component::Etcd => Stage::Etcd,
            Component::KubeApiserver => Stage::Apiserver,
            Component::KubeControllerManager | Component::KubeScheduler => Stage::Controllers,
        }
    }

    fn of_service(s: Service) -> Stage {
        match s {
            Service::Etcd => Stage::Etcd,
            Service::Kubelet
            | Service::KubeProxy
            | Service::Docker
            | Service::Containerd
            | Service::ApiserverProxy
            | Service::Network => Stage::NodeAgents,
        }
    }

    /// The stage a step (re)starts or waits for, if any: a service start, a
    /// static pod manifest (the kubelet recreates the pod when it changes),
    /// a health wait.
    pub fn of_action(a: &Action) -> Option<Stage> {
        match a {
            Action::StartService { name } => Some(Stage::of_service(*name)),
            Action::WriteFile {
                asset: Asset::StaticPod(c),
                ..
            } => Some(Stage::of_component(*c)),
            Action::WaitHealthy { component, .. } => Some(Stage::of_component(*component)),
            // Nothing else (re)starts a component: a new action that does
            // must say its stage here (no wildcard, so it cannot be missed).
            Action::WriteFile { .. }
            | Action::Preflight { .. }
            | Action::InstallBinary { .. }
            | Action::PullImage { .. }
            | Action::GenerateCa { .. }
            | Action::IssueCert { .. }
            | Action::GenerateServiceAccountKey
            | Action::GenerateTokens { .. }
            | Action::SetSysctl { .. }
            | Action::LoadKernelModule { .. }
            | Action::DeleteLink { .. }
            | Action::DeleteIptablesRules { .. }
            | Action::CreateBridge { .. }
            | Action::CreateVxlan(_)
            | Action::InstallPodRoutes { .. }
            | Action::InstallFabricRoutes { .. }
            | Action::EnsureIptablesRule { .. }
            | Action::ApplyManifest { .. }
            | Action::ValidateCluster { .. }
            | Action::DeleteRoutes { .. }
            | Action::InsertIptablesRule { .. }
            | Action::SetLinkDown { .. }
            | Action::SetLinkMtu { .. }
            | Action::DeleteFdbEntries { .. }
            | Action::DeleteNeighbors { .. }
            | Action::StopService { .. }
            | Action::DeleteFile { .. }
            | Action::UnloadKernelModule { .. }
            | Action::WriteText { .. }
            | Action::ScaleDeployment { .. }
            | Action::PowerOff
            | Action::DisableService { .. }
            | Action::ClearDirectory { .. }
            | Action::DeleteIptablesChains { .. }
            // A membership change and an API delete: nothing restarts.
            | Action::RemoveEtcdMember { .. }
            | Action::DeleteNode { .. } => None,
        }
    }
}

/// One stage on a set of nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wave {
    pub stage: Stage,
    /// Node indices, ascending.
    pub nodes: Vec<u32>,
    /// Node names, for messages.
    pub node_names: Vec<String>,
    /// The steps that (re)start the wave's components: `StartService` and
    /// static pod manifests. What is down while the wave runs.
    pub starts: Vec<StepRef>,
}

impl fmt::Display for Wave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.stage.name(), self.node_names.join(", "))
    }
}

/// The waves of a rollout and each step's wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollout {
    pub waves: Vec<Wave>,
    /// Per step: 0 for no wave, `k` for `waves[k - 1]`.
    pub wave_of: Vec<u32>,
}

impl Rollout {
    /// Whether the dependency `dep` of `step` is relaxed: `step` is a
    /// wave's and `dep` belongs to a later wave (see the module
    /// documentation).
    pub fn relaxed(&self, step: StepRef, dep: StepRef) -> bool {
        let own = self.wave_of[step as usize];
        own > 0 && self.wave_of[dep as usize] > own
    }

    /// The wave a step belongs to, if any.
    pub fn wave(&self, step: StepRef) -> Option<&Wave> {
        match self.wave_of[step as usize] {
            0 => None,
            k => self.waves.get(k as usize - 1),
        }
    }

    /// The waves, one a line: `3/12 kube-apiserver on cp-1`.
    pub fn summary(&self) -> String {
        let n = self.waves.len();
        self.waves
            .iter()
            .enumerate()
            .map(|(i, w)| format!("  {}/{n} {w}\n", i + 1))
            .collect()
    }
}

/// The rollout of `plan` over a running cluster: control-plane and etcd
/// nodes one at a time, workers' node agents in batches of
/// `max_unavailable` (at least 1). Only stages the plan has on a node make
/// a wave there.
pub fn rollout(plan: &Plan, s: &Scenario, max_unavailable: usize) -> Rollout {
    rollout_joining(plan, s, max_unavailable, &[])
}

/// [`rollout`] over a cluster that `joining` nodes (names) join in this
/// run: they run nothing yet, so they are brought up as in a first apply,
/// in no wave (a rollout would wait for a kubelet that is not there).
pub fn rollout_joining(
    plan: &Plan,
    s: &Scenario,
    max_unavailable: usize,
    joining: &[String],
) -> Rollout {
    let n_nodes = plan.nodes.len();
    let joins = |i: u32| joining.contains(&plan.nodes[i as usize]);
    // Which stages each node has steps of.
    let mut has = vec![[false; 4]; n_nodes];
    for step in &plan.steps {
        if let (Target::Node(i), Some(st)) = (step.target, Stage::of_action(&step.action)) {
            has[i as usize][st as usize] |= !joins(i);
        }
    }
    let critical = |i: usize| {
        s.nodes
            .get(i)
            .is_some_and(|n| n.roles.control_plane || n.roles.etcd)
    };
    let mut waves: Vec<Wave> = Vec::new();
    // (stage, node) → wave number (1-based).
    let mut index = vec![[0u32; 4]; n_nodes];
    for st in Stage::ALL {
        let nodes: Vec<usize> = (0..n_nodes).filter(|&i| has[i][st as usize]).collect();
        let (one_by_one, batched): (Vec<usize>, Vec<usize>) = if st == Stage::NodeAgents {
            nodes.iter().partition(|&&i| critical(i))
        } else {
            (nodes, Vec::new())
        };
        let groups = one_by_one
            .chunks(1)
            .chain(batched.chunks(max_unavailable.max(1)));
        for g in groups {
            waves.push(Wave {
                stage: st,
                nodes: g.iter().map(|&i| i as u32).collect(),
                node_names: g.iter().map(|&i| plan.nodes[i].clone()).collect(),
                starts: Vec::new(),
            });
            for &i in g {
                index[i][st as usize] = waves.len() as u32;
            }
        }
    }
    // Each step's wave: its own stage's wave, or the latest of its
    // dependencies' (a step that restarts nothing runs when they allow).
    let mut wave_of = vec![0u32; plan.steps.len()];
    for (k, step) in plan.steps.iter().enumerate() {
        wave_of[k] = match (step.target, Stage::of_action(&step.action)) {
            (Target::Node(i), Some(st)) if !joins(i) => {
                let w = index[i as usize][st as usize];
                if !matches!(step.action, Action::WaitHealthy { .. }) {
                    waves[w as usize - 1].starts.push(k as StepRef);
                }
                w
            }
            _ => plan
                .deps(step)
                .iter()
                .map(|&d| wave_of[d as usize])
                .max()
                .unwrap_or(0),
        };
    }
    Rollout { waves, wave_of }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha() -> (Scenario, Plan) {
        let text = "cluster: {name: t, kubernetesVersion: \"1.30.0\"}\nnodes:\n  - {name: cp-1, ip: 192.168.0.1, roles: [control-plane, etcd]}\n  - {name: cp-2, ip: 192.168.0.2, roles: [control-plane, etcd]}\n  - {name: cp-3, ip: 192.168.0.3, roles: [control-plane, etcd]}\n  - {name: w-1, ip: 192.168.0.4}\n  - {name: w-2, ip: 192.168.0.5}\n  - {name: w-3, ip: 192.168.0.6}\netcd:\n  members: [cp-1, cp-2, cp-3]\n";
        let s = crate::load("t.yaml", text, None).unwrap().scenario;
        let p = crate::plan::plan(&s);
        (s, p)
    }

    #[test]
    fn waves_follow_the_version_skew_order_one_control_plane_node_at_a_time() {
        let (s, p) = ha();
        let r = rollout(&p, &s, 2);
        let names: Vec<String> = r.waves.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            names,
            [
                "etcd on cp-1",
                "etcd on cp-2",
                "etcd on cp-3",
                "kube-apiserver on cp-1",
                "kube-apiserver on cp-2",
                "kube-apiserver on cp-3",
                "kube-controller-manager, kube-scheduler on cp-1",
                "kube-controller-manager, kube-scheduler on cp-2",
                "kube-controller-manager, kube-scheduler on cp-3",
                "node agents on cp-1",
                "node agents on cp-2",
                "node agents on cp-3",
                "node agents on w-1, w-2",
                "node agents on w-3",
            ]
        );
        assert_eq!(r.wave_of.len(), p.steps.len());
    }

    #[test]
    fn every_dependency_is_in_an_earlier_or_the_same_wave_or_relaxed_from_a_later_one() {
        let (s, p) = ha();
        let r = rollout(&p, &s, 1);
        let mut relaxed = Vec::new();
        for (k, step) in p.steps.iter().enumerate() {
            for &d in p.deps(step) {
                if r.relaxed(k as StepRef, d) {
                    // Only a wave's own step may relax a dependency, and
                    // only on a step that (re)starts a later stage.
                    assert!(
                        Stage::of_action(&step.action).is_some(),
                        "{}",
                        p.step_id(step)
                    );
                    relaxed.push(format!(
                        "{} -> {}",
                        p.step_id(step),
                        p.step_id(&p.steps[d as usize])
                    ));
                }
            }
        }
        // The bring-up order "static pods need a running kubelet" is what is relaxed.
        assert!(relaxed.contains(&"cp-1/manifest/etcd -> cp-1/service/kubelet".to_string()));
        assert!(
            relaxed.iter().all(|r| r.ends_with("/service/kubelet")),
            "{relaxed:?}"
        );
        let validate = p
            .steps
            .iter()
            .position(|s| s.key == "validate/cluster")
            .unwrap();
        assert_eq!(
            r.wave_of[validate] as usize,
            r.waves.len(),
            "validation comes last"
        );
    }

    #[test]
    fn a_joining_node_is_brought_up_in_no_wave() {
        let (s, p) = ha();
        let r = rollout_joining(&p, &s, 1, &["w-3".to_string()]);
        let names: Vec<String> = r.waves.iter().map(|w| w.to_string()).collect();
        assert_eq!(names.last().map(String::as_str), Some("node agents on w-2"));
        for (k, step) in p.steps.iter().enumerate() {
            if step.target == Target::Node(5) {
                assert_eq!(r.wave_of[k], 0, "{}", p.step_id(step));
            }
        }
    }

    #[test]
    fn the_same_plan_gives_the_same_rollout() {
        let (s, p) = ha();
        assert_eq!(rollout(&p, &s, 1), rollout(&p, &s, 1));
    }
}
