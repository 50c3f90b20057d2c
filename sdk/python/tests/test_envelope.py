"""Non-HTTP functions: their index entries (PROTOCOL.md section 2), the decorators' argument checks, and the
invocation envelope (section 4) end to end over the worker's Unix socket."""

import http.server
import json
import os
import shutil
import socketserver
import tempfile
import threading
import time
import unittest

import nimbus

from .test_worker import PlatformCase, Worker, recv_all, wait_for

ENTRY = '''
import asyncio
import os

import nimbus

app = nimbus.App()


@app.http("/hello", methods=["GET"])
async def hello(req, ctx):
    return {"hello": "world"}


@app.queue("jobs", batch_size=4)
async def on_job(data, ctx):
    return {
        "data": data, "trigger": ctx.trigger, "invocation_id": ctx.invocation_id, "function": ctx.function_name,
        "traceparent": ctx.traceparent, "timeout_ms": ctx.timeout_ms,
    }


@app.timer("0 */5 * * * *")
def tick(data, ctx):  # a plain function: its result as it is
    return ["sync", data]


@app.activity
async def nothing(data, ctx):
    await asyncio.sleep(0)


@app.activity(name="fails")
async def fails(data, ctx):
    raise ValueError("secret detail")


@app.activity(name="fails-sync")
def fails_sync(data, ctx):
    raise KeyError("sync secret")


@app.queue("jobs", name="queue-fails")
def queue_fails(data, ctx):
    raise ValueError("secret detail")


@app.activity(name="conflict")
async def conflict(data, ctx):
    raise nimbus.HTTPError(409, "already done", code="duplicate")


@app.activity(name="not-json")
async def not_json(data, ctx):
    return {"a set": {1, 2}}


@app.activity(name="nan")
def nan(data, ctx):
    return float("nan")


@app.activity(name="read-doc")
async def read_doc(data, ctx):
    return await ctx.docs.read("conversations", data["id"], data["pk"])


@app.blob("uploads/{name}")
async def on_upload(data, ctx):
    ctx.log.warning("blob %s", ctx.trigger["path"])
    return ctx.trigger


@app.docs_changes("conversations", start="beginning")
async def wait(data, ctx):
    def mark(name, text="x"):
        with open(os.path.join(data["dir"], name), "w") as f:
            f.write(text)

    mark("started")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        mark("cancelled", "CancelledError")
        raise
    finally:
        mark("finally")
    return "not cancelled"
'''

INVOKE = "/_nimbus/worker/invoke/"


def noop(data, ctx):
    return None


class DeclarationTest(unittest.TestCase):
    def test_index_entries(self):
        app = nimbus.App()
        app.timer("0 */5 * * * *")(noop)
        app.timer("0  0 9 * * 1-5 ", name="weekdays", run_on_startup=True, time_zone="Europe/Paris")(noop)
        app.queue("jobs", name="job")(noop)
        app.queue("big-jobs-2", name="big", batch_size=32)(noop)
        app.blob("uploads/{name}", name="upload")(noop)
        app.blob("$web/{path}", name="site")(noop)
        app.docs_changes("conversations", name="changes")(noop)
        app.docs_changes("audit_log", name="audit", batch_size=1000, start="beginning")(noop)
        app.activity(name="act")(noop)

        @app.activity
        async def bare(data, ctx):
            return data

        @app.activity()
        async def empty(data, ctx):
            return data

        self.assertEqual(bare.__name__, "bare")  # the decorators return the function itself
        self.assertEqual(
            app.index()["functions"],
            [
                {"name": "noop", "trigger": {"type": "timer", "schedule": "0 */5 * * * *", "run_on_startup": False}},
                {"name": "weekdays", "trigger": {"type": "timer", "schedule": "0 0 9 * * 1-5", "run_on_startup": True,
                                                 "time_zone": "Europe/Paris"}},
                {"name": "job", "trigger": {"type": "queue", "queue": "jobs", "batch_size": 1}},
                {"name": "big", "trigger": {"type": "queue", "queue": "big-jobs-2", "batch_size": 32}},
                {"name": "upload", "trigger": {"type": "blob", "path": "uploads/{name}"}},
                {"name": "site", "trigger": {"type": "blob", "path": "$web/{path}"}},
                {"name": "changes", "trigger": {"type": "docs_changes", "container": "conversations", "batch_size": 100,
                                                "start": "now"}},
                {"name": "audit", "trigger": {"type": "docs_changes", "container": "audit_log", "batch_size": 1000,
                                              "start": "beginning"}},
                {"name": "act", "trigger": {"type": "activity"}},
                {"name": "bare", "trigger": {"type": "activity"}},
                {"name": "empty", "trigger": {"type": "activity"}},
            ],
        )
        # the index is JSON as it stands, and every function's trigger() is a fresh dict
        self.assertEqual(json.loads(json.dumps(app.index())), app.index())
        self.assertIsNot(app.functions[0].trigger(), app.functions[0].trigger())

    def assert_error(self, kind, call, *needles):
        with self.assertRaises(kind) as caught:
            call()
        for needle in needles:
            self.assertIn(needle, str(caught.exception))

    def test_timer_arguments(self):
        app = nimbus.App()
        self.assert_error(ValueError, lambda: app.timer("*/5 * * * *"), "@app.timer('*/5 * * * *')", "six", "has 5")
        self.assert_error(ValueError, lambda: app.timer("0 0 0 0 * * *"), "six", "has 7")
        self.assert_error(ValueError, lambda: app.timer(""), "six", "has 0")
        self.assert_error(TypeError, lambda: app.timer(300), "@app.timer", "schedule must be a string")
        self.assert_error(TypeError, lambda: app.timer(noop), 'write @app.timer("0 */5 * * * *")')  # @app.timer bare
        self.assert_error(TypeError, lambda: app.timer("0 * * * * *", run_on_startup="yes"), "run_on_startup")
        self.assert_error(TypeError, lambda: app.timer("0 * * * * *", time_zone=1), "time_zone")
        self.assert_error(ValueError, lambda: app.timer("0 * * * * *", time_zone=""), "time_zone", "IANA")
        self.assert_error(ValueError, lambda: app.timer("0 * * * * *", time_zone="Europe/ Paris"), "time_zone")

    def test_queue_arguments(self):
        app = nimbus.App()
        self.assert_error(ValueError, lambda: app.queue("Jobs"), "@app.queue('Jobs')", "not a queue name")
        self.assert_error(ValueError, lambda: app.queue(""), "not a queue name")
        self.assert_error(ValueError, lambda: app.queue("a_b"), "not a queue name")
        self.assert_error(ValueError, lambda: app.queue("q" * 64), "1-63")
        self.assert_error(TypeError, lambda: app.queue(None), "@app.queue", "queue must be a string")
        self.assert_error(ValueError, lambda: app.queue("jobs", batch_size=0), "batch_size", "1 to 32")
        self.assert_error(ValueError, lambda: app.queue("jobs", batch_size=33), "batch_size", "1 to 32")
        self.assert_error(TypeError, lambda: app.queue("jobs", batch_size="4"), "batch_size")
        self.assert_error(TypeError, lambda: app.queue("jobs", batch_size=True), "batch_size")
        app.queue("q" * 63)(noop)

    def test_blob_arguments(self):
        app = nimbus.App()
        self.assert_error(ValueError, lambda: app.blob("uploads"), "@app.blob('uploads')", "<container>/<pattern>")
        self.assert_error(ValueError, lambda: app.blob("/uploads/{name}"), "<container>/<pattern>")
        self.assert_error(ValueError, lambda: app.blob("uploads/"), "needs a pattern")
        self.assert_error(ValueError, lambda: app.blob("uploads//x"), "needs a pattern")
        self.assert_error(ValueError, lambda: app.blob("Uploads/{name}"), "not a blob container name")
        self.assert_error(ValueError, lambda: app.blob("up/{name}"), "not a blob container name")
        self.assert_error(TypeError, lambda: app.blob(["uploads/x"]), "path must be a string")

    def test_docs_changes_arguments(self):
        app = nimbus.App()
        self.assert_error(ValueError, lambda: app.docs_changes("Conversations"), "@app.docs_changes('Conversations')",
                          "not a docs container name")
        self.assert_error(ValueError, lambda: app.docs_changes(""), "not a docs container name")
        self.assert_error(TypeError, lambda: app.docs_changes(7), "container must be a string")
        self.assert_error(ValueError, lambda: app.docs_changes("c", batch_size=1001), "batch_size", "1 to 1000")
        self.assert_error(ValueError, lambda: app.docs_changes("c", start="end"), "start", '"now" or "beginning"')
        self.assert_error(TypeError, lambda: app.docs_changes("c", start=None), "start")
        app.docs_changes("c", batch_size=1)(noop)

    def test_names_and_handlers(self):
        app = nimbus.App()
        app.http("/a", name="same")(noop)
        # one namespace for every trigger
        self.assert_error(ValueError, lambda: app.queue("jobs", name="same")(noop), "'same' is already declared")
        self.assert_error(ValueError, lambda: app.timer("0 * * * * *")(lambda data, ctx: None),
                          "'<lambda>' is not valid")
        self.assert_error(ValueError, lambda: app.activity(name="has space")(noop), "is not valid")
        self.assert_error(TypeError, lambda: app.queue("jobs")("not a function"), "@app.queue('jobs') decorates")

        async def agen(data, ctx):
            yield data

        self.assert_error(TypeError, lambda: app.activity(agen), "async generator")
        app.activity(noop)
        self.assert_error(ValueError, lambda: app.blob("uploads/x")(noop), "'noop' is already declared")
        self.assertEqual([f.name for f in app.functions], ["same", "noop"])


class FakePlatform(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The host's platform socket (PROTOCOL.md section 5), answering every request with one document."""

    daemon_threads = True

    def __init__(self, path):
        self.requests = []
        super().__init__(path, _PlatformHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _PlatformHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.requests.append((self.command, self.path, dict(self.headers)))
        body = b'{"id": "c1", "_etag": "\\"1\\""}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class EnvelopeTest(PlatformCase):
    platform_class = FakePlatform
    entry = ENTRY

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nimbus-py-case-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def invoke(self, function, envelope, headers=None, raw=None, method="POST"):
        body = raw if raw is not None else json.dumps(envelope).encode()
        all_headers = {"content-type": "application/json"}
        all_headers.update(headers or {})
        return self.worker.request(method, INVOKE + function, body, all_headers)

    def test_index_lists_the_triggers(self):
        response, data = self.worker.request("GET", "/_nimbus/worker/index")
        functions = {f["name"]: f["trigger"] for f in json.loads(data)["functions"]}
        self.assertEqual(functions["on_job"], {"type": "queue", "queue": "jobs", "batch_size": 4})
        self.assertEqual(functions["tick"], {"type": "timer", "schedule": "0 */5 * * * *", "run_on_startup": False})
        self.assertEqual(functions["wait"], {"type": "docs_changes", "container": "conversations", "batch_size": 100,
                                             "start": "beginning"})
        self.assertEqual(functions["nothing"], {"type": "activity"})

    def test_result_trigger_and_context(self):
        trigger = {"type": "queue", "queue": "jobs", "batch_size": 4, "dequeue_count": 2}
        headers = {
            "x-nimbus-function": "on_job",
            "x-nimbus-invocation-id": "inv-7",
            "x-nimbus-timeout-ms": "5000",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        }
        response, data = self.invoke("on_job", {"id": "inv-7", "trigger": trigger, "data": {"n": [1, "\u00e9"]}},
                                     headers)
        self.assertEqual(response.status, 200, data)
        self.assertEqual(response.getheader("content-type"), "application/json")
        self.assertEqual(response.getheader("content-length"), str(len(data)))
        self.assertEqual(json.loads(data), {
            "data": {"n": [1, "\u00e9"]}, "trigger": trigger, "invocation_id": "inv-7", "function": "on_job",
            "traceparent": headers["traceparent"], "timeout_ms": 5000,
        })

    def test_declared_trigger_id_and_data_when_absent(self):
        response, data = self.invoke("on_job", {})
        self.assertEqual(response.status, 200, data)
        body = json.loads(data)
        self.assertEqual(body["trigger"], {"type": "queue", "queue": "jobs", "batch_size": 4})
        self.assertIsNone(body["data"])
        self.assertTrue(body["invocation_id"])  # made up locally
        self.assertIsNone(body["timeout_ms"])
        # without the header, the envelope's id is the invocation id
        _, data = self.invoke("on_job", {"id": "from-envelope", "trigger": None, "data": 3})
        body = json.loads(data)
        self.assertEqual((body["invocation_id"], body["data"]), ("from-envelope", 3))
        self.assertEqual(body["trigger"]["type"], "queue")

    def test_ctx_docs_reaches_the_platform(self):
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        response, data = self.invoke("read-doc", {"data": {"id": "c1", "pk": "u1"}}, {"traceparent": traceparent})
        self.assertEqual(response.status, 200, data)
        self.assertEqual(json.loads(data), {"id": "c1", "_etag": '"1"'})
        method, path, headers = self.platform.requests[-1]
        headers = {k.lower(): v for k, v in headers.items()}
        self.assertEqual(method, "GET")
        self.assertTrue(path.startswith("/_nimbus/docs/conversations/"), path)
        self.assertEqual(headers["authorization"], "Bearer tok")
        self.assertEqual(headers["traceparent"], traceparent)

    def test_sync_handler_and_percent_encoded_name(self):
        response, data = self.invoke("t%69ck", {"data": "x"})
        self.assertEqual(response.status, 200)
        self.assertEqual(json.loads(data), ["sync", "x"])

    def test_null_result(self):
        response, data = self.invoke("nothing", {"id": "n", "data": 1})
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("content-type"), "application/json")
        self.assertEqual(data, b"null")

    def test_raised_error_is_500_handler_error(self):
        # An activity's error names its exception (it reaches only the app's orchestrator); any
        # other function's stays in the log.
        for function, detail, message in (
            ("fails", "ValueError: secret detail", "ValueError: secret detail"),
            ("fails-sync", "KeyError: 'sync secret'", "KeyError: 'sync secret'"),
            ("queue-fails", "ValueError: secret detail", "the function raised an error"),
        ):
            response, data = self.invoke(function, {"id": "e-" + function},
                                         {"x-nimbus-invocation-id": "e-" + function})
            self.assertEqual(response.status, 500)
            self.assertEqual(json.loads(data), {"error": {"code": "handler_error", "message": message}})
            log = wait_for(lambda: detail in self.worker.log() and self.worker.log(), what="the traceback")
            self.assertIn("Traceback", log)
            self.assertIn("[e-%s]" % function, log)

    def test_http_error_chooses_status_and_code(self):
        response, data = self.invoke("conflict", {})
        self.assertEqual(response.status, 409)
        self.assertEqual(json.loads(data), {"error": {"code": "duplicate", "message": "already done"}})

    def test_result_that_is_not_json(self):
        for function in ("not-json", "nan"):
            response, data = self.invoke(function, {})
            self.assertEqual(response.status, 500, function)
            error = json.loads(data)["error"]
            self.assertEqual(error["code"], "handler_error")
            self.assertIn("result is not JSON", error["message"])

    def test_invalid_envelope_is_400(self):
        cases = [b"{not json", b"", b"  ", b"[1, 2]", b'"text"', b"null", b"\xff\xfe",
                 b'{"id": 7}', b'{"trigger": "queue"}']
        for raw in cases:
            response, data = self.invoke("on_job", None, raw=raw)
            self.assertEqual(response.status, 400, raw)
            error = json.loads(data)["error"]
            self.assertEqual(error["code"], "invalid_envelope", raw)
            self.assertTrue(error["message"])

    def test_unknown_and_http_functions_are_404(self):
        for function in ("nope", "hello", "%ff"):
            response, data = self.invoke(function, {"data": None})
            self.assertEqual(response.status, 404, function)
            self.assertEqual(json.loads(data)["error"]["code"], "unknown_function")
        self.assertIn("invoked over HTTP", json.loads(self.invoke("hello", {})[1])["error"]["message"])

    def test_not_post_is_405(self):
        for method in ("GET", "PUT", "HEAD"):
            response, data = self.worker.request(method, INVOKE + "on_job")
            self.assertEqual(response.status, 405, method)
            self.assertEqual(response.getheader("allow"), "POST")
            if method != "HEAD":
                self.assertEqual(json.loads(data)["error"]["code"], "method_not_allowed")

    def test_keep_alive_between_envelopes(self):
        conn = self.worker.http()
        self.addCleanup(conn.close)
        for n in range(3):
            response, data = self.worker.request("POST", INVOKE + "tick", b'{"data": %d}' % n, conn=conn)
            self.assertEqual(json.loads(data), ["sync", n])
            self.assertFalse(response.will_close)
        sock = conn.sock
        response, data = self.worker.request("POST", INVOKE + "on_job", b"[]", conn=conn)  # a 400 keeps it too
        self.assertEqual(response.status, 400)
        self.worker.request("POST", INVOKE + "tick", b"{}", conn=conn)
        self.assertIs(conn.sock, sock)

    def test_chunked_envelope(self):
        conn = self.worker.http()
        self.addCleanup(conn.close)
        conn.request("POST", INVOKE + "tick", body=iter([b'{"da', b'ta": 5}']), encode_chunked=True,
                     headers={"transfer-encoding": "chunked"})
        self.assertEqual(json.loads(conn.getresponse().read()), ["sync", 5])

    def test_ctx_log(self):
        response, data = self.invoke("on_upload", {"trigger": {"type": "blob", "path": "uploads/a.txt"}},
                                     {"x-nimbus-invocation-id": "inv-blob"})
        self.assertEqual(json.loads(data), {"type": "blob", "path": "uploads/a.txt"})
        wait_for(lambda: "nimbus.fn.on_upload [inv-blob]: blob uploads/a.txt" in self.worker.log(), what="the log line")

    def test_closing_the_connection_cancels_the_handler(self):
        sock = self.worker.connect()
        body = json.dumps({"id": "inv-env-cancel", "data": {"dir": self.tmp}}).encode()
        sock.sendall(b"POST /_nimbus/worker/invoke/wait HTTP/1.1\r\nhost: w\r\nx-nimbus-invocation-id: inv-env-cancel"
                     b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: os.path.exists(os.path.join(self.tmp, "started")), what="the handler to start")
        sock.close()
        wait_for(lambda: os.path.exists(os.path.join(self.tmp, "finally")), what="the handler's finally block")
        with open(os.path.join(self.tmp, "cancelled")) as f:
            self.assertEqual(f.read(), "CancelledError")
        wait_for(lambda: "invocation inv-env-cancel cancelled" in self.worker.log(), what="the log line")

    def test_closing_the_connection_while_the_envelope_is_read(self):
        sock = self.worker.connect()
        sock.sendall(b"POST /_nimbus/worker/invoke/tick HTTP/1.1\r\nhost: w\r\nx-nimbus-invocation-id: inv-env-cut"
                     b"\r\ncontent-length: 100\r\n\r\n{\"data\":")
        time.sleep(0.05)
        sock.close()
        wait_for(lambda: "invocation inv-env-cut cancelled" in self.worker.log(), what="the log line")
        self.assertEqual(self.invoke("tick", {"data": 1})[0].status, 200)  # the worker carries on

    def test_connection_close_header(self):
        sock = self.worker.connect()
        self.addCleanup(sock.close)
        sock.sendall(b"POST /_nimbus/worker/invoke/tick HTTP/1.1\r\nhost: w\r\nconnection: close\r\n"
                     b"content-length: 11\r\n\r\n{\"data\":42}")
        data = recv_all(sock)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data)
        self.assertIn(b"connection: close", data)
        self.assertTrue(data.endswith(b'["sync",42]'))


class DevModeEnvelopeTest(unittest.TestCase):
    def test_dev_mode_shows_the_exception(self):
        worker = Worker(ENTRY, env={"NIMBUS_DEV": "1"})
        self.addCleanup(worker.cleanup)
        response, data = worker.request("POST", INVOKE + "queue-fails", b"{}")
        self.assertEqual(response.status, 500)
        error = json.loads(data)["error"]
        self.assertEqual(error["code"], "handler_error")
        self.assertIn("ValueError('secret detail')", error["message"])
        self.assertEqual(worker.stop(), 0)


if __name__ == "__main__":
    unittest.main()
