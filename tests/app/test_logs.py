"""Request ids (X-Request-ID) and structured logs: on the app, and on a real `cpe serve` with JSON logs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from app.logs import REQUEST_ID, JsonFormatter, TextFormatter
from tests.app.payloads import predict_body
from tests.app.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_a_callers_request_id_is_echoed_and_a_missing_or_bad_one_replaced(client: TestClient) -> None:
    ok = client.post("/v1/predict", json=predict_body(4), headers={"X-Request-ID": "alm-7f3a:42"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "alm-7f3a:42"
    generated = [client.get("/healthz").headers["x-request-id"] for _ in range(3)]
    assert len(set(generated)) == 3 and all(len(rid) >= 10 for rid in generated)
    for bad in ("has space", "x" * 129, 'quote"d', ""):
        replaced = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert replaced != bad and replaced.split("-")[0] == generated[0].split("-")[0]
    # errors too: a 422 from validation, a 404 from routing, a 413 from the body limit
    assert client.post("/v1/predict", json={}, headers={"X-Request-ID": "r1"}).headers["x-request-id"] == "r1"
    assert client.get("/nowhere", headers={"X-Request-ID": "r2"}).headers["x-request-id"] == "r2"
    big = client.post("/v1/predict", content=b"x" * (5 << 20), headers={"X-Request-ID": "r3"})
    assert big.status_code == 413 and big.headers["x-request-id"] == "r3"


def test_json_lines_carry_the_request_id_extras_and_the_traceback() -> None:
    formatter = JsonFormatter()
    record = logging.makeLogRecord(
        {"name": "cpe.test", "levelname": "WARNING", "msg": "slow %s", "args": ("redis",), "flow_count": 3}
    )
    outside = json.loads(formatter.format(record))
    assert (
        outside["message"] == "slow redis"
        and outside["level"] == "warning"
        and outside["logger"] == "cpe.test"
    )
    assert outside["flow_count"] == 3 and "request_id" not in outside
    assert outside["ts"].endswith("Z") and outside["ts"][10] == "T"
    token = REQUEST_ID.set("abc")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            record.exc_info = sys.exc_info()
        inside = json.loads(formatter.format(record))
        assert TextFormatter().format(record).startswith("WARNING  cpe.test [abc]: slow redis")
    finally:
        REQUEST_ID.reset(token)
    assert inside["request_id"] == "abc" and "ValueError: boom" in inside["exc"]


def test_a_server_with_json_logs_writes_one_object_per_line_with_the_request_id() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPE_")} | {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_LOG_FORMAT": "json",
        "CPE_ACCESS_LOG": "true",
    }
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                try:
                    if httpx.get(f"{url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            response = httpx.post(
                f"{url}/v1/predict", json=predict_body(4), headers={"X-Request-ID": "json-1"}
            )
            assert response.status_code == 200 and response.headers["x-request-id"] == "json-1"
        finally:
            server.terminate()
            server.wait(timeout=20)
        log.seek(0)
        lines = [json.loads(line) for line in log.read().decode().splitlines() if line.strip()]
    access = [
        line for line in lines if line["logger"] == "uvicorn.access" and line.get("path") == "/v1/predict"
    ]
    assert len(access) == 1
    assert access[0] | {"ts": None, "client": None} == {
        "ts": None,
        "level": "info",
        "logger": "uvicorn.access",
        "message": access[0]["message"],
        "request_id": "json-1",
        "client": None,
        "method": "POST",
        "path": "/v1/predict",
        "http_version": "1.1",
        "status": 200,
    }
    assert any(line["logger"] == "cpe" and line["message"].startswith("loaded lstm-") for line in lines)
