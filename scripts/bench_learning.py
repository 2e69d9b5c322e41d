"""Time one online training step: a minibatch of 32 from the replay buffer, forward, backward, update.

    python -m scripts.bench_learning [--models lstm transformer hybrid] [--batch 32] [--steps 200]

What is timed is ``Trainer.step`` as the learner runs it: the prioritized draw from a replay buffer
filled with real feedback (windows cut from synthetic traces, encoded as the learner encodes them),
the step on a copy of the shipped model (``models.training.step_losses``), and the priority update.
The learner's thread uses one intra-op thread by default (CPE_LEARNING_THREADS), so does this. The
seed's target: a median <= 10 ms for the default model (lstm) on a CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from app.learning.feedback import Feedback
from app.learning.replay import ReplayBuffer
from app.learning.trainer import Trainer, encode
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor
from models.traces import generate_routes

TARGET_MS = 10.0


def feedback_samples(n: int, seq_len: int, seed: int = 0) -> list[Feedback]:
    """``n`` windows of ``seq_len`` contexts and their next context, from synthetic routes."""
    traces = generate_routes(seed, 8, n // 8 + seq_len + 1)
    samples = []
    for trace in traces:
        for end in range(seq_len, len(trace) - 1):
            samples.append(
                Feedback(
                    flow_key="00" * 32,
                    timestamps=trace.timestamps_ms[end - seq_len : end],
                    features=trace.features[end - seq_len : end].astype(np.float64),
                    actual_timestamp=int(trace.timestamps_ms[end]),
                    actual=trace.features[end].astype(np.float64),
                )
            )
    return samples[:n]


def bench(kind: str, batch: int, steps: int, layers: str, warmup: int = 20) -> dict[str, float]:
    predictor = Predictor.load(CHECKPOINT_DIR / f"{kind}.safetensors")
    replay = ReplayBuffer(
        20_000, 512, predictor.seq_len, predictor.scaler.n_inputs, predictor.scaler.n_features
    )
    x, y = encode(predictor, feedback_samples(4096, predictor.seq_len))
    replay.add(x, y)
    trainer = Trainer(predictor, lr=3e-4, layers=layers)
    times = []
    for i in range(warmup + steps):
        step = trainer.step(replay, batch)
        if i >= warmup:
            times.append(step.seconds * 1000.0)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 3),
        "p90_ms": round(times[int(0.9 * len(times))], 3),
        "min_ms": round(times[0], 3),
        "steps_per_s": round(1000.0 / statistics.median(times), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["lstm"], choices=["lstm", "transformer", "hybrid"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the learner's)")
    parser.add_argument("--layers", nargs="+", default=["head", "all"], choices=["head", "all"])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for kind in args.models:
        for layers in args.layers:
            r = bench(kind, args.batch, args.steps, layers)
            results[f"{kind}/{layers}"] = r
            met = "meets" if r["median_ms"] <= TARGET_MS else "misses"
            verdict = f"  ({met} <= 10 ms)" if kind == "lstm" and layers == "head" else ""
            print(
                f"{kind:12s} layers={layers:4s} batch {args.batch}: median {r['median_ms']:.2f} ms  "
                f"p90 {r['p90_ms']:.2f} ms  min {r['min_ms']:.2f} ms  ({r['steps_per_s']:.0f} steps/s)"
                f"{verdict}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
