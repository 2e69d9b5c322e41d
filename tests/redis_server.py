"""The tests' own redis-server: one per test session, on a free port, keeping nothing on disk.

It starts on first use (``redis_url`` in a test module, or the ``redis_server`` fixture) and stops when the
session ends (tests/conftest.py), so that no test reads or writes a Redis of the developer's, such as one
on 6379. Where redis-server is not installed, the URLs point at a port that nothing listens on and the
``redis_server`` fixture skips the tests that use it, naming what is missing.
"""

from __future__ import annotations

import secrets
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
