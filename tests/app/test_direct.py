"""DirectRoute: the prediction endpoints skip FastAPI's dependency solving, and refuse dependencies."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.testclient import TestClient

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


def test_a_dependency_of_its_own_is_refused() -> None:
    async def endpoint(request: Request, key: Annotated[str, Depends(_key)]) -> Response:
        return Response(key)

    router = APIRouter(route_class=DirectRoute)
    with pytest.raises(TypeError, match="no dependencies"):
        router.post("/x")(endpoint)


def test_a_router_dependency_is_refused() -> None:
    # an auth check on the router would never run: refused when the app is built, not skipped
    router = APIRouter(route_class=DirectRoute, dependencies=[Depends(_key)])
    with pytest.raises(TypeError, match="no dependencies"):
        router.post("/x")(_endpoint)


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
