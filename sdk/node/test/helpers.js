"use strict";
// Test helpers (not a test file): start a real worker process on a temporary entry and socket, and
// talk HTTP to it over the Unix socket. Node's runner also loads this file as a test; it defines none.

const fs = require("fs");
const os = require("os");
const path = require("path");
const net = require("net");
const http = require("http");
const { spawn } = require("child_process");

const SDK_DIR = path.resolve(__dirname, "..");
const WORKER = path.join(SDK_DIR, "nimbus", "worker.js");

/** Waits until `check()` returns a truthy value, polling every `every` ms, up to `timeout` ms. */
async function waitFor(check, { timeout = 5000, every = 10, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

function canConnect(socketPath) {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/**
 * Writes `source` (unless null) as functions/app.js in a temp app folder (fresh unless `dir` is
 * given) and starts the worker on it; `env` adds to or overrides the worker's environment.
 * Resolves once the socket accepts connections (or rejects with the worker's stderr if it exits).
 */
async function startWorker(source, { env = {}, entry = "functions/app.js", wait = true, dir, socketPath } = {}) {
  dir = dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "nimbus-node-"));
  if (source !== null) {
    fs.mkdirSync(path.join(dir, path.dirname(entry)), { recursive: true });
    fs.writeFileSync(path.join(dir, entry), source);
  }
  socketPath = socketPath ?? path.join(dir, "w.sock");
  const started = Date.now();
  const proc = spawn(process.execPath, [WORKER], {
    cwd: dir,
    env: {
      PATH: process.env.PATH,
      NODE_PATH: SDK_DIR,
      NIMBUS_PROTOCOL: "1",
      NIMBUS_WORKER_SOCKET: socketPath,
      NIMBUS_ENTRY: entry,
      NIMBUS_APP_DIR: dir,
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  let stdout = "";
  proc.stderr.on("data", (d) => (stderr += d));
  proc.stdout.on("data", (d) => (stdout += d));
  const exited = new Promise((resolve) => proc.once("exit", (code, signal) => resolve({ code, signal })));
  let exitInfo = null;
  exited.then((info) => (exitInfo = info));
  const worker = {
    dir,
    socketPath,
    proc,
    exited,
    marker: (name) => path.join(dir, name),
    stderr: () => stderr,
    stdout: () => stdout,
    startupMs: null,
    async stop({ keepDir = false } = {}) {
      if (exitInfo === null) proc.kill("SIGKILL");
      await exited;
      if (!keepDir) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  if (wait) {
    await waitFor(
      async () => {
        if (exitInfo !== null) throw new Error(`worker exited (${JSON.stringify(exitInfo)}) before listening:\n${stderr}`);
        return canConnect(socketPath);
      },
      { what: "the worker socket" },
    );
    worker.startupMs = Date.now() - started;
  }
  return worker;
}

/**
 * One HTTP request over the worker's socket. Resolves with `{ status, headers, body, text, json() }`.
 * `body` may be a string/Buffer; `agent` an http.Agent for keep-alive tests.
 */
function request(worker, { method = "GET", path: p = "/", headers = {}, body, agent = false } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: worker.socketPath, method, path: p, headers, agent }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const buf = Buffer.concat(chunks);
        resolve({
          status: res.statusCode,
          headers: res.headers,
          body: buf,
          text: buf.toString("utf8"),
          json: () => JSON.parse(buf.toString("utf8")),
          reusedSocket: req.reusedSocket,
        });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

module.exports = { startWorker, request, waitFor, SDK_DIR, WORKER };
