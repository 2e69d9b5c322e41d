"""serve(): a real uvicorn server, in worker processes that get their settings from the environment."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator

import httpx
import pytest

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
