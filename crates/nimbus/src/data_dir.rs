//! The node's data dir: created on first start, and locked for as long as the node runs so that
//! a second `nimbus up` on the same dir is refused instead of corrupting it. The lock is an OS file
//! lock: it goes away with the process, even one killed with SIGKILL.

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

impl DataDir {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot use data dir {}; choose another with --data-dir", path.display()))?;
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
    fn a_file_in_the_way_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let err = format!("{:#}", DataDir::open(&file.join("data")).unwrap_err());
        assert!(err.contains("cannot use data dir") && err.contains("--data-dir"), "{err}");
    }
}
