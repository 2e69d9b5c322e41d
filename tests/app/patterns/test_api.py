"""POST /v1/patterns/search, GET /v1/patterns/{pattern_id} and similar_patterns, on the real app: observed
flows fill pattern memory through continuous prediction, Layer 2 labels them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services import Services
from tests.app.payloads import contexts, make_settings

T0 = 1_700_000_000_000
FLOWS, STEPS = 12, 40


def key(i: int) -> str:
    return f"{i:064x}"


def context(flow: int, step: int) -> dict[str, Any]:
    latency = 20.0 + 5.0 * np.sin(step / 3.0 + flow)
    features = [latency, 2.0, 0.01, 500.0, 0.5, 0.001, 100.0, 5.0]
    return {"Context": {"flow_key": key(flow), "timestamp": T0 + step * 1000, "features": features}}


def fill(client: TestClient, steps: int = STEPS) -> Services:
    """Observe FLOWS flows for ``steps`` steps (flow 3 labelled by Layer 2 at step 10); wait until stored."""
    services = Services.of(client.app)
    assert services.patterns is not None and services.forecasts is not None
    for step in range(steps):
        observations = [context(f, step) for f in range(FLOWS)]
        if step == 10:
            similarity = {
                "flow_key": key(3),
                "similarity_score": 0.9,
                "pattern_id": "wave",
                "confidence": 0.8,
            }
            observations.append({"SimilarityResult": similarity})
        assert client.post("/v1/observe", json={"observations": observations}).status_code == 202
        deadline = time.monotonic() + 10
        while services.forecasts.continuous.due and time.monotonic() < deadline:
            time.sleep(0.005)
    deadline = time.monotonic() + 10
    memory = services.patterns.memory
    while len(memory) < FLOWS * (steps - 5) and time.monotonic() < deadline:
        time.sleep(0.01)
    # and until the last rounds' windows are in: the count holds still with nothing queued
    seen = -1
    while (seen != len(memory) or memory._queue) and time.monotonic() < deadline:
        seen = len(memory)
        time.sleep(0.2)
    return services


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(
        create_app(make_settings(patterns_enabled=True, patterns_capacity=10_000, patterns_max_k=50))
    ) as client:
        yield client


@pytest.fixture(scope="module")
def search_client() -> Iterator[TestClient]:
    """One app for the module's refused searches: a refusal stores nothing."""
    with TestClient(
        create_app(make_settings(patterns_enabled=True, patterns_capacity=10_000, patterns_max_k=50))
    ) as client:
        yield client


@pytest.mark.slow  # observes flows for seconds
def test_observed_windows_are_stored_with_what_followed_and_found_again(client: TestClient) -> None:
    services = fill(client)
    assert services.patterns is not None
    assert len(services.patterns.memory) >= FLOWS * (STEPS - 5)
    r = client.post("/v1/patterns/search", json={"flow_key": key(1), "k": 5})
    assert r.status_code == 200, r.text
    matches = r.json()["matches"]
    assert len(matches) == 5
    assert [m["distance"] for m in matches] == sorted(m["distance"] for m in matches)
    m = matches[0]
    assert set(m) == {"flow_key", "timestamp", "distance", "pattern_id", "confidence", "next"}
    assert len(m["next"]) == 8 and m["next"][0] == pytest.approx(20.0, abs=5.1)
    # what followed is the stored flow's next observation
    step = (m["timestamp"] - T0) // 1000 + 1
    flow = int(m["flow_key"], 16)
    assert m["next"][0] == pytest.approx(context(flow, step)["Context"]["features"][0], rel=1e-5)
    assert len(r.json()["analog"]) == 8


@pytest.mark.slow  # observes flows for seconds
def test_a_window_given_by_its_contexts_is_searched_too(client: TestClient) -> None:
    fill(client, steps=20)
    r = client.post("/v1/patterns/search", json={"contexts": contexts(20), "k": 3})
    assert r.status_code == 200 and len(r.json()["matches"]) == 3


@pytest.mark.slow  # observes flows for seconds
def test_searches_filter_by_layer_2s_labels(client: TestClient) -> None:
    fill(client)
    r = client.post(
        "/v1/patterns/search", json={"flow_key": key(1), "k": 10, "filter": {"pattern_id": "wave"}}
    )
    assert r.status_code == 200
    matches = r.json()["matches"]
    assert len(matches) == 10
    assert {(m["flow_key"], m["pattern_id"]) for m in matches} == {(key(3), "wave")}
    assert all(m["confidence"] == pytest.approx(0.8) for m in matches)
    r = client.post(
        "/v1/patterns/search", json={"flow_key": key(1), "k": 10, "filter": {"min_confidence": 0.9}}
    )
    assert r.json()["matches"] == []
    r = client.post("/v1/patterns/search", json={"flow_key": key(1), "k": 4, "filter": {"flow_key": key(5)}})
    assert {m["flow_key"] for m in r.json()["matches"]} == {key(5)}


@pytest.mark.slow  # observes flows for seconds
def test_a_pattern_summary_says_what_followed_it(client: TestClient) -> None:
    fill(client)
    r = client.get("/v1/patterns/wave")
    assert r.status_code == 200
    body = r.json()
    assert body["count"] >= STEPS - 15  # flow 3's windows from step 10 on
    assert abs(body["mean_latency_change_ms"]) < 2.0 and body["latency_change_std_ms"] > 0.1
    assert client.get("/v1/patterns/never-seen").status_code == 404


@pytest.mark.slow  # observes flows for seconds
def test_similar_patterns_name_the_nearest_stored_windows(client: TestClient) -> None:
    fill(client)
    r = client.post("/v1/predict", json={"flow_key": key(2)})
    assert r.status_code == 200
    result = r.json()
    names = result["similar_patterns"]
    assert 1 <= len(names) <= 3 and len(set(names)) == len(names)
    for name in names:  # each names a stored window (or Layer 2's label), as GET /v1/patterns answers
        assert client.get(f"/v1/patterns/{name}").status_code == 200
    assert result["metadata"]["analog_matches"] >= 1
    flow = client.get(f"/v1/flows/{key(2)}").json()
    assert flow["forecast"]["similar_patterns"] and "analog_latency_ms" in flow["forecast"]["metadata"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"flow_key": key(1), "k": 0}, ["body", "k"]),
        ({"flow_key": key(1), "k": 51}, ["body", "k"]),  # over CPE_PATTERNS_MAX_K
        ({"flow_key": key(1), "filter": {"colour": "red"}}, ["body", "filter", "colour"]),
        ({"flow_key": key(1), "filter": {"min_confidence": 2}}, ["body", "filter", "min_confidence"]),
        ({"contexts": [{"timestamp": T0, "features": [1.0, 2.0, 3.0]}]}, ["body", "contexts", 0, "features"]),
        ({"flow_key": "xyz"}, ["body", "flow_key"]),
        ({"k": 3}, ["body"]),
    ],
)
def test_bad_searches_are_422s_naming_the_field(
    search_client: TestClient, body: dict[str, Any], field: list[Any]
) -> None:
    r = search_client.post("/v1/patterns/search", json=body)
    assert r.status_code == 422, r.text
    assert any(e["loc"][: len(field)] == field for e in r.json()["detail"]), r.json()


def test_a_search_for_an_unknown_flow_is_a_404(search_client: TestClient) -> None:
    assert search_client.post("/v1/patterns/search", json={"flow_key": key(999)}).status_code == 404


@pytest.mark.slow  # observes flows for seconds
def test_pattern_memory_survives_a_restart_through_its_snapshot(tmp_path: Path) -> None:
    settings = make_settings(
        patterns_enabled=True, patterns_capacity=10_000, patterns_snapshot_path=str(tmp_path / "mem")
    )
    with TestClient(create_app(settings)) as client:
        stored = len(fill(client, steps=15).patterns.memory)  # type: ignore[union-attr]
        before = client.post("/v1/patterns/search", json={"contexts": contexts(20), "k": 5}).json()
    assert stored > 0 and (tmp_path / "mem.npz").exists()
    with TestClient(create_app(settings)) as client:
        services = Services.of(client.app)
        assert services.patterns is not None and len(services.patterns.memory) == stored
        after = client.post("/v1/patterns/search", json={"contexts": contexts(20), "k": 5}).json()
    assert after == before


def test_without_pattern_memory_the_routes_say_so_and_predictions_are_as_before() -> None:
    with TestClient(create_app(make_settings(patterns_enabled=False))) as client:
        assert client.post("/v1/patterns/search", json={"flow_key": key(1)}).status_code == 404
        assert client.get("/v1/patterns/wave").status_code == 404
        r = client.post("/v1/predict", json={"flow_key": key(1), "contexts": contexts(8)})
        assert r.json()["similar_patterns"] == [] and "analog_latency_ms" not in r.json()["metadata"]


@pytest.mark.slow  # observes flows for seconds
def test_adaptive_ttl_and_forecasting_ahead_on_the_real_app() -> None:
    with TestClient(
        create_app(make_settings(patterns_enabled=True, cache_ttl_adaptive=True, cache_ttl_min_ms=1))
    ) as client:
        body = {"flow_key": key(1), "contexts": contexts(8, step_ms=2000)}  # a forecast 2 s ahead: 0.5..2 s
        first = client.post("/v1/predict", json=body).json()
        assert client.post("/v1/predict", json=body).json()["cached"] is True
        time.sleep(2.1)  # past its target: gone from the cache
        again = client.post("/v1/predict", json=body).json()
        assert again["cached"] is False and again["predicted_context"] == first["predicted_context"]
        services = fill(client, steps=6)
        assert services.forecasts is not None
        made = services.forecasts.continuous.stats.forecasts
        services.forecasts.prefetch([key(f) for f in range(FLOWS)])
        deadline = time.monotonic() + 10
        while services.forecasts.continuous.stats.forecasts < made + FLOWS and time.monotonic() < deadline:
            time.sleep(0.01)
        assert services.forecasts.continuous.stats.forecasts == made + FLOWS
