"""`make bench`'s serving rows for several revisions of the service, driven alike, in alternation.

    python -m scripts.bench_revisions 4efbb37 146c91e . --runs 3

Each revision other than ``.`` (this working tree) is checked out in a scratch git worktree, its C reader
built there; then ``python -m tools.bench --repeat 1`` of this tree runs once per revision, the revisions
in turn, ``--runs`` times over (A, B, C, A, B, C, ...), each time serving that revision's
``app.cli serve`` through ``--cpe-command``: the same load generator, bodies and pinning for all, and a
burst of outside load lands on all of them alike. It prints the medians of the rows every revision has
(c=1 p50, c=32 predictions/s and p99, the batch endpoint's predictions/s, server CPU a prediction) with
each run's figure and the load averages, and removes the worktrees.

A revision serves its own checkpoints (``models/checkpoints`` there) and its own settings' defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (label, run, figure of one run, format)
ROWS = [
    ("c=1 p50 (ms)", "cpe_c1", lambda r: r["latency_ms"]["p50"], "{:.3f}"),
    ("c=32 predictions/s", "cpe_cN", lambda r: r["predictions_per_s"], "{:,.0f}"),
    ("c=32 p99 (ms)", "cpe_cN", lambda r: r["latency_ms"]["p99"], "{:.1f}"),
    ("batch predictions/s", "cpe_batch", lambda r: r["predictions_per_s"], "{:,.0f}"),
    (
        "c=1 server CPU/prediction (us)",
        "cpe_c1",
        lambda r: 1e6 * r["server_cpu"] / r["predictions_per_s"],
        "{:,.0f}",
    ),
    (
        "c=32 server CPU/prediction (us)",
        "cpe_cN",
        lambda r: 1e6 * r["server_cpu"] / r["predictions_per_s"],
        "{:,.0f}",
    ),
    (
        "batch server CPU/prediction (us)",
        "cpe_batch",
        lambda r: 1e6 * r["server_cpu"] / r["predictions_per_s"],
        "{:.1f}",
    ),
]


def checkout(revision: str, into: Path) -> Path:
    """``revision`` in a scratch worktree under ``into``, with its C reader built."""
    tree = into / revision.replace("/", "_")
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), revision], check=True
    )
    subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace", "-q"],
        cwd=tree,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return tree


def serve_command(tree: Path) -> str:
    """A --cpe-command that serves ``tree``'s own app (``-m`` puts the working directory first)."""
    where, python = shlex.quote(str(tree)), shlex.quote(sys.executable)
    inner = (
        f"cd {where} && PYTHONPATH={where} exec {python} -m app.cli serve --host 127.0.0.1 --port {{port}}"
    )
    return f"sh -c {shlex.quote(inner)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("revisions", nargs="+", help="git revisions; '.' is this working tree as it is")
    p.add_argument("--runs", type=int, default=3, help="tools.bench runs per revision (alternated)")
    p.add_argument("--bench-args", default="--no-calibrate --no-forward", help="more tools.bench options")
    args = p.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="cpe-revisions-") as tmp:
        scratch = Path(tmp)
        trees: dict[str, Path | None] = {}
        try:
            for revision in args.revisions:
                trees[revision] = None if revision == "." else checkout(revision, scratch)
            results: dict[str, list[dict]] = {revision: [] for revision in args.revisions}
            for n in range(args.runs):
                for revision, tree in trees.items():
                    out = scratch / f"run-{n}-{len(results[revision])}-{revision.replace('/', '_')}.json"
                    command = [sys.executable, "-m", "tools.bench", "--repeat", "1", "--json", str(out)]
                    command += shlex.split(args.bench_args)
                    if tree is not None:
                        command += ["--cpe-command", serve_command(tree)]
                    print(f"run {n + 1}/{args.runs}: {revision}", flush=True)
                    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
                    results[revision].append(json.loads(out.read_text()))
        finally:
            for tree in trees.values():
                if tree is not None:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)])
    print(f"medians of {args.runs} runs per revision (each run's figure in brackets)")
    for label, run, figure, form in ROWS:
        cells = []
        for revision, docs in results.items():
            values = [figure(doc["runs"][run][0]) for doc in docs]
            each = ", ".join(form.format(v) for v in values)
            cells.append(f"{revision}: {form.format(statistics.median(values))} [{each}]")
        print(f"{label:34s} " + "   ".join(cells))
    loads = [f"{d['environment']['load_average_before'][0]:.1f}" for docs in results.values() for d in docs]
    print("load average (1 min) before each run: " + " ".join(loads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
