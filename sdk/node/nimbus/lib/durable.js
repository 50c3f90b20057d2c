"use strict";
// Orchestrations (PROTOCOL.md §7): the worker side of the durable engine.
//
// An orchestrator is a generator function of `ctx` that yields the tasks it waits for. The instance's
// history is the truth: the worker applies its events in order, each completion settling a task, and
// resumes the generator as soon as the task it waits on settles. Between steps the worker keeps the
// suspended generator (a session), so a step usually applies its new events only; without one it
// replays the whole history. Behaviour, messages and uuids are the Python SDK's (nimbus/_durable.py).

const util = require("util");
const { KIND, kindOf } = require("./kind");
const { jsonKind, strictJson, errorLine } = require("./values");

const MAX_SESSIONS = 1000; // orchestrations a worker holds between steps; the least recently used goes first

const PENDING = 0;
const DONE = 1;
const FAILED = 2;
const UNSET = Symbol("unset");
const STATES = ["pending", "completed", "failed"];

// the history event that records each action, and the action each such event records
const RECORDED_BY = { call_activity: "task_scheduled", create_timer: "timer_created", call_sub_orchestrator: "sub_scheduled" };
const ACTION_OF = { task_scheduled: "call_activity", timer_created: "create_timer", sub_scheduled: "call_sub_orchestrator" };
const WITH_ID = new Set([
  "task_scheduled",
  "task_completed",
  "task_failed",
  "timer_created",
  "timer_fired",
  "sub_scheduled",
  "sub_completed",
  "sub_failed",
]);

const show = (value) => util.inspect(value, { depth: 1, breakLength: Infinity });
const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
// An absent field reads as null, as Python's `event.get(...)`.
const field = (event, name) => (event[name] === undefined ? null : event[name]);

/** An activity or sub-orchestration failed (after its last retry). Thrown into the orchestrator at the
 *  `yield` that waits for it, where the code may catch it: `taskName` is the activity's (or the
 *  sub-orchestrator's) name, `code` and `detail` come from its error. */
class TaskFailedError extends Error {
  constructor(taskName, code, detail, kind = "activity") {
    super(`${kind} '${taskName}' failed: ${code}: ${detail}`);
    this.name = "TaskFailedError";
    this.taskName = taskName;
    this.code = code;
    this.detail = detail;
    // Made while history is applied: its frames would be the SDK's own, never the code's.
    this.stack = `${this.name}: ${this.message}`;
  }

  // `instanceof` works across copies of the SDK (the app's own and the worker's, see kind.js).
  static [Symbol.hasInstance](value) {
    return kindOf(value) === "task-failed-error";
  }
}
TaskFailedError.prototype[KIND] = "task-failed-error";

function intervalMs(value, what) {
  if (typeof value !== "number") {
    throw new TypeError(`RetryPolicy: ${what} is a number of milliseconds, not ${show(value)}`);
  }
  if (!(value > 0 && value < Infinity)) throw new RangeError(`RetryPolicy: ${what} must be positive, not ${value}`);
  return Math.max(1, Math.round(value));
}

/** How the engine retries a failing activity: `attempts` in all (the first included), waiting
 *  `firstInterval` ms before the second, each wait `backoff` times the one before, capped at
 *  `maxInterval` ms (absent: no cap). The host runs the retries; the orchestrator sees only the
 *  outcome of the last attempt. */
class RetryPolicy {
  constructor(options) {
    if (!isObject(options)) {
      throw new TypeError("RetryPolicy takes { attempts, firstInterval, backoff, maxInterval } (intervals in ms)");
    }
    const allowed = ["attempts", "firstInterval", "backoff", "maxInterval"];
    const unknown = Object.keys(options).filter((k) => !allowed.includes(k));
    if (unknown.length) {
      throw new TypeError(`RetryPolicy: unknown option(s) ${unknown.join(", ")} (expected ${allowed.join(", ")})`);
    }
    const { attempts, firstInterval, backoff = 2, maxInterval } = options;
    if (typeof attempts !== "number" || !Number.isInteger(attempts)) {
      throw new TypeError(`RetryPolicy: attempts must be an integer >= 1 (the first attempt included), not ${show(attempts)}`);
    }
    if (attempts < 1) throw new RangeError(`RetryPolicy: attempts must be >= 1 (the first attempt included), not ${attempts}`);
    if (typeof backoff !== "number") throw new TypeError(`RetryPolicy: backoff must be a number >= 1, not ${show(backoff)}`);
    if (!(backoff >= 1 && backoff < Infinity)) throw new RangeError(`RetryPolicy: backoff must be a number >= 1, not ${backoff}`);
    this.attempts = attempts;
    this.firstInterval = intervalMs(firstInterval, "firstInterval");
    this.backoff = backoff;
    this.maxInterval = maxInterval === undefined || maxInterval === null ? null : intervalMs(maxInterval, "maxInterval");
    if (this.maxInterval !== null && this.maxInterval < this.firstInterval) {
      throw new RangeError("RetryPolicy: maxInterval must not be shorter than firstInterval");
    }
  }

  /** The action's `retry` field (PROTOCOL.md §7.2); `max_interval_ms` only when capped. */
  toJSON() {
    const out = { attempts: this.attempts, first_interval_ms: this.firstInterval, backoff: this.backoff };
    if (this.maxInterval !== null) out.max_interval_ms = this.maxInterval;
    return out;
  }
}
RetryPolicy.prototype[KIND] = "retry-policy";

// ---- Tasks ------------------------------------------------------------------------------------------

/** Something an orchestrator waits for: `yield` it to get its result (a failed task throws its
 *  TaskFailedError there instead). `isCompleted` and `isFaulted` tell how it ended; `result` is its
 *  value (undefined while pending; throws the TaskFailedError of a failed task), `exception` its error. */
class Task {
  constructor(session) {
    this._session = session;
    this._state = PENDING;
    this._value = undefined; // the result; a TaskFailedError when failed
    this._order = 0; // position in history of the event that settled it: how taskAny picks a winner
    this._parents = null; // the taskAll / taskAny tasks waiting on this one
  }

  get isCompleted() {
    return this._state !== PENDING;
  }

  get isFaulted() {
    return this._state === FAILED;
  }

  get result() {
    if (this._state === FAILED) throw this._value;
    return this._value;
  }

  get exception() {
    return this._state === FAILED ? this._value : undefined;
  }

  _settle(state, value, order) {
    this._state = state;
    this._value = value;
    this._order = order;
    const parents = this._parents;
    if (parents === null) return;
    this._parents = null;
    for (const parent of parents) if (parent._state === PENDING) parent._childSettled(this);
  }

  _watch(parent) {
    if (this._parents === null) this._parents = [parent];
    else this._parents.push(parent);
  }

  [util.inspect.custom]() {
    return `<${this.constructor.name} ${STATES[this._state]}>`;
  }
}

/** An activity, timer or sub-orchestration: an action with an id. */
class Scheduled extends Task {
  constructor(session, id, kind, name) {
    super(session);
    this._id = id;
    this._kind = kind;
    this._name = name;
  }

  _failure(error) {
    if (!isObject(error)) error = {};
    const kind = this._kind === "call_sub_orchestrator" ? "sub-orchestration" : "activity";
    return new TaskFailedError(this._name, error.code ?? "error", error.message ?? "", kind);
  }

  [util.inspect.custom]() {
    return `<${this._kind} ${this._id} ${this._name} ${STATES[this._state]}>`;
  }
}

class External extends Task {
  constructor(session, name) {
    super(session);
    this._name = name;
  }
}

/** taskAll: the children's results in their order; fails with the first child to fail (in history). */
class All extends Task {
  constructor(session, children) {
    super(session);
    this._children = children;
    let left = 0;
    let failed = null;
    for (const child of children) {
      if (child._state === PENDING) {
        left++;
        child._watch(this);
      } else if (child._state === FAILED && (failed === null || child._order < failed._order)) {
        failed = child;
      }
    }
    this._left = left;
    if (failed !== null) {
      this._settle(FAILED, failed._value, failed._order);
    } else if (left === 0) {
      let order = children.length ? 0 : session.seen;
      for (const child of children) order = Math.max(order, child._order);
      this._settle(DONE, children.map((c) => c._value), order);
    }
  }

  _childSettled(child) {
    if (child._state === FAILED) {
      this._settle(FAILED, child._value, child._order);
    } else if (--this._left === 0) {
      this._settle(DONE, this._children.map((c) => c._value), child._order);
    }
  }
}

/** taskAny: the first child to settle (in history order), failed or not. */
class Any extends Task {
  constructor(session, children) {
    super(session);
    let winner = null;
    for (const child of children) {
      if (child._state !== PENDING && (winner === null || child._order < winner._order)) winner = child;
    }
    if (winner !== null) this._settle(DONE, winner, winner._order);
    else for (const child of children) child._watch(this);
  }

  _childSettled(child) {
    this._settle(DONE, child, child._order);
  }
}

// ---- What the orchestrator sees -----------------------------------------------------------------------

function checkName(name, what) {
  if (typeof name !== "string" || name === "") {
    throw new TypeError(`ctx.${what}(): the name is a non-empty string, not ${show(name)}`);
  }
}

/** The JSON text of a value the code hands over, or a TypeError naming it. */
function jsonArg(value, what) {
  try {
    return strictJson(value);
  } catch (err) {
    throw new TypeError(`${what} is not JSON: ${err.message}`);
  }
}

const orNull = (value) => (value === undefined ? null : value);

/** The orchestrator's only argument. Everything it gives is the same on every replay: time is the
 *  history's, ids derive from the instance, and results come from history.
 *
 *    app.orchestrator(function* research(ctx) {
 *      const topic = ctx.getInput();
 *      const urls = yield ctx.callActivity("search", topic);
 *      const pages = yield ctx.taskAll(urls.map((u) => ctx.callActivity("fetch", u)));
 *      return { topic, pages: pages.length };
 *    });
 */
class OrchestrationContext {
  constructor(session) {
    this._s = session;
  }

  get instanceId() {
    return this._s.instance;
  }

  /** The instance's version stamp (PROTOCOL.md §7.1), or null. */
  get version() {
    return this._s.version;
  }

  /** True while the worker replays history it had not kept (log and cause side effects only when false). */
  get isReplaying() {
    return this._s.replaying;
  }

  /** The commit time of the event being applied, as a Date (a new one each time: yours to change). */
  get currentUtcDateTime() {
    const time = this._s.time();
    return time === null ? null : new Date(time.ms);
  }

  /** The orchestration's input (a JSON value). */
  getInput() {
    return this._s.input;
  }

  /** Runs the activity `name` with `input`; `retry`: a RetryPolicy (the host retries). */
  callActivity(name, input, options) {
    checkName(name, "callActivity");
    if (options === undefined || options === null) options = {};
    const what = `ctx.callActivity(${JSON.stringify(name)})`;
    if (!isObject(options)) throw new TypeError(`${what}: the options are an object like { retry }, not ${show(options)}`);
    const unknown = Object.keys(options).filter((k) => k !== "retry");
    if (unknown.length) throw new TypeError(`${what}: unknown option(s) ${unknown.join(", ")} (expected retry)`);
    const retry = options.retry ?? null;
    if (retry !== null && kindOf(retry) !== "retry-policy") {
      throw new TypeError(`${what}: retry is a RetryPolicy, not ${show(retry)}`);
    }
    return this._s.schedule("call_activity", name, input, retry);
  }

  /** Runs the orchestrator `name` as a child instance (`instanceId`: its id; absent lets the host choose). */
  callSubOrchestrator(name, input, instanceId) {
    checkName(name, "callSubOrchestrator");
    if (instanceId === undefined) instanceId = null;
    if (instanceId !== null && (typeof instanceId !== "string" || instanceId === "")) {
      throw new TypeError(
        `ctx.callSubOrchestrator(${JSON.stringify(name)}): instanceId is a non-empty string, not ${show(instanceId)}`,
      );
    }
    return this._s.schedule("call_sub_orchestrator", name, input, instanceId);
  }

  /** A task that completes at `fireAt` (a Date). */
  createTimer(fireAt) {
    if (Object.prototype.toString.call(fireAt) !== "[object Date]" || Number.isNaN(fireAt.getTime())) {
      throw new TypeError(
        `ctx.createTimer() takes a valid Date, not ${show(fireAt)} ` +
          "(write new Date(ctx.currentUtcDateTime.getTime() + ms))",
      );
    }
    return this._s.schedule("create_timer", formatTime(fireAt.getTime(), 0), null, null);
  }

  /** A task that completes with the data of the next event `name` raised to this instance that no
   *  earlier wait took (in history order). */
  waitForExternalEvent(name) {
    checkName(name, "waitForExternalEvent");
    return this._s.wait(name);
  }

  /** A task that completes with the array of the tasks' results (in their order), or fails as soon as
   *  one of them fails. */
  taskAll(tasks) {
    return new All(this._s, this._children(tasks, "taskAll"));
  }

  /** A task that completes with the first of the tasks to complete (read its `.result`), in history order. */
  taskAny(tasks) {
    const children = this._children(tasks, "taskAny");
    if (children.length === 0) throw new RangeError("ctx.taskAny() needs at least one task");
    return new Any(this._s, children);
  }

  /** A JSON value the host shows in the instance's status. */
  setCustomStatus(value) {
    jsonArg(value, "ctx.setCustomStatus(): the value");
    this._s.customStatus = orNull(value);
  }

  /** When the orchestrator returns, start it over with `input` and a fresh history. */
  continueAsNew(input) {
    jsonArg(input, "ctx.continueAsNew(): the input");
    this._s.continueInput = orNull(input);
  }

  /** A UUID (string) that is the same on every replay: uuid5 of the instance id, the current time and a
   *  counter, as the Python SDK makes it. */
  newUuid() {
    const s = this._s;
    const time = s.time();
    if (time === null) throw new Error("ctx.newUuid(): the history gives no time yet");
    const name = `${s.instance}_${formatTime(time.ms, time.micro)}_${s.uuids}`;
    s.uuids++;
    return uuid5(URL_NAMESPACE, name);
  }

  _children(tasks, what) {
    if (tasks === null || tasks === undefined || typeof tasks[Symbol.iterator] !== "function") {
      throw new TypeError(`ctx.${what}() takes an array of tasks, not ${show(tasks)}`);
    }
    const children = Array.from(tasks);
    for (const child of children) {
      if (!(child instanceof Task) || child._session !== this._s) {
        throw new TypeError(`ctx.${what}() takes tasks made by this ctx, not ${show(child)}`);
      }
    }
    return children;
  }

  [util.inspect.custom]() {
    return `OrchestrationContext(${JSON.stringify(this._s.instance)})`;
  }
}

/** The code asked for something else than history recorded. Code may catch it; the session notes the
 *  mismatch anyway and fails the orchestration. */
class NondeterminismError extends Error {
  constructor(message) {
    super(message);
    this.name = "NondeterminismError";
  }
}

const GENERATORS = "orchestrators are generator functions (function* (ctx) { ... } with yield)";

function notATask(value) {
  return new TypeError(
    "an orchestrator yields tasks made by its ctx (ctx.callActivity(...), ctx.createTimer(...), " +
      `ctx.taskAll(...), ...), not ${show(value)}`,
  );
}

/** How a scheduling event is named in a nondeterminism message: its name, a timer's fire_at. */
function label(event) {
  return event.type === "timer_created" ? event.fire_at : event.name;
}

function mismatch(id, event, kind, name) {
  const asks = kind === null ? "nothing" : `${kind} ${name}`;
  return `step ${id}: history has ${event.type} ${label(event)}, the code now asks for ${asks}`;
}

/** The scheduling event records this action: same kind, and same name (timers have none to compare). */
function matches(kind, name, event) {
  if (event.type !== RECORDED_BY[kind]) return false;
  return kind === "create_timer" || event.name === name;
}

// ---- One instance -------------------------------------------------------------------------------------

/** The step's data is not what PROTOCOL.md §7.1 describes (answered 400 invalid_envelope). */
class StepError extends Error {
  constructor(message) {
    super(message);
    this.name = "StepError";
  }
}

/** One orchestration instance as the worker holds it between steps: the suspended generator, the tasks
 *  it may still wait on, and how far into the history it is. */
class Session {
  constructor(fn, instance, version, execution, log) {
    this.fn = fn;
    this.instance = instance;
    this.version = version;
    this.execution = execution;
    this.log = log;
    this.ctx = new OrchestrationContext(this);
    this.gen = null;
    this.began = false; // a `started` event was applied
    this.input = null;
    this.firstAt = null; // the `started` event's `at`: tells generations of one instance id apart
    this.seen = 0; // history events applied
    this.at = null; // the `at` of the event being applied, as sent
    this.parsed = { at: null, time: null }; // the last `at` parsed
    this.replaying = false;
    this.nextId = 0; // the id of the next action the code asks for
    this.pending = new Map(); // id -> Scheduled task not settled yet
    this.ahead = new Map(); // id -> scheduling event in history the code has not asked for yet
    this.unconfirmed = new Map(); // id -> [kind, name] of actions answered that history does not show yet
    this.waits = new Map(); // event name -> External tasks waiting for it, oldest first
    this.raised = new Map(); // event name -> [data, order] no wait has taken yet, oldest first
    this.waiting = null; // the task the generator is suspended on
    this.actions = []; // this step's new actions
    this.state = "running";
    this.result = null; // the output, error or next input, by state
    this.customStatus = UNSET;
    this.continueInput = UNSET;
    this.broken = null; // the nondeterminism message
    this.uuids = 0;
  }

  /** The time of the event being applied, { ms, micro } (micro: the microseconds past ms), or null. */
  time() {
    const parsed = this.parsed;
    if (parsed.at !== this.at) {
      parsed.time = parseTime(this.at);
      parsed.at = this.at;
    }
    return parsed.time;
  }

  /** Whether this session can take a step that starts at `pastLength` events without replay. */
  resumes(fn, execution, pastLength, past) {
    if (this.fn !== fn || this.execution !== execution) return false;
    if (past !== null && pastLength && (!isObject(past[0]) || orNull(past[0].at) !== this.firstAt)) {
      return false; // another generation of the same instance id
    }
    if (pastLength === this.seen) return true;
    // The host may count the scheduling events it wrote for our last actions without sending them.
    if (this.unconfirmed.size && pastLength === this.seen + this.unconfirmed.size) {
      this.seen = pastLength;
      this.unconfirmed.clear();
      return true;
    }
    return false;
  }

  /** Applies `past` (replaying) then `newEvents`: the step's outcome (PROTOCOL.md §7.1). */
  run(past, newEvents) {
    this.actions = [];
    if (past) this._index(past);
    this._index(newEvents);
    if (this.broken === null) {
      if (past) {
        this.replaying = true;
        this._apply(past);
        this.replaying = false;
      }
      this._apply(newEvents);
    }
    if (this.ahead.size && this.broken === null && this.state !== "failed") {
      let id = Infinity; // history holds actions the code did not ask for: the first one is named
      for (const key of this.ahead.keys()) id = Math.min(id, key);
      this._break(mismatch(id, this.ahead.get(id), null, null));
    }
    return this._outcome();
  }

  /** Checks the events' shape and notes the scheduling events, so each action the code asks for is
   *  checked against history when asked (§7.3). */
  _index(events) {
    for (const event of events) {
      if (!isObject(event)) {
        throw new StepError(`an orchestration event is an object with a type, not ${jsonKind(event)}`);
      }
      const kind = event.type;
      if (WITH_ID.has(kind)) {
        const id = event.id;
        if (!Number.isInteger(id)) throw new StepError(`a ${kind} event needs an integer id, not ${show(id)}`);
        if (ACTION_OF[kind] === undefined) continue;
        const asked = this.unconfirmed.get(id);
        if (asked !== undefined) {
          this.unconfirmed.delete(id);
          if (!matches(asked[0], asked[1], event) && this.broken === null) {
            this._break(mismatch(id, event, asked[0], asked[1]));
          }
        } else if (id >= this.nextId && !this.ahead.has(id)) {
          this.ahead.set(id, event);
        }
      } else if (kind === "event_raised" && typeof event.name !== "string") {
        throw new StepError(`an event_raised event needs a string name, not ${show(event.name)}`);
      }
    }
  }

  _apply(events) {
    for (const event of events) {
      if (this.state !== "running") return;
      this.seen++;
      if (event.at !== undefined && event.at !== null) this.at = event.at;
      const handler = HANDLERS.get(event.type);
      if (handler !== undefined) handler.call(this, event);
    }
  }

  // event handlers

  _started(event) {
    if (this.began) return; // a second `started`: nothing to start
    this.began = true;
    this.firstAt = orNull(event.at);
    this.input = field(event, "input");
    if (this.version === null) this.version = field(event, "version");
    const handler = this.fn.handler;
    let result;
    try {
      result = handler(this.ctx);
    } catch (err) {
      if (this.broken !== null) this._break(this.broken);
      else this._fail(err);
      return;
    }
    const object = result !== null && typeof result === "object";
    if (object && (typeof result.then === "function" || Symbol.asyncIterator in result)) {
      const promise = typeof result.then === "function";
      if (promise) result.then(null, () => {}); // no unhandled rejection on top of the failure
      const name = JSON.stringify(this.fn.name);
      const what = promise ? "a Promise" : "an async iterator";
      this._fail(new TypeError(`orchestrator ${name} returned ${what}: ${GENERATORS}`));
    } else if (object && typeof result.next === "function" && typeof result.throw === "function") {
      this.gen = result;
      this._drive(false, undefined);
    } else {
      this._finish(result);
    }
  }

  _completed(event) {
    this._settleEvent(event, DONE, field(event, "result"));
  }

  _failed(event) {
    this._settleEvent(event, FAILED, event.error);
  }

  _fired(event) {
    this._settleEvent(event, DONE, null);
  }

  _raised(event) {
    const name = event.name;
    const waits = this.waits.get(name);
    if (waits && waits.length) {
      waits.shift()._settle(DONE, field(event, "data"), this.seen);
      this._wake();
    } else {
      let raised = this.raised.get(name);
      if (raised === undefined) this.raised.set(name, (raised = []));
      raised.push([field(event, "data"), this.seen]);
    }
  }

  _settleEvent(event, state, value) {
    const task = this.pending.get(event.id);
    if (task === undefined) return; // not asked for: a duplicate, or divergent code (then `ahead` says so)
    this.pending.delete(event.id);
    task._settle(state, state === FAILED ? task._failure(value) : value, this.seen);
    this._wake();
  }

  // the generator

  _wake() {
    const waiting = this.waiting;
    if (waiting !== null && waiting._state !== PENDING) {
      this.waiting = null;
      this._drive(waiting._state === FAILED, waiting._value);
    }
  }

  /** Resumes the generator (with `arg`, or throwing it) and runs it until it waits on a pending task
   *  or ends. */
  _drive(throwing, arg) {
    const gen = this.gen;
    for (;;) {
      let step;
      try {
        step = throwing ? gen.throw(arg) : gen.next(arg);
      } catch (err) {
        if (this.broken !== null) this._break(this.broken);
        else this._fail(err);
        return;
      }
      if (this.broken !== null) {
        this._break(this.broken); // the code caught the nondeterminism error
        return;
      }
      if (step.done) {
        this._finish(step.value);
        return;
      }
      const task = step.value;
      if (task instanceof Task && task._session === this) {
        if (task._state === PENDING) {
          this.waiting = task;
          return;
        }
        throwing = task._state === FAILED;
        arg = task._value;
      } else {
        throwing = true;
        arg = notATask(task);
      }
    }
  }

  /** The code asks for an action: checked against history when history has it, else a new action.
   *  The input is checked first either way, so a replay refuses what the live run refused. */
  schedule(kind, name, input, extra) {
    const action = newAction(kind, this.nextId, name, input, extra);
    const id = this.nextId;
    const event = this.ahead.get(id);
    if (event !== undefined) {
      this.ahead.delete(id);
      if (!matches(kind, name, event)) {
        this.broken = mismatch(id, event, kind, name);
        throw new NondeterminismError(this.broken);
      }
    } else {
      this.actions.push(action);
      this.unconfirmed.set(id, [kind, name]);
    }
    this.nextId = id + 1;
    const task = new Scheduled(this, id, kind, name);
    this.pending.set(id, task);
    return task;
  }

  wait(name) {
    const task = new External(this, name);
    const raised = this.raised.get(name);
    if (raised && raised.length) {
      const [data, order] = raised.shift();
      task._settle(DONE, data, order);
    } else {
      let waits = this.waits.get(name);
      if (waits === undefined) this.waits.set(name, (waits = []));
      waits.push(task);
    }
    return task;
  }

  // endings

  _finish(value) {
    if (this.broken !== null) {
      this._break(this.broken); // the code caught the nondeterminism error and returned
      return;
    }
    if (this.continueInput !== UNSET) {
      this.state = "continued_as_new";
      this.result = this.continueInput;
      return;
    }
    try {
      strictJson(value);
    } catch (err) {
      this._fail(new TypeError(`the orchestrator's output is not JSON: ${err.message}`));
      return;
    }
    this.state = "completed";
    this.result = orNull(value);
  }

  _fail(err) {
    const trace = (err && err.stack) || errorLine(err);
    this.log.error(`orchestration ${this.instance} failed: the orchestrator raised an error\n${trace}`);
    this.state = "failed";
    this.result = { code: "orchestrator_error", message: errorLine(err) };
  }

  _break(message) {
    this.broken = message;
    this.state = "failed";
    this.result = { code: "nondeterminism", message };
    this.log.error(`orchestration ${this.instance} failed: ${message}`);
    this.close();
  }

  _outcome() {
    const out = { actions: this.broken !== null ? [] : this.actions, state: this.state };
    if (this.customStatus !== UNSET) out.custom_status = this.customStatus;
    if (this.state === "completed") out.output = this.result;
    else if (this.state === "failed") out.error = this.result;
    else if (this.state === "continued_as_new") out.input = this.result;
    return out;
  }

  /** Drops the suspended generator (its `finally` blocks run now rather than never). */
  close() {
    const gen = this.gen;
    this.gen = null;
    this.waiting = null;
    if (gen === null) return;
    try {
      gen.return(undefined);
    } catch {
      // a `finally` that throws, or a generator still running: nothing more to do
    }
  }
}

const HANDLERS = new Map([
  ["started", Session.prototype._started],
  ["task_completed", Session.prototype._completed],
  ["task_failed", Session.prototype._failed],
  ["timer_fired", Session.prototype._fired],
  ["sub_completed", Session.prototype._completed],
  ["sub_failed", Session.prototype._failed],
  ["event_raised", Session.prototype._raised],
]);

/** A new action as answered to the host (PROTOCOL.md §7.2); its input checked to be JSON. */
function newAction(kind, id, name, input, extra) {
  if (kind === "create_timer") return { type: kind, id, fire_at: name };
  const camel = kind === "call_activity" ? "callActivity" : "callSubOrchestrator";
  jsonArg(input, `ctx.${camel}(${JSON.stringify(name)}): the input`);
  const action = { type: kind, id, name, input: orNull(input) };
  if (extra !== null) {
    if (kind === "call_activity") action.retry = extra.toJSON();
    else action.instance = extra;
  }
  return action;
}

// ---- The worker's sessions ------------------------------------------------------------------------------

/** The orchestrations a worker holds between steps, keyed by instance id, least recently used first. */
class Sessions {
  constructor(limit = MAX_SESSIONS) {
    this.limit = limit;
    this.held = new Map();
  }

  /** Runs one step (PROTOCOL.md §7.1): the answer; throws a StepError when `data` is no step. `log`:
   *  the invocation's logger. */
  step(fn, data, log) {
    const parsed = parseStep(data);
    const { instance, execution, pastLength } = parsed;
    let past = parsed.past;
    const held = this.held;
    let session = held.get(instance) ?? null;
    held.delete(instance);
    if (session !== null && !session.resumes(fn, execution, pastLength, past)) {
      session.close();
      session = null;
    }
    if (session === null) {
      if (past === null && pastLength) return { need_history: true };
      session = new Session(fn, instance, parsed.version, execution, log);
    } else {
      session.log = log;
      past = null; // held at past_length: nothing to replay
    }
    let outcome;
    try {
      outcome = session.run(past, parsed.newEvents);
    } catch (err) {
      session.close();
      throw err;
    }
    if (session.state === "running") {
      held.set(instance, session);
      if (held.size > this.limit) {
        const [oldest, dropped] = held.entries().next().value;
        held.delete(oldest);
        dropped.close();
      }
    }
    return outcome;
  }

  get size() {
    return this.held.size;
  }
}

function parseStep(data) {
  if (!isObject(data)) {
    throw new StepError(
      `an orchestrator step's data is an object like {"instance", "past_length", "past", "new"}, not ${jsonKind(data)}`,
    );
  }
  const instance = data.instance;
  if (typeof instance !== "string" || instance === "") {
    throw new StepError(`the step's instance must be a non-empty string, not ${show(instance)}`);
  }
  const pastLength = data.past_length ?? 0;
  if (!Number.isInteger(pastLength) || pastLength < 0) {
    throw new StepError(`the step's past_length must be an integer >= 0, not ${show(pastLength)}`);
  }
  const past = orNull(data.past);
  if (past !== null) {
    if (!Array.isArray(past)) throw new StepError(`the step's past must be an array of events or null, not ${jsonKind(past)}`);
    if (past.length !== pastLength) {
      throw new StepError(`the step's past has ${past.length} events but past_length says ${pastLength}`);
    }
  }
  const newEvents = orNull(data.new) ?? [];
  if (!Array.isArray(newEvents)) throw new StepError(`the step's new must be an array of events, not ${jsonKind(newEvents)}`);
  return { instance, version: orNull(data.version), execution: orNull(data.execution), pastLength, past, newEvents };
}

// ---- Time and uuids -------------------------------------------------------------------------------------

const RFC3339 = /^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):?(\d\d))?$/;
const DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

function daysIn(year, month) {
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  return month === 2 && leap ? 29 : DAYS[month - 1];
}

/** An RFC 3339 time (any number of fraction digits; no offset means UTC) as { ms, micro }: the epoch
 *  milliseconds and the microseconds past them, as precise as Python's datetime. Null stays null. */
function parseTime(text) {
  if (text === null) return null;
  const match = typeof text === "string" ? RFC3339.exec(text) : null;
  const bad = () => new RangeError(`the event time ${show(text)} is not an RFC 3339 time`);
  if (match === null) throw bad();
  const [year, month, day, hour, minute, second] = match.slice(1, 7).map(Number);
  const [fraction, , sign, offH, offM] = match.slice(7);
  if (month < 1 || month > 12 || day < 1 || day > daysIn(year, month) || hour > 23 || minute > 59) throw bad();
  const micros = fraction ? Number(fraction.slice(0, 6).padEnd(6, "0")) : 0;
  const date = new Date(Date.UTC(2000, month - 1, day, hour, minute, Math.min(second, 59)));
  date.setUTCFullYear(year); // Date.UTC reads years 0-99 as 1900-1999
  let ms = date.getTime() + Math.floor(micros / 1000);
  if (sign) ms += (sign === "+" ? -1 : 1) * (Number(offH) * 60 + Number(offM)) * 60000;
  return { ms, micro: micros % 1000 };
}

const pad = (n, width) => String(n).padStart(width, "0");

/** RFC 3339 in UTC with a `Z` (microseconds only when there are some), as the Python SDK writes it. */
function formatTime(ms, micro) {
  const d = new Date(ms);
  const text =
    `${pad(d.getUTCFullYear(), 4)}-${pad(d.getUTCMonth() + 1, 2)}-${pad(d.getUTCDate(), 2)}` +
    `T${pad(d.getUTCHours(), 2)}:${pad(d.getUTCMinutes(), 2)}:${pad(d.getUTCSeconds(), 2)}`;
  const fraction = d.getUTCMilliseconds() * 1000 + micro;
  return `${text}${fraction ? `.${pad(fraction, 6)}` : ""}Z`;
}

const URL_NAMESPACE = Buffer.from("6ba7b8119dad11d180b400c04fd430c8", "hex"); // RFC 4122's NAMESPACE_URL

/** RFC 4122 version 5 (SHA-1) uuid of `name` in `namespace`: Python's uuid.uuid5. */
function uuid5(namespace, name) {
  const { createHash } = require("crypto");
  const hash = createHash("sha1").update(namespace).update(name, "utf8").digest();
  hash[6] = (hash[6] & 0x0f) | 0x50;
  hash[8] = (hash[8] & 0x3f) | 0x80;
  const hex = hash.toString("hex", 0, 16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

module.exports = {
  OrchestrationContext,
  RetryPolicy,
  Sessions,
  StepError,
  Task,
  TaskFailedError,
  MAX_SESSIONS,
  formatTime,
  parseTime,
  uuid5,
};
