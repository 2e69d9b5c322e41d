"""The cache's metrics, shared by its tiers: lookups and errors per tier, entries held, Redis up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

TIERS = ("memory", "redis")


class CacheMetrics:
    """The cache's collectors, on ``registry`` (a registry of their own when None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.requests = Counter(
            "cpe_cache_requests",
            "Prediction cache lookups, per tier and result.",
            ["tier", "result"],
            registry=registry,
        )
        self.errors = Counter(
            "cpe_cache_errors",
            "Failed round-trips to a cache tier (the request is answered without that tier).",
            ["tier"],
            registry=registry,
        )
        self.entries = Gauge(
            "cpe_cache_entries", "Entries held by a cache tier.", ["tier"], registry=registry
        )
        self.redis_up = Gauge(
            "cpe_redis_up",
            "1 while the Redis cache tier answers; 0 while it does not or when none is configured.",
            registry=registry,
        )
