"use strict";
// The worker's HTTP side (PROTOCOL.md §2–§4): the index and invoke endpoints, dispatch of HTTP
// invocations, turning handler results into responses, streaming with backpressure, and cancellation
// when the host closes a connection whose invocation is unfinished.

const http = require("http");
const { randomUUID, timingSafeEqual } = require("crypto");
const { kindOf } = require("./kind");
const { matchRoute } = require("./routes");
const { Request } = require("./request");
const { Context, makeLogger } = require("./context");
const { jsonKind, strictJson, errorLine } = require("./values");
const { encodeBytes, toBuffer, normalizeHeaders } = require("./response");
const { version } = require("../package.json");

const SDK = `node/${version}`;
const CANCELLED = Symbol("cancelled");
const UTF8 = new TextDecoder("utf-8", { fatal: true });
// The host's proof that a request is its own (PROTOCOL.md §1, Confinement); never shown to handlers.
const KEY_HEADER = "x-nimbus-worker-key";
// Response headers of a fetch() Response that describe its old framing, not the body we send.
const FETCH_DROP = new Set(["content-encoding", "content-length", "transfer-encoding", "connection", "keep-alive"]);

function log(line) {
  process.stderr.write(`nimbus: ${line}\n`);
}

function stackOf(err) {
  return (err && err.stack) || String(err);
}

function sendJson(res, status, value, headers = {}) {
  if (res.headersSent || res.destroyed) return;
  const body = Buffer.from(JSON.stringify(value), "utf8");
  res.writeHead(status, { ...headers, "content-type": "application/json", "content-length": body.length });
  res.end(body);
}

function sendError(res, status, code, message, headers) {
  sendJson(res, status, { error: { code, message } }, headers);
}

function splitUrl(url) {
  const q = url.indexOf("?");
  return q < 0 ? [url, ""] : [url.slice(0, q), url.slice(q + 1)];
}

/** A JSON-object header (x-nimbus-params, x-nimbus-claims), or undefined when absent or invalid. */
function jsonHeader(req, name) {
  const raw = req.headers[name];
  if (raw === undefined) return undefined;
  try {
    const value = JSON.parse(raw);
    if (value !== null && typeof value === "object" && !Array.isArray(value)) return value;
  } catch {
    // reported below
  }
  log(`ignoring header ${name}: not a JSON object`);
  return undefined;
}

function timeoutOf(req) {
  const ms = Number(req.headers["x-nimbus-timeout-ms"]);
  return req.headers["x-nimbus-timeout-ms"] !== undefined && Number.isFinite(ms) ? ms : null;
}

/** One running invocation: cancelled (signal aborted, streams closed) when the connection closes
 *  before its response was completely written. */
class Invocation {
  constructor(res, id) {
    this.id = id;
    this.cancelled = false;
    this.controller = new AbortController();
    this._cancelled = new Promise((resolve) => {
      this._resolve = resolve;
    });
    res.once("close", () => {
      if (!res.writableEnded) this.cancel();
    });
  }

  cancel() {
    if (this.cancelled) return;
    this.cancelled = true;
    log(`invocation ${this.id} cancelled`);
    this._resolve(CANCELLED);
    this.controller.abort();
  }

  /** Settles like `promise`, or with CANCELLED as soon as the invocation is cancelled. */
  race(promise) {
    return Promise.race([promise, this._cancelled]);
  }
}

// ---- Results → responses --------------------------------------------------------------------------

function isGenerator(value) {
  return Object.prototype.toString.call(value) === "[object Generator]";
}

function isAsyncIterable(value) {
  return value !== null && typeof value === "object" && typeof value[Symbol.asyncIterator] === "function";
}

function isFetchResponse(value) {
  const FetchResponse = globalThis.Response;
  return typeof FetchResponse === "function" && value instanceof FetchResponse;
}

/** An async iterator over an async iterable or a sync one (whose values may be promises). */
function iteratorOf(iterable) {
  if (typeof iterable[Symbol.asyncIterator] === "function") return iterable[Symbol.asyncIterator]();
  const it = iterable[Symbol.iterator]();
  return {
    async next() {
      const step = it.next();
      return step.done ? step : { done: false, value: await step.value };
    },
    async return(value) {
      return typeof it.return === "function" ? it.return(value) : { done: true, value };
    },
  };
}

/** Asks an iterator to finish (runs a generator's `finally`, destroys a Readable) without waiting:
 *  an async generator busy in an `await` only finishes once that await settles. */
function closeIterator(it) {
  if (typeof it.return !== "function") return;
  try {
    Promise.resolve(it.return()).catch((err) => log(`closing a stream failed: ${stackOf(err)}`));
  } catch (err) {
    log(`closing a stream failed: ${stackOf(err)}`);
  }
}

/** Closes whatever streamable value a handler returned after its invocation was cancelled. */
function discard(result) {
  let body = kindOf(result) === "response" ? result.body : result;
  if (kindOf(body) === "stream") body = body.iterable;
  if (isFetchResponse(body)) body = body.body;
  if (isAsyncIterable(body) || isGenerator(body)) closeIterator(iteratorOf(body));
}

/** Writes a handler's result: `{status, headers, ...}` for everything but streams, which `pump`. */
async function respond(result, req, res, inv) {
  let status = 200;
  let headers = {};
  let contentType;
  let body = result;
  const explicit = kindOf(result) === "response";
  if (explicit) {
    ({ status, contentType, body } = result);
    headers = { ...result.headers };
  } else if (isFetchResponse(result)) {
    status = result.status;
    for (const [name, value] of result.headers) if (!FETCH_DROP.has(name)) headers[name] = value;
    body = result.body; // a web ReadableStream (async iterable) or null
  }

  // Streams: chunked, headers at once, each chunk as it comes.
  let stream = null;
  if (kindOf(body) === "stream") stream = body;
  else if (isAsyncIterable(body) || isGenerator(body)) {
    stream = { iterable: body, contentType: "application/octet-stream", headers: {}, encode: encodeBytes };
  }
  if (stream) {
    const final = { "content-type": stream.contentType, ...stream.headers, ...headers };
    if (contentType) final["content-type"] = contentType;
    delete final["content-length"];
    res.writeHead(status, final);
    res.flushHeaders();
    return pump(stream.iterable, stream.encode, res, inv);
  }

  let bytes;
  let defaultType;
  if (body === undefined || body === null) {
    if (!explicit && !isFetchResponse(result)) status = 204;
    bytes = null;
  } else if (typeof body === "string") {
    bytes = Buffer.from(body, "utf8");
    defaultType = "text/plain; charset=utf-8";
  } else if ((bytes = toBuffer(body)) !== null) {
    defaultType = "application/octet-stream";
  } else {
    const json = JSON.stringify(body);
    if (json === undefined) throw new TypeError(`nimbus: a handler returned a ${typeof body}, which has no JSON form`);
    bytes = Buffer.from(json, "utf8");
    defaultType = "application/json";
  }
  const final = { ...(defaultType ? { "content-type": defaultType } : {}), ...headers };
  if (contentType) final["content-type"] = contentType;
  if (status === 204 || status === 304) {
    delete final["content-length"];
    res.writeHead(status, final);
    res.end();
    return;
  }
  final["content-length"] = bytes ? bytes.length : 0;
  res.writeHead(status, final);
  res.end(bytes && req.method !== "HEAD" ? bytes : undefined);
}

function drained(res) {
  return new Promise((resolve) => res.once("drain", resolve));
}

/** Writes each item of `iterable` as one chunk as soon as it is produced, waiting for 'drain' when
 *  the socket is full. Stops and closes the iterator when the invocation is cancelled. */
async function pump(iterable, encode, res, inv) {
  const it = iteratorOf(iterable);
  let finished = false;
  try {
    for (;;) {
      const step = await inv.race(it.next());
      if (step === CANCELLED) return;
      if (step.done) {
        finished = true;
        break;
      }
      const chunk = encode(step.value);
      if (chunk.length === 0) continue;
      if (!res.write(chunk) && (await inv.race(drained(res))) === CANCELLED) return;
    }
  } finally {
    if (!finished) closeIterator(it);
  }
  res.end();
}

// ---- Dispatch ---------------------------------------------------------------------------------------

function fail(err, fn, inv, res, dev) {
  // The connection may be gone before its 'close' event ran: that is a cancellation too.
  if (!inv.cancelled && !res.writableEnded && (res.destroyed || (res.socket && res.socket.destroyed))) inv.cancel();
  if (inv.cancelled) {
    // What a cancelled handler raises is mostly the cancellation itself (an aborted signal, an
    // aborted request body); anything else gets one line.
    const quiet = err && (err.name === "AbortError" || err.code === "ECONNRESET" || err.code === "ABORT_ERR");
    if (!quiet) log(`function "${fn.name}" raised after invocation ${inv.id} was cancelled: ${err && err.message || err}`);
    return;
  }
  if (kindOf(err) === "http-error") {
    if (res.headersSent) res.destroy();
    else sendError(res, err.status, err.code, err.message, err.headers);
    return;
  }
  log(`function "${fn.name}" failed (invocation ${inv.id}):\n${stackOf(err)}`);
  if (res.headersSent) {
    // The head (maybe some chunks) went out: cut the connection so the host sees an incomplete response.
    res.destroy();
    return;
  }
  let message = "the function raised an error";
  if (fn.trigger.type === "activity") {
    // An activity's error reaches only the app's own orchestrator, which may act on it (PROTOCOL.md §7.2).
    message = errorLine(err);
  } else if (dev) {
    message += `: ${err && typeof err.message === "string" ? err.message : String(err)}`;
  }
  sendError(res, 500, "handler_error", message);
}

async function invokeHttp(fn, params, path, rawQuery, req, res, dev) {
  const inv = new Invocation(res, req.headers["x-nimbus-invocation-id"] || randomUUID());
  const claims = jsonHeader(req, "x-nimbus-claims") ?? null;
  const request = new Request(req, {
    path,
    query: new URLSearchParams(rawQuery),
    params,
    claims,
    invocationId: inv.id,
  });
  const ctx = new Context({
    functionName: fn.name,
    invocationId: inv.id,
    traceparent: req.headers.traceparent ?? null,
    timeoutMs: timeoutOf(req),
    signal: inv.controller.signal,
    trigger: fn.trigger,
    claims,
  });
  let result;
  try {
    result = await fn.handler(request, ctx);
  } catch (err) {
    return fail(err, fn, inv, res, dev);
  }
  if (inv.cancelled) return discard(result);
  try {
    await respond(result, req, res, inv);
  } catch (err) {
    fail(err, fn, inv, res, dev);
  }
}

async function readAll(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks);
}

function isPlainObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** Why a parsed body is not an invocation envelope, or null if it is one. */
function envelopeProblem(envelope) {
  if (!isPlainObject(envelope)) {
    return `the invocation envelope must be a JSON object like {"id", "trigger", "data"}, not ${jsonKind(envelope)}`;
  }
  if (envelope.id !== undefined && envelope.id !== null && typeof envelope.id !== "string") {
    return "the invocation envelope's id must be a string";
  }
  if (envelope.trigger !== undefined && envelope.trigger !== null && !isPlainObject(envelope.trigger)) {
    return "the invocation envelope's trigger must be an object";
  }
  return null;
}

/** The JSON text of an envelope handler's result (undefined → null), or throws a TypeError saying why
 *  it is not JSON. */
function resultJson(result) {
  const kind = kindOf(result);
  if (kind === "response" || kind === "stream" || isFetchResponse(result) || isAsyncIterable(result) || isGenerator(result)) {
    const what = kind === "response" || isFetchResponse(result) ? "an HTTP Response" : "a stream";
    throw new TypeError(`the function's result is not JSON: it is ${what}; a non-HTTP function returns one JSON value`);
  }
  try {
    return strictJson(result);
  } catch (err) {
    throw new TypeError(`the function's result is not JSON: ${err && err.message}`);
  }
}

function sendJsonText(res, json) {
  if (res.headersSent || res.destroyed) return;
  const bytes = Buffer.from(json, "utf8");
  res.writeHead(200, { "content-type": "application/json", "content-length": bytes.length });
  res.end(bytes);
}

/** One step of an orchestration (PROTOCOL.md §7.1). Synchronous: orchestrator code does no I/O, and
 *  nothing else touches the instance's session meanwhile. */
async function runStep(fn, data, inv, res, sessions) {
  const { StepError } = require("./durable");
  const platform = require("./platform");
  let json;
  try {
    // Large values arrive as references and leave as references (PROTOCOL.md §7.4); the code in
    // between sees values.
    if (data !== null && typeof data === "object") {
      for (const part of ["past", "new"]) if (Array.isArray(data[part])) await platform.fetchPayloads(data[part]);
    }
    const outcome = sessions.step(fn, data === undefined ? null : data, makeLogger(inv.id));
    if (process.env.NIMBUS_INSTANCE_ID && !outcome.need_history) outcome.worker = process.env.NIMBUS_INSTANCE_ID; // for the host's timeline
    json = strictJson(outcome);
    if (Buffer.byteLength(json) > platform.PAYLOAD_LIMIT) {
      await platform.offloadPayloads([outcome, ...(outcome.actions || [])]);
      json = strictJson(outcome);
    }
  } catch (err) {
    if (err instanceof StepError) return sendError(res, 400, "invalid_envelope", err.message);
    if (err instanceof platform.PlatformError || (err && err.code && err.syscall)) {
      log(`function "${fn.name}" failed (invocation ${inv.id}): a large payload could not be moved: ${err.message}`);
      return sendError(res, 503, "payload_unavailable", `a large payload could not be moved: ${err.message}`);
    }
    log(`function "${fn.name}" failed (invocation ${inv.id}): the orchestration step failed:\n${stackOf(err)}`);
    return sendError(res, 500, "handler_error", "the orchestration step failed");
  }
  sendJsonText(res, json);
}

/** POST /_nimbus/worker/invoke/{function}: a JSON envelope in, the handler's JSON result out (§4).
 *  The handler gets `(data, ctx)`; closing the connection (while the envelope is read, too) cancels it. */
async function invokeEnvelope(fn, req, res, dev, sessions) {
  const idHeader = req.headers["x-nimbus-invocation-id"];
  const inv = new Invocation(res, idHeader || randomUUID());
  let body;
  try {
    body = await readAll(req);
  } catch {
    inv.cancel(); // the connection went away before the envelope ended
    res.destroy();
    return;
  }
  if (inv.cancelled) return;
  let envelope;
  try {
    const text = UTF8.decode(body);
    if (text.trim() === "") return sendError(res, 400, "invalid_envelope", "the invocation envelope is empty");
    envelope = JSON.parse(text);
  } catch (err) {
    return sendError(res, 400, "invalid_envelope", `the invocation envelope is not valid JSON: ${err.message}`);
  }
  const problem = envelopeProblem(envelope);
  if (problem) return sendError(res, 400, "invalid_envelope", problem);
  if (!idHeader && envelope.id) inv.id = envelope.id;
  if (fn.trigger.type === "orchestrator") return runStep(fn, envelope.data, inv, res, sessions);
  const ctx = new Context({
    functionName: fn.name,
    invocationId: inv.id,
    traceparent: req.headers.traceparent ?? null,
    timeoutMs: timeoutOf(req),
    signal: inv.controller.signal,
    // the envelope's trigger, else (invoked by name) the declared one, as a copy the handler may keep
    trigger: envelope.trigger ?? { ...fn.trigger },
  });
  const activity = fn.trigger.type === "activity";
  let result;
  try {
    let data = envelope.data === undefined ? null : envelope.data;
    // A large input arrives as a reference (PROTOCOL.md §7.4).
    if (activity) data = await require("./platform").fetchPayload(data);
    result = await fn.handler(data, ctx);
  } catch (err) {
    return fail(err, fn, inv, res, dev);
  }
  if (inv.cancelled) return discard(result);
  let json;
  try {
    json = resultJson(result);
  } catch (err) {
    discard(result);
    log(`function "${fn.name}" failed (invocation ${inv.id}): ${err.message}`);
    return sendError(res, 500, "handler_error", err.message);
  }
  if (activity && Buffer.byteLength(json) > require("./platform").PAYLOAD_LIMIT) {
    try {
      json = strictJson(await require("./platform").offloadPayload(Buffer.from(json, "utf8")));
    } catch (err) {
      log(`function "${fn.name}" failed (invocation ${inv.id}): its large result could not be stored: ${err.message}`);
      return sendError(res, 500, "handler_error", `the result could not be stored: ${err.message}`);
    }
  }
  sendJsonText(res, json);
}

async function protocol(app, req, res, path, dev, sessions) {
  if (path === "/_nimbus/worker/index") {
    if (req.method !== "GET" && req.method !== "HEAD") {
      return sendError(res, 405, "method_not_allowed", `${req.method} is not allowed on ${path}`, { allow: "GET" });
    }
    return sendJson(res, 200, { protocol: 1, sdk: SDK, functions: app.functions });
  }
  const prefix = "/_nimbus/worker/invoke/";
  if (path.startsWith(prefix)) {
    if (req.method !== "POST") {
      return sendError(res, 405, "method_not_allowed", `${req.method} is not allowed on ${path}`, { allow: "POST" });
    }
    let name = path.slice(prefix.length);
    try {
      name = decodeURIComponent(name);
    } catch {
      // keep it as sent
    }
    const fn = app._find(name);
    if (!fn || fn.trigger.type === "http") {
      const why = fn ? ` (it has an http trigger: it is invoked over HTTP at ${fn.trigger.route})` : "";
      return sendError(res, 404, "unknown_function", `no function "${name}" to invoke with an envelope${why}`);
    }
    return invokeEnvelope(fn, req, res, dev, sessions);
  }
  return sendError(res, 404, "not_found", `no worker endpoint ${path}`);
}

async function dispatch(app, req, res, dev, sessions) {
  const [path, rawQuery] = splitUrl(req.url);
  if (path === "/_nimbus" || path.startsWith("/_nimbus/")) return protocol(app, req, res, path, dev, sessions);
  const name = req.headers["x-nimbus-function"];
  let fn;
  let params;
  if (name !== undefined) {
    fn = app._find(name);
    if (!fn || fn.trigger.type !== "http") {
      return sendError(res, 404, "not_found", `no HTTP function named "${name}" in this worker`);
    }
  } else {
    const hit = app._route(req.method, path);
    if (hit.status === 404) return sendError(res, 404, "not_found", `no function serves ${path}`);
    if (hit.status === 405) {
      const allow = hit.allow.length ? { allow: hit.allow.join(", ") } : {};
      return sendError(res, 405, "method_not_allowed", `${req.method} is not allowed on ${path}`, allow);
    }
    ({ fn, params } = hit);
  }
  params = jsonHeader(req, "x-nimbus-params") ?? params ?? matchRoute(fn.compiled, path) ?? {};
  return invokeHttp(fn, params, path, rawQuery, req, res, dev);
}

// ---- The host's key ---------------------------------------------------------------------------------

/** A test of whether a request comes from the host: it carries `key` (the instance's
 *  NIMBUS_WORKER_KEY), compared in constant time. Without a key (a worker started by hand), every
 *  request does. */
function keyCheck(key) {
  if (!key) return () => true;
  const expected = Buffer.from(key, "utf8");
  return (req) => {
    const sent = req.headers[KEY_HEADER];
    if (typeof sent !== "string") return false;
    const given = Buffer.from(sent, "latin1"); // header values are read as latin1: the bytes as sent
    return given.length === expected.length && timingSafeEqual(given, expected);
  };
}

/** Takes the key out of what the handler can reach: `headers`, `headersDistinct` and `rawHeaders`. */
function dropKey(req) {
  const headers = req.headers;
  if (!(KEY_HEADER in headers)) return;
  delete headers[KEY_HEADER];
  // Node builds headersDistinct from rawHeaders and the count it parsed: build it before they shrink.
  const distinct = req.headersDistinct;
  if (distinct) delete distinct[KEY_HEADER];
  const raw = req.rawHeaders;
  for (let i = raw.length - 2; i >= 0; i -= 2) {
    if (raw[i].toLowerCase() === KEY_HEADER) raw.splice(i, 2);
  }
}

/** A request without the key: 403 before anything else, its body left unread, and the connection
 *  closed once the answer is out. */
function forbid(req, res) {
  res.once("finish", () => req.socket.destroy());
  sendError(res, 403, "forbidden", "this worker answers its host only", { connection: "close" });
}

/** The request listener for `app`. `dev`: error messages of handlers go into 500 answers. `key`:
 *  NIMBUS_WORKER_KEY, which every request must then carry. */
function createListener(app, { dev = false, key } = {}) {
  const admits = keyCheck(key);
  // The orchestrations held between steps, when the app has orchestrators (lib/durable loads only then).
  const hasOrchestrators = app._functions.some((f) => f.trigger.type === "orchestrator");
  const sessions = hasOrchestrators ? new (require("./durable").Sessions)() : null;
  return (req, res) => {
    res.on("error", () => {}); // a write racing a closed connection; cancellation handles it
    if (!admits(req)) return forbid(req, res);
    dropKey(req);
    dispatch(app, req, res, dev, sessions).catch((err) => {
      log(`internal error while serving ${req.method} ${req.url}:\n${stackOf(err)}`);
      if (res.headersSent) res.destroy();
      else sendError(res, 500, "internal", "the worker failed to answer");
    });
  };
}

/** An http.Server for `app`, tuned for the host: long keep-alive, no request timeout (long
 *  invocations are normal; the host times them out by closing the connection). `inflight()` counts
 *  requests not yet finished; 'idle' is emitted when it drops to zero. `key`: as for createListener. */
function createWorkerServer(app, { dev = false, key } = {}) {
  const admits = keyCheck(key);
  const server = http.createServer(
    { requireHostHeader: false, maxHeaderSize: 64 * 1024, noDelay: true },
    createListener(app, { dev, key }),
  );
  // `expect: 100-continue`: Node would invite anyone's body; only the host's is worth reading.
  server.on("checkContinue", (req, res) => {
    if (admits(req)) res.writeContinue();
    server.emit("request", req, res);
  });
  server.keepAliveTimeout = 5 * 60 * 1000;
  server.headersTimeout = 60 * 1000;
  server.requestTimeout = 0;
  server.timeout = 0;
  let inflight = 0;
  server.on("request", (req, res) => {
    inflight++;
    res.once("close", () => {
      inflight--;
      if (inflight === 0) server.emit("idle");
    });
  });
  server.inflight = () => inflight;
  return server;
}

module.exports = { createWorkerServer, createListener, SDK };
