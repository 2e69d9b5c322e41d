"""Predictor's compiled forward pass: the same numbers as the eager model, or the eager model itself."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor, compile_forward


@pytest.mark.parametrize("kind", ["lstm", "transformer", "hybrid"])
def test_the_compiled_forward_gives_the_eager_numbers_at_every_batch_size(kind: str) -> None:
    compiled = Predictor.load(CHECKPOINT_DIR / f"{kind}.safetensors")
    eager = Predictor.load(CHECKPOINT_DIR / f"{kind}.safetensors", compiled=False)
    assert isinstance(compiled._forward, torch.jit.ScriptModule) and eager._forward is eager.model
    rng = np.random.default_rng(0)
    for batch in (1, 5, 64):  # traced at 2: the batch dimension must stay symbolic
        x = rng.normal(size=(batch, compiled.seq_len, compiled.scaler.n_inputs)).astype(np.float32)
        for got, want in zip(compiled.forward_scaled(x), eager.forward_scaled(x), strict=True):
            assert got.shape == want.shape == (batch, compiled.horizon, compiled.scaler.n_features)
            # the attention models' frozen trace holds the slices of the in-projection as constants of
            # their own, which the matrix products may sum in another order: float rounding, no more
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_model_that_cannot_be_traced_is_served_eagerly(caplog: pytest.LogCaptureFixture) -> None:
    class Untraceable(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            raise RuntimeError("no tracing here")

    model = Untraceable()
    with caplog.at_level(logging.WARNING, logger="cpe.models"):
        assert compile_forward(model, torch.zeros(2, 4, 3)) is model
    assert "serving Untraceable eagerly" in caplog.text and "no tracing here" in caplog.text


def test_fewer_steps_are_the_first_steps_of_the_whole_horizon() -> None:
    predictor = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    rng = np.random.default_rng(1)
    timestamps = [np.arange(n, dtype=np.int64) * 1000 for n in (40, 32, 5)]  # padded and not
    features = [np.abs(rng.normal(size=(len(t), predictor.scaler.n_features))) * 10 for t in timestamps]
    whole = predictor.predict(timestamps, features)
    for steps in (1, 3, predictor.horizon):
        part = predictor.predict(timestamps, features, steps)
        for name in ("mean", "lower", "upper", "confidence", "loc", "std"):
            got, want = getattr(part, name), getattr(whole, name)[:, :steps]
            assert got.shape == want.shape, name
            np.testing.assert_array_equal(got, want, err_msg=name)
        np.testing.assert_array_equal(part.dt_s, whole.dt_s)


def test_predictors_of_the_same_weights_share_one_trace_and_other_weights_get_their_own() -> None:
    first = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    again = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    assert again._forward is first._forward  # a reload of a version traced before is not traced again
    changed = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors", compiled=False)
    with torch.no_grad():
        changed.model.head.proj.bias.add_(0.5)  # type: ignore[union-attr, operator]
    other = Predictor(changed.model, changed.meta)  # the same metadata, other weights
    assert other._forward is not first._forward
    x = np.zeros((1, first.seq_len, first.scaler.n_inputs), dtype=np.float32)
    assert not np.allclose(other.forward_scaled(x)[0], first.forward_scaled(x)[0])


@pytest.mark.parametrize("width", [64, 5])
def test_a_right_aligned_block_predicts_what_its_windows_one_by_one_do(width: int) -> None:
    predictor = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    rng = np.random.default_rng(width)
    b = 40
    lengths = rng.integers(1, width + 1, b)
    lengths[0] = width
    ts = np.cumsum(rng.integers(500, 1500, (b, width)), axis=1) + 1_700_000_000_000
    features = np.abs(rng.normal(10, 3, (b, width, 8))).astype(np.float32)
    features[..., [2, 4, 5]] = features[..., [2, 4, 5]].clip(0, 1)
    windows = [(ts[i, width - n :], features[i, width - n :]) for i, n in enumerate(lengths.tolist())]
    one_by_one = predictor.predict([t for t, _ in windows], [f for _, f in windows], 2)
    block = predictor.predict_block(ts, features, lengths, 2)
    for name in ("mean", "lower", "upper", "confidence", "dt_s"):
        np.testing.assert_array_equal(getattr(block, name), getattr(one_by_one, name), err_msg=name)
