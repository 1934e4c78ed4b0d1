//! What a changed scenario does to a cluster, before it runs: the difference
//! between two plans, per node, as `kscratch diff` shows it.
//!
//! Both sides are a [`Snapshot`]: the plan's steps (as their canonical JSON),
//! the digest of every file it writes, the text of every non-secret file, the
//! services and static pods with the files each reads, and the cluster-wide
//! facts a change can disrupt (version, etcd members, pod CIDRs). A snapshot
//! holds no key material, so one is also the record `apply` keeps of the
//! last applied plan, and `kscratch diff SCENARIO` compares against it.
//!
//! Which files a service reads is derived from the plan, not listed by hand:
//! a service's inputs are the files its `StartService` step depends on on
//! its node (the same rule `exec` restarts by); a static pod's are its
//! manifest and the files the manifest names, and those files name.

use crate::plan::{self, digest, Action, Asset, Departed, Plan, PodNetworkEntry, Target};
use crate::scenario::Scenario;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

/// A plan as the diff sees it; also the applied record. Secret-free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub cluster: String,
    pub fingerprint: String,
    pub kubernetes_version: String,
    /// Step id → the step's canonical JSON (action and fields).
    pub steps: BTreeMap<String, String>,
    /// `target` → `path` → digest.
    pub files: BTreeMap<String, BTreeMap<String, FileEntry>>,
    /// Non-secret file texts by digest (shared by every node that has the same bytes).
    pub texts: BTreeMap<String, String>,
    /// `target` → service or static pod → the files it reads.
    pub readers: BTreeMap<String, BTreeMap<String, Reader>>,
    /// Node → pod CIDR.
    pub pod_cidrs: BTreeMap<String, String>,
    pub etcd_members: Vec<String>,
    /// The cluster-wide artifacts (pod network table, Service plan) as JSON.
    pub artifacts: BTreeMap<String, String>,
}

/// A service or static pod and what it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reader {
    /// Its unit file (or drop-in) or static pod manifest.
    pub file: String,
    /// Every file it reads, its own included.
    pub inputs: BTreeSet<String>,
    /// A service: apply restarts it when any input changed. A static pod:
    /// the kubelet recreates it only when its manifest changed.
    pub restarts_on_any_input: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub secret: bool,
}

impl Snapshot {
    /// The snapshot of `plan`, planned from `s`.
    pub fn of(s: &Scenario, plan: &Plan) -> Snapshot {
        let graph_json = plan::to_json(plan);
        let graph: serde_json::Value =
            serde_json::from_str(&graph_json).expect("the canonical plan is JSON");
        // The fingerprint's file digests, collected here: each file renders once.
        let mut digests = Vec::new();
        let mut steps = BTreeMap::new();
        for st in graph["steps"].as_array().into_iter().flatten() {
            let mut st = st.clone();
            let id = st["id"].as_str().unwrap_or_default().to_string();
            if let Some(o) = st.as_object_mut() {
                // Dependencies and ids are structure; a step "changes" when what it does changes.
                o.remove("id");
                o.remove("deps");
            }
            steps.insert(id, st.to_string());
        }
        let mut artifacts = BTreeMap::new();
        for a in graph["artifacts"].as_array().into_iter().flatten() {
            let name = a["artifact"].as_str().unwrap_or_default().to_string();
            artifacts.insert(name, a["data"].to_string());
        }
        let mut files: BTreeMap<String, BTreeMap<String, FileEntry>> = BTreeMap::new();
        let mut texts = BTreeMap::new();
        // Per target: path → (text of a non-secret file) for the reader derivation.
        let mut node_texts: BTreeMap<String, Vec<(String, Asset, Option<String>)>> =
            BTreeMap::new();
        let mut once: BTreeMap<Asset, (String, Option<Vec<u8>>)> = BTreeMap::new();
        for step in &plan.steps {
            let Action::WriteFile { path, asset, .. } = &step.action else {
                continue;
            };
            let node = match step.target {
                Target::Node(i) => Some(i as usize),
                Target::Local | Target::Fabric => None,
            };
            let target = plan.target_name(step.target).to_string();
            let secret = digest::is_secret(*asset);
            // Files with the same bytes on every node (some O(nodes) in
            // size) are rendered once, and their text is kept once.
            let shared = asset.same_on_every_node();
            let (sha, bytes) = if shared {
                once.entry(*asset)
                    .or_insert_with(|| digest::rendered_digest(s, node, *asset))
                    .clone()
            } else {
                digest::rendered_digest(s, node, *asset)
            };
            let text = bytes
                .filter(|_| !secret)
                .and_then(|b| String::from_utf8(b).ok());
            digests.push(plan::FileDigest {
                target: target.clone(),
                path: (*path).to_string(),
                sha256: sha.clone(),
                secret,
            });
            if let Some(t) = &text {
                texts.entry(sha.clone()).or_insert_with(|| t.clone());
            }
            files.entry(target.clone()).or_default().insert(
                (*path).to_string(),
                FileEntry {
                    sha256: sha,
                    secret,
                },
            );
            node_texts.entry(target).or_default().push((
                (*path).to_string(),
                *asset,
                text.filter(|_| !shared),
            ));
        }
        let mut readers = service_readers(plan);
        for (t, v) in &node_texts {
            let pods = static_pod_readers(v);
            if !pods.is_empty() {
                readers.entry(t.clone()).or_default().extend(pods);
            }
        }
        Snapshot {
            cluster: plan.cluster.clone(),
            fingerprint: digest::fingerprint_of(&graph_json, &digests),
            kubernetes_version: plan.version.to_string(),
            steps,
            files,
            texts,
            readers,
            pod_cidrs: s
                .nodes
                .iter()
                .zip(&s.alloc.pod_cidrs)
                .map(|(n, c)| (n.name.clone(), c.to_string()))
                .collect(),
            etcd_members: s
                .etcd
                .members
                .iter()
                .filter_map(|i| s.nodes.get(*i).map(|n| n.name.clone()))
                .collect(),
            artifacts,
        }
    }
}

impl Snapshot {
    /// The nodes this record has and `s` does not, with what the record
    /// says the cluster holds for each (node IP, pod CIDR, VTEP MAC from the
    /// recorded pod network table; etcd membership): the planner's input
    /// for removing them ([`crate::plan::plan_removing`]). In record order
    /// (by name). A record whose pod network table lacks a departed node,
    /// or cannot be read, is an error naming it.
    pub fn departed(&self, s: &Scenario) -> Result<Vec<Departed>, String> {
        let gone: Vec<&String> = self
            .pod_cidrs
            .keys()
            .filter(|n| !s.nodes.iter().any(|m| &m.name == *n))
            .collect();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let table: Vec<PodNetworkEntry> = match self.artifacts.get("pod-network") {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| format!("the recorded pod network table cannot be read: {e}"))?,
            None => Vec::new(),
        };
        gone.into_iter()
            .map(|name| {
                let e = table.iter().find(|e| &e.node == name).ok_or_else(|| {
                    format!("the recorded pod network table has no entry for {name}")
                })?;
                Ok(Departed {
                    name: name.clone(),
                    node_ip: e.node_ip,
                    pod_cidr: e.pod_cidr,
                    vtep_mac: e.vtep_mac,
                    etcd_member: self.etcd_members.contains(name),
                })
            })
            .collect()
    }
}

/// The static pods of one target and the files each reads: its manifest,
/// and the files the manifest names (certificates, kubeconfigs) and those
/// files name in turn.
fn static_pod_readers(files: &[(String, Asset, Option<String>)]) -> BTreeMap<String, Reader> {
    let text_of = |p: &str| {
        files
            .iter()
            .find(|(q, _, _)| q == p)
            .and_then(|(_, _, t)| t.as_deref())
    };
    let mut out = BTreeMap::new();
    for (path, asset, text) in files {
        let (Asset::StaticPod(c), Some(text)) = (asset, text) else {
            continue;
        };
        let mut inputs = BTreeSet::from([path.clone()]);
        for (p, _, _) in files
            .iter()
            .filter(|(p, _, _)| p != path && text.contains(p.as_str()))
        {
            inputs.insert(p.clone());
            if let Some(t) = text_of(p) {
                for (q, _, _) in files
                    .iter()
                    .filter(|(q, _, _)| q != path && t.contains(q.as_str()))
                {
                    inputs.insert(q.clone());
                }
            }
        }
        out.insert(
            c.name().to_string(),
            Reader {
                file: path.clone(),
                inputs,
                restarts_on_any_input: false,
            },
        );
    }
    out
}

/// The services of each target and their inputs: the files their
/// `StartService` step depends on on its own target, the rule apply
/// restarts by (`exec`).
fn service_readers(plan: &Plan) -> BTreeMap<String, BTreeMap<String, Reader>> {
    let mut out: BTreeMap<String, BTreeMap<String, Reader>> = BTreeMap::new();
    for step in &plan.steps {
        let Action::StartService { name } = &step.action else {
            continue;
        };
        let inputs: BTreeSet<String> = plan
            .deps(step)
            .iter()
            .map(|d| &plan.steps[*d as usize])
            .filter(|d| d.target == step.target)
            .filter_map(|d| match &d.action {
                Action::WriteFile { path, .. } => Some((*path).to_string()),
                _ => None,
            })
            .collect();
        let file = inputs
            .iter()
            .find(|p| p.contains("/systemd/system/"))
            .cloned()
            .unwrap_or_default();
        out.entry(plan.target_name(step.target).to_string())
            .or_default()
            .insert(
                name.to_string(),
                Reader {
                    file,
                    inputs,
                    restarts_on_any_input: true,
                },
            );
    }
    out
}

/// How a change affects a running cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Applied in place; services whose inputs changed restart.
    Change,
    /// Takes the cluster through a rollout: flagged for review.
    Disruptive,
    /// kscratch will not apply it.
    Refused,
}

/// A cluster-wide finding: a disruptive or refused change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    pub secret: bool,
    /// A unified diff of a non-secret text file, when both texts are known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restart {
    pub service: String,
    /// The inputs that changed, e.g. `/var/lib/kube-proxy/config.yaml`.
    pub because: Vec<String>,
    /// Whether applying restarts it: a service whose inputs changed (apply
    /// restarts it), a static pod whose manifest changed (the kubelet
    /// recreates it). A static pod whose certificate or kubeconfig alone
    /// changed keeps running with the old one until it is restarted.
    pub automatic: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetDiff {
    pub target: String,
    pub steps_added: Vec<String>,
    pub steps_removed: Vec<String>,
    pub steps_changed: Vec<String>,
    pub files: Vec<FileChange>,
    pub restarts: Vec<Restart>,
}

impl TargetDiff {
    fn is_empty(&self) -> bool {
        self.steps_added.is_empty()
            && self.steps_removed.is_empty()
            && self.steps_changed.is_empty()
            && self.files.is_empty()
    }
}

/// What applying `new` over `old` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDiff {
    pub old_fingerprint: String,
    pub new_fingerprint: String,
    pub changed: bool,
    pub refused: bool,
    pub findings: Vec<Finding>,
    /// Cluster-wide artifacts that change (`pod-network`, `service-plan`).
    pub artifacts: Vec<String>,
    /// Pod network entries added (`+node-4 10.10.4.0/24`) and removed (`-...`).
    pub pod_routes: Vec<String>,
    pub targets: Vec<TargetDiff>,
}

impl PlanDiff {
    /// What kscratch refuses to apply, one `error: ...` line each.
    pub fn refusals(&self) -> Vec<String> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Refused)
            .map(|f| format!("error: {}", f.what))
            .collect()
    }
}

/// The difference from `old` to `new`.
pub fn diff(old: &Snapshot, new: &Snapshot) -> PlanDiff {
    let mut findings = Vec::new();
    version_findings(old, new, &mut findings);
    for (node, cidr) in &new.pod_cidrs {
        if let Some(was) = old.pod_cidrs.get(node) {
            if was != cidr {
                findings.push(Finding {
                    severity: Severity::Refused,
                    what: format!(
                        "{node}: pod CIDR {was} → {cidr}: a node's pod range cannot move under running pods (a range can grow, not move); remove the node and add it again, or keep its podCIDR"
                    ),
                });
            }
        }
    }
    if let Some(f) = etcd_quorum_finding(old, new) {
        findings.push(f);
    }
    if old.etcd_members != new.etcd_members {
        let added = new
            .etcd_members
            .iter()
            .any(|m| !old.etcd_members.contains(m));
        // Members whose node stays in the scenario are not removed by apply.
        let kept_nodes: Vec<&str> = old
            .etcd_members
            .iter()
            .filter(|m| !new.etcd_members.contains(m) && new.pod_cidrs.contains_key(*m))
            .map(String::as_str)
            .collect();
        let how = if added {
            "apply does not add a member to a running etcd cluster: add it with `etcdctl member add` first".to_string()
        } else if !kept_nodes.is_empty() {
            format!(
                "apply removes the members of nodes that left the scenario, not of nodes that stay: remove {} with `etcdctl member remove` first",
                kept_nodes.join(", ")
            )
        } else {
            "apply removes the departed members with `etcdctl member remove` (remove/etcd-member), each a change the remaining quorum agrees to".to_string()
        };
        findings.push(Finding {
            severity: Severity::Disruptive,
            what: format!(
                "etcd members [{}] → [{}]: a membership change; {how}",
                old.etcd_members.join(", "),
                new.etcd_members.join(", ")
            ),
        });
    }
    let artifacts: Vec<String> = new
        .artifacts
        .iter()
        .filter(|(k, v)| old.artifacts.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(
            old.artifacts
                .keys()
                .filter(|k| !new.artifacts.contains_key(*k))
                .cloned(),
        )
        .collect();

    let mut pod_routes = Vec::new();
    for (node, cidr) in &old.pod_cidrs {
        if new.pod_cidrs.get(node) != Some(cidr) {
            pod_routes.push(format!("-{node} {cidr}"));
        }
    }
    for (node, cidr) in &new.pod_cidrs {
        if old.pod_cidrs.get(node) != Some(cidr) {
            pod_routes.push(format!("+{node} {cidr}"));
        }
    }
    let mut targets: BTreeMap<String, TargetDiff> = BTreeMap::new();
    let target_of = |id: &str| id.split('/').next().unwrap_or_default().to_string();
    let entry = |t: String| -> TargetDiff {
        TargetDiff {
            target: t,
            ..TargetDiff::default()
        }
    };
    for (id, s) in &new.steps {
        match old.steps.get(id) {
            None => {
                let t = target_of(id);
                targets
                    .entry(t.clone())
                    .or_insert_with(|| entry(t))
                    .steps_added
                    .push(id.clone());
            }
            Some(o) if o != s => {
                let t = target_of(id);
                targets
                    .entry(t.clone())
                    .or_insert_with(|| entry(t))
                    .steps_changed
                    .push(id.clone());
            }
            Some(_) => {}
        }
    }
    for id in old.steps.keys().filter(|id| !new.steps.contains_key(*id)) {
        let t = target_of(id);
        targets
            .entry(t.clone())
            .or_insert_with(|| entry(t))
            .steps_removed
            .push(id.clone());
    }
    let empty = BTreeMap::new();
    let all_targets: BTreeSet<&String> = old.files.keys().chain(new.files.keys()).collect();
    for t in all_targets {
        let (of, nf) = (
            old.files.get(t).unwrap_or(&empty),
            new.files.get(t).unwrap_or(&empty),
        );
        let mut changes = Vec::new();
        let mut changed_paths = BTreeSet::new();
        for (p, e) in nf {
            let change = match of.get(p) {
                None => "added",
                Some(o) if o.sha256 != e.sha256 => "changed",
                Some(_) => continue,
            };
            changed_paths.insert(p.clone());
            let diff = match (of.get(p), e.secret) {
                (Some(o), false) => match (old.texts.get(&o.sha256), new.texts.get(&e.sha256)) {
                    (Some(a), Some(b)) => Some(unified(p, a, b)),
                    _ => None,
                },
                _ => None,
            };
            changes.push(FileChange {
                path: p.clone(),
                change,
                secret: e.secret,
                diff,
            });
        }
        for (p, o) in of.iter().filter(|(p, _)| !nf.contains_key(*p)) {
            changes.push(FileChange {
                path: p.clone(),
                change: "removed",
                secret: o.secret,
                diff: None,
            });
        }
        // A service restarts when an input it had before changed; a new
        // service starts (its step is added), it does not restart.
        let mut restarts = Vec::new();
        if let (Some(or), Some(nr)) = (old.readers.get(t), new.readers.get(t)) {
            for (svc, reader) in nr {
                if !or.contains_key(svc) {
                    continue;
                }
                let because: Vec<String> = reader
                    .inputs
                    .iter()
                    .filter(|p| changed_paths.contains(*p))
                    .cloned()
                    .collect();
                if !because.is_empty() {
                    let own = reader.restarts_on_any_input || because.contains(&reader.file);
                    restarts.push(Restart {
                        service: svc.clone(),
                        because,
                        automatic: own,
                    });
                }
            }
        }
        if !changes.is_empty() || !restarts.is_empty() {
            let d = targets.entry(t.clone()).or_insert_with(|| entry(t.clone()));
            d.files = changes;
            d.restarts = restarts;
        }
    }
    let targets: Vec<TargetDiff> = targets.into_values().filter(|d| !d.is_empty()).collect();
    let refused = findings.iter().any(|f| f.severity == Severity::Refused);
    PlanDiff {
        old_fingerprint: old.fingerprint.clone(),
        new_fingerprint: new.fingerprint.clone(),
        changed: old.fingerprint != new.fingerprint,
        refused,
        findings,
        artifacts,
        pod_routes,
        targets,
    }
}

/// Removing etcd members that are gone (their nodes left the scenario, or
/// they no longer run a member) is `etcdctl member remove`, one member at a
/// time, and each removal is itself a change the cluster must agree on: a
/// quorum of the current membership. With N members of which R are removed,
/// the N − R that remain must be a quorum of N (⌊N/2⌋ + 1) for the first
/// removal; later ones need less. Refused otherwise, with the numbers.
fn etcd_quorum_finding(old: &Snapshot, new: &Snapshot) -> Option<Finding> {
    let n = old.etcd_members.len();
    let removed: Vec<&String> = old
        .etcd_members
        .iter()
        .filter(|m| !new.etcd_members.contains(m))
        .collect();
    let r = removed.len();
    let quorum = n / 2 + 1;
    if r == 0 || n - r >= quorum {
        return None;
    }
    let names: Vec<&str> = removed.iter().map(|m| m.as_str()).collect();
    Some(Finding {
        severity: Severity::Refused,
        what: format!(
            "removing {r} of {n} etcd members ({}) leaves {} running, and removing a member needs a quorum of the current {n}: {quorum} (⌊{n}/2⌋ + 1) must agree; remove at most {} now, one at a time, and apply again after each, or restore the remaining member from a snapshot (`etcdutl snapshot restore`) into a new cluster",
            names.join(", "),
            n - r,
            n - quorum
        ),
    })
}

fn version_findings(old: &Snapshot, new: &Snapshot, out: &mut Vec<Finding>) {
    if old.kubernetes_version == new.kubernetes_version {
        return;
    }
    let minor = |v: &str| -> Option<(u32, u32)> {
        let mut it = v.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    let (o, n) = (&old.kubernetes_version, &new.kubernetes_version);
    match (minor(o), minor(n)) {
        (Some((om, on)), Some((nm, nn))) if om == nm && nn > on + 1 => out.push(Finding {
            severity: Severity::Refused,
            what: format!(
                "Kubernetes {o} → {n} skips {} minor version{}: the version-skew policy allows one minor at a time; upgrade to {om}.{}.x first",
                nn - on - 1,
                if nn - on - 1 == 1 { "" } else { "s" },
                on + 1
            ),
        }),
        (Some(a), Some(b)) if b < a => out.push(Finding {
            severity: Severity::Refused,
            what: format!("Kubernetes {o} → {n} is a downgrade: kscratch does not downgrade a running cluster"),
        }),
        _ => out.push(Finding {
            severity: Severity::Disruptive,
            what: format!(
                "Kubernetes {o} → {n}: a minor upgrade; apply rolls it out in the version-skew policy's order (etcd, the apiservers, controller-manager and scheduler, then kubelets and kube-proxy), control-plane nodes one at a time; `kscratch check NEW --from OLD` proves every wave on the simulator first"
            ),
        }),
    }
}

/// A unified diff of two texts (whole-file hunks with 3 lines of context).
fn unified(path: &str, a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    // Longest common subsequence over lines: files here are small (≤ a few hundred lines).
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // Edit script: (' ' | '-' | '+', line).
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as diff(1) prints a replaced line.
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let mut out = format!("--- a{path}\n+++ b{path}\n");
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = (0..ops.len()).filter(|k| ops[*k].0 != ' ').collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k] + CONTEXT + 1;
        while k + 1 < changed.len() && changed[k + 1] <= end + CONTEXT {
            k += 1;
            end = changed[k] + CONTEXT + 1;
        }
        let end = end.min(ops.len());
        // Line numbers of the hunk in both files.
        let a_start = ops[..start].iter().filter(|o| o.0 != '+').count();
        let b_start = ops[..start].iter().filter(|o| o.0 != '-').count();
        let a_len = ops[start..end].iter().filter(|o| o.0 != '+').count();
        let b_len = ops[start..end].iter().filter(|o| o.0 != '-').count();
        let _ = writeln!(
            out,
            "@@ -{},{a_len} +{},{b_len} @@",
            a_start + 1,
            b_start + 1
        );
        for (c, l) in &ops[start..end] {
            let _ = writeln!(out, "{c}{l}");
        }
        k += 1;
    }
    out
}

impl fmt::Display for PlanDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.changed {
            return writeln!(f, "no changes: the plan is {}", self.new_fingerprint);
        }
        writeln!(
            f,
            "plan {} → {}",
            self.old_fingerprint, self.new_fingerprint
        )?;
        for x in &self.findings {
            let tag = match x.severity {
                Severity::Change => "change",
                Severity::Disruptive => "disruptive",
                Severity::Refused => "refused",
            };
            writeln!(f, "{tag}: {}", x.what)?;
        }
        for a in &self.artifacts {
            let what = match a.as_str() {
                "pod-network" => "the pod network table (routes to every node's pod CIDR) changes",
                "service-plan" => "the Service address plan changes",
                other => other,
            };
            writeln!(f, "cluster: {what}")?;
            if a == "pod-network" {
                for r in &self.pod_routes {
                    writeln!(f, "  {r}")?;
                }
            }
        }
        for t in &self.targets {
            writeln!(f, "\n{}:", t.target)?;
            for s in &t.steps_added {
                writeln!(f, "  + step {s}")?;
            }
            for s in &t.steps_removed {
                writeln!(f, "  - step {s}")?;
            }
            for s in &t.steps_changed {
                writeln!(f, "  ~ step {s}")?;
            }
            for r in &t.restarts {
                if r.automatic {
                    writeln!(
                        f,
                        "  restart {}: {} changed",
                        r.service,
                        r.because.join(", ")
                    )?;
                } else {
                    writeln!(
                        f,
                        "  stale {}: {} changed; the kubelet recreates a static pod only when its manifest changes: restart {} by hand",
                        r.service,
                        r.because.join(", "),
                        r.service
                    )?;
                }
            }
            for c in &t.files {
                let secret = if c.secret {
                    " (secret: content not shown)"
                } else {
                    ""
                };
                writeln!(f, "  file {} {}{secret}", c.path, c.change)?;
                if let Some(d) = &c.diff {
                    for l in d.lines() {
                        writeln!(f, "    {l}")?;
                    }
                }
            }
        }
        let n = self.targets.len();
        writeln!(
            f,
            "\n{n} target{} change{}{}",
            if n == 1 { "" } else { "s" },
            if n == 1 { "s" } else { "" },
            if self.refused {
                "; refused: kscratch will not apply this change"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn unified_diff_shows_changed_lines_with_context() {
        let a = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let b = "a\nb\nc\nD\ne\nf\ng\nh\n";
        assert_eq!(
            unified("/x", a, b),
            "--- a/x\n+++ b/x\n@@ -1,7 +1,7 @@\n a\n b\n c\n-d\n+D\n e\n f\n g\n"
        );
        assert_eq!(unified("/x", a, a), "--- a/x\n+++ b/x\n");
    }
}
