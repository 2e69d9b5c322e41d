"""Log output: plain text for a terminal, or one JSON object per line (``CPE_LOG_FORMAT=json``) for a log
pipeline, every record carrying the id of the request it was written for.

``uvicorn_config`` is the ``logging.config.dictConfig`` that ``app.serve`` hands uvicorn, which applies it
in every worker process; ``create_app`` leaves logging alone, so that tests and embedders keep theirs.
The request id is set per request by ``app.api.request_id.RequestId``, in a context variable that the
formatters read: records written while handling a request (uvicorn's access line included) carry it.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any, Literal

import orjson

# The id of the request being handled in this context; None outside a request (start-up, the batcher).
REQUEST_ID: ContextVar[str | None] = ContextVar("cpe_request_id", default=None)

LogFormat = Literal["text", "json"]

# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into the JSON.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ms), ``level``, ``logger``, ``message``, ``request_id``
    (when in a request), ``exc`` (a traceback, when there is one), and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class JsonAccessFormatter(JsonFormatter):
    """uvicorn's access line as fields (client, method, path, http_version, status) rather than text."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:  # uvicorn's (client, method, path, version, status)
            client, method, path, http_version, status = args
            record.__dict__.update(
                client=client, method=method, path=path, http_version=http_version, status=status
            )
        return super().format(record)


class TextFormatter(logging.Formatter):
    """``LEVEL logger [request id]: message``, the request id only within a request."""

    def __init__(self) -> None:
        super().__init__("%(levelname)-8s %(name)s%(rid)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = REQUEST_ID.get()
        record.rid = f" [{request_id}]" if request_id is not None else ""
        return super().format(record)


def _utc(created: float) -> str:
    seconds = int(created)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"
    )


def uvicorn_config(log_format: LogFormat, level: str) -> dict[str, Any]:
    """The dictConfig of uvicorn's loggers and of ``cpe``'s, all in ``log_format`` at ``level``."""
    if log_format == "json":
        formatters: dict[str, Any] = {
            "default": {"()": "app.logs.JsonFormatter"},
            "access": {"()": "app.logs.JsonAccessFormatter"},
        }
    else:
        formatters = {
            "default": {"()": "app.logs.TextFormatter"},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
            },
        }
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": {
            "default": {
                "formatter": "default",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
            },
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            "cpe": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }
