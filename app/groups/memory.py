"""Route groups in this process (``memory://``): nothing external, lost with the process."""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from app.groups.base import FlowOutlook, Group, GroupsFull, GroupState, GroupStore


class MemoryGroups(GroupStore):
    """At most ``max_groups`` groups; route outlooks forgotten ``ttl_ms`` after their last update."""

    def __init__(
        self,
        *,
        max_groups: int = 10_000,
        ttl_ms: int = 3_600_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_groups, self.ttl_ms = max_groups, ttl_ms
        self._clock = clock
        self._groups: dict[str, Group] = {}
        self._states: dict[str, GroupState] = {}
        # in order of last update, with its clock: expiry pops the due ones off the front, never walks all
        self._outlooks: OrderedDict[str, tuple[float, FlowOutlook]] = OrderedDict()

    async def put(self, group: Group) -> bool:
        new = group.group_id not in self._groups
        if new and len(self._groups) >= self.max_groups:
            raise GroupsFull(f"the store holds {len(self._groups)} groups of at most {self.max_groups}")
        self._groups[group.group_id] = group
        self._states.pop(group.group_id, None)
        return new

    async def get_many(self, group_ids: Sequence[str]) -> list[Group | None]:
        return [self._groups.get(group_id) for group_id in group_ids]

    async def delete(self, group_id: str) -> bool:
        self._states.pop(group_id, None)
        return self._groups.pop(group_id, None) is not None

    async def ids(self, after: str | None, limit: int) -> list[str]:
        return heapq.nsmallest(limit, (g for g in self._groups if after is None or g > after))

    async def count(self) -> int:
        return len(self._groups)

    def _expire(self) -> None:
        deadline = self._clock() - self.ttl_ms / 1000.0
        outlooks = self._outlooks
        while outlooks and next(iter(outlooks.values()))[0] <= deadline:
            outlooks.popitem(last=False)

    async def outlooks(self, flow_keys: Sequence[str]) -> list[FlowOutlook | None]:
        self._expire()
        found = []
        for key in flow_keys:
            entry = self._outlooks.get(key)
            found.append(None if entry is None else entry[1])
        return found

    async def put_outlooks(self, outlooks: Mapping[str, FlowOutlook]) -> None:
        now, stored = self._clock(), self._outlooks
        for key, outlook in outlooks.items():
            stored[key] = (now, outlook)
            stored.move_to_end(key)
        self._expire()

    async def states(self, group_ids: Sequence[str]) -> list[GroupState | None]:
        return [self._states.get(group_id) for group_id in group_ids]

    async def put_states(self, states: Mapping[str, GroupState]) -> set[str]:
        kept = set()
        for group_id, state in states.items():
            stored = self._states.get(group_id)
            if group_id in self._groups and (0 if stored is None else stored.rankings) == state.rankings - 1:
                self._states[group_id] = state
                kept.add(group_id)
        return kept
