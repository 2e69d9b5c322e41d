"""The interface of every prediction cache tier, and of the front that composes them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Self


class Cache(ABC):
    """Serialized predictions by key, each kept for the cache's TTL; use as ``async with cache:``.

    A cache never raises because its storage is unavailable: a lookup then misses and a store is
    dropped, and ``problem`` says why. The request path can always call it.
    """

    async def connect(self) -> None:  # noqa: B027 (an optional hook: tiers without connections skip it)
        """Open what the tier needs (connections); a tier that cannot connect starts degraded."""

    async def disconnect(self) -> None:  # noqa: B027
        """Release what ``connect`` opened."""

    @abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The stored value of each key, ``None`` for a miss, in the order of ``keys``."""

    @abstractmethod
    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_ms: Sequence[int] | None = None) -> None:
        """Store each ``(key, value)`` for the TTL (each its own ``ttl_ms[i]`` when given, an adaptive TTL:
        ``app/cache/ttl.py``), replacing what a key held."""

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many((key,)))[0]

    async def set(self, key: str, value: bytes, ttl_ms: int | None = None) -> None:
        await self.set_many(((key, value),), None if ttl_ms is None else (ttl_ms,))

    @property
    def problem(self) -> str | None:
        """Why the cache works only in part now (e.g. a tier is unreachable); ``None`` when it is whole."""
        return None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()
