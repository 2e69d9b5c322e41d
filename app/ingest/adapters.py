"""Adapters: each upstream message mapped onto the feature schema (DESIGN.md, "Wire contract").

A feature a message does not carry is NaN here: the flow store fills it in from the flow's newest
context (or the schema default) and marks it imputed. The mappings:

- ``Context``: every feature as sent (``null``: missing).
- ``TransportMetrics``: latency_ms <- average_latency_ms; throughput_mbps <- throughput_mbps;
  error_rate <- error_rate; connections <- connection_count.
- ``NetworkConditions`` (STOQ): latency_ms <- rtt_ms; jitter_ms <- jitter_ms; loss_rate <- packet_loss
  / 100 (a percentage); throughput_mbps <- throughput_mbps; utilization <- throughput_mbps /
  bandwidth_estimate (capped at 1; only when both are sent and the estimate is > 0). retransmissions has
  no feature of its own and is not kept.
- ``FlowRecord`` (Layer 1): per flow (``key``) and interval of CPE_FLOW_RECORD_INTERVAL_MS, aligned to
  the epoch (the context's timestamp is the interval's start): throughput_mbps <- 8 x the summed
  ``size`` (bytes) over the interval; connections <- the distinct ``component_id``s. Timestamps in ns.
  An interval's records are summed within one batch: a collector sends each interval's records
  together (a later batch's part of an interval already applied is counted a duplicate).
- ``SimilarityResult`` (Layer 2): no feature; ``pattern_id`` becomes the pattern of the flow's next
  context, and labels the flow's windows in pattern memory (with its ``confidence``, ``app/patterns``).
- ``AdaptationFeedback`` (Layer 2): no feature; ``suggested_learning_rate`` is a hint to the learner's
  tuner, which bounds it (``Tuner.hint``), published on the bus to the replica that holds the learner's
  lease, wherever it is (``app/learning/hints.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.flows import ContextBatch, FlowContext
from app.ingest.observations import (
    NS_PER_MS,
    AdaptationFeedbackIn,
    ContextIn,
    FlowRecordIn,
    NetworkConditionsIn,
    Observation,
    SimilarityResultIn,
    TransportMetricsIn,
)
from app.schemas import D
from models.scaling import FEATURE_NAMES

FEATURE = {name: i for i, name in enumerate(FEATURE_NAMES)}
LATENCY, JITTER, LOSS, THROUGHPUT, UTILIZATION, ERRORS, CONNECTIONS = (
    FEATURE[name]
    for name in (
        "latency_ms",
        "jitter_ms",
        "loss_rate",
        "throughput_mbps",
        "utilization",
        "error_rate",
        "connections",
    )
)


@dataclass(slots=True)
class PatternHint:
    """A SimilarityResult: ``pattern_id`` for the flow's next context, with Layer 2's confidence in it."""

    flow_key: str
    pattern_id: str
    confidence: float = float("nan")


@dataclass(slots=True)
class LearningRateHint:
    """An AdaptationFeedback: a learning rate the tuner may move towards."""

    learning_rate: float
    performance_delta: float


Item = FlowContext | PatternHint | LearningRateHint


@dataclass(slots=True)
class Adapted:
    """A batch of observations as the ingest service applies them, in order; ``weights[i]`` is how many
    observations ``items[i]`` stands for (a FlowRecord interval sums several).

    A batch of contexts alone, one observation each (the common shape, read by ``fastread``), comes as
    ``columns`` instead, with ``items`` and ``weights`` empty: no object per observation.
    """

    items: list[Item]
    weights: list[int]
    columns: ContextBatch | None = None

    def __len__(self) -> int:
        return len(self.items) + (0 if self.columns is None else len(self.columns))

    def as_items(self) -> Adapted:
        """The same batch with ``items`` for every observation."""
        if self.columns is None:
            return self
        contexts: list[Item] = [self.columns.context(i) for i in range(len(self.columns))]
        return Adapted(self.items + contexts, self.weights + [1] * len(contexts))

    @staticmethod
    def join(parts: Sequence[Adapted]) -> Adapted:
        """The batches end to end, in order; as columns when every one is."""
        if parts and all(p.columns is not None and not p.items for p in parts):
            return Adapted([], [], ContextBatch.join([p.columns for p in parts if p.columns is not None]))
        items: list[Item] = []
        weights: list[int] = []
        for part in parts:
            whole = part.as_items()
            items += whole.items
            weights += whole.weights
        return Adapted(items, weights)


def _features(**values: float | None) -> np.ndarray:
    """A (D,) float32 row: the named features, NaN (missing) elsewhere."""
    row = np.full(D, np.nan, dtype=np.float32)
    for name, value in values.items():
        if value is not None:
            row[FEATURE[name]] = value
    return row


def from_context(m: ContextIn) -> FlowContext:
    row = np.array([np.nan if v is None else v for v in m.features], dtype=np.float32)
    return FlowContext(m.flow_key, m.timestamp, row, m.route_id, m.pattern_id)


def from_transport_metrics(m: TransportMetricsIn) -> FlowContext:
    return from_transport_metrics_values(
        m.flow_key,
        m.timestamp,
        m.connection_count,
        m.average_latency_ms,
        m.throughput_mbps,
        m.error_rate,
        m.route_id,
    )


def from_transport_metrics_values(
    flow_key: str,
    timestamp: int,
    connection_count: int | None,
    average_latency_ms: float | None,
    throughput_mbps: float | None,
    error_rate: float | None,
    route_id: str | None,
) -> FlowContext:
    """TransportMetrics' fields onto the features (also for ``app/ingest/fastread.py``)."""
    row = _features(
        latency_ms=average_latency_ms,
        throughput_mbps=throughput_mbps,
        error_rate=error_rate,
        connections=None if connection_count is None else float(connection_count),
    )
    return FlowContext(flow_key, timestamp, row, route_id)


def from_network_conditions(m: NetworkConditionsIn) -> FlowContext:
    return from_network_conditions_values(
        m.flow_key,
        m.timestamp,
        m.rtt_ms,
        m.packet_loss,
        m.throughput_mbps,
        m.bandwidth_estimate,
        m.jitter_ms,
        m.route_id,
    )


def from_network_conditions_values(
    flow_key: str,
    timestamp: int,
    rtt_ms: float | None,
    packet_loss: float | None,
    throughput_mbps: float | None,
    bandwidth_estimate: float | None,
    jitter_ms: float | None,
    route_id: str | None,
) -> FlowContext:
    """NetworkConditions' fields onto the features (also for ``app/ingest/fastread.py``)."""
    utilization = None
    if throughput_mbps is not None and bandwidth_estimate:
        utilization = min(throughput_mbps / bandwidth_estimate, 1.0)
    row = _features(
        latency_ms=rtt_ms,
        jitter_ms=jitter_ms,
        loss_rate=None if packet_loss is None else packet_loss / 100.0,
        throughput_mbps=throughput_mbps,
        utilization=utilization,
    )
    return FlowContext(flow_key, timestamp, row, route_id)


def from_flow_records(records: Sequence[FlowRecordIn], interval_ms: int) -> list[FlowContext]:
    """One context per flow and interval that ``records`` touch, in the order of their first record."""
    sizes: dict[tuple[str, int], int] = {}
    components: dict[tuple[str, int], set[str | int]] = {}
    for r in records:
        at = (r.key, r.timestamp // NS_PER_MS // interval_ms * interval_ms)
        sizes[at] = sizes.get(at, 0) + r.size
        components.setdefault(at, set()).add(r.component_id)
    seconds = interval_ms / 1000.0
    return [
        FlowContext(
            key,
            start,
            _features(
                throughput_mbps=size * 8.0 / seconds / 1e6, connections=float(len(components[key, start]))
            ),
        )
        for (key, start), size in sizes.items()
    ]


def adapt(observations: Sequence[Observation], interval_ms: int) -> Adapted:
    """The items of a validated batch, in order; FlowRecords summed per flow and interval, the contexts
    at the place of the interval's first record."""
    items: list[Item] = []
    weights: list[int] = []
    records: list[FlowRecordIn] = []
    record_at: dict[tuple[str, int], int] = {}  # (flow, interval start) -> its index in items
    for observation in observations:
        m = observation.message
        if isinstance(m, ContextIn):
            items.append(from_context(m))
        elif isinstance(m, TransportMetricsIn):
            items.append(from_transport_metrics(m))
        elif isinstance(m, NetworkConditionsIn):
            items.append(from_network_conditions(m))
        elif isinstance(m, FlowRecordIn):
            at = (m.key, m.timestamp // NS_PER_MS // interval_ms * interval_ms)
            records.append(m)
            if at in record_at:
                weights[record_at[at]] += 1
                continue
            record_at[at] = len(items)
            items.append(FlowContext(m.key, at[1], np.empty(0, dtype=np.float32)))  # summed below
        elif isinstance(m, SimilarityResultIn):
            items.append(PatternHint(m.flow_key, m.pattern_id, m.confidence))
        else:
            assert isinstance(m, AdaptationFeedbackIn)
            items.append(LearningRateHint(m.suggested_learning_rate, m.performance_delta))
        weights.append(1)
    if records:
        for context in from_flow_records(records, interval_ms):
            items[record_at[context.flow_key, context.timestamp]] = context
    return Adapted(items, weights)
