"""A pure ASGI middleware that caps the prediction requests in flight: past the cap, 503 at once.

The engine sheds windows when its queue is full (or, with CPE_ENGINE_LATENCY_BUDGET_MS, when they would
wait too long for it), but under a few times the saturation rate the queue is not where the time goes:
the event loop is. Each admitted request costs it a body read, a parse and a validation before the
engine ever sees it, so requests pile up in the loop's backlog and everyone waits seconds. Refusing
here, before the body is read, costs the loop a fraction of that: the requests it takes on get the
latency of a loaded but not overloaded service, the others an immediate 503 with ``Retry-After``, and the
service recovers as soon as the load drops (scripts/bench_overload.py).

Only the endpoints that do model work are capped (``/v1/predict...``, ``/v1/routing...``); probes,
metrics and the model list are always answered.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

CAPPED = ("/v1/predict", "/v1/routing")


class InflightLimit:
    """The cap and its counters, kept in ``app.state.admission`` for the metrics and /v1/stats."""

    def __init__(self, max_inflight: int, retry_after_s: int) -> None:
        self.max_inflight = max_inflight  # 0: no cap
        self.retry_after_s = retry_after_s
        self.inflight = 0  # capped requests in progress now
        self.shed = 0  # requests refused since start


class Admission:
    """503 + Retry-After for a capped request that arrives while ``limit.max_inflight`` are in progress."""

    def __init__(self, app: ASGIApp, limit: InflightLimit) -> None:
        self.app = app
        self.limit = limit
        self._body = b'{"detail":"too many prediction requests in progress (%d); retry later"}' % (
            limit.max_inflight
        )
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._body)).encode()),
            (b"retry-after", str(limit.retry_after_s).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit
        if scope["type"] != "http" or not limit.max_inflight or not scope["path"].startswith(CAPPED):
            await self.app(scope, receive, send)
            return
        if limit.inflight >= limit.max_inflight:
            limit.shed += 1
            await send({"type": "http.response.start", "status": 503, "headers": self._headers})
            await send({"type": "http.response.body", "body": self._body})
            return
        limit.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            limit.inflight -= 1
