"""POST /v1/predict and /v1/predict/batch: forecasts of flows' next contexts."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response
from starlette.requests import HTTPConnection

from app.api.deps import parse_windows
from app.api.errors import ERROR_RESPONSES
from app.api.openapi import json_body
from app.api.request_only_route import RequestOnlyRoute
from app.api.responses import OrjsonResponse, dumps
from app.auth import require_scope
from app.cache import Cache, prediction_id
from app.cache.keys import prediction_keys
from app.cache.ttl import AdaptiveTtl, forecast_ttl
from app.engine import Engine, WindowForecast, read_numbers
from app.flows import FlowStore, FlowsUnavailable
from app.flows.serving import (
    BatchPredictAnswer,
    UnknownFlow,
    fill_from_flows,
    unknown_flow,
    unknown_flow_item,
)
from app.forecasts.result import result_body
from app.learning.recent import RecentWindows
from app.patterns.service import Patterns
from app.schemas import (
    BatchPredictRequest,
    Limits,
    Message,
    PredictionResult,
    PredictRequest,
)
from app.services import Services
from app.window import Window
from app.wire.decode import windows_of

_REQUIRE_READ = require_scope("read")


async def _read_key(conn: HTTPConnection) -> None:
    """The API key check of the read scope, as a guard that the OpenAPI document does not list: create_app
    documents the key where it includes this router, when keys are configured (without, this returns at
    once)."""
    await _REQUIRE_READ(conn)


# The hot path: its handlers parse their own bodies, so FastAPI's per-request solving is skipped. The key
# check is the router's own guard: a RequestOnlyRoute does not see the dependencies of include_router.
router = APIRouter(
    prefix="/v1/predict", tags=["predict"], route_class=RequestOnlyRoute, dependencies=[Depends(_read_key)]
)

SIMILAR_PATTERNS = 3
PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"model": Message, "description": "No `contexts`, and the flow has no server-side window."},
}


@router.post(
    "",
    response_model=PredictionResult,
    responses=PREDICT_RESPONSES,
    openapi_extra=json_body(PredictRequest, msgpack=True),
)
async def predict(request: Request) -> Response:
    """Forecast one flow's context `horizon` steps ahead from its recent window.

    The same window asked again of the same model version is answered from the cache (`cached: true`)."""
    start = time.perf_counter()
    services = Services.of(request.app)  # rather than dependencies: FastAPI solves them on every request
    engine, limits, cache, recent = services.engine, services.limits, services.cache, services.recent
    [window] = await parse_windows(request, limits, batch=False)
    if not len(window.timestamps):  # no contexts: the flow's server-side window
        try:
            if await fill_from_flows([window], services.flows, limits.max_window):
                return OrjsonResponse({"detail": unknown_flow(window.flow_key)["detail"]}, status_code=404)
        except FlowsUnavailable as exc:
            return OrjsonResponse({"detail": str(exc)}, 503, {"retry-after": str(exc.retry_after_s)})
    body = await predict_window(window, engine, cache, limits, start, recent, services.patterns, services.ttl)
    return Response(body, media_type="application/json")


async def predict_one(
    req: PredictRequest,
    engine: Engine,
    cache: Cache,
    limits: Limits,
    start: float,
    recent: RecentWindows | None = None,
    flows: FlowStore | None = None,
    patterns: Patterns | None = None,
    ttl: AdaptiveTtl | None = None,
) -> bytes:
    """``predict_window`` for a PredictRequest that pydantic validated (the WebSocket stream's); one without
    contexts from the flow's window in ``flows`` (``UnknownFlow`` when there is none)."""
    [window] = windows_of([req])
    if not len(window.timestamps) and (
        flows is None or await fill_from_flows([window], flows, limits.max_window)
    ):
        raise UnknownFlow(unknown_flow(window.flow_key)["detail"])
    return await predict_window(window, engine, cache, limits, start, recent, patterns, ttl)


async def predict_window(
    window: Window,
    engine: Engine,
    cache: Cache,
    limits: Limits,
    start: float,
    recent: RecentWindows | None = None,
    patterns: Patterns | None = None,
    ttl: AdaptiveTtl | None = None,
) -> bytes:
    """The serialized PredictionResult of ``window``: from the cache, else from the engine (then stored).

    Shared by POST /v1/predict and the WebSocket stream /v1/stream/predict. ``recent`` (None when the
    service does not learn) remembers the window under its prediction_id, for feedback by id;
    ``patterns`` (None without pattern memory) names the nearest stored windows in similar_patterns;
    ``ttl`` (None: the fixed TTL) gives the answer a TTL of its own.
    """
    kind = window.model or limits.default_model
    version = engine.predictors[kind].version
    [key] = prediction_keys([version], [window])
    stored = await cache.get(key)
    if stored is not None:
        if recent is not None:
            recent.remember(prediction_id(key), window)
        return _from_cache(stored, _elapsed(start))
    forecast = await engine.predict(kind, window.timestamps, window.features, window.horizon)
    if forecast.predictor.version != version:  # swapped meanwhile: the answer is the new version's
        [key] = prediction_keys([forecast.predictor.version], [window])
    [body] = _answers([window], [forecast], _elapsed_ms(start), [key], patterns)
    if recent is not None:
        recent.remember(prediction_id(key), window)
    await cache.set(key, body, _ttl(ttl, forecast, window.horizon))
    return body


@router.post(
    "/batch",
    response_model=BatchPredictAnswer,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(BatchPredictRequest, msgpack=True),
)
async def predict_batch(request: Request) -> Response:
    """Forecast many flows at once; the answers come in the order of the requests."""
    start = time.perf_counter()
    services = Services.of(request.app)
    engine, limits, cache = services.engine, services.limits, services.cache
    windows = await parse_windows(request, limits, batch=True)
    asked, unknown = windows, []  # windows without contexts take their flows' server-side windows
    if any(not len(window.timestamps) for window in windows):
        try:
            unknown = await fill_from_flows(windows, services.flows, limits.max_window)
        except FlowsUnavailable as exc:
            return OrjsonResponse({"detail": str(exc)}, 503, {"retry-after": str(exc.retry_after_s)})
        windows = [window for i, window in enumerate(windows) if i not in set(unknown)]
        if not windows:
            items = b",".join(unknown_flow_item(window.flow_key) for window in asked)
            return Response(b'{"results":[%s]}' % items, media_type="application/json")
    kinds = [window.model or limits.default_model for window in windows]
    versions = {kind: predictor.version for kind, predictor in engine.predictors.items()}
    if len(set(kinds)) == 1:
        keys = prediction_keys([versions[kinds[0]]], windows)
    else:
        keys = prediction_keys([versions[kind] for kind in kinds], windows)
    stored = await cache.get_many(keys)  # one round-trip for the whole batch
    misses = [i for i, value in enumerate(stored) if value is None]
    steps = max(windows[i].horizon for i in misses) if misses else None
    forecasts = await _forecasts(engine, kinds, windows, misses, steps) if misses else []
    results: list[bytes] = [b""] * len(windows)  # each serialized once, the fresh ones also stored
    swapped = [i for i, f in zip(misses, forecasts, strict=True) if f.predictor.version != versions[kinds[i]]]
    if swapped:  # the key is the one looked up, unless the model was swapped meanwhile
        renewed = prediction_keys(
            [forecasts[misses.index(i)].predictor.version for i in swapped], [windows[i] for i in swapped]
        )
        for i, key in zip(swapped, renewed, strict=True):
            keys[i] = key
    # one request, one processing time for the answers it computed
    answers = _answers(
        [windows[i] for i in misses],
        forecasts,
        _elapsed_ms(start),
        [keys[i] for i in misses],
        services.patterns,
    )
    if len(misses) == len(windows):  # the usual batch: nothing was cached
        results = answers
    else:
        for i, answer in zip(misses, answers, strict=True):
            results[i] = answer
    ttl = services.ttl
    ttls = (
        None
        if ttl is None
        else [_ttl(ttl, f, windows[i].horizon) or 0 for i, f in zip(misses, forecasts, strict=True)]
    )
    recent = services.recent
    if recent is not None:
        recent.remember_many(zip([key[-32:] for key in keys], windows, strict=True))  # prediction_ids
    if misses:
        fresh = list(zip([keys[i] for i in misses], answers, strict=True))
        await cache.set_many(fresh, ttls)  # one round-trip too
    if len(misses) < len(windows):
        elapsed = _elapsed(start)
        for i, value in enumerate(stored):
            if value is not None:
                results[i] = _from_cache(value, elapsed)
    for i in unknown:  # a per-item error in place of the result, the others in order
        results.insert(i, unknown_flow_item(asked[i].flow_key))
    return Response(b'{"results":[%s]}' % b",".join(results), media_type="application/json")


async def _forecasts(
    engine: Engine, kinds: list[str], windows: list[Window], misses: list[int], steps: int | None
) -> list[WindowForecast]:
    """The forecasts of ``windows[i]`` for i in ``misses``, in that order: one model's windows as one
    block (``Engine.predict_block``: a few jobs rather than one per window, through the queue and back),
    windows of several models one by one (``predict_many``)."""
    kind = kinds[misses[0]]
    if any(kinds[i] != kind for i in misses):
        jobs = [(kinds[i], windows[i].timestamps, windows[i].features) for i in misses]
        return await engine.predict_many(jobs, steps)
    asked = windows if len(misses) == len(windows) else [windows[i] for i in misses]
    seq_len = engine.predictors[kind].seq_len
    return await engine.predict_block(kind, *_block(asked, seq_len), steps)


def _block(windows: list[Window], seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows as one right-aligned block of their newest ``seq_len`` contexts at most (what the model
    reads): timestamps (B, L), features (B, L, D), lengths (B,)."""
    lengths = np.fromiter([len(w.timestamps) for w in windows], np.int64, len(windows))
    width = int(min(lengths.max(), seq_len))
    if lengths.min() == width and lengths.max() == width:  # the usual batch: windows of one length
        return np.stack([w.timestamps for w in windows]), np.stack([w.features for w in windows]), lengths
    used = np.minimum(lengths, width)
    stamps = np.concatenate(
        [w.timestamps[len(w.timestamps) - u :] for w, u in zip(windows, used.tolist(), strict=True)]
    )
    rows = np.concatenate(
        [w.features[len(w.features) - u :] for w, u in zip(windows, used.tolist(), strict=True)]
    )
    window_of = np.repeat(np.arange(len(windows)), used)
    column = np.arange(len(stamps)) - np.repeat(np.cumsum(used) - used, used) + np.repeat(width - used, used)
    timestamps = np.zeros((len(windows), width), dtype=np.int64)
    features = np.zeros((len(windows), width, rows.shape[1]), dtype=np.float64)
    timestamps[window_of, column] = stamps
    features[window_of, column] = rows
    return timestamps, features, used


def _ttl(policy: AdaptiveTtl | None, forecast: WindowForecast, horizon: int) -> int | None:
    """The forecast's own TTL under ``policy`` (``app/cache/ttl.py``); None for the fixed one."""
    if policy is None:
        return None
    h = horizon - 1
    mean, lower, upper = forecast.mean[h, 0], forecast.lower[h, 0], forecast.upper[h, 0]
    return forecast_ttl(policy, forecast.dt_s * 1000.0, horizon, float(mean), float(lower), float(upper))


# A stored answer's fields that a cache hit changes, as the answers are written (``_answers``, the same
# bytes whichever way): no string of an answer can hold them, since its quotes are escaped.
_FRESH = b',"cached":false,"processing_time_ms":'
_AGAIN = b',"cached":true,"processing_time_ms":'
_AFTER = b',"similar_patterns":'


def _from_cache(stored: bytes, elapsed_ms: bytes) -> bytes:
    """A stored PredictionResult, answered again: marked cached, with this request's processing time
    (``elapsed_ms``, as JSON)."""
    at = stored.find(_FRESH)
    end = stored.find(_AFTER, at)
    if at < 0 or end < 0:  # not of the form this module writes: read and written again
        result: dict[str, Any] = orjson.loads(stored)
        result["cached"] = True
        result["processing_time_ms"] = orjson.loads(elapsed_ms)
        return dumps(result)
    return b"%s%s%s%s" % (stored[:at], _AGAIN, elapsed_ms, stored[end:])


def _elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()``): a result's processing_time_ms."""
    return round((time.perf_counter() - start) * 1000.0, 3)


def _elapsed(start: float) -> bytes:
    """``_elapsed_ms`` as JSON."""
    return orjson.dumps(_elapsed_ms(start))


# Groups of fewer windows than this are written as dicts, one orjson call each: below it, the fixed cost of
# writing a group per pass (a dozen orjson calls and splits) outweighs what it saves per window
PER_PASS_FROM = 64
_HEX = re.compile(r"[0-9a-f]*")
_END = b"\0"  # after each answer of a group written in one piece: orjson never writes a raw NUL


def _json(a: np.ndarray) -> bytes:
    """``a`` as JSON, its numbers as float64 (what ``tolist()`` makes of them, written the same way)."""
    return orjson.dumps(np.ascontiguousarray(a, dtype=np.float64), option=orjson.OPT_SERIALIZE_NUMPY)


def _each(a: np.ndarray) -> list[bytes]:
    """The JSON of each ``a[i]`` of a (k,) array, or the numbers (between the brackets) of each row of a
    (k, D) one, or of each (h, D) block of a (k, h, D) one, between its outer brackets and theirs: one
    orjson call for them all, cut where its brackets say (numbers hold none)."""
    if a.ndim == 1:
        return _json(a)[1:-1].split(b",")
    if a.ndim == 2:
        return _json(a)[2:-2].split(b"],[")
    return _json(a)[3:-3].split(b"]],[[")


def _answers(
    windows: Sequence[Window],
    forecasts: Sequence[WindowForecast],
    elapsed_ms: float,
    keys: Sequence[str],
    patterns: Patterns | None = None,
) -> list[bytes]:
    """The serialized PredictionResult of each window, in order, stored under its cache key.

    A forward pass's windows of one horizon are written together (``_group``) when they are many; a few
    (a single prediction) as one dict each, the form the contract was written in: the two are the same
    bytes (tests/app/api/test_answers.py)."""
    answers: list[bytes] = [b""] * len(windows)
    nearest = None
    if patterns is not None:
        since = [int(w.timestamps[0]) for w in windows]
        nearest = patterns.nearest([w.flow_key for w in windows], since, forecasts)
    groups: dict[tuple[int, int], list[int]] = {}  # (forward pass, horizon) -> positions
    for j, (forecast, window) in enumerate(zip(forecasts, windows, strict=True)):
        groups.setdefault((id(forecast.batch), window.horizon), []).append(j)
    for (_, h), members in groups.items():
        if len(members) >= PER_PASS_FROM:
            group = _group(windows, forecasts, elapsed_ms, keys, members, h, patterns, nearest)
            for j, answer in zip(members, group, strict=True):
                answers[j] = answer
            continue
        numbers = read_numbers([forecasts[j] for j in members], [h] * len(members))
        for m, (steps_j, confidence, lower, upper, step_ms) in numbers:
            j = members[m]
            window, predictor, n = windows[j], forecasts[j].predictor, len(windows[j].timestamps)
            similar, extra = _patterns_of(window, forecasts[j], h, patterns, nearest, j)
            answers[j] = result_body(
                prediction_id(keys[j]),
                window.flow_key,
                predictor,
                h,
                n,
                elapsed_ms,
                similar,
                extra,
                steps_j,
                confidence,
                lower,
                upper,
                step_ms,
            )
    return answers


def _patterns_of(
    window: Window,
    forecast: WindowForecast,
    h: int,
    patterns: Patterns | None,
    nearest: list[list[Any]] | None,
    j: int,
) -> tuple[list[str], dict[str, float]]:
    """A window's similar_patterns, and what pattern memory adds to its metadata."""
    similar = _similar_patterns(window, forecast)
    if patterns is not None and nearest is not None and nearest[j]:
        return patterns.names(nearest[j], similar), patterns.metadata(nearest[j], forecast, h)
    return similar, {}


def _group(
    windows: Sequence[Window],
    forecasts: Sequence[WindowForecast],
    elapsed_ms: float,
    keys: Sequence[str],
    members: list[int],
    h: int,
    patterns: Patterns | None,
    nearest: list[list[Any]] | None,
) -> list[bytes]:
    """The answers of ``windows[j]`` for j in ``members``, which share a forward pass and horizon ``h``:
    orjson writes the numbers of all of them at once, each cut at its brackets; the pieces and the
    constant parts are laid out, answer after answer, by slice assignments, joined in one call and cut
    again at ``_END``: no Python step per window but list comprehensions."""
    k = len(members)
    first = forecasts[members[0]]
    batch, predictor = first.batch, first.predictor
    indices = [forecasts[j].index for j in members]
    rows: list[int] | slice = indices
    if indices == list(range(indices[0], indices[0] + k)):  # the usual case, as a slice: views
        rows = slice(indices[0], indices[0] + k)
    mean = batch.mean[rows, :h]
    step_ms = np.asarray(batch.dt_s[rows] * 1000.0, dtype=np.float64)  # as tolist() made them
    n = np.array([len(windows[j].timestamps) for j in members], dtype=np.float64)
    similar, extra = [b"[]"] * k, [b""] * k
    odd = [
        m for m, j in enumerate(members) if windows[j].pattern_ids.count(None) != len(windows[j].pattern_ids)
    ]
    if nearest is not None:
        odd = sorted({*odd, *(m for m, j in enumerate(members) if nearest[j])})
    for m in odd:  # labelled contexts, or pattern memory's matches: uncommon
        j = members[m]
        found, more = _patterns_of(windows[j], forecasts[j], h, patterns, nearest, j)
        if found:
            similar[m] = dumps(found)
        if more:
            extra[m] = b"," + dumps(more)[1:-1]
    flow_keys = [windows[j].flow_key for j in members]
    if not _HEX.fullmatch("".join(flow_keys)):  # something to escape (not the usual hex)
        flow_keys = [dumps(f)[1:-1].decode() for f in flow_keys]
    pieces: tuple[bytes | list[bytes], ...] = (
        b'{"prediction_id":"',
        "\0".join([keys[j][-32:] for j in members]).encode().split(b"\0"),  # prediction_ids
        b'","flow_key":"',
        "\0".join(flow_keys).encode().split(b"\0"),
        b'","predicted_context":[',
        _each(mean[:, h - 1]),
        b'],"horizon":%d,"steps":[[' % h,
        _each(mean),
        b']],"confidence":',
        _each(batch.confidence[rows, h - 1]),
        b',"lower":[',
        _each(batch.lower[rows, h - 1]),
        b'],"upper":[',
        _each(batch.upper[rows, h - 1]),
        b'],"model_used":%s,"model_version":%s,"cached":false,"processing_time_ms":%s,"similar_patterns":'
        % (dumps(predictor.kind), dumps(predictor.version), orjson.dumps(elapsed_ms)),
        similar,
        b',"metadata":{"step_ms":',
        _each(step_ms),
        b',"horizon_ms":',
        _each(step_ms * h),
        b',"window_length":',
        _each(n),
        b',"contexts_used":',
        _each(np.minimum(n, predictor.seq_len)),
        extra,
        b"}}" + _END,
    )
    parts: list[bytes] = [b""] * (len(pieces) * k)
    for i, piece in enumerate(pieces):
        parts[i :: len(pieces)] = [piece] * k if isinstance(piece, bytes) else piece
    return b"".join(parts).split(_END)[:-1]


def _similar_patterns(window: Window, forecast: WindowForecast) -> list[str]:
    """pattern_ids of the window's contexts nearest to the predicted context, nearest first.

    Distances are taken where the model compares contexts: in the scaler's transformed space (logs of
    the heavy-tailed features), each feature divided by its spread over this window, so that a 1 ms
    latency change and a 1 % loss change weigh what they mean for this flow.
    """
    pattern_ids = window.pattern_ids
    if pattern_ids.count(None) == len(pattern_ids):  # the usual case, in one pass in C
        return []
    labelled = [i for i, p in enumerate(pattern_ids) if p is not None]
    scaler = forecast.predictor.scaler
    y = scaler.transform(window.features)  # (n, D)
    spread = np.maximum(y.std(axis=0), scaler.min_scale)  # (D,)
    distance = (((y[labelled] - forecast.loc[window.horizon - 1]) / spread) ** 2).sum(axis=1)  # (L,)
    nearest: list[str] = []
    for j in np.argsort(distance, kind="stable"):
        pattern = pattern_ids[labelled[j]]
        if pattern is not None and pattern not in nearest:
            nearest.append(pattern)
            if len(nearest) == SIMILAR_PATTERNS:
                break
    return nearest
