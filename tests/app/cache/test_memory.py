"""What an in-process cache entry costs: a stored value holds its length, not orjson's output buffer."""

from __future__ import annotations

import tracemalloc

import numpy as np

from app.api.responses import dumps
from app.cache.memory import MemoryCache

ENTRIES = 2000


async def test_a_cached_prediction_costs_about_its_length_in_memory() -> None:
    rng = np.random.default_rng(0)
    cache = MemoryCache(max_entries=ENTRIES, ttl_ms=60_000)
    keys = [f"{{{i:064x}}}:{i:032x}" for i in range(ENTRIES)]  # the key format's length
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        # a one-step PredictionResult's shape and size (~1 KB of JSON), serialized the way the handlers do
        values = [
            dumps(
                {"flow_key": f"{i:064x}", "predicted_context": rng.random(8), "lower": rng.random(8), "n": i}
            )
            for i in range(ENTRIES)
        ]
        size = sum(len(v) for v in values) / ENTRIES
        await cache.set_many(list(zip(keys, values, strict=True)))
        del values  # what the handlers do: only the cache keeps them
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / ENTRIES
    finally:
        tracemalloc.stop()
    # the value's bytes plus ~300 B of bookkeeping (the keys were there before); orjson's own bytes
    # objects, stored as they are, would hold their 4-8 KiB buffers
    assert per_entry < size + 400, (per_entry, size)
