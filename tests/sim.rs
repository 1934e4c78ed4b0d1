//! The simulator: bundled scenarios conform, fault scenarios fail with the
//! trace that names the cause, reports are deterministic.

use crate::support::{check, load, root, stem, valid_scenarios};
use kscratch_sim::checks::{Cell, CheckKind};
use kscratch_sim::report::Report;
use kscratch_sim::walk::Leg;
use kscratch_sim::CheckOptions;

fn run(rel: &str, opts: &CheckOptions) -> Report {
    let loaded = load(rel).unwrap_or_else(|d| panic!("{rel} must be valid:\n{d}"));
    let plan = kscratch_core::plan::plan(&loaded.scenario);
    kscratch_sim::check(&loaded.scenario, &plan, opts).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn fault_scenarios() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("scenarios/faults"))
        .expect("scenarios/faults")
        .filter_map(|e| e.ok())
        .map(|e| format!("scenarios/faults/{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_bundled_scenario_conforms_on_the_simulator() {
    for rel in valid_scenarios() {
        let r = run(&rel, &CheckOptions::default());
        assert!(r.passed, "{rel} must pass:\n{r}");
        check(&format!("sim/{}.txt", stem(&rel)), &r.to_string());
    }
}

#[test]
fn reports_are_the_same_bytes_twice() {
    for rel in valid_scenarios().into_iter().chain(fault_scenarios()) {
        let a = run(&rel, &CheckOptions::default());
        let b = run(&rel, &CheckOptions::default());
        assert_eq!(
            a.to_json(),
            b.to_json(),
            "{rel}: JSON report differs between runs"
        );
        assert_eq!(
            a.to_string(),
            b.to_string(),
            "{rel}: text report differs between runs"
        );
    }
}

/// Each bundled fault scenario: the check that must fail and words its trace must show.
const FAULTS: &[(&str, CheckKind, &[&str])] = &[
    (
        "node-down",
        CheckKind::PodToPod,
        &["node-2", "the node is down"],
    ),
    (
        "route-missing",
        CheckKind::PodToPod,
        &["route default via", "the router has no route to 10.10.3."],
    ),
    (
        "ip-forward-off",
        CheckKind::PodToPod,
        &["net.ipv4.ip_forward=0", "node-2"],
    ),
    (
        "masquerade-missing",
        CheckKind::Egress,
        &["instead of the node IP 192.168.1.14", "not masqueraded"],
    ),
    (
        "apiserver-firewalled",
        CheckKind::Apiserver,
        &["-A INPUT -p tcp -m tcp --dport 443 -j DROP"],
    ),
    ("docker0-leftover", CheckKind::PodToPod, &["172.17.0."]),
    (
        "docker-ip-masq",
        CheckKind::PodToPod,
        &["pod traffic was NATed", "-j MASQUERADE"],
    ),
    (
        "overlay-mtu",
        CheckKind::Mtu,
        // The VXLAN device keeps its MTU: the kernel refuses one with no room for the encapsulation.
        &["exceeds the MTU 1450 of vxlan0", "fragmentation needed"],
    ),
    ("nic-down", CheckKind::PodToPod, &["node-2", "no route to"]),
    (
        "forward-drop",
        CheckKind::PodToPod,
        &[
            "node-2",
            "dropped by filter/FORWARD rule 1: -A FORWARD -j DROP",
        ],
    ),
    (
        "kube-proxy-down",
        CheckKind::Services,
        &["node-2", "10.0.0.1"],
    ),
    (
        "fdb-missing",
        CheckKind::PodToPod,
        &["w1", "vxlan0: no FDB entry for 0e:ac:14:00:0d:00"],
    ),
    (
        "neigh-missing",
        CheckKind::PodToPod,
        &["w1", "vxlan0: no neighbour entry for VTEP 10.244.3.0"],
    ),
    (
        "underlay-mtu",
        CheckKind::Mtu,
        &["exceeds the MTU 1400 of eth0 on w2"],
    ),
    // The kernel refuses a VXLAN MTU with no room for the header: the plan's
    // step fails as it would on a real node, and nothing runs after it.
    (
        "vxlan-mtu-too-large",
        CheckKind::PodToPod,
        &[
            "ip link set dev vxlan0 mtu 1500: RTNETLINK answers: Invalid argument",
            "largest MTU over eth0 with MTU 1500 is 1450",
        ],
    ),
];

#[test]
fn every_fault_scenario_fails_with_the_expected_trace() {
    let all = fault_scenarios();
    assert_eq!(
        all.len(),
        FAULTS.len(),
        "every fault scenario has expectations here"
    );
    for (name, kind, words) in FAULTS {
        let rel = format!("scenarios/faults/{name}.yaml");
        let r = run(&rel, &CheckOptions::default());
        assert!(!r.passed, "{rel} must fail");
        let c = r.checks.iter().find(|c| c.kind == *kind).unwrap();
        assert!(!c.passed(), "{rel}: {kind:?} must fail:\n{r}");
        let apply_failures = r.apply.failures.iter().map(|f| f.error.clone());
        let text = apply_failures
            .chain(c.failures.iter().map(|f| {
                format!(
                    "{}\n{}",
                    f.reason,
                    f.trace
                        .iter()
                        .map(|h| format!("{} {}", h.at, h.what))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            }))
            .collect::<Vec<_>>()
            .join("\n");
        for w in *words {
            assert!(
                text.contains(w),
                "{rel}: expected {w:?} in the failure of {kind:?}:\n{text}"
            );
        }
        check(&format!("sim/faults/{name}.txt"), &r.to_string());
    }
}

#[test]
fn pod_traffic_to_outside_is_masqueraded_and_replies_come_back() {
    let r = run("scenarios/guide-routed.yaml", &CheckOptions::default());
    let egress = r
        .checks
        .iter()
        .find(|c| c.kind == CheckKind::Egress)
        .unwrap();
    assert!(egress.passed() && egress.probes == 4, "{r}");
}

#[test]
fn a_missing_route_on_one_node_breaks_that_pair_both_ways() {
    let fault = kscratch_core::scenario::Fault::parse("route-missing:node-1:node-3").unwrap();
    let r = run(
        "scenarios/guide-routed.yaml",
        &CheckOptions {
            faults: vec![fault],
            ..Default::default()
        },
    );
    let p2p = r
        .checks
        .iter()
        .find(|c| c.kind == CheckKind::PodToPod)
        .unwrap();
    // node-1 → node-3 loses its request; node-3 → node-1 gets there, but
    // the reply needs the missing route: a TCP connection fails both ways.
    assert_eq!(p2p.failed, 2, "{r}");
    let cases: Vec<(Option<Leg>, Vec<String>)> = p2p
        .failures
        .iter()
        .map(|f| (f.leg, f.cases.iter().flat_map(|g| g.first(10)).collect()))
        .collect();
    assert_eq!(
        cases,
        vec![
            (Some(Leg::Request), vec!["node-1 → node-3".to_string()]),
            (Some(Leg::Reply), vec!["node-3 → node-1".to_string()]),
        ],
        "{r}"
    );
    // The message names the node's missing route, not the router's.
    assert!(
        p2p.failures[0]
            .reason
            .contains("node-1 has no route to 10.10.3.0/24 (node-3's pod CIDR; the plan installs `10.10.3.0/24 via"),
        "{}",
        p2p.failures[0].reason
    );
    assert_eq!(r.odd_nodes, vec!["node-1".to_string()]);
    let m = r.matrix.as_ref().unwrap();
    assert_eq!(
        (m.cells[1][3], m.cells[3][1], m.cells[1][2], m.cells[1][1]),
        (
            Cell::RequestFails,
            Cell::ReplyFails,
            Cell::Reaches,
            Cell::Reaches
        )
    );
}

#[test]
fn service_vips_reach_every_endpoint_and_empty_services_are_rejected() {
    let r = run("scenarios/guide-routed.yaml", &CheckOptions::default());
    let svc = r
        .checks
        .iter()
        .find(|c| c.kind == CheckKind::Services)
        .unwrap();
    assert!(svc.passed(), "{r}");
    // Services × representative pods: kubernetes, kube-dns (tcp), probe, empty.
    assert!(svc.probes >= 4 * 4, "{r}");
}

#[test]
fn check_exit_codes_are_0_1_2() {
    let exe = env!("CARGO_BIN_EXE_kscratch");
    let code = |args: &[&str]| {
        std::process::Command::new(exe)
            .args(args)
            .current_dir(root())
            .output()
            .expect("run kscratch")
            .status
            .code()
    };
    assert_eq!(
        code(&["check", "scenarios/quickstart.yaml", "--locked"]),
        Some(0)
    );
    assert_eq!(
        code(&["check", "scenarios/faults/route-missing.yaml", "--locked"]),
        Some(1)
    );
    assert_eq!(
        code(&["check", "scenarios/invalid/bad-value.yaml"]),
        Some(2)
    );
    assert_eq!(
        code(&[
            "check",
            "scenarios/quickstart.yaml",
            "--locked",
            "--fault",
            "node-down:nobody"
        ]),
        Some(2)
    );
    assert_eq!(
        code(&[
            "check",
            "scenarios/guide-routed.yaml",
            "--locked",
            "--fault",
            "ip-forward-off:node-1",
            "--format",
            "json"
        ]),
        Some(1)
    );
}

#[test]
fn trace_follows_a_packet_through_a_service_on_every_branch() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kscratch"))
        .args([
            "trace",
            "scenarios/guide-routed.yaml",
            "--locked",
            "--from",
            "node-1/probe-a",
            "--to",
            "svc:kscratch/probe",
        ])
        .current_dir(root())
        .output()
        .expect("run kscratch");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One probe pod per node behind the Service: four endpoints, four paths.
    assert_eq!(text.matches("\npath ").count(), 4, "{text}");
    assert!(text.contains("KUBE-SVC-"), "{text}");
}

fn simulate(rel: &str, faults: &[&str]) -> kscratch_sim::Simulated {
    let loaded = load(rel).unwrap_or_else(|d| panic!("{rel} must be valid:\n{d}"));
    let plan = kscratch_core::plan::plan(&loaded.scenario);
    let opts = CheckOptions {
        faults: faults
            .iter()
            .map(|f| kscratch_core::scenario::Fault::parse(f).unwrap())
            .collect(),
        ..Default::default()
    };
    kscratch_sim::simulate(&loaded.scenario, &plan, &opts).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn a_node_reaches_a_service_on_every_branch_its_own_pod_included() {
    let sim = simulate("scenarios/guide-routed.yaml", &[]);
    let t = kscratch_sim::trace::trace(
        &sim,
        "node-1",
        "svc:kscratch/probe",
        kscratch_sim::packet::Proto::Tcp,
    )
    .unwrap();
    // The kernel picks the source from the route, never 0.0.0.0.
    assert_eq!(t.packet.src.to_string(), "192.168.1.12", "{t}");
    assert_eq!(t.paths.len(), 4, "{t}");
    // Every branch connects, including the one DNATed to node-1's own pod,
    // which the kernel re-routes after OUTPUT onto cbr0.
    assert!(t.connected(), "{t}");
    let servers: Vec<String> = t
        .paths
        .iter()
        .filter_map(|p| p.conn.established().map(|(_, seen)| seen.dst.to_string()))
        .collect();
    assert!(servers.contains(&"10.10.1.2".to_string()), "{t}");
    assert!(t.to_string().contains("re-routed after OUTPUT"), "{t}");
    // Both legs are printed.
    assert!(t.to_string().contains("reply trace:"), "{t}");
}

#[test]
fn a_pod_reaches_its_own_ip() {
    let sim = simulate("scenarios/vxlan-overlay.yaml", &[]);
    let t = kscratch_sim::trace::trace(
        &sim,
        "w1/probe-a",
        "w1/probe-a",
        kscratch_sim::packet::Proto::Tcp,
    )
    .unwrap();
    assert!(t.connected(), "{t}");
    assert!(!t.to_string().contains("ARP"), "{t}");
}

#[test]
fn the_json_report_lists_every_failing_case_with_its_leg() {
    // node-2 off: every pair with node-2 fails, on the request leg.
    let r = run(
        "scenarios/guide-routed.yaml",
        &CheckOptions {
            faults: vec![kscratch_core::scenario::Fault::parse("node-down:node-2").unwrap()],
            ..Default::default()
        },
    );
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    let p2p = &json["checks"][0];
    assert_eq!(p2p["kind"], "pod-to-pod");
    let mut cases = std::collections::BTreeSet::new();
    for f in p2p["failures"].as_array().unwrap() {
        for g in f["cases"].as_array().unwrap() {
            let names = |k: &str| -> Vec<String> {
                g[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            for a in names("from") {
                for b in names("to") {
                    if g["pairing"] == "same-node" || a != b {
                        cases.insert((a.clone(), b));
                    }
                }
            }
        }
    }
    let mut want = std::collections::BTreeSet::new();
    for n in ["master", "node-1", "node-3"] {
        want.insert((n.to_string(), "node-2".to_string()));
        want.insert(("node-2".to_string(), n.to_string()));
    }
    want.insert(("node-2".to_string(), "node-2".to_string()));
    assert_eq!(cases, want, "{r}");
    // Six pairs across nodes, two pods on node-2, and a node-2 pod to its own IP.
    assert_eq!(p2p["failed"].as_u64(), Some(8), "{r}");
}

/// A running kube-proxy keeps the settings it started with; when apply
/// rewrites its config, it restarts it and the plan's setting is live again.
#[test]
fn a_changed_kube_proxy_config_restarts_kube_proxy_and_the_new_setting_is_live() {
    use kscratch_core::exec::{execute, ExecOptions, Quiet};
    use kscratch_sim::backend::SimBackend;
    let s = load("scenarios/guide-routed.yaml").unwrap().scenario;
    let p = kscratch_core::plan::plan(&s);
    let apply = |world| {
        let b = SimBackend::new(world);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(execute(&p, &s, &b, &ExecOptions::sequential(), &mut Quiet));
        (r, b.into_sim().world)
    };
    let (r, mut world) = apply(kscratch_sim::build::world(&s));
    assert_eq!(r.count("failed") + r.count("skipped"), 0);
    let cidr = |w: &kscratch_sim::world::World, n: usize| {
        w.nodes[n]
            .kube_proxy
            .as_ref()
            .unwrap()
            .config
            .cluster_cidr
            .map(|c| c.to_string())
    };
    assert_eq!(cidr(&world, 1).as_deref(), Some("10.10.0.0/16"));
    // An operator edits node-1's kube-proxy config and restarts it by hand.
    let path = "/var/lib/kube-proxy/config.yaml";
    let node = &mut world.nodes[1];
    let text = String::from_utf8(node.fs.files[path].content.to_vec()).unwrap();
    let edited = text.replace("clusterCIDR: 10.10.0.0/16", "clusterCIDR: 10.99.0.0/16");
    let mode = node.fs.files[path].mode;
    kscratch_sim::backend::write_file(node, path, mode, edited.into_bytes().into(), None);
    kscratch_sim::components::start_service(node, kscratch_core::plan::Service::KubeProxy).unwrap();
    assert_eq!(
        cidr(&world, 1).as_deref(),
        Some("10.99.0.0/16"),
        "running with the edit"
    );
    // Re-apply: the config is rewritten, kube-proxy restarts once, only on node-1.
    let (r, world) = apply(world);
    let outcome = |id: &str| {
        let i = p.steps.iter().position(|st| p.step_id(st) == id).unwrap();
        r.outcomes[i].name()
    };
    for (st, o) in p.steps.iter().zip(&r.outcomes) {
        if matches!(o.name(), "failed" | "skipped") {
            eprintln!("{}: {o:?}", p.step_id(st));
        }
    }
    assert_eq!(outcome("node-1/file/kube-proxy-config"), "changed");
    assert_eq!(outcome("node-1/service/kube-proxy"), "changed");
    assert_eq!(outcome("node-2/service/kube-proxy"), "ok");
    assert_eq!(outcome("node-1/service/kubelet"), "ok");
    assert_eq!(
        cidr(&world, 1).as_deref(),
        Some("10.10.0.0/16"),
        "the plan's setting is live"
    );
}

/// A minor upgrade of three control-plane nodes rolls out in the
/// version-skew order (etcd, apiservers, controllers, node agents; one
/// control-plane node at a time), and every check runs while each wave's
/// components are down and after each wave. `https-ha` points every node at
/// one apiserver (`masterIP`, cp-1's address): the rollout proves the
/// cluster whole at every point but one, while cp-1's apiserver restarts,
/// when no node reaches the apiserver. The same report twice, byte for byte.
#[test]
fn an_upgrade_of_three_control_plane_nodes_rolls_out_wave_by_wave_and_a_single_master_ip_is_the_one_gap(
) {
    let roll = || {
        let old = load("scenarios/https-ha.yaml").unwrap().scenario;
        let new = load("scenarios/diff/https-ha-upgrade.yaml")
            .unwrap()
            .scenario;
        let (op, np) = (
            kscratch_core::plan::plan(&old),
            kscratch_core::plan::plan(&new),
        );
        kscratch_sim::rollout::rollout(&old, &op, &new, &np, 1).unwrap()
    };
    let r = roll();
    assert!(r.old_problems.is_empty(), "{:?}", r.old_problems);
    assert!(r.before.passed());
    let names: Vec<&str> = r.waves.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "etcd on cp-1",
            "etcd on cp-2",
            "etcd on cp-3",
            "kube-apiserver on cp-1"
        ]
    );
    assert_eq!(names.len(), 15);
    let mut gaps = Vec::new();
    for w in &r.waves {
        assert!(w.failed.is_none(), "{}: {:?}", w.name, w.failed);
        assert!(!w.changed.is_empty(), "{} restarts something", w.name);
        assert!(
            w.after.passed(),
            "{} after: {:?}",
            w.name,
            w.after.reasons()
        );
        if !w.during.passed() {
            gaps.push((w.name.clone(), w.during.reasons()));
        }
    }
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0].0, "kube-apiserver on cp-1");
    assert_eq!(gaps[0].1.len(), 1, "{gaps:?}");
    assert!(
        gaps[0].1[0].contains("10.1.0.11:443 does not answer"),
        "{gaps:?}"
    );
    assert!(!r.passed());
    check("sim/rollout-https-ha-upgrade.txt", &r.to_string());
    let again = roll();
    assert_eq!(r.to_string(), again.to_string());
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        serde_json::to_string(&again).unwrap()
    );
}

/// The same upgrade behind every node's local apiserver proxy
/// (`controlPlaneEndpoint: 127.0.0.1:6443`, health-checking all three
/// apiservers): every check passes while each wave's components are down
/// and after each wave, the apiserver from every node included.
#[test]
fn an_upgrade_of_three_control_plane_nodes_behind_a_local_proxy_passes_every_check_at_every_wave() {
    let old = load("scenarios/ha-local-proxy.yaml").unwrap().scenario;
    let new = load("scenarios/diff/ha-local-proxy-upgrade.yaml")
        .unwrap()
        .scenario;
    assert_ne!(old.version, new.version);
    let (op, np) = (
        kscratch_core::plan::plan(&old),
        kscratch_core::plan::plan(&new),
    );
    let r = kscratch_sim::rollout::rollout(&old, &op, &new, &np, 1).unwrap();
    assert!(r.old_problems.is_empty(), "{:?}", r.old_problems);
    assert_eq!(r.waves.len(), 15);
    for w in &r.waves {
        assert!(!w.changed.is_empty(), "{} restarts something", w.name);
        // Every node asked the apiserver, every time.
        let api = w
            .during
            .results
            .iter()
            .find(|c| c.kind == CheckKind::Apiserver)
            .expect("the apiserver check ran");
        assert!(api.probes >= 6, "{}: {} probes", w.name, api.probes);
    }
    assert!(r.passed(), "{r}");
    check("sim/rollout-ha-local-proxy-upgrade.txt", &r.to_string());
}
