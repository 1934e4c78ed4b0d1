//! Faults: one grammar, each fault a damage plan of typed actions, refused
//! with a hint where it does not apply, and the simulator's state after the
//! damage is what a real node would show.

use crate::support::{load, root};
use kscratch_core::plan::{damage, Action, Phase, Target};
use kscratch_core::scenario::fault::FAULT_KINDS;
use kscratch_core::scenario::{Fault, Scenario};
use kscratch_sim::world::LinkKind;
use kscratch_sim::CheckOptions;

fn scenario(rel: &str) -> Scenario {
    load(rel)
        .unwrap_or_else(|d| panic!("{rel} must be valid:\n{d}"))
        .scenario
}

fn simulate(rel: &str, faults: &[&str]) -> kscratch_sim::Simulated {
    let s = scenario(rel);
    let plan = kscratch_core::plan::plan(&s);
    let faults = faults.iter().map(|f| Fault::parse(f).unwrap()).collect();
    kscratch_sim::simulate(
        &s,
        &plan,
        &CheckOptions {
            faults,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// One applicable example of every fault kind, with the scenario it applies to.
const EXAMPLES: &[(&str, &str)] = &[
    ("scenarios/guide-routed.yaml", "node-down:node-2"),
    ("scenarios/guide-routed.yaml", "nic-down:node-2"),
    ("scenarios/guide-routed.yaml", "route-missing:node-1:node-3"),
    ("scenarios/guide-routed.yaml", "ip-forward-off:node-2"),
    ("scenarios/guide-routed.yaml", "forward-drop:node-2"),
    ("scenarios/guide-routed.yaml", "rp-filter-strict:node-2"),
    ("scenarios/guide-routed.yaml", "br-netfilter-off:node-2"),
    ("scenarios/guide-routed.yaml", "underlay-mtu:node-2:1400"),
    ("scenarios/vxlan-overlay.yaml", "fdb-missing:w1:w3"),
    ("scenarios/vxlan-overlay.yaml", "neigh-missing:w1:w3"),
    ("scenarios/guide-routed.yaml", "kube-proxy-down:node-2"),
    ("scenarios/guide-routed.yaml", "dns-pod-down"),
    ("scenarios/seed-era.yaml", "docker0-leftover:kube-node-2"),
    ("scenarios/seed-era.yaml", "docker-ip-masq:kube-node-2"),
    ("scenarios/guide-routed.yaml", "masquerade-missing:node-2"),
    ("scenarios/vxlan-overlay.yaml", "overlay-mtu:1500"),
    ("scenarios/guide-routed.yaml", "apiserver-firewalled"),
];

#[test]
fn every_fault_kind_compiles_to_a_small_damage_plan() {
    for (k, _, _) in FAULT_KINDS {
        assert!(
            EXAMPLES
                .iter()
                .any(|(_, f)| Fault::parse(f).unwrap().kind() == *k),
            "{k} has no example here"
        );
    }
    for (rel, f) in EXAMPLES {
        let s = scenario(rel);
        let fault = Fault::parse(f).unwrap();
        let d = damage(&s, std::slice::from_ref(&fault))
            .unwrap_or_else(|e| panic!("{f} on {rel}: {e:?}"));
        let plan = d.combined();
        assert!(!plan.steps.is_empty(), "{f}: an empty damage plan");
        assert!(
            plan.steps.len() <= 4 * s.nodes.len(),
            "{f}: a damage plan is small"
        );
        for step in &plan.steps {
            assert_eq!(step.phase, Phase::Damage);
            assert!(plan
                .deps(step)
                .iter()
                .all(|&d| (d as usize) < plan.steps.len()));
        }
        // Configuration damage runs before the workload exists, the rest on the running cluster.
        assert_eq!(d.before_workload.steps.is_empty(), !fault.before_workload());
        // Deterministic and serializable: the same bytes twice.
        let a = kscratch_core::plan::to_json(&plan);
        let b = kscratch_core::plan::to_json(&damage(&s, &[fault]).unwrap().combined());
        assert_eq!(a, b);
    }
}

#[test]
fn faults_that_do_not_apply_are_refused_with_a_hint() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "scenarios/guide-routed.yaml",
            "overlay-mtu:1600",
            "no overlay (pod traffic is routed)",
            "underlay-mtu",
        ),
        (
            "scenarios/guide-routed.yaml",
            "docker-ip-masq:node-1",
            "run containerd, not docker",
            "runtime: docker",
        ),
        (
            "scenarios/guide-routed.yaml",
            "node-down:node-9",
            "no node `node-9`",
            "did you mean `node-",
        ),
        (
            "scenarios/guide-routed.yaml",
            "fdb-missing:node-1:node-2",
            "no VXLAN overlay",
            "podTraffic: vxlan",
        ),
        (
            "scenarios/guide-routed.yaml",
            "route-missing:node-1:node-1",
            "no route to its own pod CIDR",
            "another node",
        ),
        (
            "scenarios/guide-routed.yaml",
            "underlay-mtu:node-1:1500",
            "not smaller than the underlay MTU 1500",
            "underlay-mtu:node-1:1400",
        ),
        (
            "scenarios/https-ha.yaml",
            "route-missing:worker-1:worker-2",
            "the pod routes live on the underlay router",
            "route-missing:worker-1",
        ),
        (
            "scenarios/vxlan-overlay.yaml",
            "overlay-mtu:1400",
            "does not raise the pod MTU 1450",
            "above 1450",
        ),
    ];
    for (rel, f, message, hint) in cases {
        let s = scenario(rel);
        let errors = damage(&s, &[Fault::parse(f).unwrap()]).unwrap_err();
        assert_eq!(errors.len(), 1, "{f}");
        let e = &errors[0];
        assert!(e.message.contains(message), "{f}: {e}");
        assert!(
            e.hint.as_deref().is_some_and(|h| h.contains(hint)),
            "{f}: {e}"
        );
        assert!(e.to_string().starts_with(&format!("fault {f}: ")));
    }
    // Every problem at once.
    let s = scenario("scenarios/guide-routed.yaml");
    let all: Vec<Fault> = ["node-down:x", "overlay-mtu:9000", "ip-forward-off:node-1"]
        .iter()
        .map(|f| Fault::parse(f).unwrap())
        .collect();
    assert_eq!(damage(&s, &all).unwrap_err().len(), 2);
}

#[test]
fn the_cli_refuses_inapplicable_faults_and_unconfirmed_damage_with_exit_2() {
    let exe = env!("CARGO_BIN_EXE_kscratch");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe)
            .args(args)
            .current_dir(root())
            .output()
            .expect("run kscratch");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[
        "check",
        "scenarios/guide-routed.yaml",
        "--locked",
        "--fault",
        "overlay-mtu:1600",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("hint: overlay-mtu applies to"), "{err}");
    let (code, err) = run(&[
        "trace",
        "scenarios/guide-routed.yaml",
        "--locked",
        "--from",
        "node-1",
        "--to",
        "node-2",
        "--fault",
        "docker-ip-masq:node-1",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("run containerd, not docker"), "{err}");
    // apply --fault: nothing is touched without the explicit flag, nor for a fault that does not apply.
    let (code, err) = run(&[
        "apply",
        "scenarios/guide-routed.yaml",
        "--locked",
        "--fault",
        "nic-down:node-1",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--break-my-cluster"), "{err}");
    let (code, err) = run(&[
        "apply",
        "scenarios/guide-routed.yaml",
        "--locked",
        "--fault",
        "fdb-missing:node-1:node-2",
        "--break-my-cluster",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no VXLAN overlay"), "{err}");
    // verify: bad input is refused before any node is contacted (the
    // nodes of guide-routed do not exist here, and no known_hosts is read).
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "scenarios/guide-routed.yaml",
            "--locked",
            "--known-hosts",
            "/nonexistent/known_hosts",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (code, err) = verify(&["--fault", "route-missing:node-9:node-1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("node-9"), "{err}");
    let (code, err) = verify(&["--egress-target", "203.0.113.10"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--egress-target \"203.0.113.10\" is not IP:PORT"),
        "{err}"
    );
    let (code, err) = verify(&["--probes-per-node", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("use 1 to 8"), "{err}");
}

#[test]
fn the_damage_is_node_state_a_real_node_would_show() {
    let sim = simulate(
        "scenarios/guide-routed.yaml",
        &[
            "nic-down:node-1",
            "br-netfilter-off:node-2",
            "rp-filter-strict:node-3",
            "kube-proxy-down:node-3",
            "underlay-mtu:master:1400",
        ],
    );
    let w = &sim.world;
    let node = |name: &str| w.nodes.iter().find(|n| n.name == name).unwrap();
    // NIC down: the link stays, down, with its address; the kernel flushed the routes through it.
    let n1 = node("node-1");
    assert!(n1.up, "the machine runs");
    let eth0 = &n1.links["eth0"];
    assert!(!eth0.up && !eth0.addrs.is_empty());
    assert!(n1
        .routes
        .list()
        .iter()
        .all(|r| r.dev.as_deref() != Some("eth0")));
    // br_netfilter gone with its sysctls.
    let n2 = node("node-2");
    assert!(!n2.modules.contains("br_netfilter") && !n2.bridge_nf());
    assert!(n2.sysctls.keys().all(|k| !k.starts_with("net.bridge.")));
    assert!(node("node-1").bridge_nf());
    // Strict rp_filter, and kube-proxy stopped before the Services: no Service rules.
    let n3 = node("node-3");
    assert_eq!(n3.sysctl("net.ipv4.conf.all.rp_filter"), Some("1"));
    assert!(!n3.running("kube-proxy"));
    assert!(sim
        .prepared
        .no_proxy
        .iter()
        .any(|(n, why)| n == "node-3" && why.contains("not running")));
    assert!(n3.netfilter.shared_id().is_none());
    assert_eq!(node("master").links["eth0"].mtu, 1400);
    // Each damaged node differs from the others: none hides behind a representative.
    let classes =
        kscratch_sim::classes::Classes::compute(w, &scenario("scenarios/guide-routed.yaml"));
    assert_eq!(classes.nodes().len(), 4);
}

#[test]
fn vxlan_entries_are_deleted_for_one_peer_only() {
    let sim = simulate(
        "scenarios/vxlan-overlay.yaml",
        &["fdb-missing:w1:w3", "neigh-missing:w2:w3"],
    );
    let w = &sim.world;
    let vx =
        |name: &str| match &w.nodes.iter().find(|n| n.name == name).unwrap().links["vxlan0"].kind {
            LinkKind::Vxlan(x) => x.clone(),
            other => panic!("{other:?}"),
        };
    let w3 = w.nodes.iter().find(|n| n.name == "w3").unwrap().ip;
    let (x1, x2) = (vx("w1"), vx("w2"));
    // Copied from the shared table, minus the one entry.
    assert!(!x1.shared_fdb && x1.fdb.len() == 2 && !x1.fdb.values().any(|ip| *ip == w3));
    assert_eq!(x1.neighbors.len(), 3);
    assert!(!x2.shared_fdb && x2.fdb.len() == 3 && x2.neighbors.len() == 2);
    assert!(vx("cp").shared_fdb);
}

#[test]
fn dns_pod_down_leaves_the_dns_vip_without_endpoints() {
    let sim = simulate("scenarios/guide-routed.yaml", &["dns-pod-down"]);
    assert!(sim.world.pods.iter().all(|p| p.name != "coredns"));
    let dns: Vec<_> = sim
        .prepared
        .services
        .iter()
        .filter(|s| s.name == "kube-dns")
        .collect();
    assert_eq!(dns.len(), 2);
    assert!(dns.iter().all(|s| s.endpoints.is_empty()));
    let before = simulate("scenarios/guide-routed.yaml", &[]);
    assert!(before
        .prepared
        .services
        .iter()
        .filter(|s| s.name == "kube-dns")
        .all(|s| s.endpoints.len() == 1));
}

#[test]
fn the_damage_plan_targets_the_nodes_it_names() {
    let s = scenario("scenarios/vxlan-overlay.yaml");
    let d = damage(&s, &[Fault::parse("fdb-missing:w1:w3").unwrap()]).unwrap();
    let p = d.combined();
    assert_eq!(p.steps.len(), 1);
    assert_eq!(p.steps[0].target, Target::Node(1));
    let Action::DeleteFdbEntries { entries } = &p.steps[0].action else {
        panic!("{:?}", p.steps[0].action)
    };
    assert_eq!(
        entries[0].emit(),
        "0e:ac:14:00:0d:00 dev vxlan0 dst 172.20.0.13 self permanent"
    );
    let s = scenario("scenarios/https-ha.yaml");
    let d = damage(&s, &[Fault::parse("route-missing:worker-1").unwrap()]).unwrap();
    assert_eq!(d.live.steps[0].target, Target::Fabric);
}

#[test]
fn a_faults_steps_wait_only_for_the_step_before_on_the_same_node() {
    // overlay-mtu damages every node: bridge MTU, CNI config, runtime
    // stop and start on each. A node's steps stay in order (the config is
    // written before the runtime restarts); no node waits for another, so
    // a step skipped on one node (its runtime not installed) holds back
    // only that node's later steps.
    let s = scenario("scenarios/vxlan-overlay.yaml");
    let p = damage(&s, &[Fault::parse("overlay-mtu:1500").unwrap()])
        .unwrap()
        .combined();
    assert!(s.nodes.len() > 1);
    assert_eq!(p.steps.len(), 4 * s.nodes.len());
    for (i, step) in p.steps.iter().enumerate() {
        let deps = p.deps(step);
        let before_on_same = p.steps[..i].iter().rposition(|o| o.target == step.target);
        assert_eq!(
            deps,
            before_on_same.map(|d| d as u32).as_slice(),
            "{}",
            p.step_id(step)
        );
    }
}
