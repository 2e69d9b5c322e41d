"""The event loop's CPU per window on POST /v1/predict/batch, the real app called in-process (no sockets).

    python -m scripts.bench_batch_path [--batch-size 512] [--calls 40] [--rounds 5] [--msgpack]
                                       [--profile N] [--single]

Every call posts a batch of ``--batch-size`` windows with flow keys never seen before (no cache hits), as
``make bench``'s batch run does. The figure is this thread's CPU time per window (``time.thread_time``):
the event loop's work (the body, the cache keys, the cache, the remembered windows, the answers' JSON),
not the inference thread's forward passes, so that it is precise to a fraction of a µs on a busy machine.
Rounds of ``--calls`` calls; the median round is printed, and the wall-clock windows/s beside it.
``--profile N`` runs N calls under cProfile instead and prints the functions by their own time.
``--single``: POST /v1/predict with one window each instead (the figure is then per request).
Compare two checkouts by running this in each, alternately.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import pstats
import statistics
import time
from typing import Any

from scripts.asgi_scope import post_scope

PLACEHOLDER = b"@@@@@@@@"


def bodies(batch_size: int, n: int, msgpack: bool) -> list[bytes]:
    """``n`` batch bodies of ``batch_size`` windows each (JSON, or MessagePack with packed windows)."""
    import msgspec
    import numpy as np

    from models.checkpoint import CHECKPOINT_DIR, read_meta
    from tools.bench import make_requests

    seq_len = int(read_meta((CHECKPOINT_DIR / "lstm.safetensors").read_bytes())["seq_len"])
    requests = make_requests(batch_size * n, seq_len, seed=11)
    out = []
    for i in range(n):
        part = requests[i * batch_size : (i + 1) * batch_size]
        if not msgpack:
            out.append(msgspec.json.encode({"requests": part}))
            continue
        packed = [
            {
                "flow_key": r["flow_key"][8:] + r["flow_key"][:8],  # see packed_body
                "timestamps": np.array([c["timestamp"] for c in r["contexts"]], "<i8").tobytes(),
                "features": np.array([c["features"] for c in r["contexts"]], "<f4").tobytes(),
                "horizon": r["horizon"],
            }
            for r in part
        ]
        out.append(msgspec.msgpack.encode({"requests": packed}))
    return out


async def run(args: argparse.Namespace) -> None:
    from app.main import create_app

    if args.single:
        import msgspec

        args.batch_size = 1
        templates = [
            msgspec.json.encode(msgspec.json.decode(body)["requests"][0]).split(PLACEHOLDER)
            for body in bodies(1, 64, False)
        ]
    else:
        templates = [body.split(PLACEHOLDER) for body in bodies(args.batch_size, 4, args.msgpack)]
    path = "/v1/predict" if args.single else "/v1/predict/batch"
    content_type = b"application/msgpack" if args.msgpack else b"application/json"
    tag = 0
    statuses: set[int] = set()
    sizes: list[int] = []

    def next_body() -> bytes:
        nonlocal tag
        tag += 1
        return (b"%08x" % tag).join(templates[tag % len(templates)])

    async def call(app: Any) -> None:
        body = next_body()
        scope = post_scope(path, len(body))
        scope["headers"][1] = (b"content-type", content_type)
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.add(message["status"])
            elif message["type"] == "http.response.body":
                sizes.append(len(message.get("body", b"")))

        await app(scope, receive, send)

    app = create_app()
    async with app.router.lifespan_context(app):
        for _ in range(5):  # warm up: the first passes, lazy imports
            await call(app)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.profile):
                await call(app)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(35)
            print(out.getvalue())
            return
        cpu, rate = [], []
        for _ in range(args.rounds):
            before, wall = time.thread_time(), time.perf_counter()
            for _ in range(args.calls):
                await call(app)
            windows = args.calls * args.batch_size
            cpu.append((time.thread_time() - before) / windows * 1e6)
            rate.append(windows / (time.perf_counter() - wall))
    assert statuses == {200}, statuses
    print(
        f"{'single' if args.single else 'msgpack' if args.msgpack else 'json'} batch of {args.batch_size}: "
        "event-loop CPU per window "
        f"{statistics.median(cpu):.2f} us (rounds: {' '.join(f'{c:.2f}' for c in cpu)}); "
        f"{statistics.median(rate):,.0f} windows/s in-process, one call at a time"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--calls", type=int, default=40, help="calls per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--msgpack", action="store_true", help="MessagePack bodies with packed float32 windows")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="profile N calls instead")
    p.add_argument("--single", action="store_true", help="POST /v1/predict, one window a call")
    args = p.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
