"""The FastAPI application: ``create_app(settings)``, its middleware and routes, and the lifespan that
runs its parts (``app/services.py``)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from fastapi import Depends, FastAPI

from app.api import (
    asyncapi,
    dashboard,
    docs,
    errors,
    feedback,
    flow_predictions,
    flows,
    groups,
    health,
    model_versions,
    observe,
    openapi,
    otlp,
    patterns,
    predict,
    prometheus,
    recommend,
    stats,
    stream,
)
from app.api.adaptive_limit import AdaptiveLimit, watch_loop_lag
from app.api.admission import Admission, InflightLimit
from app.api.admission_metrics import AdmissionCollector
from app.api.body_limit import BodySizeLimit
from app.api.errors import AUTH_RESPONSES
from app.api.http_metrics import HttpMetrics
from app.api.patterns import PatternSearchRequest
from app.api.request_id import RequestId
from app.auth import ApiKeys, mask_query_keys, require_scope
from app.groups.schemas import GroupRequest
from app.ingest.observations import ObserveRequest
from app.metrics import new_registry
from app.routing_schemas import RouteRequest
from app.schemas import BatchPredictRequest, FeedbackRequest, PredictRequest, RollbackRequest
from app.services import run_services
from app.settings import Settings

log = logging.getLogger("cpe")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for ``settings`` (default: read from the ``CPE_*`` environment)."""
    settings = settings or Settings()
    logging.getLogger("cpe").setLevel(settings.log_level.upper())
    keys = ApiKeys.parse(settings.api_keys.get_secret_value())
    registry = new_registry()
    admission = (
        AdaptiveLimit(
            settings.admission_latency_ms,
            max(settings.max_inflight, settings.min_inflight),
            pool=settings.min_inflight,
        )
        if settings.admission == "adaptive"
        else InflightLimit(settings.max_inflight)
    )
    registry.register(AdmissionCollector(admission))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if keys.open:
            log.warning("CPE_API_KEYS is empty: every endpoint is open to anyone who can reach this port")
        async with run_services(settings, keys, registry, admission) as services:
            app.state.services = services  # what handlers receive (app/api/deps.py)
            # the adaptive limit also follows the loop's lag: the wait of requests it has not read yet
            lag = (
                asyncio.create_task(watch_loop_lag(admission))
                if isinstance(admission, AdaptiveLimit)
                else None
            )
            try:
                with _long_lived_objects_frozen():
                    yield
            finally:
                if lag is not None:
                    lag.cancel()

    app = FastAPI(
        title="Context Prediction Engine",
        version="1.0.0",
        description="Predicts network flow contexts a moment ahead, with calibrated confidence.",
        lifespan=lifespan,
        docs_url=None,  # app/api/docs.py serves the pages, with their assets
        redoc_url=None,
        # no OpenTelemetry here: FastAPI's built-in hooks would look up the providers on every request
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    mask_query_keys()
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HttpMetrics, registry=registry)  # outside the body limit: a 413 is a request too
    app.add_middleware(RequestId)  # every log line of the request carries its id
    # outermost: past the limit, a 503 before the body is read and before any other middleware
    app.add_middleware(Admission, limit=admission, retry_after_s=settings.retry_after_s)
    errors.install(app)
    # Hottest first: routes match in order. The streams check their keys themselves (accept_websocket);
    # the probes and /metrics stay open, for orchestrators and scrapers (SECURITY.md). Without keys the
    # check is left off: FastAPI's solving of even a dependency that returns at once costs every request.
    read, write, admin = (
        {} if keys.open else {"dependencies": [Depends(require_scope(scope))], "responses": AUTH_RESPONSES}
        for scope in ("read", "write", "admin")
    )
    for router, access in (
        (predict.router, read),  # documents the key check there; its own guard runs it (see predict.py)
        (recommend.router, read),
        (stream.router, {}),
        (flow_predictions.router, {}),
        (feedback.router, write),
        (observe.router, write),
        (observe.stream, {}),
        (otlp.router, write),
        (flows.router, read),
        (flows.admin, admin),
        (groups.router, read),
        (groups.writer, write),
        (groups.admin, admin),
        (patterns.router, read),
        (model_versions.router, read),
        (model_versions.admin, admin),
        (stats.router, read),
        (health.router, {}),
        (asyncapi.router, {}),
        (prometheus.router, {}),
    ):
        app.include_router(router, **access)  # type: ignore[arg-type]
    docs.install(app)
    dashboard.install(app)
    openapi.document(
        app,
        [
            PredictRequest,
            BatchPredictRequest,
            RouteRequest,
            FeedbackRequest,
            RollbackRequest,
            ObserveRequest,
            GroupRequest,
            PatternSearchRequest,
        ],
    )
    return app


@contextmanager
def _long_lived_objects_frozen() -> Iterator[None]:
    """Keep the models' and the app's long-lived objects out of the garbage collector while serving.

    They number in the hundreds of thousands, and under load every full collection walked them all and
    paused the event loop; frozen, they are skipped, and young objects are collected less often.
    """
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
