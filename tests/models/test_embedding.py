"""Window embeddings: per architecture, what the head reads, as unit vectors; embedding_dim in checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models import checkpoint
from models.calibration import Calibration
from models.checkpoint import CHECKPOINT_DIR, CheckpointError
from models.embedding import embedding_dim
from models.predictor import Predictor
from models.registry import ARCHITECTURES, build_model
from models.scaling import FEATURE_NAMES, ScalerConfig


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(kind, horizon=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_the_embedding_is_the_unit_vector_of_what_the_head_reads(kind: str) -> None:
    model = _model(kind)
    x = torch.randn(5, 12, 9)
    seen: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.inference_mode():
        model(x)
        emb = model.embed(x)
    hook.remove()
    assert emb.shape == (5, embedding_dim(model))
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(emb, seen[0] / seen[0].norm(dim=-1, keepdim=True))


def _meta() -> dict:
    return {
        "seq_len": 16,
        "feature_names": list(FEATURE_NAMES),
        "scaler": ScalerConfig().to_dict(),
        "calibration": Calibration().to_dict(),
    }


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_checkpoints_record_the_embedding_dim(kind: str, tmp_path: Path) -> None:
    model = _model(kind)
    meta = checkpoint.save(tmp_path / "m.safetensors", model, _meta())
    assert (
        meta["embedding_dim"]
        == embedding_dim(model)
        == (model.config.hidden if kind != "transformer" else model.config.d_model)
    )
    assert checkpoint.load(tmp_path / "m.safetensors").meta["embedding_dim"] == meta["embedding_dim"]


def _rewritten(blob: bytes, **changes: object) -> bytes:
    """``blob`` with its metadata changed (a key set to None is removed), the weights as they were."""
    header_len = int.from_bytes(blob[:8], "little")
    meta = json.loads(json.loads(blob[8 : 8 + header_len])["__metadata__"]["cpe"])
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    return st_save(st_load(blob), metadata={"cpe": json.dumps(meta, sort_keys=True)})


def test_a_checkpoint_without_the_key_gets_it_derived_and_a_wrong_one_is_refused() -> None:
    blob = (CHECKPOINT_DIR / "lstm.safetensors").read_bytes()
    legacy = _rewritten(blob, embedding_dim=None)
    assert checkpoint.load(legacy).meta["embedding_dim"] == 32
    with pytest.raises(CheckpointError, match="embedding_dim 64 in the metadata, but the model's is 32"):
        checkpoint.load(_rewritten(blob, embedding_dim=64))


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_the_shipped_models_embed_windows_in_the_same_pass_as_they_forecast(kind: str) -> None:
    predictor = Predictor.load(CHECKPOINT_DIR / f"{kind}.safetensors")
    rng = np.random.default_rng(0)
    ts = [np.arange(n, dtype=np.int64) * 1000 for n in (40, 5)]  # a full window and a padded one
    fs = [np.abs(rng.standard_normal((n, 8))) + 1.0 for n in (40, 5)]
    plain, embedded = predictor.predict(ts, fs), predictor.predict(ts, fs, embed=True)
    np.testing.assert_array_equal(plain.mean, embedded.mean)
    assert plain.embedding is None and embedded.embedding is not None
    assert embedded.embedding.shape == (2, predictor.embedding_dim)
    np.testing.assert_allclose(predictor.embed(ts, fs), embedded.embedding, rtol=1e-5, atol=1e-6)
    # scale-free: the same window at ten times the latency embeds alike (up to the scaler's log floors,
    # which the scale channels carry too)
    tenfold = [f.copy() for f in fs]
    for f in tenfold:
        f[:, 0] *= 10
    np.testing.assert_allclose(predictor.embed(ts, tenfold), embedded.embedding, atol=5e-3)
