"""Transformer forecaster: a small encoder over the window with sinusoidal positions.

The last position attends to the whole window (no causal mask is needed: the window is all past), and
its output feeds the Gaussian head. Positions count back from the newest context, so a padded short
window and a full one put the newest context at the same position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.embedding import unit
from models.head import GaussianHead


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) encodings of the distance from the newest step: row length-1 is distance 0."""
    distance = torch.arange(length - 1, -1, -1, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(distance * freq)
    pe[:, 1::2] = torch.cos(distance * freq)
    return pe


@dataclass
class TransformerConfig:
    n_features: int = 8  # D
    n_inputs: int = 9  # F = D + time-delta channel
    horizon: int = 8  # H
    d_model: int = 64
    heads: int = 4  # 4..16
    layers: int = 2
    ff: int = 128  # feed-forward width
    dropout: float = 0.0
    max_len: int = 512  # longest window the positions cover
    skip: str = "mix"  # the head's base forecast (models/head.py); "last" in older checkpoints

    def __post_init__(self) -> None:
        assert 4 <= self.heads <= 16, f"Transformer heads must be 4..16, got {self.heads}"
        assert self.d_model % self.heads == 0, f"d_model {self.d_model} must divide by heads {self.heads}"
        assert self.d_model % 2 == 0, "sinusoidal positions need an even d_model"


class TransformerForecaster(nn.Module):
    kind = "transformer"
    positions: torch.Tensor  # (max_len, width) buffer, see sinusoidal_positions

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.inp = nn.Linear(config.n_inputs, config.d_model)
        self.register_buffer(
            "positions", sinusoidal_positions(config.max_len, config.d_model), persistent=False
        )
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.heads,
            config.ff,
            config.dropout,
            batch_first=True,
            norm_first=True,
        )
        # the nested-tensor fast path only pays off with padding masks, which we never pass
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = GaussianHead(config.d_model, config.n_features, config.horizon, config.skip)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (B, T, F) scaled window, oldest first
        _B, T, F = x.shape
        assert self.config.n_inputs == F, f"expected {self.config.n_inputs} input channels, got {F}"
        assert self.config.max_len >= T, f"window of {T} is longer than max_len {self.config.max_len}"
        h = self.inp(x) + self.positions[-T:]  # (B, T, d_model)
        h = self.encoder(h)  # (B, T, d_model)
        return self.head(self.norm(h[:, -1]), x[..., : self.config.n_features])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) scaled window -> (B, d_model) unit vector of its summary (``models/embedding.py``)."""
        T = x.shape[1]
        h = self.encoder(self.inp(x) + self.positions[-T:])  # (B, T, d_model)
        return unit(self.norm(h[:, -1]))
