"""Servers that do no work, to calibrate the benchmark's load generator and show the framework's floor.

``--kind raw``: a bare asyncio (uvloop) HTTP/1.1 keep-alive server that reads each request and answers a
fixed 200, about as cheap as a Python server gets; what a load generator reaches against it is its own
ceiling. ``--kind fastapi``: uvicorn + FastAPI with an ``async def`` endpoint that reads the body and
answers a constant; the floor under any FastAPI service on this machine.

    python -m scripts.trivial_server --kind raw --port 8002
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import httptools
from fastapi import FastAPI, Request
from fastapi.responses import Response

RESPONSE = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{"status":"ok"}'


class _RawHttp(asyncio.Protocol):
    """Answers every complete request with RESPONSE, in order, on a keep-alive connection."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.transport.write(RESPONSE)


async def serve_raw(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_RawHttp, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def fastapi_app() -> FastAPI:
    try:  # the same choice as the service: no per-request OpenTelemetry lookups (newer FastAPI only)
        app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})  # type: ignore[call-arg]
    except TypeError:
        app = FastAPI()

    @app.post("/{path:path}")
    async def sink(request: Request) -> Response:
        await request.body()
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=("raw", "fastapi"), default="raw")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)
    if args.kind == "fastapi":
        import uvicorn

        uvicorn.run(fastapi_app(), host=args.host, port=args.port, log_level="warning")
        return 0
    try:
        import uvloop

        uvloop.run(serve_raw(args.host, args.port))
    except ImportError:
        asyncio.run(serve_raw(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
