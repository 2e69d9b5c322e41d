"""POST /v1/otlp/v1/metrics: the real OpenTelemetry SDK exporter pushing to a running CPE (protobuf), and
OTLP/JSON bodies as a Collector's otlphttp exporter sends them; rejected points are counted and named."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from app.ingest.otlp import metric_table
from app.main import create_app
from tests.app.payloads import make_settings
from tools.process import ServerProcess, serving

pytestmark = pytest.mark.server  # real cpe serve processes

KEY = "5e" * 32
OTHER = "7a" * 32


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    settings = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_LEARNING_ENABLED": "false",
        "CPE_OTLP_METRIC_NAMES": "net.rtt=latency_ms, net.loss=loss_rate",
    }
    with serving(settings) as [process]:
        yield process


def test_the_sdk_exporter_feeds_flow_windows(server: ServerProcess) -> None:
    exporter = OTLPMetricExporter(endpoint=f"{server.url}/v1/otlp/v1/metrics", timeout=10)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("cpe-test")
    rtt = meter.create_gauge("net.rtt", unit="ms")  # through CPE_OTLP_METRIC_NAMES
    throughput = meter.create_gauge("throughput_mbps")  # a feature name itself
    connections = meter.create_up_down_counter("connections")  # a sum
    loss = meter.create_gauge("net.loss")
    try:
        for round_ in range(2):
            rtt.set(20.0 + round_, {"flow_key": KEY, "route_id": "r1"})
            throughput.set(300.0, {"flow_key": KEY, "route_id": "r1"})
            connections.add(7, {"flow_key": KEY, "route_id": "r1"})
            rtt.set(50.0, {"flow_key": OTHER})
            loss.set(0.5, {"flow_key": OTHER})
            assert provider.force_flush(10_000)
            time.sleep(0.01)  # the next collection is a later moment
    finally:
        provider.shutdown()
    flow = httpx.get(f"{server.url}/v1/flows/{KEY}").json()
    assert flow["length"] == 3 and flow["route_id"] == "r1"  # two flushes, and the last export at shutdown
    features = flow["newest"]["features"]
    assert features[0] == pytest.approx(21.0) and features[3] == pytest.approx(300.0)
    assert features[6] == pytest.approx(14.0)  # a cumulative sum, as the SDK reports it
    assert set(flow["newest"]["imputed"]) == {
        "jitter_ms",
        "loss_rate",
        "utilization",
        "error_rate",
        "queue_depth",
    }
    other = httpx.get(f"{server.url}/v1/flows/{OTHER}").json()["newest"]
    assert other["features"][0] == pytest.approx(50.0) and other["features"][2] == pytest.approx(0.5)


def _json_export(
    points: list[dict[str, Any]], name: str = "latency_ms", kind: str = "gauge"
) -> dict[str, Any]:
    data: dict[str, Any] = {"dataPoints": points}
    if kind == "sum":
        data |= {"aggregationTemporality": 2, "isMonotonic": False}
    return {
        "resourceMetrics": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "gnmic"}}]},
                "scopeMetrics": [{"metrics": [{"name": name, kind: data}]}],
            }
        ]
    }


def _point(value: float, flow_key: str | None = KEY, ns: int = 1_767_225_600_000_000_000) -> dict[str, Any]:
    attributes = [] if flow_key is None else [{"key": "flow_key", "value": {"stringValue": flow_key}}]
    return {"timeUnixNano": str(ns), "asDouble": value, "attributes": attributes}


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(models=("lstm",), learning_enabled=False))) as client:
        yield client


def test_otlp_json_points_become_contexts_and_rejected_ones_are_counted(client: TestClient) -> None:
    body = _json_export(
        [_point(12.0), _point(13.0, ns=1_767_225_601_000_000_000), _point(1.0, None), _point(-1.0)]
    )
    answer = client.post("/v1/otlp/v1/metrics", json=body)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    partial = answer.json()["partialSuccess"]
    assert partial["rejectedDataPoints"] == "2"  # an int64, a string in OTLP/JSON
    assert (
        "no flow_key" in partial["errorMessage"] and "latency_ms out of its range" in partial["errorMessage"]
    )
    flow = client.get(f"/v1/flows/{KEY}").json()
    assert flow["length"] == 2 and flow["newest"]["features"][0] == pytest.approx(13.0)


def test_otlp_unknown_metric_names_and_histograms_are_rejected_not_applied(client: TestClient) -> None:
    answer = client.post("/v1/otlp/v1/metrics", json=_json_export([_point(3.0)], name="cpu.load"))
    assert answer.json()["partialSuccess"]["rejectedDataPoints"] == "1"
    assert "maps to no feature" in answer.json()["partialSuccess"]["errorMessage"]
    histogram = _json_export([], name="latency_ms", kind="histogram")
    histogram["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["histogram"] = {"dataPoints": [{}]}
    assert client.post("/v1/otlp/v1/metrics", json=histogram).status_code == 200
    assert client.get(f"/v1/flows/{KEY}").status_code == 404


def test_otlp_late_points_are_said_not_applied(client: TestClient) -> None:
    client.post("/v1/otlp/v1/metrics", json=_json_export([_point(12.0, ns=1_767_225_601_000_000_000)]))
    answer = client.post("/v1/otlp/v1/metrics", json=_json_export([_point(99.0)]))
    assert "1 point(s) late" in answer.json()["partialSuccess"]["errorMessage"]
    assert client.get(f"/v1/flows/{KEY}").json()["newest"]["features"][0] == pytest.approx(12.0)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\x00garbage", "application/x-protobuf"),
        (b"{not json", "application/json"),
        (b"[]", "application/json"),
    ],
)
def test_a_body_that_is_not_an_export_request_is_a_400(
    client: TestClient, body: bytes, content_type: str
) -> None:
    answer = client.post("/v1/otlp/v1/metrics", content=body, headers={"content-type": content_type})
    assert answer.status_code == 400 and "not an OTLP metrics export request" in answer.json()["detail"]


def test_the_metric_table_takes_entries_and_names_a_bad_one() -> None:
    assert metric_table("net.rtt=latency_ms")["net.rtt"] == 0
    assert metric_table("")["queue_depth"] == 7
    with pytest.raises(ValueError, match="entry 1"):
        metric_table("a=latency_ms,b=speed")
