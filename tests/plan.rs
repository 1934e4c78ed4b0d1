//! The planner on the bundled scenarios: golden plans, determinism, structure.

use crate::support::{check, load, stem, valid_scenarios};
use kscratch_core::plan::{self, Action, Phase, Target};

#[test]
fn bundled_scenarios_plan_to_their_golden_files() {
    for rel in valid_scenarios() {
        let loaded = load(&rel).unwrap_or_else(|d| panic!("{rel} must be valid:\n{d}"));
        let p = plan::plan(&loaded.scenario);
        check(&format!("plan/{}.json", stem(&rel)), &plan::to_json(&p));
        check(
            &format!("plan/{}.txt", stem(&rel)),
            &plan::Summary {
                scenario: &loaded.scenario,
                plan: &p,
            }
            .to_string(),
        );
    }
}

#[test]
fn the_same_scenario_gives_the_same_plan_bytes_twice() {
    for rel in valid_scenarios() {
        let a = plan::to_json(&plan::plan(&load(&rel).unwrap().scenario));
        let b = plan::to_json(&plan::plan(&load(&rel).unwrap().scenario));
        assert_eq!(a, b, "{rel}: plan output differs between two runs");
    }
}

#[test]
fn the_plan_is_the_same_bytes_in_another_process() {
    // A second process catches anything seeded per process (hash maps, addresses).
    let exe = env!("CARGO_BIN_EXE_kscratch");
    let run = || {
        let out = std::process::Command::new(exe)
            .args([
                "plan",
                "scenarios/guide-routed.yaml",
                "--format",
                "json",
                "--locked",
            ])
            .current_dir(crate::support::root())
            .output()
            .expect("run kscratch");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let s = load("scenarios/guide-routed.yaml").unwrap().scenario;
    let p = plan::plan(&s);
    let a = run();
    let doc: serde_json::Value = serde_json::from_slice(&a).expect("plan --format json is JSON");
    assert_eq!(doc["schemaVersion"], 1);
    assert_eq!(doc["kind"], "plan");
    assert_eq!(doc["fingerprint"], plan::fingerprint(&s, &p).as_str());
    assert_eq!(
        doc["steps"],
        serde_json::from_str::<serde_json::Value>(&plan::to_json(&p)).unwrap()["steps"]
    );
    assert_eq!(
        doc["files"].as_array().map(Vec::len),
        Some(plan::file_digests(&s, &p).len())
    );
    assert_eq!(a, run());
}

/// The scenario `rel` with `from` replaced by `to` (exactly once), loaded.
fn edited(rel: &str, from: &str, to: &str) -> kscratch_core::scenario::Scenario {
    let path = crate::support::root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "{rel}: `{from}` must occur once"
    );
    let text = text.replace(from, to);
    let lock = std::fs::read_to_string(path.with_extension("ipam.lock"))
        .ok()
        .map(|t| kscratch_core::ipam::IpamLock::parse(&t).unwrap());
    kscratch_core::load(rel, &text, lock.as_ref())
        .unwrap_or_else(|d| panic!("{rel} with `{to}`:\n{d}"))
        .scenario
}

#[test]
fn the_fingerprint_moves_exactly_when_some_files_content_moves() {
    use std::collections::BTreeMap;
    let rel = "scenarios/https-ha.yaml";
    let base = load(rel).unwrap().scenario;
    let digests = |s: &kscratch_core::scenario::Scenario| {
        let p = plan::plan(s);
        let files: BTreeMap<(String, String), String> = plan::file_digests(s, &p)
            .into_iter()
            .map(|f| ((f.target, f.path), f.sha256))
            .collect();
        (plan::fingerprint(s, &p), plan::to_json(&p), files)
    };
    let (fp0, graph0, files0) = digests(&base);
    // Each edit leaves the step graph alone and changes what some file says.
    for (from, to, moved) in [
        // A SAN: the apiserver certificate's spec (a secret: by spec, not key).
        (
            "extraSANs: [api.ha.example.internal, 10.1.0.100]",
            "extraSANs: [api.ha.example.internal, 10.1.0.101]",
            "/srv/kubernetes/apiserver.crt",
        ),
        // A kubelet setting.
        (
            "maxPods: 110",
            "maxPods: 100",
            "/var/lib/kubelet/config.yaml",
        ),
        // A flag of a static pod, from a field the step graph does not name.
        (
            "etcd:\n",
            "admissionPlugins: [NodeRestriction, AlwaysPullImages]\netcd:\n",
            "/etc/kubernetes/manifests/kube-apiserver.yaml",
        ),
        // A security setting only the apiserver's flags carry.
        (
            "extraSANs:",
            "allowPrivileged: false\n  extraSANs:",
            "/etc/kubernetes/manifests/kube-apiserver.yaml",
        ),
    ] {
        let s = edited(rel, from, to);
        let (fp, graph, files) = digests(&s);
        assert!(graph == graph0, "`{to}` should not change the step graph");
        let changed: Vec<&(String, String)> = files
            .iter()
            .filter(|(k, v)| files0.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            changed.iter().any(|(_, path)| path == moved),
            "`{to}` should change {moved}; changed: {changed:?}"
        );
        assert_ne!(
            fp, fp0,
            "`{to}` changed {changed:?} but not the fingerprint"
        );
    }
    // An edit that changes no file (a comment) leaves the fingerprint alone.
    let s = edited(rel, "# Highly available", "# Very highly available");
    assert_eq!(digests(&s).0, fp0);
    // And planning twice gives the same fingerprint (no key material, no clock).
    assert_eq!(digests(&base).0, fp0);
}

#[test]
fn every_dependency_comes_before_its_step_and_ids_are_unique() {
    for rel in valid_scenarios() {
        let p = plan::plan(&load(&rel).unwrap().scenario);
        let mut ids = std::collections::BTreeSet::new();
        for (i, s) in p.steps.iter().enumerate() {
            assert!(
                ids.insert(p.step_id(s)),
                "{rel}: duplicate step id {}",
                p.step_id(s)
            );
            for d in p.deps(s) {
                assert!(
                    (*d as usize) < i,
                    "{rel}: {} depends on a later step",
                    p.step_id(s)
                );
            }
        }
    }
}

#[test]
fn routed_plan_shares_one_route_table_across_nodes() {
    let loaded = load("scenarios/guide-routed.yaml").unwrap();
    let p = plan::plan(&loaded.scenario);
    assert_eq!(p.pod_network().len(), 4);
    let route_steps: Vec<_> = p
        .steps
        .iter()
        .filter(|s| matches!(s.action, Action::InstallPodRoutes { .. }))
        .collect();
    assert_eq!(
        route_steps.len(),
        4,
        "one route step per node, each referencing the shared table"
    );
    assert!(route_steps
        .iter()
        .all(|s| matches!(s.target, Target::Node(_))));
}

#[test]
fn seed_era_plan_follows_the_guide_for_docker() {
    let p = plan::plan(&load("scenarios/seed-era.yaml").unwrap().scenario);
    let ids: Vec<String> = p.steps.iter().map(|s| p.step_id(s)).collect();
    for want in [
        "kube-node-1/net/remove-docker0",
        "kube-node-1/file/docker-defaults",
        "kube-master/image/hyperkube",
        "kube-master/wait/kube-apiserver",
    ] {
        assert!(ids.iter().any(|i| i == want), "missing step {want}");
    }
    // http-firewall: no certificates, only the service-account key pair that
    // the ServiceAccount admission plugin's tokens need.
    let pki: Vec<&str> = p
        .steps
        .iter()
        .filter(|s| s.phase == Phase::Pki)
        .map(|s| s.key)
        .collect();
    assert_eq!(pki, ["pki/service-account-key"]);
}

#[test]
fn plan_output_contains_no_secrets_by_construction() {
    // The plan names assets; it never carries their bytes.
    for rel in valid_scenarios() {
        let json = plan::to_json(&plan::plan(&load(&rel).unwrap().scenario));
        for marker in ["PRIVATE KEY", "BEGIN CERTIFICATE", "token,"] {
            assert!(!json.contains(marker), "{rel}: plan contains {marker}");
        }
    }
}
