"use strict";
// Streaming both ways, SSE framing, backpressure, errors mid-stream and cancellation, against a
// real worker.

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("fs");
const path = require("path");
const http = require("http");
const { startWorker, request, waitFor } = require("./helpers");

const APP = `
const fs = require("fs");
const path = require("path");
const { Readable } = require("stream");
const { App, sse, stream, Response } = require("nimbus");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const app = new App();

app.http("/echo-stream", { methods: ["POST"] }, async (req) => stream((async function* () {
  for await (const chunk of req.body) yield "got " + chunk.length + "\\n";
  yield "done\\n";
})(), { contentType: "text/plain; charset=utf-8" }));

app.http("/count-body", { methods: ["POST"] }, async (req) => {
  let n = 0;
  for await (const chunk of req.body) n += chunk.length;
  return { n };
});

app.http("/stream-in-response", async () => new Response(sse((async function* () { yield "x"; })()), { status: 201, headers: { "x-extra": "1" } }));

app.http("/slow-stream", async () => (async function* () {
  yield "first\\n";
  await sleep(400);
  yield Buffer.from("second\\n");
})());

app.http("/events", async () => sse((async function* () {
  yield "hello";
  yield "two\\nlines";
  yield { n: 1 };
  yield sse.event({ a: 1 }, { event: "update", id: "7", retry: 1500 });
  yield sse.comment("keep-alive");
})()));

app.http("/readable", async () => Readable.from(["a", "b", "c"]));
app.http("/sync-gen", async () => (function* () { yield "x"; yield "y"; })());

let produced = 0;
app.http("/big", async () => (async function* () {
  for (let i = 0; i < 300; i++) { produced++; yield Buffer.alloc(65536, 120); }
})());
app.http("/produced", async () => ({ produced }));

app.http("/broken-stream", async () => (async function* () {
  yield "partial\\n";
  await sleep(20);
  throw new Error("mid-stream failure");
})());

app.http("/cancel-stream", async (req, ctx) => {
  const dir = process.cwd();
  ctx.signal.addEventListener("abort", () => fs.writeFileSync(path.join(dir, "stream-aborted"), "1"));
  return (async function* () {
    try {
      for (let i = 0; ; i++) { yield "tick " + i + "\\n"; await sleep(30); }
    } finally {
      fs.writeFileSync(path.join(dir, "stream-finally"), "1");
    }
  })();
});

app.http("/cancel-wait", async (req, ctx) => {
  fs.writeFileSync(path.join(process.cwd(), "wait-started"), "1");
  await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
  fs.writeFileSync(path.join(process.cwd(), "wait-aborted"), "1");
  return "nobody reads this";
});
module.exports = app;
`;

let w;
before(async () => {
  w = await startWorker(APP);
});
after(async () => {
  await w.stop();
});

/** Starts a request and returns helpers to watch the response as it streams. */
function open(pathname, { method = "GET" } = {}) {
  const req = http.request({ socketPath: w.socketPath, method, path: pathname, agent: false });
  const state = { text: "", chunks: [], res: null, complete: false, closed: false };
  const response = new Promise((resolve, reject) => {
    req.on("response", (res) => {
      state.res = res;
      res.on("data", (c) => {
        state.text += c;
        state.chunks.push({ at: Date.now(), text: String(c) });
      });
      res.on("end", () => (state.complete = true));
      res.on("error", () => {});
      res.on("close", () => (state.closed = true));
      resolve(res);
    });
    req.on("error", (err) => (state.res ? null : reject(err)));
  });
  return { req, state, response };
}

test("the request body streams in: the handler answers each chunk before the next is sent", async () => {
  const { req, state, response } = open("/echo-stream", { method: "POST" });
  req.write("one");
  await response;
  assert.equal(state.res.headers["content-type"], "text/plain; charset=utf-8");
  await waitFor(() => state.text === "got 3\n", { what: "the first echo", timeout: 3000 });
  req.write("four!");
  await waitFor(() => state.text === "got 3\ngot 5\n", { what: "the second echo", timeout: 3000 });
  req.end();
  await waitFor(() => state.complete, { what: "the end" });
  assert.equal(state.text, "got 3\ngot 5\ndone\n");
});

test("a streamed response sends the first chunk before the generator finishes", async () => {
  const t0 = Date.now();
  const { req, state, response } = open("/slow-stream");
  req.end();
  const res = await response;
  assert.equal(res.statusCode, 200);
  assert.equal(res.headers["content-type"], "application/octet-stream");
  assert.equal(res.headers["transfer-encoding"], "chunked");
  await waitFor(() => state.complete, { what: "the end" });
  const end = Date.now();
  assert.equal(state.text, "first\nsecond\n");
  assert.equal(state.chunks[0].text, "first\n");
  assert.ok(state.chunks[0].at - t0 < 300, `first chunk after ${state.chunks[0].at - t0} ms`);
  assert.ok(end - state.chunks[0].at >= 300, `first chunk only ${end - state.chunks[0].at} ms before the end`);
});

test("sse() frames strings, objects and events, with event-stream headers", async () => {
  const res = await request(w, { path: "/events" });
  assert.equal(res.status, 200);
  assert.equal(res.headers["content-type"], "text/event-stream");
  assert.equal(res.headers["cache-control"], "no-cache");
  assert.equal(
    res.text,
    "data: hello\n\n" +
      "data: two\ndata: lines\n\n" +
      'data: {"n":1}\n\n' +
      'event: update\nid: 7\nretry: 1500\ndata: {"a":1}\n\n' +
      ": keep-alive\n\n",
  );
});

test("a Response can wrap a stream to set its status and headers", async () => {
  const res = await request(w, { path: "/stream-in-response" });
  assert.equal(res.status, 201);
  assert.equal(res.headers["x-extra"], "1");
  assert.equal(res.headers["content-type"], "text/event-stream");
  assert.equal(res.text, "data: x\n\n");
});

test("Readable streams and sync generators stream too", async () => {
  assert.equal((await request(w, { path: "/readable" })).text, "abc");
  assert.equal((await request(w, { path: "/sync-gen" })).text, "xy");
});

test("backpressure: a client that stops reading stops the generator", async () => {
  const { req, state, response } = open("/big");
  req.end();
  const res = await response;
  res.pause();
  await new Promise((r) => setTimeout(r, 300));
  const { produced } = (await request(w, { path: "/produced" })).json();
  assert.ok(produced < 100, `the generator ran ahead of the client: ${produced} of 300 chunks produced`);
  res.resume();
  await waitFor(() => state.complete, { what: "the end", timeout: 10000 });
  assert.equal(state.text.length, 300 * 65536);
});

test("an error after the stream started cuts the connection: the response is incomplete", async () => {
  const { req, state, response } = open("/broken-stream");
  req.end();
  const res = await response;
  assert.equal(res.statusCode, 200);
  await waitFor(() => state.closed, { what: "the connection to close" });
  assert.equal(state.complete, false);
  assert.equal(state.text, "partial\n");
  await waitFor(() => w.stderr().includes("mid-stream failure"), { what: "the error on stderr" });
});

test("cancellation: closing the connection mid-stream aborts ctx.signal and runs the generator's finally", async () => {
  const { req, state, response } = open("/cancel-stream");
  req.setHeader("x-nimbus-invocation-id", "cancel-stream-1");
  req.end();
  await response;
  await waitFor(() => state.text.includes("tick 1\n"), { what: "two ticks" });
  req.destroy();
  await waitFor(() => fs.existsSync(w.marker("stream-aborted")), { what: "ctx.signal to abort" });
  await waitFor(() => fs.existsSync(w.marker("stream-finally")), { what: "the generator's finally" });
  await waitFor(() => w.stderr().includes("invocation cancel-stream-1 cancelled"), { what: "the log line" });
});

test("cancellation: closing the connection while the handler awaits aborts ctx.signal", async () => {
  const { req, response } = open("/cancel-wait");
  response.catch(() => {}); // no response ever comes: the request is destroyed

  req.setHeader("x-nimbus-invocation-id", "cancel-wait-1");
  req.end();
  await waitFor(() => fs.existsSync(w.marker("wait-started")), { what: "the handler to start" });
  req.destroy();
  await waitFor(() => fs.existsSync(w.marker("wait-aborted")), { what: "ctx.signal to abort" });
  await waitFor(() => w.stderr().includes("invocation cancel-wait-1 cancelled"), { what: "the log line" });
  // The worker still serves.
  assert.equal((await request(w, { path: "/sync-gen" })).text, "xy");
  assert.equal(path.basename(w.marker("x")), "x");
});

test("cancellation: a client that disconnects mid-body cancels the handler reading it, quietly", async () => {
  const { req, response } = open("/count-body", { method: "POST" });
  response.catch(() => {});
  req.setHeader("x-nimbus-invocation-id", "cancel-body-1");
  req.write("partial body");
  await new Promise((r) => setTimeout(r, 50));
  req.destroy();
  await waitFor(() => w.stderr().includes("invocation cancel-body-1 cancelled"), { what: "the log line" });
  await new Promise((r) => setTimeout(r, 50));
  assert.doesNotMatch(w.stderr(), /count-body" failed/);
  const whole = await request(w, { method: "POST", path: "/count-body", body: "12345" });
  assert.deepEqual(whole.json(), { n: 5 });
});
