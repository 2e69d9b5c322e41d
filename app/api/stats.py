"""GET /v1/stats: this replica's uptime, predictions, cache hit rate, latency percentiles, model, memory."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from app.api.deps import EngineDep, MetricsDep, SettingsDep
from app.engine import Engine
from app.metrics import Metrics, gpu_memory, resident_memory_bytes
from app.schemas import CacheStats, EngineStatsOut, LatencyStats, MemoryStats, Stats

router = APIRouter(prefix="/v1/stats", tags=["health"])

TIERS = ("memory", "redis")


@router.get("", response_model=Stats)
async def stats(request: Request, engine: EngineDep, metrics: MetricsDep, settings: SettingsDep) -> Stats:
    """Performance figures of this replica since it started, read from its metrics.

    One replica's: behind a load balancer each answer comes from whichever replica took the request;
    Prometheus (`/metrics`) sums them across replicas."""
    by_model = {kind: int(metrics.value(metrics.predictions, {"model": kind})) for kind in engine.predictors}
    cache = _cache(metrics)
    device: str = request.app.state.device
    return Stats(
        uptime_s=round(time.time() - metrics.started, 3),
        predictions=sum(by_model.values()) + cache.hits,
        predictions_by_model=by_model,
        cached_predictions=cache.hits,
        latency=_latency(metrics),
        cache=cache,
        engine=_engine(engine),
        default_model=settings.model,
        models={kind: predictor.version for kind, predictor in engine.predictors.items()},
        device=device,
        memory=_memory(device),
        forecasts=None if request.app.state.forecasts is None else request.app.state.forecasts.summary(),
    )


def _latency(metrics: Metrics) -> LatencyStats | None:
    percentiles = metrics.latencies.percentiles((50, 90, 99, 100))
    if percentiles is None:
        return None
    p50, p90, p99, most = (round(p * 1000.0, 3) for p in percentiles)
    return LatencyStats(windows=len(metrics.latencies), p50_ms=p50, p90_ms=p90, p99_ms=p99, max_ms=most)


def _cache(metrics: Metrics) -> CacheStats:
    hits = {t: int(metrics.value(metrics.cache_requests, {"tier": t, "result": "hit"})) for t in TIERS}
    misses = int(metrics.value(metrics.cache_requests, {"tier": "memory", "result": "miss"}))
    lookups = hits["memory"] + misses  # every lookup goes to the in-process tier first
    total = sum(hits.values())
    return CacheStats(
        lookups=lookups,
        hits=total,
        hit_rate=round(total / lookups, 4) if lookups else None,
        hits_by_tier=hits,
        errors=int(metrics.value(metrics.cache_errors, {"tier": "redis"})),
        entries=int(metrics.value(metrics.cache_entries, {"tier": "memory"})),
    )


def _engine(engine: Engine) -> EngineStatsOut:
    passes = engine.stats.forward_passes
    return EngineStatsOut(
        queue_depth=engine.queued,
        queue_capacity=engine.queue_size,
        forward_passes=passes,
        mean_batch_size=round(engine.stats.windows / passes, 2) if passes else None,
        shed_windows=engine.stats.rejected,
    )


def _memory(device: str) -> MemoryStats:
    gpu = gpu_memory(device)
    if gpu is None:
        return MemoryStats(rss_bytes=resident_memory_bytes())
    allocated, reserved, total = gpu
    return MemoryStats(
        rss_bytes=resident_memory_bytes(),
        gpu_allocated_bytes=allocated,
        gpu_reserved_bytes=reserved,
        gpu_total_bytes=total,
    )
