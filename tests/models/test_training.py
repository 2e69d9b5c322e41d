"""Each architecture learns a noisy periodic signal better than persistence does."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from models.registry import ARCHITECTURES, build_model
from models.scaling import Scaler
from models.training import TrainConfig, calibrate, fit, make_windows, predict_scaled


@dataclass
class Series:
    timestamps_ms: np.ndarray
    features: np.ndarray


def periodic_series(n: int, seed: int) -> Series:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * t / 12 + phase)  # a period of 12 samples
    base = np.array([40.0, 4.0, 0.01, 200.0, 0.5, 0.01, 300.0, 20.0])
    amp = np.array([0.3, 0.3, 0.005, 0.3, 0.2, 0.005, 0.3, 0.3])
    log_like = np.array([1, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
    noise = 0.05 * rng.standard_normal((n, 8))
    feats = np.where(
        log_like, base * np.exp(amp * wave[:, None] + noise), base + amp * (wave[:, None] + noise)
    )
    ts = 1_700_000_000_000 + t * 5_000
    return Series(ts.astype(np.int64), feats.astype(np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_learns_a_periodic_signal_better_than_persistence(kind: str) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    scaler = Scaler()
    series = [periodic_series(700, seed) for seed in range(6)]
    train = make_windows(series, scaler, 24, 2, (0.0, 0.8), rng)
    val = make_windows(series, scaler, 24, 2, (0.8, 1.0), rng)
    hp = {"hidden": 32} if kind != "transformer" else {"d_model": 32, "layers": 1, "ff": 64}
    model = build_model(kind, horizon=2, **hp)
    cfg = TrainConfig(kind=kind, max_epochs=12, patience=12, lr=3e-3, batch_size=64)
    summary = fit(model, train, val, cfg, log=lambda _: None)
    assert summary["best_epoch"] >= 1

    mean_s, _ = predict_scaled(model, val.x)
    loc, _ = scaler.decode(mean_s, np.ones_like(mean_s), val.stats)
    pred = scaler.inverse(loc)[:, 0, 0]
    actual = val.targets[:, 0, 0]
    last = val.stats.last[:, 0]
    model_mae = np.abs(pred - actual).mean()
    persistence_mae = np.abs(last - actual).mean()
    assert model_mae < 0.6 * persistence_mae, (kind, model_mae, persistence_mae)

    cal = calibrate(model, scaler, val)
    assert np.all(np.diff(cal.confidence_y) >= 0)
    assert np.asarray(cal.temperature).shape == (2, 8)
