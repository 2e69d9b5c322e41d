"""The programs that some checks run besides Python (`@pytest.mark.tool(...)`), and where to get them."""

from __future__ import annotations

import shutil

# each program, and the Debian package that brings it (scripts/test-deps.sh installs them)
PACKAGES = {
    "redis-server": "redis-server",
    "promtool": "prometheus",
    "nginx": "nginx",
    # the README's shell examples (tests/test_readme.py)
    "curl": "curl",
    "jq": "jq",
}


def which(program: str) -> str | None:
    """Where ``program`` is, on PATH or in the sbin directories that a user's PATH may leave out."""
    return shutil.which(program) or shutil.which(program, path="/usr/local/sbin:/usr/sbin:/sbin")


def missing(program: str) -> str:
    """Why a check that needs ``program`` is skipped here."""
    return f"{program} is not installed (Debian package {PACKAGES[program]}; `make test` as root installs it)"
