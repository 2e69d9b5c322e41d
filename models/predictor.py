"""The serving-side forward: raw windows in, forecasts in raw units with calibrated confidence out.

Used by the service's inference thread and by ``cpe evaluate``, so both see exactly the same numbers.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import checkpoint
from models.calibration import Calibration, band_probability
from models.scaling import Scaler, ScalerConfig

log = logging.getLogger("cpe.models")

CPU_CHUNK = 256  # most windows per forward call on a CPU (scripts/bench_models.py --batch 1024 shows why)


@dataclass
class Forecast:
    """Predictions for a batch of windows, every step up to S, the model's horizon H or fewer."""

    # S: the steps predicted, H (the model's horizon) unless fewer were asked for
    mean: np.ndarray  # (B, S, D) point forecast, raw units (the median of the predictive distribution)
    lower: np.ndarray  # (B, S, D) lower end of the central interval
    upper: np.ndarray  # (B, S, D) upper end
    confidence: np.ndarray  # (B, S) P(actual latency within ±tolerance of the forecast), calibrated
    loc: np.ndarray  # (B, S, D) mean in the transformed (log/identity) space
    std: np.ndarray  # (B, S, D) calibrated deviation in the transformed space
    dt_s: np.ndarray  # (B,) spacing assumed between future steps, seconds


class Predictor:
    """A model version ready to serve: its scaler, its calibration, and its forward pass compiled.

    ``compiled`` (the default): the forward pass runs as a frozen TorchScript trace of ``model`` rather
    than op by op from Python (``compile_forward``). ``model`` stays the eager module, for training and
    inspection.
    """

    def __init__(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        device: str | torch.device = "cpu",
        *,
        compiled: bool = True,
    ) -> None:
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
        example = torch.zeros(2, self.seq_len, self.scaler.n_inputs, device=self.device)
        self._forward = compile_forward(self.model, example) if compiled else self.model

    @classmethod
    def load(
        cls, source: str | Path | bytes, device: str | torch.device = "cpu", *, compiled: bool = True
    ) -> Predictor:
        ckpt = checkpoint.load(source, device=device)
        return cls(ckpt.model, ckpt.meta, device, compiled=compiled)

    @torch.inference_mode()
    def forward_scaled(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T, F) scaled inputs -> scaled mean and deviation (B, H, D) as numpy."""
        inputs = torch.from_numpy(x).to(self.device)
        if self.device.type == "cpu" and len(inputs) > CPU_CHUNK:
            # a pass's intermediates grow with the batch; past a few hundred windows they leave the CPU's
            # caches and every window costs more: big batches run as chunks (a GPU takes them whole)
            outs = [self._forward(part) for part in inputs.split(CPU_CHUNK)]
            mean, log_var = torch.cat([m for m, _ in outs]), torch.cat([v for _, v in outs])
        else:
            mean, log_var = self._forward(inputs)
        var = log_var.float().cpu().numpy()
        return mean.float().cpu().numpy(), np.exp(0.5 * var, out=var)  # numpy: cheaper per call

    def predict(
        self, timestamps: list[np.ndarray], features: list[np.ndarray], steps: int | None = None
    ) -> Forecast:
        """Forecast every window (any lengths >= 1, mixed) ``steps`` ahead (the full horizon H when None).

        The model always predicts all H steps; ``steps`` only spares decoding, the intervals and the
        confidence of the ones nobody asked for: most requests ask for one step of eight.
        """
        x, stats = self.scaler.encode(timestamps, features, self.seq_len)
        mean_s, std_s = self.forward_scaled(x)
        if steps is not None and steps < self.horizon:
            assert steps >= 1, f"steps must be 1..{self.horizon}, got {steps}"
            mean_s, std_s = mean_s[:, :steps], std_s[:, :steps]
        loc, std = self.scaler.decode(mean_s, std_s * self._temperature[: mean_s.shape[1]], stats)
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


def compile_forward(
    model: nn.Module, example: torch.Tensor
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``model``'s forward pass as a frozen TorchScript trace (weights folded in), or ``model`` itself when
    tracing fails.

    Why: eager PyTorch pays Python dispatch on every op, and every op releases and takes back the GIL. At
    small batches that is a large part of the forward pass (the README has the figures), and while the
    event loop is busy, each taking back of the GIL waits for the loop to let go of it. The trace runs all
    ops in C++ under one release. Its outputs are the eager model's at every batch size, to float rounding
    (the architectures have no data-dependent control flow; the sequence length is always the model's
    ``T``, and the batch dimension stays symbolic), which tests/models check. TorchScript is deprecated in
    favour of ``torch.compile``, which needs a C++ tool chain at start-up and compiles for seconds per model
    and batch shape; a trace takes a fraction of that. Should a later torch drop it, the eager model serves,
    as here when tracing fails for any reason.
    """
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # its deprecation notice, and the tracer's on the shape asserts
            traced = torch.jit.trace(model, example, check_trace=False)
            return torch.jit.freeze(traced.eval())  # type: ignore[no-any-return]
    except Exception as exc:  # any failure: serve the eager model, as before
        log.warning("serving %s eagerly: tracing its forward pass failed (%s)", type(model).__name__, exc)
        return model
