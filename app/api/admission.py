"""Admission: a prediction or routing request that finds the in-flight limit reached gets a 503 at once.

The engine sheds windows when its queue is full (or, with CPE_ENGINE_LATENCY_BUDGET_MS, when they would
wait too long for it), but under a few times the saturation rate the queue is not where the time goes:
the event loop is. Each admitted request costs it a body read, a parse and a validation before the
engine ever sees it, so requests pile up in the loop's backlog and everyone waits seconds. Refusing
here, before the body is read, costs the loop a fraction of that: the requests it takes on get the
latency of a loaded but not overloaded service, the others an immediate 503 with ``Retry-After``, and the
service recovers as soon as the load drops (scripts/bench_overload.py).

Only the endpoints that do model work are capped (``/v1/predict...``, ``/v1/routing...``); probes,
metrics and the model list are always answered.

``Admission`` is the outermost middleware, so that a refusal costs the loop as little as a plain ASGI
app can: no request id, no HTTP metrics, none of the other middleware (``cpe_shed_requests_total``
counts the refusals). The limit is an object of its own, asked ``try_acquire`` before a request and told
``release`` after it (with its latency), so that another policy replaces the fixed number without touching
the middleware, and the refusal is made in one place: by default ``app.api.adaptive_limit.AdaptiveLimit``,
which follows the latency it measures; ``CPE_ADMISSION=fixed`` keeps the fixed ``CPE_MAX_INFLIGHT``.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

CAPPED = ("/v1/predict", "/v1/routing")
BATCH = "/v1/predict/batch"


class InflightLimit:
    """A fixed number of capped requests in progress at once (0: no limit), and the counts for metrics."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0  # capped requests in progress now
        self.shed = 0  # requests refused since start

    def try_acquire(self) -> bool:
        """Take a place for one request: True, or False (counted as shed) when none is left."""
        if self.max_inflight and self.inflight >= self.max_inflight:
            self.shed += 1
            return False
        self.inflight += 1
        return True

    def release(self, latency_s: float = 0.0, *, batch: bool = False) -> None:
        """Give back the place of a request that ``try_acquire`` admitted, now finished after
        ``latency_s`` (which a fixed limit does not need; ``AdaptiveLimit`` follows it); ``batch``: it
        asked for many windows at once (``/v1/predict/batch``)."""
        self.inflight -= 1


class Admission:
    """ASGI middleware: a capped request runs holding a place of ``limit``, or gets a 503 + Retry-After."""

    def __init__(self, app: ASGIApp, limit: InflightLimit, retry_after_s: int) -> None:
        self.app = app
        self.limit = limit
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(CAPPED):
            await self.app(scope, receive, send)
            return
        limit = self.limit
        if not limit.try_acquire():
            await self.refuse(send)
            return
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            limit.release(time.perf_counter() - start, batch=scope["path"] == BATCH)

    async def refuse(self, send: Send) -> None:
        """The 503 with Retry-After; the body, if any, is left unread."""
        inflight = self.limit.inflight
        body = b'{"detail":"too many prediction requests in progress (%d); retry later"}' % inflight
        # new headers every time: a middleware outside this one may extend them (RequestId adds its
        # header), and a shared list would grow by a header a refusal
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"retry-after", self.retry_after),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
