"""The in-process bus: ``memory://``. Messages reach this process's subscribers only."""

from __future__ import annotations

import asyncio

from app.bus.base import BusBackend, Event


class MemoryBackend(BusBackend):
    """One process, no server: what a single replica, and most tests, need."""

    def __init__(self) -> None:
        self._subscribed: set[str] = set()
        self._published: asyncio.Queue[Event] = asyncio.Queue()

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def publish(self, channel: str, message: bytes) -> bool:
        self._published.put_nowait(Event(channel, message))
        return True

    async def next_published(self) -> Event:
        while True:
            event = await self._published.get()
            if event.channel in self._subscribed:
                return event
