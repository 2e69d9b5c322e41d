"""API keys: parsing, 401/403 on HTTP, 1008 on WebSockets (a real server), keys kept out of the logs."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from typing import IO

import httpx
import pytest
from fastapi import Depends
from fastapi.testclient import TestClient
from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.auth import ApiKeys, MaskQueryKeys, parse_api_keys, require_scope
from app.main import create_app
from app.settings import Settings
from tests.app.payloads import make_settings, predict_body
from tools.process import serving

READER = "reader-key-0123456789"
WRITER = "writer-key-0123456789"
ADMIN = "admin-key-0123456789ab"
KEYS = f"{READER}:read; {WRITER}:read,write ;{ADMIN}:admin"


def test_keys_parse_with_their_highest_scope() -> None:
    assert parse_api_keys(KEYS) == {READER: "read", WRITER: "write", ADMIN: "admin"}
    assert parse_api_keys("") == {} and parse_api_keys(" ; ") == {}
    keys = ApiKeys.parse(KEYS)
    assert [keys.rank_of(k) for k in (READER, WRITER, ADMIN, "nobody-0123456789")] == [0, 1, 2, None]
    assert ApiKeys.parse("").open and not keys.open


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("secret-key-0123456789", "entry 1: expected key:scope"),
        ("secret-key-0123456789:root", "entry 1: unknown scope(s) ['root']"),
        (f"{READER}:read;short:read", "entry 2: a key needs at least 16 characters"),
        ("secret key 0123456789:read", "entry 1: a key needs"),
        (f"{READER}:read;{READER}:admin", "entry 2: the same key is listed twice"),
    ],
)
def test_malformed_keys_are_refused_without_echoing_them(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)) as raised:
        parse_api_keys(text)
    assert "0123456789" not in str(raised.value)
    with pytest.raises(ValidationError) as invalid:
        Settings(_env_file=None, api_keys=text)  # type: ignore[call-arg]
    assert error in str(invalid.value) and "0123456789" not in str(invalid.value)


def test_settings_hide_the_keys_but_hand_them_to_the_workers() -> None:
    settings = make_settings(api_keys=KEYS)
    assert READER not in repr(settings) and READER not in str(settings.model_dump())
    assert settings.to_env()["CPE_API_KEYS"] == KEYS


@pytest.fixture(scope="module")
def keyed() -> Iterator[TestClient]:
    app = create_app(make_settings(api_keys=KEYS, models=("lstm",), model="lstm"))

    @app.get("/test/admin", dependencies=[Depends(require_scope("admin"))])
    async def admin_only() -> dict[str, bool]:
        return {"ok": True}

    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-API-Key": "nobody-0123456789"}, 401),
        ({"Authorization": f"Basic {READER}"}, 401),  # only Bearer carries a key
        ({"X-API-Key": READER}, 200),
        ({"Authorization": f"Bearer {READER}"}, 200),
        ({"x-api-key": ADMIN}, 200),  # admin grants read
    ],
)
def test_predictions_need_a_read_key(keyed: TestClient, headers: dict[str, str], status: int) -> None:
    response = keyed.post("/v1/predict", json=predict_body(8), headers=headers)
    assert response.status_code == status, response.text
    if status == 401:
        assert "API key" in response.json()["detail"]
        assert response.headers["www-authenticate"].startswith("ApiKey")
    assert keyed.get("/v1/models", headers=headers).status_code == status
    assert keyed.post(
        "/v1/predict/batch", json={"requests": [predict_body(4)]}, headers=headers
    ).status_code in ({status} if status == 401 else {200})


def test_a_key_without_the_scope_is_a_403(keyed: TestClient) -> None:
    for key, status in ((READER, 403), (WRITER, 403), (ADMIN, 200)):
        response = keyed.get("/test/admin", headers={"X-API-Key": key})
        assert response.status_code == status, key
    assert "lacks the 'admin' scope" in keyed.get("/test/admin", headers={"X-API-Key": READER}).text


def test_probes_metrics_and_docs_stay_open(keyed: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path


def test_the_query_parameter_is_for_websockets_only(keyed: TestClient) -> None:
    response = keyed.post(f"/v1/predict?api_key={READER}", json=predict_body(8))
    assert response.status_code == 401


def test_openapi_documents_the_key_and_the_refusals(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": schema["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    predict = schema["paths"]["/v1/predict"]["post"]
    assert predict["security"] == [{"ApiKey": []}]
    assert {"401", "403"} <= predict["responses"].keys()
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_without_keys_everything_is_open_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cpe"), TestClient(create_app(make_settings())) as client:
        assert client.post("/v1/predict", json=predict_body(8)).status_code == 200
    assert any("CPE_API_KEYS is empty" in r.getMessage() for r in caplog.records)


def test_the_log_filter_masks_the_query_key() -> None:
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]', None, None
    )
    record.args = ("127.0.0.1:5000", f"/v1/stream/routing?x=1&api_key={READER}&y=2")
    MaskQueryKeys().filter(record)
    assert (
        record.getMessage()
        == '127.0.0.1:5000 - "WebSocket /v1/stream/routing?x=1&api_key=***&y=2" [accepted]'
    )


# -- WebSockets, on a real server that logs every request -------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, IO[bytes]]]:
    settings = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_API_KEYS": KEYS,
        "CPE_LOG_LEVEL": "info",
        "CPE_ACCESS_LOG": "true",
    }
    with serving(settings) as [served]:
        yield f"127.0.0.1:{served.port}", served.log


@pytest.mark.parametrize("query", ["", "?api_key=nobody-0123456789"])
@pytest.mark.server
async def test_a_websocket_without_a_known_key_is_closed_with_1008(
    server: tuple[str, IO[bytes]], query: str
) -> None:
    host, _ = server
    for path in ("/v1/stream/routing", "/v1/stream/predict"):
        async with connect(f"ws://{host}{path}{query}", proxy=None) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008 and "API key" in closed.value.rcvd.reason


@pytest.mark.server
async def test_a_websocket_key_in_the_query_or_a_header_is_let_in_and_never_logged(
    server: tuple[str, IO[bytes]],
) -> None:
    host, log = server
    async with connect(f"ws://{host}/v1/stream/routing?api_key={READER}", proxy=None) as ws:
        await ws.send('{"op": "ping"}')
        assert '"op":"pong"' in await ws.recv()
    async with connect(
        f"ws://{host}/v1/stream/predict", proxy=None, additional_headers={"X-API-Key": ADMIN}
    ) as ws:
        await ws.send(json.dumps({"id": 1, **predict_body(4)}))
        assert '"result"' in await ws.recv()
    httpx.post(f"http://{host}/v1/predict", json=predict_body(8), headers={"X-API-Key": READER})
    time.sleep(0.2)  # the log lines are written by the server process
    log.seek(0)
    text = log.read().decode()
    assert "/v1/stream/routing?api_key=***" in text, text[-2000:]
    assert '"POST /v1/predict HTTP/1.1" 200' in text
    assert READER not in text and ADMIN not in text


def test_feedback_needs_a_write_key_and_rollback_an_admin_key(keyed: TestClient) -> None:
    body = predict_body(8)
    actual = {"timestamp": body["contexts"][-1]["timestamp"] + 1000, "features": [1.0] * 8}
    feedback = {"flow_key": body["flow_key"], "contexts": body["contexts"], "actual": actual}
    for key, status in ((None, 401), (READER, 403), (WRITER, 202), (ADMIN, 202)):
        headers = {} if key is None else {"X-API-Key": key}
        assert keyed.post("/v1/feedback", json=feedback, headers=headers).status_code == status, key
    for key, status in ((READER, 403), (WRITER, 403)):
        response = keyed.post("/v1/models/rollback", json={}, headers={"X-API-Key": key})
        assert response.status_code == status, key
    # an admin gets past the check: nothing to roll back to yet is the rollback's own answer, not 401/403
    assert keyed.post("/v1/models/rollback", json={}, headers={"X-API-Key": ADMIN}).status_code not in (
        401,
        403,
    )
