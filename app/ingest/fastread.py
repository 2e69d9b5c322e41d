"""Observe bodies of the common shape read in one pass in C (msgspec), straight into flow contexts.

The common shape: ``Context``, ``TransportMetrics`` and ``NetworkConditions`` observations, every value
valid. The structs below state the same rules as ``app/ingest/observations.py`` (ranges, timestamps in
ms after 1973, labels of 1..128 characters); a value pydantic would take only laxly fails here. The
moment anything is unusual (another observation type, a missing or unknown key in the tag's place, a
value out of range, NaN, a flow key in another form than lowercase hex) the answer is None and pydantic
reads the body instead, so that the accepted set, the values and every error stay pydantic's.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
import numpy as np
from msgspec import Meta

from app.flows import ContextBatch, FlowContext
from app.ingest.adapters import Adapted, Item, from_network_conditions_values, from_transport_metrics_values
from app.ingest.observations import SECONDS_BEFORE_MS
from app.wire.rules import MAX_FEATURE, MAX_TIMESTAMP_MS

_HEX_KEY = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]*")
KEY_LENGTH = 64
_NonNegative = Annotated[float, Meta(ge=0.0, le=MAX_FEATURE)]
_Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
_Ms = Annotated[int, Meta(ge=SECONDS_BEFORE_MS, le=MAX_TIMESTAMP_MS)]
_Label = Annotated[str, Meta(min_length=1, max_length=128)]
_Count = Annotated[int, Meta(ge=0)]
_Percent = Annotated[float, Meta(ge=0.0, le=100.0)]


class _Context(msgspec.Struct, gc=False):
    flow_key: str
    timestamp: _Ms
    features: tuple[
        _NonNegative | None,
        _NonNegative | None,
        _Fraction | None,
        _NonNegative | None,
        _Fraction | None,
        _Fraction | None,
        _NonNegative | None,
        _NonNegative | None,
    ]
    route_id: _Label | None = None
    pattern_id: _Label | None = None


class _TransportMetrics(msgspec.Struct, gc=False):
    flow_key: str
    timestamp: _Ms
    connection_count: _Count | None = None
    average_latency_ms: _NonNegative | None = None
    throughput_mbps: _NonNegative | None = None
    error_rate: _Fraction | None = None
    route_id: _Label | None = None


class _NetworkConditions(msgspec.Struct, gc=False):
    flow_key: str
    timestamp: _Ms
    rtt_ms: _NonNegative | None = None
    packet_loss: _Percent | None = None
    throughput_mbps: _NonNegative | None = None
    bandwidth_estimate: _NonNegative | None = None
    retransmissions: _Count | None = None
    jitter_ms: _NonNegative | None = None
    route_id: _Label | None = None


class _Observation(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    Context: _Context | None = None
    TransportMetrics: _TransportMetrics | None = None
    NetworkConditions: _NetworkConditions | None = None


class _Body(msgspec.Struct, gc=False):
    observations: list[_Observation]


_BODY = msgspec.json.Decoder(_Body)
_BODY_MSGPACK = msgspec.msgpack.Decoder(_Body)
_FRAME = msgspec.json.Decoder(list[_Observation])
_NAN = float("nan")


def read_body(body: bytes | str, max_batch: int) -> Adapted | None:
    """The items of a POST /v1/observe body of the common shape; None for any other body."""
    try:
        observations = _BODY.decode(body).observations
    except msgspec.DecodeError:
        return None
    return _adapted(observations, max_batch)


def read_msgpack_body(body: bytes, max_batch: int) -> Adapted | None:
    """``read_body`` of a MessagePack body (the same map, in MessagePack): None for any other body."""
    try:
        observations = _BODY_MSGPACK.decode(body).observations
    except msgspec.DecodeError:
        return None
    return _adapted(observations, max_batch)


def read_frame(frame: bytes | str, max_batch: int) -> Adapted | None:
    """The items of a frame (a JSON list of observations) of the common shape; None for any other."""
    try:
        observations = _FRAME.decode(frame)
    except msgspec.DecodeError:
        return None
    return _adapted(observations, max_batch)


def _adapted(observations: list[_Observation], max_batch: int) -> Adapted | None:
    if not observations or len(observations) > max_batch:
        return None
    contexts = [o.Context for o in observations]
    if None not in contexts and all(
        o.TransportMetrics is None and o.NetworkConditions is None for o in observations
    ):
        return _columns(contexts)  # type: ignore[arg-type]  # no None in it
    items: list[Item] = []
    for o in observations:
        c, t, n = o.Context, o.TransportMetrics, o.NetworkConditions
        if c is not None and t is None and n is None:
            if not _HEX_KEY.fullmatch(c.flow_key):
                return None
            features = c.features
            if None in features:
                features = tuple(_NAN if v is None else v for v in features)  # type: ignore[assignment]
            row = np.array(features, dtype=np.float32)
            items.append(FlowContext(c.flow_key, c.timestamp, row, c.route_id, c.pattern_id))
        elif t is not None and c is None and n is None:
            if not _HEX_KEY.fullmatch(t.flow_key):
                return None
            items.append(
                from_transport_metrics_values(
                    t.flow_key,
                    t.timestamp,
                    t.connection_count,
                    t.average_latency_ms,
                    t.throughput_mbps,
                    t.error_rate,
                    t.route_id,
                )
            )
        elif n is not None and c is None and t is None:
            if not _HEX_KEY.fullmatch(n.flow_key):
                return None
            items.append(
                from_network_conditions_values(
                    n.flow_key,
                    n.timestamp,
                    n.rtt_ms,
                    n.packet_loss,
                    n.throughput_mbps,
                    n.bandwidth_estimate,
                    n.jitter_ms,
                    n.route_id,
                )
            )
        else:
            return None
    return Adapted(items, [1] * len(items))


def _columns(contexts: list[_Context]) -> Adapted | None:
    """Contexts alone: as columns, every flow key checked in one regular-expression match."""
    keys = [c.flow_key for c in contexts]
    if any(len(k) != KEY_LENGTH for k in keys) or not _HEX.fullmatch("".join(keys)):
        return None
    n = len(contexts)
    routes = [c.route_id for c in contexts]
    patterns = [c.pattern_id for c in contexts]
    batch = ContextBatch(
        keys,
        np.fromiter((c.timestamp for c in contexts), np.int64, n),
        np.array([c.features for c in contexts], dtype=np.float32),  # None -> NaN: missing
        routes if routes.count(None) != n else None,
        patterns if patterns.count(None) != n else None,
    )
    return Adapted([], [], batch)
