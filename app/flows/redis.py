"""Flow windows kept in Redis itself, so that every replica accepts and answers for every flow.

Each flow has two keys that share its hash tag (so they live in one slot of a Redis Cluster, and one
Lua script may touch both):

- ``<prefix>{<flow_key>}:w``, a sorted set: score = timestamp (ms), member = the context packed as
  ``<q`` timestamp, ``<8f`` features, one byte of imputed mask, then the pattern id (UTF-8), if any;
- ``<prefix>{<flow_key>}:m``, a hash: ``r`` the route id, ``n`` contexts ever applied, ``p`` a pattern
  waiting for the next context.

One script (``APPEND``) applies the contexts of a batch atomically, flow by flow: late and duplicate
rules against the newest timestamp, missing features from the newest context, the pending pattern, the
trim to the window and the expiry. Replicas racing on one flow are serialized by Redis, so out-of-order
and duplicate observations from anywhere never corrupt a window. One call takes up to FLOWS_PER_CALL
flows on one Redis, and the flows of one hash slot on a Cluster (a script may touch one slot only). It
needs no module: plain Redis 7.

``<prefix>index`` (a sorted set, all scores 0, ordered by flow key) lists the flows for paging; a flow
that expired leaves it when a listing finds it gone.

Durability is Redis's: with ``appendonly yes`` a write is in the AOF before Redis answers, so a 202 is
not lost when Redis is killed (``appendfsync everysec``: a crash of the machine loses up to a second).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from redis import exceptions as rex
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from app.flows.base import (
    FEATURE_DEFAULTS,
    BatchApplied,
    ContextBatch,
    FlowContext,
    FlowStore,
    FlowsUnavailable,
    FlowWindow,
    WindowBlock,
)
from app.schemas import D

log = logging.getLogger("cpe.flows")

PREFIX = "cpe:flow:"
_FIXED = struct.Struct(f"<q{D}fB")  # timestamp, features, imputed (or, on the way in, missing) mask
_ROW = np.dtype([("t", "<i8"), ("f", "<f4", (D,)), ("m", "u1")])
assert _ROW.itemsize == _FIXED.size
_CLUSTER_CONCURRENCY = 256  # scripts in flight at once on a Cluster
# Flows per script call on one Redis: one call holds Redis for its duration; this many keeps it short
FLOWS_PER_CALL = 256
_UNAVAILABLE = (rex.ConnectionError, rex.TimeoutError, rex.ClusterError, rex.BusyLoadingError, OSError)

# KEYS: each flow's window zset and meta hash. ARGV: window, ttl_ms, the packed forms of the call's contexts
# end to end (flow by flow, each flow's in order; _FIXED.size bytes each), each flow's count of contexts
# (little-endian uint32s), "1" when a route id per flow follows (else "0"), "1" when a pattern id per
# context follows (else "0"), then those. A few arguments per call rather than four per flow: the client
# encodes every argument on its own. Answers, per context in order: 1 late, 2 duplicate, 0 applied as
# sent, or the member stored when it differs from what was sent (features filled in, a pattern attached);
# then one string of a character per flow, "1" where the flow had no window before (a new flow).
APPEND = f"""
local size = {_FIXED.size}
local window, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local blob, counts = ARGV[3], ARGV[4]
local has_routes, has_patterns = ARGV[5] == '1', ARGV[6] == '1'
local nflows = #KEYS / 2
local patterns_at = 7
if has_routes then patterns_at = 7 + nflows end
local out, fresh = {{}}, {{}}
local c = 0
for f = 1, nflows do
  local wkey, mkey = KEYS[2 * f - 1], KEYS[2 * f]
  local n = struct.unpack('<I4', counts, 4 * (f - 1) + 1)
  local route = ''
  if has_routes then route = ARGV[6 + f] end
  local newest_ts, newest
  local last = redis.call('ZRANGE', wkey, -1, -1, 'WITHSCORES')
  if #last > 0 then newest, newest_ts = last[1], tonumber(last[2]) end
  if newest_ts == nil then fresh[f] = '1' else fresh[f] = '0' end
  local pending = redis.call('HGET', mkey, 'p')
  local used_pending = false
  local applied = 0
  for i = 0, n - 1 do
    local at = (c + i) * size
    local ts = struct.unpack('<i8', blob, at + 1)
    local pattern = ''
    if has_patterns then pattern = ARGV[patterns_at + c + i] end
    if newest_ts ~= nil and ts < newest_ts then
      out[#out + 1] = 1
    elseif newest_ts ~= nil and ts == newest_ts then
      out[#out + 1] = 2
    else
      local missing = string.byte(blob, at + size)
      local parts = {{string.sub(blob, at + 1, at + 8)}}
      for x = 0, {D - 1} do
        local a = 9 + 4 * x
        if newest ~= nil and bit.band(missing, bit.lshift(1, x)) ~= 0 then
          parts[#parts + 1] = string.sub(newest, a, a + 3)
        else
          parts[#parts + 1] = string.sub(blob, at + a, at + a + 3)
        end
      end
      parts[#parts + 1] = string.char(missing)
      if pattern == '' and pending and not used_pending then
        pattern, used_pending = pending, true
      end
      parts[#parts + 1] = pattern
      local member = table.concat(parts)
      redis.call('ZADD', wkey, ts, member)
      newest, newest_ts = member, ts
      applied = applied + 1
      if missing ~= 0 or pattern ~= '' then out[#out + 1] = member else out[#out + 1] = 0 end
    end
  end
  c = c + n
  if applied > 0 then
    redis.call('ZREMRANGEBYRANK', wkey, 0, -(window + 1))
    redis.call('HINCRBY', mkey, 'n', applied)
    if route ~= '' then redis.call('HSET', mkey, 'r', route) end
    if used_pending then redis.call('HDEL', mkey, 'p') end
    redis.call('PEXPIRE', wkey, ttl)
    redis.call('PEXPIRE', mkey, ttl)
  end
end
out[#out + 1] = table.concat(fresh)
return out
"""


# KEYS: each flow's window zset and meta hash. ARGV[1]: how many of the newest contexts to read. Answers,
# per flow: the fixed parts of its contexts end to end (oldest first), its route id or "", the count of its
# contexts ever applied, and its contexts' pattern ids (an empty list when none has one).
WINDOWS = f"""
local size = {_FIXED.size}
local span = tonumber(ARGV[1])
local out = {{}}
for k = 1, #KEYS, 2 do
  local members = redis.call('ZRANGE', KEYS[k], -span, -1)
  local meta = redis.call('HMGET', KEYS[k + 1], 'r', 'n')
  local fixed, patterns, named = {{}}, {{}}, false
  for i, m in ipairs(members) do
    fixed[i] = string.sub(m, 1, size)
    patterns[i] = string.sub(m, size + 1)
    if #m > size then named = true end
  end
  out[#out + 1] = table.concat(fixed)
  out[#out + 1] = meta[1] or ''
  out[#out + 1] = meta[2] or '0'
  if named then out[#out + 1] = patterns else out[#out + 1] = {{}} end
end
return out
"""


def _keys(prefix: str, flow_key: str) -> tuple[str, str]:
    return f"{prefix}{{{flow_key}}}:w", f"{prefix}{{{flow_key}}}:m"


def _pack_rows(batch: ContextBatch) -> np.ndarray:
    """The fixed part of every context of ``batch`` as packed rows (missing features as the defaults,
    marked in the mask)."""
    rows = np.empty(len(batch), dtype=_ROW)
    rows["t"] = batch.timestamps
    missing = np.isnan(batch.features)
    rows["f"] = np.where(missing, np.asarray(FEATURE_DEFAULTS, dtype=np.float32), batch.features)
    rows["m"] = np.packbits(missing, axis=1, bitorder="little")[:, 0]
    return rows


def _unpack(flow_key: str, member: bytes, route_id: str | None) -> FlowContext:
    timestamp, *features, imputed = _FIXED.unpack_from(member)
    pattern = member[_FIXED.size :].decode() or None
    return FlowContext(
        flow_key, timestamp, np.asarray(features, dtype=np.float32), route_id, pattern, imputed
    )


class RedisFlows(FlowStore):
    """Flow windows in Redis (``redis://host:port/db``) or a Redis Cluster (``redis+cluster://host:port``)."""

    def __init__(
        self,
        url: str,
        *,
        window: int = 64,
        ttl_ms: int = 3_600_000,
        timeout_ms: int = 1_000,
        retry_after_s: int = 1,
        prefix: str = PREFIX,
        client: Redis | RedisCluster | None = None,
    ) -> None:
        self.window_size, self.ttl_ms, self.prefix = window, ttl_ms, prefix
        self.retry_after_s = retry_after_s
        self.index = f"{prefix}index"
        self._own = client is None
        if client is None:
            timeout = timeout_ms / 1000.0
            options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            if url.startswith("redis+cluster://"):
                client = RedisCluster.from_url("redis://" + url.removeprefix("redis+cluster://"), **options)
            else:
                client = Redis.from_url(url, **options)
        self.client: Any = client  # Redis and RedisCluster share the commands used here
        self._sha: str | None = None
        self._shas: dict[str, str] = {}  # script -> its SHA1, once loaded
        self._problem: str | None = None

    @property
    def problem(self) -> str | None:
        return self._problem

    async def __aenter__(self) -> Self:
        try:
            await self._load_script()
            await self._check_durability()
        except _UNAVAILABLE as exc:  # start anyway: ingest answers 503 until Redis is back
            self._failed(exc)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own:
            await self.client.aclose()

    async def _load_script(self, script: str = APPEND) -> str:
        sha = str(await self.client.script_load(script))
        self._shas[script] = sha
        if script == APPEND:
            self._sha = sha
        return sha

    async def _check_durability(self) -> None:
        try:
            config = await self.client.config_get("appendonly")
        except rex.ResponseError:  # CONFIG renamed or refused (managed Redis): cannot tell
            return
        values = config.values() if isinstance(config, dict) else []
        if any(str(v) in ("no", "b'no'") or v == b"no" for v in values):
            log.warning(
                "flows: Redis runs without appendonly: acknowledged observations are lost if Redis dies; "
                "set appendonly yes"
            )

    async def check(self) -> str | None:
        """A PING (and the script, if Redis was out of reach at start): the problem now, or None."""
        try:
            await self.client.ping()
            if self._sha is None:
                await self._load_script()
        except _UNAVAILABLE as exc:
            self._failed(exc)
        else:
            self._problem = None
        return self._problem

    def _failed(self, exc: BaseException) -> FlowsUnavailable:
        problem = f"flow store (Redis) unreachable: {type(exc).__name__}: {exc}"
        if problem != self._problem:  # once per outage, not once per call or probe
            log.warning("flows: %s", problem)
        self._problem = problem
        return FlowsUnavailable(problem, self.retry_after_s)

    async def append_batch(self, batch: ContextBatch) -> BatchApplied:
        by_flow: dict[str, list[int]] = {}  # flow -> positions of its contexts in the batch
        for i, flow_key in enumerate(batch.flow_keys):
            by_flow.setdefault(flow_key, []).append(i)
        rows = _pack_rows(batch)
        groups = self._group(list(by_flow.items()))
        calls = [self._append_call(batch, rows, group) for group in groups]
        try:
            answers = await self._run_script(calls)
            fresh = [
                flow_key
                for group, answer in zip(groups, answers, strict=True)
                for (flow_key, _), new in zip(group, answer[-1], strict=True)
                if new == ord("1")
            ]
            if fresh:  # the index lists flows for paging: only new ones need adding
                await self.client.zadd(self.index, dict.fromkeys(fresh, 0))
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from None
        self._problem = None
        n = len(batch)
        statuses = np.zeros(n, dtype=np.uint8)
        imputed = np.zeros(n, dtype=np.uint8)
        applied: list[str] = []
        for group, answer in zip(groups, answers, strict=True):
            flat = iter(answer)
            for flow_key, positions in group:
                first = True
                for i in positions:
                    status = next(flat)
                    if status == 1 or status == 2:
                        statuses[i] = status
                        continue
                    if first:
                        applied.append(flow_key)
                        first = False
                    if status != 0:  # the member as stored: features filled in, or a pattern attached
                        context = _unpack(flow_key, status, None)
                        batch.features[i] = context.features
                        imputed[i] = context.imputed
                        if context.pattern_id is not None:
                            if batch.pattern_ids is None:
                                batch.pattern_ids = [None] * n
                            batch.pattern_ids[i] = context.pattern_id
        return BatchApplied(statuses, imputed, applied)

    def _append_call(
        self, batch: ContextBatch, rows: np.ndarray, group: list[tuple[str, list[int]]]
    ) -> tuple[list[str], list[Any]]:
        """One APPEND call's keys and arguments: the group's contexts packed in one string."""
        keys: list[str] = []
        order: list[int] = []
        for flow_key, positions in group:
            keys += _keys(self.prefix, flow_key)
            order += positions
        counts = np.fromiter((len(positions) for _, positions in group), "<u4", len(group))
        args: list[Any] = [self.window_size, self.ttl_ms, rows[order].tobytes(), counts.tobytes()]
        routes: list[str] = []
        if batch.route_ids is not None:
            given = batch.route_ids
            for _, positions in group:
                routes.append(
                    next((given[i] for i in reversed(positions) if given[i] is not None), None) or ""
                )
        patterns: list[str] = []
        if batch.pattern_ids is not None:
            patterns = [batch.pattern_ids[i] or "" for i in order]
        routes = routes if any(routes) else []
        patterns = patterns if any(patterns) else []
        return keys, [*args, "1" if routes else "0", "1" if patterns else "0", *routes, *patterns]

    def _group(self, flows: list[tuple[str, Any]]) -> list[list[tuple[str, Any]]]:
        """``flows`` (flow_key first) in groups of one script call each: up to FLOWS_PER_CALL on one Redis;
        on a Cluster one group per hash slot, since a script may only touch the keys of one slot."""
        if isinstance(self.client, RedisCluster):
            slots: dict[int, list[tuple[str, Any]]] = {}
            for flow in flows:
                slots.setdefault(self.client.keyslot(_keys(self.prefix, flow[0])[0]), []).append(flow)
            return list(slots.values())
        return [flows[start : start + FLOWS_PER_CALL] for start in range(0, len(flows), FLOWS_PER_CALL)]

    def _calls(
        self, flows: list[tuple[str, list[Any]]], head: list[Any]
    ) -> list[tuple[list[str], list[Any]]]:
        """Script calls for ``flows`` (flow_key, its arguments), grouped as ``_group`` says, each
        call's arguments ``head`` then the flows' own."""
        calls = []
        for group in self._group(flows):
            keys: list[str] = []
            args: list[Any] = list(head)
            for flow_key, flow_args in group:
                keys += _keys(self.prefix, flow_key)
                args += flow_args
            calls.append((keys, args))
        return calls

    async def _run_script(self, calls: list[tuple[list[str], list[Any]]], script: str = APPEND) -> list[Any]:
        """EVALSHA for each call: in one pipeline on one Redis; side by side on a Cluster (whose client
        pipelines no scripts). A node that lost its scripts (restarted) gets them again and only its calls
        are run again, so that nothing is applied twice."""
        sha = self._shas.get(script) or await self._load_script(script)
        answers: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            results = await self._evalsha(sha, [calls[i] for i in todo])
            retry = []
            for i, value in zip(todo, results, strict=True):
                if isinstance(value, rex.NoScriptError) and attempt == 0:
                    retry.append(i)
                elif isinstance(value, BaseException):
                    raise value
                else:
                    answers[i] = value
            if not retry:
                break
            sha = await self._load_script(script)
            todo = retry
        return answers

    async def _evalsha(self, sha: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        if isinstance(self.client, RedisCluster):
            cluster: Any = self.client  # its stubs type evalsha's answer as str or an awaitable
            results: list[Any] = []
            for start in range(0, len(calls), _CLUSTER_CONCURRENCY):
                results += await asyncio.gather(
                    *(
                        cluster.evalsha(sha, len(keys), *keys, *args)
                        for keys, args in calls[start : start + _CLUSTER_CONCURRENCY]
                    ),
                    return_exceptions=True,
                )
            return results
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def attach_patterns(self, patterns: Sequence[tuple[str, str]]) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for flow_key, pattern_id in patterns:
                _, mkey = _keys(self.prefix, flow_key)
                pipe.hset(mkey, "p", pattern_id)
                pipe.pexpire(mkey, self.ttl_ms)
            await pipe.execute()
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from None
        self._problem = None

    async def windows(self, flow_keys: Sequence[str]) -> list[FlowWindow | None]:
        block = await self.window_block(flow_keys)
        return [block.window(i) for i in range(len(flow_keys))]

    async def window_block(self, flow_keys: Sequence[str], length: int | None = None) -> WindowBlock:
        """The windows in one script call per FLOWS_PER_CALL flows (per hash slot on a Cluster): each flow's
        newest contexts come back as one string, read into the block's arrays in a few numpy calls."""
        width = self.window_size if length is None else min(length, self.window_size)
        keys = list(flow_keys)
        calls = self._calls([(k, []) for k in keys], [width])
        try:
            answers = await self._run_script(calls, WINDOWS)
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from None
        self._problem = None
        order = [wkey for call_keys, _ in calls for wkey in call_keys[::2]]  # as the calls took the flows
        position: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            position.setdefault(key, []).append(i)
        b = len(keys)
        blobs: list[bytes] = [b""] * b
        routes: list[str | None] = [None] * b
        counts = np.zeros(b, dtype=np.int64)
        patterns: list[list[str | None] | None] = [None] * b
        flat = [value for answer in answers for value in answer]
        prefix_len = len(self.prefix) + 1  # "<prefix>{"
        for j, wkey in enumerate(order):
            i = position[wkey[prefix_len:-3]].pop(0)  # "<prefix>{<flow_key>}:w"
            blob, route, count, named = flat[4 * j : 4 * j + 4]
            blobs[i] = blob
            routes[i] = route.decode() if route else None
            counts[i] = int(count)
            if named:
                patterns[i] = [p.decode() or None for p in named]
        return _block(keys, blobs, routes, counts, patterns, width)

    async def flows(self, after: str | None, limit: int) -> list[str]:
        start = "-" if after is None else f"({after}"
        keys: list[str] = []
        try:
            while len(keys) < limit:
                page = [k.decode() for k in await self.client.zrangebylex(self.index, start, "+", 0, limit)]
                if not page:
                    break
                pipe = self.client.pipeline(transaction=False)
                for flow_key in page:
                    pipe.exists(_keys(self.prefix, flow_key)[0])
                alive = await pipe.execute()
                gone = [k for k, a in zip(page, alive, strict=True) if not a]
                if gone:
                    await self.client.zrem(self.index, *gone)
                keys += [k for k, a in zip(page, alive, strict=True) if a]
                start = f"({page[-1]}"
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from None
        self._problem = None
        return keys[:limit]

    async def count(self) -> int:
        try:
            return int(await self.client.zcard(self.index))
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from None

    async def delete(self, flow_key: str) -> bool:
        try:
            wkey, mkey = _keys(self.prefix, flow_key)
            deleted = int(await self.client.delete(wkey, mkey))
            await self.client.zrem(self.index, flow_key)
        except _UNAVAILABLE as exc:
            raise self._failed(exc) from None
        return deleted > 0


def _block(
    keys: list[str],
    blobs: list[bytes],
    routes: list[str | None],
    counts: np.ndarray,
    patterns: list[list[str | None] | None],
    width: int,
) -> WindowBlock:
    """A right-aligned block of ``width`` columns from each flow's packed contexts (oldest first)."""
    b, size = len(keys), _FIXED.size
    lengths = np.fromiter((len(blob) // size for blob in blobs), np.int64, b)
    rows = np.frombuffer(b"".join(blobs), dtype=_ROW)
    flow = np.repeat(np.arange(b), lengths)
    starts = np.cumsum(lengths) - lengths
    column = width - np.repeat(lengths, lengths) + (np.arange(len(rows)) - np.repeat(starts, lengths))
    timestamps = np.zeros((b, width), dtype=np.int64)
    features = np.zeros((b, width, D), dtype=np.float32)
    imputed = np.zeros((b, width), dtype=np.uint8)
    timestamps[flow, column] = rows["t"]
    features[flow, column] = rows["f"]
    imputed[flow, column] = rows["m"]
    named: list[list[str | None] | None] | None = None
    if any(p is not None for p in patterns):
        named = [None if p is None else _padded(p, width) for p in patterns]
    return WindowBlock(
        flow_keys=keys,
        lengths=lengths,
        timestamps=timestamps,
        features=features,
        imputed=imputed,
        observations=np.where(lengths > 0, counts, 0),
        route_ids=routes if any(r is not None for r in routes) else None,
        pattern_ids=named,
    )


def _padded(patterns: list[str | None], width: int) -> list[str | None]:
    pad: list[str | None] = [None] * (width - len(patterns))
    return pad + patterns
