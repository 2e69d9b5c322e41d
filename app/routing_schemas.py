"""The wire types of routing: POST /v1/routing/recommend and the frames of the WebSocket streams.

The rules shared with /v1/predict (windows, served models, horizons, flow keys) are PredictRequest's
own validators, so both endpoints accept and refuse the same windows with the same errors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from app.schemas import ContextVector, FlowKey, Limits, PredictRequest
from app.wire.rules import FLOW_KEY_HEX, MAX_COST_FACTOR, MAX_LABEL, D

Objective = Literal["latency", "throughput", "reliability", "balanced"]
MessageType = Literal["RoutingPrediction", "LoadBalancingUpdate", "CircuitBreakerPrediction"]
RouteId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_LABEL)]
# letters, digits and ._:~- : safe in a URL path, a Redis key and a log line as they are
GROUP_ID_PATTERN = r"^[A-Za-z0-9._:~-]{1,128}$"
GroupId = Annotated[str, StringConstraints(pattern=GROUP_ID_PATTERN)]

_EXAMPLE_WINDOW: list[Any] = [
    {"timestamp": 1_700_000_000_000 + 1000 * i, "features": [12.0 + i, 1.5, 0.001, 840.0, 0.6, 0.0, 120.0, 4]}
    for i in range(3)
]


class _Route(Protocol):
    @property
    def route_id(self) -> str: ...


R = TypeVar("R", bound=_Route)


def check_routes(routes: list[R], info: ValidationInfo) -> list[R]:
    """At most CPE_MAX_ROUTES routes (the limits in the validation context), with distinct route_ids: the
    rule of a recommend request's routes and of a route group's alike."""
    limits = info.context if isinstance(info.context, Limits) else None
    if limits is not None and len(routes) > limits.max_routes:
        raise PydanticCustomError(
            "too_long",
            "List should have at most {max_length} items after validation, not {actual_length}",
            {"field_type": "List", "max_length": limits.max_routes, "actual_length": len(routes)},
        )
    first: dict[str, int] = {}
    for i, route in enumerate(routes):
        j = first.setdefault(route.route_id, i)
        if j != i:
            raise PydanticCustomError(
                "duplicate_route_id",
                "route_ids must be unique: routes[{index}].route_id '{route_id}' repeats routes[{first}]",
                {"index": i, "route_id": route.route_id, "first": j},
            )
    return routes


class RouteCandidate(BaseModel):
    """One route the flow could take, with the recent window of contexts measured on it."""

    route_id: RouteId = Field(description="The route (service) identifier, unique within the request.")
    contexts: list[ContextVector] = Field(
        min_length=1, description="1..CPE_MAX_WINDOW contexts of this route, timestamps not decreasing."
    )
    cost_factor: float = Field(
        default=1.0,
        gt=0.0,
        le=MAX_COST_FACTOR,
        allow_inf_nan=False,
        description="The caller's relative cost of the route (> 0); `balanced` prefers cheaper routes.",
    )

    @field_validator("contexts")
    @classmethod
    def _window(cls, contexts: list[ContextVector], info: ValidationInfo) -> list[ContextVector]:
        return PredictRequest._window(contexts, info)


class RouteRequest(BaseModel):
    """A flow's candidate routes, to rank by their predicted contexts."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "flow_key": "3f" * 32,
                    "routes": [
                        {"route_id": "eu-west-1a", "contexts": _EXAMPLE_WINDOW, "cost_factor": 1.0},
                        {"route_id": "eu-west-1b", "contexts": _EXAMPLE_WINDOW[1:], "cost_factor": 0.8},
                    ],
                    "objective": "balanced",
                }
            ]
        }
    )

    flow_key: FlowKey
    routes: list[RouteCandidate] = Field(
        min_length=1, description="1..CPE_MAX_ROUTES candidate routes with distinct route_ids."
    )
    objective: Objective = Field(default="balanced", description="What the ranking optimizes.")
    # `model` before `horizon`: the horizon's bound depends on the model, and fields validate in order
    model: str | None = Field(default=None, description="Model kind to use; null = the service's default.")
    horizon: int = Field(default=1, ge=1, description="Steps ahead to judge the routes at, 1..H of the model")

    @field_validator("routes")
    @classmethod
    def _routes(cls, routes: list[RouteCandidate], info: ValidationInfo) -> list[RouteCandidate]:
        return check_routes(routes, info)

    @field_validator("model")
    @classmethod
    def _served(cls, model: str | None, info: ValidationInfo) -> str | None:
        return PredictRequest._served(model, info)

    @field_validator("horizon")
    @classmethod
    def _within_model_horizon(cls, horizon: int, info: ValidationInfo) -> int:
        return PredictRequest._within_model_horizon(horizon, info)


class RouteSuggestion(BaseModel):
    """One route's predicted figures; the routing messages carry the first five fields."""

    route_id: str
    expected_latency_ms: float = Field(description="Mean of the predicted latency distribution, ms.")
    expected_throughput: float = Field(description="Mean of the predicted throughput distribution, Mbit/s.")
    reliability_score: float = Field(
        ge=0.0, le=1.0, description="(1 - expected loss_rate) x (1 - expected error_rate)."
    )
    cost_factor: float = Field(description="The request's cost factor of the route.")
    failure_probability: float = Field(
        ge=0.0,
        le=1.0,
        description="P(loss_rate + error_rate > CPE_FAILURE_RATE or latency > CPE_FAILURE_LATENCY_FACTOR x "
        "the window's median latency) under the predictive distribution.",
    )
    score: float = Field(ge=0.0, le=1.0, description="The objective's score the ranking sorts by; 1 is best.")
    predicted_load: float = Field(description="Predicted utilization (0..1).")
    confidence: float = Field(ge=0.0, le=1.0, description="Calibrated confidence of the route's forecast.")


class RouteRecommendation(BaseModel):
    """The routes ranked best first, how to spread the flow's load over them, and how sure that is."""

    flow_key: str = Field(description=f"The request's flow key, as {FLOW_KEY_HEX} hex characters.")
    objective: Objective
    routing_suggestions: list[RouteSuggestion] = Field(description="Every route, best first.")
    load_balancing_weights: dict[str, float] = Field(
        description="route_id -> share of the load; they sum to 1. Only a route certain to fail gets 0."
    )
    confidence: float = Field(
        ge=0.0,
        le=1.0,
        description="Probability that a request spread by the weights sees a latency within ±10 % of its "
        "route's prediction: the routes' calibrated confidences averaged with the weights.",
    )
    predicted_context: list[float] = Field(description=f"The best route's {D} predicted features.")
    time_horizon_ms: int = Field(description="How far ahead of the windows' last contexts this looks, ms.")
    model_used: str
    model_version: str
    processing_time_ms: float


class SubscribeFrame(BaseModel):
    """``{"op": "subscribe"}`` on /v1/stream/routing: which routing messages to receive from now on."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["subscribe"]
    flow_keys: list[FlowKey] | None = Field(
        default=None,
        description="Only the messages about these flows (every message carries its `flow_key`); with "
        "`groups` absent too, every flow.",
    )
    groups: list[GroupId] | None = Field(
        default=None, description="Also the messages of these route groups (their `group_id`)."
    )
    types: list[MessageType] | None = Field(
        default=None, description="Only these message types; absent or null = every type."
    )


class StreamPredictRequest(PredictRequest):
    """A PredictRequest on /v1/stream/predict, with the ``id`` that its answer carries back."""

    id: Annotated[str, StringConstraints(max_length=MAX_LABEL)] | int = Field(
        description="Chosen by the client; the answer `{id, result}` or `{id, error}` repeats it."
    )
