"""Pattern memory: the windows this replica forecast, by embedding, with what followed each.

A window goes in once its outcome is known: continuous prediction remembers each forecast's embedding
(``remember``), and when the flow's next observation arrives (the free label, ``app/forecasts``) the
pair is stored (``resolve``). Stored per window: its embedding (in the index), its flow and timestamp
(the newest context's), the next context in raw units (what a search answers) and in the window's own
standardised space (what an analog forecast reuses on another window's scale, ``analogy.py``), the
latency change it saw, and Layer 2's label (pattern id and confidence) when one came for the flow.

Bounded: ``capacity`` slots in a ring, the oldest windows evicted by the newest, a part of the ring
(one of the index's graphs, ``index.py``) at a time. Inserts queue (bounded, the oldest batch dropped
and counted when the writer is behind) and one writer task puts them in the index from a worker
thread, so neither a round of forecasts nor a search waits for the graph. The flow and label names
live in tables that are compacted when evicted flows' names pile up, and written compacted in
snapshots (``snapshot.py``). A search with a filter reads a mask of the slots it lets through, kept
per recent filter and updated by each insert, rather than one made over the whole ring each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from app.patterns.index import VectorIndex

log = logging.getLogger("cpe.patterns")

WINDOW_NAME = re.compile(r"([0-9a-f]{64})@(\d{1,19})")  # Match.name of an unlabelled window
EXACT_BELOW = 20_000  # a filter that leaves fewer windows is answered by exact search over them
BROAD = 0.03  # a filter that leaves at least this share: the plain graph search, asked for more, then kept
MASKS = 32  # filters whose (capacity,) masks are kept, and updated by each insert
QUEUE_BATCHES = 64  # insert batches that may wait for the writer
MIN_NAMES = 4096  # the name tables are compacted past 2 x capacity + this many flows


class UnknownPattern(KeyError):
    """No stored window carries this pattern id."""


@dataclass(frozen=True, slots=True)
class PatternFilter:
    """What a search may return: Layer 2's labels (any of ``pattern_ids``, confidence at least
    ``min_confidence``), one flow, or none of one flow's windows since a moment (the query's own)."""

    pattern_ids: tuple[str, ...] | None = None
    min_confidence: float | None = None
    flow_key: str | None = None

    @property
    def empty(self) -> bool:
        return self.pattern_ids is None and self.min_confidence is None and self.flow_key is None


@dataclass(slots=True)
class Match:
    """One stored window near a query."""

    slot: int
    flow_key: str
    timestamp: int  # ms, the window's newest context
    distance: float  # squared L2 between unit embeddings: 0 (same) .. 4 (opposite)
    pattern_id: str | None  # Layer 2's label, if one came for the flow
    confidence: float | None
    next: list[float]  # (D,) the context that followed, raw units
    next_scaled: np.ndarray  # (D,) the same, in the window's standardised space

    @property
    def name(self) -> str:
        """The window's name: its pattern id when labelled, else ``<flow_key>@<timestamp>``."""
        return self.pattern_id if self.pattern_id is not None else f"{self.flow_key}@{self.timestamp}"


@dataclass(slots=True)
class Pending:
    """A forecast's window, waiting for the observation that follows it."""

    timestamp: int  # ms, the window's newest context
    embedding: np.ndarray  # (E,)
    center: np.ndarray  # (D,) the window's standardisation (models/scaling.py)
    scale: np.ndarray  # (D,)
    last_latency: float
    label: tuple[str, float] | None  # (pattern id, confidence) of the flow when it was forecast


@dataclass(slots=True)
class Batch:
    """Windows with their outcomes, on their way into the index."""

    vectors: np.ndarray  # (n, E) float32
    flow_keys: list[str]
    timestamps: np.ndarray  # (n,) int64
    next: np.ndarray  # (n, D) float32
    next_scaled: np.ndarray  # (n, D) float32
    change: np.ndarray  # (n,) float32 next latency - last latency, ms
    labels: list[tuple[str, float] | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PatternSummary:
    """What followed the windows labelled with one pattern id."""

    pattern_id: str
    count: int
    mean_latency_change_ms: float
    latency_change_std_ms: float
    next_mean: list[float]  # (D,) mean next context, raw units
    first_timestamp: int
    last_timestamp: int


class PatternMemory:
    """Windows by embedding, bounded, with their outcomes; ``async with`` runs the writer (and the
    snapshots, when ``snapshot_path`` is set)."""

    def __init__(
        self,
        dim: int,
        n_features: int,
        *,
        capacity: int,
        max_pending: int = 100_000,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.dim, self.n_features, self.capacity = dim, n_features, capacity
        self.index = VectorIndex(dim, capacity)
        cap, D = capacity, n_features
        self.flow = np.full(cap, -1, np.int32)  # -1: an empty slot
        self.timestamp = np.zeros(cap, np.int64)
        # the embeddings again, by slot: exact search over a filter's few gathers them here (hnswlib's
        # get_items copies element by element), for dim x 4 bytes a window
        self.embedding = np.zeros((cap, dim), np.float32)
        self.next = np.zeros((cap, D), np.float32)
        self.next_scaled = np.zeros((cap, D), np.float32)
        self.change = np.zeros(cap, np.float32)
        self.label = np.full(cap, -1, np.int32)  # -1: unlabelled
        self.confidence = np.full(cap, np.nan, np.float32)
        self.written = 0  # windows ever stored: the next goes to slot written % capacity
        self.flow_names: list[str] = []
        self.flow_ids: dict[str, int] = {}
        self.label_names: list[str] = []
        self.label_ids: dict[str, int] = {}
        self.max_pending = max_pending
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._labels: OrderedDict[str, tuple[str, float]] = OrderedDict()  # flow -> Layer 2's newest label
        self._queue: deque[Batch] = deque()
        self._ready = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._lock = threading.Lock()  # one thread changes the index and the tables at a time
        # the slots each recent filter lets through, and how many: kept up to date by ``insert`` so that a
        # search with a filter costs nothing in proportion to the memory's size
        self._masks: OrderedDict[PatternFilter, tuple[np.ndarray, list[int]]] = OrderedDict()
        self._masks_lock = threading.Lock()  # not the writer's: a search must not wait for a graph insert
        self.stored = Counter("cpe_patterns_stored", "Windows put in pattern memory.", registry=registry)
        self.dropped = Counter(
            "cpe_patterns_dropped",
            "Windows dropped before pattern memory stored them: its writer was behind.",
            registry=registry,
        )
        self.searches = Counter("cpe_pattern_searches", "Searches of pattern memory.", registry=registry)
        size = Gauge("cpe_patterns_windows", "Windows in pattern memory now.", registry=registry)
        size.set_function(lambda: len(self))

    # -- filling it ------------------------------------------------------------------------------
    def hear_labels(
        self, flow_keys: Sequence[str], pattern_ids: Sequence[str], confidences: Sequence[float]
    ) -> None:
        """Layer 2's SimilarityResults: each flow's windows forecast from now on carry this label."""
        labels = self._labels
        for key, pattern, confidence in zip(flow_keys, pattern_ids, confidences, strict=True):
            labels[key] = (pattern, float(confidence))
            labels.move_to_end(key)
        while len(labels) > self.max_pending:
            labels.popitem(last=False)

    def remember(
        self,
        flow_key: str,
        timestamp: int,
        embedding: np.ndarray,
        center: np.ndarray,
        scale: np.ndarray,
        last_latency: float,
        window_label: str | None = None,
    ) -> None:
        """A forecast's window, until ``resolve`` finds what followed it. ``window_label``: the pattern
        id of the window's newest labelled context, used when Layer 2 named none for the flow here."""
        label = self._labels.get(flow_key)
        if label is None and window_label is not None:
            label = (window_label, math.nan)
        pending = self._pending
        pending[flow_key] = Pending(timestamp, embedding, center, scale, last_latency, label)
        pending.move_to_end(flow_key)
        if len(pending) > self.max_pending:
            pending.popitem(last=False)

    def resolve(
        self,
        flow_keys: Sequence[str],
        timestamps: Sequence[np.ndarray],
        features: Sequence[np.ndarray],
        transform: Callable[[np.ndarray], np.ndarray],
    ) -> int:
        """Store every remembered window whose next observation the flows' windows now hold; the number
        stored. ``transform``: the scaler's raw -> transformed map, to standardise the next contexts."""
        found: list[tuple[str, Pending, np.ndarray]] = []
        for key, ts, fs in zip(flow_keys, timestamps, features, strict=True):
            pending = self._pending.get(key)
            if pending is None or len(ts) < 2 or ts[-1] <= pending.timestamp:
                continue
            j = (
                len(ts) - 1
                if ts[-2] == pending.timestamp
                else int(np.searchsorted(ts, pending.timestamp)) + 1
            )
            if j >= len(ts) or ts[j - 1] != pending.timestamp:
                del self._pending[key]  # its next context is gone from the window: never stored
                continue
            found.append((key, pending, np.asarray(fs[j], dtype=np.float64)))
            del self._pending[key]
        if not found:
            return 0
        nxt = np.stack([f for _, _, f in found])  # (n, D)
        center = np.stack([p.center for _, p, _ in found])
        scale = np.stack([p.scale for _, p, _ in found])
        batch = Batch(
            vectors=np.stack([p.embedding for _, p, _ in found]).astype(np.float32),
            flow_keys=[k for k, _, _ in found],
            timestamps=np.array([p.timestamp for _, p, _ in found], np.int64),
            next=nxt.astype(np.float32),
            next_scaled=((transform(nxt) - center) / scale).astype(np.float32),
            change=(nxt[:, 0] - np.array([p.last_latency for _, p, _ in found])).astype(np.float32),
            labels=[p.label for _, p, _ in found],
        )
        self.offer(batch)
        return len(found)

    def offer(self, batch: Batch) -> None:
        """Queue ``batch`` for the writer; when too many wait, the oldest is dropped (counted)."""
        if len(self._queue) >= QUEUE_BATCHES:
            self.dropped.inc(len(self._queue.popleft().flow_keys))
        self._queue.append(batch)
        self._ready.set()

    def insert(self, batch: Batch, threads: int = 1) -> None:
        """Store ``batch`` now (blocking: the writer calls it from a worker thread; tests and tools too)."""
        with self._lock:
            n = len(batch.flow_keys)
            slots = (self.written + np.arange(n)) % self.capacity
            if n > self.capacity:  # only the newest fit
                keep = slice(n - self.capacity, n)
                slots, n = slots[keep], self.capacity
                batch = _tail(batch, keep)
            self.flow[slots] = [self._id(self.flow_ids, self.flow_names, k) for k in batch.flow_keys]
            self.timestamp[slots] = batch.timestamps
            self.embedding[slots] = batch.vectors
            self.next[slots] = batch.next
            self.next_scaled[slots] = batch.next_scaled
            self.change[slots] = batch.change
            labels = batch.labels or [None] * n
            self.label[slots] = [
                -1 if b is None else self._id(self.label_ids, self.label_names, b[0]) for b in labels
            ]
            self.confidence[slots] = [math.nan if b is None else b[1] for b in labels]
            evicted = self.index.add(batch.vectors, slots, threads)
            self.flow[evicted] = -1  # a graph dropped whole (index.py): its other windows are gone too
            self.label[evicted] = -1
            self.written += n
            with self._masks_lock:
                for where, (mask, count) in self._masks.items():
                    for changed in (slots, evicted):
                        now = self._lets(where, changed)
                        count[0] += int(np.count_nonzero(now)) - int(np.count_nonzero(mask[changed]))
                        mask[changed] = now
                if len(self.flow_names) > 2 * self.capacity + MIN_NAMES:  # evicted flows' names pile up
                    self._compact()
        self.stored.inc(n)

    def _compact(self) -> None:
        """Drop the names no stored window uses (under both locks). A search running meanwhile may read a
        renumbered id against the old table for that moment: ``_matches`` skips ids out of range."""
        names, column = compacted(self.flow_names, self.flow)
        self.flow[...] = column
        self.flow_names, self.flow_ids = names, {name: i for i, name in enumerate(names)}
        names, column = compacted(self.label_names, self.label)
        self.label[...] = column
        self.label_names, self.label_ids = names, {name: i for i, name in enumerate(names)}
        self._masks.clear()  # they were made against the old ids

    @staticmethod
    def _id(ids: dict[str, int], names: list[str], name: str) -> int:
        i = ids.get(name)
        if i is None:
            i = ids[name] = len(names)
            names.append(name)
        return i

    async def _write(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                batch = self._queue.popleft()
                try:
                    await asyncio.to_thread(self.insert, batch)
                except Exception:  # a bad batch must not stop the memory
                    log.exception("pattern memory could not store %d windows", len(batch.flow_keys))

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued batch is stored (tests, the benchmark)."""
        async with asyncio.timeout(timeout_s):
            while self._queue or self._ready.is_set():
                await asyncio.sleep(0.005)
            with self._lock:  # the batch in the worker thread
                pass

    # -- asking it -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def search(self, vectors: np.ndarray, k: int, where: PatternFilter | None = None) -> list[list[Match]]:
        """The ``k`` stored windows nearest each query embedding (q, E), nearest first."""
        self.searches.inc(len(vectors))
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(self) == 0:
            return [[] for _ in vectors]
        if where is None or where.empty:
            slots, distances = self.index.search(vectors, k)
            return [self._matches(s, d) for s, d in zip(slots, distances, strict=True)]
        allowed, count = self._mask(where)
        if count == 0:
            return [[] for _ in vectors]
        if count < EXACT_BELOW:  # few: exact, over just them
            chosen = np.flatnonzero(allowed)
            stored = self.embedding[chosen]  # (m, E)
            d = 2.0 - 2.0 * (vectors @ stored.T)  # unit vectors: |a - b|^2 = 2 - 2 a.b
            kk = min(k, len(chosen))
            top = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            out = []
            for row, cand in zip(d, top, strict=True):
                order = cand[np.argsort(row[cand], kind="stable")]
                out.append(self._matches(chosen[order], np.maximum(row[order], 0.0)))
            return out
        out = []
        share = count / max(len(self), 1)
        for vector in vectors[:, None]:
            if share >= BROAD:  # enough pass: the plain search asked for enough more, those kept
                s, dist = self.index.search(vector, min(len(self), math.ceil(2 * k / share) + k))
                keep = allowed[s[0]]
                if int(keep.sum()) >= min(k, count):
                    out.append(self._matches(s[0][keep][:k], dist[0][keep][:k]))
                    continue
            s, dist = self.index.search_where(vector, k, allowed)  # the graph, skipping the others
            out.append(self._matches(s[0], dist[0]))
        return out

    def _mask(self, where: PatternFilter) -> tuple[np.ndarray, int]:
        """(capacity,) bool: the stored slots that ``where`` lets through, and how many; kept for the
        ``MASKS`` filters asked most recently, ``insert`` updating them."""
        with self._masks_lock:  # an insert updates the kept masks from the slots it wrote
            kept = self._masks.get(where)
            if kept is None:
                mask = self._lets(where, slice(None))
                kept = self._masks[where] = (mask, [int(np.count_nonzero(mask))])
                if len(self._masks) > MASKS:
                    self._masks.popitem(last=False)
            self._masks.move_to_end(where)
            return kept[0], kept[1][0]

    def _lets(self, where: PatternFilter, slots: slice | np.ndarray) -> np.ndarray:
        """Whether ``where`` lets the windows at ``slots`` through (empty slots never)."""
        allowed = self.flow[slots] >= 0
        if where.pattern_ids is not None:
            ids = [self.label_ids[p] for p in where.pattern_ids if p in self.label_ids]
            allowed &= np.isin(self.label[slots], ids) if ids else False
        if where.min_confidence is not None:
            allowed &= self.confidence[slots] >= where.min_confidence  # NaN (none given) is never >=
        if where.flow_key is not None:
            allowed &= self.flow[slots] == self.flow_ids.get(where.flow_key, -2)
        return allowed

    def _matches(self, slots: np.ndarray, distances: np.ndarray) -> list[Match]:
        out = []
        flow_names, label_names = self.flow_names, self.label_names
        for slot, distance in zip(slots.tolist(), distances.tolist(), strict=True):
            flow = int(self.flow[slot])
            label = int(self.label[slot])
            if not 0 <= flow < len(flow_names) or label >= len(label_names):
                continue  # an empty slot, or one renumbered by a compaction this moment
            confidence = float(self.confidence[slot])
            out.append(
                Match(
                    slot=slot,
                    flow_key=flow_names[flow],
                    timestamp=int(self.timestamp[slot]),
                    distance=float(distance),
                    pattern_id=None if label < 0 else label_names[label],
                    confidence=None if math.isnan(confidence) else confidence,
                    next=self.next[slot].tolist(),
                    next_scaled=self.next_scaled[slot],
                )
            )
        return out

    def summary(self, pattern_id: str) -> PatternSummary:
        """What followed the stored windows labelled ``pattern_id``, or the one window so named
        (``Match.name``: ``<flow_key>@<timestamp>``); ``UnknownPattern`` when none is."""
        label = self.label_ids.get(pattern_id)
        rows: np.ndarray = np.empty(0, np.int64)
        if label is not None:
            rows = np.flatnonzero((self.label == label) & (self.flow >= 0))
        elif (m := WINDOW_NAME.fullmatch(pattern_id)) is not None:
            flow = self.flow_ids.get(m[1], -2)
            rows = np.flatnonzero((self.flow == flow) & (self.timestamp == int(m[2])))
        if len(rows) == 0:
            raise UnknownPattern(pattern_id)
        change = self.change[rows].astype(np.float64)
        ts = self.timestamp[rows]
        return PatternSummary(
            pattern_id=pattern_id,
            count=len(rows),
            mean_latency_change_ms=float(change.mean()),
            latency_change_std_ms=float(change.std()),
            next_mean=self.next[rows].astype(np.float64).mean(axis=0).tolist(),
            first_timestamp=int(ts.min()),
            last_timestamp=int(ts.max()),
        )

    # -- lifetime --------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._writer = asyncio.get_running_loop().create_task(self._write(), name="cpe-patterns-writer")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer


def _tail(batch: Batch, keep: slice) -> Batch:
    return Batch(
        batch.vectors[keep],
        batch.flow_keys[keep],
        batch.timestamps[keep],
        batch.next[keep],
        batch.next_scaled[keep],
        batch.change[keep],
        batch.labels[keep] if batch.labels else [],
    )


def compacted(names: list[str], column: np.ndarray) -> tuple[list[str], np.ndarray]:
    """``names`` less those that no entry of ``column`` (ids, -1 for none) uses, and ``column`` renumbered."""
    used = np.unique(column[column >= 0])
    if len(used) == len(names):
        return names, column
    remap = np.full(len(names) + 1, -1, np.int32)  # the last entry maps -1 to -1
    remap[used] = np.arange(len(used), dtype=np.int32)
    return [names[i] for i in used.tolist()], remap[column]
