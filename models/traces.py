"""Seeded synthetic per-route traces of the 8 context features, for training, evaluation and replay.

A trace is what an observer would record on one route: irregularly spaced samples of
latency, jitter, loss, throughput, utilization, error rate, connections and queue depth
(``FEATURE_NAMES``, the column order of the wire contract in docs/architecture.md). The values come
from one continuous-time generative process per route (``RouteProfile``), sampled at the trace's
timestamps, so a route looks the same whether it is sampled every second or every five minutes.

Generative model (t in seconds since the trace start, i the sample index):

Time.
    Spacing dt_i = interval_s * exp(interval_jitter * N(0,1)), clipped to [0.5, 2] * interval_s;
    with probability gap_prob a sample is followed by a gap of U(2, gap_max_intervals) intervals.
    Timestamps are int ms since the epoch, strictly increasing.

Offered load (Mbit/s).
    offered(t) = capacity_mbps * mean_utilization
                 * (S(t) * exp(X(t) - load_sigma^2 / 2) * (1 + surge(t)) + B(t))
    - S(t) = daily(h) * weekly(d): daily(h) swings between 1 - daily_amplitude and 1 + daily_amplitude
      with a shape made of von Mises bumps at local hours daily_peaks_h (weights daily_peak_weights,
      width daily_peak_width_h); local hour h = UTC hour + daily_phase_h; weekly(d) = weekend_factor
      on Saturday and Sunday (local), 1 otherwise.
    - X(t): Ornstein-Uhlenbeck process in log space, stationary std load_sigma, correlation time
      load_tau_s. Sampled exactly at irregular times: X_i = a_i X_{i-1} + load_sigma * sqrt(1 - a_i^2) * z_i
      with a_i = exp(-dt_i / load_tau_s), so the AR(1) coefficient depends on dt and the continuous
      process does not.
    - B(t): heavy-tailed bursts. Poisson events (burst_rate_per_h) of size burst_scale * Pareto(burst_alpha)
      (capped at 50x), each decaying as exp(-age / burst_tau_s).
    - surge(t): congestion episodes. Poisson events (congestion_rate_per_day) lasting log-uniform
      congestion_min_s..congestion_max_s (minutes to hours), each adding U(0.3, 1) * congestion_magnitude
      relative load, with onset and decay smoothed over CONGESTION_RAMP_S.

Capacity and path.
    capacity(t) = capacity_mbps * R_c(t) * (1 - failure capacity lost)
    base(t)     = base_latency_ms * R_l(t) * exp(L(t) + P(t))
    - R_c, R_l: regime shifts. Poisson events (regime_rate_per_day) multiply capacity by
      exp(N(0, regime_capacity_sigma)) and base latency by exp(N(0, regime_latency_sigma)), for good.
      generate_trace(shift_at=...) adds one deterministic shift: base latency * shift_latency_factor and
      daily phase + shift_phase_hours from that sample on (over shift_ramp_steps samples, a ramp).
    - L(t): level changes of the path, in log base latency, drawn from their own random stream (so a
      route without them is sampled exactly as before): persistent level shifts (x0.25..x4, up or down;
      level_shift_rate_per_day), ramps (the same change spread linearly over ramp_min..ramp_max
      intervals; ramp_rate_per_day), and failovers to a slower path (x1.5..x4) that recover after
      log-uniform failover_min..failover_max intervals (failover_rate_per_day). The level stays within
      x0.25..x4 of base_latency_ms. These are what a model must follow rather than revert: a burst
      decays, a new level holds.
    - P(t): slow OU path wander of log base latency (path_sigma, path_tau_s).
    - Link failures: Poisson events (failure_rate_per_day) lasting log-uniform failure_min_s..failure_max_s;
      during one, capacity loses U(0.5, 1) * failure_severity, loss gains U(0.02, 0.4), error rate gains
      U(0.01, 0.2) and latency gains a detour of U(0.2, 1.5) * base(t).

Queueing (M/M/1/K-like, rho = offered / capacity, s = service_time_ms, K = buffer_service_units).
    queueing delay W = s * K * rho / (rho + K * max(1 - rho, 0)): ~ s * rho / (1 - rho) at low load,
    rising sharply near rho = 1 and saturating at s * K (full buffer) when overloaded.
    overflow loss  P_K = (1 - rho) * rho^K / (1 - rho^(K+1)): tiny at low load, -> 1 - 1/rho when overloaded.

Features (each with its own measurement noise; rates clipped to [0, 1], counts >= 0).
    0 latency_ms      = (base + W + detour) * exp(latency_noise_sigma * t_nu), t_nu a unit-variance
                        Student-t with latency_noise_df degrees of freedom (heavy-tailed probe noise).
    1 jitter_ms       = (jitter_floor_ratio * base + jitter_queue_ratio * W + 0.3 * detour) * lognormal(0.25)
    2 loss_rate       = 1 - (1 - base_loss_rate)(1 - P_K)(1 - failure loss), * lognormal(0.3)
    3 throughput_mbps = offered * (1 - loss) * lognormal(throughput_noise_sigma)
    4 utilization     = throughput / capacity
    5 error_rate      = (base_error_rate + error_per_loss * loss + failure errors) * lognormal(0.3)
    6 connections     = Poisson(connections_per_mbps * offered)
    7 queue_depth     = round(packet rate * W * lognormal(0.3)), Little's law with PACKET_BYTES packets

Trace.clean holds the same features before measurement noise (latency = base + W + detour, and so on):
the true value an oracle would know, which evaluation uses to score forecasts and route choices.

Every sample is an instantaneous probe: measurement noise is independent between samples whatever
the interval, which is also what lets a smoothing forecaster beat persistence. Parameter ranges drawn
by ``sample_profile`` are listed next to each ``RouteProfile`` field ("train" split; "unseen" differs
in base latency, interval, daily shape and utilization, see ``sample_profile``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace

import numpy as np

from models.scaling import FEATURE_NAMES  # the wire contract's column order, defined once

N_FEATURES = len(FEATURE_NAMES)
SPLITS: tuple[str, ...] = ("train", "unseen")
DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a Thursday
PACKET_BYTES = 1000.0  # mean packet size behind queue_depth (Little's law)
CONGESTION_RAMP_S = 120.0  # surges build up and drain over a couple of minutes, not instantly
_MAX_RHO = 20.0  # offered/capacity beyond this changes nothing but risks overflow in rho**K
_SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class RouteProfile:
    """All parameters of one route's generative process; defaults are a typical "train" route.

    Comments give the range ``sample_profile(split="train")`` draws from.
    """

    base_latency_ms: float  # propagation + processing latency at zero load; 5..100 log-uniform
    interval_s: float  # nominal sampling interval; 5..60 log-uniform
    # sampling
    interval_jitter: float = 0.1  # log-std of the spacing; 0.02..0.2
    gap_prob: float = 0.003  # chance a sample is followed by a gap; 0.001..0.01
    gap_max_intervals: float = 10.0  # longest gap, in intervals; 3..30
    # offered load and its seasonality
    capacity_mbps: float = 1000.0  # nominal link capacity; 100..10000 log-uniform
    mean_utilization: float = 0.4  # offered / capacity at mid-swing; 0.2..0.7
    daily_amplitude: float = 0.35  # relative daily swing; 0.25..0.6
    daily_peaks_h: tuple[float, ...] = (14.0,)  # local hours of the daily peaks
    daily_peak_weights: tuple[float, ...] = (1.0,)  # relative height of each peak
    daily_peak_width_h: float = 3.0  # width (std-like) of each peak; 1.6..4.4
    daily_phase_h: float = 0.0  # local time = UTC + phase; -1.5..1.5
    weekend_factor: float = 0.75  # load multiplier on Saturday and Sunday; 0.6..0.9
    load_sigma: float = 0.15  # stationary std of the log-load OU process; 0.08..0.25
    load_tau_s: float = 1200.0  # its correlation time; 600..3600 log-uniform
    # queueing
    service_time_ms: float = 5.0  # queueing delay scale; 0.15..0.8 x base latency, log-uniform
    buffer_service_units: float = 20.0  # buffer size K in service times; 10..30
    path_sigma: float = 0.03  # stationary std of log base-latency wander; 0.01..0.05
    path_tau_s: float = 3600.0  # its correlation time; 1800..14400 log-uniform
    # measurement noise
    latency_noise_sigma: float = 0.04  # log-std of latency probe noise; 0.02..0.05
    latency_noise_df: float = 5.0  # Student-t degrees of freedom of that noise; 4..10
    jitter_floor_ratio: float = 0.03  # jitter at zero load, as a fraction of base latency; 0.01..0.05
    jitter_queue_ratio: float = 0.5  # jitter per ms of queueing delay; 0.3..0.8
    throughput_noise_sigma: float = 0.03  # log-std of throughput measurement noise; 0.01..0.05
    # bursts
    burst_rate_per_h: float = 2.0  # 0.5..4
    burst_scale: float = 0.08  # relative load of a typical burst; 0.03..0.15
    burst_alpha: float = 2.0  # Pareto tail index; 1.5..2.5
    burst_tau_s: float = 120.0  # decay time; 30..300 log-uniform
    # congestion episodes
    congestion_rate_per_day: float = 1.5  # 0.5..3
    congestion_min_s: float = 120.0  # shortest episode
    congestion_max_s: float = 14_400.0  # longest episode (4 h)
    congestion_magnitude: float = 0.6  # largest extra relative load; 0.3..1.0
    # link failures
    failure_rate_per_day: float = 0.5  # 0.1..2
    failure_min_s: float = 10.0  # shortest failure
    failure_max_s: float = 600.0  # longest failure
    failure_severity: float = 0.6  # largest fraction of capacity lost; 0.3..0.9
    # regime shifts
    regime_rate_per_day: float = 0.15  # 0.05..0.3
    regime_latency_sigma: float = 0.15  # log-std of the base latency change; 0.05..0.25
    regime_capacity_sigma: float = 0.2  # log-std of the capacity change; 0.1..0.3
    # level changes (L(t)); zero in a profile built by hand, drawn by with_level_changes
    level_shift_rate_per_day: float = 0.0  # persistent steps; every 500..2000 samples
    ramp_rate_per_day: float = 0.0  # ramps; every 300..1200 samples
    ramp_min_intervals: float = 6.0  # shortest ramp, in sampling intervals
    ramp_max_intervals: float = 60.0  # longest ramp (longer than a window: a trend through all of it)
    failover_rate_per_day: float = 0.0  # failovers to a slower path; every 1000..4000 samples
    failover_min_intervals: float = 4.0  # shortest failover, in sampling intervals
    failover_max_intervals: float = 400.0  # longest failover (often outlasting the window)
    # loss, errors, connections
    base_loss_rate: float = 1e-4  # 1e-5..1e-3 log-uniform
    base_error_rate: float = 1e-5  # 1e-6..1e-4 log-uniform
    error_per_loss: float = 0.3  # errors that come with each lost packet; 0.1..0.5
    connections_per_mbps: float = 2.0  # 0.5..10 log-uniform
    # True when read back by read_jsonl: only base_latency_ms (5th percentile of latency) and
    # interval_s (median spacing) were estimated from the data; every other field is a default.
    estimated: bool = False

    def __post_init__(self) -> None:
        for name in ("base_latency_ms", "capacity_mbps", "mean_utilization", "service_time_ms"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.interval_s >= 0.002:  # at least 1 ms between samples after rounding
            raise ValueError(f"interval_s must be >= 0.002, got {self.interval_s}")
        if not self.daily_peaks_h or len(self.daily_peaks_h) != len(self.daily_peak_weights):
            raise ValueError(
                f"daily_peaks_h and daily_peak_weights must be non-empty and of equal length, got "
                f"{self.daily_peaks_h} and {self.daily_peak_weights}"
            )
        if not self.latency_noise_df > 2:  # finite variance, so the noise can be scaled to unit std
            raise ValueError(f"latency_noise_df must be > 2, got {self.latency_noise_df}")
        if not 0 <= self.daily_amplitude < 1:
            raise ValueError(f"daily_amplitude must be in [0, 1), got {self.daily_amplitude}")
        for name in ("level_shift_rate_per_day", "ramp_rate_per_day", "failover_rate_per_day"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, eq=False)  # eq=False: array fields make field-wise == ambiguous
class Trace:
    """One route's samples: int64 ms timestamps and the (N, 8) float32 features, in FEATURE_NAMES order."""

    route_id: str
    timestamps_ms: np.ndarray  # (N,) int64, strictly increasing
    features: np.ndarray  # (N, 8) float32
    profile: RouteProfile
    # (N, 8) float32: the features before measurement noise, the true values; None when read from a file
    clean: np.ndarray | None = None

    def __post_init__(self) -> None:
        ts, x = self.timestamps_ms, self.features
        if self.clean is not None and (self.clean.dtype != np.float32 or self.clean.shape != x.shape):
            raise ValueError(
                f"route {self.route_id!r}: clean must be float32 of shape {x.shape}, "
                f"got {self.clean.dtype} {self.clean.shape}"
            )
        if ts.ndim != 1 or ts.dtype != np.int64:
            raise ValueError(
                f"route {self.route_id!r}: timestamps_ms must be 1-D int64, got {ts.dtype} {ts.shape}"
            )
        if x.dtype != np.float32 or x.shape != (len(ts), N_FEATURES):
            raise ValueError(
                f"route {self.route_id!r}: features must be float32 of shape ({len(ts)}, {N_FEATURES}), "
                f"got {x.dtype} {x.shape}"
            )
        if len(ts) > 1 and not bool(np.all(np.diff(ts) > 0)):
            raise ValueError(f"route {self.route_id!r}: timestamps_ms must be strictly increasing")

    def __len__(self) -> int:
        return len(self.timestamps_ms)

    def part(self, index: slice) -> Trace:
        """The samples at ``index`` (a slice: a time range, or every k-th sample) as a trace of its own."""
        clean = None if self.clean is None else self.clean[index]
        return replace(
            self, timestamps_ms=self.timestamps_ms[index], features=self.features[index], clean=clean
        )


# ---------------------------------------------------------------------------------------------
# Profiles


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _log_uniform_outside(
    rng: np.random.Generator, low: float, inner_low: float, inner_high: float, high: float
) -> float:
    """Log-uniform in [inner_low, inner_high] half the time, else in one of the two outer bands."""
    band = rng.integers(4)  # 0, 1: inner; 2: below; 3: above
    if band == 2:
        return _log_uniform(rng, low, inner_low)
    if band == 3:
        return _log_uniform(rng, inner_high, high)
    return _log_uniform(rng, inner_low, inner_high)


# The usual daily shapes: (peak hours, weights, width in hours).
_TRAIN_SHAPES: tuple[tuple[tuple[float, ...], tuple[float, ...], float], ...] = (
    ((14.0,), (1.0,), 3.5),  # business: one broad afternoon peak
    ((12.0, 21.0), (0.6, 1.0), 2.5),  # residential: midday shoulder, evening peak
    ((10.5, 15.5), (1.0, 0.9), 2.0),  # office: morning and afternoon peaks
)


def sample_profile(rng: np.random.Generator, split: str = "train") -> RouteProfile:
    """Draw one route's parameters: "train" is what models learn from, "unseen" what a deployment may meet.

    "unseen" differs from "train" where deployments do (docs/architecture.md): base latency 1..500 ms and
    interval 1 s..5 min (each outside the training range half the time), daily peaks at any hour
    (1 to 3 of them, width 1..6 h, any phase), daily amplitude 0.05..0.2 or 0.5..0.7, weekend factor
    0.4..1.3 and mean utilization 0.15..0.65. The other parameters share the training ranges.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if split == "train":
        base_latency_ms = _log_uniform(rng, 5.0, 100.0)
        interval_s = _log_uniform(rng, 5.0, 60.0)
        peaks, weights, width = _TRAIN_SHAPES[int(rng.integers(len(_TRAIN_SHAPES)))]
        daily_peak_width_h = width * float(rng.uniform(0.8, 1.25))
        daily_phase_h = float(rng.uniform(-1.5, 1.5))
        # busy enough that some routes saturate at peak (the buffer-full plateau): every network
        # overloads sometimes, and a model that never saw it extrapolates straight through the cap
        daily_amplitude = float(rng.uniform(0.25, 0.6))
        weekend_factor = float(rng.uniform(0.6, 0.9))
        mean_utilization = float(rng.uniform(0.2, 0.7))
    else:
        base_latency_ms = _log_uniform_outside(rng, 1.0, 5.0, 100.0, 500.0)
        interval_s = _log_uniform_outside(rng, 1.0, 5.0, 60.0, 300.0)
        n_peaks = int(rng.integers(1, 4))
        peaks = tuple(float(h) for h in np.sort(rng.uniform(0.0, 24.0, n_peaks)))
        weights = tuple(float(w) for w in rng.uniform(0.3, 1.0, n_peaks))
        daily_peak_width_h = float(rng.uniform(1.0, 6.0))
        daily_phase_h = float(rng.uniform(-12.0, 12.0))
        daily_amplitude = float(rng.uniform(0.05, 0.2) if rng.random() < 0.5 else rng.uniform(0.5, 0.7))
        weekend_factor = float(rng.uniform(0.4, 1.3))
        mean_utilization = float(rng.uniform(0.15, 0.65))
    return RouteProfile(
        base_latency_ms=base_latency_ms,
        interval_s=interval_s,
        interval_jitter=float(rng.uniform(0.02, 0.2)),
        gap_prob=float(rng.uniform(0.001, 0.01)),
        gap_max_intervals=float(rng.uniform(3.0, 30.0)),
        capacity_mbps=_log_uniform(rng, 100.0, 10_000.0),
        mean_utilization=mean_utilization,
        daily_amplitude=daily_amplitude,
        daily_peaks_h=peaks,
        daily_peak_weights=weights,
        daily_peak_width_h=daily_peak_width_h,
        daily_phase_h=daily_phase_h,
        weekend_factor=weekend_factor,
        load_sigma=float(rng.uniform(0.08, 0.25)),
        load_tau_s=_log_uniform(rng, 600.0, 3600.0),
        service_time_ms=base_latency_ms * _log_uniform(rng, 0.15, 0.8),
        buffer_service_units=float(rng.uniform(10.0, 30.0)),
        path_sigma=float(rng.uniform(0.01, 0.05)),
        path_tau_s=_log_uniform(rng, 1800.0, 14_400.0),
        latency_noise_sigma=float(rng.uniform(0.02, 0.05)),
        latency_noise_df=float(rng.uniform(4.0, 10.0)),
        jitter_floor_ratio=float(rng.uniform(0.01, 0.05)),
        jitter_queue_ratio=float(rng.uniform(0.3, 0.8)),
        throughput_noise_sigma=float(rng.uniform(0.01, 0.05)),
        burst_rate_per_h=float(rng.uniform(0.5, 4.0)),
        burst_scale=float(rng.uniform(0.03, 0.15)),
        burst_alpha=float(rng.uniform(1.5, 2.5)),
        burst_tau_s=_log_uniform(rng, 30.0, 300.0),
        congestion_rate_per_day=float(rng.uniform(0.5, 3.0)),
        congestion_magnitude=float(rng.uniform(0.3, 1.0)),
        failure_rate_per_day=float(rng.uniform(0.1, 2.0)),
        failure_severity=float(rng.uniform(0.3, 0.9)),
        regime_rate_per_day=float(rng.uniform(0.05, 0.3)),
        regime_latency_sigma=float(rng.uniform(0.05, 0.25)),
        regime_capacity_sigma=float(rng.uniform(0.1, 0.3)),
        base_loss_rate=_log_uniform(rng, 1e-5, 1e-3),
        base_error_rate=_log_uniform(rng, 1e-6, 1e-4),
        error_per_loss=float(rng.uniform(0.1, 0.5)),
        connections_per_mbps=_log_uniform(rng, 0.5, 10.0),
    )


def with_level_changes(
    profile: RouteProfile,
    rng: np.random.Generator,
    boost: float = 1.0,
    ramps: float = 1.0,
    ramp_max_intervals: float | None = None,
) -> RouteProfile:
    """``profile`` with rates of the level changes L(t) drawn (the same ranges for both splits).

    Drawn per sample rather than per day: a step every 500..2000 samples, a ramp (a congestion building
    up or draining, a path slowly degrading) every 300..1200 and a failover every 1000..4000, so that
    every sampling interval puts a few into a trace of a few thousand samples.
    ``boost`` multiplies every rate: training sees them more often than a deployment does (they are rare,
    and a model that meets too few reverts to the window's mean after one). ``ramps`` multiplies the ramps'
    rate on top of it; ``ramp_max_intervals`` replaces the profile's longest ramp (in sampling intervals).
    """
    per_day = boost * _SECONDS_PER_DAY / profile.interval_s  # samples per day, times the boost
    return replace(
        profile,
        level_shift_rate_per_day=per_day / _log_uniform(rng, 500.0, 2000.0),
        ramp_rate_per_day=ramps * per_day / _log_uniform(rng, 300.0, 1200.0),
        failover_rate_per_day=per_day / _log_uniform(rng, 1000.0, 4000.0),
        ramp_max_intervals=profile.ramp_max_intervals if ramp_max_intervals is None else ramp_max_intervals,
    )


# ---------------------------------------------------------------------------------------------
# Building blocks of the process


def _linear_recursion(a: np.ndarray, e: np.ndarray) -> np.ndarray:
    """x[i] = a[i] * x[i-1] + e[i] with x[-1] = 0, for a[i] in [0, 1], as a parallel prefix scan.

    Each pass composes every step with the one d steps back (d = 1, 2, 4, ...), so the cost is
    O(N log N) numpy work instead of an O(N) Python loop; it stops early once the carried
    products a[i]...a[i-d] have all decayed to nothing.
    """
    coef = a.astype(np.float64)
    out = e.astype(np.float64)
    d = 1
    while d < len(out):
        out[d:] = out[d:] + coef[d:] * out[:-d]  # the right side is evaluated before the write
        coef[d:] = coef[d:] * coef[:-d]
        if float(coef[d:].max()) < 1e-18:
            break
        d *= 2
    return out


def _ou(rng: np.random.Generator, dt_s: np.ndarray, sigma: float, tau_s: float) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck process (mean 0, std sigma) sampled exactly after steps dt_s."""
    a = np.exp(-np.concatenate(([np.inf], dt_s)) / tau_s)  # a[0] = 0: start from the stationary law
    e = sigma * np.sqrt(1.0 - a * a) * rng.standard_normal(len(a))
    return _linear_recursion(a, e)


def _poisson_times(rng: np.random.Generator, rate_per_s: float, t0: float, t1: float) -> np.ndarray:
    n = int(rng.poisson(max(rate_per_s * (t1 - t0), 0.0)))
    return np.sort(rng.uniform(t0, t1, n))


def _episodes(t: np.ndarray, starts: np.ndarray, durations: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum over episodes of value * [start <= t < start + duration], at the sample times t."""
    diff = np.zeros(len(t) + 1)
    np.add.at(diff, np.searchsorted(t, starts), values)
    np.add.at(diff, np.searchsorted(t, starts + durations), -values)
    return np.cumsum(diff[:-1])


def _level_changes(rng: np.random.Generator, p: RouteProfile, t: np.ndarray, span: float) -> np.ndarray:
    """L(t), the log factor of the path's level: persistent steps, ramps, and failovers that recover."""
    lo, hi = math.log(0.25), math.log(4.0)
    step_t = _poisson_times(rng, p.level_shift_rate_per_day / _SECONDS_PER_DAY, 0.0, span)
    ramp_t = _poisson_times(rng, p.ramp_rate_per_day / _SECONDS_PER_DAY, 0.0, span)
    events = sorted([(float(x), 0.0) for x in step_t] + [(float(x), 1.0) for x in ramp_t])
    # each step or ramp moves the level by x1.25..x4 up or down, turned back when it would leave x0.25..x4
    level = np.zeros(len(t))
    current = 0.0
    for start, is_ramp in events:
        size = rng.uniform(math.log(1.25), math.log(4.0)) * (1.0 if rng.random() < 0.5 else -1.0)
        if not lo <= current + size <= hi:
            size = -size
        size = float(np.clip(current + size, lo, hi)) - current
        current += size
        if is_ramp:
            duration = rng.uniform(p.ramp_min_intervals, p.ramp_max_intervals) * p.interval_s
            level += size * np.clip((t - start) / duration, 0.0, 1.0)
        else:
            level += size * (t >= start)
    # failovers: a slower path for a while, then back; they may begin before the trace does
    longest = p.failover_max_intervals * p.interval_s
    fo_t = _poisson_times(rng, p.failover_rate_per_day / _SECONDS_PER_DAY, -longest, span)
    fo_len = p.interval_s * np.exp(
        rng.uniform(math.log(p.failover_min_intervals), math.log(p.failover_max_intervals), len(fo_t))
    )
    fo_size = rng.uniform(math.log(1.5), math.log(4.0), len(fo_t))
    level += _episodes(t, fo_t, fo_len, fo_size)
    return np.clip(level, lo, hi)


def _daily_factor(profile: RouteProfile, local_h: np.ndarray) -> np.ndarray:
    """Load multiplier from the daily shape: between 1 - amplitude (trough) and 1 + amplitude (peak)."""
    kappa = 1.0 / (2.0 * math.pi * profile.daily_peak_width_h / 24.0) ** 2  # von Mises ~ Gaussian of that std

    def shape(h: np.ndarray) -> np.ndarray:
        bumps = [
            w * np.exp(kappa * (np.cos(2.0 * math.pi * (h - peak) / 24.0) - 1.0))
            for peak, w in zip(profile.daily_peaks_h, profile.daily_peak_weights, strict=True)
        ]
        return np.sum(bumps, axis=0)

    grid = shape(np.linspace(0.0, 24.0, 1441))
    lo, hi = float(grid.min()), float(grid.max())
    unit = (shape(local_h) - lo) / max(hi - lo, 1e-12)
    return 1.0 + profile.daily_amplitude * (2.0 * unit - 1.0)


def _timestamps(rng: np.random.Generator, profile: RouteProfile, n_steps: int, start_ms: int) -> np.ndarray:
    """Jittered spacing around the nominal interval, with occasional gaps of several intervals."""
    nominal = profile.interval_s
    dt = nominal * np.exp(profile.interval_jitter * rng.standard_normal(n_steps - 1))
    dt = np.clip(dt, 0.5 * nominal, 2.0 * nominal)
    gaps = rng.random(n_steps - 1) < profile.gap_prob
    dt[gaps] *= rng.uniform(2.0, max(profile.gap_max_intervals, 2.0), int(gaps.sum()))
    # Round each step (>= 500 ms) rather than the running sum, so the spacing never reaches zero.
    steps_ms = np.maximum(np.rint(dt * 1000.0), 1).astype(np.int64)
    return start_ms + np.concatenate(([0], np.cumsum(steps_ms))).astype(np.int64)


def _overflow_loss(rho: np.ndarray, k: float) -> np.ndarray:
    """M/M/1/K blocking probability (1 - rho) rho^K / (1 - rho^(K+1)); 1/(K+1) at rho = 1.

    Written in x = min(rho, 1/rho) so that no power overflows: when overloaded it equals
    (1 - x) / (1 - x^(K+1)), which tends to 1 - 1/rho, the share of the offered load that cannot fit.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.minimum(rho, 1.0 / rho)
        tail = np.where(rho <= 1.0, x**k, 1.0)
        p = (1.0 - x) * tail / (1.0 - x ** (k + 1.0))
    return np.where(np.abs(x - 1.0) < 1e-9, 1.0 / (k + 1.0), p)


# ---------------------------------------------------------------------------------------------
# Traces


def generate_trace(
    profile: RouteProfile,
    n_steps: int,
    seed: int,
    route_id: str = "route-0",
    start_ms: int = DEFAULT_START_MS,
    shift_at: int | None = None,
    shift_latency_factor: float = 2.0,
    shift_phase_hours: float = 6.0,
    shift_ramp_steps: int = 0,
) -> Trace:
    """Sample n_steps contexts of one route; the same (profile, n_steps, seed, ...) gives identical arrays.

    shift_at: sample index from which the base latency is multiplied by shift_latency_factor and the
    daily phase moved by shift_phase_hours (a deployment-time drift for evaluation); None for none.
    shift_ramp_steps: spread the latency factor linearly over that many samples from shift_at (a ramp).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if shift_at is not None and not 0 <= shift_at <= n_steps:
        raise ValueError(f"shift_at must be in [0, {n_steps}], got {shift_at}")
    if shift_latency_factor <= 0:
        raise ValueError(f"shift_latency_factor must be > 0, got {shift_latency_factor}")
    if shift_ramp_steps < 0:
        raise ValueError(f"shift_ramp_steps must be >= 0, got {shift_ramp_steps}")
    p = profile
    rng = np.random.default_rng(seed)

    timestamps_ms = _timestamps(rng, p, n_steps, start_ms)
    t = (timestamps_ms - start_ms) / 1000.0  # (N,) seconds since the start
    dt = np.diff(t)  # (N-1,)
    span = float(t[-1]) + p.interval_s
    shifted = np.zeros(n_steps, dtype=bool)
    shift_weight = np.zeros(n_steps)  # 0 before the shift, rising to 1 over the ramp
    if shift_at is not None:
        shifted[shift_at:] = True
        shift_weight = np.clip((np.arange(n_steps) - shift_at + 1) / max(shift_ramp_steps, 1), 0.0, 1.0)

    # Seasonality, in the route's local time.
    local_h = timestamps_ms / 3_600_000.0 + p.daily_phase_h + shift_phase_hours * shifted
    weekday = (np.floor(local_h / 24.0).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    season = _daily_factor(p, local_h % 24.0) * np.where(weekday >= 5, p.weekend_factor, 1.0)

    # Load noise, bursts and congestion surges, all in continuous time.
    load_noise = np.exp(_ou(rng, dt, p.load_sigma, p.load_tau_s) - 0.5 * p.load_sigma**2)

    burst_t = _poisson_times(rng, p.burst_rate_per_h / 3600.0, 0.0, span)
    pareto = rng.pareto(p.burst_alpha, len(burst_t)) + 1.0  # Pareto with minimum 1
    burst_size = p.burst_scale * np.minimum(pareto, 50.0)
    burst_idx = np.searchsorted(t, burst_t)
    keep = burst_idx < n_steps
    burst_idx, burst_t, burst_size = burst_idx[keep], burst_t[keep], burst_size[keep]
    kicks = np.zeros(n_steps)
    np.add.at(kicks, burst_idx, burst_size * np.exp(-(t[burst_idx] - burst_t) / p.burst_tau_s))
    burst = _linear_recursion(np.exp(-np.concatenate(([np.inf], dt)) / p.burst_tau_s), kicks)

    # Episodes may have begun before the trace starts, so draw their starts from before t = 0 too.
    cong_t = _poisson_times(rng, p.congestion_rate_per_day / _SECONDS_PER_DAY, -p.congestion_max_s, span)
    cong_len = np.exp(rng.uniform(math.log(p.congestion_min_s), math.log(p.congestion_max_s), len(cong_t)))
    cong_size = p.congestion_magnitude * rng.uniform(0.3, 1.0, len(cong_t))
    cong_level = _episodes(t, cong_t, cong_len, cong_size)
    ramp = np.exp(-np.concatenate(([np.inf], dt)) / CONGESTION_RAMP_S)
    surge = _linear_recursion(ramp, (1.0 - ramp) * cong_level)  # first-order low-pass of the level

    # Link failures.
    fail_t = _poisson_times(rng, p.failure_rate_per_day / _SECONDS_PER_DAY, -p.failure_max_s, span)
    n_fail = len(fail_t)
    fail_len = np.exp(rng.uniform(math.log(p.failure_min_s), math.log(p.failure_max_s), n_fail))
    fail_severity = p.failure_severity * rng.uniform(0.5, 1.0, n_fail)
    fail_capacity = np.minimum(_episodes(t, fail_t, fail_len, fail_severity), 0.95)
    fail_loss = np.minimum(_episodes(t, fail_t, fail_len, rng.uniform(0.02, 0.4, n_fail)), 1.0)
    fail_errors = _episodes(t, fail_t, fail_len, rng.uniform(0.01, 0.2, n_fail))
    fail_detour = _episodes(t, fail_t, fail_len, rng.uniform(0.2, 1.5, n_fail))

    # Regime shifts: piecewise-constant log factors, plus the requested deterministic shift.
    regime_t = _poisson_times(rng, p.regime_rate_per_day / _SECONDS_PER_DAY, 0.0, span)
    forever = np.full(len(regime_t), np.inf)
    n_regime = len(regime_t)
    log_latency_regime = _episodes(t, regime_t, forever, rng.normal(0.0, p.regime_latency_sigma, n_regime))
    log_capacity_regime = _episodes(t, regime_t, forever, rng.normal(0.0, p.regime_capacity_sigma, n_regime))
    log_latency_regime += math.log(shift_latency_factor) * shift_weight
    path = _ou(rng, dt, p.path_sigma, p.path_tau_s)
    # their own stream: a profile without level changes gives the very same trace as before they existed
    level = _level_changes(np.random.default_rng([seed, 1]), p, t, span)

    base = p.base_latency_ms * np.exp(log_latency_regime + level + path)  # (N,) ms
    capacity = p.capacity_mbps * np.exp(log_capacity_regime) * (1.0 - fail_capacity)  # (N,) Mbit/s
    demand = season * load_noise * (1.0 + surge) + burst  # (N,) relative to the mean offered load
    offered = p.capacity_mbps * p.mean_utilization * demand  # (N,) Mbit/s

    # Queueing: delay rises as rho/(1-rho) and saturates at a full buffer; overflow drops the excess.
    rho = np.clip(offered / capacity, 0.0, _MAX_RHO)
    k = p.buffer_service_units
    queue_delay = p.service_time_ms * k * rho / (rho + k * np.maximum(1.0 - rho, 0.0))  # (N,) ms
    loss = 1.0 - (1.0 - p.base_loss_rate) * (1.0 - _overflow_loss(rho, k)) * (1.0 - fail_loss)
    served = offered * (1.0 - loss)
    detour = fail_detour * base

    def lognormal(sigma: float) -> np.ndarray:
        return np.exp(sigma * rng.standard_normal(n_steps) - 0.5 * sigma**2)

    true_latency = base + queue_delay + detour
    df = p.latency_noise_df
    probe_noise = np.clip(rng.standard_t(df, n_steps) / math.sqrt(df / (df - 2.0)), -8.0, 8.0)
    latency = true_latency * np.exp(p.latency_noise_sigma * probe_noise)
    jitter_level = p.jitter_floor_ratio * base + p.jitter_queue_ratio * queue_delay + 0.3 * detour
    jitter = jitter_level * lognormal(0.25)
    loss_measured = np.clip(loss * lognormal(0.3), 0.0, 1.0)
    throughput = served * lognormal(p.throughput_noise_sigma)
    utilization = np.clip(throughput / capacity, 0.0, 1.0)
    errors = np.clip((p.base_error_rate + p.error_per_loss * loss + fail_errors) * lognormal(0.3), 0.0, 1.0)
    connections = rng.poisson(p.connections_per_mbps * offered).astype(np.float64)
    packets_per_s = served * 1e6 / (8.0 * PACKET_BYTES)
    queue_depth = np.rint(packets_per_s * queue_delay / 1000.0 * lognormal(0.3))

    features = np.stack(
        [latency, jitter, loss_measured, throughput, utilization, errors, connections, queue_depth], axis=1
    ).astype(np.float32)  # (N, 8)
    assert np.isfinite(features).all(), f"non-finite features for {route_id!r}"
    clean = np.stack(
        [
            true_latency,
            jitter_level,
            loss,
            served,
            np.clip(served / capacity, 0.0, 1.0),
            np.clip(p.base_error_rate + p.error_per_loss * loss + fail_errors, 0.0, 1.0),
            p.connections_per_mbps * offered,
            packets_per_s * queue_delay / 1000.0,
        ],
        axis=1,
    ).astype(np.float32)  # (N, 8) the same before measurement noise
    return Trace(route_id, timestamps_ms, features, profile, clean=clean)


def generate_routes(
    seed: int,
    n_routes: int,
    n_steps: int,
    split: str = "train",
    level_changes: float = 1.0,
    ramps: float = 1.0,
    ramp_max_intervals: float | None = None,
) -> list[Trace]:
    """n_routes traces "route-0".., each with its own profile and sub-seed; deterministic for a seed.

    Route i depends only on (seed, split, i), so asking for more routes keeps the first ones.
    level_changes multiplies the rates of L(t) (steps, ramps, failovers; ``with_level_changes``): 0 leaves
    them out, giving the traces as they were before they existed; ramps multiplies the ramps' rate on top,
    and ramp_max_intervals (None: RouteProfile's) is the longest ramp, in sampling intervals.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    root = np.random.SeedSequence([seed, SPLITS.index(split)])
    traces = []
    for i, child in enumerate(root.spawn(n_routes)):
        rng = np.random.default_rng(child)
        profile = sample_profile(rng, split)
        trace_seed = int(rng.integers(2**63))
        if level_changes > 0:  # from a stream of its own, so the other parameters stay as they were
            profile = with_level_changes(
                profile, np.random.default_rng(child.spawn(1)[0]), level_changes, ramps, ramp_max_intervals
            )
        traces.append(generate_trace(profile, n_steps, trace_seed, route_id=f"route-{i}"))
    return traces


# ---------------------------------------------------------------------------------------------
# JSON lines, the replay format


def write_jsonl(traces: list[Trace], path: str | os.PathLike[str]) -> int:
    """Write every context as one ContextVector-shaped JSON line, time-ordered across routes.

    Line: {"route_id", "timestamp", "features": [8 floats], "metadata": {}, "pattern_id": null}.
    Equal timestamps keep the order of `traces`. Returns the number of lines written.
    """
    if not traces:
        open(path, "w", encoding="utf-8").close()
        return 0
    route_of = np.concatenate([np.full(len(tr), r) for r, tr in enumerate(traces)])
    row_of = np.concatenate([np.arange(len(tr)) for tr in traces])
    order = np.argsort(np.concatenate([tr.timestamps_ms for tr in traces]), kind="stable")
    heads = ['{"route_id":' + json.dumps(tr.route_id) + ',"timestamp":' for tr in traces]
    timestamps = [tr.timestamps_ms.tolist() for tr in traces]
    # float32 -> the exact float64 value, whose repr reads back to the same float32 bits
    features = [tr.features.tolist() for tr in traces]
    # Formatted by hand: json.dumps per line is several times slower on replay files of millions of lines.
    with open(path, "w", encoding="utf-8") as f:
        for r, i in zip(route_of[order].tolist(), row_of[order].tolist(), strict=True):
            values = ",".join(map(repr, features[r][i]))
            f.write(
                f'{heads[r]}{timestamps[r][i]},"features":[{values}],"metadata":{{}},"pattern_id":null}}\n'
            )
    return len(order)


def read_jsonl(path: str | os.PathLike[str]) -> list[Trace]:
    """Read write_jsonl's format back into one Trace per route, in order of first appearance.

    The generative profile is not in the file: each trace gets a RouteProfile with estimated=True,
    base_latency_ms = 5th percentile of its latency, interval_s = median spacing (1.0 for a single
    sample), and every other field at its default.
    """
    rows: dict[str, tuple[list[int], list[list[float]]]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            obj = json.loads(text)
            if len(obj["features"]) != N_FEATURES:
                raise ValueError(
                    f"{path}:{lineno}: expected {N_FEATURES} features, got {len(obj['features'])}"
                )
            ts, xs = rows.setdefault(str(obj["route_id"]), ([], []))
            ts.append(int(obj["timestamp"]))
            xs.append(obj["features"])
    traces = []
    for route_id, (ts, xs) in rows.items():
        timestamps = np.asarray(ts, dtype=np.int64)
        order = np.argsort(timestamps, kind="stable")
        timestamps = timestamps[order]
        features = np.asarray(xs, dtype=np.float32)[order]
        interval_s = float(np.median(np.diff(timestamps))) / 1000.0 if len(timestamps) > 1 else 1.0
        profile = RouteProfile(
            base_latency_ms=float(np.percentile(features[:, 0], 5)), interval_s=interval_s, estimated=True
        )
        traces.append(Trace(route_id=route_id, timestamps_ms=timestamps, features=features, profile=profile))
    return traces
