"""Synthetic traces behave like a network: right shapes, physics, seasonality, and structure to learn."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.traces import (
    FEATURE_NAMES,
    RouteProfile,
    Trace,
    generate_routes,
    generate_trace,
    read_jsonl,
    sample_profile,
    write_jsonl,
)

LAT, JIT, LOSS, THR, UTIL, ERR, CONN, QUEUE = range(8)
RATES = [LOSS, UTIL, ERR]
COUNTS = [CONN, QUEUE]

# A route without regime shifts or failures, so a test sees the one effect it looks for.
CALM = RouteProfile(base_latency_ms=20.0, interval_s=30.0, regime_rate_per_day=0.0, failure_rate_per_day=0.0)


@pytest.fixture(scope="module")
def train_routes() -> list[Trace]:
    # the base process alone: level changes (steps, ramps, failovers) have tests of their own
    return generate_routes(seed=7, n_routes=24, n_steps=4000, split="train", level_changes=0.0)


def _hour_of_day(trace: Trace) -> np.ndarray:
    return (trace.timestamps_ms // 3_600_000) % 24


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def _ewma_forecast(y: np.ndarray, alpha: float) -> np.ndarray:
    """forecast[i] = EWMA of y[0..i], the prediction for y[i + 1]."""
    out = np.empty_like(y)
    level = y[0]
    for i, value in enumerate(y):
        level = alpha * value + (1.0 - alpha) * level
        out[i] = level
    return out


def test_feature_names_follow_the_wire_contract() -> None:
    assert FEATURE_NAMES == (
        "latency_ms", "jitter_ms", "loss_rate", "throughput_mbps",
        "utilization", "error_rate", "connections", "queue_depth",
    )  # fmt: skip


def test_traces_have_the_documented_shapes_and_valid_values(train_routes: list[Trace]) -> None:
    assert [tr.route_id for tr in train_routes] == [f"route-{i}" for i in range(24)]
    for tr in train_routes:
        assert tr.timestamps_ms.dtype == np.int64 and tr.timestamps_ms.shape == (4000,)
        assert tr.features.dtype == np.float32 and tr.features.shape == (4000, len(FEATURE_NAMES))
        x = tr.features
        assert np.isfinite(x).all()
        assert (x[:, RATES] >= 0).all() and (x[:, RATES] <= 1).all()
        assert (x[:, COUNTS] >= 0).all() and (x[:, COUNTS] == np.round(x[:, COUNTS])).all()
        assert (x[:, [LAT, JIT, THR]] > 0).all()


def test_same_seed_same_arrays_other_seed_other_arrays() -> None:
    a, b = generate_routes(3, 2, 500), generate_routes(3, 2, 500)
    for ta, tb in zip(a, b, strict=True):
        assert ta.profile == tb.profile
        np.testing.assert_array_equal(ta.timestamps_ms, tb.timestamps_ms)
        np.testing.assert_array_equal(ta.features, tb.features)
    assert not np.array_equal(a[0].features, a[1].features)
    assert not np.array_equal(generate_routes(4, 1, 500)[0].features, a[0].features)
    assert not np.array_equal(generate_trace(CALM, 500, 1).features, generate_trace(CALM, 500, 2).features)
    # Asking for more routes keeps the first ones.
    np.testing.assert_array_equal(generate_routes(3, 3, 500)[1].features, a[1].features)


def test_timestamps_are_increasing_ms_around_the_interval_with_gaps() -> None:
    profile = RouteProfile(base_latency_ms=20.0, interval_s=15.0, gap_prob=0.01)
    tr = generate_trace(profile, 5000, seed=1, start_ms=1_700_000_000_000)
    spacing = np.diff(tr.timestamps_ms)
    assert tr.timestamps_ms[0] == 1_700_000_000_000
    assert (spacing > 0).all()
    assert abs(np.median(spacing) - 15_000) < 0.05 * 15_000
    assert len(np.unique(spacing)) > 100, "spacing must be jittered, not constant"
    assert spacing.max() > 2.5 * 15_000, "occasional gaps expected"


def test_latency_rises_with_utilization_and_super_linearly_near_saturation() -> None:
    busy = replace(CALM, service_time_ms=6.0, mean_utilization=0.5, daily_amplitude=0.45)
    tr = generate_trace(busy, 20_000, seed=3)
    latency, util = tr.features[:, LAT], tr.features[:, UTIL]
    assert _spearman(latency, util) > 0.7

    def median_latency(lo: float) -> float:
        in_bin = (util >= lo) & (util < lo + 0.1)
        assert in_bin.sum() > 50, f"too few samples with utilization in [{lo}, {lo + 0.1})"
        return float(np.median(latency[in_bin]))

    low_slope = median_latency(0.3) - median_latency(0.2)
    high_slope = median_latency(0.8) - median_latency(0.7)
    assert low_slope > 0
    assert high_slope > 4 * low_slope


def test_features_move_together_like_a_network() -> None:
    tr = generate_trace(CALM, 5000, seed=5)
    x = tr.features.astype(np.float64)
    assert np.corrcoef(x[:, THR], x[:, CONN])[0, 1] > 0.8  # both follow the offered load
    assert np.corrcoef(x[:, LAT], x[:, JIT])[0, 1] > 0.5  # jitter comes with queueing
    assert _spearman(x[:, LAT], x[:, QUEUE]) > 0.5


def test_link_failures_raise_loss_errors_and_latency_and_cut_throughput() -> None:
    flaky = replace(CALM, failure_rate_per_day=20.0)
    x = generate_trace(flaky, 5760, seed=5).features
    failing = x[:, LOSS] > 0.02
    assert 0.005 < failing.mean() < 0.2
    ok = ~failing
    assert x[failing, ERR].mean() > 10 * x[ok, ERR].mean()
    assert x[failing, LAT].mean() > 1.3 * x[ok, LAT].mean()
    assert x[failing, THR].mean() < x[ok, THR].mean()


def test_daily_cycle_peaks_in_the_afternoon_and_follows_the_phase() -> None:
    week = 7 * 24 * 60  # one-minute samples
    profile = RouteProfile(base_latency_ms=20.0, interval_s=60.0)  # the defaults peak at 14:00 local = UTC
    tr = generate_trace(profile, week, seed=4)
    hour = _hour_of_day(tr)
    by_hour = np.array([tr.features[hour == h, LAT].mean() for h in range(24)])
    assert by_hour[13:16].mean() > 1.1 * by_hour[2:5].mean()
    # Shifting the phase by 6 h moves the peak 6 h earlier in UTC (local = UTC + phase).
    moved = generate_trace(profile, week, 4, shift_at=0, shift_latency_factor=1.0, shift_phase_hours=6.0)
    moved_by_hour = np.array([moved.features[hour == h, LAT].mean() for h in range(24)])
    assert moved_by_hour[7:10].mean() > 1.1 * moved_by_hour[19:22].mean()


def test_latency_is_persistent_but_not_a_random_walk(train_routes: list[Trace]) -> None:
    lag1, ewma_vs_persistence, persistence_vs_mean, diff_lag1 = [], [], [], []
    for tr in train_routes:
        y = tr.features[:, LAT].astype(np.float64)
        lag1.append(np.corrcoef(y[1:], y[:-1])[0, 1])
        persistence = np.abs(y[1:] - y[:-1]).mean()
        ewma = np.abs(y[1:] - _ewma_forecast(y, alpha=0.5)[:-1]).mean()
        ewma_vs_persistence.append(ewma / persistence)
        persistence_vs_mean.append(persistence / np.abs(y - y.mean()).mean())
        d = np.diff(np.log(y))
        diff_lag1.append(np.corrcoef(d[1:], d[:-1])[0, 1])
    assert np.median(lag1) > 0.7 and np.mean(np.array(lag1) > 0.5) > 0.8
    # Structure to learn: smoothing beats persistence by a visible margin ...
    assert np.mean(ewma_vs_persistence) < 0.92 and np.mean(np.array(ewma_vs_persistence) < 1.0) > 0.8
    # ... persistence still beats knowing only the mean ...
    assert np.median(persistence_vs_mean) < 0.7
    # ... and increments anti-correlate (probe noise, mean reversion), unlike a random walk's.
    assert np.median(diff_lag1) < -0.2


def test_shift_at_multiplies_base_latency_from_that_sample_on() -> None:
    profile = replace(CALM, base_latency_ms=30.0, service_time_ms=3.0, congestion_rate_per_day=0.0)
    plain = generate_trace(profile, 4000, seed=9)
    shifted = generate_trace(profile, 4000, 9, shift_at=2000, shift_latency_factor=2.0, shift_phase_hours=0.0)
    np.testing.assert_array_equal(shifted.features[:2000], plain.features[:2000])
    latency = shifted.features[:, LAT]
    floor_ratio = np.percentile(latency[2000:], 5) / np.percentile(latency[:2000], 5)
    assert 1.75 < floor_ratio < 2.25


def test_train_profiles_stay_in_range_and_unseen_ones_leave_it_half_the_time() -> None:
    rng = np.random.default_rng(0)
    train = [sample_profile(rng, "train") for _ in range(300)]
    assert all(5 <= p.base_latency_ms <= 100 and 5 <= p.interval_s <= 60 for p in train)
    unseen = [sample_profile(rng, "unseen") for _ in range(600)]
    latency = np.array([p.base_latency_ms for p in unseen])
    interval = np.array([p.interval_s for p in unseen])
    assert latency.min() >= 1 and latency.max() <= 500 and interval.min() >= 1 and interval.max() <= 300
    assert 0.4 < np.mean((latency < 5) | (latency > 100)) < 0.6
    assert 0.4 < np.mean((interval < 5) | (interval > 60)) < 0.6
    assert latency.min() < 1.5 and latency.max() > 400 and interval.max() > 250
    assert {len(p.daily_peaks_h) for p in unseen} == {1, 2, 3}


def test_unseen_routes_generate_valid_traces() -> None:
    for tr in generate_routes(11, 8, 1500, split="unseen"):
        x = tr.features
        assert np.isfinite(x).all() and (x[:, RATES] <= 1).all() and (x[:, RATES] >= 0).all()
        assert (np.diff(tr.timestamps_ms) > 0).all()


def test_unknown_split_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="'test'"):
        sample_profile(np.random.default_rng(0), "test")
    with pytest.raises(ValueError, match="'validation'"):
        generate_routes(0, 1, 10, split="validation")


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="n_steps"):
        generate_trace(CALM, 0, seed=0)
    with pytest.raises(ValueError, match="shift_at"):
        generate_trace(CALM, 10, seed=0, shift_at=11)


def test_jsonl_round_trip_is_time_ordered_and_lossless(tmp_path: Path) -> None:
    traces = generate_routes(5, 3, 200)
    path = tmp_path / "contexts.jsonl"
    assert write_jsonl(traces, path) == 600

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(lines[0]) == {"route_id", "timestamp", "features", "metadata", "pattern_id"}
    assert lines[0]["metadata"] == {} and lines[0]["pattern_id"] is None
    stamps = [line["timestamp"] for line in lines]
    assert stamps == sorted(stamps)

    back = read_jsonl(path)
    assert [tr.route_id for tr in back] == ["route-0", "route-1", "route-2"]
    for original, restored in zip(traces, back, strict=True):
        np.testing.assert_array_equal(restored.timestamps_ms, original.timestamps_ms)
        np.testing.assert_array_equal(restored.features, original.features)
        assert restored.profile.estimated
        interval_s = original.profile.interval_s
        assert abs(restored.profile.interval_s - interval_s) < 0.2 * interval_s


def test_the_process_is_the_same_whatever_the_sampling_interval() -> None:
    # Load noise only (no seasonality, episodes or bursts): log throughput ~ the OU process of log load.
    noise_only = replace(
        CALM, daily_amplitude=0.0, weekend_factor=1.0, burst_rate_per_h=0.0, congestion_rate_per_day=0.0,
        interval_jitter=0.0, gap_prob=0.0, throughput_noise_sigma=0.001, load_tau_s=1200.0,
    )  # fmt: skip
    lag_s = 600
    stats = []
    for interval_s in (10.0, 60.0):
        tr = generate_trace(replace(noise_only, interval_s=interval_s), 20_000, seed=2)
        y = np.log(tr.features[:, THR].astype(np.float64))
        lag = round(lag_s / interval_s)
        stats.append((y.std(), np.corrcoef(y[lag:], y[:-lag])[0, 1]))
    (std_fine, corr_fine), (std_coarse, corr_coarse) = stats
    assert abs(std_fine / std_coarse - 1.0) < 0.15
    assert abs(corr_fine - np.exp(-lag_s / 1200.0)) < 0.1
    assert abs(corr_coarse - np.exp(-lag_s / 1200.0)) < 0.1


def test_inconsistent_profiles_are_value_errors_naming_the_field() -> None:
    with pytest.raises(ValueError, match="base_latency_ms"):
        RouteProfile(base_latency_ms=0.0, interval_s=10.0)
    with pytest.raises(ValueError, match="daily_peaks_h"):
        RouteProfile(base_latency_ms=10.0, interval_s=10.0, daily_peaks_h=(9.0, 18.0))


def test_overload_saturates_utilization_and_drops_the_excess() -> None:
    overloaded = replace(CALM, mean_utilization=2.0, buffer_service_units=500.0)
    x = generate_trace(overloaded, 2000, seed=1).features
    assert np.isfinite(x).all()
    assert np.median(x[:, UTIL]) > 0.95
    assert np.median(x[:, LOSS]) > 0.2  # about 1 - 1/rho of the offered load is dropped
    assert np.median(x[:, LAT]) > CALM.base_latency_ms + 0.5 * 500 * CALM.service_time_ms  # a full buffer


def test_level_changes_hold_stay_in_range_and_leave_the_rest_alone() -> None:
    without = generate_routes(seed=21, n_routes=6, n_steps=3000, level_changes=0.0)
    often = generate_routes(seed=21, n_routes=6, n_steps=3000, level_changes=5.0)
    for a, b in zip(without, often, strict=True):
        # their own random stream: the timestamps and every other parameter are the same
        np.testing.assert_array_equal(a.timestamps_ms, b.timestamps_ms)
        rates = {"level_shift_rate_per_day": 0.0, "ramp_rate_per_day": 0.0, "failover_rate_per_day": 0.0}
        assert replace(b.profile, **rates) == a.profile
        assert a.clean is not None and b.clean is not None
        # the level ratio is the path's only difference: within x0.25..x4 of the base process
        ratio = b.clean[:, LAT] / a.clean[:, LAT]
        assert ratio.min() >= 0.25 * 0.99 and ratio.max() <= 4.0 * 1.01
    ratios = np.concatenate([b.clean[:, LAT] / a.clean[:, LAT] for a, b in zip(without, often, strict=True)])
    assert ratios.min() < 0.6 and ratios.max() > 1.8  # both directions, and large ones
    # a new level holds: the ratio changes rarely, and mostly stays put from one sample to the next
    steps = np.abs(np.diff(np.log(ratios))) > 0.2
    assert 0 < steps.mean() < 0.03  # at 5x the usual rates, a step every ~100 samples


def test_ramps_and_ramp_max_change_the_ramps_alone() -> None:
    plain = generate_routes(seed=21, n_routes=4, n_steps=3000, level_changes=2.0)
    ramps = generate_routes(
        seed=21, n_routes=4, n_steps=3000, level_changes=2.0, ramps=3.0, ramp_max_intervals=200.0
    )
    for a, b in zip(plain, ramps, strict=True):
        np.testing.assert_array_equal(a.timestamps_ms, b.timestamps_ms)
        assert b.profile.ramp_rate_per_day == pytest.approx(3.0 * a.profile.ramp_rate_per_day)
        assert a.profile.ramp_max_intervals == 60.0 and b.profile.ramp_max_intervals == 200.0
        same = replace(b.profile, ramp_rate_per_day=a.profile.ramp_rate_per_day, ramp_max_intervals=60.0)
        assert same == a.profile
    # ramps=1 is the traces as they were, sample for sample
    again = generate_routes(seed=21, n_routes=4, n_steps=3000, level_changes=2.0, ramps=1.0)
    for a, b in zip(plain, again, strict=True):
        np.testing.assert_array_equal(a.features, b.features)


def test_clean_features_are_the_measurements_without_noise() -> None:
    tr = generate_trace(CALM, 5000, seed=8)
    assert tr.clean is not None and tr.clean.shape == tr.features.shape
    log_noise = np.log(tr.features[:, LAT] / tr.clean[:, LAT])
    assert abs(float(np.median(log_noise))) < 0.01 and 0.02 < float(np.std(log_noise)) < 0.08
    part = tr.part(slice(100, None, 3))
    assert part.clean is not None
    np.testing.assert_array_equal(part.clean, tr.clean[100::3])
    np.testing.assert_array_equal(part.features, tr.features[100::3])


def test_a_ramp_spreads_the_shift_over_its_samples() -> None:
    quiet = replace(
        CALM, load_sigma=0.01, burst_rate_per_h=0.0, congestion_rate_per_day=0.0, path_sigma=0.001
    )
    step = generate_trace(quiet, 400, 2, shift_at=200, shift_latency_factor=3.0, shift_phase_hours=0.0)
    ramp = generate_trace(
        quiet, 400, 2, shift_at=200, shift_latency_factor=3.0, shift_phase_hours=0.0, shift_ramp_steps=20
    )
    assert step.clean is not None and ramp.clean is not None
    r = ramp.clean[:, LAT] / step.clean[:, LAT]
    np.testing.assert_allclose(r[:200], 1.0, rtol=1e-5)
    np.testing.assert_allclose(r[219:], 1.0, rtol=1e-5)
    assert np.all(np.diff(ramp.clean[195:225, LAT]) > -0.05 * ramp.clean[195:225, LAT].mean())
    assert r[205] < 0.7
