"use strict";
// Orchestrators (PROTOCOL.md §7) end to end: a worker process stepped with §7 envelopes by a toy engine
// that keeps each instance's history as the host would. No host needed. The same cases as the Python
// SDK's tests/test_orchestrator.py, with the same answers.

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const http = require("http");
const { startWorker, request, waitFor } = require("./helpers");

const APP = `
const { App, RetryPolicy, TaskFailedError } = require("nimbus");
const app = new App();

const STARTS = {}; // generator starts per instance: one per replay
const LIVE = {}; // activity results the code saw live (not replaying), per instance
const bump = (counts, key) => { counts[key] = (counts[key] ?? 0) + 1; };
const later = (ctx, ms) => new Date(ctx.currentUtcDateTime.getTime() + ms);

app.http("/counts", () => ({ starts: STARTS, live: LIVE }));

app.activity(function hello(data) { return "Hello " + data; });

app.orchestrator(function* chain(ctx) {
  bump(STARTS, ctx.instanceId);
  const out = [];
  for (const city of ctx.getInput()) {
    out.push(yield ctx.callActivity("hello", city));
    if (!ctx.isReplaying) bump(LIVE, ctx.instanceId);
  }
  return out;
});

app.orchestrator("fan", function* (ctx) {
  const work = yield ctx.callActivity("list");
  const results = yield ctx.taskAll(work.map((item) => ctx.callActivity("work", item)));
  const nothing = yield ctx.taskAll([]);
  return { results, sum: results.reduce((a, b) => a + b, 0), nothing };
});

app.orchestrator(function* race(ctx) {
  const a = ctx.callActivity("a");
  const b = ctx.callActivity("b");
  const winner = yield ctx.taskAny([a, b]);
  let result;
  try {
    result = winner.result;
  } catch (err) {
    if (!(err instanceof TaskFailedError)) throw err;
    result = "failed: " + err.code;
  }
  const out = { winner: winner === a ? "a" : "b", result };
  if (ctx.getInput() === "again") {
    yield ctx.callActivity("c"); // meanwhile the other one completes too
    out.again = (yield ctx.taskAny([a, b])) === winner; // both done: the first in history still wins
  }
  return out;
});

app.orchestrator(function* deadline(ctx) {
  const timer = ctx.createTimer(later(ctx, 5 * 60000));
  yield ctx.callActivity("work");
  const cancel = ctx.waitForExternalEvent("cancel"); // maybe raised during the work: then already there
  const winner = yield ctx.taskAny([timer, cancel]);
  return winner === cancel ? "cancelled" : "deadline";
});

app.orchestrator(function* gather(ctx) {
  const tasks = [0, 1, 2].map((i) => ctx.callActivity("work", i));
  yield ctx.callActivity("meanwhile");
  try {
    return yield ctx.taskAll(tasks);
  } catch (err) {
    return err.code;
  }
});

app.orchestrator(function* approval(ctx) {
  const timer = ctx.createTimer(later(ctx, 3600000));
  const event = ctx.waitForExternalEvent("approve");
  const winner = yield ctx.taskAny([event, timer]);
  if (winner === event) return { approved: event.result };
  return "timed out at " + ctx.currentUtcDateTime.toISOString();
});

app.orchestrator(function* events(ctx) {
  yield ctx.callActivity("prepare");
  const first = ctx.waitForExternalEvent("x");
  const second = ctx.waitForExternalEvent("x");
  const other = ctx.waitForExternalEvent("y");
  const both = yield ctx.taskAll([second, first]);
  return { both, y: yield other };
});

app.orchestrator(function* parent(ctx) {
  const a = ctx.callSubOrchestrator("child", { n: 1 });
  const b = ctx.callSubOrchestrator("child", { n: 2 }, "child-2");
  try {
    return yield ctx.taskAll([a, b]);
  } catch (err) {
    return { failed: [err.taskName, err.code, err.detail, err.message] };
  }
});

app.orchestrator(function* careful(ctx) {
  const retry = new RetryPolicy({ attempts: 3, firstInterval: 5000, backoff: 1.5, maxInterval: 60000 });
  try {
    yield ctx.callActivity("charge", 10, { retry });
  } catch (err) {
    ctx.setCustomStatus({ refunding: err.code });
    const error = [err.taskName, err.code, err.detail, err.message];
    yield ctx.callActivity("refund", { error }, { retry: new RetryPolicy({ attempts: 2, firstInterval: 250 }) });
    return "refunded";
  }
  return "charged";
});

app.orchestrator(function* careless(ctx) {
  yield ctx.callActivity("charge", 10);
  return "charged";
});

app.orchestrator(function* broken(ctx) {
  ctx.setCustomStatus("about to fail");
  yield ctx.callActivity("a");
  throw new RangeError("boom");
});

app.orchestrator(function* counter(ctx) {
  const n = ctx.getInput();
  yield ctx.createTimer(later(ctx, n * 1000));
  if (n >= 3) return n;
  ctx.continueAsNew(n + 1);
});

app.orchestrator(function* clock(ctx) {
  const seen = [];
  const note = () => seen.push([ctx.isReplaying, ctx.currentUtcDateTime.toISOString(), ctx.newUuid()]);
  note();
  yield ctx.callActivity("a");
  note();
  yield ctx.waitForExternalEvent("go");
  note();
  return seen;
});

app.orchestrator("plain", (ctx) => ({
  input: ctx.getInput(), instance: ctx.instanceId, version: ctx.version, replaying: ctx.isReplaying,
}));

app.orchestrator(function* junk(ctx) {
  let caught;
  let notJson;
  try {
    yield 42;
  } catch (err) {
    caught = err.message;
  }
  try {
    ctx.callActivity("a", { n: 10n });
  } catch (err) {
    notJson = err.message;
  }
  const task = ctx.callActivity("a"); // id 0: the refused call took no id
  if (ctx.getInput() === "uncaught") yield "not a task";
  return { caught, notJson, id0: yield task };
});

app.orchestrator(function* loop(ctx) {
  let total = 0;
  for (let i = 0; i < ctx.getInput(); i++) total += yield ctx.callActivity("inc", i);
  return total;
});

// helpers are generator functions too: yield* runs them inline
function* twice(ctx, name) {
  return [yield ctx.callActivity(name, 1), yield ctx.callActivity(name, 2)];
}
app.orchestrator(function* helpers(ctx) {
  return yield* twice(ctx, "double");
});

app.orchestrator("promised", (ctx) => Promise.resolve(1)); // async, though not detectably
app.orchestrator("unjson", function* (ctx) { return { when: 1n }; });
app.orchestrator("lost", function* (ctx) {
  try {
    yield ctx.callActivity("a");
  } finally {
    require("fs").writeFileSync(require("path").join(ctx.getInput(), "finally"), "ran");
  }
});

module.exports = app;
`;

const T0 = Date.UTC(2024, 4, 1, 12, 0, 0);
const INVOKE = "/_nimbus/worker/invoke/";

/** An RFC 3339 time with nanoseconds, as a Rust host may write. */
const rfc3339 = (ms) => `${new Date(ms).toISOString().slice(0, 19)}.000000123Z`;

let w;
before(async () => {
  w = await startWorker(APP);
});
after(async () => {
  await w.stop();
});

/** One step envelope to `worker`: [status, the answer's JSON]. */
async function step(worker, name, data, agent) {
  const envelope = { id: "inv-1", trigger: { type: "orchestrator" }, data };
  const res = await request(worker, {
    method: "POST",
    path: INVOKE + name,
    headers: { "content-type": "application/json", "x-nimbus-function": name },
    body: JSON.stringify(envelope),
    agent,
  });
  return [res.status, res.json()];
}

/** A toy durable engine for one instance: its history, and steps sent as PROTOCOL.md §7.1 says.
 *
 *  After each step it writes the scheduling events of the answered actions. With `countsScheduled`
 *  (the default) the next step's past_length counts them, so `new` holds only what happened since;
 *  without it, they come back at the start of the next step's `new`. */
class Engine {
  constructor(worker, name, input = null, { instance = "i-1", version = "2", countsScheduled = true, agent } = {}) {
    Object.assign(this, { worker, name, instance, version, countsScheduled, agent });
    this.history = [];
    this.cursor = 0; // what the host believes the worker holds
    this.clock = T0;
    this.needHistory = 0;
    this.event("started", { name, version, input });
  }

  event(type, fields = {}) {
    const event = { type, at: rfc3339(this.clock), ...fields };
    this.history.push(event);
    this.clock += 1000;
    return event;
  }

  data(withPast = false) {
    return {
      instance: this.instance,
      name: this.name,
      version: this.version,
      past_length: this.cursor,
      past: withPast ? this.history.slice(0, this.cursor) : null,
      new: this.history.slice(this.cursor),
    };
  }

  async step({ withPast = false, worker = this.worker } = {}) {
    let [status, answer] = await step(worker, this.name, this.data(withPast), this.agent);
    assert.equal(status, 200, JSON.stringify(answer));
    if (answer.need_history === true) {
      this.needHistory++;
      [status, answer] = await step(worker, this.name, this.data(true), this.agent);
      assert.equal(status, 200, JSON.stringify(answer));
    }
    this.cursor = this.history.length;
    for (const action of answer.actions) {
      const { type, id, name, input } = action;
      if (type === "call_activity") this.event("task_scheduled", { id, name, input });
      else if (type === "create_timer") this.event("timer_created", { id, fire_at: action.fire_at });
      else this.event("sub_scheduled", { id, name, input, instance: action.instance ?? `sub-${id}` });
    }
    if (this.countsScheduled) this.cursor = this.history.length;
    return answer;
  }

  complete(id, result) {
    this.event("task_completed", { id, result });
  }

  fail(id, code, message) {
    this.event("task_failed", { id, error: { code, message } });
  }

  fire(id) {
    const created = this.history.find((e) => e.type === "timer_created" && e.id === id);
    this.event("timer_fired", { id, fire_at: created.fire_at });
  }

  raise(name, data) {
    this.event("event_raised", { name, data });
  }
}

const engine = (name, input, options) => new Engine(w, name, input, { instance: `${name}-1`, ...options });
const running = (actions) => ({ actions, state: "running" });
const activity = (id, name, input = null) => ({ type: "call_activity", id, name, input });

async function counts(worker = w) {
  return (await request(worker, { path: "/counts" })).json();
}

// ---- the index -----------------------------------------------------------------------------------------

test("the index lists orchestrators", async () => {
  const index = (await request(w, { path: "/_nimbus/worker/index" })).json();
  const byName = Object.fromEntries(index.functions.map((f) => [f.name, f.trigger]));
  assert.deepEqual(byName.chain, { type: "orchestrator" });
  assert.deepEqual(byName.fan, { type: "orchestrator" });
  assert.deepEqual(byName.hello, { type: "activity" });
});

// ---- patterns -------------------------------------------------------------------------------------------

test("chaining", async () => {
  const e = engine("chain", ["Tokyo", "Seattle", "London"]);
  assert.deepEqual(await e.step(), running([activity(0, "hello", "Tokyo")]));
  e.complete(0, "Hello Tokyo");
  assert.deepEqual(await e.step(), running([activity(1, "hello", "Seattle")]));
  e.complete(1, "Hello Seattle");
  assert.deepEqual(await e.step(), running([activity(2, "hello", "London")]));
  e.complete(2, "Hello London");
  assert.deepEqual(await e.step(), {
    actions: [],
    state: "completed",
    output: ["Hello Tokyo", "Hello Seattle", "Hello London"],
  });
  assert.equal(e.needHistory, 0);
  const c = await counts();
  assert.deepEqual([c.starts[e.instance], c.live[e.instance]], [1, 3]);
});

test("fan-out, fan-in", async () => {
  const e = engine("fan");
  assert.deepEqual(await e.step(), running([activity(0, "list")]));
  e.complete(0, ["a", "b", "c", "d"]);
  const answer = await e.step();
  assert.deepEqual(
    answer.actions.map((a) => [a.id, a.name, a.input]),
    [[1, "work", "a"], [2, "work", "b"], [3, "work", "c"], [4, "work", "d"]],
  );
  e.complete(3, 30);
  e.complete(1, 10);
  assert.deepEqual(await e.step(), running([]));
  e.complete(4, 40);
  e.complete(2, 20);
  assert.deepEqual((await e.step()).output, { results: [10, 20, 30, 40], sum: 100, nothing: [] });
});

test("fan-in fails with the first failure in history", async () => {
  const e = engine("fan", null, { instance: "fan-fails" });
  await e.step();
  e.complete(0, ["a", "b", "c"]);
  await e.step();
  e.fail(3, "first", "c failed");
  e.fail(2, "second", "b failed"); // later in history: not the one thrown, though b comes before c
  const answer = await e.step();
  assert.equal(answer.state, "failed");
  assert.deepEqual(answer.error, {
    code: "orchestrator_error",
    message: "TaskFailedError: activity 'work' failed: first: c failed",
  });
});

test("taskAny: the first in history order", async () => {
  let e = engine("race");
  assert.deepEqual((await e.step()).actions.map((a) => a.name), ["a", "b"]);
  e.complete(1, "b first");
  e.complete(0, "a second"); // in the same step, after
  assert.deepEqual((await e.step()).output, { winner: "b", result: "b first" });
  e = engine("race", null, { instance: "race-2" });
  await e.step();
  e.fail(0, "nope", "a failed");
  assert.deepEqual((await e.step()).output, { winner: "a", result: "failed: nope" });
  e = engine("race", "again", { instance: "race-3" });
  await e.step();
  e.complete(1, "b first");
  assert.equal((await e.step()).actions[0].name, "c");
  e.complete(0, "a second");
  e.complete(2, null);
  assert.deepEqual((await e.step()).output, { winner: "b", result: "b first", again: true });
});

test("settled before asked: still in history order", async () => {
  for (const [first, second, expected] of [["raise", "fire", "cancelled"], ["fire", "raise", "deadline"]]) {
    const e = engine("deadline", null, { instance: `deadline-${first}` });
    await e.step();
    for (const what of [first, second]) {
      if (what === "raise") e.raise("cancel", null);
      else e.fire(0);
    }
    e.complete(1, null);
    assert.equal((await e.step()).output, expected);
  }
  const e = engine("gather");
  assert.equal((await e.step()).actions.length, 4);
  e.fail(2, "two", "failed first");
  e.fail(1, "one", "failed later");
  e.complete(0, null);
  e.complete(3, null);
  assert.equal((await e.step()).output, "two");
});

test("timers", async () => {
  const e = engine("approval");
  // waiting for an event is not an action
  assert.deepEqual(await e.step(), running([{ type: "create_timer", id: 0, fire_at: "2024-05-01T13:00:00Z" }]));
  e.fire(0);
  const firedAt = e.history.at(-1).at;
  assert.deepEqual(await e.step(), {
    actions: [],
    state: "completed",
    output: `timed out at ${firedAt.replace(".000000123Z", ".000Z")}`,
  });
});

test("an external event beats the timer", async () => {
  const e = engine("approval", null, { instance: "approval-2" });
  await e.step();
  e.raise("other", 1);
  e.raise("approve", { by: "ana" });
  e.fire(0);
  assert.deepEqual((await e.step()).output, { approved: { by: "ana" } });
});

test("two waits for one name take successive events", async () => {
  const e = engine("events");
  await e.step();
  e.raise("x", "first"); // before the code waits: kept for the first wait
  assert.deepEqual(await e.step(), running([]));
  e.complete(0, null);
  e.raise("y", "why");
  assert.deepEqual(await e.step(), running([]));
  e.raise("x", "second");
  e.raise("x", "third"); // nobody waits for it
  assert.deepEqual((await e.step()).output, { both: ["second", "first"], y: "why" });
});

test("sub-orchestrators", async () => {
  let e = engine("parent");
  assert.deepEqual(
    await e.step(),
    running([
      { type: "call_sub_orchestrator", id: 0, name: "child", input: { n: 1 } },
      { type: "call_sub_orchestrator", id: 1, name: "child", input: { n: 2 }, instance: "child-2" },
    ]),
  );
  e.event("sub_completed", { id: 1, result: "two" });
  e.event("sub_completed", { id: 0, result: "one" });
  assert.deepEqual((await e.step()).output, ["one", "two"]);
  e = engine("parent", null, { instance: "parent-2" });
  await e.step();
  e.event("sub_failed", { id: 1, error: { code: "orchestrator_error", message: "ValueError: bad" } });
  assert.deepEqual((await e.step()).output, {
    failed: ["child", "orchestrator_error", "ValueError: bad", "sub-orchestration 'child' failed: orchestrator_error: ValueError: bad"],
  });
});

// ---- failures, retries, status --------------------------------------------------------------------------

test("a retry policy, and a caught task failure", async () => {
  const e = engine("careful");
  assert.deepEqual(
    await e.step(),
    running([
      {
        ...activity(0, "charge", 10),
        retry: { attempts: 3, first_interval_ms: 5000, backoff: 1.5, max_interval_ms: 60000 },
      },
    ]),
  );
  e.fail(0, "card_declined", "no funds");
  assert.deepEqual(await e.step(), {
    actions: [
      {
        ...activity(1, "refund", {
          error: ["charge", "card_declined", "no funds", "activity 'charge' failed: card_declined: no funds"],
        }),
        retry: { attempts: 2, first_interval_ms: 250, backoff: 2 },
      },
    ],
    state: "running",
    custom_status: { refunding: "card_declined" },
  });
  e.complete(1, null);
  assert.deepEqual(await e.step(), {
    actions: [],
    state: "completed",
    output: "refunded",
    custom_status: { refunding: "card_declined" },
  });
});

test("an uncaught task failure fails the orchestration", async () => {
  const e = engine("careless");
  await e.step();
  e.fail(0, "card_declined", "no funds");
  assert.deepEqual(await e.step(), {
    actions: [],
    state: "failed",
    error: { code: "orchestrator_error", message: "TaskFailedError: activity 'charge' failed: card_declined: no funds" },
  });
});

test("an error fails the orchestration, logged with its stack; the instance is dropped", async () => {
  const e = engine("broken");
  assert.equal((await e.step()).custom_status, "about to fail");
  e.complete(0, null);
  assert.deepEqual(await e.step(), {
    actions: [],
    state: "failed",
    custom_status: "about to fail",
    error: { code: "orchestrator_error", message: "RangeError: boom" },
  });
  await waitFor(() => w.stderr().includes(`orchestration ${e.instance} failed`), { what: "the log line" });
  assert.match(w.stderr(), /\[inv-1\] error: RangeError: boom\n\[inv-1\] error: +at broken \(.*functions\/app\.js:\d+/);
  // the instance was dropped: the next step for it needs the history
  e.raise("late", null);
  assert.deepEqual((await step(w, "broken", e.data()))[1], { need_history: true });
});

test("continueAsNew", async () => {
  const e = engine("counter", 2);
  assert.deepEqual(await e.step(), running([{ type: "create_timer", id: 0, fire_at: "2024-05-01T12:00:02Z" }]));
  e.fire(0);
  assert.deepEqual(await e.step(), { actions: [], state: "continued_as_new", input: 3 });
  // the next generation: the same instance id, a fresh history that starts with `started`
  e.history = [];
  e.cursor = 0;
  e.event("started", { name: "counter", version: "2", input: 3 });
  assert.deepEqual((await e.step()).actions.map((a) => [a.type, a.id]), [["create_timer", 0]]);
  e.fire(0);
  assert.deepEqual(await e.step(), { actions: [], state: "completed", output: 3 });
  assert.equal(e.needHistory, 0);
});

// ---- sessions: kept, replayed, evicted -----------------------------------------------------------------

test("a held session applies only the new events", async () => {
  const e = engine("chain", ["a", "b", "c"], { instance: "reuse" });
  await e.step();
  e.complete(0, "A");
  await e.step();
  e.complete(1, "B");
  await e.step();
  const c = await counts();
  assert.equal(c.starts.reuse, 1); // never replayed
  assert.equal(c.live.reuse, 2);
});

test("sessions tell generations and executions apart", async () => {
  let e = engine("chain", ["a", "b", "c"], { instance: "gen" });
  await e.step();
  e.complete(0, "A");
  await e.step({ withPast: true }); // held at past_length: `past` is not replayed
  assert.equal((await counts()).starts.gen, 1);
  // the same instance id, another generation with as many events: its `started` differs
  e.complete(1, "B");
  const past = [{ ...e.history[0], at: "2030-01-01T00:00:00Z" }, ...e.history.slice(1, e.cursor)];
  assert.equal((await step(w, "chain", { ...e.data(), past }))[1].actions[0].id, 2);
  assert.equal((await counts()).starts.gen, 2); // replayed
  // a host that names executions: another one is another instance
  e = engine("chain", ["a", "b"], { instance: "exec" });
  const data = { ...e.data(), execution: "e1" };
  assert.equal((await step(w, "chain", data))[1].actions[0].id, 0);
  assert.deepEqual((await step(w, "chain", { ...data, past_length: 2, new: [], execution: "e2" }))[1], {
    need_history: true,
  });
});

test("a rewound history asks again for what it voided", async () => {
  // A rewind (PROTOCOL.md §7.2) replaces a failure and its activity's scheduling event by `rewound`
  // markers: the replay asks for that activity again, under the same id, and skips the markers.
  const e = engine("chain", ["a", "b", "c"], { instance: "rewound" });
  await e.step();
  e.complete(0, "A");
  await e.step();
  e.fail(1, "handler_error", "Error: down");
  assert.equal((await e.step()).state, "failed");
  e.history = e.history.map((event) =>
    event.id === 1 && ["task_scheduled", "task_failed"].includes(event.type)
      ? { type: "rewound", at: event.at, was: event }
      : event,
  );
  e.event("rewound", { reason: "fixed" });
  const [status, answer] = await step(w, "chain", { ...e.data(true), execution: "after-rewind" });
  assert.equal(status, 200, JSON.stringify(answer));
  assert.deepEqual(answer, running([activity(1, "hello", "b")]));
});

test("scheduling events may come back in new", async () => {
  const e = engine("chain", ["a", "b"], { instance: "in-new", countsScheduled: false });
  await e.step();
  e.complete(0, "A");
  assert.equal(e.data().new[0].type, "task_scheduled");
  assert.deepEqual(await e.step(), running([activity(1, "hello", "b")]));
  e.complete(1, "B");
  assert.deepEqual((await e.step()).output, ["A", "B"]);
  assert.deepEqual([e.needHistory, (await counts()).starts[e.instance]], [0, 1]);
});

test("need_history round trip", async () => {
  const e = engine("chain", ["a", "b", "c"], { instance: "round-trip" });
  await e.step();
  e.complete(0, "A");
  await e.step();
  e.complete(1, "B");
  const other = await startWorker(APP); // another instance of the worker: it holds nothing
  try {
    assert.deepEqual(await step(other, "chain", e.data()), [200, { need_history: true }]);
    const answer = await e.step({ worker: other });
    assert.equal(e.needHistory, 1);
    // only the new action: 0 and 1 are in history
    assert.deepEqual(answer, running([activity(2, "hello", "c")]));
    // replayed once; while replaying the code saw A live nowhere, then B live
    const c = await counts(other);
    assert.deepEqual([c.starts[e.instance], c.live[e.instance]], [1, 1]);
    e.complete(2, "C");
    assert.deepEqual((await e.step({ worker: other })).output, ["A", "B", "C"]);
    assert.equal(e.needHistory, 1); // held since
  } finally {
    await other.stop();
  }
  // the first worker's session is now behind the history: it asks for it rather than guess
  assert.deepEqual((await step(w, "chain", e.data()))[1], { need_history: true });
});

test("eviction of the least recently used, then need_history", async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const engines = [];
    for (let i = 0; i <= 1000; i++) engines.push(engine("chain", ["x"], { instance: `evict-${i}`, agent }));
    const started = Date.now();
    for (const e of engines) await e.step();
    console.log(`1001 orchestrations started in ${((Date.now() - started) / 1000).toFixed(2)} s`);
    for (const e of [engines[0], engines[1000], engines[1]]) e.complete(0, "X");
    // the first was evicted (1,000 are kept); the newest and the next oldest were not
    assert.deepEqual((await step(w, "chain", engines[0].data(), agent))[1], { need_history: true });
    assert.deepEqual((await engines[1000].step()).output, ["X"]);
    assert.deepEqual((await engines[1].step()).output, ["X"]);
    assert.deepEqual((await engines[0].step()).output, ["X"]);
    assert.deepEqual([engines[0].needHistory, engines[1].needHistory], [1, 0]);
  } finally {
    agent.destroy();
  }
});

test("a dropped session runs its finally blocks", async () => {
  const e = engine("lost", w.dir);
  const data = { ...e.data(), execution: "e1" };
  assert.deepEqual((await step(w, "lost", data))[1], running([activity(0, "a")]));
  assert.equal(require("fs").existsSync(w.marker("finally")), false); // suspended at its yield
  // another execution of the same instance id: the held one is dropped
  assert.deepEqual((await step(w, "lost", { ...data, execution: "e2" }))[1], running([activity(0, "a")]));
  assert.equal(require("fs").readFileSync(w.marker("finally"), "utf8"), "ran");
});

// ---- determinism ----------------------------------------------------------------------------------------

test("nondeterminism: the messages of PROTOCOL.md §7.3", async () => {
  const history = (...scheduled) => [{ type: "started", at: "2024-05-01T12:00:00Z", input: ["a"] }, ...scheduled];
  const cases = [
    [
      history({ type: "task_scheduled", at: "2024-05-01T12:00:01Z", id: 0, name: "other" }),
      "step 0: history has task_scheduled other, the code now asks for call_activity hello",
    ],
    [
      history({ type: "timer_created", at: "2024-05-01T12:00:01Z", id: 0, fire_at: "2024-05-02T00:00:00Z" }),
      "step 0: history has timer_created 2024-05-02T00:00:00Z, the code now asks for call_activity hello",
    ],
    [
      history(
        { type: "task_scheduled", at: "2024-05-01T12:00:01Z", id: 0, name: "hello" },
        { type: "task_completed", at: "2024-05-01T12:00:02Z", id: 0, result: "A" },
        { type: "task_scheduled", at: "2024-05-01T12:00:03Z", id: 1, name: "hello" },
      ),
      "step 1: history has task_scheduled hello, the code now asks for nothing",
    ],
  ];
  for (const [i, [past, message]] of cases.entries()) {
    const data = {
      instance: `nd-${i}`,
      name: "chain",
      past_length: past.length,
      past,
      new: [{ type: "event_raised", at: "2024-05-01T12:00:09Z", name: "poke", data: null }],
    };
    const [, answer] = await step(w, "chain", data);
    assert.deepEqual(answer, { actions: [], state: "failed", error: { code: "nondeterminism", message } }, message);
    // dropped, not kept
    assert.deepEqual((await step(w, "chain", { ...data, past: null }))[1], { need_history: true });
  }
});

test("replay: isReplaying, times and uuids are the live run's", async () => {
  const e = engine("clock", null, { instance: "clock-1" });
  await e.step();
  e.complete(0, null);
  await e.step();
  e.raise("go", null);
  const live = (await e.step()).output;
  // started, task_completed, event_raised (nanoseconds cut to milliseconds)
  const ats = [0, 2, 3].map((i) => e.history[i].at.replace(".000000123Z", ".000Z"));
  assert.deepEqual(live.map((n) => n.slice(0, 2)), ats.map((at) => [false, at]));
  // the Python SDK's ctx.new_uuid() for the same instance, times and counter
  assert.deepEqual(live.map((n) => n[2]), [
    "1fab1ee3-6981-54e3-829d-dfcea588265f",
    "d72700c7-b7e6-5970-ae10-cba7de1060ab",
    "91e2186a-b502-5537-b69e-7f1a7c5c084a",
  ]);
  // the same history replayed from scratch: the same times and uuids, isReplaying while in `past`
  e.cursor = e.history.length - 1;
  const replayed = (await e.step({ withPast: true })).output;
  assert.deepEqual(replayed.map((n) => n[0]), [true, true, false]);
  assert.deepEqual(replayed.map((n) => n.slice(1)), live.map((n) => n.slice(1)));
});

test("10,000 events replay quickly", async () => {
  const events = [{ type: "started", at: "2024-05-01T12:00:00Z", input: 10 ** 6 }];
  for (let i = 0; i < 5000; i++) {
    const at = `2024-05-01T12:${String(Math.floor(i / 60) % 60).padStart(2, "0")}:${String(i % 60).padStart(2, "0")}.123456789Z`;
    events.push({ type: "task_scheduled", at, id: i, name: "inc", input: i });
    events.push({ type: "task_completed", at, id: i, result: i });
  }
  const past = events.slice(0, -1);
  const data = { instance: "long", name: "loop", past_length: past.length, past, new: events.slice(-1) };
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const started = process.hrtime.bigint();
    const [status, answer] = await step(w, "loop", data, agent);
    const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
    console.log(`replayed ${events.length} events in ${elapsed.toFixed(3)} s`);
    assert.equal(status, 200);
    assert.deepEqual(answer, running([activity(5000, "inc", 5000)]));
    assert.ok(elapsed < 1.0, `${elapsed} s`);
    // and then held: the next step applies one event
    const next = {
      instance: "long",
      name: "loop",
      past_length: events.length + 1,
      past: null,
      new: [{ type: "task_completed", at: "2024-05-01T13:00:00Z", id: 5000, result: 1 }],
    };
    assert.equal((await step(w, "loop", next, agent))[1].actions[0].id, 5001);
  } finally {
    agent.destroy();
  }
});

// ---- odd code, odd steps --------------------------------------------------------------------------------

test("a plain function completes at once", async () => {
  const e = engine("plain", { k: [1] }, { instance: "plain-1" });
  assert.deepEqual(await e.step(), {
    actions: [],
    state: "completed",
    output: { input: { k: [1] }, instance: "plain-1", version: "2", replaying: false },
  });
});

test("yield* runs helper generators inline", async () => {
  const e = engine("helpers");
  assert.deepEqual(await e.step(), running([activity(0, "double", 1)]));
  e.complete(0, 2);
  assert.deepEqual(await e.step(), running([activity(1, "double", 2)]));
  e.complete(1, 4);
  assert.deepEqual((await e.step()).output, [2, 4]);
});

test("yielding what is not a task; an input that is not JSON", async () => {
  let e = engine("junk");
  assert.deepEqual((await e.step()).actions, [activity(0, "a")]);
  e.complete(0, "zero");
  const { output } = await e.step();
  assert.match(output.caught, /^an orchestrator yields tasks made by its ctx .*, not 42$/);
  assert.match(output.notJson, /^ctx\.callActivity\("a"\): the input is not JSON: /);
  assert.equal(output.id0, "zero");
  // replayed, the refused call is refused again and takes no id either
  const past = e.history.slice(0, -1);
  const data = { instance: "junk-replayed", name: "junk", past_length: past.length, past, new: e.history.slice(-1) };
  assert.deepEqual((await step(w, "junk", data))[1].output, output);
  e = engine("junk", "uncaught", { instance: "junk-2" });
  const answer = await e.step();
  assert.equal(answer.state, "failed");
  assert.equal(answer.error.code, "orchestrator_error");
  assert.match(answer.error.message, /^TypeError: an orchestrator yields tasks/);
});

test("a Promise or an output that is not JSON fails the orchestration", async () => {
  const promised = await engine("promised").step();
  assert.equal(promised.state, "failed");
  assert.match(promised.error.message, /^TypeError: orchestrator "promised" returned a Promise: orchestrators are generator functions/);
  const unjson = await engine("unjson").step();
  assert.equal(unjson.state, "failed");
  assert.match(unjson.error.message, /^TypeError: the orchestrator's output is not JSON: /);
});

test("steps that are not steps answer 400 invalid_envelope", async () => {
  const cases = [
    ["not an object", "data is an object"],
    [{ past_length: 0, new: [] }, "instance must be a non-empty string"],
    [{ instance: "x", past_length: -1, new: [] }, "past_length must be an integer"],
    [{ instance: "x", past_length: 2, past: [], new: [] }, "past has 0 events but past_length says 2"],
    [{ instance: "x", past_length: 0, new: [3] }, "an orchestration event is an object"],
    [{ instance: "x", past_length: 0, new: [{ type: "task_completed", id: "0" }] }, "integer id"],
    [{ instance: "x", past_length: 0, new: {} }, "new must be an array"],
    [{ instance: "x", past_length: 0, new: [{ type: "event_raised", name: 1 }] }, "needs a string name"],
  ];
  for (const [data, message] of cases) {
    const [status, answer] = await step(w, "chain", data);
    assert.equal(status, 400, JSON.stringify(data));
    assert.equal(answer.error.code, "invalid_envelope");
    assert.ok(answer.error.message.includes(message), answer.error.message);
  }
});

// ---- in process: declarations and pieces ----------------------------------------------------------------

const nimbus = require("../nimbus");
const { Sessions, parseTime, formatTime } = require("../nimbus/lib/durable");

/** Steps the orchestrator `handler` in this process: [outcome, error lines logged]. */
function run(handler, data) {
  const app = new nimbus.App();
  app.orchestrator("o", handler);
  const logged = [];
  const outcome = new Sessions().step(app._find("o"), data, { error: (line) => logged.push(line) });
  return [outcome, logged];
}

const started = (input = null) => ({ type: "started", at: "2024-05-01T12:00:00Z", input });
const fresh = (...events) => ({ instance: "p", past_length: 0, past: null, new: [started(), ...events] });

test("declaration forms", () => {
  const app = new nimbus.App();
  app.orchestrator(function* bare(ctx) {
    yield ctx.callActivity("a");
  });
  app.orchestrator("named", function* () {});
  app.orchestrator("keyword", { name: "keyword" }, () => 2);
  assert.equal(app.orchestrator("chained", () => 3), app);
  assert.deepEqual(
    app.functions,
    ["bare", "named", "keyword", "chained"].map((name) => ({ name, trigger: { type: "orchestrator" } })),
  );
  assert.throws(() => app.orchestrator(function* () {}), /needs a function name/);
  assert.throws(() => app.orchestrator("a", { name: "b" }, () => 1), /the name is given twice/);
});

test("async orchestrators are refused", () => {
  const app = new nimbus.App();
  const handlers = [async function coroutine() {}, async function* agen() {}, async () => 1, (async () => 1).bind(null)];
  for (const handler of handlers) {
    for (const register of [() => app.orchestrator(handler), () => app.orchestrator("x", handler)]) {
      assert.throws(register, (err) => {
        assert.ok(err instanceof TypeError);
        assert.match(err.message, /is an async function; an orchestrator is replayed and must be deterministic and synchronous/);
        return true;
      });
    }
    assert.throws(() => app.orchestrator("x", handler), /^TypeError: nimbus: app\.orchestrator\("x", \.\.\.\): .*function\* x\(ctx\)/);
  }
  assert.deepEqual(app.functions, []);
});

test("RetryPolicy", () => {
  const { RetryPolicy } = nimbus;
  assert.deepEqual(new RetryPolicy({ attempts: 1, firstInterval: 0.1 }).toJSON(), {
    attempts: 1,
    first_interval_ms: 1,
    backoff: 2,
  });
  assert.equal(
    JSON.stringify(new RetryPolicy({ attempts: 5, firstInterval: 60000, backoff: 1, maxInterval: 3600000 })),
    '{"attempts":5,"first_interval_ms":60000,"backoff":1,"max_interval_ms":3600000}',
  );
  const cases = [
    [{ attempts: 0, firstInterval: 1 }, RangeError],
    [{ attempts: true, firstInterval: 1 }, TypeError],
    [{ attempts: 1.5, firstInterval: 1 }, TypeError],
    [{ attempts: 2, firstInterval: 0 }, RangeError],
    [{ attempts: 2 }, TypeError],
    [{ attempts: 2, firstInterval: "1s" }, TypeError],
    [{ attempts: 2, firstInterval: 1, backoff: 0.5 }, RangeError],
    [{ attempts: 2, firstInterval: 1, backoff: NaN }, RangeError],
    [{ attempts: 2, firstInterval: 10, maxInterval: 5 }, RangeError],
    [{ attempts: 2, firstInterval: 10, first_interval: 5 }, TypeError],
    [undefined, TypeError],
  ];
  for (const [options, error] of cases) assert.throws(() => new RetryPolicy(options), error, JSON.stringify(options));
});

test("the context's argument checks throw into the code", () => {
  const [outcome] = run(function* (ctx) {
    const other = new Sessions(); // a task of another instance is no task of this one
    const messages = [];
    const attempts = [
      () => ctx.createTimer(Date.now()),
      () => ctx.createTimer(new Date(NaN)),
      () => ctx.taskAny([]),
      () => ctx.taskAll([ctx.callActivity("a"), other]),
      () => ctx.taskAll(5),
      () => ctx.callActivity("a", null, { retries: 2 }),
      () => ctx.callActivity("a", null, { retry: { attempts: 2, firstInterval: 1 } }),
      () => ctx.callActivity(""),
      () => ctx.callSubOrchestrator("c", null, 7),
      () => ctx.waitForExternalEvent(null),
      () => ctx.setCustomStatus({ n: NaN }),
      () => ctx.continueAsNew(new Map()),
    ];
    for (const attempt of attempts) {
      try {
        attempt();
        messages.push("no error");
      } catch (err) {
        messages.push(`${err.name}: ${err.message}`);
      }
    }
    return messages;
  }, fresh());
  assert.equal(outcome.state, "completed");
  const expected = [
    /^TypeError: ctx\.createTimer\(\) takes a valid Date, not \d+ \(write new Date\(ctx\.currentUtcDateTime\.getTime\(\) \+ ms\)\)$/,
    /^TypeError: ctx\.createTimer\(\) takes a valid Date, not Invalid Date/,
    /^RangeError: ctx\.taskAny\(\) needs at least one task$/,
    /^TypeError: ctx\.taskAll\(\) takes tasks made by this ctx, not Sessions/,
    /^TypeError: ctx\.taskAll\(\) takes an array of tasks, not 5$/,
    /^TypeError: ctx\.callActivity\("a"\): unknown option\(s\) retries \(expected retry\)$/,
    /^TypeError: ctx\.callActivity\("a"\): retry is a RetryPolicy, not/,
    /^TypeError: ctx\.callActivity\(\): the name is a non-empty string, not ''$/,
    /^TypeError: ctx\.callSubOrchestrator\("c"\): instanceId is a non-empty string, not 7$/,
    /^TypeError: ctx\.waitForExternalEvent\(\): the name is a non-empty string, not null$/,
    /^TypeError: ctx\.setCustomStatus\(\): the value is not JSON: NaN is not a JSON number$/,
    /^TypeError: ctx\.continueAsNew\(\): the input is not JSON: it holds a Map$/,
  ];
  assert.equal(outcome.output.length, expected.length);
  outcome.output.forEach((message, i) => assert.match(message, expected[i]));
  // the one call accepted (in the 4th attempt) took id 0, the refused ones none; the host runs no
  // actions of a completed step
  assert.deepEqual(outcome.actions, [activity(0, "a")]);
});

test("times and uuids are the Python SDK's, to the microsecond", () => {
  const clock = function* (ctx) {
    const seen = [];
    const note = () => seen.push([ctx.isReplaying, ctx.currentUtcDateTime.toISOString(), ctx.newUuid(), ctx.newUuid()]);
    note();
    yield ctx.callActivity("a");
    note();
    yield ctx.waitForExternalEvent("go");
    note();
    return seen;
  };
  const history = [
    { type: "started", at: "2024-05-01T12:00:00.123456789Z", input: null },
    { type: "task_scheduled", at: "2024-05-01T12:00:01Z", id: 0, name: "a" },
    { type: "task_completed", at: "2024-05-01T14:00:02.5+02:00", id: 0, result: null },
    { type: "event_raised", at: "0099-12-31t23:59:60.000001Z", name: "go", data: null },
  ];
  const data = { instance: "clock-é/1", past_length: 3, past: history.slice(0, 3), new: history.slice(3) };
  // what nimbus/_durable.py answers for the same step (its times are microsecond-precise)
  assert.deepEqual(run(clock, data)[0].output, [
    [true, "2024-05-01T12:00:00.123Z", "8c2cf34f-6043-5ca8-becd-9f38010e9f73", "026f9f24-908d-54b9-b032-1c23fdb7e5c1"],
    [true, "2024-05-01T12:00:02.500Z", "461a0782-3ba0-5b8e-ab65-7067597ec857", "fd2b50b7-c9dc-5aab-a583-1d86a41b8bbf"],
    [false, "0099-12-31T23:59:59.000Z", "0a97f130-d006-5c80-baad-779e3180cc5c", "62a1d08f-7a43-50fc-849f-e687f6237186"],
  ]);
  const t = parseTime("2024-05-01T12:00:00.123456789Z");
  assert.deepEqual(t, { ms: Date.UTC(2024, 4, 1, 12) + 123, micro: 456 });
  assert.equal(formatTime(t.ms, t.micro), "2024-05-01T12:00:00.123456Z");
  assert.equal(formatTime(Date.UTC(2024, 4, 1, 12), 0), "2024-05-01T12:00:00Z");
  assert.equal(formatTime(Date.UTC(2024, 4, 1, 12, 0, 0, 500), 0), "2024-05-01T12:00:00.500000Z");
  assert.deepEqual(parseTime("2024-05-01 13:30:00-01:30"), { ms: Date.UTC(2024, 4, 1, 15), micro: 0 });
  for (const bad of ["2024-02-30T00:00:00Z", "2024-05-01T24:00:00Z", "2024-05-01", 5]) {
    assert.throws(() => parseTime(bad), /is not an RFC 3339 time/, String(bad));
  }
});

test("code that catches the nondeterminism error still fails", () => {
  const past = [started(), { type: "task_scheduled", at: "2024-05-01T12:00:01Z", id: 0, name: "other" }];
  const data = { instance: "p", past_length: 2, past, new: [] };
  const message = "step 0: history has task_scheduled other, the code now asks for call_activity a";
  const swallowing = [
    function* (ctx) {
      try {
        yield ctx.callActivity("a");
      } catch {
        return "fine";
      }
    },
    function* (ctx) {
      try {
        ctx.callActivity("a");
      } catch {
        yield ctx.createTimer(new Date(0));
      }
    },
    (ctx) => {
      try {
        ctx.callActivity("a");
      } catch {
        return "fine";
      }
    },
  ];
  for (const handler of swallowing) {
    const [outcome, logged] = run(handler, data);
    assert.deepEqual(outcome, { actions: [], state: "failed", error: { code: "nondeterminism", message } });
    assert.deepEqual(logged, [`orchestration p failed: ${message}`]);
  }
});

test("TaskFailedError is recognised across copies of the SDK", () => {
  const { TaskFailedError } = nimbus;
  const err = new TaskFailedError("charge", "card_declined", "no funds");
  assert.ok(err instanceof TaskFailedError);
  assert.ok(err instanceof Error);
  assert.deepEqual([err.name, err.taskName, err.code, err.detail], ["TaskFailedError", "charge", "card_declined", "no funds"]);
  assert.equal(String(err), "TaskFailedError: activity 'charge' failed: card_declined: no funds");
  const fromAnotherCopy = { [Symbol.for("nimbus.kind")]: "task-failed-error" };
  assert.ok(fromAnotherCopy instanceof TaskFailedError);
  assert.ok(!(new Error("x") instanceof TaskFailedError));
});
