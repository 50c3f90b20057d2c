//! Triggers (issue 17) through the real binary: timers fire on their schedule with what the
//! invocation needs (`scheduled_time`, `past_due`), a node that was down runs what it missed once,
//! `run_on_startup` runs at start, and nodes sharing a database run each occurrence once.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{App, Node};

const APP_PY: &str = r#"
import nimbus

app = nimbus.App()

async def record(kind, data, ctx):
    # One document per run: its id is the occurrence (a second run of one occurrence would conflict).
    await ctx.docs.create("ticks", {"id": kind + "-" + data["scheduled_time"], "kind": kind,
                                     "past_due": data["past_due"], "trigger": ctx.trigger})

@app.timer("SCHEDULE")
async def tick(data, ctx):
    await record("tick", data, ctx)

@app.timer("0 0 0 1 1 *", run_on_startup=True)      # once a year, and at every start
async def boot(data, ctx):
    await record("startup", data, ctx)
"#;

/// An app whose `tick` runs on `schedule` and `boot` at start.
/// The node's Prometheus text.
async fn metrics(node: &Node, app: &App) -> String {
    let reply = reqwest::Client::new().get(node.url("/_nimbus/metrics")).bearer_auth(support::admin_token(app)).send();
    reply.await.unwrap().text().await.unwrap()
}

fn timer_app(schedule: &str) -> App {
    let manifest = "[workers.main]\nruntime = \"python\"\nentry = \"app.py\"\n\n\
         [functions.tick]\ngrants = [\"docs:ticks:rw\"]\n\n[functions.boot]\ngrants = [\"docs:ticks:rw\"]\n\n\
         [docs.containers.ticks]\npartition_key = \"/kind\"\n";
    let app = App::new(Some(manifest));
    std::fs::write(app.path().join("app.py"), APP_PY.replace("SCHEDULE", schedule)).unwrap();
    app
}

async fn ticks(node: &Node, app: &App) -> Vec<Value> {
    let reply = reqwest::Client::new()
        .post(node.url("/_nimbus/docs/ticks/query"))
        .bearer_auth(support::admin_token(app))
        .json(&json!({"query": "SELECT * FROM c"}))
        .send()
        .await
        .unwrap();
    let body: Value = reply.json().await.unwrap();
    body["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_timer_fires_on_its_schedule_and_runs_on_startup() {
    let app = timer_app("*/2 * * * * *");
    let node = app.start(&[]);
    support::wait_until("three timer runs", Duration::from_secs(20), async || ticks(&node, &app).await.len() >= 3)
        .await;
    let runs = ticks(&node, &app).await;
    let startup: Vec<&Value> = runs.iter().filter(|r| r["kind"] == "startup").collect();
    assert_eq!(startup.len(), 1, "{runs:?}");
    let scheduled: Vec<&Value> = runs.iter().filter(|r| r["kind"] == "tick").collect();
    assert!(scheduled.len() >= 2, "{runs:?}");
    for run in &scheduled {
        // Every occurrence is on an even second, on time, and says what fired it.
        let at = run["id"].as_str().unwrap().trim_start_matches("tick-");
        let second: u32 = at[17..19].parse().unwrap();
        assert_eq!(second % 2, 0, "{at}");
        assert_eq!(run["past_due"], false);
        assert_eq!(run["trigger"]["type"], "timer");
        assert_eq!(run["trigger"]["schedule"], "*/2 * * * * *");
        assert!(run["trigger"]["next"].is_string(), "{run}");
    }
    let metrics = metrics(&node, &app).await;
    assert!(metrics.contains("nimbus_timer_runs_total{function=\"tick\",outcome=\"ok\"}"), "{metrics}");
}

#[tokio::test]
async fn a_node_that_was_down_runs_the_missed_occurrence_once_past_due() {
    // Every 3 seconds; down for more than two occurrences; one catch-up run, not a burst.
    let app = timer_app("*/3 * * * * *");
    let mut node = app.start(&[]);
    let ran = async |node: &Node| ticks(node, &app).await.iter().any(|r| r["kind"] == "tick");
    support::wait_until("a timer run", Duration::from_secs(20), async || ran(&node).await).await;
    node.signal_and_wait("KILL", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(7)).await;
    let before = chrono_free_now();
    let node = app.start(&[]);
    support::wait_until("a catch-up run", Duration::from_secs(20), async || {
        ticks(&node, &app).await.iter().any(|r| r["past_due"] == true)
    })
    .await;
    let runs = ticks(&node, &app).await;
    let past_due: Vec<&Value> = runs.iter().filter(|r| r["past_due"] == true && r["kind"] == "tick").collect();
    assert_eq!(past_due.len(), 1, "one catch-up run: {runs:?}");
    // The catch-up is the latest occurrence missed (before the restart).
    let at = past_due[0]["id"].as_str().unwrap().trim_start_matches("tick-");
    assert!(at < before.as_str(), "{at} < {before}");
}

/// Now as RFC 3339 UTC seconds, as the timer writes them (`2026-12-07T21:00:03+00:00`).
fn chrono_free_now() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%S+00:00"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn two_nodes_on_one_database_run_each_occurrence_once() {
    use nimbus_store::testing::{Backend, TestDb};
    let db = TestDb::new(Backend::Postgres).await;
    let (app_a, app_b) = (timer_app("*/2 * * * * *"), timer_app("*/2 * * * * *"));
    let store = ["--store", db.url()];
    let (a, b) = (app_a.start(&store), app_b.start(&store));
    tokio::time::sleep(Duration::from_secs(9)).await;
    let scheduled = async || ticks(&a, &app_a).await.into_iter().filter(|r| r["kind"] == "tick").count() as f64;
    assert!(scheduled().await >= 3.0);
    let ran = async |node: &Node, app: &App, outcome: &str| {
        let text = metrics(node, app).await;
        let name = format!("nimbus_timer_runs_total{{function=\"tick\",outcome=\"{outcome}\"}}");
        text.lines()
            .filter(|l| l.starts_with(&name))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    // No occurrence ran twice (a second run could not create its document: it would count as failed),
    // and the two nodes' runs are the documents (one more may be running as we read).
    assert_eq!((ran(&a, &app_a, "failed").await, ran(&b, &app_b, "failed").await), (0.0, 0.0));
    let total = ran(&a, &app_a, "ok").await + ran(&b, &app_b, "ok").await;
    let documents = scheduled().await;
    assert!((documents - total).abs() <= 1.0, "{total} runs, {documents} documents");
}

const QUEUE_PY: &str = r#"
import nimbus

app = nimbus.App()

@app.queue("jobs", batch_size=4)
async def work(data, ctx):
    if data.get("fail"):
        raise RuntimeError("this message always fails")
    await ctx.docs.create("done", {"id": data["id"], "kind": "job", "dequeue_count": ctx.trigger["dequeue_count"]})

@app.http("/enqueue", methods=["POST"])
async def enqueue(req, ctx):
    body = await req.json()
    try:
        message = await ctx.queue(body["queue"]).send(body["data"], delay=body.get("delay"))
    except nimbus.PlatformError as e:
        return nimbus.Response({"code": e.code}, status=e.status)
    return {"id": message, "state": await ctx.queue(body["queue"]).state()}
"#;

const QUEUE_JS: &str = r#"
const { App } = require("nimbus");
const app = new App();
app.http("/enqueue-js", { methods: ["POST"] }, async (req, ctx) => {
  const body = await req.json();
  const id = await ctx.queue("jobs").send(body.data, { delay: body.delay });
  return { id, state: await ctx.queue("jobs").state() };
});
module.exports = app;
"#;

fn queue_app() -> App {
    let manifest = "[workers.main]\nruntime = \"python\"\nentry = \"app.py\"\n\n[functions.work]\ngrants = [\"docs:done:rw\"]\n\n\
                    [workers.web]\nruntime = \"node\"\nentry = \"app.js\"\n\n[functions.enqueue-js]\ngrants = [\"queues:jobs:rw\"]\n\n\
                    [[routes]]\npath = \"/enqueue-js\"\nauth = \"anonymous\"\n\n\
                    [functions.enqueue]\ngrants = [\"queues:jobs:rw\"]\n\n[[routes]]\npath = \"/enqueue\"\nauth = \"anonymous\"\n\n\
                    [docs.containers.done]\npartition_key = \"/kind\"\n";
    let app = App::new(Some(manifest));
    std::fs::write(app.path().join("app.py"), QUEUE_PY).unwrap();
    std::fs::write(app.path().join("app.js"), QUEUE_JS).unwrap();
    app
}

async fn admin(node: &Node, app: &App, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().request(method.parse().unwrap(), node.url(path)).bearer_auth(support::admin_token(app));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let reply = request.send().await.unwrap();
    (reply.status().as_u16(), reply.json().await.unwrap_or(Value::Null))
}

async fn done(node: &Node, app: &App) -> Vec<Value> {
    let (_, body) =
        admin(node, app, "POST", "/_nimbus/docs/done/query", Some(json!({"query": "SELECT * FROM c"}))).await;
    body["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn queue_messages_run_their_function_and_a_failing_one_goes_to_poison() {
    let app = queue_app();
    let node = app.start(&[]);
    for n in 0..20 {
        let (status, sent) =
            admin(&node, &app, "POST", "/_nimbus/queues/jobs/messages", Some(json!({"data": {"id": format!("m{n}")}})))
                .await;
        assert_eq!(status, 201, "{sent}");
    }
    let (status, _) =
        admin(&node, &app, "POST", "/_nimbus/queues/jobs/messages", Some(json!({"data": {"id": "bad", "fail": true}})))
            .await;
    assert_eq!(status, 201);
    support::wait_until("20 messages processed", Duration::from_secs(30), async || done(&node, &app).await.len() == 20)
        .await;
    assert!(done(&node, &app).await.iter().all(|d| d["dequeue_count"] == 1));
    // The failing one: five deliveries (with back-off), then the poison queue.
    support::wait_until("the bad message in the poison queue", Duration::from_secs(30), async || {
        admin(&node, &app, "GET", "/_nimbus/queues/jobs", None).await.1["poison_length"] == 1
    })
    .await;
    let (_, state) = admin(&node, &app, "GET", "/_nimbus/queues/jobs", None).await;
    assert_eq!((state["length"].as_u64(), state["poison_length"].as_u64()), (Some(0), Some(1)), "{state}");
    let metrics = metrics(&node, &app).await;
    assert!(metrics.contains("nimbus_queue_messages_total{queue=\"jobs\",outcome=\"retry\"} 4"), "{metrics}");
    assert!(metrics.contains("nimbus_queue_messages_total{queue=\"jobs\",outcome=\"poison\"} 1"), "{metrics}");
    // Re-queued, it is delivered again (and fails again: its count starts over).
    let (_, requeued) = admin(&node, &app, "POST", "/_nimbus/queues/jobs/requeue", None).await;
    assert_eq!(requeued["requeued"], 1);
    let (_, state) = admin(&node, &app, "GET", "/_nimbus/queues/jobs", None).await;
    assert_eq!(state["poison_length"], 0, "{state}");

    // Bad requests are refused with a reason.
    for (path, body, code) in [
        ("/_nimbus/queues/Jobs/messages", json!({"data": 1}), "invalid_queue_name"),
        ("/_nimbus/queues/jobs/messages", json!({"delay": 1}), "invalid_message"),
        ("/_nimbus/queues/jobs/messages", json!({"data": 1, "delay": -1}), "invalid_message"),
        ("/_nimbus/queues/jobs/messages", json!({"data": 1, "priority": 2}), "invalid_message"),
    ] {
        let (status, error) = admin(&node, &app, "POST", path, Some(body)).await;
        assert_eq!((status, error["error"]["code"].as_str()), (400, Some(code)), "{path}");
    }
    let unauthenticated = reqwest::Client::new().get(node.url("/_nimbus/queues/jobs")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);

    // From a function, with its grant: sent, then processed by the queue function.
    let http = reqwest::Client::new();
    let post = async |path: &str, body: Value| {
        let reply = http.post(node.url(path)).json(&body).send().await.unwrap();
        reply.json::<Value>().await.unwrap()
    };
    let sent = post("/enqueue", json!({"queue": "jobs", "data": {"id": "via-sdk"}})).await;
    assert!(sent["id"].is_string() && sent["state"]["length"].is_u64(), "{sent}");
    support::wait_until("the SDK's message processed", Duration::from_secs(20), async || {
        done(&node, &app).await.iter().any(|d| d["id"] == "via-sdk")
    })
    .await;
    // The same from Node.js, delayed.
    let sent = post("/enqueue-js", json!({"data": {"id": "via-node"}, "delay": 0.5})).await;
    assert!(sent["id"].is_string() && sent["state"]["length"].as_u64() >= Some(1), "{sent}");
    support::wait_until("the Node.js SDK's message processed", Duration::from_secs(20), async || {
        done(&node, &app).await.iter().any(|d| d["id"] == "via-node")
    })
    .await;
    // Without a grant for that queue: refused.
    let refused = http.post(node.url("/enqueue")).json(&json!({"queue": "other", "data": 1})).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "forbidden");
}
