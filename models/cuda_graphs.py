"""A forward pass replayed as CUDA graphs, one per batch-size bucket, and the copy of its outputs to the host.

Why: at the batch sizes a serving replica sees (one window to a few hundred), a GPU forward pass of these
small models is bound by kernel launches, not arithmetic: the LSTM's 32 steps are dozens of launches whose
CPU cost is the pass's time, whatever the batch (scripts/bench_models.py on a GPU shows a flat time from
batch 1 to 1024). A captured graph launches them all at once. Each bucket (batch rounded up to a power of
two, up to ``max_batch``) is captured when the predictor is made (``warm``: a capture on first use cost the
first requests of each size tens of ms), into one shared memory pool; a batch runs in its
bucket's graph with the rows past its own left as they were (the models treat every window of a batch on
its own, so those rows do not touch the answers). Larger batches, and any model whose capture fails or whose
replay disagrees with the plain pass, run the plain pass: the graphs can only make a pass cheaper.

``to_host`` copies outputs back with one blocking event instead of a spinning synchronisation: the
inference thread sleeps while the GPU works, and the event loop keeps the core (on a replica pinned to few
cores the spin took half of it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger("cpe.models")

Forward = Callable[[torch.Tensor], Any]


def to_host(tensors: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """``tensors`` as float32 numpy arrays; from a GPU, copied without spinning the CPU while it works."""
    if not tensors or tensors[0].device.type != "cuda":
        return [t.float().cpu().numpy() for t in tensors]
    host = [t.float().to("cpu", non_blocking=True) for t in tensors]  # pinned: the copies are queued
    done = torch.cuda.Event(blocking=True)  # its synchronize() sleeps rather than spins
    done.record()
    done.synchronize()
    return [h.numpy() for h in host]


class GraphedForward:
    """``forward`` (a (B, T, F) -> tensor or tuple of tensors pass) replayed from CUDA graphs."""

    def __init__(self, forward: Forward, seq_len: int, n_inputs: int, device: torch.device, max_batch: int):
        assert device.type == "cuda", "CUDA graphs need a CUDA device"
        self.forward = forward
        self.shape = (seq_len, n_inputs)
        self.device = device
        self.max_batch = max_batch
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self.failed = False  # a capture failed or disagreed: the plain pass from then on
        self._pool: Any = None
        self._lock = threading.Lock()  # one set of static buffers per bucket: one replay at a time

    def warm(self) -> None:
        """Capture every bucket now, the largest first (the smaller ones then reuse its memory)."""
        with self._lock:
            b = self.bucket(self.max_batch)
            while b >= 1 and not self.failed:
                if b not in self.graphs:
                    self._capture(b)
                b //= 2

    @staticmethod
    def bucket(n: int) -> int:
        return 1 << max(0, n - 1).bit_length()

    def __call__(self, x: torch.Tensor) -> Any:
        n = len(x)
        if self.failed or not 0 < n <= self.max_batch:
            return self.forward(x)
        with self._lock:
            entry = self.graphs.get(self.bucket(n)) or self._capture(self.bucket(n))
            if entry is None:
                return self.forward(x)
            graph, static_in, static_out = entry
            static_in[:n].copy_(x)
            graph.replay()
            # the static outputs are overwritten by the next replay: the caller gets its own copies
            out = tuple(o[:n].clone() for o in static_out)
        return out if len(out) > 1 else out[0]

    def _capture(self, b: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]] | None:
        try:
            static_in = torch.randn(b, *self.shape, device=self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up passes off the capture: lazy set-up happens here
                for _ in range(3):
                    expected = self.forward(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            # thread_local: another thread's CUDA calls during the capture (the inference thread serving
            # while a new version loads) neither fail nor spoil it
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                captured = self.forward(static_in)
            static_out = captured if isinstance(captured, tuple) else (captured,)
            expected = expected if isinstance(expected, tuple) else (expected,)
            graph.replay()
            torch.cuda.synchronize(self.device)
            agree = all(
                torch.allclose(o, e, rtol=1e-4, atol=1e-5) for o, e in zip(static_out, expected, strict=True)
            )
            if not agree:
                raise RuntimeError("the graph's outputs differ from the plain pass's")
        except Exception as exc:  # any failure: the plain pass serves, as before
            log.warning("serving without CUDA graphs: capturing batch %d failed (%s)", b, exc)
            self.failed = True
            return None
        self.graphs[b] = (graph, static_in, static_out)
        return self.graphs[b]
