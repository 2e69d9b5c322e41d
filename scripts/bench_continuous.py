"""CPU per observation ingested and per continuous forecast, in this process (no HTTP, no load generator).

    python -m scripts.bench_continuous [--flows 10000] [--steps 40] [--url memory:// | redis://127.0.0.1:6379/11]

1. Ingest: ``--steps`` steps of every flow, as POST /v1/observe bodies of 5,000 native contexts read and
   applied by the ``IngestService`` as the handler does; CPU time of the process per observation (median
   over the steps).
2. Continuous forecasts: five more steps with continuous prediction on (the engine, the forecast store,
   scores; no subscriber), each step's every flow forecast once; CPU time of the process per forecast
   (ingest included), of it the event loop's thread, and as a ratio to the raw model's CPU per window
   (``Predictor.predict`` on full windows, 1,024 a call) measured just before each step.

CPU time rather than rates: on a shared, busy machine rates follow the load of others, CPU time far less
(it still varies with cache and core contention: compare ratios). With ``--url redis://`` the flow and
forecast stores are on Redis (under a prefix of their own, deleted after); Redis's own CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import numpy as np
import orjson
import torch
from prometheus_client import CollectorRegistry

from app.bus import Bus
from app.engine import Engine
from app.flows import create_flow_store
from app.forecasts import Forecasts
from app.ingest import IngestService
from app.settings import Settings
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor

T0 = 1_767_225_600_000
BASE = np.array([20.0, 2.0, 0.01, 500.0, 0.5, 0.001, 100.0, 5.0])
BODY = 5000


def bodies(flows: int, step: int, rng: np.random.Generator) -> list[bytes]:
    """One step of every flow, in bodies of BODY observations."""
    out = []
    for start in range(0, flows, BODY):
        items = []
        for i in range(start, min(flows, start + BODY)):
            f = (BASE * (1 + 0.1 * rng.standard_normal(8))).clip(0, None)
            f[[2, 4, 5]] = f[[2, 4, 5]].clip(0, 1)
            key = f"{0xB000_0000 + i:064x}"
            items.append(
                {"Context": {"flow_key": key, "timestamp": T0 + step * 1000, "features": f.round(4).tolist()}}
            )
        out.append(orjson.dumps({"observations": items}))
    return out


def raw_cpu_per_window(predictor: Predictor, rng: np.random.Generator, calls: int = 10) -> float:
    T = predictor.seq_len
    ts = [T0 + np.arange(T, dtype=np.int64) * 1000 for _ in range(1024)]
    fs = [np.abs(BASE * (1 + 0.05 * rng.standard_normal((T, 8)))) for _ in range(1024)]
    for f in fs:
        f[:, [2, 4, 5]] = f[:, [2, 4, 5]].clip(0, 1)
    start = time.process_time()
    for _ in range(calls):
        predictor.predict(ts, fs, 1)
    return (time.process_time() - start) / (calls * 1024)


async def run(flows: int, steps: int, url: str) -> dict[str, object]:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    tag = os.urandom(4).hex()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, device="cpu", models=("lstm",), forecast_url=url, forecast_prefix=f"bench:{tag}:fc:"
    )
    predictor = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    predictor.predict([np.arange(3) * 1000], [np.ones((3, 8))], 1)
    store = create_flow_store(url, window=64, max_flows=flows + 10, prefix=f"bench:{tag}:flow:")
    try:
        async with store:
            ingest = IngestService(store, max_batch=10_000)
            per_obs = []
            for step in range(steps):
                sent = bodies(flows, step, rng)
                start = time.process_time()
                accepted = sum([(await ingest.apply(ingest.read(b), "http")).accepted for b in sent])
                per_obs.append((time.process_time() - start) / accepted * 1e6)
            registry = CollectorRegistry()
            async with (
                Engine({"lstm": predictor}, max_batch=1024, queue_size=8192) as engine,
                Bus("memory://") as bus,
            ):
                forecasts = Forecasts.from_settings(
                    settings, engine, bus, store, None, registry, ttl_ms=3_600_000, max_flows=flows + 10
                )
                async with forecasts:
                    ingest.on_applied = forecasts.on_applied
                    per_forecast, loop_share, ratios = [], [], []
                    for step in range(steps, steps + 5):
                        sent = bodies(flows, step, rng)
                        raw = raw_cpu_per_window(predictor, rng)
                        made = forecasts.continuous.stats.forecasts
                        start, loop_start = time.process_time(), time.thread_time()
                        for b in sent:
                            await ingest.apply(ingest.read(b), "http")
                        await forecasts.continuous.idle(600)
                        made = forecasts.continuous.stats.forecasts - made
                        cpu = (time.process_time() - start) / made
                        per_forecast.append(cpu * 1e6)
                        loop_share.append((time.thread_time() - loop_start) / made * 1e6)
                        ratios.append(cpu / raw)
    finally:
        if url != "memory://":
            import redis

            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(f"bench:{tag}:*", count=10_000))
            for i in range(0, len(keys), 10_000):
                client.delete(*keys[i : i + 10_000])
            client.close()
    return {
        "flows": flows,
        "store": url.split(":", 1)[0],
        "ingest_cpu_us_per_observation": round(statistics.median(per_obs), 2),
        "cpu_us_per_forecast": round(statistics.median(per_forecast), 1),
        "event_loop_cpu_us_per_forecast": round(statistics.median(loop_share), 1),
        "ratio_to_raw_model": round(statistics.median(ratios), 2),
        "ratios": [round(r, 2) for r in ratios],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=40, help="steps of ingest before the forecasts")
    parser.add_argument("--url", default="memory://", help="the flow and forecast stores")
    args = parser.parse_args()
    print(orjson.dumps(asyncio.run(run(args.flows, args.steps, args.url))).decode())


if __name__ == "__main__":
    main()
