"""Server processes on loopback ports, for the tests, the scripts and the benchmarks alike.

``free_port`` picks a port; ``ServerProcess`` runs a server on it, its output in a file, waits until it
answers, and always brings it down; ``cpe_serve`` and ``RedisServer`` are the two servers this project
starts: `python -m app.cli serve` with given ``CPE_*`` settings, and a private redis-server that keeps
nothing on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from signal import SIGKILL, SIGTERM
from types import TracebackType
from typing import IO, Self

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback TCP port that nothing listens on now, chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class ServerError(RuntimeError):
    """A server exited, or did not answer in time; the message ends with what it printed."""


def child_setup(cpus: frozenset[int] | None) -> Callable[[], None]:
    """Runs in the child before exec: pin it to ``cpus``, and have the kernel stop it when its parent dies
    (a test run or a benchmark killed half-way leaves no server behind)."""

    def setup() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if sys.platform == "linux":
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None).prctl(1, int(SIGTERM))  # PR_SET_PDEATHSIG

    return setup


class ServerProcess:
    """A server subprocess listening on ``port`` of the loopback; everything it prints goes to a log file
    (``log_path``, else a temporary one).

    ``start`` runs ``argv``; after ``stop`` it may run it again, on the same port (a restart). As a context
    manager: started on entry, stopped and its log closed on exit.
    """

    def __init__(
        self,
        argv: Sequence[str],
        port: int,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
        log_path: Path | None = None,
        cpus: frozenset[int] | None = None,
        own_session: bool = False,
        name: str | None = None,
    ) -> None:
        """``env``: the whole environment (None: this process's); ``cpus``: pin the server (its threads
        too) to these CPUs; ``own_session``: a Ctrl-C in the terminal reaches only this process, which then
        stops the server itself."""
        self.argv = list(argv)
        self.port = port
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.cpus = cpus
        self.own_session = own_session
        self.name = name or Path(self.argv[0]).name
        self.log_path = log_path
        # closed by close() or on leaving the context
        self.log: IO[bytes] = log_path.open("w+b") if log_path else tempfile.TemporaryFile()  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def start(self) -> Self:
        assert not self.running(), f"{self.name} is already running"
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=child_setup(self.cpus),
            start_new_session=self.own_session,
        )
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self, lines: int | None = None) -> str:
        """What it printed so far (the last ``lines`` of it, when given)."""
        self.log.flush()
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        self.log.seek(0, os.SEEK_END)
        return text if lines is None else "\n".join(text.splitlines()[-lines:])

    def _check(self, deadline: float, what: str) -> None:
        if self.process is None or self.process.poll() is not None:
            status = None if self.process is None else self.process.returncode
            raise ServerError(f"{self.name} exited with status {status}:\n{self.output(60)}")
        if time.monotonic() > deadline:
            raise ServerError(f"{self.name} on port {self.port} {what} in time:\n{self.output(60)}")

    def wait_ready(
        self, path: str = "/readyz", *, status: str | None = None, timeout_s: float = 60.0
    ) -> None:
        """Until GET ``path`` answers 200 (with ``"status": status`` in its JSON body, when given); a
        ``ServerError`` with the server's output if it exits or does not get there in ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check(deadline, f"did not answer 200 to GET {path}")
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
                try:
                    conn.request("GET", path)
                    response = conn.getresponse()
                    body = response.read()
                finally:
                    conn.close()
                if response.status == 200 and (status is None or json.loads(body).get("status") == status):
                    return
            time.sleep(0.1)

    def wait_listening(self, timeout_s: float = 10.0) -> None:
        """Until the port accepts a TCP connection (servers that do not speak HTTP)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check(deadline, "did not listen")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                return
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        """Send ``signum`` if it still runs (a second SIGTERM or SIGINT would make uvicorn skip its graceful
        shutdown: callers send one, then ``wait``)."""
        if self.running():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def wait(self, timeout_s: float = 20.0) -> int | None:
        """Wait for the exit, killed after ``timeout_s``; its exit status (None: never started)."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def stop(self, signum: int = SIGTERM, timeout_s: float = 20.0) -> int | None:
        """``signum``, then SIGKILL if it has not exited after ``timeout_s``; its exit status."""
        self.signal(signum)
        return self.wait(timeout_s)

    def kill(self) -> None:
        """Gone at once, without a shutdown (a crash, as a drill wants it)."""
        self.stop(SIGKILL)

    def close(self) -> None:
        self.kill()
        self.log.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self.log.close()


def read_metrics(url: str, *names: str, timeout_s: float = 30.0) -> dict[str, float]:
    """The sum of each named metric's samples on ``url``'s /metrics, in one scrape; a name may carry its
    labels (``cpe_group_changes_total{change="best"}``) to read that series alone. 0 for one not there."""
    import httpx  # here: most users of this module start processes and never scrape

    found = dict.fromkeys(names, 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=timeout_s).text.splitlines():
        series, _, value = line.rpartition(" ")
        for name in names:
            if series == name or series.startswith(name + "{"):
                found[name] += float(value)
    return found


def cpe_env(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without its ``CPE_*`` variables, plus ``settings``: a server that reads
    only the settings it was given."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CPE_")} | dict(settings)


def cpe_serve(
    settings: Mapping[str, str],
    port: int | None = None,
    *,
    cpus: frozenset[int] | None = None,
    log_path: Path | None = None,
) -> ServerProcess:
    """`python -m app.cli serve` on ``port`` (a free one by default) with the ``CPE_*`` ``settings`` and no
    other ``CPE_*`` variable; not started yet."""
    port = port or free_port()
    argv = [sys.executable, "-m", "app.cli", "serve", "--host", LOOPBACK, "--port", str(port)]
    return ServerProcess(argv, port, env=cpe_env(settings), cpus=cpus, log_path=log_path, name="cpe serve")


@contextlib.contextmanager
def serving(
    settings: Mapping[str, str],
    count: int = 1,
    *,
    ready: str | None = None,
    stop_signal: int = SIGTERM,
) -> Iterator[list[ServerProcess]]:
    """``count`` `cpe serve` processes with the ``CPE_*`` ``settings``, started at once and each ready (its
    /readyz a 200, whose status is ``ready`` when given) before they are yielded; stopped with
    ``stop_signal`` after, side by side."""
    with contextlib.ExitStack() as stack:
        servers = [cpe_serve(settings) for _ in range(count)]
        for server in servers:
            stack.callback(server.log.close)
            server.start()
        try:
            for server in servers:
                server.wait_ready(status=ready)
            yield servers
        finally:  # all told first: they shut down side by side
            for server in servers:
                server.signal(stop_signal)
            for server in servers:
                server.wait()


class RedisServer(ServerProcess):
    """A redis-server of its own on a free loopback port, in a temporary directory: nothing saved, unless
    ``persist`` (every write in its append-only file, fsynced before the answer, read back on a restart).

    ``start`` returns once it accepts connections; a restart after ``stop`` comes back empty (or, with
    ``persist``, with what it had).
    """

    def __init__(self, port: int | None = None, *, persist: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cpe-redis-"))
        port = port or free_port()
        argv = ["redis-server", "--port", str(port), "--bind", LOOPBACK, "--save", "", "--dir", str(self.dir)]
        argv += ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"]
        super().__init__(argv, port, log_path=self.dir / "redis.log", name="redis-server")

    @property
    def url(self) -> str:
        return self.db_url(0)

    def db_url(self, db: int) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    def start(self) -> Self:
        super().start()
        self.wait_listening()
        return self

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
