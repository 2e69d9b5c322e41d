"""WS /v1/stream/predictions: each observed flow's forecasts as continuous prediction makes them.

The client sends ``{"op": "subscribe", "flow_keys": [...], "groups": [...]}`` (both absent or null: every
flow) and gets ``{"FlowPrediction": {...PredictionResult}}`` frames from then on; ``unsubscribe``, ``ping``,
heartbeats, rates and limits are those of /v1/stream/routing (the same socket handling and fan-out). A
client that falls ``CPE_WS_QUEUE_SIZE`` messages behind loses its oldest (counted in the heartbeat's and
pong's ``dropped``, and in ``cpe_forecast_messages_dropped_total``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, WebSocket
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection
from starlette.status import WS_1008_POLICY_VIOLATION

from app.api.deps import SettingsDep
from app.api.stream import serve_subscriber
from app.auth import accept_websocket
from app.fanout import RoutingFanout, StreamClient
from app.forecasts import Forecasts
from app.forecasts.stream import FlowPredictionHub
from app.routing_schemas import GroupId
from app.schemas import FlowKey
from app.services import Services

router = APIRouter(prefix="/v1/stream", tags=["stream"])


async def get_forecasts(conn: HTTPConnection) -> Forecasts | None:
    """Continuous prediction, or None when CPE_PREDICT_ON_OBSERVE is off."""
    return Services.of(conn.app).forecasts


ForecastsDep = Annotated[Forecasts | None, Depends(get_forecasts)]


class PredictionsSubscribeFrame(BaseModel):
    """``{"op": "subscribe"}`` on /v1/stream/predictions: whose FlowPredictions to receive from now on."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["subscribe"]
    flow_keys: list[FlowKey] | None = Field(
        default=None,
        description="The flows whose forecasts to receive; with `groups` absent too, every flow.",
    )
    groups: list[GroupId] | None = Field(
        default=None, description="Also the forecasts of the flows that these route groups name."
    )


def _subscribe(hub: RoutingFanout, client: StreamClient, frame: dict[str, Any]) -> dict[str, Any]:
    sub = PredictionsSubscribeFrame.model_validate(frame)
    assert isinstance(hub, FlowPredictionHub)
    hub.subscribe_flows(client, sub.flow_keys, sub.groups)
    return {"op": "subscribed", "flow_keys": sub.flow_keys, "groups": sub.groups}


@router.websocket("/predictions")
async def stream_predictions(websocket: WebSocket, forecasts: ForecastsDep, settings: SettingsDep) -> None:
    """FlowPrediction messages of the observed flows, filtered by flow key or route group, with heartbeats."""
    if not await accept_websocket(websocket, "read"):
        return
    if forecasts is None:
        await websocket.close(
            WS_1008_POLICY_VIOLATION, "continuous prediction is off (CPE_PREDICT_ON_OBSERVE)"
        )
        return
    await serve_subscriber(websocket, forecasts.hub, settings, _subscribe)
