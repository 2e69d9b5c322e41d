"""Server-side flow state, chosen by URL: ``memory://``, ``redis://host:port/db`` or ``redis+cluster://host:port``.

``create_flow_store`` builds the store; every backend speaks the async interface of ``base.FlowStore``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from app.flows.base import (
    FEATURE_DEFAULTS,
    Appended,
    BatchApplied,
    ContextBatch,
    FlowContext,
    FlowsFull,
    FlowStore,
    FlowsUnavailable,
    FlowWindow,
    WindowBlock,
)
from app.flows.memory import MemoryFlows

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = [
    "FEATURE_DEFAULTS",
    "Appended",
    "BatchApplied",
    "ContextBatch",
    "FlowContext",
    "FlowStore",
    "FlowWindow",
    "FlowsFull",
    "FlowsUnavailable",
    "MemoryFlows",
    "WindowBlock",
    "create_flow_store",
    "flow_store_from_settings",
]

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster")


def create_flow_store(
    url: str = "memory://",
    *,
    window: int = 64,
    ttl_ms: int = 3_600_000,
    max_flows: int = 100_000,
    timeout_ms: int = 1_000,
    retry_after_s: int = 1,
    prefix: str | None = None,
    client: Any = None,
) -> FlowStore:
    """The flow store that ``url`` names (its scheme picks the backend); not connected yet: ``async with`` it.

    ``client`` is a ready-made redis client (``Redis`` or ``RedisCluster``) to use instead of one opened
    from the URL; ``prefix`` replaces the Redis keys' ``cpe:flow:``. ``max_flows`` bounds ``memory://``.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryFlows(window=window, ttl_ms=ttl_ms, max_flows=max_flows, retry_after_s=retry_after_s)
    if scheme in REDIS_SCHEMES:
        from app.flows.redis import PREFIX, RedisFlows

        return RedisFlows(
            url,
            window=window,
            ttl_ms=ttl_ms,
            timeout_ms=timeout_ms,
            retry_after_s=retry_after_s,
            prefix=PREFIX if prefix is None else prefix,
            client=client,
        )
    # only the scheme: the rest of the URL may hold a password
    raise ValueError(
        f"unsupported flow store URL scheme {scheme!r}; expected memory://, redis://host:port/db or "
        "redis+cluster://host:port"
    )


def flow_store_from_settings(settings: Settings) -> FlowStore:
    """The store the ``CPE_FLOW_*`` settings describe."""
    return create_flow_store(
        settings.flow_url,
        window=settings.flow_window,
        ttl_ms=settings.flow_ttl_ms,
        max_flows=settings.max_flows,
        timeout_ms=settings.flow_timeout_ms,
        retry_after_s=settings.retry_after_s,
        prefix=settings.flow_prefix,
    )
