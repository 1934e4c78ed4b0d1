//! The executor: walks a plan's DAG against any [`Backend`].
//!
//! One executor for every backend, so ordering, parallelism, retries and
//! failure handling behave the same on the simulator and on real machines.
//! Every step is check-then-apply: a step whose state already holds is `ok`,
//! one the backend had to change is `changed`. A failed step skips its
//! dependents; independent branches go on. The executor reads no clock:
//! per-step timeouts belong to the backend, which knows what a step costs.

use crate::plan::{Plan, Step, StepRef, Target};
use crate::rollout::Rollout;
use crate::scenario::Scenario;
use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What a backend sees of the step it runs.
#[derive(Clone, Copy)]
pub struct StepCx<'a> {
    pub plan: &'a Plan,
    pub scenario: &'a Scenario,
    pub index: StepRef,
    pub step: &'a Step,
}

impl StepCx<'_> {
    pub fn id(&self) -> String {
        self.plan.step_id(self.step)
    }
    /// The node index of the step's target, if it is a node.
    pub fn node(&self) -> Option<usize> {
        match self.step.target {
            Target::Node(i) => Some(i as usize),
            _ => None,
        }
    }

    /// The bytes a `WriteFile` step puts on its target, `None` for any other
    /// action. This is the one source of a file's bytes for every backend:
    /// the SSH backend uploads them (with the cluster's key material), the
    /// simulator stores them on its virtual node (with [`crate::render::Redacted`])
    /// and its components read only those bytes afterwards.
    pub fn file_bytes(
        &self,
        secrets: &dyn crate::render::Secrets,
    ) -> Option<Result<Vec<u8>, crate::render::RenderError>> {
        match &self.step.action {
            crate::plan::Action::WriteFile { asset, .. } => Some(crate::render::render(
                self.scenario,
                self.node(),
                *asset,
                secrets,
            )),
            _ => None,
        }
    }
}

/// The answer to "does this step's desired state already hold?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Satisfied,
    Needed,
    /// The step cannot apply on this backend (e.g. no control-plane binaries
    /// on the testbed); it is skipped with the reason, and so are its dependents.
    NotApplicable(String),
}

/// One implementation per way of running a plan: simulator, SSH, and wrappers.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Checks the step's desired state without changing anything.
    async fn check(&self, cx: &StepCx<'_>) -> Result<Probe, StepError>;
    /// Makes the step's desired state hold.
    async fn apply(&self, cx: &StepCx<'_>) -> Result<(), StepError>;

    /// Checks several steps of one target, none of which depends on
    /// another, answering in the same order. The default checks them one
    /// after another; a backend may ask them all in one round trip.
    async fn check_batch(&self, cxs: &[StepCx<'_>]) -> Vec<Result<Probe, StepError>> {
        let mut out = Vec::with_capacity(cxs.len());
        for cx in cxs {
            out.push(self.check(cx).await);
        }
        out
    }

    /// Applies several steps of one target, none of which depends on
    /// another, telling `done` the result of each (by its index in `cxs`)
    /// as soon as it is known, so that a run killed half-way has journaled
    /// what finished. The default applies them one after another; a
    /// backend may send them all in one round trip.
    async fn apply_batch(
        &self,
        cxs: &[StepCx<'_>],
        done: &(dyn Fn(usize, Result<(), StepError>) + Send + Sync),
    ) {
        for (k, cx) in cxs.iter().enumerate() {
            done(k, self.apply(cx).await);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The connection to the target failed or was lost: worth a retry.
    Connection,
    /// A command ran and failed.
    Command,
    /// The step did not finish in its time.
    Timeout,
    /// The state after apply still does not hold, or the input is unusable.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
}

impl StepError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StepError {
            kind,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        StepError::new(ErrorKind::Failed, message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Already in the desired state: nothing was done.
    Ok,
    Changed,
    /// Only with `dry_run`: the step would change something.
    WouldChange,
    Failed {
        error: StepError,
    },
    /// Not run: a dependency failed or was skipped, or the backend cannot run it.
    Skipped {
        reason: String,
    },
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        matches!(self, Outcome::Ok | Outcome::Changed | Outcome::WouldChange)
    }
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Changed => "changed",
            Outcome::WouldChange => "would-change",
            Outcome::Failed { .. } => "failed",
            Outcome::Skipped { .. } => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Steps (or batches, see `batch`) in flight at once, over all targets.
    /// 1 runs the plan in its own order.
    pub max_parallel: usize,
    /// Steps (or batches) in flight at once on one target.
    pub per_target: usize,
    /// Ready steps of one target (none depending on another) started
    /// together, at most: their checks, then their applies, each go to the
    /// backend as one batch ([`Backend::check_batch`],
    /// [`Backend::apply_batch`]), and the batch takes one of the target's
    /// `per_target` places. A health wait or a cluster validation is never
    /// batched: it waits on other machines, and what was batched with it
    /// would wait too; nor are the operator's own steps (the PKI). 1 starts
    /// every step on its own.
    pub batch: usize,
    /// Retries of a step after a connection-level error (never after others).
    pub connection_retries: u32,
    /// Check only: report what would change, change nothing.
    pub dry_run: bool,
    /// Re-check after apply and fail if the state still does not hold.
    pub verify: bool,
    /// Steps an interrupted earlier run of the same plan changed (from its
    /// journal, on `--resume`): they count as changed for restarts, so a
    /// kill between writing a config and restarting its service is healed.
    pub changed_earlier: BTreeSet<StepRef>,
    /// Run the plan as a rollout over a running cluster: a wave's steps
    /// start only when every earlier wave has finished, and the first wave
    /// with a failed step stops the rollout ([`crate::rollout`]). `None`
    /// brings every node up at once (a first apply).
    pub rollout: Option<Rollout>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            max_parallel: 16,
            per_target: 1,
            // A control-plane node's certificates, keys and kubeconfigs
            // (about 30) fit in one batch with its other ready steps; 16
            // split them into three round trips on the first apply.
            batch: 64,
            connection_retries: 2,
            dry_run: false,
            verify: true,
            changed_earlier: BTreeSet::new(),
            rollout: None,
        }
    }
}

impl ExecOptions {
    /// One step at a time, in plan order: what the simulator uses, so that its
    /// world evolves the same way on every run.
    pub fn sequential() -> Self {
        ExecOptions {
            max_parallel: 1,
            per_target: 1,
            batch: 1,
            ..ExecOptions::default()
        }
    }
}

/// Told about each step as it starts and ends (progress bars, journals, logs).
pub trait Observer: Send {
    fn started(&mut self, _plan: &Plan, _step: StepRef) {}
    fn finished(&mut self, _plan: &Plan, _step: StepRef, _outcome: &Outcome) {}
    /// A rollout's wave `wave` (1-based) is about to start: every earlier
    /// wave has finished, and no step of this one has started.
    fn wave_started(&mut self, _plan: &Plan, _rollout: &Rollout, _wave: u32) {}
    /// Every step of wave `wave` has finished; `failed` names the first
    /// step of it that failed (which stops the rollout).
    fn wave_finished(
        &mut self,
        _plan: &Plan,
        _rollout: &Rollout,
        _wave: u32,
        _failed: Option<StepRef>,
    ) {
    }
}

/// An observer that does nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// The outcome of every step, indexed like `Plan::steps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

impl Report {
    pub fn count(&self, name: &str) -> usize {
        self.outcomes.iter().filter(|o| o.name() == name).count()
    }
    pub fn succeeded(&self) -> bool {
        self.outcomes.iter().all(Outcome::succeeded)
    }
    /// Per target: how many steps ended in each outcome, in target order.
    pub fn per_target(&self, plan: &Plan) -> BTreeMap<Target, BTreeMap<&'static str, usize>> {
        let mut m: BTreeMap<Target, BTreeMap<&'static str, usize>> = BTreeMap::new();
        for (s, o) in plan.steps.iter().zip(&self.outcomes) {
            *m.entry(s.target).or_default().entry(o.name()).or_default() += 1;
        }
        m
    }
}

/// Runs `plan` on `backend`.
pub async fn execute(
    plan: &Plan,
    scenario: &Scenario,
    backend: &dyn Backend,
    opts: &ExecOptions,
    observer: &mut dyn Observer,
) -> Report {
    if opts.max_parallel <= 1 {
        return execute_in_order(plan, scenario, backend, opts, observer).await;
    }
    let n = plan.steps.len();
    let (mut pending, counts, dependents) = dependents_of(plan, opts);

    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let mut ready = Ready::new(plan, &counts, &dependents);
    for i in 0..n as StepRef {
        if pending[i as usize] == 0 {
            ready.insert(i);
        }
    }
    // Units in flight (one step, or a batch of one target's steps); each
    // ends with its target. Their steps' outcomes come through `finished`
    // one by one, as soon as each is known.
    let mut running = FuturesUnordered::new();
    let (report, mut finished) = futures::channel::mpsc::unbounded::<(StepRef, Outcome)>();
    let mut on_target: BTreeMap<Target, usize> = BTreeMap::new();
    let max_parallel = opts.max_parallel.max(1);
    let per_target = opts.per_target.max(1);
    let batch = opts.batch.max(1);
    let mut gate = opts.rollout.as_ref().map(|r| Gate::new(r, n));
    let mut done = 0usize;

    macro_rules! settle {
        ($i:expr, $o:expr) => {{
            let (i, o): (StepRef, Outcome) = ($i, $o);
            observer.finished(plan, i, &o);
            if let Some(g) = &mut gate {
                g.finished(plan, i, &o, observer);
            }
            finish(
                i,
                o,
                &mut outcomes,
                &mut pending,
                &counts,
                &dependents,
                &mut ready,
            );
            done += 1;
        }};
    }

    while done < n {
        // Start the ready steps that fit the limits (and, in a rollout, whose
        // wave is open), in `Ready`'s order, the chain to a health wait
        // first; a wait only once its node has no other ready step (it only
        // polls: the node's work goes first, and the daemon comes up
        // meanwhile; per node, one unit runs at a time). A ready step of a
        // target that is starting a unit now joins it, up to `batch` steps,
        // if it is as urgent as the unit's first step: a less urgent one
        // waits for the next unit, so the urgent unit is not held up by it.
        let may_start = |i: StepRef| gate.as_ref().is_none_or(|g| g.may_start(i));
        // Targets with ready work: their health waits yield to it.
        let working: BTreeSet<Target> = ready
            .iter()
            .filter(|&i| may_start(i) && !waits_on_others(&plan.steps[i as usize]))
            .map(|i| plan.steps[i as usize].target)
            .collect();
        let mut units: Vec<Vec<StepRef>> = Vec::new();
        for i in ready.iter() {
            if !may_start(i) {
                continue;
            }
            let step = &plan.steps[i as usize];
            if waits_on_others(step) && working.contains(&step.target) {
                continue;
            }
            if batchable(step) {
                if let Some(u) = units.iter_mut().find(|u| {
                    let first = &plan.steps[u[0] as usize];
                    first.target == step.target
                        && u.len() < batch
                        && batchable(first)
                        && ready.urgency(u[0]) == ready.urgency(i)
                }) {
                    u.push(i);
                    continue;
                }
            }
            if running.len() + units.len() >= max_parallel {
                continue;
            }
            let busy = on_target.get(&step.target).copied().unwrap_or(0)
                + units
                    .iter()
                    .filter(|u| plan.steps[u[0] as usize].target == step.target)
                    .count();
            // The operator's own steps run one at a time whatever
            // `per_target` says: one key store render makes what the other
            // PKI steps check, and two at once would both render it.
            let limit = if step.target == Target::Local {
                1
            } else {
                per_target
            };
            if busy < limit {
                units.push(vec![i]);
            }
        }
        let progress = !units.is_empty();
        for unit in units {
            let mut run = Vec::with_capacity(unit.len());
            for i in unit {
                ready.remove(i);
                // A step whose dependency did not succeed is skipped, not run; so
                // is a wave's step after the rollout stopped.
                let skipped = gate.as_ref().and_then(|g| g.stopped(plan, i)).or_else(|| {
                    skipped_by_deps(plan, deps_of(plan, opts, i), |d| {
                        outcomes[d as usize].as_ref()
                    })
                });
                match skipped {
                    Some(o) => settle!(i, o),
                    None => run.push(i),
                }
            }
            let Some(&first) = run.first() else {
                continue;
            };
            let target = plan.steps[first as usize].target;
            *on_target.entry(target).or_default() += 1;
            let mut cxs = Vec::with_capacity(run.len());
            for i in run {
                if let Some(g) = &mut gate {
                    g.announce(plan, i, observer);
                }
                observer.started(plan, i);
                cxs.push(step_to_run(plan, scenario, i, opts, &outcomes));
            }
            let report = report.clone();
            running.push(async move {
                run_unit(backend, &cxs, opts, &report).await;
                target
            });
        }
        if running.is_empty() {
            if !progress && done < n {
                // Unreachable for a valid plan (every dependency is earlier,
                // every wave's dependencies are in it or before it), but never hang.
                break;
            }
            continue;
        }
        // Whichever comes first: a step's outcome, or the end of a unit
        // (whose outcomes were all sent before it ended).
        let ended = {
            let next_outcome = finished.next();
            let next_unit = running.next();
            futures::pin_mut!(next_unit);
            match futures::future::select(next_outcome, next_unit).await {
                futures::future::Either::Left((Some((i, o)), _)) => {
                    settle!(i, o);
                    None
                }
                futures::future::Either::Left((None, _)) => None,
                futures::future::Either::Right((t, _)) => t,
            }
        };
        if let Some(t) = ended {
            if let Some(c) = on_target.get_mut(&t) {
                *c -= 1;
            }
            while let Ok((i, o)) = finished.try_recv() {
                settle!(i, o);
            }
        }
    }
    Report {
        outcomes: outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(Outcome::Skipped {
                    reason: "not reached".into(),
                })
            })
            .collect(),
    }
}

/// Each step's number of dependencies the scheduler waits for, and its
/// dependents in one flat array (CSR, like the plan's own dependency
/// pool): those of step `i` are `dependents[counts[i]..counts[i + 1]]`.
fn dependents_of(plan: &Plan, opts: &ExecOptions) -> (Vec<u32>, Vec<u32>, Vec<StepRef>) {
    let n = plan.steps.len();
    let mut pending = vec![0u32; n];
    let mut counts = vec![0u32; n + 1];
    for i in 0..n {
        for d in deps_of(plan, opts, i as StepRef) {
            pending[i] += 1;
            counts[d as usize + 1] += 1;
        }
    }
    for i in 0..n {
        counts[i + 1] += counts[i];
    }
    let mut fill = counts.clone();
    let mut dependents = vec![0 as StepRef; counts[n] as usize];
    for i in 0..n {
        for d in deps_of(plan, opts, i as StepRef) {
            dependents[fill[d as usize] as usize] = i as StepRef;
            fill[d as usize] += 1;
        }
    }
    (pending, counts, dependents)
}

/// The ready steps, in the order the scheduler considers them: the most
/// urgent first, the step with the most health waits on its longest chain
/// of dependents, then plan order. On a control-plane node the most urgent
/// are etcd's binary, certificates and unit, whose wait the apiserver's
/// manifests then wait for: etcd starts, and elects itself, while the
/// node's other files go up, rather than after them.
///
/// The order only chooses among steps whose dependencies are done: it never
/// changes what runs, only when, and the simulator (which runs in plan
/// order) is unaffected.
struct Ready {
    set: BTreeSet<(std::cmp::Reverse<u32>, StepRef)>,
    /// Per step: its urgency.
    urgency: Vec<u32>,
}

impl Ready {
    /// The urgency of `plan`'s steps, from the dependents of each (`counts`
    /// and `dependents` from [`dependents_of`]: the dependencies the
    /// scheduler honours).
    fn new(plan: &Plan, counts: &[u32], dependents: &[StepRef]) -> Ready {
        let n = plan.steps.len();
        let mut urgency = vec![0u32; n];
        // Every dependency comes earlier in the plan: dependents first.
        for i in (0..n).rev() {
            let waits = matches!(
                plan.steps[i].action,
                crate::plan::Action::WaitHealthy { .. }
            );
            let after = dependents[counts[i] as usize..counts[i + 1] as usize]
                .iter()
                .map(|&d| urgency[d as usize])
                .max()
                .unwrap_or(0);
            urgency[i] = after + u32::from(waits);
        }
        Ready {
            set: BTreeSet::new(),
            urgency,
        }
    }

    fn key(&self, i: StepRef) -> (std::cmp::Reverse<u32>, StepRef) {
        (std::cmp::Reverse(self.urgency[i as usize]), i)
    }

    fn urgency(&self, i: StepRef) -> u32 {
        self.urgency[i as usize]
    }

    fn insert(&mut self, i: StepRef) {
        self.set.insert(self.key(i));
    }

    fn remove(&mut self, i: StepRef) {
        self.set.remove(&self.key(i));
    }

    fn iter(&self) -> impl Iterator<Item = StepRef> + '_ {
        self.set.iter().map(|&(_, i)| i)
    }
}

/// A health wait or a cluster validation: it waits on other machines or
/// daemons rather than doing work.
fn waits_on_others(step: &Step) -> bool {
    matches!(
        step.action,
        crate::plan::Action::WaitHealthy { .. } | crate::plan::Action::ValidateCluster { .. }
    )
}

/// Whether a step may share a batch: a remote step that is not a health
/// wait or a cluster validation, which wait on other machines (what was
/// batched with them would wait too). The operator's own steps cost no
/// round trip, and one of them may make what the others check (one key
/// store render generates every missing key): they run one by one.
fn batchable(step: &Step) -> bool {
    step.target != Target::Local && !waits_on_others(step)
}

/// Runs one unit: a lone step as [`run_step`] does; a batch's checks in
/// one [`Backend::check_batch`], then the applies of those that need one in
/// one [`Backend::apply_batch`], each verified and reported as its result
/// arrives. A step that met a connection error is then run on its own,
/// checked again first, never blindly re-applied.
async fn run_unit(
    backend: &dyn Backend,
    cxs: &[(StepCx<'_>, bool)],
    opts: &ExecOptions,
    report: &futures::channel::mpsc::UnboundedSender<(StepRef, Outcome)>,
) {
    let send = |i: StepRef, o: Outcome| {
        // The executor outlives every unit: the receiver is never gone.
        let _ = report.unbounded_send((i, o));
    };
    if let [(cx, restart)] = cxs {
        send(cx.index, run_step(backend, cx, opts, *restart, 0).await);
        return;
    }
    let retry = |e: &StepError| e.kind == ErrorKind::Connection && opts.connection_retries > 0;
    let all: Vec<StepCx<'_>> = cxs.iter().map(|(cx, _)| *cx).collect();
    let mut probes = backend.check_batch(&all).await.into_iter();
    let mut again = Vec::new();
    let mut to_apply: Vec<(usize, bool)> = Vec::new();
    for (k, (cx, restart)) in cxs.iter().enumerate() {
        match probes.next() {
            Some(Ok(p)) => match decide(p, *restart, opts) {
                Next::Done(o) => send(cx.index, o),
                Next::Apply { restart_only } => to_apply.push((k, restart_only)),
            },
            Some(Err(e)) if !retry(&e) => send(cx.index, Outcome::Failed { error: e }),
            // A lost connection, or no answer at all: checked again on its own.
            Some(Err(_)) | None => again.push(k),
        }
    }
    if !to_apply.is_empty() {
        let batch: Vec<StepCx<'_>> = to_apply.iter().map(|&(k, _)| cxs[k].0).collect();
        let (tell, mut results) = futures::channel::mpsc::unbounded();
        let applying = async move {
            let done = move |j: usize, r: Result<(), StepError>| {
                let _ = tell.unbounded_send((j, r));
            };
            backend.apply_batch(&batch, &done).await;
        };
        let verifying = async {
            let mut reported = vec![false; to_apply.len()];
            let mut again = Vec::new();
            while let Some((j, r)) = results.next().await {
                let Some(&(k, restart_only)) = to_apply.get(j) else {
                    continue;
                };
                if std::mem::replace(&mut reported[j], true) {
                    continue;
                }
                let cx = &cxs[k].0;
                let verified = match r {
                    Ok(()) => after_apply(backend, cx, opts, restart_only).await,
                    Err(e) => Err(e),
                };
                match verified {
                    Ok(o) => send(cx.index, o),
                    Err(e) if retry(&e) => again.push(k),
                    Err(error) => send(cx.index, Outcome::Failed { error }),
                }
            }
            // A step the backend never reported is checked again on its own.
            again.extend(
                reported
                    .iter()
                    .zip(&to_apply)
                    .filter(|(r, _)| !**r)
                    .map(|(_, &(k, _))| k),
            );
            again
        };
        let ((), more) = futures::future::join(applying, verifying).await;
        again.extend(more);
    }
    again.sort_unstable();
    for k in again {
        let (cx, restart) = &cxs[k];
        send(cx.index, run_step(backend, cx, opts, *restart, 1).await);
    }
}

/// One step at a time in plan order (which is topological), or in a
/// rollout wave by wave, each wave's steps in plan order: the same
/// semantics as the scheduler above without its bookkeeping.
async fn execute_in_order(
    plan: &Plan,
    scenario: &Scenario,
    backend: &dyn Backend,
    opts: &ExecOptions,
    observer: &mut dyn Observer,
) -> Report {
    let n = plan.steps.len();
    let mut order: Vec<StepRef> = (0..n as StepRef).collect();
    if let Some(r) = &opts.rollout {
        // Stable: within a wave, plan order. Every dependency that is not
        // relaxed is in an earlier or the same wave, so this is topological.
        order.sort_by_key(|&i| r.wave_of[i as usize]);
    }
    let mut gate = opts.rollout.as_ref().map(|r| Gate::new(r, n));
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    for i in order {
        if let Some(g) = &mut gate {
            g.announce(plan, i, observer);
        }
        let skipped = gate.as_ref().and_then(|g| g.stopped(plan, i)).or_else(|| {
            skipped_by_deps(plan, deps_of(plan, opts, i), |d| {
                outcomes[d as usize].as_ref()
            })
        });
        let o = match skipped {
            Some(skipped) => skipped,
            None => {
                observer.started(plan, i);
                let (cx, restart) = step_to_run(plan, scenario, i, opts, &outcomes);
                run_step(backend, &cx, opts, restart, 0).await
            }
        };
        observer.finished(plan, i, &o);
        if let Some(g) = &mut gate {
            g.finished(plan, i, &o, observer);
        }
        outcomes[i as usize] = Some(o);
    }
    Report {
        outcomes: outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(Outcome::Skipped {
                    reason: "not reached".into(),
                })
            })
            .collect(),
    }
}

/// The dependencies a step waits for: all of them, less those a rollout
/// relaxes (a later wave's step; see [`crate::rollout`]).
fn deps_of<'p>(
    plan: &'p Plan,
    opts: &'p ExecOptions,
    i: StepRef,
) -> impl Iterator<Item = StepRef> + 'p {
    plan.deps(&plan.steps[i as usize])
        .iter()
        .copied()
        .filter(move |&d| !opts.rollout.as_ref().is_some_and(|r| r.relaxed(i, d)))
}

/// A rollout's progress during a run.
struct Gate<'r> {
    rollout: &'r Rollout,
    /// Steps of each wave not finished yet; index = wave number, `[0]` unused.
    left: Vec<u32>,
    /// The first failed step of each wave.
    failed: Vec<Option<StepRef>>,
    /// The lowest wave with steps left (`waves.len() + 1` when all are done).
    open: u32,
    /// Whether the observer was told that `open` started.
    announced: bool,
    /// The wave that stopped the rollout, and its first failed step.
    stop: Option<(u32, StepRef)>,
}

impl<'r> Gate<'r> {
    fn new(rollout: &'r Rollout, n: usize) -> Gate<'r> {
        let waves = rollout.waves.len();
        let mut left = vec![0u32; waves + 1];
        for &w in &rollout.wave_of[..n] {
            if w > 0 {
                left[w as usize] += 1;
            }
        }
        let mut g = Gate {
            rollout,
            left,
            failed: vec![None; waves + 1],
            open: 1,
            announced: false,
            stop: None,
        };
        g.advance(None);
        g
    }

    fn last(&self) -> u32 {
        self.rollout.waves.len() as u32
    }

    /// A wave's step may start once every earlier wave has finished.
    fn may_start(&self, i: StepRef) -> bool {
        self.rollout.wave_of[i as usize] <= self.open
    }

    /// Before step `i` starts: tells the observer that the open wave starts
    /// if `i` is its first step, unless the rollout stopped.
    fn announce(&mut self, plan: &Plan, i: StepRef, observer: &mut dyn Observer) {
        if !self.announced && self.rollout.wave_of[i as usize] == self.open && self.stop.is_none() {
            self.announced = true;
            observer.wave_started(plan, self.rollout, self.open);
        }
    }

    /// `Skipped` for a step of a wave after the one that stopped the rollout.
    fn stopped(&self, plan: &Plan, i: StepRef) -> Option<Outcome> {
        let (wave, failed) = self.stop?;
        if self.rollout.wave_of[i as usize] <= wave {
            return None;
        }
        Some(Outcome::Skipped {
            reason: format!(
                "the rollout stopped at wave {wave}/{} ({}): {} failed",
                self.last(),
                self.rollout.waves[wave as usize - 1],
                plan.step_id(&plan.steps[failed as usize])
            ),
        })
    }

    fn finished(&mut self, plan: &Plan, i: StepRef, o: &Outcome, observer: &mut dyn Observer) {
        let w = self.rollout.wave_of[i as usize];
        if w == 0 {
            return;
        }
        if matches!(o, Outcome::Failed { .. }) {
            self.failed[w as usize].get_or_insert(i);
            if self.stop.is_none_or(|(s, _)| w < s) {
                self.stop = Some((w, i));
            }
        }
        self.left[w as usize] -= 1;
        self.advance(Some((plan, observer)));
    }

    /// Moves `open` past every finished wave, telling the observer about
    /// each wave that ran.
    fn advance(&mut self, mut observer: Option<(&Plan, &mut dyn Observer)>) {
        while self.open <= self.last() && self.left[self.open as usize] == 0 {
            if let Some((plan, o)) = &mut observer {
                if self.announced {
                    o.wave_finished(
                        plan,
                        self.rollout,
                        self.open,
                        self.failed[self.open as usize],
                    );
                }
            }
            self.open += 1;
            self.announced = false;
        }
    }
}

/// `Skipped` naming the first dependency that did not succeed, if any.
fn skipped_by_deps<'o>(
    plan: &Plan,
    mut deps: impl Iterator<Item = StepRef>,
    outcome: impl Fn(StepRef) -> Option<&'o Outcome>,
) -> Option<Outcome> {
    let bad = deps.find(|&d| !outcome(d).is_some_and(Outcome::succeeded))?;
    let dep = plan.step_id(&plan.steps[bad as usize]);
    let reason = match outcome(bad) {
        Some(Outcome::Skipped { .. }) => format!("dependency {dep} was skipped"),
        _ => format!("dependency {dep} failed"),
    };
    Some(Outcome::Skipped { reason })
}

fn finish(
    i: StepRef,
    o: Outcome,
    outcomes: &mut [Option<Outcome>],
    pending: &mut [u32],
    counts: &[u32],
    dependents: &[StepRef],
    ready: &mut Ready,
) {
    outcomes[i as usize] = Some(o);
    for &d in &dependents[counts[i as usize] as usize..counts[i as usize + 1] as usize] {
        pending[d as usize] -= 1;
        if pending[d as usize] == 0 {
            ready.insert(d);
        }
    }
}

/// Step `i`'s context, and whether its inputs changed (a running service
/// restarts), from the outcomes so far: what both schedulers hand to a backend.
fn step_to_run<'a>(
    plan: &'a Plan,
    scenario: &'a Scenario,
    i: StepRef,
    opts: &ExecOptions,
    outcomes: &[Option<Outcome>],
) -> (StepCx<'a>, bool) {
    let step = &plan.steps[i as usize];
    let restart = inputs_changed(plan, step, opts, |d| outcomes[d as usize].as_ref());
    (
        StepCx {
            plan,
            scenario,
            index: i,
            step,
        },
        restart,
    )
}

/// Whether `step` starts a service one of whose inputs changed in this run
/// (or in the interrupted run being resumed). A service's inputs are the
/// files it depends on on its own target: its binary, unit, config and env
/// files, certificates, kubeconfigs (the planner makes `StartService`
/// depend on each); a replaced binary runs only once restarted. Such a
/// service is restarted even when it is running, once, after all of them
/// are written, like an Ansible handler; a running process keeps the
/// settings it started with otherwise.
fn inputs_changed<'o>(
    plan: &Plan,
    step: &Step,
    opts: &ExecOptions,
    outcome: impl Fn(StepRef) -> Option<&'o Outcome>,
) -> bool {
    if !matches!(step.action, crate::plan::Action::StartService { .. }) {
        return false;
    }
    plan.deps(step).iter().any(|&d| {
        let dep = &plan.steps[d as usize];
        dep.target == step.target
            && matches!(
                dep.action,
                crate::plan::Action::WriteFile { .. } | crate::plan::Action::InstallBinary { .. }
            )
            && (opts.changed_earlier.contains(&d)
                || matches!(outcome(d), Some(Outcome::Changed | Outcome::WouldChange)))
    })
}

/// Checks, then applies if needed, retrying after connection-level errors
/// (each retry checks again first); `attempt` counts the tries already made.
async fn run_step(
    backend: &dyn Backend,
    cx: &StepCx<'_>,
    opts: &ExecOptions,
    restart: bool,
    mut attempt: u32,
) -> Outcome {
    loop {
        match check_then_apply(backend, cx, opts, restart).await {
            Err(e) if e.kind == ErrorKind::Connection && attempt < opts.connection_retries => {
                attempt += 1
            }
            Err(error) => return Outcome::Failed { error },
            Ok(o) => return o,
        }
    }
}

/// What a step's check leaves to do.
enum Next {
    Done(Outcome),
    /// Apply (`restart_only`: a running service whose inputs changed).
    Apply {
        restart_only: bool,
    },
}

fn decide(probe: Probe, restart: bool, opts: &ExecOptions) -> Next {
    match probe {
        // Running, but with inputs that changed since it started: restart
        // (a service's apply is enable-and-restart on every backend).
        Probe::Satisfied if restart && opts.dry_run => Next::Done(Outcome::WouldChange),
        Probe::Satisfied if restart => Next::Apply { restart_only: true },
        Probe::Satisfied => Next::Done(Outcome::Ok),
        Probe::NotApplicable(reason) => Next::Done(Outcome::Skipped { reason }),
        Probe::Needed if opts.dry_run => Next::Done(Outcome::WouldChange),
        Probe::Needed => Next::Apply {
            restart_only: false,
        },
    }
}

/// After a successful apply: the check again, when `verify` asks for it.
async fn after_apply(
    backend: &dyn Backend,
    cx: &StepCx<'_>,
    opts: &ExecOptions,
    restart_only: bool,
) -> Result<Outcome, StepError> {
    if opts.verify {
        match backend.check(cx).await? {
            Probe::Satisfied => {}
            _ if restart_only => {
                return Err(StepError::failed(format!(
                    "{}: restarted, but the service is not running",
                    cx.id()
                )))
            }
            other => {
                return Err(StepError::failed(format!(
                    "{}: applied, but the state still does not hold ({other:?})",
                    cx.id()
                )))
            }
        }
    }
    Ok(Outcome::Changed)
}

async fn check_then_apply(
    backend: &dyn Backend,
    cx: &StepCx<'_>,
    opts: &ExecOptions,
    restart: bool,
) -> Result<Outcome, StepError> {
    match decide(backend.check(cx).await?, restart, opts) {
        Next::Done(o) => Ok(o),
        Next::Apply { restart_only } => {
            backend.apply(cx).await?;
            after_apply(backend, cx, opts, restart_only).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A backend over a set of "done" steps, failing the ones named.
    struct Fake {
        done: Mutex<BTreeSet<StepRef>>,
        fail: BTreeSet<String>,
        log: Mutex<Vec<StepRef>>,
    }

    #[async_trait]
    impl Backend for Fake {
        async fn check(&self, cx: &StepCx<'_>) -> Result<Probe, StepError> {
            Ok(if self.done.lock().unwrap().contains(&cx.index) {
                Probe::Satisfied
            } else {
                Probe::Needed
            })
        }
        async fn apply(&self, cx: &StepCx<'_>) -> Result<(), StepError> {
            self.log.lock().unwrap().push(cx.index);
            if self.fail.contains(&cx.id()) {
                return Err(StepError::new(ErrorKind::Command, "boom"));
            }
            self.done.lock().unwrap().insert(cx.index);
            Ok(())
        }
    }

    fn guide() -> (Scenario, Plan) {
        two_nodes("")
    }

    /// Node `a` (control plane, etcd, worker) and worker `b`, with `extra`
    /// YAML at the end.
    fn two_nodes(extra: &str) -> (Scenario, Plan) {
        let text = format!("cluster: {{name: t, kubernetesVersion: \"1.30.0\"}}\nnodes:\n  - {{name: a, ip: 192.168.0.1, roles: [control-plane, etcd, worker]}}\n  - {{name: b, ip: 192.168.0.2}}\n{extra}");
        let s = crate::load("t.yaml", &text, None).unwrap().scenario;
        let p = crate::plan::plan(&s);
        (s, p)
    }

    fn run(p: &Plan, s: &Scenario, b: &Fake, opts: &ExecOptions) -> Report {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(execute(p, s, b, opts, &mut Quiet))
    }

    #[test]
    fn sequential_runs_in_plan_order_and_a_second_run_changes_nothing() {
        let (s, p) = guide();
        let b = Fake {
            done: Mutex::default(),
            fail: BTreeSet::new(),
            log: Mutex::default(),
        };
        let r = run(&p, &s, &b, &ExecOptions::sequential());
        assert_eq!(r.count("changed"), p.steps.len());
        let log = b.log.lock().unwrap().clone();
        assert_eq!(log, (0..p.steps.len() as StepRef).collect::<Vec<_>>());
        let again = run(&p, &s, &b, &ExecOptions::sequential());
        assert_eq!(again.count("ok"), p.steps.len());
    }

    /// [`Fake`] that notes how many of the operator's own steps are in
    /// flight at once (each check and apply yields once in the middle).
    struct LocalCount {
        inner: Fake,
        now: Mutex<usize>,
        most: Mutex<usize>,
    }

    impl LocalCount {
        async fn around<T>(&self, cx: &StepCx<'_>, f: impl std::future::Future<Output = T>) -> T {
            let local = cx.step.target == Target::Local;
            if local {
                let mut n = self.now.lock().unwrap();
                *n += 1;
                let mut m = self.most.lock().unwrap();
                *m = (*m).max(*n);
            }
            tokio::task::yield_now().await;
            let out = f.await;
            if local {
                *self.now.lock().unwrap() -= 1;
            }
            out
        }
    }

    #[async_trait]
    impl Backend for LocalCount {
        async fn check(&self, cx: &StepCx<'_>) -> Result<Probe, StepError> {
            self.around(cx, self.inner.check(cx)).await
        }
        async fn apply(&self, cx: &StepCx<'_>) -> Result<(), StepError> {
            self.around(cx, self.inner.apply(cx)).await
        }
    }

    #[test]
    fn the_operators_own_steps_run_one_at_a_time_with_several_per_node() {
        let (s, p) = guide();
        let b = LocalCount {
            inner: Fake {
                done: Mutex::default(),
                fail: BTreeSet::new(),
                log: Mutex::default(),
            },
            now: Mutex::default(),
            most: Mutex::default(),
        };
        let opts = ExecOptions {
            per_target: 4,
            ..ExecOptions::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(execute(&p, &s, &b, &opts, &mut Quiet));
        assert_eq!(r.count("changed"), p.steps.len());
        assert_eq!(*b.most.lock().unwrap(), 1);
    }

    #[test]
    fn a_failure_skips_its_dependents_and_spares_independent_branches() {
        let (s, p) = guide();
        let b = Fake {
            done: Mutex::default(),
            fail: ["b/net/bridge".to_string()].into(),
            log: Mutex::default(),
        };
        let r = run(&p, &s, &b, &ExecOptions::default());
        let id = |o: &str| p.steps.iter().position(|s| p.step_id(s) == o).unwrap();
        assert_eq!(r.outcomes[id("b/net/bridge")].name(), "failed");
        assert_eq!(r.outcomes[id("b/service/containerd")].name(), "skipped");
        assert_eq!(r.outcomes[id("b/service/kubelet")].name(), "skipped");
        assert_eq!(r.outcomes[id("a/service/kubelet")].name(), "changed");
        assert_eq!(r.outcomes[id("a/validate/cluster")].name(), "skipped");
    }

    #[test]
    fn dry_run_changes_nothing() {
        let (s, p) = guide();
        let b = Fake {
            done: Mutex::default(),
            fail: BTreeSet::new(),
            log: Mutex::default(),
        };
        let r = run(
            &p,
            &s,
            &b,
            &ExecOptions {
                dry_run: true,
                ..ExecOptions::default()
            },
        );
        assert!(b.log.lock().unwrap().is_empty());
        assert_eq!(r.count("would-change"), p.steps.len());
    }

    #[test]
    fn a_service_whose_config_changed_restarts_once_and_the_others_keep_running() {
        let (s, p) = guide();
        let id = |o: &str| p.steps.iter().position(|s| p.step_id(s) == o).unwrap() as StepRef;
        // Converged, except b's kube-proxy config: it changes behind kscratch's back.
        let config = id("b/file/kube-proxy-config");
        let done: BTreeSet<StepRef> = (0..p.steps.len() as StepRef)
            .filter(|i| *i != config)
            .collect();
        for opts in [ExecOptions::default(), ExecOptions::sequential()] {
            let b = Fake {
                done: Mutex::new(done.clone()),
                fail: BTreeSet::new(),
                log: Mutex::default(),
            };
            let r = run(&p, &s, &b, &opts);
            assert_eq!(
                *b.log.lock().unwrap(),
                [config, id("b/service/kube-proxy")],
                "the config is written, then kube-proxy restarted, once"
            );
            assert_eq!(
                r.outcomes[id("b/service/kube-proxy") as usize].name(),
                "changed"
            );
            assert_eq!(r.outcomes[id("b/service/kubelet") as usize].name(), "ok");
            assert_eq!(r.outcomes[id("a/service/kube-proxy") as usize].name(), "ok");
            assert_eq!(r.count("changed"), 2);
            // A dry run says the restart would happen and does nothing.
            let b = Fake {
                done: Mutex::new(done.clone()),
                fail: BTreeSet::new(),
                log: Mutex::default(),
            };
            let dry = ExecOptions {
                dry_run: true,
                ..opts.clone()
            };
            let r = run(&p, &s, &b, &dry);
            assert!(b.log.lock().unwrap().is_empty());
            assert_eq!(
                r.outcomes[id("b/service/kube-proxy") as usize].name(),
                "would-change"
            );
            assert_eq!(r.count("would-change"), 2);
        }
        // Resumed after a kill between the write and the restart: the journal's
        // `changed` config still restarts kube-proxy, though the file is in place now.
        let b = Fake {
            done: Mutex::new((0..p.steps.len() as StepRef).collect()),
            fail: BTreeSet::new(),
            log: Mutex::default(),
        };
        let opts = ExecOptions {
            changed_earlier: BTreeSet::from([config]),
            ..ExecOptions::default()
        };
        run(&p, &s, &b, &opts);
        assert_eq!(*b.log.lock().unwrap(), [id("b/service/kube-proxy")]);
    }

    /// [`Fake`] that records its batches, and fails the first apply of
    /// the steps named in `flaky` with a connection error.
    struct Batching {
        inner: Fake,
        flaky: Mutex<BTreeSet<String>>,
        checks: Mutex<Vec<StepRef>>,
        batches: Mutex<Vec<Vec<StepRef>>>,
    }

    impl Batching {
        fn new(fail: &[&str], flaky: &[&str]) -> Batching {
            Batching {
                inner: Fake {
                    done: Mutex::default(),
                    fail: fail.iter().map(|s| s.to_string()).collect(),
                    log: Mutex::default(),
                },
                flaky: Mutex::new(flaky.iter().map(|s| s.to_string()).collect()),
                checks: Mutex::default(),
                batches: Mutex::default(),
            }
        }
    }

    #[async_trait]
    impl Backend for Batching {
        async fn check(&self, cx: &StepCx<'_>) -> Result<Probe, StepError> {
            self.checks.lock().unwrap().push(cx.index);
            self.inner.check(cx).await
        }
        async fn apply(&self, cx: &StepCx<'_>) -> Result<(), StepError> {
            if self.flaky.lock().unwrap().remove(&cx.id()) {
                self.inner.log.lock().unwrap().push(cx.index);
                return Err(StepError::new(ErrorKind::Connection, "lost"));
            }
            self.inner.apply(cx).await
        }
        async fn apply_batch(
            &self,
            cxs: &[StepCx<'_>],
            done: &(dyn Fn(usize, Result<(), StepError>) + Send + Sync),
        ) {
            self.batches
                .lock()
                .unwrap()
                .push(cxs.iter().map(|c| c.index).collect());
            for (k, cx) in cxs.iter().enumerate() {
                done(k, self.apply(cx).await);
            }
        }
    }

    /// Every dependency of `i`, direct or not.
    fn ancestors(p: &Plan, i: StepRef) -> BTreeSet<StepRef> {
        let mut seen = BTreeSet::new();
        let mut stack = p.deps(&p.steps[i as usize]).to_vec();
        while let Some(d) = stack.pop() {
            if seen.insert(d) {
                stack.extend_from_slice(p.deps(&p.steps[d as usize]));
            }
        }
        seen
    }

    #[test]
    fn batches_hold_one_targets_independent_steps_and_keep_dependency_order() {
        let (s, p) = ha();
        let b = Batching::new(&[], &[]);
        let r = run_batching(&p, &s, &b, &ExecOptions::default());
        assert!(r.succeeded(), "{:?}", r.outcomes);
        assert_eq!(r.count("changed"), p.steps.len());
        let batches = b.batches.lock().unwrap().clone();
        assert!(
            batches.iter().any(|b| b.len() > 1),
            "nothing was batched: {batches:?}"
        );
        for batch in &batches {
            let t = p.steps[batch[0] as usize].target;
            for &i in batch {
                assert_eq!(p.steps[i as usize].target, t, "{batch:?}");
                assert!(batchable(&p.steps[i as usize]) || batch.len() == 1);
                for &j in batch {
                    assert!(
                        !ancestors(&p, i).contains(&j),
                        "{batch:?}: {i} depends on {j}"
                    );
                }
            }
        }
        // Every step was applied after each of its dependencies.
        let log = b.inner.log.lock().unwrap().clone();
        let at: BTreeMap<StepRef, usize> = log.iter().enumerate().map(|(k, &i)| (i, k)).collect();
        for (i, st) in p.steps.iter().enumerate() {
            for d in p.deps(st) {
                assert!(
                    at[d] < at[&(i as StepRef)],
                    "{} before {}",
                    p.step_id(st),
                    p.step_id(&p.steps[*d as usize])
                );
            }
        }
        // The same outcomes as one step at a time, and a second run changes nothing.
        let one = Batching::new(&[], &[]);
        let single = run_batching(
            &p,
            &s,
            &one,
            &ExecOptions {
                batch: 1,
                ..ExecOptions::default()
            },
        );
        assert_eq!(single, r);
        assert!(one.batches.lock().unwrap().is_empty());
        let again = run_batching(&p, &s, &b, &ExecOptions::default());
        assert_eq!(again.count("ok"), p.steps.len());
    }

    #[test]
    fn etcds_inputs_go_first_and_a_wait_yields_to_its_nodes_other_work() {
        // etcd as a static pod (the kubelet is one of its inputs), and as a
        // service (it needs only its binary, certificates and unit).
        for extra in ["", "etcd: {runAs: service}\n"] {
            let (s, p) = two_nodes(extra);
            etcd_goes_first(&s, &p);
        }
    }

    #[test]
    fn urgency_counts_the_health_waits_ahead() {
        let (_, p) = two_nodes("etcd: {runAs: service}\n");
        let n = p.steps.len();
        let (_, counts, dependents) = dependents_of(&p, &ExecOptions::default());
        let ready = Ready::new(&p, &counts, &dependents);
        let u = |name: &str| {
            let i = (0..n as StepRef).find(|&i| p.step_id(&p.steps[i as usize]) == name);
            ready.urgency(i.unwrap_or_else(|| panic!("no step {name}")))
        };
        // etcd's wait, then the apiserver's, then the controller manager's.
        assert_eq!(u("a/wait/kube-controller-manager"), 1);
        assert_eq!(u("a/wait/kube-apiserver"), 2);
        assert_eq!(u("a/wait/etcd"), 3);
        assert_eq!(u("a/service/etcd"), 3);
        assert_eq!(u("a/bin/etcd"), 3);
        // The kubelet comes before the apiserver's wait, not etcd's.
        assert_eq!(u("a/bin/kubelet"), 2);
        // Nothing waits on kube-proxy, nor on a worker.
        assert_eq!(u("a/service/kube-proxy"), 0);
        assert_eq!(u("b/bin/kubelet"), 0);
    }

    fn etcd_goes_first(s: &Scenario, p: &Plan) {
        let b = Batching::new(&[], &[]);
        let r = run_batching(p, s, &b, &ExecOptions::default());
        assert!(r.succeeded(), "{:?}", r.outcomes);
        let id = |i: StepRef| p.step_id(&p.steps[i as usize]);
        let wait = (0..p.steps.len() as StepRef)
            .find(|&i| id(i) == "a/wait/etcd")
            .unwrap();
        let etcd = p.deps(&p.steps[wait as usize])[0];
        let inputs = ancestors(p, etcd);
        let log = b.inner.log.lock().unwrap().clone();
        let on_a: Vec<StepRef> = log
            .iter()
            .copied()
            .filter(|&i| p.steps[i as usize].target == p.steps[etcd as usize].target)
            .collect();
        // etcd starts before any of node a's steps it does not need.
        let started = on_a.iter().position(|&i| i == etcd).unwrap();
        for &i in &on_a[..started] {
            assert!(inputs.contains(&i), "{} went before etcd's start", id(i));
        }
        // Its batches held nothing else, so nothing else delayed them.
        for batch in b.batches.lock().unwrap().iter() {
            if batch.iter().any(|i| inputs.contains(i) || *i == etcd) {
                for i in batch {
                    assert!(
                        inputs.contains(i) || *i == etcd,
                        "{} batched with etcd's inputs",
                        id(*i)
                    );
                }
            }
        }
        // The wait came after every step of node a that was ready before it
        // and that it does not gate.
        let waited = on_a.iter().position(|&i| i == wait).unwrap();
        let gated: BTreeSet<StepRef> = (0..p.steps.len() as StepRef)
            .filter(|&j| ancestors(p, j).contains(&wait))
            .collect();
        for &i in &on_a[waited + 1..] {
            assert!(
                gated.contains(&i)
                    || ancestors(p, i)
                        .iter()
                        .any(|d| on_a[waited + 1..].contains(d)),
                "{} waited behind a/wait/etcd",
                id(i)
            );
        }
    }

    #[test]
    fn a_failed_step_in_a_batch_skips_its_dependents_and_spares_its_batch() {
        let (s, p) = ha();
        let failing = batched_with_dependents(&p, &s);
        let failing = failing.as_str();
        let b = Batching::new(&[failing], &[]);
        let r = run_batching(&p, &s, &b, &ExecOptions::default());
        let id = |o: &str| p.steps.iter().position(|s| p.step_id(s) == o).unwrap() as StepRef;
        let f = id(failing);
        let batches = b.batches.lock().unwrap().clone();
        let batch = batches
            .iter()
            .find(|b| b.contains(&f))
            .expect("the bridge was applied in a batch");
        assert!(batch.len() > 1, "{batch:?}");
        assert_eq!(r.outcomes[f as usize].name(), "failed");
        for &j in batch.iter().filter(|&&j| j != f) {
            assert_eq!(
                r.outcomes[j as usize].name(),
                "changed",
                "{}",
                p.step_id(&p.steps[j as usize])
            );
        }
        for (i, o) in r.outcomes.iter().enumerate() {
            if ancestors(&p, i as StepRef).contains(&f) {
                assert_eq!(o.name(), "skipped", "{}", p.step_id(&p.steps[i]));
            }
        }
        assert!(r.count("skipped") > 0);
        // Dry run: checked in batches, nothing applied.
        let dry = Batching::new(&[], &[]);
        let r = run_batching(
            &p,
            &s,
            &dry,
            &ExecOptions {
                dry_run: true,
                ..ExecOptions::default()
            },
        );
        assert_eq!(r.count("would-change"), p.steps.len());
        assert!(dry.inner.log.lock().unwrap().is_empty());
    }

    #[test]
    fn a_batched_step_that_lost_its_connection_is_checked_again_never_blindly_reapplied() {
        let (s, p) = ha();
        let lost = batched_with_dependents(&p, &s);
        let lost = lost.as_str();
        let b = Batching::new(&[], &[lost]);
        let r = run_batching(&p, &s, &b, &ExecOptions::default());
        assert!(r.succeeded(), "{:?}", r.outcomes);
        let i = p.steps.iter().position(|s| p.step_id(s) == lost).unwrap() as StepRef;
        assert!(b
            .batches
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.len() > 1 && b.contains(&i)));
        let calls = |v: &Mutex<Vec<StepRef>>| v.lock().unwrap().iter().filter(|&&j| j == i).count();
        // check, apply (lost), check, apply, check after apply.
        assert_eq!(calls(&b.inner.log), 2);
        assert_eq!(calls(&b.checks), 3);
        // No retries allowed: it fails with the connection error.
        let b = Batching::new(&[], &[lost]);
        let r = run_batching(
            &p,
            &s,
            &b,
            &ExecOptions {
                connection_retries: 0,
                ..ExecOptions::default()
            },
        );
        assert_eq!(r.outcomes[i as usize].name(), "failed");
    }

    /// A step applied in a batch of several, with dependents: the last of
    /// the first such batch of a clean run (the fake is deterministic).
    fn batched_with_dependents(p: &Plan, s: &Scenario) -> String {
        let b = Batching::new(&[], &[]);
        run_batching(p, s, &b, &ExecOptions::default());
        let batches = b.batches.lock().unwrap().clone();
        let has_dependents = |i: StepRef| p.steps.iter().any(|st| p.deps(st).contains(&i));
        batches
            .iter()
            .filter(|b| b.len() > 1)
            .flat_map(|b| b.iter().rev())
            .find(|&&i| has_dependents(i))
            .map(|&i| p.step_id(&p.steps[i as usize]))
            .expect("a batched step with dependents")
    }

    fn run_batching(p: &Plan, s: &Scenario, b: &Batching, opts: &ExecOptions) -> Report {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(execute(p, s, b, opts, &mut Quiet))
    }

    fn ha() -> (Scenario, Plan) {
        let text = "cluster: {name: t, kubernetesVersion: \"1.30.0\"}\nnodes:\n  - {name: cp-1, ip: 192.168.0.1, roles: [control-plane, etcd]}\n  - {name: cp-2, ip: 192.168.0.2, roles: [control-plane, etcd]}\n  - {name: cp-3, ip: 192.168.0.3, roles: [control-plane, etcd]}\n  - {name: w-1, ip: 192.168.0.4}\n  - {name: w-2, ip: 192.168.0.5}\n  - {name: w-3, ip: 192.168.0.6}\netcd:\n  members: [cp-1, cp-2, cp-3]\n";
        let s = crate::load("t.yaml", text, None).unwrap().scenario;
        let p = crate::plan::plan(&s);
        (s, p)
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Event {
        Start(StepRef),
        Finish(StepRef),
        WaveStart(u32),
        WaveEnd(u32, bool),
    }

    #[derive(Default)]
    struct Events(Vec<Event>);

    impl Observer for Events {
        fn started(&mut self, _: &Plan, step: StepRef) {
            self.0.push(Event::Start(step));
        }
        fn finished(&mut self, _: &Plan, step: StepRef, _: &Outcome) {
            self.0.push(Event::Finish(step));
        }
        fn wave_started(&mut self, _: &Plan, _: &Rollout, wave: u32) {
            self.0.push(Event::WaveStart(wave));
        }
        fn wave_finished(&mut self, _: &Plan, _: &Rollout, wave: u32, failed: Option<StepRef>) {
            self.0.push(Event::WaveEnd(wave, failed.is_some()));
        }
    }

    fn run_observed(p: &Plan, s: &Scenario, b: &Fake, opts: &ExecOptions) -> (Report, Vec<Event>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut ev = Events::default();
        let r = rt.block_on(execute(p, s, b, opts, &mut ev));
        (r, ev.0)
    }

    #[test]
    fn a_rollout_runs_wave_by_wave_in_either_executor() {
        let (s, p) = ha();
        let rollout = crate::rollout::rollout(&p, &s, 2);
        let waves = rollout.waves.len() as u32;
        for max_parallel in [1, 16] {
            let b = Fake {
                done: Mutex::default(),
                fail: BTreeSet::new(),
                log: Mutex::default(),
            };
            let opts = ExecOptions {
                max_parallel,
                rollout: Some(rollout.clone()),
                ..ExecOptions::default()
            };
            let (r, ev) = run_observed(&p, &s, &b, &opts);
            assert!(r.succeeded(), "{:?}", r.outcomes);
            let mut finished = BTreeSet::new();
            let mut announced = Vec::new();
            for e in &ev {
                match *e {
                    Event::Finish(i) => {
                        finished.insert(i);
                    }
                    Event::Start(i) => {
                        let w = rollout.wave_of[i as usize];
                        if w > 0 {
                            assert_eq!(
                                announced.last(),
                                Some(&w),
                                "{} starts in its own wave",
                                p.step_id(&p.steps[i as usize])
                            );
                            for (j, &wj) in rollout.wave_of.iter().enumerate() {
                                if wj > 0 && wj < w {
                                    assert!(finished.contains(&(j as StepRef)), "{} started before {} (an earlier wave) finished (parallel {max_parallel})", p.step_id(&p.steps[i as usize]), p.step_id(&p.steps[j]));
                                }
                            }
                        }
                    }
                    Event::WaveStart(w) => announced.push(w),
                    Event::WaveEnd(w, failed) => {
                        assert!(!failed);
                        assert_eq!(announced.last(), Some(&w));
                    }
                }
            }
            assert_eq!(announced, (1..=waves).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_failed_wave_stops_the_rollout_and_says_where() {
        let (s, p) = ha();
        let rollout = crate::rollout::rollout(&p, &s, 1);
        let id = |o: &str| p.steps.iter().position(|s| p.step_id(s) == o).unwrap();
        for max_parallel in [1, 16] {
            let b = Fake {
                done: Mutex::default(),
                fail: ["cp-1/wait/kube-apiserver".to_string()].into(),
                log: Mutex::default(),
            };
            let opts = ExecOptions {
                max_parallel,
                rollout: Some(rollout.clone()),
                ..ExecOptions::default()
            };
            let (r, ev) = run_observed(&p, &s, &b, &opts);
            assert_eq!(r.outcomes[id("cp-1/wait/kube-apiserver")].name(), "failed");
            // Earlier waves ran; the etcd members are all restarted.
            assert_eq!(r.outcomes[id("cp-3/wait/etcd")].name(), "changed");
            // The next wave never starts: cp-2's apiserver keeps running as it was.
            let stopped = Outcome::Skipped {
                reason: "the rollout stopped at wave 4/15 (kube-apiserver on cp-1): cp-1/wait/kube-apiserver failed".into(),
            };
            assert_eq!(r.outcomes[id("cp-2/manifest/kube-apiserver")], stopped);
            assert_eq!(r.outcomes[id("w-3/service/kubelet")], stopped);
            // What restarts nothing still converges.
            assert_eq!(r.outcomes[id("w-3/net/bridge")].name(), "changed");
            assert!(ev.contains(&Event::WaveEnd(4, true)));
            assert!(
                !ev.contains(&Event::WaveStart(5)),
                "parallel {max_parallel}"
            );
        }
    }
}
