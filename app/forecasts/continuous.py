"""Continuous prediction: the flows that observations touched, forecast in bulk, each once per round.

``touch(flow_keys)`` marks flows as due (ingest calls it once observations are applied). A flow touched
again before its forecast runs stays due once: it is forecast on its newest window (coalescing). A fixed
number of ``rounds`` take up to ``batch`` due flows each, oldest first, read their windows from the flow
store as one block of arrays (``window_block``), and queue them in the engine at once
(``Engine.submit_block``: passes of up to its max_batch windows, encoded as arrays). With ``pass_size``
(CPE_FORECAST_PASS) the passes hold at most that many windows, and each pass's flows are finished (below)
as soon as that pass is back, while the inference thread runs the next: a round's first flows wait for
one pass, not for the whole round's, and the event loop's work on them overlaps the model's, where the
inference thread has a core of its own and the GIL often enough (``Engine``'s ``gil_switch_s``). Behind
(a round's worth of flows still due), a round is finished whole, in passes as large as the engine takes.
The work is bounded by construction: at most one due entry per flow, at most ``rounds x batch`` windows
in the engine at once. A full engine (its queue is shared with the HTTP requests) puts the round's flows
not forecast yet back to wait, rather than queueing more; under a load the engine cannot follow, flows are
forecast less often, on fresher windows, and nothing grows.

Each round (or pass) then, for each flow: scores the flow's previous forecast if the window now holds the
observation that followed it (``scores``, ``labels``), keeps the new forecast (``store``) and publishes
it as a ``FlowPrediction`` (``stream``). As soon as the forecasts are final (scored, and corrected by
the flows' residuals), before the rest, ``on_forecasts`` (the route groups' re-ranking,
``app/groups/service.py``) gets the round's flows, windows and forecasts: routing messages are what waits
on a round's latency most.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from app.bus import Bus
from app.engine import Engine, EngineStopped, Overloaded, WindowForecast
from app.engine_metrics import LATENCY_BUCKETS, LatencyRing
from app.flows import FlowsUnavailable, FlowWindow, WindowBlock
from app.forecasts.labels import FreeLabels
from app.forecasts.redis import ForecastsUnavailable
from app.forecasts.result import RoundResults, Segment, segments
from app.forecasts.scores import Scores
from app.forecasts.store import ForecastStore, Previous, RoundForecasts
from app.forecasts.stream import FlowPredictionHub, encode
from app.learning.conformal import ConformalIntervals
from app.learning.residual import FlowResiduals
from app.metrics import BatchHistogram
from app.patterns.service import Patterns
from app.window import Window

log = logging.getLogger("cpe.forecasts")

EWMA_ALPHA = 0.3  # the EWMA baseline's weight of the newest sample, as in models/baselines.py
EWMA_SPAN = 24  # contexts the EWMA reads: the weight of older ones is below 0.7^24 = 2e-4
RETRY_S = 0.01  # how long a round waits after the engine refused its windows
UNAVAILABLE_RETRY_S = 0.5  # ... after the flow store could not be reached


# the round's flows, their windows (the newest contexts the round read) and forecasts, in the same order
OnForecasts = Callable[[Sequence[str], Sequence[FlowWindow], Sequence[WindowForecast]], Awaitable[None]]


class _BlockWindows(Sequence[FlowWindow]):
    """A round's block seen as its windows, each made only when the hook asks for it: the route groups
    read the few flows that are routes, not the round's every flow."""

    def __init__(self, block: WindowBlock) -> None:
        self.block = block

    def __len__(self) -> int:
        return len(self.block)

    def __getitem__(self, i: int) -> FlowWindow:  # type: ignore[override]
        window = self.block.window(i)
        assert window is not None, "a round forecasts only the flows it holds a window of"
        return window


class WindowSource(Protocol):
    """Where the windows come from: the flow store (whose ``window_block`` reads a round's at once)."""

    async def windows(self, flow_keys: Sequence[str]) -> Sequence[FlowWindow | None]: ...


class _Deferred(Exception):
    """The engine refused a round's windows, or stopped before their passes: those flows wait again."""

    def __init__(self, keys: Sequence[str], touched: Sequence[float]) -> None:
        super().__init__(f"{len(keys)} flows deferred")
        self.keys, self.touched = keys, touched


@dataclass(slots=True)
class RoundStats:
    """Counters since start; tests and /v1/stats read them."""

    touched: int = 0  # flows marked due (one per flow per ingest batch)
    coalesced: int = 0  # of those, flows that were due already
    rounds: int = 0
    forecasts: int = 0
    gone: int = 0  # due flows whose window had expired or been deleted
    deferred: int = 0  # flows put back because the engine was full
    failed: int = 0  # flows of rounds that failed


class ContinuousPrediction:
    """Forecasts the flows that ``touch`` names; use as ``async with`` (runs its rounds)."""

    def __init__(
        self,
        engine: Engine,
        source: WindowSource,
        store: ForecastStore,
        scores: Scores,
        *,
        bus: Bus,
        channel: str,
        hub: FlowPredictionHub,
        labels: FreeLabels | None = None,
        kind: str,
        horizon: int = 1,
        batch: int = 1024,
        rounds: int = 2,
        pass_size: int | None = None,
        publish_always: bool = False,
        groups_of: Callable[[str], Sequence[str]] | None = None,
        on_forecasts: OnForecasts | None = None,
        intervals: ConformalIntervals | None = None,
        residuals: FlowResiduals | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.engine, self.source, self.store, self.scores = engine, source, store, scores
        self.intervals = intervals  # scores the served intervals and keeps them calibrated
        self.residuals = residuals  # per-flow latency corrections, learnt from the scored forecasts
        self.bus, self.channel, self.hub, self.labels = bus, channel, hub, labels
        self.kind, self.horizon, self.batch, self.rounds = kind, horizon, batch, rounds
        # most windows of a round's forward pass, each pass's flows finished as it is back; None: the
        # engine's passes (of its max_batch), all of the round's finished together
        self.pass_size = pass_size
        # with a shared bus other replicas' clients may be listening: publish even with none here
        self.publish_always = publish_always
        self.groups_of = groups_of  # a flow's route groups, for subscribers by group
        self.on_forecasts = on_forecasts  # told of each round's final forecasts, before they are kept
        # the newest contexts a round reads of each window: what the model reads, what the EWMA reads, and
        # the one before (the previous forecast's newest, for its score); the older ones are not copied
        self.span = max(engine.predictors[kind].seq_len, EWMA_SPAN) + 1
        self.patterns: Patterns | None = None  # pattern memory, fed by every round (app/patterns)
        self.stats = RoundStats()
        self._due: dict[str, float] = {}  # flow_key -> perf_counter() of its oldest unforecast observation
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = 0  # rounds in progress
        self.latencies = LatencyRing()  # observe -> published, seconds: GET /v1/stats's percentiles
        self._latency = (
            BatchHistogram(
                "cpe_observe_to_forecast_seconds",
                "From an observation applied to its flow's forecast published, per forecast (the oldest "
                "observation a forecast covers).",
                LATENCY_BUCKETS,
                registry,
            )
            if registry is not None
            else None
        )
        self._forecasts = Counter(
            "cpe_forecasts", "Continuous forecasts made, per model.", ["model"], registry=registry
        )
        self._coalesced = Counter(
            "cpe_forecasts_coalesced",
            "Observed flows already waiting for their forecast: forecast once, on the newest window.",
            registry=registry,
        )
        self._deferred = Counter(
            "cpe_forecasts_deferred",
            "Flows put back to wait because the engine's queue was full.",
            registry=registry,
        )
        self._due_gauge = Gauge(
            "cpe_forecasts_due", "Observed flows waiting for their forecast.", registry=registry
        )
        self._due_gauge.set_function(lambda: len(self._due))

    # -- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> ContinuousPrediction:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name=f"cpe-forecasts-{i}") for i in range(self.rounds)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def due(self) -> int:
        """Flows waiting for their forecast."""
        return len(self._due)

    async def idle(self, timeout_s: float = 10.0) -> None:
        """Wait until no flow is due and no round runs (tests, the benchmark's drain)."""
        deadline = time.monotonic() + timeout_s
        while self._due or self._running:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._due)} flows still due after {timeout_s} s")
            await asyncio.sleep(0.005)

    # -- the ingest side ------------------------------------------------------------------------
    def touch(self, flow_keys: Iterable[str]) -> None:
        """Mark ``flow_keys`` due for a forecast (an ingest batch's flows; a mapping's keys will do)."""
        now = time.perf_counter()
        due = self._due
        before, n = len(due), 0
        for key in flow_keys:
            n += 1
            if key not in due:
                due[key] = now
        coalesced = n - (len(due) - before)
        self.stats.touched += n
        if coalesced:
            self.stats.coalesced += coalesced
            self._coalesced.inc(coalesced)
        if n:
            self._wake.set()

    async def on_applied(self, applied: Iterable[str]) -> None:
        """Ingest's callback once observations are applied: the flows they touched (or a mapping by flow)."""
        self.touch(applied)

    # -- rounds ---------------------------------------------------------------------------------
    def _take(self) -> tuple[list[str], list[float]]:
        due = self._due
        keys = list(itertools.islice(due, self.batch))
        touched = [due.pop(key) for key in keys]
        if not due:
            self._wake.clear()
        return keys, touched

    def _put_back(self, keys: Sequence[str], touched: Sequence[float]) -> None:
        due = self._due
        for key, t in zip(keys, touched, strict=True):
            due[key] = min(t, due.get(key, t))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            keys, touched = self._take()
            if not keys:
                continue
            self._running += 1
            try:
                await self._round(keys, touched)
            except _Deferred as deferred:
                self.stats.deferred += len(deferred.keys)
                self._deferred.inc(len(deferred.keys))
                self._put_back(deferred.keys, deferred.touched)
                await asyncio.sleep(RETRY_S)
            except FlowsUnavailable:  # the windows are out of reach (Redis): they wait, and so do we
                self._put_back(keys, touched)
                await asyncio.sleep(UNAVAILABLE_RETRY_S)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.failed += len(keys)
                log.exception("a round of continuous prediction failed on %d flows", len(keys))
            finally:
                self._running -= 1

    async def _round(self, keys: list[str], touched: list[float]) -> None:
        block = await self._block(keys)
        lengths = block.lengths
        if not lengths.all():
            live = np.flatnonzero(lengths)
            self.stats.gone += len(keys) - len(live)
            for i in np.flatnonzero(lengths == 0).tolist():
                with contextlib.suppress(ForecastsUnavailable):
                    await self.store.delete(keys[i])
            if not len(live):
                return
            block = block.take(live)
            keys, touched = block.flow_keys, [touched[i] for i in live.tolist()]
        # the round's passes are queued at once, and with ``pass_size`` each pass's flows are finished as
        # soon as it is back: the loop scores, re-ranks and publishes one pass's while the inference thread
        # runs the next. Behind (a round's worth of flows still due), the round is finished whole, in passes
        # as large as the engine takes: the flows waiting then wait for rounds, not passes, and larger
        # passes cost the loop less per flow.
        pass_size = None if len(self._due) >= self.batch else self.pass_size
        try:
            futures = self.engine.submit_block(
                self.kind, block.timestamps, block.features, block.lengths, self.horizon, pass_size
            )
        except (Overloaded, EngineStopped) as exc:
            raise _Deferred(keys, touched) from exc
        parts = [[future] for future in futures] if pass_size is not None else [futures]
        start = 0
        try:
            for part in parts:
                try:
                    forecasts = [forecast for future in part for forecast in await future]
                except (Overloaded, EngineStopped) as exc:  # the passes not made wait for the next round
                    raise _Deferred(keys[start:], touched[start:]) from exc
                stop = start + len(forecasts)
                whole = start == 0 and stop == len(keys)
                await self._finish(
                    block if whole else block.take(slice(start, stop)), touched[start:stop], forecasts
                )
                start = stop
            self.stats.rounds += 1
        finally:
            for future in futures:  # those still queued when a part failed or the round was cancelled
                future.cancel()

    async def _finish(
        self, block: WindowBlock, touched: list[float], forecasts: list[WindowForecast]
    ) -> None:
        """Score, correct, re-rank, keep and publish the forecasts of a round's ``block`` of flows."""
        keys, kind = block.flow_keys, self.kind
        ts, lengths = block.timestamps, block.lengths
        try:
            previous = await self.store.get_previous(keys)
        except ForecastsUnavailable:
            previous = Previous.empty(len(keys))
        persistence, ewma = _baselines(block)
        scores = self._score(keys, block, previous)
        if self.residuals is not None:  # after scoring: the previous forecasts teach before these are made
            self.residuals.correct(
                self.engine.predictors[kind],
                keys,
                block.features,
                [f.batch for f in forecasts],
                [f.index for f in forecasts],
                ts[:, -1].tolist(),
                lengths=lengths,
            )
        if self.on_forecasts is not None:  # the forecasts are final: a routing message waits on nothing more
            try:
                await self.on_forecasts(keys, _BlockWindows(block), forecasts)
            except Exception:  # the forecasts stand: only what the hook does with them is lost
                log.exception("the forecasts' hook failed on %d flows", len(keys))
        patterns = self.patterns
        nearest = (
            patterns.on_forecasts(keys, _BlockWindows(block), forecasts) if patterns is not None else None
        )
        passes = segments(forecasts)
        h = self.horizon
        similar: dict[int, list[str]] = {}
        extra: dict[int, dict[str, float]] = {}
        if block.pattern_ids is not None or nearest is not None:  # per flow only with patterns about
            for i, forecast in enumerate(forecasts):
                found = _similar_patterns(block, i, forecast, h) if block.pattern_ids is not None else []
                if patterns is not None and nearest is not None:
                    found = patterns.names(nearest[i], found)
                    more = patterns.metadata(nearest[i], forecast, h)
                    if more:
                        extra[i] = more
                if found:
                    similar[i] = found
        now = time.perf_counter()
        bases = ts[:, -1].copy()
        waited_ms = np.round((now - np.asarray(touched)) * 1000.0, 3)
        results = RoundResults(keys, h, bases, lengths, waited_ms, passes, similar, extra)
        made = RoundForecasts(
            keys,
            kind,
            bases,
            _step_latency(passes, len(keys)),
            persistence,
            ewma,
            *scores,
            _interval_rows(passes, len(keys)) if self.intervals is not None else None,
            results,
        )
        published = self._published(keys)
        with contextlib.suppress(ForecastsUnavailable):  # published all the same; ``problem`` says why
            await self.store.put_round(made)
        if published:
            bodies = results.bodies(published)
            await self._publish([(keys[i], body) for i, body in zip(published, bodies, strict=True)])
        done = time.perf_counter()
        waited = [done - t for t in touched]
        self.latencies.extend(waited)
        if self._latency is not None:
            self._latency.observe(kind, waited)
        self.stats.forecasts += len(keys)
        self._forecasts.labels(model=kind).inc(len(keys))

    async def _block(self, keys: list[str]) -> WindowBlock:
        """The round's windows as one block: read so by a flow store that can, else built from objects."""
        read = getattr(self.source, "window_block", None)
        if read is not None:
            block: WindowBlock = await read(keys, self.span)
            return block
        windows = await self.source.windows(keys)
        return WindowBlock.of(keys, windows, self.span)  # type: ignore[arg-type]  # the store's windows

    def _score(
        self, keys: Sequence[str], block: WindowBlock, previous: Previous
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each flow's running score (scored, and the model's, persistence's and EWMA's absolute errors
        summed), with its previous forecast scored if its window now holds the observation that followed
        that forecast's window; the scored pairs go to the learner too."""
        scored, sums = previous.scored.copy(), previous.score_model.copy()
        sums_p, sums_e = previous.score_persistence.copy(), previous.score_ewma.copy()
        out = (scored, sums, sums_p, sums_e)
        rows = np.flatnonzero(previous.found)
        if not len(rows):
            return out
        prev_base = previous.base_ts[rows]
        ts = block.timestamps[rows]  # (P, L)
        L = ts.shape[1]
        valid = np.arange(L) >= (L - block.lengths[rows])[:, None]
        # the actual: the context right after the forecast's newest, if the window still holds both
        match = (ts[:, :-1] == prev_base[:, None]) & valid[:, :-1]
        found = match.any(axis=1) & (prev_base < ts[:, -1])
        if not found.any():
            return out
        hit = np.flatnonzero(found)
        flows = rows[hit]  # distinct: a round holds a flow once
        cols = match[hit].argmax(axis=1) + 1
        actual = block.features[flows, cols, 0].astype(np.float64)
        model = np.abs(previous.latency[flows] - actual)
        persistence = np.abs(previous.persistence[flows] - actual)
        ewma = np.abs(previous.ewma[flows] - actual)
        scored[flows] += 1
        sums[flows] += model
        sums_p[flows] += persistence
        sums_e[flows] += ewma
        codes = previous.model[flows]
        for code in np.unique(codes).tolist():
            members = np.flatnonzero(codes == code)
            name = previous.kinds[code]
            self.scores.add(name, model[members], persistence[members], ewma[members])
            predictor = self.engine.predictors.get(name)
            if predictor is None:
                continue
            picked = flows[members]
            observed = block.features[picked, cols[members]]  # (M, D) what followed each
            if self.residuals is not None:
                self.residuals.learn(
                    predictor,
                    [keys[i] for i in picked.tolist()],
                    previous.base_ts[picked].tolist(),
                    observed,
                )
            if self.intervals is not None and previous.interval is not None:
                kept = previous.has_interval[picked]
                if kept.any():
                    self.intervals.add(predictor, observed[kept], previous.interval[picked[kept]])
        if self.labels is not None:
            admitted = self.labels.admit(len(flows))
            for i, j in zip(flows[:admitted].tolist(), cols[:admitted].tolist(), strict=True):
                first = L - int(block.lengths[i])
                self.labels.offer(
                    keys[i],
                    block.timestamps[i, first:j],
                    block.features[i, first:j],
                    int(block.timestamps[i, j]),
                    block.features[i, j],
                )
        return out

    def _published(self, keys: Sequence[str]) -> Sequence[int]:
        """Which of the round's flows to publish: all with a shared bus (other replicas' clients may
        listen), else those that this replica's subscribers select."""
        if self.publish_always or self.hub.wants_all:
            return range(len(keys))
        if not self.hub.subscribers:
            return ()
        wants = self.hub.wants
        return [i for i, key in enumerate(keys) if wants(key)]

    async def _publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        groups_of = self.groups_of
        message = encode((key, groups_of(key) if groups_of else (), body) for key, body in items)
        if await self.bus.publish(self.channel, message) and self.hub.counters is not None:
            self.hub.counters.published.inc(len(items))


def _baselines(block: WindowBlock) -> tuple[np.ndarray, np.ndarray]:
    """Persistence's and EWMA's forecasts of the next latency of each window: (B,), (B,)."""
    span = min(EWMA_SPAN, block.timestamps.shape[1])
    lat = block.features[:, -span:, 0].astype(np.float64)  # (B, span)
    # a window shorter than the span: its first sample repeated, which leaves an EWMA started on it unchanged
    short = block.lengths < span
    if short.any():
        first_col = span - block.lengths[short]  # (S,) column of each short window's first sample
        firsts = lat[short, first_col]
        lat[short] = np.where(np.arange(span) < first_col[:, None], firsts[:, None], lat[short])
    s = lat[:, 0].copy()
    for t in range(1, span):
        s += EWMA_ALPHA * (lat[:, t] - s)
    return lat[:, -1].copy(), s


def _step_latency(passes: Sequence[Segment], b: int) -> np.ndarray:
    """(B,) the predicted latency of each forecast's next context (step 1): what the next observation
    scores."""
    out = np.empty(b)
    for seg in passes:
        out[seg.start : seg.stop] = seg.forecast.mean[seg.row : seg.row + seg.stop - seg.start, 0, 0]
    return out


def _interval_rows(passes: Sequence[Segment], b: int) -> np.ndarray:
    """(B, 4, D) step 1's lower, upper, loc and std of each forecast: what scoring its interval needs
    (``app.learning.conformal``)."""
    d = passes[0].forecast.mean.shape[-1] if passes else 0
    out = np.empty((b, 4, d))
    for seg in passes:
        f, rows = seg.forecast, slice(seg.row, seg.row + seg.stop - seg.start)
        out[seg.start : seg.stop] = np.stack(
            (f.lower[rows, 0], f.upper[rows, 0], f.loc[rows, 0], f.std[rows, 0]), axis=1
        )
    return out


def _similar_patterns(block: WindowBlock, i: int, forecast: WindowForecast, h: int) -> list[str]:
    """pattern_ids of window i's contexts nearest to the forecast, as POST /v1/predict answers them."""
    window = block.window(i)
    if window is None or window.pattern_ids.count(None) == len(window.pattern_ids):  # the usual case
        return []
    from app.api.predict import _similar_patterns as nearest  # the one rule, shared with /v1/predict

    features = np.asarray(window.features, dtype=np.float64)
    return nearest(Window("", None, h, window.timestamps, features, list(window.pattern_ids)), forecast)
