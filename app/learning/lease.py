"""The learner's lease: one replica at a time trains, by holding a Redis key that expires.

The holder writes its id in ``<prefix>lease`` with ``SET NX PX ttl`` and renews the expiry every
third of the TTL, only while the key still holds its own id (a Lua script checks and renews in one
step, so a holder that was too slow can never extend a lease another replica has taken meanwhile). A
holder that dies stops renewing: the key expires and the next replica to try takes the lease over.
Without Redis (``LocalLease``) the process is the only learner and always holds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

# renew if still ours, else take it if free; 1 when held afterwards
_ACQUIRE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('pexpire', KEYS[1], ARGV[2])
    return 1
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


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

    async def acquire(self) -> bool:
        """Renew the lease if held, else take it if free; whether this replica holds it now.

        Raises what Redis raises: the caller treats an error as not holding it.
        """
        answer = await self.client.eval(_ACQUIRE, 1, self.key, self.holder, self.ttl_ms)  # type: ignore[misc]
        self.held = bool(answer)
        return self.held

    async def release(self) -> None:
        """Give the lease up (if still held), so another replica need not wait for the expiry."""
        self.held = False
        await self.client.eval(_RELEASE, 1, self.key, self.holder)  # type: ignore[misc]

    async def current_holder(self) -> str | None:
        value = await self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else value
