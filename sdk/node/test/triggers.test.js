"use strict";
// In-process checks of the non-HTTP declarations: timer, queue, blob, docsChanges and activity, their
// index entries (PROTOCOL.md §2, snake_case fields) and their argument checks. No worker process.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { App } = require("../nimbus");

async function noop() {}

test("index entries of every trigger, with their defaults", () => {
  const app = new App();
  app.timer("0 */5 * * * *", noop);
  app.timer(" 0  0 9 * * 1-5 ", { name: "weekdays", runOnStartup: true, timeZone: "Europe/Paris" }, () => null);
  app.queue("jobs", { name: "job" }, noop);
  app.queue("big-jobs-2", { name: "big", batchSize: 32 }, noop);
  app.blob("uploads/{name}", { name: "upload" }, noop);
  app.blob("$web/{path}", { name: "site" }, noop);
  app.docsChanges("conversations", { name: "changes" }, noop);
  app.docsChanges("audit_log", { name: "audit", batchSize: 1000, start: "beginning" }, noop);
  app.activity("charge-card", noop);
  app.activity("refund", {}, noop);
  app.activity(async function sendMail() {});
  assert.equal(app.queue("q", { name: "chained" }, noop), app, "declarations chain like app.http");
  assert.deepEqual(app.functions, [
    { name: "noop", trigger: { type: "timer", schedule: "0 */5 * * * *", run_on_startup: false } },
    {
      name: "weekdays",
      trigger: { type: "timer", schedule: "0 0 9 * * 1-5", run_on_startup: true, time_zone: "Europe/Paris" },
    },
    { name: "job", trigger: { type: "queue", queue: "jobs", batch_size: 1 } },
    { name: "big", trigger: { type: "queue", queue: "big-jobs-2", batch_size: 32 } },
    { name: "upload", trigger: { type: "blob", path: "uploads/{name}" } },
    { name: "site", trigger: { type: "blob", path: "$web/{path}" } },
    { name: "changes", trigger: { type: "docs_changes", container: "conversations", batch_size: 100, start: "now" } },
    { name: "audit", trigger: { type: "docs_changes", container: "audit_log", batch_size: 1000, start: "beginning" } },
    { name: "charge-card", trigger: { type: "activity" } },
    { name: "refund", trigger: { type: "activity" } },
    { name: "sendMail", trigger: { type: "activity" } },
    { name: "chained", trigger: { type: "queue", queue: "q", batch_size: 1 } },
  ]);
  // The registered triggers cannot be changed through what the index or a context hands out.
  assert.throws(() => {
    app._find("job").trigger.queue = "other";
  }, TypeError);
});

test("timer arguments", () => {
  const app = new App();
  assert.throws(() => app.timer("*/5 * * * *", noop), /app\.timer\("\*\/5 \* \* \* \*", \.\.\.\): schedule must be six .*it has 5/);
  assert.throws(() => app.timer("0 0 0 0 * * *", noop), /six .*it has 7/);
  assert.throws(() => app.timer("", noop), /it has 0/);
  assert.throws(() => app.timer(300, noop), (err) => err instanceof TypeError && /schedule must be a string/.test(err.message));
  assert.throws(() => app.timer(noop), /schedule must be a string, like "0 \*\/5 \* \* \* \*"/);
  assert.throws(() => app.timer("0 * * * * *", { runOnStartup: "yes" }, noop), /runOnStartup must be true or false/);
  assert.throws(() => app.timer("0 * * * * *", { timeZone: 1 }, noop), /timeZone must be a string/);
  assert.throws(() => app.timer("0 * * * * *", { timeZone: "Europe/ Paris" }, noop), /IANA/);
  assert.throws(() => app.timer("0 * * * * *", { run_on_startup: true }, noop), /unknown option\(s\) run_on_startup .*expected name, runOnStartup, timeZone/);
  assert.throws(() => app.timer("0 * * * * *", { name: "t" }), /needs a handler function/);
  assert.throws(() => app.timer("0 * * * * *", "t", noop), /options of app\.timer\("0 \* \* \* \* \*", \.\.\.\) must be an object/);
});

test("queue arguments", () => {
  const app = new App();
  for (const bad of ["Jobs", "", "a_b", "q".repeat(64)]) {
    assert.throws(() => app.queue(bad, noop), (err) => err instanceof RangeError && /is not a queue name/.test(err.message), bad);
  }
  assert.throws(() => app.queue(null, noop), /app\.queue\(\.\.\.\): queue must be a string/);
  assert.throws(() => app.queue("jobs", { batchSize: 0 }, noop), /batchSize must be from 1 to 32, not 0/);
  assert.throws(() => app.queue("jobs", { batchSize: 33 }, noop), /batchSize must be from 1 to 32/);
  assert.throws(() => app.queue("jobs", { batchSize: 1.5 }, noop), /batchSize must be an integer/);
  assert.throws(() => app.queue("jobs", { batchSize: "4" }, noop), /batchSize must be an integer/);
  assert.throws(() => app.queue("jobs", { batch_size: 4 }, noop), /unknown option\(s\) batch_size .*expected name, batchSize/);
  app.queue("q".repeat(63), noop);
});

test("blob arguments", () => {
  const app = new App();
  assert.throws(() => app.blob("uploads", noop), /app\.blob\("uploads", \.\.\.\): path "uploads" must be "<container>\/<pattern>"/);
  assert.throws(() => app.blob("/uploads/x", noop), /<container>\/<pattern>/);
  assert.throws(() => app.blob("uploads/", noop), /needs a pattern after "uploads\/"/);
  assert.throws(() => app.blob("uploads//x", noop), /needs a pattern/);
  assert.throws(() => app.blob("Uploads/{name}", noop), /not a blob container name/);
  assert.throws(() => app.blob("up/{name}", noop), /not a blob container name/);
  assert.throws(() => app.blob(["uploads/x"], noop), /path must be a string/);
  assert.throws(() => app.blob("uploads/x", { batchSize: 2 }, noop), /unknown option\(s\) batchSize .*expected name\)/);
});

test("docsChanges arguments", () => {
  const app = new App();
  assert.throws(() => app.docsChanges("Conversations", noop), /app\.docsChanges\("Conversations", \.\.\.\): "Conversations" is not a docs container name/);
  assert.throws(() => app.docsChanges("", noop), /not a docs container name/);
  assert.throws(() => app.docsChanges(7, noop), /container must be a string/);
  assert.throws(() => app.docsChanges("c", { batchSize: 1001 }, noop), /batchSize must be from 1 to 1000/);
  assert.throws(() => app.docsChanges("c", { start: "end" }, noop), /start must be "now" or "beginning", not "end"/);
  assert.throws(() => app.docsChanges("c", { start: 0 }, noop), (err) => err instanceof TypeError && /start/.test(err.message));
  assert.throws(() => app.docsChanges("c", { startFrom: "now" }, noop), /unknown option\(s\) startFrom .*expected name, batchSize, start/);
  app.docsChanges("c", { batchSize: 1 }, noop);
});

test("names: explicit or the handler's own, one namespace with HTTP functions", () => {
  const app = new App();
  app.http("/a", { name: "same" }, noop);
  assert.throws(() => app.queue("jobs", { name: "same" }, noop), /a function named "same" is already registered/);
  assert.throws(() => app.activity("same", noop), /already registered/);
  assert.throws(() => app.timer("0 * * * * *", () => null), /needs a function name: pass \{ name: "\.\.\." \}/);
  assert.throws(() => app.queue("jobs", { name: "has space" }, noop), /function name "has space"/);
  assert.throws(() => app.activity(5, noop), /function name 5/);
  assert.throws(() => app.activity("a", { name: "b" }, noop), /the name is given twice/);
  assert.throws(() => app.activity("a", { retries: 2 }, noop), /unknown option\(s\) retries/);
  assert.throws(() => app.activity(() => null), /needs a function name/);
  assert.throws(() => app.activity("gen", async function* gen() {}), /async generator/);
  app.queue("jobs", noop);
  assert.throws(() => app.blob("uploads/x", noop), /"noop" is already registered/);
  assert.deepEqual(app.functions.map((f) => f.name), ["same", "noop"]);
});
