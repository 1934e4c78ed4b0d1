//! `kscratch verify` on the real-kernel testbed: the product command
//! measures the applied cluster over SSH (probes attached by the nodes' own
//! CNI config and plugins, real TCP connections) and holds it against the
//! simulator's prediction.
//!
//! - After apply, every cell agrees and verify exits 0.
//! - After a fault done to the real nodes with `kscratch apply --fault F
//!   --break-my-cluster`, verify exits 1 naming exactly the cells the fault
//!   breaks; with `--fault F` the prediction agrees with every cell again.
//! - Bad input (an unknown node in `--fault`, an egress target that is not
//!   IP:PORT, a node that cannot be reached) exits 2 and creates nothing.
//! - After every run nothing is left on any node: no namespace, no
//!   host-local allocation, no listener, no state directory.

use super::apply::{check_tools, scenario_copy};
use super::support::{self, Error, Result, Testbed};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn verify_routed_8_nodes_agrees_then_names_exactly_the_cells_a_fault_breaks() -> Result<()> {
    support::require();
    check_tools()?;
    let tb = Testbed::up(
        "verify_routed_8_nodes_agrees_then_names_exactly_the_cells_a_fault_breaks",
        8,
    )?;
    let path = scenario_copy(&tb, "routed-4.yaml", 8)?;
    let kh = tb.description.known_hosts.display().to_string();
    let scenario = path.display().to_string();
    apply(&scenario, &kh, &[])?;

    // Bad input first: exit 2, a clear message, nothing made on any node.
    let out = kscratch(&[
        "verify",
        &scenario,
        "--known-hosts",
        &kh,
        "--fault",
        "route-missing:node9:node1",
    ])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("node9"), "{}", text(&out.stderr));
    let out = kscratch(&[
        "verify",
        &scenario,
        "--known-hosts",
        &kh,
        "--egress-target",
        "203.0.113.10",
    ])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--egress-target \"203.0.113.10\" is not IP:PORT"),
        "{}",
        text(&out.stderr)
    );
    nothing_left(&tb)?;

    // The converged cluster: every cell agrees, exit 0. Timed: 8 nodes.
    let started = Instant::now();
    let out = kscratch(&["verify", &scenario, "--known-hosts", &kh])?;
    let wall = started.elapsed();
    let report = text(&out.stdout);
    println!("{report}");
    println!(
        "[verify, routed, 8 nodes, 2 probes per node] {:.2} s wall (the kscratch process)",
        wall.as_secs_f64()
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report}\n{}",
        text(&out.stderr)
    );
    assert!(report.contains("verdict: PASS"), "{report}");
    nothing_left(&tb)?;
    let v = verify_json(&scenario, &kh, &[])?;
    assert_eq!(v.code, Some(0), "{}\n{}", v.stderr, v.wrong());
    assert_eq!(v.doc["schemaVersion"], 1);
    assert_eq!(v.doc["kind"], "verify");
    matches_schema(&tb, &v.doc)?;
    // 16 probes: every probe to every probe, and each node to its 2 probes.
    assert_eq!(v.cells().len(), 16 * 16 + 16, "{}", v.doc);
    assert!(v.disagreeing().is_empty(), "{:?}", v.disagreeing());
    // Pod-MTU datagrams: each node's first probe to every other node's.
    assert_eq!(v.doc["mtu"].as_array().map(Vec::len), Some(8 * 7));
    assert!(v.mtu_disagreeing().is_empty(), "{}", v.wrong());
    for c in v.cells() {
        if c["from"].as_str().is_some_and(|f| f.contains('/')) {
            assert_eq!(
                c["real"]["peer"], "sender",
                "pods see each other's own address: {c}"
            );
        }
    }
    let notes = v.doc["notMeasured"].to_string();
    assert!(
        notes.contains("not measurable here: kube-proxy not running"),
        "{notes}"
    );
    nothing_left(&tb)?;

    // node1 loses its route to node3's pods, on the real node.
    let fault = "route-missing:node1:node3";
    apply(&scenario, &kh, &["--fault", fault, "--break-my-cluster"])?;
    let v = verify_json(&scenario, &kh, &[])?;
    assert_eq!(v.code, Some(1), "{}", v.stderr);
    matches_schema(&tb, &v.doc)?;
    let broken: BTreeSet<(String, String)> = v.disagreeing().into_iter().collect();
    let mut expected = BTreeSet::new();
    for i in 0..2 {
        for j in 0..2 {
            expected.insert((format!("node1/p{i}"), format!("node3/p{j}")));
            expected.insert((format!("node3/p{j}"), format!("node1/p{i}")));
        }
    }
    assert_eq!(
        broken,
        expected,
        "the cells the fault breaks:\n{}",
        v.wrong()
    );
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        v.mtu_disagreeing(),
        BTreeSet::from([pair("node1/p0", "node3/p0"), pair("node3/p0", "node1/p0")]),
        "{}",
        v.wrong()
    );
    for c in v.cells().iter().filter(|c| c["agrees"] == false) {
        assert_eq!(c["real"]["verdict"], "fails", "{c}");
        assert_eq!(c["predicted"]["verdict"], "reaches", "{c}");
        assert!(
            c["trace"]
                .as_str()
                .is_some_and(|t| t.starts_with("trace node")),
            "{c}"
        );
    }
    let out = kscratch(&["verify", &scenario, "--known-hosts", &kh])?;
    let report = text(&out.stdout);
    assert!(
        report.contains("! node1/p0 → node3/p1: real: fails; predicted: reaches"),
        "{report}"
    );
    assert!(report.contains("the prediction's trace:"), "{report}");
    nothing_left(&tb)?;

    // With the same fault, the prediction agrees with every cell again; the
    // cluster still fails its check, so the exit status stays 1.
    let v = verify_json(&scenario, &kh, &["--fault", fault])?;
    assert_eq!(v.code, Some(1), "{}", v.stderr);
    assert!(v.disagreeing().is_empty(), "{:?}", v.disagreeing());
    assert!(v.mtu_disagreeing().is_empty(), "{}", v.wrong());
    assert_eq!(v.doc["predictionPassed"], false);
    nothing_left(&tb)?;

    // node4's NIC gets a 1400-byte MTU: small packets still pass, pod-MTU
    // packets to and from node4 do not.
    let mtu = "underlay-mtu:node4:1400";
    apply(&scenario, &kh, &["--fault", mtu, "--break-my-cluster"])?;
    let v = verify_json(&scenario, &kh, &["--fault", fault])?;
    assert_eq!(v.code, Some(1), "{}", v.stderr);
    assert!(v.disagreeing().is_empty(), "{}", v.wrong());
    let mut expected = BTreeSet::new();
    for k in [1, 2, 3, 5, 6, 7, 8] {
        expected.insert(pair("node4/p0", &format!("node{k}/p0")));
        expected.insert(pair(&format!("node{k}/p0"), "node4/p0"));
    }
    assert_eq!(v.mtu_disagreeing(), expected, "{}", v.wrong());
    let v = verify_json(&scenario, &kh, &["--fault", fault, "--fault", mtu])?;
    assert!(v.disagreeing().is_empty(), "{}", v.wrong());
    assert!(v.mtu_disagreeing().is_empty(), "{}", v.wrong());
    nothing_left(&tb)?;

    // A node that cannot be reached: exit 2, nothing made on the others.
    let nine = scenario_copy(&tb, "routed-4.yaml", 9)?;
    let out = kscratch(&[
        "verify",
        &nine.display().to_string(),
        "--known-hosts",
        &kh,
        "--connect-timeout",
        "2",
    ])?;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("node9") && err.contains("nothing was created on any node"),
        "{err}"
    );
    nothing_left(&tb)?;
    tb.down()
}

#[test]
#[ignore = "needs KSCRATCH_TESTBED=1 and root"]
fn verify_vxlan_agrees_with_and_without_a_fault() -> Result<()> {
    support::require();
    check_tools()?;
    let tb = Testbed::up("verify_vxlan_agrees_with_and_without_a_fault", 4)?;
    let path = scenario_copy(&tb, "vxlan-4.yaml", 4)?;
    let kh = tb.description.known_hosts.display().to_string();
    let scenario = path.display().to_string();
    // `apply --verify`: exit 0 only when verify agrees after the apply.
    apply(&scenario, &kh, &["--verify"])?;
    let v = verify_json(&scenario, &kh, &[])?;
    assert_eq!(v.code, Some(0), "{}\n{}", v.stderr, v.wrong());
    assert_eq!(v.cells().len(), 8 * 8 + 8);
    nothing_left(&tb)?;

    // FORWARD DROP on node2: its pods lose every other node, and (bridged
    // traffic passes FORWARD with br_netfilter) each other too.
    let fault = "forward-drop:node2";
    // The damage, verified against the prediction with the same fault:
    // every cell as predicted, and the prediction fails its checks (exit 1).
    let out = kscratch(&[
        "apply",
        &scenario,
        "--known-hosts",
        &kh,
        "--fault",
        fault,
        "--break-my-cluster",
        "--verify",
    ])?;
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}{}", text(&out.stderr));
    assert!(
        said.contains("verdict: FAIL: the real cluster behaves as predicted, and the prediction fails a check"),
        "{said}"
    );
    let broken = verify_json(&scenario, &kh, &[])?;
    assert_eq!(broken.code, Some(1), "{}", broken.stderr);
    let cells = broken.disagreeing();
    println!(
        "[verify, vxlan-4, {fault}] {} cells disagree without --fault: {cells:?}",
        cells.len()
    );
    assert!(!cells.is_empty());
    assert!(
        cells
            .iter()
            .all(|(f, t)| f.starts_with("node2/") || t.starts_with("node2/")),
        "{cells:?}"
    );
    let v = verify_json(&scenario, &kh, &["--fault", fault])?;
    assert!(v.disagreeing().is_empty(), "{:?}", v.disagreeing());
    nothing_left(&tb)?;

    // Ctrl-C while the probes are being made: everything is removed, exit 130.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kscratch"))
        .args(["verify", &scenario, "--known-hosts", &kh])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Path::new("/run/kscratch-verify")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
    {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            return Err(Error::new("verify made no probe within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .map_err(|e| Error::new(e.to_string()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| Error::new(e.to_string()))?;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted: removing what verify made"),
        "{err}"
    );
    nothing_left(&tb)?;
    tb.down()
}

struct VerifyRun {
    code: Option<i32>,
    doc: serde_json::Value,
    stderr: String,
}

impl VerifyRun {
    fn cells(&self) -> Vec<serde_json::Value> {
        self.doc["cells"].as_array().cloned().unwrap_or_default()
    }
    /// The pod-MTU cells that disagree.
    fn mtu_disagreeing(&self) -> BTreeSet<(String, String)> {
        self.doc["mtu"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|c| c["agrees"] == false)
            .map(|c| {
                (
                    c["from"].as_str().unwrap_or("").to_string(),
                    c["to"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
    /// The cells that disagree, whole, for failure messages.
    fn wrong(&self) -> String {
        self.cells()
            .iter()
            .chain(self.doc["mtu"].as_array().into_iter().flatten())
            .filter(|c| c["agrees"] == false)
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
    fn disagreeing(&self) -> Vec<(String, String)> {
        self.cells()
            .iter()
            .filter(|c| c["agrees"] == false)
            .map(|c| {
                (
                    c["from"].as_str().unwrap_or("").to_string(),
                    c["to"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

fn verify_json(scenario: &str, kh: &str, extra: &[&str]) -> Result<VerifyRun> {
    let mut args = vec!["verify", scenario, "--known-hosts", kh, "--format", "json"];
    args.extend_from_slice(extra);
    let out = kscratch(&args)?;
    let doc = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::new(format!(
            "verify --format json printed no JSON ({e}): {}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        ))
    })?;
    Ok(VerifyRun {
        code: out.status.code(),
        doc,
        stderr: text(&out.stderr),
    })
}

fn apply(scenario: &str, kh: &str, extra: &[&str]) -> Result<()> {
    let mut args = vec!["apply", scenario, "--known-hosts", kh];
    args.extend_from_slice(extra);
    let out = kscratch(&args)?;
    if out.status.code() != Some(0) {
        return Err(Error::new(format!(
            "kscratch {}: {:?}\n{}\n{}",
            args.join(" "),
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        )));
    }
    Ok(())
}

/// Nothing of any verify run on any node: state directories, namespaces
/// (seen from the node and from the host), host-local allocations held by a
/// probe, listener processes.
fn nothing_left(tb: &Testbed) -> Result<()> {
    let check = "ls -A /run/kscratch-verify 2>/dev/null | sed 's/^/dir /'; \
                 ip netns list | grep ksv- | sed 's/^/netns /'; \
                 grep -rl ksv- /var/lib/cni/networks 2>/dev/null | sed 's/^/allocation /'; \
                 ps -eo pid=,args= | grep -F '#ksv-' | grep -v grep | sed 's/^/process /'; true";
    let mut left = Vec::new();
    for node in tb.nodes() {
        let out = tb.node_run(node, &["sh", "-c", check])?;
        left.extend(out.lines().map(|l| format!("{}: {l}", node.name)));
    }
    left.extend(
        support::list_netns()?
            .into_iter()
            .filter(|n| n.starts_with("ksv-"))
            .map(|n| format!("host: netns {n}")),
    );
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::new(format!("verify left:\n{}", left.join("\n"))))
    }
}

/// `doc` matches `docs/schema/verify.schema.json` (python3-jsonschema, which
/// `.ci/run` installs; missing, it is an error here, never a skip).
fn matches_schema(tb: &Testbed, doc: &serde_json::Value) -> Result<()> {
    let file = tb.description.dir.join("verify.json");
    std::fs::write(&file, doc.to_string()).map_err(|e| Error::new(e.to_string()))?;
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/schema/verify.schema.json");
    let script = "import json,sys,jsonschema\n\
        s=json.load(open(sys.argv[1])); d=json.load(open(sys.argv[2]))\n\
        v=jsonschema.validators.validator_for(s)(s)\n\
        errs=list(v.iter_errors(d))\n\
        [print(list(e.path), e.message) for e in errs]\n\
        sys.exit(1 if errs else 0)";
    let out = support::run_bounded(
        Command::new("python3")
            .args(["-c", script])
            .arg(&schema)
            .arg(&file),
        Duration::from_secs(30),
    )?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "verify --format json does not match {}:\n{}{}",
            schema.display(),
            text(&out.stdout),
            text(&out.stderr)
        )))
    }
}

fn kscratch(args: &[&str]) -> Result<Output> {
    support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kscratch"))
            .args(args)
            .env("CI", "1"),
        Duration::from_secs(300),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
