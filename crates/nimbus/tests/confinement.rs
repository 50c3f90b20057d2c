//! A function's code reaches no more than its grants (issue 14, item 5): not the node's data dir
//! (admin token, database), not other instances' sockets, not the host process; and, on a root
//! node, it does not run as root. Each attack runs from inside a real worker.

mod support;

use serde_json::{Value, json};
use support::{App, command, wait_until};

const APP_PY: &str = r#"
import os, socket
import nimbus

app = nimbus.App()

def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}

def read(path):
    with open(path, "rb") as f:
        return len(f.read())

def write(path):
    with open(path, "w") as f:
        f.write("planted")
    return path

def ask(path):
    # What any process can do with a pathname socket: connect and speak the worker protocol.
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    s.sendall(b"GET /_nimbus/worker/index HTTP/1.1\r\nhost: w\r\nconnection: close\r\n\r\n")
    head = b""
    while b"\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return head.split(b"\r\n", 1)[0].decode()

@app.http("/probe", methods=["POST"])
async def probe(req, ctx):
    task = await req.json()
    host = os.getppid()
    return {
        "uid": os.getuid(),
        "reads": {p: attempt(lambda p=p: read(p)) for p in task["read"]},
        "writes": {p: attempt(lambda p=p: write(p)) for p in task["write"]},
        "sockets": {p: attempt(lambda p=p: ask(p)) for p in task["sockets"]},
        "tmp": attempt(lambda: write(os.path.join(os.environ["TMPDIR"], "scratch"))),
        "signal_host": attempt(lambda: os.kill(host, 0)),
        "host_environ": attempt(lambda: read(f"/proc/{host}/environ")),
        "key_in_env": "NIMBUS_WORKER_KEY" in os.environ,
    }

@app.http("/victim")
async def victim(req, ctx):
    return {"victim": True}
"#;

fn probe_app(extra: &str) -> (App, tempfile::TempDir) {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("model.bin"), "weights").unwrap();
    std::fs::write(outside.path().join("secret.txt"), "not granted").unwrap();
    std::fs::create_dir(outside.path().join("granted")).unwrap();
    std::fs::write(outside.path().join("granted/model.bin"), "weights").unwrap();
    // Debian's interpreter: one `nobody` can run (root's pyenv lives in a 0700 home).
    let manifest = format!(
        "[workers.main]\nruntime = \"python\"\nentry = \"app.py\"\npython = \"/usr/bin/python3\"\n{extra}\n\n\
         [functions.victim]\nmin_instances = 1\n\n[[routes]]\npath = \"/*\"\nauth = \"anonymous\"\n"
    );
    let app = App::new(Some(&manifest));
    std::fs::write(app.path().join("app.py"), APP_PY).unwrap();
    std::fs::write(app.path().join("notes.txt"), "app file").unwrap();
    (app, outside)
}

/// The node as a newcomer starts it: no `--worker-user` (the test support's default is root).
fn start(app: &App, worker_user: Option<&str>) -> support::Node {
    let mut cmd = command();
    cmd.env_remove("NIMBUS_WORKER_USER");
    if let Some(user) = worker_user {
        cmd.env("NIMBUS_WORKER_USER", user);
    }
    support::Node::start_with(cmd, app.path(), &[])
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if path.is_file() {
            out.push(path.display().to_string());
        }
    }
    out
}

fn worker_sockets(data_dir: &std::path::Path) -> Vec<String> {
    let run = data_dir.join("run");
    let mut out: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("worker.sock"))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    out.sort();
    out
}

async fn probe(node: &support::Node, task: Value) -> Value {
    let resp = reqwest::Client::new().post(node.url("/probe")).json(&task).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn ok(result: &Value) -> bool {
    result["ok"] == true
}

#[tokio::test]
async fn a_function_reaches_neither_the_data_dir_nor_its_siblings_nor_the_host() {
    let (app, outside) = probe_app("[workers.main.sandbox]\nread = [\"OUTSIDE/granted\"]\n");
    // The granted folder is outside the app: name it absolutely.
    let manifest = std::fs::read_to_string(app.path().join("nimbus.toml")).unwrap();
    let granted = outside.path().display().to_string();
    std::fs::write(app.path().join("nimbus.toml"), manifest.replace("OUTSIDE", &granted)).unwrap();
    let node = start(&app, None);
    let data_dir = app.data_dir();
    // Everything the node keeps, but the SDK (public: it is in the binary) and sockets.
    let secrets: Vec<String> =
        files_under(&data_dir).into_iter().filter(|p| !p.contains("/sdk/") && !p.ends_with(".sock")).collect();
    assert!(secrets.iter().any(|p| p.ends_with("admin-token")), "{secrets:?}");
    // The victim's instance is warm; the probe's starts with this request, so ask twice.
    wait_until("the victim's instance", std::time::Duration::from_secs(20), async || {
        !worker_sockets(&data_dir).is_empty()
    })
    .await;
    let _ = probe(&node, json!({"read": [], "write": [], "sockets": []})).await;
    let sockets = worker_sockets(&data_dir);
    assert!(sockets.len() >= 2, "the victim's and the probe's own: {sockets:?}");
    let allowed_read =
        [app.path().join("notes.txt"), outside.path().join("granted/model.bin"), "/etc/os-release".into()];
    let denied_read = [outside.path().join("secret.txt")];
    let mut read: Vec<String> = secrets.clone();
    read.extend(allowed_read.iter().chain(&denied_read).map(|p| p.display().to_string()));
    let write = [app.path().join("planted.py"), data_dir.join("planted"), outside.path().join("planted")];
    let report = probe(
        &node,
        json!({"read": read, "write": write.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(), "sockets": sockets}),
    )
    .await;

    for secret in &secrets {
        assert!(!ok(&report["reads"][secret]), "read {secret}: {}", report["reads"][secret]);
    }
    for path in &allowed_read {
        let path = path.display().to_string();
        assert!(ok(&report["reads"][&path]), "read {path}: {}", report["reads"][&path]);
    }
    for path in &denied_read {
        let path = path.display().to_string();
        assert!(!ok(&report["reads"][&path]), "read {path}: {}", report["reads"][&path]);
    }
    for path in &write {
        let path = path.display().to_string();
        assert!(!ok(&report["writes"][&path]), "write {path}: {}", report["writes"][&path]);
        assert!(!std::path::Path::new(&path).exists());
    }
    assert!(ok(&report["tmp"]), "its TMPDIR is writable: {}", report["tmp"]);
    // Reaching a socket is not using it: without the instance's key every worker refuses.
    for socket in &sockets {
        let answer = &report["sockets"][socket];
        assert!(!ok(answer) || answer["value"].as_str().unwrap().starts_with("HTTP/1.1 403"), "{socket}: {answer}");
    }
    assert!(!ok(&report["signal_host"]), "signal the host: {}", report["signal_host"]);
    assert!(!ok(&report["host_environ"]), "the host's environment: {}", report["host_environ"]);
    assert_eq!(report["key_in_env"], false, "the SDK drops its key from the environment");
    if nix_is_root() {
        assert_ne!(report["uid"], 0, "a root node runs workers unprivileged");
    }
    // The node says how its workers are confined.
    assert!(node.stderr().contains("confined by Landlock"), "{}", node.stderr());
}

#[tokio::test]
async fn landlock_alone_confines_a_root_worker_and_the_escape_hatch_opens_it() {
    // Workers kept root (`--worker-user root`): file permissions no longer protect the data dir,
    // the sandbox does.
    let (app, _outside) = probe_app("");
    let node = start(&app, Some("root"));
    let token = app.data_dir().join("admin-token").display().to_string();
    let report = probe(&node, json!({"read": [token], "write": [], "sockets": []})).await;
    assert!(!ok(&report["reads"][&token]), "{report}");
    assert!(!ok(&report["signal_host"]), "{report}");
    drop(node);

    // Proof that the probe can see a leak: unconfined, the same function reads the admin token
    // (as root, or as the node's own user when the tests do not run as root).
    let (app, _outside) = probe_app("[workers.main.sandbox]\nenabled = false\n");
    let node = start(&app, Some("root"));
    let token = app.data_dir().join("admin-token").display().to_string();
    let report = probe(&node, json!({"read": [token], "write": [], "sockets": []})).await;
    assert!(ok(&report["reads"][&token]), "{report}");
    assert!(ok(&report["signal_host"]), "{report}");
}

#[test]
fn an_unknown_worker_user_stops_the_start_with_its_name() {
    let (app, _outside) = probe_app("");
    let mut cmd = command();
    cmd.env("NIMBUS_WORKER_USER", "no-such-user-here");
    let out = cmd.arg("up").arg(app.path()).arg("--port").arg("0").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--worker-user no-such-user-here: no such user"), "{stderr}");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}
