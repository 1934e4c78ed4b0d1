//! One `apply` of a cluster at a time, on the operator's machine.
//!
//! Two applies of the same scenario at once both generated a CA and left a
//! mixed key store. The lock is a file next to the key store,
//! `<scenario dir>/.kscratch/<cluster>/apply.lock`, held with an OS file
//! lock (`flock`) for the whole run and holding the holder's PID:
//! - a second apply finds it held and refuses at once, naming that PID;
//! - a process that died cannot hold it (the kernel releases the lock with
//!   the process), so its PID left in the file is reported as a stale lock
//!   and taken over;
//! - a finished apply empties the file.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The held lock; released (and emptied) when dropped.
#[derive(Debug)]
pub struct ApplyLock {
    file: File,
    path: PathBuf,
    /// The PID a dead holder left behind, if the lock was stale.
    pub stale: Option<String>,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another apply of this cluster is running (PID {pid}; lock {path}): wait for it to finish, or stop that process", path = .path.display())]
    Held { pid: String, path: PathBuf },
    #[error("cannot use the apply lock {path}: {message}", path = .path.display())]
    Io { path: PathBuf, message: String },
}

/// `<state dir>/apply.lock`.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("apply.lock")
}

impl ApplyLock {
    /// Takes the lock of the cluster whose state lives in `state_dir`, or
    /// refuses at once (never waits).
    pub fn acquire(state_dir: &Path) -> Result<ApplyLock, LockError> {
        let path = lock_path(state_dir);
        let io = |e: std::io::Error| LockError::Io {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let pid = holder(&mut file).unwrap_or_else(|| "unknown".into());
                return Err(LockError::Held { pid, path });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let stale = holder(&mut file);
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(format!("pid={}\n", std::process::id()).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        Ok(ApplyLock { file, path, stale })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApplyLock {
    fn drop(&mut self) {
        // Emptied while still held: an empty file is a free lock, not a stale one.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// The PID recorded in the lock file, if any.
fn holder(file: &mut File) -> Option<String> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("pid="))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_apply_refuses_naming_the_holder_and_a_stale_lock_is_taken_over() {
        let dir = tempfile_dir();
        let state = dir.join(".kscratch/c");
        let first = ApplyLock::acquire(&state).unwrap();
        assert_eq!(first.stale, None);
        // flock conflicts between two opens even within one process.
        match ApplyLock::acquire(&state) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("{other:?}"),
        }
        drop(first);
        // Released and emptied: the next one is not stale.
        let again = ApplyLock::acquire(&state).unwrap();
        assert_eq!(again.stale, None);
        drop(again);
        // A PID left by a process that died holding it.
        std::fs::write(lock_path(&state), "pid=4194399\n").unwrap();
        let taken = ApplyLock::acquire(&state).unwrap();
        assert_eq!(taken.stale.as_deref(), Some("4194399"));
        assert_eq!(
            std::fs::read_to_string(lock_path(&state)).unwrap(),
            format!("pid={}\n", std::process::id())
        );
        drop(taken);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("kscratch-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
