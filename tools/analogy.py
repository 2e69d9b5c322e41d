"""Forecast by analogy, measured: does blending the model with what followed similar windows help?

Pattern memory is filled with windows of seeded training-distribution traces (``models/traces.py``) and
what followed each. Then, on held-out traces, each window's analog forecast (``app/patterns/analogy.py``:
its 10 nearest stored windows' next contexts, on its own scale) is blended with the model's forecast of
the next latency, ``(1 - w) model + w analog`` in the scaler's transformed space. ``w``, and how alike
the matches must be for the blend to apply (their mean distance, a quantile of the validation set's, or
any), are chosen on a validation set (other seeds) from a grid, ``w = 0`` included; then the model
alone, the analog alone, the blend at that ``w`` and persistence are scored (next-step latency MAE) on
the held-out sets: other seeds, unseen scales, level shifts (base latency x3 half-way), and the windows
that meet a link failure (loss > 5 % in the next context). ``CPE_PATTERNS_ANALOG_WEIGHT`` (and
``CPE_PATTERNS_ANALOG_MAX_DISTANCE``) take the chosen ``w`` (and gate).

    python -m tools.analogy [--routes 48] [--steps 1500] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.patterns.analogy import analog_scaled, blend, overlapping
from app.patterns.memory import Batch, PatternMemory
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor
from models.traces import Trace, generate_routes, generate_trace, sample_profile

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
K = 10
GATE_QUANTILES = (0.05, 0.1, 0.25, 0.5)  # blend only the windows whose matches are this close, or all
FAILURE_LOSS = 0.05  # a next context with more loss than this is "during a failure"


@dataclass
class Windows:
    """Windows cut from traces with what followed each, as the served model sees them."""

    route: list[str]  # (n,) the trace each came from
    timestamps: np.ndarray  # (n,) int64 ms, the window's newest context
    first: np.ndarray  # (n,) int64 ms, its oldest
    embedding: np.ndarray  # (n, E) float32
    center: np.ndarray  # (n, D)
    scale: np.ndarray  # (n, D)
    model_loc: np.ndarray  # (n, D) the model's next-step forecast, transformed space
    last: np.ndarray  # (n, D) raw
    next: np.ndarray  # (n, D) raw

    def __len__(self) -> int:
        return len(self.timestamps)

    def batch(self, predictor: Predictor, rows: slice | np.ndarray = slice(None)) -> Batch:
        """These windows as pattern memory stores them."""
        y = predictor.scaler.transform(self.next[rows])
        return Batch(
            vectors=self.embedding[rows],
            flow_keys=[
                hashlib.sha256(r.encode()).hexdigest() for r in np.asarray(self.route, dtype=object)[rows]
            ],
            timestamps=self.timestamps[rows],
            next=self.next[rows].astype(np.float32),
            next_scaled=((y - self.center[rows]) / self.scale[rows]).astype(np.float32),
            change=(self.next[rows, 0] - self.last[rows, 0]).astype(np.float32),
        )


def embed_traces(
    predictor: Predictor, traces: list[Trace], tag: str, stride: int = 1, batch: int = 1024
) -> Windows:
    """Every full window of ``traces`` (one each ``stride`` contexts) that has a next context, embedded;
    ``tag`` tells these traces' flows from another set's of the same route ids."""
    T = predictor.seq_len
    cut: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    for tr in traces:
        for end in range(T, len(tr.features), stride):
            cut.append(
                (
                    f"{tag}/{tr.route_id}",
                    tr.timestamps_ms[end - T : end],
                    tr.features[end - T : end],
                    tr.features[end],
                )
            )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("emb", "center", "scale", "loc")}
    for i in range(0, len(cut), batch):
        chunk = cut[i : i + batch]
        f = predictor.predict([c[1] for c in chunk], [c[2].astype(np.float64) for c in chunk], 1, embed=True)
        assert f.embedding is not None and f.center is not None and f.scale is not None
        parts["emb"].append(f.embedding)
        parts["center"].append(f.center)
        parts["scale"].append(f.scale)
        parts["loc"].append(f.loc[:, 0])
    return Windows(
        route=[c[0] for c in cut],
        timestamps=np.array([c[1][-1] for c in cut], np.int64),
        first=np.array([c[1][0] for c in cut], np.int64),
        embedding=np.concatenate(parts["emb"]),
        center=np.concatenate(parts["center"]),
        scale=np.concatenate(parts["scale"]),
        model_loc=np.concatenate(parts["loc"]),
        last=np.stack([c[2][-1] for c in cut]).astype(np.float64),
        next=np.stack([c[3] for c in cut]).astype(np.float64),
    )


def analog_locs(memory: PatternMemory, w: Windows, predictor: Predictor) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) each window's analog forecast in the transformed space (the model's where none is found),
    and (n,) the mean distance of its matches (inf for none): how alike the analogies are."""
    out, distance = w.model_loc.copy(), np.full(len(w), np.inf)
    found = memory.search(w.embedding, K + predictor.seq_len)
    names = w.batch(predictor).flow_keys
    for i, matches in enumerate(found):
        chosen = overlapping(matches, names[i], int(w.first[i]))[:K]
        z = analog_scaled(chosen)
        if z is not None:
            out[i] = w.center[i] + w.scale[i] * z
            distance[i] = float(np.mean([m.distance for m in chosen]))
    return out, distance


def gated(w: Windows, analog: np.ndarray, distance: np.ndarray, weight: float, gate: float) -> np.ndarray:
    """The blend where the matches lie within ``gate`` on average, the model's forecast elsewhere."""
    mixed = blend(w.model_loc, analog, weight)
    return np.where((distance <= gate)[:, None], mixed, w.model_loc)


def latency_mae(predictor: Predictor, loc: np.ndarray, actual: np.ndarray) -> float:
    return float(np.abs(predictor.scaler.inverse(loc)[:, 0] - actual[:, 0]).mean())


def score(
    predictor: Predictor, w: Windows, analog: np.ndarray, mixed: np.ndarray, rows: np.ndarray | None = None
) -> dict[str, Any]:
    """Next-step latency MAE of the model, the analog, the blend and persistence (over ``rows``)."""
    sel = np.arange(len(w)) if rows is None else rows
    model = latency_mae(predictor, w.model_loc[sel], w.next[sel])
    persistence = float(np.abs(w.last[sel, 0] - w.next[sel, 0]).mean())
    return {
        "windows": len(sel),
        "model": model,
        "analog": latency_mae(predictor, analog[sel], w.next[sel]),
        "blend": latency_mae(predictor, mixed[sel], w.next[sel]),
        "persistence": persistence,
    }


def shifted(seed: int, n_routes: int, n_steps: int) -> list[Trace]:
    """Traces whose base latency triples half-way (a level shift), one profile per route."""
    rng = np.random.default_rng(seed)
    return [
        generate_trace(
            sample_profile(rng, "train"),
            n_steps,
            seed + i,
            route_id=f"shift-{i}",
            shift_at=n_steps // 2,
            shift_latency_factor=3.0,
        )
        for i in range(n_routes)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--routes", type=int, default=48, help="training routes in memory")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    args = parser.parse_args(argv)
    routes, steps, test_routes = (args.routes, args.steps, 12) if not args.quick else (6, 300, 3)
    t0 = time.perf_counter()
    predictor = Predictor.load(CHECKPOINT_DIR / f"{args.model}.safetensors")
    stored = embed_traces(predictor, generate_routes(7, routes, steps, split="train"), "memory")
    memory = PatternMemory(predictor.embedding_dim, predictor.scaler.n_features, capacity=len(stored))
    memory.insert(stored.batch(predictor))
    sets = {
        "validation (other seeds)": generate_routes(11, test_routes, steps, split="train"),
        "held-out: other seeds": generate_routes(13, test_routes, steps, split="train"),
        "held-out: unseen scales": generate_routes(17, test_routes, steps, split="unseen"),
        "held-out: level shift x3": shifted(19, test_routes, steps),
    }
    windows = {name: embed_traces(predictor, traces, name, stride=2) for name, traces in sets.items()}
    analogs = {name: analog_locs(memory, w, predictor) for name, w in windows.items()}
    val_name = "validation (other seeds)"
    val, (val_analog, val_distance) = windows[val_name], analogs[val_name]
    finite = val_distance[np.isfinite(val_distance)]
    gates = (
        sorted({float(np.quantile(finite, q)) for q in GATE_QUANTILES} | {np.inf})
        if len(finite)
        else [np.inf]
    )
    grid = {
        (wt, gate): latency_mae(predictor, gated(val, val_analog, val_distance, wt, gate), val.next)
        for wt in WEIGHTS
        for gate in gates
    }
    best_w, best_gate = min(grid, key=lambda wg: (grid[wg], wg[0]))  # ties: the smaller weight
    print(f"{args.model}: {len(stored)} windows in memory ({routes} routes x {steps} steps), k = {K}")
    model_only = grid[0.0, gates[-1]]
    print(
        f"validation: model alone {model_only:.3f} ms; best blend w = {best_w} where the mean match distance "
        f"<= {best_gate:.4f}: {grid[best_w, best_gate]:.3f} ms"
    )
    for wt in WEIGHTS[1:]:
        row = ", ".join(f"<= {g:.3g}: {grid[wt, g]:.3f}" for g in gates)
        print(f"  w = {wt}: {row}")
    header = f"{'set':34s} {'windows':>7s} {'model':>8s} {'analog':>8s} {'blend':>8s} {'persist':>8s}"
    print(header + "  blend/model  blend/persistence")
    rows: list[tuple[str, dict[str, Any]]] = []
    for name, w in windows.items():
        if name == val_name:
            continue
        analog, distance = analogs[name]
        mixed = gated(w, analog, distance, best_w, best_gate)
        rows.append((name, score(predictor, w, analog, mixed)))
        failing = np.flatnonzero(w.next[:, 2] > FAILURE_LOSS)
        if len(failing):
            rows.append(
                (f"  {name.split(': ')[1]}, in failures", score(predictor, w, analog, mixed, failing))
            )
    for name, r in rows:
        print(
            f"{name:34s} {r['windows']:7d} {r['model']:8.3f} {r['analog']:8.3f} {r['blend']:8.3f} "
            f"{r['persistence']:8.3f}  {r['blend'] / r['model']:11.3f}  {r['blend'] / r['persistence']:17.3f}"
        )
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
