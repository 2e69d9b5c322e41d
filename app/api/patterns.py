"""POST /v1/patterns/search and GET /v1/patterns/{pattern_id}: pattern memory (``app/patterns``)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from starlette.requests import HTTPConnection

from app.api.deps import parse_body
from app.api.errors import ERROR_RESPONSES
from app.api.openapi import json_body
from app.api.responses import OrjsonResponse
from app.flows import FlowsUnavailable
from app.patterns.memory import PatternFilter, UnknownPattern
from app.patterns.service import Patterns
from app.schemas import ContextVector, FlowKey, Message, checked_window
from app.services import Services

router = APIRouter(prefix="/v1/patterns", tags=["patterns"])

PatternId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
MAX_FILTER_IDS = 100


async def get_patterns(conn: HTTPConnection) -> Patterns | None:
    return Services.of(conn.app).patterns


PatternsDep = Annotated[Patterns | None, Depends(get_patterns)]


class SearchFilter(BaseModel):
    """Which stored windows a search may answer; every field given must hold. An unknown field is a 422."""

    model_config = ConfigDict(extra="forbid")

    pattern_id: PatternId | list[PatternId] | None = Field(
        default=None, description="Layer 2's pattern id (or any of a list) that labelled the windows."
    )
    min_confidence: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Least confidence of Layer 2 in that label."
    )
    flow_key: FlowKey | None = Field(default=None, description="Only this flow's windows.")

    @field_validator("pattern_id")
    @classmethod
    def _few(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not 1 <= len(value) <= MAX_FILTER_IDS:
            raise ValueError(f"pattern_id: give 1..{MAX_FILTER_IDS} pattern ids, not {len(value)}")
        return value

    def where(self) -> PatternFilter:
        ids = self.pattern_id
        return PatternFilter(
            pattern_ids=None if ids is None else (ids,) if isinstance(ids, str) else tuple(ids),
            min_confidence=self.min_confidence,
            flow_key=self.flow_key,
        )


class PatternSearchRequest(BaseModel):
    """A window to look up in pattern memory: its ``contexts``, or a flow's server-side window."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"flow_key": "3f" * 32, "k": 10, "filter": {"pattern_id": "burst"}}]}
    )

    flow_key: FlowKey | None = Field(
        default=None,
        description="The flow whose server-side window is looked up (without contexts); with contexts, "
        "only names them.",
    )
    contexts: list[ContextVector] | None = Field(
        default=None, min_length=1, description="A window, as POST /v1/predict takes it."
    )
    k: int = Field(default=10, ge=1, description="Matches wanted, 1..CPE_PATTERNS_MAX_K.")
    filter: SearchFilter | None = None

    @field_validator("contexts")
    @classmethod
    def _window(cls, contexts: Any, info: ValidationInfo) -> Any:
        return None if contexts is None else checked_window(contexts, info)

    @model_validator(mode="after")
    def _something_to_search(self) -> PatternSearchRequest:
        if self.flow_key is None and self.contexts is None:
            raise ValueError("give flow_key (its server-side window) or contexts")
        return self


class PatternMatch(BaseModel):
    flow_key: str
    timestamp: int = Field(description="The stored window's newest context, ms since the epoch.")
    distance: float = Field(description="Squared L2 distance between unit embeddings: 0 (alike) .. 4.")
    pattern_id: str | None = Field(description="Layer 2's label of the window, if one came for its flow.")
    confidence: float | None = Field(description="Layer 2's confidence in that label.")
    next: list[float] = Field(description="The context that followed the window, raw units (D).")


class PatternSearchAnswer(BaseModel):
    matches: list[PatternMatch] = Field(description="Nearest first.")
    analog: list[float] | None = Field(
        description="The next context by analogy: what followed the matches, on the query window's scale."
    )


class PatternSummaryOut(BaseModel):
    pattern_id: str
    count: int = Field(description="Stored windows with this label (or this window, by name).")
    mean_latency_change_ms: float = Field(description="Mean of next latency - the window's last latency.")
    latency_change_std_ms: float = Field(description="Its standard deviation: the spread of what followed.")
    next_mean: list[float] = Field(description="The mean next context, raw units (D).")
    first_timestamp: int
    last_timestamp: int


def _off() -> OrjsonResponse:
    return OrjsonResponse(
        {"detail": "pattern memory is off on this replica (CPE_PATTERNS_ENABLED=false)"}, 404
    )


@router.post(
    "/search",
    response_model=PatternSearchAnswer,
    responses={**ERROR_RESPONSES, 404: {"model": Message}},
    openapi_extra=json_body(PatternSearchRequest),
)
async def search(request: Request) -> Any:
    """The stored windows nearest a window, with what followed each."""
    services = Services.of(request.app)
    patterns = services.patterns
    req = await parse_body(request, PatternSearchRequest, services.limits)
    if req.k > services.settings.patterns_max_k:
        raise RequestValidationError(
            [
                {
                    "type": "less_than_equal",
                    "loc": ("body", "k"),
                    "msg": f"Input should be less than or equal to {services.settings.patterns_max_k}",
                    "input": req.k,
                    "ctx": {"le": services.settings.patterns_max_k},
                }
            ]
        )
    if patterns is None:
        return _off()
    if req.contexts is not None:
        ts = np.array([c["timestamp"] for c in req.contexts], np.int64)
        fs = np.array([c["features"] for c in req.contexts], np.float64)
    else:
        assert req.flow_key is not None
        try:
            window = await services.flows.window(req.flow_key)
        except FlowsUnavailable as exc:
            return OrjsonResponse({"detail": str(exc)}, 503, {"retry-after": str(exc.retry_after_s)})
        if window is None:
            return OrjsonResponse(
                {"detail": f"flow {req.flow_key} is not known (never observed, or expired)"}, 404
            )
        ts, fs = window.timestamps, window.features.astype(np.float64)
    forecast = await services.engine.predict(patterns.kind, ts, fs, 1)
    assert forecast.embedding is not None  # the engine embeds whenever pattern memory is on
    where = None if req.filter is None else req.filter.where()
    [matches] = patterns.memory.search(forecast.embedding[None], req.k, where)
    return {
        "matches": [
            {
                "flow_key": m.flow_key,
                "timestamp": m.timestamp,
                "distance": m.distance,
                "pattern_id": m.pattern_id,
                "confidence": m.confidence,
                "next": m.next,
            }
            for m in matches
        ],
        "analog": patterns.analog(matches[: patterns.analog_k], forecast),
    }


@router.get(
    "/{pattern_id}",
    response_model=PatternSummaryOut,
    responses={404: {"model": Message}},
)
async def pattern(
    patterns: PatternsDep,
    pattern_id: Annotated[
        str, Path(min_length=1, max_length=200, description="A pattern id, or a window's name.")
    ],
) -> Any:
    """What followed the stored windows labelled ``pattern_id`` (or the one window named
    ``<flow_key>@<timestamp>``, as similar_patterns names an unlabelled one)."""
    if patterns is None:
        return _off()
    try:
        found = patterns.memory.summary(pattern_id)
    except UnknownPattern:
        return OrjsonResponse({"detail": f"pattern {pattern_id!r} is not in pattern memory"}, 404)
    return PatternSummaryOut(
        pattern_id=found.pattern_id,
        count=found.count,
        mean_latency_change_ms=found.mean_latency_change_ms,
        latency_change_std_ms=found.latency_change_std_ms,
        next_mean=found.next_mean,
        first_timestamp=found.first_timestamp,
        last_timestamp=found.last_timestamp,
    )
