"""HTTP request metrics: prometheus-fastapi-instrumentator's middleware, naming handlers by a route table.

The instrumentator (7.x) names a request's handler by walking ``app.routes`` and reading each route's
``path``; since FastAPI 0.137 ``app.routes`` holds included routers, which have none, and every request
would fail with an AttributeError (trallnag/prometheus-fastapi-instrumentator#370). Its 8.x fix needs
Starlette >= 1. So this subclass resolves the handler itself, through FastAPI's route contexts where it
has them, and remembers the answer per path for routes without path parameters (all of CPE's): after
the first request to a path, naming its handler is one dict lookup instead of a walk of every route.

Per request it still costs ~14 µs of CPU on the 2-core development machine (scripts/bench_middleware.py;
about 5 % of a cache hit's ~270 µs there): the library builds a Request, a Response and an Info per
request. The handler's exclusion and the histogram's labelled child are looked up once per handler and
then remembered, which took ~2 µs off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import fastapi.routing
from prometheus_client import CollectorRegistry, Histogram
from prometheus_fastapi_instrumentator.metrics import Info
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp


class HttpMetrics(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware with a handler lookup that works on every supported FastAPI."""

    def __init__(self, app: ASGIApp, /, **options: Any) -> None:
        super().__init__(app, **options)  # type: ignore[arg-type]  # any ASGI app, despite its hint
        self._static: dict[str, str] = {}  # request path -> its route's path, for routes without parameters
        self._excluded: dict[str, bool] = {}  # route path -> whether excluded_handlers names it

    def _get_handler(self, request: Request) -> tuple[str, bool]:
        scope = request.scope
        path: str = scope["path"]
        known = self._static.get(path)
        if known is not None:
            return known, True
        for route in _routes(scope["app"].routes):
            match, _ = route.matches(scope)
            template = getattr(route, "path", None)
            if match is Match.FULL and template is not None:
                if template == path:  # bounded by the number of routes, whatever paths clients send
                    self._static[path] = template
                return template, True
        return path, False  # untemplated: ignored (should_ignore_untemplated), so random paths add no series

    def _is_handler_excluded(self, handler: str, is_templated: bool) -> bool:
        if not is_templated:  # a raw path: not remembered, since clients choose them
            return super()._is_handler_excluded(handler, is_templated)
        excluded = self._excluded.get(handler)
        if excluded is None:
            excluded = self._excluded[handler] = super()._is_handler_excluded(handler, is_templated)
        return excluded


def request_latency(registry: CollectorRegistry, buckets: Sequence[float]) -> Callable[[Info], None]:
    """The instrumentator's ``latency`` metric (``http_request_duration_seconds{handler, method, status}``),
    with each labelled child looked up once rather than per request."""
    histogram = Histogram(
        "http_request_duration_seconds",
        "Seconds from receiving an HTTP request to the end of its response.",
        ["handler", "method", "status"],
        buckets=buckets,
        registry=registry,
    )
    children: dict[tuple[str, str, str], Any] = {}  # bounded: routes x methods x status classes

    def instrumentation(info: Info) -> None:
        key = (info.modified_handler, info.method, info.modified_status)
        child = children.get(key)
        if child is None:
            child = children[key] = histogram.labels(*key)
        child.observe(info.modified_duration)

    return instrumentation


def _routes(routes: list[Any]) -> Iterable[Any]:
    """Every route, included routers flattened (FastAPI >= 0.137 has a public iterator; earlier ones
    had them flat already)."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    return routes if flatten is None else flatten(routes)
