//! The node's data dir: created on first start, private to the node's user, and locked for as long
//! as the node runs so that a second `nimbus up` on the same dir is refused instead of corrupting
//! it. The lock is an OS file lock: it goes away with the process, even one killed with SIGKILL.
//!
//! It holds secrets (the SQLite file keeps signing keys, the blob HMAC secret, password hashes,
//! reset links; the admin token): the folder is 0700 and every file in it 0600. The process's
//! umask makes new files so; what an earlier version or a hand left wider is fixed at start, with a
//! warning.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

const LOCK_FILE: &str = "nimbus.lock";

/// Holds the data dir's lock until dropped.
#[derive(Debug)]
pub struct DataDir {
    pub path: PathBuf,
    _lock: File,
}

/// Creates the data dir (0700) if needed, makes what is in it private, and sets the process's
/// umask so that what this process creates from now on is private too. Workers get the usual
/// umask back (`nimbus-functions` sets it when it starts them).
pub fn prepare(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot use data dir {}; choose another with --data-dir", path.display()))?;
    let widened = make_private(path)?;
    if widened > 0 {
        tracing::warn!(
            data_dir = %path.display(),
            fixed = widened,
            "files or folders in the data dir were readable by other users; made them private (0600 / 0700)"
        );
    }
    Ok(())
}

/// Takes group and other permissions off every file and folder under `root` (symbolic links are
/// not followed); answers how many it changed.
fn make_private(root: &Path) -> anyhow::Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mode = meta.permissions().mode();
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).with_context(|| format!("cannot list {}", path.display()))? {
                pending.push(entry?.path());
            }
        } else if !meta.is_file() {
            continue; // sockets (in folders that are private themselves), links
        }
        if mode & 0o077 != 0 {
            let private = if meta.is_dir() { 0o700 } else { mode & 0o700 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(private))
                .with_context(|| format!("cannot make {} private", path.display()))?;
            changed += 1;
        }
    }
    Ok(changed)
}

impl DataDir {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        prepare(path)?;
        let path =
            std::fs::canonicalize(path).with_context(|| format!("cannot resolve data dir {}", path.display()))?;
        let lock_path = path.join(LOCK_FILE);
        let mut lock =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path).with_context(
                || {
                    format!(
                        "data dir {} is not writable; fix its permissions or choose another with --data-dir",
                        path.display()
                    )
                },
            )?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another nimbus".to_owned()
                } else {
                    format!("another nimbus (pid {holder})")
                };
                bail!(
                    "data dir {} is in use by {who}; stop it first, or give this one its own --data-dir",
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
        }
        lock.set_len(0)?;
        lock.rewind()?;
        writeln!(lock, "{}", std::process::id())?;
        Ok(Self { path, _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_dir_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another nimbus (pid"), "{err}");
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }

    #[test]
    fn what_is_in_it_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("blobs")).unwrap();
        std::fs::write(data.join("nimbus.db"), "secret").unwrap();
        std::fs::write(data.join("blobs/x"), "secret").unwrap();
        for (p, mode) in [(&data, 0o755), (&data.join("blobs"), 0o755)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        // Modes set explicitly: another test may have set the process's umask.
        std::fs::set_permissions(data.join("nimbus.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(data.join("blobs/x"), std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(make_private(&data).unwrap(), 4);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("blobs")), 0o700);
        assert_eq!(mode(&data.join("nimbus.db")), 0o600);
        assert_eq!(mode(&data.join("blobs/x")) & 0o077, 0);
        assert_eq!(make_private(&data).unwrap(), 0, "nothing left to fix");
    }

    #[test]
    fn a_file_in_the_way_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let err = format!("{:#}", DataDir::open(&file.join("data")).unwrap_err());
        assert!(err.contains("cannot use data dir") && err.contains("--data-dir"), "{err}");
    }
}
