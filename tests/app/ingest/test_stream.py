"""The Redis Stream door: collectors XADD, the replicas' consumer group applies each entry once, acks it
after, takes over what a dead consumer left pending, and drops (acked, counted) what is not valid."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.payloads import make_settings
from tests.redis_server import private_prefix, redis_url

REDIS_URL = redis_url(12)
T0 = 1_767_225_600_000
FEATURES = [12.0, 1.5, 0.01, 800.0, 0.6, 0.001, 120.0, 4.0]


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from private_prefix(REDIS_URL)


def _context(key: str, t: int) -> dict[str, Any]:
    return {"Context": {"flow_key": key, "timestamp": T0 + t, "features": FEATURES}}


def _until(check: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


def test_stream_entries_are_applied_once_acked_after_and_taken_over(prefix: str) -> None:
    stream, group = f"{prefix}observe", "cpe"
    key, other = secrets.token_hex(32), secrets.token_hex(32)
    r = redis.Redis.from_url(REDIS_URL)
    # a replica that read an entry and died before acking it: pending, to be taken over
    r.xgroup_create(stream, group, id="0", mkstream=True)
    r.xadd(stream, {"o": json.dumps([_context(other, 0), _context(other, 1000)])})
    assert r.xreadgroup(group, "dead-replica", {stream: ">"}, count=10)
    settings = make_settings(
        models=("lstm",),
        learning_enabled=False,
        flow_url=REDIS_URL,
        flow_prefix=f"{prefix}flow:",
        ingest_url=REDIS_URL,
        ingest_stream=stream,
        ingest_group=group,
        ingest_claim_ms=300,
    )
    with TestClient(create_app(settings)) as client:
        r.xadd(stream, {"o": json.dumps([_context(key, t * 1000) for t in range(3)])})
        r.xadd(stream, {"o": json.dumps(_context(key, 3000))})  # one observation alone
        r.xadd(stream, {"o": json.dumps([_context(key, 3000)])})  # sent again: a duplicate, not applied twice
        r.xadd(stream, {"o": b"not json"})  # dropped, acked, counted
        r.xadd(stream, {"x": b"no field o"})
        _until(lambda: client.get(f"/v1/flows/{key}").status_code == 200)
        _until(lambda: client.get(f"/v1/flows/{key}").json()["length"] == 4)
        _until(lambda: client.get(f"/v1/flows/{other}").status_code == 200)  # taken over from the dead one
        assert client.get(f"/v1/flows/{other}").json()["length"] == 2
        assert client.get(f"/v1/flows/{key}").json()["observations"] == 4  # each applied once
        _until(lambda: r.xpending(stream, group)["pending"] == 0)
        metrics = client.get("/metrics").text
        duplicates = re.search(r'cpe_observations_total\{door="stream",outcome="duplicate"\} (\S+)', metrics)
        assert duplicates is not None and float(duplicates.group(1)) >= 1.0
        assert 'cpe_observe_refused_total{door="stream",reason="invalid"} 2.0' in metrics
