"""Run the service under uvicorn: what ``cpe serve`` and ``make run`` call."""

from __future__ import annotations

import os

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.api.admission import AdmissionHttpProtocol
from app.logs import uvicorn_config
from app.settings import Settings

GOING_AWAY = 1001


class GoingAwayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's default WebSocket protocol, except that a server shutting down closes its sockets with
    1001, going away (RFC 6455: "a server going down"), rather than 1012, service restart: clients should
    reconnect, to another replica, not wait for this one."""

    def shutdown(self) -> None:
        if not self.handshake_complete or self.close_sent:
            super().shutdown()
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": GOING_AWAY})
        self.conn.send_close(GOING_AWAY, "the server is shutting down")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()


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
        http=AdmissionHttpProtocol,  # httptools, refusing at once past the in-flight cap
        log_level=settings.log_level,
        log_config=uvicorn_config(settings.log_format, settings.log_level),
        access_log=settings.access_log,
        ws=GoingAwayWebSocketProtocol,
        ws_max_size=settings.ws_max_frame_bytes,
        ws_per_message_deflate=settings.ws_compression,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        server_header=False,
    )
