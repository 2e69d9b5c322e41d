"""Micro-batching inference: queue -> batch -> one forward pass per model on the device -> futures.

Requests put their windows in one bounded queue and await a future. A batcher task on the event loop
takes whatever is queued (up to ``max_batch`` windows), hands the batch to a single inference thread,
and resolves the futures when it comes back. While a forward pass runs, new windows queue up and
form the next batch, so under load batches grow by themselves; ``max_wait_us`` can add a delay to grow
them further. The event loop never runs torch, and only the one inference thread calls
``Predictor.predict``.

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
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch

from models.predictor import Forecast, Predictor

if TYPE_CHECKING:
    from app.metrics import Metrics

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
    """One window's forecast over its model's full horizon H (views into the batch's arrays)."""

    mean: np.ndarray  # (H, D) point forecast, raw units
    lower: np.ndarray  # (H, D) lower end of the central interval
    upper: np.ndarray  # (H, D) upper end
    confidence: np.ndarray  # (H,) calibrated P(latency within ±tolerance)
    loc: np.ndarray  # (H, D) point forecast in the scaler's transformed space
    std: np.ndarray  # (H, D) its calibrated deviation there: loc and std are the predictive Gaussian
    dt_s: float  # spacing assumed between future steps, seconds (0 for a one-context window)
    predictor: Predictor  # the model version that made it


@dataclass(slots=True)
class _Job:
    kind: str
    timestamps: np.ndarray  # (n,) int64 ms
    features: np.ndarray  # (n, D) float64
    future: asyncio.Future[WindowForecast]
    enqueued: float  # time.perf_counter() when queued: where its queue wait and latency start


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
        metrics: Metrics | None = None,
    ) -> None:
        assert predictors, "the engine needs at least one model"
        self.metrics = metrics  # recorded per batch (and per shed request), never per window
        self._predictors = dict(predictors)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_us / 1e6
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self.torch_threads = torch_threads
        self.latency_budget_s = latency_budget_ms / 1e3  # 0: admission by queue length alone
        self.pass_times = PassTimes()
        self._pass_started = 0.0  # perf_counter() when the pass in flight began; 0 when none runs
        self._pass_size = 0
        self.stats = EngineStats()
        self._queue: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        self._thread: InferenceThread | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        assert self._task is None, "the engine was already started"
        self._thread = InferenceThread(asyncio.get_running_loop(), self.torch_threads)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cpe-batcher")

    async def stop(self) -> None:
        """Refuse new work, fail what is still queued, finish the batch in flight, join the thread."""
        self._closed = True
        self._fail(self._queue)
        self._queue.clear()
        self._wakeup.set()
        try:
            if self._task is not None:
                await self._task
        finally:
            if self._thread is not None:
                await asyncio.to_thread(self._thread.stop)  # after the batcher: no batch is in flight

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closed

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
        return len(self._queue)

    def submit(
        self, kind: str, timestamps: np.ndarray, features: np.ndarray
    ) -> asyncio.Future[WindowForecast]:
        """Queue one window (``(n,)`` int64 ms, ``(n, D)`` float64); raises ``Overloaded`` when full."""
        return self.submit_many([(kind, timestamps, features)])[0]

    def submit_many(
        self, windows: Sequence[tuple[str, np.ndarray, np.ndarray]]
    ) -> list[asyncio.Future[WindowForecast]]:
        """Queue several windows at once, all or none, so that they share forward passes."""
        if self._closed or self._task is None:
            raise EngineStopped(self.retry_after_s)
        if len(self._queue) + len(windows) > self.queue_size:
            self.stats.rejected += len(windows)
            if self.metrics is not None:
                self.metrics.observe_shed(len(windows))
            reason = f"inference queue full ({len(self._queue)} of {self.queue_size} windows waiting)"
            raise Overloaded(reason, self.retry_after_s)
        if self.latency_budget_s:
            wait_s = self.expected_wait_s(len(windows))
            if wait_s > self.latency_budget_s:
                self.stats.rejected += len(windows)
                if self.metrics is not None:
                    self.metrics.observe_shed(len(windows))
                reason = (
                    f"expected wait {wait_s * 1e3:.0f} ms exceeds the latency budget of "
                    f"{self.latency_budget_s * 1e3:.0f} ms ({len(self._queue)} windows waiting)"
                )
                raise Overloaded(reason, self.retry_after_s)
        unknown = {kind for kind, _, _ in windows} - self._predictors.keys()
        if unknown:
            raise KeyError(f"no model of kind {sorted(unknown)} is served")
        loop = self._task.get_loop()
        futures = []
        now = time.perf_counter()
        for kind, timestamps, features in windows:
            future: asyncio.Future[WindowForecast] = loop.create_future()
            self._queue.append(_Job(kind, timestamps, features, future, now))
            futures.append(future)
        self._wakeup.set()
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
        full, rest = divmod(len(self._queue) + n, self.max_batch)
        if full:
            wait += full * passes.estimate(self.max_batch)
        if rest:
            wait += passes.estimate(rest)
        return wait

    async def predict(self, kind: str, timestamps: np.ndarray, features: np.ndarray) -> WindowForecast:
        """Forecast one window, batched with whatever else is queued."""
        return await self.submit(kind, timestamps, features)

    # -- the batcher --------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._thread is not None
        groups: list[tuple[Predictor, list[_Job]]] = []
        try:
            while not self._closed:
                await self._wakeup.wait()
                if self.max_wait_s and len(self._queue) < self.max_batch and not self._closed:
                    await asyncio.sleep(self.max_wait_s)  # let the batch grow
                groups = self._take()
                if not groups:
                    continue
                self._pass_size = sum(len(jobs) for _, jobs in groups)
                self._pass_started = taken = time.perf_counter()
                outcomes = await self._thread.forward(groups)  # predict errors come back in outcomes
                self._pass_started = 0.0
                done = time.perf_counter()
                self.pass_times.record(self._pass_size, done - taken)
                self._resolve(groups, outcomes)
                if self.metrics is not None:
                    self._record(groups, outcomes, taken, done)
                groups = []
        except Exception:
            log.exception("the batcher stopped on an error; the engine no longer serves")
            raise
        finally:  # however the loop ends, nobody may be left waiting
            self._closed = True
            self._fail(job for _, jobs in groups for job in jobs)
            self._fail(self._queue)
            self._queue.clear()

    def _take(self) -> list[tuple[Predictor, list[_Job]]]:
        """Up to max_batch live jobs off the queue, grouped by model; the model versions are fixed here."""
        by_kind: dict[str, list[_Job]] = {}
        taken = 0
        while self._queue and taken < self.max_batch:
            job = self._queue.popleft()
            if job.future.done():  # cancelled: its client went away
                continue
            by_kind.setdefault(job.kind, []).append(job)
            taken += 1
        if not self._queue:
            self._wakeup.clear()
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
            self.stats.forward_passes += 1
            self.stats.windows += len(jobs)
            self.stats.batch_sizes[len(jobs)] += 1
            for i, job in enumerate(jobs):
                if not job.future.done():
                    job.future.set_result(
                        WindowForecast(
                            mean=outcome.mean[i],
                            lower=outcome.lower[i],
                            upper=outcome.upper[i],
                            confidence=outcome.confidence[i],
                            loc=outcome.loc[i],
                            std=outcome.std[i],
                            dt_s=float(outcome.dt_s[i]),
                            predictor=predictor,
                        )
                    )

    def _record(
        self,
        groups: list[tuple[Predictor, list[_Job]]],
        outcomes: list[Forecast | BaseException],
        taken: float,
        done: float,
    ) -> None:
        """The batch's figures, once per model present (after the futures: the clients come first)."""
        assert self.metrics is not None
        for (predictor, jobs), outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self.metrics.observe_failure(predictor.kind, len(jobs))
            else:
                self.metrics.observe_batch(predictor.kind, [job.enqueued for job in jobs], taken, done)

    def _fail(self, jobs: Iterable[_Job]) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(EngineStopped(self.retry_after_s))


class InferenceThread:
    """The one thread that runs the models: a batch in, its outcomes back on the event loop.

    A plain thread with a queue rather than a ThreadPoolExecutor: ``run_in_executor`` wraps every call
    in a concurrent future, a work item and an asyncio future chained to it, which cost the event loop
    more per batch (tens of µs, seen with py-spy) than handing the batch over and calling back.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, torch_threads: int) -> None:
        self._loop = loop
        self._torch_threads = torch_threads
        self._inbox: queue.SimpleQueue[tuple[list[tuple[Predictor, list[_Job]]], asyncio.Future[Any]] | None]
        self._inbox = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="cpe-inference", daemon=True)
        self._thread.start()

    def forward(
        self, groups: list[tuple[Predictor, list[_Job]]]
    ) -> asyncio.Future[list[Forecast | BaseException]]:
        """Run ``groups`` in the thread; the future resolves on the event loop with one outcome per group."""
        future: asyncio.Future[list[Forecast | BaseException]] = self._loop.create_future()
        self._inbox.put((groups, future))
        return future

    def stop(self) -> None:
        """Finish the batch in hand, then end the thread (blocking: call it off the event loop)."""
        self._inbox.put(None)
        self._thread.join()

    def _serve(self) -> None:
        # torch keeps the intra-op thread count per calling thread with OpenMP: set it where predict runs
        torch.set_num_threads(self._torch_threads)
        while (item := self._inbox.get()) is not None:
            groups, future = item
            outcomes = _forward(groups)
            try:
                self._loop.call_soon_threadsafe(_settle, future, outcomes)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return


def _settle(
    future: asyncio.Future[list[Forecast | BaseException]], outcomes: list[Forecast | BaseException]
) -> None:
    if not future.done():  # the batcher may have been cancelled meanwhile
        future.set_result(outcomes)


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


def _forward(groups: list[tuple[Predictor, list[_Job]]]) -> list[Forecast | BaseException]:
    """Runs in the inference thread: one predict call per model present in the batch."""
    outcomes: list[Forecast | BaseException] = []
    for predictor, jobs in groups:
        try:
            outcomes.append(predictor.predict([j.timestamps for j in jobs], [j.features for j in jobs]))
        except Exception as exc:
            outcomes.append(exc)
    return outcomes
