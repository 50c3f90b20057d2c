"""`ctx.durable` on the wire: an HTTP function of a real worker starts and manages orchestrations through a
fake platform socket (PROTOCOL.md section 5), and answers Durable Functions' 202 check-status response."""

import http.server
import json
import os
import socketserver
import threading
import unittest
from urllib.parse import parse_qs, quote, urlsplit

from .test_worker import PlatformCase

ENTRY = '''
import nimbus

app = nimbus.App()


@app.http("/start", methods=["POST"])
async def start(req, ctx):
    body = await req.json()
    started = await ctx.durable.start(body["name"], body.get("input"), instance_id=body.get("id"))
    return ctx.durable.check_status_response(started)


@app.http("/manage/{id}", methods=["POST"])
async def manage(req, ctx):
    id = req.params["id"]
    status = await ctx.durable.status(id)
    await ctx.durable.raise_event(id, "approval", {"ok": True})
    await ctx.durable.raise_event(id, "ping")
    await ctx.durable.terminate(id, "enough, really")
    await ctx.durable.terminate(id)
    return {"status": status, "missing": await ctx.durable.status("nope")}


@app.http("/unknown")
async def unknown(req, ctx):
    try:
        await ctx.durable.start("nope")
    except nimbus.NotFound as exc:
        return {"status": exc.status, "code": exc.code}


@app.http("/bare-id")
def bare_id(req, ctx):
    return ctx.durable.check_status_response("a/b")
'''


def management(instance):
    base = "http://node.example/_nimbus/durable/instances/" + quote(instance, safe="")
    return {
        "id": instance,
        "statusQueryGetUri": base,
        "sendEventPostUri": base + "/raiseEvent/{eventName}",
        "terminatePostUri": base + "/terminate?reason={text}",
        "purgeHistoryDeleteUri": base,
    }


class FakeDurable(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The host's platform socket, answering the durable API as PROTOCOL.md section 5 says it would."""

    daemon_threads = True

    def __init__(self, path):
        self.requests = []
        super().__init__(path, _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        self.server.requests.append({
            "method": self.command, "path": url.path, "raw": self.path,
            "query": {k: v[0] for k, v in parse_qs(url.query).items()},
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": json.loads(body) if body else None, "raw_body": body,
        })
        parts = url.path.split("/")
        if url.path == "/_nimbus/durable/orchestrations/nope" or url.path.endswith("/instances/nope"):
            status, answer = 404, {"error": {"code": "not_found", "message": "no such thing"}}
        elif url.path.startswith("/_nimbus/durable/orchestrations/"):
            instance = parse_qs(url.query).get("instanceId", ["made-up"])[0]
            status, answer = 202, management(instance)
        elif self.command == "GET":
            status, answer = 200, {"instanceId": parts[4], "runtimeStatus": "Running"}
        else:
            status, answer = 202, None
        data = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


class DurableClientTest(PlatformCase):
    platform_class = FakeDurable
    entry = ENTRY

    def setUp(self):
        del self.platform.requests[:]

    def post(self, path, body=None, headers=None):
        response, data = self.worker.request("POST", path, json.dumps(body).encode(), headers)
        return response, json.loads(data)

    def test_start_answers_the_check_status_response(self):
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        response, body = self.post("/start", {"name": "research", "input": {"topic": "tides"}, "id": "r/1 é"},
                                   {"traceparent": traceparent})
        self.assertEqual(response.status, 202, body)
        self.assertEqual(body, management("r/1 é"))
        self.assertEqual(response.getheader("location"), management("r/1 é")["statusQueryGetUri"])
        self.assertEqual(response.getheader("content-type"), "application/json")
        [request] = self.platform.requests
        self.assertEqual((request["method"], request["path"]), ("POST", "/_nimbus/durable/orchestrations/research"))
        self.assertEqual(request["query"], {"instanceId": "r/1 é"})
        self.assertEqual(request["body"], {"topic": "tides"})
        self.assertEqual(request["headers"]["content-type"], "application/json")
        self.assertEqual(request["headers"]["authorization"], "Bearer tok")
        self.assertEqual(request["headers"]["traceparent"], traceparent)

    def test_start_without_input_or_id(self):
        response, body = self.post("/start", {"name": "nightly"})
        self.assertEqual((response.status, body["id"]), (202, "made-up"))
        [request] = self.platform.requests
        self.assertEqual(request["raw"], "/_nimbus/durable/orchestrations/nightly")
        self.assertEqual(request["raw_body"], b"null")

    def test_status_events_and_terminate(self):
        response, body = self.post("/manage/x%201")
        self.assertEqual(response.status, 200, body)
        self.assertEqual(body, {"status": {"instanceId": "x%201", "runtimeStatus": "Running"}, "missing": None})
        calls = [(r["method"], r["raw"], r["body"]) for r in self.platform.requests]
        self.assertEqual(calls, [
            ("GET", "/_nimbus/durable/instances/x%201", None),
            ("POST", "/_nimbus/durable/instances/x%201/raiseEvent/approval", {"ok": True}),
            ("POST", "/_nimbus/durable/instances/x%201/raiseEvent/ping", None),
            ("POST", "/_nimbus/durable/instances/x%201/terminate?reason=enough%2C+really", None),
            ("POST", "/_nimbus/durable/instances/x%201/terminate", None),
            ("GET", "/_nimbus/durable/instances/nope", None),
        ])
        self.assertEqual(self.platform.requests[2]["raw_body"], b"null")
        self.assertEqual(self.platform.requests[3]["query"], {"reason": "enough, really"})

    def test_errors_raise_platform_errors(self):
        response, body = self.worker.request("GET", "/unknown")
        self.assertEqual(json.loads(body), {"status": 404, "code": "not_found"})

    def test_check_status_response_from_a_bare_id(self):
        response, body = self.worker.request("GET", "/bare-id")
        self.assertEqual(response.status, 202)
        base = "/_nimbus/durable/instances/a%2Fb"
        self.assertEqual(response.getheader("location"), base)
        self.assertEqual(json.loads(body), {
            "id": "a/b", "statusQueryGetUri": base, "sendEventPostUri": base + "/raiseEvent/{eventName}",
            "terminatePostUri": base + "/terminate?reason={text}", "purgeHistoryDeleteUri": base,
        })


if __name__ == "__main__":
    unittest.main()
