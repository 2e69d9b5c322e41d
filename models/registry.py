"""build_model(kind, **hparams): the one place that maps an architecture name to its class."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from torch import nn

from models.hybrid import HybridConfig, HybridForecaster
from models.lstm import LSTMConfig, LSTMForecaster
from models.transformer import TransformerConfig, TransformerForecaster

ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "lstm": (LSTMConfig, LSTMForecaster),
    "transformer": (TransformerConfig, TransformerForecaster),
    "hybrid": (HybridConfig, HybridForecaster),
}


def build_model(kind: str, **hparams: Any) -> nn.Module:
    """A fresh model of the named architecture; unknown kinds and hyper-parameters are a ValueError."""
    try:
        config_cls, model_cls = ARCHITECTURES[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(ARCHITECTURES)}") from None
    try:
        config = config_cls(**hparams)
    except TypeError as exc:
        raise ValueError(f"bad hyper-parameters for {kind!r}: {exc}") from None
    except AssertionError as exc:
        raise ValueError(f"bad hyper-parameters for {kind!r}: {exc}") from None
    return model_cls(config)


def hyperparameters(model: nn.Module) -> dict[str, Any]:
    """The config a model was built from, as plain JSON-able values."""
    return asdict(model.config)  # type: ignore[call-overload]
