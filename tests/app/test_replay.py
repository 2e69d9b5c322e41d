"""`cpe replay` against a live `cpe serve`: a simulated trace in, the service's own score out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from tools.process import ROOT, serving
from tools.replay import flow_key_of, observation

pytestmark = pytest.mark.server  # real cpe serve processes


def test_a_simulated_trace_is_replayed_and_scored_against_persistence(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run(
        [*cli, "simulate", "--routes", "3", "--steps", "80", "--out", str(trace)], cwd=ROOT, check=True
    )
    env = {"CPE_DEVICE": "cpu", "CPE_MODELS": "lstm", "CPE_MODEL": "lstm", "CPE_LOG_LEVEL": "warning"}
    with serving(env) as [server]:
        # --speed 0: no pacing, and --batch 7 so that flows get several observations per body
        done = subprocess.run(
            [*cli, "replay", str(trace), "--url", server.url, "--speed", "0", "--batch", "7"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "sent 240 observations of 3 flows" in out and "accepted 240" in out, out
        rows = {
            line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("route-", "all"))
        }
        assert set(rows) == {"route-0", "route-1", "route-2", "all"}, out
        scored = [int(rows[f"route-{r}"][1]) for r in range(3)]
        assert all(n > 0 for n in scored) and int(rows["all"][2]) == sum(scored), out
        assert "persistence on the replayed flows" in out
        # the figures are the service's own: its answer for a replayed flow says the same
        flow = httpx.get(f"{server.url}/v1/flows/{flow_key_of('route-1')}").json()
        assert flow["observations"] == 80 and flow["route_id"] == "route-1"
        assert flow["score"]["scored"] == scored[1]
        assert f"{flow['score']['mae_ms']:.3f}" == rows["route-1"][2]


def test_lines_are_contexts_or_observations_as_observe_takes_them() -> None:
    line = {"route_id": "r", "timestamp": 1_700_000_000_000, "features": [1.0] * 8, "pattern_id": None}
    obs, key, ts = observation(line)
    assert obs == {
        "Context": {"flow_key": flow_key_of("r"), "timestamp": ts, "features": [1.0] * 8, "route_id": "r"}
    }
    assert key == flow_key_of("r") and ts == 1_700_000_000_000
    record = {"FlowRecord": {"key": [1] * 32, "timestamp": 1_700_000_000_000_000_000, "size": 1500}}
    assert observation(record) == (record, "01" * 32, 1_700_000_000_000)
    native = orjson.loads(b'{"Context": {"flow_key": "' + b"ab" * 32 + b'", "timestamp": 5, "features": []}}')
    assert observation(native)[1:] == ("ab" * 32, 5)
