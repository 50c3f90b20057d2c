"use strict";
// `ctx.durable` on the wire: HTTP functions of a real worker start and manage orchestrations through a
// fake platform socket (PROTOCOL.md §5), and answer Durable Functions' 202 check-status response. The
// same cases as the Python SDK's tests/test_durable_client.py.

const { test, before, after, beforeEach } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("fs");
const os = require("os");
const path = require("path");
const http = require("http");
const { startWorker, request } = require("./helpers");

const APP = `
const { App, PlatformError } = require("nimbus");
const app = new App();

app.http("/start", { methods: ["POST"] }, async (req, ctx) => {
  const body = await req.json();
  const started = await ctx.durable.start(body.name, body.input, { instanceId: body.id });
  return ctx.durable.checkStatusResponse(started);
});

app.http("/manage/{id}", { methods: ["POST"] }, async (req, ctx) => {
  const id = req.params.id;
  const status = await ctx.durable.status(id);
  await ctx.durable.raiseEvent(id, "approval", { ok: true });
  await ctx.durable.raiseEvent(id, "ping");
  await ctx.durable.terminate(id, "enough, really");
  await ctx.durable.terminate(id);
  return { status, missing: await ctx.durable.status("nope") };
});

app.http("/unknown", async (req, ctx) => {
  try {
    await ctx.durable.start("nope");
  } catch (err) {
    return { status: err.status, code: err.code, name: err.name, platform: err instanceof PlatformError };
  }
});

app.http("/started-object", async (req, ctx) => {
  const started = await ctx.durable.start("research", null, { instanceId: "o(1)" });
  await ctx.durable.raiseEvent(started, "go", 1); // what start() resolved with stands for its id
  return started;
});

app.http("/bare-id", (req, ctx) => ctx.durable.checkStatusResponse("a/b"));

app.http("/misuse", async (req, ctx) => {
  const out = [];
  for (const attempt of [
    () => ctx.durable.start("x", { n: NaN }),
    () => ctx.durable.start(""),
    () => ctx.durable.status(5),
    () => ctx.durable.raiseEvent("i", null),
    async () => ctx.durable.checkStatusResponse(null),
  ]) {
    try {
      await attempt();
      out.push("no error");
    } catch (err) {
      out.push(err.name + ": " + err.message);
    }
  }
  return out;
});

module.exports = app;
`;

/** The management payload the host answers for `instance`. */
function management(instance) {
  const base = `http://node.example/_nimbus/durable/instances/${encodeURIComponent(instance)}`;
  return {
    id: instance,
    statusQueryGetUri: base,
    sendEventPostUri: `${base}/raiseEvent/{eventName}`,
    terminatePostUri: `${base}/terminate?reason={text}`,
    purgeHistoryDeleteUri: base,
  };
}

let w;
let platform;
let platformDir;
const seen = [];

/** The host's platform socket, answering the durable API as PROTOCOL.md §5 says it would. */
function answer(req) {
  const url = new URL(req.raw, "http://nimbus");
  if (url.pathname === "/_nimbus/durable/orchestrations/nope" || url.pathname.endsWith("/instances/nope")) {
    return [404, { error: { code: "not_found", message: "no such thing" } }];
  }
  if (url.pathname.startsWith("/_nimbus/durable/orchestrations/")) {
    return [202, management(url.searchParams.get("instanceId") ?? "made-up")];
  }
  if (req.method === "GET") return [200, { instanceId: url.pathname.split("/")[4], runtimeStatus: "Running" }];
  return [202, undefined];
}

before(async () => {
  platformDir = fs.mkdtempSync(path.join(os.tmpdir(), "nimbus-platform-"));
  const socketPath = path.join(platformDir, "platform.sock");
  platform = http.createServer(async (req, res) => {
    const parts = [];
    for await (const part of req) parts.push(part);
    const raw = Buffer.concat(parts).toString("utf8");
    const url = new URL(req.url, "http://nimbus");
    const record = {
      method: req.method,
      raw: req.url,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      headers: req.headers,
      body: raw ? JSON.parse(raw) : undefined,
      rawBody: raw,
    };
    seen.push(record);
    const [status, body] = answer(record);
    const bytes = body === undefined ? "" : JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(bytes) });
    res.end(bytes);
  });
  await new Promise((resolve) => platform.listen(socketPath, resolve));
  w = await startWorker(APP, { env: { NIMBUS_PLATFORM_SOCKET: socketPath, NIMBUS_PLATFORM_TOKEN: "tok" } });
});

after(async () => {
  await w.stop();
  platform.closeAllConnections();
  await new Promise((resolve) => platform.close(resolve));
  fs.rmSync(platformDir, { recursive: true, force: true });
});

beforeEach(() => {
  seen.length = 0;
});

function post(p, body, headers = {}) {
  return request(w, { method: "POST", path: p, body: JSON.stringify(body), headers });
}

test("start answers the check-status response", async () => {
  const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  const res = await post("/start", { name: "research", input: { topic: "tides" }, id: "r/1 é" }, { traceparent });
  assert.equal(res.status, 202, res.text);
  assert.deepEqual(res.json(), management("r/1 é"));
  assert.equal(res.headers.location, management("r/1 é").statusQueryGetUri);
  assert.equal(res.headers["content-type"], "application/json");
  assert.equal(seen.length, 1);
  const [req] = seen;
  assert.deepEqual([req.method, req.path], ["POST", "/_nimbus/durable/orchestrations/research"]);
  assert.equal(req.raw, "/_nimbus/durable/orchestrations/research?instanceId=r%2F1+%C3%A9"); // as Python's urlencode
  assert.deepEqual(req.query, { instanceId: "r/1 é" });
  assert.deepEqual(req.body, { topic: "tides" });
  assert.equal(req.headers["content-type"], "application/json");
  assert.equal(req.headers.authorization, "Bearer tok");
  assert.equal(req.headers.traceparent, traceparent);
});

test("start without input or id", async () => {
  const res = await post("/start", { name: "nightly" });
  assert.deepEqual([res.status, res.json().id], [202, "made-up"]);
  assert.equal(seen.length, 1);
  assert.equal(seen[0].raw, "/_nimbus/durable/orchestrations/nightly");
  assert.equal(seen[0].rawBody, "null");
});

test("status, events and terminate", async () => {
  const res = await post("/manage/x%201");
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json(), { status: { instanceId: "x%201", runtimeStatus: "Running" }, missing: null });
  assert.deepEqual(
    seen.map((r) => [r.method, r.raw, r.body]),
    [
      ["GET", "/_nimbus/durable/instances/x%201", undefined],
      ["POST", "/_nimbus/durable/instances/x%201/raiseEvent/approval", { ok: true }],
      ["POST", "/_nimbus/durable/instances/x%201/raiseEvent/ping", null],
      ["POST", "/_nimbus/durable/instances/x%201/terminate?reason=enough%2C+really", undefined],
      ["POST", "/_nimbus/durable/instances/x%201/terminate", undefined],
      ["GET", "/_nimbus/durable/instances/nope", undefined],
    ],
  );
  assert.equal(seen[2].rawBody, "null");
  assert.equal(seen[3].headers["content-type"], undefined);
  assert.deepEqual(seen[3].query, { reason: "enough, really" });
});

test("errors throw PlatformErrors", async () => {
  const res = await request(w, { path: "/unknown" });
  assert.deepEqual(res.json(), { status: 404, code: "not_found", name: "NotFound", platform: true });
});

test("what start() resolves with stands for its instance", async () => {
  const res = await request(w, { path: "/started-object" });
  assert.deepEqual(res.json(), management("o(1)"));
  // escaped as Python's quote(safe=""): both SDKs ask for the same paths
  assert.equal(seen[1].raw, "/_nimbus/durable/instances/o%281%29/raiseEvent/go");
  assert.equal(seen[1].rawBody, "1");
});

test("checkStatusResponse from a bare id", async () => {
  const res = await request(w, { path: "/bare-id" });
  assert.equal(res.status, 202);
  const base = "/_nimbus/durable/instances/a%2Fb";
  assert.equal(res.headers.location, base);
  assert.deepEqual(res.json(), {
    id: "a/b",
    statusQueryGetUri: base,
    sendEventPostUri: `${base}/raiseEvent/{eventName}`,
    terminatePostUri: `${base}/terminate?reason={text}`,
    purgeHistoryDeleteUri: base,
  });
});

test("arguments are checked before anything is sent", async () => {
  const res = await request(w, { path: "/misuse" });
  assert.deepEqual(res.json(), [
    "TypeError: ctx.durable.start(): the input is not JSON: NaN is not a JSON number",
    `TypeError: ctx.durable.start(): the orchestrator's name is a non-empty string, not ""`,
    "TypeError: ctx.durable.status(): the instance id is a non-empty string, not 5",
    "TypeError: ctx.durable.raiseEvent(): the event's name is a non-empty string, not null",
    "TypeError: ctx.durable.checkStatusResponse() takes what ctx.durable.start() resolved with, not null",
  ]);
  assert.deepEqual(seen, []);
});
