//! Confining worker instances. A function's code must not reach more than its grants give it: not
//! the node's data dir (its admin token, its database), not other instances, not the host.
//!
//! - **Landlock** (Linux ≥ 5.13; scoping needs ABI 6): an instance may read and execute the system
//!   folders, its interpreter's installation and library paths, the SDK and the app folder minus
//!   the data dir; it may write only its own folder (its socket and `TMPDIR`); it cannot signal
//!   processes outside its sandbox nor connect to abstract sockets made outside it. Landlock also
//!   denies ptrace and `/proc/<pid>/environ` across sandboxes, so one instance cannot read another's
//!   keys.
//! - **An unprivileged user** when the node runs as root (`nobody` unless `--worker-user` names
//!   another): then even a kernel without Landlock keeps the 0600 data files out of reach.
//! - **A key per instance** (`NIMBUS_WORKER_KEY`, PROTOCOL.md §1) that the host sends with every
//!   request: before Landlock ABI 8 nothing stops a process of the same user from connecting to a
//!   pathname Unix socket, so the worker refuses requests without it.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, RestrictionStatus, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, RulesetError, Scope, path_beneath_rules,
};
use nix::unistd::{Gid, Uid};

use nimbus_config::SandboxSection;

use crate::FunctionsError;

/// The newest Landlock ABI the rules are written for; older kernels enforce what they know.
const ABI_TARGET: ABI = ABI::V7;

/// Folders every interpreter needs to read: binaries, libraries, configuration (TLS roots, time
/// zones, DNS), and the kernel's views of the process.
const SYSTEM_READ: &[&str] =
    &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc", "/sys"];
/// Devices an instance may open; no folder of devices (raw disks hold the data dir too).
const DEVICES_READ: &[&str] = &["/dev/zero", "/dev/random", "/dev/urandom"];
const DEVICES_WRITE: &[&str] = &["/dev/null", "/dev/full"];

/// Who instances run as, when the node drops privileges for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerUser {
    pub uid: Uid,
    pub gid: Gid,
}

/// The node's choice, made once at start: which user runs instances and what this kernel's
/// Landlock can enforce.
#[derive(Debug, Clone)]
pub(crate) struct Confinement {
    pub user: Option<WorkerUser>,
    /// The user's name, for messages.
    pub user_name: String,
    /// Landlock's ABI on this kernel (0: none).
    pub landlock_abi: i32,
}

impl Confinement {
    /// `requested` is `--worker-user`. A root node runs instances as `nobody` by default; any other
    /// node as itself (it cannot switch users).
    pub fn new(requested: Option<&str>) -> Result<Self, FunctionsError> {
        let landlock_abi = probe_abi();
        let root = Uid::effective().is_root();
        let name = match requested {
            Some(name) => name.to_owned(),
            None if root => "nobody".to_owned(),
            None => return Ok(Self { user: None, user_name: current_user_name(), landlock_abi }),
        };
        let user = resolve_user(&name)?;
        if user.uid.is_root() {
            return Ok(Self { user: None, user_name: name, landlock_abi });
        }
        if !root {
            if user.uid == Uid::effective() {
                return Ok(Self { user: None, user_name: name, landlock_abi });
            }
            return Err(FunctionsError::Config(format!(
                "--worker-user {name}: only a node running as root can run workers as another user"
            )));
        }
        Ok(Self { user: Some(user), user_name: name, landlock_abi })
    }

    /// One line for the log at start: how instances are confined.
    pub fn describe(&self) -> String {
        let user = match self.user {
            Some(u) => format!("as {} (uid {})", self.user_name, u.uid),
            None if Uid::effective().is_root() => "as root".to_owned(),
            None => format!("as {}", self.user_name),
        };
        match self.landlock_abi {
            0 => format!("workers run {user}, not confined: this kernel has no Landlock"),
            abi @ 1..=5 => format!(
                "workers run {user}, confined by Landlock ABI {abi} (files only: this kernel cannot scope \
                 signals and abstract sockets)"
            ),
            abi => format!("workers run {user}, confined by Landlock ABI {abi}"),
        }
    }
}

fn current_user_name() -> String {
    nix::unistd::User::from_uid(Uid::effective())
        .ok()
        .flatten()
        .map_or_else(|| Uid::effective().to_string(), |u| u.name)
}

/// A user name or a numeric uid (then its primary group is the uid's, or the same number).
fn resolve_user(name: &str) -> Result<WorkerUser, FunctionsError> {
    let bad = |why: String| FunctionsError::Config(format!("--worker-user {name}: {why}"));
    if let Ok(uid) = name.parse::<u32>() {
        let uid = Uid::from_raw(uid);
        let gid = nix::unistd::User::from_uid(uid).ok().flatten().map_or(Gid::from_raw(uid.as_raw()), |u| u.gid);
        return Ok(WorkerUser { uid, gid });
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(WorkerUser { uid: user.uid, gid: user.gid }),
        Ok(None) => Err(bad("no such user on this machine (give a user name or a numeric uid)".into())),
        Err(e) => Err(bad(format!("cannot look the user up: {e}"))),
    }
}

/// The highest Landlock ABI this kernel enforces (0: none).
fn probe_abi() -> i32 {
    let abis = [ABI::V7, ABI::V6, ABI::V5, ABI::V4, ABI::V3, ABI::V2, ABI::V1];
    for (abi, number) in abis.into_iter().zip((1..=7).rev()) {
        let supported = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(abi))
            .and_then(|r| r.create())
            .is_ok();
        if supported {
            return number;
        }
    }
    0
}

/// What one worker's instances may reach, computed when its launch spec is built.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
}

impl Rules {
    /// The defaults plus the worker's own `sandbox` paths (relative to the app folder).
    /// `interpreter_paths` are what the interpreter reported it loads from. Nothing may contain the data dir: granting a parent would
    /// grant the admin token too.
    pub fn new(
        app_dir: &Path,
        data_dir: &Path,
        sdk_dirs: &[&Path],
        program: &Path,
        interpreter_paths: &[PathBuf],
        worker: &str,
        sandbox: &SandboxSection,
    ) -> Result<Self, FunctionsError> {
        let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
        read.extend(DEVICES_READ.iter().map(PathBuf::from));
        // /etc/resolv.conf is often a link into /run (systemd-resolved).
        if let Ok(resolv) = std::fs::canonicalize("/etc/resolv.conf")
            && let Some(dir) = resolv.parent()
        {
            read.push(dir.to_path_buf());
        }
        read.extend(sdk_dirs.iter().map(|d| d.to_path_buf()));
        let guarded = |path: &Path| contains(path, data_dir);
        // The interpreter's installation (the folder above its bin/), and its library paths.
        if let Ok(real) = std::fs::canonicalize(program)
            && let Some(prefix) = real.parent().and_then(Path::parent)
            && prefix.parent().is_some()
        {
            read.push(prefix.to_path_buf());
        }
        read.extend(interpreter_paths.iter().filter(|p| p.is_absolute()).cloned());
        read.retain(|p| !guarded(p));
        // The app folder, minus the data dir when it lives inside it.
        if contains(app_dir, data_dir) {
            read.push(app_dir.to_path_buf()); // listing only: see `grant`
            for entry in std::fs::read_dir(app_dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if !contains(&path, data_dir) {
                    read.push(path);
                }
            }
        } else {
            read.push(app_dir.to_path_buf());
        }
        let mut write: Vec<PathBuf> = DEVICES_WRITE.iter().map(PathBuf::from).collect();
        for (key, paths, into) in [("read", &sandbox.read, &mut read), ("write", &sandbox.write, &mut write)] {
            for path in paths {
                let given = app_dir.join(path);
                let path = std::fs::canonicalize(&given).map_err(|e| {
                    FunctionsError::Config(format!("workers.{worker}.sandbox.{key}: {}: {e}", given.display()))
                })?;
                if guarded(&path) {
                    return Err(FunctionsError::Config(format!(
                        "workers.{worker}.sandbox.{key}: {} holds the node's data dir {}",
                        path.display(),
                        data_dir.display()
                    )));
                }
                into.push(path);
            }
        }
        Ok(Self { read, write })
    }

    /// The ruleset for one instance, made by the host before it starts the process (opening the
    /// paths allocates; the child only enforces it). `own` is the instance's folder.
    pub fn ruleset(&self, app_dir: &Path, data_dir: &Path, own: &Path) -> Result<RulesetCreated, RulesetError> {
        let read = AccessFs::from_read(ABI_TARGET);
        let all = AccessFs::from_all(ABI_TARGET);
        // The app folder itself, when the data dir is inside it: its listing, nothing beneath.
        let (listing, files): (Vec<&PathBuf>, Vec<&PathBuf>) =
            self.read.iter().partition(|p| p.as_path() == app_dir && contains(app_dir, data_dir));
        Ruleset::default()
            .handle_access(all)?
            .scope(Scope::AbstractUnixSocket | Scope::Signal)?
            .create()?
            .add_rules(path_beneath_rules(listing, AccessFs::ReadDir))?
            .add_rules(path_beneath_rules(files, read))?
            .add_rules(path_beneath_rules(&self.write, all))?
            .add_rules(path_beneath_rules([own], all))
    }
}

/// Whether `path` is `inner` or one of its ancestors (compared as given: both are absolute,
/// canonical paths of the node's own making).
fn contains(path: &Path, inner: &Path) -> bool {
    inner.starts_with(path)
}

/// Run in the child between fork and exec (async-signal-safe: setgroups, setgid, setuid).
pub(crate) fn become_user(user: WorkerUser) -> std::io::Result<()> {
    nix::unistd::setgroups(&[user.gid])?;
    nix::unistd::setgid(user.gid)?;
    nix::unistd::setuid(user.uid)?;
    Ok(())
}

/// Run in the child between fork and exec: `prctl(NO_NEW_PRIVS)` and `landlock_restrict_self`.
pub(crate) fn enforce(ruleset: RulesetCreated) -> std::io::Result<RestrictionStatus> {
    ruleset.restrict_self().map_err(|_| std::io::Error::other("landlock_restrict_self failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_granted_contains_the_data_dir() {
        let app = tempfile::tempdir().unwrap();
        let app_dir = std::fs::canonicalize(app.path()).unwrap();
        let data_dir = app_dir.join(".nimbus");
        std::fs::create_dir(&data_dir).unwrap();
        std::fs::write(app_dir.join("app.py"), "").unwrap();
        std::fs::create_dir(app_dir.join("lib")).unwrap();
        // An interpreter "installed" in the app folder's parent would grant everything.
        let env = Path::new("/usr/bin/env");
        let sandbox = |read: &[&str], write: &[&str]| SandboxSection {
            enabled: true,
            read: read.iter().map(PathBuf::from).collect(),
            write: write.iter().map(PathBuf::from).collect(),
        };
        let interpreter_paths = [app_dir.parent().unwrap().to_path_buf(), PathBuf::from("relative")];
        let rules = Rules::new(&app_dir, &data_dir, &[], env, &interpreter_paths, "main", &sandbox(&[], &[])).unwrap();
        assert!(rules.read.iter().all(|p| !data_dir.starts_with(p) || p == &app_dir), "{:?}", rules.read);
        assert!(rules.read.contains(&app_dir.join("app.py")) && rules.read.contains(&app_dir.join("lib")));
        assert!(!rules.read.iter().any(|p| p.is_relative()));
        let err = Rules::new(&app_dir, &data_dir, &[], env, &[], "main", &sandbox(&["."], &[])).unwrap_err();
        assert!(err.to_string().contains("workers.main.sandbox.read"), "{err}");
        let err = Rules::new(&app_dir, &data_dir, &[], env, &[], "main", &sandbox(&[], &["nope"])).unwrap_err();
        assert!(err.to_string().contains("workers.main.sandbox.write") && err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn a_missing_user_is_named() {
        let err = resolve_user("no-such-user-here").unwrap_err();
        assert!(err.to_string().contains("--worker-user no-such-user-here: no such user"), "{err}");
        assert_eq!(resolve_user("0").unwrap().uid, Uid::from_raw(0));
    }
}
