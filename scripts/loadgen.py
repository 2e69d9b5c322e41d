"""A lean closed-loop HTTP/1.1 load generator: N keep-alive connections, each with one request in flight.

The fallback of `cpe bench` where `wrk` is not installed, and usable alone. Raw asyncio protocols on
uvloop, requests pre-encoded: each costs a bytes join and a socket write, so that on a small machine the
server, not this process, is the bottleneck (`cpe bench` measures this against a do-nothing server).

Bodies come from a file holding one JSON body per line (the format `scripts/wrk_bodies.lua` reads too), or
with ``--hex`` one binary body per line as hex digits (MessagePack, sent with ``--content-type``);
every ``@@@@@@@@`` in a body is replaced by a per-request 8-hex-digit tag, so that the flow keys of every
request differ and no server-side cache can answer from an earlier request. Bodies are sent in rotation.

Prints one JSON line: requests, errors, duration_s and latency_ms percentiles of the requests sent
after the warm-up and answered before the end; wrk's figures have the same shape.

    python -m scripts.loadgen --url http://127.0.0.1:8000/v1/predict --bodies bodies.jsonl -c 32 -d 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PLACEHOLDER = b"@@@@@@@@"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


@dataclass
class _Run:
    """The state shared by every connection of one load run."""

    host: str
    path: str
    templates: list[list[bytes]]  # each body split at its placeholders
    measure_from: int  # ns: requests sent earlier are warm-up
    measure_until: int  # ns: nothing is sent after this
    tag: int
    content_type: bytes = b"application/json"
    index: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    socket_errors: int = 0

    def next_request(self) -> bytes:
        pieces = self.templates[self.index]
        self.index = (self.index + 1) % len(self.templates)
        self.tag = (self.tag + 1) & 0x7FFFFFFF
        body = b"%08x" % self.tag
        body = body.join(pieces) if len(pieces) > 1 else pieces[0]
        return (
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
            % (self.path.encode(), self.host.encode(), self.content_type, len(body))
        ) + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection: send, read the whole answer, record it, send the next."""

    def __init__(self, run: _Run, finished: asyncio.Future[None]) -> None:
        self.run = run
        self.finished = finished
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at = 0
        self.status = 0
        self.need = -1  # -1: nothing awaited; 0: awaiting the head; else bytes of the whole answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        now = time.perf_counter_ns()
        if now >= self.run.measure_until:
            self.transport.close()
            return
        self.sent_at = now
        self.need = 0
        self.transport.write(self.run.next_request())

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.need <= 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _CONTENT_LENGTH.search(buffer, 0, end + 2)
            if match is None:  # only Content-Length answers are expected from these servers
                self.run.socket_errors += 1
                assert self.transport is not None
                self.transport.close()
                return
            self.status = int(buffer[9:12])
            self.need = end + 4 + int(match.group(1))
        if len(buffer) < self.need:
            return
        done = time.perf_counter_ns()
        del buffer[: self.need]
        self.need = -1
        run = self.run
        if self.sent_at >= run.measure_from and done <= run.measure_until:
            run.latencies_ns.append(done - self.sent_at)
            run.statuses[self.status] = run.statuses.get(self.status, 0) + 1
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None or self.need >= 0:  # closed with an answer outstanding
            self.run.socket_errors += 1
        if not self.finished.done():
            self.finished.set_result(None)


async def drive(
    url: str,
    templates: list[list[bytes]],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    tag: int,
    content_type: str = "application/json",
) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to load {host!r}: this load generator only targets loopback")
    loop = asyncio.get_running_loop()
    start = time.perf_counter_ns()
    run = _Run(
        host=f"{host}:{port}",
        path=parts.path or "/",
        templates=templates,
        measure_from=start + int(warmup_s * 1e9),
        measure_until=start + int((warmup_s + duration_s) * 1e9),
        tag=tag,
        content_type=content_type.encode(),
    )
    finished = [loop.create_future() for _ in range(concurrency)]
    for fut in finished:
        await loop.create_connection(lambda fut=fut: _Connection(run, fut), host, port)
    await asyncio.wait_for(asyncio.gather(*finished), timeout=warmup_s + duration_s + 30)
    return summarize(run.latencies_ns, run.statuses, run.socket_errors, duration_s)


def summarize(
    latencies_ns: list[int], statuses: dict[int, int], socket_errors: int, duration_s: float
) -> dict:
    lat = sorted(latencies_ns)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] / 1e6 if lat else float("nan")

    non_2xx = sum(n for status, n in statuses.items() if not 200 <= status < 300)
    return {
        "tool": "python",
        "requests": len(lat),
        "duration_s": duration_s,
        "errors": {"status": non_2xx, "socket": socket_errors},
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "latency_ms": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "p999": pct(99.9),
            "max": lat[-1] / 1e6 if lat else float("nan"),
            "mean": sum(lat) / len(lat) / 1e6 if lat else float("nan"),
        },
    }


def read_templates(path: str, hex_bodies: bool = False) -> list[list[bytes]]:
    """The bodies of a file, each split at its placeholders; ``hex_bodies``: each line is hex digits."""
    with open(path, "rb") as f:
        lines = [line.strip() for line in f if line.strip()]
    templates = [(bytes.fromhex(line.decode()) if hex_bodies else line).split(PLACEHOLDER) for line in lines]
    if not templates:
        raise SystemExit(f"no bodies in {path}")
    return templates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/path (loopback only)")
    parser.add_argument("--bodies", required=True, help="file of JSON bodies, one a line")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds sent first and not measured")
    parser.add_argument("--tag", type=lambda s: int(s, 0), default=0, help="first request tag")
    parser.add_argument("--mark", action="store_true", help="prefix the JSON line as `cpe bench` expects")
    parser.add_argument("--content-type", default="application/json", help="of every request")
    parser.add_argument("--hex", action="store_true", help="the file's lines are binary bodies in hex")
    args = parser.parse_args(argv)
    templates = read_templates(args.bodies, args.hex)
    coro = drive(
        args.url, templates, args.concurrency, args.duration, args.warmup, args.tag, args.content_type
    )
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    print(("CPE_BENCH_RESULT " if args.mark else "") + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
