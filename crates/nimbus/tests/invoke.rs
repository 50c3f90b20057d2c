//! Functions invoked by name (PROTOCOL.md §4) through the real binary: the admin endpoint
//! `POST /_nimbus/admin/functions/{name}/invoke` uses the same port other components get, with
//! Python and Node.js workers declaring non-HTTP functions through their SDKs.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{App, admin_token, nimbus, text, wait_until};

const APP_PY: &str = r#"
import asyncio, os
import nimbus

app = nimbus.App()

@app.http("/hello", methods=["GET"])
async def hello(req, ctx):
    return {"hello": "world"}

@app.activity()
async def plan(data, ctx):
    return {"steps": [data + " 1", data + " 2"], "trigger": ctx.trigger, "invocation": ctx.invocation_id,
            "traceparent": ctx.traceparent}

@app.activity(name="sync-add")
def add(data, ctx):
    return data["a"] + data["b"]

@app.activity()
async def nothing(data, ctx):
    return None

@app.activity()
async def boom(data, ctx):
    raise RuntimeError("kaput")

@app.activity()
async def wait(data, ctx):
    try:
        await asyncio.sleep(data["s"])
        return "done"
    finally:
        if data.get("marker"):
            open(data["marker"], "w").write("ended")

@app.activity()
async def crash(data, ctx):
    os._exit(3)

@app.queue("jobs")
async def job(data, ctx):
    return {"trigger": ctx.trigger, "data": data}
"#;

/// Handlers leave markers (cancellation seen, stream closed) where the sandbox lets them write.
const MARKERS: &str = "[workers.main.sandbox]\nwrite = [\"markers\"]\n";

fn python_app(extra: &str) -> App {
    let manifest = format!("[workers.main]\nruntime = \"python\"\nentry = \"functions/app.py\"\n{MARKERS}\n{extra}");
    let app = App::new(Some(&manifest));
    std::fs::create_dir_all(app.path().join("functions")).unwrap();
    std::fs::create_dir_all(app.path().join("markers")).unwrap();
    std::fs::write(app.path().join("functions/app.py"), APP_PY).unwrap();
    app
}

/// Invokes `function` with `body` as the admin; answers the status and the JSON body.
async fn invoke(node: &support::Node, app: &App, function: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(node.url(&format!("/_nimbus/admin/functions/{function}/invoke")))
        .bearer_auth(admin_token(app))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn python_functions_are_invoked_by_name_with_typed_errors() {
    let app = python_app("[functions.wait]\ntimeout = \"2s\"\n");
    let node = app.start(&[]);
    assert!(node.stdout.contains("function       job queue trigger (python, worker main)"), "{}", node.stdout);
    assert!(node.stdout.contains("function       plan activity trigger"), "{}", node.stdout);

    // The result, the declared trigger, the invocation id and a trace that continues the caller's.
    let resp = reqwest::Client::new()
        .post(node.url("/_nimbus/admin/functions/plan/invoke"))
        .bearer_auth(admin_token(&app))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .json(&json!({"data": "research"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let result = resp.json::<Value>().await.unwrap()["result"].clone();
    assert_eq!(result["steps"], json!(["research 1", "research 2"]));
    assert_eq!(result["trigger"], json!({"type": "activity"}));
    assert_eq!(result["invocation"].as_str().unwrap().len(), 32);
    let traceparent = result["traceparent"].as_str().unwrap();
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{traceparent}");

    assert_eq!(invoke(&node, &app, "sync-add", json!({"data": {"a": 1, "b": 2}})).await, (200, json!({"result": 3})));
    assert_eq!(invoke(&node, &app, "nothing", json!({})).await, (200, json!({"result": null})));
    let (status, body) = invoke(&node, &app, "job", json!({"data": [1, 2]})).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"], json!({"trigger": {"type": "queue", "queue": "jobs", "batch_size": 1}, "data": [1, 2]}));

    // Typed errors, each with its status.
    let (status, body) = invoke(&node, &app, "boom", json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (500, Some("handler_error")), "{body}");
    let (status, body) = invoke(&node, &app, "nope", json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_function")), "{body}");
    let (status, body) = invoke(&node, &app, "hello", json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("refused")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("http trigger"), "{body}");
    let (status, body) = invoke(&node, &app, "plan", json!({"input": 1})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_json")), "{body}");

    // A timeout cancels the invocation in the worker.
    let marker = app.path().join("markers/timed-out.txt");
    let started = Instant::now();
    let (status, body) = invoke(&node, &app, "wait", json!({"data": {"s": 30, "marker": marker}})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (504, Some("timeout")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_until("the worker saw the timeout's cancellation", Duration::from_secs(10), async || marker.exists()).await;

    // A caller that goes away cancels it too. First a warm instance (the timed-out one was
    // retired), so the call reaches a worker before the caller leaves, however slow a cold start.
    let (status, body) = invoke(&node, &app, "wait", json!({"data": {"s": 0}})).await;
    assert_eq!(status, 200, "{body}");
    let marker = app.path().join("markers/abandoned.txt");
    let abandoned = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .post(node.url("/_nimbus/admin/functions/wait/invoke"))
        .bearer_auth(admin_token(&app))
        .json(&json!({"data": {"s": 1.8, "marker": marker}}))
        .send()
        .await;
    assert!(abandoned.is_err());
    wait_until("the worker saw the caller leave", Duration::from_secs(10), async || marker.exists()).await;
    assert!(started.elapsed() < Duration::from_secs(20));

    // A crash is reported as such, and the function serves again on a new instance.
    let (status, body) = invoke(&node, &app, "crash", json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (502, Some("worker_crashed")), "{body}");
    assert_eq!(invoke(&node, &app, "sync-add", json!({"data": {"a": 2, "b": 2}})).await, (200, json!({"result": 4})));

    // Only the admin may invoke by name.
    let resp = reqwest::Client::new()
        .post(node.url("/_nimbus/admin/functions/plan/invoke"))
        .json(&json!({"data": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Counted like HTTP invocations.
    let metrics = support::admin_get(&node, &app, "/_nimbus/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"nimbus_function_invocations_total{function="plan",status="200"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"nimbus_function_errors_total{function="wait",kind="timeout"} 1"#), "{metrics}");

    // The admin API lists each function with its typed trigger.
    let listed: Value = support::admin_get(&node, &app, "/_nimbus/admin/functions").await.json().await.unwrap();
    let job = listed["functions"].as_array().unwrap().iter().find(|f| f["name"] == "job").unwrap().clone();
    assert_eq!(job["trigger"], json!({"type": "queue", "queue": "jobs", "batch_size": 1}));
}

#[tokio::test]
async fn a_function_at_capacity_answers_queue_full() {
    let app = python_app("[functions.wait]\nmin_instances = 1\nmax_instances = 1\nconcurrency = 1\nqueue_limit = 0\n");
    let node = app.start(&[]);
    let (url, token) = (node.url("/_nimbus/admin/functions/wait/invoke"), admin_token(&app));
    let busy = tokio::spawn(async move {
        let resp = reqwest::Client::new().post(url).bearer_auth(token).json(&json!({"data": {"s": 1.5}})).send();
        resp.await.unwrap().status().as_u16()
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = invoke(&node, &app, "wait", json!({"data": {"s": 0}})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("queue_full")), "{body}");
    assert_eq!(busy.await.unwrap(), 200);
}

const APP_JS: &str = r#"
const { App } = require("nimbus");
const app = new App();

app.activity("plan", async (data, ctx) => ({ steps: [`${data} 1`], trigger: ctx.trigger }));
app.activity("boom", async () => { throw new Error("node kaput"); });

module.exports = app;
"#;

#[tokio::test]
async fn node_functions_are_invoked_by_name() {
    let app = App::new(Some("[workers.web]\nruntime = \"node\"\nentry = \"functions/app.js\"\n"));
    std::fs::create_dir_all(app.path().join("functions")).unwrap();
    std::fs::write(app.path().join("functions/app.js"), APP_JS).unwrap();
    let node = app.start(&[]);
    let (status, body) = invoke(&node, &app, "plan", json!({"data": "js"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({"steps": ["js 1"], "trigger": {"type": "activity"}}));
    let (status, body) = invoke(&node, &app, "boom", json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (500, Some("handler_error")), "{body}");
}

#[tokio::test]
async fn an_index_with_an_unknown_trigger_stops_the_start_naming_the_function() {
    let app = python_app("");
    std::fs::write(
        app.path().join("functions/app.py"),
        "import nimbus\napp = nimbus.App()\n\
         app.index = lambda: {'protocol': 1, 'functions': [{'name': 'odd', 'trigger': {'type': 'cosmos'}}]}\n",
    )
    .unwrap();
    let out = nimbus(&["up", app.path().to_str().unwrap(), "--port", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("worker `main` answered a bad index: function `odd`") && err.contains("cosmos"), "{err}");
}
