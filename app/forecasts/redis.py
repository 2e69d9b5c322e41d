"""Forecasts in Redis (``redis://``): every replica answers ``GET /v1/flows/{flow_key}`` with the newest.

One hash per flow, ``<prefix>{<flow_key>}`` (the braces are a hash tag: on Redis Cluster all of a flow's
keys, its window's included, hash to one slot), holding the serialized result, the numbers that score
the next observation, and the running score. It expires ``ttl_ms`` after its last update, as the flow's
window does. A round of continuous prediction costs two pipelined round-trips: one read of the
previous forecasts, one write of the new ones. A Redis that does not answer makes them fail
(``ForecastsUnavailable``): the round's forecasts are still published, only not kept, and ``problem``
says why until Redis answers again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from redis import exceptions as redis_errors

from app.forecasts.store import FlowForecast, FlowScore, ForecastStore

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("cpe.forecasts")

_FAILURES = (redis_errors.RedisError, OSError)
_FIELDS = ("r", "b", "l", "p", "e", "m", "n", "sm", "sp", "se")


class ForecastsUnavailable(Exception):
    """Redis did not answer: the forecasts were not read or not kept."""


class RedisForecasts(ForecastStore):
    """Each flow's newest forecast and running score in a Redis hash of its own."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | None = None,
        prefix: str,
        ttl_ms: int,
        timeout_s: float = 2.0,
    ) -> None:
        self._owns_client = client is None
        if client is None:
            from redis.asyncio import Redis

            assert url is not None, "give the Redis URL or a ready-made client"
            client = Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        self.client = client
        self.prefix = prefix
        self.ttl_ms = ttl_ms
        self._problem: str | None = None

    def key(self, flow_key: str) -> str:
        return f"{self.prefix}{{{flow_key}}}"

    @property
    def problem(self) -> str | None:
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
        if not flow_keys:
            return []
        pipe = self.client.pipeline(transaction=False)
        for flow_key in flow_keys:
            pipe.hmget(self.key(flow_key), list(_FIELDS))
        try:
            rows = await pipe.execute()
        except _FAILURES as exc:
            raise self._failed(exc) from None
        self._recovered()
        return [_forecast(row) for row in rows]

    async def put_many(self, forecasts: Sequence[tuple[str, FlowForecast]]) -> None:
        if not forecasts:
            return
        pipe = self.client.pipeline(transaction=False)
        for flow_key, fc in forecasts:
            key, score = self.key(flow_key), fc.score
            fields = {
                "r": fc.result(),
                "b": fc.base_ts,
                "l": repr(fc.latency),
                "p": repr(fc.persistence),
                "e": repr(fc.ewma),
                "m": fc.model,
                "n": score.scored,
                "sm": repr(score.model),
                "sp": repr(score.persistence),
                "se": repr(score.ewma),
            }
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.pexpire(key, self.ttl_ms)
        try:
            await pipe.execute()
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


def _forecast(row: list[bytes | None]) -> FlowForecast | None:
    result, base, latency, persistence, ewma, model, n, sm, sp, se = row
    if result is None or base is None:
        return None
    return FlowForecast(
        body=result,
        draft=None,
        base_ts=int(base),
        latency=float(latency or 0.0),
        persistence=float(persistence or 0.0),
        ewma=float(ewma or 0.0),
        model=(model or b"").decode(),
        score=FlowScore(int(n or 0), float(sm or 0.0), float(sp or 0.0), float(se or 0.0)),
    )
