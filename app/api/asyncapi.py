"""GET /asyncapi.json: the WebSocket protocol as an AsyncAPI 3.0 document, what /openapi.json is to HTTP.

It describes this service as the application: ``receive`` operations are the frames a client sends,
``send`` operations the frames it gets. Every payload schema is generated from the pydantic type that the
server validates the frame with, or that states the frame it writes (``app/stream_schemas.py``), so a
field added to a type is in the document too. The schemas are pydantic's JSON Schema (draft 2020-12),
with their definitions under ``components.schemas``. Like /openapi.json it needs no API key.
tests/app/api/test_asyncapi.py checks the document against the AsyncAPI 3.0 JSON Schema and real frames
against its schemas.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.api.flow_predictions import PredictionsSubscribeFrame
from app.ingest.observations import Observation
from app.routing_schemas import StreamPredictRequest, SubscribeFrame
from app.stream_schemas import (
    CircuitBreakerPrediction,
    FlowPrediction,
    Heartbeat,
    LoadBalancingUpdate,
    ObserveAck,
    ObserveError,
    Ping,
    Pong,
    PredictAnswer,
    PredictRefusal,
    RoutingPrediction,
    StreamError,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)

router = APIRouter(include_in_schema=False)

SCHEMAS = "#/components/schemas/{model}"
API_KEY_QUERY = {
    "type": "object",
    "properties": {
        "api_key": {
            "type": "string",
            "description": "An API key with the channel's scope, when CPE_API_KEYS is set (or the X-API-Key "
            "or Authorization: Bearer header); a missing or wrong one closes the socket with 1008.",
        }
    },
}
# the ways of sending an API key when CPE_API_KEYS is set (app/auth.py), any one of them; none needed without
SECURITY: dict[str, dict[str, Any]] = {
    "apiKeyHeader": {"type": "httpApiKey", "name": "X-API-Key", "in": "header"},
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>."},
    "apiKeyQuery": {"type": "httpApiKey", "name": "api_key", "in": "query"},
}
SECURITY_NOTE = (
    "When CPE_API_KEYS is set, a key with the channel's scope (read < write < admin), by any of these "
    "schemes; a missing or unknown one closes the socket with 1008. Without keys every socket is open."
)

LIMITS = (
    "Frames are JSON text. A frame over CPE_WS_MAX_FRAME_BYTES closes the socket with 1009; on SIGTERM the "
    "server closes with 1001."
)
SUBSCRIPTION_LIMITS = (
    f"{LIMITS} A frame over CPE_WS_RATE_PER_S gets an `error` with status 429 and is not carried out; "
    "CPE_WS_RATE_BURST such frames in a row, or a binary frame, close with 1008. A client CPE_WS_QUEUE_SIZE "
    "messages behind loses its oldest (`dropped` in heartbeats and pongs)."
)

# name in components.messages -> (payload type, title)
MESSAGES: dict[str, tuple[type[BaseModel], str]] = {
    "RoutingSubscribe": (SubscribeFrame, "Subscribe to routing messages"),
    "PredictionsSubscribe": (PredictionsSubscribeFrame, "Subscribe to FlowPredictions"),
    "Unsubscribe": (Unsubscribe, "Stop the messages"),
    "Ping": (Ping, "Ping"),
    "Subscribed": (Subscribed, "Subscribed: the filters in force"),
    "Unsubscribed": (Unsubscribed, "Unsubscribed"),
    "Pong": (Pong, "Pong"),
    "Heartbeat": (Heartbeat, "Heartbeat"),
    "Error": (StreamError, "A frame not carried out"),
    "RoutingPrediction": (RoutingPrediction, "RoutingPrediction"),
    "LoadBalancingUpdate": (LoadBalancingUpdate, "LoadBalancingUpdate"),
    "CircuitBreakerPrediction": (CircuitBreakerPrediction, "CircuitBreakerPrediction"),
    "FlowPrediction": (FlowPrediction, "FlowPrediction"),
    "PredictRequest": (StreamPredictRequest, "A PredictRequest with an id"),
    "PredictAnswer": (PredictAnswer, "The answer to a request"),
    "PredictRefusal": (PredictRefusal, "A request not answered"),
    "ObserveAck": (ObserveAck, "What became of a frame's observations"),
    "ObserveError": (ObserveError, "A frame refused whole"),
}
# payloads that are not one type: a frame of /v1/stream/observe is a list of observations, or one
OBSERVATIONS = "Observations"
OBSERVATIONS_PAYLOAD = {
    "anyOf": [
        {"type": "array", "items": {"$ref": SCHEMAS.format(model="Observation")}, "minItems": 1},
        {"$ref": SCHEMAS.format(model="Observation")},
    ],
    "description": "A list of observations (up to CPE_MAX_OBSERVE_BATCH), or one, as in POST /v1/observe.",
}


def _message(name: str) -> dict[str, Any]:
    if name == OBSERVATIONS:
        return {
            "name": name,
            "title": "Observations",
            "contentType": "application/json",
            "payload": OBSERVATIONS_PAYLOAD,
        }
    model, title = MESSAGES[name]
    summary = (model.__doc__ or "").strip().splitlines()[0]
    return {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "payload": {"$ref": SCHEMAS.format(model=model.__name__)},
    }


def _channel(address: str, description: str, messages: dict[str, str], scope: str) -> dict[str, Any]:
    """A channel whose ``messages`` map its own names to names in components.messages."""
    return {
        "address": address,
        "description": description,
        "messages": {key: {"$ref": f"#/components/messages/{name}"} for key, name in messages.items()},
        "bindings": {"ws": {"query": {**API_KEY_QUERY, "description": f"Needs the {scope} scope."}}},
    }


def _operation(
    channel: str, action: str, messages: list[str], summary: str, reply: list[str] | None = None
) -> dict[str, Any]:
    def refs(names: list[str]) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in names]

    operation: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": refs(messages),
        "security": [{"$ref": f"#/components/securitySchemes/{name}"} for name in SECURITY],
    }
    if reply is not None:
        operation["reply"] = {"channel": {"$ref": f"#/channels/{channel}"}, "messages": refs(reply)}
    return operation


def _subscription_ops(channel: str, messages: list[str], what: str) -> dict[str, dict[str, Any]]:
    """The ops of a subscription stream (subscribe, unsubscribe, ping) and what it sends."""
    return {
        f"{channel}Subscribe": _operation(
            channel, "receive", ["subscribe"], f"Choose the {what} to receive", ["subscribed", "error"]
        ),
        f"{channel}Unsubscribe": _operation(
            channel, "receive", ["unsubscribe"], "Stop receiving them", ["unsubscribed", "error"]
        ),
        f"{channel}Ping": _operation(channel, "receive", ["ping"], "Ask for a pong", ["pong", "error"]),
        f"{channel}Messages": _operation(channel, "send", messages, f"The {what}, as they are made"),
        f"{channel}Heartbeat": _operation(
            channel, "send", ["heartbeat"], "Every CPE_WS_HEARTBEAT_S seconds without other frames"
        ),
        f"{channel}Error": _operation(
            channel, "send", ["error"], "A frame that is not JSON, has an unknown op, or is over the rate"
        ),
    }


SUBSCRIPTION_MESSAGES = {
    "unsubscribe": "Unsubscribe",
    "ping": "Ping",
    "subscribed": "Subscribed",
    "unsubscribed": "Unsubscribed",
    "pong": "Pong",
    "heartbeat": "Heartbeat",
    "error": "Error",
}
ROUTING_MESSAGES = ["RoutingPrediction", "LoadBalancingUpdate", "CircuitBreakerPrediction"]


@cache
def document(version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the four streams."""
    _, schemas = models_json_schema(
        [(model, "validation") for model, _ in MESSAGES.values()] + [(Observation, "validation")],
        ref_template=SCHEMAS,
    )
    channels = {
        "routing": _channel(
            "/v1/stream/routing",
            "Routing messages as they are published (POST /v1/routing/recommend, route groups), by every "
            "replica, in the Rust enum's serde form. Subscribe to choose them by flow key and type (both "
            f"absent or null: all); a new subscribe replaces the filters. {SUBSCRIPTION_LIMITS}",
            {"subscribe": "RoutingSubscribe", **SUBSCRIPTION_MESSAGES, **{m: m for m in ROUTING_MESSAGES}},
            "read",
        ),
        "predictions": _channel(
            "/v1/stream/predictions",
            "The continuous forecasts of the observed flows (POST /v1/observe and the other doors), by "
            "flow key or route group (both absent or null: every flow). Closed with 1008 when "
            f"CPE_PREDICT_ON_OBSERVE is off. {SUBSCRIPTION_LIMITS}",
            {
                "subscribe": "PredictionsSubscribe",
                **SUBSCRIPTION_MESSAGES,
                "FlowPrediction": "FlowPrediction",
            },
            "read",
        ),
        "predict": _channel(
            "/v1/stream/predict",
            "Predictions over one socket: each request carries an id, its answer (a result or an error with "
            "the status POST /v1/predict would answer) repeats it; answers come as they are ready, in any "
            "order. Up to CPE_WS_QUEUE_SIZE requests are in flight; beyond, the socket is not read. "
            + LIMITS,
            {"request": "PredictRequest", "answer": "PredictAnswer", "refusal": "PredictRefusal"},
            "read",
        ),
        "observe": _channel(
            "/v1/stream/observe",
            "Observations streamed by a collector, as POST /v1/observe takes them: one frame, one list. "
            "Every frame gets an ack or an error, in order, once its observations are applied (durable "
            f"with Redis). {LIMITS}",
            {"observations": OBSERVATIONS, "ack": "ObserveAck", "error": "ObserveError"},
            "write",
        ),
    }
    operations = {
        **_subscription_ops("routing", ROUTING_MESSAGES, "routing messages"),
        **_subscription_ops("predictions", ["FlowPrediction"], "forecasts of observed flows"),
        "predictRequest": _operation(
            "predict", "receive", ["request"], "Ask for a prediction", ["answer", "refusal"]
        ),
        "observeFrame": _operation(
            "observe", "receive", ["observations"], "Send observations", ["ack", "error"]
        ),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Context Prediction Engine: WebSocket streams",
            "version": version,
            "description": "The WebSocket protocol of CPE; the HTTP API is /openapi.json. Frames are "
            "JSON text objects. The routing messages keep the Rust enums' serde form: externally tagged, "
            "unknown fields ignored.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {name: _message(name) for name in [*MESSAGES, OBSERVATIONS]},
            "schemas": schemas["$defs"],
            "securitySchemes": {
                name: {**scheme, "description": f"{scheme.get('description', '')} {SECURITY_NOTE}".strip()}
                for name, scheme in SECURITY.items()
            },
        },
    }


@cache
def _body() -> bytes:
    # the standard library's encoder, as for /openapi.json: a bound of FlowRecord's nanoseconds is past
    # orjson's 64-bit integers
    return json.dumps(document()).encode()


@router.get("/asyncapi.json")
async def asyncapi() -> Response:
    """The AsyncAPI 3.0 document of the WebSocket streams."""
    return Response(_body(), media_type="application/json")
