"""POST /v1/predict and /v1/predict/batch: forecasts of flows' next contexts."""

from __future__ import annotations

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
from app.cache import Cache, prediction_id, prediction_key
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
    key = _key(version, window)
    stored = await cache.get(key)
    if stored is not None:
        if recent is not None:
            recent.remember(prediction_id(key), window)
        return dumps(_from_cache(stored, start))
    forecast = await engine.predict(kind, window.timestamps, window.features, window.horizon)
    if forecast.predictor.version != version:  # swapped meanwhile: the answer is the new version's
        key = _key(forecast.predictor.version, window)
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
    keys = [_key(versions[kind], window) for kind, window in zip(kinds, windows, strict=True)]
    stored = await cache.get_many(keys)  # one round-trip for the whole batch
    misses = [i for i, value in enumerate(stored) if value is None]
    jobs = [(kinds[i], windows[i].timestamps, windows[i].features) for i in misses]
    steps = max(windows[i].horizon for i in misses) if misses else None
    forecasts = await engine.predict_many(jobs, steps) if misses else []
    results: list[bytes] = [b""] * len(windows)  # each serialized once, the fresh ones also stored
    for i, forecast in zip(misses, forecasts, strict=True):
        version = forecast.predictor.version  # the key is the one looked up, unless the model was swapped
        if version != versions[kinds[i]]:
            keys[i] = _key(version, windows[i])
    # one request, one processing time for the answers it computed
    answers = _answers(
        [windows[i] for i in misses],
        forecasts,
        _elapsed_ms(start),
        [keys[i] for i in misses],
        services.patterns,
    )
    fresh = []
    for i, answer in zip(misses, answers, strict=True):
        results[i] = answer
        fresh.append((keys[i], answer))
    ttl = services.ttl
    ttls = (
        None
        if ttl is None
        else [_ttl(ttl, f, windows[i].horizon) or 0 for i, f in zip(misses, forecasts, strict=True)]
    )
    recent = services.recent
    if recent is not None:
        recent.remember_many(zip(map(prediction_id, keys), windows, strict=True))
    if fresh:
        await cache.set_many(fresh, ttls)  # one round-trip too
    for i, value in enumerate(stored):
        if value is not None:
            results[i] = dumps(_from_cache(value, start))
    for i in unknown:  # a per-item error in place of the result, the others in order
        results.insert(i, unknown_flow_item(asked[i].flow_key))
    return Response(b'{"results":[%s]}' % b",".join(results), media_type="application/json")


def _ttl(policy: AdaptiveTtl | None, forecast: WindowForecast, horizon: int) -> int | None:
    """The forecast's own TTL under ``policy`` (``app/cache/ttl.py``); None for the fixed one."""
    if policy is None:
        return None
    h = horizon - 1
    mean, lower, upper = forecast.mean[h, 0], forecast.lower[h, 0], forecast.upper[h, 0]
    return forecast_ttl(policy, forecast.dt_s * 1000.0, horizon, float(mean), float(lower), float(upper))


def _key(version: str, window: Window) -> str:
    """The cache key of this window's prediction by the model ``version``."""
    return prediction_key(
        version, window.flow_key, window.horizon, window.timestamps, window.features, window.pattern_ids
    )


def _from_cache(stored: bytes, start: float) -> dict[str, Any]:
    """A stored PredictionResult, answered again: marked cached, with this request's processing time."""
    result: dict[str, Any] = orjson.loads(stored)
    result["cached"] = True
    result["processing_time_ms"] = _elapsed_ms(start)
    return result


def _elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()``): a result's processing_time_ms."""
    return round((time.perf_counter() - start) * 1000.0, 3)


def _answers(
    windows: Sequence[Window],
    forecasts: Sequence[WindowForecast],
    elapsed_ms: float,
    keys: Sequence[str],
    patterns: Patterns | None = None,
) -> list[bytes]:
    """The serialized PredictionResult of each window, in order, stored under its cache key; the numbers
    are read per forward pass (``read_numbers``)."""
    answers: list[bytes] = [b""] * len(windows)
    horizons = [window.horizon for window in windows]
    nearest = None
    if patterns is not None:
        since = [int(w.timestamps[0]) for w in windows]
        nearest = patterns.nearest([w.flow_key for w in windows], since, forecasts)
    for j, (steps_j, confidence, lower, upper, step_ms) in read_numbers(forecasts, horizons):
        window, predictor, h, n = windows[j], forecasts[j].predictor, horizons[j], len(windows[j].timestamps)
        similar = _similar_patterns(window, forecasts[j])
        extra: dict[str, float] = {}
        if patterns is not None and nearest is not None:
            similar = patterns.names(nearest[j], similar)
            extra = patterns.metadata(nearest[j], forecasts[j], h)
        answers[j] = dumps(
            {
                "prediction_id": prediction_id(keys[j]),
                "flow_key": window.flow_key,
                "predicted_context": steps_j[h - 1],
                "horizon": h,
                "steps": steps_j,
                "confidence": confidence,
                "lower": lower,
                "upper": upper,
                "model_used": predictor.kind,
                "model_version": predictor.version,
                "cached": False,
                "processing_time_ms": elapsed_ms,
                "similar_patterns": similar,
                "metadata": {
                    "step_ms": step_ms,
                    "horizon_ms": step_ms * h,
                    "window_length": float(n),
                    "contexts_used": float(min(n, predictor.seq_len)),
                    **extra,
                },
            }
        )
    return answers


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
