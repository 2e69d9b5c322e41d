"""scripts/bench_observe.py runs end to end on a small load and reports every figure it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.process import ROOT

pytestmark = [pytest.mark.server, pytest.mark.slow]  # real servers, seconds each


def test_bench_observe_measures_ingest_forecasts_latency_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--flows", "300", "--duration", "1", "--repeat", "1", "--body", "100", "--sampled", "10"]
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench_observe", *argv, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [result] = json.loads(out.read_text())
    assert result["flows"] == 300 and result["store"] == "memory"
    assert result["observations_per_s"] > 0 and result["predictions_per_s"] > 0
    assert 0 < result["fraction_of_raw"] < 1 and result["raw_forward_per_s"] > 0
    assert result["observe_to_push_p50_ms"] <= result["observe_to_push_p99_ms"]
    assert result["forecasts_not_received"] == 0  # every sampled observation's forecast was pushed
    assert result["server_observe_to_published_ms"]["p99"] is not None
    assert result["memory_per_flow_bytes"] > 0
    assert "| 300 | memory |" in done.stdout
