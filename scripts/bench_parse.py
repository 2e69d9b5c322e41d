"""The event loop's CPU per window of a /v1/predict/batch request: parsing the body, then the answers.

Times CPU of this process (``time.process_time``: steadier than wall time on a busy machine), as the
median over ``--repeat`` rounds, the variants interleaved within each round:

- parse: a body of ``--windows`` windows of ``--contexts`` contexts (the realistic windows of
  python -m tools.bench) into the windows that the handlers use, by the fast path (app/wire/decode.py) and by
  pydantic (``model_validate_json``, then the arrays), and by the fast path without its C reader
  (msgspec alone, as when app.wire._json_reader is not built), with ``orjson.loads`` alone for scale; then as
  many /v1/predict bodies of one window each;
- answer: per window, the cache key and the serialized PredictionResult, from the forecasts of a real
  engine and model.

The heap is a server's: the three shipped models loaded, the collector set as app/main.py's lifespan
sets it (``--gc app``; ``default`` or ``off`` to compare), and the last ``--in-flight`` parsed bodies
kept alive, as the requests that wait for the engine keep theirs.

    python -m scripts.bench_parse
    python -m scripts.bench_parse --windows 128 --gc default
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from app.api.predict import _answers, _key
from app.engine import Engine
from app.schemas import BatchPredictRequest, Limits, PredictRequest
from app.wire import decode
from app.wire.decode import fast_windows, windows_of
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor
from tools.bench import concrete, make_requests

KINDS = ("lstm", "transformer", "hybrid")


def per_window_us(rounds: dict[str, list[float]], windows: int) -> dict[str, float]:
    return {name: statistics.median(times) * 1e6 / windows for name, times in rounds.items()}


def measure(variants: dict[str, Callable[[], Any]], repeat: int, in_flight: int) -> dict[str, list[float]]:
    """CPU seconds of each variant per round; each keeps its last ``in_flight`` results alive."""
    kept: dict[str, deque[Any]] = {name: deque(maxlen=in_flight) for name in variants}
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, run in variants.items():
            start = time.process_time()
            result = run()
            rounds[name].append(time.process_time() - start)
            kept[name].append(result)
    return rounds


async def forecasts_of(predictors: dict[str, Predictor], jobs: list[Any]) -> list[Any]:
    async with Engine(predictors, max_batch=len(jobs)) as engine:
        return list(await asyncio.gather(*engine.submit_many(jobs)))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=512, help="windows in the batch body")
    p.add_argument("--contexts", type=int, default=32, help="contexts per window")
    p.add_argument("--repeat", type=int, default=21, help="rounds; medians are reported")
    p.add_argument("--in-flight", type=int, default=4, help="parsed bodies kept alive meanwhile")
    p.add_argument("--gc", choices=["app", "default", "off"], default="app", help="the collector's settings")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    predictors = {kind: Predictor.load(CHECKPOINT_DIR / f"{kind}.safetensors") for kind in KINDS}
    limits = Limits(
        max_window=max(256, args.contexts),
        max_batch=args.windows,
        horizons={kind: predictor.horizon for kind, predictor in predictors.items()},
        default_model="lstm",
    )
    body = concrete(orjson.dumps({"requests": make_requests(args.windows, args.contexts, args.seed)}))
    gc.collect()
    if args.gc == "app":  # as app/main.py's lifespan leaves it
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
    elif args.gc == "off":
        gc.disable()

    fast = fast_windows(body, limits, batch=True)
    assert fast is not None, "the benchmark's bodies should take the fast path"

    def without_c(run: Callable[[], Any]) -> Any:
        c_reader, decode._json_reader = decode._json_reader, None
        try:
            return run()
        finally:
            decode._json_reader = c_reader

    def pydantic() -> Any:
        return windows_of(BatchPredictRequest.model_validate_json(body, context=limits).requests)

    n = args.windows
    parse = per_window_us(
        measure(
            {
                "pydantic": pydantic,
                "fast path": lambda: fast_windows(body, limits, batch=True),
                "  without the C reader": lambda: without_c(lambda: fast_windows(body, limits, batch=True)),
                "orjson.loads alone": lambda: orjson.loads(body),
            },
            args.repeat,
            args.in_flight,
        ),
        n,
    )

    singles = [concrete(orjson.dumps(r)) for r in make_requests(n, args.contexts, args.seed + 1)]

    def single_pydantic() -> Any:
        return [windows_of([PredictRequest.model_validate_json(b, context=limits)]) for b in singles]

    single = per_window_us(
        measure(
            {
                "pydantic": single_pydantic,
                "fast path": lambda: [fast_windows(b, limits, batch=False) for b in singles],
                "  without the C reader": lambda: without_c(
                    lambda: [fast_windows(b, limits, batch=False) for b in singles]
                ),
            },
            args.repeat,
            args.in_flight,
        ),
        n,
    )

    version = predictors["lstm"].version
    jobs = [("lstm", w.timestamps, w.features) for w in fast]
    forecasts = asyncio.run(forecasts_of(predictors, jobs))
    keys = [_key(version, w) for w in fast]
    answer = per_window_us(
        measure(
            {
                "cache key": lambda: [_key(version, w) for w in fast],
                "result + serialization": lambda: _answers(fast, forecasts, 1.0, keys),
            },
            args.repeat,
            args.in_flight,
        ),
        n,
    )

    print(
        f"event-loop CPU per window, µs (median of {args.repeat}): a batch of {n} windows x "
        f"{args.contexts} contexts, {len(body) / 1e6:.1f} MB; gc {args.gc}, {args.in_flight} in flight"
    )
    print("  parse + validate + arrays")
    for name, us in parse.items():
        ratio = f"   ({parse['pydantic'] / us:.2f}x less than pydantic)" if name == "fast path" else ""
        print(f"    {name:24s} {us:7.1f}{ratio}")
    print(f"  the same, {n} /v1/predict bodies of one window each")
    for name, us in single.items():
        ratio = f"   ({single['pydantic'] / us:.2f}x less than pydantic)" if name == "fast path" else ""
        print(f"    {name:24s} {us:7.1f}{ratio}")
    print("  answer")
    for name, us in answer.items():
        print(f"    {name:24s} {us:7.1f}")
    total_fast = parse["fast path"] + sum(answer.values())
    total_pydantic = parse["pydantic"] + sum(answer.values())
    print(f"  total: {total_fast:.1f} with the fast path, {total_pydantic:.1f} with pydantic")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
