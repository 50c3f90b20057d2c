"use strict";
// The platform API as a function sees it: `ctx.blob`, `ctx.docs`, `ctx.durable` and `ctx.ai`, over the host's
// private Unix socket (NIMBUS_PLATFORM_SOCKET) with the instance's scoped token (NIMBUS_PLATFORM_TOKEN).
// What a function may reach is what the manifest grants it (`[functions.<name>] grants =
// ["blob:uploads:rw", "docs:conversations:r", "durable:research:rw"]`); anything else answers 403 and throws.

const http = require("http");
const { Readable } = require("stream");
const { strictJson } = require("./values");

/** A platform API call failed: `status`, `code`, `detail` (the message); `name` is "NotFound" for
 *  404 and "PreconditionFailed" for 412; `operationIndex` names the operation that failed a docs
 *  batch. */
class PlatformError extends Error {
  constructor(status, code, message, operationIndex) {
    super(`${status} ${code}: ${message}`);
    this.name = { 404: "NotFound", 412: "PreconditionFailed" }[status] ?? "PlatformError";
    this.status = status;
    this.code = code;
    this.detail = message;
    if (operationIndex != null) this.operationIndex = operationIndex;
  }
}

let shared = null;

/** The worker's platform client; throws when the host gave this process no access. */
function client() {
  if (shared) return shared;
  const socketPath = process.env.NIMBUS_PLATFORM_SOCKET;
  const token = process.env.NIMBUS_PLATFORM_TOKEN;
  if (!socketPath || !token) {
    throw new PlatformError(0, "no_platform_access", "this process was not started by a Nimbus host as a function's worker");
  }
  shared = { socketPath, token, agent: new http.Agent({ keepAlive: true }) };
  return shared;
}

/** Sends a request; resolves with the response (its body not read yet). `body`: Buffer, string,
 *  or an (async) iterable / Readable of chunks, streamed. */
function request(c, method, path, { body, headers = {}, traceparent } = {}) {
  return new Promise((resolve, reject) => {
    const h = { host: "nimbus", authorization: `Bearer ${c.token}`, ...headers };
    if (traceparent) h.traceparent = traceparent;
    const fixed = body == null || typeof body === "string" || Buffer.isBuffer(body) || body instanceof Uint8Array;
    if (fixed) h["content-length"] = body == null ? 0 : Buffer.byteLength(body);
    const req = http.request({ socketPath: c.socketPath, agent: c.agent, method, path, headers: h }, resolve);
    req.on("error", reject);
    if (fixed) {
      req.end(body ?? undefined);
    } else {
      const source = body instanceof Readable ? body : Readable.from(body);
      source.on("error", (e) => req.destroy(e));
      source.pipe(req);
    }
  });
}

async function readAll(res) {
  const parts = [];
  for await (const part of res) parts.push(part);
  return Buffer.concat(parts);
}

async function check(res) {
  if (res.statusCode < 400) return res;
  throw failure(res.statusCode, (await readAll(res)).toString("utf8"));
}

/** The error for an error response: `{"error": {"code", "message", "operationIndex"?}}`. */
function failure(status, text) {
  let code = `http_${status}`;
  let message = text;
  let index;
  try {
    const body = JSON.parse(text);
    ({ code, message } = body.error);
    index = body.error.operationIndex;
  } catch {}
  return new PlatformError(status, code, message, index);
}

const objectPath = (container, key) =>
  `/_nimbus/blob/${encodeURIComponent(container)}/${key.split("/").map(encodeURIComponent).join("/")}`;

/** Objects in blob containers: `await ctx.blob.put("uploads", "a/b.txt", "...")`. */
class Blob {
  constructor(c, traceparent) {
    this.c = c;
    this.traceparent = traceparent;
  }

  call(method, path, options = {}) {
    return request(this.c, method, path, { ...options, traceparent: this.traceparent });
  }

  /** Stores `data` and returns the object's facts (key, size, content_type, etag, last_modified, metadata). */
  async put(container, key, data, { contentType, metadata = {} } = {}) {
    const headers = {};
    if (contentType) headers["content-type"] = contentType;
    for (const [k, v] of Object.entries(metadata)) headers[`x-nimbus-meta-${k}`] = v;
    const res = await check(await this.call("PUT", objectPath(container, key), { body: data, headers }));
    return JSON.parse((await readAll(res)).toString("utf8"));
  }

  /** The object's bytes as a Buffer; throws a PlatformError named NotFound when there is none. */
  async get(container, key) {
    return readAll(await check(await this.call("GET", objectPath(container, key))));
  }

  /** The object's bytes as a Readable stream, for large objects. */
  async stream(container, key) {
    return check(await this.call("GET", objectPath(container, key)));
  }

  /** The object's facts, or null. */
  async head(container, key) {
    const res = await this.call("HEAD", objectPath(container, key));
    if (res.statusCode === 404) {
      res.resume();
      return null;
    }
    await check(res);
    res.resume();
    const h = res.headers;
    const metadata = {};
    for (const [k, v] of Object.entries(h)) if (k.startsWith("x-nimbus-meta-")) metadata[k.slice(14)] = v;
    return {
      key,
      size: Number(h["content-length"] ?? 0),
      content_type: h["content-type"],
      etag: (h.etag ?? "").replace(/"/g, ""),
      last_modified: h["last-modified"],
      metadata,
    };
  }

  /** Deletes the object; false when there was none. */
  async delete(container, key) {
    const res = await this.call("DELETE", objectPath(container, key));
    if (res.statusCode === 404) {
      res.resume();
      return false;
    }
    (await check(res)).resume();
    return true;
  }

  /** Every object under `prefix` (following continuations): { objects, prefixes }. */
  async list(container, { prefix = "", delimiter } = {}) {
    const objects = [];
    const prefixes = [];
    let continuation = null;
    do {
      const q = new URLSearchParams({ prefix });
      if (delimiter) q.set("delimiter", delimiter);
      if (continuation) q.set("continuation", continuation);
      const res = await check(await this.call("GET", `/_nimbus/blob/${encodeURIComponent(container)}?${q}`));
      const page = JSON.parse((await readAll(res)).toString("utf8"));
      objects.push(...page.objects);
      prefixes.push(...page.prefixes);
      continuation = page.continuation;
    } while (continuation);
    return { objects, prefixes };
  }

  /** Copies an object (bytes, content type, metadata); resolves with the copy's facts. */
  async copy(fromContainer, fromKey, container, key) {
    const headers = { "x-nimbus-copy-source": `${fromContainer}/${fromKey}` };
    const res = await check(await this.call("PUT", objectPath(container, key), { body: "", headers }));
    return JSON.parse((await readAll(res)).toString("utf8"));
  }

  /** A URL that lets anyone holding it GET (or PUT) this one object for `expiresIn` seconds. */
  async sign(container, key, { method = "GET", expiresIn = 900 } = {}) {
    const body = JSON.stringify({ container, key, method, expiresIn });
    const res = await check(
      await this.call("POST", "/_nimbus/blob/sign", { body, headers: { "content-type": "application/json" } }),
    );
    return JSON.parse((await readAll(res)).toString("utf8")).url;
  }
}

const containerPath = (container) => `/_nimbus/docs/${encodeURIComponent(container)}`;

/** A partition key value for a URL: JSON, percent-encoded, so "5" and 5 stay different. */
function pkParam(pk) {
  if (pk === undefined) throw new TypeError("the partition key value is missing (null is a value; undefined is not)");
  return encodeURIComponent(JSON.stringify(pk));
}

const itemPath = (container, id, pk) =>
  `${containerPath(container)}/items/${encodeURIComponent(id)}?pk=${pkParam(pk)}`;

/** { "@status": "open" } (the @ may be left out) → [{ name: "@status", value: "open" }]. */
const parameterList = (parameters = {}) =>
  Object.entries(parameters).map(([name, value]) => ({ name: name.startsWith("@") ? name : `@${name}`, value }));

/** Partitioned JSON documents: `await ctx.docs.create("conversations", { id: "c1", userId: "u1" })`.
 *  Items come back with their system properties (`_etag`, `_lsn`, `_ts`). `pk` is the item's
 *  partition key value (string, number, boolean or null): "5" and 5 are different partitions.
 *  Writes take `{ ifMatch: item._etag }` to apply only if nobody changed the item meanwhile; when
 *  somebody did, they throw a PlatformError named PreconditionFailed (status 412). */
class Docs {
  constructor(c, traceparent) {
    this.c = c;
    this.traceparent = traceparent;
  }

  async call(method, path, { body, headers = {}, ifMatch } = {}) {
    const h = { ...headers };
    if (body !== undefined) h["content-type"] = "application/json";
    if (ifMatch) h["if-match"] = ifMatch;
    const json = body === undefined ? undefined : JSON.stringify(body);
    return request(this.c, method, path, { body: json, headers: h, traceparent: this.traceparent });
  }

  async json(method, path, options) {
    const res = await check(await this.call(method, path, options));
    return JSON.parse((await readAll(res)).toString("utf8"));
  }

  /** Creates the item; throws a PlatformError 409 (`conflict`) when its id is taken in its partition. */
  async create(container, item) {
    return this.json("POST", `${containerPath(container)}/items`, { body: item });
  }

  /** Creates the item, or replaces the one with its id and partition key. */
  async upsert(container, item) {
    return this.json("POST", `${containerPath(container)}/items`, {
      body: item,
      headers: { "x-nimbus-upsert": "true" },
    });
  }

  /** The item; throws a PlatformError named NotFound when there is none. */
  async read(container, id, pk) {
    return this.json("GET", itemPath(container, id, pk));
  }

  /** Replaces the whole item (the body keeps its id and partition key); resolves with it as stored. */
  async replace(container, id, pk, item, { ifMatch } = {}) {
    return this.json("PUT", itemPath(container, id, pk), { body: item, ifMatch });
  }

  /** Applies 1 to 10 operations ({ op: "set"|"add"|"replace"|"remove"|"incr"|"move", path,
   *  value|from }) all or none; resolves with the item as stored. */
  async patch(container, id, pk, operations, { ifMatch } = {}) {
    return this.json("PATCH", itemPath(container, id, pk), { body: operations, ifMatch });
  }

  /** Deletes the item; false when there was none. */
  async delete(container, id, pk, { ifMatch } = {}) {
    const res = await this.call("DELETE", itemPath(container, id, pk), { ifMatch });
    if (res.statusCode === 404) {
      const error = failure(404, (await readAll(res)).toString("utf8"));
      if (error.code === "not_found") return false;
      throw error;
    }
    (await check(res)).resume();
    return true;
  }

  /** One page of results: { items, continuation }, the continuation null after the last page.
   *  Hand the continuation back (with the same query) for the next page. */
  async queryPage(container, query, { parameters, partitionKey, continuation, maxItems } = {}) {
    const body = { query, parameters: parameterList(parameters) };
    if (partitionKey != null) body.partitionKey = partitionKey;
    if (continuation) body.continuation = continuation;
    if (maxItems) body.maxItems = maxItems;
    const page = await this.json("POST", `${containerPath(container)}/query`, { body });
    return { items: page.items, continuation: page.continuation ?? null };
  }

  /** The results page by page: `for await (const items of ctx.docs.queryPages(...))`. */
  async *queryPages(container, query, { parameters, partitionKey, maxItems } = {}) {
    let continuation = null;
    do {
      const page = await this.queryPage(container, query, { parameters, partitionKey, continuation, maxItems });
      yield page.items;
      continuation = page.continuation;
    } while (continuation);
  }

  /** Every result of the query, as an array (all pages). `parameters`: { "@name": value };
   *  `partitionKey` limits the query to one partition (absent: all of them). */
  async query(container, query, { parameters, partitionKey } = {}) {
    const out = [];
    for await (const items of this.queryPages(container, query, { parameters, partitionKey, maxItems: 1000 })) {
      out.push(...items);
    }
    return out;
  }

  /** Runs up to 100 operations on one partition, all or none: { op: "create"|"upsert", item },
   *  { op: "replace", id, item }, { op: "patch", id, operations }, { op: "delete"|"read", id },
   *  optionally with ifMatch. Resolves with one { status, item } per operation; when one fails,
   *  nothing is written and the PlatformError's `operationIndex` names it. */
  async batch(container, partitionKey, operations) {
    const body = { partitionKey, operations };
    return (await this.json("POST", `${containerPath(container)}/batch`, { body })).results;
  }

  /** The change feed: items changed after `continuation` (absent: from the beginning), in the
   *  order of their last change, as { items, continuation }. The continuation is always there:
   *  keep it and ask again later for what changed since. Deletes do not appear. */
  async feed(container, { continuation, partitionKey, maxItems = 100, startFromNow = false } = {}) {
    const q = new URLSearchParams({ maxItems: String(maxItems) });
    if (continuation) q.set("continuation", continuation);
    else if (startFromNow) q.set("startFrom", "now");
    let path = `${containerPath(container)}/feed?${q}`;
    if (partitionKey != null) path += `&pk=${pkParam(partitionKey)}`;
    const page = await this.json("GET", path);
    return { items: page.items, continuation: page.continuation ?? null };
  }
}

/** A path segment escaped as Python's `quote(s, safe="")`, so both SDKs ask for the same paths. */
const quote = (s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

function nameArg(value, what) {
  if (typeof value !== "string" || value === "") {
    throw new TypeError(`ctx.durable.${what} a non-empty string, not ${JSON.stringify(value) ?? String(value)}`);
  }
  return value;
}

/** An instance id, or the id of what `start()` resolved with. */
function instanceIdOf(value, what) {
  return nameArg(value !== null && typeof value === "object" ? value.id : value, `${what}: the instance id is`);
}

/** A JSON value as a request body (undefined is null). */
function jsonBody(value, what) {
  try {
    return strictJson(value);
  } catch (err) {
    throw new TypeError(`ctx.durable.${what} is not JSON: ${err.message}`);
  }
}

const instancePath = (id) => `/_nimbus/durable/instances/${quote(id)}`;

/** The management payload of `started`: what start() resolved with, or a bare instance id (then
 *  with relative URIs: the paths are those of the public port). */
function management(started) {
  if (started !== null && typeof started === "object" && typeof started.id === "string") return started;
  if (typeof started !== "string" || started === "") {
    const shown = JSON.stringify(started) ?? String(started);
    throw new TypeError(`ctx.durable.checkStatusResponse() takes what ctx.durable.start() resolved with, not ${shown}`);
  }
  const id = started;
  const base = instancePath(id);
  return {
    id,
    statusQueryGetUri: base,
    sendEventPostUri: `${base}/raiseEvent/{eventName}`,
    terminatePostUri: `${base}/terminate?reason={text}`,
    purgeHistoryDeleteUri: base,
  };
}

/** Orchestrations seen from an ordinary function:
 *    const started = await ctx.durable.start("research", { topic: "tides" });
 *    return ctx.durable.checkStatusResponse(started);   // 202, location: the status URI */
/** One queue of the node (grant `queues:<name>:rw`; `r` to read its state):
 *    await ctx.queue("jobs").send({ id: 7 });               // a queue function gets it as `data`
 *    await ctx.queue("jobs").send({ id: 8 }, { delay: 30 }); // visible in 30 seconds
 *    const { length, oldest_age_seconds, poison_length } = await ctx.queue("jobs").state(); */
class Queue {
  constructor(c, name, traceparent) {
    if (typeof name !== "string" || name === "") {
      throw new TypeError(`ctx.queue(): a queue name is a non-empty string, not ${JSON.stringify(name) ?? String(name)}`);
    }
    this.c = c;
    this.path = `/_nimbus/queues/${encodeURIComponent(name)}`;
    this.traceparent = traceparent;
  }

  /** Sends `data` (a JSON value, at most 256 KiB of JSON), visible after `delay` seconds (absent:
   *  at once). Resolves with the message's id. */
  async send(data, { delay } = {}) {
    const body = delay === undefined || delay === null ? { data } : { data, delay };
    let json;
    try {
      json = strictJson(body);
    } catch (err) {
      throw new TypeError(`ctx.queue().send(): the message is not JSON: ${err.message}`);
    }
    const headers = { "content-type": "application/json" };
    const res = await check(await request(this.c, "POST", `${this.path}/messages`, { body: json, headers, traceparent: this.traceparent }));
    return JSON.parse((await readAll(res)).toString("utf8")).id;
  }

  /** The queue's length, its oldest message's age (seconds, or null) and its poison queue's length. */
  async state() {
    const res = await check(await request(this.c, "GET", this.path, { headers: {}, traceparent: this.traceparent }));
    return JSON.parse((await readAll(res)).toString("utf8"));
  }
}

class Durable {
  constructor(c, traceparent) {
    this.c = c;
    this.traceparent = traceparent;
  }

  /** `json`: the body's JSON text, or undefined for none. */
  call(method, path, json) {
    const headers = json === undefined ? {} : { "content-type": "application/json" };
    return request(this.c, method, path, { body: json, headers, traceparent: this.traceparent });
  }

  /** Starts the orchestrator `name` with `input`; `instanceId` picks the instance's id (absent: the
   *  host makes one). Resolves with the host's management payload: { id, statusQueryGetUri,
   *  sendEventPostUri, terminatePostUri, purgeHistoryDeleteUri }. */
  async start(name, input, { instanceId } = {}) {
    let path = `/_nimbus/durable/orchestrations/${quote(nameArg(name, "start(): the orchestrator's name is"))}`;
    if (instanceId !== undefined && instanceId !== null) {
      path += `?${new URLSearchParams({ instanceId: nameArg(instanceId, "start(): instanceId is") })}`;
    }
    const res = await check(await this.call("POST", path, jsonBody(input, "start(): the input")));
    return JSON.parse((await readAll(res)).toString("utf8"));
  }

  /** The instance's status, or null when there is no such instance. */
  async status(instanceId) {
    const res = await this.call("GET", instancePath(instanceIdOf(instanceId, "status()")));
    if (res.statusCode === 404) {
      res.resume();
      return null;
    }
    return JSON.parse((await readAll(await check(res))).toString("utf8"));
  }

  /** Sends the external event `name` with `data` (a JSON value) to the instance. */
  async raiseEvent(instanceId, name, data) {
    const id = instanceIdOf(instanceId, "raiseEvent()");
    const path = `${instancePath(id)}/raiseEvent/${quote(nameArg(name, "raiseEvent(): the event's name is"))}`;
    (await check(await this.call("POST", path, jsonBody(data, "raiseEvent(): the data")))).resume();
  }

  /** Stops the instance; `reason` is recorded with it. */
  async terminate(instanceId, reason) {
    let path = `${instancePath(instanceIdOf(instanceId, "terminate()"))}/terminate`;
    if (reason !== undefined && reason !== null) path += `?${new URLSearchParams({ reason: String(reason) })}`;
    (await check(await this.call("POST", path))).resume();
  }

  /** The standard answer of an HTTP function that started an orchestration: 202 with the management
   *  payload as JSON and `location: <statusQueryGetUri>`, as Durable Functions'. */
  checkStatusResponse(started) {
    const { Response } = require("./response");
    const payload = management(started);
    return new Response(payload, { status: 202, headers: { location: payload.statusQueryGetUri } });
  }
}

// --- durable payloads (PROTOCOL.md §7.4) --------------------------------------------------------------

const PAYLOAD_LIMIT = 64 * 1024;
// The fields of events and answers that may hold a payload.
const PAYLOAD_FIELDS = ["input", "result", "data", "output"];

/** The key a payload reference names, or null when `value` is no reference. */
function payloadKey(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return null;
  const keys = Object.keys(value);
  if (keys.length !== 2 || !("bytes" in value)) return null;
  const key = value["$nimbus.payload"];
  return typeof key === "string" ? key : null;
}

/** Keeps JSON text (a Buffer) as a durable payload: its reference. */
async function offloadPayload(text) {
  const res = await check(await request(client(), "POST", "/_nimbus/durable/payloads", {
    body: text,
    headers: { "content-type": "application/json" },
  }));
  return JSON.parse((await readAll(res)).toString("utf8"));
}

/** The value a reference stands for; any other value as it is. */
async function fetchPayload(value) {
  const key = payloadKey(value);
  if (key === null) return value;
  const res = await check(await request(client(), "GET", `/_nimbus/durable/payloads/${encodeURIComponent(key)}`));
  return JSON.parse((await readAll(res)).toString("utf8"));
}

/** Replaces, in place, the references in the payload fields of `events` by their values. */
async function fetchPayloads(events) {
  for (const event of events) {
    if (event === null || typeof event !== "object") continue;
    for (const field of PAYLOAD_FIELDS) {
      if (payloadKey(event[field]) !== null) event[field] = await fetchPayload(event[field]);
    }
  }
}

/** Replaces, in place, the payload fields of `objects` whose JSON is above the limit by references. */
async function offloadPayloads(objects) {
  for (const obj of objects) {
    for (const field of PAYLOAD_FIELDS) {
      if (!(field in obj)) continue;
      const text = Buffer.from(strictJson(obj[field]), "utf8");
      if (text.length > PAYLOAD_LIMIT) obj[field] = await offloadPayload(text);
    }
  }
}

/** The AI gateway from a function, with the grant `ai:<model>` (or `ai:*`): OpenAI's chat completions
 *  and embeddings. Usage is metered to the user the function serves (the caller's `sub`, sent as
 *  OpenAI's `user`); `model` defaults to the gateway's first model.
 *
 *    const answer = await ctx.ai.chat([{ role: "user", content: "Hi" }]);   // the chat.completion
 *    for await (const delta of ctx.ai.chatStream(messages)) { ... }         // the text as generated
 *    const vectors = await ctx.ai.embed(["a", "b"]);                        // one vector per input */
class Ai {
  constructor(c, traceparent, user) {
    this.c = c;
    this.traceparent = traceparent;
    this.user = user;
  }

  post(path, body) {
    if (this.user != null && body.user === undefined) body.user = this.user;
    const headers = { "content-type": "application/json" };
    return request(this.c, "POST", path, { body: JSON.stringify(body), headers, traceparent: this.traceparent });
  }

  /** One whole answer: OpenAI's `chat.completion` (`.choices[0].message.content`). `options` are
   *  OpenAI's (`model`, `temperature`, `max_tokens`, `tools`, `response_format`...). */
  async chat(messages, options = {}) {
    const res = await check(await this.post("/v1/chat/completions", { ...options, messages }));
    return JSON.parse((await readAll(res)).toString("utf8"));
  }

  /** The answer's text, piece by piece as the model generates it. A stream the gateway could not
   *  finish throws a PlatformError (code `stream_interrupted`) after the pieces that arrived. */
  async *chatStream(messages, options = {}) {
    const res = await check(await this.post("/v1/chat/completions", { ...options, messages, stream: true }));
    let pending = "";
    res.setEncoding("utf8");
    for await (const chunk of res) {
      pending += chunk;
      let end;
      while ((end = pending.indexOf("\n\n")) >= 0) {
        const event = pending.slice(0, end);
        pending = pending.slice(end + 2);
        const data = event
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).trimStart())
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        const value = JSON.parse(data);
        if (value.error) {
          throw new PlatformError(502, value.error.code || "stream_interrupted", value.error.message || "");
        }
        for (const choice of value.choices || []) {
          const text = choice.delta && choice.delta.content;
          if (text) yield text;
        }
      }
    }
    throw new PlatformError(502, "stream_interrupted", "the answer ended before its end");
  }

  /** Embeddings: one vector for a string, an array of vectors for an array of them. */
  async embed(input, options = {}) {
    const res = await check(await this.post("/v1/embeddings", { ...options, input }));
    const data = JSON.parse((await readAll(res)).toString("utf8")).data.sort((a, b) => a.index - b.index);
    const vectors = data.map((d) => d.embedding);
    return typeof input === "string" ? vectors[0] : vectors;
  }
}

module.exports = {
  Ai, Blob, Docs, Durable, PlatformError, Queue, client,
  PAYLOAD_LIMIT, fetchPayload, fetchPayloads, offloadPayload, offloadPayloads,
};
