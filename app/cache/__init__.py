"""The prediction cache, chosen by URL: ``memory://`` (in-process only) or ``redis://host:port/db``.

``create_cache`` builds the front (``TieredCache``): the bounded in-process tier, and in front of Redis
when the URL names one. Every backend speaks the small async interface of ``base.Cache``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from app.cache.base import Cache
from app.cache.keys import prediction_id, prediction_key
from app.cache.memory import STRATEGIES, MemoryCache
from app.cache.metrics import CacheMetrics
from app.cache.tiered import TieredCache

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from redis.asyncio import Redis

__all__ = [
    "STRATEGIES",
    "Cache",
    "CacheMetrics",
    "MemoryCache",
    "TieredCache",
    "create_cache",
    "prediction_id",
    "prediction_key",
]

REDIS_SCHEMES = ("redis", "rediss", "unix")


def create_cache(
    url: str = "memory://",
    *,
    max_entries: int = 50_000,
    strategy: str = "lru",
    ttl_ms: int = 60_000,
    timeout_ms: int = 50,
    client: Redis | None = None,
    prefix: str | None = None,
    registry: CollectorRegistry | None = None,
) -> TieredCache:
    """The cache that ``url`` names (its scheme picks the backend); not connected yet: ``async with`` it.

    ``client`` is a ready-made redis client to use instead of opening one from the URL (so that tests
    and the app can share a connection); ``prefix`` replaces the Redis keys' ``cpe:pred:``; the tiers'
    metrics go on ``registry`` (a registry of their own when None).
    """
    metrics = CacheMetrics(registry)
    memory = MemoryCache(max_entries=max_entries, ttl_ms=ttl_ms, strategy=strategy, metrics=metrics)
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return TieredCache(memory, metrics=metrics)
    if scheme in REDIS_SCHEMES:
        from app.cache.redis import PREFIX, RedisCache

        shared = RedisCache(
            url,
            client=client,
            ttl_ms=ttl_ms,
            timeout_ms=timeout_ms,
            prefix=PREFIX if prefix is None else prefix,
            metrics=metrics,
        )
        return TieredCache(memory, shared, metrics=metrics)
    # only the scheme: the rest of the URL may hold a password
    raise ValueError(f"unsupported cache URL scheme {scheme!r}; expected memory:// or redis://host:port/db")
