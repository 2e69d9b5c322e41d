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
from typing import Self

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


class FlowStore(abc.ABC):
    """Each flow's last ``window_size`` contexts; flows idle for ``ttl_ms`` expire. Used as ``async with``."""

    window_size: int  # contexts kept per flow
    ttl_ms: int

    @property
    def problem(self) -> str | None:
        """Why the store does not work right now (for /readyz), or None."""
        return None

    @abc.abstractmethod
    async def append(self, contexts: Sequence[FlowContext]) -> Appended:
        """Apply ``contexts`` (any flows, any order: each flow's are applied in the order given).

        Raises ``FlowsUnavailable`` (nothing applied) or ``FlowsFull`` (nothing applied)."""

    @abc.abstractmethod
    async def attach_patterns(self, patterns: Sequence[tuple[str, str]]) -> None:
        """Remember (flow_key, pattern_id) pairs: each flow's next context that names none gets it."""

    @abc.abstractmethod
    async def windows(self, flow_keys: Sequence[str]) -> list[FlowWindow | None]:
        """The windows of ``flow_keys``, in order; None for a flow with no context (unknown or expired)."""

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
