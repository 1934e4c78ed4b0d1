//! Random and mutated scenarios: validation never panics, and whatever
//! validates also plans.

use proptest::prelude::*;

const BASE: &str = include_str!("../scenarios/guide-routed.yaml");

/// Values that stress parsers: wrong types, edge numbers, bad addresses.
fn odd_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("~".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("\"\"".to_string()),
        Just("10.10.0.0/33".to_string()),
        Just("10.10.0.0/0".to_string()),
        Just("255.255.255.255/32".to_string()),
        Just("::1".to_string()),
        Just("fd00::/8".to_string()),
        Just("1.6".to_string()),
        Just("v1.99.0".to_string()),
        "[a-z0-9./:-]{0,20}",
        any::<u32>().prop_map(|n| n.to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = kscratch_core::load("fuzz.yaml", &text, None);
    }

    #[test]
    fn mutated_scenarios_never_panic_and_valid_ones_plan(line in 0usize..40, value in odd_value()) {
        // Replace the value of one `key: value` line of a real scenario.
        let mut lines: Vec<String> = BASE.lines().map(String::from).collect();
        let candidates: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.contains(": ") && !l.trim_start().starts_with('#')).map(|(i, _)| i).collect();
        let i = candidates[line % candidates.len()];
        let cut = lines[i].find(": ").unwrap();
        lines[i] = format!("{}: {}", &lines[i][..cut], value);
        let text = lines.join("\n");
        if let Ok(loaded) = kscratch_core::load("mutant.yaml", &text, None) {
            let p = kscratch_core::plan::plan(&loaded.scenario);
            prop_assert!(!p.steps.is_empty());
        }
    }

    #[test]
    fn generated_clusters_validate_and_plan(nodes in 1usize..40, prefix in 22u8..28, cluster_bits in 12u8..17) {
        let mut y = format!("cluster:\n  name: gen\n  kubernetesVersion: \"1.30.0\"\nnetwork:\n  clusterCIDR: 10.0.0.0/{cluster_bits}\n  nodePrefix: {prefix}\n  maxPods: 20\n  serviceCIDR: 172.16.0.0/16\nnodes:\n");
        for i in 0..nodes {
            let role = if i == 0 { "[control-plane, etcd, worker]" } else { "[worker]" };
            y.push_str(&format!("  - name: n{i}\n    ip: 192.168.{}.{}\n    roles: {role}\n", i / 200, i % 200 + 1));
        }
        match kscratch_core::load("gen.yaml", &y, None) {
            Ok(l) => {
                let p = kscratch_core::plan::plan(&l.scenario);
                prop_assert_eq!(p.nodes.len(), nodes);
            }
            Err(d) => {
                // The only legitimate failure: too many nodes for the slices.
                let slots = 1usize << (prefix - cluster_bits);
                prop_assert!(slots < nodes, "unexpected errors:\n{}", d);
            }
        }
    }
}
