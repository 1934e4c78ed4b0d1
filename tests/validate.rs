//! Validation of the deliberately broken scenarios: every problem, precisely.

use crate::support::{check, invalid_scenarios, load, stem};

#[test]
fn invalid_scenarios_report_every_problem_with_its_position() {
    for rel in invalid_scenarios() {
        let diags = match load(&rel) {
            Ok(_) => panic!("{rel} must be invalid"),
            Err(d) => d,
        };
        for d in diags.errors() {
            assert!(
                d.line.is_some() && d.column.is_some(),
                "{rel}: no position for {d}"
            );
        }
        check(&format!("invalid/{}.txt", stem(&rel)), &diags.to_string());
    }
}

/// Each broken scenario must fail with these messages (a substring each) among others.
const EXPECTED: &[(&str, &[&str])] = &[
    (
        "overlapping-ranges",
        &[
            "network.serviceCIDR: 10.10.0.0/16 overlaps network.clusterCIDR 10.10.0.0/23",
            "network.nodeCIDR: 10.10.200.0/24 overlaps network.serviceCIDR",
            "holds 2 node slices of /24, but the scenario has 3 nodes",
        ],
    ),
    (
        "bad-addresses",
        &[
            "cluster.name: `Bad_Name` is not a DNS-1123 label",
            "duplicate node name `n1`",
            "duplicate node IP 192.168.1.1",
            "`192.168.1.300` is not an IP address",
            "10.10.0.1/16 has host bits set\n  hint: did you mean 10.10.0.0/16?",
            "belongs to the `kubernetes` Service",
            "cluster.masterIP: 192.168.1.99 is not the IP of a control-plane node",
        ],
    ),
    (
        "removed-options",
        &[
            "--basic-auth-file was removed in Kubernetes 1.19",
            "insecure serving was disabled in Kubernetes 1.20",
            "dockershim was removed from the kubelet in Kubernetes 1.24",
            "hyperkube images were last published for Kubernetes 1.18",
            "`aws` cloud provider was removed in Kubernetes 1.27",
        ],
    ),
    (
        "etcd-members",
        &[
            "4 etcd members: an even count",
            "etcd member `e4` is not a node",
            "a /26 slice holds 61 pods",
        ],
    ),
    (
        "unknown-keys",
        &[
            "nodes[0].ipp: unknown key `ipp`\n  hint: did you mean `ip`?",
            "network.clusterCidr: unknown key `clusterCidr`\n  hint: did you mean `clusterCIDR`?",
            "security.modle: unknown key `modle`\n  hint: did you mean `model`?",
        ],
    ),
    (
        "pinned-cidrs",
        &[
            "10.99.0.0/24 is outside the cluster CIDR",
            "is already held by `b`",
            "10.10.6.0/25 is not a /24",
        ],
    ),
    (
        "bad-value",
        &["network.podTraffic: `vxlam` is not a known value\n  hint: did you mean `vxlan`?"],
    ),
];

#[test]
fn invalid_scenarios_fail_with_the_expected_messages() {
    let all = invalid_scenarios();
    for (name, wants) in EXPECTED {
        let rel = format!("scenarios/invalid/{name}.yaml");
        assert!(all.contains(&rel), "{rel} is missing");
        let text = load(&rel)
            .err()
            .unwrap_or_else(|| panic!("{rel} must be invalid"))
            .to_string();
        for w in *wants {
            assert!(text.contains(w), "{rel}: expected {w:?} in:\n{text}");
        }
    }
    assert_eq!(
        all.len(),
        EXPECTED.len(),
        "every invalid scenario has expectations here"
    );
}

#[test]
fn invalid_input_exits_with_code_2_and_names_the_file() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kscratch"))
        .args(["validate", "scenarios/invalid/bad-addresses.yaml"])
        .current_dir(crate::support::root())
        .output()
        .expect("run kscratch");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("scenarios/invalid/bad-addresses.yaml:4:9: cluster.name"),
        "{err}"
    );
}

#[test]
fn empty_and_non_yaml_input_are_errors_not_panics() {
    for text in [
        "",
        "nodes: [",
        "- a\n- b",
        "cluster: 3",
        "cluster:\n  name: x\n",
        "\u{0}",
    ] {
        let r = kscratch_core::load("t.yaml", text, None);
        assert!(r.is_err(), "{text:?} must be rejected");
    }
}
