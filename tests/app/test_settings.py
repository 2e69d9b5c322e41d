"""Settings: defaults, the environment, and values refused with the field named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings
from models.checkpoint import CHECKPOINT_DIR


def test_defaults() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.models == ("lstm", "transformer", "hybrid")
    assert settings.model == "lstm"
    assert settings.checkpoint_dir == CHECKPOINT_DIR
    assert settings.engine_max_wait_us == 0 and settings.torch_threads == 1


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPE_PORT", "9001")
    monkeypatch.setenv("CPE_MODELS", "hybrid, lstm")
    monkeypatch.setenv("CPE_MODEL", "hybrid")
    monkeypatch.setenv("CPE_DEVICE", "cpu")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.port == 9001
    assert settings.models == ("hybrid", "lstm")
    assert settings.model == "hybrid"


def test_to_env_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None, port=8123, models=("lstm", "hybrid"), access_log=True)  # type: ignore[call-arg]
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == settings  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"port": 0}, "port"),
        ({"workers": 0}, "workers"),
        ({"device": "tpu"}, "device"),
        ({"models": ("lstm", "gru")}, "models"),
        ({"models": ()}, "models"),
        ({"model": "hybrid", "models": ("lstm",)}, "model"),
        ({"max_window": 0}, "max_window"),
        ({"queue_size": 10}, "queue_size"),
        ({"engine_max_batch": 0}, "engine_max_batch"),
        ({"engine_max_wait_us": -1}, "engine_max_wait_us"),
        ({"torch_threads": 0}, "torch_threads"),
        ({"log_level": "loud"}, "log_level"),
    ],
)
def test_bad_values_are_refused_naming_the_field(values: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named) as raised:
        Settings(_env_file=None, **values)  # type: ignore[arg-type, call-arg]
    assert isinstance(raised.value, ValueError)
