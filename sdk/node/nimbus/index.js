"use strict";
// The Nimbus Node.js SDK: declare functions on an App and export it from the entry file; the worker
// (worker.js) serves it to the nimbus host. Zero dependencies. See ../README.md.
//
//   const { App, sse } = require("nimbus");
//   const app = new App();
//   app.http("/hello", { methods: ["GET"] }, async (req, ctx) => ({ hello: req.query.get("name") ?? "world" }));
//   module.exports = app;

const { App } = require("./lib/app");
const { Response, HttpError, stream, sse } = require("./lib/response");
const { PlatformError } = require("./lib/platform");
const { version } = require("./package.json");

module.exports = { App, Response, HttpError, PlatformError, stream, sse, version };
