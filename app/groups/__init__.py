"""Route groups, chosen by URL: ``memory://`` or ``redis://host:port/db``.

A group names the observed flows that are one flow's candidate routes (``base``). Whenever one of them
gets a new forecast the group is re-ranked (``ranking``: ``app/routing.py``'s figures, with hysteresis),
and what changed is published as routing messages (``service``). ``create_group_store`` builds the store.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from app.groups.base import (
    FlowOutlook,
    Group,
    GroupRoute,
    GroupsFull,
    GroupState,
    GroupStore,
    GroupsUnavailable,
)
from app.groups.memory import MemoryGroups

__all__ = [
    "FlowOutlook",
    "Group",
    "GroupRoute",
    "GroupState",
    "GroupStore",
    "GroupsFull",
    "GroupsUnavailable",
    "MemoryGroups",
    "create_group_store",
]

REDIS_SCHEMES = ("redis", "rediss", "unix")


def create_group_store(
    url: str = "memory://",
    *,
    max_groups: int = 10_000,
    ttl_ms: int = 3_600_000,
    timeout_ms: int = 1_000,
    retry_after_s: int = 1,
    prefix: str | None = None,
    client: Any = None,
) -> GroupStore:
    """The group store that ``url`` names (its scheme picks the backend); ``async with`` it.

    ``ttl_ms``: how long a route flow's outlook is kept (the flows' TTL); ``client``: a ready-made redis
    client to use instead of one opened from the URL; ``prefix`` replaces the Redis keys' ``cpe:group:``.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryGroups(max_groups=max_groups, ttl_ms=ttl_ms)
    if scheme in REDIS_SCHEMES:
        from app.groups.redis import PREFIX, RedisGroups

        return RedisGroups(
            url,
            max_groups=max_groups,
            ttl_ms=ttl_ms,
            timeout_ms=timeout_ms,
            retry_after_s=retry_after_s,
            prefix=PREFIX if prefix is None else prefix,
            client=client,
        )
    # only the scheme: the rest of the URL may hold a password
    raise ValueError(
        f"unsupported group store URL scheme {scheme!r}; expected memory:// or redis://host:port/db"
    )
