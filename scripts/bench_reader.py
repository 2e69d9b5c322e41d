"""The batch endpoint end to end, the service with its C reader of prediction bodies against the same
service reading them with msgspec alone, in one run (interleaved), to decide whether the C reader pays.

Two ``cpe serve`` processes on loopback, identical but for the reader: the second starts with
``app.wire._json_reader`` made unimportable (as on an install without a C compiler). Then ``--repeat``
rounds, each a ``POST /v1/predict/batch`` load against one server and then the other (the bodies and
the load generator of ``make bench``), and the medians: predictions/s and server CPU a prediction.

    python -m scripts.bench_reader [--repeat 5] [--duration 8]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from models.checkpoint import CHECKPOINT_DIR, read_meta
from tools.bench import (
    LOOPBACK,
    Run,
    Scenario,
    Server,
    make_requests,
    measure,
    pick_load_generator,
    plan_cpus,
    write_bodies,
)
from tools.process import free_port

WITHOUT_C_READER = (
    "import sys; sys.modules['app.wire._json_reader'] = None; sys.argv[0] = 'cpe'; "
    "from app.cli import main; sys.exit(main())"
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="rounds; medians are reported (default 5)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per run (default 8)")
    parser.add_argument("--batch-size", type=int, default=512, help="flows per request (default 512)")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--model", default="lstm", choices=("lstm", "transformer", "hybrid"))
    args = parser.parse_args()

    plan = plan_cpus("auto")
    gen = pick_load_generator("auto", plan.client)
    seq_len = int(read_meta((CHECKPOINT_DIR / f"{args.model}.safetensors").read_bytes())["seq_len"])
    env = {"CPE_MODEL": args.model, "CPE_MODELS": args.model, "CPE_DEVICE": "cpu", "CPE_LOG_LEVEL": "warning"}
    serve = ["serve", "--host", LOOPBACK, "--port"]
    argvs = {
        "C reader": [sys.executable, "-m", "app.cli", *serve],
        "msgspec alone": [sys.executable, "-c", WITHOUT_C_READER, *serve],
    }
    runs: dict[str, list[Run]] = {name: [] for name in argvs}
    with tempfile.TemporaryDirectory(prefix="cpe-bench-reader-") as tmp, contextlib.ExitStack() as stack:
        bodies = Path(tmp) / "batch.jsonl"
        requests = make_requests(8 * args.batch_size, seq_len, seed=7)
        write_bodies(bodies, [{"requests": requests[i::8]} for i in range(8)])
        servers = {}
        for name, argv in argvs.items():
            port = free_port()
            server = Server(name.replace(" ", "_"), [*argv, str(port)], port, Path(tmp), plan.server, env)
            stack.callback(server.stop)
            servers[name] = server
        for server in servers.values():
            server.wait_ready(time.monotonic() + 120)
        tag = 0
        for r in range(args.repeat):
            for name, server in servers.items():
                tag += 1 << 23  # fresh flow keys every run: no cache answers
                scenario = Scenario(
                    name, name, "/v1/predict/batch", "batch", args.batch_concurrency, args.batch_size
                )
                run = measure(gen, scenario, server, bodies, args.duration, 1.0, tag)
                runs[name].append(run)
                print(
                    f"round {r + 1} {name:>13}: {run.predictions_per_s:8.0f} predictions/s, "
                    f"{run.cpu_us_per_prediction or float('nan'):6.1f} µs server CPU a prediction, "
                    f"errors {sum(run.errors.values())}",
                    flush=True,
                )
    rate = {name: statistics.median(r.predictions_per_s for r in rs) for name, rs in runs.items()}
    cpu = {
        name: statistics.median(r.cpu_us_per_prediction or math.nan for r in rs) for name, rs in runs.items()
    }
    print(
        f"medians of {args.repeat} rounds, {args.duration:g} s each, "
        f"batches of {args.batch_size} flows, {args.batch_concurrency} in flight:"
    )
    for name in runs:
        print(f"  {name:>13}: {rate[name]:8.0f} predictions/s, {cpu[name]:6.1f} µs server CPU a prediction")
    print(
        f"  C reader / msgspec alone: {rate['C reader'] / rate['msgspec alone']:.2f}x predictions/s, "
        f"{cpu['msgspec alone'] / cpu['C reader']:.2f}x less CPU a prediction"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
