"""GET /v1/models, the probes and the OpenAPI document."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.schemas import ModelList
from tests.app.payloads import make_settings
from tools.process import RedisServer


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """One app for the module: these tests only read what it serves."""
    with TestClient(create_app(make_settings())) as client:
        yield client


def test_models_lists_the_three_loaded_models(client: TestClient) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    listing = ModelList.model_validate(response.json())
    assert [m.kind for m in listing.models] == ["lstm", "transformer", "hybrid"]
    assert listing.default == "lstm"
    assert [m.default for m in listing.models] == [True, False, False]
    for model in listing.models:
        assert model.version.startswith(f"{model.kind}-")
        assert model.seq_len == 32 and model.horizon == 8
        assert model.feature_names[0] == "latency_ms" and len(model.feature_names) == 8
        assert model.device == "cpu"
        assert model.parameters > 1000
        assert model.training  # the checkpoint's training summary
        assert model.hparams["horizon"] == 8


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_when_ready(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "reason": None, "models": ["lstm", "transformer", "hybrid"]}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_openapi_documents_the_request_bodies_and_every_ref_resolves(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    predict = doc["paths"]["/v1/predict"]["post"]
    assert predict["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictRequest")
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/PredictionResult"
    )
    assert {"413", "422", "503"} <= predict["responses"].keys()
    assert schemas["PredictRequest"]["examples"]
    assert "pattern" in str(schemas["PredictRequest"]["properties"]["flow_key"])
    batch = doc["paths"]["/v1/predict/batch"]["post"]["requestBody"]["content"]["application/json"]
    assert batch["schema"]["$ref"].endswith("/BatchPredictRequest")


def test_docs_page(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()


def test_unknown_path_is_a_404(client: TestClient) -> None:
    assert client.get("/v1/nothing").status_code == 404


def test_readyz_names_the_redis_flow_and_forecast_stores_while_redis_is_down(
    private_redis_server: RedisServer,
) -> None:
    url = private_redis_server.url
    settings = make_settings(models=("lstm",), flow_url=url, forecast_url=url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        private_redis_server.stop()
        answer = client.get("/readyz")  # asked now: no observation needed to notice
        assert answer.status_code == 200, answer.text
        degraded = answer.json()["degraded"]
        assert answer.json()["status"] == "degraded"
        assert degraded["flows"].startswith("flow store (Redis) unreachable"), degraded
        assert degraded["forecasts"].startswith("redis unreachable"), degraded
        private_redis_server.start()
        deadline = time.monotonic() + 10
        while (ready := client.get("/readyz").json())["status"] != "ready":
            assert time.monotonic() < deadline, ready
            time.sleep(0.1)
