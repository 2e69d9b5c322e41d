"""OpenTelemetry metrics in: OTLP/HTTP export requests (protobuf or JSON) onto flow contexts.

Decoded by the ``opentelemetry-proto`` package. A data point of a gauge or a sum becomes one feature of
one context when its metric name is in the table (by default the feature names themselves, plus the
``metric=feature`` entries of CPE_OTLP_METRIC_NAMES) and its attributes (the point's, else its
resource's) carry ``flow_key`` (64 hex characters) and optionally ``route_id``. Points of one flow at
one moment (``time_unix_nano``, in ms) make one context; features no point carries are missing, and
filled in from the flow. A point with another metric name, type, no or a bad flow key, a value out of
its feature's range or a timestamp before 1973 is rejected (OTLP's ``partial_success``), never applied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from pydantic import TypeAdapter, ValidationError

from app.flows import FlowContext
from app.ingest.adapters import Adapted, Item
from app.ingest.observations import NS_PER_MS, SECONDS_BEFORE_MS
from app.schemas import FlowKey
from app.wire.rules import MAX_FEATURE, MAX_TIMESTAMP_MS, D
from models.scaling import FEATURE_NAMES

_FLOW_KEY: TypeAdapter[str] = TypeAdapter(FlowKey)
FRACTIONS = frozenset({"loss_rate", "utilization", "error_rate"})  # in [0, 1]; the others >= 0


class OtlpDecodeError(ValueError):
    """The body is not an OTLP metrics export request (a 400, as OTLP/HTTP answers it)."""


def metric_table(entries: str) -> dict[str, int]:
    """Metric name -> feature index: the feature names, and ``metric=feature`` entries separated by ``,``."""
    table = {name: i for i, name in enumerate(FEATURE_NAMES)}
    for n, entry in enumerate(e.strip() for e in entries.split(",")):
        if not entry:
            continue
        metric, _, feature = (part.strip() for part in entry.partition("="))
        if not metric or feature not in table:
            raise ValueError(
                f"otlp_metric_names entry {n} ({entry!r}) must be metric=feature, the feature one of "
                f"{', '.join(FEATURE_NAMES)}"
            )
        table[metric] = FEATURE_NAMES.index(feature)
    return table


def decode(body: bytes, content_type: str) -> ExportMetricsServiceRequest:
    """The export request in ``body``: JSON when the content type says so, else protobuf."""
    request = ExportMetricsServiceRequest()
    try:
        if "json" in content_type:
            if not body.lstrip().startswith(b"{"):
                raise ValueError("an OTLP/JSON body is an object")
            json_format.Parse(body, request, ignore_unknown_fields=True)
        else:
            request.ParseFromString(body)
    except (json_format.ParseError, DecodeError, UnicodeDecodeError, ValueError) as exc:
        raise OtlpDecodeError(f"not an OTLP metrics export request: {exc}") from None
    return request


def encode_response(rejected: int, message: str, content_type: str) -> tuple[bytes, str]:
    """The ExportMetricsServiceResponse, in the request's encoding."""
    response = ExportMetricsServiceResponse()
    if rejected or message:
        response.partial_success.rejected_data_points = rejected
        response.partial_success.error_message = message
    if "json" in content_type:
        return json_format.MessageToJson(response, indent=None).encode(), "application/json"
    return response.SerializeToString(), "application/x-protobuf"


@dataclass
class Points:
    """What an export request held: the contexts to apply, and the points rejected, with reasons."""

    adapted: Adapted
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def message(self) -> str:
        return "; ".join(f"{n} point(s): {reason}" for reason, n in self.reasons.items())


def _attributes(attributes: list[KeyValue]) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in attributes if kv.key in ("flow_key", "route_id")}


def contexts_of(request: ExportMetricsServiceRequest, table: Mapping[str, int]) -> Points:
    """The contexts of an export request: one per (flow, route, ms) that its points name."""
    rows: dict[tuple[str, str | None, int], np.ndarray] = {}
    weights: dict[tuple[str, str | None, int], int] = {}
    points = Points(Adapted([], []))
    for resource_metrics in request.resource_metrics:
        resource = _attributes(list(resource_metrics.resource.attributes))
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                data = metric.gauge if kind == "gauge" else metric.sum if kind == "sum" else None
                if data is None:
                    points.reject(f"metric type {kind} is not read (gauges and sums are)")
                    continue
                feature = table.get(metric.name)
                for point in data.data_points:
                    if feature is None:
                        points.reject(f"metric name {metric.name!r} maps to no feature")
                        continue
                    attrs = resource | _attributes(list(point.attributes))
                    try:
                        flow_key = _FLOW_KEY.validate_python(attrs.get("flow_key"))
                    except ValidationError:
                        points.reject("no flow_key attribute of 64 hex characters")
                        continue
                    value = (
                        point.as_double if point.WhichOneof("value") == "as_double" else float(point.as_int)
                    )
                    name = FEATURE_NAMES[feature]
                    high = 1.0 if name in FRACTIONS else MAX_FEATURE
                    if not (math.isfinite(value) and 0.0 <= value <= high):
                        points.reject(f"{name} out of its range [0, {high:g}]")
                        continue
                    ms = point.time_unix_nano // NS_PER_MS
                    if not SECONDS_BEFORE_MS <= ms <= MAX_TIMESTAMP_MS:
                        points.reject("time_unix_nano before 1973 or after 9999")
                        continue
                    at = (flow_key, attrs.get("route_id") or None, ms)
                    row = rows.get(at)
                    if row is None:
                        row = rows[at] = np.full(D, np.nan, dtype=np.float32)
                        weights[at] = 0
                    row[feature] = value
                    weights[at] += 1
    items: list[Item] = []
    for (flow_key, route_id, ms), row in sorted(rows.items(), key=lambda kv: kv[0][2]):
        items.append(FlowContext(flow_key, ms, row, route_id))
        points.adapted.weights.append(weights[flow_key, route_id, ms])
    points.adapted.items = items
    return points
