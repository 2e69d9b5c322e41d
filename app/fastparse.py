"""Prediction request bodies parsed for the handlers: a fast path for the common shape, pydantic for the rest.

``PredictRequest.model_validate_json`` costs about 75 µs a window of 32 contexts, and building the
window's arrays from the validated dicts another 20: most of what the event loop spends on a window.
The fast path parses the body with orjson and checks the usual well-formed shape of the whole request,
batch included, with a few passes over all its contexts at once and array operations, then answers the
``Window``s that the handlers use, the arrays already built. The moment anything is unusual (a string
where a number should be, a missing or an extra key, a float timestamp, a limit exceeded, a token that
orjson rejects such as NaN...) it answers ``None`` and pydantic validates the body as before, so that
the accepted set, the values and every error stay pydantic's. tests/app/test_fastparse.py checks
that against pydantic on generated bodies, valid and spoiled.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
from pydantic import TypeAdapter, ValidationError

from app.schemas import (
    MAX_FEATURE,
    MAX_TIMESTAMP_MS,
    BatchPredictRequest,
    D,
    FlowKey,
    Limits,
    PredictRequest,
)

_REQUEST_KEYS = frozenset(PredictRequest.model_fields)
_FLOW_KEY: TypeAdapter[str] = TypeAdapter(FlowKey)  # the schema's own rule and normalization
_TIMESTAMP, _FEATURES = itemgetter("timestamp"), itemgetter("features")
_METADATA, _PATTERN_ID = itemgetter("metadata"), itemgetter("pattern_id")
_ABSENT = object()  # an optional key that a context leaves out
_FEATURE_DTYPES = frozenset({np.dtype(np.float64), np.dtype(np.int64), np.dtype(np.bool_)})
_NUMBERS = frozenset({float, int})  # what a metadata value may be here (pydantic turns an int into a float)
_MAX_METADATA, _MAX_METADATA_KEY, _MAX_PATTERN_ID = 32, 64, 128


@dataclass(frozen=True, slots=True, eq=False)
class Window:
    """One validated predict request as the handlers use it, its window already as arrays."""

    flow_key: str  # 64 lowercase hex characters, whichever form the request used
    model: str | None  # the model kind asked for; None: the service's default
    horizon: int
    timestamps: np.ndarray  # (n,) int64 ms since the epoch, not decreasing
    features: np.ndarray  # (n, D) float64, finite, within ±MAX_FEATURE
    pattern_ids: list[str | None]  # (n,) each context's pattern_id, None where it has none


def predict_windows(body: bytes | str, limits: Limits, *, batch: bool) -> list[Window]:
    """The windows of a /v1/predict body (one) or a /v1/predict/batch body (in order), validated.

    Raises pydantic's ``ValidationError`` for an invalid body, exactly as ``model_validate_json`` does.
    """
    windows = fast_windows(body, limits, batch=batch)
    if windows is not None:
        return windows
    if batch:
        return windows_of(BatchPredictRequest.model_validate_json(body, context=limits).requests)
    return windows_of([PredictRequest.model_validate_json(body, context=limits)])


def windows_of(requests: Sequence[PredictRequest]) -> list[Window]:
    """The windows of requests that pydantic validated (the arrays built for all of them at once)."""
    contexts = list(chain.from_iterable(req.contexts for req in requests))
    return _windows(
        [(req.flow_key, req.model, req.horizon) for req in requests],
        [len(req.contexts) for req in requests],
        np.array(list(map(_TIMESTAMP, contexts)), dtype=np.int64),
        np.fromiter(chain.from_iterable(map(_FEATURES, contexts)), np.float64, len(contexts) * D),
        [c.get("pattern_id") for c in contexts],
    )


def fast_windows(body: bytes | str, limits: Limits, *, batch: bool) -> list[Window] | None:
    """The windows of a body of the common shape, as ``predict_windows`` answers them; None for any other.

    None says nothing about validity: it leaves the body to pydantic.
    """
    # A body of 512 windows parses into some 33,000 dicts and lists. They hold no cycles and are dropped
    # before this returns, yet the collections that their allocation would set off walk them, promote
    # them, and soon bring on full collections of the whole heap (torch's included), which cost more than
    # the parse itself (scripts/bench_parse.py). So no collection runs until they are gone.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _fast_windows(body, limits, batch)  # its frame, and the parsed body, end before the finally
    finally:
        if enabled:
            gc.enable()


def _fast_windows(body: bytes | str, limits: Limits, batch: bool) -> list[Window] | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not batch:
        return _checked([doc], limits)
    if type(doc) is not dict or len(doc) != 1 or type(requests := doc.get("requests")) is not list:
        return None
    if not 1 <= len(requests) <= limits.max_batch:
        return None
    return _checked(requests, limits)


def _checked(requests: list[Any], limits: Limits) -> list[Window] | None:
    """The windows of parsed requests when every part has the common, valid shape; else None."""
    heads: list[tuple[str, str | None, int]] = []
    windows: list[list[Any]] = []
    for req in requests:
        if type(req) is not dict or not req.keys() <= _REQUEST_KEYS:
            return None
        contexts, model = req.get("contexts"), req.get("model")
        if type(contexts) is not list or not 1 <= len(contexts) <= limits.max_window:
            return None
        if model is not None and (type(model) is not str or model not in limits.horizons):
            return None
        horizon = req.get("horizon", 1)  # a default is not validated, as in pydantic
        if "horizon" in req:
            most = limits.horizons.get(model or limits.default_model)
            if type(horizon) is not int or most is None or not 1 <= horizon <= most:
                return None
        try:
            flow_key = _FLOW_KEY.validate_python(req.get("flow_key"))
        except ValidationError:
            return None
        heads.append((flow_key, model, horizon))
        windows.append(contexts)

    # Every context of every window at once, each pass in C. Where a value has the wrong type, a pass
    # raises (KeyError: a key is missing; TypeError: a context or a feature row that is no container;
    # ValueError: features that are lists) or numpy infers another dtype than an int or float one.
    contexts = list(chain.from_iterable(windows))
    try:
        stamps = list(map(_TIMESTAMP, contexts))
        rows = list(map(_FEATURES, contexts))
        pattern_ids = _pattern_ids(contexts)
        if pattern_ids is None or set(map(len, rows)) != {D}:
            return None
        timestamps = np.array(stamps)
        features = np.array(list(chain.from_iterable(rows)))
    except (KeyError, TypeError, ValueError):
        return None
    # ints, or bools among them, as pydantic takes them: True is 1 (int64 here)
    if timestamps.dtype != np.int64 or timestamps.ndim != 1:
        return None
    # floats, ints, bools: float64 of their float(), as pydantic makes them (a string is another dtype)
    if features.dtype not in _FEATURE_DTYPES or features.ndim != 1:
        return None
    features = features.astype(np.float64, copy=False)
    if not (np.abs(features) <= MAX_FEATURE).all():  # NaN fails this too
        return None
    if timestamps.min() < 0 or timestamps.max() > MAX_TIMESTAMP_MS:
        return None
    counts = list(map(len, windows))
    steps = np.diff(timestamps)
    steps[np.cumsum(counts[:-1], dtype=np.intp) - 1] = 0  # from one window to the next: no order
    if (steps < 0).any():
        return None
    return _windows(heads, counts, timestamps, features, pattern_ids)


def _pattern_ids(contexts: list[dict[str, Any]]) -> list[str | None] | None:
    """Each context's pattern_id (None where it has none), when no context has a key of its own and
    their metadata and pattern ids are valid; else None. Raises KeyError for a missing key."""
    n, keys = len(contexts), sum(map(len, contexts))
    if keys == 2 * n:  # timestamp and features only: the lean form
        return [None] * n
    if keys == 4 * n:  # all four keys in every context: the full form
        metadata = list(map(_METADATA, contexts))
        pattern_ids = list(map(_PATTERN_ID, contexts))
    else:
        metadata = [c.get("metadata", _ABSENT) for c in contexts]
        pattern_ids = [c.get("pattern_id", _ABSENT) for c in contexts]
        if keys != 4 * n - metadata.count(_ABSENT) - pattern_ids.count(_ABSENT):
            return None  # some context has a key of its own
        pattern_ids = [None if p is _ABSENT else p for p in pattern_ids]
    if metadata.count({}) != n and not all(map(_valid_metadata, metadata)):
        return None
    if pattern_ids.count(None) != n and not all(map(_valid_pattern_id, pattern_ids)):
        return None
    return pattern_ids


def _valid_metadata(metadata: Any) -> bool:
    if metadata is _ABSENT:
        return True
    if type(metadata) is not dict or len(metadata) > _MAX_METADATA:
        return False
    # JSON keys are strings; orjson gives no non-finite float, and turns ints past 64 bits into floats
    return (
        max(map(len, metadata), default=0) <= _MAX_METADATA_KEY
        and set(map(type, metadata.values())) <= _NUMBERS
    )


def _valid_pattern_id(pattern_id: Any) -> bool:
    return pattern_id is None or (type(pattern_id) is str and 1 <= len(pattern_id) <= _MAX_PATTERN_ID)


def _windows(
    heads: Iterable[tuple[str, str | None, int]],
    counts: list[int],
    timestamps: np.ndarray,
    features: np.ndarray,
    pattern_ids: list[str | None],
) -> list[Window]:
    """Windows cut from the arrays of all their contexts in a row (views, not copies)."""
    features = features.reshape(-1, D)
    ends = np.cumsum(counts).tolist()
    return [
        Window(flow_key, model, horizon, timestamps[a:b], features[a:b], pattern_ids[a:b])
        for (flow_key, model, horizon), a, b in zip(heads, [0, *ends[:-1]], ends, strict=True)
    ]
