"""A validated window of one flow: what a predict request becomes once its body is read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True, eq=False)  # not frozen: a batch makes hundreds, and a frozen one costs more to make
class Window:
    """One validated predict request as the handlers use it, its window already as arrays."""

    flow_key: str  # 64 lowercase hex characters, whichever form the request used
    model: str | None  # the model kind asked for; None: the service's default
    horizon: int
    timestamps: np.ndarray  # (n,) int64 ms since the epoch, not decreasing
    features: np.ndarray  # (n, D) float64, finite, each feature within its range (app.wire.rules)
    pattern_ids: list[str | None]  # (n,) each context's pattern_id, None where it has none
