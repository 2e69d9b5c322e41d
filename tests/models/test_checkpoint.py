import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from models import checkpoint
from models.calibration import Calibration
from models.checkpoint import CHECKPOINT_DIR, CheckpointError
from models.predictor import Predictor
from models.registry import ARCHITECTURES, build_model
from models.scaling import FEATURE_NAMES, ScalerConfig


def _meta() -> dict:
    return {
        "seq_len": 16,
        "feature_names": list(FEATURE_NAMES),
        "scaler": ScalerConfig().to_dict(),
        "calibration": Calibration().to_dict(),
        "training": {"note": "test"},
    }


def _trained_like(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(kind, horizon=4)
    with torch.no_grad():  # non-zero head, so outputs depend on every weight
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_round_trip_gives_identical_outputs(kind: str, tmp_path: Path) -> None:
    model = _trained_like(kind)
    path = tmp_path / f"{kind}.safetensors"
    meta = checkpoint.save(path, model, _meta())
    loaded = checkpoint.load(path)
    x = torch.randn(4, 16, 9)
    with torch.inference_mode():
        for a, b in zip(model(x), loaded.model(x), strict=True):
            assert torch.equal(a, b)
    assert loaded.meta == meta
    assert meta["kind"] == kind and meta["hparams"]["horizon"] == 4
    assert len(meta["weights_sha256"]) == 64
    assert Predictor.load(path).version == f"{kind}-{meta['weights_sha256'][:12]}"


def test_bytes_round_trip() -> None:
    model = _trained_like("lstm")
    blob = checkpoint.to_bytes(model, _meta())
    assert checkpoint.read_meta(blob)["kind"] == "lstm"
    assert checkpoint.load(blob).meta["weights_sha256"] == checkpoint.read_meta(blob)["weights_sha256"]


def test_a_header_length_that_begins_like_a_pickle_still_loads() -> None:
    # the header length's low byte is the file's first byte; 0x80 is also how a pickle begins
    model = _trained_like("lstm")
    for pad in range(256):
        meta = _meta()
        meta["training"]["note"] = "x" * pad
        blob = checkpoint.to_bytes(model, meta)
        if blob[:1] == b"\x80":
            break
    assert blob[:1] == b"\x80"
    assert checkpoint.load(blob).meta["training"]["note"] == "x" * pad


def test_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="refusing to load a pickle"):
        checkpoint.load(path)


def test_torch_save_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save(_trained_like("lstm").state_dict(), buf)
    with pytest.raises(CheckpointError, match="safetensors only"):
        checkpoint.load(buf.getvalue())


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    blob = bytearray(checkpoint.to_bytes(_trained_like("lstm"), _meta()))
    blob[-3] ^= 0x01  # flip one bit of the last tensor's data
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        checkpoint.load(bytes(blob))


def test_garbage_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="bad header"):
        checkpoint.load(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.load(b"\x01\x02")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        checkpoint.load(tmp_path / "missing.safetensors")


def test_foreign_safetensors_without_metadata_is_refused() -> None:
    from safetensors.torch import save

    with pytest.raises(CheckpointError, match="no CPE metadata"):
        checkpoint.load(save({"w": torch.zeros(2)}))


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_shipped_checkpoints_load_and_are_small(kind: str) -> None:
    path = CHECKPOINT_DIR / f"{kind}.safetensors"
    assert path.stat().st_size < 2 * 1024 * 1024
    predictor = Predictor.load(path)
    assert predictor.kind == kind and predictor.feature_names == list(FEATURE_NAMES)
    ts = [np.arange(40, dtype=np.int64) * 1000]
    feats = [np.tile(np.array([20.0, 1.0, 0.001, 100.0, 0.5, 0.001, 50.0, 10.0]), (40, 1))]
    f = predictor.predict(ts, feats)
    assert f.mean.shape == (1, predictor.horizon, 8)
    assert np.all((f.confidence >= 0) & (f.confidence <= 1))
    assert np.all(f.lower <= f.mean + 1e-9) and np.all(f.mean <= f.upper + 1e-9)
