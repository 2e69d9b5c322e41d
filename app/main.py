"""The FastAPI application: ``create_app(settings)`` and the lifespan that wires its parts."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from pydantic import BaseModel

from app.api import (
    errors,
    feedback,
    flow_predictions,
    flows,
    health,
    metrics,
    models,
    observe,
    openapi,
    otlp,
    predict,
    routing,
    stats,
    stream,
)
from app.api.admission import STATE_KEY, Admission, InflightLimit
from app.api.body_limit import BodySizeLimit
from app.api.errors import AUTH_RESPONSES
from app.api.request_id import RequestId
from app.auth import ApiKeys, mask_query_keys, require_scope
from app.bus import Bus
from app.cache import create_cache
from app.engine import Engine, pick_device
from app.forecasts import Forecasts
from app.hub import Hub
from app.ingest.observations import ObserveRequest
from app.ingest.observing import Observing
from app.learning.learner import replica_id
from app.learning.online import OnlineLearning
from app.metrics import Metrics
from app.routing import FailurePolicy
from app.routing_schemas import RouteRequest
from app.schemas import BatchPredictRequest, FeedbackRequest, Limits, PredictRequest, RollbackRequest
from app.settings import Settings
from models.predictor import Predictor

log = logging.getLogger("cpe")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, InflightLimit]]:
    """Load the models, run the engine and the cache while the app serves, stop them cleanly after."""
    settings: Settings = app.state.settings
    if app.state.api_keys.open:
        log.warning("CPE_API_KEYS is empty: every endpoint is open to anyone who can reach this port")
    cache = create_cache(  # first: a bad URL fails before the models load
        settings.cache_url,
        max_entries=settings.cache_max_entries,
        strategy=settings.cache_strategy,
        ttl_ms=settings.cache_ttl_ms,
        timeout_ms=settings.cache_timeout_ms,
        metrics=app.state.metrics,
    )
    bus = Bus(settings.bus_url, metrics=app.state.metrics)
    hub = Hub(bus, settings.bus_channel, queue_size=settings.ws_queue_size, metrics=app.state.metrics)
    device = pick_device(settings.device)
    checkpoints = {kind: settings.checkpoint_dir / f"{kind}.safetensors" for kind in settings.models}
    predictors = {kind: Predictor.load(path, device) for kind, path in checkpoints.items()}
    log.info("loaded %s on %s", ", ".join(p.version for p in predictors.values()), device)
    engine = Engine(
        predictors,
        max_batch=settings.engine_max_batch,
        max_wait_us=settings.engine_max_wait_us,
        queue_size=settings.queue_size,
        retry_after_s=settings.retry_after_s,
        torch_threads=settings.torch_threads,
        latency_budget_ms=settings.engine_latency_budget_ms,
        metrics=app.state.metrics,
    )
    app.state.metrics.watch(engine, device, settings.model)
    learning = (
        OnlineLearning.from_settings(settings, engine, bus, app.state.metrics, checkpoints, device)
        if settings.learning_enabled
        else None
    )
    # observing the network: flow windows and the ingest doors (app/flows, app/ingest)
    observing = Observing(
        settings,
        app.state.metrics.registry,
        on_learning_rate=None if learning is None else learning.learner.hint_learning_rate,
        consumer=replica_id(),
    )
    app.state.flows, app.state.ingest = observing.flows, observing.ingest
    app.state.otlp_metric_table = observing.otlp_metric_table
    # continuous prediction of the observed flows: forecasts, stream, scores, free labels (app/forecasts)
    forecasts = None
    if settings.predict_on_observe:
        feedback = None if learning is None else learning.store
        registry = app.state.metrics.registry
        forecasts = Forecasts.from_settings(
            settings, engine, bus, observing.flows, feedback, registry,
            ttl_ms=settings.flow_ttl_ms, max_flows=settings.max_flows,
        )  # fmt: skip
        observing.ingest.on_applied = forecasts.on_applied
    app.state.forecasts = forecasts
    async with (
        engine,
        cache,
        bus,
        hub,
        learning or contextlib.nullcontext(),
        observing,
        forecasts or contextlib.nullcontext(),
    ):
        app.state.learning = learning
        app.state.recent = None if learning is None else learning.recent
        app.state.engine = engine
        app.state.cache = cache
        app.state.bus, app.state.hub = bus, hub
        app.state.device = device
        app.state.failure_policy = FailurePolicy(
            settings.failure_rate, settings.failure_latency_factor, settings.breaker_threshold
        )
        app.state.limits = Limits(
            max_window=settings.max_window,
            max_batch=settings.max_batch,
            horizons={kind: p.horizon for kind, p in predictors.items()},
            default_model=settings.model,
            max_routes=settings.max_routes,
        )
        # The models and the app leave ~200k long-lived objects behind; under load every full
        # collection walked them all and paused the event loop for 50-120 ms (seen with py-spy
        # under scripts/bench.py). Freeze them out of the collector and collect young objects less often.
        thresholds = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        try:
            yield {STATE_KEY: app.state.admission}  # the lifespan state: where uvicorn's protocol finds it
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for ``settings`` (default: read from the ``CPE_*`` environment)."""
    settings = settings or Settings()
    logging.getLogger("cpe").setLevel(settings.log_level.upper())
    app = FastAPI(
        title="Context Prediction Engine",
        version="1.0.0",
        description="Predicts network flow contexts a moment ahead, with calibrated confidence.",
        lifespan=lifespan,
        # no OpenTelemetry here: FastAPI's built-in hooks would look up the providers on every request
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.api_keys = ApiKeys.parse(settings.api_keys.get_secret_value())
    mask_query_keys()
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.state.admission = InflightLimit(settings.max_inflight, settings.retry_after_s)
    app.state.metrics.watch_admission(app.state.admission)
    app.add_middleware(Admission, limit=app.state.admission)  # before the body is read
    app.state.metrics.instrument(app)  # outside the limits: a 413 or a 503 is a request like any other
    app.add_middleware(RequestId)  # outermost: every log line of the request carries its id
    errors.install(app)
    # hottest first: routes match in order. The streams check their keys themselves (accept_websocket);
    # the probes and /metrics stay open, for orchestrators and scrapers (SECURITY.md). Without
    # keys the check is left off: FastAPI's solving of even a dependency that returns at once costs a
    # request 10-20 µs (scripts/bench_auth.py)
    keys = app.state.api_keys
    read, write, admin = (
        {} if keys.open else {"dependencies": [Depends(require_scope(scope))], "responses": AUTH_RESPONSES}
        for scope in ("read", "write", "admin")
    )
    for router, access in (
        (predict.router, read),
        (routing.router, read),
        (stream.router, {}),
        (flow_predictions.router, {}),
        (feedback.router, write),
        (observe.router, write),
        (observe.stream, {}),
        (otlp.router, write),
        (flows.router, read),
        (flows.admin, admin),
        (models.router, read),
        (models.admin, admin),
        (stats.router, read),
        (health.router, {}),
        (metrics.router, {}),
    ):
        app.include_router(router, **access)  # type: ignore[arg-type]
    bodies: list[type[BaseModel]] = [
        PredictRequest,
        BatchPredictRequest,
        RouteRequest,
        FeedbackRequest,
        RollbackRequest,
        ObserveRequest,
    ]
    openapi.document(app, bodies)
    return app
