"""POST /v1/routing/recommend: a flow's candidate routes ranked by their predicted contexts."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from app.api.deps import BusDep, EngineDep, FailurePolicyDep, LimitsDep, SettingsDep, parse_body
from app.api.errors import ERROR_RESPONSES
from app.api.openapi import json_body
from app.api.responses import OrjsonResponse
from app.routing import Attribution, Recommendation, recommend, route_forecast, routing_messages
from app.routing_schemas import RouteRecommendation, RouteRequest
from app.wire.decode import context_arrays

router = APIRouter(prefix="/v1/routing", tags=["routing"])


@router.post(
    "/recommend",
    response_model=RouteRecommendation,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(RouteRequest),
)
async def recommend_routes(
    request: Request,
    engine: EngineDep,
    limits: LimitsDep,
    settings: SettingsDep,
    policy: FailurePolicyDep,
    bus: BusDep,
) -> OrjsonResponse:
    """Rank the routes for the objective, weigh them, and publish the routing messages on the bus."""
    start = time.perf_counter()
    req = await parse_body(request, RouteRequest, limits)
    kind = req.model or limits.default_model
    windows = [(kind, *context_arrays(route.contexts)) for route in req.routes]
    forecasts = await engine.predict_many(windows)  # one forward pass for all routes
    routes = [
        route_forecast(route.route_id, route.cost_factor, features, forecast)
        for route, (_, _, features), forecast in zip(req.routes, windows, forecasts, strict=True)
    ]
    rec = recommend(req.flow_key, req.objective, routes, req.horizon, policy, settings.weight_temperature)
    predictor = forecasts[0].predictor
    who = Attribution(req.flow_key, None, int(time.time() * 1000), predictor.version)
    for message in routing_messages(rec, policy, settings.flow_key_format, who):
        await bus.publish(settings.bus_channel, message)  # never raises: an outage is counted
    return OrjsonResponse(_answer(rec, predictor.kind, predictor.version, start))


def _answer(rec: Recommendation, model_used: str, model_version: str, start: float) -> dict[str, Any]:
    """The RouteRecommendation of ``rec``, as a dict that orjson writes."""
    return {
        "flow_key": rec.flow_key,
        "objective": rec.objective,
        "routing_suggestions": [
            {
                "route_id": r.route_id,
                "expected_latency_ms": r.expected_latency_ms,
                "expected_throughput": r.expected_throughput,
                "reliability_score": r.reliability_score,
                "cost_factor": r.cost_factor,
                "failure_probability": r.failure_probability,
                "score": r.score,
                "predicted_load": r.predicted_load,
                "confidence": r.confidence,
            }
            for r in rec.routes
        ],
        "load_balancing_weights": rec.weights,
        "confidence": rec.confidence,
        "predicted_context": rec.routes[0].predicted_context,
        "time_horizon_ms": rec.time_horizon_ms,
        "model_used": model_used,
        "model_version": model_version,
        "processing_time_ms": round((time.perf_counter() - start) * 1000.0, 3),
    }
