"""The GPU serving pass: CUDA graphs per batch bucket, the sleeping copy to the host (models/cuda_graphs.py).

The CUDA tests need a GPU; scripts/bench-gpu.sh runs this file on one. On a machine without CUDA they are
skipped with that reason, and the rest (the CPU path, the buckets) always run.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from models.cuda_graphs import GraphedForward, to_host
from models.predictor import CUDA_GRAPH_MAX_BATCH, Predictor

CHECKPOINTS = Path(__file__).resolve().parents[2] / "models" / "checkpoints"
cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (scripts/bench-gpu.sh runs it on one)"
)


def test_buckets_are_the_next_power_of_two() -> None:
    assert [GraphedForward.bucket(n) for n in (1, 2, 3, 4, 5, 64, 65, 1000, 1024)] == [
        1,
        2,
        4,
        4,
        8,
        64,
        128,
        1024,
        1024,
    ]


def test_on_the_cpu_the_outputs_come_back_as_before_and_no_graph_is_made() -> None:
    t = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    (out,) = to_host((t,))
    assert out.dtype == np.float32 and out.tolist() == [[0, 1, 2], [3, 4, 5]]
    predictor = Predictor.load(CHECKPOINTS / "lstm.safetensors")
    assert not isinstance(predictor._forward, GraphedForward)
    with pytest.raises(AssertionError, match="CUDA"):
        GraphedForward(predictor._forward, predictor.seq_len, 3, torch.device("cpu"), 8)


def _windows(predictor: Predictor, n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, predictor.seq_len, predictor.scaler.n_inputs))
    return x.astype(np.float32)


@cuda
@pytest.mark.parametrize("kind", ["lstm", "transformer", "hybrid"])
def test_graphed_passes_answer_as_the_plain_pass_at_every_batch_size(kind: str) -> None:
    graphed = Predictor.load(CHECKPOINTS / f"{kind}.safetensors", "cuda")
    plain = Predictor.load(CHECKPOINTS / f"{kind}.safetensors", "cuda", compiled=False)
    assert isinstance(graphed._forward, GraphedForward)
    for n in (1, 3, 64, 100, 1, CUDA_GRAPH_MAX_BATCH, CUDA_GRAPH_MAX_BATCH + 5):
        x = _windows(graphed, n, seed=n)
        for got, want in zip(graphed.forward_scaled(x), plain.forward_scaled(x), strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    forward = graphed._forward
    # every bucket was captured when the predictor was made, none on first use
    assert not forward.failed and set(forward.graphs) == {2**i for i in range(11)}
    assert CUDA_GRAPH_MAX_BATCH == 2**10
    emb = graphed.forward_embedded(_windows(graphed, 10))[2]
    np.testing.assert_allclose(emb, plain.forward_embedded(_windows(graphed, 10))[2], rtol=1e-4, atol=1e-5)


@cuda
def test_threads_sharing_a_predictor_get_their_own_answers() -> None:
    predictor = Predictor.load(CHECKPOINTS / "lstm.safetensors", "cuda")
    inputs = [_windows(predictor, 8, seed=i) for i in range(4)]
    expected = [predictor.forward_scaled(x)[0] for x in inputs]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for _ in range(50):
                np.testing.assert_allclose(predictor.forward_scaled(inputs[i])[0], expected[i], rtol=1e-5)
        except BaseException as exc:  # reported below: a thread's failure is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@cuda
def test_a_capture_that_fails_leaves_the_plain_pass_serving() -> None:
    calls = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("not capturable")
        return x.sum(dim=(1, 2))

    graphed = GraphedForward(forward, 4, 2, torch.device("cuda"), 16)
    x = torch.ones(3, 4, 2, device="cuda")
    assert graphed(x).tolist() == [8.0, 8.0, 8.0]
    assert graphed.failed and not graphed.graphs
    assert graphed(x).tolist() == [8.0, 8.0, 8.0]
