//! Reading a scenario and its IPAM lock from disk, and writing the lock back
//! (only for the commands that hand out addresses: plan, apply, render).

use kscratch_core::diag::{plural, Code};
use kscratch_core::ipam::{IpamLock, LockChange};
use kscratch_core::scenario::Loaded;
use kscratch_core::Diagnostics;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("error: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error("error[KS3001]: {path}: the IPAM lock is not valid: {message}\n  hint: it is written by kscratch; restore it from version control or delete it to re-allocate")]
    Lock { path: PathBuf, message: String },
    #[error("error[KS3002]: {path} would change (--locked):\n{changes}  hint: run `kscratch plan` without --locked and commit the lock file")]
    LockWouldChange { path: PathBuf, changes: String },
    /// A bad command-line argument (a fault that names no node, an unknown endpoint); the message is complete.
    #[error("{0}")]
    Usage(String),
    /// `kscratch apply` could not start (no HOME for known_hosts, no runtime).
    #[error("error: {0}")]
    Apply(String),
    #[error("error: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `scenarios/x.yaml` → `scenarios/x.ipam.lock`.
pub fn lock_path(scenario: &Path) -> PathBuf {
    let stem = scenario
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    scenario.with_file_name(format!("{stem}.ipam.lock"))
}

/// Whether `-v` was given: lock changes are then listed one by one.
pub static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Loads and validates a scenario and writes its IPAM lock when allocations
/// changed (`plan`, `apply`, `render`: the commands that hand out addresses).
pub fn scenario(path: &Path, locked: bool) -> Result<Loaded, Error> {
    load(path, locked, true)
}

/// Loads and validates a scenario without writing anything (`validate`,
/// `check`, `trace`): an out-of-date lock is a warning, a missing one too.
pub fn scenario_read_only(path: &Path, locked: bool) -> Result<Loaded, Error> {
    load(path, locked, false)
}

/// Reads the scenario text, the lock (if any) and validates.
pub fn read(path: &Path) -> Result<(String, Option<IpamLock>), Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    let lp = lock_path(path);
    let lock = match std::fs::read_to_string(&lp) {
        Ok(t) => Some(IpamLock::parse(&t).map_err(|message| Error::Lock {
            path: lp.clone(),
            message,
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(Error::Read { path: lp, source }),
    };
    Ok((text, lock))
}

fn load(path: &Path, locked: bool, write: bool) -> Result<Loaded, Error> {
    let (text, lock) = read(path)?;
    let lp = lock_path(path);
    let loaded = kscratch_core::load(&path.display().to_string(), &text, lock.as_ref())
        .map_err(Error::Invalid)?;
    let changes = &loaded.lock_changes;
    if !changes.is_empty() && locked {
        let list: String = changes.iter().map(|c| format!("  {c}\n")).collect();
        return Err(Error::LockWouldChange {
            path: lp,
            changes: list,
        });
    }
    let verbose = VERBOSE.load(std::sync::atomic::Ordering::Relaxed);
    if lock.is_none() {
        let then = if write {
            format!("commit {} (written now)", lp.display())
        } else {
            format!(
                "run `kscratch plan {}` once and commit {}",
                path.display(),
                lp.display()
            )
        };
        crate::diag(&format!(
            "warning[{}]: {}: no IPAM lock yet: pod CIDRs follow the order of the nodes, so reordering or removing nodes would renumber them\n  hint: {then}\n",
            Code::NoLock,
            lp.display()
        ));
    }
    if !changes.is_empty() {
        let summary = summary(changes);
        if write {
            write_atomic(&lp, loaded.lock.emit().as_bytes()).map_err(|source| Error::Write {
                path: lp.clone(),
                source,
            })?;
            eprintln!("{summary}; wrote {}", lp.display());
        } else if lock.is_some() {
            crate::diag(&format!(
                "warning[{}]: {} is out of date ({summary}); not written: this command only reads\n  hint: run `kscratch plan {}` to update it, and commit it\n",
                Code::LockStale,
                lp.display(),
                path.display()
            ));
        }
        if verbose {
            for c in changes {
                eprintln!("  {c}");
            }
        }
    }
    Ok(loaded)
}

/// "allocated 3 new pod CIDRs, released 1, moved 1".
pub fn summary(changes: &[LockChange]) -> String {
    let (mut a, mut r, mut m) = (0, 0, 0);
    for c in changes {
        match c {
            LockChange::Allocated { .. } => a += 1,
            LockChange::Released { .. } => r += 1,
            LockChange::Moved { .. } => m += 1,
        }
    }
    let mut parts = Vec::new();
    if a > 0 {
        parts.push(format!(
            "allocated {}",
            plural(a, "new pod CIDR", "new pod CIDRs")
        ));
    }
    if r > 0 {
        parts.push(format!("released {r}"));
    }
    if m > 0 {
        parts.push(format!("moved {m} to explicit pins"));
    }
    parts.join(", ")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("lock.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
