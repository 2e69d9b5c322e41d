"""The bus against each backend, the Redis one on a real Redis: publish, subscribe, fan-out, clean-up."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from app.bus import Bus, Subscription
from tests.redis_server import redis_url

REDIS_URL = redis_url(14)
URLS = ["memory://", pytest.param(REDIS_URL, marks=pytest.mark.redis, id="redis")]


@pytest.fixture(params=URLS)
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    async with Bus(request.param) as bus:
        yield bus


@pytest.fixture
def channel() -> str:
    # pub/sub channels are not per database: a unique name keeps concurrent runs apart
    return f"cpe:test:{uuid.uuid4().hex}"


async def _next(subscription: Subscription, timeout: float = 2.0) -> bytes:
    return await asyncio.wait_for(anext(subscription), timeout)


async def _numsub(channel: str) -> int:
    async with redis.Redis.from_url(REDIS_URL) as client:
        ((_, count),) = await client.pubsub_numsub(channel)
        return int(count)


async def test_a_subscriber_receives_what_is_published_in_order(bus: Bus, channel: str) -> None:
    async with bus.subscribe(channel) as subscription:
        for i in range(5):
            assert await bus.publish(channel, f"m{i}".encode()) is True
        assert [await _next(subscription) for _ in range(5)] == [b"m0", b"m1", b"m2", b"m3", b"m4"]


async def test_every_subscriber_gets_every_message_and_the_process_subscribes_once(
    bus: Bus, channel: str
) -> None:
    other = f"{channel}:other"
    async with (
        bus.subscribe(channel) as first,
        bus.subscribe(channel) as second,
        bus.subscribe(other) as elsewhere,
    ):
        assert bus.channels == {channel, other}
        if bus.backend.__class__.__name__ == "RedisBackend":
            assert await _numsub(channel) == 1
        await bus.publish(channel, b"\x00binary\xff")
        await bus.publish(other, b"other")
        assert await _next(first) == b"\x00binary\xff"
        assert await _next(second) == b"\x00binary\xff"
        assert await _next(elsewhere) == b"other"


async def test_leaving_the_subscription_unsubscribes_and_ends_the_iteration(bus: Bus, channel: str) -> None:
    async with bus.subscribe(channel) as staying:
        async with bus.subscribe(channel) as leaving:
            pass
        assert bus.channels == {channel}  # one local subscriber left: still subscribed
        with pytest.raises(StopAsyncIteration):
            await _next(leaving)
        await bus.publish(channel, b"still here")
        assert await _next(staying) == b"still here"
    assert bus.channels == set()
    if bus.backend.__class__.__name__ == "RedisBackend":
        assert await _numsub(channel) == 0


async def test_a_slow_subscriber_loses_its_oldest_messages_without_holding_up_another(channel: str) -> None:
    async with Bus("memory://", queue_size=4) as bus, bus.subscribe(channel) as slow:
        async with bus.subscribe(channel) as fast:
            for i in range(10):
                await bus.publish(channel, str(i).encode())
                assert await _next(fast) == str(i).encode()
        assert slow.dropped == 6
        assert [await _next(slow) for _ in range(4)] == [b"6", b"7", b"8", b"9"]


def test_an_unknown_scheme_is_a_value_error_naming_it_and_not_the_rest_of_the_url() -> None:
    with pytest.raises(ValueError, match="'kafka'") as info:
        Bus("kafka://user:secret@host:9092")
    assert "secret" not in str(info.value)
    with pytest.raises(ValueError, match="URL, a backend or a redis client"):
        Bus()


@pytest.mark.redis
async def test_a_ready_made_redis_client_is_used_and_left_open(channel: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        async with Bus(client=client) as bus, bus.subscribe(channel) as subscription:
            await bus.publish(channel, b"shared")
            assert await _next(subscription) == b"shared"
        assert await client.ping() is True  # the bus did not close what it was given
    finally:
        await client.aclose()


async def test_redis_down_is_counted_and_logged_once_never_raised(
    channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cpe.bus")
    async with Bus("redis://127.0.0.1:1/0") as bus:  # nothing listens on port 1
        async with bus.subscribe(channel):
            assert await bus.publish(channel, b"lost") is False
            assert await bus.publish(channel, b"lost too") is False
        assert bus.errors >= 3
        assert bus.backend.healthy is False
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.redis
async def test_the_redis_subscription_comes_back_after_its_connection_is_killed(channel: str) -> None:
    name = f"cpe-test-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS_URL, client_name=name)
    admin = redis.Redis.from_url(REDIS_URL)
    try:
        async with Bus(client=client) as bus, bus.subscribe(channel) as subscription:
            await bus.publish(channel, b"before")
            assert await _next(subscription) == b"before"
            killed = [c["id"] for c in await admin.client_list() if c["name"] == name and int(c["sub"]) > 0]
            assert len(killed) == 1
            await admin.client_kill_filter(_id=killed[0])

            # pub/sub is at most once: what is published while the subscriber reconnects is lost, so keep
            # publishing until one arrives
            async def publish_until_received() -> bytes:
                for i in range(100):
                    await bus.publish(channel, f"after {i}".encode())
                    try:
                        return await _next(subscription, timeout=0.1)
                    except TimeoutError:
                        continue
                raise AssertionError("nothing arrived after the subscriber's connection was killed")

            assert (await publish_until_received()).startswith(b"after")
            assert await _numsub(channel) == 1
    finally:
        await client.aclose()
        await admin.aclose()
