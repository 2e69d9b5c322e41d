"""GET /metrics: this replica's Prometheus metrics (the README lists them)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import ServicesDep
from app.metrics import CONTENT_TYPE, render

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text exposition format."}},
)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics of this replica, for a scraper."""
    return Response(render(services.registry), media_type=CONTENT_TYPE)
