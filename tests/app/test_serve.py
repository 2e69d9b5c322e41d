"""serve(): a real uvicorn server, in worker processes that get their settings from the environment, with
the WebSocket protocol of app/websocket_protocol.py, which starts only on the versions it was written for."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect

from app.fanout import PUSH_EXTENSION
from app.websocket_protocol import GOING_AWAY, PINNED, WebSocketProtocol, check_versions
from tests.app.payloads import predict_body
from tools.process import ServerProcess, cpe_env, free_port

pytestmark = pytest.mark.server

SERVE = (
    "from app.serve import serve; from app.settings import Settings; "
    "serve(Settings(_env_file=None, device='cpu', models=('hybrid',), model='hybrid', max_body_bytes=8192), "
    "port={port}, workers=2)"
)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    process = ServerProcess([sys.executable, "-c", SERVE.format(port=port)], port, env=cpe_env({}))
    try:
        process.start().wait_ready()
        yield process.url
    finally:
        status = process.stop(signal.SIGINT, timeout_s=30)
        assert status == 0, f"the server did not stop cleanly ({status}):\n{process.output()}"
        process.log.close()


def test_workers_serve_with_the_given_settings(server: str) -> None:
    models = httpx.get(f"{server}/v1/models").json()
    assert models["default"] == "hybrid"
    assert [m["kind"] for m in models["models"]] == ["hybrid"]
    response = httpx.post(f"{server}/v1/predict", json=predict_body(16, horizon=2))
    assert response.status_code == 200
    assert response.json()["model_used"] == "hybrid"
    assert "server" not in response.headers


def test_chunked_oversized_body_is_a_413_over_http(server: str) -> None:
    data = json.dumps(predict_body(64)).encode()
    assert len(data) > 8192

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 1024):
            yield data[i : i + 1024]

    response = httpx.post(f"{server}/v1/predict", content=chunks())
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert httpx.post(f"{server}/v1/predict", content=data).status_code == 413  # by Content-Length


def test_the_installed_server_is_the_one_the_websocket_protocol_was_written_for() -> None:
    check_versions()  # what serve() does first: an upgrade fails here, and in CI, before production


def test_another_version_refuses_to_start_naming_it() -> None:
    newer = {**PINNED, "uvicorn": "0.56.0"}
    with pytest.raises(RuntimeError, match=r"uvicorn 0\.56\.0 \(written for 0\.55\.0\)"):
        check_versions(newer.__getitem__)


async def _pushing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accepts a WebSocket and, once the client has spoken, pushes a frame through the protocol's ``push``."""
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await receive()  # the client's first frame: the handshake is complete
    push = scope["extensions"][PUSH_EXTENSION]
    assert push(Frame(Opcode.TEXT, b"pushed").serialize(mask=False))
    while (await receive())["type"] != "websocket.disconnect":
        pass


def test_the_protocol_pushes_frames_and_closes_with_going_away_on_shutdown() -> None:
    """On a real uvicorn server: the hook that the hub's push and the 1001 depend on still takes effect."""
    port = free_port()
    config = uvicorn.Config(
        _pushing_app, port=port, ws=WebSocketProtocol, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:  # a compressed socket: no push
            ws.send("ready")
            assert ws.recv(timeout=10) == "pushed"
            server.should_exit = True
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == GOING_AWAY
    finally:
        server.should_exit = True
        thread.join(timeout=30)
