"""Checkpoints: safetensors weights with the JSON metadata embedded in the same file's header.

One file (or one bytes blob, for publishing over Redis) holds everything a predictor needs: the
architecture and its hyper-parameters, the feature names, the scaler, the calibration, the sequence
length and horizon, a training summary, the width of the model's window embedding (``embedding_dim``,
``models/embedding.py``) and the sha256 of the weights. Loading never unpickles:
anything that is not a safetensors file is refused, and so is a file whose weights do not match
their recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from models.embedding import check_embedding_dim, embedding_dim
from models.registry import build_model, hyperparameters

FORMAT = "cpe-checkpoint/1"
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or understood."""


@dataclass
class Checkpoint:
    model: nn.Module
    meta: dict[str, Any]


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of names, dtypes, shapes and bytes, independent of the file layout."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def to_bytes(model: nn.Module, meta: dict[str, Any]) -> bytes:
    """Serialize a model and its metadata; adds kind, hparams, format, embedding_dim, weights_sha256."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    full = dict(meta)
    full.update(
        format=FORMAT,
        kind=model.kind,  # type: ignore[attr-defined]
        hparams=hyperparameters(model),
        embedding_dim=embedding_dim(model),
        weights_sha256=weights_sha256(state),
    )
    return st_save(state, metadata={"cpe": json.dumps(full, sort_keys=True)})


def save(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """Write a checkpoint atomically (temp file + rename); returns the full metadata written."""
    path = Path(path)
    blob = to_bytes(model, meta)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)
    return read_meta(blob)


def read_meta(blob: bytes) -> dict[str, Any]:
    """The metadata of a checkpoint blob, without building the model."""
    _refuse_non_safetensors(blob)
    try:
        header_len = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["cpe"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint has no CPE metadata: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"unsupported checkpoint format {meta.get('format')!r}; expected {FORMAT!r}")
    return meta


def load(source: str | Path | bytes, device: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify a checkpoint from a path or a blob; the model comes back in eval mode."""
    blob = source if isinstance(source, bytes) else _read(Path(source))
    meta = read_meta(blob)
    try:
        state = st_load(blob)
    except SafetensorError as exc:
        raise CheckpointError(f"corrupt safetensors data: {exc}") from None
    digest = weights_sha256(state)
    if digest != meta.get("weights_sha256"):
        raise CheckpointError(
            f"weights sha256 mismatch: file has {digest[:16]}…, metadata says "
            f"{str(meta.get('weights_sha256'))[:16]}…; the checkpoint was modified or truncated"
        )
    try:
        # checkpoints from before the head's skip mixture (models/head.py) built on the last value alone
        model = build_model(meta["kind"], **{"skip": "last", **meta["hparams"]})
        model.load_state_dict(state, strict=True)
        # checkpoints written before pattern memory lack the key: derived from the model, as it would be
        meta["embedding_dim"] = check_embedding_dim(meta, model)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint does not match its architecture: {exc}") from None
    return Checkpoint(model=model.to(device).eval(), meta=meta)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None


def _refuse_non_safetensors(blob: bytes) -> None:
    # a safetensors header (8 bytes of length, then JSON) may well begin with the byte 0x80 a pickle
    # begins with: its length's low byte. Only a file without a JSON header is a pickle suspect.
    looks_safetensors = blob[8:9] == b"{"
    if not looks_safetensors and (blob[:2] == b"PK" or blob[:1] == b"\x80"):
        raise CheckpointError(
            "refusing to load a pickle / torch.save file: CPE checkpoints are safetensors only, "
            "since unpickling can run arbitrary code"
        )
    if len(blob) < 10:
        raise CheckpointError(f"checkpoint is truncated ({len(blob)} bytes)")
    header_len = int.from_bytes(blob[:8], "little")
    if header_len <= 0 or 8 + header_len > len(blob) or blob[8:9] != b"{":
        raise CheckpointError("not a safetensors file: bad header")
