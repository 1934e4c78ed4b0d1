//! Removing a node: the removal steps the planner adds for the nodes an
//! applied record has and the scenario does not, the simulator's proof that
//! nothing of them is left (and that without those steps something is), and
//! the CLI's quorum refusal before anything runs.

use crate::support::{load, root, tempdir};
use kscratch_core::diff::Snapshot;
use kscratch_core::ipam::IpamLock;
use kscratch_core::plan::{self, Action, Departed, Plan};
use kscratch_core::scenario::Scenario;
use std::path::Path;
use std::process::Command;

/// `rel`'s text without the nodes in `gone` (each `- name: X` entry and its
/// indented fields), with `edit` applied.
fn text_without(rel: &str, gone: &[&str], edit: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(root().join(rel)).expect("bundled scenario");
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if gone.iter().any(|n| line.trim() == format!("- name: {n}")) {
            skipping = true;
            continue;
        }
        if skipping && line.starts_with("    ") && !line.trim_start().starts_with("- ") {
            continue;
        }
        skipping = false;
        out.push_str(line);
        out.push('\n');
    }
    edit(out)
}

fn lock_of(rel: &str) -> IpamLock {
    let p = root().join(rel.replace(".yaml", ".ipam.lock"));
    IpamLock::parse(&std::fs::read_to_string(p).expect("bundled lock")).expect("lock parses")
}

/// The bundled scenario `rel`, and the same without `gone` (its lock kept,
/// so the remaining nodes keep their pod CIDRs).
fn pair(rel: &str, gone: &[&str], edit: impl Fn(String) -> String) -> (Scenario, Scenario) {
    let old = load(rel).expect("bundled scenario is valid").scenario;
    let text = text_without(rel, gone, edit);
    let new = kscratch_core::load("new.yaml", &text, Some(&lock_of(rel)))
        .unwrap_or_else(|d| panic!("{rel} without {gone:?} must be valid:\n{d}\n{text}"))
        .scenario;
    (old, new)
}

/// The departed nodes, as `apply` finds them: from the old plan's record.
fn departed(old: &Scenario, new: &Scenario) -> Vec<Departed> {
    Snapshot::of(old, &plan::plan(old))
        .departed(new)
        .expect("the record has every departed node")
}

const ROUTED: &str = "scenarios/guide-routed.yaml";
const VXLAN: &str = "scenarios/vxlan-overlay.yaml";
const HA: &str = "scenarios/https-ha.yaml";

fn ids(p: &Plan) -> Vec<String> {
    p.steps.iter().map(|st| p.step_id(st)).collect()
}

/// A bundled scenario, the nodes that leave it, and an edit of the rest.
type Case = (&'static str, &'static [&'static str], fn(String) -> String);

fn three_to_two(t: String) -> String {
    t.replace("members: [cp-1, cp-2, cp-3]", "members: [cp-1, cp-2]")
}

#[test]
fn the_plan_has_removal_steps_named_after_the_departed_node() {
    let (old, new) = pair(ROUTED, &["node-2"], |t| t);
    let d = departed(&old, &new);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].name, "node-2");
    assert_eq!(d[0].pod_cidr.to_string(), "10.10.2.0/24");
    let p = plan::plan_removing(&new, &d);
    let all = ids(&p);
    for id in [
        "master/remove/route/node-2",
        "node-1/remove/route/node-2",
        "node-3/remove/route/node-2",
        "master/remove/node-object/node-2",
    ] {
        assert!(all.contains(&id.to_string()), "{id} missing from {all:?}");
    }
    let removal: Vec<&String> = all.iter().filter(|i| i.contains("/remove/")).collect();
    assert_eq!(removal.len(), 4, "{removal:?}");
    // The route it deletes is the one net/pod-routes installed for node-2.
    let st = p
        .steps
        .iter()
        .find(|st| p.step_id(st) == "node-1/remove/route/node-2")
        .unwrap();
    let Action::DeleteRoutes { routes } = &st.action else {
        panic!("{:?}", st.action)
    };
    assert_eq!(routes[0].emit(), "10.10.2.0/24 via 192.168.1.13 dev eth0");
    // Without departed nodes, the plan is the plain plan.
    assert_eq!(
        plan::to_json(&plan::plan_removing(&new, &[])),
        plan::to_json(&plan::plan(&new))
    );
    // Deterministic: the same bytes twice.
    assert_eq!(
        plan::to_json(&p),
        plan::to_json(&plan::plan_removing(&new, &d))
    );

    let (old, new) = pair(VXLAN, &["w2"], |t| t);
    let p = plan::plan_removing(&new, &departed(&old, &new));
    let all = ids(&p);
    for id in [
        "cp/remove/route/w2",
        "w1/remove/neigh/w2",
        "w3/remove/fdb/w2",
    ] {
        assert!(all.contains(&id.to_string()), "{id} missing");
    }

    // An etcd member (3 → 2): `member remove` on the first remaining
    // member; on a fabric cluster the router's route, not the nodes'.
    let (old, new) = pair(HA, &["cp-3"], three_to_two);
    let d = departed(&old, &new);
    assert!(d[0].etcd_member);
    let p = plan::plan_removing(&new, &d);
    let all = ids(&p);
    for id in [
        "cp-1/remove/etcd-member/cp-3",
        "fabric/remove/fabric-route/cp-3",
        "cp-1/remove/node-object/cp-3",
    ] {
        assert!(all.contains(&id.to_string()), "{id} missing from {all:?}");
    }
    assert!(!all.iter().any(|i| i.contains("/remove/route/")));
}

#[test]
fn the_simulator_removes_every_trace_and_a_second_apply_changes_nothing() {
    let cases: [Case; 4] = [
        (ROUTED, &["node-2"], |t| t),
        (VXLAN, &["w2"], |t| t),
        (HA, &["cp-3"], three_to_two),
        (HA, &["worker-1", "worker-2"], |t| t),
    ];
    for (rel, gone, edit) in cases {
        let (old, new) = pair(rel, gone, edit);
        let p = plan::plan_removing(&new, &departed(&old, &new));
        let r = kscratch_sim::removal::remove(&old, &plan::plan(&old), &new, &p)
            .expect("the removal simulates");
        assert!(r.passed(), "{rel} without {gone:?}:\n{r}");
        let removed: Vec<&String> = r
            .changed
            .iter()
            .filter(|c| c.contains("/remove/"))
            .collect();
        assert!(
            !removed.is_empty(),
            "{rel}: no removal step changed anything:\n{r}"
        );
        assert!(r.changed_again.is_empty(), "{rel}: {:?}", r.changed_again);
        // Determinism: the same report twice.
        let again = kscratch_sim::removal::remove(&old, &plan::plan(&old), &new, &p).unwrap();
        assert_eq!(r, again);
    }
}

#[test]
fn without_its_removal_steps_the_departed_node_stays_on_the_simulator() {
    // The test above cannot pass by accident: the same apply with every
    // removal step made a no-op leaves the node's routes, FDB and
    // neighbour entries, etcd member and Node object behind.
    let cases: [(Case, &[&str]); 3] = [
        (
            (ROUTED, &["node-2"], |t| t),
            &[
                "route `10.10.2.0/24 via 192.168.1.13 dev eth0`",
                "Node object node-2",
            ],
        ),
        (
            (VXLAN, &["w2"], |t| t),
            &["fdb `", "neighbour `", "route `"],
        ),
        (
            (HA, &["cp-3"], three_to_two),
            &["fabric router: route", "etcd member list: cp-3"],
        ),
    ];
    for ((rel, gone, edit), want) in cases {
        let (old, new) = pair(rel, gone, edit);
        let mut p = plan::plan_removing(&new, &departed(&old, &new));
        for st in p.steps.iter_mut().filter(|st| st.subject.is_some()) {
            st.action = Action::Preflight { checks: vec![] };
        }
        let r = kscratch_sim::removal::remove(&old, &plan::plan(&old), &new, &p).unwrap();
        assert!(!r.passed(), "{rel}:\n{r}");
        let traces = r.traces.join("\n");
        for w in want {
            assert!(
                traces.contains(w),
                "{rel}: `{w}` not among the traces:\n{traces}"
            );
        }
    }
}

fn kscratch(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kscratch"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run kscratch")
}

/// A cluster applied from `https-ha.yaml` (its record written as apply
/// writes it), and the scenario edited to `text`, in a fresh directory.
fn applied_cluster(name: &str, text: &str) -> std::path::PathBuf {
    let dir = tempdir(name);
    let old = load(HA).unwrap().scenario;
    let record = Snapshot::of(&old, &plan::plan(&old));
    let state = dir.join(".kscratch").join(&old.name);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("applied.json"),
        serde_json::to_string(&record).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("ha.yaml"), text).unwrap();
    std::fs::copy(
        root().join("scenarios/https-ha.ipam.lock"),
        dir.join("ha.ipam.lock"),
    )
    .unwrap();
    std::fs::write(dir.join("known_hosts"), "").unwrap();
    dir
}

#[test]
fn removing_more_etcd_members_than_quorum_allows_is_refused_before_anything_runs() {
    let text = text_without(HA, &["cp-2", "cp-3"], |t| {
        t.replace("members: [cp-1, cp-2, cp-3]", "members: [cp-1]")
    });
    let dir = applied_cluster("quorum", &text);
    let record = dir.join(".kscratch/ha/applied.json");
    let before = std::fs::read(&record).unwrap();
    let out = kscratch(&["apply", "ha.yaml", "--known-hosts", "known_hosts"], &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("removing 2 of 3 etcd members (cp-2, cp-3) leaves 1 running")
            && err.contains("2 (⌊3/2⌋ + 1) must agree")
            && err.contains("remove at most 1 now"),
        "{err}"
    );
    assert!(err.contains("nothing was run on any node"), "{err}");
    // Nothing touched: no journal, no lock left, the record as it was.
    assert!(!dir.join("ha.journal.jsonl").exists());
    assert_eq!(std::fs::read(&record).unwrap(), before);
    // `diff` refuses the same, with the same numbers.
    let out = kscratch(&["diff", "ha.yaml"], &dir);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("removing 2 of 3 etcd members"), "{said}");
}

#[test]
fn plan_and_diff_show_the_removal_as_its_own_steps() {
    let text = text_without(HA, &["cp-3"], three_to_two);
    let dir = applied_cluster("shows", &text);
    let out = kscratch(&["plan", "ha.yaml"], &dir);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("removal (nodes the applied record has and the scenario does not): cp-3")
            && said.contains("  cp-1/remove/etcd-member/cp-3")
            && said.contains("  fabric/remove/fabric-route/cp-3")
            && said.contains("  cp-1/remove/node-object/cp-3"),
        "{said}"
    );
    let out = kscratch(&["diff", "ha.yaml"], &dir);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("-cp-3 10.32.2.0/24")
            && said.contains("  + step cp-1/remove/etcd-member/cp-3")
            && said.contains("  + step fabric/remove/fabric-route/cp-3"),
        "{said}"
    );
}
