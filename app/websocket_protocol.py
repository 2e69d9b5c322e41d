"""uvicorn's WebSocket protocol, changed where no server setting or ASGI message reaches: pinned.

Two things that `cpe serve` needs have no supported mechanism, in uvicorn's settings or in ASGI:

- a server shutting down closes its sockets with 1001, going away (RFC 6455: "a server going down"),
  rather than uvicorn's 1012, service restart: clients should reconnect, to another replica, not wait
  for this one. uvicorn closes the sockets itself before the app hears of the shutdown, with a fixed code;
- the routing hub writes an already encoded frame at once to every subscriber that is keeping up
  (``push``, offered in the scope's extensions under ``PUSH_EXTENSION``), instead of waking a task per
  subscriber to send it through ASGI, Starlette and the encoder (app/hub.py; the README has the figures).

Both reach into the protocol class, which is no public API of uvicorn, so this module is written for the
exact versions in ``PINNED`` and ``check_versions`` (called by ``app.serve.serve`` before the server
starts) refuses to start on any other: an upgrade has to come here first, and rerun
tests/app/test_serve.py, which checks both on a real uvicorn server, and the SIGTERM drill
(tests/app/test_faults.py) with the whole service.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

from app.fanout import PUSH_EXTENSION

GOING_AWAY = 1001
PINNED = {"uvicorn": "0.55.0", "websockets": "17.4"}  # the versions this protocol was written for


def check_versions(installed: Callable[[str], str] = version) -> None:
    """RuntimeError, naming each package, unless the installed versions are the ``PINNED`` ones."""
    wrong = {name: installed(name) for name in PINNED if installed(name) != PINNED[name]}
    if wrong:
        found = ", ".join(f"{name} {got} (written for {PINNED[name]})" for name, got in wrong.items())
        raise RuntimeError(
            f"app/websocket_protocol.py extends uvicorn's WebSocket protocol, which is no public API: "
            f"installed {found}. Check it against the new versions, rerun tests/app/test_serve.py and "
            f"tests/app/test_faults.py, then update PINNED."
        )


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's default (sans-I/O) WebSocket protocol, closing with 1001 on shutdown and offering
    ``push`` to the app (see the module's docstring)."""

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
