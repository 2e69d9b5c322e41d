"""The prediction cache on its own: both URL schemes, the eviction strategies, TTLs, keys, the breaker.

The Redis tests use the session's own redis-server (tests/redis_server.py), database 13, under a key
prefix of their own, and delete their keys afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from app.cache import STRATEGIES, CacheMetrics, MemoryCache, TieredCache, create_cache, prediction_key
from app.cache.redis import RedisCache
from app.wire.decode import context_arrays
from tests.app.payloads import FLOW_KEY, contexts
from tests.redis_server import redis_url
from tools.process import RedisServer, free_port

REDIS_URL = redis_url(13)
PREFIX = "cpe-test:pred:"
URLS = ["memory://", pytest.param(REDIS_URL, id="redis")]


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{PREFIX}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def _value(i: int) -> bytes:
    return b'{"n":%d}' % i


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- the front, per URL ------------------------------------------------------------------------------


def test_an_unknown_scheme_is_a_value_error_naming_it_and_not_the_rest_of_the_url() -> None:
    with pytest.raises(ValueError, match="unsupported cache URL scheme 'memcached'") as info:
        create_cache("memcached://user:secret@cache:11211")
    assert "secret" not in str(info.value)


def test_an_unknown_strategy_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="unknown cache strategy 'mru'"):
        create_cache("memory://", strategy="mru")


def test_memory_url_has_no_shared_tier_and_redis_url_has_one() -> None:
    assert create_cache("memory://").shared is None
    cache = create_cache(REDIS_URL)
    assert isinstance(cache.shared, RedisCache)


@pytest.mark.parametrize("url", URLS)
async def test_values_come_back_in_the_order_of_the_keys(url: str, redis_client: Redis) -> None:
    async with create_cache(url, client=redis_client, prefix=PREFIX) as cache:
        assert await cache.get("a") is None
        await cache.set_many([("a", _value(1)), ("c", _value(3))])
        assert await cache.get_many(["c", "b", "a", "c"]) == [_value(3), None, _value(1), _value(3)]
        await cache.set("a", _value(4))  # replaced
        assert await cache.get("a") == _value(4)
        assert cache.problem is None


@pytest.mark.parametrize("url", URLS)
async def test_entries_expire_after_the_ttl(url: str, redis_client: Redis) -> None:
    async with create_cache(url, ttl_ms=150, client=redis_client, prefix=PREFIX) as cache:
        await cache.set_many([("x", _value(1)), ("y", _value(2))])
        assert await cache.get_many(["x", "y"]) == [_value(1), _value(2)]
        await asyncio.sleep(0.25)
        assert await cache.get_many(["x", "y"]) == [None, None]
        assert len(cache.memory) == 0


async def test_redis_stores_binary_values_with_a_ttl_in_ms_under_the_flows_hash_tag(
    redis_client: Redis,
) -> None:
    key = f"{{{FLOW_KEY}}}:{'0' * 32}"
    value = bytes(range(256))  # not UTF-8: stored as given
    async with create_cache(REDIS_URL, ttl_ms=5_000, client=redis_client, prefix=PREFIX) as cache:
        await cache.set(key, value)
    assert await redis_client.get(f"{PREFIX}{{{FLOW_KEY}}}:{'0' * 32}") == value
    assert 4_000 < await redis_client.pttl(f"{PREFIX}{key}") <= 5_000


async def test_the_redis_ttl_alone_expires_entries(redis_client: Redis) -> None:
    async with create_cache(REDIS_URL, ttl_ms=100, client=redis_client, prefix=PREFIX) as cache:
        assert cache.shared is not None
        await cache.shared.set("k", _value(1))
        assert await cache.shared.get("k") == _value(1)
        await asyncio.sleep(0.2)
        assert await cache.shared.get("k") is None


async def test_what_one_replica_stored_is_a_hit_on_another_and_fills_its_memory_tier(
    redis_client: Redis,
) -> None:
    a_registry, b_registry = CollectorRegistry(), CollectorRegistry()
    a = create_cache(REDIS_URL, client=redis_client, prefix=PREFIX, registry=a_registry)
    b = create_cache(REDIS_URL, client=redis_client, prefix=PREFIX, registry=b_registry)
    async with a, b:
        await a.set_many([("k1", _value(1)), ("k2", _value(2))])
        assert "k1" not in b.memory
        assert await b.get_many(["k1", "k2", "k3"]) == [_value(1), _value(2), None]
        assert "k1" in b.memory and "k2" in b.memory and "k3" not in b.memory
        assert await b.get("k1") == _value(1)  # now from memory: Redis is not asked again
        assert _sample(b_registry, "cpe_redis_up") == 1
    assert _sample(b_registry, "cpe_redis_up") == 0  # disconnected
    samples = {
        (tier, result): _sample(b_registry, "cpe_cache_requests_total", tier=tier, result=result)
        for tier in ("memory", "redis")
        for result in ("hit", "miss")
    }
    assert samples == {
        ("memory", "hit"): 1,
        ("memory", "miss"): 3,
        ("redis", "hit"): 2,
        ("redis", "miss"): 1,
    }
    assert _sample(b_registry, "cpe_cache_entries", tier="memory") == 2


@pytest.mark.parametrize("scripted", [True, False])  # False: where the script is refused, a pipeline
async def test_a_batch_is_one_mget_and_one_store_of_every_key(
    redis_client: Redis, monkeypatch: pytest.MonkeyPatch, scripted: bool
) -> None:
    commands: list[str] = []  # what the client sends one by one, outside a pipeline
    send = redis_client.execute_command

    async def counting(*args: object, **options: object) -> object:
        commands.append(str(args[0]))
        return await send(*args, **options)

    async def calls(command: str) -> int:
        stats = await send("INFO", "commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    sets, mgets = await calls("set"), await calls("mget")
    monkeypatch.setattr(redis_client, "execute_command", counting)
    writer = create_cache(REDIS_URL, client=redis_client, prefix=PREFIX)
    reader = create_cache(REDIS_URL, client=redis_client, prefix=PREFIX)  # an empty memory tier
    async with writer, reader:
        assert isinstance(writer.shared, RedisCache)
        writer.shared.scripted = scripted
        await writer.set_many([("warm", _value(0)), ("up", _value(0))])  # the script loaded, if need be
        sets = await calls("set")
        commands.clear()
        await writer.set_many([(f"k{i}", _value(i)) for i in range(50)], [60_000 + i for i in range(50)])
        assert commands == (["EVALSHA"] if scripted else [])  # one command, or all 50 in the pipeline
        found = await reader.get_many([f"k{i}" for i in range(60)])
        assert commands[-1:] == ["MGET"]
        ttls = [await send("PTTL", f"{PREFIX}k{i}") for i in (0, 49)]
    assert found == [_value(i) for i in range(50)] + [None] * 10
    assert await calls("set") - sets == 50 and await calls("mget") - mgets == 1
    assert 59_000 < ttls[0] <= 60_000 and 59_049 < ttls[1] <= 60_049  # each its own TTL


# -- the in-process tier's strategies -----------------------------------------------------------------


async def _touch(cache: MemoryCache, *keys: str) -> None:
    for key in keys:
        assert await cache.get(key) is not None, key


async def test_lru_evicts_the_least_recently_used() -> None:
    cache = MemoryCache(max_entries=3, strategy="lru")
    await cache.set_many([("a", b"1"), ("b", b"2"), ("c", b"3")])
    await _touch(cache, "a")  # b is now the least recently used
    await cache.set("d", b"4")
    assert [k in cache for k in "abcd"] == [True, False, True, True]
    await _touch(cache, "c", "a")
    await cache.set("e", b"5")  # d
    assert [k in cache for k in "acde"] == [True, True, False, True]


async def test_lfu_evicts_the_least_frequently_used_oldest_first() -> None:
    cache = MemoryCache(max_entries=3, strategy="lfu")
    await cache.set_many([("a", b"1"), ("b", b"2"), ("c", b"3")])
    await _touch(cache, "a", "a", "b", "c", "c", "c")  # uses: a 3, b 2, c 4
    await cache.set("d", b"4")  # b, the least used
    assert [k in cache for k in "abcd"] == [True, False, True, True]
    await cache.set("e", b"5")  # d (1 use) before a (3): fewest uses first, however recent
    assert [k in cache for k in "acde"] == [True, True, False, True]
    await _touch(cache, "e", "e")  # e 3 uses, same as a, which got there first
    await cache.set("f", b"6")
    assert [k in cache for k in "acef"] == [False, True, True, True]


async def test_ttl_evicts_the_entry_nearest_expiry() -> None:
    cache = MemoryCache(max_entries=3, strategy="ttl")
    await cache.set_many([("a", b"1"), ("b", b"2"), ("c", b"3")])
    await _touch(cache, "a", "a", "a")  # use does not matter
    await cache.set("a", b"1'")  # stored again: a fresh TTL, b now expires first
    await cache.set("d", b"4")
    assert [k in cache for k in "abcd"] == [True, False, True, True]
    await cache.set("e", b"5")  # c
    assert [k in cache for k in "acde"] == [True, False, True, True]


class _Reference:
    """The strategies written the slow, obvious way: the victim is a minimum over every entry."""

    def __init__(self, strategy: str, max_entries: int) -> None:
        self.strategy, self.max_entries = strategy, max_entries
        self.entries: dict[str, list[int]] = {}  # key -> [stored, last used, uses, arrived at its uses]
        self.clock = 0

    def get(self, key: str) -> bool:
        self.clock += 1
        entry = self.entries.get(key)
        if entry is not None:
            entry[1], entry[2], entry[3] = self.clock, entry[2] + 1, self.clock
        return entry is not None

    def set(self, key: str) -> None:
        self.clock += 1
        if key not in self.entries and len(self.entries) >= self.max_entries:
            rank = {
                "ttl": lambda e: e[0],
                "lru": lambda e: e[1],
                "lfu": lambda e: (e[2], e[3]),
            }[self.strategy]
            del self.entries[min(self.entries, key=lambda k: rank(self.entries[k]))]
        self.entries[key] = [self.clock, self.clock, 1, self.clock]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_each_strategy_matches_its_definition_and_respects_the_bound(strategy: str) -> None:
    cache = MemoryCache(max_entries=50, strategy=strategy)
    reference = _Reference(strategy, 50)
    rng = random.Random(7)
    for _ in range(5_000):
        key = f"k{int(rng.paretovariate(1.0)) % 200}"  # skewed, as popular flows are
        if rng.random() < 0.7:
            assert (await cache.get(key) is not None) == reference.get(key), key
        else:
            await cache.set(key, b"v")
            reference.set(key)
        assert len(cache) <= 50
        assert len(cache) == len(reference.entries)
    assert {k for k in reference.entries} == {k for k in cache._entries}


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_expired_entries_leave_before_live_ones_are_evicted(strategy: str) -> None:
    cache = MemoryCache(max_entries=3, ttl_ms=100, strategy=strategy)
    await cache.set_many([("old1", b"1"), ("old2", b"2")])
    await _touch(cache, *["old1", "old2"] * 20)  # very popular, yet its window changed: never read again
    await asyncio.sleep(0.15)
    await cache.set_many([("new1", b"3"), ("new2", b"4"), ("new3", b"5")])
    assert len(cache) == 3
    assert all(k in cache for k in ("new1", "new2", "new3"))


# -- keys ---------------------------------------------------------------------------------------------


def _key(window: list, *, version: str = "lstm-aaaa", flow: str = FLOW_KEY, horizon: int = 1) -> str:
    timestamps, features = context_arrays(window)
    return prediction_key(version, flow, horizon, timestamps, features, [c.get("pattern_id") for c in window])


def test_a_key_names_the_model_version_the_flow_the_horizon_and_the_window() -> None:
    window = contexts(8)
    key = _key(window)
    assert key.startswith(f"{{{FLOW_KEY}}}:") and len(key) == len(FLOW_KEY) + 3 + 32
    assert _key(contexts(8)) == key  # the same content
    moved = [dict(c, timestamp=c["timestamp"] + 1) for c in window]
    nudged = [*window[:-1], dict(window[-1], features=[*window[-1]["features"][:-1], 5.000001])]
    labelled = [*window[:-1], dict(window[-1], pattern_id="burst")]
    relabelled = [*window[:-1], dict(window[-1], pattern_id="diurnal")]
    others = {
        "model version": _key(window, version="lstm-bbbb"),
        "flow": _key(window, flow="ab" * 32),
        "horizon": _key(window, horizon=2),
        "timestamps": _key(moved),
        "features": _key(nudged),
        "pattern_id": _key(labelled),
        "another pattern_id": _key(relabelled),
        "a shorter window": _key(window[1:]),
    }
    assert len(set(others.values()) | {key}) == len(others) + 1, others


def test_metadata_does_not_change_the_key_since_no_part_of_the_answer_reads_it() -> None:
    window = contexts(4)
    tagged = [dict(c, metadata={"region_rtt_ms": 11.0}) for c in window]
    assert _key(tagged) == _key(window)
    nulled = [dict(c, pattern_id=None) for c in window]
    assert _key(nulled) == _key(window)  # an explicit null is no pattern id, as for similar_patterns


def test_features_are_hashed_as_given_not_as_a_lossy_rounding() -> None:
    window = contexts(2)
    nudged = [window[0], dict(window[1], features=list(np.nextafter(window[1]["features"], np.inf)))]
    assert _key(nudged) != _key(window)


# -- Redis unavailable --------------------------------------------------------------------------------


async def test_without_redis_the_cache_misses_fast_counts_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    metrics = CacheMetrics(registry)
    shared = RedisCache(f"redis://127.0.0.1:{free_port()}/0", backoff_s=(0.2, 0.4), metrics=metrics)
    cache = TieredCache(MemoryCache(metrics=metrics), shared)
    with caplog.at_level("INFO", logger="cpe.cache"):
        start = time.perf_counter()
        async with cache:  # connecting fails: the cache starts degraded instead of raising
            assert cache.problem is not None and cache.problem.startswith("redis unreachable: ")
            errors = _sample(registry, "cpe_cache_errors_total", tier="redis")
            assert errors == 1
            for i in range(100):
                await cache.set(f"k{i}", b"v")  # the memory tier still works
                assert await cache.get(f"k{i}") == b"v"
                assert await cache.get(f"missing{i}") is None
            # the breaker is open: no round-trip was tried, none counted
            assert _sample(registry, "cpe_cache_errors_total", tier="redis") == errors
            assert time.perf_counter() - start < 0.5
            await asyncio.sleep(0.25)  # past the backoff: the next call probes, fails, backs off longer
            assert await cache.get("missing") is None
            assert _sample(registry, "cpe_cache_errors_total", tier="redis") == errors + 1
            assert await cache.get("missing") is None
            assert _sample(registry, "cpe_cache_errors_total", tier="redis") == errors + 1
            assert _sample(registry, "cpe_redis_up") == 0
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1  # one line per change of state, not per failure


def test_the_breaker_probes_once_at_a_time_and_backs_off_up_to_its_cap() -> None:
    from app.cache.redis import Breaker

    breaker = Breaker(0.05, 0.1)
    assert breaker.allow()
    assert breaker.failed("down") is True
    assert not breaker.allow()  # open
    time.sleep(0.06)
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one
    assert breaker.failed("still down") is False
    assert breaker._backoff_s == 0.1
    time.sleep(0.06)
    assert not breaker.allow()  # backing off longer now
    time.sleep(0.05)
    assert breaker.allow()
    breaker.abandoned()  # the probe was cancelled: another may try
    assert breaker.allow()
    assert breaker.failed("down") is False and breaker._backoff_s == 0.1  # capped
    time.sleep(0.11)
    assert breaker.allow()
    assert breaker.succeeded() is True
    assert breaker.problem is None and breaker.allow() and breaker.allow()
