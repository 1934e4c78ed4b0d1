//! [`SshBackend`]: the executor's [`Backend`] for real machines.
//!
//! - Node steps are rendered to shell by [`crate::shell_render`] and run over
//!   [`crate::ssh`] in the node's one agent session, check first, apply only
//!   when needed; the apply and its verification are one command.
//! - Checks are batched: the first check on a node sends every check of
//!   that node's steps in one pipelined round trip. A prefetched answer is
//!   used only while no step it depends on (transitively) has been applied
//!   in this run; otherwise the step is checked again, live. A converged
//!   re-apply thus costs one round trip per node.
//! - In that batch, every file the node's upload steps place (files and
//!   release binaries) is checked by one script: one `stat` over all of
//!   them, one `sha256sum` over those whose type, size, mode and owner match
//!   ([`shell_render::files_check`]). A file hashed earlier is not hashed
//!   again while it keeps the identity (`dev:ino:mtime:ctime`) recorded on
//!   the operator's machine for its wanted content, under
//!   `<state dir>/file-records/<node>` ([`FileRecords`]); any write, mode
//!   change or replacement changes that identity.
//! - The executor hands over a node's independent ready steps as one batch
//!   ([`Backend::check_batch`], [`Backend::apply_batch`]): the checks not
//!   answered yet go in one round trip (files again by one script), the
//!   applies, each with its check after, pipelined in another, each answer
//!   reported as soon as it is read.
//! - An upload hashes the received file before its rename and notes its
//!   identity (`dev:ino:mtime`); the check right after compares the placed
//!   file's identity, type, size, mode and owner instead of hashing it
//!   again ([`shell_render`]'s `verify`).
//! - A node marked unreachable (see [`crate::ssh`]) has its steps
//!   [`Probe::NotApplicable`] with that reason, at once, without another
//!   connection attempt; the other nodes go on.
//! - Local steps (the PKI) run on the operator's machine: key material is
//!   generated (or kept) by [`crate::render::render_tree`] in the state
//!   directory, `<scenario dir>/.kscratch/<cluster>/`, which also receives the
//!   rendered tree of every node's files. Keys there are 0600. An apply
//!   starts that render once every node accepted the handshake, while the
//!   agents start ([`Early`]); the first PKI step reports what it made. A
//!   render that made anything counts every PKI step as applied, so the
//!   checks of files made from the material fetched before it are stale.
//! - A release binary missing from the release directory, a daemon that is
//!   not installed on the node, and the fabric router (not reachable over
//!   SSH) make their step [`Probe::NotApplicable`] with the reason: the
//!   executor then skips the step and its dependents and says why.

use crate::render::{load_material, render_tree, Material, RenderReport, PKI_STORE};
use crate::shell_render::{
    self, apply_then_check, files_check, parse_files_check, parse_verify, Binary, FileFound,
    FileWant, Inputs, RenderCx, Rendered, Script, Stdin, StepScripts, EXIT_NEEDED,
    EXIT_NOT_APPLICABLE, EXIT_SATISFIED,
};
use crate::ssh::{Endpoint, Output, SshConfig, SshError, SshPool};
use async_trait::async_trait;
use kscratch_core::exec::{Backend, ErrorKind, Probe, StepCx, StepError};
use kscratch_core::plan::{Action, Plan, StepRef, Target};
use kscratch_core::render::{self as krender, ca_spec, cert_spec, token_users, Redacted, Secrets};
use kscratch_core::Scenario;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How [`SshBackend`] runs.
#[derive(Debug, Clone)]
pub struct SshBackendOptions {
    pub ssh: SshConfig,
    /// The scenario file's directory: relative key paths and the release
    /// directory are resolved against it.
    pub scenario_dir: PathBuf,
    /// Key material and the rendered tree; see [`state_dir`].
    pub state_dir: PathBuf,
    /// Time for one remote command (health waits get their own timeout on top).
    pub step_timeout: Duration,
    /// Checks only: secrets that do not exist yet are rendered as placeholders.
    pub dry_run: bool,
}

/// `<scenario dir>/.kscratch/<cluster>`: where apply keeps the cluster's key material.
pub fn state_dir(scenario_path: &Path, cluster: &str) -> PathBuf {
    let dir = scenario_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(".kscratch").join(cluster)
}

/// One node's batched check answers, fetched under its own lock.
type Prefetch = Arc<tokio::sync::Mutex<Option<BTreeMap<StepRef, Probe>>>>;

/// The executor's backend over SSH.
pub struct SshBackend {
    opts: SshBackendOptions,
    pool: SshPool,
    endpoints: Vec<Endpoint>,
    release_dir: PathBuf,
    material: Mutex<Option<Arc<Material>>>,
    pki: tokio::sync::Mutex<()>,
    binaries: Mutex<BTreeMap<String, Result<Binary, String>>>,
    commands: Mutex<BTreeMap<StepRef, u32>>,
    /// Checks answered by the command that applied the step (see [`apply_then_check`]).
    verified: Mutex<BTreeMap<StepRef, Probe>>,
    /// Per node, the answers of the batched checks not used yet (`None`: not fetched).
    prefetched: Mutex<BTreeMap<usize, Prefetch>>,
    /// Steps applied in this run: their dependents' prefetched checks are stale.
    applied: Mutex<BTreeSet<StepRef>>,
    /// The plan and scenario this backend runs, for the checks fetched
    /// while connecting ([`SshBackend::connect_all`]).
    plan: Plan,
    scenario: Scenario,
    /// Steps the executor will skip without checking them (see [`SshBackend::skipped_anyway`]).
    skipped_anyway: OnceLock<BTreeSet<StepRef>>,
    /// The key material render started while the nodes connect (see [`Early`]).
    early: tokio::sync::Mutex<Early>,
}

/// The key store render [`SshBackend::connect_all`] starts once every node
/// accepted the handshake, so that the material is there when the
/// executor's PKI steps come (on 8 loaded testbed nodes it took 0.5 s,
/// after the connections, while node1's first batch was still running).
/// The first PKI step checked after it answers "needed" for what it
/// generated and its apply reports it, so the run says "changed" as if
/// that step had rendered it.
enum Early {
    NotStarted,
    Running(tokio::task::JoinHandle<Result<RenderReport, crate::render::Error>>),
    /// Done: what it generated, and the step that reports it, once one claimed it.
    Done {
        report: RenderReport,
        claimed_by: Option<StepRef>,
    },
    /// Failed, or nothing to render: the PKI steps render as usual.
    Over,
}

/// What the shell renderer needs for `cx`'s step, with its file bytes and
/// release binary.
fn render_cx<'a>(cx: &StepCx<'a>, file: Option<&'a [u8]>, binary: Option<Binary>) -> RenderCx<'a> {
    RenderCx {
        scenario: cx.scenario,
        plan: cx.plan,
        node: cx.node(),
        inputs: Inputs { file, binary },
    }
}

impl SshBackend {
    pub fn new(scenario: &Scenario, plan: &Plan, opts: SshBackendOptions) -> SshBackend {
        let endpoints = scenario
            .nodes
            .iter()
            .map(|n| Endpoint {
                node: n.name.clone(),
                host: n.ip.to_string(),
                port: n.ssh.port,
                user: n.ssh.user.clone(),
                key: n.ssh.key.as_deref().map(|k| resolve(&opts.scenario_dir, k)),
                sudo: n.ssh.sudo,
            })
            .collect();
        let release_dir = resolve(&opts.scenario_dir, &plan.release_dir);
        SshBackend {
            pool: SshPool::new(opts.ssh.clone()),
            opts,
            endpoints,
            release_dir,
            material: Mutex::default(),
            pki: tokio::sync::Mutex::new(()),
            binaries: Mutex::default(),
            commands: Mutex::default(),
            verified: Mutex::default(),
            prefetched: Mutex::default(),
            applied: Mutex::default(),
            plan: plan.clone(),
            scenario: scenario.clone(),
            skipped_anyway: OnceLock::new(),
            early: tokio::sync::Mutex::new(Early::NotStarted),
        }
    }

    /// The SSH connections' counters per node.
    pub fn pool(&self) -> &SshPool {
        &self.pool
    }

    /// Remote scripts run per step so far (check, apply-and-verify each count
    /// one; a batched check counts for its step).
    pub fn commands_per_step(&self) -> BTreeMap<StepRef, u32> {
        self.commands.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The endpoint of node `i`.
    pub fn endpoint(&self, i: usize) -> Option<&Endpoint> {
        self.endpoints.get(i)
    }

    /// Connects to every node in parallel, and returns the nodes that
    /// failed, with why:
    /// 1. every connection is opened (host key verified, authenticated);
    ///    a refusal ([`SshError::is_refusal`]) anywhere returns at once, before
    ///    anything was started on any node;
    /// 2. then each node's agent is started and, as soon as it answers, the
    ///    node's batched checks are sent, so that one node's checks run
    ///    while slower nodes are still starting their agents.
    pub async fn connect_all(&self) -> Vec<(String, SshError)> {
        self.connect(false).await
    }

    /// [`SshBackend::connect_all`], but only the nodes the plan has a step
    /// on (`kscratch reset` of some nodes: the others are not needed).
    pub async fn connect_planned(&self) -> Vec<(String, SshError)> {
        self.connect(true).await
    }

    async fn connect(&self, only_planned: bool) -> Vec<(String, SshError)> {
        let planned = |i: usize| {
            !only_planned
                || self
                    .plan
                    .steps
                    .iter()
                    .any(|s| s.target == Target::Node(i as u32))
        };
        let handshakes = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| planned(*i))
            .map(|(_, ep)| ep)
            .map(|ep| async move { (ep.node.clone(), self.pool.handshake(ep).await) });
        let failed: Vec<(String, SshError)> = futures::future::join_all(handshakes)
            .await
            .into_iter()
            .filter_map(|(n, r)| r.err().map(|e| (n, e)))
            .collect();
        if failed.iter().any(|(_, e)| e.is_refusal()) {
            return failed;
        }
        self.start_early_render().await;
        let down: BTreeSet<String> = failed.iter().map(|(n, _)| n.clone()).collect();
        let sessions = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, ep)| planned(*i) && !down.contains(&ep.node))
            .map(|(i, ep)| async move {
                let r = self.pool.connect(ep).await;
                if r.is_ok() {
                    // A failed fetch leaves every check to be run live.
                    let _ = self.fetch_checks(i).await;
                }
                (ep.node.clone(), r)
            });
        let mut all = failed;
        all.extend(
            futures::future::join_all(sessions)
                .await
                .into_iter()
                .filter_map(|(n, r)| r.err().map(|e| (n, e))),
        );
        all
    }

    /// What the step would run: scripts for a node, a description for a
    /// local step, or why it cannot run. For `--dry-run` listings.
    pub fn render_step(&self, cx: &StepCx<'_>) -> Result<Rendered, StepError> {
        if let Some(r) = self.not_applicable(cx) {
            return Ok(Rendered::NotApplicable(r));
        }
        let file = self.file_bytes(cx)?;
        let binary = self.binary(cx)?.and_then(Result::ok);
        shell_render::render(&render_cx(cx, file.as_deref(), binary), &cx.step.action)
            .map_err(|e| StepError::failed(format!("{}: {e}", cx.id())))
    }

    /// The file an upload step places, for the node's batched file check;
    /// `None` for other steps and for what must be checked on its own (not
    /// applicable, not renderable yet, an unusual path).
    fn file_want(&self, cx: &StepCx<'_>) -> Option<FileWant> {
        if !matches!(
            cx.step.action,
            Action::WriteFile { .. } | Action::WriteText { .. } | Action::InstallBinary { .. }
        ) || self.not_applicable(cx).is_some()
        {
            return None;
        }
        let file = self.file_bytes(cx).ok()?;
        let binary = self.binary(cx).ok()?.and_then(Result::ok);
        shell_render::file_want(&render_cx(cx, file.as_deref(), binary), &cx.step.action)
            .ok()
            .flatten()
            .filter(FileWant::batchable)
    }

    /// `<state dir>/file-records/<node>`: see [`FileRecords`].
    fn records_path(&self, node: &str) -> PathBuf {
        self.opts.state_dir.join("file-records").join(node)
    }

    fn records(&self, node: &str) -> FileRecords {
        FileRecords::load(&self.records_path(node))
    }

    /// Saves what changed (never in a dry run, which writes nothing).
    fn save_records(&self, node: &str, records: &FileRecords) {
        if self.opts.dry_run || !records.changed {
            return;
        }
        if let Err(e) = records.save(&self.records_path(node)) {
            tracing::debug!(node = %node, "cannot save the file records: {e}");
        }
    }

    /// The release binary of an `InstallBinary` step: `Ok(None)` for other
    /// actions, `Some(Err(reason))` when the release directory lacks it.
    fn binary(&self, cx: &StepCx<'_>) -> Result<Option<Result<Binary, String>>, StepError> {
        let Action::InstallBinary { name, .. } = &cx.step.action else {
            return Ok(None);
        };
        let mut cache = self
            .binaries
            .lock()
            .map_err(|_| StepError::failed("binary cache poisoned"))?;
        if let Some(b) = cache.get(*name) {
            return Ok(Some(b.clone()));
        }
        let path = self.release_dir.join(name);
        let b = match sha256_file(&path) {
            Ok((sha256, size)) => Ok(Binary { path, sha256, size }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "{name} is not in the release directory {} (binaries.dir): put the Kubernetes server binaries there to install it",
                self.release_dir.display()
            )),
            Err(e) => return Err(StepError::failed(format!("{}: cannot read {}: {e}", cx.id(), path.display()))),
        };
        cache.insert(name.to_string(), b.clone());
        Ok(Some(b))
    }

    fn not_applicable(&self, cx: &StepCx<'_>) -> Option<String> {
        match self.binary(cx) {
            Ok(Some(Err(reason))) => Some(reason),
            _ => None,
        }
    }

    /// The bytes of a `WriteFile` step, rendered with the cluster's key
    /// material through [`StepCx::file_bytes`], the source the simulator uses too.
    fn file_bytes(&self, cx: &StepCx<'_>) -> Result<Option<Vec<u8>>, StepError> {
        if !matches!(cx.step.action, Action::WriteFile { .. }) {
            return Ok(None);
        }
        let material = self.material(cx.scenario)?;
        match cx.file_bytes(&*material).transpose() {
            Ok(b) => Ok(b),
            // Before the PKI steps ran (a dry run), placeholders show the file's shape.
            Err(krender::RenderError::MissingSecret { .. }) if self.opts.dry_run => cx
                .file_bytes(&Redacted)
                .transpose()
                .map_err(|e| StepError::failed(format!("{}: {e}", cx.id()))),
            Err(e) => Err(StepError::failed(format!("{}: {e}", cx.id()))),
        }
    }

    fn pki_dir(&self) -> PathBuf {
        self.opts.state_dir.join(PKI_STORE)
    }

    /// Starts the [`Early`] render, unless this is a dry run or the plan
    /// has no PKI step.
    async fn start_early_render(&self) {
        let mut early = self.early.lock().await;
        if self.opts.dry_run
            || !matches!(*early, Early::NotStarted)
            || !self.plan.steps.iter().any(|st| st.target == Target::Local)
        {
            return;
        }
        let (s, plan, dir) = (
            self.scenario.clone(),
            self.plan.clone(),
            self.opts.state_dir.clone(),
        );
        *early = Early::Running(tokio::task::spawn_blocking(move || {
            render_tree(&s, &plan, &dir)
        }));
    }

    /// Waits for the [`Early`] render, if one runs; whether step `i` is the
    /// PKI step that reports what it generated (the first one checked).
    async fn reports_early_render(&self, i: StepRef) -> bool {
        let mut early = self.early.lock().await;
        if let Early::Running(h) = &mut *early {
            let rendered = match h.await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            *early = match rendered {
                Ok(report) if !report.generated.is_empty() => Early::Done {
                    report,
                    claimed_by: None,
                },
                Ok(_) => Early::Over,
                Err(e) => {
                    tracing::debug!("the key store render while connecting failed: {e}");
                    Early::Over
                }
            };
            // Loaded before the render (the checks fetched while connecting).
            self.forget_material();
        }
        match &mut *early {
            Early::Done { claimed_by, .. } => *claimed_by.get_or_insert(i) == i,
            _ => false,
        }
    }

    /// Logs what a render made, for step `cx`, and then marks every PKI
    /// step applied: one render may have made any step's material, and the
    /// checks of the files made from it that were fetched before the
    /// render are stale.
    fn report_generated(&self, cx: &StepCx<'_>, report: &RenderReport) {
        for e in &report.generated {
            tracing::info!(step = %cx.id(), "generated {} ({:?})", e.name, e.why);
        }
        if report.generated.is_empty() {
            return;
        }
        if let Ok(mut a) = self.applied.lock() {
            a.extend(
                self.plan
                    .steps
                    .iter()
                    .enumerate()
                    .filter(|(_, st)| st.target == Target::Local)
                    .map(|(j, _)| j as StepRef),
            );
        }
    }

    fn material(&self, s: &Scenario) -> Result<Arc<Material>, StepError> {
        let mut g = self
            .material
            .lock()
            .map_err(|_| StepError::failed("key material cache poisoned"))?;
        if let Some(m) = g.as_ref() {
            return Ok(m.clone());
        }
        let m = Arc::new(
            load_material(s, &self.pki_dir())
                .map_err(|e| StepError::failed(format!("cannot load the key material: {e}")))?,
        );
        *g = Some(m.clone());
        Ok(m)
    }

    fn forget_material(&self) {
        if let Ok(mut g) = self.material.lock() {
            *g = None;
        }
    }

    /// Whether a local PKI step's material is in the store, for its current spec.
    fn local_check(&self, cx: &StepCx<'_>) -> Result<Probe, StepError> {
        let s = cx.scenario;
        let m = self.material(s)?;
        let specs = read_specs(&self.pki_dir());
        let recorded = |name: &str| specs.get(name).cloned();
        let ok = match &cx.step.action {
            Action::GenerateCa { ca } => {
                m.ca_cert(*ca).is_some()
                    && m.ca_key(*ca).is_some()
                    && recorded(ca.name()).is_some_and(|r| r.0 == ca_spec(s, *ca).fingerprint())
            }
            Action::IssueCert { cert, node } => {
                let idx = node.as_deref().and_then(|n| s.node_index(n));
                let name = match node {
                    Some(n) => format!("{}/{n}", cert.name()),
                    None => cert.name().to_string(),
                };
                let spec = cert_spec(s, *cert, idx)
                    .map_err(|e| StepError::failed(format!("{}: {e}", cx.id())))?;
                let issuer = m
                    .ca_cert(cert.ca())
                    .map(|pem| hex(&Sha256::digest(pem.as_bytes())));
                m.cert(*cert, node.as_deref()).is_some()
                    && m.key(*cert, node.as_deref()).is_some()
                    && recorded(&name)
                        .is_some_and(|r| r.0 == spec.fingerprint() && Some(&r.1) == issuer.as_ref())
            }
            Action::GenerateServiceAccountKey => {
                m.service_account_key().is_some() && m.service_account_pub().is_some()
            }
            Action::GenerateTokens { .. } => {
                token_users(s).iter().all(|u| m.token(u.key).is_some())
            }
            other @ (Action::Preflight { .. }
            | Action::InstallBinary { .. }
            | Action::PullImage { .. }
            | Action::WriteFile { .. }
            | Action::SetSysctl { .. }
            | Action::LoadKernelModule { .. }
            | Action::DeleteLink { .. }
            | Action::DeleteIptablesRules { .. }
            | Action::CreateBridge { .. }
            | Action::CreateVxlan(_)
            | Action::InstallPodRoutes { .. }
            | Action::InstallFabricRoutes { .. }
            | Action::EnsureIptablesRule { .. }
            | Action::StartService { .. }
            | Action::WaitHealthy { .. }
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
            | Action::RemoveEtcdMember { .. }
            | Action::DeleteNode { .. }) => {
                return Err(StepError::failed(format!(
                    "{}: {other:?} does not run on the operator's machine",
                    cx.id()
                )))
            }
        };
        Ok(if ok { Probe::Satisfied } else { Probe::Needed })
    }

    async fn local_apply(&self, cx: &StepCx<'_>) -> Result<(), StepError> {
        if let Ok(mut a) = self.applied.lock() {
            a.insert(cx.index);
        }
        {
            let mut early = self.early.lock().await;
            if let Early::Done { report, claimed_by } = &*early {
                if *claimed_by == Some(cx.index) {
                    self.report_generated(cx, report);
                    *early = Early::Over;
                    return Ok(());
                }
            }
        }
        // One render generates whatever is missing or stale, for every PKI step at once.
        let _g = self.pki.lock().await;
        let (s, plan, dir) = (
            cx.scenario.clone(),
            cx.plan.clone(),
            self.opts.state_dir.clone(),
        );
        let report = tokio::task::spawn_blocking(move || render_tree(&s, &plan, &dir))
            .await
            .map_err(|e| StepError::failed(format!("{}: {e}", cx.id())))?
            .map_err(|e| StepError::failed(format!("{}: {e}", cx.id())))?;
        self.report_generated(cx, &report);
        self.forget_material();
        Ok(())
    }

    fn scripts(&self, cx: &StepCx<'_>) -> Result<Result<StepScripts, Probe>, StepError> {
        Ok(match self.render_step(cx)? {
            Rendered::Remote(r) => Ok(r),
            Rendered::NotApplicable(reason) => Err(Probe::NotApplicable(reason)),
            Rendered::Local(_) => {
                return Err(StepError::failed(format!(
                    "{}: a local step has no remote script",
                    cx.id()
                )))
            }
        })
    }

    fn timeout(&self, cx: &StepCx<'_>) -> Duration {
        match &cx.step.action {
            Action::WaitHealthy { timeout_secs, .. } => self
                .opts
                .step_timeout
                .max(Duration::from_secs(u64::from(*timeout_secs) + 30)),
            Action::ValidateCluster { .. } => self.opts.step_timeout.max(Duration::from_secs(330)),
            Action::Preflight { .. }
            | Action::InstallBinary { .. }
            | Action::PullImage { .. }
            | Action::GenerateCa { .. }
            | Action::IssueCert { .. }
            | Action::GenerateServiceAccountKey
            | Action::GenerateTokens { .. }
            | Action::WriteFile { .. }
            | Action::SetSysctl { .. }
            | Action::LoadKernelModule { .. }
            | Action::DeleteLink { .. }
            | Action::DeleteIptablesRules { .. }
            | Action::CreateBridge { .. }
            | Action::CreateVxlan(_)
            | Action::InstallPodRoutes { .. }
            | Action::InstallFabricRoutes { .. }
            | Action::EnsureIptablesRule { .. }
            | Action::StartService { .. }
            | Action::ApplyManifest { .. }
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
            | Action::RemoveEtcdMember { .. }
            | Action::DeleteNode { .. } => self.opts.step_timeout,
        }
    }

    fn endpoint_of(&self, cx: &StepCx<'_>) -> Result<&Endpoint, StepError> {
        let i = cx
            .node()
            .ok_or_else(|| StepError::failed(format!("{}: not a node step", cx.id())))?;
        self.endpoints
            .get(i)
            .ok_or_else(|| StepError::failed(format!("{}: no node {i}", cx.id())))
    }

    /// `Some(skip reason)` when the step's node was marked unreachable.
    fn unreachable(&self, cx: &StepCx<'_>) -> Option<Probe> {
        let ep = self.endpoint_of(cx).ok()?;
        self.pool
            .unreachable_reason(&ep.node)
            .map(|why| Probe::NotApplicable(format!("unreachable: {why}")))
    }

    /// Whether a step that `i` depends on, directly or not, was applied in this run.
    fn a_dependency_changed(&self, cx: &StepCx<'_>) -> bool {
        let Ok(applied) = self.applied.lock() else {
            return true;
        };
        if applied.is_empty() {
            return false;
        }
        let mut seen = BTreeSet::new();
        let mut stack: Vec<StepRef> = cx.plan.deps(cx.step).to_vec();
        while let Some(d) = stack.pop() {
            if !seen.insert(d) {
                continue;
            }
            if applied.contains(&d) {
                return true;
            }
            stack.extend_from_slice(cx.plan.deps(&cx.plan.steps[d as usize]));
        }
        false
    }

    /// The prefetched check of the step, fetching the node's batch on the
    /// node's first check; `None` when it must be checked live.
    async fn prefetched(&self, cx: &StepCx<'_>) -> Result<Option<Probe>, StepError> {
        let Some(node) = cx.node() else {
            return Ok(None);
        };
        // The batch is of this backend's plan: another plan is checked live.
        if cx.plan.steps.len() != self.plan.steps.len()
            || cx.plan.step_id(cx.step) != self.plan.step_id(&self.plan.steps[cx.index as usize])
        {
            return Ok(None);
        }
        let slot = self.fetch_checks(node).await?;
        let answer = slot.lock().await.as_mut().and_then(|m| m.remove(&cx.index));
        Ok(answer.filter(|_| !self.a_dependency_changed(cx)))
    }

    /// Steps the executor skips without checking them: those that cannot
    /// run here whatever the node says (a binary missing from the release
    /// directory, the fabric router) and, transitively, their dependents.
    /// The batch leaves them out (on the testbed, kubectl's checks of the
    /// addons cost about 50 ms each, for steps that are skipped anyway).
    fn skipped_anyway(&self) -> &BTreeSet<StepRef> {
        self.skipped_anyway.get_or_init(|| {
            let plan = &self.plan;
            let mut out = BTreeSet::new();
            // Topological order: every dependency is decided before its dependents.
            for (j, st) in plan.steps.iter().enumerate() {
                let j = j as StepRef;
                if plan.deps(st).iter().any(|d| out.contains(d)) {
                    out.insert(j);
                    continue;
                }
                if matches!(st.action, Action::WriteFile { .. }) {
                    continue;
                }
                let cx = StepCx {
                    plan,
                    scenario: &self.scenario,
                    index: j,
                    step: st,
                };
                if matches!(self.render_step(&cx), Ok(Rendered::NotApplicable(_))) {
                    out.insert(j);
                }
            }
            out
        })
    }

    /// Node `node`'s batch of checks, fetched in one round trip if it was
    /// not yet: every check of its steps that can be rendered now (files
    /// whose key material does not exist yet are checked live, later),
    /// except those of steps skipped anyway.
    async fn fetch_checks(&self, node: usize) -> Result<Prefetch, StepError> {
        let slot = {
            let mut all = self
                .prefetched
                .lock()
                .map_err(|_| StepError::failed("check cache poisoned"))?;
            all.entry(node).or_default().clone()
        };
        let mut pre = slot.lock().await;
        if pre.is_some() {
            drop(pre);
            return Ok(slot);
        }
        let ep = self
            .endpoints
            .get(node)
            .ok_or_else(|| StepError::failed(format!("no node {node}")))?;
        let skipped = self.skipped_anyway();
        let mut others: Vec<(StepRef, Script)> = Vec::new();
        let mut files: Vec<(StepRef, FileWant)> = Vec::new();
        for (j, st) in self.plan.steps.iter().enumerate() {
            if st.target != Target::Node(node as u32) || skipped.contains(&(j as StepRef)) {
                continue;
            }
            let jcx = StepCx {
                plan: &self.plan,
                scenario: &self.scenario,
                index: j as StepRef,
                step: st,
            };
            if let Some(want) = self.file_want(&jcx) {
                files.push((j as StepRef, want));
                continue;
            }
            if let Ok(Rendered::Remote(r)) = self.render_step(&jcx) {
                others.push((j as StepRef, r.check));
            }
        }
        // Every uploaded file of the node in one script, with the other checks.
        let answers = match self
            .batched_checks(ep, &files, &others, self.opts.step_timeout)
            .await
        {
            Ok(answers) => answers,
            Err(e) => {
                tracing::debug!(node = %ep.node, "batched checks failed: {e}");
                BTreeMap::new()
            }
        };
        *pre = Some(answers);
        drop(pre);
        Ok(slot)
    }

    /// One round trip of checks on a node: every file of `files` in one
    /// script (one `stat`, one `sha256sum`, the node's recorded identities:
    /// see [`files_check`]), each of `others` as it is. The answers by step;
    /// a step without one (an error status, an answer that does not parse,
    /// files that cannot be checked together) is left to its own live
    /// check, which reports it.
    async fn batched_checks(
        &self,
        ep: &Endpoint,
        files: &[(StepRef, FileWant)],
        others: &[(StepRef, Script)],
        timeout: Duration,
    ) -> Result<BTreeMap<StepRef, Probe>, SshError> {
        let wants: Vec<FileWant> = files.iter().map(|(_, w)| w.clone()).collect();
        let mut records = self.records(&ep.node);
        let recorded: Vec<Option<String>> = wants.iter().map(|w| records.vouches(w)).collect();
        let files_script = if wants.is_empty() {
            None
        } else {
            files_check(&wants, &recorded).ok()
        };
        let has_files = files_script.is_some();
        let mut all: Vec<Script> = Vec::with_capacity(others.len() + 1);
        all.extend(files_script);
        all.extend(others.iter().map(|(_, s)| s.clone()));
        if all.is_empty() {
            return Ok(BTreeMap::new());
        }
        if let Ok(mut c) = self.commands.lock() {
            let checked_files = files.iter().filter(|_| has_files).map(|(j, _)| j);
            for &j in checked_files.chain(others.iter().map(|(j, _)| j)) {
                *c.entry(j).or_default() += 1;
            }
        }
        let mut outs = self.pool.run_batch(ep, &all, timeout).await?;
        let mut answers = BTreeMap::new();
        if has_files && !outs.is_empty() {
            let out = outs.remove(0);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let found = (out.status == Some(0))
                .then(|| parse_files_check(&wants, &recorded, &stdout))
                .flatten();
            match found {
                Some(found) => {
                    for ((j, w), f) in files.iter().zip(&found) {
                        let p = if f.holds {
                            Probe::Satisfied
                        } else {
                            Probe::Needed
                        };
                        answers.insert(*j, p);
                        records.update(w, f);
                    }
                    self.save_records(&ep.node, &records);
                }
                None => tracing::debug!(
                    node = %ep.node,
                    "the batched file check answered {:?}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }
        }
        for ((j, _), out) in others.iter().zip(outs) {
            if let Some(p) = probe_of(out.status, &String::from_utf8_lossy(&out.stdout)) {
                answers.insert(*j, p);
            }
        }
        Ok(answers)
    }

    async fn run(&self, cx: &StepCx<'_>, script: &Script, what: &str) -> Result<Output, StepError> {
        let ep = self.endpoint_of(cx)?;
        if let Ok(mut c) = self.commands.lock() {
            *c.entry(cx.index).or_default() += 1;
        }
        tracing::debug!(step = %cx.id(), "{what}");
        self.pool
            .run(ep, script, self.timeout(cx))
            .await
            .map_err(|e| {
                let kind = e.kind();
                StepError::new(kind, format!("{}: {what}: {e}", cx.id()))
            })
    }
}

impl SshBackend {
    /// A node step's check when it is answered without asking the node
    /// (verified by its apply, prefetched, unreachable, not applicable):
    /// `Err(probe)`; otherwise the scripts to check it live with.
    async fn answered(&self, cx: &StepCx<'_>) -> Result<Result<StepScripts, Probe>, StepError> {
        // The verification right after an apply already ran, in the apply's command.
        if let Some(p) = self
            .verified
            .lock()
            .ok()
            .and_then(|mut v| v.remove(&cx.index))
        {
            return Ok(Err(p));
        }
        if let Some(p) = self.unreachable(cx) {
            return Ok(Err(p));
        }
        let scripts = match self.scripts(cx)? {
            Ok(s) => s,
            Err(probe) => return Ok(Err(probe)),
        };
        if let Some(p) = self.prefetched(cx).await? {
            return Ok(Err(p));
        }
        if let Some(p) = self.unreachable(cx) {
            return Ok(Err(p));
        }
        Ok(Ok(scripts))
    }

    async fn live_check(&self, cx: &StepCx<'_>, scripts: &StepScripts) -> Result<Probe, StepError> {
        let out = match self.run(cx, &scripts.check, "check").await {
            Err(e) if self.unreachable(cx).is_some() => {
                tracing::debug!("{e}");
                return Ok(self.unreachable(cx).unwrap_or(Probe::Needed));
            }
            other => other?,
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        probe_of(out.status, &stdout)
            .ok_or_else(|| command_failed(cx, "check", &scripts.check, &out))
    }

    /// The node all of `cxs` run on, if they are node steps of one node.
    fn one_node(cxs: &[StepCx<'_>]) -> Option<usize> {
        let n = cxs.first()?.node()?;
        cxs.iter().all(|c| c.node() == Some(n)).then_some(n)
    }

    /// Reads the answer of an [`apply_then_check`] script: the check after
    /// the apply is kept for the executor's verification.
    fn applied_answer(
        &self,
        cx: &StepCx<'_>,
        scripts: &StepScripts,
        out: &Output,
    ) -> Result<(), StepError> {
        let stdout = String::from_utf8_lossy(&out.stdout);
        match (out.status, parse_verify(&stdout)) {
            (Some(0), Some((status, text))) => {
                let probe = probe_of(Some(status), &text).ok_or_else(|| {
                    StepError::new(
                        ErrorKind::Command,
                        format!(
                            "{}: the check after apply failed on {} (exit status {status}): {}",
                            cx.id(),
                            cx.plan.target_name(cx.step.target),
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    )
                })?;
                if let Ok(mut v) = self.verified.lock() {
                    v.insert(cx.index, probe);
                }
                Ok(())
            }
            _ => Err(command_failed(cx, "apply", &scripts.apply, out)),
        }
    }

    /// The scripts of a remote step to apply, or why it cannot be.
    fn apply_scripts(&self, cx: &StepCx<'_>) -> Result<StepScripts, StepError> {
        match self.scripts(cx)? {
            Ok(s) => Ok(s),
            Err(Probe::NotApplicable(r)) => Err(StepError::failed(format!("{}: {r}", cx.id()))),
            Err(_) => Err(StepError::failed(format!("{}: nothing to apply", cx.id()))),
        }
    }
}

#[async_trait]
impl Backend for SshBackend {
    async fn check(&self, cx: &StepCx<'_>) -> Result<Probe, StepError> {
        match cx.step.target {
            Target::Local if self.reports_early_render(cx.index).await => Ok(Probe::Needed),
            Target::Local => self.local_check(cx),
            Target::Fabric | Target::Node(_) => match self.answered(cx).await? {
                Err(p) => Ok(p),
                Ok(scripts) => self.live_check(cx, &scripts).await,
            },
        }
    }

    async fn apply(&self, cx: &StepCx<'_>) -> Result<(), StepError> {
        match cx.step.target {
            Target::Local => self.local_apply(cx).await,
            Target::Fabric | Target::Node(_) => {
                let scripts = self.apply_scripts(cx)?;
                if let Ok(mut a) = self.applied.lock() {
                    a.insert(cx.index);
                }
                let both = apply_then_check(&scripts);
                let out = self.run(cx, &both, "apply").await?;
                self.applied_answer(cx, &scripts, &out)
            }
        }
    }

    /// A node's steps not answered without asking it are checked in one
    /// round trip: their uploaded files by one [`files_check`] script, the
    /// others' checks pipelined behind it.
    async fn check_batch(&self, cxs: &[StepCx<'_>]) -> Vec<Result<Probe, StepError>> {
        let mut out: Vec<Option<Result<Probe, StepError>>> = cxs.iter().map(|_| None).collect();
        let Some(node) = Self::one_node(cxs) else {
            for (k, cx) in cxs.iter().enumerate() {
                out[k] = Some(self.check(cx).await);
            }
            return out.into_iter().flatten().collect();
        };
        let mut live: Vec<(usize, StepScripts)> = Vec::new();
        for (k, cx) in cxs.iter().enumerate() {
            match self.answered(cx).await {
                Ok(Err(p)) => out[k] = Some(Ok(p)),
                Ok(Ok(scripts)) => live.push((k, scripts)),
                Err(e) => out[k] = Some(Err(e)),
            }
        }
        if live.len() > 1 {
            if let Some(ep) = self.endpoints.get(node) {
                let mut files: Vec<(StepRef, FileWant)> = Vec::new();
                let mut others: Vec<(StepRef, Script)> = Vec::new();
                for (k, scripts) in live.iter() {
                    let cx = &cxs[*k];
                    match self.file_want(cx) {
                        Some(w) => files.push((cx.index, w)),
                        None => others.push((cx.index, scripts.check.clone())),
                    }
                }
                let timeout = others
                    .iter()
                    .filter_map(|(j, _)| cxs.iter().find(|cx| cx.index == *j))
                    .map(|cx| self.timeout(cx))
                    .fold(self.opts.step_timeout, Duration::max);
                match self.batched_checks(ep, &files, &others, timeout).await {
                    Ok(answers) => {
                        for (k, _) in &live {
                            if let Some(p) = answers.get(&cxs[*k].index) {
                                out[*k] = Some(Ok(p.clone()));
                            }
                        }
                    }
                    Err(e) => {
                        let kind = e.kind();
                        for (k, _) in &live {
                            let cx = &cxs[*k];
                            out[*k] = Some(match self.unreachable(cx) {
                                Some(p) => Ok(p),
                                None => {
                                    Err(StepError::new(kind, format!("{}: check: {e}", cx.id())))
                                }
                            });
                        }
                    }
                }
            }
        }
        for (k, scripts) in &live {
            if out[*k].is_none() {
                out[*k] = Some(self.live_check(&cxs[*k], scripts).await);
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(StepError::failed("not checked"))))
            .collect()
    }

    /// A node's applies pipelined in one round trip, each one's answer
    /// (with its check after) handed over as soon as it is read.
    async fn apply_batch(
        &self,
        cxs: &[StepCx<'_>],
        done: &(dyn Fn(usize, Result<(), StepError>) + Send + Sync),
    ) {
        let Some(node) = Self::one_node(cxs) else {
            for (k, cx) in cxs.iter().enumerate() {
                done(k, self.apply(cx).await);
            }
            return;
        };
        let Some(ep) = self.endpoints.get(node) else {
            for (k, cx) in cxs.iter().enumerate() {
                done(
                    k,
                    Err(StepError::failed(format!("{}: no node {node}", cx.id()))),
                );
            }
            return;
        };
        let mut sent: Vec<(usize, StepScripts)> = Vec::new();
        for (k, cx) in cxs.iter().enumerate() {
            match self.apply_scripts(cx) {
                Ok(s) => sent.push((k, s)),
                Err(e) => done(k, Err(e)),
            }
        }
        // The uploads among them go as one script ([`shell_render::uploads`]).
        let mut files: Vec<(usize, FileWant)> = Vec::new();
        let mut parts: Vec<(FileWant, Stdin)> = Vec::new();
        let mut rest = Vec::with_capacity(sent.len());
        for (k, s) in sent {
            // A path the batch cannot take keeps its own upload script.
            match self
                .file_want(&cxs[k])
                .filter(|w| w.batchable() && !matches!(s.apply.stdin, Stdin::Empty))
            {
                Some(w) => {
                    files.push((k, w.clone()));
                    parts.push((w, s.apply.stdin));
                }
                None => rest.push((k, s)),
            }
        }
        let sent = rest;
        let uploads = if parts.is_empty() {
            None
        } else {
            match shell_render::uploads(&parts) {
                Ok(script) => Some(script),
                Err(e) => {
                    for (k, _) in files.drain(..) {
                        done(k, Err(StepError::failed(format!("{}: {e}", cxs[k].id()))));
                    }
                    None
                }
            }
        };
        let ids = |ks: &mut dyn Iterator<Item = usize>| -> Vec<StepRef> {
            ks.map(|k| cxs[k].index).collect()
        };
        let every: Vec<StepRef> = ids(&mut files
            .iter()
            .map(|(k, _)| *k)
            .chain(sent.iter().map(|(k, _)| *k)));
        if let Ok(mut a) = self.applied.lock() {
            a.extend(every.iter().copied());
        }
        if let Ok(mut c) = self.commands.lock() {
            for i in &every {
                *c.entry(*i).or_default() += 1;
            }
        }
        let has_uploads = uploads.is_some();
        let mut scripts: Vec<Script> = Vec::with_capacity(sent.len() + 1);
        scripts.extend(uploads);
        scripts.extend(sent.iter().map(|(_, s)| apply_then_check(s)));
        let timeout = sent
            .iter()
            .map(|(k, _)| self.timeout(&cxs[*k]))
            .fold(self.opts.step_timeout, Duration::max);
        let mut answered = vec![false; scripts.len()];
        let r = self
            .pool
            .run_batch_each(ep, &scripts, timeout, &mut |j, o| {
                answered[j] = true;
                if has_uploads && j == 0 {
                    self.uploads_answer(cxs, &files, &o, done);
                    return;
                }
                let (k, s) = &sent[j - usize::from(has_uploads)];
                done(*k, self.applied_answer(&cxs[*k], s, &o));
            })
            .await;
        if let Err(e) = r {
            let kind = e.kind();
            let failed = |k: usize| {
                done(
                    k,
                    Err(StepError::new(kind, format!("{}: apply: {e}", cxs[k].id()))),
                )
            };
            if has_uploads && !answered[0] {
                files.iter().for_each(|(k, _)| failed(*k));
            }
            for (j, (k, _)) in sent.iter().enumerate() {
                if !answered[j + usize::from(has_uploads)] {
                    failed(*k);
                }
            }
        }
    }
}

impl SshBackend {
    /// Hands over each file's result of an [`shell_render::uploads`] answer.
    fn uploads_answer(
        &self,
        cxs: &[StepCx<'_>],
        files: &[(usize, FileWant)],
        out: &Output,
        done: &(dyn Fn(usize, Result<(), StepError>) + Send + Sync),
    ) {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed = (out.status == Some(0))
            .then(|| shell_render::parse_uploads(files.len(), &stdout))
            .flatten();
        let Some(parsed) = parsed else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            for (k, w) in files {
                done(
                    *k,
                    Err(StepError::new(
                        ErrorKind::Command,
                        format!(
                            "{}: placing {} with {} other files failed on {} (status {:?}): {}",
                            cxs[*k].id(),
                            w.path,
                            files.len() - 1,
                            cxs[*k].plan.target_name(cxs[*k].step.target),
                            out.status,
                            stderr.trim()
                        ),
                    )),
                );
            }
            return;
        };
        for ((k, _), u) in files.iter().zip(parsed) {
            let cx = &cxs[*k];
            let r = match u.result {
                Ok(status) => {
                    match probe_of(Some(status), "") {
                        Some(p) => {
                            if let Ok(mut v) = self.verified.lock() {
                                v.insert(cx.index, p);
                            }
                        }
                        None => {
                            tracing::debug!(step = %cx.id(), "the check after the upload answered {status}")
                        }
                    }
                    Ok(())
                }
                Err(why) => Err(StepError::new(
                    ErrorKind::Command,
                    format!(
                        "{}: apply failed on {}: {why}",
                        cx.id(),
                        cx.plan.target_name(cx.step.target)
                    ),
                )),
            };
            done(*k, r);
        }
    }
}

/// Per node, the identities (`dev:ino:mtime:ctime`, see
/// [`shell_render::files_check`]) under which installed files were hashed
/// and held their wanted SHA-256, so that a converged re-apply does not hash
/// unchanged binaries again. Kept on the operator's machine (the checks
/// change nothing on the node), one line per file: `SHA256 IDENTITY PATH`.
/// A missing or damaged record only means hashing again.
#[derive(Debug, Default)]
struct FileRecords {
    by_path: BTreeMap<String, (String, String)>,
    changed: bool,
}

impl FileRecords {
    fn load(path: &Path) -> FileRecords {
        let by_path = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ' ');
                let (sha, id, p) = (f.next()?, f.next()?, f.next()?);
                Some((p.to_string(), (sha.to_string(), id.to_string())))
            })
            .collect();
        FileRecords {
            by_path,
            changed: false,
        }
    }

    /// The recorded identity of `w.path`, if it was recorded for `w`'s content.
    fn vouches(&self, w: &FileWant) -> Option<String> {
        self.by_path
            .get(&w.path)
            .filter(|(sha, _)| *sha == w.sha256)
            .map(|(_, id)| id.clone())
    }

    fn update(&mut self, w: &FileWant, f: &FileFound) {
        if f.holds && !f.hashed {
            return;
        }
        let new = f.record.as_ref().map(|id| (w.sha256.clone(), id.clone()));
        let old = match &new {
            Some(r) => self.by_path.insert(w.path.clone(), r.clone()),
            None => self.by_path.remove(&w.path),
        };
        self.changed |= old != new;
    }

    fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let text: String = self
            .by_path
            .iter()
            .map(|(p, (sha, id))| format!("{sha} {id} {p}\n"))
            .collect();
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("records")
        ));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}

/// A check's answer from its exit status; `None` for an error status.
fn probe_of(status: Option<u32>, stdout: &str) -> Option<Probe> {
    match status {
        Some(EXIT_SATISFIED) => Some(Probe::Satisfied),
        Some(EXIT_NEEDED) => Some(Probe::Needed),
        Some(EXIT_NOT_APPLICABLE) => {
            let reason = stdout
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("not applicable on this node");
            Some(Probe::NotApplicable(reason.to_string()))
        }
        _ => None,
    }
}

/// A clear error: node, step, the command (its first line), status and stderr.
fn command_failed(cx: &StepCx<'_>, what: &str, script: &Script, out: &Output) -> StepError {
    let status = match (&out.status, &out.signal) {
        (Some(s), _) => format!("exit status {s}"),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => "no exit status".into(),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(8)..].join("\n    ");
    let first = script
        .text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#') && *l != "set -e")
        .unwrap_or("");
    let node = cx.plan.target_name(cx.step.target);
    StepError::new(
        ErrorKind::Command,
        format!(
            "{}: {what} failed on {node} ({status}) running `{first}`{}",
            cx.id(),
            if tail.is_empty() {
                String::new()
            } else {
                format!(":\n    {tail}")
            }
        ),
    )
}

/// `~/x` → `$HOME/x`; a relative path → under `base`.
fn resolve(base: &Path, p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The SHA-256 (hex) and size of a file.
fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex(&h.finalize()), size))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `name → (fingerprint, issuer digest)` from the store's `specs.json`;
/// empty when absent or unreadable (the render then decides afresh).
fn read_specs(pki_dir: &Path) -> BTreeMap<String, (String, String)> {
    let Ok(text) = std::fs::read_to_string(pki_dir.join("specs.json")) else {
        return BTreeMap::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    if let Some(certs) = v.get("certs").and_then(|c| c.as_object()) {
        for (name, rec) in certs {
            let f = rec
                .get("fingerprint")
                .and_then(|x| x.as_str())
                .unwrap_or_default();
            let i = rec
                .get("issuer")
                .and_then(|x| x.as_str())
                .unwrap_or_default();
            out.insert(name.clone(), (f.to_string(), i.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kscratch_core::exec::{execute, ExecOptions, Quiet};

    const SCENARIO: &str = "cluster: {name: t, kubernetesVersion: \"1.30.4\"}\n\
        nodes:\n  - {name: a, ip: 127.0.0.1, roles: [control-plane, etcd, worker], ssh: {port: 9}}\n\
        network: {clusterCIDR: 10.10.0.0/16, nodePrefix: 24, podTraffic: routed}\n\
        etcd: {runAs: service}\n";

    #[test]
    fn state_lives_next_to_the_scenario() {
        assert_eq!(
            state_dir(Path::new("/x/y/s.yaml"), "c"),
            PathBuf::from("/x/y/.kscratch/c")
        );
        assert_eq!(
            state_dir(Path::new("s.yaml"), "c"),
            PathBuf::from("./.kscratch/c")
        );
        assert_eq!(resolve(Path::new("/b"), "k"), PathBuf::from("/b/k"));
        assert_eq!(resolve(Path::new("/b"), "/k"), PathBuf::from("/k"));
    }

    /// The one-node scenario, its plan, a state directory and options for
    /// it, and a runtime to run the executor on.
    struct Fixture {
        s: Scenario,
        plan: Plan,
        dir: tempfile::TempDir,
        opts: SshBackendOptions,
        rt: tokio::runtime::Runtime,
    }

    impl Fixture {
        fn new() -> Fixture {
            let s = kscratch_core::load("t.yaml", SCENARIO, None)
                .unwrap()
                .scenario;
            let plan = kscratch_core::plan::plan(&s);
            let dir = tempfile::tempdir().unwrap();
            let opts = SshBackendOptions {
                ssh: SshConfig::new(dir.path().join("known_hosts")),
                scenario_dir: dir.path().to_path_buf(),
                state_dir: dir.path().join(".kscratch/t"),
                step_timeout: Duration::from_secs(5),
                dry_run: false,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            Fixture {
                s,
                plan,
                dir,
                opts,
                rt,
            }
        }

        fn backend(&self, dry_run: bool) -> SshBackend {
            SshBackend::new(
                &self.s,
                &self.plan,
                SshBackendOptions {
                    dry_run,
                    ..self.opts.clone()
                },
            )
        }

        fn run(&self, b: &SshBackend) -> kscratch_core::exec::Report {
            self.rt.block_on(execute(
                &self.plan,
                &self.s,
                b,
                &ExecOptions {
                    connection_retries: 0,
                    ..ExecOptions::default()
                },
                &mut Quiet,
            ))
        }

        fn local_steps(&self) -> Vec<usize> {
            (0..self.plan.steps.len())
                .filter(|&i| self.plan.steps[i].target == Target::Local)
                .collect()
        }
    }

    /// The PKI runs locally: the first local step generates the whole store,
    /// the others then find their material; a second run changes nothing.
    /// Node steps fail (nothing listens on 127.0.0.1:9) as connection errors.
    #[test]
    fn local_pki_steps_generate_once_and_are_then_satisfied() {
        let f = Fixture::new();
        let (plan, dir) = (&f.plan, &f.dir);
        let b = f.backend(false);
        let r = f.run(&b);
        let local = f.local_steps();
        assert!(!local.is_empty());
        assert_eq!(
            local
                .iter()
                .filter(|&&i| r.outcomes[i].name() == "changed")
                .count(),
            1,
            "{:?}",
            r.outcomes
        );
        assert!(local.iter().all(|&i| r.outcomes[i].succeeded()));
        // One render made every step's material: the checks of the files
        // made from any of it that were fetched before are stale.
        let applied = b.applied.lock().unwrap().clone();
        assert!(
            local.iter().all(|&i| applied.contains(&(i as StepRef))),
            "{applied:?}"
        );
        let key = dir.path().join(".kscratch/t/local/pki/ca.key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let pre = plan
            .steps
            .iter()
            .position(|s| plan.step_id(s) == "a/preflight")
            .unwrap();
        // The node cannot be reached: it is marked unreachable once (one
        // connection attempt), and every one of its steps is skipped with
        // that reason instead of failing, each after its own attempts.
        let reason = "unreachable: a (127.0.0.1:9): cannot connect";
        match &r.outcomes[pre] {
            kscratch_core::exec::Outcome::Skipped { reason: r } => {
                assert!(r.starts_with(reason), "{r}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.pool().stats()["a"].connects, 1);
        assert_eq!(b.pool().unreachable().len(), 1);
        assert!(r
            .outcomes
            .iter()
            .all(|o| !matches!(o, kscratch_core::exec::Outcome::Failed { .. })));
        let again = f.run(&f.backend(false));
        assert!(local.iter().all(|&i| again.outcomes[i].name() == "ok"));
    }

    /// The key store render started while the nodes connect: the first PKI
    /// step reports it (one "changed", as when that step renders), every
    /// PKI step counts as applied (the checks fetched before it are
    /// stale), and a dry run starts none.
    #[test]
    fn a_render_started_while_connecting_is_reported_by_the_first_pki_step() {
        let f = Fixture::new();
        let dry = f.backend(true);
        f.rt.block_on(dry.start_early_render());
        assert!(matches!(
            *f.rt.block_on(dry.early.lock()),
            Early::NotStarted
        ));
        assert!(!f.opts.state_dir.exists());

        let b = f.backend(false);
        f.rt.block_on(b.start_early_render());
        assert!(matches!(*f.rt.block_on(b.early.lock()), Early::Running(_)));
        let r = f.run(&b);
        let local = f.local_steps();
        let changed = local
            .iter()
            .filter(|&&i| r.outcomes[i].name() == "changed")
            .count();
        assert_eq!(changed, 1, "{:?}", r.outcomes);
        assert!(local.iter().all(|&i| r.outcomes[i].succeeded()));
        assert!(matches!(*f.rt.block_on(b.early.lock()), Early::Over));
        let applied = b.applied.lock().unwrap().clone();
        assert!(
            local.iter().all(|&i| applied.contains(&(i as StepRef))),
            "every PKI step counts as applied: {applied:?}"
        );
        assert!(f.opts.state_dir.join("local/pki/ca.key").exists());
        // Nothing left to render: no step claims anything.
        let again = f.backend(false);
        f.rt.block_on(again.start_early_render());
        let r = f.run(&again);
        assert!(local.iter().all(|&i| r.outcomes[i].name() == "ok"));
        assert!(again
            .applied
            .lock()
            .unwrap()
            .iter()
            .all(|&i| f.plan.steps[i as usize].target != Target::Local));
    }

    #[test]
    fn a_binary_missing_from_the_release_dir_is_not_applicable() {
        let f = Fixture::new();
        let (s, plan, dir, rt) = (&f.s, &f.plan, &f.dir, &f.rt);
        std::fs::create_dir_all(dir.path().join("kubernetes/server/bin")).unwrap();
        std::fs::write(dir.path().join("kubernetes/server/bin/etcd"), b"etcd").unwrap();
        let b = f.backend(false);
        let cx = |id: &str| {
            let i = plan
                .steps
                .iter()
                .position(|st| plan.step_id(st) == id)
                .unwrap();
            StepCx {
                plan,
                scenario: s,
                index: i as StepRef,
                step: &plan.steps[i],
            }
        };
        let probe = rt.block_on(b.check(&cx("a/bin/kubelet"))).unwrap();
        let Probe::NotApplicable(reason) = probe else {
            panic!("{probe:?}")
        };
        assert!(
            reason.starts_with("kubelet is not in the release directory"),
            "{reason}"
        );
        assert!(reason.contains("kubernetes/server/bin"), "{reason}");
        match b.render_step(&cx("a/bin/etcd")).unwrap() {
            Rendered::Remote(r) => assert!(r.check.text.contains(&hex(&Sha256::digest(b"etcd")))),
            other => panic!("{other:?}"),
        }
    }
}
