//! One worker process: started with a scrubbed environment in the app folder, confined
//! (`sandbox.rs`), tied to the host's life (parent-death signal), logged line by line, reached over
//! HTTP/1.1 on a Unix socket in a folder of its own.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::sync::watch;

/// Lines of stderr kept to explain a worker that fails to start.
const STDERR_TAIL: usize = 20;
/// Longer output lines are split.
const MAX_LINE: u64 = 16 * 1024;
/// Lines a second each of an instance's streams may put in the node's log (with a burst of
/// [`LOG_BURST`]); a worker printing in a loop cannot flood the log or starve the node.
const LOG_RATE: u32 = 200;
const LOG_BURST: u32 = 1000;
/// How long a worker gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How to start instances of one worker.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec {
    pub worker: String,
    pub program: PathBuf,
    /// Arguments; `{socket}` is replaced by the instance's socket path.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub start_timeout: Duration,
    /// Where instances get a cgroup of their own, when the node can make them.
    pub cgroups: Option<Arc<crate::cgroup::Cgroups>>,
    /// What its instances may reach (Landlock); `None` runs them unconfined.
    pub sandbox: Option<Arc<crate::sandbox::Rules>>,
    /// Who its instances run as, when not the node's own user.
    pub user: Option<crate::sandbox::WorkerUser>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("it exited ({status}) during start-up{tail}")]
    Exited { status: String, tail: String },
    #[error("its socket did not accept connections within {timeout:?}{tail}")]
    Timeout { timeout: Duration, tail: String },
    #[error("cannot prepare its sandbox: {0}")]
    Sandbox(String),
}

pub(crate) struct Instance {
    pub id: String,
    pub started_at: Instant,
    pid: u32,
    socket: PathBuf,
    /// Sent with every request: the worker answers its host only (PROTOCOL.md §1).
    key: http::HeaderValue,
    idle: Mutex<Vec<SendRequest<Body>>>,
    exited: watch::Receiver<bool>,
    stopping: AtomicBool,
    /// Its platform token, revoked when the instance goes.
    _token: Option<crate::access::TokenGuard>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("id", &self.id).field("pid", &self.pid).finish()
    }
}

impl Instance {
    /// Starts a process and waits until its socket accepts a connection. `function` is set once
    /// the host knows which function the instance serves (not while indexing), with the access to
    /// the platform API its grants give.
    pub async fn start(
        spec: &LaunchSpec,
        id: &str,
        function: Option<(&str, &crate::access::Access)>,
    ) -> Result<Arc<Self>, StartError> {
        let started_at = Instant::now();
        // A folder of its own (socket and TMPDIR), named short: socket paths are capped at 108 bytes.
        let own = spec.socket_dir.join(nimbus_api::hex(&rand::random::<[u8; 8]>()));
        prepare_own_dir(&own, spec.user).map_err(|e| StartError::Sandbox(format!("{}: {e}", own.display())))?;
        let socket = own.join("worker.sock");
        let socket_str = socket.display().to_string();
        let key = nimbus_api::hex(&rand::random::<[u8; 32]>());
        let mut ruleset = match spec.sandbox.as_ref().map(|rules| rules.ruleset(&spec.cwd, &spec.data_dir, &own)) {
            Some(Err(e)) => {
                let _ = std::fs::remove_dir_all(&own);
                return Err(StartError::Sandbox(e.to_string()));
            }
            made => made.and_then(Result::ok),
        };
        let user = spec.user;
        let mut cmd = Command::new(&spec.program);
        cmd.args(spec.args.iter().map(|a| a.replace("{socket}", &socket_str)))
            .current_dir(&spec.cwd)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("NIMBUS_PROTOCOL", "1")
            .env("NIMBUS_WORKER_SOCKET", &socket)
            .env("NIMBUS_WORKER_NAME", &spec.worker)
            .env("NIMBUS_INSTANCE_ID", id)
            .env("NIMBUS_APP_DIR", &spec.cwd)
            .env("NIMBUS_WORKER_KEY", &key)
            .env("TMPDIR", own.join("tmp"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let token = function.map(|(name, access)| {
            let token = access.tokens.mint(name, &access.grants);
            cmd.env("NIMBUS_FUNCTION", name)
                .env("NIMBUS_PLATFORM_SOCKET", &access.socket)
                .env("NIMBUS_PLATFORM_TOKEN", &token.token);
            token
        });
        let function = function.map(|(name, _)| name);
        let host = std::process::id();
        let cgroup = spec.cgroups.as_ref().and_then(|c| c.create(id));
        let procs = cgroup.as_ref().and_then(|c| c.procs_path());
        // SAFETY: only async-signal-safe calls (open, write, setpgid, umask, setgroups, setgid,
        // setuid, prctl, getppid, landlock_restrict_self, _exit) run between fork and exec; the
        // ruleset was built (and its paths opened) before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Its own cgroup first, so that nothing it starts can escape it. Best effort: an
                // instance that cannot join still has its process group.
                if let Some(procs) = &procs {
                    let _ = crate::cgroup::join(procs);
                }
                // Its own process group, so stopping it reaches the helpers it forks.
                nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
                // The host keeps a private umask for its data dir; user code gets the usual one.
                nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
                if let Some(user) = user {
                    crate::sandbox::become_user(user)?;
                }
                // Killed by the kernel when the host dies, even by SIGKILL (after setuid, which
                // clears it).
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                if nix::unistd::getppid().as_raw() as u32 != host {
                    nix::libc::_exit(1); // the host died before prctl took effect
                }
                // Last: what it may reach from here on, for good.
                if let Some(ruleset) = ruleset.take() {
                    crate::sandbox::enforce(ruleset)?;
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&own);
                return Err(StartError::Spawn { program: spec.program.display().to_string(), source });
            }
        };
        let pid = child.id().unwrap_or_default();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, spec.worker.clone(), id.to_owned(), function.map(str::to_owned), "stdout", None));
        }
        if let Some(err) = child.stderr.take() {
            let tail = Some(tail.clone());
            tokio::spawn(pump(err, spec.worker.clone(), id.to_owned(), function.map(str::to_owned), "stderr", tail));
        }
        let (exit_tx, exited) = watch::channel(false);
        let (status_tx, mut status_rx) = watch::channel(None::<String>);
        let worker_name = spec.worker.clone();
        let instance_id = id.to_owned();
        let own_dir = own.clone();
        tokio::spawn(async move {
            let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            tracing::debug!(worker = %worker_name, instance = %instance_id, %status, "worker exited");
            // Whatever it forked goes with it (its group; and, with a cgroup, what left the group
            // too), and so does its socket.
            kill_group(pid, nix::sys::signal::Signal::SIGKILL);
            if let Some(cgroup) = cgroup {
                cgroup.end().await;
            }
            let _ = tokio::fs::remove_dir_all(&own_dir).await;
            let _ = status_tx.send(Some(status));
            let _ = exit_tx.send(true);
        });

        let deadline = started_at + spec.start_timeout;
        let mut delay = Duration::from_millis(1);
        loop {
            let exit_status = status_rx.borrow_and_update().clone();
            if let Some(status) = exit_status {
                return Err(StartError::Exited { status, tail: render_tail(&tail).await });
            }
            if let Ok(conn) = connect(&socket).await {
                let instance = Arc::new(Self {
                    id: id.to_owned(),
                    started_at,
                    pid,
                    socket,
                    key: http::HeaderValue::from_str(&key).expect("hex is a valid header value"),
                    idle: Mutex::new(vec![conn]),
                    exited,
                    stopping: AtomicBool::new(false),
                    _token: token,
                });
                return Ok(instance);
            }
            if Instant::now() >= deadline {
                kill_group(pid, nix::sys::signal::Signal::SIGKILL);
                return Err(StartError::Timeout { timeout: spec.start_timeout, tail: render_tail(&tail).await });
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = status_rx.changed() => {}
            }
            // Poll often: every millisecond spent here is cold-start latency.
            delay = (delay * 2).min(Duration::from_millis(5));
        }
    }

    pub fn has_exited(&self) -> bool {
        *self.exited.borrow()
    }

    /// Resolves when the process has exited.
    pub async fn wait_exit(&self) {
        let mut rx = self.exited.clone();
        let _ = rx.wait_for(|exited| *exited).await;
    }

    /// A connection ready for one request: an idle one, or a new one.
    pub async fn connection(&self) -> std::io::Result<SendRequest<Body>> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(mut conn) if !conn.is_closed() => {
                    if conn.ready().await.is_ok() {
                        return Ok(conn);
                    }
                }
                Some(_) => continue,
                None => return connect(&self.socket).await,
            }
        }
    }

    /// Returns a connection whose last response was read to the end, for the next request.
    pub fn give_back(&self, conn: SendRequest<Body>) {
        if !conn.is_closed() && !self.stopping.load(Ordering::Relaxed) {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        }
    }

    /// SIGTERM to the worker's process group, SIGKILL if it has not exited after the grace.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if self.has_exited() {
            return;
        }
        kill_group(self.pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, self.wait_exit()).await.is_err() {
            kill_group(self.pid, nix::sys::signal::Signal::SIGKILL);
            self.wait_exit().await;
        }
    }

    /// Adds the instance's key to a request for it; without it the worker refuses.
    pub fn authorize(&self, headers: &mut http::HeaderMap) {
        headers.insert(http::HeaderName::from_static("x-nimbus-worker-key"), self.key.clone());
    }

    /// Index request of SDK workers (PROTOCOL.md §2).
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let mut conn = self.connection().await.map_err(|e| e.to_string())?;
        let mut req =
            http::Request::get(path).header("host", "worker").body(Body::empty()).map_err(|e| e.to_string())?;
        self.authorize(req.headers_mut());
        let resp = conn.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.map_err(|e| e.to_string())?.to_bytes();
        self.give_back(conn);
        if !status.is_success() {
            return Err(format!("{path} answered {status}"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{path} answered invalid JSON: {e}"))
    }
}

use axum::http;

async fn connect(socket: &std::path::Path) -> std::io::Result<SendRequest<Body>> {
    let stream = UnixStream::connect(socket).await?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The instance's folder and its TMPDIR, owned by whoever the instance runs as and private to it.
fn prepare_own_dir(own: &std::path::Path, user: Option<crate::sandbox::WorkerUser>) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let tmp = own.join("tmp");
    std::fs::DirBuilder::new().mode(0o700).create(own)?;
    std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
    if let Some(user) = user {
        for dir in [own, tmp.as_path()] {
            nix::unistd::chown(dir, Some(user.uid), Some(user.gid))?;
        }
    }
    Ok(())
}

fn kill_group(pid: u32, signal: nix::sys::signal::Signal) {
    if pid > 0 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
}

async fn render_tail(tail: &Arc<Mutex<VecDeque<String>>>) -> String {
    // Give the pump a moment to read what the process wrote just before exiting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lines = tail.lock().unwrap_or_else(|p| p.into_inner());
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            "; last lines of its stderr:\n{}",
            lines.iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
        )
    }
}

/// Copies a worker's output into the node's log, one event per line, tagged with who wrote it.
async fn pump(
    stream: impl tokio::io::AsyncRead + Unpin,
    worker: String,
    instance: String,
    function: Option<String>,
    which: &'static str,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut reader = BufReader::new(stream);
    let function = function.unwrap_or_else(|| "-".into());
    let mut buf = Vec::new();
    let quota = governor::Quota::per_second(std::num::NonZeroU32::new(LOG_RATE).unwrap_or(std::num::NonZeroU32::MIN))
        .allow_burst(std::num::NonZeroU32::new(LOG_BURST).unwrap_or(std::num::NonZeroU32::MIN));
    let limiter = governor::RateLimiter::direct(quota);
    let mut dropped: u64 = 0;
    loop {
        buf.clear();
        // Bytes, not UTF-8 lines: a worker printing binary must not lose its pipe (and then die of SIGPIPE).
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_owned();
        // Over the rate, lines are still read (the worker never blocks on its pipe) but not logged.
        if limiter.check().is_err() {
            dropped += 1;
        } else {
            if dropped > 0 {
                tracing::warn!(target: "worker", worker = %worker, function = %function, instance = %instance, stream = which, dropped, "the worker wrote more than {LOG_RATE} lines a second; {dropped} were not logged");
                dropped = 0;
            }
            tracing::info!(target: "worker", worker = %worker, function = %function, instance = %instance, stream = which, "{line}");
        }
        if let Some(tail) = &tail {
            let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    if dropped > 0 {
        tracing::warn!(target: "worker", worker = %worker, function = %function, instance = %instance, stream = which, dropped, "the worker wrote more than {LOG_RATE} lines a second; {dropped} were not logged");
    }
}
