"""Prometheus collectors of the service, on a registry of their own per app, served on ``GET /metrics``.

Each app gets its own ``Metrics`` (hence its own ``CollectorRegistry``) rather than registering on
prometheus_client's global default registry: several apps in one process (tests) would otherwise collide
on the metric names. Only what the parts wired so far need is here; collectors for requests, the engine
and the models join this class as those parts export them. Nothing here runs per HTTP request unless a
handler calls it: no middleware.

Exported so far:

- ``cpe_cache_requests_total{tier, result}``: cache lookups per tier (``memory``, ``redis``) and
  result (``hit``, ``miss``). A key looked up in Redis missed the memory tier first.
- ``cpe_cache_errors_total{tier}``: failed round-trips to a tier (only ``redis`` can fail).
- ``cpe_cache_entries{tier="memory"}``: entries held by the in-process tier, read at scrape time.
- ``cpe_redis_up``: 1 while the Redis tier answers, 0 while it does not (its breaker is open) or when
  no Redis tier is configured.
- ``cpe_ws_subscribers``: routing WebSocket clients of this process with a subscription.
- ``cpe_ws_messages_sent_total``: routing messages written to those clients.
- ``cpe_ws_messages_dropped_total``: routing messages a slow client lost (its oldest, to make room).
- ``cpe_bus_errors_total``: bus operations that could not reach the bus's transport (Redis).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """One app's collectors and their registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.cache_requests = Counter(
            "cpe_cache_requests",
            "Prediction cache lookups, per tier and result.",
            ["tier", "result"],
            registry=self.registry,
        )
        self.cache_errors = Counter(
            "cpe_cache_errors",
            "Failed round-trips to a cache tier (the request is answered without that tier).",
            ["tier"],
            registry=self.registry,
        )
        self.cache_entries = Gauge(
            "cpe_cache_entries",
            "Entries held by a cache tier.",
            ["tier"],
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "cpe_redis_up",
            "1 while the Redis cache tier answers; 0 while it does not or when none is configured.",
            registry=self.registry,
        )

        self.ws_subscribers = Gauge(
            "cpe_ws_subscribers",
            "Routing WebSocket clients of this process with a subscription.",
            registry=self.registry,
        )
        self.ws_messages_sent = Counter(
            "cpe_ws_messages_sent",
            "Routing messages written to WebSocket clients.",
            registry=self.registry,
        )
        self.ws_messages_dropped = Counter(
            "cpe_ws_messages_dropped",
            "Routing messages a slow WebSocket client lost: its oldest, dropped to make room.",
            registry=self.registry,
        )
        self.bus_errors = Counter(
            "cpe_bus_errors",
            "Bus operations that could not reach its transport (Redis); the bus retries by itself.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format of every collector, as ``GET /metrics`` serves it."""
        return generate_latest(self.registry)
