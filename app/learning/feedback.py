"""Where accepted feedback waits for the learner: a bounded in-process buffer, or a Redis Stream.

Accepted feedback is never lost. ``MemoryFeedback`` (``memory://``) holds at most ``limit`` samples;
one more is refused (``FeedbackFull``, a 429 with Retry-After) rather than dropped, and the learner
drains it as it goes. ``RedisFeedback`` (``redis://``) appends each sample to a Redis Stream before the
202 is sent; a Redis that does not answer makes the append fail (``FeedbackUnavailable``, a 503), so a
202 always means the sample is in the stream. The learner of the moment (the lease holder) reads the
stream through a consumer group and acknowledges what it has put in its replay buffer. The stream is
trimmed to about ``maxlen`` entries: a retention bound, far beyond what the replay buffer holds.

A sample in the stream outlives a restart of Redis only as far as Redis persists it: with
``appendonly yes`` and ``appendfsync always`` every 202 survives a crash of Redis (``everysec``: all but
up to the last second's); without persistence a restarted Redis is empty and what the learner had not
read yet is gone. Once Redis is back, the consumer group is made again if it went missing, at the start
of the stream: a stream without the group holds nothing the group has delivered yet.

``problem`` says why the stream failed its last operation (None once one succeeds again): GET /readyz
reports it. Only the learner reads the stream; the other replicas ``check`` it (a PING) now and then,
so that their ``problem`` follows Redis without waiting for feedback to arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self

import numpy as np
from redis import exceptions as redis_errors

from app.wire.rules import D

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("cpe.learning")

GROUP = "cpe-learners"
_FAILURES = (redis_errors.RedisError, OSError)


@dataclass(slots=True)
class Feedback:
    """One sample: a window of a flow and the context that really came next."""

    flow_key: str
    timestamps: np.ndarray  # (n,) int64 ms
    features: np.ndarray  # (n, D) float64
    actual_timestamp: int
    actual: np.ndarray  # (D,) float64

    def to_fields(self) -> dict[str, bytes]:
        """The sample as a stream entry's fields: raw little-endian arrays, no JSON to parse back."""
        return {
            "k": self.flow_key.encode(),
            "t": np.ascontiguousarray(self.timestamps, dtype="<i8").tobytes(),
            "f": np.ascontiguousarray(self.features, dtype="<f8").tobytes(),
            "at": str(self.actual_timestamp).encode(),
            "a": np.ascontiguousarray(self.actual, dtype="<f8").tobytes(),
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Feedback:
        timestamps = np.frombuffer(fields[b"t"], dtype="<i8").astype(np.int64)
        features = np.frombuffer(fields[b"f"], dtype="<f8").reshape(-1, D).astype(np.float64)
        if len(timestamps) != len(features) or len(timestamps) == 0:
            raise ValueError(f"feedback entry with {len(timestamps)} timestamps and {len(features)} rows")
        return cls(
            flow_key=fields[b"k"].decode(),
            timestamps=timestamps,
            features=features,
            actual_timestamp=int(fields[b"at"]),
            actual=np.frombuffer(fields[b"a"], dtype="<f8").astype(np.float64),
        )


class FeedbackFull(Exception):
    """The in-process buffer is full: the feedback is refused (429), not dropped."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"the feedback buffer is full ({limit} samples waiting for the learner); retry later"
        )
        self.retry_after_s = retry_after_s


class FeedbackUnavailable(Exception):
    """The feedback stream cannot be reached: the feedback is refused (503), since it could not be kept."""

    def __init__(self, problem: str, retry_after_s: int) -> None:
        super().__init__(f"feedback cannot be stored now: {problem}")
        self.retry_after_s = retry_after_s


class FeedbackStore(ABC):
    """Accepted feedback, in order, until the learner has taken it; use as ``async with store:``."""

    async def connect(self) -> None:  # noqa: B027 (optional hook)
        """Open what the store needs."""

    async def disconnect(self) -> None:  # noqa: B027
        """Release what ``connect`` opened."""

    @abstractmethod
    async def append(self, sample: Feedback) -> str:
        """Keep ``sample`` for the learner and return its id; raises FeedbackFull or FeedbackUnavailable."""

    @abstractmethod
    async def read(self, count: int, block_ms: int) -> list[tuple[str, Feedback]]:
        """Up to ``count`` samples not read yet, waiting up to ``block_ms`` for the first."""

    async def ack(self, ids: list[str]) -> None:  # noqa: B027 (only a stream needs it)
        """The learner has taken these samples into its replay buffer."""

    async def take_over(self, count: int) -> list[Feedback]:
        """On becoming the learner: the latest ``count`` samples already read, to refill the replay buffer."""
        return []

    @property
    def pending(self) -> int:
        """Samples waiting for the learner (known for the in-process buffer only; else 0)."""
        return 0

    @property
    def problem(self) -> str | None:
        """Why the store does not work now, or None when it does (the in-process buffer always does)."""
        return None

    async def check(self) -> None:  # noqa: B027 (only a remote store can fail)
        """Probe the store, so that ``problem`` follows it even while nothing else uses it; never raises."""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()


class MemoryFeedback(FeedbackStore):
    """The bounded in-process buffer: ``limit`` samples at most; one more is refused, never dropped."""

    def __init__(self, limit: int, retry_after_s: int = 1) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._samples: deque[tuple[str, Feedback]] = deque()
        self._arrived = asyncio.Event()
        self._count = 0

    async def append(self, sample: Feedback) -> str:
        if len(self._samples) >= self.limit:
            raise FeedbackFull(self.limit, self.retry_after_s)
        self._count += 1
        sample_id = str(self._count)
        self._samples.append((sample_id, sample))
        self._arrived.set()
        return sample_id

    async def read(self, count: int, block_ms: int) -> list[tuple[str, Feedback]]:
        if not self._samples:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), block_ms / 1000.0)
            except TimeoutError:
                return []
        taken: list[tuple[str, Feedback]] = []
        while self._samples and len(taken) < count:
            taken.append(self._samples.popleft())
        return taken

    @property
    def pending(self) -> int:
        return len(self._samples)


class RedisFeedback(FeedbackStore):
    """The Redis Stream ``<prefix>feedback``, read through the consumer group ``cpe-learners``.

    ``consumer`` names this replica in the group. Only the lease holder reads; on taking over it refills
    its replay buffer from the stream's tail and moves the group past it, so that nothing is trained on
    twice and what the dead learner had not read yet is not lost.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        prefix: str,
        consumer: str,
        maxlen: int,
        retry_after_s: int = 1,
        timeout_s: float = 2.0,
    ) -> None:
        if client is None:
            from redis.asyncio import Redis

            assert url is not None, "give the Redis URL or a ready-made client"
            client = Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
            self._owns_client = True
        else:
            self._owns_client = False
        self.client = client
        self.stream = f"{prefix}feedback"
        self.consumer = consumer
        self.maxlen = maxlen
        self.retry_after_s = retry_after_s
        self._problem: str | None = None

    @property
    def problem(self) -> str | None:
        """Why the last operation on the stream failed; None once one succeeds (or before any failed)."""
        return self._problem

    @contextlib.contextmanager
    def _watched(self) -> Iterator[None]:
        """Keep ``problem`` up to date with how the Redis calls made inside turn out."""
        try:
            yield
        except _FAILURES as exc:
            lost = isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError | OSError)
            problem = f"redis {'unreachable' if lost else 'failed'}: {exc or type(exc).__name__}"
            if self._problem is None:  # once per outage
                log.warning("learning: the feedback stream does not work: %s", problem)
            self._problem = problem
            raise
        if self._problem is not None:
            log.info("learning: the feedback stream works again")
            self._problem = None

    async def connect(self) -> None:
        try:
            with self._watched():
                await self._make_group("$")
        except _FAILURES:  # the group is made on the first read once Redis is back
            pass

    async def check(self) -> None:
        with contextlib.suppress(*_FAILURES), self._watched():
            await self.client.ping()  # type: ignore[misc]  # redis-py types it sync-or-async

    async def _make_group(self, start: str) -> None:
        """Make the consumer group, delivering the entries after ``start``; nothing if it exists."""
        try:
            await self.client.xgroup_create(self.stream, GROUP, id=start, mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def disconnect(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def append(self, sample: Feedback) -> str:
        try:
            with self._watched():
                entry = await self.client.xadd(
                    self.stream,
                    sample.to_fields(),  # type: ignore[arg-type]
                    maxlen=self.maxlen,
                    approximate=True,
                )
        except _FAILURES as exc:
            raise FeedbackUnavailable(f"redis: {exc or type(exc).__name__}", self.retry_after_s) from None
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    async def read(self, count: int, block_ms: int) -> list[tuple[str, Feedback]]:
        with self._watched():
            try:
                answer = await self.client.xreadgroup(
                    GROUP, self.consumer, {self.stream: ">"}, count=count, block=block_ms
                )
            except redis_errors.ResponseError as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted, or Redis restarted: make the group again
                    await self._make_group("0")  # at the start: nothing there was delivered to the group
                    return []
                raise
        entries, malformed = _entries(answer)
        if malformed:  # acknowledged at once, or they would stay pending in the group for ever
            await self.ack(malformed)
        return entries

    async def ack(self, ids: list[str]) -> None:
        if ids:
            with self._watched():
                await self.client.xack(self.stream, GROUP, *ids)

    async def take_over(self, count: int) -> list[Feedback]:
        with self._watched():
            return await self._take_over(count)

    async def _take_over(self, count: int) -> list[Feedback]:
        tail = await self.client.xrevrange(self.stream, count=count)
        if not tail:
            return []
        # the group continues after the newest sample taken here: none of these is delivered again
        newest = _text(tail[0][0])
        try:
            await self.client.xgroup_setid(self.stream, GROUP, id=newest)
        except redis_errors.ResponseError as exc:
            if "NOGROUP" not in str(exc):  # (the group went missing with a restart of Redis)
                raise
            await self._make_group(newest)
        # what the group delivered but nobody acknowledged (Redis went away between a read and its ack)
        # is in this tail too, now in the new learner's replay buffer: acknowledged, not pending for ever
        await self.client.xack(self.stream, GROUP, *(entry_id for entry_id, _ in tail))
        samples = []
        for entry_id, fields in reversed(tail):
            try:
                samples.append(Feedback.from_fields(fields))
            except (KeyError, ValueError) as exc:
                log.warning("learning: skipped malformed feedback entry %s: %s", _text(entry_id), exc)
        return samples


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_Answer = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]  # XREADGROUP's: per stream, its entries


def _entries(answer: _Answer) -> tuple[list[tuple[str, Feedback]], list[str]]:
    """The samples of an XREADGROUP answer, and the ids of the entries that were not samples."""
    out, malformed = [], []
    for _stream, entries in answer or ():
        for entry_id, fields in entries:
            try:
                out.append((_text(entry_id), Feedback.from_fields(fields)))
            except (KeyError, ValueError) as exc:
                malformed.append(_text(entry_id))
                log.warning("learning: skipped malformed feedback entry %s: %s", _text(entry_id), exc)
    return out, malformed
