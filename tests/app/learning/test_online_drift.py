"""End to end through /v1/observe only: intervals kept calibrated, and a change of dynamics learnt.

Small budgets of the runs that the README reports at full size (``python -m tools.coverage``,
``python -m tools.drift``): the real app in process, one observation per request, no /v1/feedback.
"""

from __future__ import annotations

import pytest

from tools.coverage import TARGET, CoverageConfig, measure
from tools.drift import DriftConfig, run


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
