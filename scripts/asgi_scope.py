"""The ASGI scope of one ``POST`` with a JSON body, for the benchmarks that call an app directly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def post_scope(path: str, body_length: int, headers: Sequence[tuple[bytes, bytes]] = ()) -> dict[str, Any]:
    """A fresh scope (an app may write into its ``state``): ``POST path`` with ``body_length`` JSON bytes."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % body_length),
            *headers,
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
