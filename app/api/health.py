"""GET /healthz and /readyz: the probes of an orchestrator or load balancer."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import EngineDep
from app.api.responses import OrjsonResponse
from app.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process is up and its event loop answers."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(engine: EngineDep) -> OrjsonResponse:
    """Readiness: 200 when the models are loaded and the engine runs; 503 with the reason otherwise."""
    if not engine.running:
        readiness = Readiness(status="unavailable", reason="the inference engine is not running")
    else:
        readiness = Readiness(status="ready", models=list(engine.predictors))
    return OrjsonResponse(readiness.model_dump(), status_code=200 if readiness.status == "ready" else 503)
