"""Intervals kept calibrated online: adaptive conformal inference (ACI) on the free labels, per model.

The shipped models' 90 % interval is calibrated offline, on the training distribution (a temperature per
feature, ``models.calibration``). A deployment meets other latency scales, other sampling intervals and
regime shifts, where the model's own deviation can be too narrow or too wide, and stays so. Here every
scored continuous forecast (its flow's next observation arrived) corrects it:

- its conformity score, per feature, is ``|T(actual) - loc| / (z * std)``: the error in the scaler's
  transformed space (log for the positive features) in units of the model's own half-width, so 1 is the
  edge of the interval the model would serve by itself;
- ACI (Gibbs and Candès, "Adaptive Conformal Inference Under Distribution Shift", NeurIPS 2021) keeps a
  working miss rate ``alpha_t`` per feature, moved after every label by ``gamma * (alpha - miss_t)``
  (``miss_t``: the served interval missed the actual), and serves the ``1 - alpha_t`` quantile of the
  last ``window`` scores as the multiplier of the model's half-width. Misses above the target widen the
  interval, hits above it narrow it: over any stretch of T labels the miss rate is within
  ``(1 + gamma) / (gamma * T)`` of the target, whatever the data do (their Proposition 4.1), which is
  what holds it in place under a shift that a fixed calibration cannot follow.

Labels arrive in batches (a round of continuous prediction scores many flows): the batch's misses move
``alpha_t`` together, which is the sequential rule with the multiplier held for the batch. The same
telescoping bound holds. ``widen`` is what the engine's inference thread calls on every forward pass of
a model with a multiplier: the served ``lower``/``upper`` (every step; the multiplier is learnt at step 1)
become ``loc -/+ multiplier * z * std`` mapped back to raw units. Until ``min_scores`` labels the model's
own interval is served. The point forecast and ``confidence`` are left as they are.

Exported by model and feature: live coverage over the last ``coverage_window`` scored forecasts, the
covered and scored counts (their rates give the coverage over any range and any set of replicas), the
multiplier and ``alpha_t``. Each replica adapts on the labels it scores; a replica without labels serves
the model's own interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from models.predictor import Forecast, Predictor

# ``loc`` and ``std`` of step 1 beside the served ``lower`` and ``upper``: what scoring a forecast needs
LOWER, UPPER, LOC, STD = range(4)


class _Aci:
    """One model's state: a working miss rate and a ring of recent scores per feature."""

    def __init__(self, n_features: int, alpha: float, window: int, coverage_window: int) -> None:
        self.alpha = alpha  # the target miss rate: 1 - the interval's probability
        self.alpha_t = np.full(n_features, alpha)
        self.scores = np.zeros((window, n_features))
        self.hits = np.zeros((coverage_window, n_features), dtype=bool)
        self.next = self.filled = 0
        self.hits_next = self.hits_filled = 0
        self.scored = 0
        self.covered = np.zeros(n_features, dtype=np.int64)
        self.multiplier: np.ndarray | None = None  # None: the model's own interval

    def add(self, scores: np.ndarray, hits: np.ndarray, gamma: float, min_scores: int) -> np.ndarray | None:
        """Take a batch of (n, D) scores and hits; the multiplier to serve from now on."""
        n = len(scores)
        self.scored += n
        self.covered += hits.sum(axis=0)
        self.alpha_t += gamma * (n * self.alpha - (~hits).sum(axis=0))
        self.next, self.filled = _push(self.scores, self.next, self.filled, scores)
        self.hits_next, self.hits_filled = _push(self.hits, self.hits_next, self.hits_filled, hits)
        if self.filled >= min_scores:
            self.multiplier = self._quantile()
        return self.multiplier

    def _quantile(self) -> np.ndarray:
        kept = np.sort(self.scores[: self.filled], axis=0)  # (n, D)
        n = len(kept)
        # the conformal quantile: the ceil((n + 1)(1 - alpha_t))-th smallest score; alpha_t <= 0 asks for
        # an infinite interval, served as the largest score kept (an interval must have finite ends)
        rank = np.ceil((n + 1) * (1.0 - self.alpha_t)).astype(np.int64) - 1
        return kept[np.clip(rank, 0, n - 1), np.arange(kept.shape[1])].astype(np.float64)

    def coverage(self) -> np.ndarray | None:
        return self.hits[: self.hits_filled].mean(axis=0) if self.hits_filled else None


def _push(ring: np.ndarray, at: int, filled: int, rows: np.ndarray) -> tuple[int, int]:
    """Append ``rows`` to ``ring`` (oldest overwritten); the next position and how many are filled."""
    size = len(ring)
    rows = rows[-size:]
    k = len(rows)
    head = min(k, size - at)
    ring[at : at + head] = rows[:head]
    ring[: k - head] = rows[head:]
    return (at + k) % size, min(size, filled + k)


class ConformalIntervals(Collector):
    """The adaptive interval multipliers, per model kind; the event loop adds, the inference thread widens."""

    def __init__(
        self,
        feature_names: Sequence[str],
        *,
        gamma: float = 0.005,
        window: int = 1000,
        coverage_window: int = 1000,
        min_scores: int = 100,
        registry: CollectorRegistry | None = None,
    ) -> None:
        assert gamma > 0 and window >= 1 and coverage_window >= 1 and min_scores >= 1, "positive settings"
        self.feature_names = list(feature_names)
        self.gamma, self.window, self.coverage_window = gamma, window, coverage_window
        self.min_scores = min(min_scores, window)
        self._state: dict[str, _Aci] = {}
        # read by the inference thread: replaced whole (never changed in place), so a pass sees one
        self._multipliers: dict[str, np.ndarray] = {}
        if registry is not None:
            registry.register(self)

    def multiplier(self, kind: str) -> np.ndarray | None:
        """The (D,) multiplier of ``kind``'s own half-width served now; None: its own interval."""
        return self._multipliers.get(kind)

    def add(self, predictor: Predictor, actual: np.ndarray, rows: np.ndarray) -> None:
        """Score forecasts of ``predictor``'s kind: ``actual`` (n, D) raw, ``rows`` (n, 4, D) as kept by
        ``interval_rows`` when each forecast was made."""
        if not len(actual):
            return
        kind = predictor.kind
        state = self._state.get(kind)
        if state is None:
            alpha = 1.0 - predictor.calibration.interval
            state = self._state[kind] = _Aci(actual.shape[1], alpha, self.window, self.coverage_window)
        hits = (rows[:, LOWER] <= actual) & (actual <= rows[:, UPPER])
        half = predictor.calibration.z() * np.maximum(rows[:, STD], 1e-12)
        scores = np.abs(predictor.scaler.transform(actual) - rows[:, LOC]) / half
        multiplier = state.add(scores, hits, self.gamma, self.min_scores)
        if multiplier is not None:
            self._multipliers = self._multipliers | {kind: multiplier}

    def widen(self, predictor: Predictor, forecast: Forecast) -> None:
        """Serve ``forecast``'s interval at the kind's multiplier (in the inference thread, after predict)."""
        multiplier = self._multipliers.get(predictor.kind)
        if multiplier is None:
            return
        half = (predictor.calibration.z() * multiplier) * forecast.std  # (B, S, D)
        forecast.lower, forecast.upper = predictor.scaler.inverse(
            np.stack((forecast.loc - half, forecast.loc + half))
        )

    def summary(self) -> dict[str, object]:
        """What GET /v1/stats answers: per model, the target, labels scored, and per feature the live
        coverage, the multiplier served and alpha_t."""
        out: dict[str, object] = {}
        for kind, s in self._state.items():
            coverage = s.coverage()
            out[kind] = {
                "target": round(1.0 - s.alpha, 6),
                "scored": s.scored,
                "coverage": None if coverage is None else self._by_feature(coverage),
                "coverage_since_start": self._by_feature(s.covered / s.scored) if s.scored else None,
                "multiplier": None if s.multiplier is None else self._by_feature(s.multiplier),
                "alpha_t": self._by_feature(s.alpha_t),
            }
        return {"window": self.coverage_window, "gamma": self.gamma, "models": out}

    def _by_feature(self, values: np.ndarray) -> dict[str, float]:
        return {
            name: round(float(v), 4) if math.isfinite(v) else float("nan")
            for name, v in zip(self.feature_names, values.tolist(), strict=True)
        }

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        yield from self._families(fill=True)

    def _families(self, fill: bool = False) -> Iterator[Metric]:
        scored = CounterMetricFamily(
            "cpe_interval_scored",
            "Continuous forecasts whose interval was scored against the observation that followed.",
            labels=["model"],
        )
        covered = CounterMetricFamily(
            "cpe_interval_covered",
            "Of those, the ones whose served interval held the actual value, per feature.",
            labels=["model", "feature"],
        )
        coverage = GaugeMetricFamily(
            "cpe_interval_coverage",
            "Live coverage of the served interval over this replica's last scored forecasts, per feature "
            "(its target: the model's interval probability, 0.9).",
            labels=["model", "feature"],
        )
        multiplier = GaugeMetricFamily(
            "cpe_interval_multiplier",
            "The adaptive conformal multiplier of the model's own interval half-width served now (1: the "
            "offline calibration's interval).",
            labels=["model", "feature"],
        )
        alpha_t = GaugeMetricFamily(
            "cpe_interval_alpha",
            "Adaptive conformal inference's working miss rate alpha_t, per feature.",
            labels=["model", "feature"],
        )
        if fill:
            for kind, s in self._state.items():
                scored.add_metric([kind], s.scored)
                live = s.coverage()
                served = s.multiplier if s.multiplier is not None else np.ones_like(s.alpha_t)
                for d, name in enumerate(self.feature_names):
                    covered.add_metric([kind, name], float(s.covered[d]))
                    if live is not None:
                        coverage.add_metric([kind, name], float(live[d]))
                    multiplier.add_metric([kind, name], float(served[d]))
                    alpha_t.add_metric([kind, name], float(s.alpha_t[d]))
        yield from (scored, covered, coverage, multiplier, alpha_t)


def interval_rows(forecasts: Sequence[Forecast], indices: Sequence[int]) -> np.ndarray:
    """(n, 4, D): step 1's lower, upper, loc and std of row ``indices[i]`` of ``forecasts[i]``, read per
    forward pass (a round's windows are nearly all in one or two)."""
    out = np.empty((len(forecasts), 4, forecasts[0].mean.shape[-1]) if forecasts else (0, 4, 0))
    groups: dict[int, list[int]] = {}
    for j, batch in enumerate(forecasts):
        groups.setdefault(id(batch), []).append(j)
    for members in groups.values():
        batch = forecasts[members[0]]
        rows = [indices[j] for j in members]
        out[members] = np.stack(
            (batch.lower[rows, 0], batch.upper[rows, 0], batch.loc[rows, 0], batch.std[rows, 0]), axis=1
        )
    return out
