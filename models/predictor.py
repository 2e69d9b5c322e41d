"""The serving-side forward: raw windows in, forecasts in raw units with calibrated confidence out.

Used by the service's inference thread and by ``cpe evaluate``, so both see exactly the same numbers.
"""

from __future__ import annotations

import functools
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
from models.cuda_graphs import GraphedForward, to_host
from models.embedding import embedding_dim, unit
from models.scaling import Scaler, ScalerConfig, WindowStats

log = logging.getLogger("cpe.models")

_MAX_TRACES = 16  # traced forwards kept for reuse (Predictor._traced): a few versions of three models
_TRACES: dict[tuple[str, bool, str, int, int, str], Callable[[torch.Tensor], Any]] = {}
# Most windows per forward call on a CPU, per architecture (scripts/bench_models.py --batch 1024 shows why):
# a pass's intermediates grow with the batch and past some size leave the CPU's caches, after which every
# window costs more. The attention models' per-layer (B, T, d_model) activations outgrow them first.
CPU_CHUNK: dict[str, int] = {"lstm": 256, "transformer": 128, "hybrid": 128}
CUDA_GRAPH_MAX_BATCH = 1024  # larger batches on a GPU are arithmetic-bound: they run without a graph


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
    embedding: np.ndarray | None = None  # (B, E) float32 unit vectors of the windows, when asked for
    scaled_last: np.ndarray | None = None  # (B, D) float32 each window's last context, scaled, with them
    center: np.ndarray | None = None  # (B, D) the windows' standardisation constants, with them
    scale: np.ndarray | None = None  # (B, D)


class Predictor:
    """A model version ready to serve: its scaler, its calibration, and its forward pass compiled.

    ``compiled`` (the default): the forward pass runs as a frozen TorchScript trace of ``model`` rather
    than op by op from Python (``compile_forward``). ``model`` stays the eager module, for training and
    inspection; its weights are fixed once the predictor is made (train a copy, as the learner does).
    """

    def __init__(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        device: str | torch.device = "cpu",
        *,
        compiled: bool = True,
        cuda_graphs: bool = True,
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
        self._forward = self._traced(self.model, embedded=False) if compiled else self.model
        self._graphed = compiled and cuda_graphs and self.device.type == "cuda"
        self._forward = self._serving(self._forward)
        self.embedding_dim: int = embedding_dim(self.model)
        self._compiled = compiled
        self._forward_embedded: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None

    def _traced(self, module: nn.Module, *, embedded: bool) -> Callable[[torch.Tensor], Any]:
        """The traced forward of these weights: traced once per process for each distinct set of weights.

        A frozen trace holds no state between calls, so every predictor of the same weights can share it:
        a rollback or a hot reload to a version served before, or each app a process starts (the tests),
        skips the tracing. Keyed by the weights' own digest, never by the metadata's claim.
        """
        key = (
            type(self.model).__name__,
            embedded,  # the forward pass alone, or with the window embedding (_ForwardEmbedded)
            self._weights_digest,
            self.seq_len,
            self.scaler.n_inputs,
            str(self.device),
        )
        if (forward := _TRACES.get(key)) is None:
            example = torch.zeros(2, self.seq_len, self.scaler.n_inputs, device=self.device)
            forward = compile_forward(module, example)
            if forward is not module:  # a failed trace is not remembered: the eager model is this one's
                _TRACES[key] = forward
                while len(_TRACES) > _MAX_TRACES:
                    _TRACES.pop(next(iter(_TRACES)))  # the oldest
        return forward

    def _serving(self, forward: Callable[[torch.Tensor], Any]) -> Callable[[torch.Tensor], Any]:
        """``forward`` as the service runs it: on a GPU (compiled, graphs wanted) replayed from CUDA graphs
        captured now, since launches, not arithmetic, bound a small batch's pass there."""
        if not self._graphed:
            return forward
        n_inputs = self.scaler.n_inputs
        graphed = GraphedForward(forward, self.seq_len, n_inputs, self.device, CUDA_GRAPH_MAX_BATCH)
        graphed.warm()
        return graphed

    @functools.cached_property
    def _weights_digest(self) -> str:
        """The digest of the model's weights (fixed once the predictor is made): the forward pass and the
        embedded one are both traced under it, and hashing the weights once serves both."""
        return checkpoint.weights_sha256(self.model.state_dict())

    @classmethod
    def load(
        cls,
        source: str | Path | bytes,
        device: str | torch.device = "cpu",
        *,
        compiled: bool = True,
        cuda_graphs: bool = True,
    ) -> Predictor:
        ckpt = checkpoint.load(source, device=device)
        return cls(ckpt.model, ckpt.meta, device, compiled=compiled, cuda_graphs=cuda_graphs)

    @torch.inference_mode()
    def forward_scaled(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T, F) scaled inputs -> scaled mean and deviation (B, H, D) as numpy."""
        inputs = torch.from_numpy(x).to(self.device)
        chunk = CPU_CHUNK.get(self.kind, 256)
        if self.device.type == "cpu" and len(inputs) > chunk:
            # big batches run as chunks that stay in the CPU's caches (a GPU takes them whole)
            outs = [self._forward(part) for part in inputs.split(chunk)]
            mean, log_var = torch.cat([m for m, _ in outs]), torch.cat([v for _, v in outs])
        else:
            mean, log_var = self._forward(inputs)
        mean_np, var = to_host((mean, log_var))
        return mean_np, np.exp(0.5 * var, out=var)  # numpy: cheaper per call

    @torch.inference_mode()
    def forward_embedded(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``forward_scaled`` and the windows' embeddings (B, E) float32 (``model.embed``), in one call."""
        if self._forward_embedded is None:  # traced on first use: most replicas never embed
            module = _ForwardEmbedded(self.model)
            traced = self._traced(module, embedded=True) if self._compiled else module
            self._forward_embedded = self._serving(traced)
        assert self._forward_embedded is not None
        mean, log_var, emb = self._forward_embedded(torch.from_numpy(x).to(self.device))
        mean_np, log_var_np, emb_np = to_host((mean, log_var, emb))
        return mean_np, np.exp(0.5 * log_var_np), emb_np

    def embed(self, timestamps: list[np.ndarray], features: list[np.ndarray]) -> np.ndarray:
        """(B, E) float32 embeddings of raw windows (any lengths >= 1), as ``predict(embed=True)`` makes."""
        x, _ = self.scaler.encode(timestamps, features, self.seq_len)
        return self.forward_embedded(x)[2]

    def predict(
        self,
        timestamps: list[np.ndarray],
        features: list[np.ndarray],
        steps: int | None = None,
        *,
        embed: bool = False,
    ) -> Forecast:
        """Forecast every window (any lengths >= 1, mixed) ``steps`` ahead (the full horizon H when None).

        The model always predicts all H steps; ``steps`` only spares decoding, the intervals and the
        confidence of the ones nobody asked for: most requests ask for one step of eight. ``embed``: the
        forecast carries the windows' embeddings and scaling too (pattern memory, ``app/patterns``).
        """
        x, stats = self.scaler.encode(timestamps, features, self.seq_len)
        return self._forecast(x, stats, steps, embed)

    def predict_block(
        self,
        timestamps: np.ndarray,
        features: np.ndarray,
        lengths: np.ndarray,
        steps: int | None = None,
        *,
        embed: bool = False,
    ) -> Forecast:
        """``predict`` of windows given as one right-aligned block (``Scaler.encode_block``): timestamps
        (B, L), features (B, L, D), window i in its last ``lengths[i]`` columns."""
        x, stats = self.scaler.encode_block(timestamps, features, lengths, self.seq_len)
        return self._forecast(x, stats, steps, embed)

    def _forecast(
        self, x: np.ndarray, stats: WindowStats, steps: int | None, embed: bool = False
    ) -> Forecast:
        """The forward pass on encoded windows, decoded into a Forecast ``steps`` ahead."""
        embedding = None
        if embed:
            mean_s, std_s, embedding = self.forward_embedded(x)
        else:
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
            embedding=embedding,
            scaled_last=None if embedding is None else x[:, -1, : self.scaler.n_features].copy(),
            center=None if embedding is None else stats.center,
            scale=None if embedding is None else stats.scale,
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


class _ForwardEmbedded(nn.Module):
    """A model's forward pass that also returns its window embedding, as one module to trace.

    The embedding is what ``model.embed`` answers, the unit vector of the summary that the Gaussian head
    reads (``models/embedding.py``); taken here from the head's input as the forward pass runs, so the
    trunk runs once, and each architecture's ``forward`` stays as its trainers wrote it. tests/models check
    that both give the same vectors.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        head: nn.Module = self.model.head  # type: ignore[assignment]
        hook = head.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
        try:
            mean, log_var = self.model(x)
        finally:
            hook.remove()
        return mean, log_var, unit(seen[0])


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
