"""`cpe evaluate --drift` at toy sizes: every scenario and approach streamed through /v1/observe, a
report and a plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from models.drift_scenarios import SCENARIOS
from tools.drift import APPROACHES


@pytest.mark.slow
def test_drift_evaluation_runs_end_to_end(tmp_path: Path) -> None:
    plot, figures_path = tmp_path / "drift.png", tmp_path / "drift.json"
    argv = ["evaluate", "--drift", "--model", "lstm", "--pre", "40", "--post", "40", "--window", "20"]
    assert main([*argv, "--plot", str(plot), "--json", str(figures_path)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads(figures_path.read_text())["results"]
    assert set(results) == set(SCENARIOS)
    for by_approach in results.values():
        assert set(by_approach) == set(APPROACHES)
        for approach, figures in by_approach.items():
            assert figures["labels"] == 80 and figures["labels_after_shift"] == 40
            assert all(np.isfinite(v) and v > 0 for v in figures["mae_ms"].values())
            assert 0.0 <= figures["coverage_whole"] <= 1.0
            assert set(figures["targets"]) == {"end_met", "safe_met", "coverage_met"}
            # only observations went in: the learner's samples are the free labels
            learner = figures["learner"]
            if approach == "residual":
                assert learner is None
            else:
                assert learner["samples"] > 0
