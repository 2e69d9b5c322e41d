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
    # the head starts at zero, so a fresh model on the last value alone forecasts the last observed context
    x = torch.randn(2, 16, 9)
    mean, _ = build_model(kind, horizon=3, skip="last").eval()(x)
    torch.testing.assert_close(mean, x[:, -1:, :8].expand(-1, 3, -1))


@pytest.mark.parametrize("kind", KINDS)
def test_untrained_mixture_leans_on_the_last_value(kind: str) -> None:
    # a window flat at 1 but for its last value: the fresh mixture forecasts between the window's mean
    # (0, the scaler's centre) and the last value, closest to the last value
    x = torch.ones(1, 16, 9)
    x[:, -1, :8] = 3.0
    mean, _ = build_model(kind, horizon=2).eval()(x)
    assert torch.all(mean > 1.5) and torch.all(mean < 3.0)


def test_the_mixture_bases_continue_a_line_and_average_the_last_values() -> None:
    from models.head import _bases

    window = torch.arange(20, dtype=torch.float32).view(1, 20, 1)  # 0, 1, .., 19
    b = _bases(window, horizon=3)[0, :, 0]  # (H, bases)
    torch.testing.assert_close(b[:, 0], torch.full((3,), 19.0))  # last
    torch.testing.assert_close(b[:, 1:4], torch.tensor([18.5, 17.5, 15.5]).expand(3, 3))  # means of 2, 4, 8
    torch.testing.assert_close(b[:, 4], torch.tensor([20.0, 21.0, 22.0]))  # the trend carried on
    torch.testing.assert_close(b[:, 5], torch.zeros(3))  # the window's mean, 0 once scaled
    short = _bases(torch.ones(2, 3, 4), horizon=2)  # shorter than the bases need: padded, still finite
    torch.testing.assert_close(short[..., :5], torch.ones(2, 2, 4, 5))


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
