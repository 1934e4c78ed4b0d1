//! A rollout on the simulated cluster (`kscratch check NEW --from OLD`).
//!
//! The old scenario's plan runs on fresh machines, the cluster starts its
//! test pods and Services, and every check runs: the cluster as it is
//! today. Then the new plan runs over it through the shared executor as a
//! rollout ([`kscratch_core::rollout`]), wave by wave, as `kscratch apply`
//! runs it on a recorded cluster. At each wave every check runs twice:
//! - **during**: on the cluster as the wave found it, with the components
//!   the wave restarted stopped (each service whose start step changed,
//!   each static pod whose manifest changed, removed as the kubelet does
//!   when a manifest goes): what the cluster looks like while they restart;
//! - **after**: on the cluster once the wave's steps ran, each kube-proxy
//!   that restarted having synced the Services again.
//!
//! A wave's components restart together (apply starts a wave's steps at
//! once), so "during" has all of them down at the same time: a cluster
//! whole with all of them down is whole with any of them down. A component
//! whose inputs did not change keeps running, as on real machines.

use crate::backend::SimBackend;
use crate::checks::{self, CheckResult};
use crate::classes::Classes;
use crate::prepare::{self, Prepared};
use crate::world::World;
use crate::{build, faults, SimError};
use kscratch_core::exec::{self, ExecOptions, Observer, Outcome, Quiet};
use kscratch_core::plan::{Action, Asset, Component, Phase, Plan, Service, Step, StepRef, Target};
use kscratch_core::rollout::Rollout;
use kscratch_core::scenario::Scenario;
use serde::Serialize;
use std::collections::BTreeSet;

/// The checks at one point of the rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checked {
    pub results: Vec<CheckResult>,
}

impl Checked {
    pub(crate) fn of(
        world: &World,
        s: &Scenario,
        prepared: &Prepared,
        restarting: &[(usize, Component)],
    ) -> Checked {
        let classes = Classes::compute(world, s);
        let (results, _) = checks::run_all(&checks::CheckInput {
            world,
            scenario: s,
            prepared,
            classes: &classes,
            restarting,
        });
        Checked { results }
    }

    pub fn passed(&self) -> bool {
        self.results.iter().all(CheckResult::passed)
    }

    /// `pod-to-pod ok, apiserver FAILED (3/6)`.
    pub fn summary(&self) -> String {
        self.results
            .iter()
            .map(|r| {
                if r.passed() {
                    format!("{} ok", r.kind.name())
                } else {
                    format!("{} FAILED ({}/{})", r.kind.name(), r.failed, r.probes)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The first failure's reason of each failed check.
    pub fn reasons(&self) -> Vec<String> {
        self.results
            .iter()
            .filter(|r| !r.passed())
            .map(|r| match r.failures.first() {
                Some(f) => format!("{}: {}", r.kind.name(), f.reason),
                None => format!("{}: failed", r.kind.name()),
            })
            .collect()
    }
}

/// One wave of the rollout on the simulated cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveRun {
    /// 1-based.
    pub wave: u32,
    /// `kube-apiserver on cp-1`.
    pub name: String,
    /// Steps of the wave that changed something (a restart is a change).
    pub changed: Vec<String>,
    /// The first step of the wave that failed, which stopped the rollout.
    pub failed: Option<String>,
    pub during: Checked,
    pub after: Checked,
}

/// A whole rollout on the simulated cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolledOut {
    pub max_unavailable: usize,
    /// The old cluster, converged, before the rollout.
    pub before: Checked,
    /// Steps of the old plan that failed or were skipped: the old cluster
    /// was not whole to begin with.
    pub old_problems: Vec<String>,
    pub waves: Vec<WaveRun>,
    /// Steps of the new plan that changed something outside any wave.
    pub changed_outside_waves: Vec<String>,
}

impl RolledOut {
    /// Whether every check passed at every point and every wave ran.
    pub fn passed(&self) -> bool {
        self.before.passed()
            && self
                .waves
                .iter()
                .all(|w| w.failed.is_none() && w.during.passed() && w.after.passed())
    }
}

impl std::fmt::Display for RolledOut {
    /// Per wave, the checks while its components restart and after; each
    /// failed check with its first failure's reason.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.waves.len();
        writeln!(
            f,
            "rollout: {n} waves (control-plane and etcd nodes one at a time, workers {} at a time)",
            self.max_unavailable
        )?;
        let line = |f: &mut std::fmt::Formatter<'_>, when: &str, c: &Checked| {
            if c.passed() {
                writeln!(f, "  {when}: every check passes")
            } else {
                writeln!(f, "  {when}: {}", c.summary())?;
                c.reasons().iter().try_for_each(|r| writeln!(f, "    {r}"))
            }
        };
        writeln!(f, "before (the old scenario, converged):")?;
        for p in &self.old_problems {
            writeln!(f, "  old plan: {p}")?;
        }
        line(f, "checks", &self.before)?;
        for w in &self.waves {
            writeln!(
                f,
                "wave {}/{n} {}: {}",
                w.wave,
                w.name,
                match w.changed.len() {
                    0 => "nothing to restart".to_string(),
                    k => format!("{k} step{} changed", if k == 1 { "" } else { "s" }),
                }
            )?;
            line(f, "during", &w.during)?;
            line(f, "after", &w.after)?;
            if let Some(s) = &w.failed {
                writeln!(f, "  stopped: {s} failed; later waves do not run")?;
            }
        }
        if !self.changed_outside_waves.is_empty() {
            writeln!(
                f,
                "outside any wave: {} step(s) changed (files, routes, binaries: a running process reads them when its wave restarts it)",
                self.changed_outside_waves.len()
            )?;
        }
        if self.passed() {
            writeln!(f, "verdict: the cluster stays whole at every wave")
        } else {
            let at = self
                .waves
                .iter()
                .find(|w| w.failed.is_some() || !w.during.passed() || !w.after.passed());
            match at {
                Some(w) => writeln!(
                    f,
                    "verdict: FAILED: the cluster is not whole at wave {}/{n} ({})",
                    w.wave, w.name
                ),
                None => writeln!(
                    f,
                    "verdict: FAILED: the old cluster is not whole before the rollout"
                ),
            }
        }
    }
}

/// Why a rollout cannot be simulated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("the rollout simulation needs the same nodes in both scenarios: {old:?} → {new:?} (adding nodes is not a rollout: apply brings them up at once; a removal is simulated when the new nodes are the old ones less the removed)")]
    Nodes { old: Vec<String>, new: Vec<String> },
    #[error("{0}")]
    Sim(#[from] SimError),
}

/// Applies `old`, then rolls `new` out over it, checking at every wave.
pub fn rollout(
    old: &Scenario,
    old_plan: &Plan,
    new: &Scenario,
    new_plan: &Plan,
    max_unavailable: usize,
) -> Result<RolledOut, RolloutError> {
    if old_plan.nodes != new_plan.nodes {
        return Err(RolloutError::Nodes {
            old: old_plan.nodes.clone(),
            new: new_plan.nodes.clone(),
        });
    }
    let backend = SimBackend::new(build::world(old));
    let first = futures::executor::block_on(exec::execute(
        old_plan,
        old,
        &backend,
        &ExecOptions::sequential(),
        &mut Quiet,
    ));
    let old_problems: Vec<String> = old_plan
        .steps
        .iter()
        .zip(&first.outcomes)
        .filter(|(_, o)| !o.succeeded())
        .map(|(st, o)| format!("{}: {}", old_plan.step_id(st), o.name()))
        .collect();
    let mut prepared = {
        let mut sim = backend.state.lock().unwrap_or_else(|p| p.into_inner());
        let api = prepare::ApiObjects::for_check(old_plan, &sim.addons, 0);
        prepare::prepare(&mut sim.world, &api)
    };
    let before = {
        let sim = backend.state.lock().unwrap_or_else(|p| p.into_inner());
        Checked::of(&sim.world, old, &prepared, &[])
    };

    let plan = kscratch_core::rollout::rollout(new_plan, new, max_unavailable);
    let opts = ExecOptions {
        rollout: Some(plan),
        ..ExecOptions::sequential()
    };
    let mut watch = Watch {
        backend: &backend,
        scenario: new,
        prepared: &mut prepared,
        before_wave: None,
        changed: BTreeSet::new(),
        waves: Vec::new(),
        error: None,
    };
    let apply =
        futures::executor::block_on(exec::execute(new_plan, new, &backend, &opts, &mut watch));
    if let Some(e) = watch.error {
        return Err(e.into());
    }
    let mut waves = watch.waves;
    let r = opts.rollout.as_ref().expect("set above");
    for w in &mut waves {
        w.changed = new_plan
            .steps
            .iter()
            .enumerate()
            .filter(|&(k, _)| r.wave_of[k] == w.wave)
            .filter(|&(k, _)| apply.outcomes[k] == Outcome::Changed)
            .map(|(_, st)| new_plan.step_id(st))
            .collect();
    }
    let changed_outside_waves = new_plan
        .steps
        .iter()
        .enumerate()
        .filter(|&(k, _)| r.wave_of[k] == 0 && apply.outcomes[k] == Outcome::Changed)
        .map(|(_, st)| new_plan.step_id(st))
        .collect();
    Ok(RolledOut {
        max_unavailable: max_unavailable.max(1),
        before,
        old_problems,
        waves,
        changed_outside_waves,
    })
}

/// Checks the cluster at each wave's boundaries.
struct Watch<'a> {
    backend: &'a SimBackend,
    scenario: &'a Scenario,
    prepared: &'a mut Prepared,
    /// The cluster as the running wave found it.
    before_wave: Option<(World, Prepared)>,
    /// Steps that changed something (a restart is a change).
    changed: BTreeSet<StepRef>,
    waves: Vec<WaveRun>,
    error: Option<SimError>,
}

impl Observer for Watch<'_> {
    fn wave_started(&mut self, _plan: &Plan, _rollout: &Rollout, _wave: u32) {
        let sim = self.backend.state.lock().unwrap_or_else(|p| p.into_inner());
        self.before_wave = Some((sim.world.clone(), self.prepared.clone()));
    }

    fn finished(&mut self, _plan: &Plan, step: StepRef, outcome: &Outcome) {
        if *outcome == Outcome::Changed {
            self.changed.insert(step);
        }
    }

    fn wave_finished(
        &mut self,
        plan: &Plan,
        rollout: &Rollout,
        wave: u32,
        failed: Option<StepRef>,
    ) {
        let w = &rollout.waves[wave as usize - 1];
        let during = match self.before_wave.take() {
            Some((world, prepared)) => self.during(plan, &w.starts, world, prepared),
            None => Checked {
                results: Vec::new(),
            },
        };
        let mut sim = self.backend.state.lock().unwrap_or_else(|p| p.into_inner());
        // A started apiserver registers its endpoint again, and each
        // kube-proxy syncs every Service when it (re)starts.
        let lease = self.scenario.version.features().endpoint_reconciler_lease;
        prepare::register_apiservers(&sim.world, self.prepared, lease);
        faults::program_services(&mut sim.world, self.prepared);
        let after = Checked::of(&sim.world, self.scenario, self.prepared, &[]);
        self.waves.push(WaveRun {
            wave,
            name: w.to_string(),
            changed: Vec::new(),
            failed: failed.map(|i| plan.step_id(&plan.steps[i as usize])),
            during,
            after,
        });
    }
}

impl Watch<'_> {
    /// The checks on the cluster as the wave found it, with the components
    /// the wave restarted (its start steps that changed) stopped.
    fn during(
        &mut self,
        plan: &Plan,
        starts: &[StepRef],
        world: World,
        mut prepared: Prepared,
    ) -> Checked {
        let restarted: Vec<StepRef> = starts
            .iter()
            .copied()
            .filter(|i| self.changed.contains(i))
            .collect();
        let down = down_plan(plan, &restarted, &world);
        // The control-plane components down: etcd run as a service, or a
        // static pod whose manifest the kubelet dropped.
        let restarting: Vec<(usize, Component)> = down
            .steps
            .iter()
            .filter_map(|st| {
                let Target::Node(n) = st.target else {
                    return None;
                };
                let component = match &st.action {
                    Action::StopService {
                        name: Service::Etcd,
                    } => Component::Etcd,
                    Action::DeleteFile { path } => rollout_component(path)?,
                    _ => return None,
                };
                Some((n as usize, component))
            })
            .collect();
        let lease = self.scenario.version.features().endpoint_reconciler_lease;
        // The executor that calls this observer is running on this thread;
        // the down plan runs through the same executor on its own.
        let scenario = self.scenario;
        let downed = std::thread::scope(|t| {
            t.spawn(|| faults::run(world, scenario, &down))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
        match downed {
            Ok(mut world) => {
                // A stopping apiserver takes its endpoint out of `kubernetes`.
                if prepare::register_apiservers(&world, &mut prepared, lease) {
                    faults::program_services(&mut world, &mut prepared);
                }
                faults::resync_services(&mut world, &mut prepared);
                Checked::of(&world, self.scenario, &prepared, &restarting)
            }
            Err(e) => {
                self.error.get_or_insert(e);
                Checked {
                    results: Vec::new(),
                }
            }
        }
    }
}

/// What is down while a wave's components restart: each service it starts
/// that runs now stopped, each static pod whose manifest it writes and that
/// exists now removed (a component the wave starts for the first time is
/// not down: it was not there).
fn down_plan(plan: &Plan, starts: &[StepRef], world: &World) -> Plan {
    let steps: Vec<Step> = starts
        .iter()
        .filter_map(|&i| {
            let st = &plan.steps[i as usize];
            let Target::Node(n) = st.target else {
                return None;
            };
            let node = &world.nodes[n as usize];
            let action = match &st.action {
                Action::StartService { name } if node.running(name.name()) => {
                    Action::StopService { name: *name }
                }
                Action::WriteFile {
                    asset: Asset::StaticPod(_),
                    path,
                    ..
                } if node.fs.files.contains_key(*path) => Action::DeleteFile {
                    path: path.to_string(),
                },
                _ => return None,
            };
            Some(Step {
                target: st.target,
                key: st.key,
                phase: Phase::Damage,
                action,
                deps: 0..0,
                subject: st.subject,
            })
        })
        .collect();
    Plan {
        cluster: plan.cluster.clone(),
        version: plan.version,
        nodes: plan.nodes.clone(),
        artifacts: Vec::new(),
        steps,
        dep_pool: Vec::new(),
        release_dir: plan.release_dir.clone(),
        departed: plan.departed.clone(),
    }
}

/// The component whose static pod manifest is at `path`.
fn rollout_component(path: &str) -> Option<Component> {
    Component::ALL
        .into_iter()
        .find(|&c| Asset::StaticPod(c).path() == path)
}
