"""HTTP request metrics: ``http_request_duration_seconds{handler, method, status}``, one pure ASGI middleware.

The same series as prometheus-fastapi-instrumentator's default ``latency`` metric (handlers named by their
route template, status codes grouped as ``2xx``, untemplated paths and the probes left out), which CPE
used until its per-request cost was measured: the library builds a Request, a Response, a Headers and an
Info for every request and gathers an empty list of coroutines, several times this middleware's CPU a
request (``scripts/bench_middleware.py``; the README has the figures). Its 7.x also needed a
subclass to name handlers on FastAPI >= 0.137 (trallnag/prometheus-fastapi-instrumentator#370), and its
8.x needs Starlette >= 1. This is the part of it that CPE used: one timer, one status, one labelled
child looked up once.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from typing import Any

import fastapi.routing
from prometheus_client import CollectorRegistry, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Few buckets: each one is a series per handler, method and status class, and an observe walks them.
HTTP_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5)
# Handlers left out: scrapes and probes would drown the traffic they measure.
UNINSTRUMENTED = ("/metrics", "/healthz", "/readyz")


class HttpMetrics:
    """Times every HTTP request to a route of the app, except the ``excluded`` route paths.

    One histogram and nothing else: its ``_count`` is the request counter, so a separate
    ``http_requests_total`` would only double the per-request work; size metrics would parse headers.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry,
        buckets: Iterable[float] = HTTP_BUCKETS,
        excluded: Collection[str] = UNINSTRUMENTED,
    ) -> None:
        self.app = app
        self.histogram = Histogram(
            "http_request_duration_seconds",
            "Seconds from receiving an HTTP request to the end of its response.",
            ["handler", "method", "status"],
            buckets=tuple(buckets),
            registry=registry,
        )
        self.excluded = frozenset(excluded)
        self._static: dict[str, str] = {}  # request path -> its route's path, for routes without parameters
        self._children: dict[tuple[str, str, str], Any] = {}  # bounded: routes x methods x status classes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handler = self.handler(scope)
        if handler is None or handler in self.excluded:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what an exception before the response's start becomes

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            key = (handler, scope["method"], f"{status // 100}xx")
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.histogram.labels(*key)
            child.observe(time.perf_counter() - start)

    def handler(self, scope: Scope) -> str | None:
        """The route template that serves the request, or None for a path no route serves (left out, so
        that a scan of random paths mints no series). After the first request to a path of a route without
        parameters (all of CPE's), one dict lookup."""
        path: str = scope["path"]
        known = self._static.get(path)
        if known is not None:
            return known
        for route in _routes(scope["app"].routes):
            match, _ = route.matches(scope)
            template = getattr(route, "path", None)
            if match is Match.FULL and template is not None:
                if template == path:  # bounded by the number of routes, whatever paths clients send
                    self._static[path] = template
                return template
        return None


def _routes(routes: list[Any]) -> Iterable[Any]:
    """Every route, included routers flattened (FastAPI >= 0.137 has a public iterator; earlier ones
    had them flat already)."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    return routes if flatten is None else flatten(routes)
