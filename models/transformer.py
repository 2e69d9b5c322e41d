"""Transformer forecaster: a small encoder over the window with sinusoidal positions.

The last position attends to the whole window (no causal mask is needed: the window is all past), and
its output feeds the Gaussian head. Positions count back from the newest context, so a padded short
window and a full one put the newest context at the same position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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


def encode_newest(encoder: nn.TransformerEncoder, h: torch.Tensor) -> torch.Tensor:
    """(B, T, d) -> (B, d): ``encoder``'s output at the newest position, all that the forecasters read.

    Same numbers as ``encoder(h)[:, -1]`` (within float rounding), for less work: the last layer computes
    keys and values at every position but the query, the attention and the feed-forward block for the
    newest one alone (its other outputs would be thrown away), and attention runs as
    ``scaled_dot_product_attention`` (a fused kernel: no (B, heads, T, T) score tensor through memory)
    rather than the module's own path. The layers are read as they are (pre-norm, ReLU, built by the
    forecasters below), so the state_dict and the checkpoints are unchanged. Training goes through the
    module itself (dropout, autograd as before).
    """
    layers = list(encoder.layers)
    for i, layer in enumerate(layers):
        assert isinstance(layer, nn.TransformerEncoderLayer) and layer.norm_first, "pre-norm layers only"
        # (B, T, d), or (B, 1, d) after the last layer
        h = _pre_norm_layer(layer, h, newest_only=i == len(layers) - 1)
    return h[:, -1]


def _pre_norm_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor, *, newest_only: bool) -> torch.Tensor:
    """One pre-norm encoder layer (norm_first, ReLU, no dropout); with ``newest_only`` its output at the
    newest position alone, (B, 1, d)."""
    B, T, d = x.shape
    attn = layer.self_attn
    heads: int = attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias  # (3d, d), (3d,): query, key, value stacked
    assert w is not None and b is not None, "one stacked in-projection, with bias"
    y = layer.norm1(x)
    if newest_only:
        q = F.linear(y[:, -1:], w[:d], b[:d]).view(B, 1, heads, d // heads).transpose(1, 2)  # (B, h, 1, dh)
        k, v = F.linear(y, w[d:], b[d:]).view(B, T, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
        x = x[:, -1:]  # (B, 1, d)
    else:
        q, k, v = F.linear(y, w, b).view(B, T, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # (B, h, T, dh)
    o = F.scaled_dot_product_attention(q, k, v)  # (B, h, Tq, dh)
    x = x + attn.out_proj(o.transpose(1, 2).reshape(B, x.shape[1], d))
    return x + layer.linear2(torch.relu(layer.linear1(layer.norm2(x))))


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
        newest = self.encoder(h)[:, -1] if self.training else encode_newest(self.encoder, h)  # (B, d_model)
        return self.head(self.norm(newest), x[..., : self.config.n_features])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) scaled window -> (B, d_model) unit vector of its summary (``models/embedding.py``)."""
        T = x.shape[1]
        h = self.inp(x) + self.positions[-T:]  # (B, T, d_model)
        newest = self.encoder(h)[:, -1] if self.training else encode_newest(self.encoder, h)
        return unit(self.norm(newest))
