"""The attention models' serving path (models.transformer.encode_newest) against the stock encoder."""

import numpy as np
import pytest
import torch

from models import predictor as predictor_module
from models.checkpoint import CHECKPOINT_DIR, load
from models.predictor import Predictor
from models.registry import build_model


def _stock(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass through the encoder module itself: what training runs (dropout is 0)."""
    model.train()
    try:
        with torch.no_grad():
            return model(x)  # type: ignore[no-any-return]
    finally:
        model.eval()


@pytest.mark.parametrize("kind", ["transformer", "hybrid"])
@pytest.mark.parametrize(("batch", "length"), [(1, 1), (3, 7), (300, 32)])
def test_newest_only_encoder_matches_the_module(kind: str, batch: int, length: int) -> None:
    torch.manual_seed(0)
    model = build_model(kind, horizon=4)
    for p in model.parameters():  # a fresh head outputs the persistence forecast: make it see the encoder
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(batch, length, 9)
    expected = _stock(model, x)
    with torch.inference_mode():
        got = model.eval()(x)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert not torch.equal(expected[0], x[:, -1:, :8].expand(-1, 4, -1))  # the encoder counts


@pytest.mark.parametrize("kind", ["transformer", "hybrid"])
def test_shipped_checkpoints_load_and_answer_as_before(kind: str) -> None:
    ckpt = load(CHECKPOINT_DIR / f"{kind}.safetensors")  # strict load: the state_dict names are unchanged
    model, seq_len = ckpt.model, int(ckpt.meta["seq_len"])
    x = torch.randn(64, seq_len, model.config.n_inputs)
    expected = _stock(model, x)
    with torch.inference_mode():
        got = model(x)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_predictor_runs_big_cpu_batches_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = load(CHECKPOINT_DIR / "transformer.safetensors")
    pred = Predictor(ckpt.model, ckpt.meta)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(37, pred.seq_len, pred.scaler.n_inputs)).astype(np.float32)
    whole = pred.forward_scaled(x)
    monkeypatch.setitem(predictor_module.CPU_CHUNK, "transformer", 8)
    calls: list[int] = []
    forward = pred._forward
    monkeypatch.setattr(pred, "_forward", lambda t: calls.append(len(t)) or forward(t))
    chunked = pred.forward_scaled(x)
    assert calls == [8, 8, 8, 8, 5]
    for w, c in zip(whole, chunked, strict=True):
        np.testing.assert_allclose(c, w, rtol=1e-5, atol=1e-6)
