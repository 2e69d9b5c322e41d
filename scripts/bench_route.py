"""What FastAPI's per-request solving costs POST /v1/predict: RequestOnlyRoute against a plain APIRoute.

    python -m scripts.bench_route [--blocks 40]

Builds the real app (lifespan, models, cache) twice per key setting, once with the prediction router's
routes as ``RequestOnlyRoute`` (as served) and once as plain ``APIRoute``, with and without API keys,
and calls them in-process as ASGI apps, no sockets. Every request posts the same /v1/predict body, so
after the first every answer comes from the cache: the cheapest path, where the routing weighs most.
The variants take turns block by block (250 requests a block); the figure is this thread's CPU per
request, median and lowest over the blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from app.api import predict
from app.api.request_only_route import RequestOnlyRoute
from app.main import create_app
from scripts.asgi_scope import post_scope
from tests.app.payloads import make_settings, predict_body

KEY = "bench-key-0123456789abcdef"
BODY = json.dumps(predict_body(16)).encode()


def build(route_class: type[APIRoute], keys: bool) -> FastAPI:
    """The app, its prediction routes re-declared with ``route_class``."""
    router = APIRouter(
        prefix=predict.router.prefix,
        tags=predict.router.tags,
        route_class=route_class,
        dependencies=predict.router.dependencies,
        responses=predict.router.responses,
    )
    for route in predict.router.routes:
        assert isinstance(route, APIRoute)
        router.add_api_route(
            route.path.removeprefix(predict.router.prefix),
            route.endpoint,
            methods=list(route.methods),
            response_model=route.response_model,
            openapi_extra=route.openapi_extra,
        )
    served, predict.router = predict.router, router
    try:
        return create_app(make_settings(api_keys=f"{KEY}:read" if keys else ""))
    finally:
        predict.router = served


def scope(keys: bool) -> dict[str, Any]:
    return post_scope("/v1/predict", len(BODY), [(b"x-api-key", KEY.encode())] if keys else [])


async def measure(blocks: int) -> dict[str, list[float]]:
    variants = {
        f"{cls.__name__}, keys {'set' if keys else 'open'}": (build(cls, keys), keys)
        for cls in (RequestOnlyRoute, APIRoute)
        for keys in (False, True)
    }
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    results: dict[str, list[float]] = {name: [] for name in variants}
    async with contextlib.AsyncExitStack() as stack:
        for app, keys in variants.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
            for _ in range(200):  # warm up: the cache, the first forward pass, lazy imports
                await app(scope(keys), receive, send)
        for _ in range(blocks):
            for name, (app, keys) in variants.items():
                before = time.thread_time()
                for _ in range(250):
                    await app(scope(keys), receive, send)
                results[name].append((time.thread_time() - before) / 250 * 1e6)
    assert statuses == {200}, statuses
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=40, help="blocks of 250 requests per variant")
    args = parser.parse_args()
    for name, figures in asyncio.run(measure(args.blocks)).items():
        median, low = statistics.median(figures), min(figures)
        print(
            json.dumps(
                {"route": name, "cpu_us_per_request": {"median": round(median, 1), "min": round(low, 1)}}
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
