"""The bus's front: one backend subscription per channel per process, fanned out to local subscribers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter

from app.bus.base import BusBackend
from app.bus.queue import DropOldestQueue, QueueClosed

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("cpe.bus")

REDIS_SCHEMES = ("redis", "rediss", "unix")


def backend_for(url: str, client: Redis | None = None, error_counter: Counter | None = None) -> BusBackend:
    """The backend that ``url``'s scheme names, imported only when chosen; ``error_counter`` counts its
    transport's failures."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from app.bus.memory import MemoryBackend

        return MemoryBackend()
    if scheme in REDIS_SCHEMES:
        from app.bus.redis import RedisBackend

        return RedisBackend(url, client=client, error_counter=error_counter)
    # only the scheme: the rest of the URL may hold a password
    raise ValueError(f"unsupported bus URL scheme {scheme!r}; expected memory:// or redis://host:port/db")


class Subscription:
    """The messages of one channel from the moment of subscribing, oldest first: ``async for m in sub``.

    A subscriber that falls ``queue_size`` messages behind loses the oldest ones (``dropped`` counts
    them) rather than holding up the bus for everyone else in the process.
    """

    def __init__(self, channel: str, queue: DropOldestQueue[bytes]) -> None:
        self.channel = channel
        self._queue = queue

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._queue.get()
        except QueueClosed:
            raise StopAsyncIteration from None


class Bus:
    """Publish bytes on channels; subscribe to them. ``async with Bus("redis://...") as bus:``.

    The backend is chosen by the URL's scheme (``memory://``, ``redis://``), or given ready-made as
    ``backend``; ``client`` is a ready-made redis client for the Redis backend, so that tests and the
    app can share one connection pool. The transport's errors are counted (``cpe_bus_errors``) on
    ``registry`` (on none when None).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        backend: BusBackend | None = None,
        client: Redis | None = None,
        queue_size: int = 4096,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.error_counter = Counter(
            "cpe_bus_errors",
            "Bus operations that could not reach its transport (Redis); the bus retries by itself.",
            registry=registry,
        )
        if backend is None:
            if url is None and client is None:
                raise ValueError("a bus needs a URL, a backend or a redis client")
            backend = backend_for(url or "redis://", client, self.error_counter)
        self.backend = backend
        self.queue_size = queue_size
        self._subscribers: dict[str, set[DropOldestQueue[bytes]]] = {}
        self._listener: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        await self.backend.connect()
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="cpe-bus")

    async def disconnect(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        for queues in self._subscribers.values():
            for queue in queues:
                queue.close()
        await self.backend.disconnect()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()

    @property
    def channels(self) -> set[str]:
        """The channels this process is subscribed to (once each, whatever its local subscribers)."""
        return set(self._subscribers)

    @property
    def problem(self) -> str | None:
        """Why the bus does not reach other replicas now (e.g. Redis is down), or None when it does."""
        return self.backend.problem

    @property
    def errors(self) -> int:
        """Operations that failed to reach the backend's transport since start."""
        return self.backend.errors

    async def publish(self, channel: str, message: bytes) -> bool:
        """Send ``message`` to every subscriber of ``channel``, in every process on this bus.

        At most once: False (and the backend's ``errors`` counts it) when the transport is unavailable.
        """
        return await self.backend.publish(channel, message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        """``channel``'s messages while inside the ``async with``; the process subscribes once per channel."""
        queue: DropOldestQueue[bytes] = DropOldestQueue(self.queue_size)
        try:
            if channel not in self._subscribers:
                self._subscribers[channel] = {queue}
                await self.backend.subscribe(channel)
            else:
                self._subscribers[channel].add(queue)
            yield Subscription(channel, queue)
        finally:
            queues = self._subscribers.get(channel)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._subscribers[channel]
                    await self.backend.unsubscribe(channel)
            queue.close()

    async def _listen(self) -> None:
        while True:
            event = await self.backend.next_published()
            for queue in self._subscribers.get(event.channel, ()):
                queue.put(event.message)  # never waits: a slow subscriber loses its own oldest
