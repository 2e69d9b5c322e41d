"""GET /v1/stats: this replica's uptime, predictions, cache hit rate, latency percentiles, model, memory."""

from __future__ import annotations

import time

from fastapi import APIRouter

from app.api.deps import ServicesDep
from app.cache.metrics import TIERS, CacheMetrics
from app.engine import Engine
from app.engine_metrics import LatencyRing
from app.metrics import gpu_memory, resident_memory_bytes, sample_value
from app.schemas import CacheStats, EngineStatsOut, LatencyStats, MemoryStats, Stats

router = APIRouter(prefix="/v1/stats", tags=["health"])


@router.get("", response_model=Stats)
async def stats(services: ServicesDep) -> Stats:
    """Performance figures of this replica since it started, read from its metrics.

    One replica's: behind a load balancer each answer comes from whichever replica took the request;
    Prometheus (`/metrics`) sums them across replicas."""
    engine = services.engine
    predictions = engine.metrics.predictions
    by_model = {kind: int(sample_value(predictions, {"model": kind})) for kind in engine.predictors}
    cache = _cache(services.cache.metrics)
    return Stats(
        uptime_s=round(time.time() - services.started, 3),
        predictions=sum(by_model.values()) + cache.hits,
        predictions_by_model=by_model,
        cached_predictions=cache.hits,
        latency=_latency(engine.metrics.latencies),
        cache=cache,
        engine=_engine(engine),
        default_model=services.settings.model,
        models={kind: predictor.version for kind, predictor in engine.predictors.items()},
        device=services.device,
        memory=_memory(services.device),
        forecasts=None if services.forecasts is None else services.forecasts.summary(),
    )


def _latency(latencies: LatencyRing) -> LatencyStats | None:
    percentiles = latencies.percentiles((50, 90, 99, 100))
    if percentiles is None:
        return None
    p50, p90, p99, most = (round(p * 1000.0, 3) for p in percentiles)
    return LatencyStats(windows=len(latencies), p50_ms=p50, p90_ms=p90, p99_ms=p99, max_ms=most)


def _cache(metrics: CacheMetrics) -> CacheStats:
    hits = {t: int(sample_value(metrics.requests, {"tier": t, "result": "hit"})) for t in TIERS}
    misses = int(sample_value(metrics.requests, {"tier": "memory", "result": "miss"}))
    lookups = hits["memory"] + misses  # every lookup goes to the in-process tier first
    total = sum(hits.values())
    return CacheStats(
        lookups=lookups,
        hits=total,
        hit_rate=round(total / lookups, 4) if lookups else None,
        hits_by_tier=hits,
        errors=int(sample_value(metrics.errors, {"tier": "redis"})),
        entries=int(sample_value(metrics.entries, {"tier": "memory"})),
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
