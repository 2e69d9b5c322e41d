"""A group's routes are forecast when the group is defined (``RouteGroups.prefetch``, wired to
``Forecasts.prefetch``): its ranking and its routes' outlooks are there before anyone asks, without
waiting for the routes' next observations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services import Services
from tests.app.groups.test_api import body, idle, key, observe
from tests.app.payloads import make_settings


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = make_settings(models=("lstm",), model="lstm", max_routes=4, group_min_dwell_ms=0)
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_new_groups_routes_are_forecast_and_it_is_ranked_before_it_is_asked_for(client: TestClient) -> None:
    services = Services.of(client.app)
    assert services.forecasts is not None
    fast, slow = key(11), key(12)
    for step in range(4):
        observe(client, {fast: 10.0, slow: 30.0}, step)
    idle(client)
    made = services.forecasts.continuous.stats.forecasts
    assert client.put("/v1/groups/ahead", json=body([("fast", fast), ("slow", slow)])).status_code == 201
    idle(client)  # no observation since: only the hook can have forecast the routes
    assert services.forecasts.continuous.stats.forecasts == made + 2
    outlooks = client.portal.call(services.groups.store.outlooks, [fast, slow])  # type: ignore[union-attr]
    assert all(o is not None for o in outlooks)
    state = client.get("/v1/groups/ahead").json()
    assert state["best"] == "fast" and state["rankings"] == 1
    assert [r["route_id"] for r in state["ranking"]] == ["fast", "slow"]


def test_without_the_hook_a_new_group_waits_for_its_routes_next_observations(client: TestClient) -> None:
    services = Services.of(client.app)
    services.groups.prefetch = None
    fast, slow = key(21), key(22)
    for step in range(4):
        observe(client, {fast: 10.0, slow: 30.0}, step)
    idle(client)
    assert client.put("/v1/groups/later", json=body([("fast", fast), ("slow", slow)])).status_code == 201
    idle(client)
    assert client.get("/v1/groups/later").json()["best"] is None
    observe(client, {fast: 10.0, slow: 30.0}, 4)
    idle(client)
    assert client.get("/v1/groups/later").json()["best"] == "fast"
