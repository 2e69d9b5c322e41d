"""Real `cpe serve` processes, for the tests that need servers of their own (WebSockets, replicas, logs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from tests.app.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServeProcess:
    """One `python -m app.cli serve` on a loopback port; everything it prints goes to ``log``."""

    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode()

    def wait_ready(self, status: str | None = None) -> None:
        """Until GET /readyz answers 200 (and says ``status``, when given); fails with the server's output
        if it exits or is not ready within a minute."""
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server on {self.port} did not get ready:\n{self.output()}")
            try:
                answer = httpx.get(f"{self.url}/readyz")
                if answer.status_code == 200 and (status is None or answer.json()["status"] == status):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` and wait for the exit."""
        self.signal(signum)
        self.wait()

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:  # a second signal would make uvicorn skip its graceful shutdown
            self.process.send_signal(signum)

    def wait(self) -> None:
        """Wait for the exit; killed after 20 s."""
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def serving(
    settings: Mapping[str, str],
    count: int = 1,
    *,
    ready: str | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[list[ServeProcess]]:
    """``count`` servers with the ``CPE_*`` ``settings`` (the caller's own ``CPE_*`` environment left out),
    started at once and each ready (see ``ServeProcess.wait_ready``) before they are yielded; stopped with
    ``stop_signal`` after."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPE_")} | dict(settings)
    with ExitStack() as stack:
        servers = []
        for _ in range(count):
            port, log = free_port(), stack.enter_context(tempfile.TemporaryFile())
            process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            servers.append(ServeProcess(port, process, log))
        try:
            for server in servers:
                server.wait_ready(ready)
            yield servers
        finally:  # all told first: they shut down side by side
            for server in servers:
                server.signal(stop_signal)
            for server in servers:
                server.wait()
