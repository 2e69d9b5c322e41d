"""The predict endpoints' answers, built per forward pass, are byte for byte the per-window ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from app.api import predict
from app.api.predict import _answers, _each, _elapsed, _from_cache, _similar_patterns
from app.api.responses import dumps
from app.cache.keys import prediction_id, prediction_keys
from app.engine import Engine, WindowForecast, read_numbers
from app.window import Window
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor
from tests.app.payloads import contexts


def _per_window(
    windows: list[Window], forecasts: list[WindowForecast], elapsed_ms: float, keys: list[str]
) -> list[bytes]:
    """The answers as they were built before, one dict and one orjson call per window (the contract)."""
    answers: list[bytes] = [b""] * len(windows)
    horizons = [w.horizon for w in windows]
    for j, (steps_j, confidence, lower, upper, step_ms) in read_numbers(forecasts, horizons):
        window, predictor, h, n = windows[j], forecasts[j].predictor, horizons[j], len(windows[j].timestamps)
        answers[j] = dumps(
            {
                "prediction_id": prediction_id(keys[j]),
                "flow_key": window.flow_key,
                "predicted_context": steps_j[h - 1],
                "horizon": h,
                "steps": steps_j,
                "confidence": confidence,
                "lower": lower,
                "upper": upper,
                "model_used": predictor.kind,
                "model_version": predictor.version,
                "cached": False,
                "processing_time_ms": elapsed_ms,
                "similar_patterns": _similar_patterns(window, forecasts[j]),
                "metadata": {
                    "step_ms": step_ms,
                    "horizon_ms": step_ms * h,
                    "window_length": float(n),
                    "contexts_used": float(min(n, predictor.seq_len)),
                },
            }
        )
    return answers


def _window(i: int) -> Window:
    n = 1 + (i * 7) % 45  # 1 to 45 contexts: one context (no interval), shorter and longer than the model's
    cs = contexts(n, seed=i)
    labels = [f"p{(i + c) % 4}" if i % 5 == 0 and c % 3 == 0 else None for c in range(n)]
    flow_key = f"{i:064x}" if i % 11 else f'odd "key" \\ {i}'  # one that JSON must escape
    return Window(
        flow_key,
        None,
        1 + i % 8,
        np.array([c["timestamp"] for c in cs], dtype=np.int64),
        np.array([c["features"] for c in cs], dtype=np.float64),
        labels,
    )


@pytest.mark.parametrize("per_pass_from", [1, 10**9])  # every group written per pass; none
async def test_answers_per_pass_are_the_per_window_ones_byte_for_byte(
    per_pass_from: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predict, "PER_PASS_FROM", per_pass_from)
    lstm = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    hybrid = Predictor.load(CHECKPOINT_DIR / "hybrid.safetensors")
    windows = [_window(i) for i in range(90)]
    kinds = ["hybrid" if i % 6 == 0 else "lstm" for i in range(90)]
    async with Engine({"lstm": lstm, "hybrid": hybrid}) as engine:
        # two calls at once: the windows share passes, some cut from the middle of a pass, in any order
        jobs = [(kind, w.timestamps, w.features) for kind, w in zip(kinds, windows, strict=True)]
        forecasts = await engine.predict_many(jobs[::2], 8) + await engine.predict_many(jobs[1::2], 5)
    order = list(range(0, 90, 2)) + list(range(1, 90, 2))
    windows = [windows[i] for i in order]
    horizons = [min(w.horizon, 8 if i < 45 else 5) for i, w in enumerate(windows)]
    for w, h in zip(windows, horizons, strict=True):
        w.horizon = h
    versions = [f.predictor.version for f in forecasts]
    keys = prediction_keys(versions, windows)
    assert len({id(f.batch) for f in forecasts}) > 1  # several passes, hence several groups
    assert any(_similar_patterns(w, f) for w, f in zip(windows, forecasts, strict=True))
    for elapsed in (0.0, 1.234, 12.5, 1e-3):
        fast = _answers(windows, forecasts, elapsed, keys)
        assert fast == _per_window(windows, forecasts, elapsed, keys)
    for answer in fast:
        orjson.loads(answer)  # valid JSON, the odd flow keys included


async def test_a_large_pass_is_written_per_pass_as_per_window() -> None:
    lstm = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    windows = [_window(i) for i in range(300)]
    for w in windows:
        w.horizon = 3
    async with Engine({"lstm": lstm}) as engine:
        forecasts = await engine.predict_many([("lstm", w.timestamps, w.features) for w in windows], 3)
    assert len({id(f.batch) for f in forecasts}) < 4  # passes of up to 256: groups over PER_PASS_FROM
    keys = prediction_keys([lstm.version], windows)
    assert _answers(windows, forecasts, 2.5, keys) == _per_window(windows, forecasts, 2.5, keys)


@pytest.mark.parametrize("shape", [(7,), (1,), (5, 8), (1, 3), (4, 3, 8), (1, 1, 2), (3, 2, 1)])
def test_each_piece_writes_its_numbers_as_tolist_does(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    a = rng.standard_normal(shape) * 10.0 ** rng.integers(-12, 12, shape)
    a.flat[0] = -0.0
    a.flat[-1] = np.nan
    for values in (a, a.astype(np.float32)):
        pieces = _each(values)
        assert len(pieces) == shape[0]
        for piece, row in zip(pieces, values, strict=True):
            expected = orjson.dumps(row.tolist() if row.ndim else float(row))
            inner = expected[len(shape) - 1 : len(expected) - (len(shape) - 1)]
            assert piece == inner


def test_a_cached_answer_is_marked_and_timed_as_a_reread_one_would_be() -> None:
    stored = dumps(
        {
            "prediction_id": "ab" * 16,
            "flow_key": 'a ",\\"cached\\":false,"processing_time_ms": key',
            "cached": False,
            "processing_time_ms": 3.5,
            "similar_patterns": ['x","similar_patterns":'],
            "metadata": {},
        }
    )
    for elapsed in (0.001, 7.25, 100.0):
        again: dict[str, Any] = orjson.loads(stored)
        again["cached"], again["processing_time_ms"] = True, elapsed
        assert _from_cache(stored, orjson.dumps(elapsed)) == dumps(again)
    assert orjson.loads(_from_cache(b'{"cached":false}', _elapsed(0.0)))["cached"] is True  # another form
