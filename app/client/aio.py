"""``AsyncClient``: CPE's HTTP API v1 and its WebSocket streams from asyncio code.

    async with AsyncClient("http://127.0.0.1:8000") as cpe:
        result = await cpe.predict(flow_key, contexts)
        async with cpe.predictions(flow_keys=[flow_key]) as stream:
            async for forecast in stream:      # PredictionResults, as continuous prediction makes them
                ...

The methods are ``Client``'s, awaited; the streams are async iterators (``app/client/streams.py``). A
status of 400 or more, or a stream's error frame, raises ``CPEError`` (status, detail, retry_after_s).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self, TypeVar

import httpx

from app.client import calls
from app.client.calls import Body, FlowKeyIn
from app.client.errors import CPEError
from app.client.streams import ObserveStream, PredictStream, Subscription, predictions, routing
from app.client.types import Group, GroupPage
from app.ingest.observations import ObserveResult
from app.routing_schemas import Objective, RouteRecommendation
from app.schemas import (
    ContextVector,
    FeedbackAccepted,
    FlowPage,
    FlowSummary,
    ModelList,
    PredictionResult,
    Readiness,
    RollbackResult,
    Stats,
)
from app.stream_schemas import RoutingMessage

T = TypeVar("T")


class AsyncClient:
    """CPE at ``url``; ``api_key`` goes as X-API-Key, on the sockets too. ``http``: an httpx.AsyncClient
    of one's own instead."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.headers = {"x-api-key": api_key} if api_key else {}
        self.http = http or httpx.AsyncClient(base_url=url, headers=self.headers, timeout=timeout)
        self._own = http is None
        self.ws_url = str(self.http.base_url).rstrip("/").replace("http", "ws", 1)  # https -> wss

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self.http.aclose()

    async def _call(self, call: calls.Call[T]) -> T:
        return call.answer(await self.http.send(call.request(self.http)))

    async def predict(
        self,
        flow_key: FlowKeyIn,
        contexts: Sequence[ContextVector] | None = None,
        *,
        horizon: int = 1,
        model: str | None = None,
    ) -> PredictionResult:
        """A forecast of one flow ``horizon`` steps ahead, from ``contexts`` (None: its observed window)."""
        return await self._call(calls.predict(flow_key, contexts, horizon, model))

    async def predict_batch(self, requests: Sequence[Body]) -> list[PredictionResult | CPEError]:
        """Many windows in one request (each a PredictRequest's fields), answered in order; an item the server
        could not answer (a flow not observed: 404) is a ``CPEError`` in its place, not raised."""
        return await self._call(calls.predict_batch(requests))

    async def recommend(
        self,
        flow_key: FlowKeyIn,
        routes: Sequence[Body],
        *,
        objective: Objective = "balanced",
        horizon: int = 1,
        model: str | None = None,
    ) -> RouteRecommendation:
        """A flow's candidate routes (``{"route_id", "contexts", "cost_factor"}``), ranked."""
        return await self._call(calls.recommend(flow_key, routes, objective, horizon, model))

    async def observe(self, observations: Sequence[Body]) -> ObserveResult:
        """Observations (``{"Context": {...}}``, ``{"TransportMetrics": {...}}``, ...) onto the flows."""
        return await self._call(calls.observe(observations))

    async def flows(self, *, after: str | None = None, limit: int = 100) -> FlowPage:
        """A page of the observed flows in flow-key order; the next one with ``after=page.next``."""
        return await self._call(calls.flows(after, limit))

    async def flow(self, flow_key: str) -> FlowSummary:
        """One flow's window summary, newest forecast and running score (404: not observed)."""
        return await self._call(calls.flow(flow_key))

    async def delete_flow(self, flow_key: str) -> None:
        """Forget a flow's window (admin scope)."""
        return await self._call(calls.delete_flow(flow_key))

    async def put_group(
        self, group_id: str, flow_key: FlowKeyIn, routes: Sequence[Body], *, objective: Objective = "balanced"
    ) -> Group:
        """Create or replace a route group: ``routes`` are ``{"route_id", "flow_key", "cost_factor"}``,
        each an observed flow."""
        return await self._call(calls.put_group(group_id, flow_key, routes, objective))

    async def group(self, group_id: str) -> Group:
        """One route group and its current choice (404: no such group)."""
        return await self._call(calls.group(group_id))

    async def groups(self, *, after: str | None = None, limit: int = 100) -> GroupPage:
        """A page of the route groups in group-id order."""
        return await self._call(calls.groups(after, limit))

    async def delete_group(self, group_id: str) -> None:
        """Forget a route group (admin scope)."""
        return await self._call(calls.delete_group(group_id))

    async def feedback(
        self,
        actual: ContextVector,
        *,
        prediction_id: str | None = None,
        flow_key: FlowKeyIn | None = None,
        contexts: Sequence[ContextVector] | None = None,
    ) -> FeedbackAccepted:
        """What really came next, for online learning: after the prediction ``prediction_id`` (of this
        replica), or after the window ``flow_key``, ``contexts``."""
        return await self._call(calls.feedback(actual, prediction_id, flow_key, contexts))

    async def models(self) -> ModelList:
        """The models served, their versions and validation figures."""
        return await self._call(calls.models())

    async def rollback(self, *, model: str | None = None, version: str | None = None) -> RollbackResult:
        """Serve an earlier version of ``model`` (None: the default): ``version``, or the one before."""
        return await self._call(calls.rollback(model, version))

    async def stats(self) -> Stats:
        """This replica's figures since it started."""
        return await self._call(calls.stats())

    async def ready(self) -> Readiness:
        """Whether the replica serves, and which part does not work (a 503 is answered, not raised)."""
        return await self._call(calls.ready())

    # -- the streams -----------------------------------------------------------------------------------
    def routing(
        self,
        *,
        flow_keys: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        groups: Sequence[str] | None = None,
    ) -> Subscription[RoutingMessage]:
        """Routing messages (RoutingPrediction, LoadBalancingUpdate, CircuitBreakerPrediction) as they are
        published, of ``flow_keys`` and ``types`` (None: all); ``groups`` where the server has route groups.
        Use as ``async with``, then ``async for``."""
        return routing(f"{self.ws_url}/v1/stream/routing", self.headers, flow_keys, types, groups=groups)

    def predictions(
        self, *, flow_keys: Sequence[str] | None = None, groups: Sequence[str] | None = None
    ) -> Subscription[PredictionResult]:
        """The continuous forecasts of observed flows, of ``flow_keys`` and the flows of ``groups`` (both
        None: every flow). Use as ``async with``, then ``async for``."""
        return predictions(f"{self.ws_url}/v1/stream/predictions", self.headers, flow_keys, groups)

    def observe_stream(self) -> ObserveStream:
        """Observations over one socket, a frame at a time, each acknowledged in order (``async with``)."""
        return ObserveStream(f"{self.ws_url}/v1/stream/observe", self.headers)

    def predict_stream(self) -> PredictStream:
        """Predictions over one socket, many in flight at once (``async with``, then ``await predict``)."""
        return PredictStream(f"{self.ws_url}/v1/stream/predict", self.headers)
