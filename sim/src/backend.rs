//! The simulator as a [`Backend`]: each typed action is interpreted on the
//! virtual node it targets, with check-then-apply semantics like the SSH
//! backend's. What a step changes is what a real node would show afterwards
//! (`ip link`, `ip route`, `iptables-save`, `sysctl`, files with modes).
//!
//! A written file holds the bytes [`StepCx::file_bytes`] gives, the one
//! source the SSH backend uploads from too (with [`Redacted`] key material
//! here). The scenario in [`StepCx`] is read only through that function:
//! every other decision comes from the plan's actions and artifacts and from
//! the files on the node.

use crate::components;
use crate::netfilter::Position;
use crate::routes::{PodRouteEntry, PodRouteMode, PodRoutes, SharedRoutes};
use crate::world::*;
use async_trait::async_trait;
use ipnet::IpNet;
use kscratch_core::exec::{Backend, Probe, StepCx, StepError};
use kscratch_core::net::route::{MacAddr, Route, RouteDst, RouteProto, RouteScope};
use kscratch_core::plan::{
    Action, Artifact, Asset, PodRouteVia, PreflightCheck, Service, StepRef, Target,
};
use kscratch_core::render::{NetworkDescription, Redacted};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

/// The simulated cluster behind the backend trait.
pub struct SimBackend {
    pub state: Mutex<Sim>,
}

/// Everything the simulation holds: the world, plus what the operator's
/// machine generated (names only: the simulator never sees key material).
pub struct Sim {
    pub world: World,
    pub generated: BTreeSet<String>,
    pub pod_routes: Option<Arc<PodRoutes>>,
    /// Addons applied through the apiserver.
    pub addons: BTreeSet<Asset>,
    /// Every distinct file content written, shared by the nodes that got it.
    blobs: HashSet<Arc<[u8]>>,
    /// The bytes a `WriteFile` check rendered, for the apply that follows it.
    rendered: Option<(StepRef, Arc<[u8]>)>,
    /// Deployments scaled by hand: (namespace, name) → replicas.
    pub scaled: std::collections::BTreeMap<(String, String), u32>,
    /// Network descriptions read by `kscratch-network`, by the address of
    /// the shared file content: every node has the same bytes, parsed once.
    descriptions: std::collections::HashMap<usize, Arc<NetworkDescription>>,
    /// Files with the same bytes on every node, rendered once.
    shared_files: std::collections::HashMap<Asset, Arc<[u8]>>,
    /// The scenario and plan (addresses) `shared_files` and `rendered` are of.
    rendered_for: (usize, usize),
    /// Where [`Sim::pod_routes`] was made from: the address and length of
    /// the plan's pod network table (a plan with another table gets its own).
    pod_routes_src: (usize, usize),
    /// The Node objects the API holds: each kubelet registers its node when
    /// it starts; `DeleteNode` deletes one. A machine that is gone leaves its
    /// object behind.
    pub api_nodes: BTreeSet<String>,
    /// The etcd cluster's membership as `etcdctl member list` shows it: the
    /// `--initial-cluster` the first member started with (etcd keeps its
    /// membership in its data dir; later flags do not change it), less the
    /// members `etcdctl member remove` removed. Quorum is still counted
    /// among each member's `--initial-cluster` (components.rs).
    pub etcd_membership: BTreeSet<String>,
}

impl SimBackend {
    pub fn new(world: World) -> SimBackend {
        SimBackend {
            state: Mutex::new(Sim {
                world,
                generated: BTreeSet::new(),
                pod_routes: None,
                addons: BTreeSet::new(),
                blobs: HashSet::new(),
                rendered: None,
                scaled: Default::default(),
                descriptions: Default::default(),
                shared_files: Default::default(),
                rendered_for: (0, 0),
                pod_routes_src: (0, 0),
                api_nodes: BTreeSet::new(),
                etcd_membership: BTreeSet::new(),
            }),
        }
    }

    pub fn into_sim(self) -> Sim {
        self.state.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Backend for SimBackend {
    async fn check(&self, cx: &StepCx<'_>) -> Result<Probe, StepError> {
        let mut sim = self.state.lock().unwrap_or_else(|p| p.into_inner());
        sim.check(cx)
    }

    async fn apply(&self, cx: &StepCx<'_>) -> Result<(), StepError> {
        let mut sim = self.state.lock().unwrap_or_else(|p| p.into_inner());
        sim.apply(cx)
    }
}

/// The simulator by reference, so that a wrapper can hold it and the caller
/// keep it ([`crate::simulate_wrapped`]).
#[async_trait]
impl Backend for &SimBackend {
    async fn check(&self, cx: &StepCx<'_>) -> Result<Probe, StepError> {
        (**self).check(cx).await
    }

    async fn apply(&self, cx: &StepCx<'_>) -> Result<(), StepError> {
        (**self).apply(cx).await
    }
}

fn ok(b: bool) -> Probe {
    if b {
        Probe::Satisfied
    } else {
        Probe::Needed
    }
}

impl Sim {
    /// `kscratch-network`, as its unit runs it: the description its command
    /// names, converged on this node action by action (what holds is left
    /// alone, the rest applied), as the shell re-applier's converging
    /// commands do. The actions are the plan's own node-base actions
    /// ([`NetworkDescription::actions`]); the pod routes use the plan's
    /// shared table when it holds the described entries.
    fn reapply_network(&mut self, cx: &StepCx<'_>) -> Result<(), StepError> {
        let id = cx.id();
        let i = cx
            .node()
            .ok_or_else(|| StepError::failed(format!("{id}: this action runs on a node")))?;
        self.node_mut(cx)?;
        let desc = self
            .network_description(i)
            .map_err(|e| command_error(&id, format!("kscratch-network: {e}")))?;
        let node = &self.world.nodes[i];
        let me = desc.me(|ip| node.is_local(ip)).ok_or_else(|| {
            command_error(
                &id,
                format!(
                    "kscratch-network: no node of the description has its address on {}",
                    desc.interface
                ),
            )
        })?;
        let table = match &self.pod_routes {
            Some(t) if same_entries(t, &desc.nodes) => t.clone(),
            _ => {
                let t = Arc::new(table_from(&desc.nodes));
                self.pod_routes.get_or_insert(t).clone()
            }
        };
        let node = &mut self.world.nodes[i];
        for a in desc.actions(me) {
            if !net_satisfied(node, &a, Some(&table)) {
                net_apply(node, &id, &a, Some(table.clone()))?;
            }
        }
        node.services.insert(
            Service::Network.name().into(),
            ServiceState { running: true },
        );
        Ok(())
    }

    /// The description the `kscratch-network` unit on node `i` names (the
    /// last word of its command), parsed once per distinct content.
    fn network_description(&mut self, i: usize) -> Result<Arc<NetworkDescription>, String> {
        let node = &self.world.nodes[i];
        let unit = Asset::Unit(Service::Network).path();
        let text = crate::files::read(node, unit)
            .map_err(|_| format!("Unit kscratch-network.service not found ({unit} is missing)"))?;
        let words =
            kscratch_core::render::unit_exec_start(text).map_err(|e| format!("{unit}: {e}"))?;
        let conf = words
            .last()
            .ok_or_else(|| format!("{unit}: no ExecStart"))?
            .clone();
        let file = node
            .fs
            .files
            .get(&conf)
            .ok_or_else(|| format!("{conf}: No such file or directory"))?;
        let key = Arc::as_ptr(&file.content) as *const u8 as usize;
        if let Some(d) = self.descriptions.get(&key) {
            return Ok(d.clone());
        }
        let text = std::str::from_utf8(&file.content).map_err(|_| format!("{conf} is not text"))?;
        let d = Arc::new(NetworkDescription::parse(text).map_err(|e| format!("{conf}: {e}"))?);
        self.descriptions.insert(key, d.clone());
        Ok(d)
    }

    /// The bytes of a `WriteFile` step, from the one source, shared with
    /// every node that got the same bytes.
    fn file_bytes(&mut self, cx: &StepCx<'_>) -> Result<Arc<[u8]>, StepError> {
        // Another plan (a removal or a rollout over the same machines)
        // renders its own bytes: nothing rendered for the last one is reused.
        let key = (
            std::ptr::from_ref(cx.scenario) as usize,
            std::ptr::from_ref(cx.plan) as usize,
        );
        if self.rendered_for != key {
            self.rendered_for = key;
            self.shared_files.clear();
            self.rendered = None;
        }
        if let Some((i, b)) = &self.rendered {
            if *i == cx.index {
                return Ok(b.clone());
            }
        }
        let asset = match &cx.step.action {
            Action::WriteFile { asset, .. } if asset.same_on_every_node() => Some(*asset),
            _ => None,
        };
        if let Some(b) = asset.and_then(|a| self.shared_files.get(&a)) {
            let b = b.clone();
            self.rendered = Some((cx.index, b.clone()));
            return Ok(b);
        }
        let bytes = cx
            .file_bytes(&Redacted)
            .ok_or_else(|| StepError::failed(format!("{}: not a file step", cx.id())))?
            .map_err(|e| StepError::failed(format!("{}: {e}", cx.id())))?;
        let b = match self.blobs.get(bytes.as_slice()) {
            Some(b) => b.clone(),
            None => {
                let b: Arc<[u8]> = Arc::from(bytes);
                self.blobs.insert(b.clone());
                b
            }
        };
        self.rendered = Some((cx.index, b.clone()));
        if let Some(a) = asset {
            self.shared_files.insert(a, b.clone());
        }
        Ok(b)
    }

    fn node_mut(&mut self, cx: &StepCx<'_>) -> Result<&mut Node, StepError> {
        let i = cx
            .node()
            .ok_or_else(|| StepError::failed(format!("{}: this action runs on a node", cx.id())))?;
        let node = &mut self.world.nodes[i];
        if !node.up {
            return Err(StepError::new(
                kscratch_core::exec::ErrorKind::Connection,
                format!("{}: node {} is down", cx.id(), node.name),
            ));
        }
        Ok(node)
    }

    fn check(&mut self, cx: &StepCx<'_>) -> Result<Probe, StepError> {
        let id = cx.id();
        if matches!(cx.step.target, Target::Local) {
            return match &cx.step.action {
                Action::GenerateCa { .. }
                | Action::IssueCert { .. }
                | Action::GenerateServiceAccountKey
                | Action::GenerateTokens { .. } => Ok(ok(self.generated.contains(&id))),
                a @ (Action::Preflight { .. }
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
                | Action::DeleteNode { .. }) => Err(not_run_on(&id, a, "the operator's machine")),
            };
        }
        if matches!(cx.step.target, Target::Fabric) {
            return match &cx.step.action {
                Action::InstallFabricRoutes { .. } => Ok(ok(fabric_routes(cx)
                    .iter()
                    .all(|(net, via)| self.world.underlay.fabric_routes.get(net) == Some(via)))),
                Action::DeleteRoutes { routes } => Ok(ok(routes
                    .iter()
                    .all(|r| fabric_route(&self.world.underlay, r).is_none()))),
                a @ (Action::Preflight { .. }
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
                | Action::EnsureIptablesRule { .. }
                | Action::StartService { .. }
                | Action::WaitHealthy { .. }
                | Action::ApplyManifest { .. }
                | Action::ValidateCluster { .. }
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
                | Action::DeleteNode { .. }) => Err(not_run_on(&id, a, "the underlay router")),
            };
        }
        if let Action::InstallPodRoutes { .. } = &cx.step.action {
            self.plan_table(cx);
        }
        let pod_routes = self.pod_routes.clone();
        let node_index = cx.node().unwrap_or(0);
        if let Action::PowerOff = &cx.step.action {
            return Ok(ok(!self.world.nodes[node_index].up));
        }
        if let a @ (Action::RemoveEtcdMember { .. } | Action::DeleteNode { .. }) = &cx.step.action {
            return self.removal_check(cx, a);
        }
        if let Action::ScaleDeployment {
            namespace,
            name,
            replicas,
            ..
        } = &cx.step.action
        {
            let key = (namespace.clone(), name.clone());
            return Ok(ok(self.scaled.get(&key) == Some(replicas)));
        }
        // A node that is down fails the step before anything is read.
        self.node_mut(cx)?;
        let content = if matches!(cx.step.action, Action::WriteFile { .. }) {
            Some(self.file_bytes(cx)?)
        } else {
            None
        };
        let node = self.node_mut(cx)?;
        Ok(match &cx.step.action {
            // Health depends on other nodes too (etcd members behind --etcd-servers).
            Action::WaitHealthy { component, url, .. } => {
                let r = components::wait_healthy(&self.world, node_index, *component, url);
                // Waiting cannot make an incoherent component healthy: fail with the reason.
                return r.map(|()| Probe::Satisfied).map_err(|why| {
                    StepError::failed(format!("{id}: {component} is not healthy: {why}"))
                });
            }
            Action::ValidateCluster { nodes, components } => {
                components::validate_cluster(&self.world, node_index, nodes, components)
                    .map_err(|e| StepError::failed(format!("{id}: validate-cluster: {e}")))?;
                Probe::Satisfied
            }
            Action::Preflight { checks } => {
                for c in checks {
                    preflight(node, c)
                        .map_err(|e| StepError::failed(format!("{id}: preflight: {e}")))?;
                }
                Probe::Satisfied
            }
            // The same SHA-256: the same release's binary.
            Action::InstallBinary { name, .. } => {
                ok(node.binaries.get(*name) == Some(&cx.plan.version))
            }
            Action::PullImage { image } => ok(node.images.contains(image)),
            Action::WriteFile { path, mode, .. } => ok(node
                .fs
                .files
                .get(*path)
                .is_some_and(|f| f.mode == *mode && Some(&f.content) == content.as_ref())),
            a @ (Action::SetSysctl { .. } | Action::LoadKernelModule { .. }) => {
                ok(net_satisfied(node, a, None))
            }
            Action::DeleteLink { name } => ok(!node.links.contains_key(name)),
            Action::DeleteIptablesRules {
                table,
                rules,
                chains,
            } => ok(rules.iter().all(|r| !node.netfilter.check(*table, r))
                && chains
                    .iter()
                    .all(|c| node.netfilter.chain(*table, c).is_none())),
            a @ (Action::CreateBridge { .. }
            | Action::CreateVxlan(_)
            | Action::InstallPodRoutes { .. }
            | Action::EnsureIptablesRule { .. }) => ok(net_satisfied(node, a, pod_routes.as_ref())),
            Action::StartService { name } => ok(node.running(name.name())),
            Action::ApplyManifest { asset, .. } => ok(self.addons.contains(asset)),
            Action::DeleteRoutes { routes } => ok(routes.iter().all(|r| !has_route(node, r))),
            Action::InsertIptablesRule { table, rule } => ok(node.netfilter.check(*table, rule)),
            Action::SetLinkDown { name } => ok(!link(node, &id, name)?.up),
            Action::SetLinkMtu { name, mtu } => ok(link(node, &id, name)?.mtu == *mtu),
            Action::DeleteFdbEntries { entries } => ok(entries.iter().all(|e| !has_fdb(node, e))),
            Action::DeleteNeighbors { entries } => ok(entries.iter().all(|e| !has_neigh(node, e))),
            Action::StopService { name } => ok(!node.running(name.name())),
            Action::DeleteFile { path } => ok(!node.fs.files.contains_key(path.as_str())),
            // Not loaded (never started, or disabled): satisfied.
            Action::DisableService { name } => ok(!node.services.contains_key(name.name())),
            Action::ClearDirectory { path } => {
                let dir = format!("{}/", path.trim_end_matches('/'));
                ok(!node.fs.files.keys().any(|f| f.starts_with(&dir)))
            }
            Action::DeleteIptablesChains { table, chains } => {
                ok(doomed_chains(&node.netfilter, *table, chains).is_empty())
            }
            Action::UnloadKernelModule { name } => ok(!node.modules.contains(*name)),
            Action::WriteText { path, mode, text } => ok(node
                .fs
                .files
                .get(*path)
                .is_some_and(|f| f.mode == *mode && *f.content == *text.as_bytes())),
            // On the operator's machine or the fabric: handled above.
            Action::GenerateCa { .. }
            | Action::IssueCert { .. }
            | Action::GenerateServiceAccountKey
            | Action::GenerateTokens { .. }
            | Action::InstallFabricRoutes { .. }
            | Action::PowerOff
            | Action::ScaleDeployment { .. }
            | Action::RemoveEtcdMember { .. }
            | Action::DeleteNode { .. } => {
                return Err(StepError::failed(format!(
                    "{id}: the simulator does not run {} on a node",
                    action_name(&cx.step.action)
                )))
            }
        })
    }

    fn apply(&mut self, cx: &StepCx<'_>) -> Result<(), StepError> {
        let id = cx.id();
        match cx.step.target {
            Target::Local => {
                return match &cx.step.action {
                    Action::GenerateCa { .. }
                    | Action::IssueCert { .. }
                    | Action::GenerateServiceAccountKey
                    | Action::GenerateTokens { .. } => {
                        self.generated.insert(id);
                        Ok(())
                    }
                    a @ (Action::Preflight { .. }
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
                        Err(not_run_on(&id, a, "the operator's machine"))
                    }
                };
            }
            Target::Fabric => {
                return match &cx.step.action {
                    Action::DeleteRoutes { routes } => {
                        for r in routes {
                            if let Some(net) = fabric_route(&self.world.underlay, r) {
                                self.world.underlay.fabric_routes.remove(&net);
                            }
                        }
                        Ok(())
                    }
                    Action::InstallFabricRoutes { .. } => {
                        for (net, via) in fabric_routes(cx) {
                            self.world.underlay.fabric_routes.insert(net, via);
                        }
                        Ok(())
                    }
                    a @ (Action::Preflight { .. }
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
                    | Action::EnsureIptablesRule { .. }
                    | Action::StartService { .. }
                    | Action::WaitHealthy { .. }
                    | Action::ApplyManifest { .. }
                    | Action::ValidateCluster { .. }
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
                    | Action::DeleteNode { .. }) => Err(not_run_on(&id, a, "the underlay router")),
                };
            }
            Target::Node(_) => {}
        }
        let content = if matches!(cx.step.action, Action::WriteFile { .. }) {
            Some(self.file_bytes(cx)?)
        } else {
            None
        };
        if let Action::InstallPodRoutes { .. } = &cx.step.action {
            self.plan_table(cx);
        }
        let pod_routes = self.pod_routes.clone();
        let mut addon = None;
        let node_index = cx.node().unwrap_or(0);
        if let a @ (Action::RemoveEtcdMember { .. } | Action::DeleteNode { .. }) = &cx.step.action {
            return self.removal_apply(cx, a);
        }
        if let Action::ScaleDeployment {
            namespace,
            name,
            replicas,
            kubeconfig,
        } = &cx.step.action
        {
            self.node_mut(cx)?;
            let path = Asset::Kubeconfig(*kubeconfig).path();
            if !self.world.nodes[node_index].fs.files.contains_key(path) {
                return Err(StepError::new(
                    kscratch_core::exec::ErrorKind::Command,
                    format!("{id}: kubectl scale: {path}: no such file"),
                ));
            }
            components::kubectl_server(&self.world.nodes[node_index], *kubeconfig)
                .and_then(|url| components::apiserver_at(&self.world, node_index, &url))
                .map_err(|e| {
                    StepError::new(
                        kscratch_core::exec::ErrorKind::Command,
                        format!("{id}: kubectl scale: {e}"),
                    )
                })?;
            scale_deployment(&mut self.world, name, *replicas);
            self.scaled
                .insert((namespace.clone(), name.clone()), *replicas);
            return Ok(());
        }
        if let Action::PowerOff = &cx.step.action {
            self.node_mut(cx)?.up = false;
            return Ok(());
        }
        if let Action::StartService {
            name: Service::Network,
        } = &cx.step.action
        {
            return self.reapply_network(cx);
        }
        let plan_version = cx.plan.version;
        let node = self.node_mut(cx)?;
        match &cx.step.action {
            Action::InstallBinary { name, .. } => {
                node.binaries.insert(name.to_string(), cx.plan.version);
                // The binaries come from the plan's release directory.
                node.release = Some(cx.plan.version);
            }
            Action::PullImage { image } => {
                // A tag the release never published is not on the registry
                // (core::release's image history: k8s.gcr.io's freeze, hyperkube's end).
                if !kscratch_core::release::image_exists(plan_version, image) {
                    return Err(StepError::failed(format!(
                        "{id}: failed to pull image {image}: manifest unknown (not published for Kubernetes {})",
                        plan_version
                    )));
                }
                node.images.insert(image.clone());
            }
            Action::WriteFile { path, mode, asset } => {
                write_file(
                    node,
                    path,
                    *mode,
                    content.expect("rendered above"),
                    Some(*asset),
                );
            }
            a @ (Action::SetSysctl { .. } | Action::LoadKernelModule { .. }) => {
                net_apply(node, &id, a, None)?
            }
            Action::DeleteLink { name } => {
                if let Some(l) = node.links.remove(name) {
                    let nets: Vec<IpNet> = l.addrs.iter().map(|a| a.trunc()).collect();
                    node.routes.local.retain(|r| {
                        r.dev.as_deref() != Some(name.as_str())
                            && !nets.iter().any(|n| r.dst == RouteDst::Net(*n))
                    });
                }
            }
            Action::DeleteIptablesRules {
                table,
                rules,
                chains,
            } => {
                for r in rules {
                    node.netfilter.delete_all(*table, r);
                }
                for c in chains {
                    if node.netfilter.chain(*table, c).is_some() {
                        node.netfilter.delete_chain(*table, c).map_err(|e| {
                            StepError::new(
                                kscratch_core::exec::ErrorKind::Command,
                                format!("{id}: iptables -X {c}: {e}"),
                            )
                        })?;
                    }
                }
            }
            a @ (Action::CreateBridge { .. }
            | Action::CreateVxlan(_)
            | Action::InstallPodRoutes { .. }
            | Action::EnsureIptablesRule { .. }) => net_apply(node, &id, a, pod_routes)?,
            Action::StartService { name } => {
                components::start_service(node, *name).map_err(|e| {
                    StepError::new(
                        kscratch_core::exec::ErrorKind::Command,
                        format!("{id}: {e}"),
                    )
                })?
            }
            Action::ApplyManifest { asset, kubeconfig } => {
                // kubectl on the node needs the manifest and the credential it names.
                for path in [asset.path(), Asset::Kubeconfig(*kubeconfig).path()] {
                    if !node.fs.files.contains_key(path) {
                        return Err(StepError::new(
                            kscratch_core::exec::ErrorKind::Command,
                            format!("{id}: kubectl apply: {path}: no such file"),
                        ));
                    }
                }
                let server = components::kubectl_server(node, *kubeconfig);
                server
                    .and_then(|url| components::apiserver_at(&self.world, node_index, &url))
                    .map_err(|e| {
                        StepError::new(
                            kscratch_core::exec::ErrorKind::Command,
                            format!("{id}: kubectl apply: {e}"),
                        )
                    })?;
                addon = Some(*asset);
            }
            Action::DeleteRoutes { routes } => {
                for r in routes {
                    if has_route(node, r) {
                        if let RouteDst::Net(net) = r.dst {
                            node.routes.remove(net);
                        } else {
                            node.routes.local.retain(|x| !same_route(x, r));
                        }
                    }
                }
            }
            Action::InsertIptablesRule { table, rule } => {
                node.netfilter
                    .ensure_rule(*table, rule.clone(), Position::Prepend)
                    .map_err(|e| {
                        StepError::new(
                            kscratch_core::exec::ErrorKind::Command,
                            format!("{id}: iptables: {e}"),
                        )
                    })?;
            }
            Action::SetLinkDown { name } => set_link_down(node, &id, name)?,
            Action::SetLinkMtu { name, mtu } => set_link_mtu(node, &id, name, *mtu)?,
            Action::DeleteFdbEntries { entries } => {
                for e in entries {
                    let x = own_vxlan(node, &id, &e.dev)?;
                    if e.dst.is_none_or(|d| x.fdb.get(&e.mac) == Some(&d)) {
                        x.fdb.remove(&e.mac);
                    }
                }
            }
            Action::DeleteNeighbors { entries } => {
                for e in entries {
                    let x = own_vxlan(node, &id, &e.dev)?;
                    if e.lladdr
                        .is_none_or(|m| x.neighbors.get(&e.addr) == Some(&m))
                    {
                        x.neighbors.remove(&e.addr);
                    }
                }
            }
            Action::StopService { name } => {
                let Some(state) = node.services.get_mut(name.name()) else {
                    return Err(StepError::new(
                        kscratch_core::exec::ErrorKind::Command,
                        format!(
                            "{id}: Failed to stop {name}.service: Unit {name}.service not loaded."
                        ),
                    ));
                };
                state.running = false;
                // Its sockets close; what it programmed (iptables rules) stays.
                let process = components::process_of(*name);
                node.listeners.retain(|_, l| l.process != process);
            }
            Action::DisableService { name } => {
                // Stopped and disabled: the init system forgets it, its
                // sockets close, and what it read when it started goes
                // with it. What it programmed (iptables rules) stays.
                node.services.remove(name.name());
                let process = components::process_of(*name);
                node.listeners.retain(|_, l| l.process != process);
                match name {
                    Service::KubeProxy => node.kube_proxy = None,
                    Service::Docker | Service::Containerd => node.runtime = None,
                    Service::Kubelet
                    | Service::Etcd
                    | Service::ApiserverProxy
                    | Service::Network => {}
                }
            }
            Action::ClearDirectory { path } => {
                let dir = format!("{}/", path.trim_end_matches('/'));
                node.fs.files.retain(|f, _| !f.starts_with(&dir));
            }
            Action::DeleteIptablesChains { table, chains } => {
                delete_chains(&mut node.netfilter, *table, chains).map_err(|e| {
                    StepError::new(
                        kscratch_core::exec::ErrorKind::Command,
                        format!("{id}: iptables: {e}"),
                    )
                })?
            }
            Action::DeleteFile { path } => {
                node.fs.files.remove(path.as_str());
                // A running kubelet stops the pod whose manifest went away.
                if components::is_manifest(path) && node.running("kubelet") {
                    components::sync_static_pods(node);
                }
            }
            Action::UnloadKernelModule { name } => {
                node.modules.remove(*name);
                if *name == "br_netfilter" {
                    // Its /proc/sys/net/bridge entries go with it.
                    node.sysctls.retain(|k, _| !k.starts_with("net.bridge."));
                }
            }
            Action::WriteText { path, mode, text } => {
                node.fs.files.insert(
                    path.to_string(),
                    File {
                        mode: *mode,
                        content: Arc::from(text.as_bytes()),
                        asset: None,
                    },
                );
            }
            // Checks only: when check says Needed they have already failed.
            Action::Preflight { .. }
            | Action::WaitHealthy { .. }
            | Action::ValidateCluster { .. } => {}
            // On the operator's machine, the fabric, or handled above.
            Action::GenerateCa { .. }
            | Action::IssueCert { .. }
            | Action::GenerateServiceAccountKey
            | Action::GenerateTokens { .. }
            | Action::InstallFabricRoutes { .. }
            | Action::PowerOff
            | Action::ScaleDeployment { .. }
            | Action::RemoveEtcdMember { .. }
            | Action::DeleteNode { .. } => {
                return Err(StepError::failed(format!(
                    "{id}: the simulator does not run {} on a node",
                    action_name(&cx.step.action)
                )))
            }
        }
        if let Some(a) = addon {
            self.addons.insert(a);
        }
        self.after_start(cx, node_index);
        Ok(())
    }

    /// What a start leaves in the cluster's state: a kubelet registers its
    /// Node object; the first etcd member to run forms the membership from
    /// its `--initial-cluster`.
    fn after_start(&mut self, cx: &StepCx<'_>, i: usize) {
        let node = &self.world.nodes[i];
        match &cx.step.action {
            Action::StartService {
                name: Service::Kubelet,
            } if node.running("kubelet") => {
                self.api_nodes.insert(node.name.clone());
            }
            Action::StartService {
                name: Service::Etcd,
            }
            | Action::WriteFile {
                asset: Asset::StaticPod(kscratch_core::plan::Component::Etcd),
                ..
            } if self.etcd_membership.is_empty() => {
                if let Some(names) = components::etcd_initial_names(node) {
                    self.etcd_membership.extend(names);
                }
            }
            _ => {}
        }
    }

    /// The shared pod route table for this plan's pod network: the current
    /// one while the plan's entries are the same, else a new one (a node
    /// left or joined): nodes holding the old table then need their routes.
    fn plan_table(&mut self, cx: &StepCx<'_>) {
        let net = cx.plan.pod_network();
        let src = (net.as_ptr() as usize, net.len());
        match &self.pod_routes {
            Some(_) if self.pod_routes_src == src => {}
            Some(t) if same_entries(t, net) => self.pod_routes_src = src,
            _ => {
                self.pod_routes = Some(Arc::new(pod_route_table(cx)));
                self.pod_routes_src = src;
            }
        }
    }

    /// Whether the API still has the Node object, or the etcd membership
    /// the member; `NotApplicable` when the apiserver does not answer a
    /// `DeleteNode` (the object stays until deleted by hand).
    fn removal_check(&mut self, cx: &StepCx<'_>, a: &Action) -> Result<Probe, StepError> {
        let id = cx.id();
        let i = cx
            .node()
            .ok_or_else(|| StepError::failed(format!("{id}: this action runs on a node")))?;
        self.node_mut(cx)?;
        match a {
            Action::DeleteNode { name } => {
                if let Err(e) = self.kubectl_reaches(i) {
                    return Ok(Probe::NotApplicable(format!(
                        "the apiserver does not answer ({e}): the Node object {name} stays; delete it later with `kubectl delete node {name}`"
                    )));
                }
                Ok(ok(!self.api_nodes.contains(name)))
            }
            Action::RemoveEtcdMember { name, .. } => {
                let members = self.etcd_member_list(cx, i)?;
                Ok(ok(!members.contains(name)))
            }
            other => Err(StepError::failed(format!(
                "{id}: {} is not a removal action",
                action_name(other)
            ))),
        }
    }

    fn removal_apply(&mut self, cx: &StepCx<'_>, a: &Action) -> Result<(), StepError> {
        let id = cx.id();
        let i = cx
            .node()
            .ok_or_else(|| StepError::failed(format!("{id}: this action runs on a node")))?;
        self.node_mut(cx)?;
        match a {
            Action::DeleteNode { name } => {
                self.kubectl_reaches(i)
                    .map_err(|e| command_error(&id, format!("kubectl delete node {name}: {e}")))?;
                self.api_nodes.remove(name);
                Ok(())
            }
            Action::RemoveEtcdMember { name, .. } => {
                let members = self.etcd_member_list(cx, i)?;
                if members.contains(name) {
                    if self.etcd_membership.is_empty() {
                        self.etcd_membership.extend(members);
                    }
                    self.etcd_membership.remove(name);
                }
                Ok(())
            }
            other => Err(StepError::failed(format!(
                "{id}: {} is not a removal action",
                action_name(other)
            ))),
        }
    }

    /// kubectl with the admin kubeconfig on node `i` reaches a healthy apiserver.
    fn kubectl_reaches(&self, i: usize) -> Result<usize, String> {
        components::kubectl_server(
            &self.world.nodes[i],
            kscratch_core::plan::KubeconfigUser::Admin,
        )
        .and_then(|url| components::apiserver_at(&self.world, i, &url))
    }

    /// `etcdctl member list` through the member on node `i`: it must run
    /// and be healthy (a member without quorum answers no membership call).
    fn etcd_member_list(&self, cx: &StepCx<'_>, i: usize) -> Result<BTreeSet<String>, StepError> {
        let node = &self.world.nodes[i];
        components::health(node, "etcd")
            .map_err(|e| command_error(&cx.id(), format!("etcdctl member list: {e}")))?;
        if !self.etcd_membership.is_empty() {
            return Ok(self.etcd_membership.clone());
        }
        Ok(components::etcd_initial_names(node)
            .unwrap_or_default()
            .into_iter()
            .collect())
    }
}

/// The node-network actions the plan's node-base steps and the re-applier
/// (`kscratch-network`, after a reboot) share, applied on `node`.
fn net_apply(
    node: &mut Node,
    id: &str,
    action: &Action,
    pod_routes: Option<Arc<PodRoutes>>,
) -> Result<(), StepError> {
    match action {
        Action::SetSysctl { key, value } => {
            if key.starts_with("net.bridge.") && !node.modules.contains("br_netfilter") {
                return Err(StepError::new(kscratch_core::exec::ErrorKind::Command, format!("{id}: sysctl: cannot stat /proc/sys/{}: No such file or directory (br_netfilter is not loaded)", key.replace('.', "/"))));
            }
            node.sysctls.insert(key.to_string(), value.to_string());
        }
        Action::LoadKernelModule { name } => {
            node.modules.insert(name.to_string());
            if *name == "br_netfilter" {
                // The module's default, as on a real kernel.
                node.sysctls
                    .entry("net.bridge.bridge-nf-call-iptables".into())
                    .or_insert_with(|| "1".into());
            }
        }
        // The bridge's MAC (`plan::bridge_mac`) is not modelled: the walk
        // resolves no neighbours on the bridge, and the set MAC is what keeps
        // a real bridge's MAC from following its ports.
        Action::CreateBridge { name, addr, mtu } => {
            let link = node.links.entry(name.clone()).or_insert_with(|| Link {
                name: name.clone(),
                kind: LinkKind::Bridge,
                mtu: *mtu,
                up: true,
                addrs: vec![],
                master: None,
            });
            link.kind = LinkKind::Bridge;
            link.mtu = *mtu;
            link.up = true;
            if !link.addrs.contains(addr) {
                link.addrs.push(*addr);
            }
            add_connected(node, name, *addr);
        }
        Action::CreateVxlan(v) => {
            // The kernel refuses a VXLAN MTU that leaves no room for the
            // encapsulation on its lower device (vxlan_change_mtu: -EINVAL),
            // so the plan's `ip link set dev vxlan0 ... mtu M` fails there.
            let Some(lower) = node.links.get(&v.dev) else {
                return Err(StepError::new(
                    kscratch_core::exec::ErrorKind::Command,
                    format!("{id}: Cannot find device \"{}\"", v.dev),
                ));
            };
            let max = lower
                .mtu
                .saturating_sub(kscratch_core::scenario::VXLAN_OVERHEAD);
            if v.mtu > max {
                return Err(StepError::new(
                    kscratch_core::exec::ErrorKind::Command,
                    format!(
                        "{id}: ip link set dev {} mtu {}: RTNETLINK answers: Invalid argument (the largest MTU over {} with MTU {} is {max}: {} bytes go to the VXLAN header)",
                        v.name, v.mtu, v.dev, lower.mtu, kscratch_core::scenario::VXLAN_OVERHEAD
                    ),
                ));
            }
            let kind = LinkKind::Vxlan(VxlanLink {
                vni: v.vni,
                port: v.port,
                local: v.local,
                dev: v.dev.clone(),
                mac: v.mac,
                shared_fdb: false,
                neighbors: Default::default(),
                fdb: Default::default(),
            });
            node.links.insert(
                v.name.clone(),
                Link {
                    name: v.name.clone(),
                    kind,
                    mtu: v.mtu,
                    up: true,
                    addrs: vec![v.addr],
                    master: None,
                },
            );
        }
        Action::InstallPodRoutes { via, .. } => {
            let table = pod_routes.ok_or_else(|| {
                StepError::failed(format!("{id}: the pod network table is missing"))
            })?;
            let own = table.entries.iter().position(|e| e.node == node.name);
            let mode = route_mode(via);
            if let PodRouteMode::Overlay { dev } = &mode {
                // Neighbour and FDB entries for every peer VTEP come from the same shared table.
                match node.links.get_mut(dev).map(|l| &mut l.kind) {
                    Some(LinkKind::Vxlan(x)) => x.shared_fdb = true,
                    _ => {
                        return Err(StepError::new(
                            kscratch_core::exec::ErrorKind::Command,
                            format!("{id}: Cannot find device \"{dev}\""),
                        ))
                    }
                }
            }
            leave_old_entries(node, &table);
            node.routes.shared = Some(SharedRoutes {
                table,
                mode,
                own,
                removed: Default::default(),
            });
        }
        Action::EnsureIptablesRule { table, rule } => {
            node.netfilter
                .ensure_rule(*table, rule.clone(), Position::Append)
                .map_err(|e| {
                    StepError::new(
                        kscratch_core::exec::ErrorKind::Command,
                        format!("{id}: iptables: {e}"),
                    )
                })?;
        }
        other => {
            return Err(StepError::failed(format!(
                "{id}: {} is not a node-network action",
                action_name(other)
            )))
        }
    }
    Ok(())
}

/// Before a node takes a new pod network table: `ip route replace`, `ip
/// neigh replace` and `bridge fdb replace` for each entry of the new table
/// leave every other entry where it was, so the old table's entries for
/// nodes the new one no longer has stay on the node, as its own (until a
/// removal step deletes them); an entry for a pod CIDR, VTEP or MAC the new
/// table has is replaced.
fn leave_old_entries(node: &mut Node, new: &Arc<PodRoutes>) {
    let Some(old) = node.routes.shared.take() else {
        return;
    };
    if Arc::ptr_eq(&old.table, new) {
        node.routes.shared = Some(old);
        return;
    }
    let vxlan_dev = match &old.mode {
        PodRouteMode::Overlay { dev } => Some(dev.clone()),
        PodRouteMode::Underlay { .. } => None,
    };
    for (i, e) in old.table.entries.iter().enumerate() {
        if Some(i) == old.own || old.removed.contains(&i) || e.node == node.name {
            continue;
        }
        if !new.entries.iter().any(|n| n.pod_cidr == e.pod_cidr) {
            node.routes.local.push(crate::routes::shared_route(&old, i));
        }
        let (Some(dev), Some((vtep, mac))) = (&vxlan_dev, e.vtep) else {
            continue;
        };
        if let Some(LinkKind::Vxlan(x)) = node.links.get_mut(dev).map(|l| &mut l.kind) {
            if !x.shared_fdb {
                continue; // its entries are its own already
            }
            if !new
                .entries
                .iter()
                .any(|n| n.vtep.map(|v| v.0) == Some(vtep))
            {
                x.neighbors.entry(vtep).or_insert(mac);
            }
            if !new.entries.iter().any(|n| n.vtep.map(|v| v.1) == Some(mac)) {
                x.fdb.entry(mac).or_insert(e.node_ip);
            }
        }
    }
}

/// Whether a node-network action (see [`net_apply`]) holds on `node`.
fn net_satisfied(node: &Node, action: &Action, pod_routes: Option<&Arc<PodRoutes>>) -> bool {
    match action {
        Action::SetSysctl { key, value } => node.sysctl(key) == Some(value),
        Action::LoadKernelModule { name } => node.modules.contains(*name),
        Action::CreateBridge { name, addr, mtu } => node.links.get(name).is_some_and(|l| {
            l.kind == LinkKind::Bridge && l.up && l.mtu == *mtu && l.addrs.contains(addr)
        }),
        Action::CreateVxlan(v) => node.links.get(&v.name).is_some_and(|l| {
            l.up && l.mtu == v.mtu
                && l.addrs.contains(&v.addr)
                && matches!(&l.kind, LinkKind::Vxlan(x) if x.vni == v.vni && x.port == v.port && x.local == v.local && x.dev == v.dev && x.mac == v.mac)
        }),
        Action::InstallPodRoutes { via, .. } => {
            let mode = route_mode(via);
            node.routes.shared.as_ref().is_some_and(|s| {
                s.mode == mode
                    && pod_routes.is_some_and(|t| {
                        (Arc::ptr_eq(t, &s.table) && s.removed.is_empty())
                            || holds_every_entry(node, s, t)
                    })
            })
        }
        Action::EnsureIptablesRule { table, rule } => node.netfilter.check(*table, rule),
        _ => false,
    }
}

/// Whether `node`, holding the pod network table `held`, has every entry
/// of `want` but its own, as the shell's check asks (`ip route show exact`,
/// and `ip neigh` and `bridge fdb` for an overlay): a table with more
/// entries (a node that left, not removed yet) holds a smaller one.
fn holds_every_entry(node: &Node, held: &SharedRoutes, want: &PodRoutes) -> bool {
    let have: BTreeSet<String> = node.routes.list().iter().map(Route::emit).collect();
    let vxlan = match &held.mode {
        PodRouteMode::Overlay { dev } => Some(vxlan_lists(node, dev)),
        PodRouteMode::Underlay { .. } => None,
    };
    want.entries
        .iter()
        .filter(|e| e.node != node.name)
        .all(|e| {
            have.contains(&crate::routes::entry_route(&held.mode, e).emit())
                && match (&vxlan, e.vtep) {
                    (None, _) => true,
                    (Some((fdb, neigh)), Some((vtep, mac))) => {
                        fdb.get(&mac) == Some(&e.node_ip) && neigh.get(&vtep) == Some(&mac)
                    }
                    (Some(_), None) => false,
                }
        })
}

/// Whether the shared pod route table holds exactly these entries.
fn same_entries(t: &PodRoutes, network: &[kscratch_core::plan::PodNetworkEntry]) -> bool {
    t.entries.len() == network.len()
        && t.entries.iter().zip(network).all(|(a, b)| {
            a.node == b.node
                && a.pod_cidr == b.pod_cidr
                && a.node_ip == b.node_ip
                && a.vtep == b.vtep_mac.map(|mac| (b.pod_cidr.network(), mac))
        })
}

fn route_mode(via: &PodRouteVia) -> PodRouteMode {
    match via {
        PodRouteVia::Underlay { dev } => PodRouteMode::Underlay { dev: dev.clone() },
        PodRouteVia::Overlay { dev } => PodRouteMode::Overlay { dev: dev.clone() },
    }
}

/// The shared pod route table, from the plan's pod network artifact. Its
/// index covers the entries' own CIDRs (the smallest network holding them
/// all, sliced at their prefix length), so a route the plan installs is
/// found whatever the cluster CIDR is.
fn pod_route_table(cx: &StepCx<'_>) -> PodRoutes {
    table_from(cx.plan.pod_network())
}

/// [`pod_route_table`] from a pod network table's entries.
fn table_from(network: &[kscratch_core::plan::PodNetworkEntry]) -> PodRoutes {
    let entries: Vec<PodRouteEntry> = network
        .iter()
        .map(|e| PodRouteEntry {
            node: e.node.clone(),
            pod_cidr: e.pod_cidr,
            node_ip: e.node_ip,
            vtep: e.vtep_mac.map(|mac| (e.pod_cidr.network(), mac)),
        })
        .collect();
    let (cover, prefix) = covering(entries.iter().map(|e| e.pod_cidr));
    PodRoutes::new(cover, prefix, entries)
}

/// The smallest network holding every CIDR, and their (longest) prefix length.
fn covering(nets: impl Iterator<Item = IpNet>) -> (IpNet, u8) {
    let mut cover: Option<IpNet> = None;
    let mut prefix = 0;
    for n in nets {
        prefix = prefix.max(n.prefix_len());
        cover = Some(match cover {
            None => n,
            Some(c) => {
                let mut c = c;
                while !c.contains(&n) {
                    c = c.supernet().unwrap_or(c);
                    if c.prefix_len() == 0 {
                        break;
                    }
                }
                c
            }
        });
    }
    let cover = cover.unwrap_or_else(|| "0.0.0.0/0".parse().expect("literal"));
    (cover, prefix.max(cover.prefix_len()))
}

fn fabric_routes(cx: &StepCx<'_>) -> Vec<(IpNet, std::net::IpAddr)> {
    cx.plan
        .artifacts
        .iter()
        .filter_map(|a| match a {
            Artifact::PodNetwork(v) => Some(
                v.iter()
                    .map(|e| (e.pod_cidr, e.node_ip))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Writes a file on the node, as an upload does; a running kubelet notices
/// a new static pod manifest.
pub fn write_file(
    node: &mut Node,
    path: &str,
    mode: u32,
    content: Arc<[u8]>,
    asset: Option<Asset>,
) {
    node.fs.files.insert(
        path.to_string(),
        File {
            mode,
            content,
            asset,
        },
    );
    if components::is_manifest(path) && node.running("kubelet") {
        components::sync_static_pods(node);
    }
}

/// The kernel adds `NET dev LINK proto kernel scope link src ADDR` with each address.
pub fn add_connected(node: &mut Node, link: &str, addr: IpNet) {
    let mut r = Route::new(RouteDst::Net(addr.trunc()));
    r.dev = Some(link.to_string());
    r.src = Some(addr.addr());
    r.proto = Some(RouteProto::KERNEL);
    r.scope = Some(RouteScope::LINK);
    if !node
        .routes
        .local
        .iter()
        .any(|x| x.dst == r.dst && x.dev == r.dev)
    {
        node.routes.local.push(r);
    }
}

fn preflight(node: &Node, c: &PreflightCheck) -> Result<(), String> {
    match c {
        // The simulated machines are the guide's: Linux on x86_64 with iproute2,
        // iptables, conntrack and the runtime packages installed.
        PreflightCheck::Platform { .. }
        | PreflightCheck::Command { .. }
        | PreflightCheck::KernelModule { .. } => Ok(()),
        // The simulated machines are cgroup v2 hosts without swap: a release's
        // host requirements are checked on real machines only (shell preflight).
        PreflightCheck::CgroupV2 { .. } | PreflightCheck::SwapOff { .. } => Ok(()),
        PreflightCheck::PortFree { port, held_by } => {
            // On a re-apply the port is held by the daemon kscratch started.
            let owner = held_by
                .or_else(|| kscratch_core::ports::owner(*port))
                .map(|d| d.name());
            match node.listeners.get(&(crate::packet::Proto::Tcp, *port)) {
                Some(l) if Some(l.process.as_str()) != owner => {
                    Err(format!("port {port} is already in use by {}", l.process))
                }
                Some(_) | None => Ok(()),
            }
        }
        PreflightCheck::NodeAddress { ip, interface } => {
            if node
                .links
                .get(interface)
                .is_some_and(|l| l.addrs.iter().any(|a| a.addr() == *ip))
            {
                Ok(())
            } else {
                Err(format!("{ip} is not configured on {interface}"))
            }
        }
    }
}

/// The action's name as it appears in a plan's JSON (`"action": ...`).
/// The user-defined chains of `table` the patterns name, in
/// `iptables-save` order.
fn doomed_chains(
    nf: &crate::netfilter::Netfilter,
    table: kscratch_core::net::iptables::Table,
    patterns: &[String],
) -> Vec<String> {
    nf.chain_names(table)
        .into_iter()
        .filter(|c| !table.is_builtin(c) && Action::chain_named(patterns, c))
        .collect()
}

/// `DeleteIptablesChains`: the jumps to the named chains from every other
/// chain first, then the chains flushed, then deleted (as `iptables -D`,
/// `-F`, `-X` do it on a node).
fn delete_chains(
    nf: &mut crate::netfilter::Netfilter,
    table: kscratch_core::net::iptables::Table,
    patterns: &[String],
) -> Result<(), crate::netfilter::NetfilterError> {
    use kscratch_core::net::iptables::Jump;
    let doomed = doomed_chains(nf, table, patterns);
    if doomed.is_empty() {
        return Ok(());
    }
    let doomed_set: BTreeSet<&str> = doomed.iter().map(String::as_str).collect();
    for name in nf.chain_names(table) {
        if doomed_set.contains(name.as_str()) {
            continue;
        }
        let jumps: Vec<kscratch_core::net::iptables::Rule> = nf
            .rules(table, &name)
            .unwrap_or(&[])
            .iter()
            .filter(
                |r| matches!(&r.target, Some(Jump::Chain(c)) if doomed_set.contains(c.as_str())),
            )
            .cloned()
            .collect();
        for r in &jumps {
            nf.delete_all(table, r);
        }
    }
    for c in &doomed {
        nf.flush_chain(table, c)?;
    }
    for c in &doomed {
        nf.delete_chain(table, c)?;
    }
    Ok(())
}

fn action_name(a: &Action) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.get("action").and_then(|n| n.as_str()).map(String::from))
        .unwrap_or_else(|| "this action".into())
}

/// A step whose action has no meaning on its target (a plan kscratch does not make).
fn not_run_on(id: &str, a: &Action, place: &str) -> StepError {
    StepError::failed(format!(
        "{id}: the simulator does not run {} on {place}",
        action_name(a)
    ))
}

fn command_error(id: &str, msg: String) -> StepError {
    StepError::new(
        kscratch_core::exec::ErrorKind::Command,
        format!("{id}: {msg}"),
    )
}

fn link<'n>(node: &'n Node, id: &str, name: &str) -> Result<&'n Link, StepError> {
    node.links
        .get(name)
        .ok_or_else(|| command_error(id, format!("Cannot find device \"{name}\"")))
}

/// `ip route del` matches on the fields it is given: the destination, and
/// the gateway and device when named.
fn same_route(x: &Route, r: &Route) -> bool {
    x.dst == r.dst
        && r.via.is_none_or(|v| x.via == Some(v))
        && r.dev.as_ref().is_none_or(|d| x.dev.as_ref() == Some(d))
}

fn has_route(node: &Node, r: &Route) -> bool {
    node.routes.list().iter().any(|x| same_route(x, r))
}

/// The router's route that `r` names, if it has one.
fn fabric_route(u: &Underlay, r: &Route) -> Option<IpNet> {
    let RouteDst::Net(net) = r.dst else {
        return None;
    };
    u.fabric_routes
        .get(&net)
        .filter(|via| r.via.is_none_or(|v| v == **via))
        .map(|_| net)
}

/// The VXLAN device `dev`'s FDB (MAC → remote address) and neighbour (VTEP
/// → MAC) entries as `bridge fdb` and `ip neigh` list them: its own, and
/// the shared table's while it uses them.
pub fn vxlan_lists(
    node: &Node,
    dev: &str,
) -> (
    std::collections::BTreeMap<MacAddr, std::net::IpAddr>,
    std::collections::BTreeMap<std::net::IpAddr, MacAddr>,
) {
    let Some(LinkKind::Vxlan(x)) = node.links.get(dev).map(|l| &l.kind) else {
        return Default::default();
    };
    let (mut fdb, mut neigh) = (x.fdb.clone(), x.neighbors.clone());
    if x.shared_fdb {
        for (ip, mac, node_ip) in shared_vxlan_entries(node) {
            fdb.entry(mac).or_insert(node_ip);
            neigh.entry(ip).or_insert(mac);
        }
    }
    (fdb, neigh)
}

/// The shared pod route table's entries this node holds VXLAN entries for.
fn shared_vxlan_entries(node: &Node) -> Vec<(std::net::IpAddr, MacAddr, std::net::IpAddr)> {
    let Some(sh) = &node.routes.shared else {
        return vec![];
    };
    sh.table
        .entries
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != sh.own)
        .filter_map(|(_, e)| e.vtep.as_ref().map(|(ip, mac)| (*ip, *mac, e.node_ip)))
        .collect()
}

fn has_fdb(node: &Node, e: &kscratch_core::net::route::FdbEntry) -> bool {
    let Some(LinkKind::Vxlan(x)) = node.links.get(&e.dev).map(|l| &l.kind) else {
        return false;
    };
    let mac = e.mac;
    let dst = e.dst;
    if x.fdb.get(&mac).is_some_and(|d| dst.is_none_or(|v| v == *d)) {
        return true;
    }
    x.shared_fdb
        && shared_vxlan_entries(node)
            .iter()
            .any(|(_, m, ip)| *m == mac && dst.is_none_or(|v| v == *ip))
}

fn has_neigh(node: &Node, e: &kscratch_core::net::route::Neighbor) -> bool {
    let Some(LinkKind::Vxlan(x)) = node.links.get(&e.dev).map(|l| &l.kind) else {
        return false;
    };
    let mac = e.lladdr;
    if x.neighbors
        .get(&e.addr)
        .is_some_and(|m| mac.as_ref().is_none_or(|v| v == m))
    {
        return true;
    }
    x.shared_fdb
        && shared_vxlan_entries(node)
            .iter()
            .any(|(ip, m, _)| *ip == e.addr && mac.as_ref().is_none_or(|v| v == m))
}

/// The VXLAN device `dev`, with the entries it used from the shared table
/// copied into its own (copy-on-write): a node that loses one entry keeps
/// every other, as `bridge fdb` and `ip neigh` would list them.
fn own_vxlan<'n>(node: &'n mut Node, id: &str, dev: &str) -> Result<&'n mut VxlanLink, StepError> {
    let shared = shared_vxlan_entries(node);
    match node.links.get_mut(dev).map(|l| &mut l.kind) {
        Some(LinkKind::Vxlan(x)) => {
            if x.shared_fdb {
                for (ip, mac, node_ip) in shared {
                    x.neighbors.entry(ip).or_insert(mac);
                    x.fdb.entry(mac).or_insert(node_ip);
                }
                x.shared_fdb = false;
            }
            Ok(x)
        }
        Some(_) => Err(command_error(
            id,
            format!("{dev} is not a VXLAN device: it has no FDB of its own"),
        )),
        None => Err(command_error(id, format!("Cannot find device \"{dev}\""))),
    }
}

/// `ip link set dev NAME down`: the link keeps its addresses, and the
/// kernel flushes every route through it (they come back only when whoever
/// installed them does so again).
fn set_link_down(node: &mut Node, id: &str, name: &str) -> Result<(), StepError> {
    let l = node
        .links
        .get_mut(name)
        .ok_or_else(|| command_error(id, format!("Cannot find device \"{name}\"")))?;
    l.up = false;
    node.routes.local.retain(|r| r.dev.as_deref() != Some(name));
    if let Some(sh) = &mut node.routes.shared {
        let dev = match &sh.mode {
            PodRouteMode::Underlay { dev } | PodRouteMode::Overlay { dev } => dev.clone(),
        };
        if dev == name {
            let own = sh.own;
            sh.removed
                .extend((0..sh.table.entries.len()).filter(|i| Some(*i) != own));
        }
    }
    Ok(())
}

/// `ip link set dev NAME mtu MTU`, refused as the kernel refuses it: a VXLAN
/// device needs room for its 50 bytes of encapsulation on its underlay device.
fn set_link_mtu(node: &mut Node, id: &str, name: &str, mtu: u32) -> Result<(), StepError> {
    let lower = match node.links.get(name).map(|l| &l.kind) {
        None => return Err(command_error(id, format!("Cannot find device \"{name}\""))),
        Some(LinkKind::Vxlan(x)) => node.links.get(&x.dev).map(|l| l.mtu),
        Some(_) => None,
    };
    if let Some(lower) = lower {
        let max = lower.saturating_sub(kscratch_core::scenario::VXLAN_OVERHEAD);
        if mtu > max {
            return Err(command_error(
                id,
                format!("ip link set dev {name} mtu {mtu}: RTNETLINK answers: Invalid argument (the VXLAN device's maximum is {max} over its underlay device)"),
            ));
        }
    }
    if !(68..=65535).contains(&mtu) {
        return Err(command_error(
            id,
            format!("ip link set dev {name} mtu {mtu}: RTNETLINK answers: Invalid argument"),
        ));
    }
    if let Some(l) = node.links.get_mut(name) {
        l.mtu = mtu;
    }
    Ok(())
}

/// The Deployment's pods stop: the DNS addon's pod is the simulator's
/// `coredns` pod (whatever the addon's name, coredns or kube-dns). Its
/// veth and address go; a pod slot in the middle stays, so that pod ids are stable.
fn scale_deployment(world: &mut World, name: &str, replicas: u32) {
    if replicas > 0 || !matches!(name, "coredns" | "kube-dns") {
        return;
    }
    let gone: Vec<PodId> = (0..world.pods.len())
        .filter(|&p| {
            world.pods[p].name == "coredns"
                && world.owners.get(&world.pods[p].ip) == Some(&Owner::Pod(p))
        })
        .collect();
    for &p in gone.iter().rev() {
        let pod = world.pods[p].clone();
        let node = &mut world.nodes[pod.node];
        node.pods.retain(|&q| q != p);
        node.links.remove(&pod.host_veth);
        world.owners.remove(&pod.ip);
        // The DNS pod starts last: then its slot goes too, and no id moves.
        if p + 1 == world.pods.len() {
            world.pods.pop();
        }
    }
}
