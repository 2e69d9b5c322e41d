"""Forecasts kept as a round's arrays: the same results and scores as one object per flow, built only
when asked for, and a round freed once no flow's newest forecast is in it."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import orjson

from app.engine import Engine
from app.forecasts.result import Draft, RoundResults, segments, serialize
from app.forecasts.store import FlowForecast, FlowScore, MemoryForecasts, Previous, RoundForecasts
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor

T0 = 1_700_000_000_000


def block(b: int, length: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = T0 + np.arange(length, dtype=np.int64)[None, :] * 1000 + np.zeros((b, 1), dtype=np.int64)
    base = np.array([20.0, 2.0, 0.01, 500.0, 0.5, 0.001, 100.0, 5.0])
    features = np.abs(base * (1 + 0.1 * rng.standard_normal((b, length, 8))))
    features[..., [2, 4, 5]] = features[..., [2, 4, 5]].clip(0, 1)
    lengths = rng.integers(1, length + 1, b)
    return ts, features, lengths


def round_of(keys: list[str], results: RoundResults, seed: int = 0) -> RoundForecasts:
    b = len(keys)
    rng = np.random.default_rng(seed)
    return RoundForecasts(
        keys,
        "lstm",
        np.arange(b, dtype=np.int64) + 1000 * seed,
        rng.random(b),
        rng.random(b),
        rng.random(b),
        np.full(b, seed, dtype=np.int64),
        rng.random(b),
        rng.random(b),
        rng.random(b),
        rng.random((b, 4, 8)),
        results,
    )


async def test_a_rounds_results_are_those_of_one_draft_per_flow_serialized_when_read() -> None:
    predictor = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    ts, features, lengths = block(300)
    keys = [f"{i:064x}" for i in range(300)]
    # max_batch 128: the round spans three forward passes
    async with Engine({"lstm": predictor}, max_batch=128) as engine:
        forecasts = await engine.predict_block("lstm", ts, features, lengths, 2)
    passes = segments(forecasts)
    assert [(s.start, s.stop) for s in passes] == [(0, 128), (128, 256), (256, 300)]
    waited = np.round(np.linspace(0.5, 3.0, 300), 3)
    similar = {5: ["p1", "p2"]}
    extra = {7: {"analog_latency_ms": 21.5}}
    results = RoundResults(keys, 2, ts[:, -1].copy(), lengths, waited, passes, similar, extra)
    assert results.bodies([]) == []
    for i in (0, 5, 7, 127, 128, 299):
        draft = Draft(
            forecasts[i], keys[i], 2, int(ts[i, -1]), int(lengths[i]), float(waited[i]),
            similar.get(i, []), extra.get(i, {}),
        )  # fmt: skip
        assert results.body(i) == serialize(draft)
    assert results.bodies([299, 3]) == [results.body(299), results.body(3)]
    assert orjson.loads(results.body(5))["similar_patterns"] == ["p1", "p2"]


async def test_the_memory_store_answers_arrays_and_objects_alike_and_frees_superseded_rounds() -> None:
    store = MemoryForecasts(ttl_ms=60_000, max_flows=100)
    body = FlowForecast(b'{"x":1}', None, 1, 2.0, 3.0, 4.0, "lstm", FlowScore())
    given = RoundResults.given([body] * 3)
    first = round_of(["a", "b", "c"], given, seed=1)
    await store.put_round(first)
    second = round_of(["b", "c"], RoundResults.given([body] * 2), seed=2)
    second.interval = None
    await store.put_round(second)
    previous = await store.get_previous(["c", "z", "a"])
    objects = await store.get_many(["c", "z", "a"])
    assert objects[1] is None
    assert list(previous.found) == [True, False, True]
    from_objects = Previous.of(objects)
    for name in ("base_ts", "latency", "persistence", "ewma", "scored", "score_model", "has_interval"):
        np.testing.assert_array_equal(getattr(previous, name), getattr(from_objects, name), err_msg=name)
    assert previous.interval is not None
    np.testing.assert_array_equal(previous.interval[2], first.interval[0])  # type: ignore[index]
    a = objects[2]
    assert a is not None and a.body == b'{"x":1}' and a.score.scored == 1 and a.model == "lstm"
    # "a" is the only flow left in the first round: it goes with it
    ref = weakref.ref(first)
    del first
    await store.put_round(round_of(["a"], RoundResults.given([body]), seed=3))
    gc.collect()
    assert ref() is None
    await store.delete("b")
    assert await store.get_many(["b"]) == [None] and len(store) == 2
