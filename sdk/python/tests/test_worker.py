"""Black-box tests of the worker: `python3 -m nimbus` in a subprocess, spoken to over its Unix socket."""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

SDK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENTRY = '''
import asyncio
import os

import nimbus
import helper_mod   # next to the entry file
import shared_mod   # in the working directory

app = nimbus.App()


def mark(req, name, text="x"):
    with open(os.path.join(req.query["dir"], name), "w") as f:
        f.write(text)


@app.http("/hello", methods=["GET"])
async def hello(req, ctx):
    return {"hello": req.query.get("name", "world")}


@app.http("/imports")
async def imports(req, ctx):
    return [helper_mod.VALUE, shared_mod.VALUE]


@app.http("/query")
async def query(req, ctx):
    q = req.query
    return {"tag": q.get("tag"), "tags": q.getall("tag"), "has_tag": "tag" in q, "missing": q.get("x", "d"),
            "name": q["name"], "none": q.getall("none")}


@app.http("/text")
def text(req, ctx):  # a plain function works too
    return "h\\u00e9llo"


@app.http("/bytes")
async def raw_bytes(req, ctx):
    return b"\\x00\\x01\\xff"


@app.http("/none")
async def nothing(req, ctx):
    return None


@app.http("/response", methods=["POST"])
async def response(req, ctx):
    return nimbus.Response({"created": True}, status=201, headers=[("x-extra", "1"), ("set-cookie", "a=1"),
                                                                   ("set-cookie", "b=2")])


@app.http("/html")
async def html(req, ctx):
    return nimbus.Response("<p>hi</p>", content_type="text/html; charset=utf-8")


@app.http("/teapot")
async def teapot(req, ctx):
    raise nimbus.HTTPError(418, "short and stout", code="teapot")


@app.http("/items/{id}/files/*", name="item_files")
async def item(req, ctx):
    return {
        "params": req.params, "claims": req.claims, "invocation_id": req.invocation_id,
        "ctx": [ctx.function_name, ctx.invocation_id, ctx.traceparent, ctx.timeout_ms],
        "path": req.path, "method": req.method, "header": req.headers.get("X-Custom"),
        "header_in": "x-CUSTOM" in req.headers,
    }


@app.http("/echo-json", methods=["POST"])
async def echo_json(req, ctx):
    return {"got": await req.json()}


@app.http("/echo-text", methods=["POST"])
async def echo_text(req, ctx):
    return (await req.text()).upper()


@app.http("/ignore-body", methods=["POST"])
async def ignore_body(req, ctx):
    return "ignored"


@app.http("/slow-body", methods=["POST"])
async def slow_body(req, ctx):
    mark(req, "started")
    try:
        async for chunk in req.stream():
            pass
    except asyncio.CancelledError:
        mark(req, "cancelled", "CancelledError")
        raise
    return "read it all"


@app.http("/upload", methods=["POST"])
async def upload(req, ctx):
    async def progress():
        total = 0
        async for chunk in req.stream():
            total += len(chunk)
            yield "got:%d\\n" % len(chunk)
        yield "total:%d\\n" % total
    return nimbus.stream(progress(), content_type="text/plain")


@app.http("/stream")
async def streamed(req, ctx):
    release = os.path.join(req.query["dir"], "release")

    async def chunks():
        yield "first\\n"
        deadline = asyncio.get_running_loop().time() + 5
        while not os.path.exists(release) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        yield b"second\\n"
    return nimbus.stream(chunks(), content_type="text/plain")


@app.http("/agen")
async def agen(req, ctx):  # an async generator handler is a stream
    yield "a"
    yield b"b"


@app.http("/sse")
async def events(req, ctx):
    async def gen():
        yield "hello"
        yield "two\\nlines"
        yield {"n": 1, "s": "\\u00e9"}
        yield nimbus.Event("payload", event="update", id="7", retry=1500)
        yield nimbus.Event([1, 2])
    return nimbus.sse(gen())


@app.http("/fail")
async def fail(req, ctx):
    raise ValueError("secret detail")


@app.http("/fail-stream")
async def fail_stream(req, ctx):
    async def gen():
        yield "one\\n"
        await asyncio.sleep(0)
        raise RuntimeError("mid-stream failure")
    return nimbus.stream(gen())


@app.http("/wait")
async def wait(req, ctx):
    mark(req, "started")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        mark(req, "cancelled", "CancelledError")
        raise
    finally:
        mark(req, "finally")
    return "not cancelled"


@app.http("/wait-stream")
async def wait_stream(req, ctx):
    async def gen():
        try:
            while True:
                yield "tick\\n"
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            mark(req, "stream-cancelled", "CancelledError")
            raise
        finally:
            mark(req, "stream-finally")
    return nimbus.stream(gen())


@app.http("/log")
async def log(req, ctx):
    ctx.log.warning("a line from the handler")
    return "logged"
'''


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def wait_for(condition, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.01)


def recv_until(sock, needle, data=b""):
    """Read from `sock` until `needle` is in what was read (or EOF); return everything read."""
    while needle not in data:
        more = sock.recv(65536)
        if not more:
            break
        data += more
    return data


def recv_all(sock, data=b""):
    while True:
        more = sock.recv(65536)
        if not more:
            return data
        data += more


class Worker:
    """A `python3 -m nimbus` subprocess in a temporary app folder."""

    def __init__(self, entry=ENTRY, env=None, wait=True):
        self.dir = tempfile.mkdtemp(prefix="nimbus-py-")
        os.makedirs(os.path.join(self.dir, "functions"))
        self.write("functions/app.py", textwrap.dedent(entry))
        self.write("functions/helper_mod.py", "VALUE = 'helper'\n")
        self.write("shared_mod.py", "VALUE = 'shared'\n")
        self.socket = os.path.join(self.dir, "w.sock")
        self.log_path = os.path.join(self.dir, "stderr.log")
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": SDK_DIR,
            "NIMBUS_PROTOCOL": "1",
            "NIMBUS_WORKER_SOCKET": self.socket,
            "NIMBUS_WORKER_NAME": "main",
            "NIMBUS_INSTANCE_ID": "test-1",
            "NIMBUS_ENTRY": "functions/app.py",
            "NIMBUS_APP_DIR": self.dir,
        }
        full_env.update(env or {})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nimbus"], cwd=self.dir, env=full_env, stdout=log, stderr=log
            )
        if wait:
            wait_for(self._ready, 10, "the worker to listen")

    def write(self, name, text):
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text)

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError("the worker exited (%s):\n%s" % (self.proc.returncode, self.log()))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(self.socket)
            except OSError:
                return False
        return True

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.socket)
        return sock

    def http(self):
        return UnixHTTPConnection(self.socket)

    def request(self, method, path, body=None, headers=None, conn=None):
        own = conn is None
        conn = conn or self.http()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response, data
        finally:
            if own:
                conn.close()

    def stop(self, signum=signal.SIGTERM, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the worker did not exit on %s:\n%s" % (signum, self.log()))

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def stop_cleanly(self):
        """Stops the worker and removes its folder; it must exit 0 (its log says why not)."""
        try:
            code = self.stop()
            assert code == 0, "exit code %s:\n%s" % (code, self.log())
        finally:
            self.cleanup()


class PlatformCase(unittest.TestCase):
    """One worker per class whose platform socket is served by `cls.platform_class(socket_path)`, a fake
    of the host's (a socketserver); `cls.entry` is the app it loads."""

    platform_class = None
    entry = ENTRY

    @classmethod
    def setUpClass(cls):
        cls.platform_dir = tempfile.mkdtemp(prefix="nimbus-py-platform-")
        socket_path = os.path.join(cls.platform_dir, "platform.sock")
        cls.platform = cls.platform_class(socket_path)
        cls.worker = Worker(cls.entry, env={"NIMBUS_PLATFORM_SOCKET": socket_path, "NIMBUS_PLATFORM_TOKEN": "tok"})

    @classmethod
    def tearDownClass(cls):
        try:
            cls.worker.stop_cleanly()
        finally:
            cls.platform.shutdown()
            cls.platform.server_close()
            shutil.rmtree(cls.platform_dir, True)


class WorkerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.worker = Worker()

    @classmethod
    def tearDownClass(cls):
        cls.worker.stop_cleanly()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nimbus-py-case-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def json_request(self, method, path, body=None, headers=None):
        response, data = self.worker.request(method, path, body, headers)
        return response, json.loads(data)

    # --- protocol endpoints ---

    def test_index(self):
        response, index = self.json_request("GET", "/_nimbus/worker/index")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("content-type"), "application/json")
        self.assertEqual(index["protocol"], 1)
        self.assertEqual(index["sdk"], "python/0.1.0")
        functions = {f["name"]: f["trigger"] for f in index["functions"]}
        self.assertEqual(functions["hello"], {"type": "http", "route": "/hello", "methods": ["GET"]})
        self.assertEqual(functions["item_files"], {"type": "http", "route": "/items/{id}/files/*", "methods": []})
        self.assertEqual(functions["echo_json"]["methods"], ["POST"])
        self.assertEqual(index["functions"][0]["name"], "hello")  # declaration order

    def test_invoke_unknown_function(self):
        response, body = self.json_request("POST", "/_nimbus/worker/invoke/nope", b'{"id":"1","data":null}',
                                           {"content-type": "application/json"})
        self.assertEqual(response.status, 404)
        self.assertEqual(body["error"]["code"], "unknown_function")
        response, body = self.json_request("POST", "/_nimbus/worker/invoke/hello", b"{}")
        self.assertEqual(response.status, 404)
        self.assertEqual(body["error"]["code"], "unknown_function")

    def test_unknown_worker_endpoint(self):
        response, body = self.json_request("GET", "/_nimbus/worker/nothing")
        self.assertEqual(response.status, 404)
        self.assertEqual(body["error"]["code"], "not_found")

    # --- return values ---

    def test_json(self):
        response, body = self.json_request("GET", "/hello?name=nimbus")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("content-type"), "application/json")
        self.assertEqual(body, {"hello": "nimbus"})
        self.assertEqual(self.json_request("GET", "/hello")[1], {"hello": "world"})

    def test_user_modules_import(self):
        self.assertEqual(self.json_request("GET", "/imports")[1], ["helper", "shared"])

    def test_text_from_sync_handler(self):
        response, data = self.worker.request("GET", "/text")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("content-type"), "text/plain; charset=utf-8")
        self.assertEqual(data.decode("utf-8"), "h\u00e9llo")
        self.assertEqual(response.getheader("content-length"), str(len(data)))

    def test_bytes(self):
        response, data = self.worker.request("GET", "/bytes")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("content-type"), "application/octet-stream")
        self.assertEqual(data, b"\x00\x01\xff")

    def test_none_is_204(self):
        response, data = self.worker.request("GET", "/none")
        self.assertEqual(response.status, 204)
        self.assertEqual(data, b"")
        self.assertIsNone(response.getheader("content-length"))

    def test_response(self):
        response, body = self.json_request("POST", "/response", b"")
        self.assertEqual(response.status, 201)
        self.assertEqual(body, {"created": True})
        self.assertEqual(response.getheader("x-extra"), "1")
        self.assertEqual(response.headers.get_all("set-cookie"), ["a=1", "b=2"])
        response, data = self.worker.request("GET", "/html")
        self.assertEqual(response.getheader("content-type"), "text/html; charset=utf-8")
        self.assertEqual(data, b"<p>hi</p>")

    def test_http_error(self):
        response, body = self.json_request("GET", "/teapot")
        self.assertEqual(response.status, 418)
        self.assertEqual(body, {"error": {"code": "teapot", "message": "short and stout"}})

    def test_head(self):
        response, data = self.worker.request("HEAD", "/hello")
        self.assertEqual(response.status, 200)
        self.assertEqual(data, b"")
        self.assertEqual(response.getheader("content-length"), "17")

    # --- the request ---

    def test_query(self):
        _, body = self.json_request("GET", "/query?tag=a&name=n%20m&tag=b&empty=")
        self.assertEqual(body, {"tag": "a", "tags": ["a", "b"], "has_tag": True, "missing": "d", "name": "n m",
                                "none": []})

    def test_params_claims_and_context_from_headers(self):
        headers = {
            "x-nimbus-function": "item_files",
            "x-nimbus-invocation-id": "inv-1",
            "x-nimbus-params": '{"id":"from-header","*":"x"}',
            "x-nimbus-claims": '{"sub":"user-1","scope":"chat"}',
            "x-nimbus-timeout-ms": "30000",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "X-Custom": "yes",
        }
        _, body = self.json_request("GET", "/items/42/files/a/b?q=1", headers=headers)
        self.assertEqual(body["params"], {"id": "from-header", "*": "x"})
        self.assertEqual(body["claims"], {"sub": "user-1", "scope": "chat"})
        self.assertEqual(body["invocation_id"], "inv-1")
        self.assertEqual(body["ctx"], ["item_files", "inv-1", headers["traceparent"], 30000])
        self.assertEqual(body["path"], "/items/42/files/a/b")
        self.assertEqual(body["method"], "GET")
        self.assertEqual(body["header"], "yes")
        self.assertTrue(body["header_in"])

    def test_params_matched_locally(self):
        _, body = self.json_request("GET", "/items/4%202/files/a/b")
        self.assertEqual(body["params"], {"id": "4 2", "*": "a/b"})
        self.assertIsNone(body["claims"])
        self.assertTrue(body["invocation_id"])
        _, body = self.json_request("GET", "/items/7/files")
        self.assertEqual(body["params"], {"id": "7", "*": ""})

    def test_dispatch_by_function_header(self):
        _, body = self.json_request("GET", "/anything", headers={"x-nimbus-function": "hello"})
        self.assertEqual(body, {"hello": "world"})
        response, body = self.json_request("GET", "/hello", headers={"x-nimbus-function": "nope"})
        self.assertEqual(response.status, 404)
        self.assertEqual(body["error"]["code"], "not_found")

    def test_json_body(self):
        response, body = self.json_request("POST", "/echo-json", b'{"a": [1, 2]}', {"content-type": "application/json"})
        self.assertEqual(response.status, 200)
        self.assertEqual(body, {"got": {"a": [1, 2]}})

    def test_bad_json_is_400(self):
        for payload in (b"{not json", b"", b"\xff\xfe"):
            response, body = self.json_request("POST", "/echo-json", payload)
            self.assertEqual(response.status, 400, payload)
            self.assertEqual(body["error"]["code"], "invalid_json")
            self.assertTrue(body["error"]["message"])

    def test_text_body_and_chunked_upload(self):
        conn = self.worker.http()
        self.addCleanup(conn.close)
        conn.request("POST", "/echo-text", body=iter([b"ab", b"cd"]), encode_chunked=True,
                     headers={"transfer-encoding": "chunked"})
        response = conn.getresponse()
        self.assertEqual(response.read(), b"ABCD")

    def test_streaming_request_body_is_read_incrementally(self):
        sock = self.worker.connect()
        self.addCleanup(sock.close)
        sock.sendall(b"POST /upload HTTP/1.1\r\nhost: w\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        # the handler answers about the first chunk while the rest of the body is not even sent
        data = recv_until(sock, b"got:")
        self.assertIn(b"HTTP/1.1 200 OK", data)
        self.assertIn(b"transfer-encoding: chunked", data)
        sock.sendall(b"6\r\nworld!\r\n0\r\n\r\n")
        data = recv_until(sock, b"0\r\n\r\n", data)
        self.assertIn(b"total:11\n", data)
        self.assertTrue(data.endswith(b"0\r\n\r\n"))

    def test_expect_100_continue(self):
        sock = self.worker.connect()
        self.addCleanup(sock.close)
        sock.sendall(b"POST /echo-text HTTP/1.1\r\nhost: w\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
        self.assertEqual(recv_until(sock, b"\r\n\r\n"), b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"abc")
        data = recv_until(sock, b"ABC")
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertNotIn(b"connection: close", data)
        # a handler that does not read the body: the client may or may not send it, so the connection closes
        sock.sendall(b"POST /ignore-body HTTP/1.1\r\nhost: w\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
        data = recv_all(sock)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"connection: close", data)

    def test_unread_chunked_body_closes_the_connection(self):
        sock = self.worker.connect()
        self.addCleanup(sock.close)
        sock.sendall(b"POST /ignore-body HTTP/1.1\r\nhost: w\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        data = recv_all(sock)
        self.assertIn(b"connection: close", data)
        self.assertTrue(data.endswith(b"ignored"))

    def test_unread_body_is_drained_for_keep_alive(self):
        conn = self.worker.http()
        self.addCleanup(conn.close)
        response, data = self.worker.request("POST", "/ignore-body", b"x" * 200000, conn=conn)
        self.assertEqual(data, b"ignored")
        sock = conn.sock
        response, data = self.worker.request("GET", "/hello", conn=conn)
        self.assertEqual(json.loads(data), {"hello": "world"})
        self.assertIs(conn.sock, sock)

    # --- streamed responses ---

    def test_stream_first_chunk_arrives_before_the_generator_ends(self):
        sock = self.worker.connect()
        self.addCleanup(sock.close)
        sock.sendall(b"GET /stream?dir=%s HTTP/1.1\r\nhost: w\r\n\r\n" % self.tmp.encode())
        data = recv_until(sock, b"first\n")
        self.assertIn(b"first\n", data)
        self.assertIn(b"content-type: text/plain", data)
        self.assertNotIn(b"second", data)  # the generator is still waiting for the release file
        open(os.path.join(self.tmp, "release"), "w").close()
        data = recv_until(sock, b"0\r\n\r\n", data)
        body = data.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(body, b"6\r\nfirst\n\r\n7\r\nsecond\n\r\n0\r\n\r\n")

    def test_async_generator_handler(self):
        response, data = self.worker.request("GET", "/agen")
        self.assertEqual(response.getheader("content-type"), "application/octet-stream")
        self.assertEqual(response.getheader("transfer-encoding"), "chunked")
        self.assertEqual(data, b"ab")

    def test_sse(self):
        response, data = self.worker.request("GET", "/sse")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("content-type"), "text/event-stream")
        self.assertEqual(response.getheader("cache-control"), "no-cache")
        self.assertEqual(
            data.decode("utf-8"),
            "data: hello\n\n"
            "data: two\ndata: lines\n\n"
            'data: {"n":1,"s":"\u00e9"}\n\n'
            "event: update\nid: 7\nretry: 1500\ndata: payload\n\n"
            "data: [1,2]\n\n",
        )

    # --- errors ---

    def test_handler_error_is_500_without_details(self):
        response, body = self.json_request("GET", "/fail")
        self.assertEqual(response.status, 500)
        self.assertEqual(body, {"error": {"code": "handler_error", "message": "the function raised an error"}})
        log = wait_for(lambda: "secret detail" in self.worker.log() and self.worker.log(), what="the traceback")
        self.assertIn("Traceback", log)
        self.assertIn("ValueError: secret detail", log)

    def test_error_after_stream_started_cuts_the_response(self):
        sock = self.worker.connect()
        self.addCleanup(sock.close)
        sock.sendall(b"GET /fail-stream HTTP/1.1\r\nhost: w\r\n\r\n")
        data = recv_all(sock)
        self.assertIn(b"200 OK", data)
        self.assertIn(b"one\n", data)
        self.assertFalse(data.endswith(b"0\r\n\r\n"))  # no last chunk: the host sees an incomplete response
        wait_for(lambda: "mid-stream failure" in self.worker.log(), what="the traceback")

    def test_not_found_and_method_not_allowed(self):
        response, body = self.json_request("GET", "/nope")
        self.assertEqual(response.status, 404)
        self.assertEqual(body["error"]["code"], "not_found")
        response, body = self.json_request("POST", "/hello", b"")
        self.assertEqual(response.status, 405)
        self.assertEqual(body["error"]["code"], "method_not_allowed")
        self.assertEqual(response.getheader("allow"), "GET")

    def test_headers_too_large(self):
        sock = self.worker.connect()
        self.addCleanup(sock.close)
        sock.sendall(b"GET /hello HTTP/1.1\r\nx-big: " + b"a" * 70000 + b"\r\n\r\n")
        data = recv_all(sock)
        self.assertTrue(data.startswith(b"HTTP/1.1 431 "), data[:100])

    def test_bad_request(self):
        sock = self.worker.connect()
        self.addCleanup(sock.close)
        sock.sendall(b"NONSENSE\r\n\r\n")
        self.assertTrue(recv_all(sock).startswith(b"HTTP/1.1 400 "))

    # --- connections ---

    def test_keep_alive(self):
        conn = self.worker.http()
        self.addCleanup(conn.close)
        response, _ = self.worker.request("GET", "/hello", conn=conn)
        self.assertFalse(response.will_close)
        sock = conn.sock
        response, data = self.worker.request("GET", "/hello?name=again", conn=conn)
        self.assertIs(conn.sock, sock)  # the same connection served both
        self.assertEqual(json.loads(data), {"hello": "again"})

    def test_connection_close(self):
        sock = self.worker.connect()
        self.addCleanup(sock.close)
        sock.sendall(b"GET /hello HTTP/1.1\r\nhost: w\r\nconnection: close\r\n\r\n")
        data = recv_all(sock)  # EOF: the worker closed its side
        self.assertIn(b"connection: close", data)
        self.assertTrue(data.endswith(b'{"hello":"world"}'))

    def test_client_disconnect_cancels_the_handler(self):
        sock = self.worker.connect()
        sock.sendall(b"GET /wait?dir=%s HTTP/1.1\r\nhost: w\r\nx-nimbus-invocation-id: inv-cancel-1\r\n\r\n"
                     % self.tmp.encode())
        wait_for(lambda: os.path.exists(os.path.join(self.tmp, "started")), what="the handler to start")
        sock.close()
        wait_for(lambda: os.path.exists(os.path.join(self.tmp, "finally")), what="the handler's finally block")
        with open(os.path.join(self.tmp, "cancelled")) as f:
            self.assertEqual(f.read(), "CancelledError")
        wait_for(lambda: "invocation inv-cancel-1 cancelled" in self.worker.log(), what="the log line")

    def test_client_disconnect_while_the_body_is_read_cancels_the_handler(self):
        sock = self.worker.connect()
        sock.sendall(b"POST /slow-body?dir=%s HTTP/1.1\r\nhost: w\r\ncontent-length: 1000\r\n\r\nabc"
                     % self.tmp.encode())
        wait_for(lambda: os.path.exists(os.path.join(self.tmp, "started")), what="the handler to start")
        sock.close()
        wait_for(lambda: os.path.exists(os.path.join(self.tmp, "cancelled")), what="the handler's cancellation")

    def test_client_disconnect_cancels_a_stream(self):
        sock = self.worker.connect()
        sock.sendall(b"GET /wait-stream?dir=%s HTTP/1.1\r\nhost: w\r\n\r\n" % self.tmp.encode())
        recv_until(sock, b"tick")
        sock.close()
        wait_for(lambda: os.path.exists(os.path.join(self.tmp, "stream-finally")), what="the generator's finally")
        with open(os.path.join(self.tmp, "stream-cancelled")) as f:
            self.assertEqual(f.read(), "CancelledError")

    def test_ctx_log_goes_to_stderr(self):
        response, _ = self.worker.request("GET", "/log", headers={"x-nimbus-invocation-id": "inv-log"})
        self.assertEqual(response.status, 200)
        wait_for(lambda: "nimbus.fn.log [inv-log]: a line from the handler" in self.worker.log(), what="the log line")


class DevModeTest(unittest.TestCase):
    def test_dev_mode_shows_the_exception(self):
        worker = Worker(env={"NIMBUS_DEV": "1"})
        self.addCleanup(worker.cleanup)
        response, data = worker.request("GET", "/fail")
        self.assertEqual(response.status, 500)
        error = json.loads(data)["error"]
        self.assertEqual(error["code"], "handler_error")
        self.assertIn("ValueError('secret detail')", error["message"])
        self.assertEqual(worker.stop(), 0)


class LifecycleTest(unittest.TestCase):
    def test_sigterm_exits_0_with_idle_and_busy_connections(self):
        worker = Worker()
        self.addCleanup(worker.cleanup)
        idle = worker.http()
        self.addCleanup(idle.close)
        worker.request("GET", "/hello", conn=idle)  # an idle keep-alive connection stays open
        busy = worker.connect()
        self.addCleanup(busy.close)
        busy.sendall(b"GET /wait?dir=%s HTTP/1.1\r\nhost: w\r\n\r\n" % worker.dir.encode())
        wait_for(lambda: os.path.exists(os.path.join(worker.dir, "started")), what="the handler to start")
        self.assertEqual(worker.stop(signal.SIGTERM), 0, worker.log())
        self.assertTrue(os.path.exists(os.path.join(worker.dir, "finally")))  # the handler was cancelled
        self.assertFalse(os.path.exists(worker.socket))

    def test_sigterm_while_the_entry_imports_exits_0(self):
        worker = Worker("import time\nopen('importing', 'w').close()\ntime.sleep(30)\n", wait=False)
        self.addCleanup(worker.cleanup)
        wait_for(lambda: os.path.exists(os.path.join(worker.dir, "importing")), 10, "the import to start")
        self.assertEqual(worker.stop(signal.SIGTERM), 0, worker.log())

    def test_sigint_exits_0(self):
        worker = Worker()
        self.addCleanup(worker.cleanup)
        self.assertEqual(worker.stop(signal.SIGINT), 0, worker.log())

    def test_stale_socket_file_is_replaced(self):
        worker = Worker(wait=False)
        self.addCleanup(worker.cleanup)
        worker.proc.kill()
        worker.proc.wait()
        with open(worker.socket, "w") as f:
            f.write("stale")
        worker.proc = subprocess.Popen([sys.executable, "-m", "nimbus"], cwd=worker.dir, stderr=subprocess.DEVNULL,
                                       env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": SDK_DIR,
                                            "NIMBUS_WORKER_SOCKET": worker.socket,
                                            "NIMBUS_ENTRY": "functions/app.py"})
        wait_for(worker._ready, 10, "the worker to listen")
        self.assertEqual(worker.stop(), 0)

    def assert_exits_1(self, entry, *needles):
        worker = Worker(entry, wait=False)
        self.addCleanup(worker.cleanup)
        self.assertEqual(worker.proc.wait(10), 1)
        log = worker.log()
        for needle in needles:
            self.assertIn(needle, log)

    def test_entry_without_app(self):
        self.assert_exits_1("import nimbus\nx = 1\n", "functions/app.py defines no nimbus.App")

    def test_entry_with_two_apps(self):
        self.assert_exits_1("import nimbus\na = nimbus.App()\nb = nimbus.App()\n", "several nimbus.App", "a, b")

    def test_entry_that_fails_to_import(self):
        self.assert_exits_1("raise RuntimeError('boom at import')\n", "importing functions/app.py failed",
                            "Traceback", "RuntimeError: boom at import")

    def test_app_found_under_another_name(self):
        worker = Worker("import nimbus\nmy_app = nimbus.App()\n@my_app.http('/x')\ndef x(req, ctx):\n    return 'x'\n")
        self.addCleanup(worker.cleanup)
        self.assertEqual(worker.request("GET", "/x")[1], b"x")
        self.assertEqual(worker.stop(), 0)


if __name__ == "__main__":
    unittest.main()
