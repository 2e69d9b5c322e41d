"""PUT, GET and DELETE /v1/groups on the real app: definitions, the ranking after forecasts, bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services import Services
from tests.app.payloads import make_settings

T0 = 1_700_000_000_000
OWNER = "ab" * 32
READER = "reader-key-0123456789"
WRITER = "writer-key-0123456789"
ADMIN = "admin-key-0123456789ab"


def key(i: int) -> str:
    return f"{i + 0xC000:064x}"


def observe(client: TestClient, latencies: dict[str, float], step: int, headers: Any = None) -> None:
    observations = [
        {
            "Context": {
                "flow_key": flow,
                "timestamp": T0 + 1000 * step,
                "features": [latency, 1.0, 0.001, 500.0, 0.4, 0.0, 50.0, 2.0],
            }
        }
        for flow, latency in latencies.items()
    ]
    answer = client.post("/v1/observe", json={"observations": observations}, headers=headers)
    assert answer.status_code == 202, answer.text


def body(routes: list[tuple[str, str]], objective: str = "latency", **extra: Any) -> dict[str, Any]:
    return {
        "flow_key": OWNER,
        "objective": objective,
        "routes": [{"route_id": r, "flow_key": f, "cost_factor": 1.0} for r, f in routes],
    } | extra


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = make_settings(models=("lstm",), model="lstm", max_routes=4, group_min_dwell_ms=0)
    with TestClient(create_app(settings)) as client:
        yield client


def idle(client: TestClient) -> None:
    forecasts = Services.of(client.app).forecasts
    assert forecasts is not None
    client.portal.call(forecasts.continuous.idle)  # type: ignore[union-attr]


def test_a_group_is_ranked_on_its_routes_forecasts_and_published(client: TestClient) -> None:
    Services.of(client.app).groups.prefetch = None  # ranked on observations only: test_prefetch.py
    fast, slow = key(1), key(2)
    for step in range(4):
        observe(client, {fast: 10.0, slow: 30.0}, step)
    idle(client)
    answer = client.put("/v1/groups/edge-1", json=body([("fast", fast), ("slow", slow)]))
    assert answer.status_code == 201, answer.text
    assert answer.json()["best"] is None and answer.json()["routes"][0]["flow_key"] == fast
    with client.websocket_connect("/v1/stream/routing") as ws:
        ws.send_text(json.dumps({"op": "subscribe", "groups": ["edge-1"]}))
        assert json.loads(ws.receive_text())["op"] == "subscribed"
        observe(client, {fast: 10.0, slow: 30.0}, 4)
        idle(client)
        prediction = json.loads(ws.receive_text())["RoutingPrediction"]
        update = json.loads(ws.receive_text())["LoadBalancingUpdate"]
    assert prediction["group_id"] == "edge-1" and prediction["flow_key"] == OWNER
    assert prediction["routing_suggestions"][0]["route_id"] == "fast"
    assert prediction["model_version"].startswith("lstm") and prediction["timestamp"] > T0
    assert update["group_id"] == "edge-1" and math.isclose(sum(update["service_weights"].values()), 1.0)
    state = client.get("/v1/groups/edge-1").json()
    assert state["best"] == "fast" and state["weights"] == update["service_weights"]
    assert [r["route_id"] for r in state["ranking"]] == ["fast", "slow"]
    assert state["rankings"] >= 1 and state["changes"] == 0 and state["changed_ms"] > T0
    assert state["best_since_ts"] == T0 + 4000
    page = client.get("/v1/groups").json()
    assert {"group_id": "edge-1", "flow_key": OWNER, "objective": "latency", "routes": 2, "best": "fast"} in (
        page["groups"]
    )
    # a PUT replaces the definition and starts its state over
    again = client.put("/v1/groups/edge-1", json=body([("fast", fast), ("slow", slow)], "balanced"))
    assert again.status_code == 200 and again.json()["objective"] == "balanced"
    assert client.get("/v1/groups/edge-1").json()["rankings"] == 0
    assert client.delete("/v1/groups/edge-1").status_code == 204
    assert client.get("/v1/groups/edge-1").status_code == 404
    assert client.delete("/v1/groups/edge-1").status_code == 404


def test_groups_page_in_id_order(client: TestClient) -> None:
    flows = [key(10), key(11)]
    observe(client, dict.fromkeys(flows, 20.0), 0)
    ids = [f"page-{i:02d}" for i in range(5)]
    for group_id in reversed(ids):
        assert (
            client.put(f"/v1/groups/{group_id}", json=body([("a", flows[0]), ("b", flows[1])])).status_code
            == 201
        )
    seen: list[str] = []
    after: str | None = None
    while True:
        page = client.get("/v1/groups", params={"limit": 2} | ({"after": after} if after else {})).json()
        seen += [g["group_id"] for g in page["groups"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert [g for g in seen if g.startswith("page-")] == ids
    for group_id in ids:
        assert client.delete(f"/v1/groups/{group_id}").status_code == 204


@pytest.mark.parametrize(
    ("change", "loc", "error_type"),
    [
        (
            {"routes": [{"route_id": "a", "flow_key": "unknown"}]},
            ["body", "routes", 0, "flow_key"],
            "flow_key",
        ),
        ({"objective": "cheapest"}, ["body", "objective"], "literal_error"),
        ({"routes": []}, ["body", "routes"], "too_short"),
        ({"flow_key": None}, ["body", "flow_key"], "flow_key"),
        ({"routes": "a"}, ["body", "routes"], "list_type"),
        ({"extra": 1}, ["body", "extra"], "extra_forbidden"),
    ],
)
def test_a_bad_group_is_a_422_naming_the_field(
    client: TestClient, change: dict[str, Any], loc: list[Any], error_type: str
) -> None:
    observe(client, {key(20): 10.0, key(21): 10.0}, 0)
    answer = client.put("/v1/groups/bad", json=body([("a", key(20)), ("b", key(21))]) | change)
    assert answer.status_code == 422, answer.text
    [error] = [e for e in answer.json()["detail"] if e["loc"] == loc]
    assert error["type"] == error_type or error_type in error["type"], error


def test_routes_must_be_observed_distinct_few_and_cost_positive_and_finite(client: TestClient) -> None:
    a, b = key(30), key(31)
    observe(client, {a: 10.0, b: 10.0}, 0)

    def refused(routes: list[dict[str, Any]]) -> dict[str, Any]:
        answer = client.put("/v1/groups/bad", json={"flow_key": OWNER, "routes": routes})
        assert answer.status_code == 422, answer.text
        [error] = answer.json()["detail"]
        return error

    never = key(39)
    error = refused([{"route_id": "a", "flow_key": a}, {"route_id": "b", "flow_key": never}])
    assert error["loc"] == ["body", "routes", 1, "flow_key"] and error["type"] == "unknown_flow"
    assert never in error["msg"]
    error = refused([{"route_id": "a", "flow_key": a}, {"route_id": "a", "flow_key": b}])
    assert error["loc"] == ["body", "routes"] and error["type"] == "duplicate_route_id"
    error = refused([{"route_id": "a", "flow_key": a}, {"route_id": "b", "flow_key": a}])
    assert error["loc"] == ["body", "routes"] and error["type"] == "duplicate_route_flow"
    error = refused([{"route_id": str(i), "flow_key": key(40 + i)} for i in range(5)])  # CPE_MAX_ROUTES=4
    assert error["loc"] == ["body", "routes"] and error["type"] == "too_long"
    for cost in (0, -1.0, "inf", "nan", 1e300):
        route = {"route_id": "a", "flow_key": a, "cost_factor": cost}
        error = refused([route])
        assert error["loc"] == ["body", "routes", 0, "cost_factor"], (cost, error)
    # JSON that the standard library writes for infinity and NaN: still a 422, never a 500
    for literal in ("Infinity", "NaN", "-Infinity"):
        route = f'{{"route_id": "a", "flow_key": "{a}", "cost_factor": {literal}}}'
        raw = f'{{"flow_key": "{OWNER}", "routes": [{route}]}}'
        answer = client.put("/v1/groups/bad", content=raw, headers={"content-type": "application/json"})
        assert answer.status_code == 422, (literal, answer.text)
    assert client.put("/v1/groups/bad%20id", json=body([("a", a)])).status_code == 422
    assert client.put("/v1/groups/" + "x" * 129, json=body([("a", a)])).status_code == 422
    assert (
        client.put("/v1/groups/bad", content=b"{", headers={"content-type": "application/json"}).status_code
        == 422
    )


def test_writing_needs_a_write_key_and_deleting_an_admin_key() -> None:
    keys = f"{READER}:read; {WRITER}:read,write ;{ADMIN}:admin"
    settings = make_settings(api_keys=keys, models=("lstm",), model="lstm")
    with TestClient(create_app(settings)) as keyed:
        observe(keyed, {key(50): 10.0}, 0, {"X-API-Key": WRITER})
        group = body([("a", key(50))])
        for k, status in ((None, 401), (READER, 403), (WRITER, 201), (ADMIN, 200)):
            headers = {} if k is None else {"X-API-Key": k}
            assert keyed.put("/v1/groups/g", json=group, headers=headers).status_code == status, k
        assert keyed.get("/v1/groups/g").status_code == 401
        assert keyed.get("/v1/groups/g", headers={"X-API-Key": READER}).status_code == 200
        for k in (READER, WRITER):
            assert keyed.delete("/v1/groups/g", headers={"X-API-Key": k}).status_code == 403, k
        assert keyed.delete("/v1/groups/g", headers={"X-API-Key": ADMIN}).status_code == 204


def test_an_unreachable_group_store_is_a_503_and_degrades_readiness() -> None:
    from tools.process import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(models=("lstm",), model="lstm", group_url=url, group_timeout_ms=200)
    with TestClient(create_app(settings)) as down:
        observe(down, {key(60): 10.0}, 0)
        for answer in (
            down.put("/v1/groups/g", json=body([("a", key(60))])),
            down.get("/v1/groups"),
            down.get("/v1/groups/g"),
            down.delete("/v1/groups/g"),
        ):
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "1" and "unreachable" in answer.json()["detail"]
        ready = down.get("/readyz").json()
        assert ready["status"] == "degraded" and "groups" in ready["degraded"]
        observe(down, {key(60): 10.0}, 1)  # ingest and forecasts go on without the groups
        assert down.get(f"/v1/flows/{key(60)}").status_code == 200
