"""Fault drills: those of scripts/faults.py, each against its own real server (and its own private Redis),
and the failures that a test drives more exactly in process: a version whose weights do not load, and a
shutdown with feedback still waiting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from models.checkpoint import CHECKPOINT_DIR
from tests.app.learning.test_learning import biased_feedback, learning_of, sample, wait_for
from tests.app.payloads import FLOW_KEY, contexts, make_settings
from tools.process import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def _drill(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.faults", *args], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    result: dict = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == (0 if result["ok"] else 1)
    return result


@pytest.mark.redis
@pytest.mark.server
@pytest.mark.slow
def test_redis_killed_and_restarted_under_load_costs_no_request_and_no_feedback() -> None:
    result = _drill("redis", "--duration", "6", "--clients", "6")
    for phase in ("before", "down", "after"):
        outcomes = result["outcomes"][phase]
        assert outcomes.get("200", 0) > 0 and set(outcomes) == {"200"}, result  # no 5xx, no transport error
    assert result["readiness"] == {"down": "degraded", "after": "ready"}
    # feedback: accepted before and after, refused (not lost) while Redis was gone; every 202 learned from
    feedback = result["feedback"]
    assert all(feedback["outcomes"][p].get("202", 0) > 0 for p in ("before", "after")), feedback
    assert set().union(*feedback["outcomes"].values()) <= {"202", "503"}, feedback
    acknowledged = feedback["acknowledged"]
    assert feedback["in_stream"] == feedback["reached_learner"] == acknowledged, feedback
    assert feedback["learner_buffer"] >= acknowledged, feedback
    assert not result["tracebacks"] and result["ok"]


@pytest.mark.parametrize("learning", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
@pytest.mark.server
@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish_closes_websockets_with_1001_and_keeps_feedback(
    learning: str,
) -> None:
    in_flight = 24
    result = _drill("sigterm", "--in-flight", str(in_flight), "--learning", learning)
    assert result["in_flight_answers"] == {"200": in_flight}, result
    assert result["websocket_close_codes"] == {"routing": 1001, "predict": 1001}
    feedback = result["feedback"]
    assert feedback["acknowledged"] > 0, feedback
    if learning == "redis":
        assert feedback["in_stream"] == feedback["acknowledged"], feedback
    else:
        assert feedback["taken_in"] >= feedback["acknowledged"] and feedback["left_waiting"] == 0, feedback
    assert result["new_requests_refused"] and result["clean_shutdown"] and result["ok"]


# -- in process ---------------------------------------------------------------------------------------


@pytest.fixture
def private_redis(private_redis_server: RedisServer) -> str:
    """A redis-server of this test's own, on a free port, without persistence; its URL."""
    return private_redis_server.url


def _reload_errors(text: str) -> float:
    for line in text.splitlines():
        if line.startswith('cpe_learning_reloads_total{result="error"}'):
            return float(line.split()[-1])
    return 0.0


def _tampered(blob: bytes) -> bytes:
    """The shipped checkpoint with one byte of its last weight flipped: its sha256 no longer matches."""
    tampered = bytearray(blob)
    tampered[-1] ^= 0x01
    return bytes(tampered)


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param(lambda blob: b"\x00not safetensors" * 64, id="corrupt"),
        pytest.param(_tampered, id="tampered"),
        pytest.param(lambda blob: blob[: len(blob) // 2], id="truncated"),
        pytest.param(None, id="missing"),
    ],
)
def test_a_version_that_fails_to_load_on_hot_reload_leaves_the_serving_one(
    private_redis: str, weights: Callable[[bytes], bytes] | None
) -> None:
    url = private_redis
    settings = make_settings(models=("lstm",), model="lstm", learning_url=url, bus_url=url)
    prefix = settings.learning_prefix
    shipped_blob = (CHECKPOINT_DIR / "lstm.safetensors").read_bytes()
    with TestClient(create_app(settings)) as client, redis.Redis.from_url(private_redis) as r:
        serving = client.get("/v1/models").json()["models"][0]["version"]
        # announced the way the learner announces a version: its weights kept in Redis, then the channel
        version = "lstm-bad0bad0bad0"
        if weights is not None:
            r.set(f"{prefix}blob:{version}", weights(shipped_blob))
        r.publish(settings.models_channel, json.dumps({"kind": "lstm", "version": version}))
        wait_for(lambda: _reload_errors(client.get("/metrics").text) == 1.0, timeout_s=10)
        model = client.get("/v1/models").json()["models"][0]
        assert model["version"] == serving
        assert [h["version"] for h in model["history"]] == [serving]
        answer = client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": contexts(8)})
        assert answer.status_code == 200 and answer.json()["model_version"] == serving
        assert client.post("/v1/feedback", json=biased_feedback(1)).status_code == 202  # still learning


def test_shutdown_takes_every_waiting_feedback_sample_into_the_learner() -> None:
    settings = make_settings(models=("lstm",), model="lstm")  # learning_url memory://
    with TestClient(create_app(settings)) as client:
        for i in range(20):
            assert client.post("/v1/feedback", json=biased_feedback(i)).status_code == 202
        learning = learning_of(client)

        async def append_many() -> None:  # in one go, just before the shutdown: still waiting then
            for i in range(300):
                await learning.store.append(sample(i))

        client.portal.call(append_many)
    assert learning.store.pending == 0
    assert learning.learner.stats["samples"] == 320


async def test_the_feedback_group_is_made_again_after_redis_restarted_empty(private_redis: str) -> None:
    from redis.asyncio import Redis

    from app.learning.feedback import RedisFeedback

    client = Redis.from_url(private_redis)
    try:
        store = RedisFeedback(client=client, prefix="cpe:learn:", consumer="learner", maxlen=1000)
        await store.connect()
        await store.append(sample(0))
        assert len(await store.read(10, block_ms=100)) == 1
        await client.flushall()  # what a restart of a Redis without persistence leaves
        waiting = await store.append(sample(1))  # accepted before the learner looks again
        assert await store.read(10, block_ms=100) == []  # no group: made again, at the stream's start
        assert [entry_id for entry_id, _ in await store.read(10, block_ms=100)] == [waiting]
        # the learner lost its lease with Redis: taking over makes the group too, after the tail it takes
        await client.flushall()
        await store.append(sample(2))
        assert [s.actual.tolist() for s in await store.take_over(10)] == [sample(2).actual.tolist()]
        newest = await store.append(sample(3))
        assert [entry_id for entry_id, _ in await store.read(10, block_ms=100)] == [newest]
    finally:
        await client.aclose()
