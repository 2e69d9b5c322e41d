"""Drift evaluation: a regime shift replayed through the running service.

``python -m tools.drift``, also ``cpe evaluate --drift``.

One synthetic route is sampled with a deterministic regime shift (``models.traces.generate_trace``:
from ``shift_at`` on, its base latency doubles and its daily phase moves 6 hours). Its contexts are
replayed in order through the real app, in process (its lifespan, engine, learner thread and all): for
each step, ``POST /v1/predict`` with the last ``seq_len`` contexts, then ``POST /v1/feedback`` with the
prediction's id and the context that really came next. The learner trains and rolls out versions as it
would in production, concurrently with the replay.

The same windows are also forecast by the frozen shipped model (the same checkpoint, never updated),
persistence and EWMA (its best alpha on the whole trace: the strongest form of the baseline). Reported:
the rolling next-step latency MAE of each, in ms and relative to the mean latency of the same samples
(the shift doubles latency, and with it every forecaster's error in ms: the relative MAE is what can
"return to its pre-shift level"). Targets, checked on both: after the shift the online
MAE comes back within 20 % of its pre-shift level within 2,000 feedback samples, and over the last
``window`` samples it is at least 25 % below the frozen model's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import baselines
from models.checkpoint import CHECKPOINT_DIR
from models.evaluation import EWMA_ALPHAS
from models.predictor import Predictor
from models.traces import generate_trace, sample_profile

FLOW_KEY = "d1" * 32
METHODS = ("frozen", "online", "persistence", "ewma")


@dataclass
class DriftConfig:
    pre: int = 1500  # feedback samples before the shift
    post: int = 2500  # and after it
    window: int = 250  # samples in each rolling MAE
    seed: int = 7
    kind: str = "lstm"
    latency_factor: float = 2.0
    phase_hours: float = 6.0
    out: str | None = "out/drift.png"  # the plot (PNG); None: no plot
    json_out: str | None = None
    learning: dict[str, Any] | None = None  # settings of the service's learner (CPE_LEARNING_* names)


# a learner that acts on a few hundred samples, as a deployment's would over its first hours
DEFAULT_LEARNING: dict[str, Any] = {
    "learning_min_samples": 128,
    "replay_validation": 128,
    "learning_eval_steps": 50,
    "learning_steps_per_s": 100.0,
}


def replay_through_service(cfg: DriftConfig, ts: np.ndarray, fs: np.ndarray, seq_len: int) -> dict[str, Any]:
    """Predict then give feedback for every step, through the app; the online forecasts and versions."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.services import Services
    from app.settings import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        device="cpu",
        models=(cfg.kind,),
        model=cfg.kind,
        learning_enabled=True,
        learning_url="memory://",
        cache_url="memory://",
        bus_url="memory://",
        max_window=max(seq_len, 1),
        **(DEFAULT_LEARNING | (cfg.learning or {})),
    )
    n = len(fs)
    online = np.full(n, np.nan)
    versions: list[str] = [""] * n
    start = time.monotonic()
    with TestClient(create_app(settings)) as client:
        for t in range(seq_len, n):
            window = [{"timestamp": int(ts[i]), "features": fs[i].tolist()} for i in range(t - seq_len, t)]
            result = client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": window}).json()
            online[t] = result["predicted_context"][0]
            versions[t] = result["model_version"]
            actual = {"timestamp": int(ts[t]), "features": fs[t].tolist()}
            response = client.post(
                "/v1/feedback", json={"prediction_id": result["prediction_id"], "actual": actual}
            )
            if response.status_code == 429:  # the learner is behind: wait as a client would, then resend
                time.sleep(float(response.headers.get("retry-after", "1")))
                response = client.post(
                    "/v1/feedback", json={"prediction_id": result["prediction_id"], "actual": actual}
                )
            assert response.status_code == 202, response.text
        learning = Services.of(client.app).learning
        assert learning is not None, "the drift run needs CPE_LEARNING_ENABLED"
        learner = learning.learner
        deadline = time.monotonic() + 10.0  # the last samples may still be on their way to the replay buffer
        while learner.stats["samples"] < n - seq_len and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = dict(learner.stats)
        history = client.get("/v1/models").json()["models"][0]["history"]
    return {
        "online": online,
        "versions": versions,
        "stats": stats,
        "history": history,
        "seconds": time.monotonic() - start,
    }


def rolling(errors: np.ndarray, scale: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Rolling MAE (ms) and relative MAE (MAE / mean actual latency) over the last ``window`` samples."""
    kernel = np.ones(window) / window
    mae = np.convolve(errors, kernel, mode="valid")
    level = np.convolve(scale, kernel, mode="valid")
    return mae, mae / level


def run(cfg: DriftConfig) -> dict[str, Any]:
    """The whole evaluation; prints the table, saves the plot, returns the figures."""
    if cfg.out:
        _require_matplotlib()  # before the replay, not after minutes of it
    predictor = Predictor.load(CHECKPOINT_DIR / f"{cfg.kind}.safetensors")
    seq_len = predictor.seq_len
    rng = np.random.default_rng(cfg.seed)
    profile = sample_profile(rng, "train")
    n = seq_len + cfg.pre + cfg.post
    shift_at = seq_len + cfg.pre
    trace = generate_trace(
        profile,
        n,
        seed=cfg.seed,
        route_id="drift",
        shift_at=shift_at,
        shift_latency_factor=cfg.latency_factor,
        shift_phase_hours=cfg.phase_hours,
    )
    ts, fs = trace.timestamps_ms, trace.features.astype(np.float64)

    served = replay_through_service(cfg, ts, fs, seq_len)

    # the same windows, forecast offline by the frozen model and the baselines
    ends = np.arange(seq_len, n)
    win_ts = np.stack([ts[e - seq_len : e] for e in ends])
    win_fs = np.stack([fs[e - seq_len : e] for e in ends])
    frozen = np.concatenate(
        [
            predictor.predict(list(win_ts[i : i + 512]), list(win_fs[i : i + 512])).mean[:, 0, 0]
            for i in range(0, len(ends), 512)
        ]
    )
    actual = fs[ends, 0]
    ewma_by_alpha = {a: baselines.ewma(win_ts, win_fs, a)[:, 0] for a in EWMA_ALPHAS}
    alpha = min(ewma_by_alpha, key=lambda a: float(np.abs(ewma_by_alpha[a] - actual).mean()))
    forecasts = {
        "frozen": frozen,
        "online": served["online"][ends],
        "persistence": baselines.persistence(win_ts, win_fs)[:, 0],
        "ewma": ewma_by_alpha[alpha],
    }
    errors = {m: np.abs(f - actual) for m, f in forecasts.items()}
    curves = {m: rolling(e, actual, cfg.window) for m, e in errors.items()}
    # curve index j covers samples j .. j + window - 1 (sample i = feedback i, 0-based, after seq_len)
    shift = cfg.pre
    figures = _figures(cfg, errors, actual, curves, shift)
    figures.update(
        ewma_alpha=alpha,
        replay_seconds=round(served["seconds"], 1),
        learner=served["stats"],
        versions_rolled_out=sum(1 for h in served["history"] if h["source"] == "online"),
        profile={
            "base_latency_ms": round(profile.base_latency_ms, 2),
            "interval_s": round(profile.interval_s, 1),
        },
    )
    print(_table(cfg, curves, figures), flush=True)
    if cfg.out:
        _plot(cfg, curves, shift, figures)
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps(figures, indent=2))
    return figures


def _figures(
    cfg: DriftConfig,
    errors: dict[str, np.ndarray],
    actual: np.ndarray,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    shift: int,
) -> dict[str, Any]:
    w = cfg.window
    # the level before the shift: the whole pre-shift span (one window of it would be at the mercy of a
    # single burst or congestion episode, which the traces have a few times a day)
    pre = slice(0, shift)
    end = slice(len(actual) - w, len(actual))  # the last window of the trace

    def mae(method: str, part: slice) -> tuple[float, float]:
        e = errors[method][part]
        return float(e.mean()), float(e.mean() / actual[part].mean())

    out: dict[str, Any] = {"pre_shift": {}, "end": {}, "targets": {}}
    for m in METHODS:
        out["pre_shift"][m] = dict(zip(("mae_ms", "relative"), mae(m, pre), strict=True))
        out["end"][m] = dict(zip(("mae_ms", "relative"), mae(m, end), strict=True))
    for unit, k in (("ms", 0), ("relative", 1)):
        level = out["pre_shift"]["online"]["mae_ms" if k == 0 else "relative"]  # the pre-shift mean
        curve = curves["online"][k]
        # first fully post-shift window whose MAE is within 20 % of the pre-shift level
        first = next((j for j in range(shift, len(curve)) if curve[j] <= 1.2 * level), None)
        recovered_after = None if first is None else first + w - shift  # feedback samples after the shift
        key = "mae_ms" if k == 0 else "relative"
        ratio = out["end"]["online"][key] / out["end"]["frozen"][key]
        out["targets"][unit] = {
            "recovered_within_samples": recovered_after,
            "recovery_met": recovered_after is not None and recovered_after <= 2000,
            "end_online_over_frozen": round(ratio, 4),
            "end_met": ratio <= 0.75,
        }
    return out


def _table(
    cfg: DriftConfig, curves: dict[str, tuple[np.ndarray, np.ndarray]], figures: dict[str, Any]
) -> str:
    w = cfg.window
    lines = [
        f"drift: {cfg.pre} samples, then base latency x{cfg.latency_factor} and daily phase "
        f"+{cfg.phase_hours} h, then {cfg.post} samples; rolling MAE over {w} samples",
        f"{'samples':>16s}  " + "  ".join(f"{m:>18s}" for m in METHODS),
        f"{'':>16s}  " + "  ".join(f"{'ms':>9s} {'rel':>8s}" for _ in METHODS),
    ]
    n = len(curves["online"][0])
    for j in range(0, n, w):
        cells = "  ".join(f"{curves[m][0][j]:9.3f} {curves[m][1][j]:8.4f}" for m in METHODS)
        marker = "  <- shift inside" if j < cfg.pre < j + w else ""
        lines.append(f"{j:>7d}..{j + w - 1:<7d}  {cells}{marker}")
    for unit, t in figures["targets"].items():
        lines.append(
            f"target ({unit}): back within 20 % of the pre-shift MAE after "
            f"{t['recovered_within_samples']} samples (<= 2000: {'PASS' if t['recovery_met'] else 'FAIL'}); "
            f"end MAE online / frozen {t['end_online_over_frozen']:.3f} (<= 0.75: "
            f"{'PASS' if t['end_met'] else 'FAIL'})"
        )
    lines.append(
        f"learner: {figures['learner']}; versions rolled out {figures['versions_rolled_out']}; "
        f"replay took {figures['replay_seconds']} s; EWMA alpha {figures['ewma_alpha']}; "
        f"plot {cfg.out or 'none'}"
    )
    return "\n".join(lines)


def _plot(
    cfg: DriftConfig, curves: dict[str, tuple[np.ndarray, np.ndarray]], shift: int, figures: dict[str, Any]
) -> None:
    import matplotlib

    assert cfg.out, "no plot asked for"
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    x = np.arange(len(curves["online"][0])) + cfg.window  # the sample each window ends at
    for m in METHODS:
        for k, ax in enumerate(axes):
            ax.plot(x, curves[m][k], label=m, linewidth=1.8 if m == "online" else 1.0)
    for ax, label in zip(axes, ("latency MAE (ms)", "MAE / mean latency"), strict=True):
        ax.axvline(shift, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[0].set_title(
        f"regime shift at sample {shift}: base latency x{cfg.latency_factor}, phase +{cfg.phase_hours} h "
        f"(rolling {cfg.window})"
    )
    axes[1].set_xlabel("feedback samples")
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
        "--model", default=d.kind, choices=("lstm", "transformer", "hybrid"), help="the model that learns"
    )
    p.add_argument(
        "--pre", type=int, default=d.pre, help=f"feedback samples before the shift (default {d.pre})"
    )
    p.add_argument(
        "--post", type=int, default=d.post, help=f"feedback samples after the shift (default {d.post})"
    )
    p.add_argument(
        "--window", type=int, default=d.window, help=f"samples per rolling MAE (default {d.window})"
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help=f"seed of the route and its trace (default {d.seed})"
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
        help="a setting of the service's learner, e.g. learning_layers=all (repeatable)",
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
        out=args.plot,
        json_out=args.json,
        learning=dict(_setting(text) for text in args.learning_setting),
    )
    try:
        figures = run(cfg)
    except MissingExtra as exc:
        print(f"drift: {exc}", file=sys.stderr)
        return 2
    met = all(t["recovery_met"] and t["end_met"] for t in figures["targets"].values())
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
