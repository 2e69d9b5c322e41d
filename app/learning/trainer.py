"""Minibatch training steps on a copy of the serving model, in the learner's thread (never the event loop,
never the engine's inference thread).

The copy is a deep copy of the serving version's module: the engine keeps serving its own, untouched,
until a better copy is rolled out as a new version (``rollout.py``). The step itself is the offline
training's (``models.training.step_losses``: the same robust loss, gradient clipping, and a skip when the
loss or gradient is not finite), with the replay buffer's importance weights.

By default (``layers="head"``) only the last layers learn: the final norm and the Gaussian head, which
every architecture ends with. The encoder (LSTM, attention) then runs forward only, without a graph, and
the backward pass is two small layers: a step is much cheaper than a full one (figures: ``python -m
scripts.bench_learning``, in the README), and what the offline training learned about reading windows
is not worn away by a few thousand samples of one deployment. ``layers="all"`` trains every weight.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from app.learning.feedback import Feedback
from app.learning.replay import ReplayBuffer
from models.predictor import Predictor
from models.training import TARGET_CLIP, default_feature_weights, forecast_error, predict_scaled, step_losses

WEIGHT_DECAY = 1e-5  # the offline training's
HEAD_LAYERS = ("norm.", "head.")  # the parameters that learn online with layers="head"


@dataclass
class Step:
    """What one training step did."""

    loss: float
    seconds: float
    applied: bool  # False: skipped, its loss or gradient was not finite


@dataclass(frozen=True)
class Validation:
    """A model's figures on the held-back samples, in the scaled space it predicts in."""

    loss: float  # the offline early-stopping criterion (feature-weighted Huber), on the next step
    latency_mae: float  # the next step's mean absolute error on the primary feature (latency)


def encode(predictor: Predictor, samples: list[Feedback]) -> tuple[np.ndarray, np.ndarray]:
    """Feedback samples as the model reads them: x (N, T, F) scaled windows, y (N, 1, D) scaled targets."""
    x, stats = predictor.scaler.encode(
        [s.timestamps for s in samples], [s.features for s in samples], predictor.seq_len
    )
    actual = np.stack([s.actual for s in samples])[:, None, :]  # (N, 1, D)
    y = np.clip(predictor.scaler.encode_targets(actual, stats), -TARGET_CLIP, TARGET_CLIP)
    return x, y


def weights_finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer of ``model`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


class Trainer:
    """A trainable copy of a serving predictor's model, and the optimizer that moves it."""

    def __init__(
        self, predictor: Predictor, lr: float, max_grad_norm: float = 1.0, layers: str = "head"
    ) -> None:
        assert layers in ("head", "all"), f"layers must be 'head' or 'all', got {layers!r}"
        self.lr = lr
        self.max_grad_norm = max_grad_norm
        self.layers = layers
        self.feature_weights = torch.tensor(default_feature_weights(), dtype=torch.float32)
        self.reset(predictor)

    def reset(self, predictor: Predictor) -> None:
        """Start again from ``predictor``'s weights, with a fresh optimizer state."""
        self.base = predictor
        self.model: nn.Module = copy.deepcopy(predictor.model).cpu()
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(self.layers == "all" or name.startswith(HEAD_LAYERS))
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        assert trainable, f"{predictor.kind} has no parameter named {HEAD_LAYERS}"
        self.optimizer = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=WEIGHT_DECAY)
        self.steps = 0  # steps applied since the reset

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, replay: ReplayBuffer, batch: int) -> Step:
        """One minibatch step drawn from ``replay``; updates the drawn samples' priorities."""
        start = time.perf_counter()
        mb = replay.sample(batch)
        outcome = step_losses(
            self.model,
            self.optimizer,
            torch.from_numpy(mb.x),
            torch.from_numpy(mb.y),
            self.feature_weights,
            sample_weights=torch.from_numpy(mb.weights),
            max_grad_norm=self.max_grad_norm,
        )
        replay.update_priorities(mb.index, outcome.per_sample)
        if outcome.applied:
            self.steps += 1
        return Step(outcome.loss, time.perf_counter() - start, outcome.applied)

    def validation(self, model: nn.Module, x: np.ndarray, y: np.ndarray) -> Validation:
        """``model``'s figures on held-back samples x (N, T, F), y (N, 1, D), from one forward pass."""
        mean, _ = predict_scaled(model, x)  # (N, H, D)
        p = self.base.calibration.primary_feature
        return Validation(
            loss=forecast_error(mean, y, self.feature_weights),
            latency_mae=float(np.abs(mean[:, 0, p] - y[:, 0, p]).mean()),
        )
