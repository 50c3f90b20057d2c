"use strict";
// HTTP invocations against a real worker: the index, dispatch (header and local routing), request
// fields, every kind of return value, errors, and keep-alive.

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const http = require("http");
const { startWorker, request, waitFor } = require("./helpers");

const APP = `
const { App, Response, HttpError } = require("nimbus");
const app = new App();
app.http("/hello", { methods: ["GET"] }, async (req, ctx) => ({ hello: req.query.get("name") ?? "world" }));
app.http("/echo/{id}/*", { methods: ["GET", "POST"], name: "echo" }, async (req, ctx) => ({
  method: req.method, path: req.path, query: Object.fromEntries(req.query), params: req.params,
  claims: req.claims, invocationId: req.invocationId, ctxInvocationId: ctx.invocationId,
  functionName: ctx.functionName, traceparent: ctx.traceparent, timeoutMs: ctx.timeoutMs,
  header: req.headers["x-custom"] ?? null, signal: ctx.signal instanceof AbortSignal && !ctx.signal.aborted,
}));
app.http("/items/special", { methods: ["GET"] }, async () => "special");
app.http("/items/{id}", { methods: ["GET", "DELETE"] }, async (req) => "item " + req.params.id);
app.http("/text", async () => "héllo");
app.http("/bytes", async () => Buffer.from([0, 1, 2, 255]));
app.http("/u8", async () => new Uint8Array([7, 8]));
app.http("/null", async () => null);
app.http("/undefined", async () => {});
app.http("/array", async () => [1, "two", { three: 3 }]);
app.http("/created", async () => new Response({ ok: true }, { status: 201, headers: { "X-Thing": "yes", "set-cookie": ["a=1", "b=2"] } }));
app.http("/html", async () => new Response("<p>hi</p>", { contentType: "text/html; charset=utf-8" }));
app.http("/fetch-response", async () => new globalThis.Response("from fetch", { status: 203, headers: { "content-type": "text/x-fetch", "x-up": "1" } }));
app.http("/accepted", async () => new Response(null, { status: 202 }));
app.http("/json", { methods: ["POST"] }, async (req) => ({ got: await req.json() }));
app.http("/text-body", { methods: ["POST"] }, async (req) => ({ text: await req.text(), again: (await req.buffer()).length }));
app.http("/catch-json", { methods: ["POST"] }, async (req) => {
  try { return await req.json(); } catch (err) { return { caught: err.code }; }
});
app.http("/boom", async function boom() { throw new Error("secret detail 42"); });
app.http("/boom-sync", function boomSync() { throw new TypeError("sync secret"); });
app.http("/teapot", async () => { throw new HttpError(418, "teapot", "I am a teapot"); });
app.http("/log", async (req, ctx) => { ctx.log.info("hello from", ctx.functionName); ctx.log.warn("careful"); return "ok"; });
app.http("/files/*", { methods: ["GET"] }, async (req) => req.params);
module.exports = app;
`;

let w;
before(async () => {
  w = await startWorker(APP);
});
after(async () => {
  await w.stop();
});

test("index lists functions as PROTOCOL.md §2 says", async () => {
  const res = await request(w, { path: "/_nimbus/worker/index" });
  assert.equal(res.status, 200);
  assert.match(res.headers["content-type"], /^application\/json/);
  const index = res.json();
  assert.equal(index.protocol, 1);
  assert.equal(index.sdk, "node/0.1.0");
  assert.deepEqual(index.functions[0], { name: "hello", trigger: { type: "http", route: "/hello", methods: ["GET"] } });
  const byName = Object.fromEntries(index.functions.map((f) => [f.name, f.trigger]));
  assert.deepEqual(byName.echo, { type: "http", route: "/echo/{id}/*", methods: ["GET", "POST"] });
  assert.deepEqual(byName.text, { type: "http", route: "/text", methods: [] });
  assert.ok(byName["items-id"], "names derive from routes");
  assert.ok(byName.boom && byName.boomSync, "names come from named handlers");
});

test("protocol endpoints: wrong method, unknown endpoint, invoke of unknown or http function", async () => {
  assert.equal((await request(w, { method: "POST", path: "/_nimbus/worker/index" })).status, 405);
  const unknown = await request(w, { path: "/_nimbus/worker/nope" });
  assert.equal(unknown.status, 404);
  assert.equal(unknown.json().error.code, "not_found");
  const inv = await request(w, { method: "POST", path: "/_nimbus/worker/invoke/nope", body: "{}" });
  assert.equal(inv.status, 404);
  assert.equal(inv.json().error.code, "unknown_function");
  const httpFn = await request(w, { method: "POST", path: "/_nimbus/worker/invoke/hello", body: "{}" });
  assert.equal(httpFn.status, 404);
  assert.equal(httpFn.json().error.code, "unknown_function");
});

test("query string, JSON result", async () => {
  const res = await request(w, { path: "/hello?name=ada" });
  assert.equal(res.status, 200);
  assert.equal(res.headers["content-type"], "application/json");
  assert.deepEqual(res.json(), { hello: "ada" });
  assert.deepEqual((await request(w, { path: "/hello" })).json(), { hello: "world" });
});

test("x-nimbus-* headers: params, claims, invocation id, trace context, function name", async () => {
  const res = await request(w, {
    path: "/echo/7/a/b?x=1&x=2&y=%20z",
    headers: {
      "x-nimbus-function": "echo",
      "x-nimbus-invocation-id": "inv-123",
      "x-nimbus-params": JSON.stringify({ id: "from-host", "*": "a/b" }),
      "x-nimbus-claims": JSON.stringify({ sub: "user-1", scp: "chat" }),
      "x-nimbus-timeout-ms": "240000",
      traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      "X-Custom": "Yes",
    },
  });
  assert.equal(res.status, 200);
  assert.deepEqual(res.json(), {
    method: "GET",
    path: "/echo/7/a/b",
    query: { x: "2", y: " z" },
    params: { id: "from-host", "*": "a/b" },
    claims: { sub: "user-1", scp: "chat" },
    invocationId: "inv-123",
    ctxInvocationId: "inv-123",
    functionName: "echo",
    traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    timeoutMs: 240000,
    header: "Yes",
    signal: true,
  });
});

test("without x-nimbus headers: params matched locally, claims null, an invocation id generated", async () => {
  const body = (await request(w, { method: "POST", path: "/echo/hello%20world/x/y/z" })).json();
  assert.deepEqual(body.params, { id: "hello world", "*": "x/y/z" });
  assert.equal(body.claims, null);
  assert.equal(body.functionName, "echo");
  assert.equal(typeof body.invocationId, "string");
  assert.ok(body.invocationId.length > 0);
  assert.equal(body.traceparent, null);
  assert.deepEqual((await request(w, { path: "/files" })).json(), { "*": "" });
  assert.deepEqual((await request(w, { path: "/files/a/b.txt" })).json(), { "*": "a/b.txt" });
});

test("the function header wins over the path; unknown function names are 404", async () => {
  const res = await request(w, { path: "/whatever", headers: { "x-nimbus-function": "text" } });
  assert.equal(res.text, "héllo");
  const missing = await request(w, { path: "/hello", headers: { "x-nimbus-function": "nope" } });
  assert.equal(missing.status, 404);
  assert.equal(missing.json().error.code, "not_found");
});

test("routing: 404, 405 with allow, literal beats {param}", async () => {
  const notFound = await request(w, { path: "/nowhere" });
  assert.equal(notFound.status, 404);
  assert.deepEqual(Object.keys(notFound.json().error).sort(), ["code", "message"]);
  assert.equal(notFound.json().error.code, "not_found");
  const wrong = await request(w, { method: "PUT", path: "/hello" });
  assert.equal(wrong.status, 405);
  assert.equal(wrong.json().error.code, "method_not_allowed");
  assert.equal(wrong.headers.allow, "GET");
  assert.equal((await request(w, { path: "/items/special" })).text, "special");
  assert.equal((await request(w, { path: "/items/42" })).text, "item 42");
  assert.equal((await request(w, { method: "DELETE", path: "/items/special" })).text, "item special");
  assert.equal((await request(w, { method: "HEAD", path: "/hello" })).status, 200);
  assert.equal((await request(w, { path: "/hello/" })).status, 404);
});

test("return values: text, bytes, null, undefined, arrays", async () => {
  const text = await request(w, { path: "/text" });
  assert.equal(text.status, 200);
  assert.equal(text.headers["content-type"], "text/plain; charset=utf-8");
  assert.equal(text.text, "héllo");
  assert.equal(text.headers["content-length"], String(Buffer.byteLength("héllo")));
  const bytes = await request(w, { path: "/bytes" });
  assert.equal(bytes.headers["content-type"], "application/octet-stream");
  assert.deepEqual([...bytes.body], [0, 1, 2, 255]);
  assert.deepEqual([...(await request(w, { path: "/u8" })).body], [7, 8]);
  for (const p of ["/null", "/undefined"]) {
    const res = await request(w, { path: p });
    assert.equal(res.status, 204, p);
    assert.equal(res.body.length, 0);
  }
  assert.deepEqual((await request(w, { path: "/array" })).json(), [1, "two", { three: 3 }]);
});

test("Response: status, headers, content type", async () => {
  const created = await request(w, { path: "/created" });
  assert.equal(created.status, 201);
  assert.equal(created.headers["x-thing"], "yes");
  assert.deepEqual(created.headers["set-cookie"], ["a=1", "b=2"]);
  assert.equal(created.headers["content-type"], "application/json");
  assert.deepEqual(created.json(), { ok: true });
  const html = await request(w, { path: "/html" });
  assert.equal(html.headers["content-type"], "text/html; charset=utf-8");
  assert.equal(html.text, "<p>hi</p>");
  const fetched = await request(w, { path: "/fetch-response" });
  assert.equal(fetched.status, 203);
  assert.equal(fetched.headers["content-type"], "text/x-fetch");
  assert.equal(fetched.headers["x-up"], "1");
  assert.equal(fetched.text, "from fetch");
  const accepted = await request(w, { path: "/accepted" });
  assert.equal(accepted.status, 202);
  assert.equal(accepted.body.length, 0);
});

test("request bodies: json, text, and invalid JSON → 400 invalid_json", async () => {
  const ok = await request(w, { method: "POST", path: "/json", body: '{"a":[1,2]}', headers: { "content-type": "application/json" } });
  assert.deepEqual(ok.json(), { got: { a: [1, 2] } });
  const text = await request(w, { method: "POST", path: "/text-body", body: "naïve" });
  assert.deepEqual(text.json(), { text: "naïve", again: Buffer.byteLength("naïve") });
  const bad = await request(w, { method: "POST", path: "/json", body: "{nope" });
  assert.equal(bad.status, 400);
  assert.equal(bad.json().error.code, "invalid_json");
  assert.equal(typeof bad.json().error.message, "string");
  const empty = await request(w, { method: "POST", path: "/json" });
  assert.equal(empty.status, 400);
  assert.deepEqual((await request(w, { method: "POST", path: "/catch-json", body: "[" })).json(), { caught: "invalid_json" });
});

test("a handler that throws answers 500 handler_error without its message and logs the stack", async () => {
  for (const p of ["/boom", "/boom-sync"]) {
    const res = await request(w, { path: p });
    assert.equal(res.status, 500, p);
    assert.deepEqual(res.json(), { error: { code: "handler_error", message: "the function raised an error" } });
    assert.doesNotMatch(res.text, /secret/);
  }
  // stderr is a pipe: its lines may arrive after the response.
  await waitFor(() => /at .*boom .*app\.js:\d+/.test(w.stderr()), { what: "the stack on stderr" });
  assert.match(w.stderr(), /function "boom" failed .*\n.*secret detail 42/);
});

test("HttpError answers its own status and code", async () => {
  const res = await request(w, { path: "/teapot" });
  assert.equal(res.status, 418);
  assert.deepEqual(res.json(), { error: { code: "teapot", message: "I am a teapot" } });
});

test("ctx.log writes to stderr, tagged with the invocation id", async () => {
  await request(w, { path: "/log", headers: { "x-nimbus-invocation-id": "log-inv-1" } });
  await waitFor(() => /\[log-inv-1\] warning: careful/.test(w.stderr()), { what: "the log lines" });
  assert.match(w.stderr(), /\[log-inv-1\] hello from log\n/);
});

test("keep-alive: sequential requests reuse one connection", async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const first = await request(w, { path: "/hello", agent });
    const second = await request(w, { path: "/text", agent });
    const third = await request(w, { method: "POST", path: "/json", body: "{}", agent });
    assert.equal(first.status, 200);
    assert.equal(first.headers.connection, "keep-alive");
    assert.equal(first.reusedSocket, false);
    assert.equal(second.reusedSocket, true);
    assert.equal(third.reusedSocket, true);
    assert.equal(third.status, 200);
  } finally {
    agent.destroy();
  }
});

test("NIMBUS_DEV=1 puts the error's message in the 500 answer", async () => {
  const dev = await startWorker(APP, { env: { NIMBUS_DEV: "1" } });
  try {
    const res = await request(dev, { path: "/boom" });
    assert.equal(res.status, 500);
    assert.equal(res.json().error.code, "handler_error");
    assert.match(res.json().error.message, /secret detail 42/);
  } finally {
    await dev.stop();
  }
});
