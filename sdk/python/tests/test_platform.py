"""`ctx.docs` on the wire, against a fake platform socket: paths, partition keys, headers, bodies,
continuations followed, and errors raised as the right exceptions. (The real host is exercised by
crates/nimbus/tests/platform_docs.rs.)"""

import asyncio
import json
import os
import tempfile
import unittest
from urllib.parse import parse_qs, urlsplit

import nimbus
from nimbus import _platform


class FakePlatform:
    """A Unix-socket HTTP/1.1 server that records requests and answers with `reply(request)`:
    (status, body dict or None)."""

    def __init__(self, reply):
        self.reply = reply
        self.requests = []
        self._dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self._dir.name, "platform.sock")

    async def __aenter__(self):
        self._handlers = set()
        self._server = await asyncio.start_unix_server(self._serve, self.path)
        self._client = _platform.Client(self.path, "token")
        return _platform.Docs(self._client)

    async def __aexit__(self, *exc):
        for _, writer in self._client._idle:
            writer.close()
        await asyncio.gather(*self._handlers)
        self._server.close()
        await self._server.wait_closed()
        self._dir.cleanup()

    async def _serve(self, reader, writer):
        self._handlers.add(asyncio.current_task())
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b""):
                        break
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = {
                    "method": method,
                    "path": urlsplit(target).path,
                    "query": {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()},
                    "raw": target,
                    "headers": headers,
                    "body": json.loads(body) if body else None,
                }
                self.requests.append(request)
                status, answer = self.reply(request)
                data = b"" if answer is None else json.dumps(answer).encode()
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(data), data))
                await writer.drain()
        finally:
            writer.close()


def run(coro):
    return asyncio.run(coro)


def error(status, code, **extra):
    return status, {"error": dict({"code": code, "message": "m"}, **extra)}


class DocsWireTest(unittest.TestCase):
    def test_items_and_partition_keys(self):
        async def go():
            fake = FakePlatform(lambda r: (200, {"id": "a b", "_etag": '"7"'}))
            async with fake as docs:
                await docs.create("conv", {"id": "x", "userId": "u"})
                await docs.upsert("conv", {"id": "x", "userId": "u"})
                await docs.read("conv", "a b", "5")
                await docs.read("conv", "a b", 5)
                await docs.read("conv", "a b", None)
                await docs.read("conv", "a b", "é&=")
                await docs.replace("conv", "x", "u", {"id": "x", "userId": "u"}, if_match='"7"')
                await docs.patch("conv", "x", "u", [{"op": "set", "path": "/a", "value": 1}])
            return fake.requests

        r = run(go())
        self.assertEqual([x["method"] for x in r], ["POST", "POST", "GET", "GET", "GET", "GET", "PUT", "PATCH"])
        self.assertEqual(r[0]["path"], "/_nimbus/docs/conv/items")
        self.assertNotIn("x-nimbus-upsert", r[0]["headers"])
        self.assertEqual(r[1]["headers"]["x-nimbus-upsert"], "true")
        self.assertEqual(r[1]["headers"]["content-type"], "application/json")
        self.assertEqual(r[2]["raw"], "/_nimbus/docs/conv/items/a%20b?pk=%225%22")
        self.assertEqual([x["query"].get("pk") for x in r[2:6]], ['"5"', "5", "null", '"é&="'])
        self.assertEqual(r[6]["headers"]["if-match"], '"7"')
        self.assertEqual(r[6]["body"], {"id": "x", "userId": "u"})
        self.assertNotIn("if-match", r[7]["headers"])
        self.assertEqual(r[7]["body"], [{"op": "set", "path": "/a", "value": 1}])

    def test_errors(self):
        answers = {
            "/_nimbus/docs/conv/items/stale": error(412, "precondition_failed"),
            "/_nimbus/docs/conv/items/gone": error(404, "not_found"),
            "/_nimbus/docs/none/items/gone": error(404, "container_not_found"),
            "/_nimbus/docs/conv/batch": error(409, "conflict", operationIndex=2),
        }

        async def go():
            out = {}
            async with FakePlatform(lambda r: answers.get(r["path"], (204, None))) as docs:
                with self.assertRaises(nimbus.PreconditionFailed) as caught:
                    await docs.replace("conv", "stale", "u", {}, if_match='"1"')
                out["stale"] = caught.exception
                with self.assertRaises(nimbus.NotFound):
                    await docs.read("conv", "gone", "u")
                out["deleted"] = await docs.delete("conv", "x", "u")
                out["gone"] = await docs.delete("conv", "gone", "u")
                with self.assertRaises(nimbus.NotFound) as caught:
                    await docs.delete("none", "gone", "u")
                out["no_container"] = caught.exception
                with self.assertRaises(nimbus.PlatformError) as caught:
                    await docs.batch("conv", "u", [{"op": "delete", "id": "a", "if_match": '"1"'}])
                out["batch"] = caught.exception
            return out

        out = run(go())
        self.assertEqual((out["stale"].status, out["stale"].code), (412, "precondition_failed"))
        self.assertIsInstance(out["stale"], nimbus.PlatformError)
        self.assertEqual((out["deleted"], out["gone"]), (True, False))
        self.assertEqual(out["no_container"].code, "container_not_found")
        self.assertEqual((out["batch"].status, out["batch"].operation_index), (409, 2))

    def test_queries_follow_continuations(self):
        def reply(r):
            if r["path"].endswith("/feed"):
                return 200, {"items": [{"id": "f"}], "continuation": "next"}
            if r["path"].endswith("/batch"):
                return 200, {"results": [{"status": 204, "item": None}]}
            page = {None: ("p2", [1, 2]), "p2": ("p3", [3]), "p3": (None, [4])}[r["body"].get("continuation")]
            return 200, {"items": page[1], "continuation": page[0]}

        async def go():
            fake = FakePlatform(reply)
            async with fake as docs:
                out = {
                    "all": await docs.query("conv", "SELECT VALUE c.n FROM c WHERE c.s = @s", {"@s": "open", "n": 1}),
                    "pages": [p async for p in docs.query_pages("conv", "q", partition_key=0, max_items=2)],
                    "page": await docs.query_page("conv", "q", continuation="p3"),
                    "feed": await docs.feed("conv", continuation="c1", partition_key="u", max_items=5),
                    "batch": await docs.batch("conv", "u", [{"op": "delete", "id": "a", "if_match": '"1"'}]),
                }
            return out, fake.requests

        out, r = run(go())
        self.assertEqual(out["all"], [1, 2, 3, 4])
        self.assertEqual(out["pages"], [[1, 2], [3], [4]])
        self.assertEqual(out["page"], ([4], None))
        self.assertEqual(out["feed"], ([{"id": "f"}], "next"))
        self.assertEqual(out["batch"], [{"status": 204, "item": None}])
        self.assertEqual(
            r[0]["body"],
            {
                "query": "SELECT VALUE c.n FROM c WHERE c.s = @s",
                "parameters": [{"name": "@s", "value": "open"}, {"name": "@n", "value": 1}],
                "maxItems": 1000,
            },
        )
        self.assertEqual(r[1]["body"]["continuation"], "p2")
        self.assertEqual((r[3]["body"]["partitionKey"], r[3]["body"]["maxItems"]), (0, 2))
        feed = r[7]
        self.assertEqual(feed["path"], "/_nimbus/docs/conv/feed")
        self.assertEqual(feed["query"], {"maxItems": "5", "continuation": "c1", "pk": '"u"'})
        self.assertEqual(r[8]["body"], {"partitionKey": "u", "operations": [{"op": "delete", "id": "a", "ifMatch": '"1"'}]})


if __name__ == "__main__":
    unittest.main()
