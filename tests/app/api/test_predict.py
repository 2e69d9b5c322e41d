"""POST /v1/predict and /v1/predict/batch with valid requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from websockets.asyncio.client import connect

from app.main import create_app
from app.schemas import BatchPredictResult, PredictionResult
from app.services import Services
from app.wire.rules import FEATURES
from tests.app.payloads import FLOW_KEY, contexts, make_settings, predict_body
from tools.process import serving

FEATURE_NAMES = [f.name for f in FEATURES]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """One app for the module's tests: an answer does not depend on what was asked before (a cache hit is
    the same answer); the tests that read the cache or the engine's counters take ``fresh_client``."""
    with TestClient(create_app(make_settings())) as client:
        yield client


@pytest.fixture
def fresh_client() -> Iterator[TestClient]:
    """An app of this test alone: nothing cached, no forward pass counted yet."""
    with TestClient(create_app(make_settings())) as client:
        yield client


def test_predict_answers_a_prediction_result(fresh_client: TestClient) -> None:
    response = fresh_client.post("/v1/predict", json=predict_body(32))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    result = PredictionResult.model_validate(response.json())
    assert result.flow_key == FLOW_KEY
    assert result.horizon == 1
    assert len(result.predicted_context) == 8
    assert result.steps == [result.predicted_context]
    assert 0.0 <= result.confidence <= 1.0
    assert all(
        lo <= p <= hi for lo, p, hi in zip(result.lower, result.predicted_context, result.upper, strict=True)
    )
    assert result.model_used == "lstm"
    assert result.model_version.startswith("lstm-")
    assert result.cached is False
    assert result.processing_time_ms > 0
    assert result.similar_patterns == []  # no context carries a pattern_id
    assert result.metadata == {
        "step_ms": 1000.0,
        "horizon_ms": 1000.0,
        "window_length": 32.0,
        "contexts_used": 32.0,
    }


@pytest.mark.parametrize("horizon", [2, 5, 8])
def test_multi_step_horizon_gives_every_step_up_to_it(client: TestClient, horizon: int) -> None:
    full = client.post("/v1/predict", json=predict_body(20, horizon=8)).json()
    result = client.post("/v1/predict", json=predict_body(20, horizon=horizon)).json()
    assert result["horizon"] == horizon
    assert len(result["steps"]) == horizon
    assert result["predicted_context"] == result["steps"][-1]
    # the same forecast, cut at the asked horizon: steps and the interval/confidence of step `horizon`
    np.testing.assert_allclose(result["steps"], full["steps"][:horizon], rtol=1e-5)
    assert result["metadata"]["horizon_ms"] == 1000.0 * horizon


def test_flow_key_as_32_ints_is_answered_as_hex(client: TestClient) -> None:
    key = list(range(200, 232))
    result = client.post("/v1/predict", json=predict_body(8, flow_key=key)).json()
    assert result["flow_key"] == bytes(key).hex()


@pytest.mark.parametrize("n", [1, 5, 32, 64])
def test_windows_shorter_and_longer_than_the_sequence_length(client: TestClient, n: int) -> None:
    result = client.post("/v1/predict", json=predict_body(n)).json()
    assert result["metadata"]["window_length"] == n
    assert result["metadata"]["contexts_used"] == min(n, 32)
    assert np.isfinite(result["predicted_context"]).all()


def test_a_longer_window_is_read_from_its_end(client: TestClient) -> None:
    window = contexts(64, seed=3)
    tail = client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": window[-32:]}).json()
    whole = client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": window}).json()
    np.testing.assert_allclose(whole["predicted_context"], tail["predicted_context"], rtol=1e-5)


@pytest.mark.parametrize("model", ["lstm", "transformer", "hybrid"])
def test_each_loaded_model_can_be_asked_for(client: TestClient, model: str) -> None:
    result = client.post("/v1/predict", json=predict_body(16, model=model, horizon=3)).json()
    assert result["model_used"] == model
    assert result["model_version"].startswith(f"{model}-")


def test_irregular_spacing_gives_the_median_step(client: TestClient) -> None:
    window = contexts(6)
    for context, t in zip(window, [0, 2000, 7000, 9000, 9500, 11500], strict=True):
        context["timestamp"] = 1_700_000_000_000 + t
    result = client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": window, "horizon": 4}).json()
    assert result["metadata"]["step_ms"] == 2000.0  # median of 2000, 5000, 2000, 500, 2000
    assert result["metadata"]["horizon_ms"] == 8000.0


def test_similar_patterns_are_the_labelled_contexts_nearest_the_prediction(client: TestClient) -> None:
    window = contexts(12, seed=1)
    for context in window:  # a steady flow at 20 ms ...
        context["features"][0] = 20.0
        context["pattern_id"] = "normal"
    # ... that once dipped and once spiked, long ago: any sane forecast stays near 20 ms
    window[0]["features"][0], window[0]["pattern_id"] = 2.0, "quiet"
    window[1]["features"][0], window[1]["pattern_id"] = 200.0, "congested"
    result = client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": window}).json()
    assert 10.0 < result["predicted_context"][0] < 40.0
    assert result["similar_patterns"][0] == "normal"
    assert sorted(result["similar_patterns"]) == ["congested", "normal", "quiet"]


def test_similar_patterns_are_at_most_three_and_distinct(client: TestClient) -> None:
    window = contexts(20, patterns=["a", "b", "c", "d", "e"])
    result = client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": window}).json()
    assert len(result["similar_patterns"]) == 3
    assert len(set(result["similar_patterns"])) == 3


def test_batch_answers_in_request_order(client: TestClient) -> None:
    requests = [
        predict_body(n, flow_key=f"{i:064x}", horizon=1 + i % 8, model=["lstm", "hybrid", None][i % 3])
        for i, n in enumerate([1, 3, 32, 64, 7, 12])
    ]
    response = client.post("/v1/predict/batch", json={"requests": requests})
    assert response.status_code == 200
    results = BatchPredictResult.model_validate(response.json()).results
    assert [r.flow_key for r in results] == [f"{i:064x}" for i in range(6)]
    assert [r.horizon for r in results] == [1, 2, 3, 4, 5, 6]
    assert [r.model_used for r in results] == ["lstm", "hybrid", "lstm", "lstm", "hybrid", "lstm"]
    assert [r.metadata["window_length"] for r in results] == [1, 3, 32, 64, 7, 12]


def test_batch_matches_single_predictions(client: TestClient) -> None:
    requests = [predict_body(n, horizon=3) for n in (4, 32, 50)]
    batch = client.post("/v1/predict/batch", json={"requests": requests}).json()["results"]
    singles = [client.post("/v1/predict", json=r).json() for r in requests]
    for b, s in zip(batch, singles, strict=True):
        np.testing.assert_allclose(b["steps"], s["steps"], rtol=1e-4)
        np.testing.assert_allclose(b["confidence"], s["confidence"], rtol=1e-4, atol=1e-6)


def test_batch_windows_share_forward_passes(fresh_client: TestClient) -> None:
    engine = Services.of(fresh_client.app).engine
    before = engine.stats.forward_passes
    requests = [predict_body(n) for n in range(1, 17)]
    assert fresh_client.post("/v1/predict/batch", json={"requests": requests}).status_code == 200
    assert engine.stats.forward_passes - before == 1  # 16 windows of one model, mixed lengths: one pass
    assert engine.stats.max_batch_size == 16


@pytest.mark.server
async def test_the_predict_socket_holds_contexts_to_the_same_ranges_and_unit() -> None:
    """/v1/stream/predict, on a real server: a feature out of range and a timestamp in seconds are a 422
    naming them, as over HTTP; named features are answered."""
    bad_loss = predict_body(4)
    bad_loss["contexts"][1]["features"][2] = 7.0
    in_seconds = predict_body(4)
    for context in in_seconds["contexts"]:
        context["timestamp"] //= 1000
    named = predict_body(4)
    for context in named["contexts"]:
        context["features"] = dict(zip(FEATURE_NAMES, context["features"], strict=True))
    env = {"CPE_DEVICE": "cpu", "CPE_MODELS": "lstm", "CPE_MODEL": "lstm", "CPE_LOG_LEVEL": "warning"}
    with serving(env) as [server]:
        async with connect(f"ws://127.0.0.1:{server.port}/v1/stream/predict", proxy=None) as ws:
            for i, body in enumerate((bad_loss, in_seconds, named)):
                await ws.send(json.dumps({"id": i, **body}))
            answers = {
                a["id"]: a for a in [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(3)]
            }
    loss_error = answers[0]["error"]
    assert loss_error["status"] == 422
    assert [(e["loc"], e["type"]) for e in loss_error["detail"]] == [
        (["body", "contexts", 1, "features"], "feature_range")
    ]
    assert "loss_rate" in loss_error["detail"][0]["msg"] and "[0, 1]" in loss_error["detail"][0]["msg"]
    unit_error = answers[1]["error"]
    assert [e["type"] for e in unit_error["detail"]] == ["timestamp_unit"] * 4
    assert "milliseconds since the epoch expected" in unit_error["detail"][0]["msg"]
    assert len(answers[2]["result"]["predicted_context"]) == len(FEATURE_NAMES)
