"""Adaptive TTL: a cached forecast lives as long as its flow is predictable.

A forecast is for a moment ``horizon`` steps after its window's newest context. Past that moment it
is stale: the flow has moved on, and an answer from the cache would describe the past. So its TTL is
its horizon in time (``step_ms x horizon``, the window's own sampling interval) for a flow whose forecast
is narrow, and shorter for one whose forecast is wide (its next observation may well change the answer):
the factor is the confidence band's tolerance over the forecast's relative half-width, within 0.25..1.
Bounded by ``CPE_CACHE_TTL_MIN_MS`` .. ``CPE_CACHE_TTL_MAX_MS``; a window of one context (no interval)
gets the least. ``python -m tools.cache_ttl`` measures the hit rate and staleness against the fixed TTL.
"""

from __future__ import annotations

from dataclasses import dataclass

STRETCH = (0.25, 1.0)  # the least and most the spread may scale the horizon by: never past the target


@dataclass(frozen=True, slots=True)
class AdaptiveTtl:
    """The TTL of each forecast, from its interval and its spread."""

    min_ms: int
    max_ms: int
    tolerance: float = 0.1  # the band of the confidence: a half-width this wide is "predictable"

    def ttl_ms(self, step_ms: float, horizon: int, point: float, lower: float, upper: float) -> int:
        """The TTL of a forecast of ``point`` (latency, its interval ``lower``..``upper``) ``horizon`` steps
        of ``step_ms`` ahead."""
        if step_ms <= 0:
            return self.min_ms
        half_width = max(upper - lower, 0.0) / 2 / max(abs(point), 1e-9)
        stretch = min(max(self.tolerance / max(half_width, 1e-9), STRETCH[0]), STRETCH[1])
        return int(min(max(step_ms * horizon * stretch, self.min_ms), self.max_ms))


def forecast_ttl(
    policy: AdaptiveTtl | None, step_ms: float, horizon: int, mean: float, lower: float, upper: float
) -> int | None:
    """``policy``'s TTL of a forecast's primary feature at its horizon; None (the fixed TTL) without one."""
    return None if policy is None else policy.ttl_ms(step_ms, horizon, mean, lower, upper)
