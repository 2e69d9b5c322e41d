"""`cpe train` and `cpe simulate` at toy sizes: what they write loads back and is what they say.

`cpe serve` runs in every server test, `cpe evaluate --drift` in test_drift.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from models.predictor import Predictor
from models.traces import read_jsonl


@pytest.mark.slow
def test_train_writes_a_checkpoint_that_loads_and_forecasts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny-lstm.safetensors"
    argv = ["train", "--model", "lstm", "--out", str(out), "--seed", "3", "--hparams", '{"hidden": 32}']
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


def test_a_learning_setting_without_a_value_is_refused_naming_it() -> None:
    with pytest.raises(SystemExit, match="--learning-setting takes NAME=VALUE"):
        main(["evaluate", "--drift", "--learning-setting", "learning_layers"])


@pytest.mark.slow
def test_evaluate_reports_every_model_on_both_test_sets(
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
    assert [(r["model"], r["test_set"]) for r in results] == [
        ("lstm", "other seeds"),
        ("lstm", "unseen scales"),
        ("hybrid", "other seeds"),
        ("hybrid", "unseen scales"),
    ]
    for r in results:
        assert r["windows"] > 0 and np.isfinite(r["latency_mae"]) and 0.0 <= r["coverage"] <= 1.0
        assert f"== {r['model']} ({r['version']}) on {r['test_set']}: {r['windows']} windows" in printed
    assert printed.count("PASS: ") + printed.count("FAIL: ") == 4
