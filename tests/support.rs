//! Shared test helpers: loading bundled scenarios and comparing against golden files.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `actual` with the golden file `tests/golden/<name>`.
///
/// A missing golden file is written on first run; `KSCRATCH_BLESS=1` rewrites
/// them all after a deliberate change. Otherwise a difference fails the test
/// with the first differing line.
pub fn check(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    let bless = std::env::var_os("KSCRATCH_BLESS").is_some_and(|v| v == "1");
    match std::fs::read_to_string(&path) {
        Ok(expected) if expected == actual => {}
        Ok(_) | Err(_) if bless || !path.exists() => {
            std::fs::create_dir_all(path.parent().expect("golden files live in a folder"))
                .expect("create golden dir");
            std::fs::write(&path, actual).expect("write golden file");
        }
        Ok(expected) => {
            let line = expected
                .lines()
                .zip(actual.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(expected.lines().count().min(actual.lines().count()));
            panic!(
                "{} differs from the actual output at line {}:\n  expected: {:?}\n  actual:   {:?}\nre-bless with KSCRATCH_BLESS=1 if the change is deliberate",
                path.display(),
                line + 1,
                expected.lines().nth(line).unwrap_or("<end of file>"),
                actual.lines().nth(line).unwrap_or("<end of file>"),
            );
        }
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
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
