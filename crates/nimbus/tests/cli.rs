//! The CLI's other verbs and its handling of bad manifests.

mod support;

use support::{App, nimbus, text};

fn up_fails_with(manifest: &str) -> String {
    let app = App::new(Some(manifest));
    let out = nimbus(&["up", app.path().to_str().unwrap(), "--port", "0"]);
    assert_eq!(out.status.code(), Some(2), "an invalid manifest exits with 2; stderr: {}", text(&out.stderr));
    assert!(!app.data_dir().exists(), "nothing is written for an invalid manifest");
    text(&out.stderr)
}

#[test]
fn bad_manifests_name_file_line_and_column() {
    let err = up_fails_with("[app]\nname = \"chat\n");
    assert!(err.contains("nimbus.toml:2:13:"), "malformed TOML: {err}");

    let err = up_fails_with("[functions.chat]\nmin_instance = 2\n");
    assert!(
        err.contains("nimbus.toml:2:1: functions.chat: unknown key `min_instance`; did you mean `min_instances`?"),
        "{err}"
    );

    let err = up_fails_with("[server]\nport = \"seventy\"\n");
    assert!(err.contains("nimbus.toml:2:8: server.port: invalid type: string \"seventy\""), "wrong type: {err}");

    let err = up_fails_with("[server]\nshutdown_grace = \"soon\"\n");
    assert!(err.contains("nimbus.toml:2:18: server.shutdown_grace: invalid duration \"soon\""), "bad duration: {err}");

    let err = up_fails_with("[store]\nurl = \"${NIMBUS_IT_SURELY_UNSET}\"\n");
    assert!(
        err.contains("nimbus.toml:2:7: store.url: environment variable `NIMBUS_IT_SURELY_UNSET` is not set"),
        "{err}"
    );

    let err = up_fails_with("[functions.chat]\nmin_instances = 3\nmax_instances = 1\n");
    assert!(
        err.contains(
            "nimbus.toml:2:1: functions.chat.min_instances: min_instances (3) is greater than max_instances (1)"
        ),
        "{err}"
    );
}

#[test]
fn env_vars_are_interpolated() {
    let app = App::new(Some("[store]\nurl = \"sqlite://${NIMBUS_IT_DB_NAME}.db\"\n"));
    let out = support::command()
        .args(["validate", app.path().to_str().unwrap()])
        .env("NIMBUS_IT_DB_NAME", "from-env")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn validate_reports_every_problem() {
    let app = App::new(Some("[functions.a]\nconcurrency = 0\n\n[functions.b]\nmax_instances = 0\n"));
    let out = nimbus(&["validate", app.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("nimbus.toml:2:1: functions.a.concurrency: must be at least 1"), "{err}");
    assert!(err.contains("nimbus.toml:5:1: functions.b.max_instances: must be at least 1"), "{err}");

    let ok = App::new(Some("[app]\nname = \"fine\"\n"));
    let out = nimbus(&["validate", ok.path().to_str().unwrap()]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("valid (app \"fine\")"));

    let out = nimbus(&["validate", "/definitely/not/here"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("does not exist"), "{}", text(&out.stderr));
}

#[test]
fn init_writes_a_valid_app_and_never_overwrites() {
    for template in ["python", "node"] {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("My App");
        let dir_s = dir.to_str().unwrap();
        let out = nimbus(&["init", dir_s, "--template", template]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let manifest = std::fs::read_to_string(dir.join("nimbus.toml")).unwrap();
        assert!(manifest.contains("name = \"my-app\"") && manifest.contains(&format!("runtime = \"{template}\"")));
        let entry = if template == "python" { "functions/app.py" } else { "functions/app.js" };
        assert!(std::fs::read_to_string(dir.join(entry)).unwrap().contains("/hello"));
        assert!(nimbus(&["validate", dir_s]).status.success());

        std::fs::write(dir.join("nimbus.toml"), "# mine\n").unwrap();
        let out = nimbus(&["init", dir_s, "--template", template]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stderr).contains("already has nimbus.toml"), "{}", text(&out.stderr));
        assert_eq!(std::fs::read_to_string(dir.join("nimbus.toml")).unwrap(), "# mine\n", "nothing overwritten");
        assert!(nimbus(&["init", dir_s, "--template", template, "--force"]).status.success());
    }
    let out = nimbus(&["init", "--template", "cobol"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid value 'cobol'"));
}

#[test]
fn version_and_help() {
    let out = nimbus(&["--version"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), format!("nimbus {}", env!("CARGO_PKG_VERSION")));
    let out = nimbus(&["--help"]);
    for verb in ["up", "init", "validate"] {
        assert!(text(&out.stdout).contains(verb));
    }
    let out = nimbus(&["up", "--help"]);
    for flag in ["--port", "--data-dir", "--store", "--log-format"] {
        assert!(text(&out.stdout).contains(flag), "{flag}");
    }
    let out = nimbus(&["up", "--port", "not-a-port"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `nimbus keys` writes to the store a running node reads: a key created from the CLI opens an
/// `api_key` route at once, and a revocation from the CLI closes it at once.
#[tokio::test]
async fn keys_made_by_the_cli_open_and_close_routes_of_a_running_node() {
    let app = App::new(Some(
        "[workers.main]\nruntime = \"python\"\nentry = \"app.py\"\n\n[[routes]]\npath = \"/paid\"\nauth = \"api_key\"\n",
    ));
    std::fs::write(
        app.path().join("app.py"),
        "import nimbus\napp = nimbus.App()\n\n@app.http(\"/paid\", methods=[\"GET\"])\nasync def paid(req, ctx):\n    return {\"caller\": req.claims}\n",
    )
    .unwrap();
    let node = app.start(&[]);
    let dir = app.path().to_str().unwrap();
    let out = nimbus(&["keys", "--app", dir, "--json", "create", "--name", "partner", "--expires", "1d"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (id, key) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    assert!(key.starts_with(&format!("nk_{id}_")), "{created}");

    let client = reqwest::Client::new();
    let call = |key: &str| client.get(node.url("/paid")).header("x-api-key", key.to_owned()).send();
    let resp = call(key).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["caller"], serde_json::json!({"api_key": {"id": id, "name": "partner"}}));

    let listed = text(&nimbus(&["keys", "--app", dir, "list"]).stdout);
    assert!(listed.contains(id) && listed.contains("active") && !listed.contains(key), "{listed}");

    let out = nimbus(&["keys", "--app", dir, "revoke", id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let resp = call(key).await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "api_key_revoked");

    let out = nimbus(&["keys", "--app", dir, "revoke", "0123456789abcdef"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no API key has id \"0123456789abcdef\""), "{}", text(&out.stderr));
    let out = nimbus(&["keys", "--app", dir, "create", "--name", "x", "--expires", "soon"]);
    assert!(text(&out.stderr).contains("--expires: invalid duration \"soon\""), "{}", text(&out.stderr));
}
