"""`cpe evaluate --drift` at toy sizes: it replays through the real service, reports and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from tools.drift import METHODS


@pytest.mark.slow
def test_drift_evaluation_runs_end_to_end(tmp_path: Path) -> None:
    plot, figures_path = tmp_path / "drift.png", tmp_path / "drift.json"
    argv = ["evaluate", "--drift", "--model", "lstm", "--pre", "40", "--post", "40", "--window", "10"]
    assert main([*argv, "--plot", str(plot), "--json", str(figures_path)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = json.loads(figures_path.read_text())
    for part in ("pre_shift", "end"):
        assert set(figures[part]) == set(METHODS)
        assert all(np.isfinite(v["mae_ms"]) and v["mae_ms"] > 0 for v in figures[part].values())
    # every step went through the service: predicted, then fed back
    assert figures["learner"]["samples"] == 80
    assert set(figures["targets"]) == {"ms", "relative"}
    # the shift doubled latency: every forecaster's error in ms grows with it
    assert figures["end"]["persistence"]["mae_ms"] > figures["pre_shift"]["persistence"]["mae_ms"]
