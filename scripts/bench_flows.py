"""What a flow costs, and how fast observations are applied, in this process (no HTTP).

    python -m scripts.bench_flows [--flows 100000] [--window 64] [--redis redis://127.0.0.1:6379/13]

1. Memory: ``--flows`` flows in the in-process store (memory://), each window filled, measured with
   tracemalloc (Python and numpy allocations) and as the growth of this process's RSS.
2. Ingest: POST /v1/observe bodies of 1,000 native contexts (one per flow, 10,000 flows) read and
   applied by the ``IngestService`` as the handler does (the fast reader, then the store), with memory://
   and, when --redis is given, a Redis store (its keys under a private prefix, deleted after). Medians
   of five runs. The HTTP server, the event loop and a load generator come on top (make bench).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent

from app.flows import FlowContext, create_flow_store  # noqa: E402
from app.ingest import IngestService  # noqa: E402

T0 = 1_767_225_600_000


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def memory(flows: int, window: int) -> None:
    store = create_flow_store("memory://", window=window, max_flows=flows)
    keys = [f"{i:064x}" for i in range(flows)]
    row = np.arange(8, dtype=np.float32)
    rss = rss_bytes()
    tracemalloc.start()
    for step in range(window):
        await store.append([FlowContext(k, T0 + step * 1000, row.copy()) for k in keys])
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    grown = rss_bytes() - rss
    print(
        f"memory: {flows} flows x {window} contexts: {traced / flows:.0f} B per flow traced "
        f"({traced / 2**20:.0f} MiB), RSS +{grown / 2**20:.0f} MiB ({grown / flows:.0f} B per flow)"
    )


def bodies(n_bodies: int, per_body: int, flows: int) -> list[bytes]:
    out = []
    for b in range(n_bodies):
        observations = [
            {
                "Context": {
                    "flow_key": f"{(b * per_body + i) % flows:064x}",
                    "timestamp": T0 + (b * per_body + i) // flows * 1000,
                    "features": [12.5, 1.25, 0.01, 800.0, 0.5, 0.0, 100.0, 3.0],
                }
            }
            for i in range(per_body)
        ]
        out.append(orjson.dumps({"observations": observations}))
    return out


async def ingest(url: str, runs: int = 5) -> None:
    rates = []
    for _ in range(runs):
        prefix = f"cpe-bench-{secrets.token_hex(4)}:"
        async with create_flow_store(url, window=64, prefix=prefix) as store:
            service = IngestService(store, max_batch=10_000)
            sent = bodies(20, 1000, 10_000)
            start = time.perf_counter()
            accepted = 0
            for body in sent:
                accepted += (await service.apply(service.read(body), "http")).accepted
            rates.append(accepted / (time.perf_counter() - start))
            if url.startswith("redis"):
                keys = [k async for k in store.client.scan_iter(match=f"{prefix}*")]  # type: ignore[attr-defined]
                for i in range(0, len(keys), 1000):
                    await store.client.delete(*keys[i : i + 1000])  # type: ignore[attr-defined]
    scheme = url.split(":", 1)[0]
    print(
        f"ingest ({scheme}): median {statistics.median(rates):,.0f} observations/s read and applied "
        f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--redis", default="")
    args = parser.parse_args()
    await memory(args.flows, args.window)
    await ingest("memory://")
    if args.redis:
        await ingest(args.redis)


if __name__ == "__main__":
    asyncio.run(main())
