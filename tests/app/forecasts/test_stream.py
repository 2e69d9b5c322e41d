"""WS /v1/stream/predictions and GET /v1/flows/{flow_key} against real `cpe serve` processes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tools.process import ServerProcess, serving

pytestmark = pytest.mark.server  # real cpe serve processes

REDIS_URL = "redis://127.0.0.1:6379/12"
T0 = 1_700_000_000_000


def key(i: int) -> str:
    return f"{i + 0xA000:064x}"


def observations(flows: range, step: int, latency: float = 20.0) -> dict[str, Any]:
    return {
        "observations": [
            {
                "Context": {
                    "flow_key": key(f),
                    "timestamp": T0 + step * 1000,
                    "features": [latency + step % 3, 2.0, 0.01, 500.0, 0.5, 0.001, 100.0, 5.0],
                }
            }
            for f in flows
        ]
    }


def observe(server: ServerProcess, flows: range, step: int) -> None:
    answer = httpx.post(f"{server.url}/v1/observe", json=observations(flows, step), timeout=10)
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == len(flows)


async def subscribed(server: ServerProcess, **frame: Any) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{server.port}/v1/stream/predictions", proxy=None)
    await ws.send(json.dumps({"op": "subscribe", **frame}))
    ack = json.loads(await ws.recv())
    assert ack["op"] == "subscribed", ack
    return ws


async def predictions(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    """The next ``n`` FlowPrediction messages (heartbeats skipped)."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        while len(out) < n:
            frame = json.loads(await ws.recv())
            if "FlowPrediction" in frame:
                out.append(frame["FlowPrediction"])
    return out


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[ServerProcess]]:
    """Two replicas sharing windows, forecasts and the bus in one Redis, under prefixes of their own."""
    tag = uuid.uuid4().hex[:8]
    env = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_LOG_LEVEL": "warning",
        "CPE_BUS_URL": REDIS_URL,
        "CPE_PREDICTIONS_CHANNEL": f"cpe:test:predictions:{tag}",
        "CPE_BUS_CHANNEL": f"cpe:test:routing:{tag}",
        "CPE_FLOW_URL": REDIS_URL,
        "CPE_FLOW_PREFIX": f"cpe:test:flow:{tag}:",
        "CPE_FORECAST_URL": REDIS_URL,
        "CPE_FORECAST_PREFIX": f"cpe:test:fc:{tag}:",
        "CPE_WS_HEARTBEAT_S": "0.5",
        "CPE_FLOW_TTL_MS": "120000",  # what the test leaves in Redis expires
    }
    with serving(env, 2) as processes:
        yield processes


async def test_a_flow_observed_at_one_replica_is_pushed_by_the_other(replicas: list[ServerProcess]) -> None:
    a, b = replicas
    mine = await subscribed(b, flow_keys=[key(1)])
    every = await subscribed(b)
    try:
        observe(a, range(3), 0)
        [message] = await predictions(mine, 1)
        assert message["flow_key"] == key(1)
        assert message["model_used"] == "lstm" and len(message["predicted_context"]) == 8
        assert message["metadata"]["base_timestamp"] == T0
        seen = {m["flow_key"] for m in await predictions(every, 3)}
        assert seen == {key(0), key(1), key(2)}
    finally:
        await mine.close()
        await every.close()


async def test_any_replica_answers_a_flows_newest_forecast_and_score(replicas: list[ServerProcess]) -> None:
    a, b = replicas
    flows = range(10, 12)
    ws = await subscribed(a, flow_keys=[key(f) for f in flows])
    try:
        for step in range(4):
            observe(a if step % 2 else b, flows, step)  # either replica takes observations for any flow
            await predictions(ws, len(flows))
    finally:
        await ws.close()
    for server in (a, b):
        answer = httpx.get(f"{server.url}/v1/flows/{key(10)}").json()
        assert answer["newest_timestamp"] == T0 + 3000
        assert answer["forecast"]["metadata"]["base_timestamp"] == T0 + 3000
        assert answer["score"]["scored"] == 3  # each later observation scored the forecast before it
        assert answer["score"]["persistence_mae_ms"] > 0
    stats = httpx.get(f"{a.url}/v1/stats").json()["forecasts"]
    assert stats["forecasts"] >= 4 and stats["scores"]["forecasters"]["persistence"]["scored"] >= 2


async def test_groups_are_accepted_and_a_bad_subscription_is_an_error_frame(
    replicas: list[ServerProcess],
) -> None:
    a, _ = replicas
    ws = await subscribed(a, groups=["edge-1"])
    try:
        await ws.send(json.dumps({"op": "subscribe", "flow_keys": ["nothex"]}))
        error = json.loads(await ws.recv())
        assert error["op"] == "error" and "flow_keys.0" in error["detail"]
        await ws.send(json.dumps({"op": "ping"}))
        assert json.loads(await ws.recv()) == {"op": "pong", "dropped": 0}
    finally:
        await ws.close()


def test_with_continuous_prediction_off_the_stream_says_so() -> None:
    env = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_LOG_LEVEL": "warning",
        "CPE_PREDICT_ON_OBSERVE": "false",
    }

    async def check(server: ServerProcess) -> None:
        ws = await connect(f"ws://127.0.0.1:{server.port}/v1/stream/predictions", proxy=None)
        await ws.wait_closed()
        assert ws.close_code == 1008 and "CPE_PREDICT_ON_OBSERVE" in (ws.close_reason or "")

    with serving(env) as [server]:
        observe(server, range(1), 0)
        answer = httpx.get(f"{server.url}/v1/flows/{key(0)}").json()
        assert answer["forecast"] is None and answer["score"] is None
        assert httpx.get(f"{server.url}/v1/stats").json()["forecasts"] is None
        asyncio.run(check(server))
