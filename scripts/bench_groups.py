"""Route groups: how often noise flaps a group's best route, how fast a real degradation switches it, and
(``--load``) how long an observation takes to reach a routing subscriber under load.

    python -m scripts.bench_groups [--steps 600] [--seeds 5] [--margin 0.25] [--dwell-ms 5000]
    python -m scripts.bench_groups --sweep          # margins x dwells, and the weighting temperatures
    python -m scripts.bench_groups --load [--subscribers 1000] [--flows 10000] [--groups 500] [--seconds 20]
        [--device cpu|cuda|auto] [--simulate-forward-ms 2] [--env CPE_FORECAST_BATCH=256 ...]
        [--profile out.txt]

Quality (default), in this process with the real parts (``run_services``: engine, shipped LSTM, flow
store, continuous prediction, route groups, bus), no HTTP. One group of two routes, each an observed flow
fed a ``models/traces.py`` trace sampled every second (seeded; bursts, congestion, failures and regime
shifts off: a stable route, with its measurement noise and load wander). Per step both routes' next
observations are applied, the forecasts made (``idle``), and the routing messages the group published
read off the bus.

- **Flap rate**: the routes' base latencies 10 % apart, ``--steps`` steps: changes of best route (the
  RoutingPredictions after the first) per 100 re-rankings, over ``--seeds`` seeds; also the
  LoadBalancingUpdates per 100 re-rankings. Target: <= 1 change per 100.
- **Switch time**: the same routes, the best one's base latency multiplied by 3 from step ``--warm`` on
  (``generate_trace(shift_at=...)``): how many observations of the degraded route until the
  RoutingPrediction naming the other. Target: within 2.

Load (``--load``): a real ``cpe serve`` (uvicorn) on a free port, ``--flows`` route flows in ``--groups``
groups, every flow observed once a second (POST /v1/observe in ``--slices`` bodies over the second, each
a slice of the groups: by default 50, a body of 200 flows every 20 ms, the flows' updates spread over
the second as independent collectors send them; ``--slices 10`` sends synchronized bursts of 1,000),
``--subscribers`` WebSocket clients (websockets, spread over ``--procs`` client processes), each
subscribed to ``--groups-per-subscriber`` groups. Every routing message carries its ``timestamp`` (ms,
when made); each group's observations carry the send time, so a client's latency is receipt time minus
the send time of the observation round that caused the message. Reported: p50/p99 of that latency, of
the part after the message was made (``delivery_ms``: its ``timestamp`` to receipt, ms resolution: the
fan-out's and the clients' share), messages received, messages the server dropped for slow clients
(cpe_ws_messages_dropped_total), and heartbeats' ``dropped``; and the server's own figures: observation
applied -> forecast published (GET /v1/stats), flows still due, rounds. A client attributes a message to
the newest observation round of its group, so a latency is right while the server keeps up (under the 1 s
between a group's rounds); a server falling behind shows in ``due`` and ``observe_to_forecast_ms``.
Figures on a shared machine are noisy: repeat and quote medians.

- ``--device`` (default: CPE_DEVICE, else cpu) runs the models there (``cuda`` on a GPU machine).
- ``--simulate-forward-ms MS``: a SIMULATION. The server's forward pass is replaced by persistence in the
  model's scaled space (the last context repeated) plus a sleep of MS per pass, standing for a GPU's
  time; the encoding, decoding and everything after the model are the real code. It separates the
  service's own overhead from the model's CPU cost; its figures are labelled ``simulated_forward_ms``.
- ``--env K=V``: a server setting (e.g. ``CPE_FORECAST_BATCH=256`` for smaller, more frequent rounds).
- ``--profile PATH``: py-spy samples the server during the load rounds; the functions with the most
  samples (own and inclusive) are written to PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from app.api.admission import InflightLimit
from app.auth import ApiKeys
from app.groups import Group, GroupRoute
from app.metrics import new_registry
from app.services import Services, run_services
from app.settings import Settings
from models.traces import RouteProfile, generate_trace

T0 = 1_767_225_600_000
OWNER = "0f" * 32
FAST, SLOW = f"{0xFA57:064x}", f"{0x5104:064x}"


def stable_profile(base_latency_ms: float, noise: float) -> RouteProfile:
    """A route sampled every second whose only changes are measurement noise (log-std ``noise``) and slow
    load wander."""
    return RouteProfile(
        base_latency_ms=base_latency_ms,
        latency_noise_sigma=noise,
        interval_s=1.0,
        interval_jitter=0.02,
        gap_prob=0.0,
        service_time_ms=0.25 * base_latency_ms,
        daily_amplitude=0.0,
        burst_rate_per_h=0.0,
        congestion_rate_per_day=0.0,
        failure_rate_per_day=0.0,
        regime_rate_per_day=0.0,
    )


def traces(steps: int, seed: int, degrade_at: int | None, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(steps, D) features of the fast route (degraded x3 from ``degrade_at``) and of the slow one (10 %
    higher base latency)."""
    fast = generate_trace(
        stable_profile(20.0, noise),
        steps,
        seed,
        shift_at=degrade_at,
        shift_latency_factor=3.0,
        shift_phase_hours=0.0,
    )
    slow = generate_trace(stable_profile(22.0, noise), steps, seed + 10_000)
    return fast.features.astype(np.float64), slow.features.astype(np.float64)


def bench_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "device": "cpu",
        "models": ("lstm",),
        "model": "lstm",
        "learning_enabled": False,  # one model version throughout
        "engine_latency_budget_ms": 0.0,
        "log_level": "warning",
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def services(settings: Settings) -> Any:
    async with run_services(settings, ApiKeys.parse(""), new_registry(), InflightLimit(1024)) as running:
        yield running


def observe_body(step: int, rows: dict[str, np.ndarray]) -> bytes:
    return orjson.dumps(
        {
            "observations": [
                {"Context": {"flow_key": key, "timestamp": T0 + 1000 * step, "features": row.tolist()}}
                for key, row in rows.items()
            ]
        }
    )


@dataclass
class Run:
    """One trace through one group: the published messages per step."""

    rankings: int
    best_by_step: list[str | None]  # the best named by a RoutingPrediction published at that step, if any
    updates_by_step: list[int]  # LoadBalancingUpdates published at each step
    weights: list[dict[str, float]]


async def run_trace(
    running: Services, group_id: str, fast: np.ndarray, slow: np.ndarray, objective: str = "latency"
) -> Run:
    """Feed the two routes' traces, step by step, and collect what the group publishes."""
    group = Group(group_id, OWNER, objective, (GroupRoute("fast", FAST), GroupRoute("slow", SLOW)), 0)  # type: ignore[arg-type]
    forecasts = running.forecasts
    assert forecasts is not None, "continuous prediction is off"
    await running.flows.delete(FAST)
    await running.flows.delete(SLOW)
    await running.groups.put(group)
    best: list[str | None] = []
    updates: list[int] = []
    weights: list[dict[str, float]] = []
    received: list[bytes] = []

    async def collect(subscription: Any) -> None:
        async for message in subscription:
            received.append(message)

    async with running.bus.subscribe(running.settings.bus_channel) as subscription:
        collector = asyncio.create_task(collect(subscription))
        for step in range(len(fast)):
            body = observe_body(step, {FAST: fast[step], SLOW: slow[step]})
            await running.ingest.apply(running.ingest.read(body), "bench")
            await forecasts.continuous.idle()
            for _ in range(5):  # let the bus hand over what the round published
                await asyncio.sleep(0)
            named, n = None, 0
            for message in received:
                decoded = orjson.loads(message)
                if "RoutingPrediction" in decoded:
                    named = decoded["RoutingPrediction"]["routing_suggestions"][0]["route_id"]
                elif "LoadBalancingUpdate" in decoded:
                    n += 1
                    weights.append(decoded["LoadBalancingUpdate"]["service_weights"])
            received.clear()
            best.append(named)
            updates.append(n)
        collector.cancel()
    [state] = await running.groups.store.states([group_id])
    await running.groups.delete(group_id)
    return Run(0 if state is None else state.rankings, best, updates, weights)


def flap_figures(runs: list[Run]) -> dict[str, float]:
    rankings = sum(r.rankings for r in runs)
    changes = sum(max(sum(b is not None for b in r.best_by_step) - 1, 0) for r in runs)
    updates = sum(sum(r.updates_by_step) for r in runs)
    return {
        "rankings": rankings,
        "changes": changes,
        "changes_per_100": round(100.0 * changes / max(rankings, 1), 3),
        "lb_updates_per_100": round(100.0 * updates / max(rankings, 1), 3),
    }


def switch_after(run: Run, degrade_at: int) -> int:
    """Observations of the degraded route (from ``degrade_at``, counted from 1) until the published best is
    another route: 0 when it was another already, len(trace) - degrade_at + 1 when it never was."""
    best = None
    for step, named in enumerate(run.best_by_step):
        best = named or best
        if step >= degrade_at - 1 and best not in (None, "fast"):
            return max(step - degrade_at + 1, 0)
    return len(run.best_by_step) - degrade_at + 1


async def quality(
    args: argparse.Namespace, margin: float, dwell_ms: int, temperature: float
) -> dict[str, Any]:
    settings = bench_settings(
        group_switch_margin=margin, group_min_dwell_ms=dwell_ms, weight_temperature=temperature
    )
    flaps, switches = [], []
    async with services(settings) as running:
        for seed in range(args.seeds):
            fast, slow = traces(args.steps, seed, None, args.noise)
            flaps.append(await run_trace(running, f"flap-{seed}", fast, slow))
            fast, slow = traces(args.warm + 20, seed, args.warm, args.noise)
            switches.append(switch_after(await run_trace(running, f"switch-{seed}", fast, slow), args.warm))
    return {
        "margin": margin,
        "dwell_ms": dwell_ms,
        "temperature": temperature,
        **flap_figures(flaps),
        "switch_observations": switches,
        "switch_max": max(switches),
        "slow_route_weight": round(
            statistics.median(w.get("slow", 0.0) for r in flaps for w in r.weights), 4
        ),
    }


# -- load: a real server, real WebSocket clients --------------------------------------------------------
def group_key(g: int) -> str:
    return f"{0x6000_0000 + g:064x}"


def route_key(g: int, r: int) -> str:
    return f"{0x7000_0000 + g * 10_000 + r:064x}"


def load_latency(g: int, r: int, n: int, round_: int) -> float:
    """Route r of group g in round ``round_``: one route leads by far for two rounds, then the next does,
    so that every group keeps publishing (a new best every other round, new weights every round)."""
    return 10.0 if r == (round_ // 2 + g) % n else 30.0 + (r % 3)


def load_bodies(args: argparse.Namespace, round_: int, slices: int) -> list[tuple[list[int], bytes]]:
    """The round's observations, one body per slice of groups: (the slice's groups, body)."""
    per_group = args.flows // args.groups
    out = []
    for part in range(slices):
        groups = list(range(part, args.groups, slices))
        observations = [
            {
                "Context": {
                    "flow_key": route_key(g, r),
                    "timestamp": T0 + 1000 * round_,
                    "features": [
                        load_latency(g, r, per_group, round_),
                        1.0,
                        0.001,
                        500.0,
                        0.4,
                        0.0,
                        50.0,
                        2.0,
                    ],
                }
            }
            for g in groups
            for r in range(per_group)
        ]
        out.append((groups, orjson.dumps({"observations": observations})))
    return out


def subscriber_groups(args: argparse.Namespace, i: int) -> list[int]:
    rng = np.random.default_rng(i)
    return sorted(
        rng.choice(args.groups, size=min(args.groups_per_subscriber, args.groups), replace=False).tolist()
    )


def client_process(args: argparse.Namespace, port: int, first: int, count: int, sent: Any, out: Any) -> None:
    """Hold subscribers ``first`` .. ``first + count`` (half by group, half by the groups' flow keys);
    report their latencies and counts on ``out`` once the parent sets ``sent[-1]`` to a stop time."""
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    delivery: list[float] = []  # the message's own timestamp (made, ms) -> received: the fan-out's share
    by_group: dict[str, int] = {}
    dropped = [0]

    async def one(i: int, ready: asyncio.Event, started: list[int]) -> None:
        groups = subscriber_groups(args, i)
        frame: dict[str, Any] = {"op": "subscribe"}
        if i % 2:
            frame["flow_keys"] = [group_key(g) for g in groups]
        else:
            frame["groups"] = [f"g{g:05d}" for g in groups]
        async with connect(f"ws://127.0.0.1:{port}/v1/stream/routing", proxy=None, max_queue=None) as ws:
            await ws.send(json.dumps(frame))
            assert json.loads(await ws.recv())["op"] == "subscribed"
            started[0] += 1
            if started[0] == count:
                ready.set()
            while True:
                text = await ws.recv(decode=True)
                now = time.time()
                assert isinstance(text, str)
                if text.startswith('{"op"'):
                    beat = json.loads(text)
                    dropped[0] = max(dropped[0], beat.get("dropped", 0))
                    continue
                body = next(iter(orjson.loads(text).values()))
                g = int(body["group_id"][1:])
                if not sent[g]:  # made before the load began (the group's first ranking): no send time
                    continue
                latencies.append((now - sent[g]) * 1000.0)
                delivery.append(now * 1000.0 - body["timestamp"])
                by_group[body["group_id"]] = by_group.get(body["group_id"], 0) + 1

    async def run() -> None:
        ready, started = asyncio.Event(), [0]
        tasks = [asyncio.create_task(one(i, ready, started)) for i in range(first, first + count)]
        await ready.wait()
        out.put(("ready", first))
        while sent[len(sent) - 1] == 0.0:
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    out.put(("done", latencies, delivery, by_group, dropped[0]))


def simulate_forward(pass_ms: float) -> None:
    """SIMULATION (``--simulate-forward-ms``): every predictor's forward pass becomes persistence in the
    scaled space (each window's last context, repeated over the horizon) after a sleep of ``pass_ms``
    per pass, which stands for a GPU's time and, like a GPU's kernel, holds no GIL. The encoding before
    it and the decoding after it stay the real ones."""
    from models.predictor import Predictor

    def forward_scaled(self: Predictor, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(pass_ms / 1000.0)
        mean = np.repeat(x[:, -1:, : self.scaler.n_features], self.horizon, axis=1).astype(np.float32)
        return mean, np.full_like(mean, 0.1)

    projections: dict[tuple[int, int], np.ndarray] = {}

    def forward_embedded(self: Predictor, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean, std = forward_scaled(self, x)
        # a fixed random projection of the newest contexts: windows alike embed alike, as the model's do
        recent = x[:, -4:].reshape(len(x), -1).astype(np.float32)
        shape = (recent.shape[1], self.embedding_dim)
        if shape not in projections:
            projections[shape] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        embedding = recent @ projections[shape]
        embedding /= np.linalg.norm(embedding, axis=1, keepdims=True) + 1e-6
        return mean, std, embedding

    Predictor.forward_scaled = forward_scaled  # type: ignore[method-assign]
    Predictor.forward_embedded = forward_embedded  # type: ignore[method-assign]


def serve_simulated(argv: list[str]) -> int:
    """``--serve-simulated MS <cpe serve's arguments>``: `cpe serve` with ``simulate_forward(MS)``."""
    simulate_forward(float(argv[0]))
    from app.cli import main as cli

    return cli(argv[1:])


def server_process(env: dict[str, str], simulated_ms: float | None) -> Any:
    """The `cpe serve` of the load, simulated (``--simulate-forward-ms``) or not; not started yet."""
    from tools.process import LOOPBACK, ServerProcess, cpe_env, cpe_serve, free_port

    if simulated_ms is None:
        return cpe_serve(env)
    port = free_port()
    argv = [sys.executable, "-m", "scripts.bench_groups", "--serve-simulated", str(simulated_ms)]
    argv += ["serve", "--host", LOOPBACK, "--port", str(port)]
    return ServerProcess(argv, port, env=cpe_env(env), name="cpe serve (simulated forward)")


@contextlib.contextmanager
def py_spy(pid: int, seconds: float, path: str | None) -> Iterator[None]:
    """Sample ``pid`` with py-spy for ``seconds`` (``--profile``), and write the top functions to ``path``."""
    if path is None:
        yield
        return
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("py-spy") or str(__import__("pathlib").Path(sys.executable).with_name("py-spy"))
    raw = tempfile.NamedTemporaryFile(suffix=".txt", delete=False).name  # noqa: SIM115
    argv = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100"]
    proc = subprocess.Popen([*argv, "--format", "raw", "--nonblocking", "-o", raw], stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.wait(timeout=seconds + 60)
        with open(path, "w") as out:
            out.write(profile_summary(raw))


def profile_summary(raw_path: str, top: int = 40) -> str:
    """py-spy's collapsed stacks as two tables: the functions with most samples of their own, and most
    samples inclusive (anywhere on the stack), in % of all samples (every thread's)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    with open(raw_path) as lines:
        for line in lines:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0] for f in stack.split(";")]
            own[frames[-1]] = own.get(frames[-1], 0) + n
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + n
    out = [f"{total} samples"]
    for title, table in (("own", own), ("inclusive", inclusive)):
        out.append(f"\n-- {title} --")
        for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"{100.0 * n / max(total, 1):6.2f}%  {name}")
    return "\n".join(out) + "\n"


def load(args: argparse.Namespace) -> dict[str, Any]:
    """See the module's docstring: ``--load``."""
    import multiprocessing

    import httpx

    from tools.process import read_metrics

    env = {
        "CPE_DEVICE": args.device,
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_LOG_LEVEL": "warning",
        "CPE_LEARNING_ENABLED": "false",
        "CPE_ENGINE_MAX_BATCH": "1024",
        "CPE_MAX_ROUTES": str(max(64, args.flows // args.groups)),
        "CPE_GROUP_WEIGHT_STEP": "0.05",
        "CPE_WS_QUEUE_SIZE": "256",
    }
    env |= dict(item.split("=", 1) for item in args.env)
    slices = args.slices  # bodies per round, spread over the second
    with server_process(env, args.simulate_forward_ms) as server:
        server.wait_ready()
        with httpx.Client(timeout=30) as http:
            for _, body in load_bodies(args, 0, slices):
                assert http.post(f"{server.url}/v1/observe", content=body).status_code == 202
            per_group = args.flows // args.groups
            for g in range(args.groups):
                group = {
                    "flow_key": group_key(g),
                    "objective": "latency",
                    "routes": [{"route_id": f"r{r}", "flow_key": route_key(g, r)} for r in range(per_group)],
                }
                answer = http.put(f"{server.url}/v1/groups/g{g:05d}", json=group)
                assert answer.status_code == 201, answer.text
        sent = multiprocessing.Array("d", args.groups + 1, lock=False)  # send time per group; last: stop
        out: Any = multiprocessing.Queue()
        share = -(-args.subscribers // args.procs)
        procs = [
            multiprocessing.Process(
                target=client_process,
                args=(args, server.port, first, min(share, args.subscribers - first), sent, out),
                daemon=True,
            )
            for first in range(0, args.subscribers, share)
        ]
        for proc in procs:
            proc.start()
        for _ in procs:
            assert out.get(timeout=300)[0] == "ready"
        ws = ("cpe_ws_messages_sent_total", "cpe_ws_messages_dropped_total")
        before = read_metrics(server.url, *ws)
        rounds = max(int(args.seconds), 1)
        late = 0
        with httpx.Client(timeout=30) as http, py_spy(server.pid, rounds, args.profile):
            start = time.monotonic()
            for round_ in range(1, rounds + 1):
                bodies = load_bodies(args, round_, slices)
                for part, (groups, body) in enumerate(bodies):
                    due = start + (round_ - 1) + part / slices
                    pause = due - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    else:
                        late += 1
                    now = time.time()
                    for g in groups:
                        sent[g] = now
                    answer = http.post(f"{server.url}/v1/observe", content=body)
                    assert answer.status_code == 202, answer.text
        served = httpx.get(f"{server.url}/v1/stats", timeout=10).json()["forecasts"]  # before the drain
        time.sleep(3.0)  # the last round's messages arrive
        kinds = {k: f'cpe_group_changes_total{{change="{k}"}}' for k in ("best", "weights", "breaker")}
        after = read_metrics(server.url, "cpe_forecasts_total", *ws, *kinds.values())
        forecasts = after["cpe_forecasts_total"]
        sent_total, dropped = (after[name] - before[name] for name in ws)
        changes = {kind: after[series] for kind, series in kinds.items()}
        sent[args.groups] = time.time()
        latencies: list[float] = []
        delivery: list[float] = []
        received = 0
        heartbeat_dropped = 0
        for _ in procs:
            kind, lat, made, by_group, beat = out.get(timeout=120)
            assert kind == "done"
            latencies += lat
            delivery += made
            received += sum(by_group.values())
            heartbeat_dropped += beat
        for proc in procs:
            proc.join(timeout=30)

    def pct(values: list[float], q: float) -> float | None:
        ordered = sorted(values)
        return round(ordered[min(int(q / 100 * len(ordered)), len(ordered) - 1)], 2) if ordered else None

    return {
        "device": args.device,
        "simulated_forward_ms": args.simulate_forward_ms,
        "settings": dict(item.split("=", 1) for item in args.env),
        "flows": args.flows,
        "groups": args.groups,
        "subscribers": args.subscribers,
        "seconds": rounds,
        "bodies_sent_late": late,
        "observations": args.flows * rounds,
        "forecasts_total": forecasts,
        "group_changes": changes,
        "messages_received": received,
        "messages_written_by_server": sent_total,
        "messages_dropped_by_server": dropped,
        "latency_ms": {"p50": pct(latencies, 50), "p99": pct(latencies, 99), "max": pct(latencies, 100)},
        # the message made -> received (its timestamp has ms resolution): how much of the above is fan-out
        "delivery_ms": {"p50": pct(delivery, 50), "p99": pct(delivery, 99), "max": pct(delivery, 100)},
        "server": {
            "observe_to_forecast_ms": served["observe_to_forecast_ms"],
            "due_at_end": served["due"],
            "rounds": served["rounds"],
            "coalesced": served["coalesced"],
            "deferred": served["deferred"],
        },
    }


COLUMNS = (
    ("margin", "margin"),
    ("dwell_ms", "dwell ms"),
    ("temperature", "temperature"),
    ("rankings", "re-rankings"),
    ("changes_per_100", "changes / 100"),
    ("lb_updates_per_100", "LB updates / 100"),
    ("switch_observations", "switch after (obs)"),
    ("slow_route_weight", "weight of the 10 % slower route"),
)


def quality_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(str(r[name]) for name, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-simulated"]:
        return serve_simulated(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="steps of the stable trace, per seed")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--noise",
        type=float,
        default=0.2,
        help="log-std of the latency measurement noise (traces: 0.02..0.05)",
    )
    parser.add_argument("--warm", type=int, default=60, help="steps before the degradation")
    parser.add_argument("--margin", type=float, default=Settings.model_fields["group_switch_margin"].default)
    parser.add_argument("--dwell-ms", type=int, default=Settings.model_fields["group_min_dwell_ms"].default)
    parser.add_argument(
        "--temperature", type=float, default=Settings.model_fields["weight_temperature"].default
    )
    parser.add_argument("--sweep", action="store_true", help="margins x dwells, then temperatures")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--load", action="store_true", help="the load benchmark (a real server)")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=500)
    parser.add_argument("--groups-per-subscriber", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--procs", type=int, default=4, help="client processes holding the sockets")
    parser.add_argument(
        "--slices",
        type=int,
        default=50,
        help="bodies a second, each a slice of the groups (10: bursts of 1,000 flows at the defaults)",
    )
    parser.add_argument(
        "--device", default=os.environ.get("CPE_DEVICE", "cpu"), help="CPE_DEVICE of the load's server"
    )
    parser.add_argument(
        "--simulate-forward-ms",
        type=float,
        default=None,
        help="SIMULATION: the server's forward pass is persistence plus a sleep of this per pass",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="K=V", help="a setting of the load's server"
    )
    parser.add_argument("--profile", help="py-spy the load's server; its top functions go here")
    args = parser.parse_args(argv)
    if args.load:
        results: Any = load(args)
        print(json.dumps(results, indent=2))
    else:
        grid: Iterator[tuple[float, int, float]]
        if args.sweep:
            grid = iter(
                [(m, d, args.temperature) for m in (0.0, 0.1, 0.15, 0.25) for d in (0, args.dwell_ms)]
                + [(args.margin, args.dwell_ms, t) for t in (0.1, 0.2)]
            )
        else:
            grid = iter([(args.margin, args.dwell_ms, args.temperature)])
        results = [asyncio.run(quality(args, m, d, t)) for m, d, t in grid]
        print(quality_table(results))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
