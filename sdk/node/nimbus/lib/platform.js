"use strict";
// The platform API as a function sees it: `ctx.blob` (and, later, `ctx.docs`), over the host's
// private Unix socket (NIMBUS_PLATFORM_SOCKET) with the instance's scoped token
// (NIMBUS_PLATFORM_TOKEN). What a function may reach is what the manifest grants it
// (`[functions.<name>] grants = ["blob:uploads:rw"]`); anything else answers 403 and throws.

const http = require("http");
const { Readable } = require("stream");

class PlatformError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.name = status === 404 ? "NotFound" : "PlatformError";
    this.status = status;
    this.code = code;
    this.detail = message;
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
  const text = (await readAll(res)).toString("utf8");
  let code = `http_${res.statusCode}`;
  let message = text;
  try {
    ({ code, message } = JSON.parse(text).error);
  } catch {}
  throw new PlatformError(res.statusCode, code, message);
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

module.exports = { Blob, PlatformError, client };
