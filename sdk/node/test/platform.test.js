"use strict";
// `ctx.docs` on the wire, against a fake platform socket: paths, partition keys, headers, bodies,
// continuations followed, and errors thrown with the right names. (The real host is exercised by
// crates/nimbus/tests/platform_docs.rs.)

const { test } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("fs");
const os = require("os");
const path = require("path");
const http = require("http");
const { Docs, PlatformError } = require("../nimbus/lib/platform");

/** A Unix-socket server answering `reply(request)` → [status, body]; resolves with the Docs client
 *  and the recorded requests. */
async function fake(reply) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nimbus-platform-"));
  const socketPath = path.join(dir, "platform.sock");
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const parts = [];
    for await (const part of req) parts.push(part);
    const text = Buffer.concat(parts).toString("utf8");
    const url = new URL(req.url, "http://nimbus");
    const request = {
      method: req.method,
      raw: req.url,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      headers: req.headers,
      body: text ? JSON.parse(text) : undefined,
    };
    requests.push(request);
    const [status, body] = reply(request);
    res.writeHead(status, { "content-type": "application/json" });
    res.end(body === undefined ? undefined : JSON.stringify(body));
  });
  await new Promise((resolve) => server.listen(socketPath, resolve));
  const agent = new http.Agent({ keepAlive: true });
  const docs = new Docs({ socketPath, token: "token", agent });
  const close = async () => {
    agent.destroy();
    await new Promise((resolve) => server.close(resolve));
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return { docs, requests, close };
}

const error = (status, code, extra = {}) => [status, { error: { code, message: "m", ...extra } }];

test("items and partition keys on the wire", async () => {
  const { docs, requests: r, close } = await fake(() => [200, { id: "x", _etag: '"7"' }]);
  try {
    await docs.create("conv", { id: "x", userId: "u" });
    await docs.upsert("conv", { id: "x", userId: "u" });
    await docs.read("conv", "a b", "5");
    await docs.read("conv", "a b", 5);
    await docs.read("conv", "a b", null);
    await docs.read("conv", "a b", "é&=");
    await assert.rejects(() => docs.read("conv", "a b"), TypeError);
    await docs.replace("conv", "x", "u", { id: "x", userId: "u" }, { ifMatch: '"7"' });
    await docs.patch("conv", "x", "u", [{ op: "set", path: "/a", value: 1 }]);
  } finally {
    await close();
  }
  assert.deepEqual(
    r.map((x) => x.method),
    ["POST", "POST", "GET", "GET", "GET", "GET", "PUT", "PATCH"],
  );
  assert.equal(r[0].path, "/_nimbus/docs/conv/items");
  assert.equal(r[0].headers["x-nimbus-upsert"], undefined);
  assert.equal(r[1].headers["x-nimbus-upsert"], "true");
  assert.equal(r[1].headers["content-type"], "application/json");
  assert.equal(r[2].raw, "/_nimbus/docs/conv/items/a%20b?pk=%225%22");
  assert.deepEqual(
    r.slice(2, 6).map((x) => x.query.pk),
    ['"5"', "5", "null", '"é&="'],
  );
  assert.equal(r[6].headers["if-match"], '"7"');
  assert.deepEqual(r[6].body, { id: "x", userId: "u" });
  assert.equal(r[7].headers["if-match"], undefined);
  assert.deepEqual(r[7].body, [{ op: "set", path: "/a", value: 1 }]);
});

test("errors carry their status, code and name", async () => {
  const answers = {
    "/_nimbus/docs/conv/items/stale": error(412, "precondition_failed"),
    "/_nimbus/docs/conv/items/gone": error(404, "not_found"),
    "/_nimbus/docs/none/items/gone": error(404, "container_not_found"),
    "/_nimbus/docs/conv/batch": error(409, "conflict", { operationIndex: 2 }),
  };
  const { docs, close } = await fake((req) => answers[req.path] ?? [204, undefined]);
  try {
    await assert.rejects(
      () => docs.replace("conv", "stale", "u", {}, { ifMatch: '"1"' }),
      (e) => e instanceof PlatformError && e.name === "PreconditionFailed" && e.status === 412,
    );
    await assert.rejects(() => docs.read("conv", "gone", "u"), { name: "NotFound", code: "not_found" });
    assert.equal(await docs.delete("conv", "x", "u"), true);
    assert.equal(await docs.delete("conv", "gone", "u"), false);
    await assert.rejects(() => docs.delete("none", "gone", "u"), { name: "NotFound", code: "container_not_found" });
    await assert.rejects(() => docs.batch("conv", "u", [{ op: "delete", id: "a" }]), {
      status: 409,
      operationIndex: 2,
    });
  } finally {
    await close();
  }
});

test("queries follow continuations; feeds and batches", async () => {
  const pages = { "": ["p2", [1, 2]], p2: ["p3", [3]], p3: [null, [4]] };
  const { docs, requests: r, close } = await fake((req) => {
    if (req.path.endsWith("/feed")) return [200, { items: [{ id: "f" }], continuation: "next" }];
    if (req.path.endsWith("/batch")) return [200, { results: [{ status: 204, item: null }] }];
    const [continuation, items] = pages[req.body.continuation ?? ""];
    return [200, { items, continuation }];
  });
  const out = {};
  try {
    out.all = await docs.query("conv", "SELECT VALUE c.n FROM c WHERE c.s = @s", {
      parameters: { "@s": "open", n: 1 },
    });
    out.pages = [];
    for await (const page of docs.queryPages("conv", "q", { partitionKey: 0, maxItems: 2 })) out.pages.push(page);
    out.page = await docs.queryPage("conv", "q", { continuation: "p3" });
    out.feed = await docs.feed("conv", { continuation: "c1", partitionKey: "u", maxItems: 5 });
    out.batch = await docs.batch("conv", "u", [{ op: "delete", id: "a", ifMatch: '"1"' }]);
  } finally {
    await close();
  }
  assert.deepEqual(out.all, [1, 2, 3, 4]);
  assert.deepEqual(out.pages, [[1, 2], [3], [4]]);
  assert.deepEqual(out.page, { items: [4], continuation: null });
  assert.deepEqual(out.feed, { items: [{ id: "f" }], continuation: "next" });
  assert.deepEqual(out.batch, [{ status: 204, item: null }]);
  assert.deepEqual(r[0].body, {
    query: "SELECT VALUE c.n FROM c WHERE c.s = @s",
    parameters: [
      { name: "@s", value: "open" },
      { name: "@n", value: 1 },
    ],
    maxItems: 1000,
  });
  assert.equal(r[1].body.continuation, "p2");
  assert.deepEqual([r[3].body.partitionKey, r[3].body.maxItems], [0, 2]);
  assert.equal(r[7].path, "/_nimbus/docs/conv/feed");
  assert.deepEqual(r[7].query, { maxItems: "5", continuation: "c1", pk: '"u"' });
  assert.deepEqual(r[8].body, { partitionKey: "u", operations: [{ op: "delete", id: "a", ifMatch: '"1"' }] });
});
