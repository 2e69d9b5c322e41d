"""Evaluation of a predictor against the baselines, on data the training never saw.

Every figure is for the next step (the first forecast step) of full-length windows cut from each test
trace at a fixed stride: per-feature MAE, latency MAE as a ratio to persistence, EWMA (its best alpha
on that very test set, the strongest form of the baseline) and peak-EWMA, the coverage of the central
interval, and the expected calibration error of ``confidence``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models import baselines
from models.calibration import expected_calibration_error
from models.predictor import Predictor
from models.scaling import FEATURE_NAMES

EWMA_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class TestSet:
    name: str
    traces: list[Any]  # models.traces.Trace


def standard_test_sets(n_routes: int = 24, n_steps: int = 1200, seed: int = 1000) -> list[TestSet]:
    """Held-out data: the training distribution under other seeds, and scales it never saw."""
    from models.traces import generate_routes

    return [
        TestSet("other seeds", generate_routes(seed + 1, n_routes, n_steps, split="train")),
        TestSet("unseen scales", generate_routes(seed + 2, n_routes, n_steps, split="unseen")),
    ]


def _windows(traces: list[Any], seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts, fs, nxt = [], [], []
    for tr in traces:
        for end in range(seq_len, len(tr.features), stride):
            ts.append(tr.timestamps_ms[end - seq_len : end])
            fs.append(tr.features[end - seq_len : end])
            nxt.append(tr.features[end])
    return np.stack(ts), np.stack(fs).astype(np.float64), np.stack(nxt).astype(np.float64)


def evaluate(predictor: Predictor, traces: list[Any], stride: int = 3, batch: int = 1024) -> dict[str, Any]:
    """Next-step figures of one predictor on one set of traces."""
    ts, fs, actual = _windows(traces, predictor.seq_len, stride)
    means, lowers, uppers, confs = [], [], [], []
    for i in range(0, len(ts), batch):
        f = predictor.predict(list(ts[i : i + batch]), list(fs[i : i + batch]))
        means.append(f.mean[:, 0])
        lowers.append(f.lower[:, 0])
        uppers.append(f.upper[:, 0])
        confs.append(f.confidence[:, 0])
    pred, lower, upper = np.concatenate(means), np.concatenate(lowers), np.concatenate(uppers)
    conf = np.concatenate(confs)
    p = predictor.calibration.primary_feature
    tol = predictor.calibration.tolerance

    def mae(forecast: np.ndarray) -> float:
        return float(np.abs(forecast[:, p] - actual[:, p]).mean())

    model_mae = mae(pred)
    ewma_maes = {a: mae(baselines.ewma(ts, fs, a)) for a in EWMA_ALPHAS}
    best_alpha = min(ewma_maes, key=ewma_maes.__getitem__)
    base = {
        "persistence": mae(baselines.persistence(ts, fs)),
        "ewma": ewma_maes[best_alpha],
        "peak_ewma": mae(baselines.peak_ewma(ts, fs)),
    }
    hit = np.abs(actual[:, p] - pred[:, p]) <= tol * pred[:, p]
    inside = (actual >= lower) & (actual <= upper)
    return {
        "windows": len(ts),
        "mae": {
            name: float(v) for name, v in zip(FEATURE_NAMES, np.abs(pred - actual).mean(axis=0), strict=True)
        },
        "latency_mae": model_mae,
        "baseline_latency_mae": base,
        "ewma_best_alpha": best_alpha,
        "ratio": {name: model_mae / v for name, v in base.items()},
        "coverage": float(inside[:, p].mean()),
        "coverage_all_features": float(inside.mean()),
        "interval": predictor.calibration.interval,
        "mean_confidence": float(conf.mean()),
        "hit_rate": float(hit.mean()),
        "ece": expected_calibration_error(conf, hit, bins=10),
    }


def format_report(kind: str, version: str, name: str, r: dict[str, Any]) -> str:
    lines = [
        f"== {kind} ({version}) on {name}: {r['windows']} windows",
        "   next-step MAE: " + "  ".join(f"{k}={v:.4g}" for k, v in r["mae"].items()),
        f"   latency MAE {r['latency_mae']:.4g}  ratio to persistence {r['ratio']['persistence']:.3f}"
        f"  EWMA(a={r['ewma_best_alpha']}) {r['ratio']['ewma']:.3f}  peak-EWMA {r['ratio']['peak_ewma']:.3f}",
        f"   {r['interval']:.0%} interval coverage: latency {r['coverage']:.3f}, all features "
        f"{r['coverage_all_features']:.3f}",
        f"   confidence: mean {r['mean_confidence']:.3f}, hit rate {r['hit_rate']:.3f}, ECE {r['ece']:.4f}",
    ]
    return "\n".join(lines)
