"""The rules of the wire contract, defined once: every parser and every schema takes its limits from here.

A context's features, in order, with their units and physical ranges; the timestamps' unit and range;
the forms of a flow key; the lengths of names, labels and maps. ``app.schemas`` states them to clients
(with pydantic's error messages) and ``app.wire.decode`` reads the common bodies by them.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.scaling import FEATURE_NAMES

# Far beyond any real measurement (1e15 Mbit/s), yet small enough that a window's variance stays finite
MAX_FEATURE = 1e15


@dataclass(frozen=True)
class Feature:
    """One feature of a context: its name, unit and physical range (both ends included)."""

    name: str
    unit: str
    low: float
    high: float

    def describe_range(self) -> str:
        """The range as an error message states it: ``in [0, 1]``, or ``>= 0`` when unbounded."""
        if self.high == MAX_FEATURE:
            return f">= {self.low:g} (and at most {self.high:g})"
        return f"in [{self.low:g}, {self.high:g}]"


FEATURES: tuple[Feature, ...] = (
    Feature("latency_ms", "ms", 0.0, MAX_FEATURE),
    Feature("jitter_ms", "ms", 0.0, MAX_FEATURE),
    Feature("loss_rate", "fraction of packets, 0..1", 0.0, 1.0),
    Feature("throughput_mbps", "Mbit/s", 0.0, MAX_FEATURE),
    Feature("utilization", "fraction of capacity, 0..1", 0.0, 1.0),
    Feature("error_rate", "fraction of requests, 0..1", 0.0, 1.0),
    Feature("connections", "count", 0.0, MAX_FEATURE),
    Feature("queue_depth", "packets", 0.0, MAX_FEATURE),
)
assert tuple(f.name for f in FEATURES) == FEATURE_NAMES, "FEATURES follow the models' feature schema"
D = len(FEATURES)

# Timestamps are milliseconds since the Unix epoch. Below 1e11 (1973-03-03 in milliseconds, the year
# 5138 in seconds) a timestamp is taken for seconds and refused, rather than read as a window whose
# steps are a thousand times too short.
MIN_TIMESTAMP_MS = 100_000_000_000
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: keeps every timestamp in int64

FLOW_KEY_BYTES = 32  # a flow key is 32 bytes: 64 lowercase hex characters, or a list of 32 ints 0..255
FLOW_KEY_HEX = 2 * FLOW_KEY_BYTES

MAX_METADATA_ITEMS = 32  # extra numeric measurements of one context
MAX_METADATA_KEY = 64  # characters of a metadata name
MAX_LABEL = 128  # characters of a pattern_id or a route_id
MAX_ROUTES = 64  # candidate routes in one routing request, unless the deployment says otherwise
MAX_COST_FACTOR = 1e9  # a route's relative cost
