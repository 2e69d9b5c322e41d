"""POST /v1/predict and /v1/predict/batch: forecasts of flows' next contexts."""

from __future__ import annotations

import asyncio
import time
from itertools import chain
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response

from app.api.deps import CacheDep, EngineDep, LimitsDep, parse_body
from app.api.errors import ERROR_RESPONSES
from app.api.openapi import json_body
from app.api.responses import dumps
from app.cache import Cache, prediction_key
from app.engine import Engine, WindowForecast
from app.schemas import (
    BatchPredictRequest,
    BatchPredictResult,
    ContextVector,
    D,
    Limits,
    PredictionResult,
    PredictRequest,
)

router = APIRouter(prefix="/v1/predict", tags=["predict"])

SIMILAR_PATTERNS = 3


@router.post(
    "",
    response_model=PredictionResult,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(PredictRequest),
)
async def predict(request: Request, engine: EngineDep, limits: LimitsDep, cache: CacheDep) -> Response:
    """Forecast one flow's context `horizon` steps ahead from its recent window.

    The same window asked again of the same model version is answered from the cache (`cached: true`)."""
    start = time.perf_counter()
    req = await parse_body(request, PredictRequest, limits)
    return Response(await predict_one(req, engine, cache, limits, start), media_type="application/json")


async def predict_one(
    req: PredictRequest, engine: Engine, cache: Cache, limits: Limits, start: float
) -> bytes:
    """The serialized PredictionResult of ``req``: from the cache, else from the engine (then stored).

    Shared by POST /v1/predict and the WebSocket stream /v1/stream/predict.
    """
    kind = req.model or limits.default_model
    timestamps, features = _arrays(req.contexts)
    stored = await cache.get(_key(engine.predictors[kind].version, req, timestamps, features))
    if stored is not None:
        return dumps(_from_cache(stored, start))
    forecast = await engine.predict(kind, timestamps, features)
    body = dumps(_result(req, features, forecast, start))
    await cache.set(_key(forecast.predictor.version, req, timestamps, features), body)
    return body


@router.post(
    "/batch",
    response_model=BatchPredictResult,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(BatchPredictRequest),
)
async def predict_batch(request: Request, engine: EngineDep, limits: LimitsDep, cache: CacheDep) -> Response:
    """Forecast many flows at once; the answers come in the order of the requests."""
    start = time.perf_counter()
    requests = (await parse_body(request, BatchPredictRequest, limits)).requests
    windows = [(req.model or limits.default_model, *_arrays(req.contexts)) for req in requests]
    versions = {kind: predictor.version for kind, predictor in engine.predictors.items()}
    keys = [_key(versions[kind], req, t, f) for req, (kind, t, f) in zip(requests, windows, strict=True)]
    stored = await cache.get_many(keys)  # one round-trip for the whole batch
    misses = [i for i, value in enumerate(stored) if value is None]
    forecasts = await asyncio.gather(*engine.submit_many([windows[i] for i in misses])) if misses else []
    results: list[bytes] = [b""] * len(requests)  # each serialized once, the fresh ones also stored
    fresh = []
    for i, forecast in zip(misses, forecasts, strict=True):
        (_, timestamps, features), req = windows[i], requests[i]
        results[i] = dumps(_result(req, features, forecast, start))
        fresh.append((_key(forecast.predictor.version, req, timestamps, features), results[i]))
    if fresh:
        await cache.set_many(fresh)  # one round-trip too
    for i, value in enumerate(stored):
        if value is not None:
            results[i] = dumps(_from_cache(value, start))
    return Response(b'{"results":[%s]}' % b",".join(results), media_type="application/json")


def _arrays(contexts: list[ContextVector]) -> tuple[np.ndarray, np.ndarray]:
    """A window as the engine takes it: timestamps (n,) int64 and features (n, D) float64."""
    n = len(contexts)
    timestamps = np.array([c["timestamp"] for c in contexts], dtype=np.int64)
    # one flat pass over the floats: faster than np.array on the nested lists
    flat = chain.from_iterable(c["features"] for c in contexts)
    return timestamps, np.fromiter(flat, dtype=np.float64, count=n * D).reshape(n, D)


def _key(version: str, req: PredictRequest, timestamps: np.ndarray, features: np.ndarray) -> str:
    """The cache key of this request's prediction by the model ``version``."""
    pattern_ids = [c.get("pattern_id") for c in req.contexts]
    return prediction_key(version, req.flow_key, req.horizon, timestamps, features, pattern_ids)


def _from_cache(stored: bytes, start: float) -> dict[str, Any]:
    """A stored PredictionResult, answered again: marked cached, with this request's processing time."""
    result: dict[str, Any] = orjson.loads(stored)
    result["cached"] = True
    result["processing_time_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
    return result


def _result(
    req: PredictRequest, features: np.ndarray, forecast: WindowForecast, start: float
) -> dict[str, Any]:
    """The PredictionResult of one request, as a dict that orjson writes (numpy arrays included)."""
    h, n = req.horizon, len(req.contexts)
    step_ms = forecast.dt_s * 1000.0
    similar = _similar_patterns(req.contexts, features, forecast, h)
    return {
        "flow_key": req.flow_key,
        "predicted_context": forecast.mean[h - 1],
        "horizon": h,
        "steps": forecast.mean[:h],
        "confidence": float(forecast.confidence[h - 1]),
        "lower": forecast.lower[h - 1],
        "upper": forecast.upper[h - 1],
        "model_used": forecast.predictor.kind,
        "model_version": forecast.predictor.version,
        "cached": False,
        "processing_time_ms": round((time.perf_counter() - start) * 1000.0, 3),
        "similar_patterns": similar,
        "metadata": {
            "step_ms": step_ms,
            "horizon_ms": step_ms * h,
            "window_length": float(n),
            "contexts_used": float(min(n, forecast.predictor.seq_len)),
        },
    }


def _similar_patterns(
    contexts: list[ContextVector], features: np.ndarray, forecast: WindowForecast, horizon: int
) -> list[str]:
    """pattern_ids of the window's contexts nearest to the predicted context, nearest first.

    Distances are taken where the model compares contexts: in the scaler's transformed space (logs of
    the heavy-tailed features), each feature divided by its spread over this window, so that a 1 ms
    latency change and a 1 % loss change weigh what they mean for this flow.
    """
    labelled = [i for i, c in enumerate(contexts) if c.get("pattern_id") is not None]
    if not labelled:
        return []
    scaler = forecast.predictor.scaler
    y = scaler.transform(features)  # (n, D)
    spread = np.maximum(y.std(axis=0), scaler.min_scale)  # (D,)
    distance = (((y[labelled] - forecast.loc[horizon - 1]) / spread) ** 2).sum(axis=1)  # (L,)
    nearest: list[str] = []
    for j in np.argsort(distance, kind="stable"):
        pattern = contexts[labelled[j]]["pattern_id"]
        if pattern is not None and pattern not in nearest:
            nearest.append(pattern)
            if len(nearest) == SIMILAR_PATTERNS:
                break
    return nearest
