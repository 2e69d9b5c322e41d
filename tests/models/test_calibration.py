import numpy as np
import pytest

from models.calibration import Calibration, band_probability, expected_calibration_error, fit_isotonic


def test_band_probability_of_a_standard_normal() -> None:
    p = band_probability(np.array([0.0]), np.array([1.0]), np.array([-1.96]), np.array([1.96]))
    assert abs(p[0] - 0.95) < 1e-3


def test_isotonic_fit_is_monotone_and_recovers_a_distortion() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, 20_000)
    hit = rng.uniform(0, 1, raw.size) < raw**2  # the raw confidence is overconfident
    xs, ys = fit_isotonic(raw, hit.astype(float))
    assert np.all(np.diff(ys) >= 0) and len(xs) <= 64
    mapped = np.interp(raw, xs, ys)
    assert expected_calibration_error(raw, hit) > 0.1
    assert expected_calibration_error(mapped, hit) < 0.02


def test_ece_of_perfect_and_useless_confidence() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(0, 1, 50_000)
    hit = rng.uniform(0, 1, conf.size) < conf
    assert expected_calibration_error(conf, hit) < 0.01
    assert expected_calibration_error(np.full(1000, 0.9), np.zeros(1000)) == pytest.approx(0.9)


def test_identity_calibration_defaults() -> None:
    cal = Calibration()
    assert cal.temperatures(2, 3).shape == (2, 3)
    assert abs(cal.z() - 1.6449) < 1e-3
    np.testing.assert_allclose(cal.map_confidence(np.array([0.2, 0.7])), [0.2, 0.7])
