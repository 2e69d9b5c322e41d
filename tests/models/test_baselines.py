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
