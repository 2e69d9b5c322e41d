"""CPU per request that the HTTP middleware costs: request ids, HTTP metrics, both, or neither.

    python -m scripts.bench_middleware [--mode alone|asgi|server] [--requests N] [--rounds 3]

Every request posts the same /v1/predict body, so that after the first every answer comes from the
cache: the cheapest path, where middleware weighs most. Variants take turns for ``--rounds`` rounds; the
median round is printed. A variant whose request id comes from Starlette's ``BaseHTTPMiddleware`` shows
what the pure ASGI middleware saves.

- ``alone`` (default): each middleware by itself around an ASGI app that answers at once, with the real
  app's routes to name handlers by; the figure is this thread's CPU per request, the lowest of 60
  blocks of 500. What the middleware itself costs, to a fraction of a µs.
- ``asgi``: the real app (lifespan, models, cache) called in-process as an ASGI app, no
  sockets; the figure is this process's CPU time per request. Precise to ~1 µs, because nothing but the
  app runs.
- ``server``: the real service under uvicorn (uvloop, httptools, one worker), posted to sequentially over
  one keep-alive connection; the figure is the server process's CPU time (user + system, from
  /proc/<pid>/stat) per request. The end-to-end check, but each request also pays its socket writes and
  reads, which on a busy or sandboxed machine cost hundreds of µs and vary by tens between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from scripts.asgi_scope import post_scope

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = ("none", "request_id", "http_metrics", "both", "request_id_basehttp")
TICKS = os.sysconf("SC_CLK_TCK")


def build(variant: str):  # type: ignore[no-untyped-def]
    """The app with only ``variant``'s middleware among the two this measures (BodySizeLimit stays)."""
    from starlette.middleware.base import BaseHTTPMiddleware

    from app.api.http_metrics import HttpMetrics
    from app.api.request_id import RequestId
    from app.main import create_app

    app = create_app()
    keep = {
        "none": (),
        "request_id": (RequestId,),
        "http_metrics": (HttpMetrics,),
        "both": (RequestId, HttpMetrics),
        "request_id_basehttp": (),
    }[variant]
    app.user_middleware = [
        m for m in app.user_middleware if m.cls not in (RequestId, HttpMetrics) or m.cls in keep
    ]
    if variant == "request_id_basehttp":

        async def request_id(request, call_next):  # type: ignore[no-untyped-def]
            response = await call_next(request)
            response.headers["x-request-id"] = request.headers.get("x-request-id", "generated")
            return response

        app.add_middleware(BaseHTTPMiddleware, dispatch=request_id)
    return app


async def measure_asgi(requests: int, rounds: int, body: bytes) -> dict[str, list[float]]:
    """CPU µs per request of every variant, per block of requests: the apps are called directly, each
    variant's app started (lifespan) once, the variants taking turns block by block so that whatever
    else the machine does weighs on all of them alike."""
    apps = {variant: build(variant) for variant in VARIANTS}
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    blocks: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    block = 250
    async with contextlib.AsyncExitStack() as stack:
        for app in apps.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
            for _ in range(200):  # warm up: the cache, the first forward pass, lazy imports
                await app(post_scope("/v1/predict", len(body)), receive, send)
        for _ in range(max(1, requests * rounds // block)):
            for variant, app in apps.items():
                before = time.thread_time()  # this thread's CPU: the inference thread is idle on hits
                for _ in range(block):
                    await app(post_scope("/v1/predict", len(body)), receive, send)
                blocks[variant].append((time.thread_time() - before) / block * 1e6)
    assert statuses == {200}, statuses
    return blocks


async def measure_alone() -> dict[str, list[float]]:
    """CPU µs per request of each middleware alone, around an app that answers at once."""
    from app.api.http_metrics import HTTP_BUCKETS, UNINSTRUMENTED, HttpMetrics
    from app.api.request_id import RequestId
    from app.main import create_app
    from app.metrics import new_registry

    async def answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    registry = new_registry()
    http_metrics = HttpMetrics(answer, registry=registry, buckets=HTTP_BUCKETS, excluded=UNINSTRUMENTED)
    apps = {"none": answer, "request_id": RequestId(answer), "http_metrics": http_metrics}
    scope = post_scope("/v1/predict", 2) | {"app": create_app()}  # the routes that name the handler

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    blocks: dict[str, list[float]] = {variant: [] for variant in apps}
    for _ in range(60):
        for variant, app in apps.items():
            before = time.thread_time()
            for _ in range(500):
                await app(dict(scope), receive, send)
            blocks[variant].append((time.thread_time() - before) / 500 * 1e6)
    return blocks


def serve(variant: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        build(variant), host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning"
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def measure_server(variant: str, port: int, requests: int, body: bytes) -> float:
    """Server CPU µs per request of ``variant``."""
    from tools.process import ServerProcess

    env = os.environ | {"CPE_DEVICE": "cpu", "CPE_MODELS": "lstm", "CPE_MODEL": "lstm"}
    server = ServerProcess(
        [sys.executable, "-m", "scripts.bench_middleware", "--serve", variant, "--port", str(port)],
        port,
        env=env,
    )
    try:
        server.start().wait_ready(timeout_s=120)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"content-type": "application/json"}
        for _ in range(200):  # warm up: caches, the first forward pass, lazy imports
            _post(conn, body, headers)
        before = cpu_seconds(server.pid)
        for _ in range(requests):
            _post(conn, body, headers)
        return (cpu_seconds(server.pid) - before) / requests * 1e6
    finally:
        server.stop(timeout_s=30)
        server.log.close()


def _post(conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> None:
    conn.request("POST", "/v1/predict", body, headers)
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("alone", "asgi", "server"), default="alone")
    parser.add_argument(
        "--requests", type=int, help="per variant and round (default 20000 asgi, 4000 server)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    from tests.app.payloads import predict_body

    body = json.dumps(predict_body(32)).encode()
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    requests = args.requests or (20_000 if args.mode == "asgi" else 4000)
    os.environ.update(
        {"CPE_DEVICE": "cpu", "CPE_MODELS": "lstm", "CPE_MODEL": "lstm", "CPE_LOG_LEVEL": "warning"}
    )
    if args.mode == "alone":
        results = asyncio.run(measure_alone())
        where = "each middleware alone, blocks of 500 requests"
    elif args.mode == "asgi":
        results = asyncio.run(measure_asgi(requests, args.rounds, body))
        where = "in-process ASGI calls, blocks of 250 requests"
    else:
        for _ in range(args.rounds):
            for variant in VARIANTS:
                results[variant].append(measure_server(variant, args.port, requests, body))
        where = f"the server process over loopback, rounds of {requests} requests"
    print(f"CPU per cached POST /v1/predict ({where}); the lowest and the median block or round:")
    low = {variant: min(values) for variant, values in results.items()}
    mid = {variant: statistics.median(values) for variant, values in results.items()}
    for variant in results:
        print(
            f"  {variant:20s} lowest {low[variant]:7.1f} µs ({low[variant] - low['none']:+6.1f} vs none)"
            f"   median {mid[variant]:7.1f} µs ({mid[variant] - mid['none']:+6.1f} vs none)"
            f"   over {len(results[variant])}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
