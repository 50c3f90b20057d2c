//! Durable orchestrations through the real binary: Python orchestrators and activities, the
//! management API in Durable Functions' shapes, and a node killed in the middle of a fan-out.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{App, admin_token};

const APP_PY: &str = r#"
from datetime import timedelta
import nimbus

app = nimbus.App()

@app.activity("hello")
def hello(name, ctx):
    return f"Hello {name}!"

@app.activity("double")
def double(x, ctx):
    return x * 2

@app.activity("slow_double")
async def slow_double(x, ctx):
    import asyncio
    await asyncio.sleep(0.05)
    return x * 2

@app.activity("flaky")
def flaky(data, ctx):
    if ctx.trigger["attempt"] < 3:
        raise RuntimeError("not yet (attempt %d)" % ctx.trigger["attempt"])
    return "ok on attempt %d" % ctx.trigger["attempt"]

@app.activity("broken")
def broken(data, ctx):
    raise ValueError("boom")

@app.orchestrator("chain")
def chain(ctx):
    a = yield ctx.call_activity("hello", "Tokyo")
    b = yield ctx.call_activity("hello", "Seattle")
    c = yield ctx.call_activity("hello", "London")
    return [a, b, c]

@app.orchestrator("fanout")
def fanout(ctx):
    n = ctx.get_input()["n"]
    activity = ctx.get_input().get("activity", "double")
    results = yield ctx.task_all([ctx.call_activity(activity, i) for i in range(n)])
    return sum(results)

@app.orchestrator("approval")
def approval(ctx):
    ctx.set_custom_status("waiting for approval")
    first = yield ctx.wait_for_external_event("approve")
    second = yield ctx.wait_for_external_event("approve")
    return {"first": first, "second": second, "version": ctx.version}

@app.orchestrator("retrying")
def retrying(ctx):
    r = yield ctx.call_activity("flaky", None, retry=nimbus.RetryPolicy(3, 0.05))
    try:
        yield ctx.call_activity("broken")
    except nimbus.TaskFailedError as e:
        return {"flaky": r, "caught": e.message}

@app.orchestrator("uncaught")
def uncaught(ctx):
    yield ctx.call_activity("broken")

@app.orchestrator("parent")
def parent(ctx):
    greetings = yield ctx.call_sub_orchestrator("chain")
    return len(greetings)

@app.orchestrator("sleeper")
def sleeper(ctx):
    yield ctx.create_timer(ctx.current_utc_datetime + timedelta(milliseconds=300))
    return "woke"

@app.orchestrator("counter")
def counter(ctx):
    n = ctx.get_input()
    if n < 3:
        ctx.continue_as_new(n + 1)
        return
    return n

FRAGILE_BROKEN = True

@app.activity("fragile")
def fragile(data, ctx):
    if FRAGILE_BROKEN:
        raise ConnectionError("the dependency is down")
    return "fixed " + data

@app.orchestrator("mend")
def mend(ctx):
    a = yield ctx.call_activity("hello", "a")
    try:
        yield ctx.call_activity("broken")
    except nimbus.TaskFailedError:
        pass  # handled: a rewind leaves it alone
    fan = yield ctx.task_all([ctx.call_activity("hello", "b"), ctx.call_activity("fragile", "c"),
                              ctx.call_activity("fragile", "d")])
    return [a] + fan

@app.orchestrator("mend_child")
def mend_child(ctx):
    return (yield ctx.call_activity("fragile", ctx.get_input()))

@app.orchestrator("mend_parent")
def mend_parent(ctx):
    first = yield ctx.call_activity("hello", "parent")
    child = yield ctx.call_sub_orchestrator("mend_child", "child")
    return [first, child]

DRIFT = "hello"

@app.orchestrator("drift")
def drift(ctx):
    yield ctx.call_activity(DRIFT, 1 if DRIFT == "double" else "a")
    yield ctx.wait_for_external_event("go")
    return "done"

@app.orchestrator("slow_step")
def slow_step(ctx):
    a = yield ctx.call_activity("hello", "before")
    yield ctx.wait_for_external_event("go")
    import time
    time.sleep(3)  # a worker killed now dies in the middle of this step
    b = yield ctx.call_activity("hello", "after")
    return [a, b]

@app.activity("big")
def big(n, ctx):
    return "x" * n

@app.activity("measure")
def measure(text, ctx):
    return len(text)

@app.orchestrator("large")
def large(ctx):
    blob = yield ctx.call_activity("big", ctx.get_input()["n"])
    size = yield ctx.call_activity("measure", blob)
    note = yield ctx.wait_for_external_event("note")
    return {"size": size, "head": blob[:3], "pad": len(ctx.get_input()["pad"]), "note": len(note),
            "echo": ctx.get_input()["pad"]}

@app.http("/begin/{name}", methods=["POST"])
async def begin(req, ctx):
    started = await ctx.durable.start(req.params["name"], await req.json())
    return ctx.durable.check_status_response(started)
"#;

fn durable_app(extra: &str) -> App {
    let manifest = format!(
        "[workers.main]\nruntime = \"python\"\nentry = \"app.py\"\n\n[durable]\nversion = \"7\"\n\n\
         [functions.begin]\ngrants = [\"durable:*:rw\"]\n\n[[routes]]\npath = \"/begin/*\"\nauth = \"anonymous\"\n{extra}"
    );
    let app = App::new(Some(&manifest));
    std::fs::write(app.path().join("app.py"), APP_PY).unwrap();
    app
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(node: &support::Node, app: &App) -> Self {
        Self { http: reqwest::Client::new(), base: node.url(""), token: admin_token(app) }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, resp.json().await.unwrap_or(Value::Null), headers)
    }

    async fn start(&self, name: &str, input: Value) -> String {
        let (status, body, _) =
            self.send(reqwest::Method::POST, &format!("/_nimbus/durable/orchestrations/{name}"), Some(input)).await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    async fn status(&self, id: &str) -> (u16, Value) {
        let (status, body, _) =
            self.send(reqwest::Method::GET, &format!("/_nimbus/durable/instances/{id}"), None).await;
        (status, body)
    }

    /// Polls until the instance has ended (200), within `timeout`.
    async fn finished(&self, id: &str, timeout: Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let (status, body) = self.status(id).await;
            if status == 200 {
                return body;
            }
            assert_eq!(status, 202, "{body}");
            assert!(std::time::Instant::now() < deadline, "instance {id} did not finish: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn orchestrations_chain_fan_out_wait_retry_and_nest() {
    let app = durable_app("");
    let node = app.start(&[]);
    let c = Client::new(&node, &app);

    // Function chaining, in Durable Functions' shapes.
    let (status, body, headers) =
        c.send(reqwest::Method::POST, "/_nimbus/durable/orchestrations/chain?instanceId=chain-1", None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["id"], "chain-1");
    let status_uri = body["statusQueryGetUri"].as_str().unwrap();
    assert!(status_uri.ends_with("/_nimbus/durable/instances/chain-1"), "{body}");
    assert_eq!(headers["location"], status_uri);
    for field in ["sendEventPostUri", "terminatePostUri", "purgeHistoryDeleteUri"] {
        assert!(body[field].as_str().unwrap().contains("/_nimbus/durable/instances/chain-1"), "{body}");
    }
    let done = c.finished("chain-1", Duration::from_secs(30)).await;
    assert_eq!(done["runtimeStatus"], "Completed");
    assert_eq!(done["output"], json!(["Hello Tokyo!", "Hello Seattle!", "Hello London!"]));
    assert_eq!(done["name"], "chain");
    assert_eq!(done["version"], "7");
    // Its history, each event with its time.
    let (_, with_history, _) =
        c.send(reqwest::Method::GET, "/_nimbus/durable/instances/chain-1?showHistory=true", None).await;
    let events = with_history["historyEvents"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "started",
            "task_scheduled",
            "task_completed",
            "task_scheduled",
            "task_completed",
            "task_scheduled",
            "task_completed"
        ]
    );
    assert!(events.iter().all(|e| e["at"].as_str().is_some_and(|t| t.ends_with('Z'))), "{events:?}");

    // Fan-out / fan-in.
    let fan = c.start("fanout", json!({"n": 200})).await;
    let done = c.finished(&fan, Duration::from_secs(60)).await;
    assert_eq!(done["output"], json!((0..200).map(|i| i * 2).sum::<i64>()));

    // External events: two waits for one name take successive events; custom status shows.
    let waiting = c.start("approval", json!(null)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.status(&waiting).await.1["customStatus"] != "waiting for approval" {
        assert!(std::time::Instant::now() < deadline, "no custom status");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = c.status(&waiting).await;
    assert_eq!((status, body["runtimeStatus"].as_str()), (202, Some("Running")));
    for data in [json!("yes"), json!({"by": "ana"})] {
        let path = format!("/_nimbus/durable/instances/{waiting}/raiseEvent/approve");
        assert_eq!(c.send(reqwest::Method::POST, &path, Some(data)).await.0, 202);
    }
    let done = c.finished(&waiting, Duration::from_secs(20)).await;
    assert_eq!(done["output"], json!({"first": "yes", "second": {"by": "ana"}, "version": "7"}));

    // Retries run by the engine; a final failure is an exception the code can catch.
    let retried = c.start("retrying", json!(null)).await;
    let done = c.finished(&retried, Duration::from_secs(30)).await;
    assert_eq!(done["runtimeStatus"], "Completed", "{done}");
    assert_eq!(done["output"]["flaky"], "ok on attempt 3");
    assert!(done["output"]["caught"].as_str().unwrap().contains("boom"), "{done}");
    // Uncaught, it fails the orchestration.
    let failing = c.start("uncaught", json!(null)).await;
    let done = c.finished(&failing, Duration::from_secs(30)).await;
    assert_eq!(done["runtimeStatus"], "Failed", "{done}");
    assert!(done["output"]["message"].as_str().unwrap().contains("boom"), "{done}");

    // Sub-orchestrations, timers, continue-as-new.
    let parent = c.start("parent", json!(null)).await;
    assert_eq!(c.finished(&parent, Duration::from_secs(30)).await["output"], 3);
    let sleeper = c.start("sleeper", json!(null)).await;
    let started = std::time::Instant::now();
    assert_eq!(c.finished(&sleeper, Duration::from_secs(30)).await["output"], "woke");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let counter = c.start("counter", json!(0)).await;
    assert_eq!(c.finished(&counter, Duration::from_secs(30)).await["output"], 3);

    // A function starts one with its grant and answers the standard 202.
    let resp = reqwest::Client::new().post(node.url("/begin/chain")).json(&json!(null)).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["statusQueryGetUri"], location.as_str());
    let id = body["id"].as_str().unwrap();
    assert_eq!(c.finished(id, Duration::from_secs(30)).await["runtimeStatus"], "Completed");

    // Listing by status.
    let (status, list, _) = c.send(reqwest::Method::GET, "/_nimbus/durable/instances?runtimeStatus=Failed", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|i| i["instanceId"].as_str().unwrap()).collect();
    assert_eq!(ids, [failing.as_str()]);

    // The engine's metrics.
    let metrics = support::admin_get(&node, &app, "/_nimbus/metrics").await.text().await.unwrap();
    let value = |prefix: &str| -> f64 {
        metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
    };
    assert!(value("nimbus_durable_steps_total{outcome=\"ok\"}") >= 10.0, "{metrics}");
    assert!(value("nimbus_durable_activities_total{activity=\"double\",outcome=\"completed\"}") >= 200.0, "{metrics}");
    assert!(value("nimbus_durable_activities_total{activity=\"flaky\",outcome=\"failed\"}") >= 2.0, "{metrics}");
    assert!(metrics.contains("nimbus_durable_step_seconds"), "{metrics}");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_ended_instances_stay_ended() {
    let app = durable_app("");
    let node = app.start(&[]);
    let c = Client::new(&node, &app);
    use reqwest::Method;

    let (status, body, _) = c.send(Method::POST, "/_nimbus/durable/orchestrations/nope", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("orchestrator_not_found")), "{body}");
    // An activity is not an orchestrator.
    assert_eq!(c.send(Method::POST, "/_nimbus/durable/orchestrations/hello", None).await.0, 404);
    let resp = c
        .http
        .post(node.url("/_nimbus/durable/orchestrations/chain"))
        .bearer_auth(&c.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "invalid_json");
    let (status, _, _) = c.send(Method::POST, "/_nimbus/durable/orchestrations/chain?instanceId=a%2Fb", None).await;
    assert_eq!(status, 400);
    assert_eq!(c.status("missing").await.0, 404);
    let (status, body, _) = c.send(Method::GET, "/_nimbus/durable/instances?runtimeStatus=Sleeping", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_request")));
    // Without a token: 401, whether the id exists or not.
    let anonymous = reqwest::get(node.url("/_nimbus/durable/instances/missing")).await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // A running instance: a second start with its id conflicts, purge is refused; terminate ends it.
    let id = c.start("approval", json!(null)).await;
    let (status, _, _) =
        c.send(Method::POST, &format!("/_nimbus/durable/orchestrations/approval?instanceId={id}"), None).await;
    assert_eq!(status, 409);
    let (status, body, _) = c.send(Method::DELETE, &format!("/_nimbus/durable/instances/{id}"), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");
    let (status, _, _) =
        c.send(Method::POST, &format!("/_nimbus/durable/instances/{id}/terminate?reason=enough"), None).await;
    assert_eq!(status, 202);
    let done = c.finished(&id, Duration::from_secs(20)).await;
    assert_eq!((done["runtimeStatus"].as_str(), done["output"].as_str()), (Some("Terminated"), Some("enough")));
    // Ended: events and terminations are gone (410); purge works, then it is unknown.
    let (status, _, _) = c.send(Method::POST, &format!("/_nimbus/durable/instances/{id}/suspend"), None).await;
    assert_eq!(status, 410);
    let (status, _, _) =
        c.send(Method::POST, &format!("/_nimbus/durable/instances/{id}/raiseEvent/approve"), Some(json!(1))).await;
    assert_eq!(status, 410);
    assert_eq!(c.send(Method::POST, &format!("/_nimbus/durable/instances/{id}/terminate"), None).await.0, 410);
    let (status, body, _) = c.send(Method::DELETE, &format!("/_nimbus/durable/instances/{id}"), None).await;
    assert_eq!((status, body["instancesDeleted"].as_i64()), (200, Some(1)));
    assert_eq!(c.status(&id).await.0, 404);
}

#[tokio::test]
async fn a_node_killed_during_a_fan_out_finishes_it_after_restart() {
    let app = durable_app("");
    let mut node = app.start(&[]);
    let c = Client::new(&node, &app);
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(c.start("fanout", json!({"n": 60, "activity": "slow_double"})).await);
        }
        ids
    };
    // Let some activities complete, then SIGKILL the node in the middle.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, _) = node.signal_and_wait("KILL", Duration::from_secs(10));
    assert!(!status.success());
    drop(node);
    let node = app.start(&[]);
    let c = Client { base: node.url(""), ..c };
    let expected: i64 = (0..60).map(|i| i * 2).sum();
    for id in &ids {
        let done = c.finished(id, Duration::from_secs(60)).await;
        assert_eq!(done["runtimeStatus"], "Completed", "{done}");
        // Exactly once in the orchestrator's state: every task answered once, none twice.
        assert_eq!(done["output"], expected, "{done}");
        let (_, with_history, _) =
            c.send(reqwest::Method::GET, &format!("/_nimbus/durable/instances/{id}?showHistory=true"), None).await;
        let events = with_history["historyEvents"].as_array().unwrap();
        let completed: Vec<u64> =
            events.iter().filter(|e| e["type"] == "task_completed").map(|e| e["id"].as_u64().unwrap()).collect();
        let unique: std::collections::BTreeSet<u64> = completed.iter().copied().collect();
        assert_eq!((completed.len(), unique.len()), (60, 60));
    }
}

const APP_JS: &str = r#"
const { App, RetryPolicy, TaskFailedError } = require("nimbus");
const app = new App();

app.activity("hello", (city, ctx) => `Hello ${city}!`);
app.activity("flaky", (data, ctx) => {
  if (ctx.trigger.attempt < 2) throw new Error("not yet");
  return `ok on attempt ${ctx.trigger.attempt}`;
});
app.activity("broken", () => { throw new RangeError("boom"); });

app.orchestrator(function* chaining(ctx) {
  const out = [];
  for (const city of ctx.getInput()) out.push(yield ctx.callActivity("hello", city));
  const fanned = yield ctx.taskAll(out.map((greeting) => ctx.callActivity("hello", greeting.length)));
  const flaky = yield ctx.callActivity("flaky", null, { retry: new RetryPolicy({ attempts: 2, firstInterval: 50 }) });
  let caught = null;
  try {
    yield ctx.callActivity("broken");
  } catch (err) {
    if (!(err instanceof TaskFailedError)) throw err;
    caught = err.message;
  }
  return { out, fanned, flaky, caught, version: ctx.version };
});

module.exports = app;
"#;

#[tokio::test]
async fn node_orchestrators_run_on_the_same_engine() {
    let manifest = "[workers.web]\nruntime = \"node\"\nentry = \"app.js\"\n";
    let app = App::new(Some(manifest));
    std::fs::write(app.path().join("app.js"), APP_JS).unwrap();
    let node = app.start(&[]);
    let c = Client::new(&node, &app);
    let id = c.start("chaining", json!(["Tokyo", "Lima"])).await;
    let done = c.finished(&id, Duration::from_secs(30)).await;
    assert_eq!(done["runtimeStatus"], "Completed", "{done}");
    let output = &done["output"];
    assert_eq!(output["out"], json!(["Hello Tokyo!", "Hello Lima!"]));
    assert_eq!(output["fanned"], json!(["Hello 12!", "Hello 11!"]));
    assert_eq!(output["flaky"], "ok on attempt 2");
    assert!(output["caught"].as_str().unwrap().contains("RangeError: boom"), "{output}");
    assert_eq!(output["version"], "1");
}

#[tokio::test]
async fn a_node_never_runs_an_instance_stamped_newer_than_its_code() {
    // Stamped "8" at start while the node's code is "7": it waits; a node with version 8 runs it.
    let app = durable_app("");
    let node = app.start(&[]);
    let c = Client::new(&node, &app);
    let (status, body, _) =
        c.send(reqwest::Method::POST, "/_nimbus/durable/orchestrations/chain?version=8&instanceId=v8", None).await;
    assert_eq!(status, 202, "{body}");
    let (status, older, _) =
        c.send(reqwest::Method::POST, "/_nimbus/durable/orchestrations/chain?version=6.9&instanceId=v6", None).await;
    assert_eq!(status, 202, "{older}");
    // Older instances run on newer code (the code branches on ctx.version).
    assert_eq!(c.finished("v6", Duration::from_secs(30)).await["version"], "6.9");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, waiting) = c.status("v8").await;
    assert_eq!((status, waiting["runtimeStatus"].as_str()), (202, Some("Pending")), "{waiting}");
    // A clean stop hands the partitions over at once.
    let mut node = node;
    let (stopped, _) = node.signal_and_wait("TERM", Duration::from_secs(30));
    assert!(stopped.success());
    drop(node);

    let manifest = std::fs::read_to_string(app.path().join("nimbus.toml")).unwrap();
    std::fs::write(app.path().join("nimbus.toml"), manifest.replace("version = \"7\"", "version = \"8\"")).unwrap();
    let node = app.start(&[]);
    let c = Client { base: node.url(""), ..c };
    let done = c.finished("v8", Duration::from_secs(30)).await;
    assert_eq!((done["runtimeStatus"].as_str(), done["version"].as_str()), (Some("Completed"), Some("8")));
}

#[tokio::test]
async fn a_suspended_instance_keeps_what_arrives_until_it_is_resumed() {
    let app = durable_app("");
    let node = app.start(&[]);
    let c = Client::new(&node, &app);
    use reqwest::Method;
    let id = c.start("approval", json!(null)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.status(&id).await.1["customStatus"] != "waiting for approval" {
        assert!(std::time::Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = |what: &str| format!("/_nimbus/durable/instances/{id}/{what}");
    assert_eq!(c.send(Method::POST, &path("resume"), None).await.0, 409, "resume a running instance");
    assert_eq!(c.send(Method::POST, &path("suspend?reason=audit"), None).await.0, 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while c.status(&id).await.1["runtimeStatus"] != "Suspended" {
        assert!(std::time::Instant::now() < deadline, "never suspended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.send(Method::POST, &path("suspend"), None).await.0, 409, "suspend twice");
    // More events than a page of its inbox arrive while it is suspended, the approvals last: it
    // does not move.
    for i in 0..300 {
        assert_eq!(c.send(Method::POST, &path("raiseEvent/noise"), Some(json!(i))).await.0, 202);
    }
    for data in [json!(1), json!(2)] {
        assert_eq!(c.send(Method::POST, &path("raiseEvent/approve"), Some(data)).await.0, 202);
    }
    // Another instance of its partition still runs beside that full inbox.
    let partition = nimbus_durable::partition(&id);
    let neighbour =
        (0..).map(|k| format!("neighbour-{k}")).find(|n| nimbus_durable::partition(n) == partition).unwrap();
    let started = format!("/_nimbus/durable/orchestrations/chain?instanceId={neighbour}");
    assert_eq!(c.send(Method::POST, &started, None).await.0, 202);
    let done = c.finished(&neighbour, Duration::from_secs(20)).await;
    assert_eq!(done["runtimeStatus"], "Completed", "{done}");
    let (status, body) = c.status(&id).await;
    assert_eq!((status, body["runtimeStatus"].as_str()), (202, Some("Suspended")), "{body}");
    // Resumed (its resume sorts before the 302 events waiting), it takes them in order and completes.
    assert_eq!(c.send(Method::POST, &path("resume"), None).await.0, 202);
    let done = c.finished(&id, Duration::from_secs(20)).await;
    assert_eq!(done["output"], json!({"first": 1, "second": 2, "version": "7"}), "{done}");
}

#[tokio::test]
async fn the_cli_starts_reads_and_manages_instances_beside_a_running_node() {
    let app = durable_app("");
    let node = app.start(&[]);
    let c = Client::new(&node, &app);
    let dir = app.path().display().to_string();
    let cli = |args: &[&str]| {
        let mut all = vec!["durable", "--app", dir.as_str()];
        all.extend_from_slice(args);
        support::nimbus(&all)
    };
    let out = cli(&["start", "chain", "--id", "cli-1"]);
    assert!(out.status.success(), "{}", support::text(&out.stderr));
    assert_eq!(support::text(&out.stdout).trim(), "cli-1");
    c.finished("cli-1", Duration::from_secs(30)).await;
    let status = cli(&["status", "cli-1", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!((status["runtimeStatus"].as_str(), status["version"].as_str()), (Some("Completed"), Some("7")));
    let history = support::text(&cli(&["history", "cli-1"]).stdout);
    assert_eq!(history.lines().filter(|l| l.contains("task_completed #")).count(), 3, "{history}");
    assert!(history.lines().any(|l| l.contains("task_completed #2 after ") && l.contains(" ms")), "{history}");
    // Each step with the worker instance that ran it and its time.
    let steps = history.lines().filter(|l| l.contains("step on chain-") && l.ends_with(" ms")).count();
    assert_eq!(steps, 4, "{history}");
    let listed = support::text(&cli(&["list", "--status", "Completed"]).stdout);
    assert!(listed.lines().any(|l| l.starts_with("cli-1\tchain\tCompleted")), "{listed}");

    // A name the app does not declare: the CLI cannot check it, the node fails it at once.
    assert!(cli(&["start", "chian", "--id", "typo"]).status.success());
    let done = c.finished("typo", Duration::from_secs(30)).await;
    assert_eq!(done["runtimeStatus"], "Failed", "{done}");
    assert!(done["output"]["message"].as_str().unwrap().contains("no orchestrator named `chian`"), "{done}");

    // Bad input: clear errors, non-zero exits.
    let out = cli(&["raise", "missing", "go"]);
    assert!(!out.status.success());
    assert!(support::text(&out.stderr).contains("no instance `missing`"), "{}", support::text(&out.stderr));
    let out = cli(&["start", "chain", "--input", "{nope"]);
    assert!(!out.status.success());
    assert!(support::text(&out.stderr).contains("--input is not JSON"), "{}", support::text(&out.stderr));
    let out = cli(&["list", "--status", "Sleeping"]);
    assert!(support::text(&out.stderr).contains("unknown status \"Sleeping\""), "{}", support::text(&out.stderr));
    assert!(cli(&["purge", "cli-1"]).status.success());
    assert_eq!(c.status("cli-1").await.0, 404);
}

#[tokio::test]
async fn a_failed_instance_rewinds_to_its_failed_step_after_a_fix() {
    use reqwest::Method;
    let app = durable_app("");
    let node = app.start(&[]);
    let c = Client::new(&node, &app);
    for (name, id) in [("mend", "m1"), ("mend_parent", "p1"), ("chain", "done1"), ("drift", "d1")] {
        let (status, body, _) =
            c.send(Method::POST, &format!("/_nimbus/durable/orchestrations/{name}?instanceId={id}"), None).await;
        assert_eq!(status, 202, "{body}");
    }
    for id in ["m1", "p1"] {
        let failed = c.finished(id, Duration::from_secs(30)).await;
        assert_eq!(failed["runtimeStatus"], "Failed", "{failed}");
    }
    assert!(c.finished("p1:1", Duration::from_secs(5)).await["runtimeStatus"] == "Failed");
    c.finished("done1", Duration::from_secs(30)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body, _) = c.send(Method::GET, "/_nimbus/durable/instances/d1?showHistory=true", None).await;
        if body["historyEvents"].as_array().is_some_and(|h| h.iter().any(|e| e["type"] == "task_completed")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "drift never ran its activity: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only a failed instance rewinds.
    let (status, body, _) = c.send(Method::POST, "/_nimbus/durable/instances/done1/rewind", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (410, Some("instance_not_failed")), "{body}");
    assert_eq!(c.send(Method::POST, "/_nimbus/durable/instances/nope/rewind", None).await.0, 404);
    let waiting = c.start("approval", json!(null)).await;
    let (status, body, _) = c.send(Method::POST, &format!("/_nimbus/durable/instances/{waiting}/rewind"), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("instance_not_failed")), "{body}");

    // The fix ships (new code, same version); the failed instances rewind and complete.
    let mut node = node;
    let (stopped, _) = node.signal_and_wait("TERM", Duration::from_secs(30));
    assert!(stopped.success());
    drop(node);
    let code = APP_PY
        .replace("FRAGILE_BROKEN = True", "FRAGILE_BROKEN = False")
        .replace(r#"DRIFT = "hello""#, r#"DRIFT = "double""#);
    std::fs::write(app.path().join("app.py"), code).unwrap();
    let node = app.start(&[]);
    let c = Client { base: node.url(""), ..c };
    for id in ["m1", "p1"] {
        let (status, body, _) =
            c.send(Method::POST, &format!("/_nimbus/durable/instances/{id}/rewind?reason=fixed"), None).await;
        assert_eq!(status, 202, "{body}");
    }
    let m1 = c.finished("m1", Duration::from_secs(30)).await;
    assert_eq!(m1["output"], json!(["Hello a!", "Hello b!", "fixed c", "fixed d"]), "{m1}");
    let p1 = c.finished("p1", Duration::from_secs(30)).await;
    assert_eq!(p1["output"], json!(["Hello parent!", "fixed child"]), "{p1}");

    // Code that no longer asks for what its history holds fails, naming the step and both actions.
    assert_eq!(c.send(Method::POST, "/_nimbus/durable/instances/d1/raiseEvent/go", None).await.0, 202);
    let d1 = c.finished("d1", Duration::from_secs(30)).await;
    assert_eq!((d1["runtimeStatus"].as_str(), d1["output"]["code"].as_str()), (Some("Failed"), Some("nondeterminism")));
    let message = d1["output"]["message"].as_str().unwrap();
    assert!(
        message.contains("step 0")
            && message.contains("task_scheduled hello")
            && message.contains("call_activity double"),
        "{message}"
    );

    // What succeeded ran once; the handled failure stayed; the failed activities ran again.
    let (_, body, _) = c.send(Method::GET, "/_nimbus/durable/instances/m1?showHistory=true", None).await;
    let history = body["historyEvents"].as_array().unwrap();
    let scheduled = |name: &str| history.iter().filter(|e| e["type"] == "task_scheduled" && e["name"] == name).count();
    assert_eq!((scheduled("hello"), scheduled("broken"), scheduled("fragile")), (2, 1, 2), "{body}");
    assert_eq!(history.iter().filter(|e| e["type"] == "task_failed").count(), 1, "{body}");
    let voided: Vec<&str> = history
        .iter()
        .filter(|e| e["type"] == "rewound" && e["was"].is_object())
        .map(|e| e["was"]["type"].as_str().unwrap())
        .collect();
    // Both fragile tasks are asked again: the one whose failure failed the instance, and the other
    // (its failure recorded too, or dropped when it came after the instance had failed).
    assert_eq!(voided.iter().filter(|t| **t == "task_scheduled").count(), 2, "{voided:?}");
    assert!((1..=2).contains(&voided.iter().filter(|t| **t == "task_failed").count()), "{voided:?}");

    // Restart: the same orchestration and input, under a new id, or under its own once ended.
    let (status, body, _) = c.send(Method::POST, "/_nimbus/durable/instances/m1/restart", None).await;
    assert_eq!(status, 202, "{body}");
    let again = body["id"].as_str().unwrap();
    assert_ne!(again, "m1");
    assert_eq!(c.finished(again, Duration::from_secs(30)).await["output"], m1["output"]);
    let path = "/_nimbus/durable/instances/m1/restart?restartWithNewInstanceId=false";
    let (status, body, _) = c.send(Method::POST, path, None).await;
    assert_eq!((status, body["id"].as_str()), (202, Some("m1")), "{body}");
    let waiting = c.start("approval", json!(null)).await;
    let path = format!("/_nimbus/durable/instances/{waiting}/restart?restartWithNewInstanceId=false");
    assert_eq!(c.send(Method::POST, &path, None).await.0, 409);
    assert_eq!(c.finished("m1", Duration::from_secs(30)).await["runtimeStatus"], "Completed");
}

/// The host's peak resident memory (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

#[tokio::test]
async fn payloads_above_64_kb_live_in_blobs_and_a_100_mb_result_works() {
    use reqwest::Method;
    let app = durable_app("");
    let node = app.start(&[]);
    let c = Client::new(&node, &app);
    let size = 100 * 1024 * 1024;
    let pad = "p".repeat(100 * 1024);
    let before = peak_rss_mib(node.pid());
    let id = c.start("large", json!({"n": size, "pad": pad})).await;
    // The 100 MB went worker → blob → orchestrator → blob → activity; the store keeps references.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let history = loop {
        let (_, body, _) = c
            .send(Method::GET, &format!("/_nimbus/durable/instances/{id}?showHistory=true&showInput=false"), None)
            .await;
        let events = body["historyEvents"].as_array().cloned().unwrap_or_default();
        if events.iter().filter(|e| e["type"] == "task_completed").count() == 2 {
            break events;
        }
        assert!(std::time::Instant::now() < deadline, "the activities did not finish: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let result = &history.iter().find(|e| e["type"] == "task_completed" && e["id"] == 0).unwrap()["result"];
    assert_eq!(result["bytes"], json!(size + 2), "{result}");
    assert!(result["$nimbus.payload"].is_string(), "{result}");
    let scheduled = history.iter().find(|e| e["type"] == "task_scheduled" && e["name"] == "measure").unwrap();
    assert!(scheduled["input"]["$nimbus.payload"].is_string(), "{scheduled}");
    assert!(history[0]["input"]["$nimbus.payload"].is_string(), "the start's input: {}", history[0]);
    // An event's data above the limit goes the same way.
    let note = json!("n".repeat(70 * 1024));
    let (status, _, _) =
        c.send(Method::POST, &format!("/_nimbus/durable/instances/{id}/raiseEvent/note"), Some(note)).await;
    assert_eq!(status, 202);
    let done = c.finished(&id, Duration::from_secs(60)).await;
    assert_eq!(done["runtimeStatus"], "Completed", "{done}");
    // The status shows values, not references (the output is above the limit too).
    assert_eq!(done["output"]["size"], json!(size));
    assert_eq!(done["output"]["head"], "xxx");
    assert_eq!((done["output"]["pad"].as_u64(), done["output"]["note"].as_u64()), (Some(100 * 1024), Some(70 * 1024)));
    assert_eq!(done["input"]["pad"].as_str().map(str::len), Some(100 * 1024));
    // The host streamed the 100 MB through (four times) without holding it: its peak grows by its
    // upload buffers (~65 MiB measured, the same for 50 and 150 MB), not by the payload.
    let grown = peak_rss_mib(node.pid()).saturating_sub(before);
    assert!(grown < 90, "the host's peak memory grew by {grown} MiB");

    // Payloads are for the admin and the app's orchestrators and activities, by key.
    let (status, body, _) = c.send(Method::GET, "/_nimbus/durable/payloads/nope", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("payload_not_found")), "{body}");
    let anonymous = reqwest::get(node.url("/_nimbus/durable/payloads/nope")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    // Purged, the instance's payloads go too.
    let key = result["$nimbus.payload"].as_str().unwrap().to_owned();
    assert_eq!(c.send(Method::GET, &format!("/_nimbus/durable/payloads/{key}"), None).await.0, 200);
    assert_eq!(c.send(Method::DELETE, &format!("/_nimbus/durable/instances/{id}"), None).await.0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.send(Method::GET, &format!("/_nimbus/durable/payloads/{key}"), None).await.0 != 404 {
        assert!(std::time::Instant::now() < deadline, "the payload outlived its instance");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_worker_killed_in_the_middle_of_a_step_costs_a_retry_not_the_instance() {
    use reqwest::Method;
    let app = durable_app("");
    let node = app.start(&[]);
    let c = Client::new(&node, &app);
    let id = c.start("slow_step", json!(null)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body, _) =
            c.send(Method::GET, &format!("/_nimbus/durable/instances/{id}?showHistory=true"), None).await;
        if body["historyEvents"].as_array().is_some_and(|h| h.iter().any(|e| e["type"] == "task_completed")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ran: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.send(Method::POST, &format!("/_nimbus/durable/instances/{id}/raiseEvent/go"), None).await.0, 202);
    tokio::time::sleep(Duration::from_millis(1000)).await; // the step sleeps 3 s
    let killed = std::process::Command::new("pkill").args(["-9", "-P", &node.pid().to_string()]).status().unwrap();
    assert!(killed.success(), "no worker process to kill");
    let done = c.finished(&id, Duration::from_secs(60)).await;
    assert_eq!(done["output"], json!(["Hello before!", "Hello after!"]), "{done}");
    let (_, body, _) = c.send(Method::GET, &format!("/_nimbus/durable/instances/{id}?showHistory=true"), None).await;
    let history = body["historyEvents"].as_array().unwrap();
    let count = |kind: &str| history.iter().filter(|e| e["type"] == kind).count();
    assert_eq!((count("task_scheduled"), count("task_completed"), count("event_raised")), (2, 2, 1), "{body}");
    assert!(node.stderr().contains("it will be retried"), "the step was not cut off: {}", node.stderr());
}

#[tokio::test]
async fn two_nodes_share_one_postgresql_database_and_one_finishes_what_the_other_left() {
    use nimbus_store::testing::{Backend, TestDb};
    let db = TestDb::new(Backend::Postgres).await;
    let (app1, app2) = (durable_app(""), durable_app(""));
    let mut node1 = app1.start(&["--store", db.url()]);
    let node2 = app2.start(&["--store", db.url()]);
    let (c1, c2) = (Client::new(&node1, &app1), Client::new(&node2, &app2));
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(c1.start("fanout", json!({"n": 300, "activity": "slow_double", "i": i})).await);
    }
    // Node 1 came first and holds the partitions; node 2 waits for their leases. Node 1 dies with
    // work in flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = node1.signal_and_wait("KILL", Duration::from_secs(10));
    assert!(!status.success());
    for id in &ids {
        let done = c2.finished(id, Duration::from_secs(90)).await;
        assert_eq!((done["runtimeStatus"].as_str(), done["output"].as_i64()), (Some("Completed"), Some(300 * 299)));
        // No result was applied twice: one completion per task.
        let (_, body, _) =
            c2.send(reqwest::Method::GET, &format!("/_nimbus/durable/instances/{id}?showHistory=true"), None).await;
        let history = body["historyEvents"].as_array().unwrap();
        assert_eq!(history.iter().filter(|e| e["type"] == "task_completed").count(), 300);
    }
    drop(c1);
}
