//! A changed input restarts its service on real machines, and only then
//! (issue 11 §3): the testbed's one long-running kscratch service is etcd,
//! under the init-system–free supervisor on node1.

use super::apply::{check_tools, scenario_copy};
use super::support::{self, Error, Result, Testbed};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs the kscratch binary as CI does; its exit code and both streams.
fn apply(scenario: &Path, known_hosts: &Path) -> Result<(Option<i32>, String)> {
    let out = support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kscratch"))
            .args(["apply", "--known-hosts"])
            .arg(known_hosts)
            .arg(scenario)
            .env("CI", "1"),
        Duration::from_secs(600),
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

/// node1's etcd: the daemon's PID (a child of the supervisor, in its
/// process group) and its command line.
fn etcd(tb: &Testbed) -> Result<(u32, String)> {
    let node = tb.node("node1")?;
    let pid = tb.node_run(
        node,
        &[
            "sh",
            "-c",
            "pgrep -g \"$(cat /var/lib/kscratch/run/etcd.pid)\" -x etcd",
        ],
    )?;
    let pids: Vec<u32> = pid
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let [pid] = pids[..] else {
        return Err(Error::new(format!(
            "expected one etcd under the supervisor, found {pid:?}"
        )));
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|e| Error::new(format!("/proc/{pid}/cmdline: {e}")))?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    Ok((pid, cmdline))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn a_changed_etcd_flag_restarts_etcd_with_it_and_a_converged_apply_restarts_nothing() -> Result<()>
{
    support::require();
    check_tools()?;
    let tb = Testbed::up("restart_on_change", 4)?;
    let scenario = scenario_copy(&tb, "routed-4.yaml", 4)?;
    let kh = tb.description.known_hosts.clone();

    let (code, out) = apply(&scenario, &kh)?;
    assert_eq!(code, Some(0), "first apply:\n{out}");
    let (first, cmd) = etcd(&tb)?;
    assert!(cmd.contains("--data-dir=/var/lib/etcd "), "{cmd}");

    // Converged: nothing changes, nothing restarts, no rollout.
    let (code, out) = apply(&scenario, &kh)?;
    assert_eq!(code, Some(0), "second apply:\n{out}");
    assert!(out.contains(" 0 changed,"), "{out}");
    assert!(!out.contains("rolling the change out"), "{out}");
    assert_eq!(etcd(&tb)?.0, first, "a converged apply restarted etcd");

    // A changed flag: etcd's unit is rewritten and etcd restarts, once, in
    // the rollout's etcd wave, and runs with the new flag.
    let text = std::fs::read_to_string(&scenario).map_err(|e| Error::new(e.to_string()))?;
    let changed = text.replace(
        "etcd:\n  runAs: service",
        "etcd:\n  runAs: service\n  dataDir: /var/lib/etcd/v2",
    );
    assert_ne!(
        changed, text,
        "the scenario has the etcd section this test edits"
    );
    std::fs::write(&scenario, changed).map_err(|e| Error::new(e.to_string()))?;
    let (code, out) = apply(&scenario, &kh)?;
    assert_eq!(code, Some(0), "apply of the change:\n{out}");
    assert!(out.contains("rolling the change out"), "{out}");
    assert!(
        out.contains("wave 1/") && out.contains(": etcd on node1\n"),
        "{out}"
    );
    let (second, cmd) = etcd(&tb)?;
    assert_ne!(second, first, "etcd was not restarted");
    assert!(!alive(first), "the old etcd (PID {first}) still runs");
    assert!(cmd.contains("--data-dir=/var/lib/etcd/v2"), "{cmd}");

    // And converged again: the restarted etcd keeps running.
    let (code, out) = apply(&scenario, &kh)?;
    assert_eq!(code, Some(0), "apply after the change:\n{out}");
    assert!(out.contains(" 0 changed,"), "{out}");
    assert_eq!(etcd(&tb)?.0, second);
    tb.down()
}
