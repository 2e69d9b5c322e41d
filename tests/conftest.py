"""What every test shares: the session's own redis-server, and the programs some checks need.

A check that needs a program this machine lacks (redis-server, promtool, nginx) is skipped with a reason
naming it, and the run says so once, before the first test: never a silent skip. `make test` run as root
installs them first (scripts/test-deps.sh), as CI does.
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from collections.abc import Iterator

import pytest

from tests import redis_server as session_redis
from tests.programs import PACKAGES, missing, which
from tools.process import RedisServer

# One OpenMP thread per process, set before anything imports torch: the suite runs the test process, the
# servers it starts and their load generators side by side on a few cores, and torch's spinning thread
# pools then wait on one another (loading a model took a second instead of milliseconds). The servers
# inherit it; the engine's inference thread sets its own count anyway (CPE_TORCH_THREADS).
os.environ.setdefault("OMP_NUM_THREADS", "1")


# Every app start-up collects garbage and freezes what is left (app/main.py), and a full collection walks
# every object of the process: here torch's, pydantic's and the collected tests' too, a few hundred
# thousand, for tenths of a second per app. Frozen at each test's start, they are skipped, and the walk
# sees what the test made. An app unfreezes everything as it stops, so what it left as garbage would be
# frozen with the rest at the next test's start: every few full collections (app start-ups, mostly),
# everything is thawed and collected once.
_FULL_COLLECTIONS_BEFORE_A_THAW = 8
_full_collections = 0


def _count_full_collections(phase: str, info: dict[str, int]) -> None:
    global _full_collections
    if phase == "stop" and info["generation"] == 2:
        _full_collections += 1


gc.callbacks.append(_count_full_collections)


@pytest.fixture(autouse=True)
def _older_objects_frozen() -> None:
    global _full_collections
    if _full_collections >= _FULL_COLLECTIONS_BEFORE_A_THAW:
        gc.unfreeze()
        gc.collect()
        _full_collections = 0
    gc.freeze()


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks what a test needs from the fixtures it uses, and skips those whose programs are missing."""
    skipped: Counter[str] = Counter()
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "redis_server" in fixtures or "private_redis_server" in fixtures:
            item.add_marker(pytest.mark.redis)
        programs = [program for mark in item.iter_markers("tool") for program in mark.args]
        if item.get_closest_marker("redis") is not None:
            programs.append("redis-server")
        for program in programs:
            if program not in PACKAGES:
                raise pytest.UsageError(f"{item.nodeid}: unknown program {program!r} in @pytest.mark.tool")
            if which(program) is None:
                item.add_marker(pytest.mark.skip(reason=missing(program)))
                skipped[program] += 1
                break
    config.stash[_SKIPPED] = skipped


_SKIPPED = pytest.StashKey[Counter[str]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    skipped = session.config.stash.get(_SKIPPED, Counter())
    if skipped:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        what = "; ".join(
            f"{count} need {program} (Debian package {PACKAGES[program]})"
            for program, count in skipped.items()
        )
        line = (
            f"skipping {sum(skipped.values())} tests, whose programs are not installed here: {what}; "
            "`make test` as root installs them (scripts/test-deps.sh)"
        )
        if reporter is not None:
            reporter.write_line(line, yellow=True, bold=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    session_redis.stop()


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """The session's own redis-server (tests/redis_server.py); each test module keeps to its own database
    and key prefix."""
    server = session_redis.server()
    if server is None:
        pytest.skip(missing("redis-server"))
    return server


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[session_redis.RedisClusterProcesses]:
    """A real 3-node Redis Cluster for the test module that asks for it."""
    processes = session_redis.RedisClusterProcesses(str(tmp_path_factory.mktemp("cluster")))
    try:
        processes.start()
        yield processes
    finally:
        processes.stop()


@pytest.fixture
def private_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test alone, for tests that stop, restart or empty it."""
    if which("redis-server") is None:
        pytest.skip(missing("redis-server"))
    with RedisServer() as server:
        yield server
