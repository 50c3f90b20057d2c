"use strict";
// The worker process: start-up (entry loading, export checks, stale sockets), and stopping on
// SIGTERM/SIGINT with in-flight requests allowed to finish.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("fs");
const http = require("http");
const path = require("path");
const { startWorker, request, waitFor } = require("./helpers");

const APP = `
const fs = require("fs");
const { App } = require("nimbus");
const app = new App();
app.http("/hello", async () => ({ hello: "world" }));
app.http("/slow", async () => {
  fs.writeFileSync("slow-started", "1");
  await new Promise((r) => setTimeout(r, 300));
  return "slow done";
});
module.exports = app;
`;

async function exitOf(w, timeout = 5000) {
  return waitFor(() => (w.proc.exitCode !== null || w.proc.signalCode !== null) && w.exited, { timeout, what: "the worker to exit" });
}

test("start-up time to a listening socket is short", async (t) => {
  const w = await startWorker(APP);
  try {
    t.diagnostic(`worker listening after ${w.startupMs} ms`);
    assert.ok(w.startupMs < 3000, `start-up took ${w.startupMs} ms`);
    assert.equal((await request(w, { path: "/hello" })).status, 200);
  } finally {
    await w.stop();
  }
});

test("SIGTERM on an idle worker: exit 0 and the socket file is gone", async () => {
  const w = await startWorker(APP);
  try {
    w.proc.kill("SIGTERM");
    const { code, signal } = await exitOf(w);
    assert.equal(signal, null);
    assert.equal(code, 0);
    assert.equal(fs.existsSync(w.socketPath), false);
  } finally {
    await w.stop();
  }
});

test("SIGTERM lets an in-flight request finish, then exits 0", async () => {
  const w = await startWorker(APP);
  try {
    const pending = request(w, { path: "/slow" });
    await waitFor(() => fs.existsSync(path.join(w.dir, "slow-started")), { what: "the handler to start" });
    w.proc.kill("SIGTERM");
    const res = await pending;
    assert.equal(res.status, 200);
    assert.equal(res.text, "slow done");
    assert.equal((await exitOf(w)).code, 0);
  } finally {
    await w.stop();
  }
});

test("SIGINT with an idle keep-alive connection open: exit 0 promptly", async () => {
  const w = await startWorker(APP);
  const agent = new http.Agent({ keepAlive: true });
  try {
    assert.equal((await request(w, { path: "/hello", agent })).status, 200);
    const t0 = Date.now();
    w.proc.kill("SIGINT");
    assert.equal((await exitOf(w)).code, 0);
    assert.ok(Date.now() - t0 < 2000, `took ${Date.now() - t0} ms`);
  } finally {
    agent.destroy();
    await w.stop();
  }
});

test("an entry exporting { app } works, and require('nimbus') resolves without NODE_PATH", async () => {
  const w = await startWorker(APP.replace("module.exports = app;", "module.exports = { app };"), { env: { NODE_PATH: "" } });
  try {
    assert.deepEqual((await request(w, { path: "/hello" })).json(), { hello: "world" });
  } finally {
    await w.stop();
  }
});

test("a stale socket file is removed before listening", async () => {
  const first = await startWorker(APP);
  await first.stop({ keepDir: true }); // SIGKILL: the socket file stays behind
  assert.ok(fs.existsSync(first.socketPath));
  const second = await startWorker(null, { dir: first.dir });
  try {
    assert.equal((await request(second, { path: "/hello" })).status, 200);
  } finally {
    await second.stop();
  }
});

async function failingStart(source, options) {
  const w = await startWorker(source, { ...options, wait: false });
  try {
    const { code } = await exitOf(w);
    return { code, stderr: w.stderr() };
  } finally {
    await w.stop();
  }
}

test("an entry without an App: exit 1 with a message saying what to export", async () => {
  const { code, stderr } = await failingStart("module.exports = { hello: 1 };");
  assert.equal(code, 1);
  assert.match(stderr, /functions\/app\.js does not export a nimbus App/);
  assert.match(stderr, /module\.exports = app/);
});

test("an entry that throws on load: exit 1 with the stack", async () => {
  const { code, stderr } = await failingStart('require("nimbus");\nfunction load() { throw new Error("bad config value"); }\nload();\n');
  assert.equal(code, 1);
  assert.match(stderr, /loading functions\/app\.js failed/);
  assert.match(stderr, /Error: bad config value/);
  assert.match(stderr, /at load .*app\.js:2/);
});

test("an entry whose registration is invalid: exit 1 with the reason", async () => {
  const { code, stderr } = await failingStart(
    'const { App } = require("nimbus"); const app = new App(); app.http("/_nimbus/x", async () => 1); module.exports = app;',
  );
  assert.equal(code, 1);
  assert.match(stderr, /reserved/);
});

test("a missing entry file, a missing socket variable, a non-socket file at the socket path: exit 1", async () => {
  const missing = await failingStart(null, { entry: "functions/nope.js" });
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /entry file functions\/nope\.js does not exist/);

  const noSocket = await failingStart(APP, { env: { NIMBUS_WORKER_SOCKET: "" } });
  assert.equal(noSocket.code, 1);
  assert.match(noSocket.stderr, /NIMBUS_WORKER_SOCKET is not set/);

  const dir = fs.mkdtempSync(path.join(require("os").tmpdir(), "nimbus-node-"));
  const file = path.join(dir, "w.sock");
  fs.writeFileSync(file, "precious");
  const notSocket = await failingStart(APP, { dir, socketPath: file });
  assert.equal(notSocket.code, 1);
  assert.match(notSocket.stderr, /not a socket; refusing to remove it/);
});
