//! Names the git revision in `kscratch --version`, and the Kubernetes range.
//! A build from a tarball (no git, no repository) says `unknown`; the
//! `KSCRATCH_GIT_REV` environment variable overrides both.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=KSCRATCH_GIT_REV");
    let rev = std::env::var("KSCRATCH_GIT_REV")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    // Rebuild the version string when HEAD moves (worktrees keep HEAD apart from refs).
    for dir in [
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ]
    .into_iter()
    .flatten()
    {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/refs/heads");
    }
    println!(
        "cargo:rustc-env=KSCRATCH_GIT_REV={}",
        rev.unwrap_or_else(|| "unknown".into())
    );
    // Keep in step with core/src/scenario/version.rs (OLDEST, NEWEST); a test checks it.
    println!("cargo:rustc-env=KSCRATCH_K8S_RANGE=1.6 to 1.35");
}
