"""DirectRoute: the route class of the prediction endpoints, which skips FastAPI's per-request solving.

On every request FastAPI walks a handler's declared parameters and dependencies: measured on this
2-core machine, each dependency costs 30-60 µs of the event loop's CPU, and the dependency machinery
runs even for a handler that takes only the ``Request``. On ``POST /v1/predict`` that was a fifth of
the event loop's work per request. The prediction handlers parse and validate their own bodies anyway
(``deps.parse_windows``), so they need nothing from that machinery: a DirectRoute calls its endpoint
with the ``Request`` alone, and the endpoint reads the parts that the lifespan wired (``deps.serving``).

It is still an ``APIRoute``: the same path operation, response model and request examples in the
OpenAPI document, the same exception handlers, the same middleware. What it gives up is declared
dependencies, so it refuses them when the app is built, its own or its router's: a dependency silently
skipped (an auth check, say) would be a hole, not a speed-up.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint is ``async def endpoint(request: Request) -> Response``, called as is."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        d = self.dependant
        declared = [*d.dependencies, *d.path_params, *d.query_params, *d.header_params, *d.cookie_params]
        if declared or d.body_params:
            raise TypeError(
                f"{self.path}: a DirectRoute endpoint takes the Request alone and no dependencies "
                f"(they would never run); declared: {[getattr(x, 'name', x) for x in declared]}"
            )

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint  # type: ignore[return-value]
