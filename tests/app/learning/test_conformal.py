"""The online interval calibration: adaptive conformal inference on scored forecasts, and what it serves."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from app.learning.conformal import LOC, LOWER, STD, UPPER, ConformalIntervals, interval_rows
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Forecast, Predictor

D = 8


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")


def served_rows(
    predictor: Predictor, intervals: ConformalIntervals, loc: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """(n, 4, D) rows of forecasts served now: the interval at the current multiplier."""
    m = intervals.multiplier(predictor.kind)
    half = predictor.calibration.z() * (np.ones(D) if m is None else m) * std
    lower, upper = predictor.scaler.inverse(np.stack((loc - half, loc + half)))
    return np.stack((lower, upper, loc, std), axis=1)


def stream(
    predictor: Predictor, intervals: ConformalIntervals, errors_in_std: np.ndarray, batch: int, seed: int = 0
) -> np.ndarray:
    """Score labels whose transformed error is ``errors_in_std[i]`` x N(0, 1) x the model's std; the hits
    of the latency interval served for each."""
    rng = np.random.default_rng(seed)
    hits = []
    for a in range(0, len(errors_in_std), batch):
        k = len(errors_in_std[a : a + batch])
        loc = np.tile(predictor.scaler.transform(np.full(D, 0.5) * [40, 4, 1, 800, 1, 1, 100, 10]), (k, 1))
        std = np.full((k, D), 0.1)
        rows = served_rows(predictor, intervals, loc, std)
        noise = rng.standard_normal((k, D)) * errors_in_std[a : a + batch, None] * std
        actual = predictor.scaler.inverse(loc + noise)
        hits.append((rows[:, LOWER, 0] <= actual[:, 0]) & (actual[:, 0] <= rows[:, UPPER, 0]))
        intervals.add(predictor, actual, rows)
    return np.concatenate(hits)


def test_the_models_own_interval_is_served_until_enough_labels(predictor: Predictor) -> None:
    intervals = ConformalIntervals(predictor.feature_names, min_scores=50)
    stream(predictor, intervals, np.full(49, 3.0), batch=7)
    assert intervals.multiplier("lstm") is None
    stream(predictor, intervals, np.full(1, 3.0), batch=1)
    multiplier = intervals.multiplier("lstm")
    assert multiplier is not None and multiplier.shape == (D,)
    assert multiplier[0] > 1.5  # errors three times the model's deviation: a much wider interval


@pytest.mark.parametrize("scale", [0.4, 1.0, 3.0])
def test_live_coverage_lands_at_the_target_whatever_the_models_spread(
    predictor: Predictor, scale: float
) -> None:
    intervals = ConformalIntervals(predictor.feature_names, gamma=0.005, window=500, min_scores=50)
    hits = stream(predictor, intervals, np.full(4000, scale), batch=8)
    assert 0.88 <= hits[-1000:].mean() <= 0.92, hits[-1000:].mean()
    coverage = intervals.summary()["models"]["lstm"]["coverage"]["latency_ms"]  # type: ignore[index]
    assert coverage == pytest.approx(hits[-1000:].mean(), abs=1e-3)


def test_coverage_comes_back_after_a_shift_that_fixed_calibration_misses(predictor: Predictor) -> None:
    """A shift of the error scale mid-stream: ACI's miss rate is back at the target within the run."""
    intervals = ConformalIntervals(predictor.feature_names, gamma=0.01, window=300, min_scores=50)
    errors = np.concatenate((np.full(2000, 1.0), np.full(3000, 4.0)))
    hits = stream(predictor, intervals, errors, batch=4, seed=3)
    assert hits[2000:2040].mean() < 0.7  # the shift: the old width misses
    assert 0.88 <= hits[-1000:].mean() <= 0.92
    # ... and the telescoping bound of Gibbs and Candès on the whole post-shift stretch
    state = intervals.summary()["models"]["lstm"]  # type: ignore[index]
    assert abs(hits[2000:].mean() - 0.9) <= (1 + 0.01) / (0.01 * 3000) + 0.01, state


def test_a_batch_moves_alpha_by_gamma_times_its_misses_against_the_target(predictor: Predictor) -> None:
    intervals = ConformalIntervals(predictor.feature_names, gamma=0.01, min_scores=1000)
    loc = np.tile(predictor.scaler.transform(np.full(D, 20.0).clip(0, 1) + 5), (10, 1))
    std = np.full((10, D), 0.1)
    rows = served_rows(predictor, intervals, loc, std)
    actual = predictor.scaler.inverse(loc)
    actual[:4] = predictor.scaler.inverse(loc[:4] + 1.0)  # 4 of 10 out of the interval, on every feature
    intervals.add(predictor, actual, rows)
    alpha_t = intervals.summary()["models"]["lstm"]["alpha_t"]  # type: ignore[index]
    assert alpha_t["latency_ms"] == pytest.approx(0.1 + 0.01 * (10 * 0.1 - 4), abs=1e-4)


def test_widen_serves_the_multiplier_and_one_is_the_models_own_interval(predictor: Predictor) -> None:
    rng = np.random.default_rng(0)
    ts = [np.arange(32, dtype=np.int64) * 10_000 for _ in range(3)]
    fs = [np.abs(rng.normal(1, 0.1, (32, D))) * [40, 4, 0.01, 800, 0.5, 0.001, 100, 10] for _ in range(3)]
    own = predictor.predict(ts, fs)
    intervals = ConformalIntervals(predictor.feature_names, min_scores=1)
    intervals.widen(predictor, own)  # no labels yet: untouched
    again = predictor.predict(ts, fs)
    np.testing.assert_array_equal(own.lower, again.lower)
    intervals._multipliers = {"lstm": np.ones(D)}
    intervals.widen(predictor, again)
    np.testing.assert_allclose(again.lower, own.lower, rtol=1e-9)
    np.testing.assert_allclose(again.upper, own.upper, rtol=1e-9)
    intervals._multipliers = {"lstm": np.full(D, 2.0)}
    intervals.widen(predictor, again)
    latency = (again.upper - again.lower)[..., 0] / (own.upper - own.lower)[..., 0]
    assert np.all(latency > 1.5)  # wider (not exactly 2x in ms: the interval is symmetric in log space)
    np.testing.assert_array_equal(again.mean, own.mean)  # the point forecast stays


def test_interval_rows_read_step_one_of_each_forward_pass(predictor: Predictor) -> None:
    rng = np.random.default_rng(1)
    ts = [np.arange(8, dtype=np.int64) * 1000 for _ in range(4)]
    fs = [np.abs(rng.normal(1, 0.2, (8, D))) * 10 for _ in range(4)]
    a, b = predictor.predict(ts[:2], fs[:2]), predictor.predict(ts[2:], fs[2:])
    passes: list[Forecast] = [b, a, b]
    rows = interval_rows(passes, [1, 0, 0])
    assert rows.shape == (3, 4, D)
    np.testing.assert_array_equal(rows[0, LOWER], b.lower[1, 0])
    np.testing.assert_array_equal(rows[1, UPPER], a.upper[0, 0])
    np.testing.assert_array_equal(rows[2, LOC], b.loc[0, 0])
    np.testing.assert_array_equal(rows[2, STD], b.std[0, 0])


def test_coverage_multiplier_and_alpha_are_exported_per_model_and_feature(predictor: Predictor) -> None:
    registry = CollectorRegistry()
    intervals = ConformalIntervals(predictor.feature_names, min_scores=10, registry=registry)
    stream(predictor, intervals, np.full(200, 1.0), batch=10)
    labels = {"model": "lstm", "feature": "latency_ms"}
    assert registry.get_sample_value("cpe_interval_scored_total", {"model": "lstm"}) == 200
    covered = registry.get_sample_value("cpe_interval_covered_total", labels)
    assert covered is not None and 0 < covered <= 200
    coverage = registry.get_sample_value("cpe_interval_coverage", labels)
    assert coverage == pytest.approx(covered / 200)
    multiplier = registry.get_sample_value("cpe_interval_multiplier", labels)
    assert multiplier is not None and multiplier > 0
    assert registry.get_sample_value("cpe_interval_alpha", labels) is not None


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(AssertionError, match="positive"):
        ConformalIntervals(["latency_ms"], gamma=0.0)
