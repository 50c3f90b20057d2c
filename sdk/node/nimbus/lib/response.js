"use strict";
// What a handler may return besides plain values: Response (status, headers, content type), stream()
// and sse() wrappers around async iterables, SSE events, and HttpError to answer an error on purpose.

const { KIND, kindOf } = require("./kind");

/** Normalises headers given as a plain object, a Map, a Headers or a list of pairs into a plain
 *  object with lower-case names; a value may be an array (repeated header, e.g. set-cookie). */
function normalizeHeaders(headers) {
  const out = {};
  if (headers == null) return out;
  const entries =
    typeof headers[Symbol.iterator] === "function" ? Array.from(headers) : Object.entries(headers);
  for (const entry of entries) {
    if (!Array.isArray(entry) || entry.length !== 2) {
      throw new TypeError("nimbus: headers must be an object, a Map, a Headers or a list of [name, value] pairs");
    }
    const [name, value] = entry;
    if (value === undefined || value === null) continue;
    out[String(name).toLowerCase()] = Array.isArray(value) ? value.map(String) : String(value);
  }
  return out;
}

/** A response with an explicit status, headers and content type. `body` is anything a handler may
 *  return (object → JSON, string, bytes, async iterable, stream(), sse()). */
class Response {
  constructor(body, init = {}) {
    const { status, headers, contentType, ...rest } = init ?? {};
    const unknown = Object.keys(rest);
    if (unknown.length) {
      throw new TypeError(`nimbus: unknown Response option(s) ${unknown.join(", ")} (expected status, headers, contentType)`);
    }
    const code = status ?? (body === undefined || body === null ? 204 : 200);
    if (!Number.isInteger(code) || code < 200 || code > 599) {
      throw new RangeError(`nimbus: Response status must be an integer from 200 to 599, not ${status}`);
    }
    if (kindOf(body) === "response") throw new TypeError("nimbus: a Response cannot wrap another Response");
    this.body = body;
    this.status = code;
    this.headers = normalizeHeaders(headers);
    this.contentType = contentType;
  }

  /** `Response.json(value, init)`: JSON even when `value` is a string. */
  static json(value, init = {}) {
    const body = JSON.stringify(value === undefined ? null : value);
    return new Response(body, { ...init, contentType: init.contentType ?? "application/json" });
  }
}
Response.prototype[KIND] = "response";

/** Thrown (by req.json(), or by a handler on purpose) to answer `status` with
 *  `{"error": {"code", "message"}}`. Not logged as a failure. */
class HttpError extends Error {
  constructor(status, code, message, options = {}) {
    super(message ?? code);
    if (!Number.isInteger(status) || status < 400 || status > 599) {
      throw new RangeError(`nimbus: HttpError status must be an integer from 400 to 599, not ${status}`);
    }
    this.name = "HttpError";
    this.status = status;
    this.code = code;
    this.headers = normalizeHeaders(options.headers);
  }
}
HttpError.prototype[KIND] = "http-error";

function isIterable(value) {
  return (
    value !== null &&
    typeof value === "object" &&
    (typeof value[Symbol.asyncIterator] === "function" || typeof value[Symbol.iterator] === "function")
  );
}

/** A streamed body: each item of `iterable` is encoded by `encode` and written as soon as it comes. */
class Stream {
  constructor(iterable, { contentType, headers, encode }) {
    if (!isIterable(iterable) || typeof iterable === "string") {
      throw new TypeError("nimbus: stream() and sse() take an async iterable, such as an async generator");
    }
    this.iterable = iterable;
    this.contentType = contentType;
    this.headers = normalizeHeaders(headers);
    this.encode = encode;
  }
}
Stream.prototype[KIND] = "stream";

function toBuffer(item) {
  if (Buffer.isBuffer(item)) return item;
  if (typeof item === "string") return Buffer.from(item, "utf8");
  if (item instanceof Uint8Array) return Buffer.from(item.buffer, item.byteOffset, item.byteLength);
  if (item instanceof ArrayBuffer) return Buffer.from(item);
  return null;
}

function encodeBytes(item) {
  const buf = toBuffer(item);
  if (buf === null) {
    throw new TypeError(
      `nimbus: a streamed item must be a string, a Buffer or a Uint8Array, not ${item === null ? "null" : typeof item}; use sse() to stream objects`,
    );
  }
  return buf;
}

/** stream(asyncIterable, { contentType, headers }): a chunked response, one chunk per item. */
function stream(iterable, options = {}) {
  return new Stream(iterable, {
    contentType: options.contentType ?? "application/octet-stream",
    headers: options.headers,
    encode: encodeBytes,
  });
}

// ---- Server-sent events -------------------------------------------------------------------------

class SseEvent {
  constructor(data, { event, id, retry, comment } = {}) {
    for (const [field, value] of [["event", event], ["id", id], ["comment", comment]]) {
      if (value !== undefined && (typeof value !== "string" || /[\r\n]/.test(value) || value.includes("\0"))) {
        throw new TypeError(`nimbus: SSE ${field} must be a string without line breaks`);
      }
    }
    if (retry !== undefined && !(Number.isInteger(retry) && retry >= 0)) {
      throw new TypeError("nimbus: SSE retry must be a non-negative integer (milliseconds)");
    }
    this.data = data;
    this.event = event;
    this.id = id;
    this.retry = retry;
    this.comment = comment;
  }
}
SseEvent.prototype[KIND] = "sse-event";

function dataLines(data) {
  if (data === undefined) return "";
  let text;
  if (typeof data === "string") text = data;
  else {
    const buf = toBuffer(data);
    text = buf !== null ? buf.toString("utf8") : JSON.stringify(data);
  }
  if (text === undefined) return ""; // JSON.stringify of a function or symbol
  return text
    .split(/\r\n|\r|\n/)
    .map((line) => `data: ${line}\n`)
    .join("");
}

/** Encodes one SSE item: an SseEvent, or data (string → one `data:` line per line, bytes → UTF-8
 *  text, anything else → JSON). Every event ends with a blank line. */
function encodeSse(item) {
  let out = "";
  if (kindOf(item) === "sse-event") {
    if (item.comment !== undefined) out += `: ${item.comment}\n`;
    if (item.event !== undefined) out += `event: ${item.event}\n`;
    if (item.id !== undefined) out += `id: ${item.id}\n`;
    if (item.retry !== undefined) out += `retry: ${item.retry}\n`;
    out += dataLines(item.data);
  } else {
    out += dataLines(item);
  }
  return Buffer.from(out + "\n", "utf8");
}

/** sse(asyncIterable, { headers }): a text/event-stream response, one event per item. */
function sse(iterable, options = {}) {
  return new Stream(iterable, {
    contentType: "text/event-stream",
    headers: { "cache-control": "no-cache", ...normalizeHeaders(options.headers) },
    encode: encodeSse,
  });
}
/** sse.event(data, { event, id, retry }): an event with fields besides data. */
sse.event = (data, options = {}) => new SseEvent(data, options);
/** sse.comment(text): a comment line (`: text`), e.g. a keep-alive. */
sse.comment = (text) => new SseEvent(undefined, { comment: String(text) });

module.exports = { Response, HttpError, Stream, stream, sse, encodeSse, encodeBytes, toBuffer, normalizeHeaders, isIterable };
