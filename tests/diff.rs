//! `kscratch diff`: golden outputs for bundled scenario pairs, exit codes,
//! the applied-record form, and no side effects.

use crate::support::{check, load, root};
use kscratch_core::diff::{diff, Snapshot};
use kscratch_core::plan;
use std::path::Path;
use std::process::{Command, Output};

fn kscratch(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kscratch"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run kscratch")
}

/// The pairs in scenarios/diff/, each against guide-routed, with the exit code diff(1)-style.
const PAIRS: [(&str, i32); 6] = [
    ("max-pods", 1),
    ("node-added", 1),
    ("node-removed", 1),
    ("upgrade", 1),
    ("upgrade-skips-a-minor", 2),
    ("pod-cidr-move", 2),
];

#[test]
fn bundled_pairs_diff_to_their_golden_files_with_diff1_exit_codes() {
    for (name, code) in PAIRS {
        let new = format!("scenarios/diff/{name}.yaml");
        let out = kscratch(&["diff", "scenarios/guide-routed.yaml", &new], &root());
        assert_eq!(
            out.status.code(),
            Some(code),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        check(&format!("diff/{name}.txt"), &text);
        // Twice, the same bytes.
        let again = kscratch(&["diff", "scenarios/guide-routed.yaml", &new], &root());
        assert_eq!(
            again.stdout,
            text.as_bytes(),
            "{name}: diff is not deterministic"
        );
    }
}

#[test]
fn what_each_pair_reports() {
    let snap = |rel: &str| {
        let s = load(rel).unwrap().scenario;
        Snapshot::of(&s, &plan::plan(&s))
    };
    let base = snap("scenarios/guide-routed.yaml");
    // The record's fingerprint is the plan's, computed from the same digests.
    let g = load("scenarios/guide-routed.yaml").unwrap().scenario;
    assert_eq!(base.fingerprint, plan::fingerprint(&g, &plan::plan(&g)));
    assert!(
        !diff(&base, &base).changed,
        "a plan against itself changes nothing"
    );
    // maxPods: only the kubelet config moves, on every node, and the kubelet reads it.
    let d = diff(&base, &snap("scenarios/diff/max-pods.yaml"));
    assert_eq!(d.targets.len(), 4);
    for t in &d.targets {
        assert!(
            t.steps_added.is_empty() && t.steps_removed.is_empty(),
            "{t:?}"
        );
        assert_eq!(t.files.len(), 1, "{t:?}");
        assert_eq!(t.files[0].path, "/var/lib/kubelet/config.yaml");
        assert!(t.files[0]
            .diff
            .as_deref()
            .unwrap()
            .contains("-maxPods: 110\n+maxPods: 64"));
        assert_eq!(t.restarts.len(), 1);
        assert_eq!(t.restarts[0].service, "kubelet");
        assert!(
            t.restarts[0].automatic,
            "apply restarts a service whose config changed"
        );
    }
    // A node added: its steps, a pod network entry, no refusal.
    let d = diff(&base, &snap("scenarios/diff/node-added.yaml"));
    assert!(!d.refused);
    assert_eq!(d.pod_routes, ["+node-4 10.10.4.0/24"]);
    assert!(d
        .targets
        .iter()
        .any(|t| t.target == "node-4" && !t.steps_added.is_empty()));
    // A minor upgrade is disruptive; skipping one is refused; a CIDR move is refused.
    let d = diff(&base, &snap("scenarios/diff/upgrade.yaml"));
    assert!(
        !d.refused
            && d.findings
                .iter()
                .any(|f| f.what.contains("1.29.4 → 1.30.6"))
    );
    assert!(diff(&base, &snap("scenarios/diff/upgrade-skips-a-minor.yaml")).refused);
    assert!(diff(&base, &snap("scenarios/diff/pod-cidr-move.yaml")).refused);
    // Secrets are named, never shown: a SAN change on https-ha.
    let ha = snap("scenarios/https-ha.yaml");
    let text = std::fs::read_to_string(root().join("scenarios/https-ha.yaml")).unwrap();
    let edited = text.replace("10.1.0.100]", "10.1.0.101]");
    let s = kscratch_core::load(
        "https-ha.yaml",
        &edited,
        Some(
            &kscratch_core::ipam::IpamLock::parse(
                &std::fs::read_to_string(root().join("scenarios/https-ha.ipam.lock")).unwrap(),
            )
            .unwrap(),
        ),
    )
    .unwrap()
    .scenario;
    let d = diff(&ha, &Snapshot::of(&s, &plan::plan(&s)));
    let cert = d
        .targets
        .iter()
        .flat_map(|t| &t.files)
        .find(|f| f.path == "/srv/kubernetes/apiserver.crt")
        .expect("the apiserver certificate changes with its SANs");
    assert!(cert.secret && cert.diff.is_none());
    // The apiserver reads its certificate: it is a static pod, whose manifest did not change.
    let r = d
        .targets
        .iter()
        .flat_map(|t| &t.restarts)
        .find(|r| r.service == "kube-apiserver")
        .expect("kube-apiserver reads apiserver.crt");
    assert!(!r.automatic);
}

#[test]
fn diff_against_the_applied_record_and_a_damaged_record_is_an_error() {
    let dir = std::env::temp_dir().join(format!("kscratch-diff-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        root().join("scenarios/guide-routed.yaml"),
        dir.join("s.yaml"),
    )
    .unwrap();
    std::fs::copy(
        root().join("scenarios/guide-routed.ipam.lock"),
        dir.join("s.ipam.lock"),
    )
    .unwrap();
    // No record yet: exit 2 with the way forward.
    let out = kscratch(&["diff", "s.yaml"], &dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no applied plan recorded at") && err.contains("kscratch apply"),
        "{err}"
    );
    // The record apply writes (the same Snapshot), then no change: exit 0.
    let s = load("scenarios/guide-routed.yaml").unwrap().scenario;
    let record = dir.join(".kscratch/guide/applied.json");
    std::fs::create_dir_all(record.parent().unwrap()).unwrap();
    std::fs::write(
        &record,
        serde_json::to_string(&Snapshot::of(&s, &plan::plan(&s))).unwrap(),
    )
    .unwrap();
    let before = walk(&dir);
    let out = kscratch(&["diff", "s.yaml", "--format", "json"], &dir);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["schemaVersion"], 1);
    assert_eq!(doc["kind"], "diff");
    assert_eq!(doc["changed"], false);
    // A changed scenario: exit 1, the kubelet config named.
    let text = std::fs::read_to_string(dir.join("s.yaml")).unwrap();
    std::fs::write(
        dir.join("s.yaml"),
        text.replace("  nodePrefix: 24\n", "  nodePrefix: 24\n  maxPods: 64\n"),
    )
    .unwrap();
    let out = kscratch(&["diff", "s.yaml"], &dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/var/lib/kubelet/config.yaml changed"));
    // diff writes nothing (the lock, the record and the scenario dir are as before, but the edit).
    let mut after = walk(&dir);
    after.remove("s.yaml");
    let mut before = before;
    before.remove("s.yaml");
    assert_eq!(after, before, "kscratch diff wrote a file");
    // A damaged record: exit 2, with its position.
    std::fs::write(&record, "{\"cluster\": 3").unwrap();
    let out = kscratch(&["diff", "s.yaml"], &dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("applied.json:1:") && err.contains("the applied record is damaged"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file under `dir` (relative path → bytes).
fn walk(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// `check NEW --from OLD`: each bundled pair rolled out over guide-routed on
/// the simulator. A kubelet setting restarts only node agents and the
/// cluster stays whole; an upgrade of its one control-plane node takes the
/// apiserver away while it restarts (exit 1, said per wave); what apply
/// refuses, and a changed node set, are refused here too (exit 2). Nothing
/// is written.
#[test]
fn check_from_rolls_each_pair_out_on_the_simulator() {
    let dir = crate::support::tempdir("rollout");
    for f in ["guide-routed.yaml", "guide-routed.ipam.lock"] {
        std::fs::copy(root().join("scenarios").join(f), dir.join(f)).unwrap();
    }
    for (name, code, says) in [
        (
            "max-pods",
            0,
            "verdict: the cluster stays whole at every wave",
        ),
        (
            "upgrade",
            1,
            "the apiserver at 192.168.1.11:443 does not answer",
        ),
        ("upgrade-skips-a-minor", 2, "skips 1 minor version"),
        ("pod-cidr-move", 2, "a node's pod range cannot move"),
        ("node-added", 2, "adding nodes is not a rollout"),
        (
            "node-removed",
            0,
            "verdict: the nodes are removed without a trace, and the cluster is whole",
        ),
    ] {
        let new = root().join(format!("scenarios/diff/{name}.yaml"));
        std::fs::copy(&new, dir.join(format!("{name}.yaml"))).unwrap();
        let out = kscratch(
            &[
                "check",
                &format!("{name}.yaml"),
                "--from",
                "guide-routed.yaml",
            ],
            &dir,
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(code), "{name}: {text}");
        assert!(text.contains(says), "{name}: {text}");
    }
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "guide-routed.ipam.lock",
            "guide-routed.yaml",
            "max-pods.yaml",
            "node-added.yaml",
            "node-removed.yaml",
            "pod-cidr-move.yaml",
            "upgrade-skips-a-minor.yaml",
            "upgrade.yaml"
        ],
        "check --from writes nothing"
    );
}
