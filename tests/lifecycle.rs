//! Node lifecycle: a control-plane endpoint that survives losing a
//! control-plane node (validation, rendering, the simulator's verdict).

use crate::support::{in_ci, load, root};
use kscratch_core::plan::{Asset, KubeconfigUser, Service};
use kscratch_core::render::{self as r, HaproxyConfig, Redacted};
use kscratch_core::scenario::{Fault, Scenario};
use kscratch_sim::checks::{CheckKind, CheckResult};
use kscratch_sim::CheckOptions;

const PROXY: &str = "scenarios/ha-local-proxy.yaml";
const SINGLE: &str = "scenarios/https-ha.yaml";

fn scenario(rel: &str) -> Scenario {
    load(rel)
        .unwrap_or_else(|d| panic!("{rel} must be valid:\n{d}"))
        .scenario
}

fn apiserver_check(s: &Scenario, faults: &[&str]) -> CheckResult {
    let plan = kscratch_core::plan::plan(s);
    let opts = CheckOptions {
        faults: faults
            .iter()
            .map(|f| Fault::parse(f).expect("fault"))
            .collect(),
        ..Default::default()
    };
    let report = kscratch_sim::check(s, &plan, &opts).expect("check runs");
    report
        .checks
        .into_iter()
        .find(|c| c.kind == CheckKind::Apiserver)
        .expect("an apiserver check")
}

fn reasons(c: &CheckResult) -> String {
    c.failures
        .iter()
        .map(|f| f.reason.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `https-ha.yaml` with `masterIP` replaced by `cluster.controlPlaneEndpoint: ENDPOINT`.
fn with_endpoint(endpoint: &str) -> String {
    let text = std::fs::read_to_string(root().join(SINGLE)).expect("read");
    let text = text.replace(
        "  masterIP: 10.1.0.11\n",
        &format!("  controlPlaneEndpoint: \"{endpoint}\"\n"),
    );
    assert!(text.contains("controlPlaneEndpoint"));
    text
}

#[test]
fn a_local_proxy_keeps_the_apiserver_when_any_control_plane_node_is_down() {
    let s = scenario(PROXY);
    let healthy = apiserver_check(&s, &[]);
    assert!(healthy.passed(), "{}", reasons(&healthy));
    assert_eq!(
        healthy.probes,
        6 + 3 * 3 + 3,
        "6 nodes, 3 components on 3 nodes, 3 etcd members"
    );
    for cp in ["cp-1", "cp-2", "cp-3"] {
        let c = apiserver_check(&s, &[&format!("node-down:{cp}")]);
        assert!(c.passed(), "node-down:{cp}: {}", reasons(&c));
        // Every remaining node is a client; the down node's components are not judged.
        assert_eq!(c.probes, 5 + 2 * 3 + 2, "node-down:{cp}");
        assert!(
            c.notes.iter().any(|n| n.starts_with(&format!("{cp} down"))),
            "{:?}",
            c.notes
        );
    }
}

#[test]
fn a_single_master_ip_loses_the_apiserver_with_its_node() {
    let c = apiserver_check(&scenario(SINGLE), &["node-down:cp-1"]);
    assert!(!c.passed());
    // Every remaining node dials 10.1.0.11 and gets nothing.
    assert_eq!(c.failed, 5, "{}", reasons(&c));
    assert!(
        reasons(&c).contains("the apiserver at 10.1.0.11:443 does not answer"),
        "{}",
        reasons(&c)
    );
}

#[test]
fn the_local_proxy_fails_over_only_while_etcd_keeps_quorum() {
    let s = scenario(PROXY);
    // A firewalled apiserver fails haproxy's health check: the proxy skips it.
    let c = apiserver_check(&s, &["apiserver-firewalled"]);
    assert!(c.passed(), "{}", reasons(&c));
    // Two of three etcd members down: no apiserver is healthy, the proxy has
    // nothing to forward to, and the report says why for each server.
    let c = apiserver_check(&s, &["node-down:cp-1", "node-down:cp-2"]);
    assert!(!c.passed());
    let why = reasons(&c);
    assert!(
        why.contains("no healthy apiserver behind 127.0.0.1:6443")
            && why.contains("cp-1: the apiserver at 10.1.0.11:443 does not answer: the request was dropped at cp-1: the node is down")
            && why.contains(
                "cp-3: its apiserver is not healthy: etcd has no quorum: 1 of 3 members healthy"
            ),
        "{why}"
    );
}

#[test]
fn an_operators_load_balancer_is_modelled_in_front_of_every_apiserver() {
    let text = with_endpoint("api.ha.example.internal:443");
    let loaded = kscratch_core::load("lb.yaml", &text, None).expect("valid");
    let s = loaded.scenario;
    let c = apiserver_check(&s, &["node-down:cp-1"]);
    assert!(c.passed(), "{}", reasons(&c));
    assert!(
        c.notes.iter().any(|n| n.contains(
            "the load balancer at api.ha.example.internal:443 is outside the simulated machines"
        )),
        "{:?}",
        c.notes
    );
    // The name is on the apiserver's certificate; every agent dials it.
    let spec = r::cert_spec(&s, kscratch_core::plan::Cert::Apiserver, None).expect("spec");
    assert!(spec
        .dns_names
        .contains(&"api.ha.example.internal".to_string()));
    let kc = text_of(&s, Some(3), Asset::Kubeconfig(KubeconfigUser::Kubelet));
    assert!(
        kc.contains("server: https://api.ha.example.internal\n"),
        "{kc}"
    );
    // No local proxy: its assets do not apply.
    assert!(r::render(&s, Some(0), Asset::ApiserverProxyConfig, &Redacted).is_err());
}

fn text_of(s: &Scenario, node: Option<usize>, asset: Asset) -> String {
    String::from_utf8(r::render(s, node, asset, &Redacted).expect("renders")).expect("utf-8")
}

#[test]
fn every_agent_and_kubeconfig_dials_the_endpoint_and_the_proxy_balances_over_every_apiserver() {
    let s = scenario(PROXY);
    for i in 0..s.nodes.len() {
        for user in [KubeconfigUser::Kubelet, KubeconfigUser::KubeProxy] {
            let kc = text_of(&s, Some(i), Asset::Kubeconfig(user));
            assert!(kc.contains("server: https://127.0.0.1:6443\n"), "{kc}");
        }
        let cfg = HaproxyConfig::parse(&text_of(&s, Some(i), Asset::ApiserverProxyConfig))
            .expect("the proxy's config parses");
        let servers: Vec<String> = cfg.backends[0]
            .servers
            .iter()
            .map(|sv| format!("{} {}:{} {}", sv.name, sv.addr, sv.port, sv.check))
            .collect();
        assert_eq!(
            servers,
            [
                "cp-1 10.1.0.11:443 true",
                "cp-2 10.1.0.12:443 true",
                "cp-3 10.1.0.13:443 true"
            ]
        );
        assert!(cfg.backends[0]
            .health
            .as_ref()
            .is_some_and(|h| h.tls && h.path == "/healthz"));
        let unit = text_of(&s, Some(i), Asset::Unit(Service::ApiserverProxy));
        let words = r::unit_exec_start(&unit).expect("an ExecStart");
        assert_eq!(
            words,
            [
                "/usr/sbin/haproxy",
                "-db",
                "-f",
                "/etc/kubernetes/apiserver-proxy.cfg"
            ],
            "{unit}"
        );
        assert!(
            unit.contains("\nBefore=kubelet.service kube-proxy.service\n"),
            "{unit}"
        );
        assert_eq!(
            r::unit_command(&s, Some(i), Service::ApiserverProxy)
                .expect("a command")
                .argv,
            words,
            "the supervisor runs what the unit says"
        );
    }
    // The admin dials the endpoint too; the controller-manager keeps its own
    // node's apiserver, so each control-plane node works alone.
    let admin = text_of(&s, Some(0), Asset::Kubeconfig(KubeconfigUser::Admin));
    assert!(
        admin.contains("server: https://127.0.0.1:6443\n"),
        "{admin}"
    );
    let cm = text_of(
        &s,
        Some(1),
        Asset::Kubeconfig(KubeconfigUser::ControllerManager),
    );
    assert!(cm.contains("server: https://10.1.0.12\n"), "{cm}");
    // TLS passes through the proxy: 127.0.0.1 is a SAN of the apiserver.
    let spec = r::cert_spec(&s, kscratch_core::plan::Cert::Apiserver, None).expect("spec");
    assert!(spec.ip_addresses.contains(&"127.0.0.1".parse().unwrap()));
}

/// Debian's haproxy accepts the rendered configuration (`haproxy -c`).
#[test]
fn haproxy_accepts_the_rendered_configuration() {
    let haproxy = std::path::Path::new(r::HAPROXY);
    if !haproxy.is_file() {
        if in_ci() {
            panic!("{} is not installed, and under CI=true this test must run (.ci/run installs haproxy)", r::HAPROXY);
        }
        eprintln!(
            "SKIP: {} is not installed; this test needs it (CI installs it)",
            r::HAPROXY
        );
        return;
    }
    let s = scenario(PROXY);
    let dir = std::env::temp_dir().join(format!("kscratch-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("apiserver-proxy.cfg");
    std::fs::write(&path, text_of(&s, Some(3), Asset::ApiserverProxyConfig)).expect("write");
    let out = std::process::Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("run haproxy");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "haproxy -c refused the rendered configuration:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_plan_starts_the_proxy_before_the_agents_that_dial_it() {
    let s = scenario(PROXY);
    let p = kscratch_core::plan::plan(&s);
    let json: serde_json::Value =
        serde_json::from_str(&kscratch_core::plan::to_json(&p)).expect("json");
    let steps = json["steps"].as_array().expect("steps");
    let id = |want: &str| {
        steps
            .iter()
            .find(|st| st["id"] == want)
            .unwrap_or_else(|| panic!("no step {want}"))
    };
    let kubelet = id("worker-1/service/kubelet");
    let deps: Vec<&str> = kubelet["deps"]
        .as_array()
        .expect("dependencies")
        .iter()
        .filter_map(|d| d.as_str())
        .collect();
    assert!(
        deps.contains(&"worker-1/service/apiserver-proxy"),
        "{deps:?}"
    );
    let pre = serde_json::to_string(&id("worker-1/preflight")["checks"]).expect("json");
    assert!(
        pre.contains(r#"{"check":"command","name":"haproxy"}"#)
            && pre.contains(r#"{"check":"port-free","held_by":"apiserver-proxy","port":6443}"#),
        "{pre}"
    );
    // The single-master scenario has no proxy step at all.
    let single = kscratch_core::plan::to_json(&kscratch_core::plan::plan(&scenario(SINGLE)));
    assert!(!single.contains("apiserver-proxy"));
}

#[test]
fn a_control_plane_endpoint_nothing_can_serve_is_refused_with_its_position() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "10.32.4.7",
            "10.32.4.7 is a pod address (network.clusterCIDR is 10.32.0.0/16)",
            "127.0.0.1:6443 for a local proxy",
        ),
        (
            "10.33.0.1:443",
            "10.33.0.1 is a Service address (network.serviceCIDR is 10.33.0.0/16)",
            "load balancer or VIP",
        ),
        (
            "10.1.0.21",
            "10.1.0.21 is node worker-1's address, and worker-1 runs no apiserver",
            "load balancer or VIP",
        ),
        (
            "127.0.0.1:443",
            "port 443 belongs to the apiserver",
            "127.0.0.1:6443",
        ),
        (
            "127.0.0.1:2379",
            "port 2379 belongs to etcd",
            "127.0.0.1:6443",
        ),
        (
            "api.example:0",
            "`0` in `api.example:0` is not a port",
            "1 to 65535",
        ),
        (
            "Not_A_Name",
            "neither an IP address nor a DNS name",
            "api.example.internal",
        ),
        (
            "0.0.0.0:6443",
            "0.0.0.0 is no address a client can dial",
            "VIP",
        ),
    ];
    for (endpoint, message, hint) in cases {
        let text = with_endpoint(endpoint);
        let diags = match kscratch_core::load("ha.yaml", &text, None) {
            Ok(_) => panic!("{endpoint} must be refused"),
            Err(d) => d,
        };
        let e = diags
            .errors()
            .find(|d| d.path == "cluster.controlPlaneEndpoint")
            .unwrap_or_else(|| panic!("{endpoint}: no error at the endpoint:\n{diags}"));
        assert_eq!(e.code.as_str(), "KS2026", "{endpoint}: {e}");
        assert_eq!((e.line, e.column), (Some(7), Some(25)), "{endpoint}: {e}");
        assert!(e.message.contains(message), "{endpoint}: {e}");
        assert!(e.hint.contains(hint), "{endpoint}: {e}");
    }
    // A control-plane node's own address works but survives nothing: a warning.
    let loaded = kscratch_core::load("ha.yaml", &with_endpoint("10.1.0.12"), None).expect("valid");
    assert!(
        loaded
            .warnings
            .warnings()
            .any(|w| w.message.contains("control-plane node cp-2's own address")),
        "{}",
        loaded.warnings
    );
    // The CLI: exit 2, nothing planned.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kscratch"))
        .args(["check", "scenarios/invalid/control-plane-endpoint.yaml"])
        .current_dir(root())
        .output()
        .expect("run kscratch");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("scenarios/invalid/control-plane-endpoint.yaml:6:25")
            && err.contains("10.33.0.1 is a Service address"),
        "{err}"
    );
}

/// The plan with only the step `id`, without dependencies: what a boot runs.
fn only_step(plan: &kscratch_core::plan::Plan, id: &str) -> kscratch_core::plan::Plan {
    let mut p = plan.clone();
    p.steps.retain(|st| plan.step_id(st) == id);
    assert_eq!(p.steps.len(), 1, "no step {id}");
    p.steps[0].deps = 0..0;
    p
}

/// A reboot as the kernel sees it: the links kscratch made, their routes,
/// the shared pod routes, the nat rules and `ip_forward` are gone, and so is
/// the oneshot's state; files and the pods' records stay.
fn reboot(world: &mut kscratch_sim::world::World, s: &Scenario, i: usize) {
    let n = &mut world.nodes[i];
    let mut gone = vec![s.network.bridge.clone()];
    if let Some(v) = s.vxlan() {
        gone.push(v.device.clone());
    }
    for l in &gone {
        n.links.remove(l);
    }
    n.routes
        .local
        .retain(|r| !r.dev.as_ref().is_some_and(|d| gone.contains(d)));
    n.routes.shared = None;
    if let Some(rule) = kscratch_core::plan::masquerade_rule(s) {
        n.netfilter
            .delete_all(kscratch_core::net::iptables::Table::Nat, &rule);
    }
    n.sysctls.insert("net.ipv4.ip_forward".into(), "0".into());
    n.services.remove(Service::Network.name());
}

#[test]
fn kscratch_network_restores_a_rebooted_nodes_pod_network_on_the_simulator() {
    for (rel, node) in [
        ("scenarios/guide-routed.yaml", "node-2"),
        ("scenarios/vxlan-overlay.yaml", "w2"),
    ] {
        let s = scenario(rel);
        let plan = kscratch_core::plan::plan(&s);
        let sim = kscratch_sim::simulate(&s, &plan, &CheckOptions::default()).expect("simulates");
        let verdict = |world: &kscratch_sim::world::World| {
            let classes = kscratch_sim::classes::Classes::compute(world, &s);
            let (results, _) = kscratch_sim::checks::run_all(&kscratch_sim::checks::CheckInput {
                world,
                scenario: &s,
                prepared: &sim.prepared,
                classes: &classes,
                restarting: &[],
            });
            results
                .iter()
                .map(|c| (c.kind, c.failed))
                .collect::<Vec<_>>()
        };
        let converged = verdict(&sim.world);
        assert!(
            converged.iter().all(|(_, f)| *f == 0),
            "{rel}: {converged:?}"
        );
        let i = s.node_index(node).expect("node");
        let mut world = sim.world.clone();
        reboot(&mut world, &s, i);
        let broken = verdict(&world);
        assert!(
            broken
                .iter()
                .any(|(k, f)| *k == CheckKind::PodToPod && *f > 0),
            "{rel}: the reboot must break pod traffic: {broken:?}"
        );
        // What init starts: kscratch-network, the plan's own step.
        let boot = only_step(&plan, &format!("{node}/service/network"));
        let world = kscratch_sim::faults::run(world, &s, &boot).expect("boots");
        assert_eq!(verdict(&world), converged, "{rel}");
        // It converged to the state apply leaves: every network step holds.
        let again = kscratch_sim::faults::run(world.clone(), &s, &boot).expect("again");
        assert_eq!(verdict(&again), converged, "{rel}: idempotent");
    }
}

fn snapshot_of(text: &str) -> kscratch_core::diff::Snapshot {
    let s = kscratch_core::load("ha.yaml", text, None)
        .expect("valid")
        .scenario;
    kscratch_core::diff::Snapshot::of(&s, &kscratch_core::plan::plan(&s))
}

/// Six nodes, three of them control-plane nodes, with etcd on `members`.
fn ha_with_etcd(members: &[&str]) -> String {
    let mut t = String::from(
        "cluster: {name: ha, kubernetesVersion: \"1.31.2\", controlPlaneEndpoint: 127.0.0.1:6443}\nnodes:\n",
    );
    for (i, n) in ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2", "worker-3"]
        .iter()
        .enumerate()
    {
        let mut roles = Vec::new();
        if n.starts_with("cp") {
            roles.push("control-plane");
        } else {
            roles.push("worker");
        }
        if members.contains(n) {
            roles.push("etcd");
        }
        t.push_str(&format!(
            "  - {{name: {n}, ip: 10.1.0.{}, roles: [{}]}}\n",
            11 + i,
            roles.join(", ")
        ));
    }
    t.push_str(&format!(
        "network: {{gateway: 10.1.0.254, nodeCIDR: 10.1.0.0/24, clusterCIDR: 10.32.0.0/16, serviceCIDR: 10.33.0.0/16, podTraffic: fabric}}\nsecurity: {{model: https}}\netcd: {{members: [{}]}}\n",
        members.join(", ")
    ));
    t
}

#[test]
fn removing_etcd_members_beyond_quorum_is_refused_with_the_arithmetic() {
    let three = snapshot_of(&ha_with_etcd(&["cp-1", "cp-2", "cp-3"]));
    let five = snapshot_of(&ha_with_etcd(&[
        "cp-1", "cp-2", "cp-3", "worker-1", "worker-2",
    ]));
    let one = snapshot_of(&ha_with_etcd(&["cp-1"]));
    // 3 → 1: the one left is not a quorum of 3.
    let d = kscratch_core::diff::diff(&three, &one);
    assert!(d.refused, "{d}");
    assert!(
        d.to_string().contains("removing 2 of 3 etcd members (cp-2, cp-3) leaves 1 running, and removing a member needs a quorum of the current 3: 2 (⌊3/2⌋ + 1) must agree; remove at most 1 now"),
        "{d}"
    );
    // 5 → 1: 1 of 5, a quorum is 3.
    let d = kscratch_core::diff::diff(&five, &one);
    assert!(
        d.refused
            && d.to_string().contains(
                "removing 4 of 5 etcd members (cp-2, cp-3, worker-1, worker-2) leaves 1 running"
            )
            && d.to_string()
                .contains("3 (⌊5/2⌋ + 1) must agree; remove at most 2 now"),
        "{d}"
    );
    // The CLI: `kscratch diff` exits 2 for a refused change.
    let dir = std::env::temp_dir().join(format!("kscratch-quorum-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("old.yaml"),
        ha_with_etcd(&["cp-1", "cp-2", "cp-3"]),
    )
    .expect("write");
    std::fs::write(dir.join("new.yaml"), ha_with_etcd(&["cp-1"])).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kscratch"))
        .args(["diff", "old.yaml", "new.yaml"])
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run kscratch");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removing 2 of 3 etcd members"));
    // 5 → 3: the three left are a quorum of 5: a membership change, not refused.
    let d = kscratch_core::diff::diff(&five, &three);
    assert!(!d.refused, "{d}");
    assert!(d
        .to_string()
        .contains("etcd members [cp-1, cp-2, cp-3, worker-1, worker-2] → [cp-1, cp-2, cp-3]"));
}
