"""A bounded queue for one consumer that makes room by dropping its oldest item: producers never wait."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueClosed(Exception):
    """The queue was closed and nothing is left in it."""


class DropOldestQueue(Generic[T]):
    """FIFO of at most ``maxsize`` items; ``put`` on a full queue discards the oldest one and counts it.

    A fan-out loop puts into many of these without awaiting, so one slow consumer loses its own oldest
    messages instead of holding up the producer and everyone else.
    """

    def __init__(self, maxsize: int) -> None:
        assert maxsize >= 1, f"maxsize must be >= 1, got {maxsize}"
        self._items: deque[T] = deque(maxlen=maxsize)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0  # items discarded to make room

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Append ``item``; False when the oldest item was dropped to make room for it."""
        full = len(self._items) == self._items.maxlen
        if full:
            self.dropped += 1
        self._items.append(item)  # a full deque with maxlen drops from the other end by itself
        self._ready.set()
        return not full

    def get_nowait(self) -> T | None:
        """The oldest item, or None when the queue is empty."""
        return self._items.popleft() if self._items else None

    async def wait(self) -> None:
        """Return once an item is queued or ``wake`` is called; ``QueueClosed`` when closed and empty."""
        if not self._items:
            if self._closed:
                raise QueueClosed
            self._ready.clear()
            await self._ready.wait()
            if self._closed and not self._items:
                raise QueueClosed

    def wake(self) -> None:
        """Make a pending ``wait`` return, queued item or not (e.g. for a timer of the consumer's)."""
        self._ready.set()

    async def get(self) -> T:
        """The oldest item, waiting for one."""
        while not self._items:
            await self.wait()
        return self._items.popleft()

    def clear(self) -> None:
        self._items.clear()

    def close(self) -> None:
        """Wake the consumer: once the queue is drained, ``get`` raises ``QueueClosed``."""
        self._closed = True
        self._ready.set()
