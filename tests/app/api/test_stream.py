"""The WebSocket streams against real servers: two `cpe serve` processes sharing a real Redis bus (the
session's own redis-server, database 14)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import redis.asyncio as redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.app.payloads import FLOW_KEY, contexts, predict_body
from tests.redis_server import redis_url
from tools.process import RedisServer, serving

REDIS_URL = redis_url(14)
pytestmark = pytest.mark.server
OTHER_KEY = "fe" * 32
QUEUE_SIZE = 16
MAX_FRAME = 65_536


@dataclass
class Server:
    http: str
    ws: str


@dataclass
class Servers:
    a: Server
    b: Server
    channel: str


@pytest.fixture(scope="module")
def servers(redis_server: RedisServer) -> Iterator[Servers]:
    """Two server processes on one Redis bus channel of their own, started side by side."""
    channel = f"cpe:test:stream:{uuid.uuid4().hex}"
    env = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_BUS_URL": REDIS_URL,
        "CPE_BUS_CHANNEL": channel,
        "CPE_WS_QUEUE_SIZE": str(QUEUE_SIZE),
        "CPE_WS_HEARTBEAT_S": "0.5",
        "CPE_WS_MAX_FRAME_BYTES": str(MAX_FRAME),
        "CPE_LOG_LEVEL": "warning",
    }
    with serving(env, 2) as processes:
        a, b = (Server(process.url, f"ws://127.0.0.1:{process.port}") for process in processes)
        yield Servers(a, b, channel)


@asynccontextmanager
async def routing_socket(server: Server, **subscribe: Any) -> AsyncIterator[ClientConnection]:
    """A routing socket, subscribed with ``subscribe`` as the frame's fields (the ack is checked)."""
    async with connect(f"{server.ws}/v1/stream/routing", proxy=None, compression=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", **subscribe}))
        ack = await _frame(ws)
        assert ack["op"] == "subscribed", ack
        yield ws


async def _frame(ws: ClientConnection, timeout: float = 3.0, *, heartbeats: bool = False) -> dict[str, Any]:
    """The next frame within ``timeout`` seconds, skipping heartbeats unless asked for them."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if heartbeats or frame.get("op") != "heartbeat":
                return frame  # type: ignore[no-any-return]


async def _frames_until_quiet(ws: ClientConnection, quiet: float = 0.6) -> list[dict[str, Any]]:
    """Every non-heartbeat frame until none comes for ``quiet`` seconds."""
    frames = []
    while True:
        try:
            frames.append(await _frame(ws, quiet))
        except TimeoutError:
            return frames


def _route_body(flow_key: Any = FLOW_KEY) -> dict[str, Any]:
    routes = [
        {"route_id": "r1", "contexts": contexts(16, seed=1)},
        {"route_id": "r2", "contexts": contexts(16, seed=2), "cost_factor": 2.0},
    ]
    return {"flow_key": flow_key, "routes": routes, "objective": "balanced"}


async def _recommend(server: Server, flow_key: Any = FLOW_KEY) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{server.http}/v1/routing/recommend", json=_route_body(flow_key))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _kinds(frames: list[dict[str, Any]]) -> list[str]:
    return [next(iter(f)) for f in frames]


# -- /v1/stream/routing -------------------------------------------------------------------------------
async def test_subscribe_receive_heartbeat_and_unsubscribe(servers: Servers) -> None:
    async with routing_socket(servers.a) as ws:
        answer = await _recommend(servers.a)
        prediction, update = await _frame(ws), await _frame(ws)
        assert prediction["RoutingPrediction"]["flow_key"] == FLOW_KEY
        assert prediction["RoutingPrediction"]["confidence"] == answer["confidence"]
        assert update["LoadBalancingUpdate"]["service_weights"] == answer["load_balancing_weights"]
        beat = await _frame(ws, heartbeats=True)
        assert beat == {"op": "heartbeat", "dropped": 0}
        await ws.send(json.dumps({"op": "unsubscribe"}))
        assert await _frame(ws) == {"op": "unsubscribed"}
        await _recommend(servers.a)
        assert await _frames_until_quiet(ws) == []
        await ws.send(json.dumps({"op": "ping"}))
        assert await _frame(ws) == {"op": "pong", "dropped": 0}


async def test_filters_by_flow_key_and_by_type(servers: Servers) -> None:
    async with (
        # the flow key in the serde form of a [u8; 32]: acknowledged in hex
        routing_socket(
            servers.a, flow_keys=[list(bytes.fromhex(FLOW_KEY))], types=["RoutingPrediction"]
        ) as only,
        routing_socket(servers.a, types=["LoadBalancingUpdate"]) as updates,
        routing_socket(servers.a, flow_keys=[OTHER_KEY]) as other,
    ):
        await _recommend(servers.a, OTHER_KEY)
        await _recommend(servers.a, FLOW_KEY)
        mine = await _frames_until_quiet(only)
        assert _kinds(mine) == ["RoutingPrediction"]
        assert mine[0]["RoutingPrediction"]["flow_key"] == FLOW_KEY
        assert _kinds(await _frames_until_quiet(updates)) == ["LoadBalancingUpdate"] * 2
        # every message names its flow: the other flow's subscriber gets its own, of every type, only
        theirs = await _frames_until_quiet(other)
        assert _kinds(theirs) == ["RoutingPrediction", "LoadBalancingUpdate"]
        assert {next(iter(f.values()))["flow_key"] for f in theirs} == {OTHER_KEY}
        assert theirs[0]["RoutingPrediction"]["flow_key"] == OTHER_KEY


async def test_bad_frames_get_error_frames_and_the_socket_stays_open(servers: Servers) -> None:
    async with connect(f"{servers.a.ws}/v1/stream/routing", proxy=None) as ws:
        cases = [
            ("{not json", "malformed JSON"),
            ("[1, 2]", 'a frame is a JSON object with an "op"'),
            (json.dumps({"op": "publish"}), "unknown op 'publish'"),
            (json.dumps({"op": "subscribe", "flow_keys": ["xyz"]}), "flow_keys.0: flow_key must be 64"),
            (
                json.dumps({"op": "subscribe", "types": ["Gossip"]}),
                "types.0: Input should be 'RoutingPrediction'",
            ),
            (
                json.dumps({"op": "subscribe", "flow_key": FLOW_KEY}),
                "flow_key: Extra inputs are not permitted",
            ),
        ]
        for frame, detail in cases:
            await ws.send(frame)
            reply = await _frame(ws)
            assert reply["op"] == "error" and detail in reply["detail"], (frame, reply)
        await ws.send(json.dumps({"op": "subscribe", "flow_keys": [FLOW_KEY]}))
        ack = {"op": "subscribed", "flow_keys": [FLOW_KEY], "groups": None, "types": None}
        assert await _frame(ws) == ack


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        (b'{"op": "subscribe"}', 1008, "frames must be JSON text"),  # policy violation
        ("x" * (MAX_FRAME + 1), 1009, ""),  # message too big: refused by uvicorn before it is buffered
    ],
)
async def test_binary_or_oversized_frames_close_the_socket(
    servers: Servers, frame: str | bytes, code: int, reason: str
) -> None:
    async with connect(f"{servers.a.ws}/v1/stream/routing", proxy=None, max_size=None) as ws:
        await ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            await _frame(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code and reason in closed.value.rcvd.reason
    async with httpx.AsyncClient() as http:  # the server is fine
        assert (await http.get(f"{servers.a.http}/readyz")).status_code == 200


async def test_a_routing_update_posted_to_one_replica_reaches_a_subscriber_of_the_other(
    servers: Servers,
) -> None:
    async with routing_socket(servers.b, flow_keys=[FLOW_KEY], types=["RoutingPrediction"]) as ws:
        answer = await _recommend(servers.a)
        message = (await _frame(ws))["RoutingPrediction"]
    assert message["flow_key"] == FLOW_KEY
    assert [s["route_id"] for s in message["routing_suggestions"]] == [
        s["route_id"] for s in answer["routing_suggestions"]
    ]


_SUGGESTION = (
    '"expected_latency_ms":12.5,"expected_throughput":800.0,"reliability_score":0.99,"cost_factor":1.0'
)
_PADDING = ",".join(f'{{"route_id":"pad-{i:05d}",{_SUGGESTION}}}' for i in range(800))  # about 100 KB


def _big_message(seq: int) -> bytes:
    """A RoutingPrediction of about 100 KB whose first route_id carries the time it is published."""
    first = f'{{"route_id":"t={time.time()}:{seq}",{_SUGGESTION}}}'
    body = (
        f'{{"flow_key":"{FLOW_KEY}","predicted_context":[1,2,3,4,5,6,7,8],"confidence":0.5,'
        f'"time_horizon_ms":1000,"routing_suggestions":[{first},{_PADDING}]}}'
    )
    return f'{{"RoutingPrediction":{body}}}'.encode()


async def test_a_slow_client_loses_its_oldest_messages_without_delaying_a_fast_one(servers: Servers) -> None:
    n = 150
    # the slow client reads nothing: a small receive buffer and one frame of client-side queue leave the
    # server's send buffer and its queue of QUEUE_SIZE to absorb what it is sent
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(servers.b.ws.rsplit(":", 1)[1])))
    slow = await connect(
        f"{servers.b.ws}/v1/stream/routing", sock=sock, max_queue=1, close_timeout=0.1, proxy=None
    )
    await slow.send(json.dumps({"op": "subscribe", "types": ["RoutingPrediction"]}))
    assert json.loads(await slow.recv())["op"] == "subscribed"
    delays: list[float] = []
    async with routing_socket(servers.b, types=["RoutingPrediction"]) as fast:

        async def read_fast() -> None:
            while len(delays) < n:
                text = await asyncio.wait_for(fast.recv(), 5.0)
                if '"op":"heartbeat"' not in text:  # cheaper than parsing 100 KB: read the time in place
                    start = text.index('"route_id":"t=') + len('"route_id":"t=')
                    delays.append(time.time() - float(text[start : text.index(":", start)]))

        reader = asyncio.create_task(read_fast())
        async with redis.Redis.from_url(REDIS_URL) as publisher:
            for seq in range(n):
                await publisher.publish(servers.channel, _big_message(seq))
                await asyncio.sleep(0.005)
        await asyncio.wait_for(reader, 10)
    assert len(delays) == n  # the fast client lost nothing
    delays.sort()
    # A fan-out that waited on the slow client would stall the fast one for good once the slow one's
    # buffers are full. The bounds are loose for a busy 2-core machine; an idle one sees ~10 ms medians.
    assert delays[n // 2] < 0.5 and delays[n * 95 // 100] < 2.0, (delays[n // 2], delays[n * 95 // 100])
    # now the slow client reads: what was buffered, and the heartbeats that tell what it lost so far
    received = dropped = 0
    async with asyncio.timeout(5.0):
        while not dropped:
            frame = json.loads(await slow.recv())
            if frame.get("op") == "heartbeat":
                dropped = frame["dropped"]
            else:
                received += 1
    await slow.close()
    assert dropped > 0 and received + dropped <= n, (received, dropped)
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{servers.b.http}/metrics")).text
    counted = next(line for line in metrics.splitlines() if line.startswith("cpe_ws_messages_dropped_total"))
    assert float(counted.split()[-1]) >= dropped


# -- /v1/stream/predict -------------------------------------------------------------------------------
async def test_the_predict_socket_answers_every_request_by_its_id(servers: Servers) -> None:
    good = predict_body(16, horizon=2)
    bad = predict_body(4)
    bad["contexts"][2]["features"] = [1.0] * 7
    async with httpx.AsyncClient() as http:
        expected = (await http.post(f"{servers.a.http}/v1/predict", json=good)).json()
    async with connect(f"{servers.a.ws}/v1/stream/predict", proxy=None) as ws:
        for i in range(10):
            await ws.send(json.dumps({"id": f"good-{i}", **good}))
        await ws.send(json.dumps({"id": 7, **bad}))
        await ws.send("{not json")
        answers = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(12)]
    by_id = {a["id"]: a for a in answers}
    assert by_id.keys() == {*(f"good-{i}" for i in range(10)), 7, None}
    for i in range(10):
        result = by_id[f"good-{i}"]["result"]
        assert result["cached"] is True  # the same path as POST /v1/predict, which cached this window
        assert (result["flow_key"], result["model_version"]) == (
            expected["flow_key"],
            expected["model_version"],
        )
        for field in ("predicted_context", "steps", "confidence", "lower", "upper"):  # batched: float32 noise
            np.testing.assert_allclose(result[field], expected[field], rtol=1e-4, err_msg=field)
    error = by_id[7]["error"]
    assert error["status"] == 422
    assert [(e["loc"], e["type"]) for e in error["detail"]] == [
        (["body", "contexts", 2, "features"], "too_short")
    ]
    assert by_id[None]["error"]["detail"][0]["type"] == "json_invalid"


async def test_compressed_sockets_get_every_message_through_their_compressor_in_order() -> None:
    """With permessage-deflate negotiated, the server does not push the shared uncompressed frame (the
    operator asked for compression): the messages go through the socket's own compressor, in order."""
    env = {"CPE_DEVICE": "cpu", "CPE_MODELS": "lstm", "CPE_MODEL": "lstm", "CPE_WS_COMPRESSION": "true"}
    with serving(env) as [process]:
        server = Server(process.url, f"ws://127.0.0.1:{process.port}")
        async with connect(f"{server.ws}/v1/stream/routing", proxy=None, compression="deflate") as ws:
            [deflate] = ws.protocol.extensions
            decode, rsv1 = deflate.decode, []  # RSV1 marks a compressed message (RFC 7692)

            def recording(frame: Any, **options: Any) -> Any:
                rsv1.append(frame.rsv1)
                return decode(frame, **options)

            deflate.decode = recording  # type: ignore[method-assign]
            await ws.send(json.dumps({"op": "subscribe", "types": ["RoutingPrediction"]}))
            assert (await _frame(ws))["op"] == "subscribed"
            for key in ("ab" * 32, "cd" * 32):
                await _recommend(server, key)
            frames = [await _frame(ws), await _frame(ws)]
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{server.http}/metrics")).text
    assert [f["RoutingPrediction"]["flow_key"] for f in frames] == ["ab" * 32, "cd" * 32]
    assert rsv1[:3] == [True, True, True], rsv1  # the ack and both messages compressed (then the close)
    sent = next(line for line in metrics.splitlines() if line.startswith("cpe_ws_messages_sent_total"))
    assert float(sent.split()[-1]) == 2
