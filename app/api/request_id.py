"""Every request gets an id, echoed in ``X-Request-ID`` and put in its logs: asgi-correlation-id's
middleware, with this service's id format and its rules for a caller's id."""

from __future__ import annotations

import itertools
import re
import secrets

from asgi_correlation_id import CorrelationIdMiddleware
from starlette.types import ASGIApp

HEADER = "X-Request-ID"
# What a caller's id may be: it lands in log lines and in a response header, so no spaces, quotes or
# control characters, and not so long that it bloats every line.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}").fullmatch


def _acceptable(value: str) -> bool:
    return _ACCEPTED(value) is not None


class RequestId(CorrelationIdMiddleware):
    """The caller's ``X-Request-ID`` when it is acceptable, else a new id, on the response and in the logs
    (``app.logs.REQUEST_ID``, the library's context variable).

    A new id is this process's random prefix and a counter, not a UUID: unique across replicas and
    restarts all the same, and short in every log line. WebSocket connections get an id for their logs
    too (a handshake response carries no header that the middleware could add). The request's own
    headers are left as the caller sent them.
    """

    def __init__(self, app: ASGIApp) -> None:
        prefix, count = secrets.token_hex(4), itertools.count(1)
        super().__init__(
            app,
            header_name=HEADER,
            update_request_header=False,
            generator=lambda: f"{prefix}-{next(count):x}",
            validator=_acceptable,
        )
