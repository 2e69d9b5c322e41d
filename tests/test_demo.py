"""tools.demo: the simulated network streams into a live `cpe serve` and defines its route groups; its
traces carry the level shifts and outages it promises."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tools.demo import OUTAGE_LATENCY_FACTOR, TRACE_STEPS, network, observations
from tools.process import ROOT, ServerProcess, serving

WRITER = "demo-writer-key-0001"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    settings = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_API_KEYS": f"{WRITER}:write",
    }
    with serving(settings) as (server,):
        yield server


def test_the_network_has_groups_of_routes_with_shifts() -> None:
    groups = network(4, 3, seed=1, shift_every=4)
    routes = [r for g in groups for r in g.routes]
    assert len(groups) == 4 and len(routes) == 12 and len({r.flow_key for r in routes}) == 12
    assert all(len(r.trace) == TRACE_STEPS for r in routes)
    assert network(4, 3, seed=1, shift_every=4)[0].routes[0].trace.features.tobytes() == (
        routes[0].trace.features.tobytes()
    )  # seeded
    # the 4th route's base latency doubles for good early on: its later latency is clearly higher
    shifted = routes[3].trace.features[:, 0]
    assert np.median(shifted[200:400]) > 1.5 * np.median(shifted[:30])


def test_an_outage_degrades_only_its_route() -> None:
    groups = network(2, 2, seed=1, shift_every=0)
    victim = groups[1].routes[0]
    normal = observations(groups, 5, 1_000, set())
    failing = observations(groups, 5, 1_000, {victim.route_id})
    changed = [(a, b) for a, b in zip(normal, failing, strict=True) if a != b]
    assert len(changed) == 1
    before, after = (o["Context"]["features"] for o in changed[0])  # type: ignore[index]
    assert after[0] == pytest.approx(before[0] * OUTAGE_LATENCY_FACTOR) and after[2] >= 0.3


@pytest.mark.server
@pytest.mark.slow
def test_the_demo_streams_into_a_live_server(server: ServerProcess) -> None:
    argv = [sys.executable, "-m", "tools.demo", "--url", server.url, "--api-key", WRITER]
    argv += [
        "--groups",
        "3",
        "--routes",
        "2",
        "--interval-s",
        "0.5",
        "--duration-s",
        "6",
        "--outage-every-s",
        "2",
    ]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "outage: route" in done.stdout
    headers = {"x-api-key": WRITER}
    flows = httpx.get(f"{server.url}/v1/flows", headers=headers).json()
    assert flows["count"] == 6
    one = httpx.get(f"{server.url}/v1/flows/{flows['flows'][0]['flow_key']}", headers=headers).json()
    assert one["observations"] >= 8 and one["forecast"] is not None  # about 12 steps in 6 s, forecast
    groups = httpx.get(f"{server.url}/v1/groups", headers=headers).json()
    assert [g["group_id"] for g in groups["groups"]] == ["demo-00", "demo-01", "demo-02"]


def test_the_demo_says_what_its_flags_do() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.demo", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0
    for flag in (
        "--url",
        "--port",
        "--groups",
        "--routes",
        "--interval-s",
        "--duration-s",
        "--outage-every-s",
    ):
        assert flag in done.stdout
