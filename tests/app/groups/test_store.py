"""The group stores, memory and a real Redis, held to the same rules; and the replicas' index of groups,
which a restarted replica reads back and which follows another replica's changes over a real Redis bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from prometheus_client import Counter

from app.bus import Bus
from app.groups import (
    FlowOutlook,
    Group,
    GroupRoute,
    GroupsFull,
    GroupState,
    GroupStore,
    GroupsUnavailable,
    MemoryGroups,
    create_group_store,
)
from app.groups.ranking import Hysteresis
from app.groups.service import RouteGroups
from app.routing import FailurePolicy
from tests.redis_server import private_prefix, redis_url
from tools.process import free_port

REDIS_URL = redis_url(15)


def key(i: int) -> str:
    return f"{i:064x}"


def group(group_id: str, *flows: int, objective: Any = "latency") -> Group:
    routes = tuple(GroupRoute(f"r{i}", key(i), 1.0 + i) for i in flows)
    return Group(group_id, key(999), objective, routes, 1_700_000_000_000)


def figures(latency: float, base_ts: int = 0) -> FlowOutlook:
    return FlowOutlook(latency, 500.0, 0.99, 0.01, 0.4, 0.8, [latency] * 8, 1000, 1000, "lstm-v1", base_ts)


def counted(counter: Counter) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from private_prefix(REDIS_URL)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[GroupStore]:
    url = "memory://" if request.param == "memory" else REDIS_URL
    async with create_group_store(url, prefix=prefix, max_groups=5, ttl_ms=300) as made:
        yield made


async def test_groups_are_put_read_replaced_and_deleted(store: GroupStore) -> None:
    assert await store.put(group("g1", 1, 2)) is True
    assert await store.get("g1") == group("g1", 1, 2)
    assert await store.put_states({"g1": GroupState(best="r1", weights={"r1": 0.6, "r2": 0.4}, rankings=1)})
    [state] = await store.states(["g1"])
    assert state is not None and state.best == "r1" and state.weights == {"r1": 0.6, "r2": 0.4}
    # a new definition starts over: the old state would rank it against routes it may not have
    assert await store.put(group("g1", 2, 3, objective="balanced")) is False
    assert (await store.get("g1")) == group("g1", 2, 3, objective="balanced")
    assert await store.states(["g1"]) == [None]
    assert await store.get_many(["g1", "nope"]) == [group("g1", 2, 3, objective="balanced"), None]
    assert await store.delete("g1") is True and await store.delete("g1") is False
    assert await store.get("g1") is None and await store.count() == 0
    # the group is gone: no state outlives it
    assert await store.put_states({"g1": GroupState(best="r2", rankings=1)}) == set()
    assert await store.states(["g1"]) == [None]


async def test_a_state_is_kept_only_over_the_state_it_was_decided_from(store: GroupStore) -> None:
    await store.put(group("g1", 1, 2))
    await store.put(group("g2", 1, 3))
    # the first ranking: version 0, none stored
    assert await store.put_states({"g1": GroupState(best="r1", rankings=1)}) == {"g1"}
    # another replica decided from the same (empty) state: its state is not kept
    assert await store.put_states({"g1": GroupState(best="r2", rankings=1)}) == set()
    assert await store.put_states({"g1": GroupState(best="r2", rankings=3)}) == set()  # nor one from ahead
    [state] = await store.states(["g1"])
    assert state is not None and state.best == "r1"
    kept = await store.put_states({"g1": GroupState(best="r2", rankings=2), "g2": GroupState(rankings=5)})
    assert kept == {"g1"}
    assert [s.best if s else None for s in await store.states(["g1", "g2"])] == ["r2", None]


async def test_groups_page_in_id_order_and_are_bounded(store: GroupStore) -> None:
    for group_id in ("c", "a", "e", "b", "d"):
        await store.put(group(group_id, 1))
    assert await store.ids(None, 2) == ["a", "b"]
    assert await store.ids("b", 2) == ["c", "d"]
    assert await store.ids("d", 2) == ["e"]
    assert [g.group_id for g in await store.all(page=2)] == ["a", "b", "c", "d", "e"]
    assert await store.count() == 5
    with pytest.raises(GroupsFull, match="at most 5"):
        await store.put(group("f", 1))
    await store.put(group("a", 2))  # replacing one is no new group
    assert await store.count() == 5


async def test_route_outlooks_are_shared_and_expire_with_their_flows(store: GroupStore) -> None:
    await store.put_outlooks({key(1): figures(10.0, 5), key(2): figures(20.0, 6)})
    assert await store.outlooks([key(2), key(3), key(1)]) == [figures(20.0, 6), None, figures(10.0, 5)]
    await asyncio.sleep(0.4)  # ttl_ms=300
    assert await store.outlooks([key(1), key(2)]) == [None, None]


def test_an_unknown_scheme_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="'postgres'"):
        create_group_store("postgres://user:secret@db/0")
    assert isinstance(create_group_store("memory://"), MemoryGroups)


async def test_an_unreachable_redis_is_unavailable_not_a_crash() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with create_group_store(url, timeout_ms=200) as store:
        with pytest.raises(GroupsUnavailable):
            await store.ids(None, 10)
        assert store.problem is not None and "unreachable" in store.problem


def _replica(store: GroupStore, bus: Bus, channel: str) -> RouteGroups:
    return RouteGroups(
        store,
        bus,
        routing_channel=f"{channel}:routing",
        groups_channel=channel,
        policy=FailurePolicy(),
        rules=Hysteresis(),
        refresh_s=3600.0,  # nothing but the announcements and the start-up read keep it current here
    )


@pytest.mark.redis
async def test_a_restarted_replica_reads_the_groups_back_and_follows_the_others(
    redis_server: Any, prefix: str
) -> None:
    channel = f"{prefix}groups"
    async with Bus(REDIS_URL) as bus_a, Bus(REDIS_URL) as bus_b:
        async with _replica(create_group_store(REDIS_URL, prefix=prefix), bus_a, channel) as a:
            await a.put(group("edge-1", 1, 2))
        # a replica started afterwards (a restart) finds the group in Redis
        async with (
            _replica(create_group_store(REDIS_URL, prefix=prefix), bus_a, channel) as a,
            _replica(create_group_store(REDIS_URL, prefix=prefix), bus_b, channel) as b,
        ):
            assert b.count == 1 and b.groups_of(key(1)) == ["edge-1"]
            await a.put(group("edge-2", 2, 3))  # announced on the bus: b reloads it at once
            await a.delete("edge-1")
            async with asyncio.timeout(5):
                while b.groups_of(key(2)) != ["edge-2"] or b.groups_of(key(1)):
                    await asyncio.sleep(0.01)
            assert b.groups_of(key(3)) == ["edge-2"] and b.count == 1


@pytest.mark.redis
async def test_two_replicas_ranking_one_group_from_one_state_publish_its_change_once(
    redis_server: Any, prefix: str
) -> None:
    channel = f"{prefix}groups"
    store_a = create_group_store(REDIS_URL, prefix=prefix)
    store_b = create_group_store(REDIS_URL, prefix=prefix)
    async with (
        Bus(REDIS_URL) as bus_a,
        Bus(REDIS_URL) as bus_b,
        Bus(REDIS_URL) as listener,
        _replica(store_a, bus_a, channel) as a,
        _replica(store_b, bus_b, channel) as b,
    ):
        await a.put(group("edge", 1, 2))
        async with asyncio.timeout(5):
            while b.groups_of(key(1)) != ["edge"]:
                await asyncio.sleep(0.01)
        outlooks = {key(1): figures(10.0, 1_000), key(2): figures(30.0, 1_000)}
        await store_a.put_outlooks(outlooks)
        # the race made certain: each replica reads the group's state before either keeps its own
        barrier = asyncio.Barrier(2)
        for store in (store_a, store_b):

            async def states(ids: Any, read: Any = store.states, first: list[bool] = [True]) -> Any:  # noqa: B006
                found = await read(ids)
                if first:
                    first.clear()
                    await barrier.wait()
                return found

            store.states = states  # type: ignore[method-assign]
        received: list[dict[str, Any]] = []
        async with listener.subscribe(f"{channel}:routing") as subscription:

            async def collect() -> None:
                async for message in subscription:
                    received.append(orjson.loads(message))

            collector = asyncio.create_task(collect())
            # a forecast route 1 and b route 2 at the same moment: both re-rank the group from one state
            await asyncio.gather(
                a._rerank({key(1): outlooks[key(1)]}, ["edge"]),
                b._rerank({key(2): outlooks[key(2)]}, ["edge"]),
            )
            await asyncio.sleep(0.5)  # anything published twice would be here by now
            collector.cancel()
        assert sorted(next(iter(m)) for m in received) == ["LoadBalancingUpdate", "RoutingPrediction"]
        [state] = await store_b.states(["edge"])
        assert state is not None and state.best == "r1" and state.rankings == 2  # both ranked, in turn
        assert counted(a.metrics.superseded) + counted(b.metrics.superseded) == 1
