//! `kscratch reset`: the teardown plan (derived from the apply plan, its
//! refusals, deterministic bytes) and its run on the simulator.

use crate::support::{check, load};
use kscratch_core::exec::{execute, ExecOptions, Quiet, Report};
use kscratch_core::net::iptables::{Rule, Table};
use kscratch_core::plan::{reset, to_json, Action, Plan, ResetOptions};
use kscratch_core::Scenario;
use kscratch_sim::backend::SimBackend;
use kscratch_sim::world::{Node, World};
use std::process::Command;

fn run(plan: &Plan, s: &Scenario, world: World) -> (Report, World) {
    let b = SimBackend::new(world);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let r = rt.block_on(execute(plan, s, &b, &ExecOptions::sequential(), &mut Quiet));
    (r, b.into_sim().world)
}

fn nodes(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// What a node shows: links, routes, `iptables-save`, files with modes,
/// services, listeners, sysctls and modules.
fn state(n: &Node) -> String {
    let mut out = String::new();
    for (name, l) in &n.links {
        out.push_str(&format!("link {name} {:?}\n", l.addrs));
    }
    for r in n.routes.list() {
        out.push_str(&format!("route {}\n", r.emit()));
    }
    out.push_str(&n.netfilter.dump().emit());
    for (p, f) in &n.fs.files {
        out.push_str(&format!(
            "file {p} {:o} {} bytes\n",
            f.mode,
            f.content.len()
        ));
    }
    for (s, st) in &n.services {
        out.push_str(&format!("service {s} {st:?}\n"));
    }
    for (k, l) in &n.listeners {
        out.push_str(&format!("listen {k:?} {}\n", l.process));
    }
    out.push_str(&format!(
        "sysctls {:?}\nmodules {:?}\n",
        n.sysctls, n.modules
    ));
    out
}

fn changed(r: &Report) -> usize {
    r.count("changed")
}

/// Apply on the simulator, reset one worker: it is as handed over (no
/// kscratch link, route, rule, unit or file; a foreign rule in the chain
/// kscratch used survives), the other nodes are exactly as before, and a
/// second reset changes nothing.
fn reset_a_worker(scenario: &str, worker: &str) {
    reset_one(scenario, worker, &ResetOptions::default());
}

fn reset_one(scenario: &str, worker: &str, o: &ResetOptions) {
    let s = load(scenario).unwrap().scenario;
    let handed_over = kscratch_sim::build::world(&s);
    let (r, mut world) = run(&kscratch_core::plan::plan(&s), &s, handed_over.clone());
    assert_eq!(r.count("failed") + r.count("skipped"), 0, "{scenario}");
    let w = s.node_index(worker).unwrap();
    // Someone else's rule, in the chain of kscratch's masquerade rule.
    let foreign = Rule::parse("-A POSTROUTING -s 192.168.77.0/24 -o eth0 -j MASQUERADE").unwrap();
    world.nodes[w]
        .netfilter
        .ensure_rule(
            Table::Nat,
            foreign.clone(),
            kscratch_sim::netfilter::Position::Append,
        )
        .unwrap();
    let before: Vec<String> = world.nodes.iter().map(state).collect();
    assert!(world.nodes[w].links.contains_key("cbr0"), "{scenario}");
    if s.nodes[w].roles.control_plane {
        assert!(
            world.nodes[w].static_pods.len() >= 3,
            "{:?}",
            world.nodes[w].static_pods
        );
    }

    let teardown = reset(&s, &nodes(&[worker]), o).unwrap();
    assert!(teardown.notes.is_empty(), "{:?}", teardown.notes);
    let (r, world) = run(&teardown.plan, &s, world);
    assert_eq!(r.count("failed") + r.count("skipped"), 0, "{scenario}");
    assert!(changed(&r) > 0);
    let node = &world.nodes[w];
    let fresh = &handed_over.nodes[w];
    assert_eq!(
        node.links.keys().collect::<Vec<_>>(),
        fresh.links.keys().collect::<Vec<_>>(),
        "{scenario}: links of {worker}"
    );
    assert_eq!(
        node.routes.list(),
        fresh.routes.list(),
        "{scenario}: routes of {worker}"
    );
    assert!(
        node.netfilter.check(Table::Nat, &foreign),
        "the foreign rule went"
    );
    let mut without_foreign = node.netfilter.clone();
    without_foreign.delete_all(Table::Nat, &foreign);
    assert_eq!(
        without_foreign.dump().emit(),
        fresh.netfilter.dump().emit(),
        "{scenario}: iptables of {worker}"
    );
    assert_eq!(
        node.fs.files.keys().collect::<Vec<_>>(),
        fresh.fs.files.keys().collect::<Vec<_>>(),
        "{scenario}: files of {worker}"
    );
    assert!(node.services.is_empty(), "{:?}", node.services);
    assert!(node.listeners.is_empty(), "{:?}", node.listeners);
    assert!(node.static_pods.is_empty(), "{:?}", node.static_pods);
    for (i, n) in world.nodes.iter().enumerate() {
        if i != w {
            assert_eq!(state(n), before[i], "{scenario}: {} changed", n.name);
        }
    }

    // Idempotent: a second reset changes nothing.
    let after = state(node);
    let (r, again) = run(&teardown.plan, &s, world);
    assert_eq!(changed(&r), 0, "{scenario}: second reset");
    assert_eq!(r.count("ok"), teardown.plan.steps.len());
    assert_eq!(state(&again.nodes[w]), after);
}

#[test]
fn resetting_a_routed_worker_on_the_simulator_leaves_nothing_of_kscratch() {
    reset_a_worker("scenarios/guide-routed.yaml", "node-3");
}

#[test]
fn resetting_a_vxlan_worker_on_the_simulator_leaves_nothing_of_kscratch() {
    reset_a_worker("scenarios/vxlan-overlay.yaml", "w2");
}

#[test]
fn resetting_a_worker_of_the_local_proxy_scenario_leaves_nothing_of_kscratch() {
    reset_a_worker("scenarios/ha-local-proxy.yaml", "worker-1");
}

/// The last control-plane node and etcd member, when told: its static
/// pods (etcd and the control plane, under the kubelet) stop as their
/// manifests go, then the kubelet; the node is as handed over.
#[test]
fn a_forced_reset_of_the_only_control_plane_node_stops_its_static_pods() {
    reset_one(
        "scenarios/guide-routed.yaml",
        "master",
        &ResetOptions {
            force: true,
            delete_etcd_data: true,
        },
    );
}

/// The teardown is derived from the apply plan: every file the node got
/// is deleted, every service it started disabled, every rule it ensured
/// deleted; the plan bytes are the same every time (golden).
#[test]
fn the_teardown_inverts_the_nodes_apply_steps_and_its_bytes_are_stable() {
    for (scenario, node) in [
        ("scenarios/guide-routed.yaml", "node-3"),
        ("scenarios/vxlan-overlay.yaml", "w2"),
    ] {
        let s = load(scenario).unwrap().scenario;
        let apply = kscratch_core::plan::plan(&s);
        let i = s.node_index(node).unwrap() as u32;
        let t = reset(&s, &nodes(&[node]), &ResetOptions::default())
            .unwrap()
            .plan;
        let mine = |a: &dyn Fn(&Action) -> Option<String>, p: &Plan| -> Vec<String> {
            let mut v: Vec<String> = p
                .steps
                .iter()
                .filter(|st| st.target == kscratch_core::plan::Target::Node(i))
                .filter_map(|st| a(&st.action))
                .collect();
            v.sort();
            v
        };
        let written = mine(
            &|a| match a {
                Action::WriteFile { path, .. } => Some(path.to_string()),
                Action::InstallBinary { dest, .. } => Some(dest.to_string()),
                _ => None,
            },
            &apply,
        );
        let deleted = mine(
            &|a| match a {
                Action::DeleteFile { path }
                    if !path.starts_with("/etc/sysctl.d/")
                        && !path.starts_with("/etc/modules-load.d/") =>
                {
                    Some(path.clone())
                }
                _ => None,
            },
            &t,
        );
        assert_eq!(deleted, written, "{scenario}");
        let started = mine(
            &|a| match a {
                Action::StartService { name } => Some(name.to_string()),
                _ => None,
            },
            &apply,
        );
        let disabled = mine(
            &|a| match a {
                Action::DisableService { name } => Some(name.to_string()),
                _ => None,
            },
            &t,
        );
        assert_eq!(disabled, started, "{scenario}");
        // Every step but the first waits for the one before: one chain.
        for (k, st) in t.steps.iter().enumerate() {
            let want: &[u32] = if k == 0 { &[] } else { &[k as u32 - 1] };
            assert_eq!(t.deps(st), want);
        }
        let json = to_json(&t);
        let again = to_json(
            &reset(&s, &nodes(&[node]), &ResetOptions::default())
                .unwrap()
                .plan,
        );
        assert_eq!(json, again);
        check(
            &format!("reset/{}-{node}.json", crate::support::stem(scenario)),
            &json,
        );
    }
}

#[test]
fn reset_refuses_an_unknown_node_and_the_last_etcd_member_and_control_plane() {
    let s = load("scenarios/guide-routed.yaml").unwrap().scenario;
    let o = ResetOptions::default();
    let e = reset(&s, &nodes(&["node-9"]), &o).unwrap_err();
    let text = e[0].to_string();
    assert!(
        text.contains("no node `node-9` in the scenario")
            && text.contains("the nodes are master, node-1, node-2, node-3"),
        "{text}"
    );
    let e = reset(&s, &nodes(&["master"]), &o).unwrap_err();
    let text: Vec<String> = e.iter().map(|r| r.to_string()).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(
        text[0].contains("would leave 0 of the 1 etcd members (master)")
            && text[0].contains("--force"),
        "{text:?}"
    );
    assert!(
        text[1].contains("would leave 0 of the 1 control-plane nodes"),
        "{text:?}"
    );
    let forced = reset(
        &s,
        &nodes(&["master"]),
        &ResetOptions {
            force: true,
            delete_etcd_data: true,
        },
    )
    .unwrap();
    assert!(forced.plan.steps.iter().any(|st| st.action
        == Action::ClearDirectory {
            path: s.etcd.data_dir.clone()
        }));
    // Without --delete-etcd-data the data dir stays.
    let kept = reset(
        &s,
        &nodes(&["master"]),
        &ResetOptions {
            force: true,
            delete_etcd_data: false,
        },
    )
    .unwrap();
    assert!(!kept
        .plan
        .steps
        .iter()
        .any(|st| matches!(st.action, Action::ClearDirectory { .. })));
}

#[test]
fn reset_says_the_quorum_arithmetic_and_that_membership_stays() {
    let s = load("scenarios/https-ha.yaml").unwrap().scenario;
    let members: Vec<&str> = s
        .etcd
        .members
        .iter()
        .map(|&i| s.nodes[i].name.as_str())
        .collect();
    assert_eq!(members.len(), 3, "{members:?}");
    let one = reset(&s, &nodes(&members[..1]), &ResetOptions::default()).unwrap();
    assert!(
        one.notes[0].contains("stays a member of the etcd cluster")
            && one.notes[0].contains("2 of 3 members remain, quorum is 2"),
        "{:?}",
        one.notes
    );
    let e = reset(&s, &nodes(&members[..2]), &ResetOptions::default()).unwrap_err();
    let text = e[0].to_string();
    assert!(
        text.contains("leaves 1 of 3 etcd members running, and quorum needs 2 of 3")
            && text.contains("reset at most 1 etcd member at a time"),
        "{text}"
    );
}

/// The CLI refuses before it connects anywhere: exit 2, the known nodes named.
#[test]
fn kscratch_reset_of_an_unknown_node_exits_2_before_connecting() {
    let out = Command::new(env!("CARGO_BIN_EXE_kscratch"))
        .current_dir(crate::support::root())
        .args([
            "reset",
            "scenarios/guide-routed.yaml",
            "node-7",
            "--known-hosts",
            "/nonexistent/known_hosts",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("error: no node `node-7` in the scenario")
            && err.contains("the nodes are master, node-1, node-2, node-3")
            && err.contains("nothing was run on any node"),
        "{err}"
    );
}

/// A running cluster: kube-proxy has programmed its Service chains (shared
/// between the nodes) and the test pods run. Reset of a worker removes
/// every KUBE-* chain and the jumps to them, as `kube-proxy --cleanup`
/// does, and kscratch's masquerade rule, leaving the node's iptables as
/// handed over plus a foreign rule; the other nodes keep their chains.
#[test]
fn reset_of_a_running_worker_removes_kube_proxys_chains_and_keeps_a_foreign_rule() {
    let s = load("scenarios/guide-routed.yaml").unwrap().scenario;
    let plan = kscratch_core::plan::plan(&s);
    let sim = kscratch_sim::simulate(&s, &plan, &kscratch_sim::CheckOptions::default()).unwrap();
    let mut world = sim.world;
    let w = s.node_index("node-3").unwrap();
    let save = |n: &Node| n.netfilter.dump().emit();
    assert!(save(&world.nodes[w]).contains(":KUBE-SERVICES"));
    let foreign = Rule::parse("-A POSTROUTING -s 192.168.77.0/24 -o eth0 -j MASQUERADE").unwrap();
    world.nodes[w]
        .netfilter
        .ensure_rule(
            Table::Nat,
            foreign.clone(),
            kscratch_sim::netfilter::Position::Append,
        )
        .unwrap();
    let others: Vec<String> = world.nodes.iter().map(save).collect();
    let teardown = reset(&s, &nodes(&["node-3"]), &ResetOptions::default()).unwrap();
    let (r, world) = run(&teardown.plan, &s, world);
    for (st, o) in teardown.plan.steps.iter().zip(&r.outcomes) {
        assert!(
            matches!(o.name(), "ok" | "changed"),
            "{}: {o:?}",
            teardown.plan.step_id(st)
        );
    }
    let node = &world.nodes[w];
    assert!(!save(node).contains("KUBE-"), "{}", save(node));
    let mut without_foreign = node.netfilter.clone();
    assert_eq!(without_foreign.delete_all(Table::Nat, &foreign), 1);
    let fresh = kscratch_sim::build::world(&s);
    assert_eq!(
        without_foreign.dump().emit(),
        save(&fresh.nodes[w]),
        "node-3's iptables after the reset"
    );
    for (i, n) in world.nodes.iter().enumerate() {
        if i != w {
            assert_eq!(save(n), others[i], "{} changed", n.name);
            assert!(save(n).contains(":KUBE-SERVICES"));
        }
    }
    let (r, _) = run(&teardown.plan, &s, world);
    assert_eq!(changed(&r), 0);
}
