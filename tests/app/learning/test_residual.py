"""Per-flow latency corrections: learnt by RLS from scored forecasts, served while they measure better."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from app.learning.residual import FlowResiduals, P, block_features, features
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor

D = 8
KEY = "ab" * 32


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")


def run(
    predictor: Predictor, residuals: FlowResiduals, n: int, *, lead: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A flow whose next latency is ``exp(lead * e)`` times its level, e the queue depth's fluctuation one
    sample earlier; each step forecast by the model, corrected, then scored. Returns the served and the
    model's own next-step latency, and the actual."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(n + 40)
    rows = np.tile([40.0, 4.0, 0.001, 800.0, 0.5, 0.0001, 100.0, 20.0], (n + 40, 1))
    rows[:, 7] = np.round(20.0 * np.exp(0.8 * e))
    rows[1:, 0] *= np.exp(lead * e[:-1] + 0.03 * rng.standard_normal(n + 39))
    ts = np.arange(n + 40, dtype=np.int64) * 10_000
    windows = [rows[end - 32 : end] for end in range(32, 32 + n)]
    forecast = predictor.predict([ts[end - 32 : end] for end in range(32, 32 + n)], windows, 1)  # one pass
    own = forecast.mean[:, 0, 0].copy()
    for i in range(n):  # in order: each forecast is corrected by what the labels before it taught
        base_ts = int(ts[31 + i])
        residuals.correct(predictor, [KEY], [windows[i]], [forecast], [i], [base_ts])
        residuals.learn(predictor, [KEY], [base_ts], rows[32 + i : 33 + i])
    return forecast.mean[:, 0, 0], own, rows[32 : 32 + n, 0]


def test_a_lead_of_queue_depth_over_latency_is_learnt_and_served(predictor: Predictor) -> None:
    residuals = FlowResiduals(min_labels=50)
    served, own, actual = run(predictor, residuals, 400, lead=0.3)
    end = slice(300, 400)
    assert np.abs(served[end] - actual[end]).mean() < 0.6 * np.abs(own[end] - actual[end]).mean()
    assert residuals.summary() == {
        "flows": 1,
        "served": 1,
        "labels": 400,
        "corrected": pytest.approx(300, abs=120),
    }


def test_a_correction_that_does_not_help_is_not_served(predictor: Predictor) -> None:
    residuals = FlowResiduals(min_labels=50)
    served, own, _ = run(predictor, residuals, 300, lead=0.0)
    # no relation to learn: whatever the weights say, the gate keeps the model's forecast (nearly always)
    assert (served != own).mean() < 0.2
    assert residuals.corrected == int((served != own).sum())


def test_labels_of_another_forecast_teach_nothing(predictor: Predictor) -> None:
    residuals = FlowResiduals()
    window = np.tile([40.0, 4.0, 0.001, 800.0, 0.5, 0.0001, 100.0, 20.0], (32, 1))
    forecast = predictor.predict([np.arange(32, dtype=np.int64)], [window], 1)
    residuals.correct(predictor, [KEY], [window], [forecast], [0], [31])
    residuals.learn(predictor, [KEY], [30], window[:1])  # not the forecast made at 31
    residuals.learn(predictor, ["cd" * 32], [31], window[:1])  # a flow never forecast
    assert residuals.labels == 0
    residuals.learn(predictor, [KEY], [31], window[:1])
    assert residuals.labels == 1


def test_flows_beyond_the_cap_are_forgotten_oldest_first(predictor: Predictor) -> None:
    registry = CollectorRegistry()
    residuals = FlowResiduals(max_flows=3, registry=registry)
    window = np.tile([40.0, 4.0, 0.001, 800.0, 0.5, 0.0001, 100.0, 20.0], (32, 1))
    keys = [f"{i:064x}" for i in range(5)]
    forecast = predictor.predict([np.arange(32, dtype=np.int64)] * 5, [window] * 5, 1)
    residuals.correct(predictor, keys, [window] * 5, [forecast] * 5, list(range(5)), [31] * 5)
    assert residuals.summary()["flows"] == 3
    assert registry.get_sample_value("cpe_residual_corrections", {"state": "learning"}) == 3
    residuals.learn(predictor, keys[:1], [31], window[:1])  # forgotten: nothing to learn
    assert registry.get_sample_value("cpe_residual_labels_total") == 0


def test_features_of_short_windows_repeat_their_first_context(predictor: Predictor) -> None:
    window = np.tile([40.0, 4.0, 0.001, 800.0, 0.5, 0.0001, 100.0, 20.0], (3, 1))
    x = features([window], np.array([np.log(40.0)]), predictor.scaler.transform)
    assert x.shape == (1, P) and np.all(np.isfinite(x))


def test_a_block_of_windows_has_the_features_of_each_window(predictor: Predictor) -> None:
    rng = np.random.default_rng(3)
    lengths = np.array([1, 5, 24, 30, 32])
    block = np.abs(40.0 * (1 + 0.2 * rng.standard_normal((5, 32, D))))
    block[..., 4] = rng.random((5, 32))
    loc = rng.standard_normal(5)
    windows = [block[i, 32 - n :] for i, n in enumerate(lengths)]
    expected = features(windows, loc, predictor.scaler.transform)
    got = block_features(block, lengths, loc, predictor.scaler.transform)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_flows_corrected_and_taught_together_are_as_each_taught_alone(predictor: Predictor) -> None:
    """The batched RLS steps of a round's flows are each flow's own: a round of eight flows gives every
    flow the weights, gate and served forecasts that it gets alone."""
    flows = 8
    together = FlowResiduals(min_labels=20)
    alone = [FlowResiduals(min_labels=20) for _ in range(flows)]
    runs = []
    for f in range(flows):
        runs.append(run(predictor, alone[f], 120, lead=0.1 * f, seed=f))
    rng = [np.random.default_rng(f) for f in range(flows)]
    keys = [f"{f:064x}" for f in range(flows)]
    data = []
    for f in range(flows):  # the flows of ``run``, rebuilt
        e = rng[f].standard_normal(160)
        rows = np.tile([40.0, 4.0, 0.001, 800.0, 0.5, 0.0001, 100.0, 20.0], (160, 1))
        rows[:, 7] = np.round(20.0 * np.exp(0.8 * e))
        rows[1:, 0] *= np.exp(0.1 * f * e[:-1] + 0.03 * rng[f].standard_normal(159))
        data.append(rows)
    ts = np.arange(160, dtype=np.int64) * 10_000
    forecasts = [
        predictor.predict(
            [ts[end - 32 : end] for end in range(32, 152)], [d[end - 32 : end] for end in range(32, 152)], 1
        )
        for d in data
    ]
    for i in range(120):
        block = np.stack([d[i : i + 32] for d in data])
        together.correct(
            predictor,
            keys,
            block,
            forecasts,
            [i] * flows,
            [int(ts[31 + i])] * flows,
            lengths=np.full(flows, 32),
        )
        together.learn(predictor, keys, [int(ts[31 + i])] * flows, np.stack([d[32 + i] for d in data]))
    for f in range(flows):
        np.testing.assert_allclose(forecasts[f].mean[:, 0, 0], runs[f][0], rtol=1e-9)
    assert together.labels == sum(r.labels for r in alone)
    assert together.corrected == sum(r.corrected for r in alone) > 0


def test_a_new_utilization_curve_is_learnt_within_2000_labels_and_never_served_worse() -> None:
    """The drift scenario ``utilcurve`` (latency responds to the previous sample's utilization with a new
    curve), replayed through the corrections as the service calls them: the served MAE over the last 200
    labels ends under 0.75 x the model's own, and no rolling 200 is more than 2 % worse."""
    from models.drift_scenarios import generate

    predictor = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    pre, post, window, T = 500, 2000, 200, predictor.seq_len
    n = T + pre + post
    trace = generate("utilcurve", n, T + pre, seed=7).trace
    ts, fs = trace.timestamps_ms, trace.features.astype(np.float64)
    windows = [fs[e - T : e] for e in range(T, n)]
    forecast = predictor.predict([ts[e - T : e] for e in range(T, n)], windows, 1)
    own = forecast.mean[:, 0, 0].copy()
    residuals = FlowResiduals()
    for i in range(n - T):
        base_ts = int(ts[T + i - 1])
        residuals.correct(predictor, [KEY], [windows[i]], [forecast], [i], [base_ts])
        residuals.learn(predictor, [KEY], [base_ts], fs[T + i : T + i + 1])
    actual = fs[T:, 0]
    served_err, own_err = np.abs(forecast.mean[:, 0, 0] - actual), np.abs(own - actual)
    assert served_err[-window:].mean() <= 0.75 * own_err[-window:].mean()
    kernel = np.ones(window)
    rolling = np.convolve(served_err, kernel, "valid") / np.convolve(own_err, kernel, "valid")
    assert rolling.max() <= 1.02
