"""The requests of API v1 and how their answers are read: what both clients (``Client``,
``AsyncClient``) send, so that they differ only in how they wait."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import orjson
from pydantic import BaseModel

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
M = TypeVar("M", bound=BaseModel)

FlowKeyIn = str | Sequence[int]  # 64 hex characters, or the 32 bytes of a Rust [u8; 32]
Body = Mapping[str, Any] | BaseModel


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request: its method, path, JSON body and query, and how a successful answer is read."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    body: Any = None
    params: Mapping[str, Any] | None = None
    also: frozenset[int] = frozenset()  # statuses of 400 or more that are answers here, not errors

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        content = None if self.body is None else orjson.dumps(self.body, default=_jsonable)
        headers = {"content-type": "application/json"} if content is not None else None
        params = {k: v for k, v in (self.params or {}).items() if v is not None}
        return http.build_request(self.method, self.path, content=content, params=params, headers=headers)

    def answer(self, response: httpx.Response) -> T:
        """The answer read, or ``CPEError`` for a status of 400 or more."""
        if response.status_code >= 400 and response.status_code not in self.also:
            raise CPEError.of_response(response)
        return self.read(response)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate_json(response.content)


def _nothing(response: httpx.Response) -> None:
    return None


def _results(response: httpx.Response) -> list[PredictionResult | CPEError]:
    where = f"{response.request.method} {response.request.url.path}"
    return [
        CPEError.of_frame(item["error"], f"{where} [{i}]") if "error" in item else PredictionResult(**item)
        for i, item in enumerate(orjson.loads(response.content)["results"])
    ]


def window(flow_key: FlowKeyIn, contexts: Sequence[ContextVector] | None, **fields: Any) -> dict[str, Any]:
    """A PredictRequest's fields (and ``fields`` not None): the body of a prediction or of feedback."""
    body = {"flow_key": _key(flow_key), **{k: v for k, v in fields.items() if v is not None}}
    if contexts is not None:
        body["contexts"] = list(contexts)
    return body


def _key(flow_key: FlowKeyIn) -> str | list[int]:
    return flow_key if isinstance(flow_key, str) else list(flow_key)


def predict(
    flow_key: FlowKeyIn, contexts: Sequence[ContextVector] | None, horizon: int, model: str | None
) -> Call[PredictionResult]:
    body = window(flow_key, contexts, horizon=horizon, model=model)
    return Call("POST", "/v1/predict", _model(PredictionResult), body)


def predict_batch(requests: Sequence[Body]) -> Call[list[PredictionResult | CPEError]]:
    return Call("POST", "/v1/predict/batch", _results, {"requests": list(requests)})


def recommend(
    flow_key: FlowKeyIn, routes: Sequence[Body], objective: Objective, horizon: int, model: str | None
) -> Call[RouteRecommendation]:
    body = {"flow_key": _key(flow_key), "routes": list(routes), "objective": objective, "horizon": horizon}
    if model is not None:
        body["model"] = model
    return Call("POST", "/v1/routing/recommend", _model(RouteRecommendation), body)


def observe(observations: Sequence[Body]) -> Call[ObserveResult]:
    return Call("POST", "/v1/observe", _model(ObserveResult), {"observations": list(observations)})


def flows(after: str | None, limit: int) -> Call[FlowPage]:
    return Call("GET", "/v1/flows", _model(FlowPage), params={"after": after, "limit": limit})


def flow(flow_key: str) -> Call[FlowSummary]:
    return Call("GET", f"/v1/flows/{flow_key}", _model(FlowSummary))


def delete_flow(flow_key: str) -> Call[None]:
    return Call("DELETE", f"/v1/flows/{flow_key}", _nothing)


def put_group(
    group_id: str, flow_key: FlowKeyIn, routes: Sequence[Body], objective: Objective
) -> Call[Group]:
    body = {"flow_key": _key(flow_key), "objective": objective, "routes": list(routes)}
    return Call("PUT", f"/v1/groups/{group_id}", _model(Group), body)


def group(group_id: str) -> Call[Group]:
    return Call("GET", f"/v1/groups/{group_id}", _model(Group))


def groups(after: str | None, limit: int) -> Call[GroupPage]:
    return Call("GET", "/v1/groups", _model(GroupPage), params={"after": after, "limit": limit})


def delete_group(group_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/groups/{group_id}", _nothing)


def feedback(
    actual: ContextVector,
    prediction_id: str | None,
    flow_key: FlowKeyIn | None,
    contexts: Sequence[ContextVector] | None,
) -> Call[FeedbackAccepted]:
    if prediction_id is not None:
        body: dict[str, Any] = {"prediction_id": prediction_id, "actual": actual}
    elif flow_key is not None and contexts is not None:
        body = window(flow_key, contexts, actual=actual)
    else:
        raise ValueError("feedback needs prediction_id, or both flow_key and contexts")
    return Call("POST", "/v1/feedback", _model(FeedbackAccepted), body)


def models() -> Call[ModelList]:
    return Call("GET", "/v1/models", _model(ModelList))


def rollback(model: str | None, version: str | None) -> Call[RollbackResult]:
    body = {k: v for k, v in (("model", model), ("version", version)) if v is not None}
    return Call("POST", "/v1/models/rollback", _model(RollbackResult), body)


def stats() -> Call[Stats]:
    return Call("GET", "/v1/stats", _model(Stats))


def ready() -> Call[Readiness]:
    # 503 (unavailable) is an answer here, not an error: it says why
    return Call("GET", "/readyz", _model(Readiness), also=frozenset({503}))
