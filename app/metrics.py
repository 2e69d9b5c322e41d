"""The Prometheus registry of one app, and what every part's collectors share.

Each app gets its own ``CollectorRegistry`` (``new_registry``) rather than prometheus_client's global
default one: several apps in one process (tests) would otherwise collide on the metric names. Each part
of the service registers its own collectors on the registry it is given (``app/engine_metrics.py``,
``app/cache/metrics.py``, ``app/bus/broadcast.py``, ``app/fanout.py``, ``app/learning/metrics.py``,
``app/api/admission_metrics.py``, ``app/api/http_metrics.py``); the process's own figures are here.
The README's list of metrics is generated from such a registry (``python -m scripts.metrics_doc``).

All of it is touched only from the event loop's thread, which also serves the scrapes: no locks.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Every counter and histogram would also export a `_created` timestamp series: twice the series per scrape
# for a figure no rule or panel reads (process_start_time_seconds dates the process). Process-wide.
disable_created_metrics()

# Below this many values a batch is recorded in plain Python: numpy's per-call overhead costs more than
# it saves on a handful of values, and at low load most batches hold one window.
NUMPY_FROM = 16


def new_registry() -> CollectorRegistry:
    """A registry of its own, with prometheus_client's process, GC and platform collectors on it."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format of every collector, as ``GET /metrics`` serves it."""
    return generate_latest(registry)


def sample_value(collector: Counter | Gauge, labels: dict[str, str] | None = None) -> float:
    """The value of one labelled child of ``collector`` (0 when it has none yet): reads that collector
    alone, not the whole registry (whose process collector reads /proc)."""
    wanted = labels or {}
    for metric in collector.collect():
        for sample in metric.samples:
            if sample.labels == wanted and not sample.name.endswith("_created"):
                return float(sample.value)
    return 0.0


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


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """One unlabelled gauge, for collectors that read their figures at scrape time."""
    return GaugeMetricFamily(name, documentation, value=value)


class GpuMemory(Collector):
    """torch's CUDA allocator for ``device``, read at scrape time; nothing when the models run on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device

    def describe(self) -> list[Metric]:
        return list(self._families(0, 0, 0))

    def collect(self) -> Iterator[Metric]:
        memory = gpu_memory(self.device)
        if memory is not None:
            yield from self._families(*memory)

    @staticmethod
    def _families(allocated: int, reserved: int, total: int) -> Iterator[Metric]:
        yield gauge("cpe_gpu_memory_allocated_bytes", "GPU memory held by tensors.", allocated)
        yield gauge("cpe_gpu_memory_reserved_bytes", "GPU memory torch reserved.", reserved)
        yield gauge("cpe_gpu_memory_total_bytes", "GPU memory of the device.", total)


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
