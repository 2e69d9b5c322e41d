"""The engine's metrics: recorded once per batch (and per shed request), never per window.

- ``cpe_prediction_seconds{model}``: per window computed by a model, from entering the engine's queue to
  its forecast (queue wait + forward pass). Cache hits never reach the engine.
- ``cpe_queue_wait_seconds{model}``: per window, from entering the queue to being taken into a batch.
- ``cpe_forward_seconds{model}``: per batch, the wall time of its forward passes in the inference thread.
- ``cpe_batch_size{model}``: windows per forward pass.
- ``cpe_predictions_total{model}``, ``cpe_prediction_errors_total{model}``, ``cpe_shed_windows_total``.

What is read from the engine at scrape time (queue depth, model versions) is ``EngineCollector`` in
``app/engine.py``, next to the state it reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from app.metrics import NUMPY_FROM, BatchHistogram

# Engine latencies on this project's models run from about a millisecond (CPU, small batch) to a few
# hundred under overload; 0.05 is a boundary because the p99 alert's target is 50 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
# Recent prediction latencies kept for GET /v1/stats's percentiles: 8,192 doubles, 64 KiB.
RING_SIZE = 8192


class LatencyRing:
    """The last ``size`` prediction latencies, overwritten oldest first: GET /v1/stats's percentiles."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self._values = np.zeros(size, dtype=np.float64)
        self._next = 0  # where the next value goes
        self._filled = 0

    def extend(self, values: Sequence[float] | np.ndarray) -> None:
        size = len(self._values)
        if len(values) < NUMPY_FROM:
            for value in values:
                self._values[self._next] = value
                self._next = (self._next + 1) % size
        else:
            array = np.asarray(values, dtype=np.float64)[-size:]
            end = self._next + len(array)
            head = min(end, size) - self._next
            self._values[self._next : self._next + head] = array[:head]
            self._values[: len(array) - head] = array[head:]
            self._next = end % size
        self._filled = min(size, self._filled + len(values))

    def percentiles(self, qs: Sequence[float]) -> list[float] | None:
        """The ``qs`` (0..100) percentiles of the values held, or None when there are none yet."""
        if not self._filled:
            return None
        return [float(v) for v in np.percentile(self._values[: self._filled], qs)]

    def __len__(self) -> int:
        return self._filled


class EngineMetrics:
    """The engine's recorded collectors, on ``registry``; each served model's series exist from the start."""

    def __init__(self, registry: CollectorRegistry, models: Iterable[str] = ()) -> None:
        self.prediction_seconds = BatchHistogram(
            "cpe_prediction_seconds",
            "Per window a model computed: seconds from entering the engine's queue to its forecast.",
            LATENCY_BUCKETS,
            registry,
        )
        self.queue_wait_seconds = BatchHistogram(
            "cpe_queue_wait_seconds",
            "Per window: seconds from entering the engine's queue to being taken into a batch.",
            LATENCY_BUCKETS,
            registry,
        )
        self.forward_seconds = BatchHistogram(
            "cpe_forward_seconds",
            "Per batch: wall seconds of its forward passes in the inference thread.",
            LATENCY_BUCKETS,
            registry,
        )
        self.batch_size = BatchHistogram(
            "cpe_batch_size", "Windows per forward pass.", BATCH_BUCKETS, registry
        )
        self.predictions = Counter(
            "cpe_predictions", "Windows forecast by a model.", ["model"], registry=registry
        )
        self.prediction_errors = Counter(
            "cpe_prediction_errors",
            "Windows whose forward pass failed (their requests got a 500).",
            ["model"],
            registry=registry,
        )
        self.shed = Counter(
            "cpe_shed_windows",
            "Windows refused because the engine's queue was full (their requests got a 503).",
            registry=registry,
        )
        self.latencies = LatencyRing()
        # At 0 from the start: a rate() or an alert over them then has a first point before the first
        # prediction or the first error.
        for kind in models:
            self.predictions.labels(kind)
            self.prediction_errors.labels(kind)
            for histogram in (
                self.prediction_seconds,
                self.queue_wait_seconds,
                self.forward_seconds,
                self.batch_size,
            ):
                histogram.observe(kind, ())

    def observe_batch(self, model: str, enqueued: Sequence[float], taken: float, done: float) -> None:
        """A forward pass of ``model`` over windows queued at ``enqueued`` (``time.perf_counter()``s),
        taken into the batch at ``taken`` and forecast at ``done``."""
        n = len(enqueued)
        if n < NUMPY_FROM:
            waits: Sequence[float] | np.ndarray = [taken - t for t in enqueued]
            latencies: Sequence[float] | np.ndarray = [done - t for t in enqueued]
        else:
            start = np.asarray(enqueued, dtype=np.float64)
            waits, latencies = taken - start, done - start
        self.queue_wait_seconds.observe(model, waits)
        self.prediction_seconds.observe(model, latencies)
        self.forward_seconds.observe(model, (done - taken,))
        self.batch_size.observe(model, (n,))
        self.predictions.labels(model).inc(n)
        self.latencies.extend(latencies)

    def observe_failure(self, model: str, windows: int) -> None:
        self.prediction_errors.labels(model).inc(windows)

    def observe_shed(self, windows: int) -> None:
        self.shed.inc(windows)
