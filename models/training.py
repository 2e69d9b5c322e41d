"""The training loop, used offline by ``cpe train`` and online by the learner.

Offline: synthetic traces are cut into windows (a time-ordered train / validation split per route),
the model is fitted by Gaussian negative log-likelihood with early stopping on the validation loss,
then the predictive distribution is calibrated on the validation windows (models/calibration.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from models.calibration import Calibration, band_probability, fit_isotonic
from models.registry import build_model
from models.scaling import FEATURE_NAMES, Scaler, ScalerConfig, WindowStats

TARGET_CLIP = 15.0  # standardized targets beyond this (a burst 15 window-deviations out) are clipped
HUBER_BETA = 0.2  # in window deviations: mostly L1, so the mean forecast tracks the median (MAE-optimal)


def default_feature_weights() -> list[float]:
    # latency is the primary feature: confidence and routing are about it
    return [3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


@dataclass
class TrainConfig:
    kind: str = "lstm"
    hparams: dict[str, Any] = field(default_factory=dict)
    seq_len: int = 32  # contexts the model reads
    horizon: int = 8  # future steps it predicts
    seed: int = 0
    n_routes: int = 96  # synthetic routes to train on
    # each route is also seen thinned out (every 2nd, every 4th sample): the same network sampled
    # less often, so windows span 5 s..4 min intervals and plateaus that outlast a short window
    subsample_strides: tuple[int, ...] = (1, 2, 4)
    n_steps: int = 3000  # contexts per route
    # level changes (steps, ramps, failovers; models/traces.py) this many times as often as a deployment
    # sees them: rare as they are, a model that meets too few reverts to the window's mean after one
    level_changes: float = 2.0
    # ramps this many times as often again as the other level changes: the trend through a ramp is what
    # the models learned least from the traces (README, Models)
    ramps: float = 1.0
    # the longest ramp, in sampling intervals (RouteProfile's default: 60); a ramp longer than the window
    # is a trend through all of it
    ramp_max_intervals: float = 60.0
    # fine-tune: start from this checkpoint's weights (same kind and scaler) instead of fresh ones
    init: str | None = None
    scale_channels: bool = True  # the window's deviations as inputs (models/scaling.py)
    val_fraction: float = 0.2  # the last part of every route, in time
    max_windows: int = 120_000  # training windows kept (random subset)
    short_window_fraction: float = 0.1  # windows cut short, so padding is learned
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    max_epochs: int = 12
    patience: int = 3
    max_minutes: float = 60.0  # a safety cap on wall-clock time; epochs and early stopping decide
    feature_weights: list[float] = field(default_factory=default_feature_weights)
    # torch threads while training: one, so that the weights do not depend on the machine's core count
    # (`make train` reproduces the shipped ones anywhere), and because these small models train several
    # times faster on one thread than on two that compete with other work for two cores
    threads: int = 1


@dataclass
class WindowSet:
    """Encoded windows and their targets; ``raw`` keeps what evaluation and calibration need."""

    x: np.ndarray  # (N, T, F) float32, scaled inputs
    y: np.ndarray  # (N, H, D) float32, scaled targets
    stats: WindowStats
    targets: np.ndarray  # (N, H, D) raw future contexts
    error_weight: np.ndarray  # (N, D) float32, see window_error_weights

    def __len__(self) -> int:
        return len(self.x)


def cut_windows(
    timestamps: np.ndarray,
    features: np.ndarray,
    seq_len: int,
    horizon: int,
    ends: np.ndarray,
    lengths: np.ndarray | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Windows ending just before each index in ``ends`` and the ``horizon`` contexts after them."""
    lengths = np.full(len(ends), seq_len) if lengths is None else lengths
    ts = [timestamps[e - n : e] for e, n in zip(ends, lengths, strict=True)]
    fs = [features[e - n : e] for e, n in zip(ends, lengths, strict=True)]
    targets = np.stack([features[e : e + horizon] for e in ends]).astype(np.float64)
    return ts, fs, targets


def make_windows(
    traces: list[Any],
    scaler: Scaler,
    seq_len: int,
    horizon: int,
    part: tuple[float, float],
    rng: np.random.Generator,
    max_windows: int | None = None,
    short_fraction: float = 0.0,
) -> WindowSet:
    """Windows from the ``part`` (start, end fractions, in time) of every trace."""
    all_ts: list[np.ndarray] = []
    all_fs: list[np.ndarray] = []
    all_tg: list[np.ndarray] = []
    for tr in traces:
        n = len(tr.features)
        lo, hi = int(n * part[0]), int(n * part[1])
        ends = np.arange(lo + seq_len, hi - horizon + 1)
        if len(ends) == 0:
            continue
        lengths = np.full(len(ends), seq_len)
        short = rng.random(len(ends)) < short_fraction
        lengths[short] = rng.integers(1, seq_len, short.sum())
        ts, fs, tg = cut_windows(tr.timestamps_ms, tr.features, seq_len, horizon, ends, lengths)
        all_ts += ts
        all_fs += fs
        all_tg.append(tg)
    targets = np.concatenate(all_tg)
    if max_windows is not None and len(targets) > max_windows:
        keep = np.sort(rng.choice(len(targets), max_windows, replace=False))
        all_ts = [all_ts[i] for i in keep]
        all_fs = [all_fs[i] for i in keep]
        targets = targets[keep]
    x, stats = scaler.encode(all_ts, all_fs, seq_len)
    y = np.clip(scaler.encode_targets(targets, stats), -TARGET_CLIP, TARGET_CLIP)
    return WindowSet(x=x, y=y, stats=stats, targets=targets, error_weight=window_error_weights(stats))


def window_error_weights(stats: WindowStats) -> np.ndarray:
    """(N, D) weights that turn errors in window deviations back into errors in log/rate units.

    Standardizing by each window's own deviation makes a calm window's small wobble count as much as
    a bursty window's big miss; what matters (and what the MAE measures) is the error itself. The
    weight is the window's deviation relative to the feature's median one, clipped to 0.2..5.
    """
    ref = np.median(stats.scale, axis=0, keepdims=True)
    return np.clip(stats.scale / ref, 0.2, 5.0).astype(np.float32)


def gaussian_nll(
    mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood (constant dropped), weighted per feature."""
    nll = 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var))  # (B, H, D)
    return (nll * weights).sum(-1).mean() / weights.sum()


def forecast_loss(
    mean: torch.Tensor,
    log_var: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    error_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample training loss (B,): a robust loss for the mean plus the NLL of the variance.

    The traces are heavy-tailed: under a plain Gaussian NLL one burst with a small predicted variance
    produces a huge gradient and training diverges. So the mean is fitted by a Huber loss (close to
    the median, which is what minimizes MAE), and the variance by the Gaussian NLL around the
    detached mean; the calibration step then corrects what the Gaussian shape gets wrong.
    ``weights`` (D,) weigh the features; ``error_weight`` (B, D) the mean's errors per window.
    """
    huber = nn.functional.smooth_l1_loss(mean, target, reduction="none", beta=HUBER_BETA)
    if error_weight is not None:
        huber = huber * error_weight.unsqueeze(1)
    nll = 0.5 * (log_var + (target - mean.detach()) ** 2 * torch.exp(-log_var))
    return ((huber + nll) * weights).sum(-1).mean(-1) / weights.sum()  # (B,)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
    error_weight: torch.Tensor | None = None,
    max_grad_norm: float = 1.0,
) -> float:
    """One optimizer step on a minibatch; returns the loss. Shared by offline and online training.

    ``sample_weights`` are the importance weights of a prioritized replay buffer (None = uniform).
    """
    return step_losses(model, optimizer, x, y, weights, sample_weights, error_weight, max_grad_norm).loss


@dataclass
class StepOutcome:
    """What one optimizer step did: its loss, each sample's loss, and whether the update was applied."""

    loss: float  # the (importance-weighted) minibatch loss; NaN/inf when not applied for that reason
    per_sample: np.ndarray  # (B,) each sample's unweighted loss before the step: its replay priority
    applied: bool  # False: the loss or the gradient was not finite, and the weights were left as they were


def step_losses(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
    error_weight: torch.Tensor | None = None,
    max_grad_norm: float = 1.0,
) -> StepOutcome:
    """``train_step`` with its details: the per-sample losses, and a guard against non-finite updates.

    ``y`` may hold fewer steps than the model's horizon (online feedback carries only the next context):
    the loss is then taken on the first ``y.shape[1]`` steps. A non-finite loss or gradient norm skips
    the optimizer step, so one poisoned minibatch cannot turn the weights into NaN.
    """
    model.train()
    mean, log_var = model(x)
    steps = y.shape[1]
    per_sample = forecast_loss(mean[:, :steps], log_var[:, :steps], y, weights, error_weight)
    loss = per_sample.mean() if sample_weights is None else (per_sample * sample_weights).mean()
    optimizer.zero_grad(set_to_none=True)
    detached = per_sample.detach().numpy()
    if not torch.isfinite(loss):
        return StepOutcome(float(loss.detach()), detached, applied=False)
    loss.backward()
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(float("nan"), detached, applied=False)
    optimizer.step()
    return StepOutcome(float(loss.detach()), detached, applied=True)


@torch.inference_mode()
def predict_scaled(model: nn.Module, x: np.ndarray, batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Scaled mean and deviation (N, H, D) for many windows, in chunks."""
    model.eval()
    means, stds = [], []
    for i in range(0, len(x), batch):
        m, lv = model(torch.from_numpy(x[i : i + batch]))
        means.append(m.numpy())
        stds.append(torch.exp(0.5 * lv).numpy())
    return np.concatenate(means), np.concatenate(stds)


def validation_error(model: nn.Module, data: WindowSet, weights: torch.Tensor) -> float:
    """Early-stopping criterion: the feature-weighted Huber error of the mean forecast.

    Not the NLL: on the rate features (mostly flat, rarely a spike) the NLL rewards ever narrower
    variances and then swings with every rare spike, while calibration fixes the variance scale anyway.
    """
    return mean_error(model, data.x, data.y, weights, data.error_weight)


def mean_error(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    weights: torch.Tensor,
    error_weight: np.ndarray | None = None,
) -> float:
    """``validation_error`` on arrays: x (N, T, F), y (N, S, D) with S <= H steps, error_weight (N, D).

    The online learner compares versions with it (as ``forecast_error`` of one forward pass) on its
    held-back feedback (S = 1, the next context).
    """
    mean, _ = predict_scaled(model, x)
    return forecast_error(mean, y, weights, error_weight)


def forecast_error(
    mean: np.ndarray, y: np.ndarray, weights: torch.Tensor, error_weight: np.ndarray | None = None
) -> float:
    """``mean_error`` of forecasts already made: mean (N, H, D) scaled, y (N, S, D) with S <= H steps."""
    huber = nn.functional.smooth_l1_loss(
        torch.from_numpy(mean[:, : y.shape[1]]), torch.from_numpy(y), reduction="none", beta=HUBER_BETA
    )
    if error_weight is not None:
        huber = huber * torch.from_numpy(error_weight).unsqueeze(1)
    return float((huber * weights).sum(-1).mean() / weights.sum())


def fit(
    model: nn.Module,
    train: WindowSet,
    val: WindowSet,
    cfg: TrainConfig,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Minibatch training with early stopping on the validation loss; restores the best weights."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    weights = torch.tensor(cfg.feature_weights, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    x_all, y_all = torch.from_numpy(train.x), torch.from_numpy(train.y)
    w_all = torch.from_numpy(train.error_weight)
    best, best_state, best_epoch, bad = float("inf"), None, 0, 0
    history: list[dict[str, float]] = []
    start = time.monotonic()
    for epoch in range(1, cfg.max_epochs + 1):
        order = torch.from_numpy(rng.permutation(len(train)))
        losses = []
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            losses.append(
                train_step(model, optimizer, x_all[idx], y_all[idx], weights, error_weight=w_all[idx])
            )
        val_loss = validation_error(model, val, weights)
        scheduler.step(val_loss)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss})
        lr = optimizer.param_groups[0]["lr"]
        log(f"epoch {epoch:3d}  train {np.mean(losses):+.4f}  val {val_loss:+.4f}  lr {lr:.1e}")
        if val_loss < best - 1e-4:
            best, best_epoch, bad = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if bad >= cfg.patience or time.monotonic() - start > cfg.max_minutes * 60:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {
        "epochs": len(history),
        "best_epoch": best_epoch,
        "best_val_error": round(best, 5),
        "train_seconds": round(time.monotonic() - start, 1),
        "history": history,
    }


def calibrate(
    model: nn.Module, scaler: Scaler, val: WindowSet, base: Calibration | None = None
) -> Calibration:
    """Fit the temperatures and the confidence map on held-out windows (see models/calibration.py)."""
    cal = Calibration(**(base.to_dict() if base else {}))
    mean_s, std_s = predict_scaled(model, val.x)
    y_s = scaler.encode_targets(val.targets, val.stats)
    # The deviation scale per (step, feature) that makes the central interval hold its share of the
    # validation errors. Not the NLL-optimal (variance-matching) scale: the errors are heavier-tailed than
    # a Gaussian, so a variance match leaves the 90 % interval covering 0.83-0.85. The confidence does not
    # depend on this choice: the isotonic map below is fitted after it.
    z = np.abs(y_s - mean_s) / std_s
    cal.temperature = (np.quantile(z, cal.interval, axis=0) / cal.z()).round(4).tolist()
    temp = np.asarray(cal.temperature)
    loc, std = scaler.decode(mean_s, std_s * temp, val.stats)
    # the confidence map is fitted on the next step, the one answers, routing and evaluation use: pooled
    # over all H steps, it left the next step's confidence 2-3 points under its hit rate
    p = cal.primary_feature
    pred = scaler.inverse(loc)[:, 0, p]  # (N,)
    actual = val.targets[:, 0, p]
    floor = scaler.floors[p] + 1e-12
    lo, hi = np.log((1 - cal.tolerance) * pred + floor), np.log((1 + cal.tolerance) * pred + floor)
    raw = band_probability(loc[:, 0, p], std[:, 0, p], lo, hi)
    hit = (np.abs(actual - pred) <= cal.tolerance * pred).astype(np.float64)
    cal.confidence_x, cal.confidence_y = fit_isotonic(raw, hit)
    return cal


def train(
    cfg: TrainConfig, traces: list[Any], log: Callable[[str], None] = print
) -> tuple[nn.Module, dict[str, Any]]:
    """Train, calibrate and describe one model; returns it with the checkpoint metadata."""
    traces = subsample(traces, cfg.subsample_strides)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, traces, log)
    finally:
        torch.set_num_threads(threads)


def _train(
    cfg: TrainConfig, traces: list[Any], log: Callable[[str], None]
) -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    scaler = Scaler(ScalerConfig(scale_channels=cfg.scale_channels))
    split = 1.0 - cfg.val_fraction
    train_set = make_windows(
        traces,
        scaler,
        cfg.seq_len,
        cfg.horizon,
        (0.0, split),
        rng,
        cfg.max_windows,
        cfg.short_window_fraction,
    )
    val_set = make_windows(traces, scaler, cfg.seq_len, cfg.horizon, (split, 1.0), rng, cfg.max_windows // 4)
    log(f"{cfg.kind}: {len(train_set)} training windows, {len(val_set)} validation windows")
    if cfg.init is None:
        model = build_model(cfg.kind, horizon=cfg.horizon, **{"n_inputs": scaler.n_inputs, **cfg.hparams})
    else:
        model = _initial_model(cfg, scaler)
    summary = fit(model, train_set, val_set, cfg, log)
    calibration = calibrate(model, scaler, val_set)
    validation = validation_figures(model, scaler, calibration, cfg, traces)
    log(
        f"validation: latency MAE / persistence {validation['ratio']['persistence']:.3f}, "
        f"/ EWMA {validation['ratio']['ewma']:.3f}, coverage {validation['coverage']:.3f}, "
        f"ECE {validation['ece']:.4f}"
    )
    meta = {
        "seq_len": cfg.seq_len,
        "feature_names": list(FEATURE_NAMES),
        "scaler": scaler.config.to_dict(),
        "calibration": calibration.to_dict(),
        "training": {
            **{k: v for k, v in summary.items() if k != "history"},
            "config": asdict(cfg),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_windows": len(train_set),
            "val_windows": len(val_set),
            "validation": validation,
        },
    }
    return model, meta


def _initial_model(cfg: TrainConfig, scaler: Scaler) -> nn.Module:
    """The model of checkpoint ``cfg.init``, to fine-tune; it must read the windows as this run does."""
    from models import checkpoint

    assert cfg.init is not None
    ckpt = checkpoint.load(cfg.init)
    kind, scaler_config = ckpt.meta["kind"], ckpt.meta["scaler"]
    if kind != cfg.kind:
        raise ValueError(f"--init {cfg.init} holds a {kind} model, not a {cfg.kind}")
    if scaler_config != scaler.config.to_dict() or ckpt.meta["seq_len"] != cfg.seq_len:
        raise ValueError(f"--init {cfg.init} reads windows differently (scaler or sequence length)")
    if cfg.hparams:
        raise ValueError("--init takes the checkpoint's hyper-parameters; --hparams cannot change them")
    return ckpt.model.train()


def validation_figures(
    model: nn.Module, scaler: Scaler, calibration: Calibration, cfg: TrainConfig, traces: list[Any]
) -> dict[str, Any]:
    """The evaluation figures on the held-back end of every training trace (shown by GET /v1/models)."""
    from models.evaluation import evaluate
    from models.predictor import Predictor

    meta = {
        "kind": model.kind,  # type: ignore[attr-defined]
        "hparams": asdict(model.config),  # type: ignore[call-overload]
        "seq_len": cfg.seq_len,
        "scaler": scaler.config.to_dict(),
        "calibration": calibration.to_dict(),
        "version": "validation",
    }
    start = 1.0 - cfg.val_fraction
    held_back = [tr.part(slice(int(len(tr) * start), None)) for tr in traces]
    figures = evaluate(Predictor(model, meta), held_back, stride=4)
    return {
        k: figures[k]
        for k in ("windows", "latency_mae", "ratio", "coverage", "ece", "mean_confidence", "hit_rate")
    }


def subsample(traces: list[Any], strides: tuple[int, ...]) -> list[Any]:
    """Route i thinned to every ``strides[i % len(strides)]``-th sample (a time-ordered subsequence)."""
    return [tr.part(slice(None, None, strides[i % len(strides)])) for i, tr in enumerate(traces)]
