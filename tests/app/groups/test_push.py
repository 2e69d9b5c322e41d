"""The push path end to end on two real `cpe serve` replicas sharing one real Redis: a group PUT at one
replica, its routes observed at either, its routing messages pushed to WebSocket subscribers of the
other, by group and by flow, and a real degradation switching the group within two observations."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect

from tests.redis_server import redis_url
from tools.process import RedisServer, ServerProcess, serving

pytestmark = [pytest.mark.server, pytest.mark.slow]

REDIS_URL = redis_url(15)
T0 = 1_700_000_000_000
OWNER, OTHER = "0a" * 32, "0b" * 32
FAST, SLOW = f"{0xFA57:064x}", f"{0x5104:064x}"


@pytest.fixture(scope="module")
def replicas(redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    tag = uuid.uuid4().hex[:8]
    env = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_LOG_LEVEL": "warning",
        "CPE_LEARNING_ENABLED": "false",
        "CPE_BUS_URL": REDIS_URL,
        "CPE_BUS_CHANNEL": f"cpe:test:routing:{tag}",
        "CPE_PREDICTIONS_CHANNEL": f"cpe:test:predictions:{tag}",
        "CPE_GROUPS_CHANNEL": f"cpe:test:groups:{tag}",
        "CPE_FLOW_URL": REDIS_URL,
        "CPE_FLOW_PREFIX": f"cpe:test:flow:{tag}:",
        "CPE_FORECAST_URL": REDIS_URL,
        "CPE_FORECAST_PREFIX": f"cpe:test:fc:{tag}:",
        "CPE_GROUP_URL": REDIS_URL,
        "CPE_GROUP_PREFIX": f"cpe:test:group:{tag}:",
        "CPE_WS_HEARTBEAT_S": "0.5",
    }
    try:
        with serving(env, 2) as processes:
            yield processes
    finally:
        with redis.Redis.from_url(REDIS_URL) as client:
            keys = list(client.scan_iter(match=f"cpe:test:*{tag}*"))
            if keys:
                client.delete(*keys)


def observe(server: ServerProcess, step: int, fast: float, slow: float = 22.0) -> None:
    observations = [
        {
            "Context": {
                "flow_key": key,
                "timestamp": T0 + 1000 * step,
                "features": [latency, 1.0, 0.001, 500.0, 0.4, 0.0, 50.0, 2.0],
            }
        }
        for key, latency in ((FAST, fast), (SLOW, slow))
    ]
    answer = httpx.post(f"{server.url}/v1/observe", json={"observations": observations}, timeout=10)
    assert answer.status_code == 202, answer.text


@asynccontextmanager
async def socket(server: ServerProcess, path: str, **subscribe: Any) -> AsyncIterator[ClientConnection]:
    async with connect(f"ws://127.0.0.1:{server.port}{path}", proxy=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", **subscribe}))
        ack = json.loads(await ws.recv())
        assert ack["op"] == "subscribed", ack
        yield ws


async def frames(ws: ClientConnection, quiet: float = 1.5) -> list[dict[str, Any]]:
    """Every frame but heartbeats until none but heartbeats comes for ``quiet`` seconds."""
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + quiet
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                frame = json.loads(await ws.recv())
        except TimeoutError:
            return out
        if frame.get("op") != "heartbeat":
            out.append(frame)
            deadline = loop.time() + quiet


async def until(ws: ClientConnection, kind: str, timeout: float = 20.0) -> dict[str, Any]:
    """The body of the next ``kind`` message."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if kind in frame:
                return frame[kind]  # type: ignore[no-any-return]


async def test_a_group_is_pushed_by_every_replica_and_switches_on_a_real_degradation(
    replicas: list[ServerProcess],
) -> None:
    a, b = replicas
    for step in range(8):
        observe(a if step % 2 else b, step, 20.0)
    group = {
        "flow_key": OWNER,
        "objective": "latency",
        "routes": [{"route_id": "fast", "flow_key": FAST}, {"route_id": "slow", "flow_key": SLOW}],
    }
    async with (
        socket(b, "/v1/stream/routing", groups=["edge-1"]) as by_group,
        socket(b, "/v1/stream/routing", flow_keys=[OTHER]) as other_flow,
        socket(b, "/v1/stream/predictions", groups=["edge-1"]) as forecasts,
    ):
        # subscribed first: the group's first ranking may come at once, from its routes forecast ahead
        # when it is defined (Forecasts.prefetch), before any new observation
        answer = httpx.put(f"{a.url}/v1/groups/edge-1", json=group, timeout=10)
        assert answer.status_code == 201, answer.text
        await asyncio.sleep(0.5)  # b has read the announcement of the group
        observe(a, 8, 20.0)
        first = await until(by_group, "RoutingPrediction")
        assert first["group_id"] == "edge-1" and first["flow_key"] == OWNER
        assert first["routing_suggestions"][0]["route_id"] == "fast"
        assert first["model_version"].startswith("lstm")
        update = await until(by_group, "LoadBalancingUpdate")
        assert update["group_id"] == "edge-1" and set(update["service_weights"]) == {"fast", "slow"}
        # the routes' forecasts reach the predictions stream's subscribers of the group
        seen = {(await until(forecasts, "FlowPrediction"))["flow_key"] for _ in range(2)}
        assert seen == {FAST, SLOW}
        # noise within the margin publishes no change of route
        for step in range(9, 12):
            observe(b, step, 21.0 + step % 2)
        assert not [f for f in await frames(by_group) if "RoutingPrediction" in f]
        state = httpx.get(f"{b.url}/v1/groups/edge-1", timeout=10).json()
        assert state["best"] == "fast" and state["rankings"] >= 4 and state["changes"] == 0
        # fast becomes three times slower: the group switches within two of its observations
        switched_after = None
        for n, step in enumerate(range(12, 14), start=1):
            observe(a, step, 66.0)
            got = [f["RoutingPrediction"] for f in await frames(by_group) if "RoutingPrediction" in f]
            if got:
                assert got[-1]["routing_suggestions"][0]["route_id"] == "slow"
                switched_after = n
                break
        assert switched_after is not None, "no switch within two observations of the degraded route"
        assert httpx.get(f"{a.url}/v1/groups/edge-1", timeout=10).json()["best"] == "slow"
        # a subscriber of another flow got nothing of this group's, of any type
        assert await frames(other_flow, 0.3) == []
    listed = httpx.get(f"{b.url}/v1/groups", timeout=10).json()
    assert [g["group_id"] for g in listed["groups"]] == ["edge-1"] and listed["groups"][0]["best"] == "slow"
