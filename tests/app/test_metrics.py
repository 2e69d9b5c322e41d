"""/metrics and /v1/stats on the real app: engine figures per batch, HTTP metrics, model info, memory."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from app.api.http_metrics import HttpMetrics
from app.engine import Engine, Overloaded
from app.engine_metrics import LatencyRing
from app.main import create_app
from app.metrics import BatchHistogram, GpuMemory, new_registry, render
from app.services import Services
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor
from tests.app.payloads import contexts, make_settings, predict_body


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(text: str, name: str, **labels: str) -> float:
    return _samples(text)[(name, tuple(sorted(labels.items())))]


def test_metrics_after_traffic_name_the_figures_an_operator_graphs(client: TestClient) -> None:
    bodies = [predict_body(n) for n in (4, 8, 16)]
    for body in bodies * 2:  # the second time round, from the cache
        assert client.post("/v1/predict", json=body).status_code == 200
    assert client.post("/v1/predict/batch", json={"requests": bodies[:2]}).status_code == 200
    assert client.post("/v1/predict", json={"flow_key": "nope"}).status_code == 422
    client.get("/healthz")
    client.get("/no/such/path")
    text = client.get("/metrics").text

    assert _value(text, "cpe_predictions_total", model="lstm") == 3
    assert _value(text, "cpe_prediction_seconds_count", model="lstm") == 3
    assert _value(text, "cpe_queue_wait_seconds_count", model="lstm") == 3
    assert _value(text, "cpe_batch_size_count", model="lstm") == _value(
        text, "cpe_forward_seconds_count", model="lstm"
    )
    assert _value(text, "cpe_batch_size_sum", model="lstm") == 3
    assert _value(text, "cpe_cache_requests_total", tier="memory", result="hit") == 5
    assert _value(text, "cpe_queue_depth") == 0
    assert _value(text, "cpe_queue_capacity") == 2048
    assert _value(text, "cpe_engine_running") == 1
    versions = {p.kind: p.version for p in Services.of(client.app).engine.predictors.values()}
    for kind, version in versions.items():
        default = "true" if kind == "lstm" else "false"
        assert _value(text, "cpe_model_info", model=kind, version=version, device="cpu", default=default) == 1
    assert _value(text, "process_resident_memory_bytes") > 50e6
    # HTTP: status classes, the predict routes by template; probes, /metrics and unknown paths not at all
    http = {labels for name, labels in _samples(text) if name == "http_request_duration_seconds_count"}
    assert (("handler", "/v1/predict"), ("method", "POST"), ("status", "2xx")) in http
    assert (("handler", "/v1/predict"), ("method", "POST"), ("status", "4xx")) in http
    assert (("handler", "/v1/predict/batch"), ("method", "POST"), ("status", "2xx")) in http
    handlers = {dict(labels)["handler"] for labels in http}
    assert handlers.isdisjoint({"/healthz", "/metrics", "/no/such/path", "none"}), handlers
    assert "_created" not in text  # no timestamp series doubling the scrape

    # what an operator graphs: every cpe_ series but histogram buckets, plus the HTTP and process ones
    cpe = {key for key in _samples(text) if key[0].startswith("cpe_") and not key[0].endswith("_bucket")}
    assert len(cpe) >= 25, sorted(cpe)
    assert not any("flow" in name for name, labels in cpe for name in (name, *dict(labels)))


def test_batch_histogram_matches_prometheus_client_on_bucket_boundaries() -> None:
    buckets = (0.001, 0.01, 0.1, 1.0)
    values = [0.0, 0.001, 0.0010001, 0.01, 0.05, 0.1, 1.0, 2.0, 1e-9] * 7  # on, around and past bounds
    registry = CollectorRegistry()
    ours = BatchHistogram("ours", "test", buckets, registry)
    reference = Histogram("ref", "test", ["model"], buckets=buckets, registry=registry)
    ours.observe("m", values[:5])  # the Python path
    ours.observe("m", np.array(values[5:]))  # the numpy path (>= 16 values)
    for v in values:
        reference.labels("m").observe(v)
    got = {s.labels["le"]: s.value for s in next(iter(ours.collect())).samples if s.name == "ours_bucket"}
    want = {
        s.labels["le"]: s.value for s in next(iter(reference.collect())).samples if s.name == "ref_bucket"
    }
    assert got == want
    assert ours.count("m") == len(values)
    assert registry.get_sample_value("ours_sum", {"model": "m"}) == pytest.approx(sum(values))


def test_latency_ring_keeps_the_latest_values_across_the_wrap() -> None:
    ring = LatencyRing(size=100)
    assert ring.percentiles([50]) is None
    ring.extend([1000.0] * 60)  # old values, to be overwritten
    ring.extend(list(range(30)))  # small batch: Python path
    ring.extend(np.arange(30, 100, dtype=np.float64))  # big batch wrapping the end: numpy path
    assert len(ring) == 100
    assert ring.percentiles([0, 100]) == [0.0, 99.0]
    ring.extend(np.full(250, 7.0))  # more than the ring at once: the last 100 win
    assert ring.percentiles([0, 100]) == [7.0, 7.0]


async def test_shed_windows_and_failed_forward_passes_are_counted() -> None:
    registry = new_registry()
    lstm = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    window = contexts(8)
    timestamps = np.array([c["timestamp"] for c in window], dtype=np.int64)
    features = np.array([c["features"] for c in window])
    async with Engine({"lstm": lstm}, queue_size=2, registry=registry) as engine:
        futures = engine.submit_many([("lstm", timestamps, features)] * 2)
        with pytest.raises(Overloaded):
            engine.submit_many([("lstm", timestamps, features)] * 3)
        await asyncio.gather(*futures)
        bad = engine.submit("lstm", timestamps, features[:, :3])  # a wrong width fails in the forward pass
        with pytest.raises(Exception):  # noqa: B017  (whatever torch raises for the shape)
            await bad
    text = render(registry).decode()
    assert _value(text, "cpe_shed_windows_total") == 3
    assert _value(text, "cpe_predictions_total", model="lstm") == 2
    assert _value(text, "cpe_prediction_errors_total", model="lstm") == 1


def test_gpu_memory_is_exported_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: torch.cuda's memory queries stand in for one (the one mock of these tests)."""
    import torch

    class Properties:
        total_memory = 80 << 30

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 3 << 20)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 8 << 20)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    registry = new_registry()
    registry.register(GpuMemory("cuda"))
    text = render(registry).decode()
    assert _value(text, "cpe_gpu_memory_allocated_bytes") == 3 << 20
    assert _value(text, "cpe_gpu_memory_reserved_bytes") == 8 << 20
    assert _value(text, "cpe_gpu_memory_total_bytes") == 80 << 30
    cpu = new_registry()
    cpu.register(GpuMemory("cpu"))
    assert "cpe_gpu_memory" not in render(cpu).decode()


async def test_stats_report_uptime_predictions_hit_rate_latency_model_and_memory() -> None:
    app = create_app(make_settings(models=("lstm", "hybrid"), model="lstm"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cpe") as client:
            empty = (await client.get("/v1/stats")).json()
            bodies = [predict_body(n) for n in range(2, 22)]
            await asyncio.gather(*(client.post("/v1/predict", json=b) for b in bodies))  # 20 computed
            for body in bodies[:5]:
                assert (await client.post("/v1/predict", json=body)).json()["cached"]
            await client.post("/v1/predict", json=predict_body(3, model="hybrid"))
            stats = (await client.get("/v1/stats")).json()
    assert empty["latency"] is None and empty["cache"]["hit_rate"] is None and empty["predictions"] == 0
    assert stats["predictions"] == 26
    assert stats["predictions_by_model"] == {"lstm": 20, "hybrid": 1}
    assert stats["cached_predictions"] == 5
    assert stats["cache"] | {"hits_by_tier": None} == {
        "lookups": 26,
        "hits": 5,
        "hit_rate": round(5 / 26, 4),
        "hits_by_tier": None,
        "errors": 0,
        "entries": 21,
    }
    latency = stats["latency"]
    assert latency["windows"] == 21
    assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"] < 10_000
    assert stats["engine"]["forward_passes"] < 21  # concurrent requests were batched
    assert stats["engine"]["queue_capacity"] == 2048 and stats["engine"]["shed_windows"] == 0
    assert stats["default_model"] == "lstm" and set(stats["models"]) == {"lstm", "hybrid"}
    assert stats["device"] == "cpu"
    assert stats["memory"]["rss_bytes"] > 50e6 and stats["memory"]["gpu_allocated_bytes"] is None
    assert stats["uptime_s"] > 0
    json.dumps(stats)  # plain JSON all the way down


async def test_a_request_that_fails_before_answering_counts_as_5xx() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    registry = CollectorRegistry()
    metrics = HttpMetrics(broken, registry=registry, buckets=(0.1, 1.0), excluded=("/healthz",))
    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "app": create_app()}
    with pytest.raises(RuntimeError):
        await metrics(scope, None, None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await metrics(scope | {"path": "/healthz", "method": "GET"}, None, None)  # type: ignore[arg-type]
    labels = {"handler": "/v1/predict", "method": "POST", "status": "5xx"}
    assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 1
    assert (
        registry.get_sample_value("http_request_duration_seconds_count", labels | {"handler": "/healthz"})
        is None
    )
