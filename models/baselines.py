"""Baseline forecasters every model is measured against: persistence, EWMA, peak-EWMA and a Kalman
filter (a plain denoiser).

All take a batch of equal-length windows, ``timestamps (B, T)`` in ms and ``features (B, T, D)``, and
return the forecast of the next context ``(B, D)``. A model that does not beat persistence is not
shipped; the evaluation reports each model's error as a ratio to these.
"""

from __future__ import annotations

import numpy as np

PEAK_EWMA_TAU_S = 10.0  # Finagle's default decay time


def persistence(timestamps: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The last observed context."""
    return features[:, -1].astype(np.float64)


def ewma(timestamps: np.ndarray, features: np.ndarray, alpha: float = 0.3) -> np.ndarray:
    """Per-sample exponentially weighted moving average: s <- alpha * x + (1 - alpha) * s."""
    assert 0.0 < alpha <= 1.0, f"alpha must be in (0, 1], got {alpha}"
    s = features[:, 0].astype(np.float64)
    for t in range(1, features.shape[1]):
        s = alpha * features[:, t] + (1.0 - alpha) * s
    return s


def peak_ewma(timestamps: np.ndarray, features: np.ndarray, tau_s: float = PEAK_EWMA_TAU_S) -> np.ndarray:
    """Finagle's peak-EWMA: jump to a new peak at once, otherwise decay toward the sample.

    cost <- x if x > cost else cost * w + x * (1 - w), with w = exp(-dt / tau): pessimistic about
    spikes, forgiving only as time passes (not as samples arrive).
    """
    assert tau_s > 0, f"tau_s must be positive, got {tau_s}"
    cost = features[:, 0].astype(np.float64)
    dt_s = np.diff(timestamps, axis=1) / 1000.0  # (B, T-1)
    for t in range(1, features.shape[1]):
        x = features[:, t]
        w = np.exp(-np.maximum(dt_s[:, t - 1], 0.0) / tau_s)[:, None]
        cost = np.where(x > cost, x, cost * w + x * (1.0 - w))
    return cost


# Tuned on the training split: the latency MAE of the next step over
# generate_routes(0, 48, 1200, split="train") (0.959 x persistence), per-sample variances in log units.
KALMAN_Q = 3e-3  # the level's random walk per sample
KALMAN_R = 2e-3  # the probe's noise


def kalman(
    timestamps: np.ndarray, features: np.ndarray, q: float = KALMAN_Q, r: float = KALMAN_R
) -> np.ndarray:
    """A local-level Kalman filter on each feature's log (a plain denoiser): the filtered level after the
    last sample, held. The level walks by variance ``q`` per sample, each sample adds noise of variance
    ``r``; in log units, so the same (q, r) fit every scale."""
    assert q > 0 and r > 0, f"q and r must be positive, got {q}, {r}"
    y = np.log(np.maximum(features.astype(np.float64), 0.0) + 1e-9)  # (B, T, D)
    x = y[:, 0].copy()
    p = np.full(x.shape, r)
    for t in range(1, features.shape[1]):
        p = p + q
        k = p / (p + r)
        x = x + k * (y[:, t] - x)
        p = (1.0 - k) * p
    return np.exp(x)
