"use strict";
// Envelope invocations (PROTOCOL.md §4) against a real worker: POST /_nimbus/worker/invoke/{function}
// with a JSON envelope, the handler called with (data, ctx), its JSON result, errors and cancellation.

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("fs");
const net = require("net");
const os = require("os");
const http = require("http");
const path = require("path");
const { startWorker, request, waitFor } = require("./helpers");

const APP = `
const fs = require("fs");
const path = require("path");
const { App, HttpError, Response, stream } = require("nimbus");
const app = new App();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

app.http("/hello", { methods: ["GET"] }, async () => ({ hello: "world" }));
app.queue("jobs", { name: "on-job", batchSize: 4 }, async (data, ctx) => ({
  data, trigger: ctx.trigger, invocationId: ctx.invocationId, functionName: ctx.functionName,
  traceparent: ctx.traceparent, timeoutMs: ctx.timeoutMs, signal: ctx.signal instanceof AbortSignal && !ctx.signal.aborted,
}));
app.activity("read-doc", async (data, ctx) => ctx.docs.read("conversations", data.id, data.pk));
app.timer("0 */5 * * * *", function tick(data, ctx) { return ["sync", data]; });
app.activity("nothing", async () => { await sleep(1); });
app.activity("null", () => null);
app.activity("fails", async () => { throw new Error("job secret"); });
app.activity("fails-sync", () => { throw new TypeError("sync secret"); });
app.activity("fails-bare", () => { throw new RangeError(); });
app.activity("fails-custom", () => { class Declined extends Error {} throw new Declined("no funds"); });
app.activity("throws-a-string", () => { throw "just text"; });
app.queue("jobs", { name: "queue-fails" }, async () => { throw new Error("queue secret"); });
app.activity("conflict", async () => { throw new HttpError(409, "duplicate", "already done"); });
app.activity("bigint", async () => ({ n: 10n }));
app.activity("circular", async () => { const a = {}; a.a = a; return a; });
app.activity("a-function", async () => () => 1);
app.activity("a-buffer", async () => ({ bytes: Buffer.from("hi") }));
app.activity("not-a-number", async () => [1, NaN]);
app.activity("a-map", async () => new Map([["a", 1]]));
app.activity("a-stream", async () => stream((async function* () { yield "x"; })()));
app.activity("a-response", async () => new Response({ ok: true }));
app.blob("uploads/{name}", { name: "on-upload" }, async (data, ctx) => {
  ctx.log.warn("blob", ctx.trigger.path);
  return ctx.trigger;
});
app.docsChanges("conversations", { name: "wait", start: "beginning" }, async (data, ctx) => {
  fs.writeFileSync(path.join(data.dir, "started"), "1");
  ctx.signal.addEventListener("abort", () => fs.writeFileSync(path.join(data.dir, "aborted"), "1"));
  await sleep(30000);
  return "not cancelled";
});
module.exports = app;
`;

const INVOKE = "/_nimbus/worker/invoke/";

let w;
let platform;
const platformRequests = [];
before(async () => {
  // A fake platform socket (PROTOCOL.md §5) for ctx.docs
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nimbus-platform-"));
  platform = http.createServer((req, res) => {
    platformRequests.push({ method: req.method, url: req.url, headers: req.headers });
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ id: "c1", _etag: '"1"' }));
  });
  const platformSocket = path.join(dir, "platform.sock");
  await new Promise((resolve) => platform.listen(platformSocket, resolve));
  w = await startWorker(APP, { env: { NIMBUS_PLATFORM_SOCKET: platformSocket, NIMBUS_PLATFORM_TOKEN: "tok" } });
});
after(async () => {
  await w.stop();
  platform.closeAllConnections();
  await new Promise((resolve) => platform.close(resolve));
});

function invoke(fn, envelope, { headers = {}, raw, method = "POST" } = {}) {
  return request(w, {
    method,
    path: INVOKE + fn,
    headers: { "content-type": "application/json", ...headers },
    body: raw !== undefined ? raw : JSON.stringify(envelope),
  });
}

test("the index lists the non-HTTP triggers", async () => {
  const index = (await request(w, { path: "/_nimbus/worker/index" })).json();
  const byName = Object.fromEntries(index.functions.map((f) => [f.name, f.trigger]));
  assert.deepEqual(byName["on-job"], { type: "queue", queue: "jobs", batch_size: 4 });
  assert.deepEqual(byName.tick, { type: "timer", schedule: "0 */5 * * * *", run_on_startup: false });
  assert.deepEqual(byName["on-upload"], { type: "blob", path: "uploads/{name}" });
  assert.deepEqual(byName.wait, { type: "docs_changes", container: "conversations", batch_size: 100, start: "beginning" });
  assert.deepEqual(byName.nothing, { type: "activity" });
});

test("result, data, ctx.trigger and the context", async () => {
  const trigger = { type: "queue", queue: "jobs", batch_size: 4, dequeue_count: 2 };
  const headers = {
    "x-nimbus-function": "on-job",
    "x-nimbus-invocation-id": "inv-7",
    "x-nimbus-timeout-ms": "5000",
    traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
  };
  const res = await invoke("on-job", { id: "inv-7", trigger, data: { n: [1, "é"] } }, { headers });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers["content-type"], "application/json");
  assert.equal(res.headers["content-length"], String(res.body.length));
  assert.deepEqual(res.json(), {
    data: { n: [1, "é"] },
    trigger,
    invocationId: "inv-7",
    functionName: "on-job",
    traceparent: headers.traceparent,
    timeoutMs: 5000,
    signal: true,
  });
});

test("absent trigger, data and id: the declared trigger, null, the envelope's id or a local one", async () => {
  const res = await invoke("on-job", {});
  assert.equal(res.status, 200, res.text);
  const body = res.json();
  assert.deepEqual(body.trigger, { type: "queue", queue: "jobs", batch_size: 4 });
  assert.equal(body.data, null);
  assert.ok(body.invocationId);
  assert.equal(body.timeoutMs, null);
  const fromEnvelope = (await invoke("on-job", { id: "from-envelope", trigger: null, data: 3 })).json();
  assert.equal(fromEnvelope.invocationId, "from-envelope");
  assert.equal(fromEnvelope.data, 3);
  assert.equal(fromEnvelope.trigger.type, "queue");
});

test("ctx.docs reaches the platform with the instance's token and the invocation's trace context", async () => {
  const traceparent = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
  const res = await invoke("read-doc", { data: { id: "c1", pk: "u1" } }, { headers: { traceparent } });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json(), { id: "c1", _etag: '"1"' });
  const seen = platformRequests.at(-1);
  assert.equal(seen.method, "GET");
  assert.match(seen.url, /^\/_nimbus\/docs\/.*conversations.*c1/);
  assert.equal(seen.headers.authorization, "Bearer tok");
  assert.equal(seen.headers.traceparent, traceparent);
});

test("a sync handler, and a percent-encoded function name", async () => {
  const res = await invoke("t%69ck", { data: "x" });
  assert.equal(res.status, 200);
  assert.deepEqual(res.json(), ["sync", "x"]);
});

test("undefined and null results are null", async () => {
  for (const fn of ["nothing", "null"]) {
    const res = await invoke(fn, { id: "n", data: 1 });
    assert.equal(res.status, 200, fn);
    assert.equal(res.headers["content-type"], "application/json");
    assert.equal(res.text, "null");
  }
});

test("a handler that throws answers 500 handler_error and logs the stack", async () => {
  // An activity's error names its exception (it reaches only the app's own orchestrator, PROTOCOL.md
  // §7.2); any other function's stays in the log.
  const cases = [
    ["fails", "Error: job secret", "Error: job secret"],
    ["fails-sync", "TypeError: sync secret", "TypeError: sync secret"],
    ["fails-bare", "RangeError", "RangeError"],
    ["fails-custom", "Error: no funds", "Declined: no funds"],
    ["throws-a-string", "just text", "Error: just text"],
    ["queue-fails", "Error: queue secret", "the function raised an error"],
  ];
  for (const [fn, detail, message] of cases) {
    const res = await invoke(fn, {}, { headers: { "x-nimbus-invocation-id": `e-${fn}` } });
    assert.equal(res.status, 500, fn);
    assert.deepEqual(res.json(), { error: { code: "handler_error", message } }, fn);
    await waitFor(() => w.stderr().includes(detail) && w.stderr().includes(`(invocation e-${fn})`), { what: "the stack" });
  }
});

test("an HttpError chooses its status and code", async () => {
  const res = await invoke("conflict", {});
  assert.equal(res.status, 409);
  assert.deepEqual(res.json(), { error: { code: "duplicate", message: "already done" } });
});

test("a result that is not JSON answers 500 handler_error", async () => {
  for (const fn of ["bigint", "circular", "a-function", "a-stream", "a-response", "a-buffer", "not-a-number", "a-map"]) {
    const res = await invoke(fn, {});
    assert.equal(res.status, 500, fn);
    const { error } = res.json();
    assert.equal(error.code, "handler_error");
    assert.match(error.message, /result is not JSON/, fn);
  }
});

test("a body that is not an envelope object answers 400 invalid_envelope", async () => {
  const cases = ["{not json", "", "  ", "[1, 2]", '"text"', "null", "7", Buffer.from([0xff, 0xfe]), '{"id": 7}', '{"trigger": "queue"}'];
  for (const raw of cases) {
    const res = await invoke("on-job", undefined, { raw });
    assert.equal(res.status, 400, String(raw));
    const { error } = res.json();
    assert.equal(error.code, "invalid_envelope", String(raw));
    assert.ok(error.message);
  }
});

test("unknown functions and HTTP functions answer 404 unknown_function", async () => {
  for (const fn of ["nope", "hello", "%ff"]) {
    const res = await invoke(fn, { data: null });
    assert.equal(res.status, 404, fn);
    assert.equal(res.json().error.code, "unknown_function");
  }
  assert.match((await invoke("hello", {})).json().error.message, /invoked over HTTP/);
});

test("other methods than POST answer 405 with allow: POST", async () => {
  for (const method of ["GET", "PUT", "HEAD"]) {
    const res = await request(w, { method, path: INVOKE + "on-job" });
    assert.equal(res.status, 405, method);
    assert.equal(res.headers.allow, "POST");
    if (method !== "HEAD") assert.equal(res.json().error.code, "method_not_allowed");
  }
});

test("keep-alive between envelope invocations", async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    for (let n = 0; n < 3; n++) {
      const res = await request(w, { method: "POST", path: INVOKE + "tick", body: JSON.stringify({ data: n }), agent });
      assert.deepEqual(res.json(), ["sync", n]);
      if (n > 0) assert.equal(res.reusedSocket, true);
    }
  } finally {
    agent.destroy();
  }
});

test("ctx.log writes to stderr with the invocation id", async () => {
  const res = await invoke("on-upload", { trigger: { type: "blob", path: "uploads/a.txt" } }, {
    headers: { "x-nimbus-invocation-id": "inv-blob" },
  });
  assert.deepEqual(res.json(), { type: "blob", path: "uploads/a.txt" });
  await waitFor(() => w.stderr().includes("[inv-blob] warning: blob uploads/a.txt"), { what: "the log line" });
});

function rawRequest(text) {
  const socket = net.connect(w.socketPath);
  socket.on("error", () => {});
  socket.write(text);
  return socket;
}

test("cancellation: closing the connection mid-invocation aborts ctx.signal", async () => {
  const dir = fs.mkdtempSync(path.join(w.dir, "case-"));
  const body = JSON.stringify({ id: "inv-env-cancel", data: { dir } });
  const socket = rawRequest(
    `POST ${INVOKE}wait HTTP/1.1\r\nhost: w\r\nx-nimbus-invocation-id: inv-env-cancel\r\n` +
      `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
  await waitFor(() => fs.existsSync(path.join(dir, "started")), { what: "the handler to start" });
  socket.destroy();
  await waitFor(() => fs.existsSync(path.join(dir, "aborted")), { what: "ctx.signal to abort" });
  await waitFor(() => w.stderr().includes("invocation inv-env-cancel cancelled"), { what: "the log line" });
});

test("cancellation: closing the connection while the envelope is read", async () => {
  const socket = rawRequest(
    `POST ${INVOKE}tick HTTP/1.1\r\nhost: w\r\nx-nimbus-invocation-id: inv-env-cut\r\ncontent-length: 100\r\n\r\n{"data":`,
  );
  await new Promise((r) => setTimeout(r, 50));
  socket.destroy();
  await waitFor(() => w.stderr().includes("invocation inv-env-cut cancelled"), { what: "the log line" });
  assert.equal((await invoke("tick", { data: 1 })).status, 200); // the worker carries on
  assert.doesNotMatch(w.stderr(), /internal error/);
});

test("dev mode: the error's message is in the answer", async () => {
  const dev = await startWorker(APP, { env: { NIMBUS_DEV: "1" } });
  try {
    const res = await request(dev, { method: "POST", path: INVOKE + "queue-fails", body: "{}" });
    assert.equal(res.status, 500);
    assert.deepEqual(res.json(), { error: { code: "handler_error", message: "the function raised an error: queue secret" } });
    const activity = await request(dev, { method: "POST", path: INVOKE + "fails", body: "{}" });
    assert.deepEqual(activity.json(), { error: { code: "handler_error", message: "Error: job secret" } });
  } finally {
    await dev.stop();
  }
});
