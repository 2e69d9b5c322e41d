"""The Gaussian output head that every architecture ends with.

It maps a summary vector to a per-step, per-feature mean and log-variance for ``H`` future steps.
The mean is predicted as a change from the last observed context, so an untrained head starts out as
the persistence forecaster and training only has to learn the departures from it.
"""

from __future__ import annotations

import torch
from torch import nn

LOG_VAR_MIN, LOG_VAR_MAX = (
    -7.0,
    7.0,
)  # std 0.03..33 window deviations: a flat window cannot drive the NLL to -inf


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
        # a soft clamp: a hard one has zero gradient, so a variance pinned at the floor by flat windows
        # could never grow back when a burst arrives
        raw = out[:, 1]
        log_var = LOG_VAR_MIN + nn.functional.softplus(raw - LOG_VAR_MIN)
        log_var = LOG_VAR_MAX - nn.functional.softplus(LOG_VAR_MAX - log_var)  # (B, H, D)
        return mean, log_var
