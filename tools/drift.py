"""Drift evaluation: routes whose dynamics change, streamed through the running service's ingest.

``python -m tools.drift``, also ``cpe evaluate --drift``.

Each scenario (``models.drift_scenarios``: a lead-lag between queue depth and latency that appears, a new
utilization-latency curve, a new periodic congestion pattern) is one route whose dynamics change at
``shift_at``. Its contexts go through the real app, in process (its lifespan, engine, continuous
prediction, learner thread and all), one ``POST /v1/observe`` each, and nothing else: no
``/v1/predict``, no ``/v1/feedback``. The service forecasts the flow after every observation, scores the
previous forecast when the next observation arrives and hands the pair to what learns (free labels).
What the service served for each next context is read from its forecast store (what
``GET /v1/flows/{flow_key}`` answers).

Approaches (``--approach``), each in a fresh service:

- ``learner``: the online learner fine-tunes a copy of the model on the free labels; the rollout rule
  (``app.learning.rollout``) promotes a copy only when it beats the serving version and the baselines on
  held-back labels;
- ``residual``: a small linear correction per flow, learnt online from the same labels and served only
  while it measures better than the model alone on the flow's recent labels (``app.learning.residual``);
- ``both``: the two together.

The same windows are also forecast offline by the frozen shipped model (the same checkpoint, never
updated). Reported per scenario and approach: the online over frozen latency MAE over the last
``window`` labels (target <= 0.75 within ``post`` <= 2,000 labels after the shift), the worst online over
frozen ratio of any rolling ``window`` over the whole run (target <= 1.02: the online service is never
more than 2 % worse), and the live coverage of the served 90 % interval (target 0.88-0.92).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.checkpoint import CHECKPOINT_DIR
from models.drift_scenarios import SCENARIOS, generate
from models.predictor import Predictor

FLOW_KEY = "d1" * 32
APPROACHES = ("learner", "residual", "both")
START_MS = 1_767_225_600_000


@dataclass
class DriftConfig:
    pre: int = 500  # labels before the dynamics change
    post: int = 2000  # and after it
    window: int = 200  # labels in each rolling MAE
    seed: int = 7
    kind: str = "lstm"
    scenarios: tuple[str, ...] = SCENARIOS
    approaches: tuple[str, ...] = APPROACHES
    out: str | None = "out/drift.png"  # the plot (PNG); None: no plot
    json_out: str | None = None
    learning: dict[str, Any] = field(default_factory=dict)  # settings of the service (CPE_* names)


# a learner that acts on a few hundred labels, as a deployment's would over its first hours
DEFAULT_LEARNING: dict[str, Any] = {
    "learning_min_samples": 128,
    "replay_validation": 128,
    "learning_eval_steps": 50,
    "learning_steps_per_s": 100.0,
}
APPROACH_SETTINGS: dict[str, dict[str, Any]] = {
    "learner": {"learning_enabled": True, "residual_adapt": False},
    "residual": {"learning_enabled": False, "residual_adapt": True},
    "both": {"learning_enabled": True, "residual_adapt": True},
}


@dataclass
class Served:
    """What the service served for every next context (NaN before its first forecast)."""

    latency: np.ndarray  # (n,) forecast latency_ms for context i
    lower: np.ndarray  # (n,) its 90 % interval
    upper: np.ndarray
    stats: dict[str, Any]  # GET /v1/stats at the end
    seconds: float


def stream_through_observe(ts: np.ndarray, fs: np.ndarray, settings: dict[str, Any]) -> Served:
    """POST every context to /v1/observe in order; after each, read the flow's newest forecast."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.services import Services
    from app.settings import Settings

    config = Settings(
        _env_file=None,  # type: ignore[call-arg]
        device="cpu",
        cache_url="memory://",
        bus_url="memory://",
        learning_url="memory://",
        predict_on_observe=True,
        free_labels_per_s=1_000_000.0,  # every label goes on: one flow gives one a step
        **settings,
    )
    n = len(fs)
    latency, lower, upper = (np.full(n, np.nan) for _ in range(3))
    start = time.monotonic()
    with TestClient(create_app(config)) as client:
        forecasts = Services.of(client.app).forecasts
        assert forecasts is not None, "the drift run needs CPE_PREDICT_ON_OBSERVE"
        portal = client.portal
        assert portal is not None, "the test client runs the app's event loop in its portal"
        for i in range(n):
            context = {"flow_key": FLOW_KEY, "timestamp": int(ts[i]), "features": fs[i].tolist()}
            answer = client.post("/v1/observe", json={"observations": [{"Context": context}]})
            assert answer.status_code == 202, answer.text
            portal.call(forecasts.continuous.idle)
            if i + 1 < n:
                result, _ = portal.call(forecasts.flow, FLOW_KEY)
                if result is not None:
                    latency[i + 1] = result["predicted_context"][0]
                    lower[i + 1], upper[i + 1] = result["lower"][0], result["upper"][0]
        learning = Services.of(client.app).learning
        if learning is not None:  # the last labels may still be on their way to the learner
            deadline = time.monotonic() + 5.0
            while learning.learner.stats["samples"] < n - 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        stats = client.get("/v1/stats").json()
        if learning is not None:
            stats["learner"] = dict(learning.learner.stats)
    return Served(latency, lower, upper, stats, time.monotonic() - start)


def frozen_forecasts(predictor: Predictor, ts: np.ndarray, fs: np.ndarray, first: int) -> np.ndarray:
    """The frozen model's next-step latency forecast for contexts first..n-1, from the same windows."""
    n, t = len(fs), predictor.seq_len
    out = np.full(n, np.nan)
    for a in range(first, n, 512):
        ends = range(a, min(n, a + 512))
        windows_ts = [ts[max(0, e - t) : e] for e in ends]
        windows_fs = [fs[max(0, e - t) : e] for e in ends]
        out[a : a + len(windows_ts)] = predictor.predict(windows_ts, windows_fs, 1).mean[:, 0, 0]
    return out


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    return np.convolve(values, np.ones(window) / window, mode="valid")


def figures_of(
    served: Served, frozen: np.ndarray, actual: np.ndarray, first: int, shift_at: int, window: int
) -> dict[str, Any]:
    """The targets' figures for one run; labels counted from ``first`` (the first scored forecast)."""
    online_err = np.abs(served.latency[first:] - actual[first:])
    frozen_err = np.abs(frozen[first:] - actual[first:])
    ratio = rolling_mean(online_err, window) / rolling_mean(frozen_err, window)
    end = slice(len(online_err) - window, len(online_err))
    hit = (served.lower[first:] <= actual[first:]) & (actual[first:] <= served.upper[first:])
    post = slice(shift_at - first, len(online_err))
    end_ratio = float(online_err[end].mean() / frozen_err[end].mean())
    worst = float(ratio.max())
    return {
        "labels": len(online_err),
        "labels_after_shift": len(online_err) - (shift_at - first),
        "mae_ms": {
            "frozen_end": round(float(frozen_err[end].mean()), 4),
            "online_end": round(float(online_err[end].mean()), 4),
            "frozen_after_shift": round(float(frozen_err[post].mean()), 4),
            "online_after_shift": round(float(online_err[post].mean()), 4),
        },
        "end_online_over_frozen": round(end_ratio, 4),
        "worst_rolling_online_over_frozen": round(worst, 4),
        "worst_at_label": int(ratio.argmax()) + window,
        "coverage_end": round(float(hit[end].mean()), 4),
        "coverage_after_shift": round(float(hit[post].mean()), 4),
        "coverage_whole": round(float(hit.mean()), 4),
        "targets": {
            "end_met": end_ratio <= 0.75,
            "safe_met": worst <= 1.02,
            "coverage_met": 0.88 <= float(hit[post].mean()) <= 0.92,
        },
        "curve": ratio,
    }


def run(cfg: DriftConfig) -> dict[str, Any]:
    """Every scenario under every approach; prints the table, saves the plot, returns the figures."""
    if cfg.out:
        _require_matplotlib()  # before the replay, not after minutes of it
    predictor = Predictor.load(CHECKPOINT_DIR / f"{cfg.kind}.safetensors")
    seq_len = predictor.seq_len
    first = seq_len  # the first forecast scored: a full window behind it
    n = first + cfg.pre + cfg.post
    shift_at = first + cfg.pre
    results: dict[str, Any] = {}
    curves: dict[tuple[str, str], np.ndarray] = {}
    for name in cfg.scenarios:
        scenario = generate(name, n, shift_at, seed=cfg.seed)
        ts, fs = scenario.trace.timestamps_ms, scenario.trace.features.astype(np.float64)
        actual = fs[:, 0]
        frozen = frozen_forecasts(predictor, ts, fs, first)
        results[name] = {}
        for approach in cfg.approaches:
            settings = (
                {"models": (cfg.kind,), "model": cfg.kind, "max_window": max(seq_len, 1)}
                | DEFAULT_LEARNING
                | APPROACH_SETTINGS[approach]
                | cfg.learning
            )
            served = stream_through_observe(ts, fs, settings)
            figures = figures_of(served, frozen, actual, first, shift_at, cfg.window)
            curves[(name, approach)] = figures.pop("curve")
            forecasts_stats = served.stats.get("forecasts") or {}
            intervals = (forecasts_stats.get("intervals") or {}).get("models", {}).get(cfg.kind, {})
            figures["live_coverage_latency"] = (intervals.get("coverage") or {}).get("latency_ms")
            figures["learner"] = served.stats.get("learner")
            figures["seconds"] = round(served.seconds, 1)
            results[name][approach] = figures
            print(_row(name, approach, figures), "worst at", figures["worst_at_label"], flush=True)
    out = {
        "config": {
            "pre": cfg.pre,
            "post": cfg.post,
            "window": cfg.window,
            "seed": cfg.seed,
            "model": cfg.kind,
        },
        "results": results,
    }
    if cfg.out:
        _plot(cfg, curves)
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps(out, indent=2))
    return out


HEADER = (
    f"{'scenario':>10s} {'approach':>9s}  {'frozen MAE':>10s} {'online MAE':>10s}  {'end ratio':>9s} "
    f"{'worst roll':>10s}  {'coverage':>8s}  targets (end <= 0.75, worst <= 1.02, coverage 0.88-0.92)"
)


def _row(name: str, approach: str, f: dict[str, Any]) -> str:
    t = f["targets"]
    verdict = " ".join("PASS" if t[k] else "FAIL" for k in ("end_met", "safe_met", "coverage_met"))
    return (
        f"{name:>10s} {approach:>9s}  {f['mae_ms']['frozen_end']:10.3f} {f['mae_ms']['online_end']:10.3f}  "
        f"{f['end_online_over_frozen']:9.3f} {f['worst_rolling_online_over_frozen']:10.3f}  "
        f"{f['coverage_after_shift']:8.3f}  {verdict}  ({f['seconds']} s)"
    )


def _plot(cfg: DriftConfig, curves: dict[tuple[str, str], np.ndarray]) -> None:
    import matplotlib

    assert cfg.out, "no plot asked for"
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cfg.scenarios), 1, figsize=(10, 3 * len(cfg.scenarios)), squeeze=False)
    for ax, name in zip(axes[:, 0], cfg.scenarios, strict=True):
        for approach in cfg.approaches:
            curve = curves[(name, approach)]
            ax.plot(np.arange(len(curve)) + cfg.window, curve, label=approach)
        ax.axvline(cfg.pre, color="grey", linestyle="--", linewidth=1)
        for level, style in ((1.02, ":"), (0.75, "-.")):
            ax.axhline(level, color="black", linestyle=style, linewidth=0.8)
        ax.set_title(f"{name}: dynamics change at label {cfg.pre}")
        ax.set_ylabel(f"online / frozen MAE\n(rolling {cfg.window})")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    axes[-1, 0].set_xlabel("labels (observations scored)")
    fig.tight_layout()
    fig.savefig(cfg.out, dpi=110)
    plt.close(fig)


class MissingExtra(RuntimeError):
    """An optional dependency that this run needs is not installed."""


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise MissingExtra(
            "the drift plot needs matplotlib, an optional extra: pip install -e '.[plots]' "
            "(or pass --no-plot)"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    d = DriftConfig()
    p = argparse.ArgumentParser(prog="python -m tools.drift", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=d.kind, choices=("lstm", "transformer", "hybrid"), help="the model that serves"
    )
    p.add_argument("--pre", type=int, default=d.pre, help=f"labels before the change (default {d.pre})")
    p.add_argument("--post", type=int, default=d.post, help=f"labels after the change (default {d.post})")
    p.add_argument(
        "--window", type=int, default=d.window, help=f"labels per rolling MAE (default {d.window})"
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the routes (default {d.seed})")
    p.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="a scenario to run (repeatable; default all)"
    )
    p.add_argument(
        "--approach", action="append", choices=APPROACHES, help="an approach to run (repeatable; default all)"
    )
    p.add_argument("--plot", default=d.out, help=f"where to save the plot, a PNG (default {d.out})")
    p.add_argument(
        "--no-plot", dest="plot", action="store_const", const=None, help="no plot (no matplotlib needed)"
    )
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument(
        "--learning-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the service, e.g. learning_layers=all or residual_margin=0.05 (repeatable)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return p


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--learning-setting takes NAME=VALUE (a Settings field), got {text!r}")
    return name.strip().lower().removeprefix("cpe_"), value.strip()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = DriftConfig(
        pre=args.pre,
        post=args.post,
        window=args.window,
        seed=args.seed,
        kind=args.model,
        scenarios=tuple(args.scenario or SCENARIOS),
        approaches=tuple(args.approach or APPROACHES),
        out=args.plot,
        json_out=args.json,
        learning=dict(_setting(text) for text in args.learning_setting),
    )
    if cfg.window > cfg.pre + cfg.post:
        raise SystemExit(f"--window ({cfg.window}) must not exceed --pre + --post ({cfg.pre + cfg.post})")
    print(HEADER, flush=True)
    try:
        figures = run(cfg)
    except MissingExtra as exc:
        print(f"drift: {exc}", file=sys.stderr)
        return 2
    met = all(all(f["targets"].values()) for by in figures["results"].values() for f in by.values())
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
