"""The flow stores: memory, one real Redis, and a real 3-node Redis Cluster started here; the same rules.

Late and duplicate contexts are counted and not applied, missing features are filled in from the flow,
windows are trimmed, flows expire, and (a property test) no order of observations, from two replicas
at once, corrupts a window.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.flows import FlowContext, FlowStore, create_flow_store
from tests.redis_server import private_prefix, redis_url

REDIS_URL = redis_url(11)
T0 = 1_767_225_600_000


@pytest.fixture(params=["memory", "redis", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "redis":
        return REDIS_URL
    return str(request.getfixturevalue("redis_cluster").url)


def _store(url: str, prefix: str, **options: Any) -> FlowStore:
    return create_flow_store(url, prefix=prefix, **options)


def _context(flow_key: str, t: int, *features: float, **more: Any) -> FlowContext:
    return FlowContext(flow_key, T0 + t, np.asarray(features, dtype=np.float32), **more)


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from private_prefix(REDIS_URL)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _scenario(url: str, prefix: str) -> None:
    key = secrets.token_hex(32)
    async with _store(url, prefix, window=3) as store:
        done = await store.append(
            [
                _context(key, 10, 1, 2, 0.1, 4, 0.5, 0.0, 7, 8, route_id="r1"),
                _context(key, 10, 9, 9, 0.9, 9, 0.9, 0.9, 9, 9),  # duplicate
                _context(key, 5, 9, 9, 0.9, 9, 0.9, 0.9, 9, 9),  # late
                _context(key, 20, np.nan, 3, np.nan, 5, 0.5, 0.0, 7, 8),  # latency, loss imputed
            ]
        )
        assert (done.accepted, done.late, done.duplicates, done.imputed) == (2, 1, 1, 1)
        assert done.statuses == [0, 2, 1, 0]
        applied = done.applied[key]
        assert [c.timestamp - T0 for c in applied] == [10, 20]
        assert applied[1].features.tolist()[:3] == pytest.approx([1.0, 3.0, 0.1])
        assert applied[1].imputed == 0b101
        await store.attach_patterns([(key, "peak")])
        await store.append([_context(key, t, t, 0, 0, 0, 0, 0, 0, 0) for t in (30, 40, 50)])
        window = await store.window(key)
        assert window is not None
        assert (window.timestamps - T0).tolist() == [30, 40, 50]  # trimmed to 3
        assert window.pattern_ids == ["peak", None, None]  # the pending pattern went to the next context
        assert window.route_id == "r1" and window.observations == 5
        assert key in await store.flows(None, 1000)
        assert await store.window(secrets.token_hex(32)) is None
        assert await store.delete(key) and await store.window(key) is None
        assert not await store.delete(key)


def test_late_duplicate_imputed_pattern_trim_delete(url: str, prefix: str) -> None:
    run(_scenario(url, prefix))


async def _pages(url: str, prefix: str) -> None:
    keys = sorted(secrets.token_hex(32) for _ in range(25))
    async with _store(url, prefix) as store:
        await store.append([_context(k, 1, 1, 1, 0, 1, 0, 0, 1, 1) for k in keys])
        seen: list[str] = []
        after = None
        while page := await store.flows(after, 10):
            seen += page
            after = page[-1]
        assert [k for k in seen if k in keys] == keys


def test_paging_lists_every_flow_once_in_order(url: str, prefix: str) -> None:
    run(_pages(url, prefix))


def test_idle_flows_expire_in_memory() -> None:
    now = [0.0]
    from app.flows.memory import MemoryFlows

    store = MemoryFlows(window=4, ttl_ms=1_000, max_flows=2, clock=lambda: now[0])
    a, b, c = (secrets.token_hex(32) for _ in range(3))
    run(store.append([_context(a, 1, *[1.0] * 8), _context(b, 1, *[1.0] * 8)]))
    from app.flows import FlowsFull

    with pytest.raises(FlowsFull, match="CPE_MAX_FLOWS"):
        run(store.append([_context(c, 1, *[1.0] * 8)]))
    now[0] = 2.0  # both idle past the TTL
    run(store.append([_context(c, 1, *[1.0] * 8)]))
    assert run(store.windows([a, b, c]))[:2] == [None, None]
    assert run(store.count()) == 1


def test_redis_flows_expire_after_the_ttl(prefix: str) -> None:
    async def scenario() -> None:
        key = secrets.token_hex(32)
        async with _store(REDIS_URL, prefix, ttl_ms=200) as store:
            await store.append([_context(key, 1, *[1.0] * 8)])
            assert await store.window(key) is not None
            await asyncio.sleep(0.4)
            assert await store.window(key) is None
            assert key not in await store.flows(None, 100)  # and the listing prunes it

    run(scenario())


# -- a property: any order, any duplicates, two replicas: the window stays what the rules say ------------
observation = st.tuples(st.integers(0, 40), st.floats(0, 100, allow_nan=False, width=32))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.tuples(st.booleans(), st.lists(observation, min_size=1, max_size=8)), max_size=8))
def test_no_order_of_observations_from_two_replicas_corrupts_a_window(
    batches: list[tuple[bool, list[tuple[int, float]]]], prefix: str
) -> None:
    async def scenario() -> None:
        key = secrets.token_hex(32)
        async with _store(REDIS_URL, prefix, window=5) as one, _store(REDIS_URL, prefix, window=5) as two:
            expected: list[tuple[int, float]] = []  # the rule, applied by hand
            newest = -1
            for first, batch in batches:
                for t, value in batch:
                    if t > newest:
                        expected.append((t, value))
                        newest = t

                async def send(store: FlowStore, part: list[tuple[int, float]]) -> None:
                    await store.append([_context(key, t, value, *[0.0] * 7) for t, value in part])

                await send(one if first else two, batch)
            window = await one.window(key)
            if not expected:
                assert window is None
                return
            assert window is not None
            assert np.all(np.diff(window.timestamps) > 0), "timestamps strictly increasing"
            got = [
                (int(t - T0), float(f)) for t, f in zip(window.timestamps, window.features[:, 0], strict=True)
            ]
            assert got == [(t, pytest.approx(v)) for t, v in expected[-5:]]

    run(scenario())


async def _racing(url: str, prefix: str) -> None:
    """Two replicas send the same flow's observations at once, shuffled and repeated: the window holds the
    newest, each once, in order."""
    key = secrets.token_hex(32)
    rng = np.random.default_rng(7)
    async with _store(url, prefix, window=50) as one, _store(url, prefix, window=50) as two:
        sent = list(range(200))
        parts = [[int(t) for t in rng.permutation(sent)[:120]] for _ in range(2)]

        async def feed(store: FlowStore, ts: list[int]) -> None:
            for i in range(0, len(ts), 10):
                await store.append([_context(key, t, t, *[0.0] * 7) for t in sorted(ts[i : i + 10])])

        await asyncio.gather(feed(one, parts[0]), feed(two, parts[1]))
        window = await two.window(key)
        assert window is not None
        assert np.all(np.diff(window.timestamps) > 0)
        assert np.array_equal(window.features[:, 0], (window.timestamps - T0).astype(np.float32))


def test_two_replicas_racing_on_one_flow(url: str, prefix: str) -> None:
    run(_racing(url, prefix))


async def _interleaved(url: str, prefix: str) -> None:
    """Two flows' contexts interleaved in one batch, with routes and pattern ids on some: each flow gets its
    own, in order (Redis packs a call's contexts flow by flow, its route and pattern arguments apart)."""
    a, b = secrets.token_hex(32), secrets.token_hex(32)
    async with _store(url, prefix, window=4) as store:
        done = await store.append(
            [
                _context(a, 1, 1, *[0.0] * 7, pattern_id="pa1"),
                _context(b, 1, 10, *[0.0] * 7, route_id="rb"),
                _context(a, 2, 2, *[0.0] * 7),
                _context(b, 1, 11, *[0.0] * 7),  # duplicate
                _context(a, 3, 3, *[0.0] * 7, pattern_id="pa3", route_id="ra"),
                _context(b, 2, np.nan, *[0.0] * 7, pattern_id="pb2"),  # latency imputed: 10
            ]
        )
        assert done.statuses == [0, 0, 0, 2, 0, 0]
        assert done.applied[b][1].features[0] == pytest.approx(10.0) and done.applied[b][1].imputed == 1
        wa, wb = await store.windows([a, b])
        assert wa is not None and wb is not None
        assert wa.features[:, 0].tolist() == [1, 2, 3] and wa.pattern_ids == ["pa1", None, "pa3"]
        assert wa.route_id == "ra" and wb.route_id == "rb"
        assert wb.features[:, 0].tolist() == [10, 10] and wb.pattern_ids == [None, "pb2"]
        block = await store.window_block([b, secrets.token_hex(32), a], 2)
        assert block.lengths.tolist() == [2, 0, 2]
        assert (block.timestamps[2] - T0).tolist() == [2, 3]


def test_interleaved_flows_with_routes_and_patterns_in_one_batch(url: str, prefix: str) -> None:
    run(_interleaved(url, prefix))
