"""Feature scaling: raw context windows <-> the scale-free tensors the models read and write.

A deployment meets latencies from 1 ms to 500 ms and sampling intervals from 1 s to 5 min that the
training never saw, so the scaling removes both scales before the model sees anything:

1. Each feature is put on a scale where changes are comparable: a log for the positive, heavy-tailed
   ones (latency, jitter, throughput, connections, queue depth; a floor keeps zeros finite), the
   identity for rates that live in 0..1 (loss, utilization, error rate).
2. Each window is standardized by its own mean and standard deviation per feature (instance
   normalization), with a per-feature floor on the deviation so a flat window does not blow up.
   Multiplying every latency by 10 then changes nothing the model sees.
3. One extra channel carries the time deltas as log(dt / median dt of the window): irregular spacing
   is visible, the absolute sampling interval is not.
4. With ``scale_channels``, D more channels carry each feature's window deviation, log(scale / its
   floor), the same at every step. Standardizing hides how much a window varies, and that is what
   tells a level shift or a ramp (latency x2: a deviation of 0.35 in log units) from the wander of a
   calm route (a few per cent). It is still scale-free: a deviation of log latency is a ratio.

The model predicts the next contexts in the same standardized space; ``decode`` takes them back.
Everything the scaler needs is in ``ScalerConfig``, stored in every checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FEATURE_NAMES: tuple[str, ...] = (
    "latency_ms",
    "jitter_ms",
    "loss_rate",
    "throughput_mbps",
    "utilization",
    "error_rate",
    "connections",
    "queue_depth",
)
D = len(FEATURE_NAMES)
TIME_CHANNELS = 1  # log(dt / median dt)
DT_CLIP = 3.0  # |log dt ratio| beyond this (a 20x gap) carries no more information
INPUT_CLIP = 10.0  # a spike 10 window-deviations out is already unmistakable; more only saturates


@dataclass
class ScalerConfig:
    """How each feature is transformed; stored in the checkpoint next to the weights."""

    feature_names: list[str] = field(default_factory=lambda: list(FEATURE_NAMES))
    # 1 = log(x + floor), 0 = identity (rates in 0..1)
    log_features: list[int] = field(default_factory=lambda: [1, 1, 0, 1, 0, 0, 1, 1])
    floors: list[float] = field(default_factory=lambda: [0.01, 0.01, 0.0, 0.01, 0.0, 0.0, 1.0, 1.0])
    # smallest per-window deviation in transformed units: 2 % for logs, half a point for rates
    min_scale: list[float] = field(
        default_factory=lambda: [0.02, 0.02, 0.005, 0.02, 0.005, 0.005, 0.02, 0.02]
    )
    scale_channels: bool = False  # see the module's docstring, 4.; False in older checkpoints

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScalerConfig:
        return cls(**d)


@dataclass
class WindowStats:
    """Per-window standardization constants, needed to decode that window's prediction."""

    center: np.ndarray  # (B, D) mean of the transformed window
    scale: np.ndarray  # (B, D) its deviation, floored
    last: np.ndarray  # (B, D) last raw context
    dt_s: np.ndarray  # (B,) median spacing in seconds: the spacing assumed for future steps


class Scaler:
    def __init__(self, config: ScalerConfig | None = None) -> None:
        self.config = config or ScalerConfig()
        c = self.config
        assert len(c.log_features) == len(c.floors) == len(c.min_scale) == len(c.feature_names), (
            "scaler lists must all have one entry per feature"
        )
        self.is_log = np.asarray(c.log_features, dtype=bool)
        self.floors = np.asarray(c.floors, dtype=np.float64)
        self._log_offset = self.floors + 1e-12
        self.min_scale = np.asarray(c.min_scale, dtype=np.float64)
        self.n_features = len(c.feature_names)
        self.n_inputs = self.n_features + TIME_CHANNELS + (self.n_features if c.scale_channels else 0)

    # -- per-value transforms -------------------------------------------------------------
    def transform(self, x: np.ndarray) -> np.ndarray:
        """Raw features (..., D) -> transformed (..., D)."""
        return self._transform(np.asarray(x, dtype=np.float64))

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return np.where(self.is_log, np.log(np.maximum(x, 0.0) + self._log_offset), x)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Transformed (..., D) -> raw (..., D), clipped to each feature's domain."""
        raw = np.where(self.is_log, np.exp(np.minimum(y, 50.0)) - self.floors, y)
        raw = np.maximum(raw, 0.0)
        return np.where(self.is_log, raw, np.minimum(raw, 1.0))

    # -- windows --------------------------------------------------------------------------
    def encode(
        self, timestamps: list[np.ndarray], features: list[np.ndarray], seq_len: int
    ) -> tuple[np.ndarray, WindowStats]:
        """Windows of any length 1.. -> x (B, seq_len, F) float32 and the stats to decode with.

        Each window's last ``seq_len`` contexts are used; shorter windows are left-padded by
        repeating their first context with a zero time delta. Vectorized over the batch: the
        serving path calls this for every micro-batch.
        """
        if all(len(f) >= seq_len for f in features):
            x, stats = self._encode_full(timestamps, features, seq_len)
        else:
            x, stats = self._encode_padded(timestamps, features, seq_len)
        return self._with_scale_channels(x, stats)

    def _with_scale_channels(self, x: np.ndarray, stats: WindowStats) -> tuple[np.ndarray, WindowStats]:
        """Fills the scale channels of encoded windows (with ``scale_channels``; see the module's 4.)."""
        if self.config.scale_channels:
            first = self.n_features + TIME_CHANNELS
            x[..., first:] = np.log(stats.scale / self.min_scale)[:, None, :]  # (B, 1, D) over every step
        return x, stats

    def _encode_padded(
        self, timestamps: list[np.ndarray], features: list[np.ndarray], T: int
    ) -> tuple[np.ndarray, WindowStats]:
        """``encode`` for any mix of lengths: pads, and masks the padding out of every statistic."""
        B, D = len(features), self.n_features
        raw = np.empty((B, T, D), dtype=np.float64)
        ts = np.empty((B, T), dtype=np.int64)
        valid = np.ones((B, T), dtype=bool)
        for i, (t_i, f_i) in enumerate(zip(timestamps, features, strict=True)):
            f_i, t_i = f_i[-T:], t_i[-T:]
            n = len(f_i)
            assert n >= 1 and f_i.shape[1] == D, f"window {i}: expected (n>=1, {D}), got {f_i.shape}"
            pad = T - n
            raw[i, pad:], ts[i, pad:] = f_i, t_i
            if pad:
                raw[i, :pad], ts[i, :pad], valid[i, :pad] = f_i[0], t_i[0], False
        return self._encode_masked(raw, ts, valid)

    def encode_block(
        self, timestamps: np.ndarray, features: np.ndarray, lengths: np.ndarray, seq_len: int
    ) -> tuple[np.ndarray, WindowStats]:
        """``encode`` of windows given as one right-aligned block: timestamps (B, L), features (B, L, D),
        window i in its last ``lengths[i]`` columns (1..L). The same numbers as ``encode`` of the windows
        one by one, with no Python step per window: the path of continuous prediction's bulk rounds."""
        B, L = timestamps.shape
        T = seq_len
        assert features.shape[:2] == (B, L) and features.shape[2] == self.n_features, (
            f"expected features (B={B}, L={L}, {self.n_features}), got {features.shape}"
        )
        n = np.minimum(np.asarray(lengths, dtype=np.int64), T)
        assert B == 0 or n.min() >= 1, "every window holds at least one context"
        if L >= T:
            ts, raw = timestamps[:, L - T :], features[:, L - T :]
        else:  # a block narrower than the model's T: widened on the left (all of it padding)
            ts = np.concatenate((np.zeros((B, T - L), dtype=timestamps.dtype), timestamps), axis=1)
            raw = np.concatenate((np.zeros((B, T - L, features.shape[2]), features.dtype), features), axis=1)
        if B and n.min() == T:
            return self._with_scale_channels(*self._encode_stacked(raw.astype(np.float64), ts))
        pad = T - n  # (B,) columns of padding before each window
        valid = np.arange(T) >= pad[:, None]  # (B, T)
        rows = np.arange(B)
        # padding repeats the window's first context, as ``encode`` pads
        raw = np.where(valid[..., None], raw, raw[rows, pad][:, None]).astype(np.float64)
        ts = np.where(valid, ts, ts[rows, pad][:, None])
        return self._with_scale_channels(*self._encode_masked(raw, ts, valid))

    def _encode_masked(
        self, raw: np.ndarray, ts: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, WindowStats]:
        """Padded windows raw (B, T, D) float64, ts (B, T), ``valid`` (B, T) -> x and stats: the padding
        is masked out of every statistic."""
        B, T, D = raw.shape
        n = valid.sum(axis=1, keepdims=True)  # (B, 1)
        y = self.transform(raw)  # (B, T, D); padded rows repeat the first row
        w = valid[..., None]
        center = (y * w).sum(axis=1) / n  # (B, D)
        var = (((y - center[:, None]) ** 2) * w).sum(axis=1) / n
        scale = np.maximum(np.sqrt(var), self.min_scale)
        dts = np.diff(ts, axis=1).astype(np.float64) / 1000.0  # (B, T-1) seconds; 0 across padding
        pair = valid[:, 1:] & valid[:, :-1]  # both ends real: the step into the first context is not
        dts_valid = np.where(pair, dts, np.nan)
        # median of the valid deltas per row: NaNs sort last, so index by each row's count
        n_dt = n[:, 0] - 1
        dt_med = np.zeros(B)
        if T > 1:
            srt = np.sort(dts_valid, axis=1)
            lo = np.take_along_axis(srt, np.maximum((n_dt - 1) // 2, 0)[:, None], axis=1)[:, 0]
            hi = np.take_along_axis(srt, np.maximum(n_dt // 2, 0)[:, None], axis=1)[:, 0]
            dt_med = np.where(n_dt > 0, (lo + hi) / 2, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.log(np.maximum(dts, 1e-3) / dt_med[:, None])
        rel = np.where(pair & (dt_med[:, None] > 0), np.clip(rel, -DT_CLIP, DT_CLIP), 0.0)
        x = np.empty((B, T, self.n_inputs), dtype=np.float32)
        x[..., :D] = np.clip((y - center[:, None]) / scale[:, None], -INPUT_CLIP, INPUT_CLIP)
        x[:, 0, D] = 0.0
        x[:, 1:, D] = rel
        return x, WindowStats(center=center, scale=scale, last=raw[:, -1].copy(), dt_s=dt_med)

    def _encode_full(
        self, timestamps: list[np.ndarray], features: list[np.ndarray], T: int
    ) -> tuple[np.ndarray, WindowStats]:
        """``encode`` for the common case of windows of at least T contexts: no padding, no masks.

        Written for the serving path's batches of one: it pays per numpy call, not per element, so the
        statistics are spelled out (a sort for the median, one shared deviation) rather than taken from
        ``np.median``/``np.std``, whose Python wrappers cost more than the arithmetic.
        """
        if len(features) == 1:
            raw = np.asarray(features[0][-T:], dtype=np.float64)[None]  # (1, T, D)
            ts = timestamps[0][-T:][None]  # (1, T)
        else:
            raw = np.stack([f[-T:] for f in features]).astype(np.float64, copy=False)  # (B, T, D)
            ts = np.stack([t[-T:] for t in timestamps])  # (B, T)
        return self._encode_stacked(raw, ts)

    def _encode_stacked(self, raw: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, WindowStats]:
        """Full windows raw (B, T, D) float64, ts (B, T) -> x and stats."""
        D = self.n_features
        T = raw.shape[1]
        assert raw.shape[2] == D, f"expected {D} features, got {raw.shape[2]}"
        y = self._transform(raw)
        center = np.add.reduce(y, axis=1) / T  # (B, D)
        dev = y - center[:, None]  # (B, T, D)
        scale = np.maximum(np.sqrt(np.add.reduce(dev * dev, axis=1) / T), self.min_scale)
        x = np.empty((raw.shape[0], T, self.n_inputs), dtype=np.float32)
        # min(max()) rather than np.clip, and no np.diff or np.errstate: each has a Python wrapper
        np.minimum(np.maximum(dev / scale[:, None], -INPUT_CLIP), INPUT_CLIP, out=x[..., :D])
        if T > 1:
            dts = (ts[:, 1:] - ts[:, :-1]) / 1000.0  # (B, T-1) seconds
            srt = np.sort(dts, axis=1)
            dt_med = (srt[:, (T - 2) // 2] + srt[:, (T - 1) // 2]) / 2  # the median of T-1 deltas
            # timestamps are whole ms: a positive median is >= 1e-3 and the floor only keeps 0 finite
            rel = np.log(np.maximum(dts, 1e-3) / np.maximum(dt_med, 1e-3)[:, None])
            rel = np.minimum(np.maximum(rel, -DT_CLIP), DT_CLIP)
            x[:, 1:, D] = np.where(dt_med[:, None] > 0, rel, 0.0)
        else:
            dt_med = np.zeros(raw.shape[0])
        x[:, 0, D] = 0.0
        return x, WindowStats(center=center, scale=scale, last=raw[:, -1].copy(), dt_s=dt_med)

    def encode_targets(self, targets: np.ndarray, stats: WindowStats) -> np.ndarray:
        """Raw future contexts (B, H, D) -> the standardized space of their windows."""
        y = self.transform(targets)
        return ((y - stats.center[:, None]) / stats.scale[:, None]).astype(np.float32)

    def decode(self, mean: np.ndarray, std: np.ndarray, stats: WindowStats) -> tuple[np.ndarray, np.ndarray]:
        """Standardized mean/std (B, H, D) -> mean and std in the transformed (log/identity) space."""
        return stats.center[:, None] + stats.scale[:, None] * mean, stats.scale[:, None] * std
