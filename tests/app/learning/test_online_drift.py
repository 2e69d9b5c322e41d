"""End to end through /v1/observe only: intervals kept calibrated, and a change of dynamics learnt.

Small budgets of the runs that the README reports at full size (``python -m tools.coverage``,
``python -m tools.drift``): the real app in process, one observation per request, no /v1/feedback.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.checkpoint import CHECKPOINT_DIR
from models.drift_scenarios import generate
from models.predictor import Predictor
from tools.coverage import TARGET, CoverageConfig, measure
from tools.drift import DriftConfig, figures_of, frozen_forecasts, run, stream_through_observe


@pytest.mark.slow
def test_live_interval_coverage_ends_in_band_on_an_unseen_scale_with_a_shift() -> None:
    figures = measure(CoverageConfig(steps=1600, window=600, latency_factor=20.0, interval_factor=4.0))
    assert figures["labels"] == 1599  # every observation after the first scored a forecast
    assert TARGET[0] <= figures["coverage_end"] <= TARGET[1], figures
    assert figures["coverage_after_shift"] >= 0.85, figures  # the shift's misses included
    # GET /v1/stats reports the same live coverage as the served intervals measured here
    assert figures["live_coverage_stats"] == pytest.approx(figures["coverage_end"], abs=2e-3)


@pytest.mark.slow
def test_a_new_periodic_congestion_is_learnt_from_free_labels_without_ever_being_worse() -> None:
    cfg = DriftConfig(
        pre=200, post=600, window=200, scenarios=("periodic",), approaches=("residual",), out=None
    )
    figures = run(cfg)["results"]["periodic"]["residual"]
    assert figures["labels_after_shift"] == 600
    assert figures["end_online_over_frozen"] <= 0.75, figures
    assert figures["worst_rolling_online_over_frozen"] <= 1.02, figures


@pytest.mark.slow
def test_the_service_without_adaptation_serves_exactly_the_frozen_models_forecasts() -> None:
    """The yardstick of the drift targets: what the service served against the frozen model offline."""
    predictor = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    scenario = generate("utilcurve", 200, 120, seed=3)
    ts, fs = scenario.trace.timestamps_ms, scenario.trace.features.astype(np.float64)
    frozen = frozen_forecasts(predictor, ts, fs, 32)
    settings = {"models": ("lstm",), "model": "lstm", "learning_enabled": False, "residual_adapt": False}
    served = stream_through_observe(ts, fs, settings)
    np.testing.assert_allclose(served.latency[32:], frozen[32:], rtol=1e-4)
    figures = figures_of(served, frozen, fs[:, 0], 32, 120, 50)
    assert figures["worst_rolling_online_over_frozen"] == pytest.approx(1.0, abs=1e-4)
