import pytest
import torch

from models.registry import ARCHITECTURES, build_model

KINDS = sorted(ARCHITECTURES)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("batch", "length"), [(1, 1), (3, 32), (5, 64)])
def test_forward_shapes(kind: str, batch: int, length: int) -> None:
    model = build_model(kind, horizon=4).eval()
    mean, log_var = model(torch.randn(batch, length, 9))
    assert mean.shape == log_var.shape == (batch, 4, 8)
    assert torch.isfinite(mean).all() and torch.isfinite(log_var).all()


@pytest.mark.parametrize("kind", KINDS)
def test_untrained_model_is_persistence(kind: str) -> None:
    # the head starts at zero, so a fresh model forecasts the last observed context
    x = torch.randn(2, 16, 9)
    mean, _ = build_model(kind, horizon=3).eval()(x)
    torch.testing.assert_close(mean, x[:, -1:, :8].expand(-1, 3, -1))


def test_hyperparameter_ranges() -> None:
    build_model("lstm", hidden=32, layers=4)
    build_model("lstm", hidden=512, layers=1)
    build_model("transformer", heads=16, d_model=64)
    with pytest.raises(ValueError, match=r"hidden must be 32\.\.512"):
        build_model("lstm", hidden=16)
    with pytest.raises(ValueError, match=r"layers must be 1\.\.4"):
        build_model("lstm", layers=5)
    with pytest.raises(ValueError, match=r"heads must be 4\.\.16"):
        build_model("transformer", heads=2)
    with pytest.raises(ValueError, match="must divide by heads"):
        build_model("hybrid", hidden=36, heads=8)
    with pytest.raises(ValueError, match="unexpected keyword"):
        build_model("lstm", hiden=64)


def test_unknown_kind_names_it() -> None:
    with pytest.raises(ValueError, match="unknown model kind 'gru'"):
        build_model("gru")


def test_transformer_positions_count_from_newest() -> None:
    # a short window and the tail of a long one see the newest context at the same position
    model = build_model("transformer").eval()
    x = torch.randn(1, 8, 9)
    padded = torch.cat([x[:, :1].expand(-1, 4, -1), x], dim=1)
    assert model.positions[-8:].equal(model.positions[-12:][-8:])
    assert model(x)[0].shape == model(padded)[0].shape
