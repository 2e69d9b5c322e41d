"""Prediction request bodies in MessagePack (``Content-Type: application/msgpack``), decoded into ``Window``s.

The same requests as the JSON bodies (``app.schemas.PredictRequest``, ``BatchPredictRequest``), with two
binary forms for the numbers, so that a client that holds its windows as arrays sends them as they are:

- a context's ``features`` may be a bin of D little-endian float32 (32 bytes) instead of an array;
- a request may carry its window packed, instead of ``contexts``: ``timestamps`` (a bin of n little-endian
  int64, or an array of n ints, milliseconds) and ``features`` (a bin of n x D little-endian float32, row
  by row, oldest first). Such a window has no metadata and no pattern ids.

A flow key may also be a bin of its 32 bytes. Every rule is the JSON bodies' (``app.wire.rules``): msgspec
reads a well-formed body into typed structs in one pass in C and the arrays are checked in a few numpy
passes over all the contexts of the request at once; anything else (a rule broken, an unexpected shape)
is turned into plain Python objects, the binary forms into the JSON forms (a packed window into its
contexts), and validated by pydantic, so that the error, a 422 naming the field, is the one that the same
request in JSON gets.
"""

from __future__ import annotations

from itertools import chain
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta
from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.schemas import BatchPredictRequest, Limits, PredictRequest
from app.window import Window
from app.wire.decode import _HEX_KEY, _checked, _Context, _Row, windows_of
from app.wire.rules import FEATURES, FLOW_KEY_BYTES, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, D

MEDIA_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
ROW_BYTES = 4 * D  # a context's features as float32
_LOW = np.array([f.low for f in FEATURES])
_HIGH = np.array([f.high for f in FEATURES])


class _BinContext(_Context, forbid_unknown_fields=True, gc=False):
    """A context whose features may also be a bin of D float32 (checked after decoding)."""

    features: _Row | bytes  # type: ignore[valid-type]


class _Request(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    flow_key: str | list[int]
    contexts: Annotated[list[_BinContext], Meta(min_length=1)] | None = None
    timestamps: bytes | list[int] | None = None  # the packed window
    features: bytes | None = None
    model: str | None = None
    horizon: int = 1


class _Batch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    requests: Annotated[list[_Request], Meta(min_length=1)]


_REQUEST = msgspec.msgpack.Decoder(_Request)
_BATCH = msgspec.msgpack.Decoder(_Batch)


def is_msgpack(content_type: str | None) -> bool:
    """Whether a request's Content-Type names MessagePack (parameters ignored)."""
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() in MEDIA_TYPES


def msgpack_windows(body: bytes, limits: Limits, *, batch: bool) -> list[Window]:
    """The windows of a MessagePack /v1/predict body (one) or /v1/predict/batch body (in order), validated.

    Raises pydantic's ``ValidationError`` for an invalid body, as the same body in JSON would.
    """
    windows = _fast(body, limits, batch)
    if windows is not None:
        return windows
    obj = _plain(body, batch)
    if batch:
        return windows_of(BatchPredictRequest.model_validate(obj, context=limits).requests)
    return windows_of([PredictRequest.model_validate(obj, context=limits)])


def _fast(body: bytes, limits: Limits, batch: bool) -> list[Window] | None:
    """The windows of a body whose every rule holds; None for any other (pydantic then says what is wrong)."""
    try:
        requests = _BATCH.decode(body).requests if batch else [_REQUEST.decode(body)]
    except msgspec.DecodeError:
        return None
    heads: list[tuple[str, str | None, int]] = []
    for req in requests:
        flow_key = req.flow_key
        if type(flow_key) is not str or not _HEX_KEY.fullmatch(flow_key):
            return None  # the other forms of a key: pydantic normalizes them
        heads.append((flow_key, req.model, req.horizon))
    if all(type(r.timestamps) is bytes and type(r.features) is bytes for r in requests):
        arrays = _all_packed(requests)  # the usual binary batch: every window's arrays in one piece
    else:
        arrays = _one_by_one(requests)
    if arrays is None:
        return None
    counts, timestamps, features, patterns = arrays
    if not _in_range(timestamps, features.reshape(-1, D)):
        return None
    return _checked(heads, limits, counts, timestamps, features, patterns)


def _all_packed(
    requests: list[_Request],
) -> tuple[list[int], np.ndarray, np.ndarray, list[str | None]] | None:
    """Packed windows (bins of timestamps and features) as the arrays of all their contexts in a row."""
    if any(r.contexts is not None for r in requests):
        return None
    stamps = [r.timestamps for r in requests]
    rows = [r.features for r in requests]
    counts = [len(t) >> 3 for t in stamps]  # type: ignore[arg-type]
    for t, f, n in zip(stamps, rows, counts, strict=True):
        if not n or len(t) & 7 or len(f) != n * ROW_BYTES:  # type: ignore[arg-type]
            return None
    timestamps = np.frombuffer(b"".join(stamps), "<i8").astype(np.int64)  # type: ignore[arg-type]
    features = np.frombuffer(b"".join(rows), "<f4").astype(np.float64)  # type: ignore[arg-type]
    return counts, timestamps, features, [None] * len(timestamps)


def _one_by_one(
    requests: list[_Request],
) -> tuple[list[int], np.ndarray, np.ndarray, list[str | None]] | None:
    """Windows of either form, request by request."""
    counts: list[int] = []
    stamps: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    patterns: list[str | None] = []
    for req in requests:
        if req.contexts is not None:
            if req.timestamps is not None or req.features is not None:
                return None
            n = len(req.contexts)
            counts.append(n)
            stamps.append(np.fromiter((c.timestamp for c in req.contexts), np.int64, n))
            if all(type(c.features) is tuple for c in req.contexts):
                rows.append(
                    np.fromiter(chain.from_iterable(c.features for c in req.contexts), np.float64, n * D)
                )
            else:
                row = [_row(c.features) for c in req.contexts]
                if any(r is None for r in row):
                    return None
                rows.append(np.concatenate(row))  # type: ignore[arg-type]
            patterns.extend(c.pattern_id for c in req.contexts)
            continue
        packed = _packed(req.timestamps, req.features)
        if packed is None:
            return None
        counts.append(len(packed[0]))
        stamps.append(packed[0])
        rows.append(packed[1])
        patterns.extend([None] * len(packed[0]))
    timestamps = np.concatenate(stamps) if len(stamps) > 1 else stamps[0]
    return counts, timestamps, np.concatenate(rows) if len(rows) > 1 else rows[0], patterns


def _row(features: tuple[float, ...] | bytes) -> np.ndarray | None:
    """One context's D features as float64 (a bin: D float32), unchecked; None for a bin of another length."""
    if type(features) is bytes:
        if len(features) != ROW_BYTES:
            return None
        return np.frombuffer(features, "<f4").astype(np.float64)
    return np.array(features, dtype=np.float64)


def _packed(
    timestamps: bytes | list[int] | None, features: bytes | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """A packed window's (n,) int64 timestamps and (n * D,) float64 features; None when they do not fit."""
    if timestamps is None or features is None:
        return None
    if type(timestamps) is bytes:
        if len(timestamps) % 8:
            return None
        stamps = np.frombuffer(timestamps, "<i8").astype(np.int64)
    else:
        try:
            stamps = np.array(timestamps, dtype=np.int64)
        except OverflowError:
            return None
    n = len(stamps)
    if not n or len(features) != n * ROW_BYTES:
        return None
    return stamps, np.frombuffer(features, "<f4").astype(np.float64)


_CHUNK = 1 << 15  # rows compared at once: the bounds below are tiled to this many rows, once
_LOW_ROWS = np.ascontiguousarray(np.broadcast_to(_LOW, (_CHUNK, D)))
_HIGH_ROWS = np.ascontiguousarray(np.broadcast_to(_HIGH, (_CHUNK, D)))


def _in_range(timestamps: np.ndarray, features: np.ndarray) -> bool:
    """Every timestamp and every feature within its range (NaN is in none)."""
    if timestamps.size and (timestamps.min() < MIN_TIMESTAMP_MS or timestamps.max() > MAX_TIMESTAMP_MS):
        return False
    # compared with the bounds tiled to the rows' shape rather than broadcast from (D,): contiguous
    # operands, about three times faster on a batch's contexts
    for start in range(0, len(features), _CHUNK):
        part = features[start : start + _CHUNK]
        ok = np.greater_equal(part, _LOW_ROWS[: len(part)])
        ok &= np.less_equal(part, _HIGH_ROWS[: len(part)])
        if not ok.all():
            return False
    return True


def _plain(body: bytes, batch: bool) -> Any:
    """The body as the JSON form's Python objects, for pydantic to validate (and to name what is wrong)."""
    try:
        obj = msgspec.msgpack.decode(body)
    except msgspec.DecodeError as exc:
        raise _error((), "msgpack_invalid", f"the body is not valid MessagePack: {exc}") from None
    if batch and isinstance(obj, dict) and isinstance(obj.get("requests"), list):
        obj["requests"] = [_plain_request(req, ("requests", i)) for i, req in enumerate(obj["requests"])]
    elif not batch:
        obj = _plain_request(obj, ())
    return obj


def _plain_request(req: Any, loc: tuple[str | int, ...]) -> Any:
    if not isinstance(req, dict):
        return req
    key = req.get("flow_key")
    if isinstance(key, bytes) and len(key) == FLOW_KEY_BYTES:
        req["flow_key"] = list(key)
    contexts = req.get("contexts")
    if isinstance(contexts, list):
        for context in contexts:
            if isinstance(context, dict) and isinstance(context.get("features"), bytes):
                raw = context["features"]
                if len(raw) != ROW_BYTES:
                    continue  # pydantic: "Input should be a valid list"
                context["features"] = np.frombuffer(raw, "<f4").tolist()
        return req
    if "timestamps" in req or "features" in req:
        req["contexts"] = _unpacked(req.pop("timestamps", None), req.pop("features", None), loc)
    return req


def _unpacked(timestamps: Any, features: Any, loc: tuple[str | int, ...]) -> list[dict[str, Any]]:
    """A packed window as its contexts; a 422 naming the field when the two do not make one."""
    if isinstance(timestamps, bytes):
        if len(timestamps) % 8:
            raise _error((*loc, "timestamps"), "packed", "timestamps must be a bin of little-endian int64")
        timestamps = np.frombuffer(timestamps, "<i8").tolist()
    if not isinstance(timestamps, list):
        raise _error((*loc, "timestamps"), "packed", "timestamps must be a bin of int64 or an array of ints")
    if not isinstance(features, bytes) or len(features) != len(timestamps) * ROW_BYTES:
        raise _error(
            (*loc, "features"),
            "packed",
            f"features must be a bin of {len(timestamps)} x {D} little-endian float32 "
            f"({len(timestamps) * ROW_BYTES} bytes), one row per timestamp",
        )
    rows = np.frombuffer(features, "<f4").reshape(-1, D).tolist()
    return [{"timestamp": t, "features": row} for t, row in zip(timestamps, rows, strict=True)]


def _error(loc: tuple[str | int, ...], kind: str, message: str) -> ValidationError:
    detail: InitErrorDetails = {"type": PydanticCustomError(kind, message), "loc": loc, "input": None}
    return ValidationError.from_exception_data("msgpack body", [detail])
