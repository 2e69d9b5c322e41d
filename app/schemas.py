"""The wire types of API v1: what the OpenAPI schema states to clients, and pydantic's error messages.

Their rules (feature ranges, the timestamps' unit, flow key forms, lengths) come from ``app.wire.rules``,
the one definition that the decoder of prediction bodies (``app.wire.decode``) follows too. Request types
validate everything that does not depend on the deployment by themselves. Limits that do
(window and batch sizes, the served models and their horizons) come in as the validation context, a
``Limits``: ``PredictRequest.model_validate_json(body, context=limits)``. Their errors then carry the
same field paths as every other validation error, nested batch items included.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,  # pydantic needs these on Python < 3.12
    Self,
)

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from app.wire.rules import (
    FEATURES,
    FLOW_KEY_BYTES,
    FLOW_KEY_HEX,
    MAX_LABEL,
    MAX_METADATA_ITEMS,
    MAX_METADATA_KEY,
    MAX_ROUTES,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    D,
    Feature,
)

FEATURE_NAMES = tuple(f.name for f in FEATURES)
_HEX_KEY = re.compile(f"[0-9a-f]{{{FLOW_KEY_HEX}}}")

_EXAMPLE_KEY = "3f" * 32
_EXAMPLE_CONTEXTS: list[Any] = [
    {"timestamp": 1_700_000_000_000, "features": [12.1, 1.4, 0.001, 840.0, 0.62, 0.0, 120.0, 4.0]},
    {
        "timestamp": 1_700_000_001_000,
        "features": [12.8, 1.6, 0.002, 832.5, 0.64, 0.0, 122.0, 5.0],
        "metadata": {"region_rtt_ms": 11.0},
        "pattern_id": "diurnal-peak",
    },
    {"timestamp": 1_700_000_002_000, "features": [13.5, 1.9, 0.002, 818.0, 0.67, 0.001, 125.0, 7.0]},
]


@dataclass(frozen=True)
class Limits:
    """The limits that depend on the deployment: the validation context of request types."""

    max_window: int
    max_batch: int
    horizons: Mapping[str, int]  # served model kind -> its horizon H (steps it predicts)
    default_model: str
    max_routes: int = MAX_ROUTES  # candidate routes in one routing request


def _limits(info: ValidationInfo) -> Limits | None:
    return info.context if isinstance(info.context, Limits) else None


def _flow_key(value: Any) -> str:
    """Normalize both accepted forms of a flow key to 64 lowercase hex characters."""
    if isinstance(value, str):
        if _HEX_KEY.fullmatch(value):
            return value
        if len(value) != FLOW_KEY_HEX:
            raise PydanticCustomError(
                "flow_key",
                "flow_key must be {hex} lowercase hex characters ({bytes} bytes); got {length} characters",
                {"hex": FLOW_KEY_HEX, "bytes": FLOW_KEY_BYTES, "length": len(value)},
            )
        bad = next(i for i, c in enumerate(value) if c not in "0123456789abcdef")
        raise PydanticCustomError(
            "flow_key",
            "flow_key must be {hex} lowercase hex characters ({bytes} bytes); "
            "character {position} is '{char}'",
            {"hex": FLOW_KEY_HEX, "bytes": FLOW_KEY_BYTES, "position": bad, "char": value[bad]},
        )
    if isinstance(value, list):
        if len(value) == FLOW_KEY_BYTES and all(type(b) is int and 0 <= b <= 255 for b in value):
            return bytes(value).hex()
        raise PydanticCustomError(
            "flow_key",
            "flow_key as a list must hold exactly {bytes} integers 0..255 (a Rust [u8; {bytes}])",
            {"bytes": FLOW_KEY_BYTES},
        )
    raise PydanticCustomError(
        "flow_key",
        "flow_key must be a string of {hex} hex characters or a list of {bytes} integers 0..255",
        {"hex": FLOW_KEY_HEX, "bytes": FLOW_KEY_BYTES},
    )


FlowKey = Annotated[
    str,
    BeforeValidator(_flow_key),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": f"^[0-9a-f]{{{FLOW_KEY_HEX}}}$"},
                {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 255},
                    "minItems": FLOW_KEY_BYTES,
                    "maxItems": FLOW_KEY_BYTES,
                },
            ],
            "description": f"{FLOW_KEY_BYTES} bytes identifying the flow: {FLOW_KEY_HEX} lowercase hex "
            f"characters, or a list of {FLOW_KEY_BYTES} integers 0..255 (the serde form of a Rust "
            f"`[u8; {FLOW_KEY_BYTES}]`). Answered as hex.",
            "examples": [_EXAMPLE_KEY],
        },
        mode="validation",
    ),
]


def _milliseconds(timestamp: int) -> int:
    """A timestamp in milliseconds since the epoch; one in seconds (below MIN_TIMESTAMP_MS) is refused."""
    if timestamp < MIN_TIMESTAMP_MS:
        raise PydanticCustomError(
            "timestamp_unit",
            "timestamp {timestamp} is before {min} (1973-03-03): milliseconds since the epoch expected, "
            "not seconds",
            {"timestamp": timestamp, "min": MIN_TIMESTAMP_MS},
        )
    return timestamp


def _feature_list(features: Any) -> Any:
    """Named features (``{"latency_ms": 12.1, ...}``) as the list in schema order; any other value as is."""
    if not isinstance(features, dict):
        return features
    unknown = [name for name in features if name not in FEATURE_NAMES]
    if unknown:
        raise PydanticCustomError(
            "unknown_feature",
            "unknown feature '{name}'; the features are {names}",
            {"name": str(unknown[0]), "names": ", ".join(FEATURE_NAMES)},
        )
    missing = [name for name in FEATURE_NAMES if name not in features]
    if missing:
        raise PydanticCustomError(
            "missing_feature",
            "features lacks {missing}: named features must give all {d} of them",
            {"missing": ", ".join(missing), "d": D},
        )
    return [features[name] for name in FEATURE_NAMES]


def _in_range(features: list[float]) -> list[float]:
    """Features within their physical ranges (``app.wire.rules.FEATURES``)."""
    for i, (value, feature) in enumerate(zip(features, FEATURES, strict=True)):
        if not feature.low <= value <= feature.high:
            raise PydanticCustomError(
                "feature_range",
                "features[{index}] ({feature}) must be {range}; got {value}",
                {
                    "index": i,
                    "feature": feature.name,
                    "range": feature.describe_range(),
                    "low": feature.low,
                    "high": feature.high,
                    "value": value,
                },
            )
    return features


def _feature_schema(feature: Feature) -> dict[str, Any]:
    return {
        "type": "number",
        "title": feature.name,
        "description": feature.unit,
        "minimum": feature.low,
        "maximum": feature.high,
    }


_FEATURES_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "array",
            "prefixItems": [_feature_schema(f) for f in FEATURES],
            "items": {"type": "number"},  # for tools that know no prefixItems; maxItems ends the list
            "minItems": D,
            "maxItems": D,
        },
        {
            "type": "object",
            "properties": {f.name: _feature_schema(f) for f in FEATURES},
            "required": list(FEATURE_NAMES),
            "additionalProperties": False,
        },
    ],
    "description": f"The {D} features: a list in this order, or an object naming each of them (all "
    f"required): {', '.join(f'{f.name} ({f.unit}, {f.describe_range()})' for f in FEATURES)}. "
    "A value out of its range is a 422 naming the feature.",
    "examples": [_EXAMPLE_CONTEXTS[0]["features"]],
}


# A TypedDict rather than a model: a request carries up to CPE_MAX_WINDOW of these per flow, and pydantic
# validates into dicts at a fraction of the cost of model instances. Optional keys stay absent when not sent.
class ContextVector(TypedDict):
    """One measurement of a flow at one moment."""

    timestamp: Annotated[
        int,
        Field(
            le=MAX_TIMESTAMP_MS,
            description="Milliseconds since the Unix epoch. A value below 1e11 (seconds, most likely) is "
            "a 422: milliseconds since the epoch expected.",
            examples=[1_700_000_000_000],
            json_schema_extra={"minimum": MIN_TIMESTAMP_MS},
        ),
        AfterValidator(_milliseconds),
    ]
    features: Annotated[
        list[FiniteFloat],
        BeforeValidator(_feature_list),
        Field(min_length=D, max_length=D),
        AfterValidator(_in_range),
        WithJsonSchema(_FEATURES_SCHEMA, mode="validation"),
    ]
    metadata: NotRequired[
        Annotated[
            dict[Annotated[str, StringConstraints(max_length=MAX_METADATA_KEY)], FiniteFloat],
            Field(max_length=MAX_METADATA_ITEMS, description="Extra numeric measurements, passed through."),
        ]
    ]
    pattern_id: NotRequired[
        Annotated[
            Annotated[str, StringConstraints(min_length=1, max_length=MAX_LABEL)] | None,
            Field(description="A label for the traffic pattern of this context, if the observer knows one."),
        ]
    ]


def checked_window(contexts: list[ContextVector], info: ValidationInfo) -> list[ContextVector]:
    """A window within the deployment's length limit, its timestamps not decreasing."""
    limits = _limits(info)
    if limits is not None and len(contexts) > limits.max_window:
        raise PydanticCustomError(
            "too_long",
            "List should have at most {max_length} items after validation, not {actual_length}",
            {"field_type": "List", "max_length": limits.max_window, "actual_length": len(contexts)},
        )
    previous = contexts[0]["timestamp"]
    for i, context in enumerate(contexts):
        if context["timestamp"] < previous:
            raise PydanticCustomError(
                "timestamps_decreasing",
                "timestamps must not decrease: contexts[{index}].timestamp is {timestamp}, "
                "before {previous} of the context before it",
                {"index": i, "timestamp": context["timestamp"], "previous": previous},
            )
        previous = context["timestamp"]
    return contexts


class PredictRequest(BaseModel):
    """A window of one flow's recent contexts, oldest first, to forecast from."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"flow_key": _EXAMPLE_KEY, "contexts": _EXAMPLE_CONTEXTS, "horizon": 2}]
        }
    )

    flow_key: FlowKey
    contexts: list[ContextVector] | None = Field(
        default=None,
        min_length=1,
        description="1..CPE_MAX_WINDOW contexts, timestamps not decreasing. The model reads the last ones "
        "(its sequence length) and pads a shorter window. Absent or null: the flow's server-side window "
        "(POST /v1/observe), 404 for a flow not observed.",
    )
    # `model` comes before `horizon`: the horizon's bound depends on the model, and fields validate in order
    model: str | None = Field(default=None, description="Model kind to use; null = the service's default.")
    horizon: int = Field(
        default=1,
        ge=1,
        description="Steps ahead to predict, 1..H of the model; the step spacing is the window's.",
    )

    @field_validator("contexts")
    @classmethod
    def _window(cls, contexts: Any, info: ValidationInfo) -> Any:  # a list or None; a route's: a list
        return None if contexts is None else checked_window(contexts, info)

    @field_validator("model")
    @classmethod
    def _served(cls, model: str | None, info: ValidationInfo) -> str | None:
        limits = _limits(info)
        if limits is not None and model is not None and model not in limits.horizons:
            raise PydanticCustomError(
                "unknown_model",
                "unknown model '{model}'; this service serves {served}",
                {"model": model, "served": ", ".join(limits.horizons)},
            )
        return model

    @field_validator("horizon")
    @classmethod
    def _within_model_horizon(cls, horizon: int, info: ValidationInfo) -> int:
        limits = _limits(info)
        if limits is None or "model" not in info.data:  # an invalid model is reported by itself
            return horizon
        kind = info.data["model"] or limits.default_model
        if horizon > limits.horizons[kind]:
            raise PydanticCustomError(
                "less_than_equal",
                "Input should be less than or equal to {le}, the horizon of model '{model}'",
                {"le": limits.horizons[kind], "model": kind},
            )
        return horizon


class BatchPredictRequest(BaseModel):
    """Many windows at once; they share forward passes and are answered in the same order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "requests": [
                        {"flow_key": _EXAMPLE_KEY, "contexts": _EXAMPLE_CONTEXTS},
                        {
                            "flow_key": "a0" * 32,
                            "contexts": _EXAMPLE_CONTEXTS[:1],
                            "horizon": 3,
                            "model": "lstm",
                        },
                    ]
                }
            ]
        }
    )

    requests: list[PredictRequest] = Field(min_length=1, description="1..CPE_MAX_BATCH predict requests.")

    @field_validator("requests")
    @classmethod
    def _batch(cls, requests: list[PredictRequest], info: ValidationInfo) -> list[PredictRequest]:
        limits = _limits(info)
        if limits is not None and len(requests) > limits.max_batch:
            raise PydanticCustomError(
                "too_long",
                "List should have at most {max_length} items after validation, not {actual_length}",
                {"field_type": "List", "max_length": limits.max_batch, "actual_length": len(requests)},
            )
        return requests


_EXAMPLE_RESULT: dict[str, Any] = {
    "prediction_id": "5c1d0e3a9b7f4c2d8e6a1b0c3d5e7f90",
    "flow_key": _EXAMPLE_KEY,
    "predicted_context": [14.6, 2.2, 0.002, 801.0, 0.7, 0.001, 128.0, 9.0],
    "horizon": 2,
    "steps": [
        [14.1, 2.0, 0.002, 810.0, 0.69, 0.001, 127.0, 8.0],
        [14.6, 2.2, 0.002, 801.0, 0.7, 0.001, 128.0, 9.0],
    ],
    "confidence": 0.71,
    "lower": [12.2, 1.3, 0.0, 700.0, 0.6, 0.0, 110.0, 3.0],
    "upper": [17.5, 3.4, 0.006, 890.0, 0.79, 0.004, 146.0, 17.0],
    "model_used": "lstm",
    "model_version": "lstm-5b3260418218",
    "cached": False,
    "processing_time_ms": 1.2,
    "similar_patterns": ["diurnal-peak"],
    "metadata": {"step_ms": 1000.0, "horizon_ms": 2000.0, "window_length": 3.0, "contexts_used": 3.0},
}


class PredictionResult(BaseModel):
    """A forecast of one flow's context ``horizon`` steps ahead, with its uncertainty."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_RESULT]})

    prediction_id: str = Field(
        description="Names this prediction (its window, horizon and model version) for POST /v1/feedback. "
        "The replica that answered remembers the window of its recent predictions (CPE_RECENT_PREDICTIONS); "
        "feedback by id that reaches another replica is a 422, and the client sends the window instead."
    )
    flow_key: str = Field(description=f"The request's flow key, as {FLOW_KEY_HEX} hex characters.")
    predicted_context: list[float] = Field(description=f"The {D} features predicted at step `horizon`.")
    horizon: int = Field(description="Steps ahead of the last context that `predicted_context` is for.")
    steps: list[list[float]] = Field(description="The predicted contexts of steps 1..horizon.")
    confidence: float = Field(
        ge=0.0,
        le=1.0,
        description="Calibrated probability that the actual latency_ms at step `horizon` lands within "
        "±10 % of the predicted one.",
    )
    lower: list[float] = Field(description="Lower end of the central 90 % interval, per feature.")
    upper: list[float] = Field(description="Upper end of the central 90 % interval, per feature.")
    model_used: str = Field(description="Model kind that made the forecast.")
    model_version: str = Field(description="Version of that model's weights.")
    cached: bool = Field(description="Whether the answer came from the prediction cache.")
    processing_time_ms: float = Field(description="Server time spent on this request, in milliseconds.")
    similar_patterns: list[str] = Field(
        description="pattern_ids of the window's contexts nearest to the prediction, nearest first, at most "
        "3; empty when no context carries one."
    )
    metadata: dict[str, float] = Field(
        description="step_ms (spacing assumed between future steps: the window's median), horizon_ms, "
        "window_length, contexts_used (the ones the model read)."
    )


class BatchPredictResult(BaseModel):
    """One result per request, in the order of the requests."""

    results: list[PredictionResult]


class VersionInfo(BaseModel):
    """One model version that went live on the replicas."""

    version: str = Field(examples=["lstm-0982051dc94c"])
    source: Literal["shipped", "online", "rollback"] = Field(
        description="`shipped`: the checkpoint the service started with; `online`: learned from feedback; "
        "`rollback`: an earlier version made live again by POST /v1/models/rollback."
    )
    parent: str | None = Field(default=None, description="The version that served before this one.")
    activated_at: float = Field(description="When it went live, seconds since the Unix epoch.")
    validation: dict[str, float] = Field(
        default_factory=dict,
        description="For online versions: its loss (`loss`) and the replaced version's (`serving_loss`) on "
        "the same held-back feedback (`samples`); its next-step latency MAE there (`latency_mae`) and "
        "that of the baselines it beat (`persistence_mae`, `ewma_mae`), in the scaled space the model "
        "predicts in (units of each window's own deviation of log latency); and the training `steps`.",
    )


class RollbackRequest(BaseModel):
    """Which model to roll back, and to which version."""

    model: str | None = Field(default=None, description="Model kind; null = the service's default.")
    version: str | None = Field(
        default=None, description="A version from the model's history; null = the one before the serving one."
    )


class RollbackResult(BaseModel):
    """The version now serving after a rollback."""

    model: str
    version: str
    previous: str


class FeedbackRequest(BaseModel):
    """What really happened after a window: its actual next context, for online learning.

    Either the window itself (`flow_key` and `contexts`, as in a predict request), or the
    `prediction_id` of a prediction this replica made from it.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "flow_key": _EXAMPLE_KEY,
                    "contexts": _EXAMPLE_CONTEXTS,
                    "actual": {"timestamp": 1_700_000_003_000, "features": _EXAMPLE_CONTEXTS[2]["features"]},
                },
                {
                    "prediction_id": "5c1d0e3a9b7f4c2d8e6a1b0c3d5e7f90",
                    "actual": {"timestamp": 1_700_000_003_000, "features": _EXAMPLE_CONTEXTS[2]["features"]},
                },
            ]
        }
    )

    flow_key: FlowKey | None = Field(default=None, description="The flow, when the window is sent.")
    contexts: list[ContextVector] | None = Field(
        default=None, min_length=1, description="The window predicted from, oldest first (as predicted)."
    )
    prediction_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = Field(
        default=None, description="The `prediction_id` of a PredictionResult, instead of the window."
    )
    actual: ContextVector = Field(description="The context that really came next.")

    @field_validator("contexts")
    @classmethod
    def _window(
        cls, contexts: list[ContextVector] | None, info: ValidationInfo
    ) -> list[ContextVector] | None:
        return None if contexts is None else checked_window(contexts, info)

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        if self.prediction_id is not None:
            if self.contexts is not None or self.flow_key is not None:
                raise PydanticCustomError(
                    "feedback_form", "send either prediction_id, or flow_key and contexts; not both"
                )
            return self
        if self.contexts is None or self.flow_key is None:
            raise PydanticCustomError(
                "feedback_form", "feedback needs prediction_id, or both flow_key and contexts"
            )
        last = self.contexts[-1]["timestamp"]
        if self.actual["timestamp"] < last:
            raise PydanticCustomError(
                "actual_before_window",
                "actual.timestamp {timestamp} is before the window's last context ({last})",
                {"timestamp": self.actual["timestamp"], "last": last},
            )
        return self


class FeedbackAccepted(BaseModel):
    """Feedback taken: it is in the feedback stream (Redis) or the in-process buffer, and will be learned."""

    accepted: Literal[True] = True
    id: str = Field(description="Its id in the feedback stream (the Redis Stream entry id, or a counter).")


class ModelInfo(BaseModel):
    """One loaded model."""

    kind: str = Field(examples=["lstm"])
    version: str = Field(examples=["lstm-5b3260418218"])
    default: bool = Field(description="Whether requests that name no model get this one.")
    seq_len: int = Field(description="Contexts the model reads from the end of a window.")
    horizon: int = Field(description="Steps ahead it predicts (H).")
    feature_names: list[str]
    device: str = Field(examples=["cpu"])
    parameters: int = Field(description="Number of trainable parameters.")
    training: dict[str, Any] = Field(description="The checkpoint's training summary and validation figures.")
    hparams: dict[str, Any] = Field(description="Architecture hyper-parameters.")
    history: list[VersionInfo] = Field(
        default_factory=list,
        description="Versions of this kind that went live, the serving one first, with their validation "
        "figures on the held-back feedback (online versions only).",
    )


class ModelList(BaseModel):
    """The models this replica serves."""

    default: str
    models: list[ModelInfo]
    learning: bool = Field(default=False, description="Whether this replica learns from feedback.")


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness: whether this replica should receive traffic, and why not."""

    status: Literal["ready", "degraded", "unavailable"] = Field(
        description="`ready`; `degraded`: it serves (200), but without some part, named in `degraded`; "
        "`unavailable`: it cannot serve (503), see `reason`."
    )
    reason: str | None = None
    models: list[str] = Field(default_factory=list, description="Kinds loaded and served.")
    degraded: dict[str, str] = Field(
        default_factory=dict,
        description="The parts that do not work now, with why (e.g. `cache`: Redis unreachable); present "
        "only when there are some.",
    )


class LatencyStats(BaseModel):
    """Percentiles of the engine's prediction latency (queue wait + forward pass) over recent windows."""

    windows: int = Field(description="Windows the percentiles are taken over: the most recent ones.")
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


class CacheStats(BaseModel):
    """The prediction cache since start."""

    lookups: int = Field(description="Windows looked up (each in the in-process tier first).")
    hits: int = Field(description="Lookups answered by any tier.")
    hit_rate: float | None = Field(description="hits / lookups; null before the first lookup.")
    hits_by_tier: dict[str, int]
    errors: int = Field(description="Failed round-trips to Redis.")
    entries: int = Field(description="Entries held by the in-process tier.")


class EngineStatsOut(BaseModel):
    """The micro-batching engine since start."""

    queue_depth: int
    queue_capacity: int
    forward_passes: int
    mean_batch_size: float | None
    shed_windows: int = Field(description="Windows refused with a 503 because the queue was full.")


class MemoryStats(BaseModel):
    """Memory of this process, and of its GPU when the models run on CUDA."""

    rss_bytes: int | None = Field(description="Resident set size; null where /proc is not available.")
    gpu_allocated_bytes: int | None = None
    gpu_reserved_bytes: int | None = None
    gpu_total_bytes: int | None = None


class Stats(BaseModel):
    """This replica's performance figures since it started (GET /v1/stats)."""

    uptime_s: float
    predictions: int = Field(description="Windows answered: computed by a model or served from the cache.")
    predictions_by_model: dict[str, int] = Field(description="Windows computed, per model kind.")
    cached_predictions: int
    latency: LatencyStats | None = Field(description="null before the first computed prediction.")
    cache: CacheStats
    engine: EngineStatsOut
    default_model: str
    models: dict[str, str] = Field(description="Served model kinds and their versions.")
    device: str
    memory: MemoryStats
    forecasts: dict[str, Any] | None = Field(
        default=None,
        description="Continuous prediction of the observed flows: forecasts made, flows due, observe -> "
        "forecast latency, the rolling latency MAE per model beside persistence's and EWMA's, free labels, "
        "the live coverage of the served intervals (``intervals``); "
        "null when CPE_PREDICT_ON_OBSERVE is off.",
    )


# -- the server-side flow windows (GET /v1/flows, GET /v1/flows/{flow_key})


class FlowContextOut(BaseModel):
    timestamp: int
    features: list[float]
    imputed: list[str] = Field(description="The features filled in from the flow (not measured).")
    pattern_id: str | None


class FlowSummary(BaseModel):
    """One flow's window, summarized; ``forecast`` and ``score`` come with continuous prediction."""

    flow_key: str
    route_id: str | None
    length: int = Field(description="Contexts in the window (at most CPE_FLOW_WINDOW).")
    observations: int = Field(description="Contexts ever applied to the flow.")
    first_timestamp: int
    newest_timestamp: int = Field(description="Timestamp of the newest observation applied.")
    newest: FlowContextOut
    mean: list[float] = Field(description="Each feature's mean over the window.")
    std: list[float] = Field(description="Each feature's standard deviation over the window.")
    forecast: dict[str, Any] | None = Field(default=None, description="The newest forecast for the flow.")
    score: dict[str, Any] | None = Field(default=None, description="The flow's running forecast score.")
    contexts: list[FlowContextOut] | None = Field(
        default=None, description="The window's contexts, oldest first (with `?contexts=true` only)."
    )


class FlowListItem(BaseModel):
    flow_key: str
    route_id: str | None
    length: int
    newest_timestamp: int


class FlowPage(BaseModel):
    """A page of flows in flow-key order; ask for the next with ``after=next``."""

    flows: list[FlowListItem]
    next: str | None = Field(description="The cursor of the next page; null on the last.")
    count: int = Field(description="Flows held (with Redis: an upper bound until expired flows are pruned).")


class Message(BaseModel):
    """An error that is not about a particular field."""

    detail: str


class FieldError(BaseModel):
    """One invalid field of a request."""

    type: str = Field(examples=["finite_number"])
    loc: list[str | int] = Field(
        description="Path of the field, from the body down.",
        examples=[["body", "contexts", 3, "features", 0]],
    )
    msg: str = Field(examples=["Input should be a finite number"])
    input: Any = Field(default=None, description="The offending value, when small enough to echo.")
    ctx: dict[str, Any] | None = None


class ValidationErrors(BaseModel):
    """A 422: every invalid field of the request."""

    detail: list[FieldError]
