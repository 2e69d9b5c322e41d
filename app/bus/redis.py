"""The bus over Redis pub/sub: ``redis://host:port/db``, shared by every replica.

Delivery is at most once, as pub/sub is: a message published while a replica is cut off from Redis
does not reach it. When Redis goes away the listener counts the error, logs once, retries with a
growing delay and, once Redis answers again, re-subscribes and logs that it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from app.bus.base import BusBackend, Event

if TYPE_CHECKING:
    from prometheus_client import Counter
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = logging.getLogger("cpe.bus")

POLL_S = 1.0  # longest wait for a message in one read: how soon a silent failure is noticed
RETRY_MIN_S, RETRY_MAX_S = 0.05, 2.0
_FAILURES = (RedisError, OSError)


class RedisBackend(BusBackend):
    """Redis pub/sub: one connection publishes, one connection holds the process's subscriptions."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        error_counter: Counter | None = None,
    ) -> None:
        self._owns_client = client is None  # a client handed in belongs to whoever made it
        if client is None:
            assert url is not None, "give the Redis URL or a ready-made client"
            from redis.asyncio import Redis

            client = Redis.from_url(url)
        self._client = client
        self._channels: set[str] = set()
        self._wanted = asyncio.Event()  # some channel is subscribed: the listener has something to read
        self._pubsub: PubSub | None = None
        self._stale = True  # the pubsub must be (re)built and subscribed before the next read
        self._rebuilding = asyncio.Lock()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._listener: asyncio.Task[None] | None = None
        self._healthy = True
        self._problem = ""
        self._error_counter = error_counter
        self.errors = 0

    async def connect(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="cpe-bus-redis")

    async def disconnect(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self._close_pubsub()
        if self._owns_client:
            await self._client.aclose()

    async def subscribe(self, channel: str) -> None:
        """Subscribe now, so that what is published after this returns arrives (if Redis answers)."""
        self._channels.add(channel)
        try:
            async with self._rebuilding:
                if self._stale:
                    await self._resubscribe()
                else:
                    assert self._pubsub is not None
                    await self._pubsub.subscribe(channel)
        except _FAILURES as exc:  # the listener subscribes it once Redis is back
            self._failed(exc)
            self._stale = True
        self._wanted.set()

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if not self._channels:
            self._wanted.clear()
        if self._pubsub is not None and not self._stale:
            try:
                await self._pubsub.unsubscribe(channel)
            except _FAILURES as exc:
                self._failed(exc)

    async def publish(self, channel: str, message: bytes) -> bool:
        try:
            await self._client.publish(channel, message)
        except _FAILURES as exc:
            self._failed(exc)
            return False
        self._recovered()
        return True

    async def next_published(self) -> Event:
        return await self._events.get()

    # -- the listener -------------------------------------------------------------------------
    async def _listen(self) -> None:
        delay = RETRY_MIN_S
        while True:
            await self._wanted.wait()
            try:
                async with self._rebuilding:
                    if self._stale:
                        await self._resubscribe()
                assert self._pubsub is not None
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S)
            except _FAILURES as exc:
                self._failed(exc)
                self._stale = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_MIN_S
            self._recovered()
            if message is not None and message["type"] == "message":
                channel = message["channel"]
                if isinstance(channel, bytes):
                    channel = channel.decode()
                self._events.put_nowait(Event(channel, message["data"]))

    async def _resubscribe(self) -> None:
        """A fresh pubsub connection holding every channel subscribed so far."""
        await self._close_pubsub()
        self._pubsub = self._client.pubsub()
        if self._channels:
            await self._pubsub.subscribe(*self._channels)
        self._stale = False

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*_FAILURES):  # it is being replaced because it failed
                await pubsub.aclose()

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self._error_counter is not None:
            self._error_counter.inc()
        if self._healthy:
            self._healthy = False
            self._problem = f"Redis unreachable ({exc}); routing messages reach this replica's clients only"
            log.warning("bus: Redis is unreachable (%s); retrying until it is back", exc)

    def _recovered(self) -> None:
        if not self._healthy:
            self._healthy = True
            log.warning("bus: Redis is reachable again after %d failed operations", self.errors)

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def problem(self) -> str | None:
        return None if self._healthy else self._problem
