"""Smoke tests of the benchmark tools: they run and their answers make sense. No timing targets here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.schemas import Limits
from app.wire.msgpack import msgpack_windows
from models.checkpoint import CHECKPOINT_DIR
from models.predictor import Predictor
from tools.bench import (
    PLACEHOLDER,
    REPO,
    Run,
    Server,
    Summary,
    concrete,
    forward_rows,
    http_request,
    make_requests,
    msgpack_body,
    plan_cpus,
    raw_forward_row,
    verdicts,
    write_bodies,
)
from tools.bench import main as bench_main
from tools.process import free_port


def _serve(name: str, script: str, tmp_path: Path, *extra: str) -> Iterator[Server]:
    port = free_port()
    argv = [sys.executable, "-m", f"scripts.{script}", "--host", "127.0.0.1", "--port", str(port), *extra]
    server = Server(name, argv, port, tmp_path, cpus=None)
    try:
        server.wait_ready(deadline=time.monotonic() + 60)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")  # one start (a few seconds: torch, the checkpoint) for the tests below
def naive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("naive")
    yield from _serve("naive", "naive_server", logs, "--model", "lstm", "--device", "cpu")


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[Server]:
    yield from _serve("raw", "trivial_server", tmp_path, "--kind", "raw")


@pytest.mark.slow
def test_bench_models_times_every_model_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "models.json"
    argv = [sys.executable, "-m", "scripts.bench_models", "--device", "cpu", "--threads", "1"]
    argv += ["--batch", "1", "4", "--time", "0.05", "--warmup", "1", "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "predictions/s" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [
        (kind, batch) for kind in ("lstm", "transformer", "hybrid") for batch in (1, 4)
    ]
    for row in rows:
        assert row["ms"] > 0 and math.isfinite(row["ms"])
        assert row["predictions_per_s"] == pytest.approx(row["batch"] / row["ms"] * 1000)
        assert f"{row['model']:<12} {row['batch']:>6}" in done.stdout


@pytest.mark.server
def test_naive_reference_answers_the_forecast_of_the_shipped_model(naive: Server) -> None:
    request = make_requests(1, seq_len=32, seed=3)[0]
    request["flow_key"] = request["flow_key"].replace(PLACEHOLDER, "0" * len(PLACEHOLDER))
    status, data = http_request("POST", naive.port, "/v1/predict", json.dumps(request).encode())
    assert status == 200, data
    answer = json.loads(data)
    assert answer["flow_key"] == request["flow_key"]
    assert answer["model_used"] == "lstm"
    assert 0.0 <= answer["confidence"] <= 1.0
    context = answer["predicted_context"]
    assert len(context) == 8 and all(math.isfinite(v) for v in context)
    assert all(lo <= v <= hi for lo, v, hi in zip(answer["lower"], context, answer["upper"], strict=True))

    predictor = Predictor.load(CHECKPOINT_DIR / "lstm.safetensors")
    ts = np.array([c["timestamp"] for c in request["contexts"]], dtype=np.int64)
    feats = np.array([c["features"] for c in request["contexts"]], dtype=np.float64)
    expected = predictor.predict([ts], [feats]).mean[0, 0]
    np.testing.assert_allclose(context, expected, rtol=1e-5)


@pytest.mark.server
def test_naive_reference_refuses_a_malformed_window(naive: Server) -> None:
    body = {"flow_key": "ab" * 32, "contexts": [{"timestamp": 1, "features": [1.0, 2.0]}]}
    status, _ = http_request("POST", naive.port, "/v1/predict", json.dumps(body).encode())
    assert status == 422


@pytest.mark.server
def test_load_generator_counts_every_answer_of_a_trivial_server(raw: Server, tmp_path: Path) -> None:
    bodies = tmp_path / "bodies.jsonl"
    write_bodies(bodies, make_requests(4, seq_len=8, seed=1))
    argv = [sys.executable, "-m", "scripts.loadgen", "--url", f"{raw.url}/v1/predict"]
    argv += ["--bodies", str(bodies), "-c", "4", "-d", "0.5", "--warmup", "0.2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["requests"] > 10
    assert result["errors"] == {"status": 0, "socket": 0}
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]


@pytest.mark.server
def test_the_overload_generator_counts_from_when_each_request_was_due_and_was_sent(
    raw: Server, tmp_path: Path
) -> None:
    """`bench_overload --port`, as `cpe bench` runs it: every request sent at its rate is answered, and the
    latency counted from sending is never longer than the one counted from when it was due."""
    bodies = tmp_path / "bodies.jsonl"
    write_bodies(bodies, make_requests(4, seq_len=8, seed=1))
    argv = [sys.executable, "-m", "scripts.bench_overload", "--port", str(raw.port), "--bodies", str(bodies)]
    argv += ["--saturation", "100", "--factor", "2", "--duration", "0.5", "--connections", "8"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["answered"] == 100 and summary["admitted_per_s"] == 200 and summary["shed_share"] == 0
    assert 0 < summary["admitted_p99_from_send_ms"] <= summary["admitted_p99_ms"]
    assert summary["unsent"] == 0 and summary["other"] == 0


@pytest.mark.server
def test_load_generator_sends_binary_bodies_from_hex_lines(raw: Server, tmp_path: Path) -> None:
    bodies = tmp_path / "bodies.hex"
    bodies.write_text(msgpack_body(make_requests(4, seq_len=8, seed=1)).hex() + "\n")
    argv = [sys.executable, "-m", "scripts.loadgen", "--url", f"{raw.url}/v1/predict/batch", "--hex"]
    argv += ["--content-type", "application/msgpack", "--bodies", str(bodies), "-c", "2", "-d", "0.3"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["requests"] > 5 and result["errors"] == {"status": 0, "socket": 0}


def test_msgpack_bodies_hold_the_json_windows_packed() -> None:
    requests = make_requests(5, seq_len=32, seed=2)
    body = concrete(msgpack_body(requests), "0000abcd")
    limits = Limits(max_window=512, max_batch=64, horizons={"lstm": 8}, default_model="lstm", max_routes=8)
    windows = msgpack_windows(body, limits, batch=True)
    assert len(windows) == 5
    for window, request in zip(windows, requests, strict=True):
        assert window.flow_key == request["flow_key"][len(PLACEHOLDER) :] + "0000abcd"
        assert window.timestamps.tolist() == [c["timestamp"] for c in request["contexts"]]
        features = np.array([c["features"] for c in request["contexts"]])
        np.testing.assert_array_equal(window.features, features.astype(np.float32).astype(np.float64))


def test_the_table_has_every_row_of_the_issue_beside_the_reference() -> None:
    def summary(rate: float, p99: float) -> Summary:
        latency = {"p50": p99 / 2, "p99": p99}
        run = Run(10, 1.0, rate, rate, latency, {"status": 0, "socket": 0}, 0.5, 0.5, "python")
        return Summary.of([run])

    s = {
        "cpe_c1": summary(900, 2.4),  # p50 1.2 ms
        "naive_c1": summary(700, 1.6),
        "cpe_cN": summary(3000, 9.0),
        "naive_cN": summary(600, 150),
        "cpe_batch": summary(36_000, 90),
        "cpe_batch_msgpack": summary(40_000, 70),
    }
    overload = {
        "cpe": {"admitted_p99_ms": 45.0, "admitted_per_s": 2000.0, "shed_share": 0.8},
        "naive": {"admitted_p99_ms": 3000.0, "admitted_per_s": 600.0, "shed_share": 0.0},
    }
    rows = {r["metric"]: r for r in verdicts(s, 32, 512, 4, overload)}
    packed = rows["batch of 512, MessagePack packed: predictions/s"]
    assert packed["cpe"] == 40_000 and packed["naive"] == 600 and packed["pass"] is False  # under 50K
    assert rows["batch, MessagePack over JSON: predictions/s"]["gain"] == pytest.approx(40 / 36)
    p99 = rows["3x overload, default settings: admitted p99 (ms)"]
    assert (p99["cpe"], p99["naive"], p99["pass"]) == (45.0, 3000.0, True)
    assert rows["single, c=1: latency p50 (ms)"]["pass"] is False
    assert rows["single, c=32: latency p99 (ms)"]["pass"] is True


def test_load_generator_refuses_anything_but_loopback(tmp_path: Path) -> None:
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text("{}\n")
    argv = [
        sys.executable,
        "-m",
        "scripts.loadgen",
        "--url",
        "http://192.0.2.1:80/",
        "--bodies",
        str(bodies),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, cwd=REPO)
    assert done.returncode != 0 and "loopback" in done.stderr


def test_bodies_carry_a_rewritable_flow_key_and_cpu_plans_parse() -> None:
    request = make_requests(3, seq_len=32, seed=0)[1]
    assert len(request["contexts"]) == 32
    assert request["flow_key"].startswith(PLACEHOLDER) and len(request["flow_key"]) == 64
    body = concrete(json.dumps(request).encode(), "0000abcd")
    assert json.loads(body)["flow_key"].startswith("0000abcd")
    assert plan_cpus("none").server is None
    with pytest.raises(ValueError, match="--pin"):
        plan_cpus("zero:one")


def test_bench_refuses_bad_options_before_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--cpe-command", "python serve.py"]) == 2
    assert bench_main(["--env", "NOT_CPE=1"]) == 2
    assert "{port}" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_learning_times_training_steps(tmp_path: Path) -> None:
    out = tmp_path / "learning.json"
    argv = [
        sys.executable,
        "-m",
        "scripts.bench_learning",
        "--steps",
        "5",
        "--layers",
        "head",
        "--json",
        str(out),
    ]
    subprocess.run(argv, check=True, capture_output=True, timeout=120, cwd=REPO)
    figures = json.loads(out.read_text())["lstm/head"]
    assert 0 < figures["min_ms"] <= figures["median_ms"] <= figures["p90_ms"]


def test_the_forward_rows_time_both_paths_of_both_attention_models() -> None:
    rows = forward_rows(1, batch=16, min_time_s=0.02)
    assert [r["metric"].split()[0] for r in rows] == ["transformer", "hybrid"]
    for row in rows:
        assert row["cpe"] > 0 and row["naive"] > 0 and row["gain"] == row["cpe"] / row["naive"]
        assert row["pass"] == (row["gain"] >= 2)


def test_the_batch_endpoint_is_compared_with_the_raw_forward_of_the_same_run() -> None:
    raw, share = raw_forward_row("lstm", 16, 1, endpoint_rate=1_000.0, min_time_s=0.02)
    assert raw["metric"].startswith("lstm raw forward, batch 16") and raw["cpe"] > 0
    assert share["cpe"] == 1_000.0 / raw["cpe"]
    assert share["pass"] == (share["cpe"] >= 0.5)
    assert raw_forward_row("lstm", 16, 1, endpoint_rate=None, min_time_s=0.02)[0]["metric"] == raw["metric"]
