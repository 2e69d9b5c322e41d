"""The wire types of ingest: ``{"observations": [Observation]}``, each observation externally tagged.

An observation is one of (DESIGN.md, "Observing the network"):

- ``{"Context": {"flow_key", "timestamp", "features": [D], "route_id"?, "pattern_id"?}}``, the native
  form; a feature may be ``null`` (not measured: it keeps the flow's last value);
- the upstream Rust messages in their serde form, a ``flow_key`` and a ``timestamp`` (ms) among their
  fields: ``TransportMetrics``, STOQ's ``NetworkConditions``; Layer 1's ``FlowRecord`` (its own ``key``
  and a timestamp in ns); Layer 2's ``SimilarityResult`` and ``AdaptationFeedback``.

Unknown fields are ignored, as serde does; unknown observation types, bad values and timestamps that
look like seconds are refused with a 422 naming the item and the field. Timestamps are refused rather
than converted when they look like seconds (before 1973 in ms): a silent guess would misplace the
window by a factor of 1000 the one time it guesses wrong. The mapping of each message onto the feature
schema is in ``app/ingest/adapters.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.schemas import FlowKey
from app.wire.rules import MAX_FEATURE, MAX_TIMESTAMP_MS, D

SECONDS_BEFORE_MS = 100_000_000_000  # 1973-03-03 in ms; 5138 AD in s: a smaller ms timestamp is seconds
NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class ObserveLimits:
    """The validation context of an observe body: the deployment's batch limit."""

    max_batch: int


def _milliseconds(value: int) -> int:
    if value < SECONDS_BEFORE_MS:
        raise PydanticCustomError(
            "timestamp_seconds",
            "timestamp {timestamp} looks like seconds since the epoch (it is before 1973 in ms); "
            "send milliseconds",
            {"timestamp": value},
        )
    return value


def _nanoseconds(value: int) -> int:
    if value < SECONDS_BEFORE_MS * NS_PER_MS:
        raise PydanticCustomError(
            "timestamp_not_ns",
            "FlowRecord timestamp {timestamp} is not in nanoseconds since the epoch (it is before 1973 in "
            "ns); Layer 1 records carry ns",
            {"timestamp": value},
        )
    return value


TimestampMs = Annotated[
    int,
    Field(le=MAX_TIMESTAMP_MS, description="Milliseconds since the Unix epoch."),
    AfterValidator(_milliseconds),
]
TimestampNs = Annotated[
    int,
    Field(le=MAX_TIMESTAMP_MS * NS_PER_MS, description="Nanoseconds since the Unix epoch."),
    AfterValidator(_nanoseconds),
]
NonNegative = Annotated[FiniteFloat, Field(ge=0.0, le=MAX_FEATURE)]
Fraction = Annotated[FiniteFloat, Field(ge=0.0, le=1.0)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=128)]

# The feature schema's ranges (DESIGN.md): latency, jitter, throughput, connections and queue depth >= 0;
# loss, utilisation and error rate in [0, 1]. One slot each, so that an error names the index.
Features = tuple[
    NonNegative | None,  # latency_ms
    NonNegative | None,  # jitter_ms
    Fraction | None,  # loss_rate
    NonNegative | None,  # throughput_mbps
    Fraction | None,  # utilization
    Fraction | None,  # error_rate
    NonNegative | None,  # connections
    NonNegative | None,  # queue_depth
]
assert D == 8, "Features spells out the D features of a context"


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)  # serde ignores unknown fields; so do we


class ContextIn(_Message):
    """The native form: one context of one flow; ``null`` features keep the flow's last value."""

    flow_key: FlowKey
    timestamp: TimestampMs
    features: Features
    route_id: Label | None = None
    pattern_id: Label | None = None


class TransportMetricsIn(_Message):
    """The transport's per-connection summary."""

    flow_key: FlowKey
    timestamp: TimestampMs
    connection_count: Annotated[int, Field(ge=0)] | None = None
    average_latency_ms: NonNegative | None = None
    throughput_mbps: NonNegative | None = None
    error_rate: Fraction | None = None
    route_id: Label | None = None


class NetworkConditionsIn(_Message):
    """STOQ's view of a path. ``packet_loss`` is a percentage, ``bandwidth_estimate`` in Mbit/s."""

    flow_key: FlowKey
    timestamp: TimestampMs
    rtt_ms: NonNegative | None = None
    packet_loss: Annotated[FiniteFloat, Field(ge=0.0, le=100.0)] | None = None
    throughput_mbps: NonNegative | None = None
    bandwidth_estimate: NonNegative | None = None
    retransmissions: Annotated[int, Field(ge=0)] | None = None
    jitter_ms: NonNegative | None = None
    route_id: Label | None = None


class FlowRecordIn(_Message):
    """Layer 1's record of one transfer: summed per flow per CPE_FLOW_RECORD_INTERVAL_MS."""

    key: FlowKey
    component_id: Annotated[str, StringConstraints(max_length=128)] | int
    flow_type: Any = None  # not a feature; kept for the record's shape
    timestamp: TimestampNs
    size: Annotated[int, Field(ge=0, le=2**63 - 1)]
    priority: Any = None


class SimilarityResultIn(_Message):
    """Layer 2's match of a flow to a known pattern: the flow's next context carries ``pattern_id``."""

    flow_key: FlowKey
    similarity_score: FiniteFloat
    pattern_id: Label
    confidence: FiniteFloat


class AdaptationFeedbackIn(_Message):
    """Layer 2's suggestion for the learning rate: a bounded hint to the learner's tuner."""

    network_id: Annotated[str, StringConstraints(max_length=128)] | int
    performance_delta: FiniteFloat
    suggested_learning_rate: Annotated[FiniteFloat, Field(gt=0.0, le=1.0)]


MESSAGE_TYPES: dict[str, type[_Message]] = {
    "Context": ContextIn,
    "TransportMetrics": TransportMetricsIn,
    "NetworkConditions": NetworkConditionsIn,
    "FlowRecord": FlowRecordIn,
    "SimilarityResult": SimilarityResultIn,
    "AdaptationFeedback": AdaptationFeedbackIn,
}


class Observation(BaseModel):
    """One observation, externally tagged as serde writes a Rust enum: an object with one key, its type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    Context: ContextIn | None = None
    TransportMetrics: TransportMetricsIn | None = None
    NetworkConditions: NetworkConditionsIn | None = None
    FlowRecord: FlowRecordIn | None = None
    SimilarityResult: SimilarityResultIn | None = None
    AdaptationFeedback: AdaptationFeedbackIn | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_known_type(cls, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in MESSAGE_TYPES:
            [(kind, message)] = value.items()
            if message is None:
                raise PydanticCustomError("observation_type", "{kind} must be an object", {"kind": kind})
            return value
        got = f"keys {sorted(map(str, value))[:8]}" if isinstance(value, dict) else type(value).__name__
        raise PydanticCustomError(
            "observation_type",
            "an observation is an object with one key, its type: one of {types}; got {got}",
            {"types": ", ".join(MESSAGE_TYPES), "got": got},
        )

    @property
    def message(self) -> _Message:
        """The one message this observation holds."""
        for value in self.__dict__.values():
            if value is not None:
                return value  # type: ignore[no-any-return]
        raise AssertionError("an observation holds one message")


class ObserveRequest(BaseModel):
    """Observations of any flows, in any order; each flow's are applied in the order given."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "observations": [
                        {
                            "Context": {
                                "flow_key": "3f" * 32,
                                "timestamp": 1_700_000_000_000,
                                "features": [12.1, 1.4, 0.001, 840.0, 0.62, 0.0, 120.0, 4.0],
                            }
                        },
                        {
                            "NetworkConditions": {
                                "flow_key": "3f" * 32,
                                "timestamp": 1_700_000_001_000,
                                "rtt_ms": 12.8,
                                "packet_loss": 0.2,
                                "throughput_mbps": 832.5,
                                "bandwidth_estimate": 1000.0,
                                "retransmissions": 3,
                                "jitter_ms": 1.6,
                            }
                        },
                    ]
                }
            ]
        }
    )

    observations: list[Observation] = Field(
        min_length=1, description="1..CPE_MAX_OBSERVE_BATCH observations."
    )

    @field_validator("observations", mode="wrap")
    @classmethod
    def _within_limit(cls, value: Any, handler: Any, info: ValidationInfo) -> Any:
        limits = info.context if isinstance(info.context, ObserveLimits) else None
        if limits is not None and isinstance(value, list) and len(value) > limits.max_batch:
            raise PydanticCustomError(
                "too_long",
                "at most {max_length} observations in one batch (CPE_MAX_OBSERVE_BATCH), not {actual_length}",
                {"field_type": "List", "max_length": limits.max_batch, "actual_length": len(value)},
            )
        return handler(value)


class ObserveResult(BaseModel):
    """What became of a batch: every observation is counted once, in one of the first three."""

    accepted: int = Field(description="Applied (or, for SimilarityResult and AdaptationFeedback, taken).")
    late: int = Field(description="Older than the flow's newest context: counted, not applied.")
    duplicates: int = Field(description="At the moment of the flow's newest context: not applied again.")
    imputed: int = Field(
        description="Accepted observations with at least one feature filled in from the flow."
    )
