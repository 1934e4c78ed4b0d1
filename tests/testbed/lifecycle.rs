//! Node lifecycle on the real-kernel testbed (`KSCRATCH_TESTBED=1`, root):
//! a node's pod network after a reboot, and losing a control-plane node
//! behind the control-plane endpoint.
//!
//! Reboot: `scenarios/testbed/routed-4.yaml` and `vxlan-4.yaml` are applied
//! and measured (real pods, CNI, TCP). Then node2 forgets what a reboot
//! forgets (its bridge, VXLAN device, addresses, routes, nat rules,
//! `ip_forward`; its pods are gone too), its underlay address and default
//! route come back as the distribution's network configuration brings them
//! at boot, and what its init would start runs: without systemd, the
//! supervisor's `kscratch-network` run script. The pods are re-created (the
//! kubelet's job) and the matrix is measured again: every cell as converged.
//! A later apply changes nothing.
//!
//! `scenarios/testbed/ha-proxy-4.yaml` is applied: three etcd members (real
//! etcd, TLS) and the local apiserver proxy (Debian's haproxy, started by
//! the plan under the supervisor) on every node. The testbed has no
//! apiserver, so the test stands one in on each control-plane node, on the
//! apiserver's port with TLS: `socat` answering every request by reading a
//! key from etcd through all members' client URLs, as the apiserver's
//! `--etcd-servers` would (200 with the value, 503 when etcd does not
//! answer). haproxy health-checks that stand-in with the rendered
//! `GET /healthz` over TLS. Then node1 is switched off as the differential
//! tests do it (every link but `lo` down): the other nodes' requests through
//! 127.0.0.1:6443 must all be answered from etcd again, and the simulator's
//! apiserver check, for the same scenario and fault, passes.

use super::apply::{apply_in_process, check_tools, probe_cluster, scenario_copy};
use super::support::{self, Error, Result, Testbed};
use kscratch_core::scenario::Fault;
use kscratch_sim::checks::CheckKind;
use std::time::{Duration, Instant};

/// The stand-in apiserver: reads the request, answers from etcd.
const STAND_IN: &str = r#"#!/bin/sh
# A stand-in for the apiserver (the testbed has none): every request is
# answered from etcd through all members, as the apiserver reads it.
read -r _method _path _version
while read -r line; do
  [ "$(printf %s "$line" | tr -d '\r')" = "" ] && break
done
e=/srv/kubernetes/etcd
if v=$(etcdctl --endpoints="$ETCD_SERVERS" --cacert=$e/ca.crt --cert=$e/server.crt --key=$e/server.key \
    --dial-timeout=1s --command-timeout=3s get /kscratch/endpoint --print-value-only 2>/dev/null) && [ -n "$v" ]; then
  printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n%s from %s\n' "$v" "$(hostname)"
else
  printf 'HTTP/1.0 503 Service Unavailable\r\n\r\netcd does not answer\n'
fi
"#;

const ETCD_SERVERS: &str =
    "https://198.51.100.1:2379,https://198.51.100.2:2379,https://198.51.100.3:2379";

fn io(e: std::io::Error) -> Error {
    Error::new(e.to_string())
}

/// One request through the endpoint on `node`: the body when answered 200.
fn through_endpoint(tb: &Testbed, node: &str) -> Result<std::result::Result<String, String>> {
    let n = tb.node(node)?;
    let out = tb.node_exec(
        n,
        &[
            "curl",
            "-sS",
            "-k",
            "--max-time",
            "8",
            "-w",
            "\n%{http_code}",
            "https://127.0.0.1:6443/kscratch",
        ],
    )?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = said.lines().last().unwrap_or("").to_string();
    Ok(if out.status.success() && code == "200" {
        Ok(said.lines().next().unwrap_or("").to_string())
    } else {
        Err(format!(
            "{} {}",
            said.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })
}

/// Waits until `want` consecutive requests through the endpoint on each of
/// `nodes` are answered from etcd; returns how long that took, and which
/// control-plane nodes answered.
/// Requests through every node's proxy until `want` rounds in a row are all
/// answered, by at least `servers` different apiservers: haproxy marks a
/// server that failed its first checks (its stand-in was not up yet) down
/// until it passes `rise` checks, so a round robin over all of them is
/// only seen once the checks settled.
fn wait_all_answered(
    tb: &Testbed,
    nodes: &[&str],
    want: usize,
    servers: usize,
    limit: Duration,
) -> Result<(Duration, Vec<String>)> {
    let started = Instant::now();
    let mut answered_by = std::collections::BTreeSet::new();
    let mut streak = 0;
    let mut last = String::new();
    while streak < want * nodes.len() || answered_by.len() < servers {
        if started.elapsed() > limit {
            return Err(Error::new(format!(
                "requests through 127.0.0.1:6443 were not all answered by {servers} apiservers within {limit:?}; answered by {answered_by:?}; last error: {last}"
            )));
        }
        for node in nodes {
            match through_endpoint(tb, node)? {
                Ok(body) => {
                    if !body.starts_with("survived from ") {
                        return Err(Error::new(format!("{node}: unexpected answer `{body}`")));
                    }
                    answered_by.insert(body.trim_start_matches("survived from ").to_string());
                    streak += 1;
                }
                Err(e) => {
                    last = format!("{node}: {e}");
                    streak = 0;
                    answered_by.clear();
                }
            }
        }
    }
    Ok((started.elapsed(), answered_by.into_iter().collect()))
}

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn etcd_answers_through_the_local_apiserver_proxy_after_losing_a_member_node() -> Result<()> {
    support::require();
    check_tools()?;
    for tool in ["/usr/sbin/haproxy", "/usr/bin/socat", "/usr/bin/curl"] {
        if !std::path::Path::new(tool).exists() {
            return Err(Error::new(format!(
                "{}=1 but {tool} is missing (Debian packages haproxy, socat, curl)",
                support::ENABLE_VAR
            )));
        }
    }
    let tb = Testbed::up(
        "etcd_answers_through_the_local_apiserver_proxy_after_losing_a_member_node",
        4,
    )?;
    let scenario = scenario_copy(&tb, "ha-proxy-4.yaml", 4)?;
    let kh = tb.description.known_hosts.clone();
    let applied = apply_in_process(&scenario, &kh)?;
    applied.print_figures("ha-proxy, 4 nodes, first apply");
    applied.assert_no_failure()?;
    for node in ["node1", "node2", "node3", "node4"] {
        assert_eq!(
            applied.outcome(&format!("{node}/service/apiserver-proxy")),
            "changed",
            "{node}'s proxy"
        );
    }
    for node in ["node1", "node2", "node3"] {
        assert_eq!(applied.outcome(&format!("{node}/service/etcd")), "changed");
    }
    // A second apply changes nothing: the supervised proxy runs this very
    // command, and preflight accepts the port it holds.
    let again = apply_in_process(&scenario, &kh)?;
    again.assert_no_failure()?;
    let changed: Vec<String> = again
        .plan
        .steps
        .iter()
        .map(|s| again.plan.step_id(s))
        .filter(|id| again.outcome(id) == "changed")
        .collect();
    assert!(changed.is_empty(), "a second apply changed {changed:?}");
    assert_eq!(again.outcome("node4/service/apiserver-proxy"), "ok");

    // Three members, all healthy; a key to read back.
    let node1 = tb.node("node1")?;
    let e = "/srv/kubernetes/etcd";
    let etcdctl = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "etcdctl".to_string(),
            format!("--endpoints={ETCD_SERVERS}"),
            format!("--cacert={e}/ca.crt"),
            format!("--cert={e}/server.crt"),
            format!("--key={e}/server.key"),
            "--dial-timeout=2s".into(),
            "--command-timeout=5s".into(),
        ]
        .to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let health = tb.node_exec(node1, &etcdctl(&["endpoint", "health"]))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    assert_eq!(said.matches("is healthy").count(), 3, "{said}");
    tb.node_run(node1, &etcdctl(&["put", "/kscratch/endpoint", "survived"]))?;

    // The stand-in apiserver on every control-plane node, on port 443 with TLS.
    let script = tb.description.dir.join("stand-in-apiserver.sh");
    std::fs::write(&script, STAND_IN).map_err(io)?;
    let mut stand_ins = Vec::new();
    for node in ["node1", "node2", "node3"] {
        let n = tb.node(node)?;
        stand_ins.push(tb.node_spawn(
            n,
            &[
                "env".to_string(),
                format!("ETCD_SERVERS={ETCD_SERVERS}"),
                "socat".into(),
                format!("OPENSSL-LISTEN:443,reuseaddr,fork,cert={e}/server.crt,key={e}/server.key,verify=0"),
                format!("SYSTEM:sh {}", script.display()),
            ],
        )?);
    }

    // Before: every node's requests through its proxy are answered, by
    // every control-plane node in turn (round robin over healthy servers).
    let all = ["node1", "node2", "node3", "node4"];
    let (t, by) = wait_all_answered(&tb, &all, 6, 3, Duration::from_secs(60))?;
    println!("before: every node answered through 127.0.0.1:6443 after {t:?}, by {by:?}");
    assert_eq!(
        by,
        ["node1", "node2", "node3"],
        "round robin over the three"
    );

    // node1 is switched off: every link but lo goes down.
    let links = tb.run_in(&node1.netns, &["ip", "-o", "link", "show", "up"])?;
    for l in links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .filter(|n| *n != "lo")
    {
        tb.run_in(&node1.netns, &["ip", "link", "set", "dev", l, "down"])?;
    }
    let rest = ["node2", "node3", "node4"];
    let (t, by) = wait_all_answered(&tb, &rest, 10, 1, Duration::from_secs(90))?;
    println!(
        "after node1 went down: every remaining node answered from etcd through 127.0.0.1:6443 again after {t:?}, by {by:?}"
    );
    assert!(!by.contains(&"node1".to_string()), "{by:?}");
    // etcd itself: two of three members answer, quorum holds, writes work.
    let node2 = tb.node("node2")?;
    let health = tb.node_exec(node2, &etcdctl(&["endpoint", "health"]))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    assert_eq!(said.matches("is healthy").count(), 2, "{said}");
    tb.node_run(node2, &etcdctl(&["put", "/kscratch/after", "quorum"]))?;

    // The simulator says the same for the same scenario and fault.
    let text = std::fs::read_to_string(&scenario).map_err(io)?;
    let s = kscratch_core::load("ha-proxy-4.yaml", &text, None)
        .map_err(|d| Error::new(d.to_string()))?
        .scenario;
    let sim = kscratch_sim::check(
        &s,
        &kscratch_core::plan::plan(&s),
        &kscratch_sim::CheckOptions {
            faults: vec![Fault::parse("node-down:node1").map_err(Error::new)?],
            ..Default::default()
        },
    )
    .map_err(|e| Error::new(e.to_string()))?;
    let api = sim
        .checks
        .iter()
        .find(|c| c.kind == CheckKind::Apiserver)
        .ok_or_else(|| Error::new("no apiserver check"))?;
    assert!(api.passed(), "the simulator disagrees:\n{sim}");

    for mut c in stand_ins {
        let _ = c.kill();
        let _ = c.wait();
    }
    tb.down()
}

/// Runs `argv` in node `name`'s network namespace; its stdout.
fn in_node(tb: &Testbed, name: &str, argv: &[&str]) -> Result<String> {
    let ns = tb.node(name)?.netns.clone();
    tb.run_in(&ns, argv)
}

fn reboot_restores_the_matrix(file: &str) -> Result<()> {
    support::require();
    check_tools()?;
    let label = format!(
        "a_rebooted_node_gets_its_pod_network_back_{}",
        file.trim_end_matches(".yaml").replace('-', "_")
    );
    let tb = Testbed::up(&label, 4)?;
    let scenario = scenario_copy(&tb, file, 4)?;
    let kh = tb.description.known_hosts.clone();
    let applied = apply_in_process(&scenario, &kh)?;
    applied.assert_no_failure()?;
    assert_eq!(applied.outcome("node2/service/network"), "changed");

    // Converged: measured, every cell reached without NAT, egress masqueraded.
    let pods = probe_cluster(&tb, &applied)?;
    for p in &pods {
        tb.delete_pod(p)?;
    }

    // node2 reboots: the kernel forgets what kscratch set up.
    let vxlan = file.starts_with("vxlan");
    let eth0 = in_node(
        &tb,
        "node2",
        &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
    )?;
    let addr = eth0
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .ok_or_else(|| Error::new(format!("no IPv4 address on node2's eth0: {eth0}")))?
        .to_string();
    let default = in_node(&tb, "node2", &["ip", "route", "show", "default"])?;
    let gateway = default
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .ok_or_else(|| Error::new(format!("no default route on node2: {default}")))?
        .to_string();
    in_node(&tb, "node2", &["ip", "link", "del", "cbr0"])?;
    if vxlan {
        in_node(&tb, "node2", &["ip", "link", "del", "vxlan0"])?;
    }
    in_node(&tb, "node2", &["ip", "addr", "flush", "dev", "eth0"])?;
    in_node(&tb, "node2", &["ip", "route", "flush", "table", "main"])?;
    in_node(&tb, "node2", &["iptables", "-w", "-t", "nat", "-F"])?;
    in_node(&tb, "node2", &["iptables", "-w", "-t", "nat", "-X"])?;
    in_node(
        &tb,
        "node2",
        &["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"],
    )?;
    // Boot: the distribution's network configuration brings the underlay
    // address and the default route back, as the machine was handed over.
    in_node(&tb, "node2", &["ip", "addr", "add", &addr, "dev", "eth0"])?;
    in_node(
        &tb,
        "node2",
        &[
            "ip", "route", "add", "default", "via", &gateway, "dev", "eth0",
        ],
    )?;
    let routes = in_node(&tb, "node2", &["ip", "route", "show"])?;
    assert!(
        !routes.contains("10.10.") && !routes.contains("cbr0"),
        "the reboot left pod routes: {routes}"
    );
    // Init: no systemd here, so the supervisor's run script of the oneshot.
    let node2 = tb.node("node2")?;
    let t = Instant::now();
    tb.node_run(node2, &["sh", "/var/lib/kscratch/run/kscratch-network.run"])?;
    println!(
        "[{file}] kscratch-network restored node2's pod network in {:?}",
        t.elapsed()
    );

    // The kubelet's part: the pods come back; the matrix is as converged.
    let pods = probe_cluster(&tb, &applied)?;
    println!("[{file}] after node2's reboot: the matrix equals the converged one");
    // And a later apply changes nothing.
    let again = apply_in_process(&scenario, &kh)?;
    again.assert_no_failure()?;
    let changed: Vec<String> = again
        .plan
        .steps
        .iter()
        .map(|s| again.plan.step_id(s))
        .filter(|id| again.outcome(id) == "changed")
        .collect();
    assert!(
        changed.is_empty(),
        "[{file}] a later apply changed {changed:?}"
    );
    drop(pods);
    tb.down()
}

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn a_rebooted_routed_node_gets_its_pod_network_back() -> Result<()> {
    reboot_restores_the_matrix("routed-4.yaml")
}

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn a_rebooted_vxlan_node_gets_its_pod_network_back() -> Result<()> {
    reboot_restores_the_matrix("vxlan-4.yaml")
}
