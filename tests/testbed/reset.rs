//! `kscratch reset` on the real-kernel testbed (`KSCRATCH_TESTBED=1`, root):
//! a node applied by kscratch is reset, and it is as it was handed over —
//! no kscratch link, route, iptables rule, file or supervised process —
//! while other people's rules and files stay, and the other nodes are
//! untouched.

use super::apply::{apply_in_process, check_tools, scenario_copy};
use super::support::{self, Error, Result, Testbed};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn kscratch(args: &[&str]) -> Result<Output> {
    support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kscratch"))
            .args(args)
            .env("CI", "1"),
        Duration::from_secs(600),
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every regular file under the node's private directories (the testbed
/// bind-mounts them over /etc/kubernetes, /etc/systemd/system,
/// /usr/local/bin, /var/lib/kscratch, ...), as `find` lists them, sorted.
fn files(node: &support::Node) -> Result<Vec<String>> {
    let root = node.dir.join("root");
    let out = Command::new("find")
        .arg(&root)
        .args(["-type", "f"])
        .output()
        .map_err(|e| Error::new(format!("find {}: {e}", root.display())))?;
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.trim_start_matches(root.to_str().unwrap_or(""))
                .to_string()
        })
        .collect();
    v.sort();
    Ok(v)
}

/// What the kernel shows of the node's network: links, routes, `iptables-save`.
fn network(tb: &Testbed, node: &support::Node) -> Result<String> {
    let links = tb.node_run(node, &["ip", "-o", "link", "show"])?;
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    let routes = tb.node_run(node, &["ip", "route", "show"])?;
    let mut rules = String::new();
    for table in ["mangle", "nat", "filter"] {
        rules.push_str(&format!("table {table}:\n"));
        rules.push_str(&tb.node_run(node, &["iptables", "-w", "-t", table, "-S"])?);
    }
    Ok(format!("links {names:?}\nroutes:\n{routes}rules:\n{rules}"))
}

/// The processes in the node's network namespace besides its sshd, after
/// the SSH sessions of the last command have ended (up to 10 s).
fn processes(node: &support::Node) -> Result<Vec<String>> {
    let t = Instant::now();
    loop {
        let out = Command::new("ip")
            .args(["netns", "pids", &node.netns])
            .output()
            .map_err(|e| Error::new(format!("ip netns pids {}: {e}", node.netns)))?;
        let others: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|p| *p != node.sshd_pid.to_string())
            .map(|p| {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                format!("{p} {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
            })
            .collect();
        if others.is_empty() || t.elapsed() > Duration::from_secs(10) {
            return Ok(others);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The simulator's kube-proxy rules for the scenario's test Services, as
/// `iptables-restore --noflush` input.
fn kube_proxy_rules(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::new(e.to_string()))?;
    let s = kscratch_core::load(&path.display().to_string(), &text, None)
        .map_err(|d| Error::new(d.to_string()))?
        .scenario;
    let plan = kscratch_core::plan::plan(&s);
    let sim = kscratch_sim::simulate(&s, &plan, &kscratch_sim::CheckOptions::default())
        .map_err(|e| Error::new(e.to_string()))?;
    let rules =
        kscratch_sim::prepare::kube_proxy_rules(&sim.prepared.services, s.network.cluster_cidr)
            .map_err(Error::new)?;
    Ok(rules.ruleset().emit())
}

fn restore(netns: &str, rules: &str) -> Result<()> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, "iptables-restore", "--noflush"]);
    let out = support::run_bounded_with_stdin(&mut c, rules.as_bytes(), Duration::from_secs(30))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "iptables-restore in {netns}: {}",
            text(&out)
        )))
    }
}

/// `doc` matches `docs/schema/reset.schema.json` (python3-jsonschema, which `.ci/run`
/// installs; missing, it is an error here, never a skip).
fn matches_schema(doc: &serde_json::Value) -> Result<()> {
    crate::support::schema_errors("reset.schema.json", doc.to_string().as_bytes())
        .map_err(|e| Error::new(format!("reset --format json {e}")))
}

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn reset_returns_a_node_to_how_it_was_handed_over_and_leaves_others_alone() -> Result<()> {
    support::require();
    check_tools()?;
    let tb = Testbed::up(
        "reset_returns_a_node_to_how_it_was_handed_over_and_leaves_others_alone",
        4,
    )?;
    let scenario = scenario_copy(&tb, "routed-4.yaml", 4)?;
    let sc = scenario.to_str().unwrap_or("");
    let kh = tb.description.known_hosts.clone();
    let khs = kh.to_str().unwrap_or("");
    let node4 = tb.node("node4")?;
    let handed_over_files = files(node4)?;
    let handed_over_net = network(&tb, node4)?;
    let node1 = tb.node("node1")?;
    let node1_handed_over_files = files(node1)?;
    let node1_handed_over_net = network(&tb, node1)?;

    let applied = apply_in_process(&scenario, &kh)?;
    applied.assert_no_failure()?;
    assert_eq!(applied.outcome("node4/net/bridge"), "changed");
    let applied_net = network(&tb, node4)?;
    assert!(
        applied_net.contains("\"cbr0\"")
            && applied_net.contains("10.10.0.0/24 via 198.51.100.1 dev eth0")
            && applied_net
                .contains("! -d 10.10.0.0/16 -m addrtype ! --dst-type LOCAL -j MASQUERADE"),
        "{applied_net}"
    );
    assert!(files(node4)?.len() > handed_over_files.len() + 10);

    // Someone else's rule, in the chain of kscratch's masquerade rule, and
    // their file, next to kscratch's.
    let foreign_rule = "-A POSTROUTING -s 192.168.77.0/24 -o eth0 -j MASQUERADE";
    tb.node_run(
        node4,
        &[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "192.168.77.0/24",
            "-o",
            "eth0",
            "-j",
            "MASQUERADE",
        ],
    )?;
    tb.node_run(
        node4,
        &[
            "sh",
            "-c",
            "echo operator > /etc/kubernetes/operator-notes.txt",
        ],
    )?;
    // What kube-proxy would have programmed on node4 (the testbed has no
    // kube-proxy): the simulator's kube-proxy rules for the scenario's test
    // Services, loaded into the real kernel.
    restore(&node4.netns, &kube_proxy_rules(&scenario)?)?;
    let loaded = network(&tb, node4)?;
    assert!(
        loaded.contains("-N KUBE-SERVICES") && loaded.contains("-j KUBE-SVC-"),
        "{loaded}"
    );
    let others_before: Vec<String> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| network(&tb, tb.node(n)?))
        .collect::<Result<_>>()?;
    let etcd_pid = tb.node_run(node1, &["cat", "/var/lib/kscratch/run/etcd.pid"])?;

    // An unknown node: exit 2, the known ones named, nothing touched.
    let before = network(&tb, node4)?;
    let before_files = files(node4)?;
    let out = kscratch(&["reset", sc, "node9", "--known-hosts", khs])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no node `node9` in the scenario")
            && text(&out).contains("node1, node2, node3, node4"),
        "{}",
        text(&out)
    );
    // The last etcd member and control-plane node: refused with the arithmetic.
    let out = kscratch(&["reset", sc, "node1", "--known-hosts", khs])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("would leave 0 of the 1 etcd members (node1)"),
        "{}",
        text(&out)
    );
    // Not while an apply of the cluster runs: its lock, held here by flock(1).
    let lock = scenario
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(".kscratch/testbed-routed/apply.lock");
    // --no-fork: the process that holds the lock is the one killed below.
    let mut holder = Command::new("flock")
        .args(["-x", "--no-fork"])
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .map_err(|e| Error::new(format!("flock: {e}")))?;
    let t = Instant::now();
    while Command::new("flock")
        .args(["-n", "-x"])
        .arg(&lock)
        .arg("true")
        .status()
        .map_err(|e| Error::new(format!("flock -n: {e}")))?
        .success()
    {
        if t.elapsed() > Duration::from_secs(10) {
            let _ = holder.kill();
            return Err(Error::new("flock(1) did not take the apply lock"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = kscratch(&["reset", sc, "node4", "--known-hosts", khs])?;
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(held.status.code(), Some(1), "{}", text(&held));
    assert!(
        text(&held).contains("nothing was run on any node"),
        "{}",
        text(&held)
    );
    // A dry run lists what would change and changes nothing.
    let out = kscratch(&["reset", sc, "node4", "--known-hosts", khs, "--dry-run"])?;
    let listing = text(&out);
    assert_eq!(out.status.code(), Some(0), "{listing}");
    assert!(
        listing.contains("[would change] node4/kube-proxy/chains-nat")
            && listing.contains("[would change] node4/net/bridge")
            && listing.contains("ip link delete cbr0")
            && listing.contains("[would change] node4/net/masquerade"),
        "{listing}"
    );
    assert_eq!(
        network(&tb, node4)?,
        before,
        "a refusal or dry run touched node4"
    );
    assert_eq!(
        files(node4)?,
        before_files,
        "a refusal or dry run touched node4"
    );

    let out = kscratch(&[
        "reset",
        sc,
        "node4",
        "--known-hosts",
        khs,
        "--dry-run",
        "--format",
        "json",
    ])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::new(format!(
            "reset --dry-run --format json: {e}: {}",
            text(&out)
        ))
    })?;
    matches_schema(&doc)?;
    assert_eq!(doc["dryRun"], true);
    assert_eq!(doc["totals"]["changed"], 0, "{doc:#}");
    assert!(doc["totals"]["wouldChange"].as_u64() > Some(10), "{doc:#}");
    assert_eq!(network(&tb, node4)?, before, "a JSON dry run touched node4");

    // The reset.
    let t = Instant::now();
    let out = kscratch(&["reset", sc, "node4", "--known-hosts", khs])?;
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    println!("reset of node4 in {:?}:\n{report}", t.elapsed());
    let after = network(&tb, node4)?;
    // As handed over, plus the foreign rule.
    let expected = handed_over_net.replace(
        "table nat:\n-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n",
        &format!(
            "table nat:\n-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n{foreign_rule}\n"
        ),
    );
    assert_ne!(expected, handed_over_net, "{handed_over_net}");
    assert_eq!(after, expected, "node4's network after the reset");
    let mut want_files = handed_over_files.clone();
    want_files.push("/etc-kubernetes/operator-notes.txt".into());
    want_files.sort();
    assert_eq!(files(node4)?, want_files, "node4's files after the reset");
    let left = processes(node4)?;
    assert!(left.is_empty(), "processes left on node4: {left:?}");

    // The other nodes: untouched, etcd still the same process.
    for (n, b) in ["node1", "node2", "node3"].iter().zip(&others_before) {
        assert_eq!(&network(&tb, tb.node(n)?)?, b, "{n} changed");
    }
    assert_eq!(
        tb.node_run(node1, &["cat", "/var/lib/kscratch/run/etcd.pid"])?,
        etcd_pid
    );
    assert!(support::process_alive(etcd_pid.trim().parse().unwrap_or(0)));

    // Idempotent: a second reset changes nothing (as JSON).
    let out = kscratch(&[
        "reset",
        sc,
        "node4",
        "--known-hosts",
        khs,
        "--format",
        "json",
    ])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::new(format!("reset --format json: {e}: {}", text(&out))))?;
    assert_eq!(doc["kind"], "reset");
    matches_schema(&doc)?;
    assert_eq!(doc["totals"]["changed"], 0, "{doc:#}");
    assert_eq!(doc["totals"]["failed"], 0, "{doc:#}");
    assert_eq!(network(&tb, node4)?, after);

    // The last etcd member and control-plane node, when told: its
    // supervised etcd (the whole process group) stops, the data dir is
    // emptied (the directory stays), and node1 too is as handed over.
    let etcd_pid: u32 = etcd_pid.trim().parse().unwrap_or(0);
    let data = node1.dir.join("root/var-lib-etcd");
    assert!(
        std::fs::read_dir(&data).map(|d| d.count()).unwrap_or(0) > 0,
        "etcd wrote no data in {}",
        data.display()
    );
    let out = kscratch(&[
        "reset",
        sc,
        "node1",
        "--known-hosts",
        khs,
        "--force",
        "--delete-etcd-data",
    ])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("node1/service/etcd") && text(&out).contains("node1/etcd/data-dir"),
        "{}",
        text(&out)
    );
    assert!(
        !support::process_alive(etcd_pid),
        "etcd {etcd_pid} still runs"
    );
    let left = processes(node1)?;
    assert!(left.is_empty(), "processes left on node1: {left:?}");
    assert_eq!(
        std::fs::read_dir(&data).map(|d| d.count()).unwrap_or(99),
        0,
        "the etcd data dir is not empty"
    );
    assert_eq!(files(node1)?, node1_handed_over_files, "node1's files");
    assert_eq!(
        network(&tb, node1)?,
        node1_handed_over_net,
        "node1's network"
    );
    for (n, b) in ["node2", "node3"].iter().zip(&others_before[1..]) {
        assert_eq!(&network(&tb, tb.node(n)?)?, b, "{n} changed");
    }
    let out = kscratch(&[
        "reset",
        sc,
        "node1",
        "--known-hosts",
        khs,
        "--force",
        "--delete-etcd-data",
    ])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(", 0 changed,"),
        "a second reset of node1 changed something: {}",
        text(&out)
    );
    tb.down()
}

/// Over VXLAN: node4's neighbour and FDB entries, its routes through the
/// VTEP, `vxlan0` and `cbr0` go; its network and files are as handed over;
/// node2 keeps its own VXLAN device; a second reset changes nothing.
#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn reset_of_a_vxlan_node_removes_its_vtep_entries_and_device() -> Result<()> {
    support::require();
    check_tools()?;
    let tb = Testbed::up(
        "reset_of_a_vxlan_node_removes_its_vtep_entries_and_device",
        4,
    )?;
    let scenario = scenario_copy(&tb, "vxlan-4.yaml", 4)?;
    let sc = scenario.to_str().unwrap_or("");
    let kh = tb.description.known_hosts.clone();
    let khs = kh.to_str().unwrap_or("");
    let node4 = tb.node("node4")?;
    let node2 = tb.node("node2")?;
    let handed_over_files = files(node4)?;
    let handed_over_net = network(&tb, node4)?;
    let applied = apply_in_process(&scenario, &kh)?;
    applied.assert_no_failure()?;
    let fdb = tb.node_run(node4, &["bridge", "fdb", "show", "dev", "vxlan0"])?;
    let neigh = tb.node_run(node4, &["ip", "neigh", "show", "dev", "vxlan0"])?;
    assert!(
        fdb.contains("dst 198.51.100.1") && neigh.contains("PERMANENT"),
        "{fdb}\n{neigh}"
    );
    let node2_before = network(&tb, node2)?;
    assert!(node2_before.contains("\"vxlan0\""), "{node2_before}");

    let out = kscratch(&["reset", sc, "node4", "--known-hosts", khs])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for id in [
        "node4/net/pod-neighbors",
        "node4/net/pod-fdb",
        "node4/net/vxlan",
    ] {
        assert!(
            text(&out).contains(&format!("changed      {id} ")),
            "{id} did not change:\n{}",
            text(&out)
        );
    }
    assert_eq!(network(&tb, node4)?, handed_over_net, "node4's network");
    assert_eq!(files(node4)?, handed_over_files, "node4's files");
    assert_eq!(network(&tb, node2)?, node2_before, "node2 changed");
    let out = kscratch(&["reset", sc, "node4", "--known-hosts", khs])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(", 0 changed,"),
        "a second reset changed something: {}",
        text(&out)
    );
    tb.down()
}
