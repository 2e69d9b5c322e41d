"""How far a forecaster can get on the generator: ``python -m tools.bounds [--seed 1000 2000 3000]``.

`cpe evaluate` asks for next-step latency MAE <= 0.85 x persistence and for route choices that close half
the gap from persistence to an oracle that knows the true next latency. Both are bounded by what the next
sample brings that no window holds: its own probe noise (MAE) and its own change (a level step, a
failover, a burst's onset). This tool measures, on the test sets of `cpe evaluate` (the unseen sets, and
the routing groups), forecasters that read more than any model can:

- ``noise-free present``: the last sample's true latency (``Trace.clean``), without its probe noise, held;
- ``clean-history AR``: the last true latency moved by a linear (least absolute deviation) regression on
  the last 8 true latencies and the last spacing, fitted on other unseen routes (seed 7): what the clean
  past says about the next change;
- ``clean-history MLP`` (``--mlp``, a minute more): the same with a small network on the last 8 true
  values of every feature, the last spacing and utilization, fitted by L1 on 64 other unseen routes;

beside the baselines that read the noisy past (persistence, EWMA at its best alpha on the set, the Kalman
filter of ``models.baselines`` tuned on the training split). A forecaster from the noisy windows has less
to go on than either reference, so their figures are about the best any model can reach.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from models import baselines
from models import evaluation as ev
from models.traces import generate_routes

T = 32  # the shipped models' window
AR_LAGS = 8


def _ar_features(clean: np.ndarray, timestamps: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(E, AR_LAGS + 2): the last true log latency's changes over 1..8 samples, the last log spacing, 1."""
    c = np.log(clean[:, 0].astype(np.float64))
    dt = np.diff(timestamps) / 1000.0
    lags = np.stack([c[ends - 1] - c[ends - 1 - k] for k in range(1, AR_LAGS + 1)], axis=1)
    spacing = np.log(dt[ends - 2] / np.median(dt))[:, None]
    return np.concatenate([lags, spacing, np.ones((len(ends), 1))], axis=1)


def fit_clean_ar(seed: int = 7, n_routes: int = 48) -> np.ndarray:
    """Weights of the clean-history regression: log(next measured / last true) on ``_ar_features``."""
    xs, ys = [], []
    for tr in generate_routes(seed, n_routes, 1200, split="unseen"):
        ends = np.arange(T, len(tr))
        xs.append(_ar_features(tr.clean, tr.timestamps_ms, ends))
        ys.append(np.log(tr.features[ends, 0].astype(np.float64) / tr.clean[ends - 1, 0]))
    x, y = np.concatenate(xs), np.concatenate(ys)
    w = np.linalg.lstsq(x, y, rcond=None)[0]
    for _ in range(10):  # least absolute deviations by reweighting: the median is what MAE rewards
        r = np.sqrt(np.abs(x @ w - y) + 1e-3)
        w = np.linalg.lstsq(x / r[:, None], y / r, rcond=None)[0]
    return w


def _clean_ar(tr: object, ends: np.ndarray, w: np.ndarray) -> np.ndarray:
    clean, ts = tr.clean, tr.timestamps_ms  # type: ignore[attr-defined]
    return clean[ends - 1, 0] * np.exp(_ar_features(clean, ts, ends) @ w)


def _mlp_features(tr: Any, ends: np.ndarray) -> np.ndarray:
    """The last true values of every feature, as log changes over 1..7 samples, the others' last log
    values, the last spacing over the route's interval, the last true utilization."""
    c = np.log(np.maximum(tr.clean.astype(np.float64), 1e-9))
    dt = np.log(np.diff(tr.timestamps_ms) / 1000.0 / tr.profile.interval_s)
    lags = np.stack([c[ends - 1 - k] - c[ends - 1] for k in range(1, AR_LAGS)], axis=1)
    utilization = np.clip(tr.clean[ends - 1, 4:5], 0.0, 1.0)
    return np.concatenate(
        [lags.reshape(len(ends), -1), c[ends - 1, 2:], dt[ends - 2, None], utilization], axis=1
    )


def fit_clean_mlp(
    seed: int = 7, n_routes: int = 64, epochs: int = 8
) -> Callable[[Any, np.ndarray], np.ndarray]:
    """A forecaster from the clean past: log(next measured / last true) by a 2-layer MLP, L1 loss."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    xs, ys = [], []
    for tr in generate_routes(seed, n_routes, 1200, split="unseen"):
        ends = np.arange(T, len(tr))
        xs.append(_mlp_features(tr, ends))
        ys.append(np.log(tr.features[ends, 0] / tr.clean[ends - 1, 0]))
    x = torch.tensor(np.concatenate(xs), dtype=torch.float32)
    y = torch.tensor(np.concatenate(ys), dtype=torch.float32)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 1),
    )
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 512):
            idx = order[i : i + 512]
            loss = (net((x[idx] - mu) / sd)[:, 0] - y[idx]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def forecast(tr: Any, ends: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z = (torch.tensor(_mlp_features(tr, ends), dtype=torch.float32) - mu) / sd
            return tr.clean[ends - 1, 0] * np.exp(net(z)[:, 0].numpy())

    return forecast


def mae_bounds(seed: int, w: np.ndarray, level_changes: float, mlp: Any = None) -> dict[str, float]:
    """Next-step latency MAE over persistence's on `cpe evaluate`'s unseen set at ``seed``."""
    traces = generate_routes(seed + 2, 24, 1200, split="unseen", level_changes=level_changes)
    ts, fs, nxt, f_ar, clean, f_mlp = [], [], [], [], [], []
    for tr in traces:
        ends = np.arange(T, len(tr), 3)
        if mlp is not None:
            f_mlp.append(mlp(tr, ends))
        ts += [tr.timestamps_ms[e - T : e] for e in ends]
        fs += [tr.features[e - T : e, :1] for e in ends]
        nxt.append(tr.features[ends, 0])
        clean.append(tr.clean[ends - 1, 0])
        f_ar.append(_clean_ar(tr, ends, w))
    t, f = np.stack(ts), np.stack(fs).astype(np.float64)
    actual = np.concatenate(nxt).astype(np.float64)

    def mae(forecast: np.ndarray) -> float:
        return float(np.abs(forecast - actual).mean())

    persistence = mae(f[:, -1, 0])
    out = {
        "ewma": min(mae(baselines.ewma(t, f, a)[:, 0]) for a in ev.EWMA_ALPHAS) / persistence,
        "kalman": mae(baselines.kalman(t, f)[:, 0]) / persistence,
        "noise-free present": mae(np.concatenate(clean)) / persistence,
        "clean-history AR": mae(np.concatenate(f_ar)) / persistence,
    }
    if mlp is not None:
        out["clean-history MLP"] = mae(np.concatenate(f_mlp)) / persistence
    return out


def routing_bounds(seed: int, w: np.ndarray, mlp: Any = None) -> dict[str, dict[str, float]]:
    """Route choice on `cpe evaluate`'s routing groups at ``seed``: accuracy, regret, gap closed."""
    groups = ev.routing_groups(n_groups=24, n_steps=600, seed=seed)
    ends = np.arange(T, min(len(tr) for g in groups for tr in g), 2)

    def per_route(f: object) -> np.ndarray:
        return np.stack([np.stack([f(tr) for tr in g], axis=1) for g in groups])  # type: ignore[operator]

    def windows(tr: object) -> tuple[np.ndarray, np.ndarray]:
        t, x = tr.timestamps_ms, tr.features  # type: ignore[attr-defined]
        return (
            np.stack([t[e - T : e] for e in ends]),
            np.stack([x[e - T : e, :1] for e in ends]).astype(np.float64),
        )

    truth = per_route(lambda tr: tr.clean[ends, 0].astype(np.float64))
    forecasts = {
        "persistence": per_route(lambda tr: tr.features[ends - 1, 0].astype(np.float64)),
        "ewma": min(
            (per_route(lambda tr, a=a: baselines.ewma(*windows(tr), a)[:, 0]) for a in ev.EWMA_ALPHAS),
            key=lambda f: ev._choice(f, truth)[1],
        ),
        "kalman": per_route(lambda tr: baselines.kalman(*windows(tr))[:, 0]),
        "noise-free present": per_route(lambda tr: tr.clean[ends - 1, 0].astype(np.float64)),
        "clean-history AR": per_route(lambda tr: _clean_ar(tr, ends, w)),
    }
    if mlp is not None:
        forecasts["clean-history MLP"] = per_route(lambda tr: mlp(tr, ends))
    pa, pr = ev._choice(forecasts["persistence"], truth)
    out = {}
    for name, f in forecasts.items():
        acc, regret = ev._choice(f, truth)
        out[name] = {
            "accuracy": acc,
            "regret": regret,
            "accuracy_gap_closed": (acc - pa) / max(1.0 - pa, 1e-12),
            "regret_gap_closed": (pr - regret) / max(pr, 1e-12),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bounds", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, nargs="+", default=[1000, 2000, 3000], help="cpe evaluate's seeds")
    p.add_argument("--mlp", action="store_true", help="also the clean-history MLP (a minute more)")
    args = p.parse_args(argv)
    w = fit_clean_ar()
    mlp = fit_clean_mlp() if args.mlp else None
    for seed in args.seed:
        for level_changes, name in ((1.0, "unseen scales"), (0.0, "unseen, no level changes")):
            m = mae_bounds(seed, w, level_changes, mlp)
            print(
                f"seed {seed} {name}: latency MAE / persistence  "
                + "  ".join(f"{k} {v:.3f}" for k, v in m.items()),
                flush=True,
            )
        for k, v in routing_bounds(seed, w, mlp).items():
            print(
                f"seed {seed} routing {k:20s} accuracy {v['accuracy']:.3f}  regret {v['regret']:.4f}  "
                f"gap closed: accuracy {v['accuracy_gap_closed']:+.2f}, regret {v['regret_gap_closed']:+.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
