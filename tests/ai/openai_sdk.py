"""The AI gateway as OpenAI's own Python SDK sees it, unchanged but for `base_url`.

Starts a fake OpenAI-compatible upstream (a ThreadingHTTPServer here) and the real binary
(`target/debug/nimbus`, or `$NIMBUS_BIN`) on a temporary app whose `/v1/*` route takes API keys,
creates a key with the admin API, and then uses `openai.OpenAI(base_url=…/v1, api_key=key)`: a
streamed chat completion (with and without `stream_options.include_usage`), a tool call, embeddings,
the model list, and the SDK's typed errors for an unknown model and a bad key. Then the same SDK
against a node with no backend, so the local models answer (`scripts/models.sh` installs them).

Run by `scripts/test.sh` in the virtualenv `target/test-venv` (`pip install openai`); by hand:
`target/test-venv/bin/python tests/ai/openai_sdk.py -v`.
"""

import json
import os
import sys
import threading
import unittest
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nimbus_node import Node  # noqa: E402

WORDS = ["Hello", " from", " the", " fake", " upstream"]


class Upstream(BaseHTTPRequestHandler):
    """Speaks OpenAI's chat/completions (streamed or not, tool calls) and embeddings."""

    protocol_version = "HTTP/1.1"
    seen = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Upstream.seen.append((self.path, self.headers, body))  # headers: case-insensitive
        if self.path.endswith("/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [{"object": "embedding", "index": i, "embedding": [0.25, -0.5, float(len(s))]} for i, s in enumerate(inputs)]
            return self.json({"object": "list", "model": body["model"], "data": data,
                              "usage": {"prompt_tokens": 4, "total_tokens": 4}})
        if body.get("tools"):
            call = {"id": "call_1", "type": "function",
                    "function": {"name": body["tools"][0]["function"]["name"], "arguments": '{"city": "Oslo"}'}}
            return self.json({"id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "tool_calls",
                                           "message": {"role": "assistant", "content": None, "tool_calls": [call]}}],
                              "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}})
        if not body.get("stream"):
            return self.json({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": "".join(WORDS)}}],
                              "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(payload):
            data = ("data: %s\n\n" % (payload if isinstance(payload, str) else json.dumps(payload))).encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        base = {"id": "chatcmpl-3", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        for word in WORDS:
            event(dict(base, choices=[{"index": 0, "delta": {"content": word}, "finish_reason": None}]))
        event(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if body.get("stream_options", {}).get("include_usage"):
            event(dict(base, choices=[], usage={"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}))
        event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def json(self, value):
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


MANIFEST = """
[[routes]]
path = "/v1/*"
backend = "ai"
auth = "api_key"

[ai]
[[ai.backends]]
name = "fake"
url = "{upstream}/v1"
api_key = "sk-upstream"
models = ["gpt-4o-mini", "text-embedding-3-small"]
model_map = {{ fast = "gpt-4o-mini" }}
"""


def api_key(node):
    """A key from the admin API, for the `/v1/*` route."""
    request = urllib.request.Request(node.url + "/_nimbus/admin/keys", data=json.dumps({"name": "sdk"}).encode(),
                                     headers={"Authorization": "Bearer " + node.admin_token(),
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["key"]


def setUpModule():
    global SERVER, NODE, CLIENT
    SERVER = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=SERVER.serve_forever, daemon=True).start()
    NODE = Node(MANIFEST.format(upstream="http://127.0.0.1:%d" % SERVER.server_address[1]))
    CLIENT = openai.OpenAI(base_url=NODE.url + "/v1", api_key=api_key(NODE), max_retries=0, timeout=20)


def tearDownModule():
    CLIENT.close()
    NODE.stop()
    SERVER.shutdown()
    SERVER.server_close()


class OpenAISdk(unittest.TestCase):
    def test_a_streamed_chat_completion(self):
        stream = CLIENT.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}], stream=True)
        chunks = list(stream)
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), "".join(WORDS))
        self.assertTrue(all(c.usage is None for c in chunks), "no usage chunk unless asked")
        path, headers, body = Upstream.seen[-1]
        self.assertEqual(body["model"], "gpt-4o-mini")
        self.assertEqual(headers["Authorization"], "Bearer sk-upstream")

    def test_a_streamed_chat_completion_with_usage(self):
        stream = CLIENT.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                                stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        self.assertEqual(chunks[-1].usage.completion_tokens, 5)
        self.assertEqual(chunks[-1].choices, [])

    def test_a_whole_answer_and_a_tool_call(self):
        answer = CLIENT.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(answer.choices[0].message.content, "".join(WORDS))
        self.assertEqual(answer.usage.total_tokens, 17)
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
        answer = CLIENT.chat.completions.create(model="fast", messages=[{"role": "user", "content": "Weather in Oslo?"}],
                                                tools=tools, tool_choice="auto")
        call = answer.choices[0].message.tool_calls[0]
        self.assertEqual((call.function.name, json.loads(call.function.arguments)), ("get_weather", {"city": "Oslo"}))

    def test_embeddings_and_models(self):
        result = CLIENT.embeddings.create(model="text-embedding-3-small", input=["a", "bcd"])
        self.assertEqual([d.embedding for d in result.data], [[0.25, -0.5, 1.0], [0.25, -0.5, 3.0]])
        self.assertEqual(result.usage.prompt_tokens, 4)
        self.assertEqual([m.id for m in CLIENT.models.list()], ["gpt-4o-mini", "text-embedding-3-small", "fast"])

    def test_errors_are_the_sdks_typed_errors(self):
        with self.assertRaises(openai.NotFoundError) as caught:
            CLIENT.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        self.assertIn("no-such-model", str(caught.exception))
        with self.assertRaises(openai.BadRequestError):
            CLIENT.chat.completions.create(model="fast", messages=[])
        with openai.OpenAI(base_url=NODE.url + "/v1", api_key="not-a-key", max_retries=0) as stranger:
            with self.assertRaises(openai.AuthenticationError):
                stranger.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])


LOCAL_MANIFEST = """
[[routes]]
path = "/v1/*"
backend = "ai"
auth = "api_key"

[ai]
"""


class LocalModels(unittest.TestCase):
    """The embedded provider (SmolLM2 and all-MiniLM-L6-v2) through the unchanged SDK."""

    @classmethod
    def setUpClass(cls):
        cls.node = Node(LOCAL_MANIFEST)
        cls.client = openai.OpenAI(base_url=cls.node.url + "/v1", api_key=api_key(cls.node), max_retries=0, timeout=120)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.node.stop()

    def test_a_streamed_answer_arrives_in_pieces_with_its_usage(self):
        messages = [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"}]
        stream = self.client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=messages,
                                                     temperature=0, max_tokens=40, stream=True,
                                                     stream_options={"include_usage": True})
        chunks = list(stream)
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        self.assertGreater(len(pieces), 3)
        self.assertIn("Paris", "".join(pieces))
        self.assertEqual(chunks[-1].usage.completion_tokens, len(pieces))

    def test_embeddings_rank_by_meaning(self):
        # The SDK asks for base64 and decodes it.
        texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply."]
        result = self.client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
        vectors = [d.embedding for d in result.data]
        self.assertEqual([len(v) for v in vectors], [384] * 3)
        dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
        self.assertAlmostEqual(dot(vectors[0], vectors[0]), 1.0, places=4)
        self.assertGreater(dot(vectors[0], vectors[1]), dot(vectors[0], vectors[2]) + 0.3)

    def test_what_the_local_model_cannot_do_is_a_bad_request(self):
        tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", tools=tools,
                                                messages=[{"role": "user", "content": "hi"}])
        self.assertIn("tools", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
