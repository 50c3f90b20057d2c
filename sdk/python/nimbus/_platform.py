"""The platform API as a function sees it: `ctx.blob`, `ctx.docs` and `ctx.durable`, over the host's private Unix
socket (NIMBUS_PLATFORM_SOCKET) with the instance's scoped token (NIMBUS_PLATFORM_TOKEN). A small
asyncio HTTP/1.1 client; connections are kept for reuse.

What a function may reach is what the manifest grants it (`[functions.<name>] grants =
["blob:uploads:rw", "docs:conversations:r"]`); anything else answers 403 and raises PlatformError.
"""

import asyncio
import json
import os
from urllib.parse import quote, urlencode

_CHUNK = 256 * 1024


class PlatformError(Exception):
    """A platform API call failed: `status` (HTTP), `code` and `message` from the error body;
    `operation_index` names the operation that failed a docs batch (None otherwise)."""

    def __init__(self, status, code, message, operation_index=None):
        super().__init__("%s %s: %s" % (status, code, message))
        self.status = status
        self.code = code
        self.message = message
        self.operation_index = operation_index


class NotFound(PlatformError):
    """The object (or item, or container) does not exist."""


class PreconditionFailed(PlatformError):
    """A write's `if_match` ETag is no longer the item's: someone changed it meanwhile (412)."""


class _Response:
    __slots__ = ("status", "headers", "_client", "_reader", "_writer", "_remaining", "_chunked", "_done", "_reuse")

    def __init__(self, status, headers, client, reader, writer, remaining, chunked, reuse):
        self.status = status
        self.headers = headers
        self._client = client
        self._reader = reader
        self._writer = writer
        self._remaining = remaining
        self._chunked = chunked
        self._done = remaining == 0 and not chunked
        self._reuse = reuse
        if self._done:
            self._finish()

    def _finish(self):
        self._done = True
        if self._writer is not None:
            if self._reuse:
                self._client._idle.append((self._reader, self._writer))
            else:
                self._writer.close()
            self._reader = self._writer = None

    async def chunks(self):
        """The body, piece by piece as it arrives."""
        try:
            while not self._done:
                if self._chunked:
                    size = int((await self._reader.readline()).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while (await self._reader.readline()) not in (b"\r\n", b"\n", b""):
                            pass
                        self._finish()
                        break
                    data = await self._reader.readexactly(size)
                    await self._reader.readline()
                    yield data
                elif self._remaining is None:
                    data = await self._reader.read(_CHUNK)
                    if not data:
                        self._reuse = False
                        self._finish()
                        break
                    yield data
                else:
                    data = await self._reader.read(min(self._remaining, _CHUNK))
                    if not data:
                        raise ConnectionError("the platform API closed the connection mid-body")
                    self._remaining -= len(data)
                    if self._remaining == 0:
                        self._finish()
                    yield data
        except BaseException:
            self.close()
            raise

    async def read(self):
        parts = [c async for c in self.chunks()]
        return b"".join(parts)

    async def json(self):
        return json.loads(await self.read() or b"null")

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None
        self._done = True

    async def raise_for_status(self):
        if self.status < 400:
            return
        raise _error(self.status, await self.read())


def _error(status, body):
    """The exception for an error response: `{"error": {"code", "message", "operationIndex"?}}`."""
    index = None
    try:
        parsed = json.loads(body)
        code, message = parsed["error"]["code"], parsed["error"]["message"]
        index = parsed["error"].get("operationIndex")
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "http_%d" % status, body.decode("utf-8", "replace")
    kind = {404: NotFound, 412: PreconditionFailed}.get(status, PlatformError)
    return kind(status, code, message, index)


class Client:
    """HTTP/1.1 over the platform socket, one request per connection at a time."""

    def __init__(self, socket_path, token):
        self.socket_path = socket_path
        self.token = token
        self._idle = []

    async def request(self, method, path, body=None, headers=None, traceparent=None):
        """Sends a request; `body` is bytes, or an (async) iterable of bytes sent chunked."""
        head = ["%s %s HTTP/1.1" % (method, path), "Host: nimbus", "Authorization: Bearer " + self.token]
        if traceparent:
            head.append("traceparent: " + traceparent)
        for k, v in (headers or {}).items():
            head.append("%s: %s" % (k, v))
        streamed = body is not None and not isinstance(body, (bytes, bytearray, memoryview))
        if streamed:
            head.append("Transfer-Encoding: chunked")
        else:
            head.append("Content-Length: %d" % (len(body) if body is not None else 0))
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        # A kept connection may have been closed by the host meanwhile: retry once on a fresh one,
        # but only when nothing of a streamed body was consumed.
        for attempt in (0, 1):
            reused = bool(self._idle)
            if reused:
                reader, writer = self._idle.pop()
            else:
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
            try:
                if streamed:
                    writer.write(data)
                    await _send_chunked(writer, body)
                else:
                    writer.write(data + bytes(body or b""))
                    await writer.drain()
                status_line = await reader.readline()
                if not status_line:
                    raise ConnectionResetError("connection closed")
            except (ConnectionError, OSError):
                writer.close()
                if reused and not streamed and attempt == 0:
                    continue
                raise
            break
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if method == "HEAD" or status in (204, 304):
            remaining = 0
        elif chunked:
            remaining = None
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
        else:
            remaining = None
        reuse = headers.get("connection", "").lower() != "close" and not (remaining is None and not chunked)
        return _Response(status, headers, self, reader, writer, remaining, chunked, reuse)


async def _send_chunked(writer, body):
    if hasattr(body, "__aiter__"):
        async for piece in body:
            if piece:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), bytes(piece)))
                await writer.drain()
    else:
        for piece in body:
            if piece:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), bytes(piece)))
                await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _object_path(container, key):
    return "/_nimbus/blob/%s/%s" % (quote(container, safe=""), quote(key, safe="/"))


class Blob:
    """Objects in blob containers: `await ctx.blob.put("uploads", "a/b.txt", b"...")`."""

    __slots__ = ("_client", "_traceparent")

    def __init__(self, client, traceparent=None):
        self._client = client
        self._traceparent = traceparent

    async def _call(self, method, path, body=None, headers=None):
        return await self._client.request(method, path, body, headers, self._traceparent)

    async def put(self, container, key, data, content_type=None, metadata=None):
        """Stores `data` (bytes, str, or an async/sync iterable of bytes, streamed) and returns
        the object's facts: key, size, content_type, etag, last_modified, metadata."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        for name, value in (metadata or {}).items():
            headers["x-nimbus-meta-" + name] = value
        response = await self._call("PUT", _object_path(container, key), data, headers)
        await response.raise_for_status()
        return await response.json()

    async def get(self, container, key):
        """The object's bytes; raises NotFound when there is none."""
        response = await self._call("GET", _object_path(container, key))
        await response.raise_for_status()
        return await response.read()

    async def stream(self, container, key):
        """The object's bytes as an async iterator of chunks, for large objects."""
        response = await self._call("GET", _object_path(container, key))
        await response.raise_for_status()
        async for chunk in response.chunks():
            yield chunk

    async def head(self, container, key):
        """The object's facts (size, content_type, etag, last_modified, metadata), or None."""
        response = await self._call("HEAD", _object_path(container, key))
        if response.status == 404:
            return None
        await response.raise_for_status()
        h = response.headers
        return {
            "key": key,
            "size": int(h.get("content-length", "0")),
            "content_type": h.get("content-type"),
            "etag": h.get("etag", "").strip('"'),
            "last_modified": h.get("last-modified"),
            "metadata": {k[len("x-nimbus-meta-"):]: v for k, v in h.items() if k.startswith("x-nimbus-meta-")},
        }

    async def delete(self, container, key):
        """Deletes the object; False when there was none."""
        response = await self._call("DELETE", _object_path(container, key))
        if response.status == 404:
            await response.read()
            return False
        await response.raise_for_status()
        await response.read()
        return True

    async def list(self, container, prefix="", delimiter=None):
        """Every object under `prefix` (following continuations): {"objects": [...], "prefixes": [...]}."""
        objects, prefixes, continuation = [], [], None
        while True:
            query = {"prefix": prefix}
            if delimiter:
                query["delimiter"] = delimiter
            if continuation:
                query["continuation"] = continuation
            response = await self._call("GET", "/_nimbus/blob/%s?%s" % (quote(container, safe=""), urlencode(query)))
            await response.raise_for_status()
            page = await response.json()
            objects.extend(page["objects"])
            prefixes.extend(page["prefixes"])
            continuation = page.get("continuation")
            if not continuation:
                return {"objects": objects, "prefixes": prefixes}

    async def copy(self, from_container, from_key, container, key):
        """Copies an object (bytes, content type, metadata); returns the copy's facts."""
        headers = {"x-nimbus-copy-source": "%s/%s" % (from_container, from_key)}
        response = await self._call("PUT", _object_path(container, key), b"", headers)
        await response.raise_for_status()
        return await response.json()

    async def sign(self, container, key, method="GET", expires_in=900):
        """A URL that lets anyone holding it GET (or PUT) this one object for `expires_in` seconds."""
        body = json.dumps({"container": container, "key": key, "method": method, "expiresIn": expires_in})
        response = await self._call(
            "POST", "/_nimbus/blob/sign", body.encode(), {"Content-Type": "application/json"}
        )
        await response.raise_for_status()
        return (await response.json())["url"]


def _json(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _pk(value):
    """A partition key value for a URL: JSON, percent-encoded, so "5" and 5 stay different."""
    return quote(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False), safe="")


def _container_path(container):
    return "/_nimbus/docs/%s" % quote(container, safe="")


def _item_path(container, id, pk):
    return "%s/items/%s?pk=%s" % (_container_path(container), quote(id, safe=""), _pk(pk))


def _parameters(parameters):
    """{"@status": "open"} (the @ may be left out) -> [{"name": "@status", "value": "open"}]."""
    return [
        {"name": name if name.startswith("@") else "@" + name, "value": value}
        for name, value in (parameters or {}).items()
    ]


def _batch_op(op):
    op = dict(op)
    if "if_match" in op:
        op["ifMatch"] = op.pop("if_match")
    return op


class Docs:
    """Partitioned JSON documents: `await ctx.docs.create("conversations", {"id": "c1", "userId": "u1"})`.

    Items come back with their system properties (`_etag`, `_lsn`, `_ts`). `pk` is the item's
    partition key value (a string, number, boolean or None): "5" and 5 are different partitions.
    Writes take `if_match=item["_etag"]` to apply only if nobody changed the item meanwhile; when
    somebody did, they raise PreconditionFailed (status 412).
    """

    __slots__ = ("_client", "_traceparent")

    def __init__(self, client, traceparent=None):
        self._client = client
        self._traceparent = traceparent

    async def _call(self, method, path, body=None, headers=None, if_match=None):
        headers = dict(headers or {})
        if body is not None:
            body = _json(body)
            headers["Content-Type"] = "application/json"
        if if_match:
            headers["If-Match"] = if_match
        return await self._client.request(method, path, body, headers, self._traceparent)

    async def _json_call(self, method, path, body=None, headers=None, if_match=None):
        response = await self._call(method, path, body, headers, if_match)
        await response.raise_for_status()
        return await response.json()

    async def create(self, container, item):
        """Creates the item; raises PlatformError 409 (`conflict`) when its id is taken in its partition."""
        return await self._json_call("POST", _container_path(container) + "/items", item)

    async def upsert(self, container, item):
        """Creates the item, or replaces the one with its id and partition key."""
        return await self._json_call("POST", _container_path(container) + "/items", item, {"x-nimbus-upsert": "true"})

    async def read(self, container, id, pk):
        """The item; raises NotFound when there is none."""
        return await self._json_call("GET", _item_path(container, id, pk))

    async def replace(self, container, id, pk, item, if_match=None):
        """Replaces the whole item (the body keeps its id and partition key); returns it as stored."""
        return await self._json_call("PUT", _item_path(container, id, pk), item, if_match=if_match)

    async def patch(self, container, id, pk, operations, if_match=None):
        """Applies 1 to 10 operations ({"op": "set"|"add"|"replace"|"remove"|"incr"|"move", "path",
        "value"|"from"}) all or none; returns the item as stored."""
        return await self._json_call("PATCH", _item_path(container, id, pk), list(operations), if_match=if_match)

    async def delete(self, container, id, pk, if_match=None):
        """Deletes the item; False when there was none."""
        response = await self._call("DELETE", _item_path(container, id, pk), if_match=if_match)
        if response.status == 404:
            error = _error(404, await response.read())
            if error.code == "not_found":
                return False
            raise error
        await response.raise_for_status()
        await response.read()
        return True

    async def query_page(
        self, container, query, parameters=None, partition_key=None, continuation=None, max_items=None
    ):
        """One page of results: (items, continuation), the continuation None after the last page.
        Hand the continuation back (with the same query) for the next page."""
        body = {"query": query, "parameters": _parameters(parameters)}
        if partition_key is not None:
            body["partitionKey"] = partition_key
        if continuation:
            body["continuation"] = continuation
        if max_items:
            body["maxItems"] = max_items
        page = await self._json_call("POST", _container_path(container) + "/query", body)
        return page["items"], page.get("continuation")

    async def query_pages(self, container, query, parameters=None, partition_key=None, max_items=None):
        """The results page by page, as an async iterator of lists."""
        continuation = None
        while True:
            items, continuation = await self.query_page(
                container, query, parameters, partition_key, continuation, max_items
            )
            yield items
            if not continuation:
                return

    async def query(self, container, query, parameters=None, partition_key=None):
        """Every result of the query, as a list (all pages). `parameters`: {"@name": value};
        `partition_key` limits the query to one partition (None: all of them)."""
        out = []
        async for items in self.query_pages(container, query, parameters, partition_key, 1000):
            out.extend(items)
        return out

    async def batch(self, container, partition_key, operations):
        """Runs up to 100 operations on one partition, all or none: each {"op": "create"|"upsert",
        "item"}, {"op": "replace", "id", "item"}, {"op": "patch", "id", "operations"}, {"op":
        "delete"|"read", "id"}, optionally with "if_match". Returns one {"status", "item"} per
        operation; when one fails, nothing is written and the PlatformError's `operation_index`
        names it."""
        body = {"partitionKey": partition_key, "operations": [_batch_op(op) for op in operations]}
        return (await self._json_call("POST", _container_path(container) + "/batch", body))["results"]

    async def feed(self, container, continuation=None, partition_key=None, max_items=100, start_from_now=False):
        """The change feed: items changed after `continuation` (None: from the beginning, or with
        `start_from_now` from the present), in the order of their last change, as (items,
        continuation). The continuation is never None: keep it and ask again later for what
        changed since. Deletes do not appear."""
        query = {"maxItems": str(max_items)}
        if continuation:
            query["continuation"] = continuation
        elif start_from_now:
            query["startFrom"] = "now"
        path = "%s/feed?%s" % (_container_path(container), urlencode(query))
        if partition_key is not None:
            path += "&pk=" + _pk(partition_key)
        page = await self._json_call("GET", path)
        return page["items"], page.get("continuation")


def _instance_path(instance_id):
    return "/_nimbus/durable/instances/" + quote(instance_id, safe="")


class Started(str):
    """The id of a started orchestration (a str), with the host's management payload in `management`:
    {"id", "statusQueryGetUri", "sendEventPostUri", "terminatePostUri", "purgeHistoryDeleteUri"}."""

    __slots__ = ("management",)

    def __new__(cls, management):
        started = super().__new__(cls, management["id"])
        started.management = management
        return started


def _management(started):
    """The management payload of `started`: a Started, the payload itself, or a bare instance id (then
    with relative URIs: the paths are those of the public port)."""
    if isinstance(started, Started):
        return started.management
    if isinstance(started, dict):
        return started
    if not isinstance(started, str) or not started:
        raise TypeError("check_status_response() takes what ctx.durable.start() returned, not %r" % (started,))
    base = _instance_path(started)
    return {
        "id": started,
        "statusQueryGetUri": base,
        "sendEventPostUri": base + "/raiseEvent/{eventName}",
        "terminatePostUri": base + "/terminate?reason={text}",
        "purgeHistoryDeleteUri": base,
    }


class Queue:
    """One queue of the node (grant `queues:<name>:rw`; `r` to read its state):

        await ctx.queue("jobs").send({"id": 7})                 # a queue function gets it as `data`
        await ctx.queue("jobs").send({"id": 8}, delay=30)       # visible in 30 seconds
        state = await ctx.queue("jobs").state()                 # {"length", "oldest_age_seconds", "poison_length"}
    """

    __slots__ = ("_client", "_traceparent", "_path")

    def __init__(self, client, name, traceparent=None):
        if not isinstance(name, str) or not name:
            raise ValueError("a queue name is a non-empty str, not %r" % (name,))
        self._client = client
        self._traceparent = traceparent
        self._path = "/_nimbus/queues/" + quote(name, safe="")

    async def send(self, data, delay=None):
        """Sends `data` (a JSON value, at most 256 KiB of JSON), visible after `delay` seconds (None: at
        once). Returns the message's id."""
        body = {"data": data}
        if delay is not None:
            body["delay"] = delay
        headers = {"Content-Type": "application/json"}
        response = await self._client.request("POST", self._path + "/messages", _json(body), headers, self._traceparent)
        await response.raise_for_status()
        return (await response.json())["id"]

    async def state(self):
        """The queue's length, the age of its oldest message (seconds, or None) and its poison queue's length."""
        response = await self._client.request("GET", self._path, None, None, self._traceparent)
        await response.raise_for_status()
        return await response.json()


class Durable:
    """Orchestrations seen from an ordinary function:

        started = await ctx.durable.start("research", {"topic": "tides"})
        return ctx.durable.check_status_response(started)     # 202, location: the status URI
    """

    __slots__ = ("_client", "_traceparent")

    def __init__(self, client, traceparent=None):
        self._client = client
        self._traceparent = traceparent

    async def _call(self, method, path, body=None, with_body=False):
        headers = None
        if with_body:
            body = _json(body)
            headers = {"Content-Type": "application/json"}
        return await self._client.request(method, path, body, headers, self._traceparent)

    async def start(self, name, input=None, instance_id=None):
        """Start the orchestrator `name` with `input` (a JSON value); `instance_id` picks the instance's
        id (None: the host makes one). Returns the id (a str whose `management` holds the host's URIs)."""
        path = "/_nimbus/durable/orchestrations/" + quote(name, safe="")
        if instance_id is not None:
            path += "?" + urlencode({"instanceId": instance_id})
        response = await self._call("POST", path, input, True)
        await response.raise_for_status()
        return Started(await response.json())

    async def status(self, instance_id):
        """The instance's status (a dict), or None when there is no such instance."""
        response = await self._call("GET", _instance_path(instance_id))
        if response.status == 404:
            await response.read()
            return None
        await response.raise_for_status()
        return await response.json()

    async def raise_event(self, instance_id, name, data=None):
        """Send the external event `name` with `data` (a JSON value) to the instance."""
        path = "%s/raiseEvent/%s" % (_instance_path(instance_id), quote(name, safe=""))
        response = await self._call("POST", path, data, True)
        await response.raise_for_status()
        await response.read()

    async def terminate(self, instance_id, reason=None):
        """Stop the instance; `reason` is recorded with it."""
        path = _instance_path(instance_id) + "/terminate"
        if reason is not None:
            path += "?" + urlencode({"reason": reason})
        response = await self._call("POST", path)
        await response.raise_for_status()
        await response.read()

    def check_status_response(self, started):
        """The standard answer of an HTTP function that started an orchestration: 202 with the management
        payload as JSON and `location: <statusQueryGetUri>`, as Durable Functions'."""
        from ._app import Response

        payload = _management(started)
        return Response(payload, status=202, headers={"location": payload["statusQueryGetUri"]})


class Ai:
    """The AI gateway from a function, with the grant `ai:<model>` (or `ai:*`): OpenAI's chat
    completions and embeddings. Usage is metered to the user the function serves (the caller's `sub`,
    sent as OpenAI's `user`); `model` defaults to the gateway's first model.

        answer = await ctx.ai.chat([{"role": "user", "content": "Hi"}])     # the chat.completion (dict)
        async for delta in ctx.ai.chat_stream(messages):                    # the text as it is generated
            ...
        vectors = await ctx.ai.embed(["a", "b"])                            # one vector per input
    """

    __slots__ = ("_client", "_traceparent", "_user")

    def __init__(self, client, traceparent=None, user=None):
        self._client = client
        self._traceparent = traceparent
        self._user = user

    async def _post(self, path, body):
        if self._user is not None and "user" not in body:
            body["user"] = self._user
        headers = {"Content-Type": "application/json"}
        return await self._client.request("POST", path, _json(body), headers, self._traceparent)

    @staticmethod
    def _body(model, options, **fields):
        body = dict(options)
        body.update(fields)
        if model is not None:
            body["model"] = model
        return body

    async def chat(self, messages, model=None, **options):
        """One whole answer: OpenAI's `chat.completion` as a dict (`["choices"][0]["message"]["content"]`).
        `options` are OpenAI's (`temperature`, `max_tokens`, `tools`, `response_format`...)."""
        response = await self._post("/v1/chat/completions", self._body(model, options, messages=messages))
        await response.raise_for_status()
        return await response.json()

    async def chat_stream(self, messages, model=None, **options):
        """The answer's text, piece by piece as the model generates it. A stream the gateway could not
        finish raises PlatformError (code `stream_interrupted`) after the pieces that arrived."""
        body = self._body(model, options, messages=messages, stream=True)
        response = await self._post("/v1/chat/completions", body)
        await response.raise_for_status()
        pending = b""
        async for chunk in response.chunks():
            pending += chunk
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
                if not data:
                    continue
                if data == b"[DONE]":
                    return
                value = json.loads(data)
                if "error" in value:
                    error = value["error"]
                    raise PlatformError(502, error.get("code") or "stream_interrupted", error.get("message", ""))
                for choice in value.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
        raise PlatformError(502, "stream_interrupted", "the answer ended before its end")

    async def embed(self, input, model=None):
        """Embeddings: one vector (a list of floats) for a str, a list of vectors for a list of them."""
        response = await self._post("/v1/embeddings", self._body(model, {}, input=input))
        await response.raise_for_status()
        data = sorted((await response.json())["data"], key=lambda d: d["index"])
        vectors = [d["embedding"] for d in data]
        return vectors[0] if isinstance(input, str) else vectors


_client = None


def client():
    """The worker's platform client; raises PlatformError when the host gave it no access."""
    global _client
    if _client is None:
        socket_path = os.environ.get("NIMBUS_PLATFORM_SOCKET")
        token = os.environ.get("NIMBUS_PLATFORM_TOKEN")
        if not socket_path or not token:
            raise PlatformError(
                0, "no_platform_access", "this process was not started by a Nimbus host as a function's worker"
            )
        _client = Client(socket_path, token)
    return _client


# --- durable payloads (PROTOCOL.md section 7.4) ---------------------------------------------------------

PAYLOAD_LIMIT = 64 * 1024
_PAYLOAD = "$nimbus.payload"
# The fields of events and answers that may hold a payload.
_PAYLOAD_FIELDS = ("input", "result", "data", "output")


def payload_key(value):
    """The key a payload reference names, or None when `value` is no reference."""
    if type(value) is dict and len(value) == 2 and "bytes" in value:
        key = value.get(_PAYLOAD)
        if isinstance(key, str):
            return key
    return None


async def offload_payload(text):
    """Keeps JSON text (bytes) as a durable payload: its reference."""
    response = await client().request("POST", "/_nimbus/durable/payloads", text, {"Content-Type": "application/json"})
    await response.raise_for_status()
    return await response.json()


async def fetch_payload(value):
    """The value a reference stands for; any other value as it is."""
    key = payload_key(value)
    if key is None:
        return value
    response = await client().request("GET", "/_nimbus/durable/payloads/" + quote(key, safe=""))
    await response.raise_for_status()
    return json.loads(await response.read())


async def fetch_payloads(events):
    """Replaces, in place, the references in the payload fields of `events` (dicts) by their values."""
    for event in events:
        if type(event) is dict:
            for field in _PAYLOAD_FIELDS:
                if payload_key(event.get(field)) is not None:
                    event[field] = await fetch_payload(event[field])


async def offload_payloads(objects, dumps):
    """Replaces, in place, the payload fields of `objects` (dicts) whose JSON is above the limit by
    references."""
    for obj in objects:
        for field in _PAYLOAD_FIELDS:
            if field in obj:
                text = dumps(obj[field]).encode("utf-8")
                if len(text) > PAYLOAD_LIMIT:
                    obj[field] = await offload_payload(text)
