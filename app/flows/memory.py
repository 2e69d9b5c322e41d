"""The in-process flow store: each flow's window in three small numpy arrays, idle flows expiring.

Bounded: at most ``max_flows`` flows (a batch that would start more is refused whole, ``FlowsFull``),
each holding ``window`` contexts. Flows are kept in the order of their last update, so that expiry pops
only the flows that are due, never walks them all.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from app.flows.base import FEATURE_DEFAULTS, Appended, FlowContext, FlowsFull, FlowStore, FlowWindow
from app.schemas import D

_DEFAULTS = np.asarray(FEATURE_DEFAULTS, dtype=np.float32)


class _Flow:
    """One flow's window, oldest first in rows ``[0, n)``."""

    __slots__ = (
        "features",
        "imputed",
        "n",
        "observations",
        "pattern_ids",
        "pending",
        "route_id",
        "timestamps",
    )

    def __init__(self, window: int) -> None:
        self.timestamps = np.zeros(window, dtype=np.int64)
        self.features = np.zeros((window, D), dtype=np.float32)
        self.imputed = np.zeros(window, dtype=np.uint8)
        self.pattern_ids: list[str | None] | None = None  # made with the first pattern: most flows have none
        self.n = 0
        self.observations = 0
        self.route_id: str | None = None
        self.pending: str | None = None  # a SimilarityResult's pattern, for the next context

    def apply(self, context: FlowContext) -> int:
        """Apply one context: 0 applied, 1 late, 2 duplicate. Fills in ``context``'s missing features."""
        n = self.n
        if n:
            newest = int(self.timestamps[n - 1])
            if context.timestamp < newest:
                return 1
            if context.timestamp == newest:
                return 2
        features = context.features
        missing = np.isnan(features)
        if missing.any():
            features[missing] = (self.features[n - 1] if n else _DEFAULTS)[missing]
            context.imputed = int(np.packbits(missing, bitorder="little")[0])
        if context.pattern_id is None and self.pending is not None:
            context.pattern_id, self.pending = self.pending, None
        window = len(self.timestamps)
        if n == window:  # full: the oldest goes
            self.timestamps[:-1] = self.timestamps[1:]
            self.features[:-1] = self.features[1:]
            self.imputed[:-1] = self.imputed[1:]
            if self.pattern_ids is not None:
                del self.pattern_ids[0]
                self.pattern_ids.append(None)
            n -= 1
        self.timestamps[n] = context.timestamp
        self.features[n] = features
        self.imputed[n] = context.imputed
        if context.pattern_id is not None and self.pattern_ids is None:
            self.pattern_ids = [None] * window
        if self.pattern_ids is not None:
            self.pattern_ids[n] = context.pattern_id
        if context.route_id is not None:
            self.route_id = context.route_id
        self.n = n + 1
        self.observations += 1
        return 0

    def snapshot(self, flow_key: str) -> FlowWindow:
        n = self.n
        return FlowWindow(
            flow_key=flow_key,
            timestamps=self.timestamps[:n].copy(),
            features=self.features[:n].copy(),
            imputed=self.imputed[:n].copy(),
            pattern_ids=[None] * n if self.pattern_ids is None else self.pattern_ids[:n],
            route_id=self.route_id,
            observations=self.observations,
        )


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
        self._flows: OrderedDict[str, _Flow] = OrderedDict()
        self._seen: dict[str, float] = {}  # flow_key -> clock of its last update

    def _expire(self) -> None:
        deadline = self._clock() - self.ttl_ms / 1000.0
        flows, seen = self._flows, self._seen
        while flows:
            oldest = next(iter(flows))
            if seen[oldest] > deadline:
                break
            del flows[oldest], seen[oldest]

    async def append(self, contexts: Sequence[FlowContext]) -> Appended:
        self._expire()
        flows = self._flows
        new = {c.flow_key for c in contexts if c.flow_key not in flows}
        if len(flows) + len(new) > self.max_flows:
            raise FlowsFull(
                f"the flow store holds {len(flows)} flows of at most {self.max_flows} (CPE_MAX_FLOWS); "
                f"this batch would start {len(new)} more",
                self.retry_after_s,
            )
        result = Appended()
        now = self._clock()
        for context in contexts:
            flow = flows.get(context.flow_key)
            if flow is None:
                flow = flows[context.flow_key] = _Flow(self.window_size)
            status = flow.apply(context)
            result.statuses.append(status)
            if status == 0:
                result.accepted += 1
                result.imputed += context.imputed != 0
                result.applied.setdefault(context.flow_key, []).append(context)
            elif status == 1:
                result.late += 1
            else:
                result.duplicates += 1
        for flow_key in {c.flow_key for c in contexts}:
            flows.move_to_end(flow_key)
            self._seen[flow_key] = now
        return result

    async def attach_patterns(self, patterns: Sequence[tuple[str, str]]) -> None:
        self._expire()
        now = self._clock()
        for flow_key, pattern_id in patterns:
            flow = self._flows.get(flow_key)
            if flow is None:
                if len(self._flows) >= self.max_flows:
                    raise FlowsFull(
                        f"the flow store holds {self.max_flows} flows (CPE_MAX_FLOWS)", self.retry_after_s
                    )
                flow = self._flows[flow_key] = _Flow(self.window_size)  # its first context takes the pattern
            flow.pending = pattern_id
            self._flows.move_to_end(flow_key)
            self._seen[flow_key] = now

    async def windows(self, flow_keys: Sequence[str]) -> list[FlowWindow | None]:
        self._expire()
        found = []
        for flow_key in flow_keys:
            flow = self._flows.get(flow_key)
            found.append(None if flow is None or flow.n == 0 else flow.snapshot(flow_key))
        return found

    async def flows(self, after: str | None, limit: int) -> list[str]:
        self._expire()
        flows = self._flows
        keys = (k for k, flow in flows.items() if flow.n and (after is None or k > after))
        return heapq.nsmallest(limit, keys)

    async def count(self) -> int:
        self._expire()
        return len(self._flows)

    async def delete(self, flow_key: str) -> bool:
        self._seen.pop(flow_key, None)
        return self._flows.pop(flow_key, None) is not None
