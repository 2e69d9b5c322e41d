"""The score of continuous prediction: every forecast against the observation that followed it.

When a flow's next observation arrives, the forecast made for that moment is compared with it, and so are
the two baselines for the same moment: persistence (the newest latency of the window the forecast was
made from) and the EWMA of that window's latency. Errors are of ``latency_ms``, the primary feature.

Exported on the app's registry (``/metrics``), every series by ``forecaster`` (a model kind,
``persistence`` or ``ewma``):

- ``cpe_forecasts_scored_total{forecaster}``: forecasts scored; with the next, the MAE over any range
  and any set of replicas is
  ``rate(cpe_forecast_abs_error_ms_total[5m]) / rate(cpe_forecasts_scored_total[5m])``;
- ``cpe_forecast_abs_error_ms_total{forecaster}``: their absolute latency errors, summed;
- ``cpe_forecast_mae_ms{forecaster}``: this replica's rolling MAE over its last ``window`` scored forecasts.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

BASELINES = ("persistence", "ewma")


class _Ring:
    """The last ``size`` errors of one forecaster, and every error's count and sum since start."""

    __slots__ = ("count", "filled", "next", "total", "values")

    def __init__(self, size: int) -> None:
        self.values = np.zeros(size, dtype=np.float64)
        self.next = self.filled = self.count = 0
        self.total = 0.0

    def extend(self, errors: np.ndarray) -> None:
        size = len(self.values)
        self.count += len(errors)
        self.total += float(errors.sum())
        errors = errors[-size:]
        end = self.next + len(errors)
        head = min(end, size) - self.next
        self.values[self.next : self.next + head] = errors[:head]
        self.values[: len(errors) - head] = errors[head:]
        self.next = end % size
        self.filled = min(size, self.filled + len(errors))

    def mae(self) -> float | None:
        return float(self.values[: self.filled].mean()) if self.filled else None


class Scores(Collector):
    """Rolling latency MAE per forecaster, registered on ``registry``; only the event loop touches it."""

    def __init__(self, window: int, registry: CollectorRegistry | None = None) -> None:
        self.window = window
        self._rings: dict[str, _Ring] = {}
        if registry is not None:
            registry.register(self)

    def add(
        self, model: str, model_errors: np.ndarray, persistence_errors: np.ndarray, ewma_errors: np.ndarray
    ) -> None:
        """Absolute latency errors of forecasts of ``model``, and of the baselines for the same moments."""
        for name, errors in (
            (model, model_errors),
            ("persistence", persistence_errors),
            ("ewma", ewma_errors),
        ):
            ring = self._rings.get(name)
            if ring is None:
                ring = self._rings[name] = _Ring(self.window)
            ring.extend(errors)

    def mae(self, forecaster: str) -> float | None:
        """Rolling MAE of ``forecaster`` in ms, None before its first score."""
        ring = self._rings.get(forecaster)
        return None if ring is None else ring.mae()

    def scored(self, forecaster: str) -> int:
        ring = self._rings.get(forecaster)
        return 0 if ring is None else ring.count

    def summary(self) -> dict[str, object]:
        """What GET /v1/stats answers: per forecaster, scored forecasts and rolling MAE; each model's ratio
        to persistence."""
        by = {
            name: {"scored": ring.count, "mae_ms": _round(ring.mae())} for name, ring in self._rings.items()
        }
        persistence = self.mae("persistence")
        ratios = {
            name: round(mae / persistence, 4)
            for name in self._rings
            if name not in BASELINES and (mae := self.mae(name)) is not None and persistence
        }
        return {"window": self.window, "forecasters": by, "ratio_to_persistence": ratios}

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        yield from self._families(fill=True)

    def _families(self, fill: bool = False) -> Iterator[Metric]:
        scored = CounterMetricFamily(
            "cpe_forecasts_scored",
            "Continuous forecasts scored against the observation that followed them.",
            labels=["forecaster"],
        )
        errors = CounterMetricFamily(
            "cpe_forecast_abs_error_ms",
            "Absolute latency_ms errors of the scored forecasts, summed.",
            labels=["forecaster"],
        )
        mae = GaugeMetricFamily(
            "cpe_forecast_mae_ms",
            "Rolling latency_ms MAE over this replica's last scored forecasts.",
            labels=["forecaster"],
        )
        if fill:
            for name, ring in self._rings.items():
                scored.add_metric([name], ring.count)
                errors.add_metric([name], ring.total)
                value = ring.mae()
                if value is not None:
                    mae.add_metric([name], value)
        yield from (scored, errors, mae)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
