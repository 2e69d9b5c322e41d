"""Run the service under uvicorn: what ``cpe serve`` and ``make run`` call."""

from __future__ import annotations

import os

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

from app.hub import PUSH_EXTENSION
from app.logs import uvicorn_config
from app.settings import Settings

GOING_AWAY = 1001


class GoingAwayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's default WebSocket protocol, except that:

    - a server shutting down closes its sockets with 1001, going away (RFC 6455: "a server going down"),
      rather than 1012, service restart: clients should reconnect, to another replica, not wait for this
      one;
    - it offers the app a way to write an already encoded frame at once (``push``, in the scope's
      extensions under ``PUSH_EXTENSION``): the routing hub encodes each message once and writes it to
      every subscriber that is keeping up, instead of waking a task per subscriber to send it through
      ASGI (app/hub.py says what that saves).
    """

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if not self.close_sent:  # the upgrade goes on: the app has the scope from the next loop turn
            self.scope["extensions"][PUSH_EXTENSION] = self.push  # type: ignore[assignment]

    def push(self, frame: bytes) -> bool:
        """Write ``frame`` (a whole unmasked frame) now, if the connection is open, uncompressed and not
        held back by flow control; False, and nothing written, otherwise (send it through ASGI then)."""
        if (
            self.close_sent
            or self.disconnected
            or not self.handshake_complete
            or self.conn.state is not State.OPEN
            or self.conn.extensions  # permessage-deflate: each frame is compressed for its connection
            or not self.writable.is_set()  # the transport's buffer is full: the client is not reading
        ):
            return False
        self.transport.write(frame)
        return True

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
        http="httptools",
        log_level=settings.log_level,
        log_config=uvicorn_config(settings.log_format, settings.log_level),
        access_log=settings.access_log,
        ws=GoingAwayWebSocketProtocol,
        ws_max_size=settings.ws_max_frame_bytes,
        ws_per_message_deflate=settings.ws_compression,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        server_header=False,
    )
