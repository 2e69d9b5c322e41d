"""GET /v1/models: the models this replica serves, their versions and validation figures; POST
/v1/models/rollback: an earlier version back in service on every replica."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError

from app.api.deps import EngineDep, LearningDep, LimitsDep, SettingsDep, parse_body
from app.api.errors import ERROR_RESPONSES
from app.api.openapi import json_body
from app.learning.rollout import UnknownVersion
from app.schemas import Message, ModelInfo, ModelList, RollbackRequest, RollbackResult, VersionInfo

router = APIRouter(prefix="/v1/models", tags=["models"])
admin = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(engine: EngineDep, settings: SettingsDep, learning: LearningDep) -> ModelList:
    """List the loaded models: kind, version, shapes, device, size, training summary and version history."""
    models = []
    for kind, predictor in engine.predictors.items():
        history = [] if learning is None else await learning.rollout.history(kind)
        models.append(
            ModelInfo(
                kind=kind,
                version=predictor.version,
                default=kind == settings.model,
                seq_len=predictor.seq_len,
                horizon=predictor.horizon,
                feature_names=predictor.feature_names,
                device=str(predictor.device),
                parameters=sum(p.numel() for p in predictor.model.parameters()),
                training=predictor.meta.get("training", {}),
                hparams=predictor.meta.get("hparams", {}),
                history=[VersionInfo.model_validate(record, from_attributes=True) for record in history],
            )
        )
    return ModelList(default=settings.model, models=models, learning=learning is not None)


@admin.post(
    "/rollback",
    response_model=RollbackResult,
    responses={**ERROR_RESPONSES, 404: {"model": Message, "description": "This service does not learn."}},
    openapi_extra=json_body(RollbackRequest),
)
async def rollback(request: Request, limits: LimitsDep, learning: LearningDep) -> RollbackResult:
    """Serve an earlier version of a model again, on every replica (admin)."""
    if learning is None:
        raise HTTPException(404, "this service does not learn online: it has no other version")
    body = await parse_body(request, RollbackRequest, limits)
    kind = body.model or limits.default_model
    if kind not in limits.horizons:
        served = ", ".join(limits.horizons)
        raise _invalid("model", kind, f"unknown model {kind!r}; this service serves {served}")
    try:
        previous, version = await learning.rollout.rollback(kind, body.version)
    except UnknownVersion as exc:
        raise _invalid("version", body.version, str(exc)) from None
    except (RedisError, OSError) as exc:
        raise HTTPException(503, f"the version store is unreachable: {exc}") from None
    return RollbackResult(model=kind, version=version, previous=previous)


def _invalid(field: str, value: object, msg: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", field), "msg": msg, "input": value}]
    )
