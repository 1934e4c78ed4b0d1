//! kscratch-sim: the simulated cluster.
//!
//! Virtual Linux nodes with the same vocabulary and semantics as real ones
//! (links, addresses, routes, sysctls, netfilter), an underlay, fake runtimes,
//! kubelet and kube-proxy, a packet tracer and the reachability checks.
//!
//! `check` runs the plan through the shared executor and [`backend::SimBackend`],
//! lets the cluster start test pods and Services ([`prepare`]), applies
//! what-if faults, then proves or refutes the network model ([`checks`]).

pub mod backend;
pub mod build;
pub mod checks;
pub mod classes;
pub mod components;
pub mod faults;
pub mod files;
pub mod kube_proxy;
pub mod netfilter;
pub mod packet;
pub mod prepare;
pub mod removal;
pub mod report;
pub mod rollout;
pub mod routes;
pub mod trace;
pub mod verify;
pub mod walk;
pub mod world;

#[cfg(test)]
mod follows_files;

use kscratch_core::exec::{self, ExecOptions, Quiet};
use kscratch_core::plan::{FaultError, Plan};
use kscratch_core::scenario::{Fault, Scenario};
use std::fmt;

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Faults on top of the scenario's own `faults:` list.
    pub faults: Vec<Fault>,
    /// Synthetic Services added to the test ones (scale runs).
    pub extra_services: usize,
}

/// A simulated cluster after the plan, the test objects and the faults.
pub struct Simulated {
    pub world: world::World,
    pub apply: exec::Report,
    pub prepared: prepare::Prepared,
    pub faults: Vec<Fault>,
}

/// Runs the plan on a fresh simulated cluster, starts test pods and Services,
/// and applies the faults. Errors name a fault that cannot apply.
///
/// The scenario is read here for what is not a node's behaviour: the
/// machines as handed over ([`build::world`]), the executor's `StepCx`
/// (whose only use in the simulator is [`kscratch_core::exec::StepCx::file_bytes`],
/// the bytes of a written file), and the faults to inject.
pub fn simulate(s: &Scenario, plan: &Plan, opts: &CheckOptions) -> Result<Simulated, SimError> {
    simulate_wrapped(s, plan, opts, &|b| Box::new(b))
}

/// [`simulate`], with the plan executed through `wrap(&simulator)`: a
/// wrapper backend (tracing, recording, or a test that changes a file as a
/// renderer bug would).
pub fn simulate_wrapped(
    s: &Scenario,
    plan: &Plan,
    opts: &CheckOptions,
    wrap: &dyn for<'b> Fn(&'b backend::SimBackend) -> Box<dyn exec::Backend + 'b>,
) -> Result<Simulated, SimError> {
    let backend = backend::SimBackend::new(build::world(s));
    let apply = futures::executor::block_on(exec::execute(
        plan,
        s,
        &*wrap(&backend),
        &ExecOptions::sequential(),
        &mut Quiet,
    ));
    let sim = backend.into_sim();
    // What the cluster's API holds: the checks' test objects and what the
    // plan applied. The scenario is not an input of `prepare`.
    let api = prepare::ApiObjects::for_check(plan, &sim.addons, opts.extra_services);
    let mut world = sim.world;
    let faults: Vec<Fault> = s.faults.iter().chain(&opts.faults).cloned().collect();
    let damage = kscratch_core::plan::damage(s, &faults).map_err(SimError::Faults)?;
    world = faults::run(world, s, &damage.before_workload)?;
    let mut prepared = prepare::prepare(&mut world, &api);
    world = faults::run(world, s, &damage.live)?;
    faults::resync_services(&mut world, &mut prepared);
    Ok(Simulated {
        world,
        apply,
        prepared,
        faults,
    })
}

/// `kscratch check`: simulate, then run every check.
pub fn check(s: &Scenario, plan: &Plan, opts: &CheckOptions) -> Result<report::Report, SimError> {
    let sim = simulate(s, plan, opts)?;
    let classes = classes::Classes::compute(&sim.world, s);
    let (results, matrix) = checks::run_all(&checks::CheckInput {
        world: &sim.world,
        scenario: s,
        prepared: &sim.prepared,
        classes: &classes,
        restarting: &[],
    });
    Ok(report::Report::new(
        s, plan, &sim, &classes, results, matrix,
    ))
}

/// Why the simulator produced no simulated cluster. (A plan step that fails
/// is not one: it is part of [`Simulated::apply`], and the checks report it.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// Faults that cannot apply to the scenario.
    #[error("{}", Lines(.0))]
    Faults(Vec<FaultError>),
    /// Damage steps the simulated cluster could not take.
    #[error("{}", Lines(.0))]
    Damage(Vec<faults::DamageStepError>),
}

/// One item a line.
struct Lines<'a, T>(&'a [T]);

impl<T: fmt::Display> fmt::Display for Lines<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, x) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}
