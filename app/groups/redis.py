"""Route groups kept in Redis, so that every replica ranks and answers every group, across restarts.

Keys (``<prefix>`` is CPE_GROUP_PREFIX):

- ``<prefix>g:<group_id>``: the group's definition, JSON, no expiry (groups are configuration);
- ``<prefix>ids``: a sorted set of the group ids (all scores 0, ordered by id) for paging and counting;
- ``<prefix>s:<group_id>``: the group's state (what was last published, the newest ranking), JSON;
- ``<prefix>o:<flow_key>``: a route flow's newest outlook, JSON, expiring with the flow (CPE_FLOW_TTL_MS).

A PUT writes the definition and drops the old state in one MULTI, so no replica ranks a new definition
against the old one's state. A state is written by a compare-and-set (``CAS_STATE``, a Lua script: atomic
in Redis) on the group's change version, its ``rankings``: only where the stored state is still the one
it was decided from, and the group still exists. Two replicas re-ranking one group from the same state
both decide; one writes, and only that one publishes the change; the other re-ranks on the newer state
(``app/groups/service.py``), where the change is no change any more. Durability is Redis's (``appendonly
yes`` keeps the groups through a restart of Redis).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from redis import exceptions as rex
from redis.asyncio import Redis

from app.groups.base import FlowOutlook, Group, GroupsFull, GroupState, GroupStore, GroupsUnavailable

PREFIX = "cpe:group:"
# KEYS: the group's definition, its state; ARGV: the version the new state was decided from, the new state.
# 1 when written; 0 when the stored state moved on (another replica re-ranked it) or the group is gone.
CAS_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local stored = redis.call('GET', KEYS[2])
local version = 0
if stored then version = tonumber(cjson.decode(stored)['rankings']) or 0 end
if version ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""
_UNAVAILABLE = (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError, OSError)


class RedisGroups(GroupStore):
    """Route groups in Redis (``redis://host:port/db``)."""

    def __init__(
        self,
        url: str,
        *,
        max_groups: int = 10_000,
        ttl_ms: int = 3_600_000,
        timeout_ms: int = 1_000,
        retry_after_s: int = 1,
        prefix: str = PREFIX,
        client: Redis | None = None,
    ) -> None:
        self.max_groups, self.ttl_ms, self.prefix = max_groups, ttl_ms, prefix
        self.retry_after_s = retry_after_s
        self.index = f"{prefix}ids"
        self._own = client is None
        if client is None:
            timeout = timeout_ms / 1000.0
            client = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.client: Any = client
        self._problem: str | None = None

    @property
    def problem(self) -> str | None:
        return self._problem

    async def __aexit__(self, *exc: object) -> None:
        if self._own:
            await self.client.aclose()

    def _failed(self, exc: BaseException) -> GroupsUnavailable:
        self._problem = f"the group store's Redis is unreachable: {type(exc).__name__}: {exc}"
        return GroupsUnavailable(self._problem, self.retry_after_s)

    async def _run(self, build: Any) -> list[Any]:
        """Run a pipeline that ``build(pipe)`` fills; ``GroupsUnavailable`` when Redis cannot be reached."""
        try:
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            results = list(await pipe.execute())
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from None
        self._problem = None
        return results

    def _group(self, group_id: str) -> str:
        return f"{self.prefix}g:{group_id}"

    def _state(self, group_id: str) -> str:
        return f"{self.prefix}s:{group_id}"

    def _outlook(self, flow_key: str) -> str:
        return f"{self.prefix}o:{flow_key}"

    async def put(self, group: Group) -> bool:
        [exists, count] = await self._run(
            lambda p: (p.exists(self._group(group.group_id)), p.zcard(self.index))
        )
        if not exists and count >= self.max_groups:
            raise GroupsFull(f"the store holds {count} groups of at most {self.max_groups}")
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self._group(group.group_id), orjson.dumps(group.as_dict()))
            pipe.delete(self._state(group.group_id))
            pipe.zadd(self.index, {group.group_id: 0})
            await pipe.execute()
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from None
        return not exists

    async def get_many(self, group_ids: Sequence[str]) -> list[Group | None]:
        if not group_ids:
            return []
        values = await self._run(lambda p: p.mget([self._group(g) for g in group_ids]))
        return [None if v is None else Group.from_dict(orjson.loads(v)) for v in values[0]]

    async def delete(self, group_id: str) -> bool:
        deleted, _, _ = await self._run(
            lambda p: (
                p.delete(self._group(group_id)),
                p.delete(self._state(group_id)),
                p.zrem(self.index, group_id),
            )
        )
        return int(deleted) > 0

    async def ids(self, after: str | None, limit: int) -> list[str]:
        start = "-" if after is None else f"({after}"
        [page] = await self._run(lambda p: p.zrangebylex(self.index, start, "+", 0, limit))
        return [g.decode() for g in page]

    async def count(self) -> int:
        [count] = await self._run(lambda p: p.zcard(self.index))
        return int(count)

    async def outlooks(self, flow_keys: Sequence[str]) -> list[FlowOutlook | None]:
        if not flow_keys:
            return []
        [values] = await self._run(lambda p: p.mget([self._outlook(k) for k in flow_keys]))
        return [None if v is None else FlowOutlook.from_dict(orjson.loads(v)) for v in values]

    async def put_outlooks(self, outlooks: Mapping[str, FlowOutlook]) -> None:
        if not outlooks:
            return

        def build(pipe: Any) -> None:
            for key, outlook in outlooks.items():
                pipe.set(self._outlook(key), orjson.dumps(outlook.as_dict()), px=self.ttl_ms)

        await self._run(build)

    async def states(self, group_ids: Sequence[str]) -> list[GroupState | None]:
        if not group_ids:
            return []
        [values] = await self._run(lambda p: p.mget([self._state(g) for g in group_ids]))
        return [None if v is None else GroupState.from_dict(orjson.loads(v)) for v in values]

    async def put_states(self, states: Mapping[str, GroupState]) -> set[str]:
        ids = list(states)
        if not ids:
            return set()

        def build(pipe: Any) -> None:
            for g in ids:
                state = states[g]
                new = orjson.dumps(state.as_dict())
                pipe.eval(CAS_STATE, 2, self._group(g), self._state(g), state.rankings - 1, new)

        written = await self._run(build)
        return {g for g, ok in zip(ids, written, strict=True) if int(ok) == 1}
