"""The wire types of route groups: PUT /v1/groups/{group_id}'s body, and what GET answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from app.routing_schemas import Objective, RouteId, check_routes
from app.schemas import FlowKey
from app.wire.rules import MAX_COST_FACTOR


class GroupRouteIn(BaseModel):
    """One candidate route: the observed flow whose measurements are the route's."""

    model_config = ConfigDict(extra="forbid")

    route_id: RouteId = Field(description="The route (service) identifier, unique within the group.")
    flow_key: FlowKey = Field(description="The observed flow (POST /v1/observe) that measures this route.")
    cost_factor: float = Field(
        default=1.0,
        gt=0.0,
        le=MAX_COST_FACTOR,
        allow_inf_nan=False,
        description="The caller's relative cost of the route (> 0, finite); `balanced` prefers cheaper "
        "routes.",
    )


class GroupRequest(BaseModel):
    """A flow's candidate routes, each an observed flow, to re-rank whenever one gets a new forecast."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "flow_key": "3f" * 32,
                    "objective": "latency",
                    "routes": [
                        {"route_id": "eu-west-1a", "flow_key": "a1" * 32, "cost_factor": 1.0},
                        {"route_id": "eu-west-1b", "flow_key": "b2" * 32, "cost_factor": 0.8},
                    ],
                }
            ]
        },
    )

    flow_key: FlowKey = Field(description="The flow whose routes these are; the routing messages carry it.")
    objective: Objective = Field(default="balanced", description="What the ranking optimizes.")
    routes: list[GroupRouteIn] = Field(
        min_length=1,
        description="1..CPE_MAX_ROUTES routes with distinct route_ids and distinct flows, each flow "
        "observed.",
    )

    @field_validator("routes")
    @classmethod
    def _routes(cls, routes: list[GroupRouteIn], info: ValidationInfo) -> list[GroupRouteIn]:
        check_routes(routes, info)
        first: dict[str, int] = {}
        for i, route in enumerate(routes):
            j = first.setdefault(route.flow_key, i)
            if j != i:
                raise PydanticCustomError(
                    "duplicate_route_flow",
                    "each route is its own flow: routes[{index}].flow_key repeats routes[{first}]",
                    {"index": i, "first": j},
                )
        return routes


class GroupRouteOut(BaseModel):
    route_id: str
    flow_key: str
    cost_factor: float


class RankedRoute(BaseModel):
    """One route of the group's newest ranking (README, Routing: the formulas)."""

    route_id: str
    score: float = Field(description="The objective's score, 1 the best.")
    weight: float = Field(description="Its weight in the newest ranking (published or not).")
    expected_latency_ms: float
    expected_throughput: float
    reliability_score: float
    cost_factor: float
    failure_probability: float
    breaker_open: bool
    predicted_load: float
    confidence: float


class GroupAnswer(BaseModel):
    """A group's definition and its current choice: what was last published, and the newest ranking."""

    group_id: str
    flow_key: str
    objective: Objective
    routes: list[GroupRouteOut]
    updated_ms: int = Field(description="When the group was last PUT, ms since the epoch.")
    best: str | None = Field(description="The published best route; null until a route has a forecast.")
    weights: dict[str, float] = Field(description="The published load-balancing weights.")
    open_breakers: list[str] = Field(description="Routes whose circuit breaker is open.")
    ranking: list[RankedRoute] = Field(description="The newest ranking, the published best first.")
    changed_ms: int | None = Field(description="When a change was last published, ms since the epoch.")
    best_since_ts: int | None = Field(
        description="Observation time (the routes' newest timestamp) when the best route was chosen."
    )
    ranked_ms: int | None = Field(description="When it was last re-ranked, ms since the epoch.")
    rankings: int = Field(description="Re-rankings since the group was PUT.")
    changes: int = Field(description="Changes of best route published since the group was PUT.")
    model_version: str | None


class GroupListItem(BaseModel):
    group_id: str
    flow_key: str
    objective: Objective
    routes: int
    best: str | None


class GroupPage(BaseModel):
    """A page of groups in group-id order; ask for the next with ``after=next``."""

    groups: list[GroupListItem]
    next: str | None = Field(description="The cursor of the next page; null on the last.")
    count: int = Field(description="Groups held.")


def answer(group: Any, state: Any) -> dict[str, Any]:
    """The GroupAnswer of a ``Group`` and its ``GroupState`` (or None), as a dict that orjson writes."""
    return {
        "group_id": group.group_id,
        "flow_key": group.flow_key,
        "objective": group.objective,
        "routes": [
            {"route_id": r.route_id, "flow_key": r.flow_key, "cost_factor": r.cost_factor}
            for r in group.routes
        ],
        "updated_ms": group.updated_ms,
        "best": None if state is None else state.best,
        "weights": {} if state is None else state.weights,
        "open_breakers": [] if state is None else state.open_breakers,
        "ranking": [] if state is None else state.ranking,
        "changed_ms": None if state is None else state.changed_ms,
        "best_since_ts": None if state is None else state.best_since_ts,
        "ranked_ms": None if state is None else state.updated_ms,
        "rankings": 0 if state is None else state.rankings,
        "changes": 0 if state is None else state.changes,
        "model_version": None if state is None else state.model_version,
    }
