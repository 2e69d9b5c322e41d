"""The Gaussian output head that every architecture ends with.

It maps a summary vector to a per-step, per-feature mean and log-variance for ``H`` future steps.
The mean is predicted as a change from the last observed context, so an untrained head starts out as
the persistence forecaster and training only has to learn the departures from it.
"""

from __future__ import annotations

import torch
from torch import nn

LOG_VAR_MIN, LOG_VAR_MAX = -12.0, 8.0  # keeps exp(log_var) finite in float32 and float16


class GaussianHead(nn.Module):
    def __init__(self, hidden: int, n_features: int, horizon: int) -> None:
        super().__init__()
        self.n_features, self.horizon = n_features, horizon
        self.proj = nn.Linear(hidden, 2 * horizon * n_features)
        nn.init.zeros_(self.proj.weight)  # start as persistence with unit variance
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # h: (B, hidden) summary of the window; last: (B, D) last observed context, scaled
        B = h.shape[0]
        out = self.proj(h).view(B, 2, self.horizon, self.n_features)  # (B, 2, H, D)
        mean = last.unsqueeze(1) + out[:, 0]  # (B, H, D)
        log_var = out[:, 1].clamp(LOG_VAR_MIN, LOG_VAR_MAX)  # (B, H, D)
        return mean, log_var
