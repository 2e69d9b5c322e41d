"""Bad requests: a 422 naming the field (or a 413 for an oversized body), never a 500."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.wire.rules import FEATURES, MIN_TIMESTAMP_MS
from tests.app.payloads import FLOW_KEY, contexts, make_settings, predict_body

Body = dict[str, Any]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """One app for the whole module: a refused request changes nothing that another test reads."""
    from app.main import create_app
    from tests.app.payloads import make_settings

    with TestClient(create_app(make_settings())) as client:
        yield client


def _set_feature(value: float) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        body["contexts"][3]["features"][2] = value

    return mutate


def _decreasing(body: Body) -> None:
    body["contexts"][5]["timestamp"] = body["contexts"][4]["timestamp"] - 1


def _without(*path: Any) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        target = body
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _field(name: str, value: Any) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        body[name] = value

    return mutate


def _context_field(name: str, value: Any) -> Callable[[Body], None]:
    def mutate(body: Body) -> None:
        body["contexts"][0][name] = value

    return mutate


# (case, how to spoil a valid body, the loc that the 422 must name)
CASES: list[tuple[str, Callable[[Body], None], list[Any]]] = [
    ("NaN feature", _set_feature(float("nan")), ["body", "contexts", 3, "features", 2]),
    ("Infinity feature", _set_feature(float("inf")), ["body", "contexts", 3, "features", 2]),
    ("-Infinity feature", _set_feature(float("-inf")), ["body", "contexts", 3, "features", 2]),
    ("huge feature", _set_feature(1e300), ["body", "contexts", 3, "features"]),
    ("negative feature", _set_feature(-0.5), ["body", "contexts", 3, "features"]),
    ("string feature", _set_feature("fast"), ["body", "contexts", 3, "features", 2]),  # type: ignore[arg-type]
    ("7 features", _context_field("features", [1.0] * 7), ["body", "contexts", 0, "features"]),
    ("9 features", _context_field("features", [1.0] * 9), ["body", "contexts", 0, "features"]),
    ("negative timestamp", _context_field("timestamp", -1), ["body", "contexts", 0, "timestamp"]),
    (
        "timestamp in seconds",
        _context_field("timestamp", 1_700_000_000),
        ["body", "contexts", 0, "timestamp"],
    ),
    ("fractional timestamp", _context_field("timestamp", 1.5), ["body", "contexts", 0, "timestamp"]),
    ("timestamp past int64", _context_field("timestamp", 2**64), ["body", "contexts", 0, "timestamp"]),
    (
        "NaN metadata",
        _context_field("metadata", {"rtt": float("nan")}),
        ["body", "contexts", 0, "metadata", "rtt"],
    ),
    ("long pattern_id", _context_field("pattern_id", "p" * 129), ["body", "contexts", 0, "pattern_id"]),
    ("decreasing timestamps", _decreasing, ["body", "contexts"]),
    ("empty window", _field("contexts", []), ["body", "contexts"]),
    ("window over max_window", _field("contexts", contexts(65)), ["body", "contexts"]),
    ("contexts not a list", _field("contexts", {"timestamp": 1}), ["body", "contexts"]),
    ("flow_key 63 chars", _field("flow_key", "a" * 63), ["body", "flow_key"]),
    ("flow_key 65 chars", _field("flow_key", "a" * 65), ["body", "flow_key"]),
    ("flow_key uppercase", _field("flow_key", "AB" * 32), ["body", "flow_key"]),
    ("flow_key not hex", _field("flow_key", "g" * 64), ["body", "flow_key"]),
    ("flow_key 31 ints", _field("flow_key", [1] * 31), ["body", "flow_key"]),
    ("flow_key 33 ints", _field("flow_key", [1] * 33), ["body", "flow_key"]),
    ("flow_key int over 255", _field("flow_key", [256] + [0] * 31), ["body", "flow_key"]),
    ("flow_key negative int", _field("flow_key", [-1] + [0] * 31), ["body", "flow_key"]),
    ("flow_key bools", _field("flow_key", [True] * 32), ["body", "flow_key"]),
    ("flow_key a number", _field("flow_key", 12345), ["body", "flow_key"]),
    ("horizon 0", _field("horizon", 0), ["body", "horizon"]),
    ("horizon over H", _field("horizon", 9), ["body", "horizon"]),
    ("horizon not a number", _field("horizon", "soon"), ["body", "horizon"]),
    ("unknown model", _field("model", "gru"), ["body", "model"]),
    ("missing flow_key", _without("flow_key"), ["body", "flow_key"]),
    ("empty contexts", _field("contexts", []), ["body", "contexts"]),
    ("missing features", _without("contexts", 0, "features"), ["body", "contexts", 0, "features"]),
    ("missing timestamp", _without("contexts", 0, "timestamp"), ["body", "contexts", 0, "timestamp"]),
]


@pytest.mark.parametrize(("mutate", "loc"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_predict_request_is_a_422_naming_the_field(
    client: TestClient, mutate: Callable[[Body], None], loc: list[Any]
) -> None:
    body = predict_body(10)
    mutate(body)
    # json.dumps writes NaN / Infinity / -Infinity tokens, which Python's json (and pydantic's) accept
    response = client.post(
        "/v1/predict", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert loc in [error["loc"] for error in detail], detail
    assert all({"type", "loc", "msg"} <= error.keys() for error in detail)


def test_the_same_bad_field_in_a_batch_is_named_with_its_index(client: TestClient) -> None:
    requests = [predict_body(5) for _ in range(5)]
    requests[3]["contexts"] = contexts(65)
    requests[4]["horizon"] = 99
    response = client.post("/v1/predict/batch", json={"requests": requests})
    assert response.status_code == 422
    locs = [error["loc"] for error in response.json()["detail"]]
    assert locs == [["body", "requests", 3, "contexts"], ["body", "requests", 4, "horizon"]]


def test_horizon_over_the_named_models_horizon(client: TestClient) -> None:
    response = client.post("/v1/predict", json=predict_body(5, model="hybrid", horizon=9))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "horizon"]
    assert "hybrid" in error["msg"]


@pytest.mark.parametrize(
    ("requests", "loc"),
    [
        ([predict_body(2)] * 17, ["body", "requests"]),  # max_batch is 16 in the tests
        ([], ["body", "requests"]),
        ("all of them", ["body", "requests"]),
    ],
    ids=["over max_batch", "empty", "not a list"],
)
def test_bad_batch_is_a_422(client: TestClient, requests: Any, loc: list[Any]) -> None:
    response = client.post("/v1/predict/batch", json={"requests": requests})
    assert response.status_code == 422
    assert loc in [error["loc"] for error in response.json()["detail"]]


@pytest.mark.parametrize(
    "content", [b'{"flow_key": ', b"", b"not json", b"[1, 2]", b"null", b'{"flow_key": "ab"} trailing']
)
@pytest.mark.parametrize("path", ["/v1/predict", "/v1/predict/batch"])
def test_malformed_json_is_a_422(client: TestClient, path: str, content: bytes) -> None:
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_an_error_does_not_echo_a_huge_input(client: TestClient) -> None:
    response = client.post("/v1/predict", json=predict_body(5, contexts=contexts(65)))
    [error] = response.json()["detail"]
    assert "input" not in error
    assert error["ctx"] == {"field_type": "List", "max_length": 64, "actual_length": 65}


def test_non_finite_input_is_echoed_by_name(client: TestClient) -> None:
    body = predict_body(5)
    body["contexts"][0]["features"][0] = float("inf")
    response = client.post("/v1/predict", content=json.dumps(body))
    assert response.json()["detail"][0]["input"] == "inf"


@pytest.fixture(scope="module")
def small_body_client() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(max_body_bytes=4096))) as client:
        yield client


def test_body_over_the_limit_by_content_length_is_a_413(small_body_client: TestClient) -> None:
    response = small_body_client.post("/v1/predict", json=predict_body(64))
    assert int(response.request.headers["content-length"]) > 4096
    assert response.status_code == 413
    assert "4096" in response.json()["detail"]


def test_chunked_body_over_the_limit_is_a_413(small_body_client: TestClient) -> None:
    data = json.dumps(predict_body(64)).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    response = small_body_client.post("/v1/predict", content=chunks())
    assert "content-length" not in response.request.headers
    assert response.status_code == 413


def test_body_under_the_limit_passes(small_body_client: TestClient) -> None:
    response = small_body_client.post("/v1/predict", json=predict_body(4))
    assert response.status_code == 200


@pytest.mark.parametrize("end", ["low", "high"])
def test_extreme_but_valid_features_give_finite_answers(client: TestClient, end: str) -> None:
    window = contexts(20)
    for context in window[::2]:
        context["features"] = [getattr(f, end) for f in FEATURES]
    response = client.post("/v1/predict", json={"flow_key": "ab" * 32, "contexts": window, "horizon": 8})
    assert response.status_code == 200
    assert None not in response.json()["predicted_context"]


@pytest.mark.parametrize(
    ("flow_key", "says"),
    [("a" * 63, "got 63 characters"), ("a" * 10 + "g" + "a" * 53, "character 10 is 'g'")],
)
def test_a_bad_flow_key_is_explained(client: TestClient, flow_key: str, says: str) -> None:
    response = client.post("/v1/predict", json=predict_body(flow_key=flow_key))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "flow_key"] and says in error["msg"]


# -- physical ranges and units, on every path a context comes in by ---------------------------------


@pytest.fixture(scope="module")
def learning_client() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(learning_enabled=True))) as client:
        yield client


def _window_paths(window: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], list[Any]]]:
    """(path, body, the loc of the window's contexts in it) for each endpoint that takes a window."""
    plain = {"flow_key": FLOW_KEY, "contexts": window}
    labelled = [{**c, "pattern_id": "busy"} for c in window]  # not the common shape: msgspec reads it
    return [
        ("/v1/predict", plain, ["body", "contexts"]),
        ("/v1/predict", {**plain, "contexts": labelled}, ["body", "contexts"]),
        ("/v1/predict/batch", {"requests": [predict_body(3), plain]}, ["body", "requests", 1, "contexts"]),
        (
            "/v1/routing/recommend",
            {"flow_key": FLOW_KEY, "routes": [{"route_id": "a", "contexts": window}]},
            ["body", "routes", 0, "contexts"],
        ),
        (
            "/v1/feedback",
            {**plain, "actual": {"timestamp": window[-1]["timestamp"] + 1000, "features": [0.0] * 8}},
            ["body", "contexts"],
        ),
    ]


OUT_OF_RANGE = [(i, f.low - 1.0) for i, f in enumerate(FEATURES)] + [
    (i, 1.5) for i, f in enumerate(FEATURES) if f.high == 1.0
]


@pytest.mark.parametrize(
    ("index", "value"), OUT_OF_RANGE, ids=[f"{FEATURES[i].name}={v}" for i, v in OUT_OF_RANGE]
)
def test_a_feature_out_of_its_range_is_a_422_naming_it_on_every_path(
    learning_client: TestClient, index: int, value: float
) -> None:
    window = contexts(6)
    window[4]["features"][index] = value
    feature = FEATURES[index]
    for path, body, loc in _window_paths(window):
        response = learning_client.post(path, json=body)
        assert response.status_code == 422, (path, response.text)
        [error] = response.json()["detail"]
        assert error["loc"] == [*loc, 4, "features"], path
        assert error["type"] == "feature_range"
        assert feature.name in error["msg"] and feature.describe_range() in error["msg"], error["msg"]
        assert error["ctx"]["feature"] == feature.name and error["ctx"]["value"] == value


def test_loss_7_and_utilisation_3_are_refused_with_their_ranges(client: TestClient) -> None:
    body = predict_body(4)
    body["contexts"][1]["features"][2] = 7.0
    body["contexts"][2]["features"][4] = 3.0
    response = client.post("/v1/predict", json=body)
    assert response.status_code == 422
    assert [e["msg"] for e in response.json()["detail"]] == [
        "features[2] (loss_rate) must be in [0, 1]; got 7.0",
        "features[4] (utilization) must be in [0, 1]; got 3.0",
    ]


def test_a_timestamp_in_seconds_is_a_422_asking_for_milliseconds_on_every_path(
    learning_client: TestClient,
) -> None:
    window = contexts(6)
    for context in window:
        context["timestamp"] //= 1000  # seconds since the epoch
    for path, body, loc in _window_paths(window):
        response = learning_client.post(path, json=body)
        assert response.status_code == 422, (path, response.text)
        errors = response.json()["detail"]
        assert [e["loc"] for e in errors][:6] == [[*loc, i, "timestamp"] for i in range(6)], path
        assert all("milliseconds since the epoch expected" in e["msg"] for e in errors)
    least = {"flow_key": FLOW_KEY, "contexts": [{**window[0], "timestamp": MIN_TIMESTAMP_MS}]}
    assert learning_client.post("/v1/predict", json=least).status_code == 200


def _named(context: dict[str, Any]) -> dict[str, Any]:
    return {**context, "features": {f.name: v for f, v in zip(FEATURES, context["features"], strict=True)}}


def test_named_features_are_the_positional_list(client: TestClient) -> None:
    window = contexts(8)
    by_position = client.post("/v1/predict", json={"flow_key": "a1" * 32, "contexts": window})
    named = [_named(c) for c in window]
    named[3]["features"] = dict(reversed(named[3]["features"].items()))  # any order
    by_name = client.post("/v1/predict", json={"flow_key": "a2" * 32, "contexts": named})
    assert by_position.status_code == by_name.status_code == 200, by_name.text
    for field in ("predicted_context", "steps", "confidence", "lower", "upper"):
        assert by_position.json()[field] == by_name.json()[field], field


def test_named_features_mix_with_lists_in_a_window_and_in_routing(client: TestClient) -> None:
    window = contexts(4)
    window[1] = _named(window[1])
    assert client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": window}).status_code == 200
    routes = {"flow_key": FLOW_KEY, "routes": [{"route_id": "a", "contexts": window}]}
    assert client.post("/v1/routing/recommend", json=routes).status_code == 200


@pytest.mark.parametrize(
    ("change", "type_", "says"),
    [
        (lambda f: f.pop("queue_depth"), "missing_feature", "features lacks queue_depth"),
        (lambda f: f.update(latency=1.0), "unknown_feature", "unknown feature 'latency'"),
        (lambda f: f.update(loss_rate=2.0), "feature_range", "features[2] (loss_rate) must be in [0, 1]"),
    ],
    ids=["missing", "unknown", "out of range"],
)
def test_bad_named_features_are_a_422_naming_the_feature(
    client: TestClient, change: Callable[[dict[str, float]], Any], type_: str, says: str
) -> None:
    window = [_named(c) for c in contexts(3)]
    change(window[2]["features"])
    response = client.post("/v1/predict", json={"flow_key": FLOW_KEY, "contexts": window})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", "contexts", 2, "features"], type_)
    assert says in error["msg"], error["msg"]


def test_the_openapi_document_states_the_ranges_and_the_unit(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    context = schema["ContextVector"]["properties"]
    assert context["timestamp"]["minimum"] == MIN_TIMESTAMP_MS
    assert "milliseconds since the epoch expected" in context["timestamp"]["description"]
    as_list, as_object = context["features"]["anyOf"]
    assert [(i["title"], i["minimum"], i["maximum"]) for i in as_list["prefixItems"]] == [
        (f.name, f.low, f.high) for f in FEATURES
    ]
    assert as_object["required"] == [f.name for f in FEATURES]
