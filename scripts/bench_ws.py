"""Routing fan-out: publish-to-receipt latency of routing messages to many WebSocket subscribers.

    python -m scripts.bench_ws [--subscribers 1000] [--rate 20] [--duration 10] [--json out.json]

Starts one `cpe serve` process on loopback whose bus is Redis (``--redis``, a channel of its own), then a
separate load process that opens ``--subscribers`` routing sockets to it and subscribes each to every
RoutingPrediction. This process then publishes RoutingPredictions on the bus channel at ``--rate`` per
second for ``--duration`` seconds, each carrying its send time (``time.time()``) in its first route_id;
both processes share the machine's clock, so receipt time minus send time is the publish-to-receipt
latency of every delivery. At the end each socket asks ``{"op": "ping"}`` and the pong tells how many
messages the server dropped for it. Prints a table (``--json`` also writes the figures).

The load process speaks just enough WebSocket over asyncio protocols (a handshake, masked client frames,
unmasked server frames) to find the timestamp in each frame: on a small machine, a full client library
parsing 20,000 frames a second would measure itself rather than the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAMP = b'"route_id":"t='


# -- the load process: many raw WebSocket clients ----------------------------------------------------
def _mask(payload: bytes) -> bytes:
    """A client text frame (clients must mask; the mask may as well be random)."""
    key = os.urandom(4)
    header = (
        bytes([0x81, 0x80 | len(payload)])
        if len(payload) < 126
        else b"\x81\xfe" + struct.pack("!H", len(payload))
    )
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + masked


class Subscriber(asyncio.Protocol):
    """One routing socket: handshake, subscribe, then record the latency of every message it receives."""

    def __init__(self, host: str, port: int, latencies: list[float], ready: asyncio.Future[None]) -> None:
        self.request = (
            f"GET /v1/stream/routing HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.latencies = latencies
        self.ready = ready  # resolved by the "subscribed" ack
        self.buffer = bytearray()
        self.upgraded = False
        self.received = 0
        self.pong: asyncio.Future[dict[str, Any]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        transport.write(self.request)

    def send(self, frame: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(_mask(json.dumps(frame).encode()))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            assert self.buffer.startswith(b"HTTP/1.1 101"), bytes(self.buffer[:200])
            del self.buffer[: end + 4]
            self.upgraded = True
            self.send({"op": "subscribe", "types": ["RoutingPrediction"]})
        while len(self.buffer) >= 2:
            length, start = self.buffer[1] & 0x7F, 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length, start = struct.unpack_from("!H", self.buffer, 2)[0], 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                length, start = struct.unpack_from("!Q", self.buffer, 2)[0], 10
            if len(self.buffer) < start + length:
                return
            payload = bytes(self.buffer[start : start + length])
            del self.buffer[: start + length]
            self.frame(payload, now)

    def frame(self, payload: bytes, now: float) -> None:
        at = payload.find(STAMP)
        if at >= 0:
            at += len(STAMP)
            self.latencies.append(now - float(payload[at : payload.index(b":", at)]))
            self.received += 1
        elif payload.startswith(b'{"op":"subscribed"'):
            self.ready.set_result(None)
        elif payload.startswith(b'{"op":"pong"') and self.pong is not None:
            self.pong.set_result(json.loads(payload))


async def run_load(host: str, port: int, subscribers: int) -> None:
    """Open the sockets, say READY, record until told to stop (a line on stdin), then print the figures."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    clients: list[Subscriber] = []
    gate = asyncio.Semaphore(64)  # connections in flight at once: the server's listen backlog

    async def open_one() -> None:
        async with gate:
            ready: asyncio.Future[None] = loop.create_future()
            _, client = await loop.create_connection(
                lambda: Subscriber(host, port, latencies, ready), host, port
            )
            clients.append(client)
            await asyncio.wait_for(ready, 30)

    started = time.perf_counter()
    await asyncio.gather(*(open_one() for _ in range(subscribers)))
    print(json.dumps({"ready": len(clients), "connect_s": time.perf_counter() - started}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # the publisher is done
    await asyncio.sleep(1.0)  # let the last deliveries land
    for client in clients:
        client.pong = loop.create_future()
        client.send({"op": "ping"})
    pongs = await asyncio.wait_for(asyncio.gather(*(c.pong for c in clients if c.pong)), 30)
    dropped = sum(p["dropped"] for p in pongs)
    print(json.dumps({"latencies": latencies, "dropped": dropped, "received": [c.received for c in clients]}))


# -- the driver: server, load process, publisher -----------------------------------------------------
def _message(seq: int, routes: int) -> bytes:
    suggestions = [
        {
            "route_id": f"t={time.time()!r}:{seq}" if i == 0 else f"route-{i}",
            "expected_latency_ms": 12.5 + i,
            "expected_throughput": 800.0 - i,
            "reliability_score": 0.99,
            "cost_factor": 1.0,
        }
        for i in range(routes)
    ]
    body = {
        "flow_key": uuid.uuid4().hex * 2,
        "predicted_context": [12.1, 1.4, 0.001, 840.0, 0.62, 0.0, 120.0, 4.0],
        "confidence": 0.71,
        "time_horizon_ms": 1000,
        "routing_suggestions": suggestions,
    }
    return json.dumps({"RoutingPrediction": body}, separators=(",", ":")).encode()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(sorted_values: list[float], q: float) -> float:
    return (
        sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
        if sorted_values
        else float("nan")
    )


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    import redis.asyncio as redis

    from tools.process import ServerProcess, cpe_serve, free_port  # here: the load process runs without it

    port = args.port or free_port()
    channel = args.channel or f"cpe:bench:{uuid.uuid4().hex}"
    settings = {
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_DEVICE": "cpu",
        "CPE_BUS_URL": args.redis,
        "CPE_BUS_CHANNEL": channel,
        "CPE_WS_HEARTBEAT_S": "3600",
        "CPE_LOG_LEVEL": "warning",
    }
    server: ServerProcess | None = None
    if not args.channel:  # else attach to a running server on that channel
        server = cpe_serve(settings, port).start()
    load: subprocess.Popen[str] | None = None
    try:
        if server is not None:
            await asyncio.to_thread(server.wait_ready, timeout_s=90)
        load = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scripts.bench_ws",
                "--load",
                "--port",
                str(port),
                "--subscribers",
                str(args.subscribers),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert load.stdin is not None and load.stdout is not None
        hello = json.loads(await asyncio.to_thread(load.stdout.readline))
        print(f"{hello['ready']} subscribers connected in {hello['connect_s']:.1f} s", file=sys.stderr)
        published = 0
        cpu_before = _cpu_s(server.pid) if server is not None else float("nan")
        async with redis.Redis.from_url(args.redis) as bus:
            start = time.perf_counter()
            interval = 1.0 / args.rate
            while (elapsed := time.perf_counter() - start) < args.duration:
                await bus.publish(channel, _message(published, args.routes))
                published += 1
                await asyncio.sleep(max(0.0, start + published * interval - time.perf_counter()))
            elapsed = time.perf_counter() - start
        load.stdin.write("done\n")
        load.stdin.flush()
        await asyncio.sleep(1.0)  # as the load process does, then the pings start
        cpu = (_cpu_s(server.pid) if server is not None else float("nan")) - cpu_before
        out = json.loads(await asyncio.to_thread(load.stdout.readline))
    finally:
        if load is not None:
            load.kill()
        if server is not None:
            server.stop(signal.SIGINT)
            server.log.close()
    latencies = sorted(out["latencies"])
    expected = published * args.subscribers
    return {
        "subscribers": args.subscribers,
        "published": published,
        "publish_rate": published / elapsed,
        "deliveries": len(latencies),
        "deliveries_per_s": len(latencies) / elapsed,
        "missing": expected - len(latencies),
        "dropped": out["dropped"],
        "message_bytes": len(_message(0, args.routes)),
        "server_cpu_us_per_delivery": cpu / max(len(latencies), 1) * 1e6,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p95_ms": _percentile(latencies, 0.95) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else float("nan")) * 1000,
    }


def _table(r: dict[str, Any]) -> str:
    rows = [
        ("subscribers", f"{r['subscribers']}"),
        ("messages published", f"{r['published']} ({r['publish_rate']:.1f}/s, {r['message_bytes']} B each)"),
        ("deliveries", f"{r['deliveries']} ({r['deliveries_per_s']:.0f}/s)"),
        ("missing / dropped", f"{r['missing']} / {r['dropped']}"),
        ("latency p50", f"{r['p50_ms']:.1f} ms"),
        ("latency p95", f"{r['p95_ms']:.1f} ms"),
        ("latency p99", f"{r['p99_ms']:.1f} ms  (target <= 50 ms)"),
        ("latency max", f"{r['max_ms']:.1f} ms"),
        ("server CPU", f"{r['server_cpu_us_per_delivery']:.1f} µs per delivery"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="routing messages published per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of publishing (at most 120)")
    parser.add_argument("--routes", type=int, default=4, help="routing_suggestions per message")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="the bus (loopback Redis)")
    parser.add_argument("--port", type=int, help="server port (default: a free one)")
    parser.add_argument("--channel", help="attach to the server already on --port, whose bus channel this is")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)  # the load process
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 120 or args.rate <= 0 or args.subscribers < 1:
        parser.error("need 0 < --duration <= 120, --rate > 0 and --subscribers >= 1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.subscribers + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    try:
        import uvloop
    except ImportError:  # the standard loop does, slower
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    if args.load:
        runner(run_load("127.0.0.1", args.port, args.subscribers))
        return 0
    result = runner(drive(args))
    print(_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
