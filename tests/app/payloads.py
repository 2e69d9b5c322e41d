"""Request bodies and settings shared by the service tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.settings import Settings

FLOW_KEY = "0123456789abcdef" * 4


def make_settings(**overrides: Any) -> Settings:
    """Test settings: no .env file, the CPU, small request limits so that tests can exceed them, a small
    pattern memory (the default's million slots are some 55 MB to clear at every app start-up).

    No latency budget: on a busy machine it would shed requests that tests expect answered (the tests of
    the budget set one).
    """
    values: dict[str, Any] = {
        "device": "cpu",
        "max_window": 64,
        "max_batch": 16,
        "queue_size": 2048,
        "engine_latency_budget_ms": 0.0,
        "patterns_capacity": 10_000,
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


def contexts(
    n: int, *, seed: int = 0, step_ms: int = 1000, patterns: list[str] | None = None
) -> list[dict[str, Any]]:
    """A plausible window of ``n`` contexts of one flow, oldest first."""
    rng = np.random.default_rng(seed)
    base = np.array([20.0, 2.0, 0.01, 500.0, 0.5, 0.001, 100.0, 5.0])
    out = []
    for i in range(n):
        features = base * (1 + 0.1 * rng.standard_normal(8))
        features[[2, 4, 5]] = np.clip(features[[2, 4, 5]], 0.0, 1.0)
        context: dict[str, Any] = {
            "timestamp": 1_700_000_000_000 + i * step_ms,
            "features": features.tolist(),
        }
        if patterns:
            context["pattern_id"] = patterns[i % len(patterns)]
        out.append(context)
    return out


def predict_body(n: int = 32, **fields: Any) -> dict[str, Any]:
    """A valid /v1/predict body with an ``n``-context window; ``fields`` override or add fields."""
    return {"flow_key": FLOW_KEY, "contexts": contexts(n, seed=n)} | fields
