"""FlowPrediction messages: published on the bus a round at a time, fanned out to WebSocket subscribers.

A round of continuous prediction is one bus message, whatever its number of flows: one line per flow,
``<flow_key>\\t<groups>\\t<frame>`` (``groups`` a JSON list of the flow's route groups, or empty; ``frame``
the ``{"FlowPrediction": {...}}`` text, which never holds a tab or a newline since JSON escapes them).
Every replica's ``FlowPredictionHub`` reads the channel once and hands each frame to its own clients of
``WS /v1/stream/predictions`` through the routing hub's fan-out (bounded queues, a slow client losing its
oldest, counted), selected by flow key or by group.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson
from prometheus_client import CollectorRegistry, Counter

from app.bus import Bus
from app.fanout import GROUP_TOPIC, RoutingFanout, StreamClient

MESSAGE_TYPE = "FlowPrediction"


def frame(result: bytes) -> bytes:
    """The FlowPrediction message of a serialized PredictionResult."""
    return b'{"FlowPrediction":' + result + b"}"


def encode(items: Iterable[tuple[str, Sequence[str], bytes]]) -> bytes:
    """One bus message of (flow_key, groups, serialized PredictionResult) items."""
    return b"".join(
        b"%s\t%s\t%s\n" % (key.encode(), orjson.dumps(list(groups)) if groups else b"", frame(result))
        for key, groups, result in items
    )


class FlowPredictionMetrics:
    """The FlowPrediction stream's collectors."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.published = Counter(
            "cpe_forecast_messages_published",
            "FlowPrediction messages published on the bus.",
            registry=registry,
        )
        self.delivered = Counter(
            "cpe_forecast_messages_delivered",
            "FlowPrediction messages handed to this process's WebSocket subscribers (pushed or queued).",
            registry=registry,
        )
        self.dropped = Counter(
            "cpe_forecast_messages_dropped",
            "FlowPrediction messages a slow WebSocket subscriber lost: its oldest, dropped to make room.",
            registry=registry,
        )


class FlowPredictionHub(RoutingFanout):
    """The routing hub's fan-out, reading FlowPrediction rounds from ``channel``."""

    def __init__(
        self, bus: Bus, channel: str, *, queue_size: int, metrics: FlowPredictionMetrics | None = None
    ) -> None:
        super().__init__(bus, channel, queue_size=queue_size)  # no routing metrics: these are counted apart
        self.counters = metrics

    def subscribe_flows(
        self, client: StreamClient, flow_keys: Iterable[str] | None, groups: Iterable[str] | None
    ) -> None:
        """Send ``client`` the FlowPredictions of ``flow_keys`` and of the flows of ``groups`` (both None:
        every flow)."""
        self.subscribe(client, flow_keys, None, groups)

    @property
    def wants_all(self) -> bool:
        """Whether some client of this process takes every flow, or a group (whose flows only the publisher
        knows)."""
        return bool(self._every_flow) or any(topic.startswith(GROUP_TOPIC) for topic in self._by_flow)

    def wants(self, flow_key: str) -> bool:
        """Whether some client of this process subscribed to ``flow_key`` by name."""
        return flow_key in self._by_flow

    def publish_local(self, message: bytes) -> int:
        """Hand each FlowPrediction of a round to the matching clients of this process; returns how many."""
        if not self._subscribed:
            return 0
        self.received += 1
        matched = dropped = pushed = 0
        for line in message.split(b"\n"):
            if not line:
                continue
            key_bytes, groups, body = line.split(b"\t", 2)
            key = key_bytes.decode()
            keyed = self._by_flow.get(key)
            targets: Iterable[StreamClient] = self._every_flow
            if groups:
                chosen = set(self._every_flow)
                chosen.update(keyed or ())
                for group in orjson.loads(groups):
                    chosen.update(self._by_flow.get(GROUP_TOPIC + group, ()))
                targets = chosen
            elif keyed is not None:
                targets = (*self._every_flow, *keyed)
            elif not self._every_flow:
                continue
            m, d, p = self.fan_out(targets, MESSAGE_TYPE, body, body.decode())
            matched, dropped, pushed = matched + m, dropped + d, pushed + p
        if self.counters is not None:
            if matched:
                self.counters.delivered.inc(matched)
            if dropped:
                self.counters.dropped.inc(dropped)
        return matched
