//! What-if faults on a simulated cluster: their damage plans
//! ([`kscratch_core::plan::damage`]) run through the shared executor on the
//! simulator's backend, exactly as `kscratch apply --fault` runs them over
//! SSH. Nothing here changes the world by itself.
//!
//! Damage to a daemon's configuration (docker's bridge and masquerade, the
//! pod MTU, kube-proxy stopped) runs before the test pods and Services
//! exist, as on a node whose daemon was (re)started that way before the
//! workload came; damage to live state (a node off, a NIC down, a route or
//! an FDB entry deleted, a sysctl flipped, a rule inserted or deleted, the
//! DNS Deployment scaled to zero) runs after, on the running cluster.

use crate::backend::SimBackend;
use crate::kube_proxy::{KubeProxyConfig, KubeProxyRules};
use crate::prepare::{kube_proxy_rules_for, Prepared};
use crate::world::*;
use kscratch_core::exec::{self, ExecOptions, Outcome, Quiet};
use kscratch_core::plan::Plan;
use kscratch_core::scenario::Scenario;
use std::collections::BTreeSet;

/// Runs one stage of a damage plan on the world. A step that fails (the
/// damage cannot be done, e.g. a link that does not exist) is an error
/// naming the step, as `kscratch apply --fault` would report it.
pub fn run(world: World, s: &Scenario, damage: &Plan) -> Result<World, crate::SimError> {
    if damage.steps.is_empty() {
        return Ok(world);
    }
    let backend = SimBackend::new(world);
    let report = futures::executor::block_on(exec::execute(
        damage,
        s,
        &backend,
        &ExecOptions::sequential(),
        &mut Quiet,
    ));
    let mut problems = Vec::new();
    for (step, outcome) in damage.steps.iter().zip(&report.outcomes) {
        match outcome {
            Outcome::Failed { error } => problems.push(DamageStepError::Failed {
                step: damage.step_id(step),
                message: error.message.clone(),
            }),
            Outcome::Skipped { reason } => problems.push(DamageStepError::Skipped {
                step: damage.step_id(step),
                reason: reason.clone(),
            }),
            Outcome::Ok | Outcome::Changed | Outcome::WouldChange => {}
        }
    }
    if !problems.is_empty() {
        return Err(crate::SimError::Damage(problems));
    }
    Ok(backend.into_sim().world)
}

/// A damage step the simulated cluster could not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DamageStepError {
    #[error("damage step {step}: {message}")]
    Failed { step: String, message: String },
    #[error("damage step {step} skipped: {reason}")]
    Skipped { step: String, reason: String },
}

/// What the cluster does by itself after live damage: an endpoint whose pod
/// is gone leaves its Service's Endpoints, and every running kube-proxy that
/// programmed the Services reprograms them.
pub fn resync_services(world: &mut World, prepared: &mut Prepared) {
    // Endpoints are pods or nodes (the apiserver's); one that no longer
    // answers for its address is a pod that is gone.
    let mut changed = false;
    for svc in &mut prepared.services {
        let before = svc.endpoints.len();
        svc.endpoints
            .retain(|(ip, _)| world.owners.contains_key(ip));
        changed |= svc.endpoints.len() != before;
    }
    if changed {
        program_services(world, prepared);
    }
}

/// Every running kube-proxy programs the Services, with the settings it read
/// at start (after endpoints changed, or after it restarted: a kube-proxy
/// syncs every Service when it starts).
pub fn program_services(world: &mut World, prepared: &mut Prepared) {
    let skipped: BTreeSet<String> = prepared.no_proxy.iter().map(|(n, _)| n.clone()).collect();
    // Each kube-proxy reprograms with the settings it read at start; the
    // Services the apiserver refused stay unprogrammed.
    let services: Vec<_> = prepared
        .services
        .iter()
        .filter(|d| !prepared.refused.iter().any(|(k, _)| *k == d.key()))
        .cloned()
        .collect();
    let mut programmed: Vec<(KubeProxyConfig, Result<KubeProxyRules, String>)> = Vec::new();
    let mut failed = Vec::new();
    for n in world.nodes.iter_mut() {
        if skipped.contains(&n.name) || !n.up || !n.running("kube-proxy") {
            continue;
        }
        let Some(config) = n.kube_proxy.as_ref().map(|k| k.config.clone()) else {
            continue;
        };
        let k = match programmed.iter().position(|(c, _)| *c == config) {
            Some(k) => k,
            None => {
                let rules = kube_proxy_rules_for(&services, &config);
                programmed.push((config, rules));
                programmed.len() - 1
            }
        };
        match &programmed[k].1 {
            Ok(rules) => {
                if let Err(e) = rules.install(&mut n.netfilter) {
                    failed.push((
                        n.name.clone(),
                        format!("kube-proxy: iptables-restore failed: {e}"),
                    ));
                }
            }
            Err(e) => failed.push((n.name.clone(), e.clone())),
        }
    }
    prepared.no_proxy.extend(failed);
}
