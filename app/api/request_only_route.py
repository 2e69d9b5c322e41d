"""RequestOnlyRoute: an APIRoute whose endpoint takes the ``Request`` alone and is called as is, after its
guards, without FastAPI's per-request solving of parameters and dependencies.

On every request FastAPI walks a handler's declared parameters and dependencies, and the machinery runs
even for a handler that takes only the ``Request``: on the cheapest ``POST /v1/predict`` it is a large
share of the event loop's work (the README's Benchmarks section has the figures). The prediction
handlers parse and validate their own bodies anyway (``deps.parse_windows``), so they need nothing
from it.

This is FastAPI's documented way to change how a route handles its requests: a subclass of ``APIRoute``
that overrides ``get_route_handler``. It is still an ``APIRoute``: the same path operation, response
model, request examples and security requirements in the OpenAPI document, the same exception handlers,
the same middleware.

Guards: a dependency of the route or of its ``APIRouter`` that is an async check of the connection alone
(an API key check, say) is called with the request before the endpoint, and may refuse it by raising;
its value is not used. Any other dependency or parameter is refused when the route is built: skipped
silently, it would be a hole. Give guards to the ``APIRouter`` that declares the routes, not to
``include_router``: FastAPI keeps an inclusion's dependencies out of the route's own ``dependant``, where
this class reads them (tests/app/api/test_request_only_route.py checks that the prediction endpoints keep
their key check).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class RequestOnlyRoute(APIRoute):
    """An APIRoute whose endpoint is ``async def endpoint(request: Request) -> Response``, called as is,
    after its guards."""

    def get_route_handler(self) -> Endpoint:
        d = self.dependant
        declared = [*d.path_params, *d.query_params, *d.header_params, *d.cookie_params, *d.body_params]
        if declared:
            raise TypeError(
                f"{self.path}: a RequestOnlyRoute endpoint takes the Request alone; "
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
            f"{path}: a RequestOnlyRoute takes no dependencies but guards, async checks of the connection "
            f"alone (they would never run); got {getattr(call, '__name__', call)!r}"
        )
    return call  # type: ignore[return-value]
