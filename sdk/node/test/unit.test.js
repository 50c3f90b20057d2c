"use strict";
// In-process checks of the public API: registration rules, function names, routing, Response and
// SSE encoding. No worker process.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const nimbus = require("../nimbus");
const { App, Response, HttpError, sse, stream } = nimbus;
const { encodeSse } = require("../nimbus/lib/response");
const { compileRoute, matchRoute } = require("../nimbus/lib/routes");

const noop = async () => null;

test("the public surface", () => {
  assert.equal(typeof App, "function");
  assert.equal(typeof Response, "function");
  assert.equal(typeof sse, "function");
  assert.equal(typeof sse.event, "function");
  assert.equal(typeof stream, "function");
  assert.equal(typeof HttpError, "function");
  assert.equal(nimbus.version, "0.1.0");
  // orchestrations' classes load when first asked for
  const durable = require.resolve("../nimbus/lib/durable");
  assert.equal(require.cache[durable], undefined);
  for (const name of ["RetryPolicy", "TaskFailedError", "OrchestrationContext"]) {
    assert.equal(typeof nimbus[name], "function", name);
  }
  assert.ok(require.cache[durable]);
});

test("function names: explicit, from the handler, from the route", () => {
  const app = new App();
  app.http("/api/chat", { methods: ["post"] }, async (req, ctx) => null);
  app.http("/named", async function greet() {});
  app.http("/explicit", { name: "my.fn_1" }, noop);
  app.http("/items/{id}/*", (req) => null);
  app.http("/", (req) => null);
  app.http("/bound", function () {}.bind(null));
  assert.deepEqual(
    app.functions.map((f) => f.name),
    ["api-chat", "greet", "my.fn_1", "items-id", "root", "bound"],
  );
  assert.deepEqual(app.functions[0].trigger, { type: "http", route: "/api/chat", methods: ["POST"] });
  assert.deepEqual(app.functions[1].trigger.methods, []);
});

test("registration errors throw at once with a clear message", () => {
  const app = new App();
  app.http("/a", { name: "a" }, noop);
  assert.throws(() => app.http("/b", { name: "a" }, noop), /a function named "a" is already registered/);
  assert.throws(() => app.http("a", noop), /must be a string starting with "\/"/);
  assert.throws(() => app.http("/_nimbus/worker/x", noop), /reserved/);
  assert.throws(() => app.http("/_nimbus", noop), /reserved/);
  assert.throws(() => app.http("/x/{id", noop), /whole segment/);
  assert.throws(() => app.http("/x/{a}/{a}", noop), /twice/);
  assert.throws(() => app.http("/x/*/y", noop), /last segment/);
  assert.throws(() => app.http("/x*", noop), /last segment/);
  assert.throws(() => app.http("/x//y", noop), /empty segment/);
  assert.throws(() => app.http("/x?y=1", noop), /path only/);
  assert.throws(() => app.http("/x", { method: ["GET"] }, noop), /unknown option\(s\) method/);
  assert.throws(() => app.http("/x", { methods: ["G ET"] }, noop), /not an HTTP method/);
  assert.throws(() => app.http("/x", { name: "has space" }, noop), /function name/);
  assert.throws(() => app.http("/x", {}), /needs a handler function/);
  // A named handler names its function, so sharing one handler between routes needs names.
  app.http("/shared", noop);
  assert.throws(() => app.http("/shared-too", noop), /"noop" is already registered .*pass \{ name/);
  app.http("/items/{id}", { methods: ["GET"], name: "get-item" }, noop);
  assert.throws(
    () => app.http("/items/{key}", { methods: ["GET", "PUT"], name: "put-item" }, noop),
    /route "\/items\/\{key\}" \(function "put-item"\) overlaps route "\/items\/\{id\}" of function "get-item"/,
  );
  app.http("/items/{key}", { methods: ["DELETE"], name: "delete-item" }, noop); // same shape, other methods: fine
  assert.throws(() => app.http("/items/{other}", { name: "any-item" }, noop), /overlaps/); // all methods overlap
});

test("route matching: params, wildcard, decoding, specificity, 404 and 405", () => {
  const r = compileRoute("/files/{bucket}/*");
  assert.deepEqual(matchRoute(r, "/files/b1/a/b.txt"), { bucket: "b1", "*": "a/b.txt" });
  assert.deepEqual(matchRoute(r, "/files/b1"), { bucket: "b1", "*": "" });
  assert.deepEqual(matchRoute(r, "/files/b%201/x%2Fy"), { bucket: "b 1", "*": "x/y" });
  assert.equal(matchRoute(r, "/files"), null);
  assert.equal(matchRoute(r, "/other/b1"), null);
  assert.deepEqual(matchRoute(compileRoute("/*"), "/"), { "*": "" });
  assert.deepEqual(matchRoute(compileRoute("/"), "/"), {});
  assert.equal(matchRoute(compileRoute("/"), "/x"), null);
  assert.equal(matchRoute(compileRoute("/a/{id}"), "/a/"), null);

  const app = new App();
  app.http("/users/me", { methods: ["GET"], name: "me" }, noop);
  app.http("/users/{id}", { methods: ["GET", "DELETE"], name: "user" }, noop);
  app.http("/users/*", { methods: ["POST"], name: "rest" }, noop);
  assert.equal(app._route("GET", "/users/me").fn.name, "me");
  assert.equal(app._route("GET", "/users/42").fn.name, "user");
  assert.deepEqual(app._route("GET", "/users/42").params, { id: "42" });
  assert.equal(app._route("DELETE", "/users/me").fn.name, "user");
  assert.equal(app._route("POST", "/users/me").fn.name, "rest");
  assert.equal(app._route("HEAD", "/users/me").fn.name, "me");
  assert.deepEqual(app._route("PUT", "/users/me"), { status: 405, allow: ["GET", "DELETE", "POST"] });
  assert.deepEqual(app._route("GET", "/nope"), { status: 404 });
});

test("Response checks its options", () => {
  const r = new Response("x", { status: 201, headers: { "X-A": "1", "x-b": ["1", "2"] }, contentType: "text/html" });
  assert.deepEqual(r.headers, { "x-a": "1", "x-b": ["1", "2"] });
  assert.equal(new Response(null).status, 204);
  assert.equal(new Response({}).status, 200);
  assert.deepEqual(new Response("", { headers: new Map([["K", "v"]]) }).headers, { k: "v" });
  assert.throws(() => new Response("x", { status: 99 }), /status/);
  assert.throws(() => new Response("x", { stauts: 200 }), /unknown Response option/);
  assert.equal(Response.json("s").body, '"s"');
  assert.throws(() => new HttpError(200, "x", "y"), /400 to 599/);
});

test("SSE encoding", () => {
  const enc = (item) => encodeSse(item).toString();
  assert.equal(enc("hi"), "data: hi\n\n");
  assert.equal(enc("a\r\nb\rc\nd"), "data: a\ndata: b\ndata: c\ndata: d\n\n");
  assert.equal(enc(""), "data: \n\n");
  assert.equal(enc({ x: [1] }), 'data: {"x":[1]}\n\n');
  assert.equal(enc(42), "data: 42\n\n");
  assert.equal(enc(Buffer.from("bytes")), "data: bytes\n\n");
  assert.equal(enc(sse.event("x", { event: "e" })), "event: e\ndata: x\n\n");
  assert.equal(enc(sse.event(undefined, { retry: 10 })), "retry: 10\n\n");
  assert.equal(enc(sse.comment("ping")), ": ping\n\n");
  assert.throws(() => sse.event("x", { event: "a\nb" }), /without line breaks/);
  assert.throws(() => sse.event("x", { retry: -1 }), /retry/);
  assert.throws(() => sse("not iterable"), /async iterable/);
  assert.throws(() => stream(42), /async iterable/);
});
