"""The front of the prediction cache: the in-process tier in front of an optional shared one (Redis)."""

from __future__ import annotations

from collections.abc import Sequence

from app.cache.base import Cache
from app.cache.memory import MemoryCache
from app.cache.metrics import CacheMetrics


class TieredCache(Cache):
    """Lookups go to the in-process tier first, then to the shared tier; stores go to both.

    A hit in the shared tier fills the in-process one. That copy gets a full TTL of its own, so a value
    may be served up to twice the TTL after it was computed: harmless, since a key names everything the
    value depends on (model version and window content), so the value can only be stale in storage, never
    in meaning.
    """

    def __init__(
        self, memory: MemoryCache, shared: Cache | None = None, *, metrics: CacheMetrics | None = None
    ) -> None:
        self.memory = memory
        self.shared = shared
        self.metrics = metrics or CacheMetrics()  # the tiers', for GET /v1/stats

    async def connect(self) -> None:
        if self.shared is not None:
            await self.shared.connect()

    async def disconnect(self) -> None:
        if self.shared is not None:
            await self.shared.disconnect()

    @property
    def problem(self) -> str | None:
        return None if self.shared is None else self.shared.problem

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = await self.memory.get_many(keys)
        if self.shared is None:
            return values
        missing = [i for i, value in enumerate(values) if value is None]
        if not missing:
            return values
        found = await self.shared.get_many([keys[i] for i in missing])
        fill = []
        for i, value in zip(missing, found, strict=True):
            if value is not None:
                values[i] = value
                fill.append((keys[i], value))
        if fill:
            await self.memory.set_many(fill)
        return values

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_ms: Sequence[int] | None = None) -> None:
        await self.memory.set_many(items, ttl_ms)
        if self.shared is not None:
            await self.shared.set_many(items, ttl_ms)
