"""Run the service under uvicorn: what ``cpe serve`` and ``make run`` call."""

from __future__ import annotations

import os

import uvicorn

from app.logs import uvicorn_config
from app.settings import Settings
from app.websocket_protocol import WebSocketProtocol, check_versions


def serve(
    settings: Settings | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> None:
    """Serve until interrupted; ``host``, ``port`` and ``workers`` override the settings when given.

    The app is built by the factory ``app.main:create_app`` in every worker process, so the settings
    travel as ``CPE_*`` environment variables, which the workers inherit.
    """
    check_versions()  # before anything starts: the WebSocket protocol is written for pinned versions
    overrides = {k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None}
    settings = Settings.model_validate({**(settings or Settings()).model_dump(), **overrides})
    os.environ.update(settings.to_env())
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        log_config=uvicorn_config(settings.log_format, settings.log_level),
        access_log=settings.access_log,
        ws=WebSocketProtocol,  # closes with 1001 on shutdown, and offers the hub its push
        ws_max_size=settings.ws_max_frame_bytes,
        ws_per_message_deflate=settings.ws_compression,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        server_header=False,
    )
