"""What an app author touches: `App` and its decorators, the routes they declare, and the values a handler
returns (`Response`, `stream()`, `sse()`, `Event`) or raises (`HTTPError`).

This module imports nothing, so `import nimbus` stays cheap; the HTTP server lives in `_server`.
"""

SDK_VERSION = "0.1.0"

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_NAME_CHARS = frozenset("_-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

# error.code used for an HTTPError raised without one
_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "too_many_requests",
    500: "internal_error",
    501: "not_implemented",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}


class HTTPError(Exception):
    """Raise from a handler to answer `status` with `{"error": {"code": code, "message": message}}`.

    `code` defaults from the status (404 -> "not_found", ...); `headers` are added to the response.
    """

    def __init__(self, status, message=None, *, code=None, headers=None):
        status = _check_status(status)
        if code is None:
            code = _DEFAULT_CODES.get(status, "error")
        if message is None:
            message = code.replace("_", " ")
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def __repr__(self):
        return "HTTPError(%d, %r, code=%r)" % (self.status, self.message, self.code)


class Response:
    """A full response: `body` is None, bytes, str, a dict/list (sent as JSON) or an async iterator (streamed).

    `content_type` defaults from the body's kind; `headers` is a dict or a list of (name, value) pairs
    (use a list to send a header twice, e.g. several `set-cookie`).
    """

    __slots__ = ("body", "status", "headers", "content_type", "_sse")

    def __init__(self, body=None, status=200, headers=None, content_type=None):
        self.body = body
        self.status = _check_status(status)
        self.headers = headers
        self.content_type = content_type
        self._sse = False

    def __repr__(self):
        return "Response(status=%d, content_type=%r, body=%s)" % (
            self.status,
            self.content_type,
            type(self.body).__name__,
        )


class Event:
    """One server-sent event for `sse()`: `data` (str, or anything JSON-serialisable; None for no data
    lines), and optional `event` name, `id` and `retry` (milliseconds)."""

    __slots__ = ("data", "event", "id", "retry")

    def __init__(self, data=None, event=None, id=None, retry=None):
        for field, value in (("event", event), ("id", id)):
            if value is not None and ("\n" in str(value) or "\r" in str(value)):
                raise ValueError("Event %s must not contain a line break: %r" % (field, value))
        if retry is not None and (not isinstance(retry, int) or isinstance(retry, bool) or retry < 0):
            raise ValueError("Event retry must be a non-negative int of milliseconds, not %r" % (retry,))
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry

    def __repr__(self):
        return "Event(%r, event=%r, id=%r, retry=%r)" % (self.data, self.event, self.id, self.retry)


def stream(body, content_type=None, status=200, headers=None):
    """A streamed (chunked) response: `body` is an async iterator of bytes or str (str is sent as UTF-8).
    Each item is written and flushed as soon as it is produced."""
    _check_async_iterable(body, "stream")
    return Response(body, status, headers, content_type or "application/octet-stream")


def sse(events, status=200, headers=None):
    """A server-sent-events response (`text/event-stream`, `cache-control: no-cache`): each item of the
    async iterator `events` is one event. A str is sent as `data:` lines, a dict or list as JSON, an
    `Event` with its fields."""
    _check_async_iterable(events, "sse")
    response = Response(events, status, headers, "text/event-stream")
    response._sse = True
    return response


def _check_async_iterable(value, what):
    if not hasattr(value, "__aiter__"):
        hint = ""
        if hasattr(value, "__iter__") and not isinstance(value, (str, bytes, dict)):
            hint = " (got a synchronous iterable: write `async def` with `yield`)"
        raise TypeError("nimbus.%s() takes an async iterator, not %s%s" % (what, type(value).__name__, hint))


def _check_status(status):
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
        raise ValueError("an HTTP status is an int from 100 to 999, not %r" % (status,))
    return status


# --- routes ---------------------------------------------------------------------------------------------


def _unquote(text):
    """Percent-decode one path segment (UTF-8, invalid sequences replaced)."""
    if "%" not in text:
        return text
    from urllib.parse import unquote

    return unquote(text, errors="replace")


class Route:
    """A compiled route pattern: literal segments, `{param}` segments, an optional trailing `*`."""

    __slots__ = ("pattern", "segments", "wildcard", "rank", "shape")

    def __init__(self, pattern):
        if not isinstance(pattern, str):
            raise ValueError(
                "a route is a string starting with '/', not %r (write @app.http(\"/path\"))" % (pattern,)
            )
        if not pattern.startswith("/"):
            raise ValueError("route %r must start with '/'" % pattern)
        if pattern == "/_nimbus" or pattern.startswith("/_nimbus/"):
            raise ValueError("route %r is reserved: paths under /_nimbus/ belong to the platform" % pattern)
        if "?" in pattern or "#" in pattern:
            raise ValueError("route %r must be a path without '?' or '#'" % pattern)
        parts = pattern[1:].split("/")
        wildcard = parts[-1] == "*"
        if wildcard:
            parts.pop()
        segments = []
        names = set()
        for part in parts:
            if "*" in part:
                raise ValueError("route %r: '*' is only allowed as the whole last segment ('/files/*')" % pattern)
            if part.startswith("{") and part.endswith("}"):
                name = part[1:-1]
                if not name.isidentifier():
                    raise ValueError("route %r: parameter {%s} must be a name like {id}" % (pattern, name))
                if name in names:
                    raise ValueError("route %r: parameter {%s} appears twice" % (pattern, name))
                names.add(name)
                segments.append((True, name))
            elif "{" in part or "}" in part:
                raise ValueError(
                    "route %r: a segment is either literal text or a whole {param}, not %r" % (pattern, part)
                )
            else:
                segments.append((False, part))
        self.pattern = pattern
        self.segments = tuple(segments)
        self.wildcard = wildcard
        # lower sorts first: literal (0) before {param} (1) segment by segment, a trailing * (2) last
        self.rank = tuple(1 if is_param else 0 for is_param, _ in segments) + ((2,) if wildcard else ())
        self.shape = tuple("{}" if is_param else text for is_param, text in segments) + (
            ("*",) if wildcard else ()
        )

    def match(self, path):
        """The params dict if `path` (without query) matches, else None. `*` is the rest of the path."""
        if not path.startswith("/"):
            return None
        parts = path[1:].split("/")
        n = len(self.segments)
        if len(parts) != n and not (self.wildcard and len(parts) >= n):
            return None
        params = {}
        for (is_param, text), part in zip(self.segments, parts):
            if is_param:
                if not part:
                    return None
                params[text] = _unquote(part)
            elif part != text and _unquote(part) != text:
                return None
        if self.wildcard:
            params["*"] = _unquote("/".join(parts[n:]))
        return params

    def __repr__(self):
        return "Route(%r)" % self.pattern


class Function:
    """One declared function: name, handler and trigger (`trigger_type`, an HTTP function's `route` and
    `methods`, the other triggers' fields in `config`)."""

    __slots__ = ("name", "handler", "trigger_type", "route", "methods", "config")

    def __init__(self, name, handler, trigger_type, route=None, methods=(), config=None):
        self.name = name
        self.handler = handler
        self.trigger_type = trigger_type
        self.route = route
        self.methods = methods
        self.config = config

    def trigger(self):
        """The trigger as listed in the worker index (PROTOCOL.md section 2); a fresh dict each time."""
        if self.trigger_type == "http":
            return {"type": "http", "route": self.route.pattern, "methods": list(self.methods)}
        trigger = {"type": self.trigger_type}
        if self.config:
            trigger.update(self.config)
        return trigger

    def allows(self, method):
        methods = self.methods
        return not methods or method in methods or (method == "HEAD" and "GET" in methods)

    def __repr__(self):
        return "Function(%r, %r)" % (self.name, self.trigger())


# --- arguments of the non-HTTP decorators ----------------------------------------------------------------

_QUEUE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_BLOB_CONTAINER_CHARS = _QUEUE_CHARS
_DOCS_CONTAINER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect
_CO_ASYNC_GENERATOR = 0x200  # inspect.CO_ASYNC_GENERATOR


def _what(decorator, value):
    """How an error names the decorator: `@app.queue('jobs')`, or `@app.queue` when the value is no string."""
    return "%s(%r)" % (decorator, value) if isinstance(value, str) else decorator


def _string_arg(value, what, argument, example):
    if not isinstance(value, str):
        hint = " (write %s)" % example if callable(value) else ""
        raise TypeError("%s: %s must be a string, not %r%s" % (what, argument, value, hint))
    return value


def _int_arg(value, what, argument, low, high):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("%s: %s must be an int from %d to %d, not %r" % (what, argument, low, high, value))
    if not low <= value <= high:
        raise ValueError("%s: %s must be from %d to %d, not %r" % (what, argument, low, high, value))
    return value


def _docs_container(container, what):
    _string_arg(container, what, "container", '@app.docs_changes("conversations")')
    if not 1 <= len(container) <= 63 or not _DOCS_CONTAINER_CHARS.issuperset(container):
        raise ValueError(
            "%s: container %r is not a docs container name (1-63 lowercase letters, digits, '-' and '_')"
            % (what, container)
        )
    return container


def _blob_path(path, what):
    _string_arg(path, what, "path", '@app.blob("uploads/{name}")')
    container, slash, pattern = path.partition("/")
    if not slash or not container:
        raise ValueError('%s: path %r must be "<container>/<pattern>", like "uploads/{name}"' % (what, path))
    if container != "$web" and (
        not 3 <= len(container) <= 63
        or not _BLOB_CONTAINER_CHARS.issuperset(container)
        or container.startswith("-")
        or container.endswith("-")
    ):
        raise ValueError(
            "%s: %r is not a blob container name (3-63 lowercase letters, digits and '-', not starting or "
            "ending with '-')" % (what, container)
        )
    if not pattern or pattern.startswith("/"):
        raise ValueError(
            '%s: path %r needs a pattern after "%s/", like "%s/{name}"' % (what, path, container, container)
        )
    return path


def _methods(methods):
    if methods is None:
        return ()
    if isinstance(methods, str):
        methods = [methods]
    out = []
    for method in methods:
        if not isinstance(method, str) or not method or not _TOKEN_CHARS.issuperset(method):
            raise ValueError("%r is not an HTTP method" % (method,))
        method = method.upper()
        if method not in out:
            out.append(method)
    return tuple(out)


class App:
    """The functions of one worker. Declare them with decorators:

        app = nimbus.App()

        @app.http("/hello", methods=["GET"])
        async def hello(req, ctx):
            return {"hello": req.query.get("name", "world")}

        @app.queue("jobs")
        async def on_job(data, ctx):       # data: the message; ctx.trigger: what delivered it
            return {"done": data["id"]}

    HTTP handlers take `(req, ctx)`; the others (`timer`, `queue`, `blob`, `docs_changes`, `activity`)
    take `(data, ctx)` and return a JSON value (PROTOCOL.md section 4). An `orchestrator` is a generator
    function of `ctx` alone that yields the tasks it waits for (PROTOCOL.md section 7).
    """

    def __init__(self):
        self._functions = {}

    @property
    def functions(self):
        """The declared functions, in declaration order."""
        return list(self._functions.values())

    def http(self, route, methods=None, name=None):
        """Declare an HTTP function served at `route` for `methods` (None or empty: every method).

        `route` is a path pattern: literal segments, `{param}` segments and an optional trailing `*`.
        `name` defaults to the handler's `__name__`; `[functions.<name>]` in nimbus.toml refers to it.
        """
        compiled = Route(route)
        allowed = _methods(methods)

        def register(handler):
            if not callable(handler):
                raise TypeError("@app.http(%r) decorates a function, not %r" % (compiled.pattern, handler))
            fname = name if name is not None else getattr(handler, "__name__", None)
            self._check_name(fname, handler)
            for other in self._functions.values():
                if (
                    other.trigger_type == "http"
                    and other.route.shape == compiled.shape
                    and (not other.methods or not allowed or set(other.methods) & set(allowed))
                ):
                    raise ValueError(
                        "route %r %s is already served by function %r (route %r %s)"
                        % (
                            compiled.pattern,
                            list(allowed) or "(all methods)",
                            other.name,
                            other.route.pattern,
                            list(other.methods) or "(all methods)",
                        )
                    )
            self._functions[fname] = Function(fname, handler, "http", compiled, allowed)
            return handler

        return register

    def _check_name(self, name, handler):
        if not isinstance(name, str) or not name or len(name) > 128 or not _NAME_CHARS.issuperset(name):
            raise ValueError(
                "function name %r is not valid: use 1-128 letters, digits, '_' and '-' (pass name=\"...\")"
                % (name,)
            )
        if name in self._functions:
            raise ValueError(
                "a function named %r is already declared; function names are unique within an app "
                "(pass name=\"...\" to declare %r under another name)" % (name, handler)
            )

    def timer(self, schedule, name=None, run_on_startup=False, time_zone=None):
        """Declare a function run on a schedule: six cron fields with seconds, as Azure's NCRONTAB
        (`"0 */5 * * * *"`: every five minutes). `run_on_startup` also runs it when the app starts;
        `time_zone` is an IANA name (None: UTC). The handler gets `(data, ctx)`."""
        what = _what("@app.timer", schedule)
        _string_arg(schedule, what, "schedule", '@app.timer("0 */5 * * * *")')
        fields = schedule.split()
        if len(fields) != 6:
            raise ValueError(
                "%s: schedule must be six space-separated fields (second minute hour day month day-of-week), "
                'like "0 */5 * * * *"; it has %d' % (what, len(fields))
            )
        if not isinstance(run_on_startup, bool):
            raise TypeError("%s: run_on_startup must be True or False, not %r" % (what, run_on_startup))
        config = {"schedule": " ".join(fields), "run_on_startup": run_on_startup}
        if time_zone is not None:
            _string_arg(time_zone, what, "time_zone", '"Europe/Paris"')
            if not time_zone or time_zone.strip() != time_zone or " " in time_zone:
                raise ValueError('%s: time_zone must be an IANA name like "Europe/Paris", not %r' % (what, time_zone))
            config["time_zone"] = time_zone
        return self._declare("timer", what, config, name)

    def queue(self, queue, name=None, batch_size=1):
        """Declare a function run for the messages of `queue` (1-63 lowercase letters, digits and '-'),
        up to `batch_size` (1 to 32) at a time. The handler gets `(data, ctx)`."""
        what = _what("@app.queue", queue)
        _string_arg(queue, what, "queue", '@app.queue("jobs")')
        if not 1 <= len(queue) <= 63 or not _QUEUE_CHARS.issuperset(queue):
            raise ValueError(
                "%s: %r is not a queue name (1-63 lowercase letters, digits and '-')" % (what, queue)
            )
        _int_arg(batch_size, what, "batch_size", 1, 32)
        return self._declare("queue", what, {"queue": queue, "batch_size": batch_size}, name)

    def blob(self, path, name=None):
        """Declare a function run when an object is created or updated under `path`,
        `"<container>/<pattern>"` (`"uploads/{name}"`). The handler gets `(data, ctx)`."""
        what = _what("@app.blob", path)
        return self._declare("blob", what, {"path": _blob_path(path, what)}, name)

    def docs_changes(self, container, name=None, batch_size=100, start="now"):
        """Declare a function run for the change feed of the docs `container`, up to `batch_size` (1 to
        1000) changes at a time, from `start`: "now" (changes made from now on) or "beginning". The
        handler gets `(data, ctx)`."""
        what = _what("@app.docs_changes", container)
        _docs_container(container, what)
        _int_arg(batch_size, what, "batch_size", 1, 1000)
        if not isinstance(start, str):
            raise TypeError('%s: start must be "now" or "beginning", not %r' % (what, start))
        if start not in ("now", "beginning"):
            raise ValueError('%s: start must be "now" or "beginning", not %r' % (what, start))
        config = {"container": container, "batch_size": batch_size, "start": start}
        return self._declare("docs_changes", what, config, name)

    def activity(self, name=None):
        """Declare an activity of the durable engine. `@app.activity` and `@app.activity(name="...")`
        both work. The handler gets `(data, ctx)`."""
        if callable(name) and not isinstance(name, str):
            return self._declare("activity", "@app.activity", None, None)(name)
        return self._declare("activity", "@app.activity(%r)" % (name,) if name else "@app.activity()", None, name)

    def orchestrator(self, name=None):
        """Declare an orchestrator of the durable engine: a generator function `def research(ctx): ...`
        that yields the tasks it waits for (`result = yield ctx.call_activity("search", topic)`) and
        returns the orchestration's output; a plain function that returns at once works too.
        `@app.orchestrator`, `@app.orchestrator("research")` and `@app.orchestrator(name="...")` all work.

        The engine replays the code against the orchestration's history, so it must be deterministic and
        synchronous: `async def` is refused, and time, randomness and I/O go through `ctx` or activities."""
        if callable(name) and not isinstance(name, str):
            return self._declare("orchestrator", "@app.orchestrator", None, None)(name)
        what = "@app.orchestrator(%r)" % (name,) if name else "@app.orchestrator()"
        return self._declare("orchestrator", what, None, name)

    def _declare(self, trigger_type, what, config, name):
        """The decorator that registers a non-HTTP function (its handler takes `(data, ctx)`; an
        orchestrator's, `(ctx)`)."""

        def register(handler):
            if not callable(handler):
                raise TypeError("%s decorates a function, not %r" % (what, handler))
            code = getattr(handler, "__code__", None)
            flags = getattr(code, "co_flags", 0)
            if trigger_type == "orchestrator" and flags & (_CO_COROUTINE | _CO_ASYNC_GENERATOR):
                raise TypeError(
                    "%s: %r is an async function; an orchestrator is replayed and must be deterministic and "
                    "synchronous: write `def %s(ctx):` and `yield` its tasks (`result = yield "
                    "ctx.call_activity(...)`), and do the async work in activities"
                    % (what, handler, getattr(handler, "__name__", "orchestrator"))
                )
            if flags & _CO_ASYNC_GENERATOR:
                raise TypeError(
                    "%s: %r is an async generator; a %s function returns one JSON value" % (what, handler, trigger_type)
                )
            fname = name if name is not None else getattr(handler, "__name__", None)
            self._check_name(fname, handler)
            self._functions[fname] = Function(fname, handler, trigger_type, config=config)
            return handler

        return register

    def index(self):
        """The worker index (PROTOCOL.md section 2)."""
        return {
            "protocol": 1,
            "sdk": "python/" + SDK_VERSION,
            "functions": [{"name": f.name, "trigger": f.trigger()} for f in self._functions.values()],
        }

    def __repr__(self):
        return "App(%s)" % ", ".join(self._functions)
