"""The platform API as a function sees it: `ctx.blob` (and, later, `ctx.docs`), over the host's
private Unix socket (NIMBUS_PLATFORM_SOCKET) with the instance's scoped token
(NIMBUS_PLATFORM_TOKEN). A small asyncio HTTP/1.1 client; connections are kept for reuse.

What a function may reach is what the manifest grants it (`[functions.<name>] grants =
["blob:uploads:rw"]`); anything else answers 403 and raises PlatformError.
"""

import asyncio
import json
import os
from urllib.parse import quote, urlencode

_CHUNK = 256 * 1024


class PlatformError(Exception):
    """A platform API call failed: `status` (HTTP), `code` and `message` from the error body."""

    def __init__(self, status, code, message):
        super().__init__("%s %s: %s" % (status, code, message))
        self.status = status
        self.code = code
        self.message = message


class NotFound(PlatformError):
    """The object (or item) does not exist."""


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
        body = await self.read()
        try:
            error = json.loads(body)["error"]
            code, message = error["code"], error["message"]
        except (ValueError, KeyError, TypeError):
            code, message = "http_%d" % self.status, body.decode("utf-8", "replace")
        raise (NotFound if self.status == 404 else PlatformError)(self.status, code, message)


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
