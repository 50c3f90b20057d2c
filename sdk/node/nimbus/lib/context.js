"use strict";
// The invocation context: names, ids, trace context, the cancellation signal and a logger that
// writes to stderr (which the host reads line by line into its log).

const util = require("util");

/** A console-like logger; each line is prefixed with the invocation id so concurrent invocations
 *  of one instance can be told apart. */
function makeLogger(invocationId, write = (s) => process.stderr.write(s)) {
  const emit = (level) => (...args) => {
    const prefix = level ? `[${invocationId}] ${level}: ` : `[${invocationId}] `;
    const text = util.format(...args);
    write(
      text
        .split("\n")
        .map((line) => prefix + line)
        .join("\n") + "\n",
    );
  };
  const log = emit("");
  return { log, info: log, debug: emit("debug"), warn: emit("warning"), error: emit("error"), trace: emit("trace") };
}

class Context {
  constructor({ functionName, invocationId, traceparent, timeoutMs, signal, trigger, claims }) {
    this.functionName = functionName;
    this.invocationId = invocationId;
    this.traceparent = traceparent;
    this.timeoutMs = timeoutMs;
    this.signal = signal;
    this.trigger = trigger;
    this.log = makeLogger(invocationId);
    // (HTTP) the caller's claims: whom `ai` works for
    this._claims = claims ?? null;
  }

  /** The platform's blob containers this function is granted (`[functions.<name>] grants`). */
  get blob() {
    const platform = require("./platform");
    return new platform.Blob(platform.client(), this.traceparent);
  }

  /** The platform's docs containers this function is granted (`[functions.<name>] grants`). */
  get docs() {
    const platform = require("./platform");
    return new platform.Docs(platform.client(), this.traceparent);
  }

  /** The queue `name` (`grants = ["queues:jobs:rw"]`): `await ctx.queue("jobs").send(data)`. */
  queue(name) {
    const platform = require("./platform");
    return new platform.Queue(platform.client(), name, this.traceparent);
  }

  /** Starts and manages orchestrations (`[functions.<name>] grants = ["durable:research:rw"]`). */
  get durable() {
    const platform = require("./platform");
    return new platform.Durable(platform.client(), this.traceparent);
  }

  /** Calls the AI gateway for the user this invocation serves (`grants = ["ai:gpt-4o-mini"]`). */
  get ai() {
    const platform = require("./platform");
    const sub = this._claims && typeof this._claims.sub === "string" ? this._claims.sub : undefined;
    return new platform.Ai(platform.client(), this.traceparent, sub);
  }
}

module.exports = { Context, makeLogger };
