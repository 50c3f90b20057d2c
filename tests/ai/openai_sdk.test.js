"use strict";
// The AI gateway as OpenAI's own Node.js SDK (npm `openai`) sees it, unchanged but for `baseURL`:
// a fake OpenAI-compatible upstream (an http.Server here), the real binary (`target/debug/nimbus`, or
// $NIMBUS_BIN) on a temporary app whose `/v1/*` takes API keys, a key from the admin API, then a
// streamed chat completion (with and without usage), a tool call, embeddings, the model list and the
// SDK's typed errors. Then a node with no backend, whose local models answer (scripts/models.sh).
//
// Run by `scripts/test.sh` with the SDK installed in target/openai-npm (`$OPENAI_NPM` names another
// copy); by hand: `node --test tests/ai/openai_sdk.test.js`.

const assert = require("node:assert/strict");
const { spawn } = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const os = require("node:os");
const path = require("node:path");
const { after, before, test } = require("node:test");

const ROOT = path.resolve(__dirname, "..", "..");
const BIN = process.env.NIMBUS_BIN || path.join(ROOT, "target", "debug", "nimbus");
const OpenAI = require(process.env.OPENAI_NPM || path.join(ROOT, "target", "openai-npm", "node_modules", "openai"));
const WORDS = ["Hello", " from", " the", " fake", " upstream"];

const seen = [];
let upstream, client;

function fakeUpstream(req, res) {
  let raw = "";
  req.on("data", (d) => (raw += d));
  req.on("end", () => {
    const body = JSON.parse(raw);
    seen.push({ url: req.url, headers: req.headers, body });
    const json = (value) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(value));
    };
    if (req.url.endsWith("/embeddings")) {
      const inputs = Array.isArray(body.input) ? body.input : [body.input];
      return json({
        object: "list",
        model: body.model,
        data: inputs.map((s, index) => ({ object: "embedding", index, embedding: [0.25, -0.5, s.length] })),
        usage: { prompt_tokens: 4, total_tokens: 4 },
      });
    }
    if (body.tools) {
      const call = { id: "call_1", type: "function", function: { name: body.tools[0].function.name, arguments: '{"city":"Oslo"}' } };
      return json({
        id: "chatcmpl-2", object: "chat.completion", created: 1, model: body.model,
        choices: [{ index: 0, finish_reason: "tool_calls", message: { role: "assistant", content: null, tool_calls: [call] } }],
        usage: { prompt_tokens: 30, completion_tokens: 9, total_tokens: 39 },
      });
    }
    if (!body.stream) {
      return json({
        id: "chatcmpl-1", object: "chat.completion", created: 1, model: body.model,
        choices: [{ index: 0, finish_reason: "stop", message: { role: "assistant", content: WORDS.join("") } }],
        usage: { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 },
      });
    }
    res.writeHead(200, { "content-type": "text/event-stream" });
    const base = { id: "chatcmpl-3", object: "chat.completion.chunk", created: 1, model: body.model };
    const event = (payload) => res.write(`data: ${typeof payload === "string" ? payload : JSON.stringify(payload)}\n\n`);
    for (const word of WORDS) event({ ...base, choices: [{ index: 0, delta: { content: word }, finish_reason: null }] });
    event({ ...base, choices: [{ index: 0, delta: {}, finish_reason: "stop" }] });
    if (body.stream_options && body.stream_options.include_usage) {
      event({ ...base, choices: [], usage: { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 } });
    }
    event("[DONE]");
    res.end();
  });
}

/** Starts `nimbus up` on a temporary app with this manifest; its URL and an API key for it. */
async function startNode(manifest) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nimbus-openai-npm-"));
  fs.writeFileSync(path.join(dir, "nimbus.toml"), manifest);
  // The models folder stays (the local models); every other NIMBUS_ setting is the test's own.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("NIMBUS_") || k === "NIMBUS_MODELS"));
  const node = spawn(BIN, ["up", dir, "--port", "0"], { env: { ...env, NIMBUS_LOG: "warn" }, stdio: ["ignore", "pipe", "ignore"] });
  nodes.push({ node, dir });
  const url = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`nimbus up did not print its URL:\n${out}`)), 30000);
    node.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/listening on\s+(http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  });
  const token = fs.readFileSync(path.join(dir, ".nimbus", "admin-token"), "utf8").trim();
  const created = await fetch(`${url}/_nimbus/admin/keys`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ name: "sdk" }),
  });
  assert.equal(created.status, 201);
  const { key } = await created.json();
  return { url, key };
}

const ROUTE = `[[routes]]\npath = "/v1/*"\nbackend = "ai"\nauth = "api_key"\n\n[ai]\n`;
const nodes = [];

before(async () => {
  assert.ok(fs.existsSync(BIN), `${BIN} is missing: run \`cargo build -p nimbus\` first`);
  upstream = http.createServer(fakeUpstream);
  await new Promise((resolve) => upstream.listen(0, "127.0.0.1", resolve));
  const { url, key } = await startNode(
    ROUTE +
      `[[ai.backends]]\nname = "fake"\nurl = "http://127.0.0.1:${upstream.address().port}/v1"\napi_key = "sk-upstream"\n` +
      `models = ["gpt-4o-mini", "text-embedding-3-small"]\nmodel_map = { fast = "gpt-4o-mini" }\n`,
  );
  client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0, timeout: 20000 });
  client.nodeUrl = url;
});

after(() => {
  for (const { node, dir } of nodes) {
    node.kill("SIGTERM");
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (upstream) upstream.close();
});

test("a streamed chat completion, without and with usage", async () => {
  const chunks = [];
  for await (const chunk of await client.chat.completions.create({ model: "fast", messages: [{ role: "user", content: "hi" }], stream: true })) {
    chunks.push(chunk);
  }
  assert.equal(chunks.map((c) => (c.choices[0] && c.choices[0].delta.content) || "").join(""), WORDS.join(""));
  assert.ok(chunks.every((c) => !c.usage), "no usage chunk unless asked");
  const last = seen[seen.length - 1];
  assert.equal(last.body.model, "gpt-4o-mini");
  assert.equal(last.headers.authorization, "Bearer sk-upstream");

  const withUsage = [];
  const stream = await client.chat.completions.create({
    model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }], stream: true, stream_options: { include_usage: true },
  });
  for await (const chunk of stream) withUsage.push(chunk);
  assert.equal(withUsage[withUsage.length - 1].usage.completion_tokens, 5);
});

test("a whole answer and a tool call", async () => {
  const answer = await client.chat.completions.create({ model: "fast", messages: [{ role: "user", content: "hi" }] });
  assert.equal(answer.choices[0].message.content, WORDS.join(""));
  assert.equal(answer.usage.total_tokens, 17);
  const tools = [{ type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } } }];
  const called = await client.chat.completions.create({ model: "fast", messages: [{ role: "user", content: "Weather in Oslo?" }], tools });
  const call = called.choices[0].message.tool_calls[0];
  assert.deepEqual([call.function.name, JSON.parse(call.function.arguments)], ["get_weather", { city: "Oslo" }]);
});

test("embeddings and models", async () => {
  const result = await client.embeddings.create({ model: "text-embedding-3-small", input: ["a", "bcd"], encoding_format: "float" });
  assert.deepEqual(result.data.map((d) => d.embedding), [[0.25, -0.5, 1], [0.25, -0.5, 3]]);
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  assert.deepEqual(ids, ["gpt-4o-mini", "text-embedding-3-small", "fast"]);
});

test("errors are the SDK's typed errors", async () => {
  await assert.rejects(
    client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "hi" }] }),
    (e) => e instanceof OpenAI.NotFoundError && /no-such-model/.test(e.message),
  );
  await assert.rejects(client.chat.completions.create({ model: "fast", messages: [] }), OpenAI.BadRequestError);
  const stranger = new OpenAI({ baseURL: `${client.nodeUrl}/v1`, apiKey: "not-a-key", maxRetries: 0 });
  await assert.rejects(stranger.chat.completions.create({ model: "fast", messages: [{ role: "user", content: "hi" }] }), OpenAI.AuthenticationError);
});

test("the local models: a streamed answer and embeddings", async () => {
  const { url, key } = await startNode(ROUTE);
  const local = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0, timeout: 120000 });
  const messages = [
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: "What is the capital of France?" },
  ];
  const pieces = [];
  let usage;
  const stream = await local.chat.completions.create({
    model: "SmolLM2-135M-Instruct.Q4_1", messages, temperature: 0, max_tokens: 40, stream: true, stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    if (chunk.choices[0] && chunk.choices[0].delta.content) pieces.push(chunk.choices[0].delta.content);
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(pieces.length > 3, `${pieces}`);
  assert.match(pieces.join(""), /Paris/);
  assert.equal(usage.completion_tokens, pieces.length);
  // The SDK asks for base64 and decodes it.
  const result = await local.embeddings.create({ model: "all-MiniLM-L6-v2", input: ["A cat sits on the mat.", "A kitten rests on a rug.", "Stocks fell."] });
  const [a, b, c] = result.data.map((d) => d.embedding);
  const dot = (x, y) => x.reduce((sum, v, i) => sum + v * y[i], 0);
  assert.equal(a.length, 384);
  assert.ok(Math.abs(dot(a, a) - 1) < 1e-4);
  assert.ok(dot(a, b) > dot(a, c) + 0.3, `${dot(a, b)} ${dot(a, c)}`);
});
