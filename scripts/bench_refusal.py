"""What a refusal past the in-flight limit costs the server: CPU per 503, under `cpe serve`.

    python -m scripts.bench_refusal [--compare OTHER_CHECKOUT] [--rounds 3] [--duration 5] [-c 32]

Starts `cpe serve` with CPE_ADMISSION=fixed CPE_MAX_INFLIGHT=1, holds one prediction in flight (its body
half sent), so that every other prediction is refused, and drives refusals with the closed-loop load generator
(scripts/loadgen.py) over ``-c`` keep-alive connections for ``--duration`` seconds. The figure is the
server process's CPU time (user + system, /proc/<pid>/stat) divided by the answers. With ``--compare``,
the same is measured on the other checkout (e.g. ``git archive`` of another commit, its C extension
built), the two taking turns round by round; the medians over rounds are printed. As in `cpe bench`,
the server is pinned to the first CPU and this process to the last.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvloop

from scripts.loadgen import drive
from tools.process import free_port

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
BODY = b'{"flow_key": "' + b"ab" * 32 + b'", "contexts": []}'


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def refusal_cost(root: Path, duration_s: float, connections: int) -> dict[str, float]:
    """Server CPU µs per answer while every prediction is refused; the answers' statuses checked."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPE_")}
    env |= {"CPE_DEVICE": "cpu", "CPE_MODELS": "lstm", "CPE_MODEL": "lstm", "CPE_LOG_LEVEL": "warning"}
    env |= {
        "CPE_ADMISSION": "fixed",
        "CPE_MAX_INFLIGHT": "1",
        "CPE_ACCESS_LOG": "false",
        "PYTHONPATH": str(root),
    }
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpus[0]}),
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 90
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the server at {root} did not start:\n{log.read().decode()}")
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            with socket.create_connection(("127.0.0.1", port)) as held:
                held.sendall(b"POST /v1/predict HTTP/1.1\r\nhost: cpe\r\ncontent-type: application/json\r\n")
                held.sendall(b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY[:10]))
                time.sleep(0.5)  # admitted: the one place is taken
                request = [BODY]
                before = cpu_seconds(server.pid)
                result = uvloop.run(drive(f"{url}/v1/predict", [request], connections, duration_s, 0.0, 0))
                spent = cpu_seconds(server.pid) - before
        finally:
            server.kill()
            server.wait()
    statuses = {int(k): v for k, v in result["statuses"].items()}
    answers = sum(statuses.values())
    if not answers or set(statuses) - {503}:
        raise RuntimeError(f"expected only 503s, got {statuses}")
    return {"refusals_per_s": answers / duration_s, "cpu_us_per_refusal": spent / answers * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--compare", type=Path, help="another checkout to measure in the same run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("-c", "--connections", type=int, default=32)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    roots = {"this": ROOT} | ({"compare": args.compare.resolve()} if args.compare else {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in roots}
    for round_ in range(args.rounds):
        for name, root in roots.items():
            figures = refusal_cost(root, args.duration, args.connections)
            runs[name].append(figures)
            print(json.dumps({"round": round_, "build": name, **figures}), flush=True)
    for name, figures in runs.items():
        medians = {key: round(statistics.median(f[key] for f in figures), 1) for key in figures[0]}
        print(json.dumps({"build": name, "root": str(roots[name]), "median": medians}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
