"""Smoke tests of pattern memory's measurement tools: they run end to end and their figures make sense."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tools.bench import REPO

pytestmark = pytest.mark.slow


def _run(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=600, check=False, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_patterns_quick_reports_every_figure() -> None:
    out = _run("scripts.bench_patterns", "--quick", "--queries", "100")
    result = json.loads(out.splitlines()[0])
    assert result["n"] == 20_000 and result["dim"] == 32
    assert result["insert_per_s"] > 0 and result["insert_per_cpu_s"] >= result["insert_per_s"] * 0.5
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["recall_at_10"] >= 0.95  # 20,000 windows: the graph is all but exact
    assert 6.0 < result["held_mib"] < 20.0  # ~320 bytes a window
    assert "recall@10" in out


def test_the_analogy_evaluation_chooses_a_weight_and_scores_every_set() -> None:
    out = _run("tools.analogy", "--quick")
    assert "validation: model alone" in out
    for name in ("other seeds", "unseen scales", "level shift x3"):
        assert f"held-out: {name}" in out


def test_the_cache_ttl_replay_compares_the_policies() -> None:
    out = _run("tools.cache_ttl", "--quick")
    rows = [line.split() for line in out.splitlines() if "hit rate" in line]
    assert len(rows) == 6  # three policies, two sets of traces
    ahead = [row for row in rows if row[0] == "adaptive" and row[1] == "+"]
    assert all(row[-1] == "0.000" for row in ahead)
    groups = [line.split() for line in out.splitlines() if "whole ranking" in line]
    assert [row[0] for row in groups] == ["on", "ahead"] * 2  # both policies, both sets of traces
    for later, now in zip(groups[::2], groups[1::2], strict=True):
        assert float(now[5]) > float(later[6]) and float(now[5]) >= 0.99  # whole at once when ahead
