"""Nimbus Python SDK: declare functions in code; `python3 -m nimbus` serves them to the Nimbus host.

    import nimbus
    app = nimbus.App()

    @app.http("/hello", methods=["GET"])
    async def hello(req, ctx):
        return {"hello": req.query.get("name", "world")}

Standard library only. The worker protocol it implements is written down in PROTOCOL.md.
"""

from ._app import SDK_VERSION as __version__
from ._app import App, Event, HTTPError, Response, sse, stream

__all__ = [
    "App",
    "Context",
    "Event",
    "HTTPError",
    "NotFound",
    "OrchestrationContext",
    "PlatformError",
    "PreconditionFailed",
    "Request",
    "Response",
    "RetryPolicy",
    "TaskFailedError",
    "sse",
    "stream",
]


def __getattr__(name):
    # Request and Context live with the HTTP server (which imports asyncio); load it only when asked.
    if name in ("Request", "Context"):
        from . import _server

        return getattr(_server, name)
    if name in ("PlatformError", "NotFound", "PreconditionFailed"):
        from . import _platform

        return getattr(_platform, name)
    if name in ("RetryPolicy", "TaskFailedError", "OrchestrationContext"):
        from . import _durable

        return getattr(_durable, name)
    raise AttributeError("module 'nimbus' has no attribute %r" % name)
