//! CI outputs: JSON against docs/schema, SARIF, JUnit against its XSD, the
//! HTML report in a real browser, the codes list, and no side effects.

use crate::support::{root, tempdir};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

fn kscratch(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kscratch"))
        .args(args)
        .current_dir(dir)
        .env_remove("NO_COLOR")
        .output()
        .expect("run kscratch")
}

/// Whether an external tool is there. Under `CI=true` a missing tool is a
/// failure (`.ci/run` installs it); elsewhere the test says it skipped.
fn tool(name: &str, probe: &mut Command) -> bool {
    let ok = probe.output().is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{name} is missing; .ci/run installs it");
        }
        eprintln!("skipped: {name} is not installed");
    }
    ok
}

fn has_jsonschema() -> bool {
    tool(
        "python3-jsonschema",
        Command::new("python3").args(["-c", "import jsonschema"]),
    )
}

/// Validates `doc` against `docs/schema/<schema>` with python3-jsonschema.
fn assert_schema(schema: &str, doc: &[u8], what: &str) {
    if let Err(e) = crate::support::schema_errors(schema, doc) {
        panic!("{what} {e}");
    }
}

/// A fresh directory of its own for each call (tests run in parallel).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// validate, check and trace never write; plan writes the lock and says so in one line.
#[test]
fn read_only_commands_write_nothing_and_plan_writes_the_lock() {
    let dir = tempdir("ro");
    std::fs::copy(
        root().join("scenarios/guide-routed.yaml"),
        dir.join("s.yaml"),
    )
    .unwrap();
    let before = snapshot(&dir);
    for args in [
        &["validate", "s.yaml"][..],
        &["validate", "s.yaml", "--format", "json"],
        &["check", "s.yaml"],
        &[
            "trace",
            "s.yaml",
            "--from",
            "node-1/probe-a",
            "--to",
            "node-2/probe-a",
        ],
    ] {
        let out = kscratch(args, &dir);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.matches("warning[KS3003]").count(),
            1,
            "{args:?} warns once:\n{err}"
        );
        assert!(
            err.contains("run `kscratch plan s.yaml` once and commit s.ipam.lock"),
            "{err}"
        );
        assert!(!err.contains("wrote"), "{args:?} wrote something:\n{err}");
        assert_eq!(snapshot(&dir), before, "{args:?} changed the directory");
    }
    let out = kscratch(&["plan", "s.yaml"], &dir);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("allocated 4 new pod CIDRs; wrote s.ipam.lock\n"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("allocated")).count(),
        1,
        "one line, not one per node:\n{err}"
    );
    assert!(dir.join("s.ipam.lock").exists());
    // Now locked: nothing to say, nothing to write.
    let after_plan = snapshot(&dir);
    let out = kscratch(&["check", "s.yaml", "--locked", "-v"], &dir);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(snapshot(&dir), after_plan);
    // A removed node: the read-only command warns, plan releases, -v lists it.
    let text = std::fs::read_to_string(dir.join("s.yaml")).unwrap();
    let cut = text.find("  - name: node-3").unwrap();
    let end = text[cut..].find("network:").unwrap() + cut;
    std::fs::write(
        dir.join("s.yaml"),
        format!("{}{}", &text[..cut], &text[end..]),
    )
    .unwrap();
    let before = snapshot(&dir);
    let out = kscratch(&["validate", "s.yaml"], &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning[KS3004]: s.ipam.lock is out of date (released 1); not written"),
        "{err}"
    );
    assert_eq!(snapshot(&dir), before);
    let out = kscratch(&["plan", "s.yaml", "-v"], &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "released 1; wrote s.ipam.lock\n  released 10.10.3.0/24 (node node-3 is gone)"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_outputs_match_their_published_schemas() {
    let dir = root();
    let valid = kscratch(
        &[
            "validate",
            "scenarios/guide-routed.yaml",
            "--locked",
            "--format",
            "json",
        ],
        &dir,
    );
    assert!(valid.status.success());
    let invalid = kscratch(
        &[
            "validate",
            "scenarios/invalid/every-kind.yaml",
            "--format",
            "json",
        ],
        &dir,
    );
    assert_eq!(invalid.status.code(), Some(2));
    let invalid_check = kscratch(
        &[
            "check",
            "scenarios/invalid/bad-addresses.yaml",
            "--format",
            "json",
        ],
        &dir,
    );
    assert_eq!(invalid_check.status.code(), Some(2));
    assert!(invalid_check
        .stdout
        .starts_with(b"{\n  \"schemaVersion\": 1,\n  \"kind\": \"validation\""));
    let check = kscratch(
        &[
            "check",
            "scenarios/faults/route-missing.yaml",
            "--locked",
            "--format",
            "json",
        ],
        &dir,
    );
    assert_eq!(check.status.code(), Some(1));
    let passing = kscratch(
        &[
            "check",
            "scenarios/vxlan-overlay.yaml",
            "--locked",
            "--format",
            "json",
        ],
        &dir,
    );
    assert_eq!(passing.status.code(), Some(0));
    let trace = kscratch(
        &[
            "trace",
            "scenarios/guide-routed.yaml",
            "--locked",
            "--from",
            "node-1/probe-a",
            "--to",
            "svc:kscratch/probe",
            "--format",
            "json",
        ],
        &dir,
    );
    assert!(
        trace.status.success(),
        "{}",
        String::from_utf8_lossy(&trace.stderr)
    );
    let plan = kscratch(
        &[
            "plan",
            "scenarios/https-ha.yaml",
            "--locked",
            "--format",
            "json",
        ],
        &dir,
    );
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let diff = kscratch(
        &[
            "diff",
            "scenarios/guide-routed.yaml",
            "scenarios/diff/node-added.yaml",
            "--format",
            "json",
        ],
        &dir,
    );
    assert_eq!(
        diff.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    let rollout = kscratch(
        &[
            "check",
            "scenarios/diff/max-pods.yaml",
            "--from",
            "scenarios/guide-routed.yaml",
            "--format",
            "json",
        ],
        &dir,
    );
    assert_eq!(
        rollout.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rollout.stderr)
    );
    let removal = kscratch(
        &[
            "check",
            "scenarios/diff/node-removed.yaml",
            "--from",
            "scenarios/guide-routed.yaml",
            "--format",
            "json",
        ],
        &dir,
    );
    assert_eq!(
        removal.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&removal.stderr)
    );
    for (doc, _) in [
        (&removal, ""),
        (&rollout, ""),
        (&diff, ""),
        (&plan, ""),
        (&valid, ""),
        (&invalid, ""),
        (&check, ""),
        (&passing, ""),
        (&trace, ""),
    ] {
        let v: serde_json::Value = serde_json::from_slice(&doc.stdout).expect("JSON");
        assert_eq!(v["schemaVersion"], 1);
    }
    if !has_jsonschema() {
        return;
    }
    assert_schema("validation.schema.json", &valid.stdout, "validate (valid)");
    assert_schema(
        "validation.schema.json",
        &invalid.stdout,
        "validate (invalid)",
    );
    assert_schema(
        "validation.schema.json",
        &invalid_check.stdout,
        "check on an invalid scenario",
    );
    assert_schema("check.schema.json", &check.stdout, "check (fault)");
    assert_schema("check.schema.json", &passing.stdout, "check (passing)");
    assert_schema("trace.schema.json", &trace.stdout, "trace");
    assert_schema("plan.schema.json", &plan.stdout, "plan");
    assert_schema("diff.schema.json", &diff.stdout, "diff");
    assert_schema("rollout.schema.json", &rollout.stdout, "check --from");
    assert_schema(
        "removal.schema.json",
        &removal.stdout,
        "check --from (a removal)",
    );
}

#[test]
fn sarif_locates_every_diagnostic_and_matches_the_schema() {
    let out = kscratch(
        &[
            "validate",
            "scenarios/invalid/every-kind.yaml",
            "--format",
            "sarif",
        ],
        &root(),
    );
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["version"], "2.1.0");
    let run = &v["runs"][0];
    let rules: Vec<&str> = run["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 17, "15 errors and 2 notes");
    for r in results {
        let id = r["ruleId"].as_str().unwrap();
        assert_eq!(rules[r["ruleIndex"].as_u64().unwrap() as usize], id);
        let region = &r["locations"][0]["physicalLocation"]["region"];
        assert!(region["startLine"].as_u64().unwrap() >= 1, "{r}");
        assert_eq!(
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            "scenarios/invalid/every-kind.yaml"
        );
    }
    let version = results
        .iter()
        .find(|r| r["ruleId"] == "KS1106")
        .expect("KS1106");
    assert_eq!(
        version["locations"][0]["physicalLocation"]["region"]["startLine"],
        4
    );
    assert_eq!(version["level"], "error");
    if has_jsonschema() {
        assert_schema("sarif-2.1.0-subset.schema.json", &out.stdout, "SARIF");
    }
}

#[test]
fn junit_has_a_suite_per_check_and_matches_the_xsd() {
    let dir = tempdir("junit");
    let mut reports = Vec::new();
    for (rel, code) in [
        ("scenarios/faults/route-missing.yaml", 1),
        ("scenarios/quickstart.yaml", 0),
    ] {
        let out = kscratch(&["check", rel, "--locked", "--format", "junit"], &root());
        assert_eq!(out.status.code(), Some(code), "{rel}");
        let again = kscratch(&["check", rel, "--locked", "--format", "junit"], &root());
        assert_eq!(out.stdout, again.stdout, "same report, same bytes");
        reports.push(String::from_utf8(out.stdout).unwrap());
    }
    let fault = &reports[0];
    for suite in [
        "pod-to-pod",
        "node-to-pod",
        "services",
        "egress",
        "apiserver",
        "mtu",
    ] {
        assert!(
            fault.contains(&format!("<testsuite name=\"{suite}\"")),
            "{suite}"
        );
    }
    assert!(
        fault.contains("<testsuite name=\"pod-to-pod\" tests=\"3\" failures=\"2\""),
        "{fault}"
    );
    assert!(
        fault.contains("name=\"node-1/probe-a → node-3/probe-a (request leg)\" time=\"0\">\n      <failure type=\"KS4001\" message=\"the request was dropped at router"),
        "{fault}"
    );
    assert!(fault.contains("request trace:\n  pod node-1/probe-a  send tcp"));
    assert!(reports[1].contains("failures=\"0\""));
    if !tool("xmllint", Command::new("xmllint").arg("--version")) {
        return;
    }
    for (i, r) in reports.iter().enumerate() {
        let f = dir.join(format!("r{i}.xml"));
        std::fs::write(&f, r).unwrap();
        let out = Command::new("xmllint")
            .args(["--noout", "--schema"])
            .arg(root().join("docs/schema/junit.xsd"))
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The HTML report in headless Chromium: it renders, and the DOM holds the
/// verdict and the failing cell of the fault scenario.
#[test]
fn html_report_renders_in_a_browser_with_the_failing_cell() {
    let out = kscratch(
        &[
            "check",
            "scenarios/faults/route-missing.yaml",
            "--locked",
            "--format",
            "html",
        ],
        &root(),
    );
    assert_eq!(out.status.code(), Some(1));
    let html = String::from_utf8(out.stdout).unwrap();
    for external in ["http://", "https://", "<script", "<link", "@import", "url("] {
        assert!(
            !html.contains(external),
            "the report must be self-contained: {external}"
        );
    }
    let browser = ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(browser) = browser else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("chromium is missing; .ci/run installs it");
        }
        eprintln!("skipped: chromium is not installed");
        return;
    };
    let dir = tempdir("html");
    let page = dir.join("report.html");
    std::fs::write(&page, &html).unwrap();
    let flags = |profile: &str| {
        vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", dir.join(profile).display()),
        ]
    };
    let shot = dir.join("report.png");
    let out = Command::new(browser)
        .args(flags("p1"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,2000")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    let out = Command::new(browser)
        .args(flags("p2"))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<h1 id=\"verdict\" class=\"fail\">kscratch check: FAIL</h1>"),
        "{dom}"
    );
    assert!(
        dom.contains("class=\"cell request-fails\" data-from=\"node-1\" data-to=\"node-3\""),
        "the failing cell:\n{dom}"
    );
    assert!(dom.contains("class=\"cell reply-fails\" data-from=\"node-3\" data-to=\"node-1\""));
    assert!(dom.contains("<details class=\"failure\" data-check=\"pod-to-pod\">"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// docs/codes.md lists every code, in order, with its meaning.
#[test]
fn every_code_is_listed_in_the_docs() {
    use kscratch_core::diag::Code;
    let mut table = String::from("| code | meaning |\n|---|---|\n");
    for c in Code::ALL {
        table.push_str(&format!("| {} | {} |\n", c.as_str(), c.title()));
    }
    let path = root().join("docs/codes.md");
    let doc = std::fs::read_to_string(&path).expect("docs/codes.md");
    let start = doc.find("| code | meaning |").expect("the table");
    let end = doc[start..]
        .find("\n\n")
        .map_or(doc.len(), |e| start + e + 1);
    if std::env::var_os("KSCRATCH_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, format!("{}{table}{}", &doc[..start], &doc[end..])).unwrap();
        return;
    }
    assert_eq!(
        &doc[start..end],
        table,
        "re-bless docs/codes.md with KSCRATCH_BLESS=1"
    );
    let mut seen = std::collections::BTreeSet::new();
    for c in Code::ALL {
        assert!(seen.insert(c.as_str()), "{} is used twice", c.as_str());
    }
}

#[test]
fn version_names_the_revision_and_the_kubernetes_range() {
    use kscratch_core::scenario::version::{NEWEST, OLDEST};
    let out = kscratch(&["--version"], &root());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("kscratch {} (git ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let range = format!(
        "Kubernetes {}.{} to {}.{}",
        OLDEST.major, OLDEST.minor, NEWEST.major, NEWEST.minor
    );
    assert!(text.contains(&range), "build.rs must say {range}: {text}");
}
