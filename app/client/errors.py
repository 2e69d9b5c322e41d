"""The one exception of the Python client: an answer that is not a success, with its status and detail."""

from __future__ import annotations

from typing import Any

import httpx


class CPEError(Exception):
    """CPE refused or failed a request (an HTTP status of 400 or more), or a stream frame (an error frame).

    ``status``: the HTTP status (a stream's error frame carries the status the HTTP endpoint would answer;
    400 when it names none). ``detail``: the server's ``detail``, a message or, for a 422, the list of
    field errors (``{"type", "loc", "msg", ...}``, the field's path in ``loc``). ``retry_after_s``: for
    429 and 503, when to try again. ``where``: the request (``"POST /v1/predict"``) or the stream.
    Transport failures (no connection, a timeout) are httpx's and websockets' own exceptions.
    """

    def __init__(
        self, status: int, detail: Any, *, retry_after_s: float | None = None, where: str = ""
    ) -> None:
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.where = where
        super().__init__(f"{where + ': ' if where else ''}{status}: {describe(detail)}")

    @classmethod
    def of_response(cls, response: httpx.Response) -> CPEError:
        """The error of an HTTP answer of status 400 or more."""
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("detail", body) if isinstance(body, dict) else response.text
        retry = response.headers.get("retry-after")
        if retry is None and isinstance(body, dict):
            retry = body.get("retry_after_s")
        return cls(
            response.status_code,
            detail,
            retry_after_s=None if retry is None else float(retry),
            where=f"{response.request.method} {response.request.url.path}",
        )

    @classmethod
    def of_frame(cls, frame: dict[str, Any], where: str) -> CPEError:
        """The error of a stream's error frame (``{"op": "error", ...}`` or a prediction's ``error``)."""
        return cls(
            int(frame.get("status") or 400),
            frame.get("detail"),
            retry_after_s=frame.get("retry_after_s"),
            where=where,
        )


def describe(detail: Any) -> str:
    """A 422's field errors as ``path: message; ...``; any other detail as it is."""
    if isinstance(detail, list) and all(isinstance(e, dict) and "msg" in e for e in detail):
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e['msg']}" for e in detail)
    return str(detail)
