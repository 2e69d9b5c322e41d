"""Benchmark of the prediction cache against a running server: hit rate vs the workload's maximum, and
the latency over HTTP of a hit vs a miss; also the in-process tier's memory per entry.

The workload is Zipf-distributed over many flows (default 10,000, exponent 1.0): popular flows are
queried often. Each flow's window slides by one context every ``k``-th query of that flow (a context
update), so only repeats of an unchanged (flow, window) can be hits. Requests of one flow go one after
the other, as one observer asks about its flow; ``-c`` flows are in flight at once.

The theoretical maximum hit rate is that of an unbounded cache with the same TTL over the same request
times: a request is a hit if its (flow, window) was answered before and that answer is less than the TTL
old. Without the TTL it is ``1 - distinct keys / requests``; both are printed. The target is an achieved
hit rate of at least 95 % of the maximum.

Every run starts its own server (``python -m app.cli serve``, the lstm model only, on the CPU) on a free
loopback port, and stops it; each run's flow keys carry a random salt, so that nothing an earlier run
left in Redis is a hit. A second phase sends, one at a time, a new window (a miss) then the same one
again (a hit), and reports the medians. Then the memory of the in-process tier is measured with
tracemalloc: 100,000 entries of the server's own serialized PredictionResult, per strategy.

    python -m scripts.bench_cache                      # the default runs, a table
    python -m scripts.bench_cache --requests 10000 --json out.json
    python -m scripts.bench_cache --run redis://127.0.0.1:6379/14,1000,lru
    python -m scripts.bench_cache --memory-only
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import secrets
import statistics
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.cache.memory import STRATEGIES, MemoryCache
from tools.bench import BenchError, Server
from tools.process import free_port

LOOPBACK = "127.0.0.1"
DEFAULT_RUNS = [
    "memory://,50000,lru",  # the default in-process tier: holds every live window
    "memory://,2000,lru",  # a tier too small for the live windows: what it loses
    "redis://127.0.0.1:6379/14,1000,lru",  # a small in-process tier in front of Redis, which covers it
]
WINDOW = 16  # contexts per request
BASE = np.array([20.0, 2.0, 0.01, 500.0, 0.5, 0.001, 100.0, 5.0])


# -- the workload ---------------------------------------------------------------------------------


@dataclass
class Workload:
    """The request sequence: flow per request, window version per request, and the bodies."""

    flows: np.ndarray  # (N,) flow index of each request
    versions: np.ndarray  # (N,) window version of each request (its flow's query count // k)
    bodies: dict[tuple[int, int], bytes]  # (flow, version) -> the JSON body

    @property
    def distinct(self) -> int:
        return len(self.bodies)


def make_workload(n_flows: int, n_requests: int, zipf_s: float, k: int, seed: int, salt: str) -> Workload:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_flows + 1) ** zipf_s
    flows = rng.choice(n_flows, size=n_requests, p=p / p.sum())
    versions = np.empty(n_requests, dtype=np.int64)
    asked = np.zeros(n_flows, dtype=np.int64)
    for i, f in enumerate(flows):
        versions[i] = asked[f] // k
        asked[f] += 1
    bodies: dict[tuple[int, int], bytes] = {}
    for f in np.unique(flows):
        n_versions = int(asked[f] - 1) // k + 1
        # the flow's context series; version v's window is contexts v .. v + WINDOW - 1 (it slides)
        noise = np.random.default_rng([seed, int(f)]).standard_normal((n_versions + WINDOW, 8))
        series = BASE * (1 + 0.1 * noise)
        series[:, [2, 4, 5]] = np.clip(series[:, [2, 4, 5]], 0.0, 1.0)
        flow_key = f"{salt}{int(f):056x}"
        for v in range(n_versions):
            contexts = [
                {"timestamp": 1_700_000_000_000 + (v + i) * 1000, "features": series[v + i].tolist()}
                for i in range(WINDOW)
            ]
            bodies[(int(f), v)] = orjson.dumps({"flow_key": flow_key, "contexts": contexts})
    return Workload(flows, versions, bodies)


def theoretical_max(w: Workload, sent: list[float], done: list[float], ttl_s: float) -> tuple[float, float]:
    """(without TTL, with TTL): the hit rates of an unbounded cache over these request times."""
    n = len(w.flows)
    plain = 1.0 - w.distinct / n
    expires: dict[tuple[int, int], float] = {}
    hits = 0
    for i in sorted(range(n), key=sent.__getitem__):
        key = (int(w.flows[i]), int(w.versions[i]))
        if key in expires and sent[i] < expires[key]:
            hits += 1
        else:
            expires[key] = done[i] + ttl_s  # stored when its answer was made
    return plain, hits / n


# -- a lean HTTP/1.1 client -----------------------------------------------------------------------


class Connection:
    """One keep-alive connection; ``post`` returns (status, body)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(LOOPBACK, self.port)
        assert self.reader is not None
        self.writer.write(
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % (path.encode(), LOOPBACK.encode(), len(body))
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class RunResult:
    run: str
    requests: int
    errors: int
    achieved: float
    max_plain: float
    max_ttl: float
    duration_s: float
    p50_hit_ms: float = float("nan")
    p50_miss_ms: float = float("nan")
    latency_pairs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def of_max(self) -> float:
        return self.achieved / self.max_ttl if self.max_ttl else float("nan")


async def drive(w: Workload, port: int, concurrency: int, max_seconds: float) -> tuple[list[float], ...]:
    """Send the workload; per request: send time, answer time, cached (1/0, -1 = error or not sent)."""
    n = len(w.flows)
    sent, done, cached = [0.0] * n, [0.0] * n, [-1] * n
    locks: dict[int, asyncio.Lock] = {}
    order = iter(range(n))
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        conn = Connection(port)
        try:
            for i in order:
                if time.perf_counter() > deadline:
                    return
                flow = int(w.flows[i])
                # taken in sequence order with no await in between, so a flow's requests keep their order
                async with locks.setdefault(flow, asyncio.Lock()):
                    sent[i] = time.perf_counter()
                    status, body = await conn.post("/v1/predict", w.bodies[(flow, int(w.versions[i]))])
                    done[i] = time.perf_counter()
                    if status == 200:
                        cached[i] = 1 if orjson.loads(body)["cached"] else 0
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent, done, [float(c) for c in cached]


async def latency_pairs(port: int, pairs: int, salt: str) -> tuple[list[float], list[float], bytes]:
    """One at a time: a new window (a miss), then the same again (a hit). Returns ms lists, a result."""
    conn = Connection(port)
    hits, misses, sample = [], [], b""
    rng = np.random.default_rng(1)
    try:
        for j in range(pairs):
            series = BASE * (1 + 0.1 * rng.standard_normal((WINDOW, 8)))
            series[:, [2, 4, 5]] = np.clip(series[:, [2, 4, 5]], 0.0, 1.0)
            contexts = [
                {"timestamp": 1_700_000_000_000 + i * 1000, "features": series[i].tolist()}
                for i in range(WINDOW)
            ]
            body = orjson.dumps({"flow_key": f"{salt}{'f' * 48}{j:08x}", "contexts": contexts})
            for expect, into in ((False, misses), (True, hits)):
                start = time.perf_counter()
                status, answer = await conn.post("/v1/predict", body)
                into.append((time.perf_counter() - start) * 1000.0)
                if status != 200 or orjson.loads(answer)["cached"] is not expect:
                    got = f"{status} {answer[:200]!r}"
                    raise BenchError(f"latency pair {j}: expected cached={expect}, got {got}")
                if not expect:
                    sample = answer
    finally:
        conn.close()
    return hits, misses, sample


def serve(run: str, ttl_ms: int, log_dir: Path) -> Server:
    url, max_entries, strategy = run.split(",")
    port = free_port()
    env = {
        "CPE_CACHE_URL": url,
        "CPE_CACHE_MAX_ENTRIES": max_entries,
        "CPE_CACHE_STRATEGY": strategy,
        "CPE_CACHE_TTL_MS": str(ttl_ms),
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_DEVICE": "cpu",
        "CPE_LOG_LEVEL": "warning",
        "CPE_HOST": LOOPBACK,
    }
    argv = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "1"]
    name = "cpe-" + run.replace("://", "-").replace("/", "-").replace(",", "-").replace(":", "-")
    server = Server(name, argv, port, log_dir, None, env)
    server.wait_ready(time.monotonic() + 120)
    return server


def bench_run(run: str, args: argparse.Namespace, log_dir: Path) -> tuple[RunResult, bytes]:
    salt = secrets.token_hex(4)
    workload = make_workload(args.flows, args.requests, args.zipf, args.update_every, args.seed, salt)
    server = serve(run, args.ttl_ms, log_dir)
    try:
        start = time.perf_counter()
        sent, done, cached = asyncio.run(drive(workload, server.port, args.concurrency, args.max_seconds))
        duration = time.perf_counter() - start
        answered = [i for i, c in enumerate(cached) if c >= 0]
        tried = [i for i, t in enumerate(sent) if t > 0]
        # the maximum over the requests that were sent (a run cut by --max-seconds sends fewer)
        part = Workload(workload.flows[tried], workload.versions[tried], {})
        part.bodies = {(int(f), int(v)): b"" for f, v in zip(part.flows, part.versions, strict=True)}
        max_plain, max_ttl = theoretical_max(
            part, [sent[i] for i in tried], [done[i] for i in tried], args.ttl_ms / 1000.0
        )
        result = RunResult(
            run=run,
            requests=len(tried),
            errors=len(tried) - len(answered),
            achieved=sum(cached[i] for i in answered) / max(len(tried), 1),
            max_plain=max_plain,
            max_ttl=max_ttl,
            duration_s=duration,
        )
        hits, misses, sample = asyncio.run(latency_pairs(server.port, args.pairs, salt))
        result.p50_hit_ms, result.p50_miss_ms = statistics.median(hits), statistics.median(misses)
        result.latency_pairs = args.pairs
        return result, sample
    finally:
        server.stop()


# -- memory per entry -----------------------------------------------------------------------------


def memory_per_entry(value: bytes, n: int = 100_000) -> dict[str, dict[str, float]]:
    """Bytes per entry of the in-process tier holding ``n`` entries of ``value``-sized results."""
    # keys as the service makes them: {64 hex}:32 hex
    keys = [f"{{{i:064x}}}:{i:032x}" for i in range(n)]
    out = {}
    for strategy in STRATEGIES:
        gc.collect()
        tracemalloc.start()
        cache = MemoryCache(max_entries=n, strategy=strategy)
        # fresh bytes per entry, as each stored result is its own object
        asyncio.run(cache.set_many([(k, bytes(bytearray(value))) for k in keys]))
        gc.collect()
        with_values = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del cache
        key_bytes = sum(sys.getsizeof(k) for k in keys) / n
        out[strategy] = {
            "total": with_values / n + key_bytes,  # the keys were allocated before tracing
            "value": float(sys.getsizeof(bytes(bytearray(value)))),
            "key": key_bytes,
        }
    return out


# -- report ---------------------------------------------------------------------------------------


def table(results: list[RunResult], memory: dict[str, dict[str, float]], value_len: int) -> str:
    lines = []
    if results:
        lines += [
            "| run (url, max entries, strategy) | requests | errors | achieved | max (TTL) | max (no TTL) "
            "| achieved/max | p50 hit ms | p50 miss ms | s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for r in results:
        lines.append(
            f"| {r.run} | {r.requests} | {r.errors} | {r.achieved:.1%} | {r.max_ttl:.1%} | {r.max_plain:.1%} "
            f"| {r.of_max:.1%} | {r.p50_hit_ms:.2f} | {r.p50_miss_ms:.2f} | {r.duration_s:.0f} |"
        )
    lines.append("")
    lines.append(f"in-process tier, 100,000 entries of a {value_len}-byte result:")
    for strategy, m in memory.items():
        lines.append(
            f"  {strategy}: {m['total']:.0f} B/entry (value object {m['value']:.0f}, key {m['key']:.0f}, "
            f"bookkeeping {m['total'] - m['value'] - m['key']:.0f})"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--run",
        action="append",
        help=f"URL,MAX_ENTRIES,STRATEGY of a server to measure; repeatable (default: {DEFAULT_RUNS})",
    )
    p.add_argument("--flows", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=30_000)
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the flows' popularity")
    p.add_argument("--update-every", type=int, default=10, help="k: a flow's window changes every k-th query")
    p.add_argument("-c", "--concurrency", type=int, default=16, help="flows in flight at once")
    p.add_argument("--ttl-ms", type=int, default=60_000)
    p.add_argument("--max-seconds", type=float, default=120.0, help="cut a run's workload after this")
    p.add_argument("--pairs", type=int, default=200, help="miss/hit pairs of the latency phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument(
        "--memory-only", action="store_true", help="only the memory per entry (of one result from a server)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results, sample = [], b""
    with tempfile.TemporaryDirectory(prefix="cpe-bench-cache-") as log_dir:
        if args.memory_only:
            server = serve(DEFAULT_RUNS[0], args.ttl_ms, Path(log_dir))
            try:
                _, _, sample = asyncio.run(latency_pairs(server.port, 1, secrets.token_hex(4)))
            finally:
                server.stop()
            print(table([], memory_per_entry(sample), len(sample)))
            return 0
        for run in args.run or DEFAULT_RUNS:
            result, sample = bench_run(run, args, Path(log_dir))
            results.append(result)
            print(
                f"{run}: achieved {result.achieved:.1%} of requests, max {result.max_ttl:.1%} "
                f"({result.of_max:.1%} of it); p50 hit {result.p50_hit_ms:.2f} ms, "
                f"miss {result.p50_miss_ms:.2f} ms",
                flush=True,
            )
    memory = memory_per_entry(sample)
    print()
    print(
        f"{args.flows} flows, {args.requests} requests, Zipf s={args.zipf}, window changes every "
        f"{args.update_every}th query of a flow, {args.concurrency} flows in flight, TTL {args.ttl_ms} ms"
    )
    print(table(results, memory, len(sample)))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "runs": [r.__dict__ | {"of_max": r.of_max} for r in results],
                    "memory_per_entry": memory,
                    "result_bytes": len(sample),
                },
                indent=2,
            )
        )
    failed = [r.run for r in results if r.errors or r.of_max < 0.95]
    if failed:
        print(f"\nbelow 95 % of the maximum hit rate (or with errors): {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
