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


def test_calibrate_makes_the_interval_cover_its_share_of_heavy_tailed_errors() -> None:
    from models.registry import build_model
    from models.scaling import Scaler
    from models.training import calibrate, make_windows

    # an untrained model (persistence, unit deviation) on Student-t noise: a variance match under-covers
    rng = np.random.default_rng(2)
    scaler = Scaler()

    class Series:
        def __init__(self, seed: int) -> None:
            r = np.random.default_rng(seed)
            self.timestamps_ms = 1_700_000_000_000 + np.arange(600, dtype=np.int64) * 10_000
            noise = 0.05 * r.standard_t(3, (600, 8))
            self.features = (np.array([30.0, 3, 0.01, 100, 0.4, 0.01, 50, 10]) * np.exp(noise)).astype(
                np.float32
            )
            self.features[:, [2, 4, 5]] = np.clip(self.features[:, [2, 4, 5]], 0, 1)

    series = [Series(s) for s in range(4)]
    val = make_windows(series, scaler, 16, 1, (0.0, 1.0), rng)
    model = build_model("lstm", horizon=1)
    cal = calibrate(model, scaler, val)
    # the fitted scale puts the 90 % quantile of |error| / deviation at the interval's edge
    from models.training import predict_scaled

    mean_s, std_s = predict_scaled(model, val.x)
    z = np.abs(scaler.encode_targets(val.targets, val.stats) - mean_s) / (std_s * np.asarray(cal.temperature))
    inside = (z <= cal.z()).mean(axis=0)[0, 0]
    assert 0.89 <= inside <= 0.91, inside
