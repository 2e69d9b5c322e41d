"""Fault drills against a real `cpe serve` process: Redis killed and restarted under load; SIGTERM under load.

    python scripts/faults.py redis   [--duration 9]   # Redis (cache + bus) SIGKILLed at 1/3, back at 2/3
    python scripts/faults.py sigterm                  # SIGTERM while requests and WebSockets are open

Each starts its own server on a free loopback port, and the Redis drill its own private redis-server on
another (never a shared one), drives it with concurrent clients, and prints one JSON line of what it saw;
the exit status is 0 when the service held: no 5xx and no failed request while Redis was gone, ready again
once it is back; after SIGTERM every request in flight answered 200, both WebSockets closed with 1001 and
the server shut down cleanly. tests/app/test_faults.py runs both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def window(seed: int, n: int = 16) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    base = np.array([20.0, 2.0, 0.01, 500.0, 0.5, 0.001, 100.0, 5.0])
    return [
        {"timestamp": 1_700_000_000_000 + i * 1000, "features": (base * (1 + 0.05 * rng.random(8))).tolist()}
        for i in range(n)
    ]


class Server:
    """A `python -m app.cli serve` process with the given CPE_* settings, its output in a temporary file."""

    def __init__(self, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CPE_")}
        env |= {"CPE_DEVICE": "cpu", "CPE_MODELS": "lstm", "CPE_MODEL": "lstm", "CPE_LOG_LEVEL": "warning"}
        env |= {f"CPE_{k.upper()}": v for k, v in settings.items()}
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


class PrivateRedis:
    """A redis-server of this drill's own, on a free port, without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        self.process = subprocess.Popen([*argv, "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("the private redis-server did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


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


async def redis_drill(duration_s: float, clients: int) -> dict[str, Any]:
    redis = PrivateRedis()
    redis.start()
    url = f"redis://127.0.0.1:{redis.port}/0"
    server = Server(cache_url=url, bus_url=url, bus_channel="cpe:fault-drill", cache_timeout_ms="50")
    # (with the default CPE_ENGINE_LATENCY_BUDGET_MS=0: this drill is about Redis; load that a budget
    # sheds on a busy machine would be 503s too)
    try:
        server.wait_ready()
        phase = ["before"]
        seen: dict[str, Counter[str]] = {p: Counter() for p in ("before", "down", "after")}
        ready: dict[str, str] = {}
        until = time.monotonic() + duration_s
        load = [asyncio.create_task(_load(server.url, until, phase, seen, w)) for w in range(clients)]
        async with httpx.AsyncClient(base_url=server.url) as probe:
            await asyncio.sleep(duration_s / 3)
            redis.kill()  # SIGKILL: no goodbye to its clients
            phase[0] = "down"
            await asyncio.sleep(duration_s / 6)
            ready["down"] = (await probe.get("/readyz")).json()["status"]
            await asyncio.sleep(duration_s / 6)
            redis.start()  # same port, empty
            phase[0] = "after"
            back = time.monotonic()
            while (await probe.get("/readyz")).json()["status"] != "ready" and time.monotonic() < until:
                await asyncio.sleep(0.05)
            ready["after"] = (await probe.get("/readyz")).json()["status"]
            recovery_s = time.monotonic() - back
        await asyncio.gather(*load)
        failed = {p: n for p, c in seen.items() for s, n in c.items() if not s.startswith(("2", "4"))}
        tracebacks = "Traceback" in server.output()
        return {
            "drill": "redis",
            "outcomes": {p: dict(c) for p, c in seen.items()},
            "readiness": ready,
            "ready_again_after_s": round(recovery_s, 2),
            "tracebacks": tracebacks,
            "ok": not failed
            and ready == {"down": "degraded", "after": "ready"}
            and all(seen.values())
            and not tracebacks,
        }
    finally:
        server.stop()
        redis.kill()


# -- SIGTERM under load ------------------------------------------------------------------------------


async def sigterm_drill(in_flight: int) -> dict[str, Any]:
    # a batch waits 1 s to fill: the requests of the wave are surely in the server when SIGTERM comes
    server = Server(engine_max_wait_us="1000000", shutdown_timeout_s="20", log_level="info")
    try:
        server.wait_ready()
        ws_url = server.url.replace("http", "ws")
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            connect(f"{ws_url}/v1/stream/routing", proxy=None) as routing,
            connect(f"{ws_url}/v1/stream/predict", proxy=None) as stream,
        ):
            await routing.send(json.dumps({"op": "subscribe"}))
            await routing.recv()
            bodies = [{"flow_key": "ef" * 32, "contexts": window(seed)} for seed in range(in_flight)]
            wave = [asyncio.create_task(client.post("/v1/predict", json=body)) for body in bodies]
            await asyncio.sleep(0.5)  # sent and read; now waiting for the batch
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*wave, return_exceptions=True)
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
        return {
            "drill": "sigterm",
            "in_flight_answers": {str(k): v for k, v in statuses.items()},
            "websocket_close_codes": closes,
            "new_requests_refused": refused_after,
            "exit_code": exit_code,
            "clean_shutdown": clean,
            "stopped_after_s": round(time.monotonic() - started, 2),
            "ok": statuses == Counter({200: in_flight})
            and closes == {"routing": 1001, "predict": 1001}
            and refused_after
            and clean,
        }
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="drill", required=True)
    p = sub.add_parser("redis", help="Redis killed and restarted under load")
    p.add_argument("--duration", type=float, default=9.0, help="seconds of load in all")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p = sub.add_parser("sigterm", help="SIGTERM with requests in flight and WebSockets open")
    p.add_argument("--in-flight", type=int, default=32, help="requests in flight when SIGTERM comes")
    args = parser.parse_args(argv)
    if args.drill == "redis":
        result = asyncio.run(redis_drill(args.duration, args.clients))
    else:
        result = asyncio.run(sigterm_drill(args.in_flight))
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
