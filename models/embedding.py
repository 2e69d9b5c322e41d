"""Window embeddings: what each model makes of a window, as a unit vector to compare windows by.

Every architecture ends in a summary vector (the LayerNorm'd state that the Gaussian head reads), so
that summary is what the model knows of the window, on the window's own scale (the inputs are
instance-normalised, ``models/scaling.py``): two windows of the same shape at 10 ms and at 100 ms embed
alike, and what followed one tells about the other in the window's own units. The summary is divided
by its Euclidean norm, so that the squared L2 distance between two embeddings is ``2 - 2 cos`` (0..4) and
a nearest-neighbour index needs no other metric. Its dimension ``E`` is the model's width: ``hidden``
for the LSTM and the Hybrid, ``d_model`` for the Transformer; checkpoints record it as ``embedding_dim``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def unit(summary: torch.Tensor) -> torch.Tensor:
    """(B, E) summaries -> (B, E) unit vectors; an all-zero summary stays zero rather than NaN."""
    return nn.functional.normalize(summary, p=2.0, dim=-1, eps=1e-12)


def embedding_dim(model: nn.Module) -> int:
    """E, the width of ``model.embed``'s vectors: the input width of its Gaussian head."""
    return int(model.head.proj.in_features)  # type: ignore[union-attr, arg-type]


def check_embedding_dim(meta: dict[str, Any], model: nn.Module) -> int:
    """The checkpoint's ``embedding_dim``, derived from the model when the metadata predates it (the
    checkpoints shipped before pattern memory), else checked against it: a ValueError when they differ."""
    derived = embedding_dim(model)
    recorded = meta.get("embedding_dim")
    if recorded is not None and int(recorded) != derived:
        raise ValueError(f"embedding_dim {recorded} in the metadata, but the model's is {derived}")
    return derived
