//! Plan output: the canonical JSON (which the plan fingerprint digests, with
//! every file's content: see `digest`), a
//! Graphviz graph and the readable summary. All pure and deterministic.

use super::{Phase, Plan, Target};
use crate::scenario::Scenario;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Serialize)]
struct JsonPlan<'p> {
    cluster: &'p str,
    version: String,
    nodes: &'p [String],
    artifacts: &'p [super::Artifact],
    steps: Vec<JsonStep<'p>>,
}

#[derive(Serialize)]
struct JsonStep<'p> {
    id: String,
    target: &'p str,
    phase: Phase,
    #[serde(flatten)]
    action: &'p super::Action,
    deps: Vec<String>,
}

/// The canonical JSON form of the plan: same plan, same bytes.
pub fn to_json(plan: &Plan) -> String {
    let ids: Vec<String> = plan.steps.iter().map(|s| plan.step_id(s)).collect();
    let steps = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| JsonStep {
            id: ids[i].clone(),
            target: plan.target_name(s.target),
            phase: s.phase,
            action: &s.action,
            deps: plan
                .deps(s)
                .iter()
                .map(|d| ids[*d as usize].clone())
                .collect(),
        })
        .collect();
    let doc = JsonPlan {
        cluster: &plan.cluster,
        version: plan.version.to_string(),
        nodes: &plan.nodes,
        artifacts: &plan.artifacts,
        steps,
    };
    let mut out = serde_json::to_string_pretty(&doc)
        .expect("plan serializes: only strings, numbers and enums");
    out.push('\n');
    out
}

/// The step graph for Graphviz: one cluster per target, edges for dependencies.
pub fn to_dot(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontsize=10];",
        plan.cluster
    );
    let mut targets: Vec<Target> = plan.steps.iter().map(|s| s.target).collect();
    targets.sort_unstable();
    targets.dedup();
    for t in targets {
        let name = plan.target_name(t);
        let _ = writeln!(
            out,
            "  subgraph \"cluster_{name}\" {{\n    label=\"{name}\";"
        );
        for (i, s) in plan.steps.iter().enumerate().filter(|(_, s)| s.target == t) {
            let _ = writeln!(out, "    s{i} [label=\"{}\"];", plan.step_id(s));
        }
        out.push_str("  }\n");
    }
    for (i, s) in plan.steps.iter().enumerate() {
        for d in plan.deps(s) {
            let _ = writeln!(out, "  s{d} -> s{i};");
        }
    }
    out.push_str("}\n");
    out
}

/// What `kscratch plan` prints by default.
pub struct Summary<'a> {
    pub scenario: &'a Scenario,
    pub plan: &'a Plan,
}

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, p) = (self.scenario, self.plan);
        writeln!(
            f,
            "plan for cluster `{}`: Kubernetes {}, {} nodes, {} steps",
            p.cluster,
            p.version,
            p.nodes.len(),
            p.steps.len()
        )?;
        writeln!(f, "fingerprint {}", super::digest::fingerprint(s, p))?;
        writeln!(f)?;
        writeln!(f, "phases:")?;
        for phase in Phase::ALL {
            let n = p.steps.iter().filter(|st| st.phase == phase).count();
            if n > 0 {
                writeln!(f, "  {:<14} {n:>6} steps", phase.name())?;
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "network: pod traffic {}, cluster CIDR {} (/{} per node), pod MTU {}, masquerade {}",
            mode_name(s),
            s.network.cluster_cidr,
            s.network.node_prefix,
            s.network.pod_mtu,
            if s.network.masquerade { "on" } else { "off" }
        )?;
        writeln!(
            f,
            "services: {} — kubernetes {}, DNS {} ({})",
            s.network.service_cidr,
            s.network.kubernetes_service_ip,
            s.network.dns_ip,
            s.network.dns_domain
        )?;
        match &s.control_plane_endpoint {
            None => writeln!(
                f,
                "apiserver: {}://{}:{}",
                s.security.model.scheme(),
                s.master_ip,
                s.security.model.apiserver_port()
            )?,
            Some(e) => {
                let cps: Vec<&str> = s
                    .control_plane_nodes()
                    .map(|(_, n)| n.name.as_str())
                    .collect();
                let via = if e.local_proxy_port().is_some() {
                    "a local proxy on every node"
                } else {
                    "the control-plane endpoint"
                };
                writeln!(
                    f,
                    "apiserver: {}://{e} ({via}, over {})",
                    s.security.model.scheme(),
                    cps.join(", ")
                )?
            }
        }
        writeln!(f)?;
        let w = s
            .nodes
            .iter()
            .map(|n| n.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        // Roles are as wide as the longest list (at least the historical 24),
        // so the columns after them line up for any role list.
        let rw = s
            .nodes
            .iter()
            .map(|n| n.roles.names().join(",").len())
            .max()
            .unwrap_or(0)
            .max(24);
        writeln!(f, "allocation:")?;
        writeln!(
            f,
            "  {:<w$}  {:<15}  {:<rw$}  {:<18}  {:<18}  STEPS",
            "NODE", "IP", "ROLES", "POD CIDR", "BRIDGE"
        )?;
        let mut per_node = vec![0usize; s.nodes.len()];
        for st in &p.steps {
            if let Target::Node(i) = st.target {
                per_node[i as usize] += 1;
            }
        }
        for (i, n) in s.nodes.iter().enumerate() {
            let bridge = format!("{}/{}", s.bridge_addr(i), s.pod_cidr(i).prefix_len());
            writeln!(
                f,
                "  {:<w$}  {:<15}  {:<rw$}  {:<18}  {:<18}  {}",
                n.name,
                n.ip.to_string(),
                n.roles.names().join(","),
                s.pod_cidr(i).to_string(),
                bridge,
                per_node[i]
            )?;
        }
        let local = p
            .steps
            .iter()
            .filter(|st| st.target == Target::Local)
            .count();
        let fabric = p
            .steps
            .iter()
            .filter(|st| st.target == Target::Fabric)
            .count();
        writeln!(
            f,
            "  operator machine: {local} steps{}",
            if fabric > 0 {
                format!("; fabric router: {fabric} steps")
            } else {
                String::new()
            }
        )?;
        if !p.departed.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "removal (nodes the applied record has and the scenario does not): {}",
                p.departed.join(", ")
            )?;
            for st in p.steps.iter().filter(|st| st.subject.is_some()) {
                writeln!(f, "  {}", p.step_id(st))?;
            }
        }
        Ok(())
    }
}

fn mode_name(s: &Scenario) -> String {
    use crate::scenario::PodTraffic;
    match &s.network.pod_traffic {
        PodTraffic::Routed => "routed".into(),
        PodTraffic::Fabric => "fabric".into(),
        PodTraffic::Vxlan(v) => format!("vxlan (VNI {}, UDP {})", v.vni, v.port),
        PodTraffic::External => "external".into(),
    }
}
