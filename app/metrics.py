"""Prometheus collectors of the service, on a registry of their own per app, served on ``GET /metrics``.

Each app gets its own ``Metrics`` (hence its own ``CollectorRegistry``) rather than registering on
prometheus_client's global default registry: several apps in one process (tests) would otherwise collide
on the metric names.

Nothing here runs per prediction request except the HTTP instrumentation (``instrument``), whose options
are chosen for cost (see there). The engine's figures are recorded once per *batch* (``observe_batch``,
``observe_shed``), and what can be read at scrape time is (queue depth, model versions, memory). All of it
is touched only from the event loop's thread, which also serves the scrapes: no locks.

Exported:

- ``http_request_duration_seconds{handler, method, status}`` (histogram; its ``_count`` is the request
  rate): every HTTP route except ``/metrics`` and the probes, status grouped as ``2xx``, ``4xx``, ...
- ``cpe_prediction_seconds{model}``: per window computed by a model, from entering the engine's queue to
  its forecast (queue wait + forward pass). Cache hits never reach the engine.
- ``cpe_queue_wait_seconds{model}``: per window, from entering the queue to being taken into a batch.
- ``cpe_forward_seconds{model}``: per batch, the wall time of its forward passes in the inference thread.
- ``cpe_batch_size{model}``: windows per forward pass.
- ``cpe_predictions_total{model}``, ``cpe_prediction_errors_total{model}``: windows forecast, and windows
  whose forward pass failed.
- ``cpe_shed_windows_total``: windows refused because the queue was full (their requests got a 503).
- ``cpe_shed_requests_total``, ``cpe_requests_in_flight``: requests refused by the in-flight cap
  (``CPE_MAX_INFLIGHT``) before their body was read, and those in progress now.
- ``cpe_queue_depth``, ``cpe_queue_capacity``: windows waiting now, and the most that may wait.
- ``cpe_engine_running``: 1 while the engine serves. ``cpe_model_swaps_total``: models hot-swapped.
- ``cpe_model_info{model, version, device, default}``: 1 per served model.
- ``cpe_cache_requests_total{tier, result}``: cache lookups per tier (``memory``, ``redis``) and
  result (``hit``, ``miss``). A key looked up in Redis missed the memory tier first.
- ``cpe_cache_errors_total{tier}``: failed round-trips to a tier (only ``redis`` can fail).
- ``cpe_cache_entries{tier="memory"}``: entries held by the in-process tier, read at scrape time.
- ``cpe_redis_up``: 1 while the Redis tier answers, 0 while it does not (its breaker is open) or when
  no Redis tier is configured.
- ``cpe_ws_subscribers``: routing WebSocket clients of this process with a subscription.
- ``cpe_ws_messages_sent_total``: routing messages written to those clients.
- ``cpe_ws_messages_dropped_total``: routing messages a slow client lost (its oldest, to make room).
- ``cpe_bus_errors_total``: bus operations that could not reach the bus's transport (Redis).
- ``cpe_learning_feedback_total{result}``: feedback ``accepted`` (202) or ``refused`` (429: the in-process
  buffer is full; 503: the Redis stream is unreachable).
- ``cpe_learning_steps_total``, ``cpe_learning_step_seconds``: training steps applied, and their time.
- ``cpe_learning_last_step_timestamp_seconds``: when the last step was applied (alerts on a stalled
  learner).
- ``cpe_learning_skipped_steps_total``: steps not applied because their loss or gradient was not finite.
- ``cpe_learning_train_loss``, ``cpe_learning_validation_loss{model}``: the last step's minibatch loss;
  the trained copy's (``candidate``) and the serving version's (``serving``) loss on the held-back feedback.
- ``cpe_learning_rate``: the learning rate the tuner set; ``cpe_learning_steps_per_second``: its step rate.
- ``cpe_learning_buffer_size{part}``: samples in the replay buffer (``replay``), held back
  (``validation``), and feedback waiting for the learner (``pending``, in-process buffer only).
- ``cpe_learning_rollouts_total``: new versions that went live (counted by the learner that made them).
- ``cpe_learning_rollbacks_total{reason}``: trained copies thrown away (``nonfinite`` weights, ``worse``
  than the serving version) and rollbacks by an operator (``manual``).
- ``cpe_learning_held_back_total{baseline}``: trained copies better than the serving version that did not
  go live because their next-step latency error was not below a baseline's (``persistence``, ``ewma``);
  they train on. Not a rollback: nothing is thrown away.
- ``cpe_learning_reloads_total{result}``: versions this replica loaded from the bus (``ok``) or could not
  load (``error``: it kept serving the version it had).
- ``cpe_learning_lease_held``: 1 while this replica holds the learner's lease, else 0.
- ``cpe_gpu_memory_allocated_bytes``, ``cpe_gpu_memory_reserved_bytes``, ``cpe_gpu_memory_total_bytes``:
  torch's CUDA allocator, only when the models run on CUDA.
- ``process_*`` (resident memory, CPU seconds, open file descriptors, start time), ``python_gc_*`` and
  ``python_info``: prometheus_client's standard collectors, on this registry.

"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app.api.admission import InflightLimit
    from app.engine import Engine

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Every counter and histogram would also export a `_created` timestamp series: twice the series per scrape
# for a figure no rule or panel reads (process_start_time_seconds dates the process). Process-wide.
disable_created_metrics()

# Engine latencies on this project's models run from ~1 ms (CPU, small batch) to a few hundred ms under
# overload; 0.05 is a boundary because the p99 alert's target is 50 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
# Few buckets: each one is a series per handler, method and status class, and an observe walks them.
HTTP_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5)
# Handlers the HTTP instrumentation skips: scrapes and probes would drown the traffic they measure.
UNINSTRUMENTED = ("/metrics", "/healthz", "/readyz")
# Recent prediction latencies kept for GET /v1/stats's percentiles: 8,192 doubles, 64 KiB.
RING_SIZE = 8192
# Below this many windows a batch is recorded in plain Python: numpy's per-call overhead (~1 µs a call)
# costs more than it saves on a handful of values, and at low load most batches hold one window.
NUMPY_FROM = 16


class BatchHistogram(Collector):
    """A histogram fed a batch of values at a time, with one label (``model``); exposed at scrape time.

    prometheus_client's ``Histogram.observe`` takes a lock and walks the buckets per value; here a whole
    batch goes in with one ``searchsorted`` + ``bincount`` (or a short Python loop for a small one).
    Only the event loop's thread calls ``observe`` and ``collect``, so there is no lock.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry):
        self.name = name
        self.documentation = documentation
        self.bounds = [float(b) for b in buckets]
        self._np_bounds = np.asarray(self.bounds)
        self._series: dict[str, _Buckets] = {}
        registry.register(self)

    def observe(self, model: str, values: Sequence[float] | np.ndarray) -> None:
        series = self._series.get(model)
        if series is None:
            series = self._series[model] = _Buckets(len(self.bounds) + 1)
        if len(values) < NUMPY_FROM:
            counts = series.counts
            for value in values:
                counts[bisect_left(self.bounds, value)] += 1
                series.total += value
        else:
            array = np.asarray(values, dtype=np.float64)
            index = np.searchsorted(self._np_bounds, array, side="left")  # le is inclusive
            for i, n in enumerate(np.bincount(index, minlength=len(series.counts)).tolist()):
                series.counts[i] += n
            series.total += float(array.sum())

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=["model"])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["model"])
        for model, series in self._series.items():
            cumulative, buckets = 0, []
            for bound, n in zip([*self.bounds, float("inf")], series.counts, strict=True):
                cumulative += n
                buckets.append((_le(bound), cumulative))
            family.add_metric([model], buckets, series.total)
        yield family

    def count(self, model: str) -> int:
        series = self._series.get(model)
        return 0 if series is None else sum(series.counts)


class _Buckets:
    __slots__ = ("counts", "total")

    def __init__(self, n: int) -> None:
        self.counts = [0] * n  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


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


class Metrics:
    """One app's collectors and their registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.started = time.time()
        self.cache_requests = Counter(
            "cpe_cache_requests",
            "Prediction cache lookups, per tier and result.",
            ["tier", "result"],
            registry=self.registry,
        )
        self.cache_errors = Counter(
            "cpe_cache_errors",
            "Failed round-trips to a cache tier (the request is answered without that tier).",
            ["tier"],
            registry=self.registry,
        )
        self.cache_entries = Gauge(
            "cpe_cache_entries",
            "Entries held by a cache tier.",
            ["tier"],
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "cpe_redis_up",
            "1 while the Redis cache tier answers; 0 while it does not or when none is configured.",
            registry=self.registry,
        )

        self.ws_subscribers = Gauge(
            "cpe_ws_subscribers",
            "Routing WebSocket clients of this process with a subscription.",
            registry=self.registry,
        )
        self.ws_messages_sent = Counter(
            "cpe_ws_messages_sent",
            "Routing messages written to WebSocket clients.",
            registry=self.registry,
        )
        self.ws_messages_dropped = Counter(
            "cpe_ws_messages_dropped",
            "Routing messages a slow WebSocket client lost: its oldest, dropped to make room.",
            registry=self.registry,
        )
        self.bus_errors = Counter(
            "cpe_bus_errors",
            "Bus operations that could not reach its transport (Redis); the bus retries by itself.",
            registry=self.registry,
        )

        # -- the engine, recorded per batch ---------------------------------------------------------
        self.prediction_seconds = BatchHistogram(
            "cpe_prediction_seconds",
            "Per window a model computed: seconds from entering the engine's queue to its forecast.",
            LATENCY_BUCKETS,
            self.registry,
        )
        self.queue_wait_seconds = BatchHistogram(
            "cpe_queue_wait_seconds",
            "Per window: seconds from entering the engine's queue to being taken into a batch.",
            LATENCY_BUCKETS,
            self.registry,
        )
        self.forward_seconds = BatchHistogram(
            "cpe_forward_seconds",
            "Per batch: wall seconds of its forward passes in the inference thread.",
            LATENCY_BUCKETS,
            self.registry,
        )
        self.batch_size = BatchHistogram(
            "cpe_batch_size", "Windows per forward pass.", BATCH_BUCKETS, self.registry
        )
        self.predictions = Counter(
            "cpe_predictions", "Windows forecast by a model.", ["model"], registry=self.registry
        )
        self.prediction_errors = Counter(
            "cpe_prediction_errors",
            "Windows whose forward pass failed (their requests got a 500).",
            ["model"],
            registry=self.registry,
        )
        self.shed = Counter(
            "cpe_shed_windows",
            "Windows refused because the engine's queue was full (their requests got a 503).",
            registry=self.registry,
        )
        self.latencies = LatencyRing()

        self._learning_collectors()

        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    # -- wiring ---------------------------------------------------------------------------------
    def instrument(self, app: FastAPI) -> None:
        """Add the HTTP metrics to ``app`` (app/api/http_metrics.py).

        One histogram and nothing else: its ``_count`` is the request counter, so a separate
        ``http_requests_total`` would only double the per-request work; size metrics would parse headers.
        """
        from app.api.http_metrics import HttpMetrics

        app.add_middleware(HttpMetrics, registry=self.registry, buckets=HTTP_BUCKETS, excluded=UNINSTRUMENTED)

    def watch(self, engine: Engine, device: str, default_model: str) -> None:
        """Read ``engine``'s queue and models, and the GPU's memory on CUDA, at every scrape."""
        self.registry.register(_EngineCollector(engine, device, default_model))
        # Every served model's series exist from the start, at 0: a rate() or an alert over them then
        # has a first point before the first prediction or the first error.
        for kind in engine.predictors:
            self.predictions.labels(kind)
            self.prediction_errors.labels(kind)
            for histogram in (
                self.prediction_seconds,
                self.queue_wait_seconds,
                self.forward_seconds,
                self.batch_size,
            ):
                histogram.observe(kind, ())

    def watch_admission(self, limit: InflightLimit) -> None:
        """Read the in-flight cap's requests in progress and refusals at every scrape."""
        self.registry.register(_AdmissionCollector(limit))

    # -- recording, once per batch ------------------------------------------------------------------
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

    # -- reading -------------------------------------------------------------------------------------
    @staticmethod
    def value(collector: Counter | Gauge, labels: dict[str, str] | None = None) -> float:
        """The value of one labelled child of ``collector`` (0 when it has none yet): reads that collector
        alone, not the whole registry (whose process collector reads /proc)."""
        wanted = labels or {}
        for metric in collector.collect():
            for sample in metric.samples:
                if sample.labels == wanted and not sample.name.endswith("_created"):
                    return float(sample.value)
        return 0.0

    def _learning_collectors(self) -> None:
        registry = self.registry
        self.feedback = Counter(
            "cpe_learning_feedback", "Feedback accepted or refused.", ["result"], registry=registry
        )
        self.learning_steps = Counter("cpe_learning_steps", "Training steps applied.", registry=registry)
        self.learning_step_seconds = Histogram(
            "cpe_learning_step_seconds",
            "Time of one training step (a minibatch forward, backward and update).",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.learning_last_step = Gauge(
            "cpe_learning_last_step_timestamp_seconds",
            "Unix time of the last training step applied (a stalled learner stops moving it).",
            registry=registry,
        )
        self.learning_skipped_steps = Counter(
            "cpe_learning_skipped_steps",
            "Training steps not applied because their loss or gradient was not finite.",
            registry=registry,
        )
        self.learning_train_loss = Gauge(
            "cpe_learning_train_loss", "Loss of the last training minibatch.", registry=registry
        )
        self.learning_validation_loss = Gauge(
            "cpe_learning_validation_loss",
            "Loss on the held-back feedback of the trained copy (candidate) and of the serving version.",
            ["model"],
            registry=registry,
        )
        self.learning_rate = Gauge("cpe_learning_rate", "The learner's learning rate.", registry=registry)
        self.learning_step_rate = Gauge(
            "cpe_learning_steps_per_second", "The learner's allowed step rate.", registry=registry
        )
        self.learning_buffer = Gauge(
            "cpe_learning_buffer_size",
            "Feedback samples in the replay buffer, held back for validation, or waiting for the learner.",
            ["part"],
            registry=registry,
        )
        self.learning_rollouts = Counter(
            "cpe_learning_rollouts", "New model versions that went live.", registry=registry
        )
        self.learning_rollbacks = Counter(
            "cpe_learning_rollbacks",
            "Trained copies thrown away (nonfinite, worse) and rollbacks by an operator (manual).",
            ["reason"],
            registry=registry,
        )
        self.learning_held_back = Counter(
            "cpe_learning_held_back",
            "Trained copies better than the serving version held back by a baseline they did not beat.",
            ["baseline"],
            registry=registry,
        )
        for baseline in ("persistence", "ewma"):  # at 0 from the start, for increase() over the first one
            self.learning_held_back.labels(baseline)
        self.learning_reloads = Counter(
            "cpe_learning_reloads",
            "Model versions loaded from the bus (ok) or that failed to load (error).",
            ["result"],
            registry=registry,
        )
        self.learning_lease_held = Gauge(
            "cpe_learning_lease_held", "1 while this replica holds the learner's lease.", registry=registry
        )

    def render(self) -> bytes:
        """The text exposition format of every collector, as ``GET /metrics`` serves it."""
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """What is read from the engine (and the GPU) at scrape time rather than recorded as it happens."""

    def __init__(self, engine: Engine, device: str, default_model: str) -> None:
        self.engine = engine
        self.device = device
        self.default_model = default_model

    def describe(self) -> list[Metric]:
        return []  # values come and go with the engine's state: nothing to check ahead

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        yield _gauge("cpe_queue_depth", "Windows waiting for the engine now.", engine.queued)
        yield _gauge("cpe_queue_capacity", "Most windows that may wait (then 503).", engine.queue_size)
        yield _gauge("cpe_engine_running", "1 while the engine serves.", int(engine.running))
        yield CounterMetricFamily(
            "cpe_model_swaps", "Models replaced while serving (rollouts, rollbacks).", engine.stats.swaps
        )
        info = GaugeMetricFamily(
            "cpe_model_info",
            "1 per served model: its kind, version, device, and whether it answers requests naming none.",
            labels=["model", "version", "device", "default"],
        )
        for kind, predictor in engine.predictors.items():
            info.add_metric(
                [kind, predictor.version, self.device, str(kind == self.default_model).lower()], 1
            )
        yield info
        memory = gpu_memory(self.device)
        if memory is not None:
            allocated, reserved, total = memory
            yield _gauge("cpe_gpu_memory_allocated_bytes", "GPU memory held by tensors.", allocated)
            yield _gauge("cpe_gpu_memory_reserved_bytes", "GPU memory torch reserved.", reserved)
            yield _gauge("cpe_gpu_memory_total_bytes", "GPU memory of the device.", total)


class _AdmissionCollector(Collector):
    """The in-flight cap's figures (app/api/admission.py), read at scrape time: it counts for itself."""

    def __init__(self, limit: InflightLimit) -> None:
        self.limit = limit

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield _gauge(
            "cpe_requests_in_flight", "Prediction and routing requests in progress.", self.limit.inflight
        )
        yield CounterMetricFamily(
            "cpe_shed_requests",
            "Prediction and routing requests refused with a 503 before their body was read "
            "(CPE_MAX_INFLIGHT were in progress).",
            self.limit.shed,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _cuda_memory() -> tuple[int, int, int]:
    import torch

    device = torch.cuda.current_device()
    return (
        torch.cuda.memory_allocated(device),
        torch.cuda.memory_reserved(device),
        torch.cuda.get_device_properties(device).total_memory,
    )


def resident_memory_bytes() -> int | None:
    """This process's resident set size, from /proc (None where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def gpu_memory(device: str) -> tuple[int, int, int] | None:
    """(allocated, reserved, total) bytes of ``device`` when it is a CUDA device, else None."""
    return _cuda_memory() if device.startswith("cuda") else None
