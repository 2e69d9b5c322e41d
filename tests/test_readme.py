"""The README's shell examples, run as written against a live `cpe serve` (README, "Contributing").

Every ```sh, ```bash and ```shell block, in order, is one bash script under ``set -euo pipefail``, with
``CPE`` pointing at a server on a free port started with the defaults of `make run`; only blocks tagged
``no-run`` in their info string are left out. A failing command fails the test, named by its block, and
every ``curl`` must fail on an HTTP error (``-f``), so that a 4xx or 5xx fails it too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.process import ROOT, ServerProcess, cpe_serve

README = ROOT / "README.md"
FENCE = re.compile(r"^```(?P<lang>sh|bash|shell)(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
CURL = re.compile(r"\bcurl((?:\s+(?:-[A-Za-z]+|--[a-z-]+))*)")
MARK = "README block"


@dataclass
class Block:
    line: int
    info: list[str]
    code: str


def blocks(text: str) -> list[Block]:
    """The shell blocks of ``text``, with the line each starts on and its info string's words."""
    return [
        Block(text.count("\n", 0, m.start()) + 1, m["info"].split(), m["code"]) for m in FENCE.finditer(text)
    ]


def runnable(text: str) -> list[Block]:
    return [b for b in blocks(text) if "no-run" not in b.info]


def script(chosen: list[Block]) -> str:
    """One bash script of the blocks, each announced on stderr (a failure names the block it was in)."""
    parts = ["set -euo pipefail"]
    for block in chosen:
        parts += [f"echo '{MARK} at line {block.line}' >&2", block.code]
    return "\n".join(parts) + "\n"


def curls_without_fail(chosen: list[Block]) -> list[str]:
    """The curl commands whose options do not include -f (--fail): an HTTP error would pass unseen."""
    bad = []
    for block in chosen:
        for match in CURL.finditer(block.code):
            options = match[1].split()
            if not any(
                o in ("--fail", "--fail-with-body") or (o[1] != "-" and "f" in o[1:]) for o in options
            ):
                bad.append(f"line {block.line}: {block.code[match.start() : match.end() + 40].strip()}")
    return bad


def run(code: str, server: ServerProcess, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``code`` under bash, with ``CPE`` set to the server, from ``cwd``: a directory whose ``.venv`` is this
    Python's environment (the blocks run `.venv/bin/python` as a checkout's `make run` leaves it)."""
    venv = cwd / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix), target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPE_")}
    env |= {"CPE": server.url, "PYTHONPATH": str(ROOT)}  # the package of this checkout
    return subprocess.run(
        ["bash", "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """`cpe serve` as `make run` starts it (every model, the defaults, pattern memory on), on a free port."""
    process = cpe_serve({"CPE_DEVICE": "cpu", "CPE_LOG_LEVEL": "warning", "CPE_PATTERNS_ENABLED": "true"})
    with process:
        process.wait_ready(timeout_s=180)
        yield process


def test_the_blocks_are_found_and_only_tagged_ones_left_out() -> None:
    text = README.read_text()
    every, chosen = blocks(text), runnable(text)
    assert len(chosen) >= 5 and len(every) - len(chosen) >= 3
    left_out = "\n".join(b.code for b in every if b not in chosen)
    assert "make run" in left_out and "cpe train" in left_out
    assert all(b.info in ([], ["no-run"]) for b in every), [b.info for b in every]
    assert curls_without_fail(chosen) == []
    [unchecked] = curls_without_fail([Block(1, [], 'curl -s "$CPE/x"\ncurl -fsS "$CPE/y"')])
    assert unchecked.startswith('line 1: curl -s "$CPE/x"')


@pytest.mark.server
@pytest.mark.tool("curl", "jq")
def test_every_shell_block_runs_against_a_live_server(server: ServerProcess, tmp_path: Path) -> None:
    done = run(script(runnable(README.read_text())), server, tmp_path)
    failed_in = [line for line in done.stderr.splitlines() if line.startswith(MARK)][-1:]
    assert done.returncode == 0, (
        f"exit {done.returncode} in {failed_in}:\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}"
    )
    assert "422 ['body', 'contexts', 0, 'timestamp']" in done.stdout  # the client example's CPEError


@pytest.mark.server
@pytest.mark.tool("curl", "jq")
def test_a_block_with_an_http_error_fails(server: ServerProcess, tmp_path: Path) -> None:
    fake = "\n".join(
        [
            "Some text.",
            "",
            "```sh",
            'curl -fsS "$CPE/healthz"',
            "```",
            "",
            "```sh no-run",
            "exit 3",
            "```",
            "",
            "```bash",  # line 11
            'curl -fsS "$CPE/v1/flows/nope"',
            "echo unreachable",
            "```",
        ]
    )
    done = run(script(runnable(fake)), server, tmp_path)
    assert done.returncode == 22, done.stderr  # curl's exit status for an HTTP error under -f
    assert "unreachable" not in done.stdout and f"{MARK} at line 11" in done.stderr
