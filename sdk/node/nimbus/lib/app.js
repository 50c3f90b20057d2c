"use strict";
// App: the registry of an entry file's functions. Registration checks everything it can (names,
// routes, methods, collisions, trigger fields) and throws at once, so a bad entry fails at start-up,
// not per request. The index lists the triggers with PROTOCOL.md §2's snake_case fields.

const { KIND } = require("./kind");
const { compileRoute, matchRoute, compareSpecificity } = require("./routes");

const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const METHOD = /^[A-Z][A-Z0-9!#$%&'*+.^_`|~-]*$/;

/** "/api/chat" → "api-chat", "/items/{id}" → "items-id", "/" → "root". */
function nameFromRoute(route) {
  const name = route
    .split("/")
    .filter((s) => s !== "" && s !== "*")
    .map((s) => s.replace(/[{}]/g, ""))
    .join("-")
    .replace(/[^A-Za-z0-9_-]+/g, "-")
    .replace(/-+/g, "-")
    .replace(/^-|-$/g, "");
  return name || "root";
}

function normalizeMethods(methods, route) {
  if (methods === undefined || methods === null) return [];
  const list = typeof methods === "string" ? [methods] : methods;
  if (!Array.isArray(list)) {
    throw new TypeError(`nimbus: methods of "${route}" must be an array of strings, like ["GET", "POST"]`);
  }
  const out = [];
  for (const m of list) {
    const up = typeof m === "string" ? m.toUpperCase() : m;
    if (typeof up !== "string" || !METHOD.test(up)) {
      throw new TypeError(`nimbus: ${JSON.stringify(m)} in methods of "${route}" is not an HTTP method`);
    }
    if (!out.includes(up)) out.push(up);
  }
  return out;
}

const QUEUE = /^[a-z0-9-]{1,63}$/;
const DOCS_CONTAINER = /^[a-z0-9_-]{1,63}$/;
const BLOB_CONTAINER = /^(?:\$web|[a-z0-9](?:[a-z0-9-]{1,61})[a-z0-9])$/;
const STARTS = ["now", "beginning"];

/** `app.queue("jobs", ...)`, or `app.queue(...)` when the first argument is no string. */
function describe(method, value) {
  return typeof value === "string" ? `app.${method}(${JSON.stringify(value)}, ...)` : `app.${method}(...)`;
}

function show(value) {
  if (typeof value === "function") return `a function${value.name ? ` (${value.name})` : ""}`;
  if (typeof value === "bigint") return `${value}n`;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

function stringArg(value, what, argument, example) {
  if (typeof value !== "string") {
    throw new TypeError(`nimbus: ${what}: ${argument} must be a string, like ${example}, not ${show(value)}`);
  }
  return value;
}

function intArg(value, what, argument, low, high) {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new TypeError(`nimbus: ${what}: ${argument} must be an integer from ${low} to ${high}, not ${show(value)}`);
  }
  if (value < low || value > high) {
    throw new RangeError(`nimbus: ${what}: ${argument} must be from ${low} to ${high}, not ${value}`);
  }
  return value;
}

/** Splits `(options, handler)` or `(handler)` and checks the options' names against `allowed`. */
function optionsAndHandler(what, options, handler, allowed) {
  if (typeof options === "function" && handler === undefined) {
    handler = options;
    options = {};
  }
  if (typeof handler !== "function") {
    throw new TypeError(`nimbus: ${what} needs a handler function as its last argument`);
  }
  if (options === undefined || options === null) options = {};
  if (typeof options !== "object" || Array.isArray(options)) {
    throw new TypeError(`nimbus: the options of ${what} must be an object like { ${allowed[allowed.length - 1]}: ... }`);
  }
  const unknown = Object.keys(options).filter((k) => !allowed.includes(k));
  if (unknown.length) {
    throw new TypeError(`nimbus: unknown option(s) ${unknown.join(", ")} for ${what} (expected ${allowed.join(", ")})`);
  }
  return { options, handler };
}

function checkName(name) {
  if (typeof name !== "string" || !NAME.test(name)) {
    throw new TypeError(
      `nimbus: function name ${show(name)} must be 1 to 128 letters, digits, "_", "-" or ".", starting with a letter, digit or "_"`,
    );
  }
  return name;
}

/** A non-HTTP function's name: `options.name`, else the handler's own name. */
function functionName(what, options, handler) {
  if (options.name !== undefined && options.name !== null) return checkName(options.name);
  if (typeof handler.name === "string" && NAME.test(handler.name)) return handler.name;
  throw new TypeError(
    `nimbus: ${what} needs a function name: pass { name: "..." } or a named function (async function onJob(data, ctx) {})`,
  );
}

function isAsyncGeneratorFunction(fn) {
  return Object.prototype.toString.call(fn) === "[object AsyncGeneratorFunction]";
}

function isAsyncFunction(fn) {
  return isAsyncGeneratorFunction(fn) || Object.prototype.toString.call(fn) === "[object AsyncFunction]";
}

function overlaps(a, b) {
  return a.length === 0 || b.length === 0 || a.some((m) => b.includes(m));
}

class App {
  constructor() {
    /** @type {Array<{name: string, trigger: object, handler: Function, compiled?: object}>} */
    this._functions = [];
  }

  /**
   * Declares an HTTP function.
   *   app.http("/hello", { methods: ["GET"], name: "hello" }, async (req, ctx) => ...)
   *   app.http("/hello", async (req, ctx) => ...)
   */
  http(route, options, handler) {
    if (typeof options === "function" && handler === undefined) {
      handler = options;
      options = {};
    }
    if (typeof handler !== "function") {
      throw new TypeError(`nimbus: app.http("${route}", ...) needs a handler function as its last argument`);
    }
    if (options === undefined || options === null) options = {};
    if (typeof options !== "object" || Array.isArray(options)) {
      throw new TypeError(`nimbus: the options of app.http("${route}", ...) must be an object like { methods: ["GET"] }`);
    }
    const unknown = Object.keys(options).filter((k) => k !== "methods" && k !== "name");
    if (unknown.length) {
      throw new TypeError(`nimbus: unknown option(s) ${unknown.join(", ")} for app.http("${route}", ...) (expected methods, name)`);
    }
    const compiled = compileRoute(route);
    const methods = normalizeMethods(options.methods, route);
    let name = options.name;
    if (name === undefined || name === null) {
      name = typeof handler.name === "string" && NAME.test(handler.name) ? handler.name : nameFromRoute(route);
    } else {
      checkName(name);
    }
    for (const other of this._functions) {
      if (other.compiled && other.compiled.shape === compiled.shape && overlaps(other.trigger.methods, methods)) {
        throw new Error(
          `nimbus: route "${route}" (function "${name}") overlaps route "${other.trigger.route}" of function "${other.name}" for the same methods`,
        );
      }
    }
    // frozen: ctx.trigger hands the same object to every invocation
    const trigger = Object.freeze({ type: "http", route, methods: Object.freeze(methods) });
    this._register({ name, trigger, handler, compiled });
    return this;
  }

  // Declares a function run on a schedule: six cron fields with seconds, as Azure's NCRONTAB.
  //   app.timer("0 */5 * * * *", { name, runOnStartup, timeZone }, async (data, ctx) => ...)
  timer(schedule, options, handler) {
    const what = describe("timer", schedule);
    stringArg(schedule, what, "schedule", '"0 */5 * * * *"');
    ({ options, handler } = optionsAndHandler(what, options, handler, ["name", "runOnStartup", "timeZone"]));
    const fields = schedule.trim().split(/\s+/).filter(Boolean);
    if (fields.length !== 6) {
      throw new RangeError(
        `nimbus: ${what}: schedule must be six space-separated fields (second minute hour day month day-of-week), like "0 */5 * * * *"; it has ${fields.length}`,
      );
    }
    const runOnStartup = options.runOnStartup ?? false;
    if (typeof runOnStartup !== "boolean") {
      throw new TypeError(`nimbus: ${what}: runOnStartup must be true or false, not ${show(runOnStartup)}`);
    }
    const trigger = { type: "timer", schedule: fields.join(" "), run_on_startup: runOnStartup };
    if (options.timeZone !== undefined && options.timeZone !== null) {
      stringArg(options.timeZone, what, "timeZone", '"Europe/Paris"');
      if (options.timeZone === "" || /\s/.test(options.timeZone)) {
        throw new RangeError(`nimbus: ${what}: timeZone must be an IANA name like "Europe/Paris", not ${show(options.timeZone)}`);
      }
      trigger.time_zone = options.timeZone;
    }
    return this._declare(what, trigger, options, handler);
  }

  /**
   * Declares a function run for the messages of a queue, up to `batchSize` (1 to 32) at a time.
   *   app.queue("jobs", { name, batchSize }, async (data, ctx) => ...)
   */
  queue(queue, options, handler) {
    const what = describe("queue", queue);
    stringArg(queue, what, "queue", '"jobs"');
    ({ options, handler } = optionsAndHandler(what, options, handler, ["name", "batchSize"]));
    if (!QUEUE.test(queue)) {
      throw new RangeError(`nimbus: ${what}: ${show(queue)} is not a queue name (1-63 lowercase letters, digits and "-")`);
    }
    const batchSize = intArg(options.batchSize ?? 1, what, "batchSize", 1, 32);
    return this._declare(what, { type: "queue", queue, batch_size: batchSize }, options, handler);
  }

  /**
   * Declares a function run when an object is created or updated under `"<container>/<pattern>"`.
   *   app.blob("uploads/{name}", { name }, async (data, ctx) => ...)
   */
  blob(path, options, handler) {
    const what = describe("blob", path);
    stringArg(path, what, "path", '"uploads/{name}"');
    ({ options, handler } = optionsAndHandler(what, options, handler, ["name"]));
    const slash = path.indexOf("/");
    const container = slash < 0 ? "" : path.slice(0, slash);
    const pattern = slash < 0 ? "" : path.slice(slash + 1);
    if (!container) {
      throw new RangeError(`nimbus: ${what}: path ${show(path)} must be "<container>/<pattern>", like "uploads/{name}"`);
    }
    if (!BLOB_CONTAINER.test(container)) {
      throw new RangeError(
        `nimbus: ${what}: ${show(container)} is not a blob container name (3-63 lowercase letters, digits and "-", not starting or ending with "-")`,
      );
    }
    if (!pattern || pattern.startsWith("/")) {
      throw new RangeError(`nimbus: ${what}: path ${show(path)} needs a pattern after "${container}/", like "${container}/{name}"`);
    }
    return this._declare(what, { type: "blob", path }, options, handler);
  }

  /**
   * Declares a function run for the change feed of a docs container, up to `batchSize` (1 to 1000)
   * changes at a time, from `start`: "now" (default) or "beginning".
   *   app.docsChanges("conversations", { name, batchSize, start }, async (data, ctx) => ...)
   */
  docsChanges(container, options, handler) {
    const what = describe("docsChanges", container);
    stringArg(container, what, "container", '"conversations"');
    ({ options, handler } = optionsAndHandler(what, options, handler, ["name", "batchSize", "start"]));
    if (!DOCS_CONTAINER.test(container)) {
      throw new RangeError(
        `nimbus: ${what}: ${show(container)} is not a docs container name (1-63 lowercase letters, digits, "-" and "_")`,
      );
    }
    const batchSize = intArg(options.batchSize ?? 100, what, "batchSize", 1, 1000);
    const start = options.start ?? "now";
    if (typeof start !== "string") {
      throw new TypeError(`nimbus: ${what}: start must be "now" or "beginning", not ${show(start)}`);
    }
    if (!STARTS.includes(start)) {
      throw new RangeError(`nimbus: ${what}: start must be "now" or "beginning", not ${show(start)}`);
    }
    return this._declare(what, { type: "docs_changes", container, batch_size: batchSize, start }, options, handler);
  }

  /**
   * Declares an activity of the durable engine.
   *   app.activity("charge-card", async (data, ctx) => ...)   // or app.activity(async function chargeCard() {})
   */
  activity(name, options, handler) {
    return this._durable("activity", name, options, handler);
  }

  /**
   * Declares an orchestrator of the durable engine: a generator function of `ctx` that yields the
   * tasks it waits for and returns the orchestration's output (a plain function that returns at once
   * works too). The engine replays it against the orchestration's history, so it must be
   * deterministic and synchronous: async functions are refused; time, ids and I/O come from `ctx` or
   * from activities.
   *   app.orchestrator("research", function* (ctx) { const urls = yield ctx.callActivity("search", ctx.getInput()); ... })
   *   app.orchestrator(function* research(ctx) { ... })
   */
  orchestrator(name, options, handler) {
    return this._durable("orchestrator", name, options, handler);
  }

  /** `app.activity` and `app.orchestrator`: named by their first argument, or by a named handler alone. */
  _durable(type, name, options, handler) {
    if (typeof name === "function" && options === undefined && handler === undefined) {
      return this._declare(`app.${type}(...)`, { type }, {}, name);
    }
    const what = describe(type, name);
    ({ options, handler } = optionsAndHandler(what, options, handler, ["name"]));
    if (options.name !== undefined && options.name !== null && options.name !== name) {
      throw new TypeError(`nimbus: ${what}: the name is given twice (${show(name)} and { name: ${show(options.name)} })`);
    }
    return this._declare(what, { type }, { name: checkName(name) }, handler);
  }

  /** Registers a non-HTTP function (its handler takes `(data, ctx)`; an orchestrator's, `(ctx)`). */
  _declare(what, trigger, options, handler) {
    if (trigger.type === "orchestrator" && isAsyncFunction(handler)) {
      const named = [options.name, handler.name].find((n) => typeof n === "string" && /^[A-Za-z_$][\w$]*$/.test(n));
      throw new TypeError(
        `nimbus: ${what}: the handler is an async function; an orchestrator is replayed and must be ` +
          `deterministic and synchronous: write \`function* ${named ?? "orchestrator"}(ctx) { ... }\` and yield its tasks ` +
          "(`const result = yield ctx.callActivity(...)`), and do the async work in activities",
      );
    }
    if (isAsyncGeneratorFunction(handler)) {
      throw new TypeError(`nimbus: ${what}: the handler is an async generator; a ${trigger.type} function returns one JSON value`);
    }
    const name = functionName(what, options, handler);
    this._register({ name, trigger: Object.freeze(trigger), handler });
    return this;
  }

  /** Registers a function with any trigger. */
  _register(fn) {
    if (this._functions.some((f) => f.name === fn.name)) {
      const route = fn.trigger.route ? ` (route "${fn.trigger.route}")` : "";
      throw new Error(`nimbus: a function named "${fn.name}" is already registered${route}; pass { name: "..." } to tell them apart`);
    }
    this._functions.push(fn);
  }

  /** The functions as the index lists them (PROTOCOL.md §2). */
  get functions() {
    return this._functions.map((f) => ({ name: f.name, trigger: { ...f.trigger } }));
  }

  /** The function registered under `name`, or undefined. */
  _find(name) {
    return this._functions.find((f) => f.name === name);
  }

  /** Routes `method path` to an HTTP function: `{ fn, params }`, `{ status: 405, allow }` when the
   *  path matches but not the method, or `{ status: 404 }`. HEAD is accepted where GET is. */
  _route(method, path) {
    const candidates = [];
    for (const fn of this._functions) {
      if (fn.trigger.type !== "http") continue;
      const params = matchRoute(fn.compiled, path);
      if (params) candidates.push({ fn, params });
    }
    if (candidates.length === 0) return { status: 404 };
    candidates.sort((a, b) => compareSpecificity(a.fn.compiled, b.fn.compiled));
    const allows = (fn) => {
      const ms = fn.trigger.methods;
      return ms.length === 0 || ms.includes(method) || (method === "HEAD" && ms.includes("GET"));
    };
    const hit = candidates.find((c) => allows(c.fn));
    if (hit) return hit;
    const allow = [...new Set(candidates.flatMap((c) => c.fn.trigger.methods))];
    return { status: 405, allow };
  }
}
App.prototype[KIND] = "app";

module.exports = { App, nameFromRoute };
