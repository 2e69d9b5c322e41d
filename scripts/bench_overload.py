"""Overload: the saturation rate of POST /v1/predict, then 3x that rate open-loop, then a light load again.

    python -m scripts.bench_overload [--max-inflight 16] [--budget-ms 0] [--factor 3] [--runs 3]

Starts `cpe serve` (lstm, on `--device`: the CPU unless told) with CPE_ENGINE_LATENCY_BUDGET_MS set to
``--budget-ms``. As in `cpe bench`, the server is pinned to the first CPU and this process, the load
generator (on uvloop), to the last, so that neither measures the other's use of a core (``--pin none``:
not pinned). Saturation: the answers/s (200s) of closed-loop load (scripts.loadgen, 64 connections),
measured once on a server without the in-flight cap (CPE_ADMISSION=fixed CPE_MAX_INFLIGHT=0), the rest on
one with the service's default admission (the adaptive limit), or the fixed ``--max-inflight``. Overload:
requests sent at a fixed rate, ``--factor`` x saturation, whatever the answers (open loop), each on a free
connection of a pool opened beforehand (one due while all are busy is counted as unsent), its latency
counted from the moment it was due, so that a slow server cannot hide its queue by slowing the sender.
Recovery: 10 % of saturation right after. Prints one JSON line per run and the medians over runs: admitted
(200) p50/p99, the share of 503 and whether each carried Retry-After, and the recovery phase's p99 and 503
share. On a busy machine the generator itself runs late (``send_lag_p99_ms``);
``admitted_p99_from_send_ms`` counts from when each request was written instead, which leaves that out
(the figure to judge the server by is still ``admitted_p99_ms``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import uvloop

from scripts.faults import serve, window
from scripts.loadgen import drive, read_templates
from tools.process import read_metrics

_HEAD = b"\r\n\r\n"
_KEY = b'"flow_key": "00000000'  # how every body's flow key starts
_TAGS = itertools.count(int(time.time()) % (1 << 31))


@dataclass
class OpenLoop:
    latencies_ms: dict[int, list[float]] = field(default_factory=dict)  # status -> latencies
    # the admitted requests' latencies counted from when each was written, not due: what is left once the
    # generator's own lateness (a busy machine's, send_lag_ms) is taken out
    sent_latencies_ms: list[float] = field(default_factory=list)
    retry_after: int = 0  # 503s that carried Retry-After
    errors: int = 0
    send_lag_ms: list[float] = field(default_factory=list)  # how late the generator sent each request
    unsent: int = 0  # requests due while every connection was still waiting for an answer


class _Conn(asyncio.Protocol):
    def __init__(self, pool: list[_Conn], stats: OpenLoop) -> None:
        self.pool, self.stats = pool, stats
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.due = self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, due: float) -> None:
        assert self.transport is not None
        # the loop's timers are in whole ms: a request may go out a little before it is due
        self.due, self.sent = due, max(due, time.perf_counter())
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(_HEAD)
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        if len(self.buffer) < end + 4 + length:
            return
        status, now = int(head[9:12]), time.perf_counter()
        self.stats.latencies_ms.setdefault(status, []).append((now - self.due) * 1e3)
        if status == 200:
            self.stats.sent_latencies_ms.append((now - self.sent) * 1e3)
        if status == 503 and b"\r\nretry-after:" in head:
            self.stats.retry_after += 1
        del self.buffer[: end + 4 + length]
        self.pool.append(self)  # idle again

    def connection_lost(self, exc: Exception | None) -> None:
        if self.due and self not in self.pool:  # lost while waiting for an answer (closed idle: not one)
            self.stats.errors += 1


async def open_loop(
    port: int,
    bodies: list[bytes],
    rate: float,
    duration_s: float,
    connections: int,
    marker: bytes = _KEY,
    tail_s: float = 2.0,
) -> OpenLoop:
    """Send at ``rate`` per second for ``duration_s``, whatever the answers, on ``connections`` connections
    opened beforehand. Opening one on demand would hold the schedule up for a handshake with a busy
    server (the generator then measures its own backlog: seconds, seen here); a request due while every
    connection still waits for an answer is counted as unsent instead. Each request's ``marker`` (the
    start of its flow key) is rewritten with a tag of its own; ``tail_s``: how long the last answers may
    take to come."""
    loop = asyncio.get_running_loop()
    stats, idle = OpenLoop(), []  # type: ignore[var-annotated]
    requests = [
        b"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
        for body in bodies
    ]
    opened = await asyncio.gather(
        *(loop.create_connection(lambda: _Conn(idle, stats), "127.0.0.1", port) for _ in range(connections))
    )
    idle.extend(conn for _, conn in opened)
    start = time.perf_counter()
    n = int(rate * duration_s)
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if not idle:
            stats.unsent += 1
            continue
        stats.send_lag_ms.append((time.perf_counter() - due) * 1e3)  # the generator's own backlog
        # a flow key of its own (the key's first 8 hex digits): no answer comes from the cache, whatever
        # the run; cache hits never wait for the engine, so they would slip past the in-flight cap
        request = requests[i % len(requests)].replace(marker, _tagged(marker, next(_TAGS)), 1)
        idle.pop().send(request, due)
    await asyncio.sleep(tail_s)  # the last answers
    for transport, _ in opened:
        transport.close()
    return stats


def _tagged(marker: bytes, tag: int) -> bytes:
    """``marker`` with its last 8 characters (zeros, or cpe bench's @@@@@@@@) replaced by ``tag`` in hex."""
    return marker[:-8] + b"%08x" % tag


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 2) if values else float("nan")


def summary(stats: OpenLoop, duration_s: float) -> dict[str, float]:
    ok = stats.latencies_ms.get(200, [])
    shed = len(stats.latencies_ms.get(503, []))
    total = sum(map(len, stats.latencies_ms.values())) + stats.errors
    return {
        "answered": total,
        "admitted_per_s": round(len(ok) / duration_s),
        "admitted_p50_ms": _pct(ok, 50),
        "admitted_p99_ms": _pct(ok, 99),
        "admitted_p99_from_send_ms": _pct(stats.sent_latencies_ms, 99),
        "shed_p50_ms": _pct(stats.latencies_ms.get(503, []), 50),
        "shed_p99_ms": _pct(stats.latencies_ms.get(503, []), 99),
        "send_lag_p99_ms": _pct(stats.send_lag_ms, 99),
        "unsent": stats.unsent,
        "shed_share": round(shed / total, 3) if total else 0.0,
        "shed_with_retry_after": round(stats.retry_after / shed, 3) if shed else 1.0,
        "other": total - len(ok) - shed,
    }


async def saturation(port: int, bodies_file: str) -> float:
    """Answers/s (200s) of closed-loop load on 64 connections."""
    closed = await drive(f"http://127.0.0.1:{port}/v1/predict", read_templates(bodies_file), 64, 3.0, 1.0, 0)
    return float(closed["statuses"].get("200", 0) / closed["duration_s"])


def _scrape(port: int) -> dict[str, float]:
    """The admission limit now and the engine's batch-size totals (summed over the models)."""
    return read_metrics(
        f"http://127.0.0.1:{port}", "cpe_inflight_limit", "cpe_batch_size_sum", "cpe_batch_size_count"
    )


async def _watch_limit(port: int, seen: list[float], every_s: float = 0.2) -> None:
    """The in-flight limit every ``every_s`` (in a thread: the generator's loop keeps its schedule)."""
    while True:
        await asyncio.sleep(every_s)
        seen.append((await asyncio.to_thread(_scrape, port)).get("cpe_inflight_limit", float("nan")))


async def one_run(port: int, bodies: list[bytes], rate: float, args: argparse.Namespace) -> dict:
    before, limits = await asyncio.to_thread(_scrape, port), []  # type: ignore[var-annotated]
    watcher = asyncio.create_task(_watch_limit(port, limits)) if args.watch else None
    overload = summary(
        await open_loop(port, bodies, args.factor * rate, args.duration, args.connections), args.duration
    )
    if watcher is not None:
        watcher.cancel()
    after = await asyncio.to_thread(_scrape, port)
    # what the limit let the engine do under overload: the mean windows per forward pass, and the limit
    passes = after.get("cpe_batch_size_count", 0.0) - before.get("cpe_batch_size_count", 0.0)
    windows = after.get("cpe_batch_size_sum", 0.0) - before.get("cpe_batch_size_sum", 0.0)
    overload["mean_batch"] = round(windows / passes, 1) if passes else float("nan")
    if limits:
        overload["limit_median"] = statistics.median(limits)
        overload["limit_max"] = max(limits)
    recovery = summary(await open_loop(port, bodies, 0.1 * rate, 3.0, args.connections), 3.0)
    return {"overload": overload, "recovery": recovery}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-ms", type=float, default=0.0, help="CPE_ENGINE_LATENCY_BUDGET_MS")
    parser.add_argument("--connections", type=int, default=512, help="opened before each open-loop phase")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        help="a fixed cap (CPE_ADMISSION=fixed CPE_MAX_INFLIGHT=N); default: the service's defaults "
        "(the adaptive limit)",
    )
    parser.add_argument("--factor", type=float, default=3.0, help="overload rate / saturation rate")
    parser.add_argument(
        "--saturation",
        type=float,
        default=None,
        help="take this saturation rate (answers/s) rather than measure it: to compare settings at one rate",
    )
    parser.add_argument("--device", default="cpu", help="the server's CPE_DEVICE: cpu, cuda, auto")
    parser.add_argument(
        "--watch",
        action="store_true",
        help="also read the server's in-flight limit from /metrics five times a second during overload",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="CPE_X=VALUE",
        help="a setting of the overloaded server (repeatable; e.g. CPE_ADMISSION_LATENCY_MS=15)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of overload per run")
    parser.add_argument(
        "--pin", choices=("auto", "none"), default="auto", help="auto: server CPU 0, load last"
    )
    parser.add_argument(
        "--port",
        type=int,
        help="one open-loop run of --duration at --saturation x --factor against a server already on this "
        "loopback port, bodies from --bodies (cpe bench's: flow keys marked @@@@@@@@); prints its summary",
    )
    parser.add_argument("--bodies", help="with --port: a file of JSON bodies, one a line")
    parser.add_argument(
        "--mark", action="store_true", help="with --port: prefix the line as cpe bench expects"
    )
    args = parser.parse_args(argv)
    if args.port is not None:
        return _against(args)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[0]} if args.pin == "auto" and len(cpus) > 1 else None
    if server_cpus is not None:
        os.sched_setaffinity(0, {cpus[-1]})
    # distinct windows of 32 contexts, flow keys tagged per request: no answer comes from the cache
    bodies = [json.dumps({"flow_key": f"{i:064x}", "contexts": window(i, 32)}).encode() for i in range(4096)]
    budget = str(args.budget_ms)
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl") as f:
        # loadgen tags each request in place of @@@@@@@@: the keys' leading zeros here
        f.write(
            b"\n".join(b.replace(b'"flow_key": "00000000', b'"flow_key": "@@@@@@@@', 1) for b in bodies[:64])
        )
        f.flush()
        # the saturation rate of the service without a cap: with one, a closed loop wider than the cap would
        # retry each refusal at once, a storm that no client pool makes, and measure that storm instead
        if args.saturation is not None:
            rate = args.saturation
        else:
            server = serve(
                server_cpus,
                device=args.device,
                engine_latency_budget_ms=budget,
                admission="fixed",
                max_inflight="0",
            )
            try:
                server.wait_ready()
                rate = uvloop.run(saturation(server.port, f.name))
            finally:
                server.stop()
    print(json.dumps({"saturation_rps": round(rate)}), flush=True)
    cap = {} if args.max_inflight is None else {"admission": "fixed", "max_inflight": str(args.max_inflight)}
    for setting in args.setting:
        name, _, value = setting.partition("=")
        cap[name.removeprefix("CPE_").lower()] = value
    server = serve(server_cpus, device=args.device, engine_latency_budget_ms=budget, **cap)
    runs = []
    try:
        server.wait_ready()
        for _ in range(args.runs):
            run = uvloop.run(one_run(server.port, bodies, rate, args))
            print(json.dumps(run), flush=True)
            runs.append(run)
    finally:
        server.stop()
    median = {
        phase: {k: statistics.median(r[phase][k] for r in runs) for k in runs[0][phase]}
        for phase in ("overload", "recovery")
    }
    median["saturation_rps"] = round(rate)  # type: ignore[assignment]
    head = {
        "budget_ms": args.budget_ms,
        "max_inflight": "adaptive" if args.max_inflight is None else args.max_inflight,
        "factor": args.factor,
        "device": args.device,
        "settings": args.setting,
        "server_cpus": sorted(server_cpus) if server_cpus else "all",
    }
    print(json.dumps({**head, "median_of": len(runs), **median}))
    return 0


def _against(args: argparse.Namespace) -> int:
    """One overload run against a running server (``cpe bench``'s), its summary as one JSON line."""
    if args.saturation is None or not args.bodies:
        print("bench_overload: --port needs --saturation and --bodies", file=sys.stderr)
        return 2
    with open(args.bodies, "rb") as f:
        bodies = [line.strip() for line in f if line.strip()]
    rate = args.factor * args.saturation
    stats = uvloop.run(open_loop(args.port, bodies, rate, args.duration, args.connections, b"@@@@@@@@", 1.0))
    print(("CPE_BENCH_RESULT " if args.mark else "") + json.dumps(summary(stats, args.duration)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
