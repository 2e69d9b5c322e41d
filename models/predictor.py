"""The serving-side forward: raw windows in, forecasts in raw units with calibrated confidence out.

Used by the service's inference thread and by ``cpe evaluate``, so both see exactly the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import checkpoint
from models.calibration import Calibration, band_probability
from models.scaling import Scaler, ScalerConfig


@dataclass
class Forecast:
    """Predictions for a batch of windows, every step up to the model's horizon H."""

    mean: np.ndarray  # (B, H, D) point forecast, raw units (the median of the predictive distribution)
    lower: np.ndarray  # (B, H, D) lower end of the central interval
    upper: np.ndarray  # (B, H, D) upper end
    confidence: np.ndarray  # (B, H) P(actual latency within ±tolerance of the forecast), calibrated
    loc: np.ndarray  # (B, H, D) mean in the transformed (log/identity) space
    std: np.ndarray  # (B, H, D) calibrated deviation in the transformed space
    dt_s: np.ndarray  # (B,) spacing assumed between future steps, seconds


class Predictor:
    def __init__(self, model: nn.Module, meta: dict[str, Any], device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.kind: str = meta["kind"]
        self.seq_len: int = int(meta["seq_len"])
        self.horizon: int = int(meta["hparams"]["horizon"])
        self.scaler = Scaler(ScalerConfig.from_dict(meta["scaler"]))
        self.calibration = Calibration.from_dict(meta.get("calibration", {}))
        self.feature_names: list[str] = list(self.scaler.config.feature_names)
        self.version: str = meta.get("version") or f"{self.kind}-{meta['weights_sha256'][:12]}"
        self._temperature = self.calibration.temperatures(self.horizon, self.scaler.n_features)
        self._z = self.calibration.z()
        self._knots = self.calibration.knots()  # the calibration is fixed for the predictor's life

    @classmethod
    def load(cls, source: str | Path | bytes, device: str | torch.device = "cpu") -> Predictor:
        ckpt = checkpoint.load(source, device=device)
        return cls(ckpt.model, ckpt.meta, device)

    @torch.inference_mode()
    def forward_scaled(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T, F) scaled inputs -> scaled mean and deviation (B, H, D) as numpy."""
        mean, log_var = self.model(torch.from_numpy(x).to(self.device))
        log_var = log_var.float().cpu().numpy()
        return mean.float().cpu().numpy(), np.exp(0.5 * log_var, out=log_var)  # numpy: cheaper per call

    def predict(self, timestamps: list[np.ndarray], features: list[np.ndarray]) -> Forecast:
        """Forecast every window (any lengths >= 1, mixed) over the full horizon."""
        x, stats = self.scaler.encode(timestamps, features, self.seq_len)
        mean_s, std_s = self.forward_scaled(x)
        loc, std = self.scaler.decode(mean_s, std_s * self._temperature, stats)
        # point, lower and upper in one pass: the serving path pays per numpy call at small batches
        zs = self._z * std
        point, lower, upper = self.scaler.inverse(np.stack((loc, loc - zs, loc + zs)))
        return Forecast(
            mean=point,
            lower=lower,
            upper=upper,
            confidence=self._confidence(loc, std, point),
            loc=loc,
            std=std,
            dt_s=stats.dt_s,
        )

    def _confidence(self, loc: np.ndarray, std: np.ndarray, point: np.ndarray) -> np.ndarray:
        """(B, H) calibrated P(|actual - forecast| <= tolerance * forecast) of the primary feature."""
        p = self.calibration.primary_feature
        tol = self.calibration.tolerance
        pred = point[..., p]
        # the band is symmetric around the point forecast in raw units: map its ends into log space
        if self.scaler.is_log[p]:
            floor = self.scaler.floors[p] + 1e-12
            lo, hi = np.log((1 - tol) * pred + floor), np.log((1 + tol) * pred + floor)
        else:
            lo, hi = (1 - tol) * pred, (1 + tol) * pred
        raw = band_probability(loc[..., p], std[..., p], lo, hi)
        return np.interp(raw, *self._knots)
