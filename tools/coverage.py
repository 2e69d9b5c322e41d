"""Live interval coverage: a route at an unseen scale, with a level shift, streamed through /v1/observe.

``python -m tools.coverage``

One route of the "unseen" split (``models.traces.sample_profile``), its latency and jitter multiplied by
``latency_factor`` and its sampling interval by ``interval_factor`` (``models.drift_scenarios.rescaled``),
with a deterministic shift half-way (base latency x ``shift_factor``, daily phase + 6 h), goes through
the real app one ``POST /v1/observe`` each (``tools.drift.stream_through_observe``). Reported: the share
of next contexts whose latency landed in the served 90 % interval, over the whole run, after the shift
and over the last ``window`` labels, with the online calibration on (adaptive conformal inference,
``app.learning.conformal``) and, for comparison, off (the offline calibration alone).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.drift_scenarios import rescaled
from models.traces import generate_trace, sample_profile
from tools.drift import stream_through_observe

TARGET = (0.88, 0.92)


@dataclass
class CoverageConfig:
    steps: int = 3000
    window: int = 1000  # the last labels whose coverage must land in TARGET
    seed: int = 11
    latency_factor: float = 20.0
    interval_factor: float = 4.0
    shift_factor: float = 2.0
    kind: str = "lstm"


def trace_of(cfg: CoverageConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """The route's timestamps, features and the index of its shift."""
    rng = np.random.default_rng(cfg.seed)
    shift_at = cfg.steps // 2
    trace = generate_trace(
        sample_profile(rng, "unseen"),
        cfg.steps,
        seed=cfg.seed,
        route_id="coverage",
        shift_at=shift_at,
        shift_latency_factor=cfg.shift_factor,
    )
    trace = rescaled(trace, cfg.latency_factor, cfg.interval_factor)
    return trace.timestamps_ms, trace.features.astype(np.float64), shift_at


def measure(cfg: CoverageConfig, adapt: bool = True) -> dict[str, Any]:
    """Coverage of the served intervals over the run, after the shift and at the end."""
    ts, fs, shift_at = trace_of(cfg)
    settings = {
        "models": (cfg.kind,),
        "model": cfg.kind,
        "learning_enabled": False,  # the interval alone: the model stays the shipped one
        "residual_adapt": False,
        "interval_adapt": adapt,
        "interval_coverage_window": cfg.window,
    }
    served = stream_through_observe(ts, fs, settings)
    actual = fs[:, 0]
    scored = ~np.isnan(served.latency)
    hit = (served.lower <= actual) & (actual <= served.upper)
    after = scored & (np.arange(len(actual)) >= shift_at)
    end = np.flatnonzero(scored)[-cfg.window :]
    intervals = ((served.stats.get("forecasts") or {}).get("intervals") or {}).get("models", {})
    live = (intervals.get(cfg.kind) or {}).get("coverage") or {}
    width = (served.upper - served.lower)[scored] / np.maximum(served.latency[scored], 1e-9)
    return {
        "adapt": adapt,
        "labels": int(scored.sum()),
        "coverage_whole": round(float(hit[scored].mean()), 4),
        "coverage_after_shift": round(float(hit[after].mean()), 4),
        "coverage_end": round(float(hit[end].mean()), 4),
        "live_coverage_stats": live.get("latency_ms"),  # what GET /v1/stats says of the same labels
        "median_relative_width": round(float(np.median(width)), 4),
        "seconds": round(served.seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    d = CoverageConfig()
    p = argparse.ArgumentParser(prog="python -m tools.coverage", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=d.steps, help=f"contexts streamed (default {d.steps})")
    p.add_argument("--window", type=int, default=d.window, help=f"labels at the end (default {d.window})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the route (default {d.seed})")
    p.add_argument("--latency-factor", type=float, default=d.latency_factor)
    p.add_argument("--interval-factor", type=float, default=d.interval_factor)
    p.add_argument("--model", default=d.kind, choices=("lstm", "transformer", "hybrid"))
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    cfg = CoverageConfig(
        steps=args.steps,
        window=args.window,
        seed=args.seed,
        latency_factor=args.latency_factor,
        interval_factor=args.interval_factor,
        kind=args.model,
    )
    results = [measure(cfg, adapt) for adapt in (True, False)]
    for r in results:
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if TARGET[0] <= results[0]["coverage_end"] <= TARGET[1] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
