"""The continuous-prediction part of one replica, built from the settings and run with ``async with``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import orjson
from prometheus_client import CollectorRegistry

from app.bus import Bus
from app.engine import Engine
from app.forecasts.continuous import ContinuousPrediction, WindowSource
from app.forecasts.labels import FreeLabels
from app.forecasts.redis import ForecastsUnavailable
from app.forecasts.scores import Scores
from app.forecasts.store import ForecastStore, create_forecast_store
from app.forecasts.stream import FlowPredictionHub, FlowPredictionMetrics
from app.learning.conformal import ConformalIntervals
from app.learning.feedback import FeedbackStore
from app.learning.residual import FlowResiduals
from app.settings import Settings


class Forecasts:
    """Continuous prediction, its store of newest forecasts, its stream hub, its scores and free labels."""

    def __init__(
        self,
        continuous: ContinuousPrediction,
        store: ForecastStore,
        hub: FlowPredictionHub,
        scores: Scores,
        labels: FreeLabels | None,
    ) -> None:
        self.continuous, self.store, self.hub, self.scores, self.labels = (
            continuous,
            store,
            hub,
            scores,
            labels,
        )
        self._stack = contextlib.AsyncExitStack()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        engine: Engine,
        bus: Bus,
        source: WindowSource,
        feedback: FeedbackStore | None,
        registry: CollectorRegistry | None,
        *,
        ttl_ms: int,
        max_flows: int,
        intervals: ConformalIntervals | None = None,
    ) -> Forecasts:
        """``source``: the flow store; ``feedback``: the learner's (None: no free labels); ``ttl_ms``,
        ``max_flows``: the flow store's, so that forecasts go with windows; ``intervals``: the online
        interval calibration the scored forecasts feed (None: the models' own intervals)."""
        horizon = engine.predictors[settings.model].horizon
        if settings.forecast_horizon > horizon:
            raise ValueError(
                f"forecast_horizon ({settings.forecast_horizon}) exceeds the {settings.model} model's "
                f"horizon ({horizon})"
            )
        store = create_forecast_store(
            settings.forecast_url, ttl_ms=ttl_ms, max_flows=max_flows, prefix=settings.forecast_prefix
        )
        scores = Scores(settings.forecast_score_window, registry)
        hub = FlowPredictionHub(
            bus,
            settings.predictions_channel,
            queue_size=settings.ws_queue_size,
            metrics=FlowPredictionMetrics(registry),
        )
        labels = None
        if feedback is not None and settings.free_labels_per_s > 0:
            seq_len = engine.predictors[settings.model].seq_len
            labels = FreeLabels(feedback, seq_len, rate_per_s=settings.free_labels_per_s, registry=registry)
        continuous = ContinuousPrediction(
            engine,
            source,
            store,
            scores,
            bus=bus,
            channel=settings.predictions_channel,
            hub=hub,
            labels=labels,
            kind=settings.model,
            horizon=settings.forecast_horizon,
            batch=settings.forecast_batch,
            rounds=settings.forecast_rounds,
            pass_size=settings.forecast_pass or None,
            publish_always=urlsplit(settings.bus_url).scheme != "memory",
            intervals=intervals,
            residuals=FlowResiduals(
                forget=settings.residual_forget,
                margin=settings.residual_margin,
                min_labels=settings.residual_min_labels,
                max_flows=settings.residual_max_flows,
                registry=registry,
            )
            if settings.residual_adapt
            else None,
            registry=registry,
        )
        return cls(continuous, store, hub, scores, labels)

    async def on_applied(self, applied: Iterable[str]) -> None:
        """Ingest's callback: the flows that newly applied observations touched are due for a forecast."""
        self.continuous.touch(applied)

    def prefetch(self, flow_keys: Iterable[str]) -> None:
        """Forecast ``flow_keys`` ahead, on their current windows, because they are about to be asked for
        (a group's routes when one of them is read, say): their forecasts are then ready in the store
        and on the stream. Flows due already are forecast once."""
        self.continuous.touch(flow_keys)

    async def flow(self, flow_key: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """A flow's newest forecast (a PredictionResult) and running score, for GET /v1/flows/{flow_key}."""
        try:
            found = await self.store.get(flow_key)
        except ForecastsUnavailable:  # the window is answered all the same; /readyz says why
            return None, None
        if found is None:
            return None, None
        return orjson.loads(found.result()), found.score.as_dict()

    async def forget(self, flow_key: str) -> None:
        """Drop a deleted flow's forecast and score."""
        with contextlib.suppress(ForecastsUnavailable):
            await self.store.delete(flow_key)

    def summary(self) -> dict[str, Any]:
        """What GET /v1/stats answers about continuous prediction on this replica."""
        stats = self.continuous.stats
        percentiles = self.continuous.latencies.percentiles((50, 99))
        p50, p99 = (None, None) if percentiles is None else (round(p * 1e3, 3) for p in percentiles)
        labels = None if self.labels is None else dict(self.labels.counts)
        return {
            "forecasts": stats.forecasts,
            "rounds": stats.rounds,
            "due": self.continuous.due,
            "coalesced": stats.coalesced,
            "deferred": stats.deferred,
            "observe_to_forecast_ms": {"p50": p50, "p99": p99},
            "scores": self.scores.summary(),
            "free_labels": labels,
            "intervals": None if self.continuous.intervals is None else self.continuous.intervals.summary(),
            "residuals": None if self.continuous.residuals is None else self.continuous.residuals.summary(),
            "store_problem": self.store.problem,
        }

    async def __aenter__(self) -> Self:
        stack = self._stack
        await stack.enter_async_context(self.store)
        await stack.enter_async_context(self.hub)
        if self.labels is not None:
            await stack.enter_async_context(self.labels)
        await stack.enter_async_context(self.continuous)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
