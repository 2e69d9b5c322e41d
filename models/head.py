"""The Gaussian output head that every architecture ends with.

It maps a summary vector to a per-step, per-feature mean and log-variance for ``H`` future steps.
The mean is predicted as a change from a base forecast made of the window itself, so an untrained head
starts out close to the persistence forecaster and training only has to learn the departures from it.

The base (``skip``): ``"last"`` is the last observed context. ``"mix"`` is a mixture, weighted per step
and feature by the summary, of simple forecasts of the window's own values: the last value, the mean of
the last 2, 4 and 8, a trend through the last 8 carried on, and the window's mean. Following a new level
(the last values), smoothing noise (their mean), riding a ramp (the trend) and reverting a spike (the
window's mean) are then each one gate away, rather than something the summary must encode exactly.
"""

from __future__ import annotations

import torch
from torch import nn

LOG_VAR_MIN, LOG_VAR_MAX = (
    -7.0,
    7.0,
)  # std 0.03..33 window deviations: a flat window cannot drive the NLL to -inf
SKIPS = ("last", "mix")
N_BASES = 6  # last, mean of the last 2, 4, 8, trend, window mean (see _bases)
MIN_WINDOW = 8  # the trend needs two groups of four; shorter windows are padded


def _bases(window: torch.Tensor, horizon: int) -> torch.Tensor:
    """(B, T, D) scaled window -> (B, H, D, N_BASES) simple forecasts of each future step."""
    if window.shape[1] < MIN_WINDOW:  # pad as the scaler pads short windows: repeat the first context
        pad = window[:, :1].expand(-1, MIN_WINDOW - window.shape[1], -1)
        window = torch.cat([pad, window], dim=1)
    last = window[:, -1]  # (B, D)
    m2, m4, m8 = window[:, -2:].mean(1), window[:, -4:].mean(1), window[:, -8:].mean(1)
    slope = (m4 - window[:, -8:-4].mean(1)) / 4.0  # per step, between the centres of the two groups
    # the mean of the last four sits 1.5 steps behind the last value; step h is h + 1 ahead of it
    ahead = torch.arange(1, horizon + 1, dtype=window.dtype, device=window.device).view(1, horizon, 1)
    trend = m4.unsqueeze(1) + (1.5 + ahead) * slope.unsqueeze(1)  # (B, H, D)
    flat = torch.stack([last, m2, m4, m8, torch.zeros_like(last)], dim=-1)  # (B, D, 5); 0 = window mean
    flat = flat.unsqueeze(1).expand(-1, horizon, -1, -1)  # (B, H, D, 5)
    return torch.cat([flat[..., :4], trend.unsqueeze(-1), flat[..., 4:]], dim=-1)


class GaussianHead(nn.Module):
    def __init__(self, hidden: int, n_features: int, horizon: int, skip: str = "last") -> None:
        super().__init__()
        assert skip in SKIPS, f"skip must be one of {SKIPS}, got {skip!r}"
        self.n_features, self.horizon = n_features, horizon
        self.proj = nn.Linear(hidden, 2 * horizon * n_features)
        nn.init.zeros_(self.proj.weight)  # start as the base forecast with unit variance
        nn.init.zeros_(self.proj.bias)
        self.mix: nn.Linear | None = None
        if skip == "mix":
            self.mix = nn.Linear(hidden, horizon * n_features * N_BASES)
            nn.init.zeros_(self.mix.weight)
            with torch.no_grad():  # lean on the last value at first: persistence is a strong start
                self.mix.bias.view(horizon, n_features, N_BASES).copy_(
                    torch.tensor([2.0, 0.0, 0.0, 0.0, 0.0, 0.0])
                )

    def forward(self, h: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # h: (B, hidden) summary of the window; window: (B, T, D) the scaled observed contexts
        B = h.shape[0]
        out = self.proj(h).view(B, 2, self.horizon, self.n_features)  # (B, 2, H, D)
        if self.mix is None:
            base = window[:, -1].unsqueeze(1)  # (B, 1, D)
        else:
            weights = torch.softmax(self.mix(h).view(B, self.horizon, self.n_features, N_BASES), dim=-1)
            base = (weights * _bases(window, self.horizon)).sum(-1)  # (B, H, D)
        mean = base + out[:, 0]  # (B, H, D)
        # a soft clamp: a hard one has zero gradient, so a variance pinned at the floor by flat windows
        # could never grow back when a burst arrives
        raw = out[:, 1]
        log_var = LOG_VAR_MIN + nn.functional.softplus(raw - LOG_VAR_MIN)
        log_var = LOG_VAR_MAX - nn.functional.softplus(LOG_VAR_MAX - log_var)  # (B, H, D)
        return mean, log_var
