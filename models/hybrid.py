"""Hybrid forecaster: an LSTM branch and a Transformer branch, mixed by a learned per-window gate.

The LSTM is good at smooth local dynamics, attention at picking out an earlier step that resembles
now (a burst that already happened once in the window). The gate, computed from both summaries,
decides per window and per hidden unit how much to trust each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.embedding import unit
from models.head import GaussianHead
from models.transformer import encode_newest, sinusoidal_positions


@dataclass
class HybridConfig:
    n_features: int = 8  # D
    n_inputs: int = 9  # F = D + time-delta channel
    horizon: int = 8  # H
    hidden: int = 64  # width of both branches
    lstm_layers: int = 1  # 1..4
    heads: int = 4  # 4..16
    transformer_layers: int = 1
    ff: int = 128
    dropout: float = 0.0
    max_len: int = 512
    skip: str = "mix"  # the head's base forecast (models/head.py); "last" in older checkpoints

    def __post_init__(self) -> None:
        assert 32 <= self.hidden <= 512, f"hidden must be 32..512, got {self.hidden}"
        assert 1 <= self.lstm_layers <= 4, f"lstm_layers must be 1..4, got {self.lstm_layers}"
        assert 4 <= self.heads <= 16, f"heads must be 4..16, got {self.heads}"
        assert self.hidden % self.heads == 0, f"hidden {self.hidden} must divide by heads {self.heads}"


class HybridForecaster(nn.Module):
    kind = "hybrid"
    positions: torch.Tensor  # (max_len, width) buffer, see sinusoidal_positions

    def __init__(self, config: HybridConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.inp = nn.Linear(c.n_inputs, c.hidden)
        self.lstm = nn.LSTM(c.hidden, c.hidden, num_layers=c.lstm_layers, batch_first=True)
        self.register_buffer("positions", sinusoidal_positions(c.max_len, c.hidden), persistent=False)
        layer = nn.TransformerEncoderLayer(
            c.hidden, c.heads, c.ff, c.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, c.transformer_layers, enable_nested_tensor=False)
        self.gate = nn.Linear(2 * c.hidden, c.hidden)
        self.norm = nn.LayerNorm(c.hidden)
        self.head = GaussianHead(c.hidden, c.n_features, c.horizon, c.skip)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (B, T, F) scaled window, oldest first
        _B, T, F = x.shape
        assert self.config.n_inputs == F, f"expected {self.config.n_inputs} input channels, got {F}"
        e = self.inp(x)  # (B, T, hidden)
        h_lstm = self.lstm(torch.relu(e))[0][:, -1]  # (B, hidden)
        h = e + self.positions[-T:]  # (B, T, hidden)
        h_attn = self.encoder(h)[:, -1] if self.training else encode_newest(self.encoder, h)  # (B, hidden)
        g = torch.sigmoid(self.gate(torch.cat([h_lstm, h_attn], dim=-1)))  # (B, hidden), 1 = trust LSTM
        summary = self.norm(g * h_lstm + (1 - g) * h_attn)
        return self.head(summary, x[..., : self.config.n_features])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) scaled window -> (B, hidden) unit vector of its summary (``models/embedding.py``)."""
        T = x.shape[1]
        e = self.inp(x)  # (B, T, hidden)
        h_lstm = self.lstm(torch.relu(e))[0][:, -1]
        h = e + self.positions[-T:]
        h_attn = self.encoder(h)[:, -1] if self.training else encode_newest(self.encoder, h)
        g = torch.sigmoid(self.gate(torch.cat([h_lstm, h_attn], dim=-1)))
        return unit(self.norm(g * h_lstm + (1 - g) * h_attn))
