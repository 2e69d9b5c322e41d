"""Online learning across processes, on the session's own redis-server (database 12, keys of each test
deleted after).

Feedback lands in the Redis Stream before its 202; the learner's lease passes to another replica when
its holder is killed; two real servers share the stream, and the one that does not learn hot-loads
what the other rolls out. GET /readyz reports a feedback stream that does not work, and stops once it
works again (database 9; the outage on a redis-server of its own).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from app.learning.feedback import FeedbackUnavailable, MemoryFeedback, RedisFeedback
from app.learning.lease import RedisLease
from app.main import create_app
from app.services import Services
from app.settings import Settings
from tests.app.cache.test_cache_redis import PrivateRedis
from tests.app.learning.test_learning import biased_feedback, sample
from tests.app.payloads import FLOW_KEY, contexts, make_settings
from tests.redis_server import private_prefix, redis_url
from tools.process import RedisServer, free_port, serving

REDIS_URL = redis_url(12)


def _learning_on(url: str, prefix: str, **more: Any) -> Settings:
    """Settings of a service that learns through the Redis at ``url``, its keys under ``prefix``."""
    return make_settings(
        models=("lstm",),
        learning_url=url,
        bus_url=url,
        learning_prefix=prefix,
        models_channel=f"{prefix}models",
        **more,
    )


@pytest.fixture
def prefix(redis_server: RedisServer) -> Iterator[str]:
    """A key prefix of this test only; its keys are deleted afterwards."""
    yield from private_prefix(REDIS_URL)


def test_feedback_is_in_the_stream_before_the_202(prefix: str) -> None:
    settings = _learning_on(REDIS_URL, prefix)
    with TestClient(create_app(settings)) as client, redis.Redis.from_url(REDIS_URL) as r:
        body = biased_feedback(7)
        response = client.post("/v1/feedback", json=body)
        assert response.status_code == 202
        [(entry_id, fields)] = r.xrange(f"{prefix}feedback")
        assert entry_id.decode() == response.json()["id"]
        assert fields[b"k"].decode() == FLOW_KEY
        assert int(fields[b"at"]) == body["actual"]["timestamp"]


def test_unreachable_stream_refuses_feedback_with_503() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    settings = make_settings(models=("lstm",), learning_url=url, bus_url=url)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/feedback", json=biased_feedback(1))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "cannot be stored" in response.json()["detail"]
        assert (
            client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": contexts(8)}).status_code
            == 200
        )


HOLDER = """
import asyncio, sys
from redis.asyncio import Redis
from app.learning.lease import RedisLease

async def main():
    lease = RedisLease(Redis.from_url(sys.argv[1]), sys.argv[2], "doomed", ttl_ms=600)
    while True:
        if await lease.acquire():
            print("held", flush=True)
        await asyncio.sleep(0.2)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_the_lease_is_taken_over_when_its_holder_dies(prefix: str) -> None:
    from redis.asyncio import Redis

    key = f"{prefix}lease"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, REDIS_URL, key], stdout=subprocess.PIPE, cwd=os.getcwd()
    )
    client = Redis.from_url(REDIS_URL)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        mine = RedisLease(client, key, "successor", ttl_ms=600)
        assert await mine.acquire() is False  # alive and renewing: nobody else gets it
        await asyncio.sleep(0.8)
        assert await mine.acquire() is False
        holder.send_signal(signal.SIGKILL)  # dies without releasing
        holder.wait()
        killed = time.monotonic()
        while not await mine.acquire():
            assert time.monotonic() - killed < 2.0, "the lease was not taken over after its expiry"
            await asyncio.sleep(0.05)
        assert await mine.current_holder() == "successor"
        assert await mine.acquire() is True  # renewing its own
        await mine.release()
        assert await mine.current_holder() is None
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        await client.aclose()


# -- two servers ------------------------------------------------------------------------------------------


def _settings(prefix: str) -> dict[str, str]:
    return {
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_DEVICE": "cpu",
        "CPE_LOG_LEVEL": "warning",
        "CPE_LEARNING_URL": REDIS_URL,
        "CPE_BUS_URL": REDIS_URL,
        "CPE_BUS_CHANNEL": f"{prefix}routing",
        "CPE_MODELS_CHANNEL": f"{prefix}models",
        "CPE_LEARNING_PREFIX": prefix,
        "CPE_LEARNING_MIN_SAMPLES": "32",
        "CPE_REPLAY_VALIDATION": "16",
        "CPE_LEARNING_EVAL_STEPS": "10",
        "CPE_LEARNING_STEPS_PER_S": "200",
        "CPE_LEARNING_RATE": "0.001",
        "CPE_LEARNING_LEASE_TTL_MS": "1000",
    }


@pytest.mark.server
def test_feedback_to_one_server_is_learned_and_the_other_hot_loads_it(prefix: str) -> None:
    with serving(_settings(prefix), 2, stop_signal=signal.SIGINT) as servers:
        a, b = (server.url for server in servers)
        shipped = httpx.get(f"{a}/v1/models").json()["models"][0]["version"]
        with httpx.Client() as client:
            for i in range(80):
                assert client.post(f"{a}/v1/feedback", json=biased_feedback(i)).status_code == 202
            seen: dict[str, float] = {}
            deadline = time.monotonic() + 60
            while len(seen) < 2 and time.monotonic() < deadline:
                for url in (a, b):
                    if (
                        url not in seen
                        and client.get(f"{url}/v1/models").json()["models"][0]["version"] != shipped
                    ):
                        seen[url] = time.monotonic()
                time.sleep(0.02)
            assert len(seen) == 2, f"a new version reached only {list(seen)}"
            assert abs(seen[a] - seen[b]) < 1.0, f"the replicas swapped {abs(seen[a] - seen[b]):.2f} s apart"
            # the same history on both, from Redis. The learner may roll out one more version between the
            # two reads (it goes on learning from the 80 samples): read again until they agree, within
            # the second that a hot reload may take
            deadline = time.monotonic() + 3
            while True:
                models = [client.get(f"{url}/v1/models").json()["models"][0] for url in (a, b)]
                histories = [[h["version"] for h in model["history"]] for model in models]
                if histories[0] == histories[1] or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            holders = [client.get(f"{url}/metrics").text for url in (a, b)]
        assert models[0]["history"][-1]["version"] == shipped
        assert histories[0] == histories[1]
        # exactly one of them learned it
        assert sum("cpe_learning_lease_held 1.0" in text for text in holders) == 1


async def test_the_stream_is_read_through_the_group_and_taken_over_from_its_tail(prefix: str) -> None:
    from redis.asyncio import Redis

    from app.learning.feedback import GROUP, RedisFeedback
    from tests.app.learning.test_learning import sample

    client = Redis.from_url(REDIS_URL)
    try:
        first = RedisFeedback(client=client, prefix=prefix, consumer="first", maxlen=1000)
        await first.connect()
        ids = [await first.append(sample(i)) for i in range(3)]
        await client.xadd(first.stream, {"k": b"not a sample"})
        read = await first.read(10, block_ms=100)
        assert [entry_id for entry_id, _ in read] == ids
        await first.ack(ids)
        assert (await client.xpending(first.stream, GROUP))["pending"] == 0  # the malformed one too
        # a new learner refills its replay buffer from the tail, and is not handed those entries again
        later = await first.append(sample(3))
        second = RedisFeedback(client=client, prefix=prefix, consumer="second", maxlen=1000)
        tail = await second.take_over(3)  # sample 2, the malformed entry (skipped), sample 3
        assert [s.actual.tolist() for s in tail] == [sample(2).actual.tolist(), sample(3).actual.tolist()]
        assert await second.read(10, block_ms=100) == []
        newest = await second.append(sample(4))
        assert [entry_id for entry_id, _ in await second.read(10, block_ms=100)] == [newest]
        assert later < newest
    finally:
        await client.aclose()


# -- GET /readyz and the feedback stream ------------------------------------------------------------

HEALTH_REDIS = redis_url(9)


@pytest.fixture
def health_prefix(redis_server: RedisServer) -> Iterator[str]:
    """A key prefix of this test only, in database 9; its keys are deleted afterwards."""
    yield from private_prefix(HEALTH_REDIS)


def _readiness(client: TestClient, until: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0) -> Any:
    """GET /readyz's body once ``until`` holds for it (asserting a 200 each time), without other traffic."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get("/readyz")
        assert response.status_code == 200, response.text
        if until(response.json()):
            return response.json()
        assert time.monotonic() < deadline, f"/readyz stayed {response.json()}"
        time.sleep(0.05)


def _ready(readiness: dict[str, Any]) -> bool:
    return readiness["status"] == "ready" and "degraded" not in readiness


def _feedback_degraded(readiness: dict[str, Any]) -> bool:
    return readiness["status"] == "degraded" and "feedback" in readiness["degraded"]


async def test_the_stream_problem_comes_with_a_failure_and_goes_with_the_next_success(
    health_prefix: str,
) -> None:
    unreachable = RedisFeedback(
        f"redis://127.0.0.1:{free_port()}/0", prefix=health_prefix, consumer="c", maxlen=100
    )
    async with unreachable:
        problem = unreachable.problem
        assert problem is not None and problem.startswith("redis unreachable: ")
        with pytest.raises(FeedbackUnavailable):
            await unreachable.append(sample(1))
        await unreachable.check()  # a probe that fails raises nothing, and the problem stays
        assert unreachable.problem is not None
    assert MemoryFeedback(limit=1).problem is None

    async with RedisFeedback(HEALTH_REDIS, prefix=health_prefix, consumer="c", maxlen=100) as store:
        assert store.problem is None
        await store.client.delete(store.stream)
        await store.client.set(store.stream, b"not a stream")  # every stream command fails on it
        with pytest.raises(FeedbackUnavailable):
            await store.append(sample(1))
        assert store.problem is not None and store.problem.startswith("redis failed: WRONGTYPE")
        with pytest.raises(redis.ResponseError):
            await store.read(10, block_ms=0)
        await store.client.delete(store.stream)
        assert (await store.read(10, block_ms=0)) == [] and store.problem is None  # the group made again
        await store.client.set(store.stream, b"not a stream")
        with pytest.raises(FeedbackUnavailable):
            await store.append(sample(2))
        await store.check()  # Redis answers: the probe clears it too
        assert store.problem is None


@pytest.mark.slow
def test_readyz_names_a_broken_feedback_stream_and_forgets_it_once_it_works(health_prefix: str) -> None:
    settings = _learning_on(HEALTH_REDIS, health_prefix, bus_channel=f"{health_prefix}routing")
    with TestClient(create_app(settings)) as client, redis.Redis.from_url(HEALTH_REDIS) as r:
        _readiness(client, _ready)
        stream = f"{health_prefix}feedback"
        r.delete(stream)
        r.set(stream, b"not a stream")  # the learner's next read of it fails
        readiness = _readiness(client, _feedback_degraded)
        assert list(readiness["degraded"]) == ["feedback"]
        assert readiness["degraded"]["feedback"].startswith("redis failed: WRONGTYPE")
        assert client.post("/v1/feedback", json=biased_feedback(1)).status_code == 503
        r.delete(stream)
        _readiness(client, _ready)  # by itself: no feedback was sent
        assert client.post("/v1/feedback", json=biased_feedback(2)).status_code == 202


@pytest.mark.slow
@pytest.mark.redis
def test_readyz_reports_a_feedback_stream_outage_until_redis_is_back() -> None:
    server = PrivateRedis()
    server.start()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        settings = make_settings(models=("lstm",), learning_url=url, bus_url=url)
        with TestClient(create_app(settings)) as client:
            _readiness(client, _ready)
            server.stop()
            readiness = _readiness(client, _feedback_degraded)
            assert readiness["degraded"]["feedback"].startswith("redis unreachable: ")
            predicted = client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": contexts(8)})
            assert predicted.status_code == 200  # serving goes on
            server.start()  # same port, empty
            _readiness(client, _ready)
            assert client.post("/v1/feedback", json=biased_feedback(3)).status_code == 202
    finally:
        server.stop()


def test_readyz_is_degraded_from_the_start_when_the_stream_is_unreachable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    with TestClient(create_app(make_settings(models=("lstm",), learning_url=url, bus_url=url))) as client:
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.json()["status"] == "degraded"
        assert response.json()["degraded"]["feedback"].startswith("redis unreachable: ")


def test_an_adaptation_feedback_hint_reaches_the_learner_of_another_replica(prefix: str) -> None:
    """Replica A holds the lease; B ingests the AdaptationFeedback: A's tuner gets the hint, B drops it."""
    settings = _learning_on(REDIS_URL, prefix, learning_hints_channel=f"{prefix}hints")
    hint = {
        "AdaptationFeedback": {"network_id": "n1", "performance_delta": -0.2, "suggested_learning_rate": 0.05}
    }
    with TestClient(create_app(settings)) as a:
        learning_a = Services.of(a.app).learning
        assert learning_a is not None and learning_a.hints is not None
        deadline = time.monotonic() + 10
        while not learning_a.learner.holds_lease():
            assert time.monotonic() < deadline, "A never took the lease"
            time.sleep(0.05)
        with TestClient(create_app(settings)) as b:
            learning_b = Services.of(b.app).learning
            assert learning_b is not None and learning_b.hints is not None
            assert not learning_b.learner.holds_lease()
            answer = b.post("/v1/observe", json={"observations": [hint]})
            assert answer.status_code == 202 and answer.json()["accepted"] == 1
            while learning_a.hints.taken < 1 or learning_b.hints.ignored < 1:
                assert time.monotonic() < deadline + 10, (learning_a.hints.taken, learning_b.hints.ignored)
                time.sleep(0.05)
            assert learning_b.hints.taken == 0
