"""The micro-batching engine: batches form under concurrency, load is shed, models swap, shutdown is clean."""

from __future__ import annotations

import asyncio
import sys
import threading
from dataclasses import replace

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.cache import create_cache
from app.engine import Engine, EngineStopped, Overloaded, PassTimes, pick_device
from app.main import create_app
from app.services import Services
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor
from tests.app.payloads import contexts, make_settings, predict_body


def _window(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    window = contexts(n, seed=seed)
    timestamps = np.array([c["timestamp"] for c in window], dtype=np.int64)
    return timestamps, np.array([c["features"] for c in window])


@pytest.fixture(scope="module")
def lstm() -> Predictor:
    return Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")


async def test_64_concurrent_requests_share_forward_passes_and_match_one_by_one() -> None:
    app = create_app(make_settings())
    bodies = [predict_body(n, horizon=1 + n % 8) for n in range(1, 65)]
    async with app.router.lifespan_context(app):
        engine = Services.of(app).engine
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cpe") as client:
            together = await asyncio.gather(*(client.post("/v1/predict", json=body) for body in bodies))
            passes_together = engine.stats.forward_passes
            # an empty cache: the same windows are computed again
            app.state.services = replace(Services.of(app), cache=create_cache("memory://"))
            one_by_one = [await client.post("/v1/predict", json=body) for body in bodies]
            passes_one_by_one = engine.stats.forward_passes - passes_together
    assert all(r.status_code == 200 for r in together + one_by_one)
    assert passes_together < 64 / 4, engine.stats.batch_sizes  # they really were batched
    assert passes_one_by_one == 64
    for a, b in zip(together, one_by_one, strict=True):
        a_json, b_json = a.json(), b.json()
        np.testing.assert_allclose(a_json["steps"], b_json["steps"], rtol=1e-4)
        np.testing.assert_allclose(a_json["lower"], b_json["lower"], rtol=1e-4)
        np.testing.assert_allclose(a_json["upper"], b_json["upper"], rtol=1e-4)
        np.testing.assert_allclose(a_json["confidence"], b_json["confidence"], rtol=1e-4, atol=1e-6)


async def test_windows_of_mixed_length_and_model_share_one_dispatch(lstm: Predictor) -> None:
    hybrid = Predictor.load(CHECKPOINT_DIR / "hybrid.safetensors")
    async with Engine({"lstm": lstm, "hybrid": hybrid}) as engine:
        futures = engine.submit_many(
            [("lstm", *_window(1)), ("hybrid", *_window(40)), ("lstm", *_window(32)), ("lstm", *_window(7))]
        )
        forecasts = await asyncio.gather(*futures)
    assert [f.predictor.kind for f in forecasts] == ["lstm", "hybrid", "lstm", "lstm"]
    assert engine.stats.batch_sizes == {3: 1, 1: 1}  # one pass per model present
    assert engine.stats.windows == 4
    assert all(f.mean.shape == (8, 8) and f.confidence.shape == (8,) for f in forecasts)


async def test_a_pass_decodes_the_most_steps_that_its_windows_ask_for(lstm: Predictor) -> None:
    async with Engine({"lstm": lstm}) as engine:
        two = engine.submit_many([("lstm", *_window(32)), ("lstm", *_window(9))], steps=2)
        three = engine.submit("lstm", *_window(12), steps=3)
        forecasts = await asyncio.gather(*two, three)
        assert engine.stats.batch_sizes == {3: 1}
        assert all(f.mean.shape == (3, 8) and f.confidence.shape == (3,) for f in forecasts)
        whole = await asyncio.gather(
            engine.submit("lstm", *_window(32)), engine.submit("lstm", *_window(9), steps=1)
        )
        assert all(f.mean.shape == (8, 8) for f in whole)  # one window wants the whole horizon: all get it
    np.testing.assert_allclose(forecasts[0].mean, whole[0].mean[:3], rtol=1e-5)  # batches of 3 and 2


async def test_predict_many_answers_in_order_and_cancels_the_rest_when_cancelled(lstm: Predictor) -> None:
    async with Engine({"lstm": lstm}) as engine:
        forecasts = await engine.predict_many([("lstm", *_window(n, seed=n)) for n in (3, 32, 9)])
        assert [f.index for f in forecasts] == [0, 1, 2]
        alone = await engine.predict("lstm", *_window(32, seed=32))
        np.testing.assert_allclose(forecasts[1].mean, alone.mean, rtol=1e-5)  # kernels differ by batch size
        task = asyncio.create_task(engine.predict_many([("lstm", *_window(32))] * 4))
        await asyncio.sleep(0)  # queued; the first pass starts at the end of this turn of the loop
        queued = list(engine._queue)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(queued) == 4 and all(job.future.cancelled() for job in queued)


async def test_without_max_wait_a_free_thread_takes_what_is_queued_at_once(lstm: Predictor) -> None:
    async with Engine({"lstm": lstm}, max_wait_us=0) as engine:
        first = engine.submit("lstm", *_window(8))
        while engine.queued:  # taken straight away, alone
            await asyncio.sleep(0)
        await asyncio.gather(first, engine.submit("lstm", *_window(8)))
    assert engine.stats.batch_sizes == {1: 2}


async def test_max_wait_lets_a_batch_grow(lstm: Predictor) -> None:
    async with Engine({"lstm": lstm}, max_wait_us=300_000) as engine:
        first = engine.submit("lstm", *_window(8))
        for _ in range(5):  # the batcher wakes and waits for more
            await asyncio.sleep(0)
        assert engine.queued == 1
        await asyncio.gather(first, engine.submit("lstm", *_window(8)))
    assert engine.stats.batch_sizes == {2: 1}


async def test_a_full_queue_sheds_load(lstm: Predictor) -> None:
    async with Engine({"lstm": lstm}, queue_size=2, retry_after_s=7) as engine:
        first = engine.submit_many([("lstm", *_window(4)), ("lstm", *_window(5))])
        with pytest.raises(Overloaded) as raised:
            engine.submit("lstm", *_window(6))  # nothing has run yet: the queue holds 2
        assert raised.value.retry_after_s == 7
        with pytest.raises(Overloaded):
            engine.submit_many([("lstm", *_window(4))] * 3)  # more than the queue: all or none
        await asyncio.gather(*first)
        await engine.predict("lstm", *_window(6))  # room again
    assert engine.stats.rejected == 4
    assert engine.stats.windows == 3


def test_overload_is_a_503_with_retry_after() -> None:
    app = create_app(make_settings(queue_size=2, max_batch=2, retry_after_s=3))

    async def burst() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://cpe") as client:
                return await asyncio.gather(
                    *(client.post("/v1/predict", json=predict_body(8)) for _ in range(40))
                )

    responses = asyncio.run(burst())
    statuses = {r.status_code for r in responses}
    assert statuses == {200, 503}, statuses
    shed = [r for r in responses if r.status_code == 503]
    assert all(r.headers["retry-after"] == "3" for r in shed)
    assert "queue full" in shed[0].json()["detail"]


async def test_swap_serves_the_new_model_from_the_next_batch_never_mid_batch(lstm: Predictor) -> None:
    retrained = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors", compiled=False)
    with torch.no_grad():
        retrained.model.head.proj.bias.add_(0.5)  # type: ignore[union-attr, operator]
    fresh = Predictor(retrained.model, retrained.meta)  # weights are fixed once a Predictor is made
    fresh.version = "lstm-retrained"
    async with Engine({"lstm": lstm}) as engine:
        in_flight = engine.submit("lstm", *_window(10))
        while engine.queued:  # let the batcher take it and hand it to the inference thread
            await asyncio.sleep(0)
        engine.swap("lstm", fresh)
        after = await engine.predict("lstm", *_window(10))
        before = await in_flight
    assert before.predictor is lstm  # the batch in flight finished with the model it started with
    assert after.predictor.version == "lstm-retrained"
    assert engine.predictors["lstm"] is fresh
    assert engine.stats.swaps == 1
    assert not np.allclose(after.mean, before.mean)


async def test_swap_refuses_a_model_that_does_not_fit(lstm: Predictor) -> None:
    hybrid = Predictor.load(CHECKPOINT_DIR / "hybrid.safetensors")
    async with Engine({"lstm": lstm}) as engine:
        with pytest.raises(ValueError, match="as 'lstm'"):
            engine.swap("lstm", hybrid)
        with pytest.raises(ValueError, match="no model of kind 'hybrid'"):
            engine.swap("hybrid", hybrid)


async def test_stop_fails_queued_work_and_joins_the_thread(lstm: Predictor) -> None:
    engine = Engine({"lstm": lstm})
    await engine.start()
    assert engine.running
    futures = engine.submit_many([("lstm", *_window(8))] * 20)
    await engine.stop()
    assert not engine.running
    assert all(f.done() for f in futures)  # nobody is left waiting: answered or told
    assert all(f.exception() is None or isinstance(f.exception(), EngineStopped) for f in futures)
    assert not any(t.name.startswith("cpe-inference") for t in threading.enumerate())
    with pytest.raises(EngineStopped):
        engine.submit("lstm", *_window(8))


def test_a_stopped_engine_makes_the_replica_unready(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200
    client.portal.call(Services.of(client.app).engine.stop)  # type: ignore[union-attr]
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "not running" in ready.json()["reason"]
    response = client.post("/v1/predict", json=predict_body(4))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


def test_pick_device() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            pick_device("cuda")


def test_pass_times_answer_the_nearest_measured_size_class() -> None:
    times = PassTimes()
    assert times.estimate(64) == 0.0  # nothing measured: admit, and measure
    times.record(3, 0.010)  # class 2-3
    times.record(40, 0.030)  # class 32-63
    assert times.estimate(2) == 0.010
    assert times.estimate(8) == 0.030  # a larger class measured: an upper bound
    assert times.estimate(200) == 0.030  # only smaller ones: the largest, a lower bound
    times.record(50, 0.040)
    assert times.estimate(33) == pytest.approx(0.030 + PassTimes.ALPHA * 0.010)


def test_over_the_latency_budget_requests_get_503_and_the_engine_recovers_at_once() -> None:
    app = create_app(make_settings(engine_latency_budget_ms=1.0, retry_after_s=2, models=("lstm",)))

    async def burst() -> tuple[list[httpx.Response], httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://cpe") as client:
                assert (await client.post("/v1/predict", json=predict_body(8, horizon=2))).status_code == 200
                # pass times measured: a burst finds the engine busy, and each pass takes more than 1 ms
                burst = await asyncio.gather(
                    *(client.post("/v1/predict", json=predict_body(8 + i % 24)) for i in range(60))
                )
                return burst, await client.post("/v1/predict", json=predict_body(9, horizon=3))

    responses, after = asyncio.run(burst())
    shed = [r for r in responses if r.status_code == 503]
    assert {r.status_code for r in responses} == {200, 503}
    assert all(r.headers["retry-after"] == "2" for r in shed)
    assert "exceeds the latency budget of 1 ms" in shed[0].json()["detail"]
    assert after.status_code == 200  # idle again: admitted whatever the last passes took


async def test_a_block_shares_passes_with_single_windows_and_answers_what_predict_does(
    lstm: Predictor,
) -> None:
    rng = np.random.default_rng(3)
    b, width = 10, 16
    lengths = rng.integers(1, width + 1, b)
    ts = np.cumsum(rng.integers(800, 1200, (b, width)), axis=1) + 1_700_000_000_000
    features = np.abs(rng.normal(20, 4, (b, width, 8))).astype(np.float32)
    features[..., [2, 4, 5]] = features[..., [2, 4, 5]].clip(0, 1)
    single = _window(7, seed=1)
    async with Engine({"lstm": lstm}, max_batch=4, queue_size=8) as engine:
        with pytest.raises(Overloaded):  # all or none: 10 windows do not fit a queue of 8
            await engine.predict_block("lstm", ts, features, lengths)
        assert engine.queued == 0
        engine.queue_size = 11
        alone = engine.submit("lstm", *single)
        block = await engine.predict_block("lstm", ts, features, lengths, 1)
        assert (await alone).mean.shape[1] == lstm.horizon
        assert engine.queued == 0
        assert engine.stats.windows == 11 and max(engine.stats.batch_sizes) <= 4  # cut at max_batch
    expected = lstm.predict(
        [ts[i, width - n :] for i, n in enumerate(lengths.tolist())],
        [features[i, width - n :] for i, n in enumerate(lengths.tolist())],
        1,
    )
    got = np.stack([f.mean[:1] for f in block])
    np.testing.assert_allclose(got, expected.mean, rtol=1e-5)


async def test_a_block_in_parts_gets_a_future_per_part_and_passes_no_larger_than_a_part(
    lstm: Predictor,
) -> None:
    rng = np.random.default_rng(4)
    b, width = 10, 8
    ts = np.cumsum(rng.integers(800, 1200, (b, width)), axis=1) + 1_700_000_000_000
    features = np.abs(rng.normal(20, 4, (b, width, 8))).astype(np.float32)
    features[..., [2, 4, 5]] = features[..., [2, 4, 5]].clip(0, 1)
    lengths = np.full(b, width)
    async with Engine({"lstm": lstm}, max_batch=64) as engine:
        # queued in one turn of the loop: without the cap the engine would take them all in one pass
        parts = engine.submit_block("lstm", ts, features, lengths, 1, pass_size=4)
        after = engine.submit("lstm", *_window(5))  # a single window queued behind: not over the cap
        assert len(parts) == 3
        answered = [await part for part in parts]
        await after
        assert [len(part) for part in answered] == [4, 4, 2]
        assert engine.stats.batch_sizes == {4: 2, 3: 1}  # the last part took the single window in
        whole = await engine.predict_block("lstm", ts, features, lengths, 1)
        assert engine.stats.batch_sizes[10] == 1  # without a cap: one pass of max_batch at most
    got = np.stack([f.mean[:1] for part in answered for f in part])
    np.testing.assert_allclose(got, np.stack([f.mean[:1] for f in whole]), rtol=1e-5)


async def test_the_gil_switch_interval_is_the_engines_while_it_runs_and_restored_after(
    lstm: Predictor,
) -> None:
    before = sys.getswitchinterval()
    async with Engine({"lstm": lstm}, gil_switch_s=0.0002) as engine:
        assert sys.getswitchinterval() == pytest.approx(0.0002)
        await engine.predict("lstm", *_window(4))
    assert sys.getswitchinterval() == before
    async with Engine({"lstm": lstm}):  # 0: Python's, untouched
        assert sys.getswitchinterval() == before
