"""Admission: past CPE_MAX_INFLIGHT prediction requests in progress, a 503 before the body is read."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from app.api.adaptive_limit import AdaptiveLimit
from app.api.admission import Admission, InflightLimit
from app.api.request_id import RequestId
from app.main import create_app
from app.metrics import render
from app.services import Services
from tests.app.payloads import make_settings, predict_body
from tools.process import serving


class Gate:
    """An ASGI app whose requests wait until the test opens the gate; counts the bodies it read."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.bodies = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        self.bodies += 1
        await self.open.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_past_the_cap_a_503_with_retry_after_and_the_body_unread() -> None:
    gate, limit = Gate(), InflightLimit(max_inflight=2)
    transport = httpx.ASGITransport(app=Admission(gate, limit, retry_after_s=3))
    async with httpx.AsyncClient(transport=transport, base_url="http://cpe") as client:
        admitted = [asyncio.create_task(client.post("/v1/predict", content=b"{}")) for _ in range(2)]
        while gate.bodies < 2:
            await asyncio.sleep(0.001)
        refused = await client.post("/v1/predict/batch", content=b"{}")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
        assert "in progress (2)" in refused.json()["detail"]
        assert gate.bodies == 2 and limit.shed == 1 and limit.inflight == 2
        gate.open.set()
        assert [r.status_code for r in await asyncio.gather(*admitted)] == [200, 200]
        assert limit.inflight == 0
        assert (await client.post("/v1/routing/recommend", content=b"{}")).status_code == 200  # recovered


async def test_probes_and_other_paths_are_never_capped() -> None:
    gate, limit = Gate(), InflightLimit(max_inflight=1)
    gate.open.set()
    limit.inflight = 1  # as if one prediction were in progress
    transport = httpx.ASGITransport(app=Admission(gate, limit, retry_after_s=1))
    async with httpx.AsyncClient(transport=transport, base_url="http://cpe") as client:
        for path in ("/healthz", "/readyz", "/metrics", "/v1/models"):
            assert (await client.get(path)).status_code == 200
        assert (await client.post("/v1/predict", content=b"{}")).status_code == 503


def test_the_limit_admits_up_to_its_number_and_counts_the_rest() -> None:
    limit = InflightLimit(max_inflight=2)
    assert limit.try_acquire() and limit.try_acquire()
    assert not limit.try_acquire() and not limit.try_acquire()
    assert (limit.inflight, limit.shed) == (2, 2)
    limit.release()
    assert limit.try_acquire() and limit.inflight == 2


def test_without_a_limit_every_request_is_admitted_and_counted_in_flight() -> None:
    limit = InflightLimit(max_inflight=0)
    assert all(limit.try_acquire() for _ in range(1000))
    assert (limit.inflight, limit.shed) == (1000, 0)


@pytest.mark.parametrize("cap", [0, 128])
def test_the_app_applies_the_setting_in_its_outermost_middleware(cap: int) -> None:
    app = create_app(make_settings(admission="fixed", max_inflight=cap, retry_after_s=2))
    outermost = app.user_middleware[0]  # a refusal costs no other middleware
    assert outermost.cls is Admission
    assert outermost.kwargs["retry_after_s"] == 2
    with TestClient(app) as client:
        admission = Services.of(client.app).admission
        assert type(admission) is InflightLimit and admission.max_inflight == cap
        assert outermost.kwargs["limit"] is admission


def test_the_default_limit_adapts_within_its_settings() -> None:
    app = create_app(make_settings(min_inflight=6, max_inflight=300, admission_latency_ms=40))
    with TestClient(app) as client:
        admission = Services.of(client.app).admission
        assert isinstance(admission, AdaptiveLimit)
        assert (admission.pool, admission.ceiling, admission.target_s) == (6, 300, 0.04)
        assert admission.floor == 1  # under the pool only while more requests come than it admits
        assert client.post("/v1/predict", json=predict_body(8)).status_code == 200
        assert admission.inflight == 0
        admission.loop_lag_s = 0.012  # the lifespan runs the loop's lag probe; its last window is exported
        text = render(Services.of(client.app).registry).decode()
    assert "cpe_event_loop_lag_seconds 0.012" in text


def test_the_refusals_the_limit_and_the_requests_in_flight_are_exported() -> None:
    with TestClient(create_app(make_settings(admission="fixed", max_inflight=4))) as client:
        admission = Services.of(client.app).admission
        admission.shed, admission.inflight = 3, 2
        text = render(Services.of(client.app).registry).decode()
    assert "cpe_shed_requests_total 3.0" in text and "cpe_requests_in_flight 2.0" in text
    assert "cpe_inflight_limit 4.0" in text


async def test_every_refusal_through_the_middleware_is_the_same_size() -> None:
    """RequestId rewrites the response's start message: refusals must not share one (it grew a header a
    refusal, until each 503 was kilobytes)."""
    gate, limit = Gate(), InflightLimit(max_inflight=1)
    limit.inflight = 1
    transport = httpx.ASGITransport(app=RequestId(Admission(gate, limit, retry_after_s=1)))
    async with httpx.AsyncClient(transport=transport, base_url="http://cpe") as client:
        for _ in range(3):
            refused = await client.post("/v1/predict", content=b"{}")
            assert refused.status_code == 503
            assert [k for k, _ in refused.headers.raw].count(b"x-request-id") == 1
            assert len(refused.headers.raw) == 4  # content-type, content-length, retry-after, x-request-id
    assert limit.shed == 3


def _metric(base: str, name: str) -> float:
    [value] = re.findall(rf"^{name} (\S+)$", httpx.get(f"{base}/metrics").text, re.M)
    return float(value)


@pytest.mark.server
def test_a_real_server_refuses_before_any_other_middleware() -> None:
    """`cpe serve` at a full cap: the 503 comes from the outermost middleware, before the others (no
    X-Request-Id), and the request admitted before it is still answered."""
    settings = {"CPE_DEVICE": "cpu", "CPE_MODELS": "lstm", "CPE_MODEL": "lstm"}
    settings |= {"CPE_ADMISSION": "fixed", "CPE_MAX_INFLIGHT": "1"}
    with serving(settings) as [served]:
        body = b'{"flow_key": "' + b"ab" * 32 + b'", "contexts": []}'
        with socket.create_connection(("127.0.0.1", served.port)) as held:
            # admitted, then waiting for the rest of its body: the one request in flight
            held.sendall(b"POST /v1/predict HTTP/1.1\r\nhost: cpe\r\ncontent-type: application/json\r\n")
            held.sendall(b"content-length: %d\r\n\r\n%s" % (len(body), body[:10]))
            for _ in range(200):
                if _metric(served.url, "cpe_requests_in_flight") == 1:
                    break
                time.sleep(0.02)
            assert _metric(served.url, "cpe_requests_in_flight") == 1
            refused = httpx.post(f"{served.url}/v1/predict/batch", content=b"{}")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "in progress (1)" in refused.json()["detail"]
            assert "x-request-id" not in refused.headers  # no other middleware saw it
            assert _metric(served.url, "cpe_shed_requests_total") == 1
            assert httpx.get(f"{served.url}/readyz").status_code == 200  # not capped
            held.sendall(body[10:])
            answer = held.recv(65536)
        assert answer.startswith(b"HTTP/1.1 422 ") and b"x-request-id" in answer  # through the app
        assert _metric(served.url, "cpe_requests_in_flight") == 0


def test_the_lifespan_runs_the_loop_lag_probe_of_the_adaptive_limit() -> None:
    with TestClient(create_app(make_settings())) as client:
        admission = Services.of(client.app).admission
        assert isinstance(admission, AdaptiveLimit)

        async def held() -> None:
            time.sleep(0.03)  # holds the server's loop: its lag timer runs late

        client.portal.call(held)
        client.portal.call(asyncio.sleep, 0.02)
        assert admission._lag >= 0.02
