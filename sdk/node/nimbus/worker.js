#!/usr/bin/env node
"use strict";
// The worker entry point: `node sdk/node/nimbus/worker.js`, started by the nimbus host with
// NIMBUS_WORKER_SOCKET and NIMBUS_ENTRY (PROTOCOL.md §1). Loads the entry file, which exports an App,
// and serves it over HTTP/1.1 on the Unix socket until SIGTERM/SIGINT.

const fs = require("fs");
const path = require("path");
const Module = require("module");
const { kindOf } = require("./lib/kind");
const { createWorkerServer } = require("./lib/server");

// After SIGTERM, how long requests still running may take before the process exits anyway (the host
// waited for in-flight invocations already and sends SIGKILL 5 s after SIGTERM).
const STOP_GRACE_MS = 3000;

function die(message) {
  process.stderr.write(`nimbus: ${message}\n`);
  process.exit(1);
}

/** Lets the entry `require("nimbus")` find this SDK even without NODE_PATH; an app's own
 *  node_modules still comes first. */
function exposeSdk() {
  const sdkParent = path.dirname(__dirname);
  const current = (process.env.NODE_PATH || "").split(path.delimiter).filter(Boolean);
  if (current.map((p) => path.resolve(p)).includes(sdkParent)) return;
  process.env.NODE_PATH = [...current, sdkParent].join(path.delimiter);
  if (typeof Module._initPaths === "function") Module._initPaths();
}

function loadApp(entry) {
  const file = path.resolve(process.cwd(), entry);
  if (!fs.existsSync(file)) die(`the entry file ${entry} does not exist (looked for ${file})`);
  let exported;
  try {
    exported = require(file);
  } catch (err) {
    if (err && err.code === "ERR_REQUIRE_ESM") {
      die(`${entry} is an ES module; the Node.js SDK loads CommonJS entries (module.exports = app)`);
    }
    die(`loading ${entry} failed:\n${(err && err.stack) || err}`);
  }
  for (const candidate of [exported, exported && exported.app, exported && exported.default]) {
    if (kindOf(candidate) === "app") return candidate;
  }
  die(
    `${entry} does not export a nimbus App: end it with \`module.exports = app\` (or \`module.exports = { app }\`), ` +
      `where app = new App() from require("nimbus")`,
  );
}

/** Removes a stale socket file; refuses to remove anything that is not a socket. */
function clearSocket(socketPath) {
  let stat;
  try {
    stat = fs.lstatSync(socketPath);
  } catch (err) {
    if (err.code === "ENOENT") return;
    die(`cannot inspect ${socketPath}: ${err.message}`);
  }
  if (!stat.isSocket()) die(`${socketPath} exists and is not a socket; refusing to remove it`);
  fs.unlinkSync(socketPath);
}

function main() {
  // Read once, before the entry loads: neither user code nor the processes it spawns inherit it.
  const key = process.env.NIMBUS_WORKER_KEY;
  delete process.env.NIMBUS_WORKER_KEY;
  const socketPath = process.env.NIMBUS_WORKER_SOCKET;
  const entry = process.env.NIMBUS_ENTRY;
  if (!socketPath) die("NIMBUS_WORKER_SOCKET is not set: this program is started by the nimbus host");
  if (!entry) die("NIMBUS_ENTRY is not set: it names the app's entry file, like functions/app.js");
  const dev = process.env.NIMBUS_DEV === "1";

  exposeSdk();
  const app = loadApp(entry);

  process.on("unhandledRejection", (reason) => {
    process.stderr.write(`nimbus: unhandled promise rejection: ${(reason && reason.stack) || reason}\n`);
  });

  clearSocket(socketPath);
  const server = createWorkerServer(app, { dev, key });
  server.on("error", (err) => die(`cannot listen on ${socketPath}: ${err.message}`));
  server.listen(socketPath, () => {
    const n = app.functions.length;
    process.stderr.write(`nimbus: node worker listening on ${socketPath} (${n} function${n === 1 ? "" : "s"})\n`);
  });

  let stopping = false;
  const stop = (signal) => {
    if (stopping) process.exit(0); // a second signal: no more waiting
    stopping = true;
    const exit = () => process.exit(0);
    server.close(); // stops accepting and removes the socket file
    if (typeof server.closeIdleConnections === "function") server.closeIdleConnections();
    if (server.inflight() === 0) return exit();
    process.stderr.write(`nimbus: ${signal}: waiting for ${server.inflight()} request(s) to finish\n`);
    server.on("idle", exit);
    setTimeout(exit, STOP_GRACE_MS);
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

main();
