"""The frames of the WebSocket streams that no request type states: the server's replies and messages.

What a client sends is stated by the request types (``SubscribeFrame``, ``StreamPredictRequest``, the
observations); these are what it gets back. The server writes its frames as JSON itself (for speed, the
routing messages in ``app/routing.py``); these types state them for ``/asyncapi.json``
(``app/api/asyncapi.py``), whose test checks real frames against them, and they are what the Python client
(``app/client/``) reads frames into.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.ingest.observations import ObserveResult
from app.schemas import PredictionResult

# -- the ops of the subscription streams (/v1/stream/routing, /v1/stream/predictions) ----------------


class Unsubscribe(BaseModel):
    """``{"op": "unsubscribe"}``: no more messages until the next subscribe; what was queued is forgotten."""

    model_config = ConfigDict(extra="forbid")
    op: Literal["unsubscribe"]


class Ping(BaseModel):
    """``{"op": "ping"}``: answered with a pong."""

    model_config = ConfigDict(extra="forbid")
    op: Literal["ping"]


class Subscribed(BaseModel):
    """The reply to a subscribe: the filters now in force (null: every one)."""

    op: Literal["subscribed"]
    flow_keys: list[str] | None = Field(description="The flow keys selected, as hex; null: every flow.")
    types: list[str] | None = Field(
        default=None, description="/v1/stream/routing: the message types selected; null: every type."
    )
    groups: list[str] | None = Field(
        default=None, description="The route groups selected; null: none named (or every flow)."
    )


class Unsubscribed(BaseModel):
    """The reply to an unsubscribe."""

    op: Literal["unsubscribed"]


class Pong(BaseModel):
    """The reply to a ping."""

    op: Literal["pong"]
    dropped: int = Field(ge=0, description="Messages this socket lost so far, its oldest, for being slow.")


class Heartbeat(BaseModel):
    """Sent every CPE_WS_HEARTBEAT_S seconds when nothing else is."""

    op: Literal["heartbeat"]
    dropped: int = Field(ge=0, description="Messages this socket lost so far, its oldest, for being slow.")


class StreamError(BaseModel):
    """A frame that was not carried out; the socket stays open."""

    op: Literal["error"]
    detail: str = Field(description="What was wrong: the field path and message of each error, in one line.")
    status: int | None = Field(default=None, description="429 for a frame over CPE_WS_RATE_PER_S.")
    retry_after_s: float | None = Field(default=None, description="With 429: when a frame is admitted again.")


# -- routing messages (/v1/stream/routing), the Rust enum's serde form: externally tagged --------------


class RoutingMessageFields(BaseModel):
    """What every routing message carries beside the Rust enum variant's own fields.

    Unknown fields are allowed, as serde ignores them. The fields DESIGN.md adds to every message
    (``flow_key``, ``group_id``, ``timestamp``, ``model_version``) go here, and so into each message's
    schema in ``/asyncapi.json``.
    """

    model_config = ConfigDict(extra="allow")


class RouteSuggestionOut(BaseModel):
    """One route in a RoutingPrediction, best first."""

    model_config = ConfigDict(extra="allow")
    route_id: str
    expected_latency_ms: float
    expected_throughput: float = Field(description="Mbit/s.")
    reliability_score: float = Field(ge=0.0, le=1.0)
    cost_factor: float


class RoutingPredictionBody(RoutingMessageFields):
    """The ranked routes of a flow."""

    flow_key: str | list[int] = Field(
        description="Hex, or the 32 integers of a Rust [u8; 32] (CPE_FLOW_KEY_FORMAT=bytes)."
    )
    predicted_context: list[float] = Field(description="The best route's predicted features.")
    confidence: float = Field(ge=0.0, le=1.0)
    time_horizon_ms: int = Field(description="How far ahead of the windows' last contexts this looks.")
    routing_suggestions: list[RouteSuggestionOut]


class LoadBalancingUpdateBody(RoutingMessageFields):
    """How to spread a flow's load over its routes."""

    service_weights: dict[str, float] = Field(description="route_id -> share of the load; they sum to 1.")
    predicted_loads: dict[str, float] = Field(description="route_id -> predicted utilization (0..1).")
    adaptation_confidence: float = Field(ge=0.0, le=1.0)


class CircuitBreakerPredictionBody(RoutingMessageFields):
    """A route whose failure probability passed CPE_BREAKER_THRESHOLD."""

    service_id: str = Field(description="The route_id.")
    failure_probability: float = Field(ge=0.0, le=1.0)
    recommended_threshold: float = Field(description="The loss + error rate the probability is about.")
    time_to_recovery_ms: int = Field(ge=0)


class RoutingPrediction(BaseModel):
    """``{"RoutingPrediction": {...}}``."""

    model_config = ConfigDict(extra="forbid")
    RoutingPrediction: RoutingPredictionBody


class LoadBalancingUpdate(BaseModel):
    """``{"LoadBalancingUpdate": {...}}``."""

    model_config = ConfigDict(extra="forbid")
    LoadBalancingUpdate: LoadBalancingUpdateBody


class CircuitBreakerPrediction(BaseModel):
    """``{"CircuitBreakerPrediction": {...}}``."""

    model_config = ConfigDict(extra="forbid")
    CircuitBreakerPrediction: CircuitBreakerPredictionBody


RoutingMessage = RoutingPrediction | LoadBalancingUpdate | CircuitBreakerPrediction
ROUTING_MESSAGES: tuple[type[BaseModel], ...] = (
    RoutingPrediction,
    LoadBalancingUpdate,
    CircuitBreakerPrediction,
)


def routing_message(frame: dict[str, Any]) -> RoutingMessage:
    """The routing message of a decoded frame, by its one key; ``KeyError`` for any other frame."""
    [tag] = frame  # externally tagged: one key
    model: type[RoutingMessage] = {  # type: ignore[assignment]
        "RoutingPrediction": RoutingPrediction,
        "LoadBalancingUpdate": LoadBalancingUpdate,
        "CircuitBreakerPrediction": CircuitBreakerPrediction,
    }[tag]
    return model.model_validate(frame)


# -- /v1/stream/predictions -----------------------------------------------------------------------------


class FlowPrediction(BaseModel):
    """``{"FlowPrediction": PredictionResult}``: a continuous forecast of an observed flow."""

    model_config = ConfigDict(extra="forbid")
    FlowPrediction: PredictionResult


# -- /v1/stream/predict ----------------------------------------------------------------------------------


class AnswerError(BaseModel):
    """Why a request on /v1/stream/predict got no result, with the status POST /v1/predict would answer."""

    status: int = Field(description="422 (with the field errors), 404 (an unknown flow), 429, 503 or 500.")
    detail: str | list[dict[str, Any]] = Field(description="A message; for 422 the list of field errors.")
    retry_after_s: float | None = Field(default=None, description="With 429 and 503: when to try again.")


class PredictAnswer(BaseModel):
    """``{"id", "result"}``: the answer to the request of that id."""

    model_config = ConfigDict(extra="forbid")
    id: str | int | None
    result: PredictionResult


class PredictRefusal(BaseModel):
    """``{"id", "error"}``: the request of that id (null: one without a usable id) was not answered."""

    model_config = ConfigDict(extra="forbid")
    id: str | int | None
    error: AnswerError


# -- /v1/stream/observe ----------------------------------------------------------------------------------


class ObserveAck(ObserveResult):
    """``{"op": "ack", "frame", ...}``: what became of the observations of a frame, as POST /v1/observe."""

    op: Literal["ack"]
    frame: int = Field(ge=1, description="The frame's number on this socket, from 1; acks come in order.")


class ObserveError(BaseModel):
    """``{"op": "error", "frame", "status", "detail"}``: a frame refused whole (nothing of it applied)."""

    op: Literal["error"]
    frame: int = Field(ge=1, description="The frame's number on this socket, from 1.")
    status: int = Field(description="422 (invalid; the field errors), 429 (store full), 503 (Redis down).")
    detail: str | list[dict[str, Any]]
    retry_after_s: float | None = Field(default=None, description="With 429 and 503.")
