"""``Client``: CPE's HTTP API v1 from blocking code (the streams are ``AsyncClient``'s).

    with Client("http://127.0.0.1:8000") as cpe:
        result = cpe.predict(flow_key, contexts, horizon=3)   # a PredictionResult

Every method sends one request and answers the server's own type; a status of 400 or more raises
``CPEError`` (status, detail, retry_after_s). ``AsyncClient`` has the same methods, awaited.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self, TypeVar

import httpx

from app.client import calls
from app.client.calls import Body, FlowKeyIn
from app.client.errors import CPEError
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

T = TypeVar("T")


class Client:
    """CPE at ``url``; ``api_key`` goes as X-API-Key. ``http``: an httpx.Client of one's own instead."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        headers = {"x-api-key": api_key} if api_key else {}
        self.http = http or httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self._own = http is None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.http.close()

    def _call(self, call: calls.Call[T]) -> T:
        return call.answer(self.http.send(call.request(self.http)))

    def predict(
        self,
        flow_key: FlowKeyIn,
        contexts: Sequence[ContextVector] | None = None,
        *,
        horizon: int = 1,
        model: str | None = None,
    ) -> PredictionResult:
        """A forecast of one flow ``horizon`` steps ahead, from ``contexts`` (None: its observed window)."""
        return self._call(calls.predict(flow_key, contexts, horizon, model))

    def predict_batch(self, requests: Sequence[Body]) -> list[PredictionResult | CPEError]:
        """Many windows in one request (each a PredictRequest's fields), answered in order; an item the server
        could not answer (a flow not observed: 404) is a ``CPEError`` in its place, not raised."""
        return self._call(calls.predict_batch(requests))

    def recommend(
        self,
        flow_key: FlowKeyIn,
        routes: Sequence[Body],
        *,
        objective: Objective = "balanced",
        horizon: int = 1,
        model: str | None = None,
    ) -> RouteRecommendation:
        """A flow's candidate routes (``{"route_id", "contexts", "cost_factor"}``), ranked."""
        return self._call(calls.recommend(flow_key, routes, objective, horizon, model))

    def observe(self, observations: Sequence[Body]) -> ObserveResult:
        """Observations (``{"Context": {...}}``, ``{"TransportMetrics": {...}}``, ...) onto the flows."""
        return self._call(calls.observe(observations))

    def flows(self, *, after: str | None = None, limit: int = 100) -> FlowPage:
        """A page of the observed flows in flow-key order; the next one with ``after=page.next``."""
        return self._call(calls.flows(after, limit))

    def flow(self, flow_key: str) -> FlowSummary:
        """One flow's window summary, newest forecast and running score (404: not observed)."""
        return self._call(calls.flow(flow_key))

    def delete_flow(self, flow_key: str) -> None:
        """Forget a flow's window (admin scope)."""
        return self._call(calls.delete_flow(flow_key))

    def put_group(
        self, group_id: str, flow_key: FlowKeyIn, routes: Sequence[Body], *, objective: Objective = "balanced"
    ) -> Group:
        """Create or replace a route group: ``routes`` are ``{"route_id", "flow_key", "cost_factor"}``,
        each an observed flow."""
        return self._call(calls.put_group(group_id, flow_key, routes, objective))

    def group(self, group_id: str) -> Group:
        """One route group and its current choice (404: no such group)."""
        return self._call(calls.group(group_id))

    def groups(self, *, after: str | None = None, limit: int = 100) -> GroupPage:
        """A page of the route groups in group-id order."""
        return self._call(calls.groups(after, limit))

    def delete_group(self, group_id: str) -> None:
        """Forget a route group (admin scope)."""
        return self._call(calls.delete_group(group_id))

    def feedback(
        self,
        actual: ContextVector,
        *,
        prediction_id: str | None = None,
        flow_key: FlowKeyIn | None = None,
        contexts: Sequence[ContextVector] | None = None,
    ) -> FeedbackAccepted:
        """What really came next, for online learning: after the prediction ``prediction_id`` (of this
        replica), or after the window ``flow_key``, ``contexts``."""
        return self._call(calls.feedback(actual, prediction_id, flow_key, contexts))

    def models(self) -> ModelList:
        """The models served, their versions and validation figures."""
        return self._call(calls.models())

    def rollback(self, *, model: str | None = None, version: str | None = None) -> RollbackResult:
        """Serve an earlier version of ``model`` (None: the default): ``version``, or the one before."""
        return self._call(calls.rollback(model, version))

    def stats(self) -> Stats:
        """This replica's figures since it started."""
        return self._call(calls.stats())

    def ready(self) -> Readiness:
        """Whether the replica serves, and which part does not work (a 503 is answered, not raised)."""
        return self._call(calls.ready())
