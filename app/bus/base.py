"""The interface of every bus backend: deliver bytes published on a channel to this process."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """One message as it came off the bus."""

    channel: str
    message: bytes


class BusBackend(ABC):
    """Moves messages between processes; the ``Bus`` front fans them out inside one process.

    A backend subscribes to each channel once for the whole process. It never raises because its
    transport is unavailable: ``publish`` then returns False, ``errors`` counts the failure, and the
    backend reconnects (and re-subscribes) by itself.
    """

    errors: int = 0  # failed operations since start

    @property
    def healthy(self) -> bool:
        """Whether the last operation reached the transport."""
        return True

    @property
    def problem(self) -> str | None:
        """Why the transport does not work now, or None when it does."""
        return None

    async def connect(self) -> None:  # noqa: B027 (an optional hook: the memory backend needs none)
        """Open what the backend needs; one that cannot reach its server starts degraded."""

    async def disconnect(self) -> None:  # noqa: B027
        """Release what ``connect`` opened."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel``'s messages in ``next_published``."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``'s messages."""

    @abstractmethod
    async def publish(self, channel: str, message: bytes) -> bool:
        """Send ``message`` to every process subscribed to ``channel``; False if it could not be sent."""

    @abstractmethod
    async def next_published(self) -> Event:
        """The next message on a subscribed channel, waiting for one."""
