"""The in-process cache tier: a bounded map with an LRU, LFU or TTL eviction strategy, O(1) per operation.

Every entry expires ``ttl_ms`` after it was stored. With one TTL for all entries, the order in which
entries were stored is the order in which they expire, so the entries live in an ``OrderedDict`` in that
order: expired ones are dropped from its head before each store (amortized O(1)), and a lookup that
finds an expired entry drops it too. That is the shared mechanism; a strategy only adds the order in
which *live* entries are evicted when the tier is full:

- ``ttl``: the entry nearest expiry, i.e. the head of the expiry order itself; no extra structure.
- ``lru``: the least recently used, an ``OrderedDict`` moved-to-end on every hit.
- ``lfu``: the least frequently used, oldest first among equals: frequency buckets in a linked list
  (Shah, Mitra and Matani's O(1) LFU), each bucket an ``OrderedDict`` in order of arrival.

Dropping expired entries first matters most to LFU: the entries of a window that has changed are never
read again, and by their past counts LFU alone would keep them forever, evicting every new entry instead.

Each value is stored as a copy of exactly its length: the results come from orjson, whose bytes objects
keep the capacity of its output buffer, several times the result's size, for the whole TTL otherwise.
The memory per entry, measured, is in the README (``python -m scripts.bench_cache --memory-only``).

Not cachetools: it has no LFU or nearest-expiry tier with a TTL, and its TTLCache (LRU) took longer per
lookup and store than this tier (README, "Libraries").
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from itertools import repeat

from app.cache.base import Cache
from app.cache.metrics import CacheMetrics

STRATEGIES = ("lru", "lfu", "ttl")


class _TTL:
    """Evicts the entry nearest expiry: the head of the expiry order, which the tier keeps anyway."""

    def __init__(self, entries: OrderedDict[str, tuple[bytes, float]]) -> None:
        self._entries = entries

    def add(self, key: str) -> None:
        pass

    def add_many(self, keys: Sequence[str]) -> None:
        pass

    def touch(self, key: str) -> None:
        pass

    def discard(self, key: str) -> None:
        pass

    def victim(self) -> str:
        return next(iter(self._entries))


class _LRU:
    """Evicts the least recently used entry."""

    def __init__(self, entries: OrderedDict[str, tuple[bytes, float]]) -> None:
        self._order: OrderedDict[str, None] = OrderedDict()  # least recently used first

    def add(self, key: str) -> None:
        self._order[key] = None

    def add_many(self, keys: Sequence[str]) -> None:
        self._order.update(dict.fromkeys(keys))

    def touch(self, key: str) -> None:
        self._order.move_to_end(key)

    def discard(self, key: str) -> None:
        del self._order[key]

    def victim(self) -> str:
        return next(iter(self._order))


class _Bucket:
    """The keys used ``freq`` times, oldest arrival first; a node of the LFU's list of frequencies."""

    __slots__ = ("freq", "keys", "next", "prev")

    def __init__(self, freq: int) -> None:
        self.freq = freq
        self.keys: OrderedDict[str, None] = OrderedDict()
        self.prev: _Bucket = self
        self.next: _Bucket = self


class _LFU:
    """Evicts the least frequently used entry, the oldest of those first.

    The buckets form a circular list in increasing frequency, from a sentinel of frequency 0, so that the
    least frequent bucket is ``head.next`` and a key moves to the next frequency's bucket in O(1).
    """

    def __init__(self, entries: OrderedDict[str, tuple[bytes, float]]) -> None:
        self._head = _Bucket(0)
        self._bucket_of: dict[str, _Bucket] = {}

    def add(self, key: str) -> None:
        first = self._head.next
        if first.freq != 1:
            first = self._insert_after(self._head, 1)
        first.keys[key] = None
        self._bucket_of[key] = first

    def add_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.add(key)

    def touch(self, key: str) -> None:
        bucket = self._bucket_of[key]
        up = bucket.next
        if up.freq != bucket.freq + 1:  # the sentinel (0) never matches
            up = self._insert_after(bucket, bucket.freq + 1)
        del bucket.keys[key]
        up.keys[key] = None
        self._bucket_of[key] = up
        if not bucket.keys:
            self._unlink(bucket)

    def discard(self, key: str) -> None:
        bucket = self._bucket_of.pop(key)
        del bucket.keys[key]
        if not bucket.keys:
            self._unlink(bucket)

    def victim(self) -> str:
        return next(iter(self._head.next.keys))

    @staticmethod
    def _insert_after(bucket: _Bucket, freq: int) -> _Bucket:
        new = _Bucket(freq)
        new.prev, new.next = bucket, bucket.next
        bucket.next.prev = new
        bucket.next = new
        return new

    @staticmethod
    def _unlink(bucket: _Bucket) -> None:
        bucket.prev.next = bucket.next
        bucket.next.prev = bucket.prev


_POLICIES: dict[str, type[_TTL | _LRU | _LFU]] = {"ttl": _TTL, "lru": _LRU, "lfu": _LFU}


class MemoryCache(Cache):
    """At most ``max_entries`` values in this process, each for ``ttl_ms``, evicted by ``strategy``."""

    def __init__(
        self,
        *,
        max_entries: int = 50_000,
        ttl_ms: int = 60_000,
        strategy: str = "lru",
        metrics: CacheMetrics | None = None,
    ) -> None:
        if strategy not in _POLICIES:
            raise ValueError(f"unknown cache strategy {strategy!r}; expected one of {list(STRATEGIES)}")
        assert max_entries >= 1, f"max_entries must be at least 1, not {max_entries}"
        assert ttl_ms >= 1, f"ttl_ms must be at least 1, not {ttl_ms}"
        self.max_entries = max_entries
        self.ttl_s = ttl_ms / 1000.0
        self.strategy = strategy
        # key -> (value, expires_at on time.monotonic()), nearest expiry first
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._policy = _POLICIES[strategy](self._entries)
        metrics = metrics or CacheMetrics()
        self._hits = metrics.requests.labels(tier="memory", result="hit")
        self._misses = metrics.requests.labels(tier="memory", result="miss")
        # read at scrape time: nothing to update on the request path
        metrics.entries.labels(tier="memory").set_function(self.__len__)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        """Whether ``key`` holds a live value; unlike a lookup, this counts as no use of it."""
        entry = self._entries.get(key)
        return entry is not None and entry[1] > time.monotonic()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        found = list(map(self._entries.get, keys))
        missed = found.count(None)
        if missed == len(found):  # a batch of new windows: nothing to check or touch, one count
            self._misses.inc(missed)
            return found  # type: ignore[return-value]  # all None
        values: list[bytes | None] = [None] * len(keys)
        hits = 0
        for i, entry in enumerate(found):
            if entry is None:
                continue
            key = keys[i]
            if entry[1] <= now:
                if key in self._entries:  # not dropped already (the same key twice in one call)
                    self._remove(key)
                continue
            self._policy.touch(key)
            values[i] = entry[0]
            hits += 1
        self._hits.inc(hits)
        self._misses.inc(len(keys) - hits)
        return values

    async def set_many(self, items: Sequence[tuple[str, bytes]], ttl_ms: Sequence[int] | None = None) -> None:
        now = time.monotonic()
        self._purge(now)
        if ttl_ms is None:
            expires_at = now + self.ttl_s
            if not self._store_new(items, expires_at):
                for key, value in items:
                    self._store(key, value, expires_at)
            return
        # TTLs of their own: the expiry order is then only nearly the insertion order, so an expired entry
        # may wait behind a live one until it is looked up or evicted; lookups check every entry's expiry
        for (key, value), ttl in zip(items, ttl_ms, strict=True):
            self._store(key, value, now + ttl / 1000.0)

    def _store_new(self, items: Sequence[tuple[str, bytes]], expires_at: float) -> bool:
        """Store keys that are all new, in a few calls for them all (a batch's answers), evicting first
        what they need room for; False (nothing done) unless the strategy's order allows it (LRU, TTL:
        the new keys go last, in order) and the keys are new, distinct and fewer than the tier holds."""
        if self.strategy == "lfu" or len(items) > self.max_entries:
            return False
        keys = [key for key, _ in items]
        entries = self._entries
        if len(set(keys)) != len(keys) or not entries.keys().isdisjoint(keys):
            return False
        for _ in range(len(entries) + len(keys) - self.max_entries):
            self._remove(self._policy.victim())
        # copies of exactly their length (see _store)
        values = [bytes(memoryview(v)) for _, v in items]
        entries.update(zip(keys, zip(values, repeat(expires_at), strict=False), strict=True))
        self._policy.add_many(keys)
        return True

    def _store(self, key: str, value: bytes, expires_at: float) -> None:
        if key in self._entries:  # stored again (two requests computed it at once): a fresh TTL
            self._remove(key)
        elif len(self._entries) >= self.max_entries:
            self._remove(self._policy.victim())
        # A copy of exactly its length: orjson's bytes keep the capacity of its output buffer, several
        # times the result's size, which a cached value would otherwise hold for its whole TTL.
        self._entries[key] = (bytes(memoryview(value)), expires_at)
        self._policy.add(key)

    def _remove(self, key: str) -> None:
        del self._entries[key]
        self._policy.discard(key)

    def _purge(self, now: float) -> None:
        """Drop the expired entries: a prefix of the expiry order."""
        entries = self._entries
        while entries:
            key, (_, expires_at) = next(iter(entries.items()))
            if expires_at > now:
                return
            self._remove(key)
