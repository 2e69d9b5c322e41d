"""Micro-batching inference: queue -> batch -> one forward pass per model on the device -> futures.

Requests put their windows in one bounded queue and await a future. The batcher, callbacks on the
event loop, takes whatever is queued (up to ``max_batch`` windows), hands the batch to a single
inference thread, and resolves the futures when it comes back. While a forward pass runs, new windows
queue up and form the next batch, so under load batches grow by themselves; ``max_wait_us`` can add a
delay to grow them further. The event loop never runs torch, and only the one inference thread calls
``Predictor.predict``.

Callbacks rather than a batcher task: a request's window then waits for three turns of the event loop
(the dispatch of its batch, the thread's answer that resolves its future, its handler's resumption)
instead of five (the task's wake-up and its resumption after the pass were two more). Under overload a
turn of the loop lasts as long as the work that arrived during the last one, so every turn saved shows
in the admitted requests' latency (``make bench``'s overload run measures it).

One queue for all models rather than one per model: the bound on waiting work is then one number for
the whole replica, FIFO order holds across models, and a batch that mixes models simply runs one
forward pass per model present (in practice nearly all traffic goes to the default model).

Admission. A full queue sheds load, but a queue long enough to absorb bursts also lets an admitted
window wait for many forward passes. With a latency budget set, a window is also shed when the time it
is expected to take exceeds the budget: the rest of the forward pass in flight, then the passes that the
windows queued before it need, its own included. Pass times are measured, as a moving average per batch
size class (powers of two), because a pass's time grows far less than linearly with its batch. An idle
engine admits whatever comes, however slow the last passes were: shedding that window would shorten no
one's wait, and its pass renews the measurements (shedding only while busy means passes keep running,
so an estimate inflated by one slow pass cannot shut the engine for good).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Self

import numpy as np
import torch
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.engine_metrics import EngineMetrics
from app.metrics import gauge
from models.predictor import Forecast, Predictor

log = logging.getLogger("cpe.engine")


class Overloaded(Exception):
    """The request is shed (503) rather than left to wait too long: the queue is full, or the expected
    wait exceeds the latency budget."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(f"{reason}; retry later")
        self.retry_after_s = retry_after_s


class EngineStopped(Exception):
    """The engine is not running (not started yet, or shutting down)."""

    def __init__(self, retry_after_s: int = 1) -> None:
        super().__init__("the inference engine is not running")
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class WindowForecast:
    """One window's forecast, S steps ahead (at least the steps its client asked for, at most the model's
    horizon H): row ``index`` of its forward pass's arrays.

    A handle rather than six views cut per window: resolving a pass of 256 windows then costs one small
    object each, and the batch endpoint reads the rows of all its windows at once (``batch``, ``index``).
    """

    batch: Forecast  # the whole forward pass's forecast
    index: int  # this window's row in it
    predictor: Predictor  # the model version that made it

    @property
    def mean(self) -> np.ndarray:
        """(S, D) point forecast, raw units."""
        return self.batch.mean[self.index]

    @property
    def lower(self) -> np.ndarray:
        """(S, D) lower end of the central interval."""
        return self.batch.lower[self.index]

    @property
    def upper(self) -> np.ndarray:
        """(S, D) upper end."""
        return self.batch.upper[self.index]

    @property
    def confidence(self) -> np.ndarray:
        """(S,) calibrated P(latency within ±tolerance)."""
        return self.batch.confidence[self.index]

    @property
    def loc(self) -> np.ndarray:
        """(S, D) point forecast in the scaler's transformed space."""
        return self.batch.loc[self.index]

    @property
    def std(self) -> np.ndarray:
        """(S, D) its calibrated deviation there: loc and std are the predictive Gaussian."""
        return self.batch.std[self.index]

    @property
    def dt_s(self) -> float:
        """Spacing assumed between future steps, seconds (0 for a one-context window)."""
        return float(self.batch.dt_s[self.index])

    @property
    def embedding(self) -> np.ndarray | None:
        """(E,) float32 unit vector of the window (``models/embedding.py``); None unless the engine embeds."""
        emb = self.batch.embedding
        return None if emb is None else emb[self.index]


# A change to a forward pass's forecast, made in the inference thread before its windows are answered
Adjust = Callable[[Predictor, Forecast], None]

# One forecast's numbers at horizon h: (steps (h, D), confidence, lower (D), upper (D), step_ms), as lists.
Numbers = tuple[list[list[float]], float, list[float], list[float], float]


def read_numbers(
    forecasts: Sequence[WindowForecast], horizons: Sequence[int]
) -> Iterator[tuple[int, Numbers]]:
    """``(j, numbers of forecasts[j] at horizons[j])`` for every j, in no particular order.

    The numbers are read per forward pass and horizon, a few numpy calls for all the forecasts that share
    them (a batch's are nearly all in one or two passes), rather than a dozen calls per forecast.
    """
    groups: dict[tuple[int, int], list[int]] = {}  # (forward pass, horizon) -> positions
    for j, (forecast, h) in enumerate(zip(forecasts, horizons, strict=True)):
        groups.setdefault((id(forecast.batch), h), []).append(j)
    for (_, h), members in groups.items():
        batch = forecasts[members[0]].batch
        indices = [forecasts[j].index for j in members]
        first, k = indices[0], len(indices)
        rows: list[int] | slice = indices
        if indices == list(range(first, first + k)):  # the usual case, as a slice: views, not copies
            rows = slice(first, first + k)
        numbers = zip(
            batch.mean[rows, :h].tolist(),
            batch.confidence[rows, h - 1].tolist(),
            batch.lower[rows, h - 1].tolist(),
            batch.upper[rows, h - 1].tolist(),
            (batch.dt_s[rows] * 1000.0).tolist(),
            strict=True,
        )
        for j, row in zip(members, numbers, strict=True):
            yield j, row


@dataclass(slots=True)
class _Job:
    kind: str
    timestamps: np.ndarray  # (n,) int64 ms; a block: (B, L), right-aligned
    features: np.ndarray  # (n, D) float64; a block: (B, L, D)
    future: asyncio.Future[WindowForecast] | asyncio.Future[list[WindowForecast]]
    enqueued: float  # time.perf_counter() when queued: where its queue wait and latency start
    steps: int | None  # the steps ahead its client reads; None: the model's whole horizon
    lengths: np.ndarray | None = None  # a block of windows: (B,) contexts in each; None: one window
    most: int = 0  # the most windows a forward pass that takes this job may hold; 0: max_batch

    @property
    def size(self) -> int:
        """Windows the job holds."""
        return 1 if self.lengths is None else len(self.lengths)


@dataclass
class EngineStats:
    """Counters since start; tests and /v1/stats read them."""

    forward_passes: int = 0  # Predictor.predict calls
    windows: int = 0  # windows answered
    rejected: int = 0  # windows refused: the queue was full, or their expected wait over the budget
    swaps: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)  # windows per forward pass -> passes

    @property
    def max_batch_size(self) -> int:
        return max(self.batch_sizes, default=0)


def pick_device(setting: str) -> str:
    """Resolve CPE_DEVICE: ``auto`` takes CUDA when torch sees a GPU."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CPE_DEVICE=cuda, but torch sees no CUDA device")
    return setting


class Engine:
    """Batches windows from concurrent requests into forward passes; use as ``async with Engine(...)``.

    Every method is meant to be called on the event loop's thread.
    """

    def __init__(
        self,
        predictors: Mapping[str, Predictor],
        *,
        max_batch: int = 256,
        max_wait_us: int = 0,
        queue_size: int = 2048,
        retry_after_s: int = 1,
        torch_threads: int = 1,
        latency_budget_ms: float = 0.0,
        registry: CollectorRegistry | None = None,
        default_model: str | None = None,
        adjust: Adjust | None = None,
        embed: bool = False,
        gil_switch_s: float = 0.0,
    ) -> None:
        """``registry``: where the engine's metrics go (a registry of their own when None);
        ``default_model``: the kind that answers requests naming none, a label of ``cpe_model_info``;
        ``adjust``: called in the inference thread on every forward pass's forecast before it is answered
        (the online interval calibration, ``app.learning.conformal``); ``embed``: every forecast carries its
        window's embedding too (pattern memory, ``app/patterns``); ``gil_switch_s``: the process's GIL
        switch interval while the engine runs (0: Python's, untouched).

        Why the last: the inference thread lets go of the GIL at every numpy call and torch op of a pass,
        and takes it back only when a thread busy in Python (the event loop) is made to hand it over, after
        the switch interval (Python's: 5 ms). Beside a busy loop a pass then waits for the GIL most of its
        time; a short interval lets it overlap the loop's work, but every thread busy in Python (the loop,
        the online learner's) then pays the more frequent switches."""
        assert predictors, "the engine needs at least one model"
        registry = registry or CollectorRegistry()
        self.metrics = EngineMetrics(registry, predictors)
        registry.register(EngineCollector(self, default_model))
        self._predictors = dict(predictors)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_us / 1e6
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self.torch_threads = torch_threads
        self.embed = embed
        self.latency_budget_s = latency_budget_ms / 1e3  # 0: admission by queue length alone
        self.pass_times = PassTimes()
        self._pass_started = 0.0  # perf_counter() when the pass in flight began; 0 when none runs
        self._pass_size = 0
        self.stats = EngineStats()
        self._queue: deque[_Job] = deque()
        self._queued = 0  # windows in the queue (a block job holds several)
        self._thread: InferenceThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatch_due: asyncio.Handle | None = None  # a dispatch is scheduled
        self._passing: list[tuple[Predictor, list[_Job]]] | None = None  # the batch in the thread
        self._idle: asyncio.Event | None = None  # set while no pass is in flight
        self._closed = False
        self._adjust = adjust
        self.gil_switch_s = gil_switch_s
        self._switch_before: float | None = None  # the interval to restore at stop

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        assert self._loop is None, "the engine was already started"
        self._loop = asyncio.get_running_loop()
        if self.gil_switch_s:
            self._switch_before = sys.getswitchinterval()
            sys.setswitchinterval(self.gil_switch_s)
        self._thread = InferenceThread(self._loop, self.torch_threads, self._adjust, self.embed)
        self._idle = asyncio.Event()
        self._idle.set()

    async def stop(self) -> None:
        """Refuse new work, fail what is still queued, finish the batch in flight, join the thread."""
        self._closed = True
        if self._dispatch_due is not None:
            self._dispatch_due.cancel()
            self._dispatch_due = None
        self._fail(self._queue)
        self._queue.clear()
        self._queued = 0
        if self._idle is not None:
            await self._idle.wait()  # the pass in flight answers its windows
        if self._thread is not None:
            await asyncio.to_thread(self._thread.stop)
        if self._switch_before is not None:
            sys.setswitchinterval(self._switch_before)
            self._switch_before = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._closed

    # -- models -----------------------------------------------------------------------------
    @property
    def predictors(self) -> Mapping[str, Predictor]:
        """The models now served, by kind (read-only; change them with ``swap``)."""
        return MappingProxyType(self._predictors)

    def swap(self, kind: str, predictor: Predictor) -> None:
        """Serve ``predictor`` for ``kind`` from the next batch on; the batch in flight keeps the old one.

        The new model must read and predict the same things (features, horizon), since requests were
        validated against those.
        """
        old = self._predictors.get(kind)
        if old is None:
            raise ValueError(f"no model of kind {kind!r} is served; served: {sorted(self._predictors)}")
        if predictor.kind != kind:
            raise ValueError(f"cannot serve a {predictor.kind!r} model as {kind!r}")
        if predictor.feature_names != old.feature_names or predictor.horizon != old.horizon:
            raise ValueError(
                f"the new {kind!r} model must keep features {old.feature_names} and horizon {old.horizon}"
            )
        self._predictors[kind] = predictor
        self.stats.swaps += 1
        log.info("serving %s as %r (was %s)", predictor.version, kind, old.version)

    # -- requests ---------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Windows waiting."""
        return self._queued

    def submit(
        self, kind: str, timestamps: np.ndarray, features: np.ndarray, steps: int | None = None
    ) -> asyncio.Future[WindowForecast]:
        """Queue one window (``(n,)`` int64 ms, ``(n, D)`` float64); raises ``Overloaded`` when full."""
        return self.submit_many([(kind, timestamps, features)], steps)[0]

    def submit_many(
        self, windows: Sequence[tuple[str, np.ndarray, np.ndarray]], steps: int | None = None
    ) -> list[asyncio.Future[WindowForecast]]:
        """Queue several windows at once, all or none, so that they share forward passes.

        ``steps``: how many steps ahead the caller reads, at most (its forecasts' arrays may hold more);
        None for the model's whole horizon. A pass decodes the most that any of its windows asks for.
        """
        self._admit(len(windows), {kind for kind, _, _ in windows})
        assert self._loop is not None
        loop = self._loop
        futures = []
        now = time.perf_counter()
        for kind, timestamps, features in windows:
            future: asyncio.Future[WindowForecast] = loop.create_future()
            self._queue.append(_Job(kind, timestamps, features, future, now, steps))
            futures.append(future)
        self._queued += len(windows)
        if self._passing is None and self._dispatch_due is None:
            self._schedule()
        return futures

    def _admit(self, n: int, kinds: set[str]) -> None:
        """Raise unless ``n`` more windows of ``kinds`` may queue: stopped, full, over the budget, unknown."""
        if self._closed or self._loop is None:
            raise EngineStopped(self.retry_after_s)
        if self._queued + n > self.queue_size:
            self.stats.rejected += n
            self.metrics.observe_shed(n)
            reason = f"inference queue full ({self._queued} of {self.queue_size} windows waiting)"
            raise Overloaded(reason, self.retry_after_s)
        if self.latency_budget_s:
            wait_s = self.expected_wait_s(n)
            if wait_s > self.latency_budget_s:
                self.stats.rejected += n
                self.metrics.observe_shed(n)
                reason = (
                    f"expected wait {wait_s * 1e3:.0f} ms exceeds the latency budget of "
                    f"{self.latency_budget_s * 1e3:.0f} ms ({self._queued} windows waiting)"
                )
                raise Overloaded(reason, self.retry_after_s)
        unknown = kinds - self._predictors.keys()
        if unknown:
            raise KeyError(f"no model of kind {sorted(unknown)} is served")

    async def predict_block(
        self,
        kind: str,
        timestamps: np.ndarray,
        features: np.ndarray,
        lengths: np.ndarray,
        steps: int | None = None,
    ) -> list[WindowForecast]:
        """Forecast B windows given as one right-aligned block (timestamps (B, L) int64 ms, features
        (B, L, D), window i in its last ``lengths[i]`` columns), in order; all queued or none.

        The block travels through the queue as a few jobs of at most ``max_batch`` windows rather than a
        job each, and the forward pass encodes it as arrays (``Predictor.predict_block``): no Python step
        per window on either side. It shares passes with the single windows queued beside it."""
        futures = self.submit_block(kind, timestamps, features, lengths, steps)
        try:
            return [forecast for future in futures for forecast in await future]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def submit_block(
        self,
        kind: str,
        timestamps: np.ndarray,
        features: np.ndarray,
        lengths: np.ndarray,
        steps: int | None = None,
        pass_size: int | None = None,
    ) -> list[asyncio.Future[list[WindowForecast]]]:
        """Queue a block as ``predict_block`` does, all or none, and return a future per part, in order:
        the forecasts of windows [0, n), [n, 2n), ... where n is ``pass_size`` (None: ``max_batch``).

        A part is the most windows that a pass taking it holds (at most ``max_batch``), so that its caller
        gets the first part's forecasts one pass of n windows after the engine takes it, not once the
        whole block has passed, and can work on them while the next part's pass runs (continuous
        prediction). The caller cancels the futures it no longer waits for."""
        b = len(lengths)
        self._admit(b, {kind})
        assert self._loop is not None
        size = self.max_batch if pass_size is None else max(1, min(pass_size, self.max_batch))
        most = 0 if size == self.max_batch else size
        now = time.perf_counter()
        futures: list[asyncio.Future[list[WindowForecast]]] = []
        for start in range(0, b, size):
            end = min(b, start + size)
            future: asyncio.Future[list[WindowForecast]] = self._loop.create_future()
            part = slice(start, end)
            job = _Job(kind, timestamps[part], features[part], future, now, steps, lengths[part], most)
            self._queue.append(job)
            futures.append(future)
        self._queued += b
        if self._passing is None and self._dispatch_due is None:
            self._schedule()
        return futures

    def expected_wait_s(self, n: int = 1) -> float:
        """Seconds until ``n`` windows queued now would be answered: the rest of the pass in flight, then
        the passes of what is queued and of them. 0 when the engine is idle, or nothing was measured."""
        passes = self.pass_times
        if not self._pass_started and not self._queue:
            return 0.0
        wait = 0.0
        if self._pass_started:
            wait = max(0.0, self._pass_started + passes.estimate(self._pass_size) - time.perf_counter())
        full, rest = divmod(self._queued + n, self.max_batch)
        if full:
            wait += full * passes.estimate(self.max_batch)
        if rest:
            wait += passes.estimate(rest)
        return wait

    async def predict(
        self, kind: str, timestamps: np.ndarray, features: np.ndarray, steps: int | None = None
    ) -> WindowForecast:
        """Forecast one window, batched with whatever else is queued."""
        return await self.submit(kind, timestamps, features, steps)

    async def predict_many(
        self, windows: Sequence[tuple[str, np.ndarray, np.ndarray]], steps: int | None = None
    ) -> list[WindowForecast]:
        """Forecast several windows (``submit_many``), in order. If one fails or the caller is cancelled,
        the rest are cancelled: nobody waits for them any more, and the engine skips them."""
        futures = self.submit_many(windows, steps)
        try:
            # one after the other rather than asyncio.gather, which adds a callback to every future and
            # so runs one more callback on the loop per window: a batch request has hundreds
            return [await future for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    # -- the batcher: callbacks on the event loop --------------------------------------------------
    def _schedule(self, *, at_once: bool = False) -> None:
        """Dispatch later, to let the batch grow, when max_wait_us says so and the batch is not full yet;
        else now (``at_once``), or at the end of this turn of the loop, with whatever else arrives in it."""
        assert self._loop is not None
        if self.max_wait_s and self._queued < self.max_batch:
            self._dispatch_due = self._loop.call_later(self.max_wait_s, self._dispatch)
        elif at_once:
            self._dispatch()
        else:
            self._dispatch_due = self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Hand what is queued (up to max_batch windows) to the inference thread, unless a pass runs."""
        self._dispatch_due = None
        if self._closed or self._passing is not None:
            return
        groups = self._take()
        if not groups:
            return
        assert self._thread is not None and self._idle is not None
        self._passing = groups
        self._idle.clear()
        self._pass_size = sum(job.size for _, jobs in groups for job in jobs)
        self._pass_started = time.perf_counter()
        self._thread.forward(groups, self._passed)

    def _passed(self, outcomes: list[Forecast | BaseException]) -> None:
        """The thread's answer, on the event loop: resolve the batch's windows, then start the next pass
        with what queued meanwhile: at once (it is all there: no need to wait for a turn of the loop),
        unless max_wait_us asks to let a batch that is not full grow."""
        groups, taken, done = self._passing or [], self._pass_started, time.perf_counter()
        self._passing, self._pass_started = None, 0.0
        assert self._idle is not None
        self._idle.set()
        try:
            self.pass_times.record(self._pass_size, done - taken)
            self._resolve(groups, outcomes)
            self._record(groups, outcomes, taken, done)
        except Exception:  # a bug here must not leave anyone waiting for ever
            log.exception("the batcher failed on a batch's answers; the engine no longer serves")
            self._closed = True
            self._fail(job for _, jobs in groups for job in jobs)
            self._fail(self._queue)
            self._queue.clear()
            self._queued = 0
            return
        if self._queue and not self._closed:
            self._schedule(at_once=True)

    def _take(self) -> list[tuple[Predictor, list[_Job]]]:
        """Up to max_batch live jobs off the queue, grouped by model; the model versions are fixed here."""
        by_kind: dict[str, list[_Job]] = {}
        taken = 0
        limit = self.max_batch  # lowered by a job that asks for smaller passes (``submit_block``)
        queue = self._queue
        while queue and taken < limit:
            head = queue[0]
            if head.future.done():  # cancelled: its client went away
                queue.popleft()
                self._queued -= head.size
                continue
            most = min(limit, head.most or limit)
            if taken and taken + head.size > most:  # a block that does not fit: the next pass
                break
            queue.popleft()
            self._queued -= head.size
            by_kind.setdefault(head.kind, []).append(head)
            taken += head.size
            limit = most
        return [(self._predictors[kind], jobs) for kind, jobs in by_kind.items()]

    def _resolve(
        self, groups: list[tuple[Predictor, list[_Job]]], outcomes: list[Forecast | BaseException]
    ) -> None:
        for (predictor, jobs), outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error(
                    "forward pass of %s on %d windows failed", predictor.version, len(jobs), exc_info=outcome
                )
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(outcome)
                continue
            size = sum(job.size for job in jobs)
            self.stats.forward_passes += 1
            self.stats.windows += size
            self.stats.batch_sizes[size] += 1
            row = 0
            for job in jobs:
                if job.lengths is not None:
                    if not job.future.done():
                        rows = range(row, row + job.size)
                        job.future.set_result([WindowForecast(outcome, i, predictor) for i in rows])  # type: ignore[arg-type]
                elif not job.future.done():
                    job.future.set_result(WindowForecast(outcome, row, predictor))  # type: ignore[arg-type]
                row += job.size

    def _record(
        self,
        groups: list[tuple[Predictor, list[_Job]]],
        outcomes: list[Forecast | BaseException],
        taken: float,
        done: float,
    ) -> None:
        """The batch's figures, once per model present (after the futures: the clients come first)."""
        for (predictor, jobs), outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self.metrics.observe_failure(predictor.kind, sum(job.size for job in jobs))
            else:
                enqueued = [job.enqueued for job in jobs for _ in range(job.size)]
                self.metrics.observe_batch(predictor.kind, enqueued, taken, done)

    def _fail(self, jobs: Iterable[_Job]) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(EngineStopped(self.retry_after_s))


_Done = Callable[[list[Forecast | BaseException]], None]  # called with a pass's outcomes


class EngineCollector(Collector):
    """What is read from the engine at scrape time rather than recorded as it happens."""

    def __init__(self, engine: Engine, default_model: str | None) -> None:
        self.engine = engine
        self.default_model = default_model

    def describe(self) -> list[Metric]:
        return []  # values come and go with the engine's state: nothing to check ahead

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        yield gauge("cpe_queue_depth", "Windows waiting for the engine now.", engine.queued)
        yield gauge("cpe_queue_capacity", "Most windows that may wait (then 503).", engine.queue_size)
        yield gauge("cpe_engine_running", "1 while the engine serves.", int(engine.running))
        yield CounterMetricFamily(
            "cpe_model_swaps", "Models replaced while serving (rollouts, rollbacks).", engine.stats.swaps
        )
        info = GaugeMetricFamily(
            "cpe_model_info",
            "1 per served model: its kind, version, device, and whether it answers requests naming none.",
            labels=["model", "version", "device", "default"],
        )
        for kind, predictor in engine.predictors.items():
            default = str(kind == self.default_model).lower()
            info.add_metric([kind, predictor.version, str(predictor.device), default], 1)
        yield info


class InferenceThread:
    """The one thread that runs the models: a batch in, its outcomes handed back on the event loop.

    A plain thread with a queue rather than a ThreadPoolExecutor: ``run_in_executor`` wraps every call
    in a concurrent future, a work item and an asyncio future chained to it, which cost the event loop
    more per batch than handing the batch over and calling back.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        torch_threads: int,
        adjust: Adjust | None = None,
        embed: bool = False,
    ) -> None:
        self._loop = loop
        self._adjust = adjust
        self._torch_threads = torch_threads
        self._embed = embed
        self._inbox: queue.SimpleQueue[tuple[list[tuple[Predictor, list[_Job]]], _Done] | None]
        self._inbox = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="cpe-inference", daemon=True)
        self._thread.start()

    def forward(self, groups: list[tuple[Predictor, list[_Job]]], done: _Done) -> None:
        """Run ``groups`` in the thread; ``done(outcomes)`` is then called on the event loop, with one
        outcome per group (a Forecast, or the exception that its forward pass raised)."""
        self._inbox.put((groups, done))

    def stop(self) -> None:
        """Finish the batch in hand, then end the thread (blocking: call it off the event loop)."""
        self._inbox.put(None)
        self._thread.join()

    def _serve(self) -> None:
        # torch keeps the intra-op thread count per calling thread with OpenMP: set it where predict runs
        torch.set_num_threads(self._torch_threads)
        while (item := self._inbox.get()) is not None:
            groups, done = item
            outcomes = _forward(groups, self._adjust, self._embed)
            try:
                self._loop.call_soon_threadsafe(done, outcomes)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return


class PassTimes:
    """Measured forward-pass times: a moving average per batch size class (1, 2-3, 4-7, 8-15, ...).

    ``estimate(n)`` answers the class of ``n``; for a class not measured yet, the nearest measured larger
    class (an upper bound: smaller batches are faster), else the nearest smaller one (a lower bound: it
    admits such batches until one has been measured), else 0.
    """

    ALPHA = 0.2  # weight of the newest pass: the average follows a change of load within ~10 passes

    def __init__(self) -> None:
        self._seconds: dict[int, float] = {}  # size class (n.bit_length()) -> average seconds

    def record(self, n: int, seconds: float) -> None:
        cls = n.bit_length()
        old = self._seconds.get(cls)
        self._seconds[cls] = seconds if old is None else old + self.ALPHA * (seconds - old)

    def estimate(self, n: int) -> float:
        cls = n.bit_length()
        seconds = self._seconds.get(cls)
        if seconds is not None:
            return seconds
        larger = [c for c in self._seconds if c > cls]
        if larger:
            return self._seconds[min(larger)]
        return self._seconds[max(self._seconds)] if self._seconds else 0.0


def _forward(
    groups: list[tuple[Predictor, list[_Job]]], adjust: Adjust | None = None, embed: bool = False
) -> list[Forecast | BaseException]:
    """Runs in the inference thread: one predict call per model present in the batch."""
    outcomes: list[Forecast | BaseException] = []
    for predictor, jobs in groups:
        try:
            if all(j.lengths is None for j in jobs):
                timestamps, features = [j.timestamps for j in jobs], [j.features for j in jobs]
                forecast = predictor.predict(timestamps, features, _most_steps(jobs), embed=embed)
            else:
                block = _block(jobs, predictor.seq_len)
                forecast = predictor.predict_block(*block, _most_steps(jobs), embed=embed)
            if adjust is not None:
                adjust(predictor, forecast)
            outcomes.append(forecast)
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def _block(jobs: list[_Job], seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The jobs' windows as one right-aligned block of the model's T columns: block jobs as they are
    (their last T columns), single windows placed in rows of their own."""
    if len(jobs) == 1 and jobs[0].lengths is not None:
        job = jobs[0]
        assert job.lengths is not None
        return job.timestamps[:, -seq_len:], job.features[:, -seq_len:], job.lengths
    ts_parts, feature_parts, length_parts = [], [], []
    for job in jobs:
        if job.lengths is not None:
            ts, features, lengths = job.timestamps[:, -seq_len:], job.features[:, -seq_len:], job.lengths
        else:
            n = min(len(job.timestamps), seq_len)
            ts = np.zeros((1, seq_len), dtype=np.int64)
            features = np.zeros((1, seq_len, job.features.shape[1]), dtype=np.float64)
            ts[0, seq_len - n :], features[0, seq_len - n :] = job.timestamps[-n:], job.features[-n:]
            lengths = np.array([n])
        width = ts.shape[1]
        if width < seq_len:  # a narrow block: widened on the left, all padding
            ts = np.pad(ts, ((0, 0), (seq_len - width, 0)))
            features = np.pad(features, ((0, 0), (seq_len - width, 0), (0, 0)))
        ts_parts.append(ts)
        feature_parts.append(features)
        length_parts.append(np.minimum(lengths, seq_len))
    return np.concatenate(ts_parts), np.concatenate(feature_parts), np.concatenate(length_parts)


def _most_steps(jobs: list[_Job]) -> int | None:
    """The most steps ahead that any of the jobs reads: None (the whole horizon) when one says so."""
    most = 0
    for job in jobs:
        if job.steps is None:
            return None
        most = max(most, job.steps)
    return most
