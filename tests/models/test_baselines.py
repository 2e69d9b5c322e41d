import numpy as np
import pytest

from models import baselines


def test_persistence_is_the_last_value() -> None:
    f = np.arange(12, dtype=float).reshape(1, 3, 4)
    np.testing.assert_array_equal(baselines.persistence(np.zeros((1, 3)), f), [[8, 9, 10, 11]])


def test_ewma_weights_recent_samples() -> None:
    f = np.array([[[0.0], [0.0], [10.0]]])
    assert baselines.ewma(np.zeros((1, 3)), f, alpha=0.5)[0, 0] == pytest.approx(5.0)
    with pytest.raises(AssertionError, match="alpha"):
        baselines.ewma(np.zeros((1, 3)), f, alpha=0.0)


def test_peak_ewma_jumps_to_peaks_and_decays_with_time() -> None:
    f = np.array([[[10.0], [100.0], [10.0]]])
    fast = np.array([[0, 1_000, 2_000]])  # 1 s apart: little decay
    slow = np.array([[0, 1_000, 61_000]])  # a minute later: nearly forgotten
    peak_fast = baselines.peak_ewma(fast, f)[0, 0]
    peak_slow = baselines.peak_ewma(slow, f)[0, 0]
    w = np.exp(-1.0 / baselines.PEAK_EWMA_TAU_S)
    assert peak_fast == pytest.approx(100 * w + 10 * (1 - w))
    assert 10 < peak_slow < 10.3
    # a new peak is taken at once
    assert baselines.peak_ewma(fast, np.array([[[10.0], [10.0], [50.0]]]))[0, 0] == 50.0


def test_kalman_holds_a_flat_level_and_smooths_probe_noise_better_than_the_last_value() -> None:
    flat = np.full((1, 32, 1), 40.0)
    assert baselines.kalman(np.zeros((1, 32)), flat)[0, 0] == pytest.approx(40.0)
    rng = np.random.default_rng(0)
    level = 40.0 * np.exp(np.cumsum(0.01 * rng.standard_normal((2000, 33)), axis=1))
    noisy = level * np.exp(0.05 * rng.standard_normal(level.shape))
    windows, nxt = noisy[:, :32, None], noisy[:, 32]
    ts = np.zeros((2000, 32))
    kalman = np.abs(baselines.kalman(ts, windows)[:, 0] - nxt).mean()
    last = np.abs(baselines.persistence(ts, windows)[:, 0] - nxt).mean()
    assert kalman < 0.9 * last
    # a new level moves it within a few samples (its gain is about 0.7 per sample)
    step = np.concatenate([np.full(28, 40.0), np.full(4, 80.0)])[None, :, None]
    assert baselines.kalman(np.zeros((1, 32)), step)[0, 0] == pytest.approx(80.0, rel=0.02)
    with pytest.raises(AssertionError, match="positive"):
        baselines.kalman(ts, windows, q=0.0)
