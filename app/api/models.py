"""GET /v1/models: the models this replica serves, their versions and validation figures."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import EngineDep, SettingsDep
from app.schemas import ModelInfo, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(engine: EngineDep, settings: SettingsDep) -> ModelList:
    """List the loaded models: kind, version, shapes, device, size and training summary."""
    models = [
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
        )
        for kind, predictor in engine.predictors.items()
    ]
    return ModelList(default=settings.model, models=models)
