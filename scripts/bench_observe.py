"""Observing the network under load: ingest, continuous prediction and its push, on one replica.

    python -m scripts.bench_observe [--flows 10000 100000] [--duration 10] [--redis] [--json out.json]
    python -m scripts.bench_observe --gil   # a forward pass beside a busy event loop, by GIL switch interval

Starts one `cpe serve` process on loopback (continuous prediction on, ``memory://`` flow store, forecast
store and bus; with ``--redis`` all three on Redis under a prefix of their own, to show what Redis costs),
and drives it from this process (the load generator), for each ``--flows`` count:

1. the raw model: ``Predictor.predict`` of the default model on windows of its sequence length, at the
   engine's batch size, measured here before the server gets any load (same machine, same run);
2. sustained ingest: ``--senders`` concurrent ``POST /v1/observe`` bodies of ``--body`` observations,
   one per flow per step, round-robin over the flows, as fast as they are accepted, for ``--duration``
   seconds: observations accepted per second; and from the server's ``/metrics`` the continuous forecasts
   it made meanwhile (predictions/s, and as a fraction of the raw model's throughput);
3. latency at half that rate: observations paced at half the predictions/s of step 2 (so that each can
   be forecast), with a WebSocket client of /v1/stream/predictions subscribed to ``--sampled`` of the
   flows: from the POST that carried an observation to the FlowPrediction made from it, p50 and p99; and
   the server's own observe -> published percentiles (``/v1/stats``);
   The server's CPU time over the run, per observation accepted (forecasts included) and as cores busy:
   on a shared machine the rates follow the load of others, the CPU per observation far less;
4. memory per flow: the server's resident memory once every flow has a window and a forecast, minus its
   resident memory before the first observation, over the flows.

The machine is shared and busy: figures are medians of ``--repeat`` runs of each step, and the load
average is printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from websockets.asyncio.client import connect

from tools.process import read_metrics

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600_000
STEP_MS = 1000
GIL_SWITCH_S = 0.0001  # the short interval that --gil measures beside Python's 5 ms (CPE_GIL_SWITCH_US=100)
REDIS_URL = "redis://127.0.0.1:6379/11"


def flow_key(i: int) -> bytes:
    return b"%064x" % (0xB000_0000 + i)


class Bodies:
    """``POST /v1/observe`` bodies: step s of flows [a, b), built from pre-serialized pieces."""

    def __init__(self, flows: int, body: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.flows, self.body = flows, body
        base = np.array([20.0, 2.0, 0.01, 500.0, 0.5, 0.001, 100.0, 5.0])
        scale = rng.uniform(0.2, 5.0, size=flows)  # every flow its own latency scale
        self.heads = [b'{"Context":{"flow_key":"%s","timestamp":' % flow_key(i) for i in range(flows)]
        # four variants of each flow's features, cycled by step: the windows move, the forecasts differ
        self.tails: list[list[bytes]] = []
        for v in range(4):
            noise = 1 + 0.1 * rng.standard_normal((flows, 8))
            features = base * noise
            features[:, 0] *= scale * (1 + 0.2 * np.sin(v))
            features[:, [2, 4, 5]] = np.clip(features[:, [2, 4, 5]], 0, 1)
            self.tails.append([b',"features":%s}}' % orjson.dumps(row.round(4).tolist()) for row in features])

    def make(self, step: int, start: int, size: int | None = None) -> bytes:
        ts = b"%d" % (T0 + step * STEP_MS)
        tails = self.tails[step % 4]
        end = min(start + (size or self.body), self.flows)
        items = b",".join(self.heads[i] + ts + tails[i] for i in range(start, end))
        return b'{"observations":[' + items + b"]}"


# -- the server ------------------------------------------------------------------------------------
def start_server(
    port: int, flows: int, redis: bool, tag: str, extra: dict[str, str]
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPE_")} | {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_LOG_LEVEL": "warning",
        "CPE_MAX_FLOWS": str(flows + 1000),
        "CPE_ENGINE_MAX_BATCH": "1024",
        "CPE_QUEUE_SIZE": "8192",
        "CPE_WS_QUEUE_SIZE": "4096",
        "CPE_MAX_BODY_BYTES": str(64 * 1024 * 1024),
    }
    if redis:
        env |= {
            "CPE_FLOW_URL": REDIS_URL,
            "CPE_FLOW_PREFIX": f"bench:{tag}:flow:",
            "CPE_FLOW_TTL_MS": "600000",
            "CPE_FORECAST_URL": REDIS_URL,
            "CPE_FORECAST_PREFIX": f"bench:{tag}:fc:",
            "CPE_BUS_URL": REDIS_URL,
            "CPE_BUS_CHANNEL": f"bench:{tag}:routing",
            "CPE_PREDICTIONS_CHANNEL": f"bench:{tag}:predictions",
        }
    env |= extra
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server exited before it was ready")
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not get ready within 2 minutes")


def forecasts_made(url: str) -> float:
    return read_metrics(url, "cpe_forecasts_total")["cpe_forecasts_total"]


# -- the raw model ---------------------------------------------------------------------------------
def raw_forward(batch: int, seconds: float = 3.0) -> float:
    """Windows a second through ``Predictor.predict`` alone, at ``batch`` windows a call, one thread."""
    import torch

    from models.checkpoint import CHECKPOINT_DIR
    from models.predictor import Predictor

    torch.set_num_threads(1)
    predictor = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    bodies = Bodies(batch, batch)
    rng = np.random.default_rng(1)
    T = predictor.seq_len
    timestamps = [T0 + np.arange(T, dtype=np.int64) * STEP_MS for _ in range(batch)]
    features = []
    for i in range(batch):
        row = np.asarray(orjson.loads(bodies.tails[0][i][12:-2]), dtype=np.float64)
        features.append(row * (1 + 0.05 * rng.standard_normal((T, 8))).clip(0.5, 1.5))
    for f in features:
        f[:, [2, 4, 5]] = f[:, [2, 4, 5]].clip(0, 1)
    predictor.predict(timestamps, features, 1)
    rates = []
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            predictor.predict(timestamps, features, 1)
            n += batch
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def forward_beside_busy_loop(batch: int = 256, passes: int = 20) -> dict[str, float]:
    """Median ms of a ``Predictor.predict_block`` pass of ``batch`` windows in a thread of its own (as the
    engine's), alone, then while this thread runs Python (an event loop busy with other work), at Python's
    GIL switch interval and at ``GIL_SWITCH_S`` (the interval CPE_GIL_SWITCH_US's description suggests)."""
    import threading

    import torch

    from models.checkpoint import CHECKPOINT_DIR
    from models.predictor import Predictor

    predictor = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    t = predictor.seq_len
    rng = np.random.default_rng(2)
    ts = np.tile(T0 + np.arange(t, dtype=np.int64) * STEP_MS, (batch, 1))
    features = np.abs(rng.normal(20.0, 4.0, (batch, t, 8))).astype(np.float32)
    features[..., [2, 4, 5]] = features[..., [2, 4, 5]].clip(0, 1)
    lengths = np.full(batch, t)
    times: list[float] = []

    def forward() -> None:
        torch.set_num_threads(1)
        for _ in range(passes):
            start = time.perf_counter()
            predictor.predict_block(ts, features, lengths, 1)
            times.append(time.perf_counter() - start)

    def measure(busy: bool) -> float:
        times.clear()
        thread = threading.Thread(target=forward)
        thread.start()
        n = 0
        while busy and thread.is_alive():
            n = (n + sum(range(1000))) % 7  # Python, holding the GIL between switches
        thread.join()
        return round(statistics.median(times) * 1e3, 2)

    measure(False)  # warm
    default = sys.getswitchinterval()
    out = {"alone_ms": measure(False)}
    try:
        out["beside_busy_loop_ms"] = measure(True)
        sys.setswitchinterval(GIL_SWITCH_S)
        out[f"beside_busy_loop_switch_{GIL_SWITCH_S * 1e6:.0f}us_ms"] = measure(True)
    finally:
        sys.setswitchinterval(default)
    return out


# -- the load --------------------------------------------------------------------------------------
async def post(client: httpx.AsyncClient, body: bytes) -> int:
    while True:
        answer = await client.post("/v1/observe", content=body, headers={"content-type": "application/json"})
        if answer.status_code == 202:
            return int(answer.json()["accepted"])
        if answer.status_code in (429, 503):
            await asyncio.sleep(float(answer.headers.get("retry-after", "1")) / 10)
            continue
        raise SystemExit(f"POST /v1/observe answered {answer.status_code}: {answer.text[:500]}")


class Cursor:
    """The next (step, first flow) to send, round-robin over the flows."""

    def __init__(self, bodies: Bodies, step: int = 0, size: int | None = None) -> None:
        self.bodies, self.step, self.start = bodies, step, 0
        self.size = size or bodies.body

    def next(self) -> tuple[int, int]:
        taken = (self.step, self.start)
        self.start += self.size
        if self.start >= self.bodies.flows:
            self.step, self.start = self.step + 1, 0
        return taken


async def fill(client: httpx.AsyncClient, bodies: Bodies, steps: int, senders: int) -> int:
    """Send ``steps`` steps of every flow; returns the next step."""
    cursor = Cursor(bodies)

    async def sender() -> None:
        while cursor.step < steps:
            step, start = cursor.next()
            await post(client, bodies.make(step, start))

    await asyncio.gather(*(sender() for _ in range(senders)))
    return cursor.step


async def sustained(
    client: httpx.AsyncClient, bodies: Bodies, step: int, seconds: float, senders: int
) -> tuple[float, int]:
    """Observations accepted a second, closed loop, as fast as they go; returns it and the next step."""
    cursor = Cursor(bodies, step)
    accepted = 0
    deadline = time.perf_counter() + seconds

    async def sender() -> None:
        nonlocal accepted
        while time.perf_counter() < deadline:
            s, start = cursor.next()
            accepted += await post(client, bodies.make(s, start))

    start = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    return accepted / (time.perf_counter() - start), cursor.step + 1


async def paced(
    client: httpx.AsyncClient,
    ws_url: str,
    bodies: Bodies,
    step: int,
    rate: float,
    seconds: float,
    sampled: list[int],
) -> tuple[list[float], int, int]:
    """Observations at ``rate`` a second, in bodies of a fiftieth of a second's; the POST ->
    FlowPrediction latency of the sampled flows."""
    sent_at: dict[tuple[bytes, int], float] = {}
    latencies: list[float] = []
    keys = [flow_key(i).decode() for i in sampled]
    async with connect(ws_url, proxy=None, max_size=None, max_queue=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "flow_keys": keys}))
        assert json.loads(await ws.recv())["op"] == "subscribed"

        async def receive() -> None:
            async for text in ws:
                if isinstance(text, str) and text.startswith('{"FlowPrediction"'):
                    now = time.perf_counter()
                    message = orjson.loads(text)["FlowPrediction"]
                    ts = int(message["metadata"]["base_timestamp"])
                    sent = sent_at.pop((message["flow_key"].encode(), ts), None)
                    if sent is not None:
                        latencies.append(now - sent)

        reader = asyncio.create_task(receive())
        sampled_set = set(sampled)
        size = max(1, round(rate / 50))
        interval = size / rate
        cursor = Cursor(bodies, step, size)
        start = time.perf_counter()
        n, posts = 0, []
        while time.perf_counter() - start < seconds:
            due = start + n * interval
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            s, first = cursor.next()
            now = time.perf_counter()
            for i in range(first, min(first + size, bodies.flows)):
                if i in sampled_set:
                    sent_at[(flow_key(i), T0 + s * STEP_MS)] = now
            posts.append(asyncio.create_task(post(client, bodies.make(s, first, size))))
            n += 1
        await asyncio.gather(*posts)
        await asyncio.sleep(2.0)  # the last forecasts
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return latencies, len(sent_at), cursor.step + 1


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def run_flows(args: argparse.Namespace, flows: int, raw: float) -> dict[str, Any]:
    port = _free_port()
    url, tag = f"http://127.0.0.1:{port}", uuid.uuid4().hex[:8]
    extra = dict(setting.split("=", 1) for setting in args.setting)
    server = start_server(port, flows, args.redis, tag, extra)
    try:
        wait_ready(url, server)
        rss_idle = httpx.get(f"{url}/v1/stats").json()["memory"]["rss_bytes"]
        bodies = Bodies(flows, args.body)
        limits = httpx.Limits(max_connections=args.senders + 8)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            step = await fill(client, bodies, 1, args.senders)
            await _drained(url)
            rss_full = httpx.get(f"{url}/v1/stats").json()["memory"]["rss_bytes"]
            rates, predictions, cpu_per_obs, cores = [], [], [], []
            for _ in range(args.repeat):
                made = forecasts_made(url)
                t, cpu = time.perf_counter(), cpu_seconds(server.pid)
                rate, step = await sustained(client, bodies, step, args.duration, args.senders)
                elapsed = time.perf_counter() - t
                predictions.append((forecasts_made(url) - made) / elapsed)
                used = cpu_seconds(server.pid) - cpu
                cpu_per_obs.append(used / max(1.0, rate * elapsed) * 1e6)
                cores.append(used / elapsed)
                rates.append(rate)
                await _drained(url)
            obs_rate, pred_rate = statistics.median(rates), statistics.median(predictions)
            half = pred_rate / 2
            sampled = list(range(0, flows, max(1, flows // args.sampled)))[: args.sampled]
            ws_url = f"ws://127.0.0.1:{port}/v1/stream/predictions"
            p50s, p99s, missing = [float("nan")], [float("nan")], 0
            for _ in range(args.repeat if pred_rate else 0):  # continuous prediction off: nothing to time
                latencies, lost, step = await paced(
                    client, ws_url, bodies, step, half, args.duration, sampled
                )
                p50s = [p for p in p50s if p == p]
                p99s = [p for p in p99s if p == p]
                p50s.append(percentile(latencies, 50) * 1e3)
                p99s.append(percentile(latencies, 99) * 1e3)
                missing += lost
            forecasts = httpx.get(f"{url}/v1/stats").json()["forecasts"]
            server_latency = forecasts and forecasts["observe_to_forecast_ms"]
        return {
            "flows": flows,
            "store": "redis" if args.redis else "memory",
            "raw_forward_per_s": round(raw),
            "observations_per_s": round(obs_rate),
            "observations_per_s_runs": [round(r) for r in rates],
            "predictions_per_s": round(pred_rate),
            "predictions_per_s_runs": [round(p) for p in predictions],
            "fraction_of_raw": round(pred_rate / raw, 3),
            "server_cpu_us_per_observation": round(statistics.median(cpu_per_obs), 1),
            "server_cores_busy": round(statistics.median(cores), 2),
            "paced_observations_per_s": round(half),
            "observe_to_push_p50_ms": round(statistics.median(p50s), 2),
            "observe_to_push_p99_ms": round(statistics.median(p99s), 2),
            "sampled_flows": len(sampled),
            "forecasts_not_received": missing,
            "server_observe_to_published_ms": server_latency,
            "memory_per_flow_bytes": round((rss_full - rss_idle) / flows),
            "load_average": os.getloadavg()[0],
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        if args.redis:
            _clean_redis(tag)


async def _drained(url: str, timeout_s: float = 300.0) -> None:
    """Until the server has no flow waiting for its forecast."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if read_metrics(url, "cpe_forecasts_due")["cpe_forecasts_due"] == 0:
            return
        await asyncio.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _clean_redis(tag: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"bench:{tag}:*", count=10_000))
    for i in range(0, len(keys), 10_000):
        client.delete(*keys[i : i + 10_000])
    client.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| flows | store | observations/s accepted | predictions/s | raw forward/s | fraction | "
        "server CPU per "
        "observation | paced at | observe -> push p50 / p99 | server's p50 / p99 | memory per flow |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        server = r["server_observe_to_published_ms"] or {"p50": "-", "p99": "-"}
        rows.append(
            f"| {r['flows']:,} | {r['store']} | {r['observations_per_s']:,} | {r['predictions_per_s']:,} | "
            f"{r['raw_forward_per_s']:,} | {r['fraction_of_raw']:.2f} | "
            f"{r['server_cpu_us_per_observation']} µs ({r['server_cores_busy']} cores) | "
            f"{r['paced_observations_per_s']:,}/s | "
            f"{r['observe_to_push_p50_ms']:.1f} / {r['observe_to_push_p99_ms']:.1f} ms | "
            f"{server['p50']} / {server['p99']} ms | {r['memory_per_flow_bytes']:,} B |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (the median)")
    parser.add_argument("--body", type=int, default=5000, help="observations per POST body")
    parser.add_argument("--senders", type=int, default=4, help="POSTs in flight at once")
    parser.add_argument("--sampled", type=int, default=100, help="flows the latency client subscribes to")
    parser.add_argument("--redis", action="store_true", help="flows, forecasts and bus on Redis")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="CPE_X=VALUE", help="a setting of the server"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="only: a forward pass of 256 windows in its own thread, alone and beside a busy event loop",
    )
    args = parser.parse_args(argv)
    if args.gil:
        print(json.dumps({"load_average": os.getloadavg()[0], **forward_beside_busy_loop()}))
        return 0
    raw = raw_forward(1024)
    print(f"raw model forward (lstm, 1024 windows a call, one thread): {raw:,.0f} windows/s", flush=True)
    results = []
    for flows in args.flows:
        result = asyncio.run(run_flows(args, flows, raw))
        print(json.dumps(result), flush=True)
        results.append(result)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
