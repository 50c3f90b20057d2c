"use strict";
// Brands shared across copies of the SDK. An app may load its own copy of `nimbus` (say from
// node_modules) while the worker runs this one; `instanceof` would fail across copies, so objects
// carry a registered symbol instead and are recognised by it.

const KIND = Symbol.for("nimbus.kind");

function kindOf(value) {
  return value !== null && (typeof value === "object" || typeof value === "function") ? value[KIND] : undefined;
}

module.exports = { KIND, kindOf };
