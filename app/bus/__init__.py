"""Publish/subscribe between replicas, chosen by URL: ``memory://`` (this process) or ``redis://``.

``Bus`` is the front: ``publish(channel, bytes)`` and ``async with bus.subscribe(channel) as sub``.
Each process subscribes to a channel once, whatever its number of local subscribers, and fans the
messages out to them itself. Backends speak the small interface of ``base.BusBackend``.
"""

from app.bus.base import BusBackend, Event
from app.bus.broadcast import Bus, Subscription, backend_for

__all__ = ["Bus", "BusBackend", "Event", "Subscription", "backend_for"]
