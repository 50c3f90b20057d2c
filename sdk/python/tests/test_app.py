"""In-process tests of the public API: declarations, routes, and how return values go on the wire."""

import os
import subprocess
import sys
import unittest

import nimbus
from nimbus import _server
from nimbus._app import Route

SDK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def handler(req, ctx):
    return None


class DeclarationTest(unittest.TestCase):
    def test_index(self):
        app = nimbus.App()

        @app.http("/hello", methods=["get", "POST", "GET"])
        async def hello(req, ctx):
            return "hi"

        app.http("/items/{id}", name="item")(handler)
        self.assertIs(hello.__name__, "hello")  # the decorator returns the function itself
        self.assertEqual(
            app.index(),
            {
                "protocol": 1,
                "sdk": "python/0.1.0",
                "functions": [
                    {"name": "hello", "trigger": {"type": "http", "route": "/hello", "methods": ["GET", "POST"]}},
                    {"name": "item", "trigger": {"type": "http", "route": "/items/{id}", "methods": []}},
                ],
            },
        )
        self.assertEqual([f.name for f in app.functions], ["hello", "item"])

    def assert_route_error(self, route, *needles):
        app = nimbus.App()
        with self.assertRaises(ValueError) as caught:
            app.http(route)(handler)
        for needle in needles:
            self.assertIn(needle, str(caught.exception))

    def test_invalid_routes(self):
        self.assert_route_error("hello", "must start with '/'")
        self.assert_route_error("", "must start with '/'")
        self.assert_route_error("/_nimbus/worker/x", "reserved")
        self.assert_route_error("/_nimbus", "reserved")
        self.assert_route_error("/a/*/b", "'*'")
        self.assert_route_error("/a*", "'*'")
        self.assert_route_error("/a/x{id}", "either literal text or a whole {param}")
        self.assert_route_error("/a/{1x}", "{1x}")
        self.assert_route_error("/a/{id}/{id}", "twice")
        self.assert_route_error("/a?b=1", "'?'")
        self.assert_route_error(handler, "@app.http(\"/path\")")

    def test_duplicate_names(self):
        app = nimbus.App()
        app.http("/a")(handler)
        with self.assertRaises(ValueError) as caught:
            app.http("/b")(handler)
        self.assertIn("'handler' is already declared", str(caught.exception))
        app.http("/b", name="other")(handler)
        with self.assertRaises(ValueError):
            app.http("/c")(lambda req, ctx: None)  # "<lambda>" is not a name
        app.http("/c", name="c")(lambda req, ctx: None)

    def test_conflicting_routes(self):
        app = nimbus.App()
        app.http("/items/{id}", methods=["GET"], name="get")(handler)
        app.http("/items/{key}", methods=["PUT"], name="put")(handler)  # other methods: fine
        with self.assertRaises(ValueError) as caught:
            app.http("/items/{other}", name="any")(handler)  # all methods overlap GET
        self.assertIn("already served by function 'get'", str(caught.exception))

    def test_invalid_methods_and_handlers(self):
        app = nimbus.App()
        with self.assertRaises(ValueError):
            app.http("/a", methods=["GE T"])
        app.http("/a", methods="post")(handler)
        self.assertEqual(app.functions[0].methods, ("POST",))
        with self.assertRaises(TypeError):
            app.http("/b")("not a function")

    def test_http_error_defaults(self):
        error = nimbus.HTTPError(404)
        self.assertEqual((error.status, error.code, error.message), (404, "not_found", "not found"))
        error = nimbus.HTTPError(409, "taken", code="name_taken")
        self.assertEqual((error.code, error.message, str(error)), ("name_taken", "taken", "taken"))
        with self.assertRaises(ValueError):
            nimbus.HTTPError(99)

    def test_importing_nimbus_is_cheap(self):
        out = subprocess.run(
            [sys.executable, "-c", "import sys, nimbus; print(sorted(m for m in ('asyncio', 'json', 'logging') "
             "if m in sys.modules))"],
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": SDK_DIR},
            capture_output=True,
            text=True,
            check=True,
        )
        self.assertEqual(out.stdout.strip(), "[]")

    def test_request_and_context_are_exported(self):
        self.assertIs(nimbus.Request, _server.Request)
        self.assertIs(nimbus.Context, _server.Context)
        with self.assertRaises(AttributeError):
            nimbus.nothing_here


class RouteTest(unittest.TestCase):
    def test_match(self):
        cases = [
            ("/", "/", {}),
            ("/", "/a", None),
            ("/hello", "/hello", {}),
            ("/hello", "/hello/", None),
            ("/hello", "/hell", None),
            ("/items/{id}", "/items/42", {"id": "42"}),
            ("/items/{id}", "/items/", None),
            ("/items/{id}", "/items/4%2F2", {"id": "4/2"}),
            ("/items/{id}", "/items/42/x", None),
            ("/a/{x}/b/{y}", "/a/1/b/2", {"x": "1", "y": "2"}),
            ("/files/*", "/files", {"*": ""}),
            ("/files/*", "/files/", {"*": ""}),
            ("/files/*", "/files/a/b%20c", {"*": "a/b c"}),
            ("/files/*", "/filesx", None),
            ("/*", "/anything/at/all", {"*": "anything/at/all"}),
            ("/caf\u00e9", "/caf%C3%A9", {}),
        ]
        for pattern, path, expected in cases:
            with self.subTest(pattern=pattern, path=path):
                self.assertEqual(Route(pattern).match(path), expected)

    def test_most_specific_route_wins(self):
        app = nimbus.App()
        app.http("/*", name="catch_all")(handler)
        app.http("/items/{id}", name="item", methods=["GET"])(handler)
        app.http("/items/new", name="new", methods=["GET"])(handler)
        app.http("/items/*", name="items_rest")(handler)
        worker = _server.Worker(app)
        self.assertEqual(worker.route("GET", "/items/new")[0].name, "new")
        self.assertEqual(worker.route("GET", "/items/7"), (app._functions["item"], {"id": "7"}))
        self.assertEqual(worker.route("GET", "/items/7/x")[0].name, "items_rest")
        self.assertEqual(worker.route("POST", "/items/7")[0].name, "items_rest")
        self.assertEqual(worker.route("GET", "/other")[0].name, "catch_all")

    def test_not_found_and_method_not_allowed(self):
        app = nimbus.App()
        app.http("/a", methods=["GET"], name="a")(handler)
        app.http("/a", methods=["PUT"], name="a2")(handler)
        worker = _server.Worker(app)
        self.assertEqual(worker.route("HEAD", "/a")[0].name, "a")  # HEAD is served by GET
        with self.assertRaises(nimbus.HTTPError) as caught:
            worker.route("DELETE", "/a")
        self.assertEqual((caught.exception.status, caught.exception.code), (405, "method_not_allowed"))
        self.assertEqual(caught.exception.headers, {"allow": "GET, PUT"})
        with self.assertRaises(nimbus.HTTPError) as caught:
            worker.route("GET", "/b")
        self.assertEqual((caught.exception.status, caught.exception.code), (404, "not_found"))


async def agen():
    yield b"x"


class WireFormatTest(unittest.TestCase):
    def prepared(self, value):
        p = _server._Prepared(value)
        return p.status, [line.decode() for line in p.headers], p.payload

    def test_plain_values(self):
        self.assertEqual(self.prepared({"a": "\u00e9"}), (200, ["content-type: application/json"],
                                                           '{"a":"\u00e9"}'.encode()))
        self.assertEqual(self.prepared([1, 2]), (200, ["content-type: application/json"], b"[1,2]"))
        self.assertEqual(self.prepared("hi"), (200, ["content-type: text/plain; charset=utf-8"], b"hi"))
        self.assertEqual(self.prepared(b"\x00"), (200, ["content-type: application/octet-stream"], b"\x00"))
        self.assertEqual(self.prepared(None), (204, [], b""))

    def test_responses(self):
        self.assertEqual(self.prepared(nimbus.Response()), (200, [], b""))
        self.assertEqual(
            self.prepared(nimbus.Response("x", status=202, headers={"X-A": "1", "Content-Type": "text/csv"})),
            (202, ["x-a: 1", "content-type: text/csv"], b"x"),
        )
        self.assertEqual(
            self.prepared(nimbus.Response({"a": 1}, content_type="application/problem+json")),
            (200, ["content-type: application/problem+json"], b'{"a":1}'),
        )
        with self.assertRaises(ValueError):
            self.prepared(nimbus.Response("x", headers={"x-a": "1\r\nx-b: 2"}))
        with self.assertRaises(ValueError):
            nimbus.Response(status=1000)

    def test_streams(self):
        p = _server._Prepared(agen())
        self.assertIsNotNone(p.iterator)
        self.assertEqual(p.headers, [b"content-type: application/octet-stream"])
        p = _server._Prepared(nimbus.stream(agen(), content_type="text/plain"))
        self.assertEqual(p.headers, [b"content-type: text/plain"])
        p = _server._Prepared(nimbus.sse(agen(), headers={"x-a": "1"}))
        self.assertEqual(p.headers, [b"content-type: text/event-stream", b"x-a: 1", b"cache-control: no-cache"])
        with self.assertRaises(TypeError):
            nimbus.stream(["not", "async"])
        with self.assertRaises(TypeError):
            nimbus.sse("text")

    def test_unsupported_value(self):
        with self.assertRaises(TypeError) as caught:
            _server._Prepared(object())
        self.assertIn("return a dict, list, str, bytes, None", str(caught.exception))
        with self.assertRaises(ValueError):
            _server._Prepared({"nan": float("nan")})  # not valid JSON

    def test_sse_events(self):
        sse = _server._sse_bytes
        self.assertEqual(sse("hi"), b"data: hi\n\n")
        self.assertEqual(sse("a\nb\r\nc"), b"data: a\ndata: b\ndata: c\n\n")
        self.assertEqual(sse(""), b"data: \n\n")
        self.assertEqual(sse({"k": [1]}), b'data: {"k":[1]}\n\n')
        self.assertEqual(sse(nimbus.Event("x", event="e", id="1", retry=10)), b"event: e\nid: 1\nretry: 10\ndata: x\n\n")
        self.assertEqual(sse(nimbus.Event({"a": 1}, event="json")), b'event: json\ndata: {"a":1}\n\n')
        self.assertEqual(sse(nimbus.Event(retry=5)), b"retry: 5\n\n")
        self.assertEqual(sse(nimbus.Event()), b":\n\n")
        with self.assertRaises(ValueError):
            nimbus.Event("x", event="a\nb")
        with self.assertRaises(ValueError):
            nimbus.Event("x", retry="soon")

    def test_stream_items(self):
        self.assertEqual(_server._chunk_bytes("\u00e9"), "\u00e9".encode())
        self.assertEqual(_server._chunk_bytes(bytearray(b"a")), b"a")
        with self.assertRaises(TypeError):
            _server._chunk_bytes(1)


if __name__ == "__main__":
    unittest.main()
