"""`cpe`'s command line: where `cpe train` writes, and help for every flag."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser, main
from models.checkpoint import CHECKPOINT_DIR, read_meta

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
