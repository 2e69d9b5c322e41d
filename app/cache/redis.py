"""The shared cache tier: Redis, one round-trip per lookup or store of a whole batch.

Values are binary (the orjson bytes of a PredictionResult), stored with ``SET key value PX ttl``: a batch's
in one ``EVALSHA`` of a small script that sets each key with its TTL (redis-py packs one command rather
than one per key: about a quarter of a pipeline's client CPU per key), or, where the server or a proxy in
front of it refuses the script, in one pipeline of SETs from then on. A key
is ``<prefix><the cache key>``; cache keys start with their flow's ``{flow_key}`` hash tag, so that a
flow's keys share a Redis Cluster slot. (The keys of a batch span flows, hence slots: on a Redis Cluster
the MGET would have to be split per slot, as redis-py's ``RedisCluster.mget_nonatomic`` does. This tier
speaks to one Redis, or a proxy in front of a cluster.)

Redis may be down at start-up or go away at any time; the request path must not notice beyond the lost
hits. Socket timeouts of tens of milliseconds bound what one round-trip can cost, redis-py's own retries
are off, and a failure opens a breaker: requests skip Redis for a backoff (doubling from
``backoff_s[0]`` up to ``backoff_s[1]``), then one request probes it, and the first success closes the
breaker again. Each failed round-trip counts in ``cpe_cache_errors_total{tier="redis"}``; only the
changes of state are logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.cache.base import Cache
from app.cache.metrics import CacheMetrics

log = logging.getLogger("cpe.cache")

PREFIX = "cpe:pred:"
# every key with its own TTL: KEYS[i] gets ARGV[i] for ARGV[n + i] ms
_SET_MANY = """
local n = #KEYS
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[i], 'PX', ARGV[n + i])
end
return n
"""
# what a lost or hung connection raises; anything else is a bug, and is not swallowed
_FAILURES = (redis_errors.RedisError, OSError)  # OSError includes TimeoutError


class Breaker:
    """Whether to try Redis now: closed (yes), open (no, until the backoff ends), probing (one request)."""

    def __init__(self, min_backoff_s: float, max_backoff_s: float) -> None:
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.problem: str | None = None  # None = closed
        self._backoff_s = min_backoff_s
        self._retry_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """Whether this call may go to Redis; when open and due, it becomes the single probe."""
        if self.problem is None:
            return True
        if self._probing or time.monotonic() < self._retry_at:
            return False
        self._probing = True
        return True

    def succeeded(self) -> bool:
        """Record a success; True when it closes the breaker."""
        self._probing = False
        if self.problem is None:
            return False
        self.problem = None
        self._backoff_s = self.min_backoff_s
        return True

    def failed(self, problem: str) -> bool:
        """Record a failure; True when it opens the breaker (it was closed)."""
        opened = self.problem is None
        if opened or self._probing:  # a failed probe backs off further; stragglers of a burst do not
            self._backoff_s = self.min_backoff_s if opened else min(2 * self._backoff_s, self.max_backoff_s)
            self._retry_at = time.monotonic() + self._backoff_s
        self._probing = False
        self.problem = problem
        return opened

    def abandoned(self) -> None:
        """The call was cancelled before it could tell: let the next one probe."""
        self._probing = False


class RedisCache(Cache):
    """The cache tier in Redis at ``url`` (``redis://host:port/db``), or on a ready-made ``client``.

    A ready-made client is used as it is (its timeouts and retries are its owner's) and is not closed by
    ``disconnect``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        ttl_ms: int = 60_000,
        timeout_ms: int = 50,
        prefix: str = PREFIX,
        backoff_s: tuple[float, float] = (0.25, 2.0),
        metrics: CacheMetrics | None = None,
    ) -> None:
        assert url or client is not None, "RedisCache needs a url or a client"
        if client is None:
            timeout_s = timeout_ms / 1000.0
            client = Redis.from_url(
                str(url),
                socket_connect_timeout=timeout_s,
                socket_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),  # the breaker decides when to try again, not each call
            )
            self._owns_client = True
        else:
            self._owns_client = False
        self.client = client
        self.ttl_ms = ttl_ms
        self.prefix = prefix
        self.breaker = Breaker(*backoff_s)
        self._set_many = client.register_script(_SET_MANY)
        self.scripted = True  # False once the server (or a proxy) refused the script: pipelines then
        metrics = metrics or CacheMetrics()
        self._hits = metrics.requests.labels(tier="redis", result="hit")
        self._misses = metrics.requests.labels(tier="redis", result="miss")
        self._errors = metrics.errors.labels(tier="redis")
        self._up = metrics.redis_up

    async def connect(self) -> None:
        if await self._call(self.client.ping) is not None:
            self._up.set(1)

    async def disconnect(self) -> None:
        self._up.set(0)
        if self._owns_client:
            await self.client.aclose()

    @property
    def problem(self) -> str | None:
        return self.breaker.problem

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = await self._call(self.client.mget, [self.prefix + key for key in keys])
        if values is None:
            return [None] * len(keys)
        hits = sum(value is not None for value in values)
        self._hits.inc(hits)
        self._misses.inc(len(keys) - hits)
        return values

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_ms: Sequence[int] | None = None) -> None:
        ttls = ttl_ms or [self.ttl_ms] * len(items)
        if len(items) == 1:
            key, value = items[0]
            await self._call(self.client.set, self.prefix + key, value, px=ttls[0])
            return
        keys = [self.prefix + key for key, _ in items]
        values = [value for _, value in items]
        if self.scripted:
            await self._call(self._store_scripted, keys, values, ttls)
        else:
            await self._call(self._store_pipelined, keys, values, ttls)

    async def _store_scripted(self, keys: list[str], values: list[bytes], ttls: Sequence[int]) -> Any:
        try:
            return await self._set_many(keys=keys, args=[*values, *ttls])
        except redis_errors.ResponseError as exc:  # no scripts here (a proxy, keys across cluster slots)
            self.scripted = False
            log.info("cache: storing batches in Redis with pipelines, the script was refused: %s", exc)
            return await self._store_pipelined(keys, values, ttls)

    async def _store_pipelined(self, keys: list[str], values: list[bytes], ttls: Sequence[int]) -> Any:
        pipe = self.client.pipeline(transaction=False)
        for key, value, px in zip(keys, values, ttls, strict=True):
            pipe.set(key, value, px=px)
        return await pipe.execute()

    # redis-py types its commands as sync-or-async; on a redis.asyncio client they are coroutines
    async def _call(self, command: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``command``'s answer, or None when the breaker is open or Redis fails (which opens it)."""
        if not self.breaker.allow():
            return None
        try:
            answer = await command(*args, **kwargs)
        except _FAILURES as exc:
            self._errors.inc()
            lost = isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError | OSError)
            problem = f"redis {'unreachable' if lost else 'failed'}: {exc or type(exc).__name__}"
            if self.breaker.failed(problem):
                self._up.set(0)
                log.warning("cache: answering without the Redis tier until it is back: %s", problem)
            return None
        except BaseException:  # cancelled (the client went away) or a bug: no verdict on Redis
            self.breaker.abandoned()
            raise
        if self.breaker.succeeded():
            self._up.set(1)
            log.info("cache: redis reachable again; the Redis tier is back")
        return answer
