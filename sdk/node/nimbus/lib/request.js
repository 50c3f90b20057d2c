"use strict";
// The request a handler sees. The body is read lazily: `for await (const chunk of req.body)` yields
// Buffers as they arrive; text()/json()/buffer() read the rest at once and remember it.

const { HttpError } = require("./response");

class Request {
  /** @param {import("http").IncomingMessage} message */
  constructor(message, { path, query, params, claims, invocationId }) {
    this._message = message;
    this._buffered = null; // Buffer once read whole
    this._streamed = false;
    this.method = message.method;
    this.url = message.url;
    this.path = path;
    this.query = query;
    this.headers = message.headers;
    this.params = params;
    this.claims = claims;
    this.invocationId = invocationId;
  }

  /** True once the body was read, as a whole or in part. */
  get bodyUsed() {
    return this._buffered !== null || this._streamed;
  }

  /** The body as an async iterable of Buffers, delivered as they arrive. Iterating again continues
   *  where the last loop stopped; leaving a loop early does not close the connection. */
  get body() {
    if (this._buffered !== null) {
      const buf = this._buffered;
      return (async function* () {
        if (buf.length) yield buf;
      })();
    }
    this._streamed = true;
    return bodyChunks(this._message);
  }

  /** The whole body as a Buffer. */
  async buffer() {
    if (this._buffered !== null) return this._buffered;
    if (this._streamed) {
      throw new TypeError("nimbus: the request body was already read as a stream (req.body)");
    }
    const chunks = [];
    for await (const chunk of bodyChunks(this._message)) chunks.push(chunk);
    this._buffered = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
    return this._buffered;
  }

  /** The whole body as an ArrayBuffer. */
  async arrayBuffer() {
    const buf = await this.buffer();
    return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  }

  /** The whole body decoded as UTF-8. */
  async text() {
    return (await this.buffer()).toString("utf8");
  }

  /** The body parsed as JSON; invalid JSON answers 400 invalid_json unless the handler catches it. */
  async json() {
    const text = await this.text();
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new HttpError(400, "invalid_json", `the request body is not valid JSON: ${err.message}`);
    }
  }
}

/** Chunks of an IncomingMessage without destroying it when the loop ends early (the response
 *  still has to be written on the same connection). */
function bodyChunks(message) {
  if (typeof message.iterator === "function") return message.iterator({ destroyOnReturn: false });
  return message[Symbol.asyncIterator]();
}

module.exports = { Request };
