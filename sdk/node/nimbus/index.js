"use strict";
// The Nimbus Node.js SDK: declare functions on an App and export it from the entry file; the worker
// (worker.js) serves it to the nimbus host. Zero dependencies. See ../README.md.
//
//   const { App, sse } = require("nimbus");
//   const app = new App();
//   app.http("/hello", { methods: ["GET"] }, async (req, ctx) => ({ hello: req.query.get("name") ?? "world" }));
//   app.orchestrator(function* greet(ctx) { return yield ctx.callActivity("hello", ctx.getInput()); });
//   module.exports = app;

const { App } = require("./lib/app");
const { Response, HttpError, stream, sse } = require("./lib/response");
const { PlatformError } = require("./lib/platform");
const { version } = require("./package.json");

module.exports = { App, Response, HttpError, PlatformError, stream, sse, version };

// Orchestrations' classes load when first asked for: an app without orchestrators never parses them.
for (const name of ["RetryPolicy", "TaskFailedError", "OrchestrationContext"]) {
  Object.defineProperty(module.exports, name, { enumerable: true, get: () => require("./lib/durable")[name] });
}
