"""Replay a trace into a running CPE through ``POST /v1/observe``, then print its score against persistence.

    cpe replay trace.jsonl --url http://127.0.0.1:8000 --speed 60
    python -m tools.replay trace.jsonl --speed 0          # as fast as the service takes it

A line is a ``cpe simulate`` context (``{"route_id", "timestamp", "features", "pattern_id"?}``: the flow
key is the SHA-256 of the route id, so a route is one flow), a context with its own ``flow_key``, or an
observation as ``/v1/observe`` takes it (``{"Context": {...}}``, ``{"TransportMetrics": {...}}``, ...).
Lines are sent in trace-time order, ``--speed`` times faster than their timestamps (0: no pacing), in
bodies of what is due at once (up to ``--batch``). A 429 or 503 is retried after its Retry-After: nothing
is dropped. At the end, once the service has forecast every replayed flow's newest window, the tool reads
each flow's running score from ``GET /v1/flows/{flow_key}`` and prints the service's latency MAE beside
persistence's and EWMA's, per flow and over all of them (each flow weighted by its forecasts scored). It
speaks to the service through the Python client (``app/client``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from app.client import Client, CPEError

OBSERVATION_TYPES = (
    "Context",
    "TransportMetrics",
    "NetworkConditions",
    "FlowRecord",
    "SimilarityResult",
    "AdaptationFeedback",
)


def flow_key_of(route_id: str) -> str:
    """The flow key a simulated route is replayed as: the SHA-256 of its id, in hex."""
    return hashlib.sha256(route_id.encode()).hexdigest()


def observation(line: dict[str, Any]) -> tuple[dict[str, Any], str | None, int | None]:
    """A trace line as an observation, with its flow key and timestamp (ms) when it has them."""
    if len(line) == 1 and next(iter(line)) in OBSERVATION_TYPES:
        ((kind, body),) = line.items()
        key = body.get("flow_key") or body.get("key")
        if isinstance(key, list):
            key = bytes(key).hex()
        ts = body.get("timestamp")
        if kind == "FlowRecord" and isinstance(ts, int):
            ts //= 1_000_000  # FlowRecord timestamps are in ns
        return line, key, ts if isinstance(ts, int) else None
    if "features" not in line or "timestamp" not in line:
        raise ValueError("neither an observation nor a context (a context has timestamp and features)")
    key = line.get("flow_key") or flow_key_of(str(line["route_id"]))
    context = {"flow_key": key, "timestamp": line["timestamp"], "features": line["features"]}
    for name in ("route_id", "pattern_id"):
        if line.get(name) is not None:
            context[name] = line[name]
    return {"Context": context}, key, int(line["timestamp"])


def read(path: Path) -> Iterator[tuple[dict[str, Any], str | None, int | None]]:
    with path.open("rb") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                yield observation(orjson.loads(text))
            except (ValueError, KeyError, TypeError) as exc:
                raise SystemExit(f"{path}:{number}: {exc}") from None


@dataclass
class Replayed:
    """What was sent, and what the service answered."""

    sent: int = 0
    accepted: int = 0
    late: int = 0
    duplicates: int = 0
    retries: int = 0
    bodies: int = 0
    newest: dict[str, int] = field(default_factory=dict)  # flow_key -> newest timestamp sent
    routes: dict[str, str] = field(default_factory=dict)  # flow_key -> route_id, where the trace names one


def send(client: Client, batch: list[dict[str, Any]], out: Replayed) -> None:
    """POST one body; retried after Retry-After while the service says 429 or 503."""
    while True:
        try:
            counts = client.observe(batch)
        except CPEError as exc:
            if exc.status not in (429, 503):
                raise SystemExit(str(exc)[:2000]) from None
            out.retries += 1
            time.sleep(exc.retry_after_s or 1.0)
            continue
        out.accepted += counts.accepted
        out.late += counts.late
        out.duplicates += counts.duplicates
        out.sent += len(batch)
        out.bodies += 1
        return


def replay(client: Client, path: Path, speed: float, batch_size: int, out: Replayed) -> float:
    """Stream ``path`` into the service; returns the wall seconds it took."""
    start = time.monotonic()
    first_ts: int | None = None
    batch: list[dict[str, Any]] = []
    for obs, key, ts in read(path):
        if speed > 0 and ts is not None:
            if first_ts is None:
                first_ts = ts
            due = start + (ts - first_ts) / 1000.0 / speed
            wait = due - time.monotonic()
            if wait > 0:  # what is due now goes first, then we wait for this one
                if batch:
                    send(client, batch, out)
                    batch = []
                    wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
        batch.append(obs)
        if key is not None and ts is not None:
            out.newest[key] = max(ts, out.newest.get(key, ts))
            route = next(iter(obs.values())).get("route_id")
            if route is not None:
                out.routes[key] = str(route)
        if len(batch) >= batch_size:
            send(client, batch, out)
            batch = []
    if batch:
        send(client, batch, out)
    return time.monotonic() - start


def scores(client: Client, out: Replayed, wait_s: float) -> dict[str, dict[str, Any]]:
    """Each replayed flow's GET /v1/flows answer, once its forecast covers its newest observation (or
    ``wait_s`` has passed)."""
    answers: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + wait_s
    pending = dict(out.newest)
    while pending:
        for key, newest in list(pending.items()):
            try:
                summary = client.flow(key)
            except CPEError:
                pending.pop(key)
                continue
            flow = summary.model_dump()
            answers[key] = flow
            forecast = summary.forecast
            if forecast is not None and forecast["metadata"]["base_timestamp"] >= newest:
                pending.pop(key)
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return answers


def report(out: Replayed, flows: dict[str, dict[str, Any]], seconds: float) -> list[str]:
    """The lines the tool prints: what was sent, then the score per flow and over all flows."""
    rate = out.sent / seconds if seconds else 0.0
    lines = [
        f"sent {out.sent} observations of {len(out.newest)} flows in {out.bodies} bodies, {seconds:.1f} s "
        f"({rate:,.0f}/s); accepted {out.accepted}, late {out.late}, duplicates {out.duplicates}, "
        f"retried {out.retries} bodies",
        "",
        f"{'flow':<20} {'scored':>7} {'model MAE':>10} {'persistence':>12} {'EWMA':>10} {'ratio':>14}",
    ]
    totals = {"scored": 0, "model": 0.0, "persistence": 0.0, "ewma": 0.0}
    for key, flow in sorted(flows.items(), key=lambda item: out.routes.get(item[0], item[0])):
        score = flow.get("score") or {}
        n = score.get("scored") or 0
        name = out.routes.get(key, key[:16])
        if not n:
            lines.append(f"{name:<20} {0:>7} {'-':>10} {'-':>12} {'-':>10} {'-':>14}")
            continue
        totals["scored"] += n
        totals["model"] += score["mae_ms"] * n
        totals["persistence"] += score["persistence_mae_ms"] * n
        totals["ewma"] += score["ewma_mae_ms"] * n
        ratio = score["ratio"]
        lines.append(
            f"{name:<20} {n:>7} {score['mae_ms']:>10.3f} {score['persistence_mae_ms']:>12.3f} "
            f"{score['ewma_mae_ms']:>10.3f} {'-' if ratio is None else f'{ratio:.3f}':>14}"
        )
    n = int(totals["scored"])
    if n:
        model, persistence, ewma = (totals[k] / n for k in ("model", "persistence", "ewma"))
        ratio = f"{model / persistence:.3f}" if persistence else "-"
        lines.append(
            f"{'all flows':<20} {n:>7} {model:>10.3f} {persistence:>12.3f} {ewma:>10.3f} {ratio:>14}"
        )
        verdict = "beats" if persistence and model < persistence else "does not beat"
        lines += [
            "",
            f"the service {verdict} persistence on the replayed flows (latency_ms MAE, {n} forecasts)",
        ]
    else:
        lines += ["", "no forecast was scored: is continuous prediction on (CPE_PREDICT_ON_OBSERVE)?"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpe replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=Path, help="JSON lines: `cpe simulate` contexts or observations")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default: %(default)s)")
    parser.add_argument(
        "--speed", type=float, default=60.0, help="trace seconds per wall second; 0: as fast as it goes"
    )
    parser.add_argument("--batch", type=int, default=1000, help="most observations per POST body")
    parser.add_argument("--api-key", help="sent as X-API-Key (needs the write scope)")
    parser.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the last forecasts")
    args = parser.parse_args(argv)
    out = Replayed()
    with Client(args.url, api_key=args.api_key, timeout=30.0) as client:
        seconds = replay(client, args.trace, args.speed, args.batch, out)
        flows = scores(client, out, args.wait)
    print("\n".join(report(out, flows, seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
