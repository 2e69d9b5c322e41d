"""A continuous forecast as a PredictionResult: serialized when someone reads it, not when it is made.

Most forecasts are superseded by the next before anyone reads them: with ``memory://`` and no subscriber
for a flow, its forecast stays a handle on its forward pass's row (``Draft``) and is serialized only if
``GET /v1/flows/{flow_key}`` asks for it. What is published, or kept in Redis, is serialized in bulk, per
forward pass (``serialize_many``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.api.responses import dumps
from app.engine import WindowForecast, read_numbers


@dataclass(slots=True)
class Draft:
    """What a flow's PredictionResult is made of, before it is serialized."""

    forecast: WindowForecast  # its row of the forward pass
    flow_key: str
    horizon: int
    base_ts: int  # the window's newest timestamp
    window_length: int
    processing_time_ms: float  # from the oldest observation it covers to the forecast
    similar_patterns: list[str]
    extra: dict[str, float] = field(default_factory=dict)  # more metadata: pattern memory's analog forecast


def prediction_id(flow_key: str, base_ts: int) -> str:
    """Names the forecast of a flow's window by its newest context: 32 hex characters."""
    return f"{flow_key[:16]}{base_ts:016x}"


def _result(
    draft: Draft,
    steps: list[list[float]],
    confidence: float,
    lower: list[float],
    upper: list[float],
    step_ms: float,
) -> bytes:
    predictor, h, n = draft.forecast.predictor, draft.horizon, draft.window_length
    return dumps(
        {
            "prediction_id": prediction_id(draft.flow_key, draft.base_ts),
            "flow_key": draft.flow_key,
            "predicted_context": steps[h - 1],
            "horizon": h,
            "steps": steps,
            "confidence": confidence,
            "lower": lower,
            "upper": upper,
            "model_used": predictor.kind,
            "model_version": predictor.version,
            "cached": False,
            "processing_time_ms": draft.processing_time_ms,
            "similar_patterns": draft.similar_patterns,
            "metadata": {
                "step_ms": step_ms,
                "horizon_ms": step_ms * h,
                "window_length": float(n),
                "contexts_used": float(min(n, predictor.seq_len)),
                "base_timestamp": float(draft.base_ts),
                "target_timestamp": draft.base_ts + step_ms * h,
                **draft.extra,
            },
        }
    )


def serialize(draft: Draft) -> bytes:
    """One draft's PredictionResult."""
    f, h = draft.forecast, draft.horizon
    return _result(
        draft,
        f.mean[:h].tolist(),
        float(f.confidence[h - 1]),
        f.lower[h - 1].tolist(),
        f.upper[h - 1].tolist(),
        f.dt_s * 1000.0,
    )


def serialize_many(drafts: Sequence[Draft]) -> list[bytes]:
    """Each draft's PredictionResult, the numbers read per forward pass (``read_numbers``)."""
    out: list[bytes] = [b""] * len(drafts)
    horizons = [draft.horizon for draft in drafts]
    for j, numbers in read_numbers([draft.forecast for draft in drafts], horizons):
        out[j] = _result(drafts[j], *numbers)
    return out
