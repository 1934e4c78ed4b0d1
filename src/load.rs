//! Reading a scenario and its IPAM lock from disk, and writing the lock back.

use kscratch_core::ipam::IpamLock;
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
    #[error("error: {path}: the IPAM lock is not valid: {message}\n  hint: it is written by kscratch; restore it from version control or delete it to re-allocate")]
    Lock { path: PathBuf, message: String },
    #[error("error: {path} would change (--locked):\n{changes}  hint: run without --locked and commit the lock file")]
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

/// Loads and validates a scenario; writes its IPAM lock when allocations changed.
pub fn scenario(path: &Path, locked: bool) -> Result<Loaded, Error> {
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
    let loaded = kscratch_core::load(&path.display().to_string(), &text, lock.as_ref())
        .map_err(Error::Invalid)?;
    if !loaded.lock_changes.is_empty() {
        let changes: String = loaded
            .lock_changes
            .iter()
            .map(|c| format!("  {c}\n"))
            .collect();
        if locked {
            return Err(Error::LockWouldChange { path: lp, changes });
        }
        write_atomic(&lp, loaded.lock.emit().as_bytes()).map_err(|source| Error::Write {
            path: lp.clone(),
            source,
        })?;
        eprint!("wrote {}:\n{changes}", lp.display());
    }
    Ok(loaded)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("lock.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
