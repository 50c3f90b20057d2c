//! Each instance in a cgroup (v2) of its own, where the node may make one: when an instance ends,
//! everything it started ends with it — also processes that left its process group (`setsid`, a
//! double fork), which the process-group signal misses. Without a writable cgroup v2 hierarchy
//! (not root, no delegation) instances run as before, with their process group only.
//!
//! Layout: `<cgroup2 mount><the node's cgroup>/nimbus-<hash of the data dir>/<instance id>`. The
//! data dir's lock makes the folder this node's: at start, what a killed node left there is killed
//! and removed.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The folder under which this node makes its instances' cgroups.
#[derive(Debug)]
pub(crate) struct Cgroups {
    base: PathBuf,
}

impl Cgroups {
    /// This node's cgroup folder, made if it can be; `None` where cgroups cannot be used. With
    /// `clean`, instances a previous run left behind are killed and their cgroups removed.
    pub fn open(data_dir: &Path, clean: bool) -> Option<Self> {
        let mount = cgroup2_mount()?;
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let own = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim_start_matches('/').to_owned();
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data_dir.hash(&mut h);
        let base = mount.join(own).join(format!("nimbus-{:016x}", h.finish()));
        std::fs::create_dir_all(&base).ok()?;
        // Writable means usable: probe with a child cgroup.
        let probe = base.join("probe");
        std::fs::create_dir(&probe).ok().or_else(|| probe.is_dir().then_some(()))?;
        let _ = std::fs::remove_dir(&probe);
        if clean && let Ok(entries) = std::fs::read_dir(&base) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    let left = Cgroup { dir: entry.path() };
                    left.kill();
                    left.remove_blocking();
                }
            }
        }
        // Nodes killed without a chance to tidy up (any data dir) leave empty cgroups behind:
        // remove those. Removing a cgroup fails while a process is in it, so nothing live goes.
        if let Some(parent) = base.parent()
            && let Ok(entries) = std::fs::read_dir(parent)
        {
            for entry in entries.flatten() {
                let path = entry.path();
                let ours = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("nimbus-"));
                if ours && path != base {
                    for child in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                        let _ = std::fs::remove_dir(child.path());
                    }
                    let _ = std::fs::remove_dir(&path);
                }
            }
        }
        Some(Self { base })
    }

    /// Removes the node's folder once its instances' cgroups are gone (at shutdown).
    pub async fn remove(&self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.base).is_ok() || !self.base.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A new, empty cgroup for the instance `id`.
    pub fn create(&self, id: &str) -> Option<Cgroup> {
        let dir = self.base.join(id);
        // The base may have been removed as empty by another node's start: make it again.
        std::fs::create_dir_all(&dir).ok()?;
        Some(Cgroup { dir })
    }
}

/// One instance's cgroup.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// The path a child writes its pid to (before exec) to join the cgroup.
    pub fn procs_path(&self) -> Option<CString> {
        CString::new(self.dir.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
    }

    /// Kills every process in the cgroup (`cgroup.kill`, Linux 5.14+).
    pub fn kill(&self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
    }

    /// Kills what is left and removes the cgroup once it is empty (a killed process takes a
    /// moment to leave it).
    pub async fn end(&self) {
        self.kill();
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(cgroup = %self.dir.display(), "an instance's cgroup did not empty; leaving it");
    }

    fn remove_blocking(&self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Joins the cgroup whose `cgroup.procs` is `procs`: called in the child between fork and exec,
/// so only async-signal-safe calls (open, write, close).
pub(crate) fn join(procs: &CString) -> std::io::Result<()> {
    // SAFETY: plain system calls on a valid NUL-terminated path and a static buffer.
    unsafe {
        let fd = nix::libc::open(procs.as_ptr(), nix::libc::O_WRONLY | nix::libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let written = nix::libc::write(fd, b"0".as_ptr().cast(), 1);
        nix::libc::close(fd);
        if written != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        if rest.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        fields.split_whitespace().nth(4).map(PathBuf::from)
    })
}
