"""`cpe`'s command line: where `cpe train` writes, help for every flag, and `cpe train`, `simulate` and
`evaluate` at toy sizes (what they write loads back and is what they say).

`cpe serve` runs in every server test, `cpe evaluate --drift` in test_drift.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.cli import build_parser, main
from models.checkpoint import CHECKPOINT_DIR, read_meta
from models.predictor import Predictor
from models.traces import read_jsonl

TINY = ["--routes", "2", "--steps", "300", "--epochs", "1", "--windows", "64"]


def test_train_writes_to_the_directory_asked_for_and_leaves_the_shipped_one(tmp_path: Path) -> None:
    shipped = (CHECKPOINT_DIR / "lstm.safetensors").read_bytes()
    assert main(["train", "--model", "lstm", "--out", str(tmp_path / "run"), *TINY]) == 0
    written = (tmp_path / "run" / "lstm.safetensors").read_bytes()
    assert read_meta(written)["kind"] == "lstm"
    assert (CHECKPOINT_DIR / "lstm.safetensors").read_bytes() == shipped


def test_train_writes_under_out_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "lstm", *TINY]) == 0
    (written,) = (tmp_path / "out" / "checkpoints").glob("*/lstm.safetensors")
    assert read_meta(written.read_bytes())["kind"] == "lstm"


def test_train_refuses_the_shipped_directory_without_replace_shipped() -> None:
    with pytest.raises(SystemExit, match="--replace-shipped"):
        main(["train", "--model", "lstm", "--out", str(CHECKPOINT_DIR), *TINY])
    with pytest.raises(SystemExit, match="exclude each other"):
        main(["train", "--model", "lstm", "--out", "x", "--replace-shipped", *TINY])


def test_train_init_fine_tunes_the_weights_of_a_checkpoint(tmp_path: Path) -> None:
    assert main(["train", "--model", "lstm", "--out", str(tmp_path / "a"), *TINY]) == 0
    first = tmp_path / "a" / "lstm.safetensors"
    # at a learning rate of 0 the fine-tuned weights are the ones it started from, bit for bit
    argv = ["train", "--model", "lstm", "--init", str(first), "--lr", "0"]
    argv += ["--ramps", "3", "--ramp-max", "120"]
    assert main([*argv, "--out", str(tmp_path / "b"), *TINY]) == 0
    tuned = read_meta((tmp_path / "b" / "lstm.safetensors").read_bytes())
    assert tuned["weights_sha256"] == read_meta(first.read_bytes())["weights_sha256"]
    config = tuned["training"]["config"]
    assert config["init"] == str(first) and config["lr"] == 0.0
    assert config["ramps"] == 3.0 and config["ramp_max_intervals"] == 120.0
    with pytest.raises(ValueError, match="holds a lstm model, not a transformer"):
        main(["train", "--model", "transformer", "--init", str(first), "--out", str(tmp_path / "c"), *TINY])
    with pytest.raises(ValueError, match="--hparams"):
        main([*argv, "--hparams", '{"hidden": 8}', "--out", str(tmp_path / "d"), *TINY])


def test_every_flag_of_every_subcommand_has_help() -> None:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in subparsers.choices.items()
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert not missing, f"flags without help text: {missing}"


def test_bench_hands_every_option_to_the_benchmark_of_the_checkout(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--env", "NOT_CPE=1"]) == 2  # refused by tools.bench itself, in its own process
    assert "--env takes CPE_NAME=VALUE" in capfd.readouterr().err


@pytest.mark.slow  # two interpreters that import torch
def test_the_tools_say_where_they_are_when_the_package_has_none(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    for package in ("app", "models"):  # an installation: the service's packages, no tools/ beside them
        shutil.copytree(root / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    for argv in (["bench", "--quick"], ["evaluate", "--drift"]):
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, done.stderr
        assert "source checkout" in done.stderr


@pytest.mark.slow
def test_train_writes_a_checkpoint_that_loads_and_forecasts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny" / "lstm.safetensors"
    argv = [
        "train",
        "--model",
        "lstm",
        "--out",
        str(out.parent),
        "--seed",
        "3",
        "--hparams",
        '{"hidden": 32}',
    ]
    argv += ["--routes", "2", "--steps", "400", "--epochs", "1", "--windows", "512"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "validation: latency MAE / persistence" in printed

    predictor = Predictor.load(out)
    assert predictor.kind == "lstm" and predictor.version.startswith("lstm-")
    training = predictor.meta["training"]
    assert training["config"]["n_routes"] == 2 and training["config"]["max_epochs"] == 1
    assert training["config"]["hparams"] == {"hidden": 32}
    assert 0 < training["train_windows"] <= 512 and training["val_windows"] > 0
    assert training["parameters"] == sum(p.numel() for p in predictor.model.parameters())
    validation = training["validation"]
    assert validation["windows"] > 0 and 0.0 <= validation["coverage"] <= 1.0
    assert np.isfinite(validation["ratio"]["persistence"]) and np.isfinite(validation["latency_mae"])

    rng = np.random.default_rng(0)
    timestamps = [1_700_000_000_000 + 1000 * np.arange(16, dtype=np.int64)]
    features = [
        (np.array([20.0, 2.0, 0.01, 500.0, 0.5, 0.001, 100.0, 5.0]) * (1 + 0.05 * rng.random((16, 8))))
    ]
    forecast = predictor.predict(timestamps, [f.astype(np.float64) for f in features], steps=2)
    assert forecast.mean.shape == (1, 2, 8) and np.isfinite(forecast.mean).all()
    assert (forecast.lower <= forecast.mean).all() and (forecast.mean <= forecast.upper).all()
    assert ((forecast.confidence >= 0) & (forecast.confidence <= 1)).all()


def test_simulate_writes_traces_that_read_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trace.jsonl"
    assert main(["simulate", "--routes", "3", "--steps", "50", "--seed", "5", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 150 contexts of 3 routes to {out}"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 150 and all(len(line["features"]) == 8 for line in lines)
    timestamps = [line["timestamp"] for line in lines]
    assert timestamps == sorted(timestamps)  # time-ordered across routes
    traces = read_jsonl(out)
    assert len(traces) == 3 and all(len(trace) == 50 for trace in traces)


def test_a_learning_setting_without_a_value_is_refused_naming_it(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--drift", "--learning-setting", "learning_layers"]) != 0  # by tools.drift
    assert "--learning-setting takes NAME=VALUE" in capfd.readouterr().err


@pytest.mark.slow
def test_evaluate_reports_every_model_on_every_test_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = tmp_path / "figures.json"
    argv = [
        "evaluate",
        "--model",
        "lstm",
        "hybrid",
        "--routes",
        "2",
        "--steps",
        "300",
        "--json",
        str(figures),
    ]
    assert main(argv) == 0  # not --strict: a miss at this toy size is printed, not an exit status
    printed = capsys.readouterr().out
    results = json.loads(figures.read_text())
    sets = ["other seeds", "unseen scales", "unseen, no level changes", "level changes"]
    assert [(r.get("model"), r["test_set"]) for r in results] == [
        *[("lstm", s) for s in sets],
        *[("hybrid", s) for s in sets],
        (None, "routing"),
    ]
    for r in results:
        if "windows" not in r:
            continue
        assert r["windows"] > 0 and np.isfinite(r["latency_mae"]) and 0.0 <= r["coverage"] <= 1.0
        assert f"== {r['model']} ({r['version']}) on {r['test_set']}: {r['windows']} windows" in printed
    levels = [r for r in results if r["test_set"] == "level changes"]
    assert all(0.0 <= r["step_up_within"] <= 1.0 and r["ramp_ratio"] > 0 for r in levels)
    routing = results[-1]["routing"]
    assert set(routing) == {"lstm", "hybrid", "persistence", "ewma", "kalman", "noise-free", "oracle"}
    assert routing["oracle"]["accuracy"] == 1.0
    assert "== route choice on 2 groups of 3 routes" in printed
    # a verdict per model and test set, per model on level changes, and one on routing
    assert printed.count("PASS: ") + printed.count("FAIL: ") == 2 * 3 + 2 + 1
