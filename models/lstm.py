"""LSTM forecaster: a stacked LSTM reads the window, its last hidden state feeds the Gaussian head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.embedding import unit
from models.head import GaussianHead


@dataclass
class LSTMConfig:
    n_features: int = 8  # D: context features predicted
    n_inputs: int = 9  # F: D plus the time-delta channel
    horizon: int = 8  # H: future steps predicted at once
    hidden: int = 32  # 32..512; 32 is as accurate as 64 on the evaluation sets, at a third of the cost
    layers: int = 1  # 1..4; one layer keeps a single prediction well under a millisecond on a CPU
    dropout: float = 0.0  # between LSTM layers
    skip: str = "mix"  # the head's base forecast (models/head.py); "last" in older checkpoints

    def __post_init__(self) -> None:
        assert 32 <= self.hidden <= 512, f"LSTM hidden must be 32..512, got {self.hidden}"
        assert 1 <= self.layers <= 4, f"LSTM layers must be 1..4, got {self.layers}"
        assert self.n_inputs >= self.n_features, "inputs must include every predicted feature"


class LSTMForecaster(nn.Module):
    kind = "lstm"

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.inp = nn.Linear(config.n_inputs, config.hidden)
        self.lstm = nn.LSTM(
            config.hidden,
            config.hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.norm = nn.LayerNorm(config.hidden)
        self.head = GaussianHead(config.hidden, config.n_features, config.horizon, config.skip)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (B, T, F) scaled window, oldest first
        assert x.dim() == 3 and x.shape[-1] == self.config.n_inputs, (
            f"expected (B, T, {self.config.n_inputs})"
        )
        h, _ = self.lstm(torch.relu(self.inp(x)))  # (B, T, hidden)
        summary = self.norm(h[:, -1])  # (B, hidden)
        return self.head(summary, x[..., : self.config.n_features])  # (B, H, D) twice

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) scaled window -> (B, hidden) unit vector of its summary (``models/embedding.py``)."""
        h, _ = self.lstm(torch.relu(self.inp(x)))  # (B, T, hidden)
        return unit(self.norm(h[:, -1]))
