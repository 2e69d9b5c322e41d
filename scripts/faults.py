"""Fault drills against a real `cpe serve` process: Redis killed and restarted under load; SIGTERM under load.

    python -m scripts.faults redis [--duration 9]  # Redis (cache, bus, feedback) killed at 1/3, back at 2/3
    python -m scripts.faults sigterm [--learning redis]  # SIGTERM with requests, feedback, WebSockets open

Each starts its own server on a free loopback port, and its own private redis-server on another where it
needs one (never a shared one), drives it with concurrent clients, and prints one JSON line of what it
saw; the exit status is 0 when the service held:

- redis: no 5xx and no failed request while Redis was gone, ready again once it is back; feedback is
  posted throughout: refused (503) while Redis is down, and every 202 is in the stream afterwards and
  reached the learner (delivered to and acknowledged by its consumer group, and in its replay buffer).
  Redis runs with `appendonly yes, appendfsync always`, the persistence that makes a 202 survive a crash
  of Redis; `--redis-persistence none` shows what a Redis without it loses.
- sigterm: every request in flight answered 200, both WebSockets closed with 1001, the server shut down
  cleanly, and no 202'd feedback was lost: with `--learning memory` the learner took every accepted
  sample in before the process ended (its last log line says how many); with `--learning redis` every
  202'd sample is in the stream, for the next learner.

tests/app/test_faults.py runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis as redis_sync
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tools.process import RedisServer, ServerProcess, cpe_serve

ROOT = Path(__file__).resolve().parent.parent


def window(seed: int, n: int = 16) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    base = np.array([20.0, 2.0, 0.01, 500.0, 0.5, 0.001, 100.0, 5.0])
    return [
        {"timestamp": 1_700_000_000_000 + i * 1000, "features": (base * (1 + 0.05 * rng.random(8))).tolist()}
        for i in range(n)
    ]


def serve(cpus: set[int] | None = None, **settings: str) -> ServerProcess:
    """A started `python -m app.cli serve` with the given CPE_* settings (the LSTM on the CPU, warnings
    only, unless given); ``cpus``: pinned to these CPUs (its threads too), as benchmarks do."""
    env = {"CPE_DEVICE": "cpu", "CPE_MODELS": "lstm", "CPE_MODEL": "lstm", "CPE_LOG_LEVEL": "warning"}
    env |= {f"CPE_{k.upper()}": v for k, v in settings.items()}
    return cpe_serve(env, cpus=None if cpus is None else frozenset(cpus)).start()


# -- feedback, and where it went -----------------------------------------------------------------------

STREAM = "cpe:learn:feedback"  # the stream under the default CPE_LEARNING_PREFIX
GROUP = "cpe-learners"


def feedback_body(seed: int) -> dict[str, Any]:
    contexts = window(seed)
    actual = {"timestamp": contexts[-1]["timestamp"] + 1000, "features": window(seed + 1, 1)[0]["features"]}
    return {"flow_key": "12" * 32, "contexts": contexts, "actual": actual}


async def _feedback(
    client: httpx.AsyncClient, until: float, phase: list[str], seen: dict[str, Counter[str]], ids: list[str]
) -> None:
    """Feedback in a loop until ``until`` or the server is gone; the ids of the 202s go to ``ids``."""
    i = 0
    while time.monotonic() < until:
        i += 1
        try:
            response = await client.post("/v1/feedback", json=feedback_body(i))
        except httpx.TransportError as exc:
            seen[phase[0]][type(exc).__name__] += 1
            if phase[0] == "shutdown":  # the server is going: what was not answered was not accepted
                return
            continue
        seen[phase[0]][str(response.status_code)] += 1
        if response.status_code == 202:
            ids.append(response.json()["id"])


def _stream_id(entry: str | bytes) -> tuple[int, int]:
    text = entry.decode() if isinstance(entry, bytes) else entry
    ms, seq = text.split("-")
    return int(ms), int(seq)


def stream_ids(url: str) -> set[str]:
    with redis_sync.Redis.from_url(url) as r:
        return {entry.decode() for entry, _ in r.xrange(STREAM)}


def delivered(url: str, ids: list[str]) -> int:
    """How many of ``ids`` the learner has taken: delivered to its consumer group (or skipped over on a
    take-over, which takes them from the stream's tail) and acknowledged."""
    with redis_sync.Redis.from_url(url) as r:
        groups = {g["name"].decode(): g for g in r.xinfo_groups(STREAM)}
        if GROUP not in groups:
            return 0
        last = _stream_id(groups[GROUP]["last-delivered-id"])
        pending = {e["message_id"].decode() for e in r.xpending_range(STREAM, GROUP, "-", "+", 100_000)}
    return sum(_stream_id(i) <= last and i not in pending for i in ids)


def learner_buffer(url: str) -> int:
    """Samples in the learner's replay buffer (training ring and held-back slice), from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    found = re.findall(r'^cpe_learning_buffer_size\{part="(?:replay|validation)"\} (\S+)$', text, re.M)
    return int(sum(float(v) for v in found))


# -- Redis killed and restarted under load -----------------------------------------------------------


async def _load(url: str, until: float, phase: list[str], seen: dict[str, Counter[str]], worker: int) -> None:
    """Predictions (new windows: misses, then repeats: hits) and routing recommendations, in a loop."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        i = 0
        while time.monotonic() < until:
            i += 1
            seed = worker * 1_000_000 + i // 2  # every window twice: once computed, once from the cache
            if i % 5 == 0:
                routes = [{"route_id": f"r{k}", "contexts": window(seed + k)} for k in range(3)]
                request = client.post("/v1/routing/recommend", json={"flow_key": "cd" * 32, "routes": routes})
            else:
                request = client.post("/v1/predict", json={"flow_key": "ab" * 32, "contexts": window(seed)})
            try:
                response = await request
                outcome = str(response.status_code)
                if response.status_code >= 500:
                    outcome += f" {response.json()['detail'][:40]}"
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
            seen[phase[0]][outcome] += 1


async def redis_drill(duration_s: float, clients: int, persist: bool) -> dict[str, Any]:
    redis = RedisServer(persist=persist)
    redis.start()
    url = redis.url
    server = serve(
        cache_url=url,
        bus_url=url,
        bus_channel="cpe:fault-drill",
        cache_timeout_ms="50",
        learning_url=url,
        learning_lease_ttl_ms="1000",
    )
    # (with the default CPE_ENGINE_LATENCY_BUDGET_MS=0: this drill is about Redis; load that a budget
    # sheds on a busy machine would be 503s too)
    try:
        server.wait_ready()
        phase = ["before"]
        seen: dict[str, Counter[str]] = {p: Counter() for p in ("before", "down", "after")}
        fed: dict[str, Counter[str]] = {p: Counter() for p in ("before", "down", "after")}
        acked: list[str] = []
        ready: dict[str, str] = {}
        until = time.monotonic() + duration_s
        load = [asyncio.create_task(_load(server.url, until, phase, seen, w)) for w in range(clients)]
        async with (
            httpx.AsyncClient(base_url=server.url) as probe,
            httpx.AsyncClient(base_url=server.url, timeout=10) as feeder,
        ):
            load.append(asyncio.create_task(_feedback(feeder, until, phase, fed, acked)))
            await asyncio.sleep(duration_s / 3)
            redis.kill()  # SIGKILL: no goodbye to its clients
            phase[0] = "down"
            await asyncio.sleep(duration_s / 6)
            ready["down"] = (await probe.get("/readyz")).json()["status"]
            await asyncio.sleep(duration_s / 6)
            redis.start()  # same port, empty
            phase[0] = "after"
            back = time.monotonic()
            # The cache's breaker lets a request probe Redis once its backoff (doubling while Redis was down)
            # is over: past the load's end, a trickle of predictions keeps probing, as traffic would.
            trickle = 0
            while (await probe.get("/readyz")).json()["status"] != "ready" and time.monotonic() < back + 10:
                if time.monotonic() > until:
                    trickle += 1
                    await probe.post("/v1/predict", json={"flow_key": "ef" * 32, "contexts": window(trickle)})
                await asyncio.sleep(0.05)
            answer = (await probe.get("/readyz")).json()
            ready["after"] = answer["status"]
            if answer.get("degraded"):
                ready["after_degraded"] = answer["degraded"]  # which part did not come back, and why
            recovery_s = time.monotonic() - back
            await asyncio.gather(*load)
        # the learner reads the stream as it goes; give it a moment for the last ones
        deadline = time.monotonic() + 10
        while (taken := delivered(url, acked)) < len(acked) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        kept = stream_ids(url)
        feedback = {
            "outcomes": {p: dict(c) for p, c in fed.items()},
            "acknowledged": len(acked),
            "in_stream": sum(i in kept for i in acked),
            "reached_learner": taken,
            "learner_buffer": learner_buffer(server.url),
            "stream_length": len(kept),
        }
        failed = {p: n for p, c in seen.items() for s, n in c.items() if not s.startswith(("2", "4"))}
        feedback_failed = {s for c in fed.values() for s in c if s not in ("202", "503")}
        tracebacks = "Traceback" in server.output()
        return {
            "drill": "redis",
            "outcomes": {p: dict(c) for p, c in seen.items()},
            "readiness": ready,
            "ready_again_after_s": round(recovery_s, 2),
            "feedback": feedback,
            "tracebacks": tracebacks,
            "ok": not failed
            and ready == {"down": "degraded", "after": "ready"}
            and all(seen.values())
            and not feedback_failed
            and all(fed[p].get("202", 0) > 0 for p in ("before", "after"))
            and feedback["in_stream"] == feedback["reached_learner"] == len(acked)
            and feedback["learner_buffer"] >= len(acked)
            and not tracebacks,
        }
    finally:
        server.close()
        redis.close()


# -- SIGTERM under load ------------------------------------------------------------------------------


async def sigterm_drill(in_flight: int, learning: str) -> dict[str, Any]:
    redis = RedisServer() if learning == "redis" else None
    shared = {}
    if redis is not None:
        redis.start()
        shared = {"learning_url": redis.url, "bus_url": redis.url}
    # a batch waits 1 s to fill: the requests of the wave are surely in the server when SIGTERM comes
    server = serve(engine_max_wait_us="1000000", shutdown_timeout_s="20", log_level="info", **shared)
    try:
        server.wait_ready()
        ws_url = server.url.replace("http", "ws")
        phase = ["before"]
        fed: dict[str, Counter[str]] = {"before": Counter(), "shutdown": Counter()}
        acked: list[str] = []
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            httpx.AsyncClient(base_url=server.url, timeout=30) as feeder,
            connect(f"{ws_url}/v1/stream/routing", proxy=None) as routing,
            connect(f"{ws_url}/v1/stream/predict", proxy=None) as stream,
        ):
            await routing.send(json.dumps({"op": "subscribe"}))
            await routing.recv()
            feeding = [
                asyncio.create_task(_feedback(feeder, time.monotonic() + 60, phase, fed, acked))
                for _ in range(2)
            ]
            bodies = [{"flow_key": "ef" * 32, "contexts": window(seed)} for seed in range(in_flight)]
            wave = [asyncio.create_task(client.post("/v1/predict", json=body)) for body in bodies]
            await asyncio.sleep(0.5)  # sent and read; now waiting for the batch
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            phase[0] = "shutdown"
            answers = await asyncio.gather(*wave, return_exceptions=True)
            await asyncio.gather(*feeding)
            closes = {}
            for name, ws in (("routing", routing), ("predict", stream)):
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), timeout=10)
                except ConnectionClosed as exc:
                    closes[name] = exc.rcvd.code if exc.rcvd is not None else None
            try:
                await client.get("/healthz")
                refused_after = False
            except httpx.TransportError:
                refused_after = True
        exit_code = await asyncio.to_thread(server.process.wait, 30)
        # uvicorn raises the signal again once it has shut down, so that the exit says what ended it
        clean = exit_code in (0, -signal.SIGTERM) and "Application shutdown complete" in server.output()
        statuses = Counter(
            a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers
        )
        feedback: dict[str, Any] = {
            "learning": learning,
            "outcomes": {p: dict(c) for p, c in fed.items()},
            "acknowledged": len(acked),
            "acknowledged_after_sigterm": fed["shutdown"].get("202", 0),
        }
        if redis is not None:  # in the stream, for the next learner
            kept = stream_ids(redis.url)
            feedback["in_stream"] = sum(i in kept for i in acked)
            feedback_ok = feedback["in_stream"] == len(acked)
        else:  # taken into the learner before the process ended
            stopped = re.search(r"(\d+) feedback samples taken in, (\d+) left waiting", server.output())
            feedback["taken_in"], feedback["left_waiting"] = (
                map(int, stopped.groups()) if stopped else (-1, -1)
            )
            feedback_ok = feedback["taken_in"] >= len(acked) and feedback["left_waiting"] == 0
        feedback_ok = feedback_ok and len(acked) > 0 and not set(fed["before"]) - {"202"}
        return {
            "drill": "sigterm",
            "in_flight_answers": {str(k): v for k, v in statuses.items()},
            "websocket_close_codes": closes,
            "new_requests_refused": refused_after,
            "feedback": feedback,
            "exit_code": exit_code,
            "clean_shutdown": clean,
            "stopped_after_s": round(time.monotonic() - started, 2),
            "ok": statuses == Counter({200: in_flight})
            and closes == {"routing": 1001, "predict": 1001}
            and refused_after
            and feedback_ok
            and clean,
        }
    finally:
        server.close()
        if redis is not None:
            redis.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="drill", required=True)
    p = sub.add_parser("redis", help="Redis killed and restarted under load")
    p.add_argument("--duration", type=float, default=9.0, help="seconds of load in all")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p.add_argument(
        "--redis-persistence",
        choices=("always", "none"),
        default="always",
        help="the private Redis's append-only file: fsynced on every write, or none",
    )
    p = sub.add_parser("sigterm", help="SIGTERM with requests in flight and WebSockets open")
    p.add_argument("--in-flight", type=int, default=32, help="requests in flight when SIGTERM comes")
    p.add_argument(
        "--learning", choices=("memory", "redis"), default="memory", help="where the feedback goes"
    )
    args = parser.parse_args(argv)
    if args.drill == "redis":
        result = asyncio.run(redis_drill(args.duration, args.clients, args.redis_persistence == "always"))
    else:
        result = asyncio.run(sigterm_drill(args.in_flight, args.learning))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
