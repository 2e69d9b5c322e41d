"""Prediction request bodies decoded into ``Window``s: a fast path for the common shape, pydantic else.

The fast path answers the windows that the handlers use, their arrays already built:

1. ``app.wire._json_reader`` (C) reads a body of the common shape (hex flow keys, a model name or null, an
   integer horizon; contexts of a timestamp, exactly D numbers as a list, and at most ``"metadata": {}``
   and ``"pattern_id": null``) straight into lists and int64 / float64 buffers, in one pass, with no
   Python object per context or per number;
2. any other body (real metadata, pattern ids, a flow key as a list of bytes, a bool feature...) is
   decoded by msgspec into structs that state the request's rules (types, ranges, lengths, no unknown
   keys), also in one pass in C, then turned into arrays.

Both take every limit and range from ``app.wire.rules``. What is left (the deployment's limits, the
order of timestamps) is a few passes over all the contexts of the whole request at once, batch included.
The moment anything is unusual (a string where a number should be, named features, a float timestamp, a
missing or an extra key, a value out of its range, a token such as NaN...) the fast path answers
``None`` and pydantic validates the body, so that the accepted set, the values and every error stay
pydantic's (``app.schemas``). The tests check that against pydantic on generated bodies, valid and
spoiled, with and without the C reader. ``scripts/bench_parse.py`` measures what each path costs.
"""

from __future__ import annotations

import gc
import logging
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, chain
from operator import attrgetter, itemgetter
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta
from pydantic import TypeAdapter, ValidationError

from app.schemas import BatchPredictRequest, ContextVector, FlowKey, Limits, PredictRequest
from app.window import Window
from app.wire.rules import (
    FEATURES,
    FLOW_KEY_HEX,
    MAX_LABEL,
    MAX_METADATA_ITEMS,
    MAX_METADATA_KEY,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    D,
)

try:  # the C reader of the common shape of bodies; without a C compiler at install, msgspec alone
    from app.wire import _json_reader
except ImportError:  # pragma: no cover (the tests require it)
    _json_reader = None  # type: ignore[assignment]
    logging.getLogger("cpe.wire").warning(
        "app.wire._json_reader is not built (no C compiler at install?): prediction bodies are read by "
        "msgspec alone, which costs more CPU per window; reinstall with a C compiler to build it"
    )

_FLOW_KEY: TypeAdapter[str] = TypeAdapter(FlowKey)  # the schema's own rule and normalization
_HEX_KEY = re.compile(f"[0-9a-f]{{{FLOW_KEY_HEX}}}")  # the usual form: cheaper to match than to validate
_TIMESTAMP, _FEATURES = itemgetter("timestamp"), itemgetter("features")

# The schema's rules (app.wire.rules), as msgspec states them. A value that pydantic would take only
# laxly (a bool timestamp, a float one with no fraction, a number in a string) fails here and goes to
# pydantic. A bool feature is taken, as pydantic takes it: it is 1.0 or 0.0, within every range.
# A tuple of exactly D rather than a list of D..D: msgspec then decodes a row without growing a list.
_Row = tuple.__class_getitem__(tuple(Annotated[float, Meta(ge=f.low, le=f.high)] | bool for f in FEATURES))
_Finite = Annotated[float, Meta(ge=-sys.float_info.max, le=sys.float_info.max)]  # 1e400 is out of range
# The C reader's limits, in the form it takes them: every feature's low and high ends as float64 bytes.
_READER_LIMITS = (
    np.array([f.low for f in FEATURES]).tobytes(),
    np.array([f.high for f in FEATURES]).tobytes(),
    MIN_TIMESTAMP_MS,
    MAX_TIMESTAMP_MS,
    FLOW_KEY_HEX,
)


class _Context(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    timestamp: Annotated[int, Meta(ge=MIN_TIMESTAMP_MS, le=MAX_TIMESTAMP_MS)]
    features: _Row  # type: ignore[valid-type]
    metadata: Annotated[
        dict[Annotated[str, Meta(max_length=MAX_METADATA_KEY)], _Finite], Meta(max_length=MAX_METADATA_ITEMS)
    ] = {}
    pattern_id: Annotated[str, Meta(min_length=1, max_length=MAX_LABEL)] | None = None


class _Request(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    flow_key: str | list[int]
    contexts: Annotated[list[_Context], Meta(min_length=1)]
    model: str | None = None
    horizon: int = 1


class _Batch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    requests: Annotated[list[_Request], Meta(min_length=1)]


_REQUEST = msgspec.json.Decoder(_Request)
_BATCH = msgspec.json.Decoder(_Batch)
_CONTEXTS, _STAMP, _ROW, _PATTERN_ID = (
    attrgetter(name) for name in ("contexts", "timestamp", "features", "pattern_id")
)


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
    contexts = list(chain.from_iterable(req.contexts or () for req in requests))  # None: the server's window
    return _windows(
        [(req.flow_key, req.model, req.horizon) for req in requests],
        list(accumulate(len(req.contexts or ()) for req in requests)),
        *_arrays(contexts, _TIMESTAMP, _FEATURES),
        [c.get("pattern_id") for c in contexts],
    )


def context_arrays(contexts: Sequence[ContextVector]) -> tuple[np.ndarray, np.ndarray]:
    """One window of contexts that pydantic validated as the engine takes it: timestamps (n,) int64 and
    features (n, D) float64 (the routing endpoint's windows)."""
    timestamps, features = _arrays(contexts, _TIMESTAMP, _FEATURES)
    return timestamps, features.reshape(-1, D)


def _arrays(
    contexts: Sequence[Any], stamp: Callable[[Any], int], row: Callable[[Any], Iterable[float]]
) -> tuple[np.ndarray, np.ndarray]:
    """The timestamps (n,) int64 and the features (n * D,) float64 of contexts (dicts or structs, read with
    ``stamp`` and ``row``), each in one pass in C. A bool feature is 1.0 or 0.0, as pydantic makes it."""
    n = len(contexts)
    return (
        np.fromiter(map(stamp, contexts), np.int64, n),
        np.fromiter(chain.from_iterable(map(row, contexts)), np.float64, n * D),
    )


def fast_windows(body: bytes | str, limits: Limits, *, batch: bool) -> list[Window] | None:
    """The windows of a body of the common shape, as ``predict_windows`` answers them; None for any other.

    None says nothing about validity: it leaves the body to pydantic.
    """
    # Read by msgspec (a body of another shape than the C reader reads), a batch makes a few Python
    # objects per context. They hold no cycles and are gone before this returns, so a collection that their
    # allocation sets off could free none of them: it would only walk them and promote them to older
    # generations, to be walked again. None runs until they are gone (scripts/bench_parse.py --gc
    # default measures it). The C reader makes a few Python objects a request, not a context.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _fast_windows(body, limits, batch)  # its frame, and the parsed body, end before the finally
    finally:
        if enabled:
            gc.enable()


def _fast_windows(body: bytes | str, limits: Limits, batch: bool) -> list[Window] | None:
    if _json_reader is not None:
        data = body.encode() if isinstance(body, str) else body
        parsed = _json_reader.requests(data, batch, *_READER_LIMITS)
        if parsed is not None:
            flow_keys, models, horizons, stamps, rows, counts = parsed
            timestamps = np.frombuffer(stamps, dtype=np.int64)
            heads = list(zip(flow_keys, models, horizons, strict=True))  # flow keys: 64 lowercase hex
            return _checked(heads, limits, counts, timestamps, np.frombuffer(rows), [None] * len(timestamps))
        # a body of another shape (metadata, pattern ids, a flow key as bytes...): the structs read it
    try:
        requests = _BATCH.decode(body).requests if batch else [_REQUEST.decode(body)]
    except msgspec.DecodeError:  # malformed, or a rule broken (ValidationError is one): pydantic's call
        return None
    heads = []
    for req in requests:
        flow_key = req.flow_key
        if type(flow_key) is not str or not _HEX_KEY.fullmatch(flow_key):  # else it is its own normal form
            try:
                flow_key = _FLOW_KEY.validate_python(flow_key)
            except ValidationError:
                return None
        heads.append((flow_key, req.model, req.horizon))
    contexts = list(chain.from_iterable(map(_CONTEXTS, requests)))  # every window's at once
    counts = [len(req.contexts) for req in requests]
    timestamps, features = _arrays(contexts, _STAMP, _ROW)
    return _checked(heads, limits, counts, timestamps, features, list(map(_PATTERN_ID, contexts)))


def _checked(
    heads: list[tuple[str, str | None, int]],
    limits: Limits,
    counts: list[int],
    timestamps: np.ndarray,
    features: np.ndarray,
    pattern_ids: list[str | None],
) -> list[Window] | None:
    """The windows of decoded requests (flow key in its normal form, model, horizon; their contexts as
    arrays, ``counts[i]`` the i-th's), when the deployment's limits hold and every window's timestamps
    do not decrease; else None."""
    if len(heads) > limits.max_batch:
        return None
    for (_, model, horizon), count in zip(heads, counts, strict=True):
        most = limits.horizons.get(limits.default_model if model is None else model)  # "" is no model
        if most is None or not 1 <= horizon <= most or count > limits.max_window:
            return None  # an absent horizon is 1, within every model's
    ends = list(accumulate(counts))
    earlier = timestamps[1:] < timestamps[:-1]  # (n - 1,) a context earlier than the one before it
    if len(ends) > 1:
        earlier[[end - 1 for end in ends[:-1]]] = False  # a window may start before the last one ends
    if earlier.any():
        return None
    return _windows(heads, ends, timestamps, features, pattern_ids)


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
