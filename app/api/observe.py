"""POST /v1/observe and WS /v1/stream/observe: observations of the network, onto the flow windows.

Both doors hand their observations to the one ``IngestService`` (``app/ingest/service.py``). A 202 (or a
WebSocket ack) comes once every accepted observation is applied: in Redis with CPE_FLOW_URL=redis://,
in the bounded in-process store with memory:// (full: 429 + Retry-After, nothing applied). Redis
unreachable: 503 + Retry-After, nothing applied. Bad input: 422 naming the item index and the field.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError
from starlette.requests import HTTPConnection
from starlette.status import WS_1008_POLICY_VIOLATION, WS_1009_MESSAGE_TOO_BIG

from app.api.errors import ERROR_RESPONSES, error_detail
from app.api.openapi import json_body
from app.api.responses import OrjsonResponse
from app.auth import accept_websocket
from app.flows import FlowsFull, FlowsUnavailable
from app.ingest import IngestService, fastread
from app.ingest.adapters import Adapted, adapt
from app.ingest.observations import Observation, ObserveRequest, ObserveResult
from app.services import Services

router = APIRouter(prefix="/v1/observe", tags=["observe"])
stream = APIRouter(prefix="/v1/stream", tags=["stream"])

_FRAME = TypeAdapter(list[Observation])


async def get_ingest(conn: HTTPConnection) -> IngestService:
    return Services.of(conn.app).ingest


IngestDep = Annotated[IngestService, Depends(get_ingest)]

REFUSALS: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    429: {"description": "The in-process flow store is full (CPE_MAX_FLOWS); retry after `Retry-After`."},
    503: {"description": "The flow store (Redis) is unreachable; retry after `Retry-After`."},
}


def refusal(exc: FlowsFull | FlowsUnavailable) -> tuple[int, dict[str, Any]]:
    """The status and body of a batch the store refused whole."""
    status = 429 if isinstance(exc, FlowsFull) else 503
    return status, {"detail": str(exc), "retry_after_s": exc.retry_after_s}


MSGPACK = "application/msgpack"


def _observe_body() -> dict[str, Any]:
    """The body in JSON, or the same map in MessagePack."""
    extra = json_body(ObserveRequest)
    content = extra["requestBody"]["content"]
    content[MSGPACK] = content["application/json"]
    return extra


@router.post(
    "",
    status_code=202,
    response_model=ObserveResult,
    responses=REFUSALS,
    openapi_extra=_observe_body(),
)
async def observe(request: Request, ingest: IngestDep) -> OrjsonResponse:
    """Apply observations of any flows (native contexts, transport, STOQ, Layer 1 and Layer 2 messages),
    in JSON or (``Content-Type: application/msgpack``) MessagePack."""
    body = await request.body()
    msgpack = request.headers.get("content-type", "").split(";", 1)[0].strip().lower() == MSGPACK
    try:
        adapted = ingest.read_msgpack(body) if msgpack else ingest.read(body)
    except ValidationError as exc:
        ingest.refused("http", "invalid")
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=body) from None
    try:
        result = await ingest.apply(adapted, "http")
    except (FlowsFull, FlowsUnavailable) as exc:
        ingest.refused("http", "full" if isinstance(exc, FlowsFull) else "unavailable")
        status, answer = refusal(exc)
        return OrjsonResponse(answer, status_code=status, headers={"retry-after": str(exc.retry_after_s)})
    return OrjsonResponse(result.model_dump(), status_code=202)


def read_frame(text: str | bytes, ingest: IngestService) -> Adapted:
    """A WebSocket frame or stream entry, a JSON list of observations (or one observation), as items."""
    frame = text if text.lstrip()[:1] in ("[", b"[") else b"[%s]" % _b(text)
    fast = fastread.read_frame(frame, ingest.limits.max_batch)
    if fast is not None:
        return fast
    return adapt(parse_frame(frame, ingest), ingest.flow_record_interval_ms)


def parse_frame(frame: str | bytes, ingest: IngestService) -> list[Observation]:
    """The observations of a frame that is a JSON list; else pydantic's ``ValidationError``."""
    observations = _FRAME.validate_json(frame)
    if len(observations) > ingest.limits.max_batch:
        raise ValidationError.from_exception_data(
            "observations",
            [
                {
                    "type": PydanticCustomError(
                        "too_long",
                        "at most {max_length} observations in a frame (CPE_MAX_OBSERVE_BATCH), not {actual}",
                        {"max_length": ingest.limits.max_batch, "actual": len(observations)},
                    ),
                    "loc": (),
                    "input": None,
                }
            ],
        )
    return observations


def _b(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


@stream.websocket("/observe")
async def stream_observe(websocket: WebSocket, ingest: IngestDep) -> None:
    """Observations streamed by a collector: a frame is a JSON list; an ack (or error) per frame, in order."""
    if not await accept_websocket(websocket, "write"):
        return
    settings = Services.of(websocket.app).settings
    frame = 0
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text") or message.get("bytes")
            if text is None:
                continue
            frame += 1
            if len(text) > settings.ws_max_frame_bytes:
                await websocket.close(WS_1009_MESSAGE_TOO_BIG, "frame larger than CPE_WS_MAX_FRAME_BYTES")
                return
            await websocket.send_text((await _ack(frame, text, ingest)).decode())
    except WebSocketDisconnect:
        return
    except RuntimeError:  # the client went away mid-send
        with contextlib.suppress(RuntimeError):
            await websocket.close(WS_1008_POLICY_VIOLATION)


async def _ack(frame: int, text: str | bytes, ingest: IngestService) -> bytes:
    """The answer to a frame: ``{"op": "ack", "frame", accepted, late, duplicates, imputed}`` or an error."""
    try:
        adapted = read_frame(text, ingest)
    except ValidationError as exc:
        ingest.refused("websocket", "invalid")
        detail = error_detail(exc.errors(include_url=False))
        return orjson.dumps({"op": "error", "frame": frame, "status": 422, "detail": detail})
    try:
        result = await ingest.apply(adapted, "websocket")
    except (FlowsFull, FlowsUnavailable) as exc:
        ingest.refused("websocket", "full" if isinstance(exc, FlowsFull) else "unavailable")
        status, answer = refusal(exc)
        return orjson.dumps({"op": "error", "frame": frame, "status": status, **answer})
    return orjson.dumps({"op": "ack", "frame": frame, **result.model_dump()})
