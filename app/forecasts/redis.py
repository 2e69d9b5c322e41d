"""Forecasts in Redis (``redis://``): every replica answers ``GET /v1/flows/{flow_key}`` with the newest.

One string per flow, ``<prefix>{<flow_key>}`` (the braces are a hash tag: on Redis Cluster all of a
flow's keys, its window's included, hash to one slot): a fixed binary header with the numbers that score
the next observation and the running score, the model kind, then the serialized result. One value rather
than a hash of fields: a round then costs one GET and one SET (with its expiry) per flow, in two
pipelined round-trips, where a hash took HMGET, HSET and PEXPIRE and ten fields to encode and parse each
(``scripts/bench_observe.py --redis``). It expires ``ttl_ms`` after its last update, as the flow's window
does. On a Redis Cluster (``redis+cluster://host:port``) a round's flows are spread over the slots: the
MGET is split per slot (``mget_nonatomic``), and the writes are plain SETs in the cluster client's
pipeline (one batch per node), since a script may only touch the keys of one slot. A Redis that does not
answer makes them fail
(``ForecastsUnavailable``): the round's forecasts are still published, only not kept, and ``problem``
says why until Redis answers again.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from app.forecasts.store import FlowForecast, FlowScore, ForecastStore, RoundForecasts

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("cpe.forecasts")

_FAILURES = (redis_errors.RedisError, redis_errors.RedisClusterException, OSError)
CLUSTER_SCHEME = "redis+cluster"
# base_ts, predicted latency, persistence, EWMA; scored, the three error sums; the model kind's length;
# the interval's numbers (4 x D doubles, after the kind; 0: none kept)
_HEADER = struct.Struct("<q3dQ3dBH")


class ForecastsUnavailable(Exception):
    """Redis did not answer: the forecasts were not read or not kept."""


class RedisForecasts(ForecastStore):
    """Each flow's newest forecast and running score in a Redis hash of its own."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | RedisCluster | None = None,
        prefix: str,
        ttl_ms: int,
        timeout_s: float = 2.0,
    ) -> None:
        self._owns_client = client is None
        if client is None:
            from redis.asyncio import Redis

            assert url is not None, "give the Redis URL or a ready-made client"
            options: dict[str, Any] = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s}
            if url.startswith(f"{CLUSTER_SCHEME}://"):
                client = RedisCluster.from_url(
                    "redis://" + url.removeprefix(f"{CLUSTER_SCHEME}://"), **options
                )
            else:
                client = Redis.from_url(url, **options)
        self.client: Any = client  # Redis and RedisCluster share the commands used here
        self.cluster = isinstance(client, RedisCluster)
        self.prefix = prefix
        self.ttl_ms = ttl_ms
        self._problem: str | None = None
        # EVALSHA, loading the script again if Redis lost it (one Redis only: see put_many)
        single: Any = client
        self._put = None if self.cluster else single.register_script(PUT)

    def key(self, flow_key: str) -> str:
        return f"{self.prefix}{{{flow_key}}}"

    @property
    def problem(self) -> str | None:
        return self._problem

    async def check(self) -> str | None:
        """A PING: the problem now, or None."""
        client: Any = self.client  # its stubs type ping's answer as a bool or an awaitable
        try:
            await client.ping()
        except _FAILURES as exc:
            self._failed(exc)
        else:
            self._recovered()
        return self._problem

    def _failed(self, exc: BaseException) -> ForecastsUnavailable:
        if self._problem is None:
            log.warning("forecasts: Redis does not answer (%s); forecasts are published but not kept", exc)
        self._problem = f"redis unreachable: {exc or type(exc).__name__}"
        return ForecastsUnavailable(self._problem)

    def _recovered(self) -> None:
        if self._problem is not None:
            log.info("forecasts: Redis answers again")
            self._problem = None

    async def get_many(self, flow_keys: Sequence[str]) -> list[FlowForecast | None]:
        """One MGET: a round's forecasts in one command rather than a GET each (on a Cluster, one per slot,
        pipelined per node)."""
        if not flow_keys:
            return []
        keys = [self.key(flow_key) for flow_key in flow_keys]
        try:
            if self.cluster:
                values = await self.client.mget_nonatomic(keys)
            else:
                values = await self.client.mget(keys)
        except _FAILURES as exc:
            raise self._failed(exc) from None
        self._recovered()
        return [None if value is None else unpack(value) for value in values]

    async def put_many(self, forecasts: Sequence[tuple[str, FlowForecast]]) -> None:
        """One script call (``PUT``: a SET with the TTL per key) rather than a SET command each; on a
        Cluster, SETs in the cluster pipeline (a script may touch one slot only)."""
        if not forecasts:
            return
        keys = [self.key(flow_key) for flow_key, _ in forecasts]
        try:
            if self._put is None:
                pipe = self.client.pipeline()
                for key, (_, forecast) in zip(keys, forecasts, strict=True):
                    pipe.set(key, pack(forecast), px=self.ttl_ms)
                await pipe.execute()
            else:
                await self._put(keys=keys, args=[self.ttl_ms, *(pack(forecast) for _, forecast in forecasts)])
        except _FAILURES as exc:
            raise self._failed(exc) from None
        self._recovered()

    async def put_round(self, forecasts: RoundForecasts) -> None:
        """A round's values packed from its arrays (the headers by one numpy call), not from an object per
        flow; written as ``put_many`` writes them."""
        b = len(forecasts.flow_keys)
        if not b:
            return
        values = pack_round(forecasts)
        keys = [self.key(flow_key) for flow_key in forecasts.flow_keys]
        try:
            if self._put is None:
                pipe = self.client.pipeline()
                for key, value in zip(keys, values, strict=True):
                    pipe.set(key, value, px=self.ttl_ms)
                await pipe.execute()
            else:
                await self._put(keys=keys, args=[self.ttl_ms, *values])
        except _FAILURES as exc:
            raise self._failed(exc) from None
        self._recovered()

    async def delete(self, flow_key: str) -> None:
        try:
            await self.client.delete(self.key(flow_key))
        except _FAILURES as exc:
            raise self._failed(exc) from None

    async def __aexit__(self, *exc: object) -> None:
        if self._owns_client:
            await self.client.aclose()


# KEYS: the flows' keys; ARGV[1]: the TTL in ms, then each key's value
PUT = """
local ttl = ARGV[1]
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ttl)
end
return #KEYS
"""


def pack(forecast: FlowForecast) -> bytes:
    """A forecast as the value Redis keeps: header, model kind, serialized result."""
    score, model = forecast.score, forecast.model.encode()
    interval = b"" if forecast.interval is None else forecast.interval.astype("<f8").tobytes()
    header = _HEADER.pack(
        forecast.base_ts,
        forecast.latency,
        forecast.persistence,
        forecast.ewma,
        score.scored,
        score.model,
        score.persistence,
        score.ewma,
        len(model),
        len(interval) // 8,
    )
    return header + model + interval + forecast.result()


# _HEADER as a numpy record: a round's headers packed by one call
_HEADER_DTYPE = np.dtype(
    [
        ("base_ts", "<i8"),
        ("latency", "<f8"),
        ("persistence", "<f8"),
        ("ewma", "<f8"),
        ("scored", "<u8"),
        ("score_model", "<f8"),
        ("score_persistence", "<f8"),
        ("score_ewma", "<f8"),
        ("model_len", "u1"),
        ("interval_len", "<u2"),
    ]
)
assert _HEADER_DTYPE.itemsize == _HEADER.size


def pack_round(forecasts: RoundForecasts) -> list[bytes]:
    """Each flow's value (as ``pack`` makes it) of a round's arrays; the results serialized in bulk."""
    b = len(forecasts.flow_keys)
    model = forecasts.model.encode()
    headers = np.empty(b, dtype=_HEADER_DTYPE)
    for name in ("base_ts", "latency", "persistence", "ewma", "scored"):
        headers[name] = getattr(forecasts, name)
    headers["score_model"] = forecasts.score_model
    headers["score_persistence"] = forecasts.score_persistence
    headers["score_ewma"] = forecasts.score_ewma
    headers["model_len"] = len(model)
    intervals: list[bytes] = [b""] * b
    if forecasts.interval is not None:
        kept = np.ones(b, dtype=bool) if forecasts.has_interval is None else forecasts.has_interval
        flat = np.ascontiguousarray(forecasts.interval, dtype="<f8").reshape(b, -1)
        headers["interval_len"] = np.where(kept, flat.shape[1], 0)
        for i in np.flatnonzero(kept).tolist():
            intervals[i] = flat[i].tobytes()
    else:
        headers["interval_len"] = 0
    raw = headers.tobytes()
    size = _HEADER.size
    bodies = forecasts.results.bodies(range(b))
    return [
        b"".join((raw[i * size : (i + 1) * size], model, interval, body))
        for i, (interval, body) in enumerate(zip(intervals, bodies, strict=True))
    ]


def unpack(value: bytes) -> FlowForecast:
    base_ts, latency, persistence, ewma, scored, sm, sp, se, n, k = _HEADER.unpack_from(value)
    start = _HEADER.size
    model = value[start : start + n].decode()
    start += n
    interval = None
    if k:
        interval = np.frombuffer(value, "<f8", k, start).reshape(4, k // 4).astype(np.float64)
        start += 8 * k
    score = FlowScore(scored, sm, sp, se)
    return FlowForecast(value[start:], None, base_ts, latency, persistence, ewma, model, score, interval)
