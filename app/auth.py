"""API keys and their scopes: who may call what, set by ``CPE_API_KEYS``.

``CPE_API_KEYS`` lists ``key:scope`` entries separated by ``;``, e.g. ``k1...:read;k2...:admin``. The
scopes are ranked, each granting the ones before it: ``read`` (predictions, routing, subscriptions, the
model list) < ``write`` (feedback) < ``admin`` (model changes). A key may list several scopes separated
by commas; it gets the highest. Keys are at least 16 characters, none of them whitespace or ``:;,``.

A client sends its key in the ``X-API-Key`` header or as ``Authorization: Bearer <key>``; a WebSocket
client, which a browser cannot give headers, may send it as the ``api_key`` query parameter instead. No
key, or an unknown one: 401 (WebSocket: close 1008). A known key without the scope: 403 (close 1008).
Without any key configured the service is open to all, and says so in a warning at start-up.

Only SHA-256 digests of the keys are kept. A presented key is hashed and compared with every known
digest by ``hmac.compare_digest``, all of them every time, so that neither the comparison nor which key
matched shows in the response time. Keys never appear in logs: ``mask_query_keys`` is a logging filter
that hides the query parameter in the server's log lines (uvicorn logs WebSocket paths with their query).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from typing import Literal

from fastapi.openapi.models import APIKey, APIKeyIn
from fastapi.security.base import SecurityBase
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.status import WS_1008_POLICY_VIOLATION
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")  # ranked: each grants those before it
HEADER = "X-API-Key"
QUERY_PARAMETER = "api_key"
MIN_KEY_LENGTH = 16
_KEY = re.compile(r"[^\s:;,]+")
_HEADER, _AUTHORIZATION = HEADER.lower().encode(), b"authorization"
_QUERY_KEY = re.compile(rf"({QUERY_PARAMETER}=)[^&\s\"']*", re.IGNORECASE)


def parse_api_keys(text: str) -> dict[str, Scope]:
    """The keys of a ``CPE_API_KEYS`` value with each one's highest scope; ``ValueError`` when malformed.

    Errors name the entry by its position, never by the key.
    """
    keys: dict[str, Scope] = {}
    entries = [entry.strip() for entry in text.split(";")]
    for number, entry in enumerate(entries, start=1):
        if not entry:
            continue
        key, sep, scopes = entry.rpartition(":")
        if not sep:
            raise ValueError(f"api_keys entry {number}: expected key:scope, with a scope among {SCOPES}")
        key = key.strip()
        if not _KEY.fullmatch(key) or len(key) < MIN_KEY_LENGTH:
            raise ValueError(
                f"api_keys entry {number}: a key needs at least {MIN_KEY_LENGTH} characters, none of them "
                "whitespace or ':;,'"
            )
        named = [scope.strip() for scope in scopes.split(",")]
        unknown = [scope for scope in named if scope not in SCOPES]
        if unknown or not named:
            raise ValueError(f"api_keys entry {number}: unknown scope(s) {unknown}; scopes are {SCOPES}")
        if key in keys:
            raise ValueError(f"api_keys entry {number}: the same key is listed twice")
        keys[key] = max(named, key=SCOPES.index)  # type: ignore[arg-type]
    return keys


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys, as digests with each one's rank; no keys at all: open access."""

    digests: tuple[tuple[bytes, int], ...] = ()

    @classmethod
    def parse(cls, text: str) -> ApiKeys:
        return cls(tuple((_digest(key), SCOPES.index(scope)) for key, scope in parse_api_keys(text).items()))

    @property
    def open(self) -> bool:
        return not self.digests

    def rank_of(self, key: str | bytes) -> int | None:
        """The rank of ``key``'s scope (an index into SCOPES), None for an unknown key; constant time."""
        digest = _digest(key)
        rank = None
        for known, known_rank in self.digests:  # every one, even after a match
            if hmac.compare_digest(digest, known):
                rank = known_rank
        return rank

    def check(self, conn: HTTPConnection, scope: Scope) -> tuple[int, str] | None:
        """None when ``conn`` may use ``scope``; else the status (401 or 403) and why."""
        if not self.digests:
            return None
        key = _presented_key(conn)
        if key is None:
            return 401, f"an API key is required: send it in the {HEADER} header"
        rank = self.rank_of(key)
        if rank is None:
            return 401, "unknown API key"
        if rank < SCOPES.index(scope):
            return 403, f"this API key lacks the {scope!r} scope"
        return None


def _presented_key(conn: HTTPConnection) -> bytes | None:
    """The key in the X-API-Key header, else the Authorization: Bearer one, else (WebSockets only) the
    ``api_key`` query parameter."""
    bearer = None
    for name, value in conn.scope["headers"]:  # the raw list: no Headers object built per request
        if name == _HEADER:
            return value  # type: ignore[no-any-return]
        if name == _AUTHORIZATION:
            kind, _, credentials = value.partition(b" ")
            if kind.lower() == b"bearer" and credentials.strip():
                bearer = credentials.strip()
    if bearer is not None:
        return bearer
    if conn.scope["type"] == "websocket":
        key = conn.query_params.get(QUERY_PARAMETER)
        return key.encode() if key else None
    return None


def _keys_of(app: ASGIApp) -> ApiKeys:
    """The keys of the running app: its ``Services`` hold them."""
    from app.services import Services  # imported here: app.services imports this module for ApiKeys

    return Services.of(app).api_keys


class RequireScope(SecurityBase):
    """The dependency that lets a request through only with a key of ``scope``: 401 or 403 otherwise.

    A ``SecurityBase`` so that FastAPI lists the API key scheme in the OpenAPI document. Without keys
    configured it returns at once. HTTP only: WebSocket handlers call ``accept_websocket``.
    """

    def __init__(self, scope: Scope) -> None:
        self.scope: Scope = scope
        self.model = APIKey(
            **{"in": APIKeyIn.header},  # type: ignore[arg-type]
            name=HEADER,
            description="An API key of CPE_API_KEYS, in this header or as `Authorization: Bearer <key>`. "
            "Scopes: read < write < admin, each granting the ones before it.",
        )
        self.scheme_name = "ApiKey"

    async def __call__(self, conn: HTTPConnection) -> None:
        keys = _keys_of(conn.app)
        if not keys.digests:
            return
        refusal = keys.check(conn, self.scope)
        if refusal is not None:
            status, detail = refusal
            headers = {"www-authenticate": f'ApiKey header="{HEADER}", Bearer'} if status == 401 else None
            raise HTTPException(status, detail, headers=headers)


def require_scope(scope: Scope) -> RequireScope:
    """A route's or router's dependency: ``dependencies=[Depends(require_scope("write"))]``."""
    return RequireScope(scope)


async def accept_websocket(websocket: WebSocket, scope: Scope) -> bool:
    """Accept the socket; if its key may not use ``scope``, close it at once with 1008 and answer False.

    Accepted before it is closed, so that a browser client sees the close code and its reason: a
    handshake refused with an HTTP status shows a browser nothing but code 1006.
    """
    await websocket.accept()
    refusal = _keys_of(websocket.app).check(websocket, scope)
    if refusal is None:
        return True
    await websocket.close(WS_1008_POLICY_VIOLATION, refusal[1])
    return False


class MaskQueryKeys(logging.Filter):
    """Replaces the value of the ``api_key`` query parameter with ``***`` in a log record's arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(arg, str) for arg in record.args):
            record.args = tuple(_mask(arg) if isinstance(arg, str) else arg for arg in record.args)
        if isinstance(record.msg, str) and QUERY_PARAMETER in record.msg:
            record.msg = _mask(record.msg)
        return True


def _mask(text: str) -> str:
    return _QUERY_KEY.sub(r"\1***", text) if QUERY_PARAMETER in text.lower() else text


def mask_query_keys(loggers: tuple[str, ...] = ("uvicorn.access", "uvicorn.error")) -> None:
    """Install ``MaskQueryKeys`` on the server's loggers, once."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskQueryKeys) for f in logger.filters):
            logger.addFilter(MaskQueryKeys())
