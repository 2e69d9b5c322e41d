"""`cpe`: serve the API, train and evaluate models, benchmark, and write synthetic traces."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from models.checkpoint import CHECKPOINT_DIR

KINDS = ("lstm", "transformer", "hybrid")


def cmd_serve(args: argparse.Namespace) -> int:
    from app.serve import serve

    serve(host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from models import checkpoint
    from models.traces import generate_routes
    from models.training import TrainConfig, train

    cfg = TrainConfig(kind=args.model, seed=args.seed, hparams=json.loads(args.hparams or "{}"))
    for name in (
        "n_routes",
        "n_steps",
        "max_epochs",
        "max_minutes",
        "max_windows",
        "level_changes",
        "ramps",
        "ramp_max_intervals",
        "lr",
        "init",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    traces = generate_routes(
        cfg.seed,
        cfg.n_routes,
        cfg.n_steps,
        split="train",
        level_changes=cfg.level_changes,
        ramps=cfg.ramps,
        ramp_max_intervals=cfg.ramp_max_intervals,
    )
    model, meta = train(cfg, traces, log=lambda s: print(s, flush=True))
    out = _checkpoint_dir(args) / f"{args.model}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    written = checkpoint.save(out, model, meta)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB), sha256 {written['weights_sha256'][:16]}…")
    if not args.replace_shipped:
        print(f"serve it with CPE_CHECKPOINT_DIR={out.parent} CPE_MODELS={args.model} CPE_MODEL={args.model}")
    return 0


def _checkpoint_dir(args: argparse.Namespace) -> Path:
    """Where `cpe train` writes: the shipped checkpoints are git-tracked, so only on request."""
    if args.replace_shipped:
        if args.out is not None:
            raise SystemExit("cpe train: --out and --replace-shipped exclude each other")
        return CHECKPOINT_DIR
    out = Path(args.out) if args.out else Path("out", "checkpoints", time.strftime("%Y%m%d-%H%M%S"))
    if out.resolve() == CHECKPOINT_DIR.resolve():
        raise SystemExit(
            f"cpe train: {out} holds the shipped checkpoints; pass --replace-shipped to overwrite them"
        )
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.drift:
        return cmd_drift(args)
    from models import evaluation as ev
    from models.predictor import Predictor

    paths = [Path(p) for p in args.checkpoint] or [CHECKPOINT_DIR / f"{k}.safetensors" for k in args.model]
    sets = ev.standard_test_sets(n_routes=args.routes, n_steps=args.steps, seed=args.seed)
    results: list[dict[str, object]] = []
    failed = False
    predictors = [Predictor.load(path) for path in paths]
    for predictor in predictors:
        for ts in sets:
            r = ev.evaluate(predictor, ts.traces)
            results.append({"model": predictor.kind, "version": predictor.version, "test_set": ts.name, **r})
            print(ev.format_report(predictor.kind, predictor.version, ts.name, r), flush=True)
            misses = ev.missed_targets(r)
            failed |= bool(misses)
            print(f"   {'FAIL: ' + '; '.join(misses) if misses else 'PASS: ' + ev.TARGETS}\n", flush=True)
        r = ev.level_change_figures(predictor, seed=args.seed)
        results.append(
            {"model": predictor.kind, "version": predictor.version, "test_set": "level changes", **r}
        )
        print(ev.format_level_changes(predictor.kind, r), flush=True)
        misses = ev.missed_level_change_targets(r)
        failed |= bool(misses)
        print(f"   {'FAIL: ' + '; '.join(misses) if misses else 'PASS: ' + ev.LEVEL_TARGETS}\n", flush=True)
    groups = ev.routing_groups(n_groups=args.routes, n_steps=args.steps // 2, seed=args.seed)
    names = [p.kind for p in predictors]
    labels = [
        n if names.count(n) == 1 else f"{n} {p.version}" for n, p in zip(names, predictors, strict=True)
    ]
    routing = ev.routing_figures(dict(zip(labels, predictors, strict=True)), groups)
    results.append({"test_set": "routing", "routing": routing})
    print(ev.format_routing(routing, len(groups), len(groups[0])), flush=True)
    misses = [
        f"{label} closes {routing[label][k]:.2f} of the gap on {k.split('_')[0]} (< 0.5; the noise-free "
        f"present closes {routing['noise-free'][k]:.2f})"
        for label in labels
        for k in ("accuracy_gap_closed", "regret_gap_closed")
        if routing[label][k] < 0.5
    ]
    failed |= bool(misses)
    print(f"   {'FAIL: ' + '; '.join(misses) if misses else 'PASS: every model closes >= 50 % of the gap'}\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if failed and args.strict else 0


def cmd_drift(args: argparse.Namespace) -> int:
    argv = ["--model", args.model[0]]
    for flag, name in (
        ("--pre", "pre"),
        ("--post", "post"),
        ("--window", "window"),
        ("--seed", "drift_seed"),
    ):
        if hasattr(args, name):  # the defaults are tools.drift's own
            argv += [flag, str(getattr(args, name))]
    if hasattr(args, "plot"):
        argv += ["--plot", args.plot] if args.plot else ["--no-plot"]
    argv += ["--json", args.json] if args.json else []
    argv += [f"--learning-setting={text}" for text in args.learning_setting]
    argv += ["--strict"] if args.strict else []
    return run_tool("tools.drift", argv)


def cmd_simulate(args: argparse.Namespace) -> int:
    from models.traces import generate_routes, write_jsonl

    traces = generate_routes(args.seed, args.routes, args.steps, split=args.split)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    n = write_jsonl(traces, args.out)
    print(f"wrote {n} contexts of {len(traces)} routes to {args.out}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    return run_tool("tools.replay", args.rest)


def cmd_bench(args: argparse.Namespace) -> int:
    return run_tool("tools.bench", args.rest)


def run_tool(module: str, argv: list[str]) -> int:
    """Runs a developer tool (``tools/``) of the checkout this package runs from, as its own process.

    The tools are not part of the installed package (what a replica runs): they need the checkout's
    ``scripts/`` too. Its own process, because the console script's ``sys.path`` holds the installed
    packages only; the checkout goes on the child's ``PYTHONPATH``.
    """
    root = Path(__file__).resolve().parents[1]
    if not (root / "tools" / "__init__.py").is_file():
        print(
            f"cpe: {module} is a developer tool that lives in the source checkout (tools/), not in the "
            f"installed package at {root}: run it from a clone of the repository (python -m {module})",
            file=sys.stderr,
        )
        return 2
    path = os.pathsep.join(filter(None, (str(root), os.environ.get("PYTHONPATH"))))
    with subprocess.Popen(
        [sys.executable, "-m", module, *argv], env={**os.environ, "PYTHONPATH": path}
    ) as child:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # the tool got the Ctrl-C too: let it stop what it started
                continue


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    suppress = argparse.SUPPRESS  # a --drift option left out takes tools.drift's default

    p = sub.add_parser("serve", help="run the HTTP/WebSocket service (settings from CPE_* variables)")
    p.add_argument("--host", help="interface to listen on (overrides CPE_HOST)")
    p.add_argument("--port", type=int, help="TCP port to listen on (overrides CPE_PORT)")
    p.add_argument("--workers", type=int, help="server processes (overrides CPE_WORKERS)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("train", help="train a model on synthetic traces and write its checkpoint")
    p.add_argument("--model", choices=KINDS, required=True, help="the architecture to train")
    p.add_argument("--seed", type=int, default=0, help="seed of the traces and the weights (default 0)")
    p.add_argument(
        "--out",
        help="directory to write <model>.safetensors into (default: a new out/checkpoints/<time>/), "
        "usable as CPE_CHECKPOINT_DIR",
    )
    p.add_argument(
        "--replace-shipped",
        action="store_true",
        help="overwrite the shipped, git-tracked checkpoint in models/checkpoints/ (what `make train` does)",
    )
    p.add_argument("--hparams", help='JSON object of architecture hyper-parameters, e.g. {"hidden": 96}')
    p.add_argument("--routes", dest="n_routes", type=int, help="synthetic routes to train on")
    p.add_argument("--steps", dest="n_steps", type=int, help="contexts per route")
    p.add_argument("--epochs", dest="max_epochs", type=int, help="most passes over the training windows")
    p.add_argument("--minutes", dest="max_minutes", type=float, help="most minutes of training")
    p.add_argument(
        "--windows", dest="max_windows", type=int, help="most training windows drawn from the traces"
    )
    p.add_argument(
        "--level-changes",
        dest="level_changes",
        type=float,
        help="how many times as often as a deployment the training traces shift level (default 2)",
    )
    p.add_argument(
        "--ramps",
        type=float,
        help="how many times as often again as the other level changes the training traces ramp (default 1)",
    )
    p.add_argument(
        "--ramp-max",
        dest="ramp_max_intervals",
        type=float,
        help="the longest ramp in the training traces, in sampling intervals (default 60)",
    )
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument(
        "--init",
        help="fine-tune: start from the weights of this checkpoint (of the same model kind), not fresh ones",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="next-step errors vs the baselines, coverage and calibration")
    p.add_argument(
        "--model",
        nargs="+",
        choices=KINDS,
        default=list(KINDS),
        help="shipped models to evaluate (default all)",
    )
    p.add_argument("--checkpoint", nargs="*", default=[], help="checkpoint files instead of the shipped ones")
    p.add_argument("--routes", type=int, default=24, help="routes per test set (default 24)")
    p.add_argument("--steps", type=int, default=1200, help="contexts per route (default 1200)")
    p.add_argument("--seed", type=int, default=1000, help="test sets use seed+1 and seed+2")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--strict", action="store_true", help="exit 1 when a model misses a target")
    p.add_argument(
        "--drift",
        action="store_true",
        help="instead: replay a regime-shift trace through the running service with feedback (the first "
        "--model learns), and compare its rolling MAE with the frozen model, persistence and EWMA "
        "(python -m tools.drift; needs the source checkout)",
    )
    p.add_argument("--pre", type=int, default=suppress, help="--drift: feedback samples before the shift")
    p.add_argument("--post", type=int, default=suppress, help="--drift: feedback samples after the shift")
    p.add_argument("--window", type=int, default=suppress, help="--drift: samples per rolling MAE")
    p.add_argument(
        "--drift-seed", type=int, default=suppress, help="--drift: seed of the route and its trace"
    )
    p.add_argument(
        "--plot", default=suppress, help="--drift: where to save the plot, a PNG (default out/drift.png)"
    )
    p.add_argument("--no-plot", dest="plot", action="store_const", const="", help="--drift: no plot")
    p.add_argument(
        "--learning-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="--drift: a setting of the service's learner, e.g. learning_layers=all (repeatable)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("simulate", help="write synthetic route traces as JSON lines, for replay")
    p.add_argument("--routes", type=int, default=4, help="routes to generate (default 4)")
    p.add_argument("--steps", type=int, default=1000, help="contexts per route (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the traces (default 0)")
    p.add_argument(
        "--split",
        choices=("train", "unseen"),
        default="train",
        help="the training distribution, or latency scales, intervals and shapes the training never saw",
    )
    p.add_argument("--out", default="out/trace.jsonl", help="file to write (default out/trace.jsonl)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "replay",
        add_help=False,  # --help is the replay tool's own
        help="stream a trace into a running service through /v1/observe and print its score against "
        "persistence (python -m tools.replay; needs the checkout)",
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the replay tool's options: cpe replay --help")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "bench",
        add_help=False,  # --help is the benchmark's own
        help="benchmark the service against a naive reference (python -m tools.bench; needs the checkout)",
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's options: cpe bench --help")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command in ("bench", "replay"):  # every option goes to the tool, which parses them
        args.rest = [*unknown, *args.rest]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
