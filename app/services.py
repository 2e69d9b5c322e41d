"""The running parts of one app, built and started together: ``Services``, and ``run_services`` that makes it.

The lifespan (``app/main.py``) enters ``run_services`` and keeps what it yields on ``app.state.services``;
handlers receive the parts through the dependency aliases of ``app/api/deps.py``, and the handlers that
skip FastAPI's dependency solving read the whole object with ``Services.of(request.app)``.

To add a part: a field here, then build it in ``run_services`` and, if it has a lifetime (an
``async with``), enter it on the exit stack after the parts it uses: they stop in the reverse order.
Its metrics go on ``registry``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.types import ASGIApp

from app.api.admission import InflightLimit
from app.auth import ApiKeys
from app.bus import Bus
from app.cache import TieredCache, create_cache
from app.cache.ttl import AdaptiveTtl
from app.engine import Engine, pick_device
from app.fanout import RoutingFanout
from app.flows import FlowStore
from app.forecasts import Forecasts
from app.groups import create_group_store
from app.groups.ranking import Hysteresis
from app.groups.service import RouteGroups
from app.ingest.observing import Observing
from app.ingest.service import IngestService
from app.learning.conformal import ConformalIntervals
from app.learning.hints import publish_hint
from app.learning.learner import replica_id
from app.learning.metrics import LearningMetrics
from app.learning.online import OnlineLearning
from app.learning.recent import RecentWindows
from app.metrics import GpuMemory
from app.patterns.service import Patterns
from app.routing import FailurePolicy
from app.schemas import Limits
from app.settings import Settings
from models.predictor import Predictor

log = logging.getLogger("cpe")


@dataclass(frozen=True, slots=True)
class Services:
    """What a running app serves with; one per app, made by ``run_services``."""

    settings: Settings
    api_keys: ApiKeys
    registry: CollectorRegistry  # every part's metrics, served on GET /metrics
    admission: InflightLimit  # the cap on prediction requests in flight
    device: str  # where the models run: "cpu", "cuda", ...
    limits: Limits  # what a request may ask, checked when its body is parsed
    engine: Engine
    cache: TieredCache
    bus: Bus
    fanout: RoutingFanout  # the routing channel, fanned out to this process's WebSocket clients
    failure_policy: FailurePolicy
    learning: OnlineLearning | None  # None unless CPE_LEARNING_ENABLED
    flows: FlowStore  # each observed flow's recent window (app/flows)
    ingest: IngestService  # the one path behind every ingest door (app/ingest)
    otlp_metric_table: Mapping[str, int]  # OTLP metric name -> feature index (CPE_OTLP_METRIC_NAMES)
    forecasts: Forecasts | None  # continuous prediction of observed flows; None unless CPE_PREDICT_ON_OBSERVE
    groups: RouteGroups  # route groups, re-ranked on their routes' forecasts (app/groups)
    patterns: Patterns | None  # pattern memory (app/patterns); None unless CPE_PATTERNS_ENABLED
    ttl: AdaptiveTtl | None  # each cached forecast's own TTL; None: CPE_CACHE_TTL_MS for all
    started: float  # time.time() when the parts began to start: the replica's uptime counts from it

    @property
    def recent(self) -> RecentWindows | None:
        """The windows of recent predictions, kept for feedback by id while the service learns."""
        return None if self.learning is None else self.learning.recent

    @classmethod
    def of(cls, app: Starlette | ASGIApp) -> Services:
        """The services of ``app`` (made by ``create_app``), once its lifespan has started them."""
        services = getattr(getattr(app, "state", None), "services", None)
        if not isinstance(services, cls):
            raise RuntimeError("the app's services are not running: use it under its lifespan")
        return services


@asynccontextmanager
async def run_services(
    settings: Settings, api_keys: ApiKeys, registry: CollectorRegistry, admission: InflightLimit
) -> AsyncIterator[Services]:
    """Load the models, start every part, yield them; stop them all, in the reverse order, after."""
    started = time.time()
    cache = create_cache(  # first: a bad URL fails before the models load
        settings.cache_url,
        max_entries=settings.cache_max_entries,
        strategy=settings.cache_strategy,
        ttl_ms=settings.cache_ttl_ms,
        timeout_ms=settings.cache_timeout_ms,
        registry=registry,
    )
    bus = Bus(settings.bus_url, registry=registry)
    fanout = RoutingFanout(bus, settings.bus_channel, queue_size=settings.ws_queue_size, registry=registry)
    device = pick_device(settings.device)
    registry.register(GpuMemory(device))
    checkpoints = {kind: settings.checkpoint_dir / f"{kind}.safetensors" for kind in settings.models}
    predictors = {kind: Predictor.load(path, device) for kind, path in checkpoints.items()}
    log.info("loaded %s on %s", ", ".join(p.version for p in predictors.values()), device)
    intervals = None  # scored on the free labels: only where observed flows are forecast continuously
    if settings.interval_adapt and settings.predict_on_observe:
        intervals = ConformalIntervals(
            predictors[settings.model].feature_names,
            gamma=settings.interval_gamma,
            window=settings.interval_window,
            coverage_window=settings.interval_coverage_window,
            min_scores=settings.interval_min_scores,
            registry=registry,
        )
    engine = Engine(
        predictors,
        max_batch=settings.engine_max_batch,
        max_wait_us=settings.engine_max_wait_us,
        queue_size=settings.queue_size,
        retry_after_s=settings.retry_after_s,
        torch_threads=settings.torch_threads,
        latency_budget_ms=settings.engine_latency_budget_ms,
        registry=registry,
        default_model=settings.model,
        adjust=None if intervals is None else intervals.widen,
        embed=settings.patterns_enabled,
        gil_switch_s=settings.gil_switch_us / 1e6,
    )
    learning_metrics = LearningMetrics(registry)  # registered even when off: dashboards expect the series
    learning = (
        OnlineLearning.from_settings(settings, engine, bus, learning_metrics, checkpoints, device)
        if settings.learning_enabled
        else None
    )
    # observing the network: flow windows and the ingest doors (app/flows, app/ingest)
    observing = Observing(
        settings,
        registry,
        # published whether this replica learns or not: the learner may be another replica
        on_learning_rate=functools.partial(publish_hint, bus, settings.learning_hints_channel),
        consumer=replica_id(),
    )
    failure_policy = FailurePolicy(
        settings.failure_rate, settings.failure_latency_factor, settings.breaker_threshold
    )
    # route groups: re-ranked on every forecast of one of their routes, changes published (app/groups)
    groups = RouteGroups(
        create_group_store(
            settings.group_url,
            max_groups=settings.max_groups,
            ttl_ms=settings.flow_ttl_ms,
            timeout_ms=settings.group_timeout_ms,
            retry_after_s=settings.retry_after_s,
            prefix=settings.group_prefix,
        ),
        bus,
        routing_channel=settings.bus_channel,
        groups_channel=settings.groups_channel,
        policy=failure_policy,
        rules=Hysteresis(
            margin=settings.group_switch_margin,
            min_dwell_ms=settings.group_min_dwell_ms,
            now_margin=settings.group_switch_now_margin,
            weight_step=settings.group_weight_step,
            breaker_margin=settings.group_breaker_margin,
        ),
        horizon=settings.forecast_horizon,
        temperature=settings.weight_temperature,
        flow_key_format=settings.flow_key_format,
        refresh_s=settings.group_refresh_s,
        registry=registry,
    )
    # continuous prediction of the observed flows: forecasts, stream, scores, free labels (app/forecasts)
    forecasts = None
    if settings.predict_on_observe:
        forecasts = Forecasts.from_settings(
            settings,
            engine,
            bus,
            observing.flows,
            None if learning is None else learning.store,
            registry,
            ttl_ms=settings.flow_ttl_ms,
            max_flows=settings.max_flows,
            intervals=intervals,
        )
        observing.ingest.on_applied = forecasts.on_applied
        forecasts.continuous.groups_of = groups.groups_of
        forecasts.continuous.on_forecasts = groups.on_forecasts
        groups.prefetch = forecasts.prefetch  # a group's routes forecast when it is defined
    # pattern memory: the observed windows by embedding, with what followed them (app/patterns)
    patterns = None
    if settings.patterns_enabled:
        patterns = Patterns.from_settings(settings, predictors[settings.model], registry)
        observing.ingest.on_patterns = patterns.hear
        if forecasts is not None:
            forecasts.continuous.patterns = patterns
    async with AsyncExitStack() as stack:
        for part in (engine, cache, bus, fanout, learning, patterns, observing, groups, forecasts):
            if part is not None:
                await stack.enter_async_context(part)
        yield Services(
            settings=settings,
            api_keys=api_keys,
            registry=registry,
            admission=admission,
            device=device,
            limits=Limits(
                max_window=settings.max_window,
                max_batch=settings.max_batch,
                horizons={kind: p.horizon for kind, p in predictors.items()},
                default_model=settings.model,
                max_routes=settings.max_routes,
            ),
            engine=engine,
            cache=cache,
            bus=bus,
            fanout=fanout,
            failure_policy=failure_policy,
            learning=learning,
            flows=observing.flows,
            ingest=observing.ingest,
            otlp_metric_table=observing.otlp_metric_table,
            forecasts=forecasts,
            groups=groups,
            patterns=patterns,
            ttl=AdaptiveTtl(settings.cache_ttl_min_ms, settings.cache_ttl_max_ms)
            if settings.cache_ttl_adaptive
            else None,
            started=started,
        )
