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
        "control-plane-endpoint",
        &["cluster.controlPlaneEndpoint: 10.33.0.1 is a Service address"],
    ),
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
        "every-kind",
        &[
            "error[KS2002]: scenarios/invalid/every-kind.yaml:3:9: cluster.name: `every_kind` is not a DNS-1123 label",
            "error[KS1106]: scenarios/invalid/every-kind.yaml:4:22: cluster.kubernetesVersion: the version 1.30 was read as a number (1.3): quote it, \"1.30\"",
            "note[KS2901]: scenarios/invalid/every-kind.yaml:4:22: cluster.kubernetesVersion: options tied to a Kubernetes release not checked: cluster.kubernetesVersion is invalid",
            "error[KS1101]: scenarios/invalid/every-kind.yaml:5:3: cluster.extra: unknown key `extra`",
            "error[KS1103]: scenarios/invalid/every-kind.yaml:9:34: nodes[0].roles[2]: `workr` is not a known value\n  hint: did you mean `worker`?",
            "error[KS1105]: scenarios/invalid/every-kind.yaml:11:13: nodes[0].ssh.port: port must be a whole number from 1 to 65535",
            "error[KS1104]: scenarios/invalid/every-kind.yaml:12:9: nodes[1]: `nodes[1]` needs the key `ip`, which is missing",
            "error[KS1007]: scenarios/invalid/every-kind.yaml:15:5: nodes[2].ip: `ip` is given twice in this mapping (first on line 14)",
            "error[KS2004]: scenarios/invalid/every-kind.yaml:17:9: nodes[3].ip: `192.168.9.300` is not an IP address",
            "error[KS2005]: scenarios/invalid/every-kind.yaml:19:16: network.clusterCIDR: 10.10.0.1/16 has host bits set",
            "note[KS2901]: scenarios/invalid/every-kind.yaml:19:16: network.clusterCIDR: capacity not checked: network.clusterCIDR is invalid",
            "error[KS1102]: scenarios/invalid/every-kind.yaml:21:12: network.maxPods: maxPods must be a whole number from 1 to 65535, not the text `lots`",
            "error[KS1102]: scenarios/invalid/every-kind.yaml:22:15: network.masquerade: masquerade must be true or false, not the text `yes`",
            "error[KS2002]: scenarios/invalid/every-kind.yaml:24:13: network.dns.domain: `Cluster.Local` is not a DNS domain",
            "error[KS2015]: scenarios/invalid/every-kind.yaml:27:11: runtime.ipMasq: this is a docker option, but runtime.kind is containerd",
            "warning[KS2016]: scenarios/invalid/every-kind.yaml:29:12: etcd.members: 2 etcd members: an even count",
            "error[KS2016]: scenarios/invalid/every-kind.yaml:29:16: etcd.members[1]: etcd member `z` is not a node of this scenario",
            "14 errors; 2 checks skipped until the fields they need are valid",
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

/// The one-of-everything scenario: every kind of problem the schema and the
/// semantic checks know, each reported with its own code, in one run.
#[test]
fn every_kind_of_problem_is_reported_at_once() {
    use kscratch_core::diag::{Code, Severity};
    let diags = load("scenarios/invalid/every-kind.yaml").expect_err("invalid");
    let codes: Vec<Code> = diags.0.iter().map(|d| d.code).collect();
    for want in [
        Code::UnknownKey,
        Code::WrongType,
        Code::UnknownValue,
        Code::MissingKey,
        Code::OutOfRange,
        Code::VersionAsNumber,
        Code::DuplicateKey,
        Code::Name,
        Code::Address,
        Code::HostBits,
        Code::Conflict,
        Code::Etcd,
        Code::NotChecked,
    ] {
        assert!(codes.contains(&want), "{want:?} missing from:\n{diags}");
    }
    for d in &diags.0 {
        assert!(!d.hint.is_empty(), "no hint: {d}");
        assert!(d.line.is_some(), "no position: {d}");
        for rust in [
            "u32",
            "u16",
            "u8",
            "u64",
            "i64",
            "f64",
            "floating point",
            "invalid type",
        ] {
            assert!(
                !d.message.contains(rust) && !d.hint.contains(rust),
                "Rust words in: {d}"
            );
        }
    }
    assert_eq!(
        diags
            .0
            .iter()
            .filter(|d| d.severity == Severity::Note)
            .count(),
        2
    );
}

fn problems(text: &str) -> String {
    match kscratch_core::load("t.yaml", text, None) {
        Ok(_) => panic!("must be invalid:\n{text}"),
        Err(d) => d.to_string(),
    }
}

const SMALL: &str = "cluster:\n  name: t\n  kubernetesVersion: \"1.30.0\"\nnodes:\n  - name: a\n    ip: 192.168.1.1\n";

#[test]
fn a_tab_in_the_indentation_is_named_as_such() {
    let text = SMALL.replace("  - name: a\n    ip", "  - name: a\n\tip");
    let out = problems(&text);
    assert!(
        out.contains("t.yaml:6:1: YAML does not allow tabs for indentation: use spaces"),
        "{out}"
    );
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let text = format!("\u{feff}{SMALL}");
    kscratch_core::load("t.yaml", &text, None).expect("a BOM before the first key is fine");
}

#[test]
fn numbers_and_booleans_are_explained_in_the_users_words() {
    let out = problems(&SMALL.replace("\"1.30.0\"", "1.30"));
    assert!(
        out.contains("cluster.kubernetesVersion: the version 1.30 was read as a number (1.3): quote it, \"1.30\""),
        "{out}"
    );
    let out = problems(&format!("{SMALL}network:\n  maxPods: -1\n"));
    assert!(
        out.contains("maxPods must be a whole number from 1 to 65535"),
        "{out}"
    );
    let out = problems(&format!("{SMALL}network:\n  maxPods: \"110\"\n"));
    assert!(
        out.contains("hint: remove the quotes: maxPods: 110"),
        "{out}"
    );
}

/// A wrong value in one field never hides a problem in another.
#[test]
fn one_broken_field_hides_nothing_else() {
    let text = format!(
        "{SMALL}  - name: b\n    ip: 192.168.1.1\nnetwork:\n  podTraffic: vxlam\n  clusterCIDR: 10.10.0.1/16\n  bogus: 1\n  serviceCIDR: 10.0.0.0/16\n  dns:\n    ip: 10.1.0.10\n"
    );
    let out = problems(&text);
    for want in [
        "duplicate node IP 192.168.1.1",
        "`vxlam` is not a known value",
        "10.10.0.1/16 has host bits set",
        "capacity not checked: network.clusterCIDR is invalid",
        "unknown key `bogus`",
        "DNS IP 10.1.0.10 is outside the service CIDR 10.0.0.0/16",
    ] {
        assert!(out.contains(want), "expected {want:?} in:\n{out}");
    }
}

/// An error about a defaulted value points at the field that made it matter.
#[test]
fn errors_about_defaults_point_at_their_cause() {
    let mut text = String::from("cluster:\n  name: big\n  kubernetesVersion: \"1.30.0\"\nnodes:\n");
    for i in 0..300 {
        text.push_str(&format!(
            "  - name: n{i}\n    ip: 192.168.{}.{}\n",
            i / 200,
            i % 200 + 1
        ));
    }
    text = text.replacen(
        "    ip: 192.168.0.1\n",
        "    ip: 192.168.0.1\n    roles: [control-plane, etcd, worker]\n",
        1,
    );
    let out = problems(&text);
    assert!(
        out.contains("t.yaml:5:3: nodes: 10.10.0.0/16 (the default) holds 256 node slices of /24, but the scenario has 300 nodes"),
        "{out}"
    );
    let out = problems(&SMALL.replace("192.168.1.1", "10.10.3.4"));
    assert!(
        out.contains("nodes[0].ip: node IP 10.10.3.4 is inside network.clusterCIDR 10.10.0.0/16 (the default)"),
        "{out}"
    );
}

/// Hostile files stop at a limit, checked before or while parsing, with a
/// clear error (the time this takes is measured by `benches/plan.rs`,
/// `load/hostile`).
#[test]
fn hostile_input_is_rejected_at_a_limit() {
    let nested = "[".repeat(200_000);
    assert_eq!(nested.len(), 200_000);
    let out = problems(&nested);
    assert!(
        out.contains("error[KS1004]: t.yaml:1:33: the document nests more than 32 levels deep"),
        "{out}"
    );
    let block = format!("{}x\n", "- ".repeat(100_000));
    assert!(problems(&block).contains("KS1004"));
    let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..10 {
        let p = if i == 0 {
            "a".to_string()
        } else {
            format!("l{}", i - 1)
        };
        laughs.push_str(&format!(
            "l{i}: &l{i} [{}]\n",
            vec![format!("*{p}"); 10].join(", ")
        ));
    }
    assert!(problems(&laughs).contains("error[KS1005]"), "{laughs}");
    let huge = format!("{SMALL}# {}\n", "x".repeat(17 << 20));
    assert!(problems(&huge).contains("error[KS1003]"));
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
