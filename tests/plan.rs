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
    let in_process = plan::to_json(&plan::plan(
        &load("scenarios/guide-routed.yaml").unwrap().scenario,
    ));
    assert_eq!(run(), in_process.as_bytes());
    assert_eq!(run(), run());
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
