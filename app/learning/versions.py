"""Model versions that went live: their history, their weights (safetensors blobs), the current one.

``MemoryVersions`` keeps them in this process; ``RedisVersions`` in Redis, where every replica finds the
same history and can load any kept version's weights (``<prefix>blob:<version>``), the current version
per kind (``<prefix>current:<kind>``) and the history (``<prefix>history:<kind>``, newest first). The
weights of the last ``keep`` versions are kept (for rollback); the shipped checkpoints stay loadable
from disk whatever ``keep`` is.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from redis.asyncio import Redis

HISTORY_LIMIT = 100  # history entries kept per kind


@dataclass
class VersionRecord:
    """One version going live (the wire form of ``schemas.VersionInfo``)."""

    version: str
    kind: str
    source: str  # shipped | online | rollback
    parent: str | None = None
    activated_at: float = field(default_factory=time.time)
    validation: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> VersionRecord:
        return cls(**orjson.loads(data))


class VersionStore(ABC):
    """Where versions and their weights live."""

    def __init__(self, shipped: dict[str, bytes], keep: int) -> None:
        self.shipped = shipped  # version -> blob of the checkpoints the service started with
        self.keep = keep

    @abstractmethod
    async def record(self, record: VersionRecord, blob: bytes | None) -> None:
        """Make ``record`` the current version of its kind, keeping ``blob`` (None: already kept)."""

    @abstractmethod
    async def _stored_blob(self, version: str) -> bytes | None: ...

    @abstractmethod
    async def history(self, kind: str) -> list[VersionRecord]:
        """The kind's versions as they went live, newest (the current one) first."""

    @abstractmethod
    async def current(self, kind: str) -> str | None:
        """The version that should serve ``kind`` now, or None when none went live through the store."""

    async def blob(self, version: str) -> bytes | None:
        """The weights of ``version`` if kept (or shipped), else None."""
        return self.shipped.get(version) or await self._stored_blob(version)


class MemoryVersions(VersionStore):
    def __init__(self, shipped: dict[str, bytes], keep: int) -> None:
        super().__init__(shipped, keep)
        self._history: dict[str, list[VersionRecord]] = {}
        self._blobs: dict[str, bytes] = {}  # insertion order = age

    async def record(self, record: VersionRecord, blob: bytes | None) -> None:
        self._history.setdefault(record.kind, []).insert(0, record)
        del self._history[record.kind][HISTORY_LIMIT:]
        if blob is not None:
            self._blobs.pop(record.version, None)
            self._blobs[record.version] = blob
            while len(self._blobs) > self.keep:
                del self._blobs[next(iter(self._blobs))]

    async def _stored_blob(self, version: str) -> bytes | None:
        return self._blobs.get(version)

    async def history(self, kind: str) -> list[VersionRecord]:
        return list(self._history.get(kind, []))

    async def current(self, kind: str) -> str | None:
        history = self._history.get(kind)
        return history[0].version if history else None


class RedisVersions(VersionStore):
    """Versions in Redis under ``prefix``, shared by every replica."""

    def __init__(self, client: Redis, prefix: str, shipped: dict[str, bytes], keep: int) -> None:
        super().__init__(shipped, keep)
        self.client = client
        self.prefix = prefix

    async def record(self, record: VersionRecord, blob: bytes | None) -> None:
        kept = f"{self.prefix}blobs"  # versions with a blob, oldest first
        pipe = self.client.pipeline(transaction=True)
        if blob is not None:
            pipe.set(f"{self.prefix}blob:{record.version}", blob)
            pipe.lrem(kept, 0, record.version)
            pipe.rpush(kept, record.version)
        pipe.lpush(f"{self.prefix}history:{record.kind}", record.to_json())
        pipe.ltrim(f"{self.prefix}history:{record.kind}", 0, HISTORY_LIMIT - 1)
        pipe.set(f"{self.prefix}current:{record.kind}", record.version)
        await pipe.execute()
        while await self.client.llen(kept) > self.keep:  # type: ignore[misc]
            old = await self.client.lpop(kept)  # type: ignore[misc]
            if old is not None:
                await self.client.delete(f"{self.prefix}blob:{_text(old)}")

    async def _stored_blob(self, version: str) -> bytes | None:
        value: Any = await self.client.get(f"{self.prefix}blob:{version}")
        return value  # type: ignore[no-any-return]

    async def history(self, kind: str) -> list[VersionRecord]:
        entries = await self.client.lrange(f"{self.prefix}history:{kind}", 0, -1)  # type: ignore[misc]
        return [VersionRecord.from_json(e) for e in entries]

    async def current(self, kind: str) -> str | None:
        value = await self.client.get(f"{self.prefix}current:{kind}")
        return None if value is None else _text(value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
