//! Removing a node on the real-kernel testbed (`KSCRATCH_TESTBED=1`, root),
//! through the `kscratch apply` a user runs (its applied record is what
//! makes the removed node "departed").
//!
//! Routed with real etcd: `scenarios/testbed/ha-proxy-4.yaml` (three etcd
//! members with TLS, routed pod traffic) is applied; node3 (an etcd member)
//! leaves the scenario and apply runs again. Then no remaining node has a
//! route to node3's pod CIDR or via its address, `etcdctl member list`
//! shows two members, both answer `endpoint health`, and a third apply
//! changes nothing.
//!
//! VXLAN: `vxlan-4.yaml` is applied, node4 leaves, apply again: no
//! remaining node has node4's FDB entry, VTEP neighbour or route, and a
//! third apply changes nothing.
//!
//! The departed machine itself is left alone (its reset is `kscratch reset`).

use super::apply::{check_tools, scenario_copy};
use super::support::{self, Error, Result, Testbed};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn io(e: std::io::Error) -> Error {
    Error::new(e.to_string())
}

/// `kscratch apply`, as CI runs it: exit code and both streams.
fn apply(scenario: &Path, known_hosts: &Path) -> Result<(Option<i32>, String)> {
    let out = support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kscratch"))
            .args(["apply", "--known-hosts"])
            .arg(known_hosts)
            .arg(scenario)
            .env("CI", "1"),
        Duration::from_secs(900),
    )?;
    Ok((
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// An apply that must succeed; the number its `total:` line says changed.
fn apply_ok(scenario: &Path, known_hosts: &Path, what: &str) -> Result<(usize, String)> {
    let (code, said) = apply(scenario, known_hosts)?;
    if code != Some(0) {
        return Err(Error::new(format!(
            "{what}: apply exited {code:?}:\n{said}"
        )));
    }
    let changed = said
        .lines()
        .find_map(|l| l.strip_prefix("total: "))
        .and_then(|t| t.split(", ").nth(1))
        .and_then(|c| c.strip_suffix(" changed"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::new(format!("{what}: no `total:` line:\n{said}")))?;
    println!("{what}: {changed} changed");
    Ok((changed, said))
}

/// The scenario file without node `name` (its entry and fields).
fn drop_node(scenario: &Path, name: &str) -> Result<()> {
    let text = std::fs::read_to_string(scenario).map_err(io)?;
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.trim() == format!("- name: {name}") {
            skipping = true;
            continue;
        }
        if skipping && line.starts_with("    ") && !line.trim_start().starts_with("- ") {
            continue;
        }
        skipping = false;
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(scenario, out).map_err(io)
}

/// `name`'s pod CIDR in the IPAM lock apply wrote next to the scenario.
fn pod_cidr(scenario: &Path, name: &str) -> Result<String> {
    let lock = scenario.with_extension("ipam.lock");
    let text = std::fs::read_to_string(&lock).map_err(io)?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
        .map(str::to_string)
        .ok_or_else(|| Error::new(format!("{} has no pod CIDR for {name}", lock.display())))
}

fn in_node(tb: &Testbed, name: &str, argv: &[&str]) -> Result<String> {
    let ns = tb.node(name)?.netns.clone();
    tb.run_in(&ns, argv)
}

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn a_removed_etcd_member_node_leaves_no_route_and_no_member() -> Result<()> {
    support::require();
    check_tools()?;
    let tb = Testbed::up(
        "a_removed_etcd_member_node_leaves_no_route_and_no_member",
        4,
    )?;
    let scenario = scenario_copy(&tb, "ha-proxy-4.yaml", 4)?;
    let kh = tb.description.known_hosts.clone();
    apply_ok(&scenario, &kh, "first apply (4 nodes, 3 etcd members)")?;
    let cidr = pod_cidr(&scenario, "node3")?;
    for node in ["node1", "node2", "node4"] {
        let routes = in_node(&tb, node, &["ip", "route", "show"])?;
        assert!(
            routes.contains(&format!("{cidr} via 198.51.100.3 dev eth0")),
            "{node} has no route to node3's pods before the removal:\n{routes}"
        );
    }
    let e = "/srv/kubernetes/etcd";
    let etcdctl = |endpoints: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "etcdctl".into(),
            format!("--endpoints={endpoints}"),
            format!("--cacert={e}/ca.crt"),
            format!("--cert={e}/server.crt"),
            format!("--key={e}/server.key"),
            "--dial-timeout=2s".into(),
            "--command-timeout=5s".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let node1 = tb.node("node1")?;
    let list = tb.node_run(
        node1,
        &etcdctl("https://198.51.100.1:2379", &["member", "list"]),
    )?;
    assert_eq!(list.lines().count(), 3, "{list}");
    tb.node_run(
        node1,
        &etcdctl(
            "https://198.51.100.1:2379",
            &["put", "/kscratch/removal", "kept"],
        ),
    )?;

    // node3 leaves the scenario (and with it the third etcd member).
    drop_node(&scenario, "node3")?;
    let (changed, said) = apply_ok(&scenario, &kh, "apply without node3")?;
    assert!(changed > 0, "{said}");
    assert!(
        said.contains(
            "removing 1 node the applied record has and the scenario does not: node3 (etcd member)"
        ),
        "{said}"
    );
    for node in ["node1", "node2", "node4"] {
        let routes = in_node(&tb, node, &["ip", "route", "show"])?;
        assert!(
            !routes.contains(&cidr) && !routes.contains("via 198.51.100.3 "),
            "{node} still routes to node3:\n{routes}"
        );
    }
    let list = tb.node_run(
        node1,
        &etcdctl("https://198.51.100.1:2379", &["member", "list"]),
    )?;
    println!("etcd member list after the removal:\n{list}");
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(!list.contains(", node3,"), "{list}");
    let both = "https://198.51.100.1:2379,https://198.51.100.2:2379";
    let health = tb.node_exec(node1, &etcdctl(both, &["endpoint", "health"]))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    assert_eq!(said.matches("is healthy").count(), 2, "{said}");
    let value = tb.node_run(
        node1,
        &etcdctl(both, &["get", "/kscratch/removal", "--print-value-only"]),
    )?;
    assert_eq!(value.trim(), "kept");

    // Converged: nothing left to remove, nothing to change.
    let (changed, said) = apply_ok(&scenario, &kh, "apply again")?;
    assert_eq!(changed, 0, "{said}");
    tb.down()
}

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn a_removed_vxlan_node_leaves_no_fdb_neighbour_or_route() -> Result<()> {
    support::require();
    check_tools()?;
    let tb = Testbed::up("a_removed_vxlan_node_leaves_no_fdb_neighbour_or_route", 4)?;
    let scenario = scenario_copy(&tb, "vxlan-4.yaml", 4)?;
    let kh = tb.description.known_hosts.clone();
    apply_ok(&scenario, &kh, "first apply (vxlan, 4 nodes)")?;
    let cidr = pod_cidr(&scenario, "node4")?;
    let vtep = cidr.split('/').next().unwrap_or_default().to_string();
    let present = |node: &str| -> Result<Vec<String>> {
        let mut found = Vec::new();
        let fdb = in_node(&tb, node, &["bridge", "fdb", "show", "dev", "vxlan0"])?;
        found.extend(
            fdb.lines()
                .filter(|l| l.contains("dst 198.51.100.4 "))
                .map(String::from),
        );
        let neigh = in_node(&tb, node, &["ip", "neigh", "show", "dev", "vxlan0"])?;
        found.extend(
            neigh
                .lines()
                .filter(|l| l.starts_with(&format!("{vtep} ")))
                .map(String::from),
        );
        let routes = in_node(&tb, node, &["ip", "route", "show"])?;
        found.extend(
            routes
                .lines()
                .filter(|l| l.starts_with(&cidr))
                .map(String::from),
        );
        Ok(found)
    };
    for node in ["node1", "node2", "node3"] {
        assert_eq!(present(node)?.len(), 3, "{node} before the removal");
    }
    drop_node(&scenario, "node4")?;
    let (changed, said) = apply_ok(&scenario, &kh, "apply without node4")?;
    assert!(changed > 0, "{said}");
    for node in ["node1", "node2", "node3"] {
        let left = present(node)?;
        assert!(
            left.is_empty(),
            "{node} still has node4's entries: {left:?}"
        );
    }
    let (changed, said) = apply_ok(&scenario, &kh, "apply again")?;
    assert_eq!(changed, 0, "{said}");
    tb.down()
}
