"""Online learning in one process: feedback in, replay, training steps, rollout and rollback."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.learning.feedback import Feedback, FeedbackFull, MemoryFeedback
from app.learning.online import OnlineLearning
from app.learning.replay import ReplayBuffer
from app.learning.rollout import baseline_errors, judge
from app.learning.trainer import Trainer, encode, weights_finite
from app.learning.tuner import Tuner
from app.main import create_app
from app.services import Services
from app.settings import Settings
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor
from tests.app.payloads import FLOW_KEY, contexts, make_settings


def learning_settings(**overrides: Any) -> Settings:
    """A learner that acts on little feedback, quickly."""
    values: dict[str, Any] = {
        "models": ("lstm",),
        "learning_min_samples": 32,
        "replay_validation": 16,
        "learning_eval_steps": 10,
        "learning_steps_per_s": 500.0,
        "learning_rate": 1e-3,
    }
    return make_settings(**(values | overrides))


def biased_feedback(i: int) -> dict[str, Any]:
    """Feedback whose actual latency is always twice the window's level: a bias a model learns fast."""
    window = contexts(33, seed=i)
    actual = window.pop()
    actual["features"][0] *= 2.0
    return {"flow_key": FLOW_KEY, "contexts": window, "actual": actual}


def persistent_feedback(i: int) -> dict[str, Any]:
    """Feedback whose actual repeats the window's last context: persistence is exact there, no model is."""
    window = contexts(33, seed=i)
    actual = window.pop()
    actual["features"] = window[-1]["features"]
    return {"flow_key": FLOW_KEY, "contexts": window, "actual": actual}


def metric(client: TestClient, series: str) -> float:
    """The value of one series in GET /metrics."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} is not exported")


def learning_of(client: TestClient) -> OnlineLearning:
    learning = Services.of(client.app).learning
    assert learning is not None, "the app does not learn: CPE_LEARNING_ENABLED is off"
    return learning


def wait_for(predicate: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def lstm() -> Predictor:
    return Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")


# -- the API ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_feedback_is_accepted_and_learned_into_a_new_version() -> None:
    with TestClient(create_app(learning_settings())) as client:
        shipped = client.get("/v1/models").json()["models"][0]["version"]
        for i in range(80):
            response = client.post("/v1/feedback", json=biased_feedback(i))
            assert response.status_code == 202, response.text
            assert response.json()["accepted"] is True

        def rolled_out() -> dict[str, Any] | None:
            model = client.get("/v1/models").json()["models"][0]
            return model if model["version"] != shipped else None

        wait_for(rolled_out)
        learner = learning_of(client).learner
        client.portal.call(learner.stop)  # no more versions while this test looks
        model = client.get("/v1/models").json()["models"][0]
        history = model["history"]
        latest, first = history[0], history[-1]
        # one version went live, or more before the learner stopped (the small model trains fast):
        # each was trained from the one before it, back to the shipped one
        assert len(history) >= 2 and all(v["source"] == "online" for v in history[:-1])
        assert [v["parent"] for v in history[:-1]] == [v["version"] for v in history[1:]]
        figures = latest["validation"]
        assert figures["loss"] < figures["serving_loss"]
        assert figures["latency_mae"] < min(figures["persistence_mae"], figures["ewma_mae"])
        assert first == {**first, "version": shipped, "source": "shipped"}
        # the new version answers, under new cache keys
        result = client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": contexts(32)}).json()
        assert result["model_version"] == model["version"] and result["cached"] is False
        metrics = client.get("/metrics").text
        assert 'cpe_learning_feedback_total{result="accepted"} 80.0' in metrics
        assert f"cpe_learning_rollouts_total {len(history) - 1:.1f}" in metrics


@pytest.mark.slow
def test_a_copy_better_than_the_serving_version_but_not_than_persistence_stays_back() -> None:
    with TestClient(create_app(learning_settings())) as client:
        shipped = client.get("/v1/models").json()["models"][0]["version"]
        for i in range(80):
            assert client.post("/v1/feedback", json=persistent_feedback(i)).status_code == 202
        wait_for(lambda: metric(client, 'cpe_learning_held_back_total{baseline="persistence"}') >= 2)
        learner = learning_of(client).learner
        client.portal.call(learner.stop)  # no evaluation while this test looks
        assert learner.stats["held_back"] >= 2 and learner.stats["rollouts"] == 0
        model = client.get("/v1/models").json()["models"][0]
        assert model["version"] == shipped and [r["source"] for r in model["history"]] == ["shipped"]
        assert metric(client, "cpe_learning_rollouts_total") == 0.0


@pytest.mark.slow
def test_feedback_by_prediction_id_and_by_an_unknown_one() -> None:
    with TestClient(create_app(learning_settings())) as client:
        window = contexts(20, seed=3)
        prediction = client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": window}).json()
        again = client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": window}).json()
        assert again["cached"] is True and again["prediction_id"] == prediction["prediction_id"]
        actual = {"timestamp": window[-1]["timestamp"] + 1000, "features": window[-1]["features"]}
        response = client.post(
            "/v1/feedback", json={"prediction_id": prediction["prediction_id"], "actual": actual}
        )
        assert response.status_code == 202
        unknown = client.post("/v1/feedback", json={"prediction_id": "0" * 32, "actual": actual})
        assert unknown.status_code == 422
        [error] = unknown.json()["detail"]
        assert error["loc"] == ["body", "prediction_id"] and "send flow_key and contexts" in error["msg"]


@pytest.fixture(scope="module")
def feedback_client() -> Iterator[TestClient]:
    """One learning app for the module's refused feedback: a refusal changes nothing."""
    with TestClient(create_app(learning_settings())) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"actual": {"timestamp": 2_000_000_000_000, "features": [1.0] * 8}}, ["body"]),  # neither form
        (
            {
                "flow_key": FLOW_KEY,
                "contexts": contexts(4),
                "actual": {"timestamp": 100_000_000_000, "features": [1.0] * 8},
            },
            ["body"],
        ),
        (
            {
                "flow_key": FLOW_KEY,
                "contexts": contexts(4),
                "actual": {"timestamp": 2e12, "features": [1.0] * 7},
            },
            ["body", "actual", "features"],
        ),
        (
            {"prediction_id": "xyz", "actual": {"timestamp": 2_000_000_000_000, "features": [1.0] * 8}},
            ["body", "prediction_id"],
        ),
    ],
)
def test_bad_feedback_is_a_422_naming_the_field(
    feedback_client: TestClient, body: dict[str, Any], loc: list[str]
) -> None:
    response = feedback_client.post("/v1/feedback", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][: len(loc)] == loc


def test_a_full_in_process_buffer_refuses_with_429() -> None:
    # min_samples far away and a buffer of 3: the learner drains it, so hold the lease back instead
    settings = learning_settings(feedback_buffer=3)
    with TestClient(create_app(settings)) as client:
        learning = learning_of(client)
        learning.learner._active.clear()
        client.portal.call(learning.learner.stop)  # nobody drains the buffer any more
        codes = [client.post("/v1/feedback", json=biased_feedback(i)).status_code for i in range(5)]
        assert codes == [202, 202, 202, 429, 429]
        refused = client.post("/v1/feedback", json=biased_feedback(9))
        assert refused.headers["retry-after"] == "1" and "full" in refused.json()["detail"]
        assert learning.store.pending == 3  # what was accepted is still there
        assert 'cpe_learning_feedback_total{result="refused"} 3.0' in client.get("/metrics").text


def test_learning_disabled_refuses_feedback_with_404() -> None:
    with TestClient(create_app(make_settings(learning_enabled=False))) as client:
        assert client.post("/v1/feedback", json=biased_feedback(0)).status_code == 404
        assert client.get("/v1/models").json()["learning"] is False


@pytest.mark.slow
def test_rollback_returns_to_the_earlier_version() -> None:
    with TestClient(create_app(learning_settings())) as client:
        shipped = client.get("/v1/models").json()["models"][0]["version"]
        for i in range(80):
            client.post("/v1/feedback", json=biased_feedback(i))
        wait_for(lambda: client.get("/v1/models").json()["models"][0]["version"] != shipped)
        learning = learning_of(client)
        client.portal.call(learning.learner.stop)  # no new version while this test looks
        learned = client.get("/v1/models").json()["models"][0]["version"]
        response = client.post("/v1/models/rollback", json={"version": shipped})
        assert response.status_code == 200, response.text
        assert response.json() == {"model": "lstm", "version": shipped, "previous": learned}
        model = client.get("/v1/models").json()["models"][0]
        assert model["version"] == shipped and model["history"][0]["source"] == "rollback"
        unknown = client.post("/v1/models/rollback", json={"version": "lstm-000000000000"})
        assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "version"]
        assert 'cpe_learning_rollbacks_total{reason="manual"} 1.0' in client.get("/metrics").text


# -- the parts ------------------------------------------------------------------------------------------


def sample(i: int, n: int = 32) -> Feedback:
    window = contexts(n + 1, seed=i)
    return Feedback(
        flow_key=FLOW_KEY,
        timestamps=np.array([c["timestamp"] for c in window[:n]], dtype=np.int64),
        features=np.array([c["features"] for c in window[:n]]),
        actual_timestamp=window[n]["timestamp"],
        actual=np.array(window[n]["features"]),
    )


async def test_memory_feedback_refuses_beyond_its_limit_and_keeps_order() -> None:
    store = MemoryFeedback(limit=2)
    assert [await store.append(sample(i)) for i in range(2)] == ["1", "2"]
    with pytest.raises(FeedbackFull):
        await store.append(sample(2))
    taken = await store.read(10, block_ms=10)
    assert [i for i, _ in taken] == ["1", "2"] and store.pending == 0
    assert await store.read(10, block_ms=10) == []


def test_feedback_round_trips_through_stream_fields() -> None:
    original = sample(5)
    fields = {k.encode(): v for k, v in original.to_fields().items()}
    back = Feedback.from_fields(fields)
    np.testing.assert_array_equal(back.timestamps, original.timestamps)
    np.testing.assert_array_equal(back.features, original.features)
    np.testing.assert_array_equal(back.actual, original.actual)
    assert (back.flow_key, back.actual_timestamp) == (original.flow_key, original.actual_timestamp)


def test_replay_holds_back_the_newest_and_samples_by_priority() -> None:
    replay = ReplayBuffer(capacity=8, validation=4, seq_len=2, n_inputs=1, n_features=1, seed=0)
    x = np.arange(14, dtype=np.float32).reshape(14, 1, 1).repeat(2, axis=1)
    replay.add(x, np.arange(14, dtype=np.float32).reshape(14, 1, 1))
    _, held_y = replay.held_back()
    assert sorted(held_y.ravel().tolist()) == [10.0, 11.0, 12.0, 13.0]  # the newest four, never trained on
    assert len(replay) == 8  # 0..9 went through; the ring keeps the last 8 of them: 2..9
    assert replay.validation_size == 4
    # one sample with a large error gets most of the draws, and the smallest importance weight
    replay.update_priorities(np.arange(8), np.array([10.0] + [0.01] * 7))
    p = replay.probabilities()
    assert p.argmax() == 0 and p[0] > 0.5
    batch = replay.sample(256)
    assert np.mean(batch.index == 0) > 0.4
    assert batch.weights.max() == pytest.approx(1.0)
    assert batch.weights[batch.index == 0].max() < batch.weights[batch.index != 0].min()


def test_a_new_sample_enters_at_the_highest_priority() -> None:
    replay = ReplayBuffer(capacity=8, validation=1, seq_len=1, n_inputs=1, n_features=1)
    replay.add(np.zeros((3, 1, 1), np.float32), np.zeros((3, 1, 1), np.float32))
    replay.update_priorities(np.arange(2), np.array([5.0, 0.1]))
    replay.add(np.zeros((1, 1, 1), np.float32), np.zeros((1, 1, 1), np.float32))
    p = replay.probabilities()
    assert p[2] == pytest.approx(p[0])


def test_a_training_step_changes_the_copy_only() -> None:
    predictor = lstm()
    before = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    trainer = Trainer(predictor, lr=1e-3)
    replay = ReplayBuffer(64, 4, predictor.seq_len, predictor.scaler.n_inputs, predictor.scaler.n_features)
    x, y = encode(predictor, [sample(i) for i in range(40)])
    replay.add(x, y)
    step = trainer.step(replay, 32)
    assert step.applied and math.isfinite(step.loss)
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the step moved no weight"
    assert all(
        torch.equal(v, before[k]) for k, v in predictor.model.state_dict().items()
    )  # serving untouched


def test_a_nan_update_is_not_applied() -> None:
    predictor = lstm()
    trainer = Trainer(predictor, lr=1e-3)
    replay = ReplayBuffer(64, 1, predictor.seq_len, predictor.scaler.n_inputs, predictor.scaler.n_features)
    x, y = encode(predictor, [sample(i) for i in range(10)])
    y[:] = np.nan  # a poisoned target in every sample
    replay.add(x, y)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    step = trainer.step(replay, 8)
    assert not step.applied and not math.isfinite(step.loss)
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    assert weights_finite(trainer.model)


RULE = {"min_improvement": 0.01, "rollback_margin": 0.05}
BEATEN = {"latency_mae": 0.5, "baseline_maes": {"persistence": 0.8, "ewma": 0.7}}  # both baselines beaten


def test_nan_weights_are_rolled_back_and_only_better_copies_are_promoted() -> None:
    predictor = lstm()
    trainer = Trainer(predictor, lr=1e-3)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    assert not weights_finite(trainer.model)
    verdict = judge(float("nan"), 1.0, finite=False, **RULE, **BEATEN)
    assert verdict.discard and not verdict.promote and verdict.reason == "nonfinite"
    trainer.reset(trainer.base)  # what the learner does with a discarded copy
    assert weights_finite(trainer.model)
    assert judge(0.98, 1.0, finite=True, **RULE, **BEATEN).promote
    assert not judge(0.995, 1.0, finite=True, **RULE, **BEATEN).promote
    worse = judge(1.2, 1.0, finite=True, **RULE, **BEATEN)
    assert worse.discard and worse.reason == "worse"


@pytest.mark.parametrize(
    ("latency_mae", "reason", "held_back_by"),
    [
        (0.5, "better", None),
        (0.8, "not better than persistence", "persistence"),  # a tie is not better
        (0.9, "not better than persistence", "persistence"),  # the first baseline not beaten is named
        (0.75, "not better than ewma", "ewma"),
        (float("nan"), "not better than persistence", "persistence"),
    ],
)
def test_a_copy_better_than_the_serving_version_must_also_beat_every_baseline(
    latency_mae: float, reason: str, held_back_by: str | None
) -> None:
    baselines = {"persistence": 0.8, "ewma": 0.7}
    verdict = judge(0.9, 1.0, finite=True, **RULE, latency_mae=latency_mae, baseline_maes=baselines)
    assert (verdict.reason, verdict.held_back_by) == (reason, held_back_by)
    assert verdict.promote is (reason == "better") and not verdict.discard  # held back, not thrown away
    # the baselines only decide between going live and staying back: not better yet stays not better yet
    not_yet = judge(0.995, 1.0, finite=True, **RULE, latency_mae=latency_mae, baseline_maes=baselines)
    assert not_yet.reason == "not better yet"


def test_baseline_errors_are_persistence_and_ewma_on_one_feature() -> None:
    x = np.full((2, 3, 3), 99.0, dtype=np.float32)  # (V, T, F): only feature 1 may be read
    x[:, :, 1] = [[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]]
    y = np.full((2, 1, 2), -99.0, dtype=np.float32)
    y[:, 0, 1] = [1.0, 1.0]
    errors = baseline_errors(x, y, feature=1)
    # persistence: 1 and 0 -> errors 0 and 1; EWMA (alpha 0.3): 0.3 and 2 * 0.7**2 = 0.98 -> 0.7 and 0.02
    assert errors == {"persistence": pytest.approx(0.5), "ewma": pytest.approx(0.36)}


def test_baseline_errors_are_in_the_space_the_model_predicts_in() -> None:
    predictor = lstm()
    repeated = []
    for i in range(20):
        s = sample(i)
        s.actual = s.features[-1].copy()  # what came next is the last context again
        repeated.append(s)
    x, y = encode(predictor, repeated)
    errors = baseline_errors(x, y, predictor.calibration.primary_feature)
    assert errors["persistence"] < 1e-6 < 0.1 < errors["ewma"]
    # the model's error there is measured the same way: in the same units, and above persistence's 0
    figures = Trainer(predictor, lr=1e-3).validation(predictor.model, x, y)
    assert math.isfinite(figures.loss) and errors["persistence"] < figures.latency_mae < 10.0


def test_the_tuner_speeds_up_while_validation_improves_and_slows_down_when_not() -> None:
    tuner = Tuner(lr=1e-3, lr_min=1e-5, lr_max=4e-3, max_steps_per_s=10.0)
    tuner.observe(0.9, 1.0)
    assert tuner.lr == pytest.approx(1.25e-3) and tuner.steps_per_s == 10.0
    tuner.observe(0.95, 1.0)  # worse than the last comparison
    assert tuner.lr == pytest.approx(6.25e-4) and tuner.steps_per_s == pytest.approx(5.0)
    for _ in range(20):
        tuner.observe(2.0, 1.0)
        tuner.last_ratio = 1.0
    assert tuner.lr == 1e-5 and tuner.steps_per_s == pytest.approx(1.0)  # the floors
