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

Under `cpe serve` the refusal comes earlier still: ``AdmissionHttpProtocol`` (uvicorn's httptools protocol)
answers a capped request that arrives at a full cap with ``InflightLimit.refuse``, a two-message ASGI app,
instead of the app and its middleware stack. Through the whole stack a refusal cost the event loop
~215 µs (4,650 refusals/s on one core, wrk -c64 and CPE_MAX_INFLIGHT=1), a third of what serving a
prediction costs, so that at three times the saturation rate the refusals alone filled the loop and the
admitted requests waited seconds behind them; in the protocol, ~87 µs (11,500/s). The limit reaches the
protocol through the lifespan state (``STATE_KEY``), which uvicorn hands to every connection. Refusals
made there carry no ``X-Request-Id`` and are not in the HTTP request metrics; ``cpe_shed_requests_total``
counts every refusal, wherever made. The middleware keeps its own check, for requests that passed the
protocol in the same loop iteration as those that filled the cap, and for other servers.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

CAPPED = ("/v1/predict", "/v1/routing")
STATE_KEY = "cpe.admission"  # the InflightLimit in the lifespan state, where the protocol finds it


class InflightLimit:
    """The cap and its counters, kept in ``app.state.admission`` for the metrics and /v1/stats."""

    def __init__(self, max_inflight: int, retry_after_s: int) -> None:
        self.max_inflight = max_inflight  # 0: no cap
        self.retry_after_s = retry_after_s
        self.inflight = 0  # capped requests in progress now
        self.shed = 0  # requests refused since start
        self._body = b'{"detail":"too many prediction requests in progress (%d); retry later"}' % max_inflight
        self._headers = (
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._body)).encode()),
            (b"retry-after", str(retry_after_s).encode()),
        )

    def capped(self, path: str) -> bool:
        """Whether requests for ``path`` count against the cap (none do without one)."""
        return self.max_inflight > 0 and path.startswith(CAPPED)

    @property
    def reached(self) -> bool:
        """Whether the cap's requests are all in progress: one more is refused."""
        return self.inflight >= self.max_inflight

    def full(self, path: str) -> bool:
        """Whether a request for ``path`` is to be refused now."""
        return self.capped(path) and self.reached

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The 503 with Retry-After, as an ASGI app; the body, if any, is left unread."""
        self.shed += 1
        # a new message every time: middleware rewrites it (RequestId adds its header), and a shared one
        # grew by a header a refusal, until the 503s were kilobytes and each cost milliseconds
        await send({"type": "http.response.start", "status": 503, "headers": list(self._headers)})
        await send({"type": "http.response.body", "body": self._body})


class Admission:
    """503 + Retry-After for a capped request that arrives while ``limit.max_inflight`` are in progress."""

    def __init__(self, app: ASGIApp, limit: InflightLimit) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit
        if scope["type"] != "http" or not limit.capped(scope["path"]):
            await self.app(scope, receive, send)
            return
        if limit.reached:
            await limit.refuse(scope, receive, send)
            return
        limit.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            limit.inflight -= 1


class AdmissionHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, except that a capped request arriving at a full cap is refused by
    ``InflightLimit.refuse`` rather than run through the app (see the module's docstring).

    The hook is ``_start_asgi_task``, where uvicorn starts every request, pipelined ones included, once
    its head is parsed. (Writing the 503 here without a task saved only ~10 µs more a refusal, for a copy
    of uvicorn's end of a response cycle: not worth it.) tests/app/test_admission.py checks on a real
    server that the hook still takes effect.
    """

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        limit = self.app_state.get(STATE_KEY)
        if limit is not None and limit.full(cycle.scope["path"]):
            app = limit.refuse
        super()._start_asgi_task(cycle, app)
