//! Integration harness: runs the real `nimbus` binary in a temporary app folder on `--port 0`
//! and talks HTTP to it, as a user would. On failure, the node's stderr is shown.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A temporary app folder, optionally with a manifest.
pub struct App {
    pub dir: tempfile::TempDir,
}

impl App {
    pub fn new(manifest: Option<&str>) -> Self {
        let dir = tempfile::Builder::new().prefix("nimbus-app-").tempdir().unwrap();
        if let Some(manifest) = manifest {
            std::fs::write(dir.path().join("nimbus.toml"), manifest).unwrap();
        }
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join(".nimbus")
    }

    pub fn start(&self, extra: &[&str]) -> Node {
        Node::start(self.path(), extra)
    }
}

/// A running `nimbus up`. Killed when dropped.
pub struct Node {
    child: Child,
    pub url: String,
    pub stdout: String,
    stderr: Arc<Mutex<String>>,
}

impl Node {
    pub fn start(app_dir: &Path, extra: &[&str]) -> Self {
        Self::try_start(app_dir, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a node from a prepared command (extra environment, say).
    pub fn start_with(cmd: Command, app_dir: &Path, extra: &[&str]) -> Self {
        Self::try_start_with(cmd, app_dir, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a node; on failure returns its output instead of panicking.
    pub fn try_start(app_dir: &Path, extra: &[&str]) -> Result<Self, String> {
        Self::try_start_with(command(), app_dir, extra)
    }

    fn try_start_with(mut cmd: Command, app_dir: &Path, extra: &[&str]) -> Result<Self, String> {
        let mut child = cmd
            .arg("up")
            .arg(app_dir)
            .args(if extra.contains(&"--port") { &[][..] } else { &["--port", "0"][..] })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nimbus");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err_pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let out_pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut stdout = String::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    stdout.push_str(&line);
                    stdout.push('\n');
                    if let Some(url) = line.trim().strip_prefix("listening on") {
                        let url = url.trim().to_owned();
                        // Read the rest of the banner so tests can check it.
                        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                            stdout.push_str(&line);
                            stdout.push('\n');
                            if line.trim().starts_with("manifest") {
                                break;
                            }
                        }
                        return Ok(Self { child, url, stdout, stderr });
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                let stderr = stderr.lock().unwrap().clone();
                return Err(format!(
                    "nimbus up exited with {status} before it was ready\nstdout:\n{stdout}\nstderr:\n{stderr}"
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let stderr = stderr.lock().unwrap().clone();
                return Err(format!("nimbus up was not ready within {START_TIMEOUT:?}\nstderr:\n{stderr}"));
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `signal` (e.g. "TERM", "INT", "KILL") and waits up to `timeout` for the exit.
    pub fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> (ExitStatus, Duration) {
        let sent = Instant::now();
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} failed");
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, sent.elapsed());
            }
            if sent.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("nimbus did not exit within {timeout:?} of SIG{signal}\nstderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `pred` holds for the captured stderr, or panics at the deadline.
    pub fn wait_for_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !pred(&self.stderr()) {
            assert!(Instant::now() < deadline, "log line never appeared; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary with a clean environment for tests (no `NIMBUS_*` from the caller's shell).
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NIMBUS_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("NIMBUS_LOG", "info");
    // Root's interpreters (pyenv, with the packages the tests use) live under a 0700 home that
    // `nobody` cannot read; the tests of the worker user set their own.
    cmd.env("NIMBUS_WORKER_USER", "root");
    cmd
}

/// Runs `nimbus ARGS` to completion.
pub fn nimbus(args: &[&str]) -> Output {
    command().args(args).stdin(Stdio::null()).output().expect("run nimbus")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn admin_token(app: &App) -> String {
    std::fs::read_to_string(app.data_dir().join("admin-token")).unwrap().trim().to_owned()
}

/// GETs an admin endpoint with the node's admin token.
pub async fn admin_get(node: &Node, app: &App, path: &str) -> reqwest::Response {
    reqwest::Client::new().get(node.url(path)).bearer_auth(admin_token(app)).send().await.expect("admin request")
}

/// Waits until `check` holds, polling, or panics after `timeout` naming `what`.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
