"use strict";
// Route patterns (PROTOCOL.md §2): literal segments, `{param}` segments and an optional trailing `*`
// that matches the rest of the path, possibly empty. Compiled once at registration; matched locally
// when the host did not name the function (x-nimbus-function) or did not send x-nimbus-params.

const PARAM = /^\{([A-Za-z0-9_]+)\}$/;

class RouteError extends Error {}

/** Compiles `route` into `{ route, segments, wildcard, shape }` or throws a RouteError. */
function compileRoute(route) {
  if (typeof route !== "string" || !route.startsWith("/")) {
    throw new RouteError(`nimbus: route ${JSON.stringify(route)} must be a string starting with "/"`);
  }
  if (route === "/_nimbus" || route.startsWith("/_nimbus/")) {
    throw new RouteError(`nimbus: route "${route}" is reserved: paths under /_nimbus/ belong to the platform`);
  }
  if (/[?#\s]/.test(route)) {
    throw new RouteError(`nimbus: route "${route}" must be a path only (no query, fragment or spaces)`);
  }
  const raw = route.slice(1).split("/");
  const segments = [];
  const names = new Set();
  let wildcard = false;
  raw.forEach((seg, i) => {
    const last = i === raw.length - 1;
    if (seg === "*" && last) {
      wildcard = true;
      return;
    }
    if (seg.includes("*")) {
      throw new RouteError(`nimbus: route "${route}": "*" is only allowed as the whole last segment, like /files/*`);
    }
    const m = PARAM.exec(seg);
    if (m) {
      if (names.has(m[1])) throw new RouteError(`nimbus: route "${route}" names the parameter "${m[1]}" twice`);
      names.add(m[1]);
      segments.push({ param: m[1] });
      return;
    }
    if (seg.includes("{") || seg.includes("}")) {
      throw new RouteError(
        `nimbus: route "${route}": a parameter must be a whole segment named with letters, digits or _, like /items/{id}`,
      );
    }
    if (seg === "" && !last) throw new RouteError(`nimbus: route "${route}" has an empty segment ("//")`);
    segments.push({ literal: seg });
  });
  // Two routes with the same shape match the same paths: /items/{id} and /items/{key} collide.
  const shape = segments.map((s) => (s.param !== undefined ? "{}" : s.literal)).join("/") + (wildcard ? "/*" : "");
  return { route, segments, wildcard, shape };
}

function decode(segment) {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** Matches a request path (as sent, percent-encoded, no query) against a compiled route.
 *  Returns the params object (`"*"` holds the wildcard part) or null. */
function matchRoute(compiled, path) {
  if (typeof path !== "string" || !path.startsWith("/")) return null;
  const parts = path.slice(1).split("/");
  const { segments, wildcard } = compiled;
  // "/files/*" matches "/files", "/files/" and "/files/a/b"; the rest may be empty.
  if (wildcard ? parts.length < segments.length : parts.length !== segments.length) return null;
  const params = {};
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i];
    const part = parts[i];
    if (seg.param !== undefined) {
      if (part === "") return null;
      params[seg.param] = decode(part);
    } else if (part !== seg.literal && decode(part) !== seg.literal) {
      return null;
    }
  }
  if (wildcard) params["*"] = decode(parts.slice(segments.length).join("/"));
  return params;
}

/** Orders matching routes from most to least specific: literal before {param}, segment by segment,
 *  then a route without `*` before one with it, then the longer one. Negative when `a` wins. */
function compareSpecificity(a, b) {
  const n = Math.min(a.segments.length, b.segments.length);
  for (let i = 0; i < n; i++) {
    const ka = a.segments[i].param === undefined ? 1 : 0;
    const kb = b.segments[i].param === undefined ? 1 : 0;
    if (ka !== kb) return kb - ka;
  }
  if (a.wildcard !== b.wildcard) return a.wildcard ? 1 : -1;
  return b.segments.length - a.segments.length;
}

module.exports = { compileRoute, matchRoute, compareSpecificity, RouteError };
