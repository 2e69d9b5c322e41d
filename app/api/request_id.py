"""A pure ASGI middleware that gives every request an id, echoed in ``X-Request-ID`` and put in its logs."""

from __future__ import annotations

import itertools
import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import REQUEST_ID

HEADER = b"x-request-id"
# What a caller's id may be: it lands in log lines and in a response header, so no spaces, quotes or
# control characters, and not so long that it bloats every line.
_ACCEPTED = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}").fullmatch


class RequestId:
    """The caller's ``X-Request-ID`` when it is acceptable, else a new id, on the response and in the logs.

    A new id is this process's random prefix and a counter, not a UUID: unique across replicas and
    restarts all the same, at a fraction of the cost per request. WebSocket connections get an id for
    their logs too (a handshake response carries no header that the middleware could add).
    Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which would run each request in a task
    group of its own: measured in scripts/bench_middleware.py.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._prefix = secrets.token_hex(4)
        self._count = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = None
        for name, value in scope["headers"]:
            if name == HEADER:
                if _ACCEPTED(value):
                    raw = value
                break
        if raw is None:
            raw = f"{self._prefix}-{next(self._count):x}".encode()
        token = REQUEST_ID.set(raw.decode())
        if scope["type"] == "websocket":
            try:
                await self.app(scope, receive, send)
            finally:
                REQUEST_ID.reset(token)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # a new list: the one in the message may be the response object's own
                message["headers"] = [*message.get("headers", ()), (HEADER, raw)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
