"""Adaptive TTL: a forecast lives up to its horizon in time, less when it is wide, within bounds."""

from __future__ import annotations

import asyncio

import pytest

from app.cache.memory import MemoryCache
from app.cache.ttl import AdaptiveTtl


def test_a_narrow_forecast_lives_its_horizon_and_a_wide_one_less() -> None:
    ttl = AdaptiveTtl(min_ms=100, max_ms=60_000)
    assert ttl.ttl_ms(1000.0, 2, 20.0, 19.5, 20.5) == 2000  # within the band: its whole horizon
    assert ttl.ttl_ms(1000.0, 2, 20.0, 16.0, 24.0) == 1000  # twice the band's width: half
    assert ttl.ttl_ms(1000.0, 2, 20.0, 0.0, 200.0) == 500  # very wide: a quarter, no less


def test_the_ttl_stays_within_its_bounds() -> None:
    ttl = AdaptiveTtl(min_ms=800, max_ms=5000)
    assert ttl.ttl_ms(300_000.0, 1, 20.0, 20.0, 20.0) == 5000
    assert ttl.ttl_ms(1000.0, 1, 20.0, 0.0, 400.0) == 800
    assert ttl.ttl_ms(0.0, 1, 20.0, 19.0, 21.0) == 800  # one context: no interval to go by


async def test_the_memory_tier_keeps_each_entry_for_its_own_ttl() -> None:
    cache = MemoryCache(max_entries=10, ttl_ms=60_000)
    await cache.set_many([("short", b"a"), ("long", b"b")], [30, 60_000])
    await cache.set("fixed", b"c")
    await asyncio.sleep(0.05)
    assert await cache.get_many(["short", "long", "fixed"]) == [None, b"b", b"c"]


@pytest.mark.parametrize("bad", [{"cache_ttl_min_ms": 5000, "cache_ttl_max_ms": 1000}])
def test_bounds_that_cross_are_refused(bad: dict[str, int]) -> None:
    from tests.app.payloads import make_settings

    with pytest.raises(ValueError, match="cache_ttl_min_ms"):
        make_settings(**bad)
