"""AdaptationFeedback's learning-rate hints, carried to the replica that learns, wherever it is.

Layer 2's ``AdaptationFeedback`` may arrive at any replica; only the lease holder trains. Every replica
publishes the hints it ingests on the bus (``CPE_LEARNING_HINTS_CHANNEL``) and every replica that learns
listens there; the one that holds the lease when a hint arrives hands it to its tuner (``Tuner.hint``,
a bounded step), the others drop it. With ``memory://`` the bus and the lease are this process's: the
local learner gets every hint. A hint is advice, not data: one published while no learner listens (a
take-over in progress, Redis away) is lost, as the next one supersedes it anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Protocol, Self

import orjson

from app.bus import Bus

log = logging.getLogger("cpe.learning")


class HintTaker(Protocol):
    """The learner, as far as hints go."""

    def holds_lease(self) -> bool: ...

    def hint_learning_rate(self, learning_rate: float) -> None: ...


async def publish_hint(bus: Bus, channel: str, learning_rate: float) -> None:
    """Send a hint to whichever replica learns (ingest's ``on_learning_rate``)."""
    await bus.publish(channel, orjson.dumps({"learning_rate": learning_rate}))


class HintListener:
    """Hands the hints published on ``channel`` to ``learner`` while it holds the lease; ``async with``."""

    def __init__(self, bus: Bus, channel: str, learner: HintTaker) -> None:
        self.bus, self.channel, self.learner = bus, channel, learner
        self.taken = 0  # hints handed to the learner
        self.ignored = 0  # hints heard while another replica held the lease
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._listen(ready), name="cpe-lr-hints")
        await ready.wait()  # subscribed: a hint published from now on is heard
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self, ready: asyncio.Event) -> None:
        async with self.bus.subscribe(self.channel) as subscription:
            ready.set()
            async for message in subscription:
                try:
                    learning_rate = float(orjson.loads(message)["learning_rate"])
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("learning: ignored a malformed hint on %s: %s", self.channel, exc)
                    continue
                if not math.isfinite(learning_rate) or learning_rate <= 0:
                    log.warning("learning: ignored a hint of learning rate %r", learning_rate)
                elif self.learner.holds_lease():
                    self.learner.hint_learning_rate(learning_rate)
                    self.taken += 1
                else:
                    self.ignored += 1
