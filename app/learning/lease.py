"""The learner's lease: one replica at a time trains, by holding a Redis lock that expires.

The lock is redis-py's (``Redis.lock``), its token this replica's id, so that the key names the learner.
The holder renews it every third of the TTL with ``reacquire``, which resets the expiry only while the
key still holds its own token (checked and renewed in one script, so a holder that was too slow can
never extend a lease another replica has taken meanwhile). A holder that dies stops renewing: the key
expires and the next replica to try takes the lease over. Without Redis (``LocalLease``) the process is
the only learner and always holds it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from redis.exceptions import LockError, LockNotOwnedError

if TYPE_CHECKING:
    from redis.asyncio import Redis


class LocalLease:
    """The lease of a process that learns alone: always held."""

    holder = "local"

    def __init__(self) -> None:
        self.held = True

    async def acquire(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class RedisLease:
    """The lease ``key`` in Redis, taken for ``holder`` (this replica's id) for ``ttl_ms`` at a time."""

    def __init__(self, client: Redis, key: str, holder: str, ttl_ms: int) -> None:
        self.client = client
        self.key = key
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.held = False
        # not thread-local: the token must be the same whichever thread's loop renews it
        self._lock = client.lock(key, timeout=ttl_ms / 1000, thread_local=False)

    async def acquire(self) -> bool:
        """Renew the lease if held, else take it if free; whether this replica holds it now.

        Raises what Redis raises: the caller treats an error as not holding it.
        """
        if self.held:
            try:
                await self._lock.reacquire()  # the full TTL again, only if the key still holds our token
                return True
            except LockNotOwnedError:
                self.held = False  # it expired (and may have been taken): try to take it as anyone would
        self.held = bool(await self._lock.acquire(blocking=False, token=self.holder))
        return self.held

    async def release(self) -> None:
        """Give the lease up (if still held), so another replica need not wait for the expiry."""
        self.held = False
        with contextlib.suppress(LockError):  # not ours any more: nothing to give up
            await self._lock.release()

    async def current_holder(self) -> str | None:
        value = await self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value
