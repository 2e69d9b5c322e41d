"""GET /healthz and /readyz: the probes of an orchestrator or load balancer."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import BusDep, CacheDep, EngineDep, LearningDep
from app.api.flow_predictions import ForecastsDep
from app.api.flows import FlowsDep
from app.api.groups import GroupsDep
from app.api.responses import OrjsonResponse
from app.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process is up and its event loop answers."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(
    engine: EngineDep,
    cache: CacheDep,
    bus: BusDep,
    learning: LearningDep,
    flows: FlowsDep,
    groups: GroupsDep,
    forecasts: ForecastsDep,
) -> OrjsonResponse:
    """Readiness: 200 when the models are loaded and the engine runs; 503 with the reason otherwise.

    A 200 says `degraded` and names the parts that do not work when some part that serving can do
    without (the Redis cache, the Redis bus, the Redis feedback stream, the Redis flow and forecast
    stores, each asked now with a PING) does not."""
    if not engine.running:
        readiness = Readiness(status="unavailable", reason="the inference engine is not running")
    else:
        problems = {
            "cache": cache.problem,
            "bus": bus.problem,
            "feedback": learning.store.problem if learning is not None else None,
            "flows": await flows.check(),
            "forecasts": await forecasts.store.check() if forecasts is not None else None,
            "groups": groups.store.problem,
        }
        degraded = {part: problem for part, problem in problems.items() if problem}
        readiness = Readiness(
            status="degraded" if degraded else "ready", models=list(engine.predictors), degraded=degraded
        )
    body = readiness.model_dump(exclude=None if readiness.degraded else {"degraded"})
    return OrjsonResponse(body, status_code=503 if readiness.status == "unavailable" else 200)
