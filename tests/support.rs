//! Shared test helpers: loading bundled scenarios and comparing against golden files.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `actual` with the golden file `tests/golden/<name>`.
///
/// A golden file is written only when asked: `KSCRATCH_BLESS=1` writes missing
/// ones and rewrites differing ones after a deliberate change. Without it, and
/// always under `CI=true`, a missing golden fails the test (so a deleted golden
/// cannot stay green) and a difference fails with a unified diff.
pub fn check(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    let bless = blessing();
    let expected = match std::fs::read_to_string(&path) {
        Ok(expected) if expected == actual => return,
        Ok(expected) => Some(expected),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    };
    if bless {
        std::fs::create_dir_all(path.parent().expect("golden files live in a folder"))
            .expect("create golden dir");
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    match expected {
        None => panic!(
            "{} is missing: a golden file is never written silently.\n\
             Write it with KSCRATCH_BLESS=1 (outside CI) and commit it after reading it.",
            path.display()
        ),
        Some(expected) => panic!(
            "{} differs from the actual output (- golden, + actual):\n{}\n\
             Re-bless with KSCRATCH_BLESS=1 if the change is deliberate, then read `git diff tests/golden`.",
            path.display(),
            diff(&expected, actual)
        ),
    }
}

/// True when `KSCRATCH_BLESS=1` asks to write goldens. Under `CI=true` that
/// is refused loudly: CI compares, it never blesses.
fn blessing() -> bool {
    let bless = std::env::var_os("KSCRATCH_BLESS").is_some_and(|v| v == "1");
    if bless && in_ci() {
        panic!("KSCRATCH_BLESS=1 under CI=true: CI compares goldens, it never writes them");
    }
    bless
}

/// True under `CI=true`: a tool or golden the CI image provides must be there.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| v == "true" || v == "1")
}

/// A unified diff of two texts with three lines of context, at most about
/// 200 lines (the rest is counted, not printed).
pub fn diff(expected: &str, actual: &str) -> String {
    const MAX_LINES: usize = 200;
    let text = similar::TextDiff::from_lines(expected, actual)
        .unified_diff()
        .context_radius(3)
        .header("golden", "actual")
        .to_string();
    let total = text.lines().count();
    if total <= MAX_LINES {
        return text;
    }
    let mut out: String = text
        .lines()
        .take(MAX_LINES)
        .flat_map(|l| [l, "\n"])
        .collect();
    out.push_str(&format!("... {} more diff lines\n", total - MAX_LINES));
    out
}

/// Reads a bundled scenario and its IPAM lock, as the CLI does, without writing anything.
pub fn load(rel: &str) -> Result<kscratch_core::scenario::Loaded, kscratch_core::Diagnostics> {
    let path = root().join(rel);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let lock_path = path.with_file_name(format!(
        "{}.ipam.lock",
        path.file_stem().unwrap().to_string_lossy()
    ));
    let lock = std::fs::read_to_string(lock_path)
        .ok()
        .map(|t| kscratch_core::ipam::IpamLock::parse(&t).expect("bundled lock parses"));
    kscratch_core::load(rel, &text, lock.as_ref())
}

/// The valid bundled scenarios (`scenarios/*.yaml`), sorted.
pub fn valid_scenarios() -> Vec<String> {
    yaml_files(&root().join("scenarios"), "scenarios")
}

/// The deliberately broken scenarios (`scenarios/invalid/*.yaml`), sorted.
pub fn invalid_scenarios() -> Vec<String> {
    yaml_files(&root().join("scenarios/invalid"), "scenarios/invalid")
}

fn yaml_files(dir: &Path, rel: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("scenario dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("{rel}/{n}"))
        .collect();
    v.sort();
    v
}

/// `scenarios/invalid/x.yaml` → `x`.
pub fn stem(rel: &str) -> String {
    Path::new(rel)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A fresh directory under the system's temp dir, unique to this process and call.
pub fn tempdir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("kscratch-test-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// How `doc` fails `docs/schema/<schema>`, checked with python3-jsonschema
/// (the schema itself first, formats too): `Err` lists each error with its
/// path. python3 or jsonschema missing is an `Err` as well; callers that
/// may skip ask `formats::has_jsonschema` first.
pub fn schema_errors(schema: &str, doc: &[u8]) -> Result<(), String> {
    let dir = tempdir("schema");
    let file = dir.join("doc.json");
    std::fs::write(&file, doc).map_err(|e| format!("{}: {e}", file.display()))?;
    let script = "import json,sys,jsonschema\n\
        s=json.load(open(sys.argv[1])); d=json.load(open(sys.argv[2]))\n\
        jsonschema.validators.validator_for(s).check_schema(s)\n\
        v=jsonschema.validators.validator_for(s)(s, format_checker=jsonschema.FormatChecker())\n\
        errs=sorted(v.iter_errors(d), key=lambda e: list(e.path))\n\
        [print(list(e.path), e.message) for e in errs]\n\
        sys.exit(1 if errs else 0)";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(root().join("docs/schema").join(schema))
        .arg(&file)
        .output()
        .map_err(|e| format!("python3: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "does not match docs/schema/{schema}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
