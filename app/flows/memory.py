"""The in-process flow store: each flow's window a row of preallocated ring arrays, idle flows expiring.

Bounded: at most ``max_flows`` flows (a batch that would start more is refused whole, ``FlowsFull``),
each holding ``window`` contexts. A flow owns a slot: row ``slot`` of ``timestamps`` (flows, window),
``features`` (flows, window, D) and ``imputed``, used as a ring (``head`` is where its next context
goes). A batch is applied with a few numpy operations per pass rather than per context: the contexts
are ranked within their flow (a flow's first in the batch, its second, ...), and each rank, at most one
context per flow, is checked against the flows' newest timestamps, imputed and written at once. The
arrays grow by doubling up to ``max_flows``; slots of expired or deleted flows are reused.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence

import numpy as np

from app.flows.base import (
    APPLIED,
    DUPLICATE,
    FEATURE_DEFAULTS,
    LATE,
    BatchApplied,
    ContextBatch,
    FlowsFull,
    FlowStore,
    FlowWindow,
    WindowBlock,
)
from app.schemas import D

_DEFAULTS = np.asarray(FEATURE_DEFAULTS, dtype=np.float32)
_MIN_SLOTS = 1024


class MemoryFlows(FlowStore):
    """Flow windows in this process (``memory://``): nothing external, lost with the process."""

    def __init__(
        self,
        *,
        window: int = 64,
        ttl_ms: int = 3_600_000,
        max_flows: int = 100_000,
        retry_after_s: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_size, self.ttl_ms, self.max_flows = window, ttl_ms, max_flows
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._slots: dict[str, int] = {}  # flow_key -> its slot
        self._keys: list[str | None] = []  # slot -> flow_key (None: free)
        self._free: list[int] = []
        w = window
        self._ts = np.zeros((0, w), dtype=np.int64)
        self._features = np.zeros((0, w, D), dtype=np.float32)
        self._imputed = np.zeros((0, w), dtype=np.uint8)
        self._n = np.zeros(0, dtype=np.int64)  # contexts in the window
        self._head = np.zeros(0, dtype=np.int64)  # ring row of the next context
        self._newest = np.zeros(0, dtype=np.int64)  # newest timestamp (valid where n > 0)
        self._observations = np.zeros(0, dtype=np.int64)  # contexts ever applied
        self._seen = np.zeros(0, dtype=np.float64)  # clock of the last update; +inf on a free slot
        self._routes: dict[int, str] = {}
        self._pending: dict[int, str] = {}  # a SimilarityResult's pattern, for the flow's next context
        self._patterns: dict[int, list[str | None]] = {}  # ring-aligned; made with a flow's first pattern
        self._grow(1)

    # -- slots --------------------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        old = len(self._keys)
        size = max(_MIN_SLOTS, old)
        while size < need:
            size *= 2
        size = min(size, max(self.max_flows, need))
        if size <= old:
            return
        extra = size - old

        def grown(a: np.ndarray, fill: float = 0) -> np.ndarray:
            more = np.full((extra, *a.shape[1:]), fill, dtype=a.dtype)
            return np.concatenate((a, more))

        self._ts, self._features, self._imputed = grown(self._ts), grown(self._features), grown(self._imputed)
        self._n, self._head, self._newest = grown(self._n), grown(self._head), grown(self._newest)
        self._observations, self._seen = grown(self._observations), grown(self._seen, np.inf)
        self._keys += [None] * extra
        self._free.extend(range(size - 1, old - 1, -1))  # lowest slots first

    def _allocate(self, flow_keys: Sequence[str], now: float) -> None:
        if len(self._free) < len(flow_keys):
            self._grow(len(self._slots) + len(flow_keys))
        for key in flow_keys:
            slot = self._free.pop()
            self._slots[key] = slot
            self._keys[slot] = key
            self._n[slot] = self._head[slot] = self._observations[slot] = 0
            self._seen[slot] = now

    def _release(self, slot: int) -> None:
        key = self._keys[slot]
        assert key is not None, f"slot {slot} is free already"
        del self._slots[key]
        self._keys[slot] = None
        self._seen[slot] = np.inf
        self._n[slot] = 0
        self._routes.pop(slot, None)
        self._pending.pop(slot, None)
        self._patterns.pop(slot, None)
        self._free.append(slot)

    def _expire(self) -> float:
        """Forget the flows idle past the TTL; returns the clock."""
        now = self._clock()
        if self._slots:
            for slot in np.flatnonzero(self._seen <= now - self.ttl_ms / 1000.0).tolist():
                self._release(slot)
        return now

    def _slots_of(self, flow_keys: Sequence[str]) -> np.ndarray:
        """(N,) slot of each flow, -1 where the store has none."""
        get = self._slots.get
        return np.fromiter((get(k, -1) for k in flow_keys), np.int64, len(flow_keys))

    # -- the interface ------------------------------------------------------------------------------
    async def append_batch(self, batch: ContextBatch) -> BatchApplied:
        now = self._expire()
        keys = batch.flow_keys
        slots = self._slots_of(keys)
        unknown = slots < 0
        if unknown.any():
            new = list(dict.fromkeys(keys[i] for i in np.flatnonzero(unknown).tolist()))
            if len(self._slots) + len(new) > self.max_flows:
                raise FlowsFull(
                    f"the flow store holds {len(self._slots)} flows of at most {self.max_flows} "
                    f"(CPE_MAX_FLOWS); this batch would start {len(new)} more",
                    self.retry_after_s,
                )
            self._allocate(new, now)
            slots = self._slots_of(keys)
        n = len(keys)
        statuses = np.zeros(n, dtype=np.uint8)
        imputed = np.zeros(n, dtype=np.uint8)
        for rank in _ranks(slots):
            self._apply(batch, rank, slots[rank], statuses, imputed)
        touched = np.unique(slots)
        self._seen[touched] = now
        applied = np.flatnonzero(statuses == APPLIED)
        flows = [keys[i] for i in applied.tolist()]
        if len(flows) > len(touched):
            flows = list(dict.fromkeys(flows))
        return BatchApplied(statuses, imputed, flows)

    def _apply(
        self, batch: ContextBatch, idx: np.ndarray, slots: np.ndarray, statuses: np.ndarray, out: np.ndarray
    ) -> None:
        """Apply contexts ``idx`` of ``batch``, of distinct flows (``slots``), in one pass."""
        ts = batch.timestamps[idx]
        n, newest = self._n[slots], self._newest[slots]
        had = n > 0
        late = had & (ts < newest)
        duplicate = had & (ts == newest)
        statuses[idx[late]] = LATE
        statuses[idx[duplicate]] = DUPLICATE
        ok = ~(late | duplicate)
        if not ok.all():
            idx, slots, ts, n, had = idx[ok], slots[ok], ts[ok], n[ok], had[ok]
        if not len(idx):
            return
        w = self.window_size
        head = self._head[slots]
        features = batch.features[idx]
        missing = np.isnan(features)
        masks = np.zeros(len(idx), dtype=np.uint8)
        if missing.any():
            previous = np.where(had[:, None], self._features[slots, (head - 1) % w], _DEFAULTS)
            features = np.where(missing, previous, features)
            masks = np.packbits(missing, axis=1, bitorder="little")[:, 0]
            batch.features[idx] = features
            out[idx] = masks
        self._ts[slots, head] = ts
        self._features[slots, head] = features
        self._imputed[slots, head] = masks
        self._head[slots] = (head + 1) % w
        self._n[slots] = np.minimum(n + 1, w)
        self._newest[slots] = ts
        self._observations[slots] += 1
        if batch.route_ids is not None:
            routes = batch.route_ids
            for i, slot in zip(idx.tolist(), slots.tolist(), strict=True):
                if routes[i] is not None:
                    self._routes[slot] = routes[i]
        if batch.pattern_ids is not None or self._pending:
            self._attach(batch, idx, slots, head)

    def _attach(self, batch: ContextBatch, idx: np.ndarray, slots: np.ndarray, head: np.ndarray) -> None:
        """The pattern ids of applied contexts: their own, else the flow's pending one."""
        if batch.pattern_ids is None:
            batch.pattern_ids = [None] * len(batch)
        patterns, pending = batch.pattern_ids, self._pending
        for i, slot, row in zip(idx.tolist(), slots.tolist(), head.tolist(), strict=True):
            pattern = patterns[i]
            if pattern is None and slot in pending:
                pattern = patterns[i] = pending.pop(slot)
            ring = self._patterns.get(slot)
            if ring is None and pattern is not None:
                ring = self._patterns[slot] = [None] * self.window_size
            if ring is not None:
                ring[row] = pattern

    async def attach_patterns(self, patterns: Sequence[tuple[str, str]]) -> None:
        now = self._expire()
        for flow_key, pattern_id in patterns:
            slot = self._slots.get(flow_key)
            if slot is None:
                if len(self._slots) >= self.max_flows:
                    raise FlowsFull(
                        f"the flow store holds {self.max_flows} flows (CPE_MAX_FLOWS)", self.retry_after_s
                    )
                self._allocate([flow_key], now)  # its first context takes the pattern
                slot = self._slots[flow_key]
            self._pending[slot] = pattern_id
            self._seen[slot] = now

    async def windows(self, flow_keys: Sequence[str]) -> list[FlowWindow | None]:
        block = await self.window_block(flow_keys)
        return [block.window(i) for i in range(len(flow_keys))]

    async def window_block(self, flow_keys: Sequence[str], length: int | None = None) -> WindowBlock:
        self._expire()
        slots = self._slots_of(flow_keys)
        live = slots >= 0
        safe = np.where(live, slots, 0)
        w = self.window_size
        length = w if length is None else min(length, w)
        lengths = np.minimum(np.where(live, self._n[safe], 0), length)
        # right-aligned: the last column holds each flow's newest context (ring row head-1)
        rows = (self._head[safe][:, None] + np.arange(w - length, w)) % w
        pick = (safe[:, None], rows)
        routes = [self._routes.get(s) for s in slots.tolist()] if self._routes else None
        patterns = None
        if self._patterns:
            patterns = []
            for s, r in zip(slots.tolist(), rows.tolist(), strict=True):
                ring = self._patterns.get(s)
                patterns.append(None if ring is None else [ring[j] for j in r])
        return WindowBlock(
            flow_keys=list(flow_keys),
            lengths=lengths,
            timestamps=self._ts[pick],
            features=self._features[pick],
            imputed=self._imputed[pick],
            observations=np.where(live, self._observations[safe], 0),
            route_ids=routes,
            pattern_ids=patterns,
        )

    async def flows(self, after: str | None, limit: int) -> list[str]:
        self._expire()
        n = self._n
        keys = (k for k, s in self._slots.items() if n[s] and (after is None or k > after))
        return heapq.nsmallest(limit, keys)

    async def count(self) -> int:
        self._expire()
        return len(self._slots)

    async def delete(self, flow_key: str) -> bool:
        slot = self._slots.get(flow_key)
        if slot is None:
            return False
        self._release(slot)
        return True


def _ranks(slots: np.ndarray) -> list[np.ndarray]:
    """Positions of the batch's contexts by rank within their flow: the positions of each flow's first
    context, then of each flow's second, ...; in batch order within a rank."""
    n = len(slots)
    order = np.argsort(slots, kind="stable")
    ordered = slots[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    if starts.all():  # the usual case: one context per flow
        return [np.arange(n)]
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - first
    return [np.flatnonzero(rank == r) for r in range(int(rank.max()) + 1)]
