"""Calibration of the predictive distribution: honest intervals and a confidence that means something.

``confidence`` is the predicted probability that the actual latency lands within ±tolerance (10 %) of
the predicted latency. Two steps make it calibrated, both fitted on held-out windows after training:

1. a temperature per (step, feature) that rescales the predicted deviation so that the standardized
   errors have unit variance (the NLL-optimal correction of an over- or under-confident network);
2. an isotonic map from the raw Gaussian band probability to the observed hit frequency, because the
   real errors are heavier-tailed than a Gaussian.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

SQRT1_2 = math.sqrt(0.5)


# Below this many values, math.erfc in a Python loop beats the round-trip through a torch tensor.
SMALL_CDF = 64


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """The standard normal CDF, elementwise (numpy has no erf; the serving path calls it per batch)."""
    z = np.asarray(z, dtype=np.float64)
    if z.size <= SMALL_CDF:
        flat = [0.5 * math.erfc(-v * SQRT1_2) for v in z.ravel().tolist()]
        return np.array(flat, dtype=np.float64).reshape(z.shape)
    return torch.special.ndtr(torch.from_numpy(z)).numpy()


def band_probability(mu: np.ndarray, sigma: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """P(lo <= Y <= hi) for Y ~ N(mu, sigma^2), elementwise."""
    sigma = np.maximum(sigma, 1e-9)
    cdf = normal_cdf(np.stack(((hi - mu) / sigma, (lo - mu) / sigma)))  # one call for both ends
    return np.clip(cdf[0] - cdf[1], 0.0, 1.0)


def fit_isotonic(x: np.ndarray, y: np.ndarray, n_knots: int = 64) -> tuple[list[float], list[float]]:
    """Non-decreasing fit of y on x (pool-adjacent-violators), reduced to at most n_knots points."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, dtype=np.float64)[order], np.asarray(y, dtype=np.float64)[order]
    # blocks of (sum of y, count, first x, last x), merged while they violate monotonicity
    sums: list[float] = []
    counts: list[float] = []
    xlo: list[float] = []
    xhi: list[float] = []
    for xi, yi in zip(xs, ys, strict=True):
        sums.append(yi)
        counts.append(1.0)
        xlo.append(xi)
        xhi.append(xi)
        while len(sums) > 1 and sums[-2] / counts[-2] >= sums[-1] / counts[-1]:
            s, c, h = sums.pop(), counts.pop(), xhi.pop()
            xlo.pop()
            sums[-1] += s
            counts[-1] += c
            xhi[-1] = h
    knots_x = [(a + b) / 2 for a, b in zip(xlo, xhi, strict=True)]
    knots_y = [s / c for s, c in zip(sums, counts, strict=True)]
    if len(knots_x) > n_knots:
        idx = np.unique(np.linspace(0, len(knots_x) - 1, n_knots).round().astype(int))
        knots_x = [knots_x[i] for i in idx]
        knots_y = [knots_y[i] for i in idx]
    return knots_x, knots_y


def expected_calibration_error(confidence: np.ndarray, hit: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-width bins: sum over bins of |mean confidence - hit rate| weighted by bin size."""
    confidence, hit = np.asarray(confidence, dtype=np.float64), np.asarray(hit, dtype=np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(confidence[m].mean() - hit[m].mean())
    return float(ece)


@dataclass
class Calibration:
    """Stored in the checkpoint; identity values until ``cpe train`` fits them."""

    tolerance: float = 0.10  # the ± band of `confidence`, relative to the predicted latency
    interval: float = 0.90  # central probability of lower..upper
    primary_feature: int = 0  # latency_ms
    temperature: list[list[float]] = field(default_factory=list)  # (H, D); empty = all ones
    confidence_x: list[float] = field(default_factory=lambda: [0.0, 1.0])
    confidence_y: list[float] = field(default_factory=lambda: [0.0, 1.0])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**d)

    def temperatures(self, horizon: int, n_features: int) -> np.ndarray:
        if not self.temperature:
            return np.ones((horizon, n_features))
        t = np.asarray(self.temperature, dtype=np.float64)
        assert t.shape == (horizon, n_features), f"temperature shape {t.shape} != {(horizon, n_features)}"
        return t

    def map_confidence(self, raw: np.ndarray) -> np.ndarray:
        return np.interp(raw, *self.knots())

    def knots(self) -> tuple[np.ndarray, np.ndarray]:
        """The isotonic map's knots as arrays (a caller that maps often keeps them: see Predictor)."""
        return np.asarray(self.confidence_x, dtype=np.float64), np.asarray(
            self.confidence_y, dtype=np.float64
        )

    def z(self) -> float:
        """Half-width of the central interval in standard deviations."""
        return float(torch.special.ndtri(torch.tensor(0.5 + self.interval / 2, dtype=torch.float64)))
