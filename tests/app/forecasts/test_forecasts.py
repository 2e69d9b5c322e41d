"""Continuous prediction on the real engine (shipped LSTM, CPU) and the real in-process flow store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from app.bus import Bus
from app.engine import Engine
from app.flows import create_flow_store
from app.flows.base import FlowContext, FlowStore
from app.forecasts import Forecasts
from app.forecasts.continuous import OnForecasts
from app.learning.feedback import MemoryFeedback
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor
from tests.app.payloads import make_settings

T0 = 1_700_000_000_000


def key(i: int) -> str:
    return f"{i:064x}"


def observation(flow: int, step: int, latency: float | None = None) -> FlowContext:
    rng = np.random.default_rng(flow * 100_003 + step)
    features = np.array([20.0, 2.0, 0.01, 500.0, 0.5, 0.001, 100.0, 5.0]) * (
        1 + 0.05 * rng.standard_normal(8)
    )
    features[[2, 4, 5]] = np.clip(features[[2, 4, 5]], 0.0, 1.0)
    if latency is not None:
        features[0] = latency
    return FlowContext(key(flow), T0 + step * 1000, features.astype(np.float32))


class Rig:
    """A flow store, an engine and continuous prediction, as the app wires them."""

    def __init__(self, flows: FlowStore, engine: Engine, forecasts: Forecasts, registry: CollectorRegistry):
        self.flows, self.engine, self.forecasts, self.registry = flows, engine, forecasts, registry

    async def observe(self, contexts: list[FlowContext]) -> None:
        appended = await self.flows.append(contexts)
        await self.forecasts.on_applied(appended.applied)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


async def _rig(feedback: MemoryFeedback | None = None, **overrides: Any) -> AsyncIterator[Rig]:
    settings = make_settings(**overrides)
    predictor = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    registry = CollectorRegistry()
    flows = create_flow_store("memory://", window=settings.flow_window, ttl_ms=60_000, max_flows=1000)
    async with Engine({"lstm": predictor}) as engine, Bus("memory://") as bus:
        forecasts = Forecasts.from_settings(
            settings, engine, bus, flows, feedback, registry, ttl_ms=60_000, max_flows=1000
        )
        async with forecasts:
            yield Rig(flows, engine, forecasts, registry)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async for r in _rig():
        yield r


async def test_observed_flows_are_forecast_in_bulk(rig: Rig) -> None:
    await rig.observe([observation(f, s) for s in range(5) for f in range(40)])
    await rig.forecasts.continuous.idle()
    passes_before = rig.engine.stats.forward_passes
    assert rig.forecasts.continuous.stats.forecasts >= 40
    for f in range(40):
        forecast, score = await rig.forecasts.flow(key(f))
        assert forecast is not None and score is not None
        assert forecast["flow_key"] == key(f)
        assert forecast["model_used"] == "lstm" and len(forecast["predicted_context"]) == 8
        assert forecast["metadata"]["base_timestamp"] == T0 + 4 * 1000  # the newest window
        assert 0.0 <= forecast["confidence"] <= 1.0
    # the next 40 observations: one round, far fewer forward passes than flows
    await rig.observe([observation(f, 5) for f in range(40)])
    await rig.forecasts.continuous.idle()
    assert rig.engine.stats.forward_passes - passes_before <= 2
    assert rig.metric("cpe_forecasts_total", {"model": "lstm"}) == rig.forecasts.continuous.stats.forecasts


async def test_a_flow_touched_twice_before_its_forecast_is_forecast_once_on_its_newest_window(
    rig: Rig,
) -> None:
    continuous = rig.forecasts.continuous
    # applied one after the other, in one turn of the loop: the rounds have not run in between
    for step in range(3):
        appended = await rig.flows.append([observation(7, step)])
        continuous.touch(appended.applied)
    assert continuous.due == 1
    assert continuous.stats.coalesced == 2
    await continuous.idle()
    assert continuous.stats.forecasts == 1
    forecast, _ = await rig.forecasts.flow(key(7))
    assert forecast is not None and forecast["metadata"]["base_timestamp"] == T0 + 2000
    assert rig.metric("cpe_forecasts_coalesced_total") == 2


async def test_the_next_observation_scores_the_forecast_beside_persistence_and_ewma(rig: Rig) -> None:
    for step in range(4):
        await rig.observe([observation(1, step, latency=20.0 + step)])
        await rig.forecasts.continuous.idle()
    forecast, score = await rig.forecasts.flow(key(1))
    assert forecast is not None and score is not None
    assert score["scored"] == 3  # each observation after the first scored the forecast before it
    predicted = forecast["predicted_context"][0]
    await rig.observe([observation(1, 4, latency=30.0)])
    await rig.forecasts.continuous.idle()
    _, after = await rig.forecasts.flow(key(1))
    assert after is not None and after["scored"] == 4
    # the model's error on the last one is exactly |predicted - actual|
    assert after["mae_ms"] * 4 - score["mae_ms"] * 3 == pytest.approx(abs(predicted - 30.0), abs=1e-3)
    # persistence said 23 (the newest latency then): off by 7 this time, by 1 each before
    assert after["persistence_mae_ms"] == pytest.approx((1 + 1 + 1 + 7) / 4, abs=1e-4)
    summary = rig.forecasts.scores.summary()
    assert summary["forecasters"]["lstm"]["scored"] == 4  # type: ignore[index]
    assert summary["forecasters"]["persistence"]["mae_ms"] == pytest.approx(2.5, abs=1e-4)  # type: ignore[index]
    assert rig.metric("cpe_forecasts_scored_total", {"forecaster": "persistence"}) == 4
    assert rig.metric("cpe_forecast_mae_ms", {"forecaster": "persistence"}) == pytest.approx(2.5, abs=1e-4)
    assert "lstm" in summary["ratio_to_persistence"]  # type: ignore[operator]


async def test_a_forecast_skipped_by_coalescing_is_not_scored(rig: Rig) -> None:
    await rig.observe([observation(2, 0)])
    await rig.forecasts.continuous.idle()
    for step in (1, 2):  # two observations before the next round: the forecast for step 2 was never made
        appended = await rig.flows.append([observation(2, step)])
        rig.forecasts.continuous.touch(appended.applied)
    await rig.forecasts.continuous.idle()
    _, score = await rig.forecasts.flow(key(2))
    assert score is not None and score["scored"] == 1  # step 1 scored the forecast made at step 0


async def test_scored_pairs_reach_the_learner_as_feedback_within_the_rate() -> None:
    feedback = MemoryFeedback(limit=10_000)
    async for rig in _rig(feedback, free_labels_per_s=1000.0):
        for step in range(3):
            await rig.observe([observation(f, step) for f in range(10)])
            await rig.forecasts.continuous.idle()
        await asyncio.sleep(0.05)  # the labels' own task
        samples = await feedback.read(100, 0)
        assert len(samples) == 20  # steps 1 and 2 scored the forecasts of steps 0 and 1, for 10 flows
        _, sample = samples[-1]
        assert sample.actual_timestamp == T0 + 2000
        assert sample.timestamps[-1] == T0 + 1000 and len(sample.timestamps) == 2
        assert sample.actual.shape == (8,) and sample.features.dtype == np.float64
        assert rig.metric("cpe_free_labels_total", {"result": "sent"}) == 20


async def test_free_labels_beyond_the_rate_are_skipped_and_counted() -> None:
    feedback = MemoryFeedback(limit=10_000)
    async for rig in _rig(feedback, free_labels_per_s=5.0):
        for step in range(3):
            await rig.observe([observation(f, step) for f in range(10)])
            await rig.forecasts.continuous.idle()
        await asyncio.sleep(0.05)
        sent = len(await feedback.read(100, 0))
        assert 5 <= sent <= 6  # the bucket's 5, and what it refilled meanwhile
        assert rig.metric("cpe_free_labels_total", {"result": "skipped"}) == 20 - sent


def _recording(engine: Engine, seen: list[tuple[list[str], int]]) -> OnForecasts:
    """A forecasts' hook that notes each call's flows and the forward passes made by then."""

    async def hook(keys: Any, windows: Any, forecasts: Any) -> None:
        seen.append((list(keys), engine.stats.forward_passes))

    return hook


async def test_a_round_is_finished_pass_by_pass_each_while_the_next_runs() -> None:
    async for rig in _rig(forecast_pass=16):
        continuous = rig.forecasts.continuous
        seen: list[tuple[list[str], int]] = []
        continuous.on_forecasts = _recording(rig.engine, seen)
        await rig.observe([observation(f, 0) for f in range(40)])  # one round of 40 flows
        await continuous.idle()
        assert rig.engine.stats.batch_sizes == {16: 2, 8: 1}
        parts = ((0, 16), (16, 32), (32, 40))
        assert [keys for keys, _ in seen] == [[key(f) for f in range(a, b)] for a, b in parts]
        # the first pass's flows were re-ranked before the last pass was answered
        assert seen[0][1] < 3
        assert continuous.stats.rounds == 1 and continuous.stats.forecasts == 40
        for f in (0, 20, 39):
            forecast, _ = await rig.forecasts.flow(key(f))
            assert forecast is not None and forecast["flow_key"] == key(f)


async def test_without_a_pass_size_a_round_is_finished_whole_whatever_passes_it_took() -> None:
    async for rig in _rig():
        rig.engine.max_batch = 16  # the round's 40 windows: three passes
        seen: list[tuple[list[str], int]] = []
        rig.forecasts.continuous.on_forecasts = _recording(rig.engine, seen)
        await rig.observe([observation(f, 0) for f in range(40)])
        await rig.forecasts.continuous.idle()
        assert rig.engine.stats.batch_sizes == {16: 2, 8: 1}
        assert [keys for keys, _ in seen] == [[key(f) for f in range(40)]]


async def test_a_round_behind_takes_passes_as_large_as_the_engine_does() -> None:
    async for rig in _rig(forecast_pass=8, forecast_batch=16, forecast_rounds=1):
        await rig.observe([observation(f, 0) for f in range(40)])  # 16, 16, then 8 flows a round
        await rig.forecasts.continuous.idle()
        # the first round, with another round's worth still due: one pass; the next (8 due behind it): two
        # passes of 8; the last: one
        assert rig.engine.stats.batch_sizes == {16: 1, 8: 3}
        assert rig.forecasts.continuous.stats.forecasts == 40


async def test_an_expired_flow_is_dropped_from_the_round(rig: Rig) -> None:
    await rig.observe([observation(3, 0)])
    await rig.forecasts.continuous.idle()
    assert await rig.flows.delete(key(3))
    rig.forecasts.continuous.touch([key(3)])
    await rig.forecasts.continuous.idle()
    assert rig.forecasts.continuous.stats.gone == 1
    assert await rig.forecasts.flow(key(3)) == (None, None)


async def test_predictions_of_a_round_are_one_bus_message_fanned_out_by_flow(rig: Rig) -> None:
    hub = rig.forecasts.hub
    mine, everything = hub.connect(), hub.connect()
    hub.subscribe_flows(mine, [key(5)], None)
    hub.subscribe_flows(everything, None, None)
    await rig.observe([observation(f, 0) for f in range(6)])
    await rig.forecasts.continuous.idle()
    for _ in range(100):  # the bus's listener, then the hub's task
        if len(everything.outbox) == 6:
            break
        await asyncio.sleep(0.01)
    assert len(everything.outbox) == 6 and len(mine.outbox) == 1
    message = orjson.loads(mine.outbox.get_nowait() or "")
    assert list(message) == ["FlowPrediction"] and message["FlowPrediction"]["flow_key"] == key(5)
    assert rig.metric("cpe_forecast_messages_published_total") == 6
    assert rig.metric("cpe_forecast_messages_delivered_total") == 7


async def test_a_slow_subscriber_loses_its_oldest_counted_and_the_others_get_everything() -> None:
    async for rig in _rig(ws_queue_size=4):
        hub = rig.forecasts.hub
        slow, mine = hub.connect(), hub.connect()
        hub.subscribe_flows(slow, None, None)  # reads nothing
        hub.subscribe_flows(mine, [key(9)], None)
        await rig.observe([observation(f, 0) for f in range(10)])
        await rig.forecasts.continuous.idle()
        for _ in range(100):
            if rig.metric("cpe_forecast_messages_delivered_total") == 11:
                break
            await asyncio.sleep(0.01)
        assert slow.dropped == 6 and len(slow.outbox) == 4  # the newest 4 of the 10 are left
        assert rig.metric("cpe_forecast_messages_dropped_total") == 6
        assert mine.dropped == 0 and len(mine.outbox) == 1
        newest = [orjson.loads(slow.outbox.get_nowait() or "") for _ in range(4)]
        assert [m["FlowPrediction"]["flow_key"] for m in newest] == [key(f) for f in range(6, 10)]
