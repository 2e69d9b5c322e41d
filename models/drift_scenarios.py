"""Drift scenarios: a route whose dynamics change, not its scale, so that a frozen model cannot follow.

The shipped models normalize every window by its own level and spread (``models.scaling``): a change of
latency scale, of sampling interval or a level shift is absorbed by construction. What they cannot absorb
is a new relation between what they read and what comes next. Each scenario takes one seeded route of
``models.traces`` and, from sample ``shift_at`` on, rewrites its latency (and where said, another
feature) so that the next latency depends on the past in a way the training data never showed:

- ``leadlag``: queue depth gets a fast fluctuation of its own (an AR(1) in log space, there from the
  start); from the shift on, latency follows it one sample later: ``latency[t] *= exp(beta * e[t - 1])``.
  Queue depth now leads latency, which it never did in training (there both come from the same
  instantaneous queueing delay).
- ``utilcurve``: utilization gets a fast fluctuation too; from the shift on, latency responds to the
  previous sample's utilization with a new convex curve, ``exp(k * (g(u[t - 1]) - mean g))`` with
  ``g(u) = u^2 / (1 - u)``.
- ``periodic``: from the shift on, a congestion pattern every ``period`` samples: latency and queue depth
  rise by ``amplitude`` for ``width`` samples (a batch job, a backup window), a rhythm no daily shape has.

Pure NumPy; ``generate(name, ...)`` is deterministic in its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from models.traces import Trace, generate_trace, sample_profile

SCENARIOS: tuple[str, ...] = ("leadlag", "utilcurve", "periodic")
LATENCY, UTILIZATION, QUEUE_DEPTH = 0, 4, 7


@dataclass(frozen=True)
class Scenario:
    """One scenario's trace and where its dynamics change."""

    name: str
    trace: Trace
    shift_at: int  # index of the first sample of the new dynamics


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """A unit-variance AR(1) sequence."""
    z = rng.standard_normal(n)
    e = np.empty(n)
    e[0] = z[0]
    scale = np.sqrt(1.0 - phi * phi)
    for i in range(1, n):
        e[i] = phi * e[i - 1] + scale * z[i]
    return e


def generate(
    name: str,
    n_steps: int,
    shift_at: int,
    seed: int = 7,
    *,
    split: str = "train",
    beta: float = 0.3,
    curve: float = 1.2,
    period: int = 12,
    width: int = 3,
    amplitude: float = 0.6,
) -> Scenario:
    """``n_steps`` samples of one route, its dynamics changed from ``shift_at`` on, as ``name`` says."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown drift scenario {name!r}; expected one of {SCENARIOS}")
    if not 1 <= shift_at < n_steps:
        raise ValueError(f"shift_at must be in [1, {n_steps}), got {shift_at}")
    if not 1 <= width < period:
        raise ValueError(f"width must be in [1, period), got width {width}, period {period}")
    rng = np.random.default_rng(seed)
    profile = sample_profile(rng, split)
    trace = generate_trace(profile, n_steps, seed=seed, route_id=f"drift-{name}")
    f = trace.features.astype(np.float64)
    after = np.arange(n_steps) >= shift_at
    if name == "leadlag":
        e = _ar1(rng, n_steps, 0.3)
        f[:, QUEUE_DEPTH] = np.round(f[:, QUEUE_DEPTH] * np.exp(0.8 * e) + 1.0)
        lead = np.concatenate(([0.0], e[:-1]))  # the previous sample's fluctuation
        f[:, LATENCY] *= np.where(after, np.exp(beta * lead), 1.0)
    elif name == "utilcurve":
        e = _ar1(rng, n_steps, 0.3)
        u = np.clip(f[:, UTILIZATION] * np.exp(0.35 * e), 0.01, 0.95)
        f[:, UTILIZATION] = u
        g = u * u / (1.0 - u)
        g_prev = np.concatenate(([g[0]], g[:-1]))
        effect = curve * (g_prev - g.mean()) / max(float(g.std()), 1e-6) * 0.25
        f[:, LATENCY] *= np.where(after, np.exp(effect), 1.0)
    else:  # periodic
        phase = (np.arange(n_steps) - shift_at) % period
        busy = after & (phase < width)
        f[:, LATENCY] *= np.where(busy, 1.0 + amplitude, 1.0)
        f[:, QUEUE_DEPTH] = np.round(f[:, QUEUE_DEPTH] * np.where(busy, 1.0 + 2.0 * amplitude, 1.0))
    return Scenario(name, replace(trace, features=f.astype(np.float32)), shift_at)


def rescaled(trace: Trace, latency_factor: float, interval_factor: float) -> Trace:
    """The same route at another latency scale and sampling interval (an unseen deployment)."""
    f = trace.features.astype(np.float64)
    f[:, [0, 1]] *= latency_factor  # latency and jitter
    t = trace.timestamps_ms
    ts = t[0] + np.round((t - t[0]) * interval_factor).astype(np.int64)
    return replace(trace, timestamps_ms=ts, features=f.astype(np.float32))
