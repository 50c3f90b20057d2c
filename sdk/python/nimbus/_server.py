"""The worker side of PROTOCOL.md: an HTTP/1.1 server on a Unix socket that runs an App's functions.

One connection is served by one task, one request at a time (the host never pipelines). While an
invocation runs, end-of-file on its connection cancels that task, so the handler (or the async generator
it returned) sees `asyncio.CancelledError` and its `finally:` blocks run. Nothing buffers a streamed body:
request chunks reach `req.stream()` as they arrive, response chunks are written and drained one by one.
"""

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from contextvars import ContextVar

from ._app import App, Event, Function, HTTPError, Response, _unquote

_HEAD_LIMIT = 64 * 1024  # request line + headers; beyond it: 431
_READ_SIZE = 64 * 1024  # largest piece handed to req.stream()
_DISCARD_LIMIT = 1024 * 1024  # unread request body we still read and drop to keep the connection
_STOP_GRACE = 5.0  # seconds handlers get to finish their `finally:` blocks on SIGTERM

_REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_NO_BODY_STATUSES = frozenset((204, 304))
# "HTTP/1.1 200 OK\r\n" and so on, built once
_STATUS_LINES = {status: b"HTTP/1.1 %d %s\r\n" % (status, reason.encode()) for status, reason in _REASONS.items()}
_JSON_LINES = (b"content-type: application/json",)
_FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "connection"))
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
# The host's proof that a request is its own (PROTOCOL.md §1, Confinement); never shown to handlers.
_KEY_HEADER = "x-nimbus-worker-key"

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_dumps = _encoder.encode
# This worker instance, as the host named it (PROTOCOL.md section 1).
_INSTANCE_ID = os.environ.get("NIMBUS_INSTANCE_ID")


def _fast_dumps(
    obj,
    _make=getattr(json.encoder, "c_make_encoder", None),
    _default=_encoder.default,
    _string=json.encoder.encode_basestring,
    _join="".join,
):
    """_dumps without JSONEncoder's Python-level set-up on every call: the C encoder directly (with a
    fresh circular-reference memo each time, as JSONEncoder does)."""
    return _join(_make({}, _default, _string, None, ":", ",", False, False, False)(obj, 0))


try:
    if _fast_dumps({"a": [1, 2.5, "\u00e9", None, True]}) == _dumps({"a": [1, 2.5, "\u00e9", None, True]}):
        _dumps = _fast_dumps
except Exception:  # no C accelerator, or another signature: keep JSONEncoder.encode
    pass

# the invocation id of the running handler, for log lines (tasks the handler spawns inherit it)
_current_invocation = ContextVar("nimbus_invocation", default=None)

_log = logging.getLogger("nimbus.worker")


# --- requests -------------------------------------------------------------------------------------------


class Headers(Mapping):
    """Case-insensitive, read-only request headers. `h[name]` and `h.get(name)` give the first value,
    `h.getall(name)` every value; `h.raw` is the list of (lower-case name, value) pairs as received."""

    __slots__ = ("raw", "_first")

    def __init__(self, raw, _first=None):
        self.raw = raw
        if _first is None:
            _first = {}
            for name, value in raw:
                if name not in _first:
                    _first[name] = value
        self._first = _first

    def __getitem__(self, name):
        return self._first[name.lower()]

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._first

    def __iter__(self):
        return iter(self._first)

    def __len__(self):
        return len(self._first)

    def getall(self, name):
        name = name.lower()
        return [value for key, value in self.raw if key == name]

    def __repr__(self):
        return "Headers(%r)" % (self.raw,)


class Query(Mapping):
    """The query string: `q[key]`, `q.get(key, default)` and `key in q` use the first value,
    `q.getall(key)` gives every value (a list, empty if absent)."""

    __slots__ = ("pairs", "_first")

    def __init__(self, query_string):
        if query_string:
            from urllib.parse import parse_qsl

            pairs = parse_qsl(query_string, keep_blank_values=True, errors="replace")
        else:
            pairs = []
        self.pairs = pairs
        first = {}
        for key, value in pairs:
            if key not in first:
                first[key] = value
        self._first = first

    def __getitem__(self, key):
        return self._first[key]

    def __iter__(self):
        return iter(self._first)

    def __len__(self):
        return len(self._first)

    def getall(self, key):
        return [value for k, value in self.pairs if k == key]

    def __repr__(self):
        return "Query(%r)" % (self.pairs,)


class Request:
    """An HTTP invocation: `method`, `path` (without the query), `query`, `headers`, `params`, `claims`,
    `invocation_id`; the body with `await body()`, `await text()`, `await json()` or `async for chunk in
    stream()`."""

    __slots__ = (
        "method",
        "path",
        "query_string",
        "headers",
        "http_version",
        "invocation_id",
        "_function",
        "_body_reader",
        "_body",
        "_streaming",
        "_query",
        "_params",
        "_claims",
    )

    def __init__(self, method, path, query_string, headers, http_version, body_reader):
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.http_version = http_version
        self.invocation_id = None
        self._function = None
        self._body_reader = body_reader
        self._body = None
        self._streaming = False
        self._query = None
        self._params = None
        self._claims = False

    @property
    def query(self):
        if self._query is None:
            self._query = Query(self.query_string)
        return self._query

    @property
    def params(self):
        """The route's `{param}` values (the trailing `*` part under "*"), from the host's
        `x-nimbus-params` header, or matched here when the header is absent."""
        if self._params is None:
            params = None
            raw = self.headers._first.get("x-nimbus-params")
            if raw is not None:
                try:
                    params = json.loads(raw)
                except ValueError:
                    params = None
                if not isinstance(params, dict):
                    params = None
            if params is None:
                function = self._function
                if function is not None and function.route is not None:
                    params = function.route.match(self.path)
            self._params = params if params is not None else {}
        return self._params

    @property
    def claims(self):
        """The caller's verified token claims (`x-nimbus-claims`), or None for an anonymous call."""
        if self._claims is False:
            claims = None
            raw = self.headers._first.get("x-nimbus-claims")
            if raw is not None:
                try:
                    claims = json.loads(raw)
                except ValueError:
                    claims = None
                if not isinstance(claims, dict):
                    claims = None
            self._claims = claims
        return self._claims

    async def body(self):
        """The whole request body, as bytes."""
        if self._body is None:
            if self._streaming:
                raise RuntimeError("the request body was already consumed by req.stream()")
            self._streaming = True
            chunks = []
            reader = self._body_reader
            while True:
                chunk = await reader.read()
                if not chunk:
                    break
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def text(self):
        """The request body decoded as text (the content-type's charset, else UTF-8)."""
        data = await self.body()
        charset = "utf-8"
        ctype = self.headers._first.get("content-type", "")
        for param in ctype.split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip('"')
        try:
            return data.decode(charset, errors="replace")
        except LookupError:
            return data.decode("utf-8", errors="replace")

    async def json(self):
        """The request body parsed as JSON. A body that is not JSON raises HTTPError 400 `invalid_json`."""
        data = await self.body()
        if not data.strip():
            raise HTTPError(400, "the request body is empty; expected JSON", code="invalid_json")
        try:
            return json.loads(data)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise HTTPError(400, "the request body is not valid JSON: %s" % exc, code="invalid_json") from None

    async def stream(self):
        """Yield the request body in pieces (bytes) as they arrive, without buffering it."""
        if self._body is not None:
            if self._body:
                yield self._body
            return
        if self._streaming:
            raise RuntimeError("the request body was already consumed")
        self._streaming = True
        reader = self._body_reader
        while True:
            chunk = await reader.read()
            if not chunk:
                return
            yield chunk

    def __repr__(self):
        return "Request(%s %s)" % (self.method, self.path)


class Context:
    """What a handler knows about its invocation: `function_name`, `invocation_id`, `traceparent`,
    `timeout_ms` (None if the host gave none), `trigger` (the envelope's trigger for a non-HTTP function,
    the declared trigger for an HTTP one) and `log`, a logging.Logger writing to stderr; `blob` and `docs`
    reach the platform's blob and docs containers the function is granted, `durable` starts and manages
    orchestrations, `ai` calls the AI gateway for the user the invocation serves."""

    __slots__ = ("function_name", "invocation_id", "traceparent", "timeout_ms", "log", "_trigger", "_request")

    def __init__(self, function_name, invocation_id, traceparent, timeout_ms, log, trigger=None):
        self.function_name = function_name
        self.invocation_id = invocation_id
        self.traceparent = traceparent
        self.timeout_ms = timeout_ms
        self.log = log
        self._trigger = trigger  # a dict; or (HTTP) the Function, whose trigger dict is made when first asked
        self._request = None  # (HTTP) the Request, whose claims say whom `ai` works for

    @property
    def trigger(self):
        """The trigger that fired this invocation (a dict with its `type`), or None."""
        trigger = self._trigger
        if isinstance(trigger, Function):
            trigger = self._trigger = trigger.trigger()
        return trigger

    @property
    def blob(self):
        from . import _platform

        return _platform.Blob(_platform.client(), self.traceparent)

    @property
    def docs(self):
        from . import _platform

        return _platform.Docs(_platform.client(), self.traceparent)

    def queue(self, name):
        """The queue `name` (see `nimbus._platform.Queue`): `await ctx.queue("jobs").send(data)`."""
        from . import _platform

        return _platform.Queue(_platform.client(), name, self.traceparent)

    @property
    def durable(self):
        from . import _platform

        return _platform.Durable(_platform.client(), self.traceparent)

    @property
    def ai(self):
        from . import _platform

        claims = self._request.claims if self._request is not None else None
        user = claims.get("sub") if claims else None
        return _platform.Ai(_platform.client(), self.traceparent, user if isinstance(user, str) else None)

    def __repr__(self):
        return "Context(%r, %r)" % (self.function_name, self.invocation_id)


class _BadRequest(Exception):
    pass


class _Body:
    """Reads one request body (content-length or chunked) from the connection, piece by piece."""

    __slots__ = (
        "_reader",
        "_writer",
        "_remaining",
        "_chunked",
        "_chunk_left",
        "done",
        "broken",
        "expect_continue",
        "unsure",
    )

    def __init__(self, reader, writer, length, chunked, expect_continue):
        self._reader = reader
        self._writer = writer
        self._remaining = length
        self._chunked = chunked
        self._chunk_left = 0
        self.done = not chunked and length == 0
        self.broken = False  # malformed or cut short: the connection cannot be reused
        self.expect_continue = expect_continue and not self.done  # `100 Continue` still to send
        self.unsure = False  # answered without `100 Continue`: the client may or may not send the body

    def reusable(self):
        """Decided as the response head is written: can the connection take another request after this
        one? Yes if the body is read, or can be read and dropped afterwards (content-length up to 1 MiB).
        A chunked body the handler has not finished is not worth the guess: the connection closes."""
        if self.broken or self.unsure:
            return False
        if self.done:
            return True
        if self.expect_continue:
            return False
        return not self._chunked and self._remaining <= _DISCARD_LIMIT

    def response_started(self):
        """A final response head is on the wire: too late for `100 Continue`."""
        if self.expect_continue:
            self.expect_continue = False
            self.unsure = True

    async def read(self):
        """The next piece of the body, b"" at its end."""
        if self.done:
            return b""
        if self.expect_continue:
            self.expect_continue = False
            self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            if self._chunked:
                return await self._read_chunked()
            data = await self._reader.read(min(self._remaining, _READ_SIZE))
            if not data:
                raise asyncio.IncompleteReadError(b"", self._remaining)
            self._remaining -= len(data)
            if self._remaining == 0:
                self.done = True
            return data
        except (asyncio.IncompleteReadError, ConnectionError):
            # The connection closed before the body ended. During an invocation the EOF watcher has
            # already asked for this task's cancellation; this is how it looks to the handler.
            self.broken = True
            raise asyncio.CancelledError("the connection closed before the request body ended") from None
        except (asyncio.LimitOverrunError, ValueError):
            self.broken = True
            raise HTTPError(400, "malformed chunked request body") from None

    async def _read_chunked(self):
        reader = self._reader
        while self._chunk_left == 0:
            line = await reader.readuntil(b"\r\n")
            size = line[:-2].split(b";", 1)[0].strip()
            if not size or len(size) > 15 or size.strip(_HEX_DIGITS):
                raise ValueError("bad chunk size")
            size = int(size, 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers: ignored
                self.done = True
                return b""
            self._chunk_left = size
        data = await reader.read(min(self._chunk_left, _READ_SIZE))
        if not data:
            raise asyncio.IncompleteReadError(b"", self._chunk_left)
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        return data

    async def discard(self):
        """Read and drop what the handler left unread; False if the connection cannot be reused."""
        if not self.reusable():
            return False
        total = 0
        try:
            while not self.done:
                total += len(await self.read())
                if total > _DISCARD_LIMIT:
                    return False
        except (asyncio.CancelledError, HTTPError):
            # read() turns a cut-short body into CancelledError; here it only means "close"
            if not self.broken:
                raise
            return False
        return True


_NO_BODY = _Body(None, None, 0, False, False)  # a request without a body; never changes


class _Reader(asyncio.StreamReader):
    """A StreamReader that reports end-of-file (or a lost connection) to `on_eof` as soon as it happens,
    even when nobody is reading."""

    eof_seen = False
    on_eof = None

    def feed_eof(self):
        super().feed_eof()
        self._eof_event()

    def set_exception(self, exc):
        super().set_exception(exc)
        self._eof_event()

    def _eof_event(self):
        self.eof_seen = True
        callback = self.on_eof
        if callback is not None:
            self.on_eof = None
            callback()


_NAME_CACHE = {}  # header name as received -> lower-case name, for names already validated
_NAME_CACHE_SIZE = 512
# Whole header lines seen before -> (lower-case name, value): the host sends mostly the same lines again
# and again. Bounded (emptied when full); lines whose value changes with every request stay out.
_LINE_CACHE = {}
_LINE_CACHE_SIZE = 1024
_LINE_CACHE_MAX_LENGTH = 200
_UNCACHED_HEADERS = frozenset(("x-nimbus-invocation-id", "traceparent", "tracestate", "x-request-id"))
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


def _parse_head(head):
    """(method, target, version, header pairs, first values) of a request head, or _BadRequest."""
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _BadRequest("malformed request line")
    method, target, version = parts
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        raise _BadRequest("unsupported HTTP version %r" % version[:20])
    if method not in _METHODS and (not method or not _TOKEN_CHARS.issuperset(method)):
        raise _BadRequest("malformed method")
    if target[:1] != "/":
        if target.startswith(("http://", "https://")):  # absolute-form
            slash = target.find("/", target.find("//") + 2)
            target = target[slash:] if slash >= 0 else "/"
        else:
            raise _BadRequest("malformed request target")
    raw = []
    append = raw.append
    cache = _LINE_CACHE
    names = _NAME_CACHE
    del lines[0]
    for line in lines:
        pair = cache.get(line)
        if pair is None:
            if not line:
                continue
            if "\r" in line or "\n" in line:
                raise _BadRequest("malformed header line")
            name, sep, value = line.partition(":")
            lower = names.get(name)
            if lower is None or not sep:
                if not sep or not name or not _TOKEN_CHARS.issuperset(name):
                    raise _BadRequest("malformed header line")  # also a folded line (leading space or tab)
                lower = name.lower()
                if len(names) < _NAME_CACHE_SIZE:
                    names[name] = lower
            pair = (lower, value.strip(" \t"))
            if len(line) <= _LINE_CACHE_MAX_LENGTH and lower not in _UNCACHED_HEADERS:
                if len(cache) >= _LINE_CACHE_SIZE:
                    cache.clear()
                cache[line] = pair
        append(pair)
    first = dict(raw)  # keys in order of first appearance, but the last value of a repeated name
    if len(first) != len(raw):
        first = {}
        for name, value in raw:
            if name not in first:
                first[name] = value
    return method, target, version, raw, first


def _without_key(raw, first):
    """The header pairs minus the host's key, which is also taken out of `first`."""
    del first[_KEY_HEADER]
    return [pair for pair in raw if pair[0] != _KEY_HEADER]


# --- responses ------------------------------------------------------------------------------------------


def _envelope_problem(envelope):
    """Why a parsed body is not an invocation envelope, or None if it is one."""
    if type(envelope) is not dict:
        kind = _JSON_KINDS.get(type(envelope), "a JSON value")
        return 'the invocation envelope must be a JSON object like {"id", "trigger", "data"}, not %s' % kind
    invocation_id = envelope.get("id")
    if invocation_id is not None and not isinstance(invocation_id, str):
        return "the invocation envelope's id must be a string"
    trigger = envelope.get("trigger")
    if trigger is not None and type(trigger) is not dict:
        return "the invocation envelope's trigger must be an object"
    return None


_JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _error_json(code, message):
    return _dumps({"error": {"code": code, "message": message}}).encode("utf-8")


def _user_headers(headers):
    """Validate and encode a handler's headers: ([b"name: value", ...], has content-type)."""
    out = []
    has_ctype = False
    if headers is None:
        return out, has_ctype
    items = headers.items() if hasattr(headers, "items") else headers
    for name, value in items:
        name = str(name)
        value = str(value)
        if not name or not _TOKEN_CHARS.issuperset(name):
            raise ValueError("invalid response header name %r" % name)
        if "\r" in value or "\n" in value or "\0" in value:
            raise ValueError("response header %r contains a line break or NUL" % name)
        lower = name.lower()
        if lower in _FRAMING_HEADERS:
            continue  # framing is ours
        if lower == "content-type":
            has_ctype = True
        out.append(("%s: %s" % (lower, value)).encode("latin-1"))
    return out, has_ctype


class _Prepared:
    """A handler's result turned into what goes on the wire."""

    __slots__ = ("status", "headers", "payload", "iterator", "encode")

    def __init__(self, result):
        status = 200
        headers = None
        ctype = None
        encode = _chunk_bytes
        if isinstance(result, Response):
            body = result.body
            status = result.status
            headers = result.headers
            ctype = result.content_type
            if result._sse:
                encode = _sse_bytes
        else:
            body = result
            if body is None:
                status = 204
        payload = None
        iterator = None
        if body is None:
            payload = b""
        elif isinstance(body, bytes):
            payload = body
            default = "application/octet-stream"
        elif isinstance(body, str):
            payload = body.encode("utf-8")
            default = "text/plain; charset=utf-8"
        elif isinstance(body, (dict, list)):
            payload = _dumps(body).encode("utf-8")
            default = "application/json"
        elif isinstance(body, (bytearray, memoryview)):
            payload = bytes(body)
            default = "application/octet-stream"
        elif hasattr(body, "__aiter__"):
            iterator = body
            default = "text/event-stream" if encode is _sse_bytes else "application/octet-stream"
        elif isinstance(body, (tuple, int, float)):  # bool is an int
            payload = _dumps(body).encode("utf-8")
            default = "application/json"
        else:
            raise TypeError(
                "the function returned %s: return a dict, list, str, bytes, None, nimbus.Response, "
                "nimbus.stream(...), nimbus.sse(...) or an async iterator" % type(body).__name__
            )
        lines, has_ctype = _user_headers(headers)
        if ctype is None and not has_ctype and body is not None:
            ctype = default
        if ctype is not None:
            if has_ctype:
                lines = [line for line in lines if not line.startswith(b"content-type:")]
            if "\r" in ctype or "\n" in ctype:
                raise ValueError("content_type contains a line break")
            lines.insert(0, b"content-type: " + ctype.encode("latin-1"))
        if encode is _sse_bytes and not any(line.startswith(b"cache-control:") for line in lines):
            lines.append(b"cache-control: no-cache")
        self.status = status
        self.headers = lines
        self.payload = payload
        self.iterator = iterator
        self.encode = encode


def _chunk_bytes(item):
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    raise TypeError("a streamed response yielded %s: yield bytes or str" % type(item).__name__)


def _sse_data_lines(data, out):
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8", errors="replace")
    elif not isinstance(data, str):
        data = _dumps(data)
    for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        out.append("data: " + line)


def _sse_bytes(item):
    """One server-sent event, ending with a blank line."""
    out = []
    if isinstance(item, Event):
        if item.event is not None:
            out.append("event: %s" % item.event)
        if item.id is not None:
            out.append("id: %s" % item.id)
        if item.retry is not None:
            out.append("retry: %d" % item.retry)
        if item.data is not None:
            _sse_data_lines(item.data, out)
        if not out:
            out.append(":")  # an empty Event is a comment: a keep-alive
    else:
        _sse_data_lines(item, out)
    out.append("\n")
    return "\n".join(out).encode("utf-8")


async def _cancel_iterator(iterator):
    """Deliver a cancellation to an async iterator suspended at `yield`, then close it."""
    athrow = getattr(iterator, "athrow", None)
    if athrow is not None:
        try:
            await athrow(asyncio.CancelledError())
        except (Exception, asyncio.CancelledError):
            pass
    await _close_iterator(iterator)


async def _close_iterator(iterator):
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except (Exception, asyncio.CancelledError):
            pass


# --- the server -----------------------------------------------------------------------------------------


class _Lost(Exception):
    """The connection went away while we were answering."""


class _Connection:
    """One connection from the host: requests one after another, and the state of the current one."""

    __slots__ = (
        "worker",
        "reader",
        "writer",
        "transport",
        "task",
        "lost",
        "body",
        "keep_alive",
        "head_only",
        "invocation_id",
        "on_eof",
    )

    def __init__(self, worker, reader, writer):
        self.worker = worker
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        self.task = None  # the task serving this connection (and running its invocations)
        self.lost = False  # the current invocation lost its connection
        self.body = None  # the current request's _Body
        self.keep_alive = False  # whether the current response lets the connection serve another request
        self.head_only = False  # the current request is HEAD
        self.invocation_id = None  # the current invocation's id
        self.on_eof = self._connection_lost  # bound once, handed to the reader for each invocation

    async def run(self):
        self.task = asyncio.current_task()
        reader = self.reader
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the host closed an idle connection
            except asyncio.LimitOverrunError:
                self.keep_alive = False
                await self._send_error(431, "headers_too_large", "the request head exceeds 64 KiB")
                return
            except ConnectionError:
                return
            head = head.lstrip(b"\r\n")
            if not head:
                continue
            try:
                if not await self._serve(head):
                    return
            except _Lost:
                return

    async def _serve(self, head):
        """Serve one request; True if the connection can take the next one."""
        self.body = None
        self.head_only = False
        self.keep_alive = False
        try:
            method, target, version, raw, first = _parse_head(head)
            if not self.worker.admits(first):
                return await self._forbid(method)
            if _KEY_HEADER in first:
                raw = _without_key(raw, first)
            chunked = False
            length = 0
            te = first.get("transfer-encoding")
            if te is not None:
                if te.lower().replace(" ", "").split(",")[-1] != "chunked":
                    raise _BadRequest("unsupported transfer-encoding %r" % te)
                chunked = True
            else:
                value = first.get("content-length")
                if value is not None:
                    if len(first) != len(raw):  # a repeated header: every content-length must agree
                        if len(set(v for k, v in raw if k == "content-length")) != 1:
                            raise _BadRequest("malformed content-length")
                    if not value.isdigit() or not value.isascii():
                        raise _BadRequest("malformed content-length")
                    length = int(value)
        except _BadRequest as exc:
            await self._send_error(400, "bad_request", str(exc))
            return False
        headers = Headers(raw, first)
        http11 = version == "HTTP/1.1"
        connection = first.get("connection")
        if http11:
            self.keep_alive = (connection is None or "close" not in connection.lower()) and not (
                te is not None and "content-length" in first
            )
        else:
            self.keep_alive = connection is not None and "keep-alive" in connection.lower()
        self.head_only = method == "HEAD"
        if "?" in target:
            path, _, query_string = target.partition("?")
        else:
            path = target
            query_string = ""
        if chunked or length:
            expect = http11 and first.get("expect", "").lower() == "100-continue"
            body = _Body(self.reader, self.writer, length, chunked, expect)
        else:
            body = _NO_BODY  # nothing to read, nothing to change: shared
        self.body = body
        request = Request(method, path, query_string, headers, version, body)

        if path.startswith("/_nimbus/"):
            await self._serve_protocol(request)
        else:
            worker = self.worker
            name = first.get("x-nimbus-function")
            params = None
            try:
                if name is not None:
                    function = worker.functions.get(name)
                    if function is None or function.trigger_type != "http":
                        raise HTTPError(404, "no HTTP function named %r in this worker" % name)
                else:
                    function, params = worker.route(method, path)
            except HTTPError as exc:
                await self._send_error(exc.status, exc.code, exc.message, exc.headers)
            else:
                request._function = function
                if params is not None and "x-nimbus-params" not in first:
                    request._params = params
                await self._invoke(function, request)
        if not self.keep_alive:
            return False
        if not body.done:
            return await body.discard()
        return not body.broken

    async def _forbid(self, method):
        """A request without this instance's key: 403 before anything else, its body left unread, and
        the connection closes (False: no next request on it)."""
        self.head_only = method == "HEAD"
        await self._send_error(403, "forbidden", "this worker answers its host only")
        return False

    async def _serve_protocol(self, request):
        path = request.path
        method = request.method
        if path == "/_nimbus/worker/index":
            if method != "GET" and method != "HEAD":
                await self._send_error(405, "method_not_allowed", "use GET", {"allow": "GET"})
            else:
                await self._send(200, [b"content-type: application/json"], self.worker.index_json)
        elif path.startswith("/_nimbus/worker/invoke/"):
            name = _unquote(path[len("/_nimbus/worker/invoke/") :])
            function = self.worker.functions.get(name)
            if method != "POST":
                await self._send_error(405, "method_not_allowed", "use POST", {"allow": "POST"})
            elif function is None:
                await self._send_error(404, "unknown_function", "no function named %r in this worker" % name)
            elif function.trigger_type == "http":
                message = "function %r has an http trigger: it is invoked over HTTP at %s, not with an envelope" % (
                    name,
                    function.route.pattern,
                )
                await self._send_error(404, "unknown_function", message)
            else:
                await self._invoke_envelope(function, request)
        else:
            await self._send_error(404, "not_found", "no worker endpoint %s" % path)

    def _begin(self, invocation_id):
        """An invocation starts on this connection: end-of-file from now on cancels it (PROTOCOL.md
        section 3). Answers the reader and the context-variable token to reset at its end."""
        reader = self.reader
        self.invocation_id = invocation_id
        self.lost = False
        reader.on_eof = self.on_eof
        if reader.eof_seen:
            self._connection_lost()
        return reader, _current_invocation.set(invocation_id)

    async def _handler_failed(self, ctx, invocation_id, exc, reveal=False):
        """The handler raised: the details go to the log, a 500 handler_error to the host. With
        `reveal` (an activity: its error reaches only the app's own orchestrator, PROTOCOL.md §7.2)
        the answer names the exception."""
        trace = (type(exc), exc, exc.__traceback__)
        ctx.log.error("invocation %s failed: the function raised an error", invocation_id, exc_info=trace)
        message = "the function raised an error"
        if reveal:
            text = str(exc)
            message = "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__
        elif self.worker.dev:
            message += ": %r" % (exc,)
        await self._send_error(500, "handler_error", message)

    def _connection_lost(self, cancel=True):
        """End-of-file (or a lost connection) during an invocation: cancel it, once."""
        if not self.lost:
            self.lost = True
            self.keep_alive = False
            _log.info("invocation %s cancelled: the host closed the connection", self.invocation_id)
            if cancel:
                self.task.cancel()

    async def _invoke(self, function, request):
        """Run one HTTP invocation; end-of-file on the connection meanwhile cancels it."""
        first = request.headers._first
        invocation_id = first.get("x-nimbus-invocation-id") or "local-" + os.urandom(6).hex()
        request.invocation_id = invocation_id
        timeout = first.get("x-nimbus-timeout-ms")
        timeout_ms = int(timeout) if timeout is not None and timeout.isdigit() else None
        name = function.name
        ctx = Context(name, invocation_id, first.get("traceparent"), timeout_ms, self.worker.loggers[name], function)
        ctx._request = request
        reader, token = self._begin(invocation_id)
        try:
            # the handler's result; the common cases are answered here without a detour
            try:
                result = function.handler(request, ctx)
                if hasattr(result, "__await__"):
                    result = await result
                if type(result) is dict or type(result) is list:
                    payload = _dumps(result).encode("utf-8")
                    prepared = None
                else:
                    prepared = _Prepared(result)
            except HTTPError as exc:
                await self._send_error(exc.status, exc.code, exc.message, exc.headers)
                return
            except Exception as exc:
                await self._handler_failed(ctx, invocation_id, exc)
                return
            if self.lost:
                return  # the handler swallowed its cancellation: nobody is listening
            if prepared is None:
                if self._write(200, _JSON_LINES, payload):
                    await self._drain()
            elif prepared.iterator is None:
                if self._write(prepared.status, prepared.headers, prepared.payload):
                    await self._drain()
            else:
                await self._stream(prepared, request, ctx)
        except asyncio.CancelledError:
            if not self.lost:
                _log.info("invocation %s cancelled: the worker is stopping", invocation_id)
                raise
        except _Lost:
            self._connection_lost(cancel=False)  # noticed while writing, in this task: nothing to cancel
        finally:
            reader.on_eof = None
            _current_invocation.reset(token)

    async def _invoke_envelope(self, function, request):
        """Run one envelope invocation (PROTOCOL.md section 4): the JSON envelope in, the handler's JSON
        result out. End-of-file on the connection meanwhile (while the envelope is read, too) cancels it."""
        first = request.headers._first
        invocation_id = first.get("x-nimbus-invocation-id") or None  # an empty header counts as none
        timeout = first.get("x-nimbus-timeout-ms")
        timeout_ms = int(timeout) if timeout is not None and timeout.isdigit() else None
        name = function.name
        reader, token = self._begin(invocation_id)
        try:
            try:
                body = await request.body()
            except HTTPError as exc:  # a malformed chunked body
                await self._send_error(400, "invalid_envelope", exc.message)
                return
            if not body or body.isspace():
                await self._send_error(400, "invalid_envelope", "the invocation envelope is empty")
                return
            try:
                envelope = json.loads(body)
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                await self._send_error(400, "invalid_envelope", "the invocation envelope is not valid JSON: %s" % exc)
                return
            problem = _envelope_problem(envelope)
            if problem is not None:
                await self._send_error(400, "invalid_envelope", problem)
                return
            if invocation_id is None:
                invocation_id = envelope.get("id") or "local-" + os.urandom(6).hex()
                self.invocation_id = invocation_id
                _current_invocation.set(invocation_id)
            if function.trigger_type == "orchestrator":
                await self._step(function, envelope.get("data"), invocation_id)
                return
            trigger = envelope.get("trigger")
            if trigger is None:
                trigger = function.trigger()
            ctx = Context(name, invocation_id, first.get("traceparent"), timeout_ms, self.worker.loggers[name], trigger)
            from . import _platform

            data = envelope.get("data")
            activity = function.trigger_type == "activity"
            try:
                if activity:
                    data = await _platform.fetch_payload(data)  # a large input arrives as a reference (section 7.4)
                result = function.handler(data, ctx)
                if hasattr(result, "__await__"):
                    result = await result
            except HTTPError as exc:
                await self._send_error(exc.status, exc.code, exc.message, exc.headers)
                return
            except Exception as exc:
                await self._handler_failed(ctx, invocation_id, exc, reveal=function.trigger_type == "activity")
                return
            if self.lost:
                return  # the handler swallowed its cancellation: nobody is listening
            try:
                payload = _dumps(result).encode("utf-8")
                if activity and len(payload) > _platform.PAYLOAD_LIMIT:
                    payload = _dumps(await _platform.offload_payload(payload)).encode("utf-8")
            except (_platform.PlatformError, OSError) as exc:
                ctx.log.error("invocation %s failed: its large result could not be stored: %s", invocation_id, exc)
                await self._send_error(500, "handler_error", "the result could not be stored: %s" % (exc,))
                return
            except (TypeError, ValueError, RecursionError) as exc:
                await _close_iterator(result)  # an async generator returned by mistake
                ctx.log.error("invocation %s failed: the function's result is not JSON: %s", invocation_id, exc)
                message = "the function's result is not JSON: %s" % (exc,)
                await self._send_error(500, "handler_error", message)
                return
            if self._write(200, _JSON_LINES, payload):
                await self._drain()
        except asyncio.CancelledError:
            if not self.lost:
                _log.info("invocation %s cancelled: the worker is stopping", invocation_id)
                raise
        except _Lost:
            self._connection_lost(cancel=False)
        finally:
            reader.on_eof = None
            _current_invocation.reset(token)

    async def _step(self, function, data, invocation_id):
        """One step of an orchestration (PROTOCOL.md section 7.1). It runs synchronously: orchestrator code
        does no I/O, and nothing else may touch the instance's session meanwhile."""
        from ._durable import StepError

        from . import _platform

        log = self.worker.loggers[function.name]
        try:
            # Large values arrive as references and leave as references (PROTOCOL.md section 7.4); the
            # code in between sees values.
            if type(data) is dict:
                for part in ("past", "new"):
                    if type(data.get(part)) is list:
                        await _platform.fetch_payloads(data[part])
            outcome = self.worker.sessions.step(function, data, log)
            if _INSTANCE_ID and "need_history" not in outcome:
                outcome["worker"] = _INSTANCE_ID  # for the host's timeline
            payload = _dumps(outcome).encode("utf-8")
            if len(payload) > _platform.PAYLOAD_LIMIT:
                await _platform.offload_payloads([outcome] + outcome.get("actions", []), _dumps)
                payload = _dumps(outcome).encode("utf-8")
        except StepError as exc:
            await self._send_error(400, "invalid_envelope", str(exc))
            return
        except (_platform.PlatformError, OSError) as exc:
            log.error("invocation %s failed: a large payload could not be moved: %s", invocation_id, exc)
            await self._send_error(503, "payload_unavailable", "a large payload could not be moved: %s" % (exc,))
            return
        except Exception:
            log.error("invocation %s failed: the orchestration step failed", invocation_id, exc_info=True)
            await self._send_error(500, "handler_error", "the orchestration step failed")
            return
        if self._write(200, _JSON_LINES, payload):
            await self._drain()

    def _head(self, status, headers, extra=b""):
        """A final response head (`extra`: one more line, with its CRLF), deciding whether the connection
        outlives this response."""
        body = self.body
        if body is not None:
            self.keep_alive = self.keep_alive and body.reusable()
            body.response_started()
        head = _STATUS_LINES.get(status)
        if head is None:
            head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Status").encode())
        if headers:
            head += b"\r\n".join(headers) + b"\r\n"
        head += extra
        if not self.keep_alive:
            head += b"connection: close\r\n"
        return head + b"\r\n"

    async def _stream(self, prepared, request, ctx):
        writer = self.writer
        chunked = request.http_version == "HTTP/1.1"
        if chunked:
            extra = b"transfer-encoding: chunked\r\n"
        else:
            extra = b""
            self.keep_alive = False  # HTTP/1.0: the body ends when the connection does
        writer.write(self._head(prepared.status, prepared.headers, extra))
        iterator = prepared.iterator
        if self.head_only or prepared.status in _NO_BODY_STATUSES:
            await _close_iterator(iterator)
            await self._drain()
            return
        encode = prepared.encode
        in_next = False
        try:
            await self._drain()
            iterator = iterator.__aiter__()
            while True:
                in_next = True
                try:
                    item = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                in_next = False
                data = encode(item)
                if data:  # an empty chunk would end the body
                    if chunked:
                        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    else:
                        writer.write(data)
                    await self._drain()
            if chunked:
                writer.write(b"0\r\n\r\n")
            await self._drain()
        except (asyncio.CancelledError, _Lost):
            if not in_next:
                await _cancel_iterator(iterator)  # suspended at `yield`: deliver the cancellation there
            raise
        except Exception:
            if not in_next:
                await _close_iterator(iterator)
            self.keep_alive = False  # no last chunk: the host sees an incomplete response
            if not self.lost:
                ctx.log.error(
                    "invocation %s failed: the streamed response raised an error; ending the stream",
                    ctx.invocation_id,
                    exc_info=True,
                )

    async def _drain(self):
        try:
            await self.writer.drain()
        except ConnectionError:
            raise _Lost() from None

    def _write(self, status, headers, payload):
        """Write a whole response; True if it is worth a drain (the transport could not send it all at
        once, or the connection is going away)."""
        transport = self.transport
        if status in _NO_BODY_STATUSES or status < 200:
            transport.write(self._head(status, headers))
        else:
            head = self._head(status, headers, b"content-length: %d\r\n" % len(payload))
            if self.head_only or not payload:
                transport.write(head)
            elif len(payload) <= 65536:
                transport.write(head + payload)  # one write, one segment
            else:
                transport.write(head)
                transport.write(payload)
        return transport.get_write_buffer_size() or transport.is_closing()

    async def _send(self, status, headers, payload):
        if self._write(status, headers, payload):
            await self._drain()

    async def _send_error(self, status, code, message, headers=None):
        lines = [b"content-type: application/json"]
        if headers:
            lines.extend(_user_headers(headers)[0])
        await self._send(status, lines, _error_json(code, message))


class Worker:
    """Serves an App over HTTP/1.1 on a Unix socket (PROTOCOL.md). With a `key` (the instance's
    NIMBUS_WORKER_KEY), only requests that carry it in `x-nimbus-worker-key`; the others get 403."""

    def __init__(self, app, dev=False, key=None):
        if not isinstance(app, App):
            raise TypeError("Worker serves a nimbus.App, not %r" % (app,))
        self.app = app
        self.dev = dev
        self.functions = dict(app._functions)
        self.routes = sorted(
            (f for f in self.functions.values() if f.trigger_type == "http"), key=lambda f: f.route.rank
        )
        self.loggers = {name: logging.getLogger("nimbus.fn." + name) for name in self.functions}
        self.index_json = _dumps(app.index()).encode("utf-8")
        self.tasks = set()
        self.sessions = None  # the orchestrations held between steps, when the app has orchestrators
        if any(f.trigger_type == "orchestrator" for f in self.functions.values()):
            from ._durable import Sessions

            self.sessions = Sessions()
        # NIMBUS_WORKER_KEY as bytes; None (a worker started by hand) serves every request
        self.key = os.fsencode(key) if key else None
        if self.key is not None:
            from hmac import compare_digest  # only then: hmac imports hashlib and OpenSSL

            self._compare = compare_digest
        _setup_logging()

    def admits(self, first):
        """Whether a request (its headers' first values) comes from the host: it carries this instance's
        key, compared in constant time. Without a key, every request does."""
        key = self.key
        if key is None:
            return True
        sent = first.get(_KEY_HEADER)
        return sent is not None and self._compare(sent.encode("latin-1"), key)

    def route(self, method, path):
        """(function, params) for a request without `x-nimbus-function`, or HTTPError 404 / 405."""
        allowed = []
        for function in self.routes:
            params = function.route.match(path)
            if params is None:
                continue
            if function.allows(method):
                return function, params
            allowed.extend(m for m in function.methods if m not in allowed)
        if allowed:
            raise HTTPError(
                405,
                "%s is not allowed on %s (allowed: %s)" % (method, path, ", ".join(allowed)),
                headers={"allow": ", ".join(allowed)},
            )
        raise HTTPError(404, "no function serves %s" % path)

    async def handle(self, reader, writer):
        """The callback for one accepted connection."""
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            await _Connection(self, reader, writer).run()
        except asyncio.CancelledError:
            pass
        except Exception:
            _log.exception("connection failed")
        finally:
            self.tasks.discard(task)
            writer.close()

    async def serve(self, path, stop=None):
        """Listen on the Unix socket `path` until `stop` (an asyncio.Event) is set; then cancel what runs."""
        loop = asyncio.get_running_loop()
        if stop is None:
            stop = asyncio.Event()

        def protocol():
            return asyncio.StreamReaderProtocol(_Reader(_HEAD_LIMIT), self.handle)

        try:
            os.unlink(path)  # a stale socket from a previous instance
        except FileNotFoundError:
            pass
        server = await loop.create_unix_server(protocol, path)
        try:
            inode = os.stat(path).st_ino
        except OSError:
            inode = None
        try:
            await stop.wait()
        finally:
            server.close()
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=_STOP_GRACE)
            try:
                if inode is not None and os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass


class _InvocationFilter(logging.Filter):
    def filter(self, record):
        invocation = _current_invocation.get()
        record.nimbus_invocation = " [%s]" % invocation if invocation else ""
        return True


def _setup_logging():
    logger = logging.getLogger("nimbus")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s%(nimbus_invocation)s: %(message)s"))
    handler.addFilter(_InvocationFilter())
    logger.addHandler(handler)
    level = logging.getLevelName(os.environ.get("NIMBUS_LOG_LEVEL", "INFO").upper())
    logger.setLevel(level if isinstance(level, int) else logging.INFO)
    logger.propagate = False


# --- the entry point ------------------------------------------------------------------------------------


def _fail(message):
    sys.stderr.write("nimbus: %s\n" % message)
    sys.stderr.flush()
    return 1


def load_app(entry):
    """Import the entry file and return its nimbus.App; on failure print why to stderr and return None."""
    cwd = os.getcwd()
    path = os.path.abspath(os.path.join(cwd, entry))
    if not os.path.isfile(path):
        _fail("the entry file %s does not exist (working directory %s)" % (entry, cwd))
        return None
    for directory in (cwd, os.path.dirname(path)):  # the entry's folder ends up first
        if directory in sys.path:
            sys.path.remove(directory)
        sys.path.insert(0, directory)
    stem = os.path.splitext(os.path.basename(path))[0]
    name = stem if stem.isidentifier() and stem not in sys.modules else "__nimbus_entry__"

    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        _fail("cannot load %s as a Python module" % entry)
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        import traceback

        sys.modules.pop(name, None)
        sys.stderr.write("nimbus: importing %s failed:\n" % entry)
        traceback.print_exc()
        sys.stderr.flush()
        return None

    app = getattr(module, "app", None)
    if isinstance(app, App):
        return app
    found = []
    for key, value in vars(module).items():
        if isinstance(value, App) and all(value is not other for _, other in found):
            found.append((key, value))
    if len(found) == 1:
        return found[0][1]
    if not found:
        _fail(
            "%s defines no nimbus.App: create one at module level (app = nimbus.App()) and declare "
            "functions with @app.http(...)" % entry
        )
    else:
        _fail(
            "%s defines several nimbus.App instances (%s): name the one to serve `app`"
            % (entry, ", ".join(key for key, _ in found))
        )
    return None


def _exit_on_signal(signum, frame):
    raise SystemExit(0)


def main():
    """`python3 -m nimbus`: serve the App of NIMBUS_ENTRY on NIMBUS_WORKER_SOCKET until SIGTERM."""
    # Read once, before the app imports: neither user code nor the processes it starts inherit it.
    key = os.environ.pop("NIMBUS_WORKER_KEY", None)
    socket_path = os.environ.get("NIMBUS_WORKER_SOCKET")
    entry = os.environ.get("NIMBUS_ENTRY")
    if not socket_path:
        return _fail("NIMBUS_WORKER_SOCKET is not set: this is a Nimbus worker, started by `nimbus up`")
    if not entry:
        return _fail("NIMBUS_ENTRY is not set: it names the app's entry file, e.g. functions/app.py")
    try:
        sys.stdout.reconfigure(line_buffering=True)  # print() reaches the node's log line by line
    except (AttributeError, ValueError):
        pass
    # Stopped while the app still imports: exit 0 all the same (the event loop takes over these signals).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    app = load_app(entry)
    if app is None:
        return 1
    worker = Worker(app, dev=os.environ.get("NIMBUS_DEV") == "1", key=key)

    async def run():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await worker.serve(socket_path, stop)

    try:
        asyncio.run(run())
    except OSError as exc:
        return _fail("cannot listen on %s: %s" % (socket_path, exc))
    return 0
