"""Request ids (X-Request-ID) and structured logs. A real server's JSON logs: tests/test_deploy.py."""

from __future__ import annotations

import json
import logging
import sys

from fastapi.testclient import TestClient

from app.logs import REQUEST_ID, JsonFormatter, TextFormatter
from tests.app.payloads import predict_body


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
