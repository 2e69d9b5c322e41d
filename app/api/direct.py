"""DirectRoute: the route class of the prediction endpoints, which skips FastAPI's per-request solving.

On every request FastAPI walks a handler's declared parameters and dependencies: measured on this
2-core machine, each dependency costs 30-60 µs of the event loop's CPU, and the dependency machinery
runs even for a handler that takes only the ``Request``. On ``POST /v1/predict`` that was a fifth of
the event loop's work per request. The prediction handlers parse and validate their own bodies anyway
(``deps.parse_windows``), so they need nothing from that machinery: a DirectRoute calls its endpoint
with the ``Request`` alone, and the endpoint reads the parts that the lifespan wired
(``Services.of(request.app)``).

It is still an ``APIRoute``: the same path operation, response model, request examples and security
requirements in the OpenAPI document, the same exception handlers, the same middleware. Dependencies
are kept only as guards: a dependency that takes the connection alone (an API key check, say) is called
with the request before the endpoint, and may refuse it by raising; its value is not used. Any other
dependency or parameter is refused when the app is built: skipped silently, it would be a hole.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import routing
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint is ``async def endpoint(request: Request) -> Response``, called as is,
    after its guards."""

    def get_route_handler(self) -> Endpoint:
        d = self.dependant
        # A router included with dependencies (the API key check): FastAPI >= 0.16x builds the handler
        # of each inclusion with the route's effective dependant in this context variable, as
        # APIRoute.get_route_handler reads it; older releases copy the route with them instead.
        context = getattr(routing, "_effective_route_context_var", None)
        effective = context.get() if context is not None else None
        if effective is not None and effective.original_route is self and effective.dependant is not None:
            d = effective.dependant
        declared = [*d.path_params, *d.query_params, *d.header_params, *d.cookie_params, *d.body_params]
        if declared:
            raise TypeError(
                f"{self.path}: a DirectRoute endpoint takes the Request alone; "
                f"declared: {[param.name for param in declared]}"
            )
        guards = [_guard(self.path, dependency) for dependency in d.dependencies]
        endpoint: Endpoint = self.endpoint
        if not guards:
            return endpoint

        async def guarded(request: Request) -> Response:
            for guard in guards:
                await guard(request)
            return await endpoint(request)

        return guarded


def _guard(path: str, dependency: Dependant) -> Callable[[Request], Awaitable[Any]]:
    """The dependency's callable, when it is an async check of the connection alone; else TypeError."""
    call = dependency.call
    connection = dependency.http_connection_param_name or dependency.request_param_name
    own = [
        *dependency.path_params,
        *dependency.query_params,
        *dependency.header_params,
        *dependency.cookie_params,
        *dependency.body_params,
        *dependency.dependencies,
    ]
    # a coroutine function, or an instance (RequireScope) whose __call__ is one
    is_async = inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)
    if call is None or connection is None or own or not is_async:
        raise TypeError(
            f"{path}: a DirectRoute takes no dependencies but guards, async checks of the connection alone "
            f"(they would never run); got {getattr(call, '__name__', call)!r}"
        )
    return call  # type: ignore[return-value]
