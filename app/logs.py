"""Log output: plain text for a terminal, or one JSON object per line (``CPE_LOG_FORMAT=json``) for a log
pipeline, every record carrying the id of the request it was written for.

``uvicorn_config`` is the ``logging.config.dictConfig`` that ``app.serve`` hands uvicorn, which applies it
in every worker process; ``create_app`` leaves logging alone, so that tests and embedders keep theirs.
The request id is set per request by ``app.api.request_id.RequestId`` (asgi-correlation-id), in its
context variable, which the formatters read: records written while handling a request (uvicorn's access
line included) carry it. The JSON lines are python-json-logger's, with this service's field names.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any, Literal

from asgi_correlation_id.context import correlation_id
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

# The id of the request being handled in this context; None outside a request (start-up, the batcher).
REQUEST_ID: ContextVar[str | None] = correlation_id

LogFormat = Literal["text", "json"]


class JsonFormatter(OrjsonFormatter):
    """One JSON object per record: ``ts`` (UTC, ms), ``level``, ``logger``, ``message``, ``request_id``
    (when in a request), ``exc`` (a traceback, when there is one), and any ``extra=`` fields."""

    def __init__(self) -> None:
        # uvicorn puts a coloured copy of its message on its records: not a field of ours
        super().__init__(rename_fields={"exc_info": "exc"}, reserved_attrs=[*RESERVED_ATTRS, "color_message"])

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["ts"] = _utc(record.created)
        log_data["level"] = record.levelname.lower()
        log_data["logger"] = record.name
        super().add_fields(log_data, record, message_dict)  # message, extra= fields, exc
        request_id = REQUEST_ID.get()
        if request_id is not None:
            log_data["request_id"] = request_id


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
            # it warns of every caller's id that fails validation: the caller's mistake, not the service's
            "asgi_correlation_id": {"handlers": ["default"], "level": "ERROR", "propagate": False},
        },
    }
