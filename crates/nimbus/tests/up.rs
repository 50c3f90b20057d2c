//! `nimbus up` end to end: the real binary on an ephemeral port.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nimbus_store::testing::{Backend, TestDb};
use serde_json::Value;
use support::{App, Node, admin_token, nimbus, text};

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn json(resp: reqwest::Response) -> Value {
    resp.json().await.expect("a JSON body")
}

#[tokio::test]
async fn health_metrics_admin_and_errors() {
    let app = App::new(Some("[app]\nname = \"demo\"\n"));
    let node = app.start(&[]);
    let http = client();

    // The banner tells where things are.
    assert!(node.stdout.contains("app \"demo\""), "{}", node.stdout);
    assert!(node.stdout.contains("admin token") && node.stdout.contains("admin-token (new)"), "{}", node.stdout);

    let live = http.get(node.url("/_nimbus/health")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(json(live).await, serde_json::json!({"status": "ok"}));

    let ready = http.get(node.url("/_nimbus/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready = json(ready).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["store"]["backend"], "sqlite");

    // The admin token: created 0600 in the data dir, required on admin routes and metrics.
    let token_path = app.data_dir().join("admin-token");
    assert_eq!(std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777, 0o600);
    let token = admin_token(&app);
    for path in ["/_nimbus/admin/info", "/_nimbus/metrics", "/_nimbus/admin/nothing-here"] {
        let resp = http.get(node.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        assert_eq!(json(resp).await["error"]["code"], "unauthorized", "{path}");
        let resp = http.get(node.url(path)).bearer_auth("nimbus_admin_wrong").send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
    }
    let info = http.get(node.url("/_nimbus/admin/info")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(info.status(), 200);
    let info = json(info).await;
    assert_eq!(info["app"], "demo");
    assert_eq!(info["store"]["backend"], "sqlite");
    let missing = http.get(node.url("/_nimbus/admin/nothing-here")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    // Errors have the JSON shape.
    let resp = http.get(node.url("/no/such/path")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body = json(resp).await;
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"].as_str().unwrap().contains("GET /no/such/path"));
    let resp = http.delete(node.url("/_nimbus/health")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(json(resp).await["error"]["code"], "method_not_allowed");

    // Request ids and trace context.
    let resp = http
        .get(node.url("/_nimbus/health"))
        .header("x-request-id", "req-42")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    let traceresponse = resp.headers()["traceresponse"].to_str().unwrap();
    assert!(traceresponse.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{traceresponse}");
    let resp = http.get(node.url("/_nimbus/health")).header("x-request-id", "bad id <x>").send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"].len(), 32, "an unsafe request id is replaced");
    node.wait_for_log(
        |log| log.contains("request_id=req-42") && log.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
        Duration::from_secs(5),
    );

    // Metrics: counters and histograms per route.
    let metrics = http.get(node.url("/_nimbus/metrics")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains(r#"nimbus_http_requests_total{route="/_nimbus/health",method="GET",status="200"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"route="unmatched",method="GET",status="404""#), "{metrics}");
    assert!(metrics.contains("nimbus_http_request_duration_seconds_bucket{"), "{metrics}");
    assert!(metrics.contains("# TYPE nimbus_http_request_duration_seconds histogram"), "{metrics}");
    assert!(
        metrics.contains(r#"nimbus_store_operation_duration_seconds_count{backend="sqlite",op="ping"}"#),
        "the readiness check's store call is measured: {metrics}"
    );
}

#[tokio::test]
async fn a_folder_without_manifest_runs_with_defaults() {
    let app = App::new(None);
    let node = app.start(&[]);
    assert!(node.stdout.contains("manifest       none (defaults)"), "{}", node.stdout);
    let info: Value = support::admin_get(&node, &app, "/_nimbus/admin/info").await.json().await.unwrap();
    let folder = app.path().file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(info["app"], folder.as_str());
}

#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let app = App::new(None);
    let node = app.start(&["--log-format", "json"]);
    client().get(node.url("/_nimbus/health")).header("x-request-id", "json-7").send().await.unwrap();
    node.wait_for_log(|log| log.contains("json-7"), Duration::from_secs(5));
    let line = node.stderr().lines().find(|l| l.contains("json-7")).unwrap().to_owned();
    let event: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(event["span"]["request_id"], "json-7");
    assert_eq!(event["fields"]["status"], 200);
}

#[tokio::test]
async fn sigterm_and_sigint_stop_the_node_cleanly() {
    for signal in ["TERM", "INT"] {
        let app = App::new(Some("[server]\nshutdown_grace = \"5s\"\n"));
        let mut node = app.start(&[]);
        let url = node.url("/_nimbus/health");
        assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
        let (status, took) = node.signal_and_wait(signal, Duration::from_secs(10));
        assert!(status.success(), "SIG{signal}: exit {status}\n{}", node.stderr());
        assert!(took < Duration::from_secs(5), "SIG{signal}: an idle node stops at once, took {took:?}");
        assert!(node.stderr().contains("shutting down"), "{}", node.stderr());
        assert!(client().get(&url).send().await.is_err(), "nothing listens after shutdown");
    }
}

#[tokio::test]
async fn a_killed_node_restarts_consistent_with_the_same_token() {
    let app = App::new(None);
    let mut node = app.start(&[]);
    let token = admin_token(&app);
    node.signal_and_wait("KILL", Duration::from_secs(10));
    let node = app.start(&[]);
    assert!(!node.stdout.contains("(new)"), "the token is kept: {}", node.stdout);
    assert_eq!(admin_token(&app), token);
    let ready = client().get(node.url("/_nimbus/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_second_node_on_the_same_data_dir_is_refused() {
    let app = App::new(None);
    let first = app.start(&[]);
    let err = Node::try_start(app.path(), &[]).err().expect("the second node must not start");
    assert!(err.contains("is in use by another nimbus (pid"), "{err}");
    assert!(err.contains(&first.pid().to_string()), "{err}");
    let ready = client().get(first.url("/_nimbus/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "the first node is unharmed");
}

#[tokio::test]
async fn a_port_in_use_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let app = App::new(None);
    let out = nimbus(&["up", app.path().to_str().unwrap(), "--port", &port]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("port {port} on 127.0.0.1 is already in use")) && err.contains("--port"), "{err}");
}

#[tokio::test]
async fn an_unusable_data_dir_is_reported() {
    let app = App::new(None);
    let file = app.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let data_dir = file.join("data");
    let out = nimbus(&["up", app.path().to_str().unwrap(), "--port", "0", "--data-dir", data_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("cannot use data dir") && err.contains("--data-dir"), "{err}");
}

#[tokio::test]
async fn an_unreachable_postgres_is_reported_without_its_password() {
    let app = App::new(None);
    let url = "postgres://nimbus:hunter2@127.0.0.1:1/nimbus";
    let out = nimbus(&["up", app.path().to_str().unwrap(), "--port", "0", "--store", url]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach PostgreSQL at postgres://nimbus:***@127.0.0.1:1/nimbus"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn the_store_url_selects_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = App::new(None);
    let node = app.start(&["--store", db.url()]);
    let ready: Value = client().get(node.url("/_nimbus/health/ready")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"]["store"]["backend"], "postgres");
    assert!(node.stdout.contains("store          postgres postgres://"), "{}", node.stdout);

    // Readiness follows the store: with the schema gone, the node is alive but not ready.
    db.cleanup().await;
    let ready = client().get(node.url("/_nimbus/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "unavailable");
    assert_eq!(ready["checks"]["store"]["status"], "error");
    assert_eq!(client().get(node.url("/_nimbus/health")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    let known = nimbus_store::CORE_MIGRATIONS.iter().map(|m| m.version).max().unwrap();
    let future =
        nimbus_store::Migration { component: "store", version: known + 1, sqlite: "SELECT 1;", postgres: "SELECT 1;" };
    let db = TestDb::new(Backend::Sqlite).await;
    let newer: Vec<_> = nimbus_store::CORE_MIGRATIONS.iter().copied().chain([future]).collect();
    drop(db.open_with(&newer).await.unwrap());
    let app = App::new(None);
    let data_dir = db.data_dir().to_str().unwrap();
    let out = nimbus(&["up", app.path().to_str().unwrap(), "--port", "0", "--data-dir", data_dir]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let expected =
        format!("schema of `store` is at version {}, newer than this nimbus binary supports ({known})", known + 1);
    assert!(err.contains(&expected), "{err}");
}

#[tokio::test]
async fn the_manifest_can_choose_the_store() {
    let app = App::new(Some("[store]\nurl = \"sqlite://custom.db\"\n"));
    let node = app.start(&[]);
    assert!(app.data_dir().join("custom.db").exists());
    assert!(node.stdout.contains("custom.db"), "{}", node.stdout);
}

#[tokio::test]
async fn a_stopping_node_stops_its_components_in_order_within_the_grace() {
    let manifest = "[server]\nshutdown_grace = \"5s\"\n\n[identity]\naudience = \"api://t\"\n\n\
                    [docs.containers.notes]\npartition_key = \"/user\"\n\n\
                    [workers.main]\nruntime = \"python\"\nentry = \"app.py\"\n\n[functions.hello]\nmin_instances = 1\n";
    let app = App::new(Some(manifest));
    std::fs::write(
        app.path().join("app.py"),
        "import nimbus\napp = nimbus.App()\n\n@app.http('/hello')\nasync def hello(req, ctx):\n    return 'hi'\n",
    )
    .unwrap();
    let mut node = app.start(&[]);
    let (status, took) = node.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.success(), "exit {status}\n{}", node.stderr());
    assert!(took < Duration::from_secs(5), "an idle node stops well within its grace, took {took:?}");
    let log = node.stderr();
    let at = |component: &str| {
        log.find(&format!("component=\"{component}\"")).unwrap_or_else(|| panic!("no stop of {component}:\n{log}"))
    };
    let order = ["functions", "gateway", "docs", "blob", "identity", "node"].map(at);
    assert!(order.is_sorted(), "components stop in the stated order: {order:?}\n{log}");
}
