"""Admission: past CPE_MAX_INFLIGHT prediction requests in progress, a 503 before the body is read."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from app.api.admission import Admission, InflightLimit
from app.main import create_app
from tests.app.payloads import make_settings


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
    gate, limit = Gate(), InflightLimit(max_inflight=2, retry_after_s=3)
    transport = httpx.ASGITransport(app=Admission(gate, limit))
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
    gate, limit = Gate(), InflightLimit(max_inflight=1, retry_after_s=1)
    gate.open.set()
    limit.inflight = 1  # as if one prediction were in progress
    transport = httpx.ASGITransport(app=Admission(gate, limit))
    async with httpx.AsyncClient(transport=transport, base_url="http://cpe") as client:
        for path in ("/healthz", "/readyz", "/metrics", "/v1/models"):
            assert (await client.get(path)).status_code == 200
        assert (await client.post("/v1/predict", content=b"{}")).status_code == 503


@pytest.mark.parametrize("cap", [0, 128])
def test_the_app_applies_the_setting(cap: int) -> None:
    app = create_app(make_settings(max_inflight=cap))
    assert app.state.admission.max_inflight == cap


def test_the_refusals_and_the_requests_in_flight_are_exported() -> None:
    app = create_app(make_settings(max_inflight=4))
    app.state.admission.shed, app.state.admission.inflight = 3, 2
    text = app.state.metrics.render().decode()
    assert "cpe_shed_requests_total 3.0" in text and "cpe_requests_in_flight 2.0" in text
