"use strict";
// App: the registry of an entry file's functions. Registration checks everything it can (names,
// routes, methods, collisions) and throws at once, so a bad entry fails at start-up, not per request.

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
    } else if (typeof name !== "string" || !NAME.test(name)) {
      throw new TypeError(
        `nimbus: function name ${JSON.stringify(name)} must be 1 to 128 letters, digits, "_", "-" or ".", starting with a letter, digit or "_"`,
      );
    }
    for (const other of this._functions) {
      if (other.compiled && other.compiled.shape === compiled.shape && overlaps(other.trigger.methods, methods)) {
        throw new Error(
          `nimbus: route "${route}" (function "${name}") overlaps route "${other.trigger.route}" of function "${other.name}" for the same methods`,
        );
      }
    }
    this._register({ name, trigger: { type: "http", route, methods }, handler, compiled });
    return this;
  }

  /** Registers a function with any trigger. Internal: non-HTTP triggers get their own public
   *  methods as the platform grows them; this is where they land. */
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
