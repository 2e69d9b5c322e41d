"""Free labels: each scored forecast's (window, actual next context) goes to the online learner.

Observed flows label themselves: the observation that follows a window is what the window should have
predicted, so the learner gets feedback without any client call. Labels arrive at the rate observations
do, far beyond what the learner trains on (``CPE_LEARNING_STEPS_PER_S`` x ``CPE_LEARNING_BATCH``), so at
most ``rate_per_s`` of them go on (a token bucket: the learner sees a steady sample of every flow); the
rest are skipped, counted. They go through the same feedback store as ``POST /v1/feedback`` (the
in-process buffer, or the Redis Stream every replica appends to), from a task of their own so that a
Redis round-trip never holds up a round of predictions. A label the store refuses (buffer full, Redis
down) is dropped and counted: unlike a client's feedback it was never acknowledged to anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from types import TracebackType
from typing import Self

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from app.learning.feedback import Feedback, FeedbackFull, FeedbackStore, FeedbackUnavailable

log = logging.getLogger("cpe.forecasts")


class FreeLabels:
    """Hands at most ``rate_per_s`` labels a second to ``store``; ``async with`` runs its sender task."""

    def __init__(
        self,
        store: FeedbackStore,
        seq_len: int,
        *,
        rate_per_s: float,
        queue_size: int = 1024,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self.seq_len = seq_len  # the learner keeps the contexts the model reads
        self.rate = rate_per_s
        self._tokens = min(rate_per_s, float(queue_size))
        self._last = time.monotonic()
        self._queue: deque[Feedback] = deque(maxlen=queue_size)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.labels = Counter(
            "cpe_free_labels",
            "Scored forecasts offered to the learner as feedback: sent, skipped over the rate, or refused "
            "by the feedback store (buffer full, Redis down).",
            ["result"],
            registry=registry,
        )
        self.counts = {"sent": 0, "skipped": 0, "refused": 0}

    def _count(self, result: str, n: int = 1) -> None:
        self.counts[result] += n
        self.labels.labels(result=result).inc(n)

    def admit(self, n: int) -> int:
        """How many of ``n`` labels the rate lets through now (the rest are counted as skipped)."""
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        taken = min(n, int(self._tokens))
        self._tokens -= taken
        if n > taken:
            self._count("skipped", n - taken)
        return taken

    def offer(
        self, flow_key: str, timestamps: np.ndarray, features: np.ndarray, actual_ts: int, actual: np.ndarray
    ) -> None:
        """Queue one admitted label: the window up to the forecast's moment and what came next."""
        n = self.seq_len
        sample = Feedback(
            flow_key=flow_key,
            timestamps=np.ascontiguousarray(timestamps[-n:], dtype=np.int64),
            features=np.ascontiguousarray(features[-n:], dtype=np.float64),
            actual_timestamp=int(actual_ts),
            actual=np.asarray(actual, dtype=np.float64),
        )
        if len(self._queue) == self._queue.maxlen:
            self._count("refused")  # the sender is behind the store: the oldest label goes
        self._queue.append(sample)
        self._ready.set()

    async def _send(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                sample = self._queue.popleft()
                try:
                    await self.store.append(sample)
                except (FeedbackFull, FeedbackUnavailable):
                    self._count("refused")
                    continue
                self._count("sent")

    async def __aenter__(self) -> Self:
        self._task = asyncio.get_running_loop().create_task(self._send(), name="cpe-free-labels")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
