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
from app.fanout import RoutingFanout
from app.learning.online import OnlineLearning
from app.routing import FailurePolicy
from app.schemas import Limits
from app.services import Services
from app.settings import Settings
from app.window import Window
from app.wire.decode import predict_windows
from app.wire.msgpack import is_msgpack, msgpack_windows

M = TypeVar("M", bound=BaseModel)


# async, though they never await: FastAPI runs a plain `def` dependency in its thread pool, which would
# cost two thread hand-offs per request. An HTTPConnection, not a Request: WebSocket routes use them too.
async def get_services(conn: HTTPConnection) -> Services:
    return Services.of(conn.app)


async def get_settings(conn: HTTPConnection) -> Settings:
    return Services.of(conn.app).settings


async def get_engine(conn: HTTPConnection) -> Engine:
    return Services.of(conn.app).engine


async def get_limits(conn: HTTPConnection) -> Limits:
    return Services.of(conn.app).limits


async def get_cache(conn: HTTPConnection) -> Cache:
    return Services.of(conn.app).cache


async def get_bus(conn: HTTPConnection) -> Bus:
    return Services.of(conn.app).bus


async def get_fanout(conn: HTTPConnection) -> RoutingFanout:
    return Services.of(conn.app).fanout


async def get_failure_policy(conn: HTTPConnection) -> FailurePolicy:
    return Services.of(conn.app).failure_policy


async def get_learning(conn: HTTPConnection) -> OnlineLearning | None:
    return Services.of(conn.app).learning


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
CacheDep = Annotated[Cache, Depends(get_cache)]
BusDep = Annotated[Bus, Depends(get_bus)]
FanoutDep = Annotated[RoutingFanout, Depends(get_fanout)]
FailurePolicyDep = Annotated[FailurePolicy, Depends(get_failure_policy)]
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
    them, with their arrays built: the handlers' fast path (``app.wire.decode``); a MessagePack body
    (``Content-Type: application/msgpack``) by ``app.wire.msgpack``."""
    body = await request.body()
    try:
        if is_msgpack(request.headers.get("content-type")):
            return msgpack_windows(body, limits, batch=batch)
        return predict_windows(body, limits, batch=batch)
    except ValidationError as exc:
        raise _request_validation_error(exc, body) from None


def _request_validation_error(exc: ValidationError, body: bytes) -> RequestValidationError:
    errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
    return RequestValidationError(errors, body=body)
