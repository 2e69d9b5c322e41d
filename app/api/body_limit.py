"""A pure ASGI middleware that refuses request bodies over a size limit with a 413."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.responses import OrjsonResponse


class BodySizeLimit:
    """413 for a body over ``max_bytes``: at once when Content-Length says so, else as it streams in.

    A chunked body has no Content-Length, so the bytes are also counted as the app reads them; past the
    limit, reading raises an ``HTTPException(413)``, which FastAPI's body parsing lets through and the
    exception middleware answers.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_bytes:
                    response = OrjsonResponse(
                        {"detail": self._detail()}, status_code=413, headers={"connection": "close"}
                    )
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._detail(), headers={"connection": "close"})
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"
