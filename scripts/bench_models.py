"""Time the models' forward pass alone: every kind, batch sizes 1..4096, on the CPU or a GPU.

Needs only torch, numpy and this repository's ``models`` package, so that it runs as-is on a GPU box:

    python -m scripts.bench_models --device cuda [--dtype bf16] [--batch 1 8 64 256 1024 4096]

Inputs are random (B, T, F) windows of the checkpoint's sequence length; the shipped weights are loaded
when ``safetensors`` is installed, else the same architecture is built with random weights (the time of
a forward pass does not depend on the weights' values). Each timing: warm-up passes, then repeated
passes under ``torch.inference_mode()``; on CUDA timed with events after a synchronize. Reports the
median ms per forward pass and predictions (windows) per second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.registry import build_model

if TYPE_CHECKING:
    from models.predictor import Predictor

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "models" / "checkpoints"
KINDS = ("lstm", "transformer", "hybrid")
DEFAULT_SEQ_LEN = 32
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def read_meta(path: Path) -> dict:
    """The CPE metadata in a safetensors header (8-byte length, then JSON), read without safetensors."""
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    return json.loads(header["__metadata__"]["cpe"])


def load_model(kind: str, device: torch.device) -> tuple[torch.nn.Module, int, int, str]:
    """(model in eval mode, seq_len, n_inputs, where the weights came from)."""
    path = CHECKPOINT_DIR / f"{kind}.safetensors"
    if not path.exists():  # a bare checkout: the architecture's defaults, the shipped sequence length
        model = build_model(kind)
        return model.to(device).eval(), DEFAULT_SEQ_LEN, model.config.n_inputs, "defaults, random weights"
    meta = read_meta(path)
    try:
        from models.checkpoint import load

        model, source = load(path, device="cpu").model, "checkpoint"
    except ImportError:  # no safetensors on this box: same architecture, random weights
        model, source = build_model(kind, **meta["hparams"]), "random weights"
    return model.to(device).eval(), int(meta["seq_len"]), int(meta["hparams"]["n_inputs"]), source


def time_forward(
    model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None, min_time_s: float, warmup: int
) -> float:
    """Median ms per forward pass over repeated timed chunks totalling about min_time_s."""
    cuda = x.device.type == "cuda"
    autocast = (
        torch.autocast(device_type=x.device.type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        warm_until = time.perf_counter() + min_time_s
        for _ in range(warmup):  # a few passes, fewer when each is slow (large CPU batches)
            model(x)
            if cuda:
                torch.cuda.synchronize()
            if time.perf_counter() > warm_until:
                break
        # passes per chunk so that one chunk lasts ~min_time_s / 10
        t0 = time.perf_counter()
        model(x)
        if cuda:
            torch.cuda.synchronize()
        once = max(time.perf_counter() - t0, 1e-6)
        per_chunk = max(1, int(min_time_s / 10 / once))
        samples: list[float] = []
        deadline = time.perf_counter() + min_time_s
        while len(samples) < 3 or (time.perf_counter() < deadline and len(samples) < 50):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(per_chunk):
                    model(x)
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / per_chunk)
            else:
                t0 = time.perf_counter()
                for _ in range(per_chunk):
                    model(x)
                samples.append((time.perf_counter() - t0) * 1000 / per_chunk)
    return statistics.median(samples)


def serving_predictor(kind: str, device: torch.device, graphs: bool = True) -> Predictor | None:
    """The service's predictor of ``kind`` (traced; CUDA graphs on a GPU unless ``graphs`` is off), loaded
    once per model: on a GPU its graphs are captured as it is made; None without a checkpoint."""
    from models.predictor import Predictor

    path = CHECKPOINT_DIR / f"{kind}.safetensors"
    return Predictor.load(path, device, cuda_graphs=graphs) if path.exists() else None


def time_serving(predictor: Predictor | None, batch: int, min_time_s: float) -> float | None:
    """Median wall ms of the service's own pass (``Predictor.forward_scaled``, the copy back to numpy
    included) for ``batch`` scaled windows; None without a predictor."""
    if predictor is None:
        return None
    x = np.random.default_rng(0).standard_normal((batch, predictor.seq_len, predictor.scaler.n_inputs))
    x = x.astype(np.float32)
    for _ in range(5):
        predictor.forward_scaled(x)
    samples: list[float] = []
    deadline = time.perf_counter() + min_time_s
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 2000):
        t0 = time.perf_counter()
        predictor.forward_scaled(x)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="autocast dtype (GPU)")
    parser.add_argument("--models", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8, 64, 256, 1024, 4096])
    parser.add_argument("--time", type=float, default=1.0, help="seconds timed per (model, batch)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed passes first")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on the CPU (default: torch's)")
    parser.add_argument(
        "--serving",
        action="store_true",
        help="also time the service's own pass per batch (traced, CUDA graphs on a GPU, copy to numpy)",
    )
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)

    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    if device.type == "cpu" and dtype is torch.float16:
        parser.error("--dtype fp16 is for CUDA; on the CPU use fp32 or bf16")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        label = f"{torch.cuda.get_device_name(device)}"
    else:
        label = f"CPU, {torch.get_num_threads()} torch threads"
    print(f"torch {torch.__version__} on {label}, {args.dtype}")

    header = f"{'model':<12} {'batch':>6} {'ms/forward':>11} {'predictions/s':>14}"
    header += f" {'serving ms':>11} {'serving pred/s':>15}" if args.serving else ""
    graphs_ab = args.serving and device.type == "cuda"  # the same pass without CUDA graphs, beside it
    header += f" {'no-graph ms':>12}" if graphs_ab else ""
    header += "  weights"
    print(header)
    print("-" * len(header))
    rows = []
    for kind in args.models:
        model, seq_len, n_inputs, source = load_model(kind, device)
        serving_on = serving_predictor(kind, device) if args.serving and dtype is None else None
        serving_off = serving_predictor(kind, device, graphs=False) if graphs_ab and dtype is None else None
        for batch in args.batch:
            x = torch.randn(batch, seq_len, n_inputs, device=device)
            try:
                ms = time_forward(model, x, dtype, args.time, args.warmup)
            except RuntimeError as exc:  # e.g. out of memory, or an op without this dtype here
                print(f"{kind:<12} {batch:>6}  failed: {str(exc).splitlines()[0]}", flush=True)
                continue
            row: dict[str, object] = {"model": kind, "batch": batch, "ms": ms}
            row["predictions_per_s"] = batch / ms * 1000
            line = f"{kind:<12} {batch:>6} {ms:>11.3f} {batch / ms * 1000:>14,.0f}"
            if args.serving:
                serving = time_serving(serving_on, batch, args.time)
                row["serving_ms"] = serving
                line += f" {serving:>11.3f} {batch / serving * 1000:>15,.0f}" if serving else f" {'-':>27}"
            if graphs_ab and dtype is None:
                plain = time_serving(serving_off, batch, args.time)
                row["serving_no_graph_ms"] = plain
                line += f" {plain:>12.3f}" if plain else f" {'-':>12}"
            rows.append(row)
            print(f"{line}  {source}", flush=True)
    if args.json:
        meta = {"torch": torch.__version__, "device": label, "dtype": args.dtype}
        Path(args.json).write_text(json.dumps({"environment": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
