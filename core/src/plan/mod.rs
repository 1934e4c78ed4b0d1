//! The plan: a deterministic DAG of typed steps.
//!
//! Each step has a stable id (`node-1/net/bridge`), a target (the operator's
//! machine, a node, or the underlay's fabric router), a typed [`Action`] and
//! its dependencies. Data that every node shares — the pod network table, the
//! Service address plan — is one [`Artifact`] referenced by many steps, so the
//! plan grows with the number of nodes, not with its square.
//!
//! Files are referenced as [`Asset`]s: the plan says *which* file goes where
//! with which mode; the bytes are rendered later (`kscratch render`, apply).
//! Key material never appears in a plan.

mod action;
mod asset;
pub mod damage;
pub mod digest;
mod output;
pub mod reset;

// The planner: `planner::plan` orders the phases; each phase is a module,
// over the step builder and the cluster and per-node contexts.
mod addons;
mod binaries;
mod builder;
mod context;
mod control_plane;
mod etcd;
mod node_agents;
mod node_base;
mod pki;
mod planner;
mod preflight;
mod removal;
mod validate;

pub use action::*;
pub use asset::*;
pub use damage::{damage, Damage, FaultError};
pub use digest::{file_digests, fingerprint, FileDigest};
pub use output::{to_dot, to_json, Summary};
pub use planner::{
    bridge_mac, docker_default_rules, masquerade_rule, plan, plan_removing, pod_network_entries,
    vtep_mac,
};
pub use removal::Departed;
pub use reset::{reset, Reset, ResetOptions, ResetRefusal};

use crate::scenario::KubeVersion;
use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;

/// The guide's phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Preflight,
    Binaries,
    Pki,
    NodeBase,
    NodeAgents,
    Etcd,
    ControlPlane,
    Addons,
    Validate,
    /// What-if damage to a running cluster ([`damage`]): never in a build plan.
    Damage,
    /// Taking back what the plan put on a node ([`reset`]): never in a build plan.
    Reset,
}

impl Phase {
    pub const ALL: [Phase; 11] = [
        Phase::Preflight,
        Phase::Binaries,
        Phase::Pki,
        Phase::NodeBase,
        Phase::NodeAgents,
        Phase::Etcd,
        Phase::ControlPlane,
        Phase::Addons,
        Phase::Validate,
        Phase::Damage,
        Phase::Reset,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Binaries => "binaries",
            Phase::Pki => "pki",
            Phase::NodeBase => "node-base",
            Phase::NodeAgents => "node-agents",
            Phase::Etcd => "etcd",
            Phase::ControlPlane => "control-plane",
            Phase::Addons => "addons",
            Phase::Validate => "validate",
            Phase::Damage => "damage",
            Phase::Reset => "reset",
        }
    }
}

/// Where a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// The operator's machine: where keys are generated and assets rendered.
    Local,
    /// A node, by index into the scenario's nodes.
    Node(u32),
    /// The underlay router / cloud route table (`fabric` pod traffic).
    Fabric,
}

/// Index of a step in [`Plan::steps`].
pub type StepRef = u32;

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub target: Target,
    /// Unique within the target; the id is `<target>/<key>`.
    pub key: &'static str,
    pub phase: Phase,
    pub action: Action,
    /// Range into [`Plan::dep_pool`]: one flat pool instead of a vector per step.
    pub deps: std::ops::Range<u32>,
    /// The departed node a removal step is about (index into
    /// [`Plan::departed`]): its id is `<target>/<key>/<that node>`.
    pub subject: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub cluster: String,
    pub version: KubeVersion,
    /// Node names, indexed by `Target::Node`.
    pub nodes: Vec<String>,
    pub artifacts: Vec<Artifact>,
    /// Topologically ordered: every dependency comes before its dependents.
    pub steps: Vec<Step>,
    /// The dependencies of all steps; see [`Plan::deps`].
    pub dep_pool: Vec<StepRef>,
    /// Where `InstallBinary` finds its files on the operator's machine.
    pub release_dir: String,
    /// Nodes the applied record has and the scenario does not, whose traces
    /// the removal steps delete ([`plan_removing`]); named by [`Step::subject`].
    pub departed: Vec<String>,
}

impl Plan {
    pub fn target_name(&self, t: Target) -> &str {
        match t {
            Target::Local => "local",
            Target::Fabric => "fabric",
            Target::Node(i) => &self.nodes[i as usize],
        }
    }

    /// `node-1/net/bridge`; per-node certificates issued locally are
    /// `local/pki/kubelet-client/node-1`; removal steps name the departed
    /// node: `node-1/remove/route/node-4`.
    pub fn step_id(&self, s: &Step) -> String {
        if let Some(k) = s.subject {
            return format!(
                "{}/{}/{}",
                self.target_name(s.target),
                s.key,
                self.departed[k as usize]
            );
        }
        match &s.action {
            Action::IssueCert { node: Some(n), .. } => {
                format!("{}/{}/{n}", self.target_name(s.target), s.key)
            }
            _ => format!("{}/{}", self.target_name(s.target), s.key),
        }
    }

    /// Steps that must succeed before `s`; always earlier in [`Plan::steps`].
    pub fn deps(&self, s: &Step) -> &[StepRef] {
        &self.dep_pool[s.deps.start as usize..s.deps.end as usize]
    }

    pub fn artifact(&self, id: ArtifactId) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.id() == id)
    }

    pub fn pod_network(&self) -> &[PodNetworkEntry] {
        self.artifacts
            .iter()
            .find_map(|a| match a {
                Artifact::PodNetwork(v) => Some(v.as_slice()),
                _ => None,
            })
            .unwrap_or(&[])
    }
}

/// Shared, cluster-wide data: stored once, referenced by id from many steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "artifact", content = "data", rename_all = "kebab-case")]
pub enum Artifact {
    /// One entry per node: the table routes, fabric routes and VXLAN FDBs come from.
    PodNetwork(Vec<PodNetworkEntry>),
    /// The Service address plan.
    ServicePlan(ServicePlan),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactId {
    PodNetwork,
    ServicePlan,
}

impl Artifact {
    pub fn id(&self) -> ArtifactId {
        match self {
            Artifact::PodNetwork(_) => ArtifactId::PodNetwork,
            Artifact::ServicePlan(_) => ArtifactId::ServicePlan,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PodNetworkEntry {
    pub node: String,
    pub node_ip: IpAddr,
    pub pod_cidr: IpNet,
    /// `NODE_X_BRIDGE_ADDR`: first address of the pod CIDR, with the pod CIDR's prefix.
    pub bridge_addr: IpNet,
    /// VXLAN tunnel endpoint MAC, derived from the node IP (overlay only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<crate::net::route::MacAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePlan {
    pub service_cidr: IpNet,
    pub kubernetes_ip: IpAddr,
    pub dns_ip: IpAddr,
    pub dns_domain: String,
}
