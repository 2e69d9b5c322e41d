"""What the API key check costs a request: the same route with and without it, keys set and not.

Drives a bare FastAPI app through its ASGI interface in one process (no sockets, no server) and times
the CPU it takes, so that the difference between the routes is the dependency alone: FastAPI solving it,
plus the check. The cases run interleaved and the best of the repeats counts, against a busy machine.

    python -m scripts.bench_auth [--requests 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from starlette.requests import HTTPConnection

from app.auth import ApiKeys, require_scope

KEY = "bench-key-0123456789abcdef"


async def get_keys(conn: HTTPConnection) -> ApiKeys:
    return conn.app.state.api_keys  # type: ignore[no-any-return]


def build(keys: str) -> FastAPI:
    """Both routes take one dependency, as POST /v1/predict takes several: FastAPI's fixed cost of
    solving dependencies is then in both, and the difference is what one more costs."""
    app = FastAPI()
    app.state.api_keys = ApiKeys.parse(keys)

    @app.post("/open")
    async def open_route(keys: Annotated[ApiKeys, Depends(get_keys)]) -> Response:
        return Response(b"{}")

    @app.post("/guarded", dependencies=[Depends(require_scope("read"))])
    async def guarded_route(keys: Annotated[ApiKeys, Depends(get_keys)]) -> Response:
        return Response(b"{}")

    return app


async def per_request_us(app: FastAPI, path: str, headers: list[tuple[bytes, bytes]], n: int) -> float:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "app": app,
    }
    status = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    start = time.process_time()
    for _ in range(n):
        await app(dict(scope), receive, send)
    elapsed = time.process_time() - start
    assert set(status) == {200}, set(status)
    return elapsed / n * 1e6


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    headers = [(b"content-type", b"application/json"), (b"x-api-key", KEY.encode())]
    keys = ";".join(f"other-key-{i:016d}:read" for i in range(9)) + f";{KEY}:read"  # 10 keys
    cases = {
        "route without the check": (build(""), "/open"),
        "check, no keys configured": (build(""), "/guarded"),
        "check, 10 keys configured": (build(keys), "/guarded"),
    }
    for app, path in cases.values():
        await per_request_us(app, path, headers, 1000)  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeat):  # interleaved, so that a busy moment of the machine hits every case
        for name, (app, path) in cases.items():
            runs[name].append(await per_request_us(app, path, headers, args.requests))
    best = {name: min(times) for name, times in runs.items()}
    base = best["route without the check"]
    for name, us in best.items():
        print(f"{name:28s} {us:7.2f} µs/request  (+{us - base:5.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
