"""How errors become responses: FastAPI-style 422s, and 503 + Retry-After when the engine sheds load."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

from app.api.responses import OrjsonResponse
from app.engine import EngineStopped, Overloaded
from app.schemas import Message, ValidationErrors

_INT64 = 2**63
_MAX_ECHO = 32  # longest list echoed back as an error's "input"; a 4 MiB window is not
_OMIT = object()


def _plain(value: Any) -> Any:
    """An error's input or context value as sent back: small plain values as they are, else ``_OMIT``.

    Non-finite numbers become their names ("nan", "inf"), which JSON cannot carry as numbers.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    if isinstance(value, str):
        return value if len(value) <= 256 else _OMIT
    if isinstance(value, list) and len(value) <= _MAX_ECHO:
        items = [_plain(v) if not isinstance(v, list) else _OMIT for v in value]
        return _OMIT if _OMIT in items else items
    return _OMIT


def _jsonable(error: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": error["type"], "loc": list(error["loc"]), "msg": error["msg"]}
    value = _plain(error.get("input", _OMIT))
    if value is not _OMIT:
        out["input"] = value
    if "ctx" in error:
        out["ctx"] = {}
        for key, raw in error["ctx"].items():
            value = _plain(raw)
            out["ctx"][key] = str(raw) if value is _OMIT else value
    return out


def error_detail(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors as a 422's ``detail`` lists them (the prediction stream's errors too)."""
    return [_jsonable(e) for e in errors]


async def validation_error(request: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, RequestValidationError)
    return OrjsonResponse({"detail": error_detail(exc.errors())}, status_code=422)


async def unavailable(request: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, Overloaded | EngineStopped)
    return OrjsonResponse(
        {"detail": str(exc)}, status_code=503, headers={"retry-after": str(exc.retry_after_s)}
    )


def install(app: FastAPI) -> None:
    """Register the handlers on the app."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Overloaded, unavailable)
    app.add_exception_handler(EngineStopped, unavailable)


# for the OpenAPI `responses=` of the handlers that can answer these
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrors, "description": "Invalid request; `detail` names every bad field."},
    413: {"model": Message, "description": "Request body larger than CPE_MAX_BODY_BYTES."},
    503: {
        "model": Message,
        "description": "Overloaded or shutting down; retry after the `Retry-After` header's seconds.",
    },
}

# for the OpenAPI `responses=` of the routes behind an API key (app/auth.py)
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "No API key, or an unknown one (CPE_API_KEYS)."},
    403: {"model": Message, "description": "The API key lacks the scope this route needs."},
}
