"""Drills on real processes: a replica SIGKILLed while observations stream in, and Redis killed and
restarted under ingest. Each prints its figures (README, "Observing the network").

- Two `cpe serve` replicas share the flow windows in a Redis of the test's own (appendonly yes). A
  loader streams batches to replica A; A is SIGKILLed mid-stream; the loader goes on with B. Every
  observation that got a 202 is in B's windows, and B serves the flows at once.
- One replica on such a Redis: Redis SIGKILLed, ingest answers 503 + Retry-After and /readyz says
  degraded; Redis restarted on its AOF, ingest recovers by itself and nothing acknowledged is lost.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tools.process import free_port, serving

pytestmark = [pytest.mark.server, pytest.mark.slow]  # real servers, seconds each

T0 = 1_767_225_600_000
FLOWS = [f"{i:064x}" for i in range(1, 201)]
PER_FLOW = 5  # contexts of each flow in one request
BATCH = len(FLOWS) * PER_FLOW  # observations per request


class AofRedis:
    """A redis-server of the test's own with an append-only file in ``directory``; killed with SIGKILL."""

    def __init__(self, directory: Path) -> None:
        self.port, self.directory = free_port(), directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        with redis.Redis(port=self.port) as client:
            while True:
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[AofRedis]:
    server = AofRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _settings(url: str) -> dict[str, str]:
    return {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_LEARNING_ENABLED": "false",
        "CPE_FLOW_URL": url,
        "CPE_FLOW_WINDOW": "4096",
        "CPE_FLOW_TIMEOUT_MS": "500",
    }


def _batch(step: int) -> dict[str, object]:
    """Request ``step``: each flow's contexts at seconds step * PER_FLOW ... (step + 1) * PER_FLOW - 1."""
    return {
        "observations": [
            {
                "Context": {
                    "flow_key": k,
                    "timestamp": T0 + (step * PER_FLOW + j) * 1000,
                    "features": [10.0 + j, 1, 0, 5, 0, 0, 1, 1],
                }
            }
            for j in range(PER_FLOW)
            for k in FLOWS
        ]
    }


def test_a_replica_killed_mid_stream_loses_no_acknowledged_observation(aof_redis: AofRedis) -> None:
    with serving(_settings(aof_redis.url), count=2) as (a, b):
        acked: list[int] = []  # steps whose batch got a 202
        stop = threading.Event()
        failovers: list[float] = []

        def load() -> None:
            url, step = a.url, 0
            with httpx.Client(timeout=5) as client:
                while not stop.is_set() and step * PER_FLOW < 4000:  # the windows (4096) keep them all
                    try:
                        answer = client.post(f"{url}/v1/observe", json=_batch(step))
                    except httpx.TransportError:
                        url = b.url  # the replica died: the next one takes the stream, the batch is resent
                        failovers.append(time.monotonic())
                        continue
                    if answer.status_code == 202:
                        acked.append(step)
                        step += 1

        loader = threading.Thread(target=load)
        started = time.monotonic()
        loader.start()
        time.sleep(3.0)
        before_kill = len(acked)
        killed = time.monotonic()
        a.signal(signal.SIGKILL)
        a.wait()
        # the flows are served by the other replica, windows intact, within 5 s of the kill
        while True:
            answer = httpx.get(f"{b.url}/v1/flows/{FLOWS[0]}")
            if (
                answer.status_code == 200
                and answer.json()["newest_timestamp"] >= T0 + (before_kill - 1) * 1000
            ):
                break
            assert time.monotonic() - killed < 5.0, "the other replica did not serve the flows within 5 s"
            time.sleep(0.05)
        served_after_s = time.monotonic() - killed
        time.sleep(2.0)
        stop.set()
        loader.join()
        elapsed = time.monotonic() - started
        assert failovers, "the loader never saw the replica die"
        for k in FLOWS:
            flow = httpx.get(f"{b.url}/v1/flows/{k}").json()
            assert flow["length"] >= len(acked) * PER_FLOW  # every acknowledged context is in the window
            assert flow["newest_timestamp"] >= T0 + ((acked[-1] + 1) * PER_FLOW - 1) * 1000
        rate = len(acked) * BATCH / elapsed
        print(
            f"\nreplica kill: {len(acked) * BATCH} observations acknowledged "
            f"({rate:.0f}/s over {elapsed:.1f} s, "
            f"{before_kill * BATCH} before the kill), 0 lost; flows served by the other replica "
            f"{served_after_s:.2f} s after the kill"
        )


def test_redis_killed_and_restarted_503_then_recovers_with_nothing_acknowledged_lost(
    aof_redis: AofRedis,
) -> None:
    with serving(_settings(aof_redis.url)) as [server]:
        for step in range(20):
            assert httpx.post(f"{server.url}/v1/observe", json=_batch(step)).status_code == 202
        aof_redis.kill()
        down = httpx.post(f"{server.url}/v1/observe", json=_batch(20), timeout=10)
        assert down.status_code == 503 and down.headers["retry-after"] == "1"
        ready = httpx.get(f"{server.url}/readyz").json()
        assert ready["status"] == "degraded" and "flows" in ready["degraded"]
        assert httpx.get(f"{server.url}/v1/flows/{FLOWS[0]}").status_code == 503
        killed = time.monotonic()
        aof_redis.start()  # same port, same directory: it loads the AOF
        while httpx.post(f"{server.url}/v1/observe", json=_batch(20), timeout=10).status_code != 202:
            assert time.monotonic() - killed < 30, "ingest did not recover"
            time.sleep(0.1)
        recovered_s = time.monotonic() - killed
        assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"
        for k in FLOWS:
            flow = httpx.get(f"{server.url}/v1/flows/{k}").json()
            assert flow["length"] == 21 * PER_FLOW  # the 20 acknowledged batches, and the retry
            assert flow["observations"] == 21 * PER_FLOW
        print(
            "\nRedis kill: 503 + Retry-After while down; "
            f"ingest back {recovered_s:.2f} s after the restart began; "
            f"{20 * BATCH} acknowledged observations, 0 lost"
        )
