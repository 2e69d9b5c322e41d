"""A round's route outlooks, computed from the round's arrays, are the figures POST
/v1/routing/recommend computes route by route (``app/routing.py``) from the same windows and forecasts."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from app.groups import Group, GroupRoute
from app.routing import outlooks, route_forecast
from scripts.bench_groups import bench_settings, services

T0 = 1_700_000_000_000
KEYS = [f"{0xD00 + i:064x}" for i in range(6)]


async def test_a_rounds_outlooks_are_the_per_route_figures() -> None:
    rng = np.random.default_rng(7)
    async with services(bench_settings()) as running:
        routes = tuple(GroupRoute(f"r{i}", key) for i, key in enumerate(KEYS))
        await running.groups.put(Group("g", "ee" * 32, "latency", routes, 0))
        for step in range(12):
            rows = [
                {
                    "Context": {
                        "flow_key": key,
                        "timestamp": T0 + 1000 * step + 7 * i,
                        # route 5 fails now and then: its failure probability and recovery time matter
                        "features": [
                            float(rng.uniform(5, 50) * (20 if i == 5 and step % 3 == 2 else 1)),
                            1.0,
                            float(rng.uniform(0, 0.02)),
                            float(rng.uniform(100, 900)),
                            float(rng.uniform(0.1, 0.9)),
                            0.0,
                            50.0,
                            2.0,
                        ],
                    }
                }
                for i, key in enumerate(KEYS)
                if step >= i  # windows of six lengths: the medians are taken per length
            ]
            await running.ingest.apply(running.ingest.read(orjson.dumps({"observations": rows})), "test")
            await running.forecasts.continuous.idle()
        stored = await running.groups.store.outlooks(KEYS)
        windows = await running.flows.windows(KEYS)
        horizon, policy = running.groups.horizon, running.groups.policy
        for key, outlook, window in zip(KEYS, stored, windows, strict=True):
            assert outlook is not None and window is not None, key
            forecast = await running.engine.predict("lstm", window.timestamps, window.features, horizon)
            [expected] = outlooks([route_forecast("", 1.0, window.features, forecast)], horizon, policy)
            assert outlook.base_ts == int(window.timestamps[-1])
            assert outlook.expected_latency_ms == pytest.approx(expected.expected_latency_ms, rel=1e-4)
            assert outlook.expected_throughput == pytest.approx(expected.expected_throughput, rel=1e-4)
            assert outlook.reliability_score == pytest.approx(expected.reliability_score, rel=1e-4)
            assert outlook.failure_probability == pytest.approx(expected.failure_probability, abs=1e-4)
            assert outlook.confidence == pytest.approx(expected.confidence, abs=1e-4)
            assert outlook.predicted_context == pytest.approx(expected.predicted_context, rel=1e-4)
            assert outlook.time_to_recovery_ms == expected.time_to_recovery_ms
            assert outlook.time_horizon_ms == round(horizon * forecast.dt_s * 1000.0)
