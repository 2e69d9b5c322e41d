"""The tests' own redis-server: one per test session, on a free port, keeping nothing on disk.

It starts on first use (``redis_url`` in a test module, or the ``redis_server`` fixture) and stops when the
session ends (tests/conftest.py), so that no test reads or writes a Redis of the developer's, such as one
on 6379. Where redis-server is not installed, the URLs point at a port that nothing listens on and the
``redis_server`` fixture skips the tests that use it, naming what is missing. Also here: a key prefix of
one test (``private_prefix``) and a real 3-node Redis Cluster (``RedisClusterProcesses``; the
``redis_cluster`` fixture starts one per test module that asks for it).
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import time
from collections.abc import Iterator

import redis

from tests.programs import which
from tools.process import RedisServer, free_port

_server: RedisServer | None = None
_unavailable_port: int | None = None


def server() -> RedisServer | None:
    """The session's redis-server, started on the first call; None where redis-server is not installed."""
    global _server
    if _server is None and which("redis-server") is not None:
        _server = RedisServer().start()
    return _server


def redis_url(db: int) -> str:
    """The URL of database ``db`` on the session's redis-server (each test module keeps to its own)."""
    global _unavailable_port
    running = server()
    if running is not None:
        return running.db_url(db)
    _unavailable_port = _unavailable_port or free_port()
    return f"redis://127.0.0.1:{_unavailable_port}/{db}"


def stop() -> None:
    global _server
    if _server is not None:
        _server.close()
        _server = None


def private_prefix(url: str) -> Iterator[str]:
    """A key prefix of one test only (a fixture's body: ``yield from``); its keys in the database of ``url``
    are deleted afterwards."""
    prefix = f"cpe-test-{secrets.token_hex(6)}:"
    yield prefix
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)


class RedisClusterProcesses:
    """Three redis-server --cluster-enabled yes on free ports, joined by redis-cli --cluster create."""

    def __init__(self, tmp: str) -> None:
        self.ports = [_cluster_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.tmp = tmp

    def start(self) -> None:
        for port in self.ports:
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
            argv += ["--cluster-config-file", f"{self.tmp}/nodes-{port}.conf", "--dir", self.tmp]
            argv += ["--save", "", "--appendonly", "no"]
            self.processes.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port in self.ports:
            _wait_ping(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while True:
            info = redis.Redis(port=self.ports[0]).cluster("info")
            state = info.get("cluster_state") if isinstance(info, dict) else None
            if state == "ok":
                return
            assert time.monotonic() < deadline, f"the cluster did not come up: {info}"
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, and within range."""
    while True:
        port = free_port()
        if port < 55_000 and _free(port + 10_000):
            return port


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_ping(port: int) -> None:
    deadline = time.monotonic() + 10
    with redis.Redis(port=port) as client:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, f"redis-server on {port} did not start"
                time.sleep(0.02)
