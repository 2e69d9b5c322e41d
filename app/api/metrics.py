"""GET /metrics: this replica's Prometheus metrics (see app/metrics.py for what they are)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import MetricsDep
from app.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text exposition format."}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics of this replica, for a scraper."""
    return Response(metrics.render(), media_type=CONTENT_TYPE)
