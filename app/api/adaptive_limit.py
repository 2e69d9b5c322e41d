"""An in-flight limit that follows the latency it measures: the default admission policy.

A fixed cap is right for one machine and one model at most: 16 requests in flight keep a 2-CPU replica's
latency short under overload, and starve a GPU that needs hundreds to form its batches. This limit finds
the number by itself, as Netflix's concurrency-limits and Envoy's adaptive concurrency filter do, by
additive increase and multiplicative decrease (AIMD) on the latency of the requests it admits:

- every ``WINDOW_S`` (and at least ``MIN_SAMPLES`` requests), the window's p90 latency is compared with the
  target: ``CPE_ADMISSION_LATENCY_MS``, or ``TOLERANCE`` times the latency the service shows unloaded,
  whichever is longer (a model whose forward pass alone takes 40 ms is not overloaded at 60 ms);
- over the target, the limit shrinks by ``BACKOFF``, or in proportion to the excess when that is larger
  (target / latency, down to half the limit a window): under overload it converges within a few windows to
  the number of requests the replica serves within the target, and the rest get the 503 at once, before
  their bodies cost the event loop anything. It shrinks down to ``pool`` whatever the latency, and below
  it, down to ``floor``, only in a window where requests were refused: a pool of ``pool`` clients (a closed
  loop of 32 connections, say) is never refused for the machine being slow, while the clients of an
  overload, more than any limit admits, are refused down to what the event loop can take with its
  refusals;
- well within the target (under ``HEADROOM`` of it), while the limit was what held requests back (a
  refusal, or all of it in use), it grows by its square root, up to ``ceiling``: a GPU whose passes take
  as long for 500 windows as for 5 keeps its latency while the limit climbs, so batches grow as large as
  the clients make them.

The latency of an admitted request starts when the middleware sees it. A request the event loop has not
read yet waits unseen: when the loop itself is the bottleneck (a GPU's passes are short, so the loop's
own work per request is what saturates, seen on one), the admitted requests' latency stays low while
every client waits in the loop's backlog, and the limit would grow on. So the event loop's lag (how late
a timer that wakes every few ms runs, ``watch_loop_lag``) is added to the window's p90: that sum is what
a client sees, and what the limit compares with its target.

When the load drops, fewer requests are in flight than the limit, so none is refused: recovery needs no
step of the limiter, and the first window without a refusal puts a limit under ``pool`` back to it. The
unloaded latency is the lowest p10 of the windows of the last ``UNLOADED_S`` that had at most ``floor``
requests in flight (the last one measured, when none did): measured under load it would be the overload's
latency, and the limit would protect nothing. Windows with a batch request in them are not used either:
a batch's latency is its hundreds of windows' forward passes, and after a batch client the target would
stay at three times that for ``UNLOADED_S``, letting an overload of single predictions right after it
wait as long. A service overloaded from its start still finds it, as Envoy's filter does with its probes:
the limit shrinks to ``floor`` (the target is ``CPE_ADMISSION_LATENCY_MS`` until then), where the windows
measure it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

from app.api.admission import InflightLimit


class AdaptiveLimit(InflightLimit):
    """AIMD on the p90 latency of admitted requests; ``max_inflight`` is the limit now."""

    WINDOW_S = 0.05  # how often the limit may change: ~20 times a second under load
    MIN_SAMPLES = 8  # fewer answers in a window say too little about its latency
    BACKOFF = 0.8  # the limit's least decrease over the target: from 128 to 16 in ten windows
    STEEPEST = 0.5  # its most, far over the target (the limit times target / latency, not under this)
    HEADROOM = 0.5  # the limit grows only while the p90 is under this share of the target: in between, it
    # holds (a limit that grows whenever a window meets the target lets a backlog form before it shrinks)
    TOLERANCE = 3.0  # the target, as a multiple of the unloaded latency, when that is longer (3: the limit
    # still grows, under HEADROOM of it, while a slow model's passes take up to 1.5 times their unloaded time)
    UNLOADED_S = 30.0  # how long a measure of the unloaded latency counts: a slower model is followed
    POOL_SHARE = 8  # the default floor, as a share of ``pool``: 32 -> 4

    def __init__(
        self,
        target_ms: float,
        ceiling: int,
        *,
        pool: int = 32,
        floor: int | None = None,
        initial: int = 64,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``target_ms``: the p90 latency wanted of admitted requests; ``floor`` and ``ceiling``: the limit's
        range, below ``pool`` only while requests are refused (a batch request counts as one: keep ``pool``
        at the batch clients' concurrency or more); ``floor`` defaults to ``pool // POOL_SHARE``."""
        floor = max(1, pool // self.POOL_SHARE) if floor is None else floor
        assert 1 <= floor <= pool <= ceiling, (
            f"the limit's range must be 1 <= floor <= pool <= ceiling, got {floor}, {pool}, {ceiling}"
        )
        super().__init__(min(max(initial, pool), ceiling))
        self.target_s = target_ms / 1e3
        self.floor, self.pool, self.ceiling = floor, pool, ceiling
        self.limit = float(self.max_inflight)  # max_inflight is its whole part
        self.unloaded_s = math.inf  # unknown until a window with at most ``floor`` requests in flight
        self._unloaded: deque[tuple[float, float]] = deque()  # (when, p10) of such windows
        self._clock = clock
        self._window_start = clock()
        self._latencies: list[float] = []
        self._peak = 0  # most requests in flight during the window
        self._refused = False  # a request was refused during the window
        self._batch = False  # a batch request was answered during the window
        self._lag = 0.0  # the event loop's longest lag during the window (note_lag)
        self.loop_lag_s = 0.0  # the last window's, for the metrics

    def try_acquire(self) -> bool:
        if self.inflight >= self.max_inflight:
            self.shed += 1
            self._refused = True
            return False
        self.inflight += 1
        if self.inflight > self._peak:
            self._peak = self.inflight
        return True

    def release(self, latency_s: float = 0.0, *, batch: bool = False) -> None:
        self.inflight -= 1
        self._latencies.append(latency_s)
        if batch:
            self._batch = True
        now = self._clock()
        if now - self._window_start >= self.WINDOW_S and len(self._latencies) >= self.MIN_SAMPLES:
            self._adapt(now)
            self._window_start = now

    def note_lag(self, lag_s: float) -> None:
        """How late the event loop ran a timer: the wait of requests not yet read (``watch_loop_lag``)."""
        if lag_s > self._lag:
            self._lag = lag_s

    @property
    def target_now_s(self) -> float:
        """The p90 latency that the limit aims at now."""
        if self.unloaded_s == math.inf:  # not measured yet
            return self.target_s
        return max(self.target_s, self.TOLERANCE * self.unloaded_s)

    def _adapt(self, now: float) -> None:
        latencies = sorted(self._latencies)
        n = len(latencies)
        p90, p10 = latencies[(9 * (n - 1)) // 10], latencies[(n - 1) // 10]
        unloaded = self._unloaded
        if self._peak <= self.floor and not self._batch:
            unloaded.append((now, p10))
        while len(unloaded) > 1 and unloaded[0][0] < now - self.UNLOADED_S:
            unloaded.popleft()
        if unloaded:
            self.unloaded_s = min(p for _, p in unloaded)
        target = self.target_now_s
        seen = p90 + self._lag  # what a client waits: for the loop to read its request, then for the answer
        if seen > target:
            # far over the target, a backlog grows in the loop with every window spent shrinking by a fifth
            self.limit *= max(self.STEEPEST, min(self.BACKOFF, target / seen))
        elif seen < self.HEADROOM * target and (self._refused or self._peak >= self.max_inflight):
            self.limit += math.sqrt(self.limit)
        # under ``pool`` only while more clients come than the limit admits; back to it once none is refused
        least = self.floor if self._refused else self.pool
        self.limit = min(float(self.ceiling), max(float(least), self.limit))
        self.max_inflight = int(self.limit)
        self._latencies.clear()
        self._peak = self.inflight
        self._refused = False
        self._batch = False
        self.loop_lag_s, self._lag = self._lag, 0.0


async def watch_loop_lag(limit: AdaptiveLimit, every_s: float = 0.005) -> None:
    """Tell ``limit`` how late this event loop runs a timer due every ``every_s``, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + every_s
        await asyncio.sleep(every_s)
        limit.note_lag(max(0.0, loop.time() - due))
