"use strict";
// The instance's key (PROTOCOL.md §1, Confinement): with NIMBUS_WORKER_KEY set, the worker answers
// only requests that carry it in `x-nimbus-worker-key`, and neither handlers nor their processes
// ever see it.

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("fs");
const http = require("http");
const net = require("net");
const path = require("path");
const { startWorker, request } = require("./helpers");

const KEY = "0123456789abcdef".repeat(4);

const APP = `
const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");
const { App } = require("nimbus");
const atLoad = process.env.NIMBUS_WORKER_KEY ?? null;
const app = new App();
app.http("/ran", async (req) => {
  fs.writeFileSync(path.join(req.query.get("dir"), "ran"), "x");
  const message = req._message;
  return {
    header: req.headers["x-nimbus-worker-key"] ?? null,
    names: Object.keys(req.headers),
    raw: message.rawHeaders.filter((_, i) => i % 2 === 0).map((name) => name.toLowerCase()),
    distinct: Object.keys(message.headersDistinct ?? {}),
    custom: req.headers["x-custom"] ?? null,
  };
});
app.http("/env", async () => ({
  load: atLoad,
  now: process.env.NIMBUS_WORKER_KEY ?? null,
  child: execFileSync("sh", ["-c", "echo \${NIMBUS_WORKER_KEY-unset}"]).toString().trim(),
}));
app.activity("mark", (data) => {
  fs.writeFileSync(path.join(data.dir, "ran"), "x");
  return "marked";
});
module.exports = app;
`;

const FORBIDDEN = { error: { code: "forbidden", message: "this worker answers its host only" } };

let w;
before(async () => {
  w = await startWorker(APP, { env: { NIMBUS_WORKER_KEY: KEY } });
});
after(async () => {
  await w.stop();
});

function caseDir(worker = w) {
  return fs.mkdtempSync(path.join(worker.dir, "case-"));
}

const ran = (dir) => fs.existsSync(path.join(dir, "ran"));

async function assertForbidden(options, dir) {
  const res = await request(w, options);
  assert.equal(res.status, 403);
  assert.equal(res.headers["content-type"], "application/json");
  assert.equal(res.headers.connection, "close");
  if (options.method !== "HEAD") assert.deepEqual(res.json(), FORBIDDEN);
  if (dir) assert.equal(ran(dir), false, "the handler ran");
}

/** Writes `text` on a fresh connection; resolves with all that comes back until the worker closes
 *  it (a reset after the answer, for a body left unread, counts as the end too). */
function rawExchange(text) {
  return new Promise((resolve) => {
    const chunks = [];
    const socket = net.connect(w.socketPath);
    socket.on("data", (c) => chunks.push(c));
    socket.on("error", () => {});
    socket.on("close", () => resolve(Buffer.concat(chunks).toString("latin1")));
    socket.write(text);
  });
}

test("without the header: 403 and nothing runs", async () => {
  const dir = caseDir();
  await assertForbidden({ path: `/ran?dir=${dir}` }, dir);
  await assertForbidden({ method: "HEAD", path: `/ran?dir=${dir}` }, dir);
  const post = { method: "POST", path: `/ran?dir=${dir}`, body: "body", headers: { "x-nimbus-function": "ran" } };
  await assertForbidden(post, dir);
  await assertForbidden({ path: "/nowhere" }); // not even a 404
});

test("a wrong key is refused", async () => {
  const dir = caseDir();
  for (const wrong of ["f".repeat(64), KEY.toUpperCase(), KEY.slice(1), `${KEY}0`, "", "é".repeat(64)]) {
    await assertForbidden({ path: `/ran?dir=${dir}`, headers: { "x-nimbus-worker-key": wrong } }, dir);
  }
});

test("the right key is served, and the handler does not see it", async () => {
  const dir = caseDir();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  let res;
  try {
    const headers = { "X-Nimbus-Worker-Key": KEY, "x-custom": "yes" };
    res = await request(w, { path: `/ran?dir=${dir}`, headers, agent });
    const again = await request(w, { path: "/nowhere", headers, agent });
    assert.equal(again.status, 404);
    assert.equal(again.reusedSocket, true); // keep-alive as usual
  } finally {
    agent.destroy();
  }
  assert.equal(res.status, 200);
  const seen = res.json();
  assert.equal(seen.header, null);
  assert.equal(seen.custom, "yes");
  for (const names of [seen.names, seen.raw, seen.distinct]) {
    assert.ok(!names.includes("x-nimbus-worker-key"), names.join());
  }
  assert.ok(seen.names.includes("x-custom") && seen.raw.includes("x-custom"));
  assert.equal(ran(dir), true);
});

test("the index needs the key", async () => {
  await assertForbidden({ path: "/_nimbus/worker/index" });
  const res = await request(w, { path: "/_nimbus/worker/index", headers: { "x-nimbus-worker-key": KEY } });
  assert.equal(res.status, 200);
  assert.deepEqual(res.json().functions.map((f) => f.name), ["ran", "env", "mark"]);
});

test("envelope invocations need the key", async () => {
  const dir = caseDir();
  const options = { method: "POST", path: "/_nimbus/worker/invoke/mark", body: JSON.stringify({ data: { dir } }) };
  const json = { "content-type": "application/json" };
  await assertForbidden({ ...options, headers: json }, dir);
  const res = await request(w, { ...options, headers: { ...json, "x-nimbus-worker-key": KEY } });
  assert.equal(res.status, 200);
  assert.equal(res.json(), "marked");
  assert.equal(ran(dir), true);
});

test("refused before the body is read: the answer does not wait for it", async () => {
  const answer = await rawExchange(
    "POST /_nimbus/worker/invoke/mark HTTP/1.1\r\nhost: w\r\ncontent-length: 1000000\r\n\r\n{",
  );
  assert.match(answer, /^HTTP\/1\.1 403 Forbidden\r\n/);
  assert.match(answer, /\r\nconnection: close\r\n/i);
  assert.ok(answer.endsWith(JSON.stringify(FORBIDDEN)), answer);
});

test("expect: 100-continue is answered 100 for the host only", async () => {
  const dir = caseDir();
  const head = (extra) =>
    `POST /ran?dir=${dir} HTTP/1.1\r\nhost: w\r\nexpect: 100-continue\r\ncontent-length: 4\r\n${extra}\r\n`;
  const refused = await rawExchange(head(""));
  assert.match(refused, /^HTTP\/1\.1 403 /);
  assert.doesNotMatch(refused, /100 Continue/);
  assert.equal(ran(dir), false);
  const invited = await new Promise((resolve) => {
    const socket = net.connect(w.socketPath);
    socket.once("data", (c) => {
      socket.destroy();
      resolve(c.toString("latin1"));
    });
    socket.write(head(`x-nimbus-worker-key: ${KEY}\r\n`));
  });
  assert.match(invited, /^HTTP\/1\.1 100 Continue\r\n/);
});

test("user code never sees the key: not at load, not later, not in a child process", async () => {
  const res = await request(w, { path: "/env", headers: { "x-nimbus-worker-key": KEY } });
  assert.equal(res.status, 200);
  assert.deepEqual(res.json(), { load: null, now: null, child: "unset" });
});

for (const [what, env] of [
  ["unset", {}],
  ["empty", { NIMBUS_WORKER_KEY: "" }],
]) {
  test(`an ${what} key: every request is served, and a key sent anyway is not shown`, async () => {
    const open = await startWorker(APP, { env });
    try {
      const dir = caseDir(open);
      const res = await request(open, { path: `/ran?dir=${dir}` });
      assert.equal(res.status, 200);
      const sent = await request(open, { path: `/ran?dir=${dir}`, headers: { "x-nimbus-worker-key": "whatever" } });
      assert.equal(sent.status, 200);
      assert.equal(sent.json().header, null);
      assert.ok(!sent.json().raw.includes("x-nimbus-worker-key"));
      assert.equal((await request(open, { path: "/_nimbus/worker/index" })).status, 200);
    } finally {
      await open.stop();
    }
  });
}
