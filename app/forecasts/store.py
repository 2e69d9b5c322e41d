"""Each flow's newest forecast and running score: in this process (``memory://``) or in Redis (``redis://``).

A ``FlowForecast`` is what scoring the next observation needs (the window's newest timestamp the forecast
was made from, the predicted latency, and what persistence and EWMA said for the same moment) beside the
serialized ``PredictionResult`` that ``GET /v1/flows/{flow_key}`` answers. ``create_forecast_store(url)``
picks the backend by scheme, like the cache and the bus.
"""

from __future__ import annotations

import abc
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

import numpy as np

from app.forecasts.result import Draft, serialize

if TYPE_CHECKING:
    from redis.asyncio import Redis

REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(slots=True)
class FlowScore:
    """A flow's running score: absolute latency errors summed over its ``scored`` forecasts."""

    scored: int = 0
    model: float = 0.0  # sum of |forecast - actual| latency_ms, by the model
    persistence: float = 0.0  # ... by persistence (the window's newest latency)
    ewma: float = 0.0  # ... by the EWMA of the window's latency

    def add(self, model: float, persistence: float, ewma: float) -> None:
        self.scored += 1
        self.model += model
        self.persistence += persistence
        self.ewma += ewma

    def as_dict(self) -> dict[str, float | int | None]:
        """The score as GET /v1/flows/{flow_key} answers it: MAEs in ms, the model's ratio to persistence."""
        n = self.scored
        if not n:
            return {
                "scored": 0,
                "mae_ms": None,
                "persistence_mae_ms": None,
                "ewma_mae_ms": None,
                "ratio": None,
            }
        return {
            "scored": n,
            "mae_ms": round(self.model / n, 6),
            "persistence_mae_ms": round(self.persistence / n, 6),
            "ewma_mae_ms": round(self.ewma / n, 6),
            "ratio": round(self.model / self.persistence, 6) if self.persistence else None,
        }


@dataclass(slots=True)
class FlowForecast:
    """A flow's newest forecast, and its score before it."""

    body: bytes | None  # the serialized PredictionResult; None until ``result`` serializes ``draft``
    draft: Draft | None  # what it is made of, while not serialized yet (in-process only)
    base_ts: int  # timestamp of the window's newest context: the forecast is for the context after it
    latency: float  # predicted latency_ms of that next context
    persistence: float  # persistence's forecast for it: the newest latency of the window
    ewma: float  # EWMA's forecast for it
    model: str  # kind of the model that made it
    score: FlowScore
    # (4, D) its step 1's served lower and upper, loc and std (``app.learning.conformal``): what scoring
    # its interval needs; None where it was not kept
    interval: np.ndarray | None = None

    def result(self) -> bytes:
        """The serialized PredictionResult (made now, once, if it was not yet)."""
        if self.body is None:
            assert self.draft is not None, "a forecast holds its result or what it is made of"
            self.body, self.draft = serialize(self.draft), None  # the forward pass's arrays may go
        return self.body


class ForecastStore(abc.ABC):
    """The newest forecast per flow; idle flows' forecasts expire with their windows. ``async with``."""

    keeps_drafts = False  # whether it keeps forecasts unserialized (in-process), else serialized

    @abc.abstractmethod
    async def get_many(self, flow_keys: Sequence[str]) -> list[FlowForecast | None]:
        """The newest forecast of each flow, in order; None where there is none."""

    @abc.abstractmethod
    async def put_many(self, forecasts: Sequence[tuple[str, FlowForecast]]) -> None:
        """Keep each (flow_key, forecast) as that flow's newest."""

    @abc.abstractmethod
    async def delete(self, flow_key: str) -> None:
        """Forget a flow's forecast and score."""

    async def get(self, flow_key: str) -> FlowForecast | None:
        [found] = await self.get_many([flow_key])
        return found

    @property
    def problem(self) -> str | None:
        """Why the store does not work now, or None."""
        return None

    async def check(self) -> str | None:
        """``problem`` as of now: a store that can be out of reach asks it (/readyz calls this)."""
        return self.problem

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class MemoryForecasts(ForecastStore):
    """Forecasts in this process, at most ``max_flows``, each forgotten ``ttl_ms`` after its last update."""

    keeps_drafts = True

    def __init__(self, *, ttl_ms: int, max_flows: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_ms, self.max_flows = ttl_ms, max_flows
        self._clock = clock
        # in order of last update, with its clock: expiry pops the due ones off the front, never walks all
        self._forecasts: OrderedDict[str, tuple[float, FlowForecast]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._forecasts)

    async def get_many(self, flow_keys: Sequence[str]) -> list[FlowForecast | None]:
        forecasts = self._forecasts
        found = []
        for key in flow_keys:
            entry = forecasts.get(key)
            found.append(None if entry is None else entry[1])
        return found

    async def put_many(self, forecasts: Sequence[tuple[str, FlowForecast]]) -> None:
        stored, now = self._forecasts, self._clock()
        for key, forecast in forecasts:
            stored[key] = (now, forecast)
            stored.move_to_end(key)
        deadline = now - self.ttl_ms / 1000.0
        while stored:
            oldest = next(iter(stored.values()))[0]
            if oldest > deadline and len(stored) <= self.max_flows:
                break
            stored.popitem(last=False)

    async def delete(self, flow_key: str) -> None:
        self._forecasts.pop(flow_key, None)


def create_forecast_store(
    url: str, *, ttl_ms: int, max_flows: int, prefix: str = "cpe:fc:", client: Redis | None = None
) -> ForecastStore:
    """The store that ``url``'s scheme names, imported only when chosen."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryForecasts(ttl_ms=ttl_ms, max_flows=max_flows)
    if scheme in REDIS_SCHEMES:
        from app.forecasts.redis import RedisForecasts

        return RedisForecasts(url, client=client, prefix=prefix, ttl_ms=ttl_ms)
    raise ValueError(
        f"unsupported forecast URL scheme {scheme!r}; expected memory:// or redis://host:port/db"
    )
