"""POST /v1/otlp/v1/metrics: OpenTelemetry metrics (OTLP/HTTP, protobuf or JSON) onto the flow windows.

An OpenTelemetry Collector's ``otlphttp`` exporter (endpoint ``http://cpe:8000/v1/otlp``), Telegraf's or
gnmic's OTLP outputs, or an SDK's exporter feed CPE with no glue (``app/ingest/otlp.py`` says which
points are read). The answer is OTLP's: 200 with an ExportMetricsServiceResponse whose
``partial_success`` counts the points rejected and why; 400 for a body that is not an export request;
429 / 503 + Retry-After, as POST /v1/observe, when the store refuses the batch (the exporter retries).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.observe import IngestDep, refusal
from app.api.responses import OrjsonResponse
from app.flows import FlowsFull, FlowsUnavailable
from app.ingest.otlp import OtlpDecodeError, contexts_of, decode, encode_response
from app.services import Services

router = APIRouter(prefix="/v1/otlp", tags=["observe"])


@router.post(
    "/v1/metrics",
    responses={
        200: {
            "description": "An ExportMetricsServiceResponse (protobuf or JSON, as the request).",
            "content": {"application/x-protobuf": {}, "application/json": {}},
        },
        400: {"description": "Not an OTLP metrics export request."},
        413: {"description": "Request body larger than CPE_MAX_BODY_BYTES."},
        429: {"description": "The in-process flow store is full; retry after `Retry-After`."},
        503: {"description": "The flow store (Redis) is unreachable; retry after `Retry-After`."},
    },
)
async def otlp_metrics(request: Request, ingest: IngestDep) -> Response:
    """Gauge and sum points with a `flow_key` attribute, mapped onto features by metric name."""
    content_type = request.headers.get("content-type", "application/x-protobuf")
    try:
        export = decode(await request.body(), content_type)
    except OtlpDecodeError as exc:
        ingest.refused("otlp", "invalid")
        return OrjsonResponse({"detail": str(exc)}, status_code=400)
    points = contexts_of(export, Services.of(request.app).otlp_metric_table)
    late = ""
    if points.adapted.items:
        try:
            result = await ingest.apply(points.adapted, "otlp")
        except (FlowsFull, FlowsUnavailable) as exc:
            ingest.refused("otlp", "full" if isinstance(exc, FlowsFull) else "unavailable")
            status, answer = refusal(exc)
            return OrjsonResponse(answer, status_code=status, headers={"retry-after": str(exc.retry_after_s)})
        if result.late or result.duplicates:
            late = f"{result.late} point(s) late and {result.duplicates} duplicate(s), not applied"
    message = "; ".join(part for part in (points.message(), late) if part)
    body, media_type = encode_response(points.rejected, message, content_type)
    return Response(body, media_type=media_type)
