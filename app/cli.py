"""`cpe`: serve the API, train and evaluate models, benchmark, and write synthetic traces."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.checkpoint import CHECKPOINT_DIR

KINDS = ("lstm", "transformer", "hybrid")


def cmd_serve(args: argparse.Namespace) -> int:
    from app.serve import serve
    from app.settings import Settings

    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers))
        if v is not None
    }
    serve(Settings(**overrides))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from models import checkpoint
    from models.traces import generate_routes
    from models.training import TrainConfig, train

    cfg = TrainConfig(kind=args.model, seed=args.seed, hparams=json.loads(args.hparams or "{}"))
    for name in ("n_routes", "n_steps", "max_epochs", "max_minutes", "max_windows"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    traces = generate_routes(cfg.seed, cfg.n_routes, cfg.n_steps, split="train")
    model, meta = train(cfg, traces, log=lambda s: print(s, flush=True))
    out = Path(args.out or CHECKPOINT_DIR / f"{args.model}.safetensors")
    written = checkpoint.save(out, model, meta)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB), sha256 {written['weights_sha256'][:16]}…")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.drift:
        return cmd_drift(args)
    from models.evaluation import evaluate, format_report, standard_test_sets
    from models.predictor import Predictor

    paths = [Path(p) for p in args.checkpoint] or [CHECKPOINT_DIR / f"{k}.safetensors" for k in args.model]
    sets = standard_test_sets(n_routes=args.routes, n_steps=args.steps, seed=args.seed)
    results = []
    failed = False
    for path in paths:
        predictor = Predictor.load(path)
        for ts in sets:
            r = evaluate(predictor, ts.traces)
            results.append({"model": predictor.kind, "version": predictor.version, "test_set": ts.name, **r})
            print(format_report(predictor.kind, predictor.version, ts.name, r), flush=True)
            ok = r["ratio"]["persistence"] < 1 and r["ratio"]["ewma"] < 1 and r["ece"] <= 0.05
            failed |= not ok
            print(f"   {'PASS' if ok else 'FAIL'}: beats persistence and EWMA, ECE <= 0.05\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if failed and args.strict else 0


def cmd_drift(args: argparse.Namespace) -> int:
    from app.drift import DriftConfig, run

    cfg = DriftConfig(
        pre=args.pre,
        post=args.post,
        window=args.window,
        seed=args.drift_seed,
        kind=args.model[0],
        out=args.plot,
        json_out=args.json,
        learning=dict(_setting(text) for text in args.learning_setting),
    )
    figures = run(cfg)
    met = all(t["recovery_met"] and t["end_met"] for t in figures["targets"].values())
    return 1 if args.strict and not met else 0


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--learning-setting takes NAME=VALUE (a Settings field), got {text!r}")
    return name.strip().lower().removeprefix("cpe_"), value.strip()


def cmd_simulate(args: argparse.Namespace) -> int:
    from models.traces import generate_routes, write_jsonl

    traces = generate_routes(args.seed, args.routes, args.steps, split=args.split)
    n = write_jsonl(traces, args.out)
    print(f"wrote {n} contexts of {len(traces)} routes to {args.out}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tools.replay import main as replay_main  # a developer tool: needs the checkout's tools/

    return replay_main(args.rest)


def cmd_bench(args: argparse.Namespace) -> int:
    from app.bench import main as bench_main

    return bench_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP/WebSocket service (settings from CPE_* variables)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("train", help="train a model on synthetic traces and write its checkpoint")
    p.add_argument("--model", choices=KINDS, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="checkpoint path (default: the shipped one for this kind)")
    p.add_argument("--hparams", help='JSON object of architecture hyper-parameters, e.g. {"hidden": 96}')
    p.add_argument("--routes", dest="n_routes", type=int)
    p.add_argument("--steps", dest="n_steps", type=int)
    p.add_argument("--epochs", dest="max_epochs", type=int)
    p.add_argument("--minutes", dest="max_minutes", type=float)
    p.add_argument("--windows", dest="max_windows", type=int)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="next-step errors vs the baselines, coverage and calibration")
    p.add_argument("--model", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--checkpoint", nargs="*", default=[], help="checkpoint files instead of the shipped ones")
    p.add_argument("--routes", type=int, default=24)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--seed", type=int, default=1000, help="test sets use seed+1 and seed+2")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--strict", action="store_true", help="exit 1 when a model misses a target")
    p.add_argument(
        "--drift",
        action="store_true",
        help="instead: replay a regime-shift trace through the running service with feedback (the first "
        "--model learns), and compare its rolling MAE with the frozen model, persistence and EWMA",
    )
    p.add_argument("--pre", type=int, default=1500, help="--drift: feedback samples before the shift")
    p.add_argument("--post", type=int, default=2500, help="--drift: feedback samples after the shift")
    p.add_argument("--window", type=int, default=250, help="--drift: samples per rolling MAE")
    p.add_argument("--drift-seed", type=int, default=7, help="--drift: seed of the route and its trace")
    p.add_argument("--plot", default="drift.png", help="--drift: where to save the plot (PNG)")
    p.add_argument(
        "--learning-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="--drift: a setting of the service's learner, e.g. learning_layers=all (repeatable)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("simulate", help="write synthetic route traces as JSON lines, for replay")
    p.add_argument("--routes", type=int, default=4)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=("train", "unseen"), default="train")
    p.add_argument("--out", default="trace.jsonl")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "replay",
        help="stream a trace into a running service through /v1/observe and print its score against "
        "persistence (see tools/replay.py)",
        add_help=False,
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the replay tool")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("bench", help="benchmark the service against a naive reference (see scripts/bench.py)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark driver")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "replay":  # every option goes to the replay tool, which parses them
        args.rest = [*unknown, *args.rest]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
