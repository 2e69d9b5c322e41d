"""A simulated network streaming into CPE, to watch on the dashboard: `make demo` or `python -m tools.demo`.

Route groups of a few routes each (``--groups`` x ``--routes``: 12 x 3 = 36 flows by default), every route
an observed flow whose measurements come from a seeded synthetic trace (``models/traces.py``), sent to
``POST /v1/observe`` every ``--interval-s`` with the wall clock's timestamps, so that the page moves in
real time. The traces are drawn with frequent link failures and level shifts, so that something happens
within the first minutes: every ``--shift-every``-th route doubles its base latency for good a little way
in, and now and then (``--outage-every-s``) one route of a group fails outright for ``--outage-s``
(latency up several times, heavy loss and errors), which should move its group's choice off it.

Without ``--url`` it starts ``cpe serve`` itself on ``--port`` (with the ``CPE_*`` settings of the
environment), prints the dashboard's address and streams until Ctrl-C or ``--duration-s``. With ``--url``
it streams into a service already running. The groups are defined (``PUT /v1/groups/{group_id}``) once
their routes have been observed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.client import Client, CPEError
from app.routing_schemas import Objective
from models.traces import Trace, generate_trace, sample_profile
from tools.process import LOOPBACK, ServerProcess, cpe_serve

TRACE_STEPS = 4096  # samples per route, replayed in a loop
OUTAGE_LATENCY_FACTOR = 6.0
OUTAGE_LOSS = 0.3
OUTAGE_ERRORS = 0.2


def flow_key(name: str) -> str:
    """A demo flow's key: the SHA-256 of its name, in hex."""
    return hashlib.sha256(f"cpe-demo:{name}".encode()).hexdigest()


@dataclass
class Route:
    route_id: str
    flow_key: str
    trace: Trace


@dataclass
class Group:
    group_id: str
    flow_key: str
    routes: list[Route]


def network(groups: int, routes: int, seed: int, shift_every: int) -> list[Group]:
    """``groups`` groups of ``routes`` routes, each with its own trace; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    out = []
    n = 0
    for g in range(groups):
        members = []
        for r in range(routes):
            # more failures and regime shifts than a typical route: a demo of minutes should show some
            profile = dataclasses.replace(
                sample_profile(rng),
                failure_rate_per_day=24.0,
                failure_min_s=60.0,
                failure_max_s=900.0,
                regime_rate_per_day=6.0,
            )
            shift_at = (
                int(rng.integers(40, 120)) if shift_every and n % shift_every == shift_every - 1 else None
            )
            name = f"g{g:02d}-{'abcdefgh'[r % 8]}{r // 8 or ''}"
            trace = generate_trace(
                profile, TRACE_STEPS, int(rng.integers(2**63)), route_id=name, shift_at=shift_at
            )
            members.append(Route(name, flow_key(name), trace))
            n += 1
        out.append(Group(f"demo-{g:02d}", flow_key(f"demo-{g:02d}"), members))
    return out


def observations(
    groups: Sequence[Group], step: int, now_ms: int, outage: set[str]
) -> list[dict[str, object]]:
    """Every route's context for ``step``, stamped ``now_ms``; the routes in ``outage`` degraded."""
    out: list[dict[str, object]] = []
    for group in groups:
        for route in group.routes:
            features = route.trace.features[step % TRACE_STEPS].astype(np.float64)
            if route.route_id in outage:
                features[0] *= OUTAGE_LATENCY_FACTOR  # latency_ms
                features[1] *= OUTAGE_LATENCY_FACTOR  # jitter_ms
                features[2] = max(features[2], OUTAGE_LOSS)  # loss_rate
                features[5] = max(features[5], OUTAGE_ERRORS)  # error_rate
            context = {"flow_key": route.flow_key, "timestamp": now_ms, "features": features.tolist()}
            out.append({"Context": {**context, "route_id": route.route_id}})
    return out


def define_groups(client: Client, groups: Sequence[Group], objective: Objective) -> bool:
    """PUT every group; False (and says why) when the service has no route groups."""
    for group in groups:
        routes = [{"route_id": r.route_id, "flow_key": r.flow_key, "cost_factor": 1.0} for r in group.routes]
        try:
            client.put_group(group.group_id, group.flow_key, routes, objective=objective)
        except CPEError as error:
            if error.status not in (404, 405):
                raise
            print(
                "this service has no route groups (PUT /v1/groups): streaming the flows only", file=sys.stderr
            )
            return False
    return True


def observe(client: Client, body: list[dict[str, object]]) -> None:
    """POST the observations, waiting out a 429 or 503 (its Retry-After) rather than dropping them."""
    while True:
        try:
            client.observe(body)
            return
        except CPEError as error:
            if error.status not in (429, 503):
                raise
            time.sleep(error.retry_after_s or 1.0)


def simulate(url: str, args: argparse.Namespace, say: bool = True) -> int:
    """Stream into the service at ``url`` until ``args.duration_s`` (0: until interrupted); steps sent."""
    groups = network(args.groups, args.routes, args.seed, args.shift_every)
    rng = np.random.default_rng(args.seed + 1)
    outage: dict[str, float] = {}  # route_id -> when its outage ends (monotonic)
    next_outage = time.monotonic() + args.outage_every_s / 2
    defined = False
    step = 0
    start = time.monotonic()
    with Client(url, api_key=args.api_key) as client:
        while not args.duration_s or time.monotonic() - start < args.duration_s:
            tick = time.monotonic()
            if args.outage_every_s and tick >= next_outage:
                group = groups[int(rng.integers(len(groups)))]
                victim = group.routes[int(rng.integers(len(group.routes)))].route_id
                outage[victim] = tick + args.outage_s
                next_outage = tick + args.outage_every_s
                if say:
                    print(
                        f"outage: route {victim} of {group.group_id} fails for {args.outage_s:g} s",
                        flush=True,
                    )
            for route_id in [r for r, end in outage.items() if end <= tick]:
                del outage[route_id]
            observe(client, observations(groups, step, int(time.time() * 1000), set(outage)))
            step += 1
            if not defined and step >= 2:  # the routes have been observed: the groups may name them
                define_groups(client, groups, args.objective)
                defined = True
            time.sleep(max(0.0, args.interval_s - (time.monotonic() - tick)))
    return step


def serve(args: argparse.Namespace) -> ServerProcess:
    """``cpe serve`` with the environment's CPE_* settings, ready; pattern memory on unless they say (a few
    dozen flows afford it, and their forecasts then name similar windows)."""
    settings = {"CPE_PATTERNS_ENABLED": "true"}
    settings |= {k: v for k, v in os.environ.items() if k.startswith("CPE_")}
    server = cpe_serve(settings, args.port)
    server.start()
    try:
        server.wait_ready(timeout_s=180.0)
    except BaseException:
        server.close()
        raise
    return server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="stream into this running service instead of starting one")
    parser.add_argument("--port", type=int, default=8010, help="port of the service it starts (default 8010)")
    parser.add_argument("--groups", type=int, default=12, help="route groups (default 12)")
    parser.add_argument("--routes", type=int, default=3, help="routes per group, each a flow (default 3)")
    parser.add_argument(
        "--interval-s", type=float, default=1.0, help="seconds between observations (default 1)"
    )
    parser.add_argument(
        "--duration-s", type=float, default=0.0, help="stop after this long (default 0: never)"
    )
    parser.add_argument("--seed", type=int, default=7, help="the simulated network's seed (default 7)")
    parser.add_argument(
        "--shift-every",
        type=int,
        default=4,
        help="every n-th route doubles its base latency early on (0: none)",
    )
    parser.add_argument(
        "--outage-every-s",
        type=float,
        default=45.0,
        help="seconds between route outages (default 45; 0: none)",
    )
    parser.add_argument("--outage-s", type=float, default=20.0, help="how long an outage lasts (default 20)")
    parser.add_argument(
        "--objective", default="latency", help="the groups' ranking objective (default latency)"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("CPE_DEMO_API_KEY"),
        help="key with the write scope, when the service has CPE_API_KEYS (default: $CPE_DEMO_API_KEY)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.groups < 1 or args.routes < 1 or args.interval_s <= 0:
        raise SystemExit("--groups and --routes must be >= 1 and --interval-s > 0")
    if args.url:
        simulate(args.url.rstrip("/"), args)
        return 0
    print(f"starting cpe serve on {LOOPBACK}:{args.port} (loading the models takes from seconds to a minute)")
    server = serve(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a `kill` stops the server too, as Ctrl-C does
    try:
        flows = args.groups * args.routes
        print(f"\n  Dashboard: {server.url}/dashboard\n", flush=True)
        print(
            f"streaming {flows} flows in {args.groups} route groups every {args.interval_s:g} s; Ctrl-C stops"
        )
        simulate(server.url, args)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        server.log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
