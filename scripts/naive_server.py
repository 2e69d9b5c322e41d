"""The naive reference that `cpe bench` compares CPE against: one model call per request, nothing else.

What a reasonable engineer writes first: a FastAPI app with a pydantic body, a plain ``def`` endpoint
(FastAPI runs it in its thread pool) that calls ``Predictor.predict`` on a batch of one, and a dict
answer. Same JSON body as ``POST /v1/predict``, same checkpoint, same preprocessing and calibration
(``Predictor.predict``), default torch threads. No micro-batching, no engine, no cache, no orjson.

    python -m scripts.naive_server --port 8001 [--model lstm] [--mode def|async] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field

from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor


class ContextVector(BaseModel):
    timestamp: int
    features: list[float] = Field(min_length=8, max_length=8)
    metadata: dict[str, float] = Field(default_factory=dict)
    pattern_id: str | None = None


class PredictRequest(BaseModel):
    flow_key: str
    contexts: list[ContextVector] = Field(min_length=1, max_length=256)
    horizon: int = Field(default=1, ge=1)
    model: str | None = None


def create_app(predictor: Predictor, mode: str = "def") -> FastAPI:
    app = FastAPI(title="naive reference")

    def run(req: PredictRequest) -> dict:
        start = time.perf_counter()
        h = min(req.horizon, predictor.horizon)
        timestamps = np.array([c.timestamp for c in req.contexts], dtype=np.int64)
        features = np.array([c.features for c in req.contexts], dtype=np.float64)
        forecast = predictor.predict([timestamps], [features])
        return {
            "flow_key": req.flow_key,
            "predicted_context": forecast.mean[0, h - 1].tolist(),
            "horizon": h,
            "steps": forecast.mean[0, :h].tolist(),
            "confidence": float(forecast.confidence[0, h - 1]),
            "lower": forecast.lower[0, h - 1].tolist(),
            "upper": forecast.upper[0, h - 1].tolist(),
            "model_used": predictor.kind,
            "model_version": predictor.version,
            "cached": False,
            "processing_time_ms": (time.perf_counter() - start) * 1000.0,
            "similar_patterns": [],
            "metadata": {},
        }

    # `def` runs in FastAPI's thread pool, the documented way to call blocking code; `async` runs the
    # model on the event loop itself, one request at a time.
    if mode == "async":

        @app.post("/v1/predict")
        async def predict_async(req: PredictRequest) -> dict:
            return run(req)

    else:

        @app.post("/v1/predict")
        def predict(req: PredictRequest) -> dict:
            return run(req)

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--model", default="lstm", help="checkpoint kind: lstm, transformer or hybrid")
    parser.add_argument("--checkpoint", help="checkpoint file (default: the shipped one for --model)")
    parser.add_argument("--mode", choices=("def", "async"), default="def")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    path = Path(args.checkpoint) if args.checkpoint else CHECKPOINT_DIR / f"{args.model}.safetensors"
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    predictor = Predictor.load(path, "cpu" if device == "auto" else device)
    uvicorn.run(create_app(predictor, args.mode), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
