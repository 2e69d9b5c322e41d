"""Adaptive TTL and forecasting ahead, measured on a replayed trace: hit rate and staleness.

Replays seeded traces (``models/traces.py``: irregular sampling, gaps, bursts) and, per flow, clients
that ask for the flow's forecast at Poisson moments (``--asks`` per observation interval on average).
A forecast is cached per flow, as a client such as the load balancer keeps it, computed from the
window the server holds when asked. An answer is a hit when the cached forecast is still live; a hit is
stale when the flow has had a newer observation than the forecast's window by then (the server could
have answered from fresher data) or the forecast's target moment has passed. Three policies:

- fixed: every forecast lives ``CPE_CACHE_TTL_MS`` (60 s);
- adaptive: ``app/cache/ttl.py`` (its horizon in time, stretched or shortened by the forecast's spread);
- adaptive + ahead: the forecast of each new window is computed when its observation arrives
  (continuous prediction, or ``Forecasts.prefetch(flow_keys)`` for flows about to be asked for), so an
  ask finds it already made.

Groups (``--group-size`` routes each, defined at a random moment of the trace): the group's ranking is
asked for at Poisson moments after its definition. It is whole once every route has a forecast made
since the group exists (route outlooks are kept only for flows that are routes when forecast): without
forecasting ahead, that is once every route has had an observation since; with it
(``RouteGroups.prefetch``: the routes forecast when the group is defined, one round later), at once.
The hit rate is the share of asks answered from every route's forecast.

In the service itself the prediction cache's key holds the window's content, so a cached answer never
misses an observation the request carried; there the TTL decides how long an answer for a window that
is asked again (a quiet flow, a client repeating its window) is kept, and the staleness below is that of
a cache by flow key. The model runs for real (``--model``), to give each forecast its spread.

    python -m tools.cache_ttl [--routes 24] [--steps 800] [--asks 2] [--group-size 3]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from app.cache.ttl import AdaptiveTtl
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor
from models.traces import Trace, generate_routes

FIXED_MS = 60_000


def forecasts(predictor: Predictor, trace: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each prefix window ending at context i (i >= 1): step ms, point, lower, upper of the latency."""
    T = predictor.seq_len
    ts, fs = trace.timestamps_ms, trace.features.astype(np.float64)
    windows = [(ts[max(0, i - T + 1) : i + 1], fs[max(0, i - T + 1) : i + 1]) for i in range(len(ts))]
    step, point, lower, upper = [], [], [], []
    for lo in range(0, len(windows), 1024):
        chunk = windows[lo : lo + 1024]
        f = predictor.predict([w[0] for w in chunk], [w[1] for w in chunk], 1)
        step.append(f.dt_s * 1000.0)
        point.append(f.mean[:, 0, 0])
        lower.append(f.lower[:, 0, 0])
        upper.append(f.upper[:, 0, 0])
    return tuple(np.concatenate(a) for a in (step, point, lower, upper))  # type: ignore[return-value]


def replay(
    predictor: Predictor, traces: list[Trace], asks: float, policy: str, seed: int = 0
) -> dict[str, Any]:
    ttl = AdaptiveTtl(500, 600_000)
    rng = np.random.default_rng(seed)
    n_asks = hits = stale = 0
    for trace in traces:
        ts = trace.timestamps_ms
        step, point, lower, upper = forecasts(predictor, trace)
        interval = float(np.median(np.diff(ts)))
        t, end = float(ts[0]), float(ts[-1])
        cached: tuple[int, float, float] | None = None  # (window's newest index, expires at, target ms)
        while True:
            t += rng.exponential(interval / asks)
            if t >= end:
                break
            newest = int(np.searchsorted(ts, t, side="right")) - 1  # the server's window ends here
            n_asks += 1
            if policy == "adaptive + ahead":
                hits += 1  # made when its observation arrived
                continue
            if cached is not None and cached[1] > t:
                hits += 1
                if cached[0] < newest or t > cached[2]:
                    stale += 1
                continue
            life = FIXED_MS
            if policy != "fixed":
                life = ttl.ttl_ms(step[newest], 1, point[newest], lower[newest], upper[newest])
            cached = (newest, t + life, ts[newest] + max(step[newest], 1.0))
    return {
        "policy": policy,
        "asks": n_asks,
        "hit_rate": hits / max(n_asks, 1),
        "stale_share_of_answers": stale / max(n_asks, 1),
    }


ROUND_MS = 5.0  # a round of continuous prediction, from the group's definition to its routes' forecasts


def replay_groups(traces: list[Trace], size: int, asks: float, ahead: bool, seed: int = 0) -> dict[str, Any]:
    """Groups of ``size`` consecutive traces: their rankings asked for after each is defined."""
    rng = np.random.default_rng(seed)
    n_asks = hits = 0
    waits = []
    for g in range(0, len(traces) - size + 1, size):
        routes = [t.timestamps_ms for t in traces[g : g + size]]
        start, end = max(ts[0] for ts in routes), min(ts[-1] for ts in routes)
        interval = float(np.median([np.median(np.diff(ts)) for ts in routes]))
        for _ in range(4):  # several definitions over each group's span
            defined = start + rng.uniform(0.1, 0.6) * (end - start)
            if ahead:
                whole = defined + ROUND_MS
            else:  # every route's first observation after the definition
                whole = max(float(ts[np.searchsorted(ts, defined, side="right")]) for ts in routes)
            waits.append(whole - defined)
            t = defined
            while True:
                t += rng.exponential(interval / asks)
                if t >= end:
                    break
                n_asks += 1
                hits += t >= whole
    return {
        "policy": "ahead" if ahead else "on observations",
        "asks": n_asks,
        "hit_rate": hits / max(n_asks, 1),
        "wait_ms_p50": float(np.median(waits)),
        "wait_ms_p90": float(np.percentile(waits, 90)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--routes", type=int, default=24)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--asks", type=float, default=2.0, help="asks per flow per observation interval")
    parser.add_argument("--group-size", type=int, default=3, help="routes per group (the group replay)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.routes, args.steps = 3, 200
    predictor = Predictor.load(CHECKPOINT_DIR / f"{args.model}.safetensors")
    for split in ("train", "unseen"):
        traces = generate_routes(23, args.routes, args.steps, split=split)
        print(f"{split} traces: {args.routes} routes x {args.steps} steps, {args.asks} asks per interval")
        for policy in ("fixed", "adaptive", "adaptive + ahead"):
            r = replay(predictor, traces, args.asks, policy)
            print(
                f"  {policy:18s} asks {r['asks']:7d}  hit rate {r['hit_rate']:.3f}  "
                f"stale answers {r['stale_share_of_answers']:.3f}"
            )
        print(f"  groups of {args.group_size} routes, asked for after each is defined:")
        for ahead in (False, True):
            g = replay_groups(traces, args.group_size, args.asks, ahead)
            print(
                f"  {g['policy']:18s} asks {g['asks']:7d}  whole ranking {g['hit_rate']:.3f}  "
                f"wait p50 {g['wait_ms_p50']:.0f} ms, p90 {g['wait_ms_p90']:.0f} ms"
            )


if __name__ == "__main__":
    main()
