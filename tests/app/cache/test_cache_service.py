"""The prediction cache in the real app: /v1/predict and /v1/predict/batch hits and misses, /readyz, /metrics.

Redis-backed apps use the session's own redis-server (tests/redis_server.py), database 13, whose
prediction keys the fixtures delete before and after.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from app.services import Services
from tests.app.payloads import FLOW_KEY, contexts, make_settings, predict_body
from tests.redis_server import redis_url
from tools.process import RedisServer, free_port

REDIS_URL = redis_url(13)
URLS = ["memory://", pytest.param(REDIS_URL, marks=pytest.mark.redis, id="redis")]


def _clean_db13() -> None:
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match="cpe:pred:*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def redis_db13(redis_server: RedisServer) -> Iterator[None]:
    _clean_db13()
    yield
    _clean_db13()


def _metric(client: TestClient, line_start: str) -> float:
    """The value of the /metrics sample whose line starts with ``line_start`` (name and labels)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start} in /metrics")


def test_metrics_serves_the_cache_collectors_in_the_prometheus_format(client: TestClient) -> None:
    client.post("/v1/predict", json=predict_body(8))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert _metric(client, 'cpe_cache_requests_total{result="miss",tier="memory"}') == 1
    assert _metric(client, 'cpe_cache_entries{tier="memory"}') == 1
    assert _metric(client, "cpe_redis_up") == 0  # none configured
    assert "cpe_cache_errors_total" in response.text


def test_each_app_counts_on_its_own_registry(client: TestClient) -> None:
    with TestClient(create_app(make_settings())) as other:
        other.post("/v1/predict", json=predict_body(8))
        other.post("/v1/predict", json=predict_body(8))
        assert _metric(other, 'cpe_cache_requests_total{result="hit",tier="memory"}') == 1
    # nothing was looked up in this one
    assert _metric(client, 'cpe_cache_requests_total{result="hit",tier="memory"}') == 0
    assert _metric(client, 'cpe_cache_requests_total{result="miss",tier="memory"}') == 0


def test_readyz_is_ready_and_unchanged_with_the_cache_whole(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "reason": None, "models": ["lstm", "transformer", "hybrid"]}


def test_with_redis_unreachable_from_the_start_the_app_serves_degraded() -> None:
    settings = make_settings(cache_url=f"redis://127.0.0.1:{free_port()}/0", models=("lstm",))
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "degraded" and body["models"] == ["lstm"]
        assert body["degraded"]["cache"].startswith("redis unreachable: ")
        for _ in range(3):
            response = client.post("/v1/predict", json=predict_body(8))
            assert response.status_code == 200
        assert response.json()["cached"] is True  # the in-process tier still serves
        assert _metric(client, 'cpe_cache_errors_total{tier="redis"}') >= 1
        assert _metric(client, "cpe_redis_up") == 0


def test_a_cache_url_of_an_unknown_scheme_stops_the_app_from_starting() -> None:
    app = create_app(make_settings(cache_url="memcached://cache:11211"))
    with pytest.raises(ValueError, match="'memcached'"), TestClient(app):
        pass


# -- hits and misses over the app, per URL ------------------------------------------------------------


@pytest.fixture(params=URLS)
def cached_client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    if request.param != "memory://":
        request.getfixturevalue("redis_db13")
    with TestClient(create_app(make_settings(cache_url=request.param))) as client:
        yield client


def _same_answer(a: dict, b: dict) -> bool:
    ignore = ("cached", "processing_time_ms")
    return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


def test_a_repeated_window_is_a_hit_with_the_same_answer(cached_client: TestClient) -> None:
    first = cached_client.post("/v1/predict", json=predict_body(32, horizon=3)).json()
    again = cached_client.post("/v1/predict", json=predict_body(32, horizon=3)).json()
    assert first["cached"] is False and again["cached"] is True
    assert _same_answer(first, again)
    assert again["processing_time_ms"] != first["processing_time_ms"]  # this request's own time
    # anything the answer depends on makes another key
    for changed in (
        predict_body(32, horizon=2),
        predict_body(31, horizon=3),
        predict_body(32, model="hybrid"),
    ):
        assert cached_client.post("/v1/predict", json=changed).json()["cached"] is False


def test_pattern_ids_are_part_of_the_key_as_similar_patterns_depend_on_them(
    cached_client: TestClient,
) -> None:
    window = contexts(12, patterns=["calm", "burst"])
    relabelled = [dict(c, pattern_id="other") if c["pattern_id"] == "burst" else c for c in window]
    first = cached_client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": window}).json()
    second = cached_client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": relabelled}).json()
    assert second["cached"] is False
    assert sorted(first["similar_patterns"]) == ["burst", "calm"]
    assert sorted(second["similar_patterns"]) == ["calm", "other"]


def test_a_new_model_version_never_serves_an_old_prediction(cached_client: TestClient) -> None:
    old = cached_client.post("/v1/predict", json=predict_body(16)).json()
    assert cached_client.post("/v1/predict", json=predict_body(16)).json()["cached"] is True
    engine = Services.of(cached_client.app).engine
    retrained = copy.copy(engine.predictors["lstm"])
    retrained.version = "lstm-retrained01"
    engine.swap("lstm", retrained)
    new = cached_client.post("/v1/predict", json=predict_body(16)).json()
    assert new["cached"] is False and new["model_version"] == "lstm-retrained01"
    again = cached_client.post("/v1/predict", json=predict_body(16)).json()
    assert again["cached"] is True and again["model_version"] == "lstm-retrained01"
    assert old["model_version"] != new["model_version"]


def test_a_batch_looks_up_all_computes_the_misses_and_answers_in_order(cached_client: TestClient) -> None:
    bodies = [predict_body(8 + i, flow_key=f"{i:02x}" * 32) for i in range(6)]
    for i in (1, 4):  # warm two of them
        cached_client.post("/v1/predict", json=bodies[i])
    engine = Services.of(cached_client.app).engine
    windows = engine.stats.windows
    results = cached_client.post("/v1/predict/batch", json={"requests": bodies}).json()["results"]
    assert [r["cached"] for r in results] == [False, True, False, False, True, False]
    assert [r["flow_key"] for r in results] == [b["flow_key"] for b in bodies]
    assert [r["metadata"]["window_length"] for r in results] == [8 + i for i in range(6)]
    assert engine.stats.windows - windows == 4  # only the misses reached the engine
    # the batch stored its misses: all six are hits now, one by one or as a batch
    assert all(cached_client.post("/v1/predict", json=b).json()["cached"] for b in bodies)
    again = cached_client.post("/v1/predict/batch", json={"requests": bodies}).json()["results"]
    assert [r["cached"] for r in again] == [True] * 6
    assert all(_same_answer(a, b) for a, b in zip(results, again, strict=True))
    assert engine.stats.windows - windows == 4


def test_a_hit_costs_the_server_less_time_than_a_miss(cached_client: TestClient) -> None:
    hits, misses = [], []
    for seed in range(10):
        body = {"flow_key": FLOW_KEY, "contexts": contexts(32, seed=100 + seed)}
        misses.append(cached_client.post("/v1/predict", json=body).json()["processing_time_ms"])
        hits.append(cached_client.post("/v1/predict", json=body).json()["processing_time_ms"])
    assert sorted(hits)[5] < sorted(misses)[5]
