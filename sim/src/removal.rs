//! Removing nodes on the simulated cluster (`kscratch check NEW --from OLD`
//! when NEW has fewer nodes).
//!
//! The old scenario's plan runs on fresh machines; the departed machines
//! then leave the world (unplugged, as a decommissioned machine is), and the
//! new plan, with its removal steps ([`kscratch_core::plan::plan_removing`]),
//! runs over what is left through the shared executor, as `kscratch apply`
//! runs it against the applied record. Then:
//! - every remaining node, the fabric router, the etcd membership and the
//!   API's Node objects are searched for anything naming a departed node
//!   (its pod route, its VXLAN neighbour or FDB entry, a route via its
//!   address, its member, its Node object): [`Removed::traces`];
//! - the test pods and Services are made and every check runs;
//! - the same plan is applied once more: it must change nothing.
//!
//! The remaining nodes keep what the old plan gave them; a node-network
//! step for a new pod network table (`ip route replace` and friends) leaves
//! the old table's other entries where they were, as the kernel does
//! (`backend.rs`), so a departed node's routes stay unless a removal step
//! deletes them.

use crate::backend::SimBackend;
use crate::prepare;
use crate::rollout::Checked;
use crate::world::LinkKind;
use crate::{build, components};
use ipnet::IpNet;
use kscratch_core::exec::{self, ExecOptions, Outcome, Quiet};
use kscratch_core::net::route::RouteDst;
use kscratch_core::plan::Plan;
use kscratch_core::scenario::Scenario;
use serde::Serialize;
use std::net::IpAddr;

/// A removal on the simulated cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub departed: Vec<String>,
    /// Steps of the old plan that failed or were skipped.
    pub old_problems: Vec<String>,
    /// Steps of the removal apply that changed something.
    pub changed: Vec<String>,
    /// Steps of the removal apply that failed or were skipped, with why.
    pub problems: Vec<String>,
    /// What still names a departed node afterwards (none when it is gone).
    pub traces: Vec<String>,
    /// Every check, on the cluster after the removal.
    pub after: Checked,
    /// Steps that a second apply of the same plan changed (none: idempotent).
    pub changed_again: Vec<String>,
}

impl Removed {
    pub fn passed(&self) -> bool {
        self.old_problems.is_empty()
            && self.problems.is_empty()
            && self.traces.is_empty()
            && self.after.passed()
            && self.changed_again.is_empty()
    }
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "removal of {}", self.departed.join(", "))?;
        for p in &self.old_problems {
            writeln!(f, "  old plan: {p}")?;
        }
        writeln!(f, "apply: {} steps changed", self.changed.len())?;
        for c in self.changed.iter().filter(|c| c.contains("/remove/")) {
            writeln!(f, "  {c}")?;
        }
        for p in &self.problems {
            writeln!(f, "  problem: {p}")?;
        }
        if self.traces.is_empty() {
            writeln!(f, "traces: none (no route, neighbour, FDB entry, network description line, etcd member or Node object names a removed node)")?;
        } else {
            writeln!(f, "traces left:")?;
            for t in &self.traces {
                writeln!(f, "  {t}")?;
            }
        }
        if self.after.passed() {
            writeln!(f, "checks: every check passes")?;
        } else {
            writeln!(f, "checks: {}", self.after.summary())?;
            for r in self.after.reasons() {
                writeln!(f, "  {r}")?;
            }
        }
        writeln!(f, "apply again: {} steps changed", self.changed_again.len())?;
        for c in &self.changed_again {
            writeln!(f, "  {c}")?;
        }
        writeln!(
            f,
            "verdict: {}",
            if self.passed() {
                "the nodes are removed without a trace, and the cluster is whole"
            } else {
                "FAILED"
            }
        )
    }
}

/// Why a removal cannot be simulated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemovalError {
    #[error("the removal simulation needs the new scenario's nodes to be the old one's, in order, less the removed ones: {old:?} → {new:?}")]
    Nodes { old: Vec<String>, new: Vec<String> },
    #[error("{0}")]
    World(String),
}

/// Applies `old`, removes the machines `new_plan` names as departed, and
/// applies `new_plan` (planned with them departed) over what is left.
pub fn remove(
    old: &Scenario,
    old_plan: &Plan,
    new: &Scenario,
    new_plan: &Plan,
) -> Result<Removed, RemovalError> {
    let kept: Vec<String> = old_plan
        .nodes
        .iter()
        .filter(|n| !new_plan.departed.contains(n))
        .cloned()
        .collect();
    if kept != new_plan.nodes {
        return Err(RemovalError::Nodes {
            old: old_plan.nodes.clone(),
            new: new_plan.nodes.clone(),
        });
    }
    let backend = SimBackend::new(build::world(old));
    let run = |plan: &Plan, s: &Scenario| {
        futures::executor::block_on(exec::execute(
            plan,
            s,
            &backend,
            &ExecOptions::sequential(),
            &mut Quiet,
        ))
    };
    let first = run(old_plan, old);
    let old_problems = problems(old_plan, &first.outcomes);
    {
        let mut sim = backend.state.lock().unwrap_or_else(|p| p.into_inner());
        sim.world
            .remove_nodes(&new_plan.departed)
            .map_err(RemovalError::World)?;
    }
    let removal = run(new_plan, new);
    let changed = changed(new_plan, &removal.outcomes);
    let problems = problems(new_plan, &removal.outcomes);
    let gone: Vec<(String, IpAddr, IpNet)> = old
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| new_plan.departed.contains(&n.name))
        .map(|(i, n)| (n.name.clone(), n.ip, old.pod_cidr(i)))
        .collect();
    let (traces, after) = {
        let mut sim = backend.state.lock().unwrap_or_else(|p| p.into_inner());
        let traces = traces(&sim, new, &gone);
        let api = prepare::ApiObjects::for_check(new_plan, &sim.addons, 0);
        let prepared = prepare::prepare(&mut sim.world, &api);
        (traces, Checked::of(&sim.world, new, &prepared, &[]))
    };
    let again = run(new_plan, new);
    Ok(Removed {
        departed: new_plan.departed.clone(),
        old_problems,
        changed,
        problems,
        traces,
        after,
        changed_again: self::changed(new_plan, &again.outcomes),
    })
}

fn changed(plan: &Plan, outcomes: &[Outcome]) -> Vec<String> {
    plan.steps
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| **o == Outcome::Changed)
        .map(|(st, _)| plan.step_id(st))
        .collect()
}

fn problems(plan: &Plan, outcomes: &[Outcome]) -> Vec<String> {
    plan.steps
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| !o.succeeded())
        .map(|(st, o)| match o {
            Outcome::Failed { error } => format!("{}: failed: {}", plan.step_id(st), error),
            Outcome::Skipped { reason } => format!("{}: skipped: {reason}", plan.step_id(st)),
            other => format!("{}: {}", plan.step_id(st), other.name()),
        })
        .collect()
}

/// Everything on the remaining cluster that still names a departed node:
/// a route to its pod CIDR (unless a remaining node holds that CIDR now) or
/// via its address, its line in the boot-time network description, a VXLAN neighbour for its VTEP or FDB entry to its
/// address, the fabric router's route to it, its etcd membership (in the
/// membership or a member's `--initial-cluster`), its Node object.
fn traces(
    sim: &crate::backend::Sim,
    new: &Scenario,
    gone: &[(String, IpAddr, IpNet)],
) -> Vec<String> {
    let mut out = Vec::new();
    let held: Vec<IpNet> = (0..new.nodes.len()).map(|i| new.pod_cidr(i)).collect();
    for (name, ip, cidr) in gone {
        for node in &sim.world.nodes {
            for r in node.routes.list() {
                let to_it = r.dst == RouteDst::Net(*cidr) && !held.contains(cidr);
                if to_it || r.via == Some(*ip) {
                    out.push(format!("{}: route `{}` ({name})", node.name, r.emit()));
                }
            }
            for l in node.links.values() {
                if !matches!(l.kind, LinkKind::Vxlan(_)) {
                    continue;
                }
                let (fdb, neigh) = crate::backend::vxlan_lists(node, &l.name);
                for (mac, dst) in fdb.iter().filter(|(_, d)| **d == *ip) {
                    out.push(format!(
                        "{}: fdb `{mac} dst {dst}` on {} ({name})",
                        node.name, l.name
                    ));
                }
                if !held.contains(cidr) {
                    if let Some(mac) = neigh.get(&cidr.network()) {
                        out.push(format!(
                            "{}: neighbour `{} lladdr {mac}` on {} ({name})",
                            node.name,
                            cidr.network(),
                            l.name
                        ));
                    }
                }
            }
            // The boot-time network description would bring its route back.
            let conf = kscratch_core::plan::Asset::NetworkDescription.path();
            if let Ok(text) = crate::files::read(node, conf) {
                if text
                    .lines()
                    .any(|l| l.starts_with(&format!("node {name} ")))
                {
                    out.push(format!("{}: {conf} lists {name}", node.name));
                }
            }
            if components::etcd_initial_names(node).is_some_and(|m| m.contains(name)) {
                out.push(format!(
                    "{}: etcd --initial-cluster names {name}",
                    node.name
                ));
            }
        }
        if sim.world.underlay.fabric_routes.get(cidr) == Some(ip) {
            out.push(format!("fabric router: route `{cidr} via {ip}` ({name})"));
        }
        if sim.etcd_membership.contains(name) {
            out.push(format!("etcd member list: {name}"));
        }
        if sim.api_nodes.contains(name) {
            out.push(format!("Node object {name}"));
        }
    }
    out
}
