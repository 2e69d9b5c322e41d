"""Server-side flow state: the interface every flow store speaks, and the types it takes and answers.

A flow's window is its last ``window`` contexts, timestamps strictly increasing. The rules that keep a
window sound whatever order observations arrive in, and from however many replicas, are the store's:

- a context older than the flow's newest is ``late``, one at the same moment a ``duplicate``: counted,
  not applied (so a redelivered observation is applied once: ingest is idempotent on (flow, timestamp));
- a missing feature (NaN in ``features``) takes the flow's newest value, or the schema default for a new
  flow, and is marked in the context's ``imputed`` bit mask;
- a pattern named by a ``SimilarityResult`` waits on the flow and is attached to its next context that
  names none itself.

``create_flow_store(url)`` picks the backend by scheme: ``memory://`` (this process; bounded by
``max_flows``) or ``redis://`` / ``redis+cluster://`` (windows kept in Redis itself, applied by a Lua
script; every replica sees the same windows; see ``app/flows/redis.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from app.schemas import D

# What a new flow's missing feature starts from: nothing measured yet is nothing at all.
FEATURE_DEFAULTS: tuple[float, ...] = (0.0,) * D

APPLIED, LATE, DUPLICATE = 0, 1, 2  # what became of one context


class FlowsUnavailable(Exception):
    """The flow store cannot be reached: nothing was applied; ingest answers 503 + Retry-After."""

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class FlowsFull(Exception):
    """The in-process store holds ``max_flows`` flows and the batch would start new ones: 429 + Retry-After.

    Nothing of the batch was applied. Room comes back as idle flows expire (or are deleted)."""

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class FlowContext:
    """One context of one flow, as ingest hands it to the store and the store hands back what it applied.

    Before it is applied ``features`` may hold NaN for a feature the observation did not carry; the
    applied context has every feature, and ``imputed`` has bit i set where feature i was filled in.
    """

    flow_key: str  # 64 lowercase hex characters
    timestamp: int  # ms since the epoch
    features: np.ndarray  # (D,) float32
    route_id: str | None = None
    pattern_id: str | None = None
    imputed: int = 0  # bit i: feature i was missing and filled in

    def missing_mask(self) -> int:
        """Bit i set where feature i is missing (NaN)."""
        return int(np.packbits(np.isnan(self.features), bitorder="little")[0])


@dataclass(slots=True)
class Appended:
    """What one ``append`` did: counts, and the contexts applied, per flow in timestamp order."""

    accepted: int = 0
    late: int = 0
    duplicates: int = 0
    imputed: int = 0  # applied contexts with at least one feature filled in
    applied: dict[str, list[FlowContext]] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)  # per context given: APPLIED, LATE or DUPLICATE

    def add(self, other: Appended) -> None:
        self.accepted += other.accepted
        self.late += other.late
        self.duplicates += other.duplicates
        self.imputed += other.imputed
        for flow_key, contexts in other.applied.items():
            self.applied.setdefault(flow_key, []).extend(contexts)
        self.statuses += other.statuses


@dataclass(slots=True)
class ContextBatch:
    """Contexts of any flows as columns: what ingest hands the store, one array per field.

    ``features`` may hold NaN for a feature an observation did not carry; ``append_batch`` fills those in
    place with what it imputed (as ``append`` fills a FlowContext's), and ``pattern_ids`` with the pending
    patterns it attached, so that the batch then holds what was applied.
    """

    flow_keys: list[str]  # (N,) 64 lowercase hex characters each
    timestamps: np.ndarray  # (N,) int64 ms since the epoch
    features: np.ndarray  # (N, D) float32
    route_ids: list[str | None] | None = None  # (N,); None when no context names a route
    pattern_ids: list[str | None] | None = None  # (N,); None when no context names a pattern

    def __len__(self) -> int:
        return len(self.flow_keys)

    @classmethod
    def of(cls, contexts: Sequence[FlowContext]) -> ContextBatch:
        """The columns of ``contexts``."""
        n = len(contexts)
        features = np.empty((n, D), dtype=np.float32)
        for i, c in enumerate(contexts):
            features[i] = c.features
        routes = [c.route_id for c in contexts]
        patterns = [c.pattern_id for c in contexts]
        return cls(
            [c.flow_key for c in contexts],
            np.fromiter((c.timestamp for c in contexts), np.int64, n),
            features,
            routes if any(r is not None for r in routes) else None,
            patterns if any(p is not None for p in patterns) else None,
        )

    @classmethod
    def join(cls, batches: Sequence[ContextBatch]) -> ContextBatch:
        """One batch of ``batches`` end to end, in order."""
        if len(batches) == 1:
            return batches[0]

        def column(name: str) -> list[str | None] | None:
            if all(getattr(b, name) is None for b in batches):
                return None
            out: list[str | None] = []
            for b in batches:
                values = getattr(b, name)
                out += values if values is not None else [None] * len(b)
            return out

        return cls(
            [k for b in batches for k in b.flow_keys],
            np.concatenate([b.timestamps for b in batches]),
            np.concatenate([b.features for b in batches]),
            column("route_ids"),
            column("pattern_ids"),
        )

    def context(self, i: int, imputed: int = 0) -> FlowContext:
        """Context ``i`` as an object."""
        route = None if self.route_ids is None else self.route_ids[i]
        pattern = None if self.pattern_ids is None else self.pattern_ids[i]
        return FlowContext(
            self.flow_keys[i], int(self.timestamps[i]), self.features[i].copy(), route, pattern, imputed
        )


@dataclass(slots=True)
class BatchApplied:
    """What one ``append_batch`` did, per context given: its status and, if applied, its imputed mask."""

    statuses: np.ndarray  # (N,) uint8: APPLIED, LATE or DUPLICATE
    imputed: np.ndarray  # (N,) uint8: bit i where feature i was filled in (0 unless applied)
    flows: list[str]  # the flows with at least one context applied, each once

    @property
    def accepted(self) -> int:
        return int(np.count_nonzero(self.statuses == APPLIED))

    @property
    def late(self) -> int:
        return int(np.count_nonzero(self.statuses == LATE))

    @property
    def duplicates(self) -> int:
        return int(np.count_nonzero(self.statuses == DUPLICATE))

    def appended(self, batch: ContextBatch) -> Appended:
        """The same outcome as ``append`` answers it, with the applied contexts as objects."""
        statuses, imputed = self.statuses.tolist(), self.imputed.tolist()
        result = Appended(statuses=statuses)
        for i, (status, mask) in enumerate(zip(statuses, imputed, strict=True)):
            if status == APPLIED:
                result.accepted += 1
                result.imputed += mask != 0
                result.applied.setdefault(batch.flow_keys[i], []).append(batch.context(i, mask))
            elif status == LATE:
                result.late += 1
            else:
                result.duplicates += 1
        return result


@dataclass(slots=True)
class FlowWindow:
    """One flow's window, oldest first."""

    flow_key: str
    timestamps: np.ndarray  # (T,) int64 ms, strictly increasing
    features: np.ndarray  # (T, D) float32
    imputed: np.ndarray  # (T,) uint8 bit masks
    pattern_ids: list[str | None]  # (T,)
    route_id: str | None
    observations: int  # contexts ever applied to the flow (its window keeps the last ``window``)

    def __len__(self) -> int:
        return len(self.timestamps)


@dataclass(slots=True)
class WindowBlock:
    """The windows of several flows as arrays, right-aligned: column L-1 holds each flow's newest context,
    and flow i's window is its last ``lengths[i]`` columns (the columns before them are meaningless).

    What continuous prediction reads: a round's windows in a few arrays rather than an object each.
    """

    flow_keys: list[str]  # (B,)
    lengths: np.ndarray  # (B,) int64 contexts in each window; 0: no such flow (unknown or expired)
    timestamps: np.ndarray  # (B, L) int64 ms
    features: np.ndarray  # (B, L, D) float32
    imputed: np.ndarray  # (B, L) uint8 bit masks
    observations: np.ndarray  # (B,) int64 contexts ever applied to each flow
    route_ids: list[str | None] | None = None  # (B,); None: no flow has one
    pattern_ids: list[list[str | None] | None] | None = None  # (B,) of (L,); None: no flow has one

    def __len__(self) -> int:
        return len(self.flow_keys)

    def window(self, i: int) -> FlowWindow | None:
        """Flow i's window as an object (a copy), or None when there is no such flow."""
        n = int(self.lengths[i])
        if not n:
            return None
        patterns = None if self.pattern_ids is None else self.pattern_ids[i]
        return FlowWindow(
            flow_key=self.flow_keys[i],
            timestamps=self.timestamps[i, -n:].copy(),
            features=self.features[i, -n:].copy(),
            imputed=self.imputed[i, -n:].copy(),
            pattern_ids=[None] * n if patterns is None else patterns[-n:],
            route_id=None if self.route_ids is None else self.route_ids[i],
            observations=int(self.observations[i]),
        )

    def take(self, rows: np.ndarray | slice) -> WindowBlock:
        """The block of flows ``rows`` (indices, in that order; or a slice, whose arrays are views)."""

        def pick(items: list[Any]) -> list[Any]:
            return items[rows] if isinstance(rows, slice) else [items[i] for i in rows.tolist()]

        return WindowBlock(
            pick(self.flow_keys),
            self.lengths[rows],
            self.timestamps[rows],
            self.features[rows],
            self.imputed[rows],
            self.observations[rows],
            None if self.route_ids is None else pick(self.route_ids),
            None if self.pattern_ids is None else pick(self.pattern_ids),
        )

    @classmethod
    def of(cls, flow_keys: Sequence[str], windows: Sequence[FlowWindow | None], length: int) -> WindowBlock:
        """The block of ``windows`` (each at most ``length`` contexts), None for a flow that has none."""
        b = len(flow_keys)
        block = cls(
            list(flow_keys),
            np.zeros(b, dtype=np.int64),
            np.zeros((b, length), dtype=np.int64),
            np.zeros((b, length, D), dtype=np.float32),
            np.zeros((b, length), dtype=np.uint8),
            np.zeros(b, dtype=np.int64),
        )
        routes: list[str | None] = [None] * b
        patterns: list[list[str | None] | None] = [None] * b
        for i, w in enumerate(windows):
            if w is None:
                continue
            n = min(len(w), length)
            block.lengths[i], block.observations[i] = n, w.observations
            block.timestamps[i, length - n :] = w.timestamps[-n:]
            block.features[i, length - n :] = w.features[-n:]
            block.imputed[i, length - n :] = w.imputed[-n:]
            routes[i] = w.route_id
            if any(p is not None for p in w.pattern_ids):
                pad: list[str | None] = [None] * (length - n)
                patterns[i] = pad + list(w.pattern_ids[-n:])
        if any(r is not None for r in routes):
            block.route_ids = routes
        if any(p is not None for p in patterns):
            block.pattern_ids = patterns
        return block


class FlowStore(abc.ABC):
    """Each flow's last ``window_size`` contexts; flows idle for ``ttl_ms`` expire. Used as ``async with``."""

    window_size: int  # contexts kept per flow
    ttl_ms: int

    @property
    def problem(self) -> str | None:
        """Why the store does not work right now (for /readyz), or None."""
        return None

    async def check(self) -> str | None:
        """``problem`` as of now: a store that can be out of reach asks it (/readyz calls this)."""
        return self.problem

    async def append(self, contexts: Sequence[FlowContext]) -> Appended:
        """Apply ``contexts`` (any flows, any order: each flow's are applied in the order given).

        Raises ``FlowsUnavailable`` (nothing applied) or ``FlowsFull`` (nothing applied)."""
        batch = ContextBatch.of(contexts)
        return (await self.append_batch(batch)).appended(batch)

    @abc.abstractmethod
    async def append_batch(self, batch: ContextBatch) -> BatchApplied:
        """``append`` of contexts as columns: the path ingest takes. Fills ``batch``'s missing features and
        pending patterns in place with what was applied.

        Raises ``FlowsUnavailable`` (nothing applied) or ``FlowsFull`` (nothing applied)."""

    @abc.abstractmethod
    async def attach_patterns(self, patterns: Sequence[tuple[str, str]]) -> None:
        """Remember (flow_key, pattern_id) pairs: each flow's next context that names none gets it."""

    @abc.abstractmethod
    async def windows(self, flow_keys: Sequence[str]) -> list[FlowWindow | None]:
        """The windows of ``flow_keys``, in order; None for a flow with no context (unknown or expired)."""

    async def window_block(self, flow_keys: Sequence[str], length: int | None = None) -> WindowBlock:
        """The windows of ``flow_keys`` as one block (``windows`` as arrays; a store may read them so),
        each cut to its newest ``length`` contexts (None: the whole window)."""
        width = self.window_size if length is None else min(length, self.window_size)
        return WindowBlock.of(flow_keys, await self.windows(flow_keys), width)

    async def window(self, flow_key: str) -> FlowWindow | None:
        """One flow's window, or None."""
        [found] = await self.windows([flow_key])
        return found

    @abc.abstractmethod
    async def flows(self, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` flow keys after ``after``, in order: a stable page even while flows change."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many flows the store holds (Redis: an upper bound until expired flows are pruned)."""

    @abc.abstractmethod
    async def delete(self, flow_key: str) -> bool:
        """Forget a flow; False when there was none."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None
