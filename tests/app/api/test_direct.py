"""DirectRoute: the prediction endpoints skip FastAPI's dependency solving, and refuse dependencies."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.testclient import TestClient
from starlette.requests import HTTPConnection

from app.api import predict
from app.api.direct import DirectRoute
from app.main import create_app
from tests.app.payloads import make_settings


async def _key() -> str:
    return "k"


async def _endpoint(request: Request) -> Response:
    return Response(await request.body())


def test_direct_route_calls_its_endpoint_with_the_request() -> None:
    router = APIRouter(route_class=DirectRoute)
    router.post("/echo")(_endpoint)
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        assert client.post("/echo", content=b"abc").content == b"abc"


def test_a_dependency_whose_value_the_endpoint_wants_is_refused() -> None:
    async def endpoint(request: Request, key: Annotated[str, Depends(_key)]) -> Response:
        return Response(key)

    router = APIRouter(route_class=DirectRoute)
    with pytest.raises(TypeError, match="no dependencies but guards"):
        router.post("/x")(endpoint)


def test_a_router_dependency_that_is_no_guard_is_refused() -> None:
    # it would never run: refused when the app is built, not skipped
    router = APIRouter(route_class=DirectRoute, dependencies=[Depends(_key)])
    with pytest.raises(TypeError, match="no dependencies but guards"):
        router.post("/x")(_endpoint)


async def _guard(conn: HTTPConnection) -> None:
    if conn.headers.get("x-pass") != "yes":
        raise HTTPException(401, "no pass")


def test_a_guard_runs_before_the_endpoint_and_may_refuse() -> None:
    router = APIRouter(route_class=DirectRoute, dependencies=[Depends(_guard)])
    router.post("/echo")(_endpoint)
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        assert client.post("/echo", content=b"abc").status_code == 401
        assert client.post("/echo", content=b"abc", headers={"x-pass": "yes"}).content == b"abc"


def test_a_parameter_is_refused() -> None:
    async def endpoint(request: Request, limit: int = 3) -> Response:
        return Response(str(limit))

    router = APIRouter(route_class=DirectRoute)
    with pytest.raises(TypeError, match="limit"):
        router.post("/x")(endpoint)


def test_the_prediction_endpoints_are_direct_and_documented() -> None:
    app = create_app(make_settings())
    assert {route.path for route in predict.router.routes} == {"/v1/predict", "/v1/predict/batch"}
    assert all(isinstance(route, DirectRoute) for route in predict.router.routes)
    for path in ("/v1/predict", "/v1/predict/batch"):
        operation = app.openapi()["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]
        assert "200" in operation["responses"] and "422" in operation["responses"]


def test_a_guard_given_when_the_router_is_included_runs_too() -> None:
    # how create_app attaches the API key check: a guard skipped here would be an open door
    router = APIRouter(route_class=DirectRoute)
    router.post("/echo")(_endpoint)
    app = FastAPI()
    app.include_router(router, dependencies=[Depends(_guard)])
    with TestClient(app) as client:
        assert client.post("/echo", content=b"abc").status_code == 401
        assert client.post("/echo", content=b"abc", headers={"x-pass": "yes"}).content == b"abc"
