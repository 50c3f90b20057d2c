//! `ctx.docs` in the Python and Node.js SDKs end to end: functions granted
//! `docs:conversations:rw` and `docs:readonly:r` create, read, replace with If-Match, patch, query,
//! batch, follow the change feed and delete over the host's private socket; they are refused
//! writing to the read-only container and reading an ungranted one; the admin API sees their writes.

mod support;

use serde_json::{Value, json};
use support::{App, Node, admin_token};

const APP_PY: &str = r#"
import nimbus

app = nimbus.App()

async def refused(call):
    try:
        await call
    except nimbus.PlatformError as e:
        return [e.status, e.code]
    return "allowed"

@app.http("/py/docs", methods=["POST"])
async def py_docs(req, ctx):
    d = ctx.docs
    out = {}
    created = await d.create("conversations", {"id": "c1", "userId": "u1", "title": "hello", "n": 1})
    out["created"] = [created["title"], created["_etag"]]
    out["read"] = (await d.read("conversations", "c1", "u1"))["title"]
    try:
        await d.read("conversations", "c1", "u2")
    except nimbus.NotFound as e:
        out["missing"] = [e.status, e.code]
    try:
        await d.create("conversations", {"id": "c1", "userId": "u1"})
    except nimbus.PlatformError as e:
        out["duplicate"] = [e.status, e.code]
    # "5" and 5 are two partitions.
    await d.create("conversations", {"id": "n", "userId": 5, "kind": "number"})
    await d.create("conversations", {"id": "n", "userId": "5", "kind": "string"})
    out["partitions"] = [(await d.read("conversations", "n", 5))["kind"], (await d.read("conversations", "n", "5"))["kind"]]

    body = {"id": "c1", "userId": "u1", "title": "renamed", "n": 1}
    replaced = await d.replace("conversations", "c1", "u1", body, if_match=created["_etag"])
    out["replaced"] = replaced["title"]
    try:
        await d.replace("conversations", "c1", "u1", body, if_match=created["_etag"])
    except nimbus.PreconditionFailed as e:
        out["stale"] = [e.status, e.code, isinstance(e, nimbus.PlatformError)]
    ops = [{"op": "incr", "path": "/n", "value": 2}, {"op": "set", "path": "/status", "value": "open"}]
    patched = await d.patch("conversations", "c1", "u1", ops, if_match=replaced["_etag"])
    out["patched"] = [patched["n"], patched["status"]]
    out["stale_patch"] = await refused(d.patch("conversations", "c1", "u1", ops, if_match=replaced["_etag"]))
    await d.upsert("conversations", {"id": "c2", "userId": "u1", "status": "open", "n": 10})
    out["upserted"] = (await d.upsert("conversations", {"id": "c2", "userId": "u1", "status": "open", "n": 10}))["n"]

    results = await d.batch("conversations", "u1", [
        {"op": "create", "item": {"id": "c3", "userId": "u1", "status": "done", "n": 5}},
        {"op": "patch", "id": "c2", "operations": [{"op": "set", "path": "/title", "value": "batched"}]},
        {"op": "read", "id": "c1"},
    ])
    out["batch"] = [[r["status"], r["item"]["id"]] for r in results]
    try:
        await d.batch("conversations", "u1", [
            {"op": "delete", "id": "c3"},
            {"op": "create", "item": {"id": "c1", "userId": "u1"}},
        ])
    except nimbus.PlatformError as e:
        out["batch_failed"] = [e.status, e.code, e.operation_index]
    out["batch_stale"] = await refused(
        d.batch("conversations", "u1", [{"op": "delete", "id": "c3", "if_match": created["_etag"]}])
    )

    query = "SELECT c.id, c.n FROM c WHERE c.status = @status ORDER BY c.n DESC"
    out["query"] = await d.query("conversations", query, {"@status": "open"})
    out["query_bare_name"] = await d.query("conversations", "SELECT VALUE c.id FROM c WHERE c.n = @n", {"n": 5})
    pages = [p async for p in d.query_pages("conversations", "SELECT VALUE c.id FROM c WHERE c.userId = 'u1'", max_items=1)]
    out["pages"] = pages
    out["scoped"] = await d.query("conversations", "SELECT VALUE c.kind FROM c", partition_key=5)
    first, cont = await d.query_page("conversations", "SELECT VALUE c.id FROM c", max_items=2)
    out["page"] = [len(first), cont is not None]

    items, continuation = await d.feed("conversations")
    out["feed"] = sorted(i["id"] + "/" + str(i["userId"]) for i in items)
    await d.patch("conversations", "c3", "u1", [{"op": "incr", "path": "/n", "value": 1}])
    items, continuation = await d.feed("conversations", continuation=continuation)
    out["feed_after"] = [[i["id"], i["n"]] for i in items]
    items, _ = await d.feed("conversations", continuation=continuation)
    out["feed_quiet"] = items
    items, _ = await d.feed("conversations", partition_key="5")
    out["feed_partition"] = [i["kind"] for i in items]

    out["delete_stale"] = await refused(d.delete("conversations", "c3", "u1", if_match=created["_etag"]))
    out["deleted"] = await d.delete("conversations", "c3", "u1")
    out["deleted_again"] = await d.delete("conversations", "c3", "u1")

    out["readonly"] = [i["id"] for i in await d.query("readonly", "SELECT * FROM c")]
    out["readonly_read"] = (await d.read("readonly", "r1", "admin"))["id"]
    out["refusals"] = {
        "create_readonly": await refused(d.create("readonly", {"id": "x", "userId": "u1"})),
        "upsert_readonly": await refused(d.upsert("readonly", {"id": "x", "userId": "u1"})),
        "delete_readonly": await refused(d.delete("readonly", "r1", "admin")),
        "batch_readonly": await refused(d.batch("readonly", "admin", [{"op": "read", "id": "r1"}])),
        "read_secret": await refused(d.read("secret", "s1", "admin")),
        "query_secret": await refused(d.query("secret", "SELECT * FROM c")),
        "feed_secret": await refused(d.feed("secret")),
    }
    return out
"#;

const APP_JS: &str = r#"
const { App, PlatformError } = require("nimbus");
const app = new App();

async function refused(promise) {
  try {
    await promise;
    return "allowed";
  } catch (e) {
    return [e instanceof PlatformError, e.status, e.code];
  }
}

app.http("/js/docs", { methods: ["POST"], name: "js_docs" }, async (req, ctx) => {
  const d = ctx.docs;
  const out = {};
  const created = await d.create("conversations", { id: "c1", userId: "u1", title: "hello", n: 1 });
  out.created = [created.title, created._etag];
  out.read = (await d.read("conversations", "c1", "u1")).title;
  try {
    await d.read("conversations", "c1", "u2");
  } catch (e) {
    out.missing = [e.name, e.status, e.code];
  }
  await d.create("conversations", { id: "n", userId: 5, kind: "number" });
  await d.create("conversations", { id: "n", userId: "5", kind: "string" });
  out.partitions = [(await d.read("conversations", "n", 5)).kind, (await d.read("conversations", "n", "5")).kind];

  const body = { id: "c1", userId: "u1", title: "renamed", n: 1 };
  const replaced = await d.replace("conversations", "c1", "u1", body, { ifMatch: created._etag });
  out.replaced = replaced.title;
  try {
    await d.replace("conversations", "c1", "u1", body, { ifMatch: created._etag });
  } catch (e) {
    out.stale = [e.name, e.status, e.code, e instanceof PlatformError];
  }
  const ops = [{ op: "incr", path: "/n", value: 2 }, { op: "set", path: "/status", value: "open" }];
  const patched = await d.patch("conversations", "c1", "u1", ops, { ifMatch: replaced._etag });
  out.patched = [patched.n, patched.status];
  await d.upsert("conversations", { id: "c2", userId: "u1", status: "open", n: 10 });

  const results = await d.batch("conversations", "u1", [
    { op: "create", item: { id: "c3", userId: "u1", status: "done", n: 5 } },
    { op: "patch", id: "c2", operations: [{ op: "set", path: "/title", value: "batched" }] },
    { op: "read", id: "c1" },
  ]);
  out.batch = results.map((r) => [r.status, r.item.id]);
  try {
    await d.batch("conversations", "u1", [
      { op: "delete", id: "c3" },
      { op: "create", item: { id: "c1", userId: "u1" } },
    ]);
  } catch (e) {
    out.batchFailed = [e.status, e.code, e.operationIndex];
  }

  out.query = await d.query("conversations", "SELECT c.id, c.n FROM c WHERE c.status = @status ORDER BY c.n DESC", {
    parameters: { "@status": "open" },
  });
  out.scoped = await d.query("conversations", "SELECT VALUE c.kind FROM c", { partitionKey: 5 });
  out.pages = [];
  for await (const page of d.queryPages("conversations", "SELECT VALUE c.id FROM c WHERE c.userId = @u", {
    parameters: { u: "u1" },
    maxItems: 2,
  })) {
    out.pages.push(page);
  }

  let { items, continuation } = await d.feed("conversations");
  out.feed = items.map((i) => `${i.id}/${i.userId}`).sort();
  await d.patch("conversations", "c3", "u1", [{ op: "incr", path: "/n", value: 1 }]);
  ({ items, continuation } = await d.feed("conversations", { continuation }));
  out.feedAfter = items.map((i) => [i.id, i.n]);

  out.deleted = await d.delete("conversations", "c3", "u1");
  out.deletedAgain = await d.delete("conversations", "c3", "u1");
  out.readonly = (await d.query("readonly", "SELECT * FROM c")).map((i) => i.id);
  out.refusals = {
    createReadonly: await refused(d.create("readonly", { id: "x", userId: "u1" })),
    patchReadonly: await refused(d.patch("readonly", "r1", "admin", [{ op: "set", path: "/x", value: 1 }])),
    readSecret: await refused(d.read("secret", "s1", "admin")),
    querySecret: await refused(d.query("secret", "SELECT * FROM c")),
  };
  return out;
});

module.exports = app;
"#;

const MANIFEST: &str = r#"
[workers.py]
runtime = "python"
entry = "functions/app.py"

[workers.js]
runtime = "node"
entry = "functions/app.js"

[functions.py_docs]
grants = ["docs:conversations:rw", "docs:readonly:r"]

[functions.js_docs]
grants = ["docs:conversations:rw", "docs:readonly:r"]

[docs.containers.conversations]
partition_key = "/userId"

[docs.containers.readonly]
partition_key = "/userId"

[docs.containers.secret]
partition_key = "/userId"

[[routes]]
path = "/*"
auth = "anonymous"
"#;

/// An app with both workers, and a node where the admin has put one item in each container the
/// functions may only read or not reach at all.
async fn start() -> (App, Node) {
    let app = App::new(Some(MANIFEST));
    std::fs::create_dir_all(app.path().join("functions")).unwrap();
    std::fs::write(app.path().join("functions/app.py"), APP_PY).unwrap();
    std::fs::write(app.path().join("functions/app.js"), APP_JS).unwrap();
    let node = app.start(&[]);
    let http = reqwest::Client::new();
    for (container, id) in [("readonly", "r1"), ("secret", "s1")] {
        let made = http
            .post(node.url(&format!("/_nimbus/docs/{container}/items")))
            .bearer_auth(admin_token(&app))
            .json(&json!({"id": id, "userId": "admin"}))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), 201);
    }
    (app, node)
}

async fn call(node: &Node, path: &str) -> Value {
    let reply = reqwest::Client::new().post(node.url(path)).send().await.unwrap();
    assert_eq!(reply.status(), 200, "{}\n{}", reply.text().await.unwrap(), node.stderr());
    reply.json().await.unwrap()
}

async fn admin_get(app: &App, node: &Node, path: &str) -> (u16, Value) {
    let reply = support::admin_get(node, app, path).await;
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn python_functions_use_their_granted_containers() {
    let (app, node) = start().await;
    let out = call(&node, "/py/docs").await;
    assert_eq!(out["created"][0], "hello");
    assert_eq!(out["read"], "hello");
    assert_eq!(out["missing"], json!([404, "not_found"]));
    assert_eq!(out["duplicate"], json!([409, "conflict"]));
    assert_eq!(out["partitions"], json!(["number", "string"]));
    assert_eq!(out["replaced"], "renamed");
    assert_eq!(out["stale"], json!([412, "precondition_failed", true]));
    assert_eq!(out["patched"], json!([3, "open"]));
    assert_eq!(out["stale_patch"], json!([412, "precondition_failed"]));
    assert_eq!(out["upserted"], 10);
    assert_eq!(out["batch"], json!([[201, "c3"], [200, "c2"], [200, "c1"]]));
    assert_eq!(out["batch_failed"], json!([409, "conflict", 1]));
    assert_eq!(out["batch_stale"], json!([412, "precondition_failed"]));
    assert_eq!(out["query"], json!([{"id": "c2", "n": 10}, {"id": "c1", "n": 3}]));
    assert_eq!(out["query_bare_name"], json!(["c3"]));
    assert_eq!(out["pages"], json!([["c1"], ["c2"], ["c3"]]));
    assert_eq!(out["scoped"], json!(["number"]));
    assert_eq!(out["page"], json!([2, true]));
    assert_eq!(out["feed"], json!(["c1/u1", "c2/u1", "c3/u1", "n/5", "n/5"]));
    assert_eq!(out["feed_after"], json!([["c3", 6]]));
    assert_eq!(out["feed_quiet"], json!([]));
    assert_eq!(out["feed_partition"], json!(["string"]));
    assert_eq!(out["delete_stale"], json!([412, "precondition_failed"]));
    assert_eq!((&out["deleted"], &out["deleted_again"]), (&json!(true), &json!(false)));
    assert_eq!(out["readonly"], json!(["r1"]));
    assert_eq!(out["readonly_read"], "r1");
    for (name, refusal) in out["refusals"].as_object().unwrap() {
        assert_eq!(refusal, &json!([403, "forbidden"]), "{name}");
    }

    // What the function wrote, as the admin API sees it.
    let (status, c1) = admin_get(&app, &node, "/_nimbus/docs/conversations/items/c1?pk=u1").await;
    assert_eq!((status, &c1["title"], &c1["n"], &c1["status"]), (200, &json!("renamed"), &json!(3), &json!("open")));
    let (_, c2) = admin_get(&app, &node, "/_nimbus/docs/conversations/items/c2?pk=u1").await;
    assert_eq!(c2["title"], "batched");
    assert_eq!(admin_get(&app, &node, "/_nimbus/docs/conversations/items/c3?pk=u1").await.0, 404);
    let (_, number) = admin_get(&app, &node, "/_nimbus/docs/conversations/items/n?pk=5").await;
    let (_, string) = admin_get(&app, &node, "/_nimbus/docs/conversations/items/n?pk=%225%22").await;
    assert_eq!((&number["kind"], &string["kind"]), (&json!("number"), &json!("string")));
    let (_, readonly) = admin_get(&app, &node, "/_nimbus/docs/readonly/items").await;
    assert_eq!(readonly["items"].as_array().unwrap().len(), 1, "nothing written to the read-only container");
}

#[tokio::test]
async fn node_functions_use_the_same_api() {
    let (app, node) = start().await;
    let out = call(&node, "/js/docs").await;
    assert_eq!(out["created"][0], "hello");
    assert_eq!(out["read"], "hello");
    assert_eq!(out["missing"], json!(["NotFound", 404, "not_found"]));
    assert_eq!(out["partitions"], json!(["number", "string"]));
    assert_eq!(out["replaced"], "renamed");
    assert_eq!(out["stale"], json!(["PreconditionFailed", 412, "precondition_failed", true]));
    assert_eq!(out["patched"], json!([3, "open"]));
    assert_eq!(out["batch"], json!([[201, "c3"], [200, "c2"], [200, "c1"]]));
    assert_eq!(out["batchFailed"], json!([409, "conflict", 1]));
    assert_eq!(out["query"], json!([{"id": "c2", "n": 10}, {"id": "c1", "n": 3}]));
    assert_eq!(out["scoped"], json!(["number"]));
    assert_eq!(out["pages"], json!([["c1", "c2"], ["c3"]]));
    assert_eq!(out["feed"], json!(["c1/u1", "c2/u1", "c3/u1", "n/5", "n/5"]));
    assert_eq!(out["feedAfter"], json!([["c3", 6]]));
    assert_eq!((&out["deleted"], &out["deletedAgain"]), (&json!(true), &json!(false)));
    assert_eq!(out["readonly"], json!(["r1"]));
    for (name, refusal) in out["refusals"].as_object().unwrap() {
        assert_eq!(refusal, &json!([true, 403, "forbidden"]), "{name}");
    }
    let (status, c1) = admin_get(&app, &node, "/_nimbus/docs/conversations/items/c1?pk=u1").await;
    assert_eq!((status, &c1["title"], &c1["n"]), (200, &json!("renamed"), &json!(3)));
    assert_eq!(admin_get(&app, &node, "/_nimbus/docs/conversations/items/c3?pk=u1").await.0, 404);
}
