"""GET /v1/flows, GET and DELETE /v1/flows/{flow_key}: the server-side flow windows."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import TypeAdapter
from starlette.requests import HTTPConnection

from app.api.flow_predictions import ForecastsDep
from app.api.observe import refusal
from app.api.responses import OrjsonResponse
from app.flows import FlowStore, FlowsUnavailable, FlowWindow
from app.schemas import FlowContextOut, FlowKey, FlowListItem, FlowPage, FlowSummary, Message
from app.services import Services
from models.scaling import FEATURE_NAMES

router = APIRouter(prefix="/v1/flows", tags=["flows"])
PathKey = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="64 lowercase hex characters.")]
admin = APIRouter(prefix="/v1/flows", tags=["flows"])

_FLOW_KEY: TypeAdapter[str] = TypeAdapter(FlowKey)
MAX_PAGE = 1000


async def get_flows(conn: HTTPConnection) -> FlowStore:
    return Services.of(conn.app).flows


FlowsDep = Annotated[FlowStore, Depends(get_flows)]


def _context(window: FlowWindow, features: np.ndarray, i: int) -> FlowContextOut:
    mask = int(window.imputed[i])
    return FlowContextOut(
        timestamp=int(window.timestamps[i]),
        features=features[i].tolist(),
        imputed=[name for bit, name in enumerate(FEATURE_NAMES) if mask >> bit & 1],
        pattern_id=window.pattern_ids[i],
    )


def summary(window: FlowWindow, contexts: bool = False) -> FlowSummary:
    """The summary of a flow's window (with each of its contexts, when ``contexts``)."""
    features = window.features.astype(np.float64)
    last = len(window) - 1
    return FlowSummary(
        flow_key=window.flow_key,
        route_id=window.route_id,
        length=len(window),
        observations=window.observations,
        first_timestamp=int(window.timestamps[0]),
        newest_timestamp=int(window.timestamps[last]),
        newest=_context(window, features, last),
        mean=features.mean(axis=0).tolist(),
        std=features.std(axis=0).tolist(),
        contexts=[_context(window, features, i) for i in range(len(window))] if contexts else None,
    )


def _unavailable(exc: FlowsUnavailable) -> OrjsonResponse:
    status, answer = refusal(exc)
    return OrjsonResponse(answer, status_code=status, headers={"retry-after": str(exc.retry_after_s)})


@router.get("", response_model=FlowPage, responses={503: {"model": Message}})
async def list_flows(
    flows: FlowsDep,
    after: Annotated[str | None, Query(description="The `next` of the page before.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Any:
    """The flows with a window, in flow-key order, a page at a time."""
    try:
        keys = await flows.flows(after, limit)
        windows = await flows.windows(keys)
        count = await flows.count()
    except FlowsUnavailable as exc:
        return _unavailable(exc)
    items = [
        FlowListItem(
            flow_key=w.flow_key, route_id=w.route_id, length=len(w), newest_timestamp=int(w.timestamps[-1])
        )
        for w in windows
        if w is not None
    ]
    return FlowPage(flows=items, next=keys[-1] if len(keys) == limit else None, count=count)


@router.get(
    "/{flow_key}", response_model=FlowSummary, responses={404: {"model": Message}, 503: {"model": Message}}
)
async def get_flow(
    flows: FlowsDep,
    forecasts: ForecastsDep,
    flow_key: PathKey,
    contexts: Annotated[bool, Query(description="Also every context of the window, oldest first.")] = False,
) -> Any:
    """One flow's window summary: its newest observation, the window's statistics, its newest forecast and
    running score."""
    key = flow_key
    try:
        window = await flows.window(key)
    except FlowsUnavailable as exc:
        return _unavailable(exc)
    if window is None:
        return OrjsonResponse({"detail": f"flow {key} is not known (never observed, or expired)"}, 404)
    answer = summary(window, contexts)
    if forecasts is not None:
        answer.forecast, answer.score = await forecasts.flow(key)
    return answer


@admin.delete(
    "/{flow_key}",
    status_code=204,
    response_class=Response,
    response_model=None,
    responses={404: {"model": Message}, 503: {"model": Message}},
)
async def delete_flow(flows: FlowsDep, forecasts: ForecastsDep, flow_key: PathKey) -> Any:
    """Forget a flow's window (admin)."""
    key = flow_key
    try:
        deleted = await flows.delete(key)
    except FlowsUnavailable as exc:
        return _unavailable(exc)
    if forecasts is not None:
        await forecasts.forget(key)
    if not deleted:
        return OrjsonResponse({"detail": f"flow {key} is not known"}, 404)
    return Response(status_code=204)
