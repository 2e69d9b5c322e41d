"""A continuous forecast as a PredictionResult: serialized when someone reads it, not when it is made.

Most forecasts are superseded by the next before anyone reads them: with ``memory://`` and no subscriber
for a flow, its forecast stays a row of its round (``RoundResults``: the round's forward passes' arrays
and a few arrays of its own, no object per flow) and is serialized only if ``GET /v1/flows/{flow_key}``
asks for it. What is published, or kept in Redis, is serialized in bulk, per forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from app.api.responses import dumps
from app.engine import WindowForecast

if TYPE_CHECKING:
    from app.forecasts.store import FlowForecast
    from models.predictor import Forecast, Predictor


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


def _metadata(base_ts: int, h: int, step_ms: float, extra: dict[str, float]) -> dict[str, float]:
    """A continuous forecast's metadata beyond a PredictionResult's own: its base and target timestamps."""
    return {"base_timestamp": float(base_ts), "target_timestamp": base_ts + step_ms * h, **extra}


def result_body(
    answer_id: str,
    flow_key: str,
    predictor: Predictor,
    h: int,
    n: int,
    processing_time_ms: float,
    similar_patterns: list[str],
    metadata: dict[str, float],
    steps: list[list[float]],
    confidence: float,
    lower: list[float],
    upper: list[float],
    step_ms: float,
) -> bytes:
    """One PredictionResult's JSON (``answer_id`` its ``prediction_id``), as POST /v1/predict and continuous
    prediction both answer it: the forecast of a window of ``n`` contexts at step ``h``, ``metadata``
    after the fields every one has."""
    return dumps(
        {
            "prediction_id": answer_id,
            "flow_key": flow_key,
            "predicted_context": steps[h - 1],
            "horizon": h,
            "steps": steps,
            "confidence": confidence,
            "lower": lower,
            "upper": upper,
            "model_used": predictor.kind,
            "model_version": predictor.version,
            "cached": False,
            "processing_time_ms": processing_time_ms,
            "similar_patterns": similar_patterns,
            "metadata": {
                "step_ms": step_ms,
                "horizon_ms": step_ms * h,
                "window_length": float(n),
                "contexts_used": float(min(n, predictor.seq_len)),
                **metadata,
            },
        }
    )


def serialize(draft: Draft) -> bytes:
    """One draft's PredictionResult."""
    f, h, step_ms = draft.forecast, draft.horizon, draft.forecast.dt_s * 1000.0
    return result_body(
        prediction_id(draft.flow_key, draft.base_ts),
        draft.flow_key,
        f.predictor,
        h,
        draft.window_length,
        draft.processing_time_ms,
        draft.similar_patterns,
        _metadata(draft.base_ts, h, step_ms, draft.extra),
        f.mean[:h].tolist(),
        float(f.confidence[h - 1]),
        f.lower[h - 1].tolist(),
        f.upper[h - 1].tolist(),
        step_ms,
    )


@dataclass(slots=True)
class Segment:
    """Rows ``start:stop`` of a round are rows ``row:row + stop - start`` of one forward pass."""

    start: int
    stop: int
    forecast: Forecast
    predictor: Predictor
    row: int


def segments(forecasts: Sequence[WindowForecast]) -> list[Segment]:
    """A round's forecasts as runs of consecutive rows of one forward pass each (a round of B windows is
    B / max_batch passes, or a few more when HTTP requests shared them)."""
    out: list[Segment] = []
    n = len(forecasts)
    i = 0
    while i < n:
        first = forecasts[i]
        batch, row = first.batch, first.index
        # a pass holds a whole job: try the longest run first, then walk
        j = min(n, i + len(batch.dt_s) - row)
        last = forecasts[j - 1]
        if not (last.batch is batch and last.index == row + (j - 1 - i)):
            j = i + 1
            while j < n and forecasts[j].batch is batch and forecasts[j].index == row + (j - i):
                j += 1
        out.append(Segment(i, j, batch, first.predictor, row))
        i = j
    return out


class RoundResults:
    """The PredictionResults of a round's flows, each serialized on the first ask (and kept), read from
    the forward passes' rows (``segments``) and the round's arrays; or given serialized."""

    __slots__ = (
        "_bodies",
        "_starts",
        "base_ts",
        "extra",
        "flow_keys",
        "horizon",
        "lengths",
        "processing_ms",
        "segments",
        "similar",
    )

    def __init__(
        self,
        flow_keys: Sequence[str],
        horizon: int,
        base_ts: np.ndarray,
        lengths: np.ndarray,
        processing_ms: np.ndarray,
        passes: list[Segment],
        similar: dict[int, list[str]] | None = None,
        extra: dict[int, dict[str, float]] | None = None,
    ) -> None:
        self.flow_keys, self.horizon = flow_keys, horizon
        self.base_ts, self.lengths, self.processing_ms = base_ts, lengths, processing_ms
        self.segments = passes
        self._starts = np.fromiter((s.start for s in passes), np.int64, len(passes))
        self.similar = similar or {}  # row -> similar_patterns, where not empty
        self.extra = extra or {}  # row -> more metadata, where any
        self._bodies: dict[int, bytes] = {}

    @classmethod
    def given(cls, forecasts: Sequence[FlowForecast]) -> RoundResults:
        """Results already made (serialized, or drafts serialized now)."""
        empty = np.zeros(0, dtype=np.int64)
        out = cls((), 0, empty, empty, empty.astype(np.float64), [])
        out._bodies = {i: f.result() for i, f in enumerate(forecasts)}
        return out

    def body(self, i: int) -> bytes:
        """Row i's serialized PredictionResult."""
        found = self._bodies.get(i)
        if found is None:
            [found] = self.bodies([i])
        return found

    def bodies(self, rows: Iterable[int]) -> list[bytes]:
        """The serialized PredictionResults of ``rows``, in order; the numbers read per forward pass."""
        rows = list(rows)
        known = self._bodies
        missing = [i for i in rows if i not in known]
        if missing:
            self._serialize(missing)
        return [known[i] for i in rows]

    def _serialize(self, rows: list[int]) -> None:
        at = np.asarray(rows, dtype=np.int64)
        which = np.searchsorted(self._starts, at, side="right") - 1
        h, keys = self.horizon, self.flow_keys
        for s in np.unique(which).tolist():
            seg = self.segments[s]
            members = at[which == s]
            prow = members - seg.start + seg.row
            batch = seg.forecast
            numbers = zip(
                members.tolist(),
                batch.mean[prow, :h].tolist(),
                batch.confidence[prow, h - 1].tolist(),
                batch.lower[prow, h - 1].tolist(),
                batch.upper[prow, h - 1].tolist(),
                (batch.dt_s[prow] * 1000.0).tolist(),
                self.base_ts[members].tolist(),
                self.lengths[members].tolist(),
                self.processing_ms[members].tolist(),
                strict=True,
            )
            similar, extra = self.similar, self.extra
            no_extra: dict[str, float] = {}
            for i, steps, confidence, lower, upper, step_ms, base, n, ms in numbers:
                self._bodies[i] = result_body(
                    prediction_id(keys[i], base),
                    keys[i],
                    seg.predictor,
                    h,
                    n,
                    ms,
                    similar.get(i, []),
                    _metadata(base, h, step_ms, extra.get(i, no_extra)),
                    steps,
                    confidence,
                    lower,
                    upper,
                    step_ms,
                )
