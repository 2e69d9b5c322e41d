"""The forecast store on a real Redis and on a real 3-node Redis Cluster started here: every replica reads
the newest forecast and score of a flow."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
from redis.asyncio.cluster import RedisCluster

from app.forecasts.redis import ForecastsUnavailable, RedisForecasts, pack, pack_round, unpack
from app.forecasts.store import FlowForecast, FlowScore, MemoryForecasts, create_forecast_store, round_of
from tests.redis_server import RedisClusterProcesses, redis_url

REDIS_URL = redis_url(10)


def forecast(base_ts: int, latency: float = 21.5, scored: int = 0) -> FlowForecast:
    score = FlowScore(scored, 1.25 * scored, 2.5 * scored, 2.0 * scored)
    return FlowForecast(b'{"flow_key":"x"}', None, base_ts, latency, 20.0, 20.5, "lstm", score)


@pytest.fixture(params=["redis", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return REDIS_URL
    return str(request.getfixturevalue("redis_cluster").url)


@pytest.fixture
async def store(url: str) -> AsyncIterator[RedisForecasts]:
    prefix = f"test:fc:{uuid.uuid4().hex[:8]}:"
    store = RedisForecasts(url, prefix=prefix, ttl_ms=60_000)
    try:
        yield store
    finally:
        client = store.client
        if isinstance(client, RedisCluster):
            await client.delete(*[key async for key in client.scan_iter(f"{prefix}*")] or [prefix])
        else:
            keys = [key async for key in client.scan_iter(f"{prefix}*")]
            if keys:
                await client.delete(*keys)
        await store.__aexit__()


async def test_a_forecast_written_by_one_replica_is_read_by_another(store: RedisForecasts, url: str) -> None:
    other = RedisForecasts(url, prefix=store.prefix, ttl_ms=60_000)
    async with other:
        await store.put_many([("a" * 64, forecast(1000, scored=4)), ("b" * 64, forecast(2000))])
        a, b, missing = await other.get_many(["a" * 64, "b" * 64, "c" * 64])
    assert missing is None
    assert a == forecast(1000, scored=4) and b == forecast(2000)
    assert a is not None and a.score.as_dict()["ratio"] == pytest.approx(0.5)


async def test_keys_carry_the_flow_as_hash_tag_and_expire(store: RedisForecasts) -> None:
    await store.put_many([("d" * 64, forecast(1))])
    key = f"{store.prefix}{{{'d' * 64}}}"
    assert store.key("d" * 64) == key
    ttl = await store.client.pttl(key)
    assert 0 < ttl <= 60_000
    await store.delete("d" * 64)
    assert await store.get("d" * 64) is None


async def test_an_unreachable_redis_is_a_problem_not_a_crash() -> None:
    store = RedisForecasts("redis://127.0.0.1:1/0", prefix="x:", ttl_ms=1000, timeout_s=0.2)
    async with store:
        with pytest.raises(ForecastsUnavailable):
            await store.get_many(["a" * 64])
        assert store.problem is not None and "unreachable" in store.problem


async def test_the_url_picks_the_backend() -> None:
    assert isinstance(create_forecast_store("memory://", ttl_ms=1, max_flows=1), MemoryForecasts)
    assert isinstance(create_forecast_store(REDIS_URL, ttl_ms=1, max_flows=1), RedisForecasts)
    with pytest.raises(ValueError, match="'kafka'"):
        create_forecast_store("kafka://x", ttl_ms=1, max_flows=1)


async def test_memory_forgets_the_oldest_beyond_its_bound_and_after_the_ttl() -> None:
    now = [0.0]
    store = MemoryForecasts(ttl_ms=10_000, max_flows=2, clock=lambda: now[0])
    await store.put_many([("a", forecast(1)), ("b", forecast(2))])
    await store.put_many([("c", forecast(3))])
    assert await store.get_many(["a", "b", "c"]) == [None, forecast(2), forecast(3)]
    now[0] = 20.0
    await store.put_many([("d", forecast(4))])
    assert await store.get_many(["b", "c", "d"]) == [None, None, forecast(4)]


def test_a_forecasts_interval_numbers_survive_the_round_trip_through_its_redis_value() -> None:
    """What scoring its interval needs (app/learning/conformal.py) is kept beside the result."""
    kept = forecast(3000, scored=2)
    kept.interval = np.arange(32, dtype=np.float64).reshape(4, 8) / 7.0
    back = unpack(pack(kept))
    assert back.interval is not None
    np.testing.assert_array_equal(back.interval, kept.interval)
    assert (back.base_ts, back.model, back.score.scored, back.result()) == (3000, "lstm", 2, kept.result())
    assert unpack(pack(forecast(4000))).interval is None


async def test_a_rounds_flows_over_every_slot_are_written_and_read_back(
    store: RedisForecasts, url: str
) -> None:
    """A round of 300 flows: on a Cluster their keys fall on all three nodes, and MGET and the script of
    one Redis would be refused (CROSSSLOT); each flow's forecast comes back as written."""
    keys = [f"{i:064x}" for i in range(300)]
    written = [(key, forecast(1000 + i, latency=float(i), scored=i % 5)) for i, key in enumerate(keys)]
    await store.put_many(written)
    other = RedisForecasts(url, prefix=store.prefix, ttl_ms=60_000)
    async with other:
        back = await other.get_many([*keys, "f" * 64])
        previous = await other.get_previous(keys)
    assert back == [f for _, f in written] + [None]
    assert previous.found.all() and list(previous.base_ts) == [1000 + i for i in range(300)]
    if store.cluster:
        nodes = {store.client.get_node_from_key(store.key(key)).name for key in keys}
        assert len(nodes) == 3
    ttl = await store.client.pttl(store.key(keys[-1]))
    assert 0 < ttl <= 60_000


async def test_continuous_rounds_keep_and_score_their_forecasts_on_the_cluster(
    redis_cluster: RedisClusterProcesses,
) -> None:
    from tests.app.forecasts.test_forecasts import T0, _rig, key, observation

    prefix = f"test:fc:{uuid.uuid4().hex[:8]}:"
    async for rig in _rig(forecast_url=redis_cluster.url, forecast_prefix=prefix):
        assert isinstance(rig.forecasts.store, RedisForecasts) and rig.forecasts.store.cluster
        for step in range(3):
            await rig.observe([observation(f, step) for f in range(100)])
            await rig.forecasts.continuous.idle()
        assert rig.forecasts.store.problem is None
        for f in (0, 57, 99):
            forecast, score = await rig.forecasts.flow(key(f))
            assert forecast is not None and forecast["metadata"]["base_timestamp"] == T0 + 2000
            assert score is not None and score["scored"] == 2
        assert rig.forecasts.summary()["scores"]["forecasters"]["lstm"]["scored"] == 200


def test_a_rounds_values_packed_from_its_arrays_are_those_packed_one_by_one() -> None:
    """``pack_round`` (the headers by one numpy call) writes the bytes ``pack`` writes for each flow."""
    flows = [(f"{i:064x}", forecast(1000 + i, latency=0.5 * i, scored=i)) for i in range(5)]
    for i in (1, 3):
        flows[i][1].interval = np.arange(32, dtype=np.float64).reshape(4, 8) * (i + 0.25)
    made = round_of(flows)
    assert pack_round(made) == [pack(f) for _, f in flows]
    made.interval, made.has_interval = None, None
    flows[1][1].interval = flows[3][1].interval = None
    assert pack_round(made) == [pack(f) for _, f in flows]
