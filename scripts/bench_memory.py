"""Resident memory of one CPE worker: idle, and with 100,000 distinct flows' predictions cached in-process.

    python -m scripts.bench_memory [--flows 100000] [--models lstm,transformer,hybrid]

Starts `cpe serve` (one worker, the CPU, memory:// cache sized to hold every flow), reads its VmRSS from
/proc once it is ready and has answered one prediction (idle), then posts one distinct flow per window
through /v1/predict/batch (1,000 per request, a 16-context window each, horizon 1) and reads it again
once the in-process tier holds them all (checked on /metrics). Then the same again with the tier capped
at 1,000 entries: the traffic alone also raises RSS (request bodies, batches, freed memory the allocators
keep), so the difference between the two runs is the cache's own cost per entry, allocator overhead
included. app/cache/memory.py's docstring has the tracemalloc figure per entry for comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx
import orjson

from tests.app.payloads import contexts
from tools.process import cpe_serve

ROOT = Path(__file__).resolve().parent.parent

PER_REQUEST = 1000


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cache_entries(client: httpx.Client) -> int:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('cpe_cache_entries{tier="memory"}'):
            return int(float(line.split()[-1]))
    raise RuntimeError("no cpe_cache_entries on /metrics")


def run(flows: int, models: str, max_entries: int) -> tuple[int, int, int, int]:
    """(RSS idle, RSS after ``flows`` distinct flows, entries held, bytes of one cached result)."""
    settings = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": models,
        "CPE_MODEL": models.split(",")[0],
        "CPE_CACHE_URL": "memory://",
        "CPE_CACHE_MAX_ENTRIES": str(max_entries),
        "CPE_CACHE_TTL_MS": str(3_600_000),  # nothing expires while the flows go in
        "CPE_MAX_BATCH": str(PER_REQUEST),
        "CPE_LOG_LEVEL": "warning",
    }
    server = cpe_serve(settings).start()
    window = contexts(16)
    try:
        server.wait_ready(timeout_s=120)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            warm = {"flow_key": "ff" * 32, "contexts": window}
            client.post("/v1/predict", json=warm).raise_for_status()  # lazy imports, first forward pass
            time.sleep(1)
            idle = rss_bytes(server.pid)
            for first in range(0, flows, PER_REQUEST):
                batch = range(first, min(first + PER_REQUEST, flows))
                body = orjson.dumps(
                    {"requests": [{"flow_key": f"{i:064x}", "contexts": window} for i in batch]}
                )
                response = client.post(
                    "/v1/predict/batch", content=body, headers={"content-type": "application/json"}
                )
                response.raise_for_status()
            entries = cache_entries(client)
            time.sleep(1)
            filled = rss_bytes(server.pid)
            result = len(orjson.dumps(response.json()["results"][-1]))
    finally:
        server.stop(timeout_s=30)
        server.log.close()
    return idle, filled, entries, result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--models", default="lstm,transformer,hybrid")
    args = parser.parse_args()
    idle, filled, entries, result = run(args.flows, args.models, args.flows + 1)  # + the warm-up's
    assert entries == args.flows + 1, f"the in-process tier holds {entries} entries, not {args.flows + 1}"
    capped = 1000
    _, traffic, held, _ = run(args.flows, args.models, capped)
    assert held == capped, held
    mib = 2**20
    print(
        f"one worker, models {args.models}, CPU, memory:// cache; a cached PredictionResult is {result:,} B"
    )
    print(f"  idle (models loaded, one prediction answered):         {idle / mib:7.1f} MiB RSS")
    print(f"  {args.flows:,} distinct flows, all cached in-process:     {filled / mib:7.1f} MiB RSS")
    print(f"  the same traffic, the tier capped at {capped:,} entries:     {traffic / mib:7.1f} MiB RSS")
    print(
        f"  per cached entry: {(filled - traffic) / (args.flows - capped):,.0f} B (the cache's own), "
        f"{(filled - idle) / args.flows:,.0f} B (all growth since idle)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
