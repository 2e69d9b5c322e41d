"""Forecast by analogy: what followed the nearest stored windows, put on the query window's scale.

Each stored window keeps its next context in its own standardised space (``(transform(next) - center)
/ scale``, ``models/scaling.py``): "latency rose by two of the window's deviations". The analog forecast
is the distance-weighted mean of the matches' standardised next contexts, decoded with the query
window's centre and scale, so a pattern seen at 10 ms informs a flow at 100 ms. It is blended with the
model's forecast (in the transformed space) by a weight chosen on validation data (``tools/analogy.py``;
``CPE_PATTERNS_ANALOG_WEIGHT``, 0 = the model's alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.patterns.memory import Match

EPS = 1e-3  # added to distances: an exact repeat counts much, not infinitely much


def overlapping(matches: Sequence[Match], flow_key: str, since_ms: int) -> list[Match]:
    """``matches`` less the query flow's own windows newer than ``since_ms`` (its window's oldest
    context): those overlap the query, and what followed them is in the query already."""
    return [m for m in matches if m.flow_key != flow_key or m.timestamp < since_ms]


def analog_scaled(matches: Sequence[Match]) -> np.ndarray | None:
    """(D,) the matches' next contexts, standardised, weighted by 1 / (distance + EPS); None for none."""
    if not matches:
        return None
    weights = 1.0 / (np.array([m.distance for m in matches]) + EPS)
    stacked = np.stack([m.next_scaled for m in matches]).astype(np.float64)  # (k, D)
    return np.asarray((weights[:, None] * stacked).sum(axis=0) / weights.sum())


def blend(model_loc: np.ndarray, analog_loc: np.ndarray, weight: float) -> np.ndarray:
    """The model's and the analog forecast mixed in the transformed space: ``weight`` = the analog's share."""
    return (1.0 - weight) * model_loc + weight * analog_loc
