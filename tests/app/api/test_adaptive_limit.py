"""AdaptiveLimit: the in-flight limit follows the latency of admitted requests (AIMD), on a fake clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from app.api.adaptive_limit import AdaptiveLimit, watch_loop_lag
from app.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def overload(
    limit: AdaptiveLimit, clock: Clock, pass_s: Callable[[int], float], seconds: float
) -> list[float]:
    """Far more clients than the limit admits, served in passes of whatever is in flight (as the engine's
    batches form): each pass takes ``pass_s(n)`` for ``n`` requests. Answers the passes' batch sizes."""
    sizes = []
    end = clock.now + seconds
    while clock.now < end:
        while limit.try_acquire():
            pass
        n = limit.inflight
        clock.now += pass_s(n)
        for _ in range(n):
            limit.release(pass_s(n))
        sizes.append(n)
    return sizes


def cpu(n: int) -> float:
    return 0.5e-3 + 0.3e-3 * n  # the event loop's work per request dominates


def fast_gpu(n: int) -> float:
    return 3e-3 + 2e-6 * n  # a pass costs nearly the same for 5 windows as for 500


def slow_gpu(n: int) -> float:
    return 40e-3 + 5e-6 * n  # a big model: slow, but not overloaded


def test_under_overload_on_a_cpu_the_limit_shrinks_until_latency_meets_the_target() -> None:
    clock = Clock()
    limit = AdaptiveLimit(25.0, 1024, initial=512, clock=clock)
    sizes = overload(limit, clock, cpu, 10.0)
    assert limit.shed > 0
    settled = sizes[-50:]
    assert max(cpu(n) for n in settled) <= 0.025 * 1.3  # at most a window's overshoot
    assert min(settled) >= 25 and max(settled) <= 90  # not starved either: the target is ~80 requests


@pytest.mark.parametrize("target_ms", [25.0, Settings.model_fields["admission_latency_ms"].default])
@pytest.mark.parametrize("pass_s", [fast_gpu, slow_gpu])
def test_a_gpu_whose_passes_cost_the_same_at_any_batch_lets_the_limit_grow(
    pass_s: Callable[[int], float], target_ms: float
) -> None:
    clock = Clock()
    limit = AdaptiveLimit(target_ms, 1024, clock=clock)
    sizes = overload(limit, clock, pass_s, 20.0)
    assert limit.max_inflight == 1024 and max(sizes) == 1024  # batches as large as the ceiling
    assert limit.target_now_s == pytest.approx(max(target_ms / 1e3, 3 * pass_s(1)), rel=0.2)


def test_when_the_load_drops_nothing_is_refused_at_once() -> None:
    clock = Clock()
    limit = AdaptiveLimit(25.0, 1024, floor=4, initial=512, clock=clock)
    overload(limit, clock, cpu, 5.0)
    shed = limit.shed
    for _ in range(1000):  # light load: two requests at a time, quickly answered
        assert limit.try_acquire() and limit.try_acquire()
        clock.now += 1e-3
        limit.release(1e-3)
        limit.release(1e-3)
    assert limit.shed == shed and limit.inflight == 0


def test_the_limit_stays_within_its_range_and_counts_refusals() -> None:
    clock = Clock()
    limit = AdaptiveLimit(1.0, 8, pool=5, floor=3, initial=100, clock=clock)
    assert limit.max_inflight == 8  # the initial limit is clamped to the range
    limits = []
    for _ in range(200):  # every request far over the target, the longer the more are in flight
        overload(limit, clock, lambda n: 0.1 * n, 0.01)
        limits.append(limit.max_inflight)
    # below the pool, as requests are refused; around 6: a 0.3 s pass at the floor, its target 0.6 s
    assert min(limits) == 3 and max(limits) <= 8
    n, shed = limit.max_inflight, limit.shed
    assert [limit.try_acquire() for _ in range(n + 1)] == [True] * n + [False]
    assert limit.shed == shed + 1
    with pytest.raises(AssertionError, match="floor <= pool <= ceiling"):
        AdaptiveLimit(25.0, 2, pool=4)
    with pytest.raises(AssertionError, match="floor <= pool <= ceiling"):
        AdaptiveLimit(25.0, 64, pool=4, floor=8)
    assert AdaptiveLimit(25.0, 64).floor == 4  # a share of the pool by default
    assert AdaptiveLimit(25.0, 64, pool=1).floor == 1


def closed_pool(
    limit: AdaptiveLimit, clock: Clock, clients: int, latency_s: float, seconds: float, retry_after_s: float
) -> int:
    """``clients`` that each send a request as soon as their last one is answered, or ``retry_after_s``
    after a 503 (its Retry-After), every answer ``latency_s`` after its request: the 503s they get."""
    refused, back = 0, [0.0] * clients  # when each client sends again
    for _ in range(int(seconds / latency_s)):
        ready = [i for i in range(clients) if back[i] <= clock.now]
        admitted = []
        for i in ready:
            if limit.try_acquire():
                admitted.append(i)
            else:
                refused += 1
                back[i] = clock.now + retry_after_s
        clock.now += latency_s
        for _ in admitted:
            limit.release(latency_s)
    return refused


def test_a_pool_of_clients_as_large_as_the_pool_is_never_refused_however_slow_the_answers() -> None:
    """A busy machine: 32 clients' answers take four times the target. A limit under 32 would not make them
    faster, only refuse some (each retried at once: a storm), so it stays at the pool."""
    clock = Clock()
    limit = AdaptiveLimit(25.0, 1024, initial=512, clock=clock)
    assert closed_pool(limit, clock, 32, 0.1, 30.0, 0.0) == 0
    assert limit.max_inflight == limit.pool == 32


def test_under_overload_the_limit_goes_below_the_pool_and_back_to_it_once_none_is_refused() -> None:
    clock = Clock()
    limit = AdaptiveLimit(25.0, 1024, clock=clock)
    quick_answers_behind_a_loop(limit, clock, 0.040, 2.0)  # more clients than any limit, a lagging loop
    assert limit.max_inflight == limit.floor == 4
    # the load drops to a pool of 32 clients, slow ones: those the limit refuses come back after their
    # Retry-After, by when the first window without a refusal has put the limit back to the pool
    refused = closed_pool(limit, clock, 32, 0.1, 1.0, 1.0)
    assert limit.max_inflight == 32 and refused == 28
    assert closed_pool(limit, clock, 32, 0.1, 10.0, 1.0) == 0


def test_a_window_needs_enough_answers_before_the_limit_moves() -> None:
    clock = Clock()
    limit = AdaptiveLimit(1.0, 100, pool=8, floor=4, initial=50, clock=clock)
    assert all(limit.try_acquire() for _ in range(AdaptiveLimit.MIN_SAMPLES))  # more than the floor
    for _ in range(AdaptiveLimit.MIN_SAMPLES - 1):
        clock.now += 1.0
        limit.release(1.0)  # slow, but too few to judge by
    assert limit.max_inflight == 50
    limit.release(1.0)
    assert limit.max_inflight == 25  # a thousand times its target: halved


@pytest.mark.parametrize(("latency_s", "after"), [(0.026, 80), (0.040, 62), (0.100, 50)])
def test_the_further_over_the_target_the_steeper_the_decrease(latency_s: float, after: int) -> None:
    """By a fifth at least, by target / latency beyond that, by half at most."""
    clock = Clock()
    limit = AdaptiveLimit(25.0, 1024, initial=100, clock=clock)
    assert all(limit.try_acquire() for _ in range(40))
    clock.now += 0.05
    for _ in range(40):
        limit.release(latency_s)
    assert limit.max_inflight == after


def quick_answers_behind_a_loop(limit: AdaptiveLimit, clock: Clock, lag_s: float, seconds: float) -> None:
    """Overload whose admitted requests answer in 2 ms while the event loop lags ``lag_s`` behind."""
    for _ in range(int(seconds / 0.002)):
        while limit.try_acquire():
            pass
        limit.note_lag(lag_s)
        clock.now += 0.002
        for _ in range(limit.inflight):
            limit.release(0.002)


def test_a_lagging_event_loop_shrinks_the_limit_though_admitted_requests_are_quick() -> None:
    """The loop itself is the bottleneck (a GPU's passes are short): admitted requests answer in 2 ms while
    the requests not yet read wait 40 ms for the loop. The limit must see that wait, not grow on it."""
    clock = Clock()
    limit = AdaptiveLimit(25.0, 1024, initial=256, clock=clock)
    quick_answers_behind_a_loop(limit, clock, 0.040, 2.0)
    assert limit.max_inflight == limit.floor
    assert limit.loop_lag_s == pytest.approx(0.040)


def test_a_quiet_loop_lets_the_limit_grow_as_before() -> None:
    clock = Clock()
    limit = AdaptiveLimit(25.0, 1024, initial=64, clock=clock)
    quick_answers_behind_a_loop(limit, clock, 0.0005, 6.0)
    assert limit.max_inflight == 1024


async def test_watch_loop_lag_measures_a_blocked_loop() -> None:
    limit = AdaptiveLimit(25.0, 64)
    task = asyncio.create_task(watch_loop_lag(limit, every_s=0.001))
    await asyncio.sleep(0.01)
    time.sleep(0.05)  # the loop is held: the timer runs late
    await asyncio.sleep(0.01)
    task.cancel()
    assert limit._lag >= 0.04


def batch_clients(limit: AdaptiveLimit, clock: Clock, batch: bool) -> None:
    """Four clients (the floor) for 10 s, each answer 120 ms: batch requests, or as many single ones."""
    for _ in range(200):
        for _ in range(4):
            assert limit.try_acquire()
        clock.now += 0.05
        for _ in range(4):
            limit.release(0.12, batch=batch)


def test_a_batch_clients_slow_answers_do_not_raise_the_target_of_single_predictions() -> None:
    """No window with a batch request in it measures the unloaded latency (a batch's is its hundreds of
    windows' passes): single predictions that overload the service right after are held to the target."""
    clock = Clock()
    limit = AdaptiveLimit(15.0, 1024, clock=clock)
    batch_clients(limit, clock, batch=True)
    assert limit.target_now_s == pytest.approx(0.015)
    sizes = overload(limit, clock, cpu, 5.0)
    assert max(cpu(n) for n in sizes[-100:]) <= 0.015 * 1.2
    # the same answers taken for single predictions: the target becomes 3 x 120 ms, and so do the waits
    other = AdaptiveLimit(15.0, 1024, clock=clock)
    batch_clients(other, clock, batch=False)
    assert other.target_now_s == pytest.approx(0.36)
    sizes = overload(other, clock, cpu, 5.0)
    assert max(cpu(n) for n in sizes[-100:]) > 0.015 * 2
