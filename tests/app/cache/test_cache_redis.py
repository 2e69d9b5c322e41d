"""The Redis tier between processes and through an outage: real servers, a real Redis stopped and restarted.

Two uvicorn servers share the session's own redis-server (database 13, keys deleted afterwards). The
outage test runs a redis-server of its own, which it stops and restarts.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.payloads import contexts, make_settings
from tests.redis_server import redis_url
from tools.process import RedisServer, serving

SHARED_REDIS = redis_url(13)
pytestmark = pytest.mark.redis


def _body(flow_key: str, seed: int, n: int = 16) -> dict:
    return {"flow_key": flow_key, "contexts": contexts(n, seed=seed)}


def _metric(client: TestClient, sample: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- two servers ----------------------------------------------------------------------------------


@pytest.fixture
def two_servers(redis_server: RedisServer) -> Iterator[tuple[str, str]]:
    settings = {
        "CPE_CACHE_URL": SHARED_REDIS,
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_DEVICE": "cpu",
        "CPE_LOG_LEVEL": "warning",
    }
    with serving(settings, 2, ready="ready", stop_signal=signal.SIGINT) as (a, b):  # both start at once
        yield a.url, b.url


@pytest.mark.server
def test_what_one_server_computed_is_a_hit_on_another(two_servers: tuple[str, str]) -> None:
    a, b = two_servers
    flow_key = secrets.token_hex(32)  # keys of this test only
    try:
        computed = httpx.post(f"{a}/v1/predict", json=_body(flow_key, seed=1)).json()
        assert computed["cached"] is False
        shared = httpx.post(f"{b}/v1/predict", json=_body(flow_key, seed=1)).json()
        assert shared["cached"] is True
        assert {k: v for k, v in shared.items() if k not in ("cached", "processing_time_ms")} == {
            k: v for k, v in computed.items() if k not in ("cached", "processing_time_ms")
        }
        # a batch on A: B's new window is a hit there too, in its place among the misses
        httpx.post(f"{b}/v1/predict", json=_body(flow_key, seed=2))
        batch = [_body(flow_key, seed=s) for s in (3, 2, 4, 1)]
        results = httpx.post(f"{a}/v1/predict/batch", json={"requests": batch}).json()["results"]
        assert [r["cached"] for r in results] == [False, True, False, True]
        metrics = httpx.get(f"{a}/metrics").text
        assert 'cpe_cache_requests_total{result="hit",tier="redis"} 1.0' in metrics
    finally:
        with redis.Redis.from_url(SHARED_REDIS) as client:
            keys = list(client.scan_iter(match=f"cpe:pred:{{{flow_key}}}:*"))
            assert len(keys) == 4  # windows 1-4, each stored once, under the flow's hash tag
            client.delete(*keys)


# -- Redis stopped and restarted ------------------------------------------------------------------


class PrivateRedis(RedisServer):
    """A redis-server of this test's own, on a free port, without persistence; ``stop`` kills it (a crash)."""

    def stop(self, signum: int = signal.SIGKILL, timeout_s: float = 20.0) -> int | None:
        return super().stop(signum, timeout_s)

    def keys(self) -> int:
        with redis.Redis(port=self.port) as client:
            return int(client.dbsize())


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    with PrivateRedis() as server:
        yield server


@pytest.mark.slow
def test_a_redis_outage_costs_hits_only_and_the_cache_recovers_by_itself(private_redis: PrivateRedis) -> None:
    settings = make_settings(cache_url=f"redis://127.0.0.1:{private_redis.port}/0", models=("lstm",))
    flow_key = "ab" * 32
    with ExitStack() as stack:
        # two replicas sharing the private Redis; only a Redis hit on B shows that the Redis tier works
        a = stack.enter_context(TestClient(create_app(settings)))
        b = stack.enter_context(TestClient(create_app(settings)))
        assert a.post("/v1/predict", json=_body(flow_key, seed=1)).json()["cached"] is False
        assert b.post("/v1/predict", json=_body(flow_key, seed=1)).json()["cached"] is True
        assert private_redis.keys() == 1

        private_redis.stop()
        slowest = 0.0
        for seed in range(2, 22):
            for client in (a, b):  # a new window (a miss), then a repeat that the memory tier answers
                start = time.perf_counter()
                response = client.post("/v1/predict", json=_body(flow_key, seed=seed))
                slowest = max(slowest, time.perf_counter() - start)
                assert response.status_code == 200
            assert response.json()["cached"] is False  # B could not see what A computed
            assert a.post("/v1/predict", json=_body(flow_key, seed=seed)).json()["cached"] is True
        assert slowest < 1.0, f"a request took {slowest:.2f} s while Redis was down"
        ready = a.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["degraded"]["cache"].startswith("redis unreachable: ")
        errors = _metric(a, 'cpe_cache_errors_total{tier="redis"}')
        # counted, but not one per request: 40 of A's requests looked up Redis while it was down, and a
        # failure makes requests skip it for a backoff, then one of them probes it
        assert 1 <= errors <= 10
        assert _metric(a, "cpe_redis_up") == 0
        deadline = time.monotonic() + 5
        seed = 100
        while _metric(a, 'cpe_cache_errors_total{tier="redis"}') == errors:  # probed again after the backoff
            assert time.monotonic() < deadline, "Redis was not probed again"
            seed += 1
            a.post("/v1/predict", json=_body(flow_key, seed=seed))
            time.sleep(0.05)

        private_redis.start()  # same port, empty
        deadline = time.monotonic() + 10
        seed = 200
        while a.get("/readyz").json()["status"] != "ready":  # the next probe after the backoff closes it
            assert time.monotonic() < deadline, "the cache did not come back after Redis did"
            seed += 1
            a.post("/v1/predict", json=_body(flow_key, seed=seed))
            time.sleep(0.05)
        assert _metric(a, "cpe_redis_up") == 1
        while b.get("/readyz").json()["status"] != "ready":
            assert time.monotonic() < deadline, "B's cache did not come back after Redis did"
            seed += 1
            b.post("/v1/predict", json=_body(flow_key, seed=seed))
            time.sleep(0.05)
        assert a.post("/v1/predict", json=_body(flow_key, seed=999)).json()["cached"] is False
        assert b.post("/v1/predict", json=_body(flow_key, seed=999)).json()["cached"] is True
        assert private_redis.keys() >= 1
