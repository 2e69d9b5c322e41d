"""What handlers receive: the parts wired in the lifespan, and request bodies validated against limits."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import HTTPConnection

from app.bus import Bus
from app.cache import Cache
from app.engine import Engine
from app.hub import Hub
from app.learning.online import OnlineLearning
from app.metrics import Metrics
from app.routing import FailurePolicy
from app.schemas import Limits
from app.settings import Settings
from app.window import Window
from app.wire.decode import predict_windows

M = TypeVar("M", bound=BaseModel)


# async, though they never await: FastAPI runs a plain `def` dependency in its thread pool, which would
# cost two thread hand-offs per request. An HTTPConnection, not a Request: WebSocket routes use them too.
async def get_settings(conn: HTTPConnection) -> Settings:
    return conn.app.state.settings  # type: ignore[no-any-return]


async def get_engine(conn: HTTPConnection) -> Engine:
    return conn.app.state.engine  # type: ignore[no-any-return]


async def get_limits(conn: HTTPConnection) -> Limits:
    return conn.app.state.limits  # type: ignore[no-any-return]


async def get_cache(conn: HTTPConnection) -> Cache:
    return conn.app.state.cache  # type: ignore[no-any-return]


async def get_metrics(conn: HTTPConnection) -> Metrics:
    return conn.app.state.metrics  # type: ignore[no-any-return]


async def get_bus(conn: HTTPConnection) -> Bus:
    return conn.app.state.bus  # type: ignore[no-any-return]


async def get_hub(conn: HTTPConnection) -> Hub:
    return conn.app.state.hub  # type: ignore[no-any-return]


async def get_failure_policy(conn: HTTPConnection) -> FailurePolicy:
    return conn.app.state.failure_policy  # type: ignore[no-any-return]


async def get_learning(conn: HTTPConnection) -> OnlineLearning | None:
    return conn.app.state.learning  # type: ignore[no-any-return]


def serving(conn: HTTPConnection) -> tuple[Engine, Limits, Cache]:
    """The parts of the serving path, for the handlers of ``DirectRoute``s (which take no dependencies)."""
    state = conn.app.state
    return state.engine, state.limits, state.cache


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
BusDep = Annotated[Bus, Depends(get_bus)]
HubDep = Annotated[Hub, Depends(get_hub)]
FailurePolicyDep = Annotated[FailurePolicy, Depends(get_failure_policy)]
CacheDep = Annotated[Cache, Depends(get_cache)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
LearningDep = Annotated[OnlineLearning | None, Depends(get_learning)]


async def parse_body(request: Request, model: type[M], limits: Limits) -> M:
    """The request's JSON body as a ``model`` checked against ``limits``; else a 422 naming each bad field.

    Handlers parse their own bodies, instead of declaring them as parameters, because FastAPI cannot
    pass a validation context: this way the deployment's limits are checked in the same single pass
    (bytes -> model, in pydantic-core) and their errors carry the same field paths.
    """
    body = await request.body()
    try:
        return model.model_validate_json(body, context=limits)
    except ValidationError as exc:
        raise _request_validation_error(exc, body) from None


async def parse_windows(request: Request, limits: Limits, *, batch: bool) -> list[Window]:
    """The windows of a PredictRequest body (one) or a BatchPredictRequest body, as ``parse_body`` checks
    them, with their arrays built: the handlers' fast path (``app.wire.decode``)."""
    body = await request.body()
    try:
        return predict_windows(body, limits, batch=batch)
    except ValidationError as exc:
        raise _request_validation_error(exc, body) from None


def _request_validation_error(exc: ValidationError, body: bytes) -> RequestValidationError:
    errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
    return RequestValidationError(errors, body=body)
