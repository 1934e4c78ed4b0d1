//! The simulator as a [`Backend`]: each typed action is interpreted on the
//! virtual node it targets, with check-then-apply semantics like the SSH
//! backend's. What a step changes is what a real node would show afterwards
//! (`ip link`, `ip route`, `iptables-save`, `sysctl`, files with modes).

use crate::components;
use crate::netfilter::Position;
use crate::routes::{PodRouteEntry, PodRouteMode, PodRoutes, SharedRoutes};
use crate::world::*;
use async_trait::async_trait;
use ipnet::IpNet;
use kscratch_core::exec::{Backend, Probe, StepCx, StepError};
use kscratch_core::net::route::{Route, RouteDst, RouteProto, RouteScope};
use kscratch_core::plan::{Action, Artifact, Asset, PodRouteVia, PreflightCheck, Target};
use std::collections::BTreeSet;
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
    pub addons: BTreeSet<String>,
}

impl SimBackend {
    pub fn new(world: World) -> SimBackend {
        SimBackend {
            state: Mutex::new(Sim {
                world,
                generated: BTreeSet::new(),
                pod_routes: None,
                addons: BTreeSet::new(),
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

fn ok(b: bool) -> Probe {
    if b {
        Probe::Satisfied
    } else {
        Probe::Needed
    }
}

impl Sim {
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
            return Ok(ok(self.generated.contains(&id)));
        }
        if matches!(cx.step.target, Target::Fabric) {
            return Ok(match &cx.step.action {
                Action::InstallFabricRoutes { .. } => ok(fabric_routes(cx)
                    .iter()
                    .all(|(net, via)| self.world.underlay.fabric_routes.get(net) == Some(via))),
                _ => Probe::Needed,
            });
        }
        let pod_routes = self.pod_routes.clone();
        let scenario = cx.scenario;
        let node_index = cx.node().unwrap_or(0);
        self.node_mut(cx)?;
        // Health depends on other nodes too (etcd members behind --etcd-servers).
        match &cx.step.action {
            Action::WaitHealthy { component, .. } => {
                let r = if *component == "kube-apiserver" {
                    components::apiserver_health(&self.world, scenario, node_index)
                } else {
                    components::health(&self.world.nodes[node_index], scenario, component)
                };
                // Waiting cannot make an incoherent component healthy: fail with the reason.
                return r.map(|()| Probe::Satisfied).map_err(|why| {
                    StepError::failed(format!("{id}: {component} is not healthy: {why}"))
                });
            }
            Action::ValidateCluster { .. } => {
                components::validate_cluster(&self.world, scenario, node_index)
                    .map_err(|e| StepError::failed(format!("{id}: validate-cluster: {e}")))?;
                return Ok(Probe::Satisfied);
            }
            _ => {}
        }
        let node = self.node_mut(cx)?;
        Ok(match &cx.step.action {
            Action::Preflight { checks } => {
                for c in checks {
                    preflight(node, c).map_err(|e| StepError::failed(format!("{id}: preflight: {e}")))?;
                }
                Probe::Satisfied
            }
            Action::InstallBinary { name, .. } => ok(node.binaries.contains(*name)),
            Action::PullImage { image } => ok(node.images.contains(image)),
            Action::WriteFile { path, mode, asset } => ok(node.fs.files.get(*path) == Some(&File { mode: *mode, content: Content::Asset(*asset) })),
            Action::SetSysctl { key, value } => ok(node.sysctl(key) == Some(value)),
            Action::LoadKernelModule { name } => ok(node.modules.contains(*name)),
            Action::DeleteLink { name } => ok(!node.links.contains_key(name)),
            Action::DeleteIptablesRules { table, rules, chains } => {
                ok(rules.iter().all(|r| !node.netfilter.check(*table, r)) && chains.iter().all(|c| node.netfilter.chain(*table, c).is_none()))
            }
            Action::CreateBridge { name, addr, mtu } => ok(node.links.get(name).is_some_and(|l| l.kind == LinkKind::Bridge && l.up && l.mtu == *mtu && l.addrs.contains(addr))),
            Action::CreateVxlan(v) => ok(node.links.get(&v.name).is_some_and(|l| {
                l.up && l.mtu == v.mtu && l.addrs.contains(&v.addr) && matches!(&l.kind, LinkKind::Vxlan(x) if x.vni == v.vni && x.port == v.port && x.local == v.local && x.dev == v.dev && x.mac == v.mac)
            })),
            Action::InstallPodRoutes { via, .. } => {
                let mode = route_mode(via);
                ok(node.routes.shared.as_ref().is_some_and(|s| s.mode == mode && s.removed.is_empty() && pod_routes.as_ref().is_some_and(|t| Arc::ptr_eq(t, &s.table))))
            }
            Action::EnsureIptablesRule { table, rule } => ok(node.netfilter.check(*table, rule)),
            Action::StartService { name } => ok(node.running(name)),
            Action::ApplyManifest { asset, .. } => ok(self.addons.contains(&format!("{asset:?}"))),
            other => return Err(StepError::failed(format!("{id}: the simulator cannot run {other:?} on a node"))),
        })
    }

    fn apply(&mut self, cx: &StepCx<'_>) -> Result<(), StepError> {
        let id = cx.id();
        match cx.step.target {
            Target::Local => {
                self.generated.insert(id);
                return Ok(());
            }
            Target::Fabric => {
                for (net, via) in fabric_routes(cx) {
                    self.world.underlay.fabric_routes.insert(net, via);
                }
                return Ok(());
            }
            Target::Node(_) => {}
        }
        let scenario = cx.scenario;
        if let Action::InstallPodRoutes { .. } = &cx.step.action {
            if self.pod_routes.is_none() {
                self.pod_routes = Some(Arc::new(pod_route_table(cx)));
            }
        }
        let pod_routes = self.pod_routes.clone();
        let mut addon = None;
        let node_index = cx.node().unwrap_or(0);
        let node = self.node_mut(cx)?;
        match &cx.step.action {
            Action::InstallBinary { name, .. } => {
                node.binaries.insert(name.to_string());
            }
            Action::PullImage { image } => {
                // A tag the release never published is not on the registry
                // (core::release's image history: k8s.gcr.io's freeze, hyperkube's end).
                if !kscratch_core::release::image_exists(scenario.version, image) {
                    return Err(StepError::failed(format!(
                        "{id}: failed to pull image {image}: manifest unknown (not published for Kubernetes {})",
                        scenario.version
                    )));
                }
                node.images.insert(image.clone());
            }
            Action::WriteFile { path, mode, asset } => {
                node.fs.files.insert(
                    path.to_string(),
                    File {
                        mode: *mode,
                        content: Content::Asset(*asset),
                    },
                );
                if path.starts_with(kscratch_core::plan::MANIFEST_DIR) && node.running("kubelet") {
                    components::sync_static_pods(node, scenario, node_index);
                }
            }
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
                    mac: v.mac.clone(),
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
                let table = pod_routes.expect("built above");
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
            Action::StartService { name } => {
                components::start_service(node, scenario, node_index, name).map_err(|e| {
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
                components::require_apiserver(&self.world, scenario).map_err(|e| {
                    StepError::new(
                        kscratch_core::exec::ErrorKind::Command,
                        format!("{id}: kubectl apply: {e}"),
                    )
                })?;
                addon = Some(format!("{asset:?}"));
            }
            // Checks only: when check says Needed they have already failed.
            Action::Preflight { .. }
            | Action::WaitHealthy { .. }
            | Action::ValidateCluster { .. } => {}
            other => {
                return Err(StepError::failed(format!(
                    "{id}: the simulator cannot run {other:?} on a node"
                )))
            }
        }
        if let Some(a) = addon {
            self.addons.insert(a);
        }
        Ok(())
    }
}

fn route_mode(via: &PodRouteVia) -> PodRouteMode {
    match via {
        PodRouteVia::Underlay { dev } => PodRouteMode::Underlay { dev: dev.clone() },
        PodRouteVia::Overlay { dev } => PodRouteMode::Overlay { dev: dev.clone() },
    }
}

fn pod_route_table(cx: &StepCx<'_>) -> PodRoutes {
    let s = cx.scenario;
    let entries = cx
        .plan
        .pod_network()
        .iter()
        .map(|e| PodRouteEntry {
            node: e.node.clone(),
            pod_cidr: e.pod_cidr,
            node_ip: e.node_ip,
            vtep: e.vtep_mac.clone().map(|mac| (e.pod_cidr.network(), mac)),
        })
        .collect();
    PodRoutes::new(s.network.cluster_cidr, s.network.node_prefix, entries)
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
        PreflightCheck::PortFree { port } => {
            match node.listeners.get(&(crate::packet::Proto::Tcp, *port)) {
                Some(l) => Err(format!("port {port} is already in use by {}", l.process)),
                None => Ok(()),
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
