//! Private key files, checked and written the way OpenSSH expects them.
//!
//! OpenSSH (`sshkey_perm_ok` in authfile.c) ignores a private key whose file
//! mode grants any access to group or others, and says so loudly: "WARNING:
//! UNPROTECTED PRIVATE KEY FILE! Permissions 0644 for 'key' are too open."
//! [`check_private_key_permissions`] applies the same rule before kscratch
//! hands a key to its SSH client, so a key that `ssh` would refuse is refused
//! here too, with the same words and the fix.
//!
//! One deliberate difference: OpenSSH skips the check for a key owned by
//! another user; kscratch checks every key, since a world-readable private
//! key is exposed whoever owns it.
//!
//! [`write_secret_file`] writes keys, tokens and kubeconfigs so that no other
//! user can ever read them, not even for a moment: the bytes go to a temporary
//! file created with mode 0600 in the destination directory, which is then
//! renamed over the destination. Readers see the old file or the new one,
//! never a partial write.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::shell;

/// Mode bits that must be clear on a private key file: any access by group
/// or others.
pub const GROUP_OTHER_BITS: u32 = 0o077;
/// Mode of a file written by [`write_secret_file`].
pub const SECRET_FILE_MODE: u32 = 0o600;
/// Mode of a directory created by [`write_secret_file`].
pub const SECRET_DIR_MODE: u32 = 0o700;

/// Why a private key file cannot be used, or a secret file not written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The key file grants access to group or others; OpenSSH would ignore it.
    #[error(
        "UNPROTECTED PRIVATE KEY FILE: permissions {mode:04o} for '{path}' are too open; \
         private key files must not be accessible by others, so this key is refused \
         (fix: chmod 600 {hint_path})",
        path = .path.display(),
        hint_path = quoted_path(.path)
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits (`st_mode & 0o777`).
        mode: u32,
    },
    /// The path exists but is not a regular file (a directory, a socket...).
    #[error("private key '{path}' is not a regular file", path = .path.display())]
    NotRegularFile {
        /// The offending path.
        path: PathBuf,
    },
    /// The path has no file name to write to (for example `/` or `..`).
    #[error("cannot write a secret file at '{path}': the path has no file name", path = .path.display())]
    NoFileName {
        /// The offending path.
        path: PathBuf,
    },
    /// An IO error, with what was being done and to which path.
    #[error("{action} '{path}': {source}", path = .path.display())]
    Io {
        /// What was being done, e.g. "cannot read metadata of".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Refuses a private key file that group or others may access
/// (`mode & 0o077 != 0`), as OpenSSH does.
///
/// Symlinks are followed, since `ssh` opens the key through them too.
pub fn check_private_key_permissions(path: &Path) -> Result<(), KeyFileError> {
    let meta = fs::metadata(path).map_err(|source| KeyFileError::Io {
        action: "cannot read metadata of private key",
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(KeyFileError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Atomically replaces `path` with `bytes`, readable and writable by the
/// owner only (0600).
///
/// The parent directory is created with mode 0700 if missing (like OpenSSH's
/// `~/.ssh`); an existing parent is left as it is. The data is flushed to
/// disk before the rename, and the directory after it, so a crash leaves
/// either the old content or the new one.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    write_secret(path, bytes, true)
}

/// [`write_secret_file`] without the two flushes, for a copy that is
/// rendered again from durable material on the next run (a node's file in
/// the render tree): a killed process still leaves the old content or the
/// new one, and only a crash of the machine itself may lose the new one.
/// The flushes cost a disk round trip each, two per file, on a first
/// apply's critical path.
pub fn write_secret_copy(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    write_secret(path, bytes, false)
}

fn write_secret(path: &Path, bytes: &[u8], flush: bool) -> Result<(), KeyFileError> {
    if path.file_name().is_none() {
        return Err(KeyFileError::NoFileName {
            path: path.to_path_buf(),
        });
    }
    // `Path::parent` of a bare file name is "", which means the current directory.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(SECRET_DIR_MODE)
            .create(dir)
            .map_err(|source| KeyFileError::Io {
                action: "cannot create directory",
                path: dir.to_path_buf(),
                source,
            })?;
    }
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source: io::Error| KeyFileError::Io {
            action,
            path,
            source,
        }
    };
    // tempfile creates the file with O_EXCL and mode 0600, so the secret is
    // never visible to others, even between create and rename.
    let mut tmp = tempfile::Builder::new()
        .prefix(".kscratch-secret-")
        .tempfile_in(dir)
        .map_err(io_err("cannot create temporary file in", dir))?;
    // Set the mode explicitly: the umask or a future tempfile default must
    // not decide how secret the file is.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(SECRET_FILE_MODE))
        .map_err(io_err("cannot set mode 0600 on temporary file for", path))?;
    tmp.write_all(bytes)
        .map_err(io_err("cannot write temporary file for", path))?;
    if flush {
        tmp.as_file()
            .sync_all()
            .map_err(io_err("cannot flush temporary file for", path))?;
    }
    tmp.persist(path).map_err(|e| KeyFileError::Io {
        action: "cannot rename temporary file onto",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    // Flush the rename itself; a failure here does not undo the write, but is
    // reported because durability was asked for.
    if flush {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("cannot flush directory", dir))?;
    }
    Ok(())
}

/// The path as a shell word for the `chmod` hint, so that it can be pasted
/// even when it holds spaces or quotes.
fn quoted_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    shell::quote(&text)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn write_with_mode(path: &Path, mode: u32) {
        fs::write(path, b"-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn owner_only_modes_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        for mode in [0o600, 0o400, 0o700] {
            write_with_mode(&key, mode);
            check_private_key_permissions(&key).unwrap();
        }
    }

    #[test]
    fn any_group_or_other_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_rsa");
        for mode in [0o644, 0o640, 0o604, 0o660, 0o610, 0o601, 0o777] {
            write_with_mode(&key, mode);
            match check_private_key_permissions(&key) {
                Err(KeyFileError::TooOpen { mode: m, .. }) => assert_eq!(m, mode),
                other => panic!("mode {mode:o}: expected TooOpen, got {other:?}"),
            }
        }
    }

    #[test]
    fn refusal_message_names_mode_path_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("my key");
        write_with_mode(&key, 0o644);
        let msg = check_private_key_permissions(&key).unwrap_err().to_string();
        assert!(msg.contains("UNPROTECTED PRIVATE KEY FILE"), "{msg}");
        assert!(
            msg.contains(&format!(
                "permissions 0644 for '{}' are too open",
                key.display()
            )),
            "{msg}"
        );
        // The hint quotes the path so that it survives the space.
        assert!(
            msg.contains(&format!("chmod 600 '{}'", key.display())),
            "{msg}"
        );
    }

    #[test]
    fn missing_key_and_directory_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent");
        let err = check_private_key_permissions(&missing).unwrap_err();
        assert!(matches!(err, KeyFileError::Io { .. }));
        assert!(err.to_string().contains("absent"), "{err}");
        assert!(matches!(
            check_private_key_permissions(dir.path()),
            Err(KeyFileError::NotRegularFile { .. })
        ));
    }

    type Writer = fn(&Path, &[u8]) -> Result<(), KeyFileError>;
    /// The flushed writer and the one for copies: the same file either way.
    const WRITERS: [Writer; 2] = [write_secret_file, write_secret_copy];

    #[test]
    fn secret_file_is_0600_in_a_new_0700_directory() {
        for write in WRITERS {
            let dir = tempfile::tempdir().unwrap();
            let ssh_dir = dir.path().join("home/.ssh");
            let key = ssh_dir.join("id_ed25519");
            write(&key, b"secret").unwrap();
            assert_eq!(fs::read(&key).unwrap(), b"secret");
            assert_eq!(mode_of(&key), 0o600);
            assert_eq!(mode_of(&ssh_dir), 0o700);
            check_private_key_permissions(&key).unwrap();
        }
    }

    #[test]
    fn secret_file_replaces_an_open_file_and_leaves_no_temporaries() {
        for write in WRITERS {
            let dir = tempfile::tempdir().unwrap();
            let key = dir.path().join("token");
            write_with_mode(&key, 0o644);
            write(&key, b"new content").unwrap();
            assert_eq!(fs::read(&key).unwrap(), b"new content");
            assert_eq!(mode_of(&key), 0o600);
            // An existing parent keeps its mode; only a created one gets 0700.
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from("token")]);
        }
    }

    #[test]
    fn secret_file_path_without_name_is_refused() {
        assert!(matches!(
            write_secret_file(Path::new("/"), b"x"),
            Err(KeyFileError::NoFileName { .. })
        ));
    }

    #[test]
    fn secret_file_onto_a_directory_fails_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"x").unwrap();
        let err = write_secret_file(&target, b"secret").unwrap_err();
        assert!(matches!(err, KeyFileError::Io { .. }), "{err}");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("sub")]);
    }
}
