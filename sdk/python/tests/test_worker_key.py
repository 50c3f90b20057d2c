"""The instance's key (PROTOCOL.md section 1, Confinement): with NIMBUS_WORKER_KEY set, the worker answers only
requests that carry it in `x-nimbus-worker-key`, and neither handlers nor their processes ever see it."""

import json
import os
import shutil
import tempfile
import unittest

from .test_worker import Worker

KEY = "0123456789abcdef" * 4

ENTRY = '''
import os
import subprocess

import nimbus

AT_IMPORT = os.environ.get("NIMBUS_WORKER_KEY")

app = nimbus.App()


@app.http("/ran", methods=["GET", "HEAD", "POST"])
async def ran(req, ctx):
    with open(os.path.join(req.query["dir"], "ran"), "w") as f:
        f.write("x")
    return {
        "header": req.headers.get("x-nimbus-worker-key"),
        "in": "x-nimbus-worker-key" in req.headers,
        "all": req.headers.getall("x-nimbus-worker-key"),
        "raw": [name for name, _ in req.headers.raw],
        "custom": req.headers.get("x-custom"),
    }


@app.http("/env")
async def env(req, ctx):
    child = subprocess.run(["sh", "-c", "echo ${NIMBUS_WORKER_KEY-unset}"], capture_output=True, text=True)
    return {"import": AT_IMPORT, "now": os.environ.get("NIMBUS_WORKER_KEY"),
            "bytes": os.environb.get(b"NIMBUS_WORKER_KEY"), "child": child.stdout.strip()}


@app.activity(name="mark")
def mark(data, ctx):
    with open(os.path.join(data["dir"], "ran"), "w") as f:
        f.write("x")
    return "marked"
'''

FORBIDDEN = {"error": {"code": "forbidden", "message": "this worker answers its host only"}}


def recv_to_end(sock):
    """Everything until the worker closes the connection. Closing with part of a body unread may reach us
    as a reset once the answer is read: that is an end too."""
    data = b""
    try:
        while True:
            more = sock.recv(65536)
            if not more:
                return data
            data += more
    except ConnectionResetError:
        return data


class KeyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.worker = Worker(ENTRY, env={"NIMBUS_WORKER_KEY": KEY})

    @classmethod
    def tearDownClass(cls):
        cls.worker.stop_cleanly()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="nimbus-py-case-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def ran(self):
        return os.path.exists(os.path.join(self.tmp, "ran"))

    def assert_forbidden(self, method, path, body=None, headers=None):
        response, data = self.worker.request(method, path, body, headers)
        self.assertEqual(response.status, 403)
        self.assertEqual(response.getheader("content-type"), "application/json")
        self.assertTrue(response.will_close)  # `connection: close`: this connection serves nothing more
        if method != "HEAD":
            self.assertEqual(json.loads(data), FORBIDDEN)
        self.assertFalse(self.ran(), "the handler ran")

    def assert_forbidden_with_body(self, head, body):
        """The same for a request with a body, sent in one piece: the worker may close before a second piece
        is written."""
        sock = self.worker.connect()
        self.addCleanup(sock.close)
        sock.sendall(b"%s\r\nhost: w\r\ncontent-length: %d\r\n\r\n%s" % (head.encode(), len(body), body))
        data = recv_to_end(sock)
        self.assertTrue(data.startswith(b"HTTP/1.1 403 Forbidden\r\n"), data[:100])
        self.assertIn(b"\r\nconnection: close\r\n", data)
        self.assertEqual(json.loads(data.partition(b"\r\n\r\n")[2]), FORBIDDEN)
        self.assertFalse(self.ran(), "the handler ran")

    def test_without_the_header_nothing_runs(self):
        self.assert_forbidden("GET", "/ran?dir=" + self.tmp)
        self.assert_forbidden("HEAD", "/ran?dir=" + self.tmp)
        self.assert_forbidden_with_body("POST /ran?dir=%s HTTP/1.1\r\nx-nimbus-function: ran" % self.tmp, b"body")
        self.assert_forbidden("GET", "/nowhere")  # not even a 404

    def test_a_wrong_key_is_refused(self):
        for wrong in ("f" * 64, KEY.upper(), KEY[:-1], KEY + "0", "", " ", "\u00e9" * 64):
            with self.subTest(key=wrong):
                self.assert_forbidden("GET", "/ran?dir=" + self.tmp, headers={"x-nimbus-worker-key": wrong})

    def test_the_right_key_is_served_and_hidden_from_the_handler(self):
        conn = self.worker.http()
        self.addCleanup(conn.close)
        headers = {"x-nimbus-worker-key": KEY, "x-custom": "yes"}
        response, data = self.worker.request("GET", "/ran?dir=" + self.tmp, headers=headers, conn=conn)
        self.assertEqual(response.status, 200)
        self.assertFalse(response.will_close)  # keep-alive as usual
        body = json.loads(data)
        self.assertEqual(body, {"header": None, "in": False, "all": [], "raw": body["raw"], "custom": "yes"})
        self.assertNotIn("x-nimbus-worker-key", body["raw"])
        self.assertIn("x-custom", body["raw"])
        self.assertTrue(self.ran())
        response, _ = self.worker.request("GET", "/nowhere", headers=headers, conn=conn)
        self.assertEqual(response.status, 404)

    def test_the_index_needs_the_key(self):
        self.assert_forbidden("GET", "/_nimbus/worker/index")
        response, data = self.worker.request("GET", "/_nimbus/worker/index", headers={"x-nimbus-worker-key": KEY})
        self.assertEqual(response.status, 200)
        self.assertEqual([f["name"] for f in json.loads(data)["functions"]], ["ran", "env", "mark"])

    def test_envelope_invocations_need_the_key(self):
        envelope = json.dumps({"data": {"dir": self.tmp}}).encode()
        self.assert_forbidden_with_body("POST /_nimbus/worker/invoke/mark HTTP/1.1", envelope)
        response, data = self.worker.request("POST", "/_nimbus/worker/invoke/mark", envelope,
                                             {"content-type": "application/json", "x-nimbus-worker-key": KEY})
        self.assertEqual((response.status, json.loads(data)), (200, "marked"))
        self.assertTrue(self.ran())

    def test_refused_before_the_body_is_read(self):
        sock = self.worker.connect()
        self.addCleanup(sock.close)
        # a body announced but never sent: the answer cannot wait for it
        sock.sendall(b"POST /_nimbus/worker/invoke/mark HTTP/1.1\r\nhost: w\r\ncontent-length: 1000000\r\n\r\n{")
        data = recv_to_end(sock)
        self.assertTrue(data.startswith(b"HTTP/1.1 403 Forbidden\r\n"), data[:100])
        self.assertIn(b"\r\nconnection: close\r\n", data)
        self.assertTrue(data.endswith(json.dumps(FORBIDDEN, separators=(",", ":")).encode()), data)

    def test_no_100_continue_without_the_key(self):
        sock = self.worker.connect()
        self.addCleanup(sock.close)
        sock.sendall(b"POST /ran?dir=%s HTTP/1.1\r\nhost: w\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n"
                     % self.tmp.encode())
        data = recv_to_end(sock)
        self.assertTrue(data.startswith(b"HTTP/1.1 403 "), data[:100])
        self.assertNotIn(b"100 Continue", data)
        self.assertFalse(self.ran(), "the handler ran")

    def test_user_code_never_sees_the_key(self):
        response, data = self.worker.request("GET", "/env", headers={"x-nimbus-worker-key": KEY})
        self.assertEqual(response.status, 200)
        self.assertEqual(json.loads(data), {"import": None, "now": None, "bytes": None, "child": "unset"})


class WithoutKeyTest(unittest.TestCase):
    def check_open(self, env):
        worker = Worker(ENTRY, env=env)
        self.addCleanup(worker.cleanup)
        tmp = tempfile.mkdtemp(prefix="nimbus-py-case-")
        self.addCleanup(shutil.rmtree, tmp, True)
        response, data = worker.request("GET", "/ran?dir=" + tmp)
        self.assertEqual(response.status, 200)
        self.assertFalse(json.loads(data)["in"])
        # a key sent anyway is nobody's business either
        response, data = worker.request("GET", "/ran?dir=" + tmp, headers={"x-nimbus-worker-key": "whatever"})
        self.assertEqual((response.status, json.loads(data)["all"]), (200, []))
        self.assertEqual(worker.request("GET", "/_nimbus/worker/index")[0].status, 200)
        self.assertEqual(worker.stop(), 0)

    def test_unset_key_serves_every_request(self):
        self.check_open({})

    def test_empty_key_serves_every_request(self):
        self.check_open({"NIMBUS_WORKER_KEY": ""})


if __name__ == "__main__":
    unittest.main()
