"""scripts/bench_groups.py's targets, on the real parts: noise does not flap a group, a degradation
switches it within two observations; and without the hysteresis the same noise does flap it."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from app.settings import Settings
from scripts.bench_groups import quality

pytestmark = pytest.mark.slow  # a few hundred forecasts per configuration

ARGS = argparse.Namespace(steps=300, seeds=2, warm=40, noise=0.2)
DEFAULTS = Settings.model_fields


def test_the_default_hysteresis_meets_both_targets() -> None:
    margin, dwell = DEFAULTS["group_switch_margin"].default, DEFAULTS["group_min_dwell_ms"].default
    result = asyncio.run(quality(ARGS, margin, dwell, 0.0))
    assert result["rankings"] >= 2 * ARGS.steps * 0.9  # (nearly) one re-ranking per step and seed
    assert result["changes_per_100"] <= 1.0, result
    assert result["switch_max"] <= 2, result


def test_without_hysteresis_the_same_noise_flaps_routes() -> None:
    result = asyncio.run(quality(ARGS, 0.0, 0, 0.0))
    assert result["changes_per_100"] > 1.0, result  # the trace is noisy enough to tell
    assert result["switch_max"] <= 1, result
