"""Prediction request bodies parsed for the handlers: a fast path for the common shape, pydantic for the rest.

The fast path parses the body with orjson and checks the usual well-formed shape of the whole request,
batch included, in a few passes over all its contexts at once (each in C) and a few array operations,
then answers the ``Window``s that the handlers use, their arrays already built. The moment anything is
unusual (a string where a number should be, a float timestamp, a missing or an extra key, a limit
exceeded, a token that orjson refuses such as NaN...) it answers ``None`` and pydantic validates the body
as before, so that the accepted set, the values and every error stay pydantic's. The tests check that
against pydantic on generated bodies, valid and spoiled (tests/app/test_fastparse.py).

What it saves (scripts/bench_parse.py, event-loop CPU per window of 32 contexts on the 2-CPU dev box):
a batch of 512 windows 60-65 µs instead of 100-110 (``model_validate_json`` then the arrays), of which
``orjson.loads`` alone is 33; a body of one window about the same as pydantic, whose parser is as fast
as orjson there and whose fixed costs are lower.
"""

from __future__ import annotations

import gc
import re
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
from pydantic import TypeAdapter, ValidationError

from app.schemas import (
    MAX_FEATURE,
    MAX_TIMESTAMP_MS,
    BatchPredictRequest,
    ContextVector,
    D,
    FlowKey,
    Limits,
    PredictRequest,
)

_REQUEST_KEYS = frozenset(PredictRequest.model_fields)
_FLOW_KEY: TypeAdapter[str] = TypeAdapter(FlowKey)  # the schema's own rule and normalization
_HEX_KEY = re.compile(r"[0-9a-f]{64}")  # the usual form of a flow key, cheaper to match than to validate
_TIMESTAMP, _FEATURES = itemgetter("timestamp"), itemgetter("features")
_METADATA, _PATTERN_ID = itemgetter("metadata"), itemgetter("pattern_id")
_ABSENT = object()  # an optional key that a context leaves out
_NUMBERS = frozenset({float, int})  # what a metadata value may be here (pydantic turns an int into a float)
_MAX_METADATA, _MAX_METADATA_KEY, _MAX_PATTERN_ID = 32, 64, 128


@dataclass(slots=True, eq=False)  # not frozen: a frozen one costs 2 µs more to make, and a batch makes 512
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
        list(accumulate(len(req.contexts) for req in requests)),
        np.array(list(map(_TIMESTAMP, contexts)), dtype=np.int64),
        np.fromiter(chain.from_iterable(map(_FEATURES, contexts)), np.float64, len(contexts) * D),
        [c.get("pattern_id") for c in contexts],
    )


def context_arrays(contexts: Sequence[ContextVector]) -> tuple[np.ndarray, np.ndarray]:
    """One window of contexts that pydantic validated as the engine takes it: timestamps (n,) int64 and
    features (n, D) float64 (the routing endpoint's windows)."""
    timestamps = np.array(list(map(_TIMESTAMP, contexts)), dtype=np.int64)
    features = np.fromiter(chain.from_iterable(map(_FEATURES, contexts)), np.float64, len(contexts) * D)
    return timestamps, features.reshape(-1, D)


def fast_windows(body: bytes | str, limits: Limits, *, batch: bool) -> list[Window] | None:
    """The windows of a body of the common shape, as ``predict_windows`` answers them; None for any other.

    None says nothing about validity: it leaves the body to pydantic.
    """
    # A body of 512 windows parses into some 33,000 dicts and lists. They hold no cycles and are gone
    # before this returns, so a collection that their allocation sets off could free none of them: it
    # would only walk them and promote them to older generations, to be walked again. None runs until
    # they are gone (scripts/bench_parse.py --gc default shows what that saves).
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
        flow_key = req.get("flow_key")
        if type(flow_key) is not str or not _HEX_KEY.fullmatch(flow_key):  # else it is its own normal form
            try:
                flow_key = _FLOW_KEY.validate_python(flow_key)
            except ValidationError:
                return None
        heads.append((flow_key, model, horizon))
        windows.append(contexts)

    # Every context of every window at once, each pass in C. A value of a wrong type makes a pass raise:
    # KeyError for a missing key; TypeError for a context or a feature row that is no container, or a
    # number that is none of what pydantic takes without parsing a string: array("q") takes ints and
    # bools (True is 1), array("d") floats, ints and bools, converted as pydantic converts them.
    contexts = list(chain.from_iterable(windows))
    try:
        stamps = list(map(_TIMESTAMP, contexts))
        rows = list(map(_FEATURES, contexts))
        pattern_ids = _pattern_ids(contexts)
        if pattern_ids is None or set(map(len, rows)) != {D}:
            return None
        timestamps = np.frombuffer(array("q", stamps), dtype=np.int64)
        features = np.frombuffer(array("d", list(chain.from_iterable(rows))), dtype=np.float64)
    except (KeyError, TypeError, OverflowError):
        return None
    # bounds, with as few numpy calls as can be: they cost more than the work itself on one window
    if min(stamps) < 0 or max(stamps) > MAX_TIMESTAMP_MS:
        return None
    if not (features.min() >= -MAX_FEATURE and features.max() <= MAX_FEATURE):  # NaN fails too
        return None
    ends = list(accumulate(map(len, windows)))
    earlier = timestamps[1:] < timestamps[:-1]  # (n - 1,) a context earlier than the one before it
    if len(ends) > 1:
        earlier[[end - 1 for end in ends[:-1]]] = False  # a window may start before the last one ends
    if earlier.any():
        return None
    return _windows(heads, ends, timestamps, features, pattern_ids)


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
    ends: list[int],
    timestamps: np.ndarray,
    features: np.ndarray,
    pattern_ids: list[str | None],
) -> list[Window]:
    """Windows cut from the arrays of all their contexts in a row (views, not copies); window i ends
    before context ``ends[i]``."""
    features = features.reshape(-1, D)
    return [
        Window(flow_key, model, horizon, timestamps[a:b], features[a:b], pattern_ids[a:b])
        for (flow_key, model, horizon), a, b in zip(heads, [0, *ends[:-1]], ends, strict=True)
    ]
