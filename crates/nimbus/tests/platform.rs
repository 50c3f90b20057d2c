//! The platform API as functions reach it: `ctx.blob` in the Python and Node.js SDKs, over the
//! host's private socket with each instance's scoped token, limited to the function's grants.

mod support;

use serde_json::Value;
use support::{App, admin_token};

const APP_PY: &str = r#"
import os
import nimbus

app = nimbus.App()

@app.http("/py/blob", methods=["POST"])
async def blob(req, ctx):
    out = {}
    info = await ctx.blob.put("uploads", "py/hello.txt", "hello from python", metadata={"who": "py"})
    out["put"] = info
    out["get"] = (await ctx.blob.get("uploads", "py/hello.txt")).decode()
    async def pieces():
        for i in range(3):
            yield b"part%d;" % i
    out["streamed"] = (await ctx.blob.put("uploads", "py/streamed.bin", pieces()))["size"]
    out["chunks"] = b"".join([c async for c in ctx.blob.stream("uploads", "py/streamed.bin")]).decode()
    out["head"] = await ctx.blob.head("uploads", "py/hello.txt")
    out["missing_head"] = await ctx.blob.head("uploads", "py/none")
    try:
        await ctx.blob.get("uploads", "py/none")
    except nimbus.NotFound as e:
        out["missing_get"] = e.status
    out["list"] = [o["key"] for o in (await ctx.blob.list("uploads", prefix="py/"))["objects"]]
    out["sign"] = await ctx.blob.sign("uploads", "py/hello.txt", expires_in=60)
    out["read_public"] = (await ctx.blob.list("public"))["objects"]
    out["copied"] = (await ctx.blob.copy("public", "notice.txt", "uploads", "py/copy.txt"))["size"]
    refusals_copy = None
    try:
        await ctx.blob.copy("private", "x", "uploads", "py/stolen.txt")
    except nimbus.PlatformError as e:
        refusals_copy = [e.status, e.code]
    out["copy_from_private"] = refusals_copy
    refusals = {}
    for name, call in [
        ("write_public", lambda: ctx.blob.put("public", "x", b"no")),
        ("read_private", lambda: ctx.blob.get("private", "x")),
        ("sign_put_public", lambda: ctx.blob.sign("public", "x", method="PUT")),
    ]:
        try:
            await call()
            refusals[name] = "allowed"
        except nimbus.PlatformError as e:
            refusals[name] = [e.status, e.code]
    out["refusals"] = refusals
    out["deleted"] = await ctx.blob.delete("uploads", "py/streamed.bin")
    out["deleted_again"] = await ctx.blob.delete("uploads", "py/streamed.bin")
    out["token"] = os.environ["NIMBUS_PLATFORM_TOKEN"]
    return out

@app.http("/py/ungranted", methods=["GET"])
async def ungranted(req, ctx):
    try:
        await ctx.blob.get("uploads", "py/hello.txt")
    except nimbus.PlatformError as e:
        return {"status": e.status, "code": e.code, "message": e.message}
    return {"status": 200}
"#;

const APP_JS: &str = r#"
const { App, PlatformError } = require("nimbus");
const app = new App();

app.http("/js/blob", { methods: ["POST"], name: "js_blob" }, async (req, ctx) => {
  const out = {};
  out.put = await ctx.blob.put("uploads", "js/hello.txt", "hello from node", { contentType: "text/plain" });
  out.get = (await ctx.blob.get("uploads", "js/hello.txt")).toString();
  async function* pieces() { for (let i = 0; i < 3; i++) yield Buffer.from(`part${i};`); }
  out.streamed = (await ctx.blob.put("uploads", "js/streamed.bin", pieces())).size;
  out.head = await ctx.blob.head("uploads", "js/hello.txt");
  out.list = (await ctx.blob.list("uploads", { prefix: "js/" })).objects.map((o) => o.key);
  out.sign = await ctx.blob.sign("uploads", "js/hello.txt", { expiresIn: 60 });
  out.copied = (await ctx.blob.copy("uploads", "js/hello.txt", "uploads", "js/copy.txt")).size;
  try {
    await ctx.blob.put("public", "x", "no");
    out.refused = "allowed";
  } catch (e) {
    out.refused = [e instanceof PlatformError, e.status, e.code];
  }
  try {
    await ctx.blob.get("uploads", "js/none");
  } catch (e) {
    out.missing = [e.name, e.status];
  }
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

[functions.blob]
grants = ["blob:uploads:rw", "blob:public:r"]

[functions.js_blob]
grants = ["blob:uploads:rw"]

[[routes]]
path = "/*"
auth = "anonymous"
"#;

fn app() -> App {
    let app = App::new(Some(MANIFEST));
    std::fs::create_dir_all(app.path().join("functions")).unwrap();
    std::fs::write(app.path().join("functions/app.py"), APP_PY).unwrap();
    std::fs::write(app.path().join("functions/app.js"), APP_JS).unwrap();
    app
}

#[tokio::test]
async fn functions_reach_granted_containers_only() {
    let app = app();
    let node = app.start(&[]);
    let http = reqwest::Client::new();
    let admin = admin_token(&app);
    // Something in the read-only container, put there by the admin.
    let put =
        http.put(node.url("/_nimbus/blob/public/notice.txt")).bearer_auth(&admin).body("hi").send().await.unwrap();
    assert_eq!(put.status(), 201);

    let reply = http.post(node.url("/py/blob")).send().await.unwrap();
    assert_eq!(reply.status(), 200, "{}\n{}", reply.text().await.unwrap(), node.stderr());
    let out: Value = reply.json().await.unwrap();
    assert_eq!(out["put"]["size"], 17);
    assert_eq!(out["put"]["metadata"]["who"], "py");
    assert_eq!(out["get"], "hello from python");
    assert_eq!(out["streamed"], 18);
    assert_eq!(out["chunks"], "part0;part1;part2;");
    assert_eq!(out["head"]["size"], 17);
    assert_eq!(out["head"]["metadata"]["who"], "py");
    assert_eq!(out["missing_head"], Value::Null);
    assert_eq!(out["missing_get"], 404);
    assert_eq!(out["list"], serde_json::json!(["py/hello.txt", "py/streamed.bin"]));
    assert_eq!(out["copied"], 2);
    assert_eq!(out["copy_from_private"], serde_json::json!([403, "forbidden"]));
    assert_eq!(out["read_public"][0]["key"], "notice.txt");
    assert_eq!(out["refusals"]["write_public"], serde_json::json!([403, "forbidden"]));
    assert_eq!(out["refusals"]["read_private"], serde_json::json!([403, "forbidden"]));
    assert_eq!(out["refusals"]["sign_put_public"], serde_json::json!([403, "forbidden"]));
    assert_eq!(out["deleted"], true);
    assert_eq!(out["deleted_again"], false);

    // What the function wrote is in the store, as the admin API sees it.
    let got = http.get(node.url("/_nimbus/blob/uploads/py/hello.txt")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(got.text().await.unwrap(), "hello from python");
    // The signed URL names the node's public address and works for anyone, for GET only.
    let signed = out["sign"].as_str().unwrap();
    assert!(signed.starts_with(&node.url("/_nimbus/blob/uploads/py/hello.txt?")), "{signed}");
    assert_eq!(http.get(signed).send().await.unwrap().text().await.unwrap(), "hello from python");
    assert_eq!(http.put(signed).body("x").send().await.unwrap().status(), 403);
    // A worker's token opens nothing on the public port.
    let token = out["token"].as_str().unwrap();
    let stolen = http.get(node.url("/_nimbus/blob/uploads?prefix=py/")).bearer_auth(token).send().await.unwrap();
    assert_eq!(stolen.status(), 401);
}

#[tokio::test]
async fn a_function_without_grants_is_refused_with_the_grant_to_add() {
    let app = app();
    let node = app.start(&[]);
    let out: Value = reqwest::get(node.url("/py/ungranted")).await.unwrap().json().await.unwrap();
    assert_eq!(out["status"], 403, "{out}");
    let message = out["message"].as_str().unwrap();
    assert!(message.contains("function `ungranted`") && message.contains("blob:uploads:r"), "{message}");
}

#[tokio::test]
async fn node_functions_use_the_same_api() {
    let app = app();
    let node = app.start(&[]);
    let reply = reqwest::Client::new().post(node.url("/js/blob")).send().await.unwrap();
    assert_eq!(reply.status(), 200, "{}\n{}", reply.text().await.unwrap(), node.stderr());
    let out: Value = reply.json().await.unwrap();
    assert_eq!(out["put"]["size"], 15);
    assert_eq!(out["put"]["content_type"], "text/plain");
    assert_eq!(out["get"], "hello from node");
    assert_eq!(out["streamed"], 18);
    assert_eq!(out["head"]["size"], 15);
    assert_eq!(out["copied"], 15);
    assert_eq!(out["list"], serde_json::json!(["js/hello.txt", "js/streamed.bin"]));
    assert_eq!(out["refused"], serde_json::json!([true, 403, "forbidden"]));
    assert_eq!(out["missing"], serde_json::json!(["NotFound", 404]));
    let signed = out["sign"].as_str().unwrap();
    assert_eq!(reqwest::get(signed).await.unwrap().text().await.unwrap(), "hello from node");
}
