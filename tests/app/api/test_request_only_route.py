"""RequestOnlyRoute: the prediction endpoints skip FastAPI's dependency solving, and refuse dependencies."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.testclient import TestClient
from starlette.requests import HTTPConnection

from app.api import predict
from app.api.request_only_route import RequestOnlyRoute
from app.main import create_app
from tests.app.payloads import make_settings, predict_body


async def _key() -> str:
    return "k"


async def _endpoint(request: Request) -> Response:
    return Response(await request.body())


def test_the_route_calls_its_endpoint_with_the_request() -> None:
    router = APIRouter(route_class=RequestOnlyRoute)
    router.post("/echo")(_endpoint)
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        assert client.post("/echo", content=b"abc").content == b"abc"


def test_a_dependency_whose_value_the_endpoint_wants_is_refused() -> None:
    async def endpoint(request: Request, key: Annotated[str, Depends(_key)]) -> Response:
        return Response(key)

    router = APIRouter(route_class=RequestOnlyRoute)
    with pytest.raises(TypeError, match="no dependencies but guards"):
        router.post("/x")(endpoint)


def test_a_router_dependency_that_is_no_guard_is_refused() -> None:
    # it would never run: refused when the app is built, not skipped
    router = APIRouter(route_class=RequestOnlyRoute, dependencies=[Depends(_key)])
    with pytest.raises(TypeError, match="no dependencies but guards"):
        router.post("/x")(_endpoint)


async def _guard(conn: HTTPConnection) -> None:
    if conn.headers.get("x-pass") != "yes":
        raise HTTPException(401, "no pass")


def test_a_guard_runs_before_the_endpoint_and_may_refuse() -> None:
    router = APIRouter(route_class=RequestOnlyRoute, dependencies=[Depends(_guard)])
    router.post("/echo")(_endpoint)
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        assert client.post("/echo", content=b"abc").status_code == 401
        assert client.post("/echo", content=b"abc", headers={"x-pass": "yes"}).content == b"abc"


def test_a_parameter_is_refused() -> None:
    async def endpoint(request: Request, limit: int = 3) -> Response:
        return Response(str(limit))

    router = APIRouter(route_class=RequestOnlyRoute)
    with pytest.raises(TypeError, match="limit"):
        router.post("/x")(endpoint)


def test_the_prediction_endpoints_are_request_only_and_documented() -> None:
    app = create_app(make_settings())
    assert {route.path for route in predict.router.routes} == {"/v1/predict", "/v1/predict/batch"}
    assert all(isinstance(route, RequestOnlyRoute) for route in predict.router.routes)
    for path in ("/v1/predict", "/v1/predict/batch"):
        operation = app.openapi()["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]
        assert "200" in operation["responses"] and "422" in operation["responses"]
        assert "security" not in operation  # no keys configured: none is asked for (test_auth: with keys)


def test_the_prediction_endpoints_keep_their_key_check() -> None:
    # the router's own guard, which this route class calls: a check skipped here would be an open door
    key, wrong = "reader-0123456789abcdef", {"x-api-key": "wrong-0123456789abcdef"}
    with TestClient(create_app(make_settings(api_keys=f"{key}:read"))) as client:
        for path, body in (
            ("/v1/predict", predict_body(8)),
            ("/v1/predict/batch", {"requests": [predict_body(8)]}),
        ):
            assert client.post(path, json=body).status_code == 401
            assert client.post(path, json=body, headers=wrong).status_code == 401
            assert client.post(path, json=body, headers={"x-api-key": key}).status_code == 200
