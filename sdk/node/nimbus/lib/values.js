"use strict";
// What the SDK makes of user values: their strict JSON text, and the one line that names a thrown error.

function jsonKind(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

/** `value` as JSON text (undefined → null), or throws a TypeError saying why it is not JSON.
 *  JSON.stringify would quietly turn some values into something else (a Buffer into an object, NaN
 *  into null, a Map into {}); the Python SDK refuses them, and so does this one. */
function strictJson(value) {
  const json = JSON.stringify(value === undefined ? null : value, function strict(key, v) {
    if (typeof v === "number" && !Number.isFinite(v)) throw new TypeError(`${v} is not a JSON number`);
    const raw = this[key];
    if (ArrayBuffer.isView(raw) || raw instanceof ArrayBuffer || raw instanceof Map || raw instanceof Set) {
      throw new TypeError(`it holds a ${raw.constructor.name}`);
    }
    return v;
  });
  if (json === undefined) throw new TypeError(`it is ${jsonKind(value)}`);
  return json;
}

/** "<Name>: <message>" (the name alone without a message), as Python's SDK names an exception. */
function errorLine(err) {
  if (err !== null && typeof err === "object" && typeof err.message === "string") {
    const ctor = typeof err.constructor === "function" && err.constructor !== Object ? err.constructor : null;
    let name = typeof err.name === "string" && err.name ? err.name : (ctor && ctor.name) || "Error";
    // A subclass that names itself nowhere (class Declined extends Error {}) is still a Declined.
    const own = (o, key) => o !== null && typeof o === "object" && Object.prototype.hasOwnProperty.call(o, key);
    if (ctor && ctor.name && !own(err, "name") && !own(ctor.prototype, "name")) name = ctor.name;
    return err.message ? `${name}: ${err.message}` : name;
  }
  let text;
  try {
    text = String(err);
  } catch {
    text = typeof err;
  }
  return `Error: ${text}`;
}

module.exports = { jsonKind, strictJson, errorLine };
