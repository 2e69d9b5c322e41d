"""Predictions from the server-side window: a predict request with a ``flow_key`` and no ``contexts``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
from pydantic import BaseModel, Field

from app.flows.base import FlowStore
from app.schemas import PredictionResult
from app.window import Window


class ItemError(BaseModel):
    status: int = Field(description="404: the flow has no server-side window.")
    detail: str


class BatchItemError(BaseModel):
    """An item of a batch answer that could not be predicted, in its place."""

    flow_key: str
    error: ItemError


class BatchPredictAnswer(BaseModel):
    """The answers in the order of the requests: a result, or (for a flow without contexts and without a
    server-side window) an error."""

    results: list[PredictionResult | BatchItemError]


class UnknownFlow(LookupError):
    """A prediction from the server-side window of a flow that has none (a 404)."""


async def fill_from_flows(windows: Sequence[Window], store: FlowStore, max_window: int) -> list[int]:
    """Give each window that came without contexts its flow's window (its last ``max_window`` contexts);
    answer the positions of those whose flow the store does not know. Raises ``FlowsUnavailable``."""
    empty = [i for i, window in enumerate(windows) if not len(window.timestamps)]
    if not empty:
        return []
    found = await store.windows([windows[i].flow_key for i in empty])
    unknown = []
    for i, flow in zip(empty, found, strict=True):
        if flow is None:
            unknown.append(i)
            continue
        window = windows[i]
        window.timestamps = flow.timestamps[-max_window:]
        window.features = flow.features[-max_window:].astype(np.float64)
        window.pattern_ids = flow.pattern_ids[-max_window:]
    return unknown


def unknown_flow(flow_key: str) -> dict[str, object]:
    """The error of a request for the server-side window of a flow never observed (or expired)."""
    return {
        "status": 404,
        "detail": f"flow {flow_key} has no server-side window (never observed through /v1/observe, or "
        "expired): send its contexts",
    }


def unknown_flow_item(flow_key: str) -> bytes:
    """A batch answer's item for such a flow: ``{"flow_key", "error": {"status": 404, "detail"}}``."""
    return orjson.dumps({"flow_key": flow_key, "error": unknown_flow(flow_key)})
