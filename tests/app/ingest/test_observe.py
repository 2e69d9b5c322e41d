"""POST /v1/observe, WS /v1/stream/observe, /v1/flows and predictions from the server-side window.

Each adapter's mapping is checked field by field; bad input is a 422 naming the item and the field
(never a 500); a full in-process store is a 429 with Retry-After and applies nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services import Services
from app.settings import Settings
from tests.app.payloads import make_settings

T0 = 1_767_225_600_000
KEY = "ab" * 32
OTHER = "cd" * 32
FEATURES = [12.0, 1.5, 0.01, 800.0, 0.6, 0.001, 120.0, 4.0]
ADMIN = "admin-key-0123456789abcdef"
WRITER = "write-key-0123456789abcdef"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return make_settings(models=("lstm",), max_observe_batch=50, max_flows=3, max_body_bytes=64 * 1024)


@pytest.fixture(scope="module")
def app_client(settings: Settings) -> Iterator[TestClient]:
    """One app for the module: starting one costs more than most of these tests."""
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def client(app_client: TestClient) -> TestClient:
    """The module's app with no flow in it: whatever an earlier test observed is deleted first, over the
    API (its window, its pending pattern and its forecast go with it)."""
    while flows := app_client.get("/v1/flows", params={"limit": 100}).json()["flows"]:
        for flow in flows:
            assert app_client.delete(f"/v1/flows/{flow['flow_key']}").status_code == 204
    assert app_client.get("/v1/flows").json()["count"] == 0
    return app_client


def context(t: int, features: list[Any] = FEATURES, key: str = KEY, **more: Any) -> dict[str, Any]:
    return {"Context": {"flow_key": key, "timestamp": T0 + t, "features": features, **more}}


def observe(client: TestClient, *observations: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/v1/observe", json={"observations": list(observations)})
    assert answer.status_code == 202, answer.text
    return answer.json()  # type: ignore[no-any-return]


def newest(client: TestClient, key: str = KEY) -> dict[str, Any]:
    answer = client.get(f"/v1/flows/{key}")
    assert answer.status_code == 200, answer.text
    return answer.json()["newest"]  # type: ignore[no-any-return]


def test_counts_accepted_late_duplicates_imputed(client: TestClient) -> None:
    base = [context(1000), context(2000)]
    assert observe(client, *base) == {"accepted": 2, "late": 0, "duplicates": 0, "imputed": 0}
    again = observe(client, context(2000), context(500), context(3000, [None, *FEATURES[1:]]))
    assert again == {"accepted": 1, "late": 1, "duplicates": 1, "imputed": 1}
    flow = client.get(f"/v1/flows/{KEY}").json()
    assert flow["length"] == 3 and flow["newest_timestamp"] == T0 + 3000
    assert flow["newest"]["features"][0] == pytest.approx(12.0)  # the flow's last value
    assert flow["newest"]["imputed"] == ["latency_ms"]
    # ``forecast`` and ``score``: continuous prediction's, tested in test_forecasts*.py


# -- adapters, a case per field -----------------------------------------------------------------------
# (message, the feature it sets, the value expected there)
FIELD_CASES = [
    ({"TransportMetrics": {"average_latency_ms": 33.0}}, "latency_ms", 33.0),
    ({"TransportMetrics": {"throughput_mbps": 77.0}}, "throughput_mbps", 77.0),
    ({"TransportMetrics": {"error_rate": 0.25}}, "error_rate", 0.25),
    ({"TransportMetrics": {"connection_count": 9}}, "connections", 9.0),
    ({"NetworkConditions": {"rtt_ms": 41.0}}, "latency_ms", 41.0),
    ({"NetworkConditions": {"jitter_ms": 2.5}}, "jitter_ms", 2.5),
    ({"NetworkConditions": {"packet_loss": 2.5}}, "loss_rate", 0.025),  # a percentage
    ({"NetworkConditions": {"throughput_mbps": 250.0}}, "throughput_mbps", 250.0),
    ({"NetworkConditions": {"throughput_mbps": 250.0, "bandwidth_estimate": 1000.0}}, "utilization", 0.25),
    ({"NetworkConditions": {"throughput_mbps": 250.0, "bandwidth_estimate": 100.0}}, "utilization", 1.0),
]
NAMES = [
    "latency_ms",
    "jitter_ms",
    "loss_rate",
    "throughput_mbps",
    "utilization",
    "error_rate",
    "connections",
]
NAMES.append("queue_depth")


@pytest.mark.parametrize(("message", "feature", "value"), FIELD_CASES)
def test_each_adapter_field_sets_its_feature(
    client: TestClient, message: dict[str, Any], feature: str, value: float
) -> None:
    observe(client, context(0))
    [(kind, fields)] = message.items()
    observe(client, {kind: {"flow_key": KEY, "timestamp": T0 + 1000, **fields}})
    got = newest(client)
    i = NAMES.index(feature)
    assert got["features"][i] == pytest.approx(value, rel=1e-6)
    assert feature not in got["imputed"]
    others = [n for n in NAMES if n != feature]
    for name in others:  # every other feature kept the flow's last value, marked imputed
        if name in got["imputed"]:
            assert got["features"][NAMES.index(name)] == pytest.approx(FEATURES[NAMES.index(name)], rel=1e-6)


def test_retransmissions_are_not_a_feature(client: TestClient) -> None:
    observe(client, context(0))
    observe(client, {"NetworkConditions": {"flow_key": KEY, "timestamp": T0 + 1000, "retransmissions": 40}})
    assert newest(client)["features"] == pytest.approx(FEATURES, rel=1e-6)
    assert newest(client)["imputed"] == NAMES


def test_flow_records_are_summed_per_flow_and_interval(client: TestClient) -> None:
    ns = (T0 + 5_000) * 1_000_000
    records = [
        {
            "FlowRecord": {
                "key": list(bytes.fromhex(KEY)),
                "component_id": c,
                "flow_type": "Data",
                "timestamp": ns + i * 1000,
                "size": 125_000,
                "priority": 1,
            }
        }
        for i, c in enumerate(["a", "b", "a", "c"])
    ]
    later = {
        "FlowRecord": {
            "key": KEY,
            "component_id": "a",
            "flow_type": "Data",
            "timestamp": ns + 1_000_000_000,
            "size": 250_000,
            "priority": 0,
        }
    }
    answer = observe(client, *records, later)
    assert answer["accepted"] == 5 and answer["imputed"] == 5  # per record; the other features are imputed
    window = client.get(f"/v1/flows/{KEY}").json()
    assert window["length"] == 2 and window["first_timestamp"] == T0 + 5_000  # the interval's start
    assert window["newest_timestamp"] == T0 + 6_000
    got = newest(client)
    assert got["features"][NAMES.index("throughput_mbps")] == pytest.approx(2.0)  # 250 kB in 1 s = 2 Mbit/s
    assert got["features"][NAMES.index("connections")] == 1.0


def test_flow_record_interval_totals(client: TestClient) -> None:
    ns = (T0 + 5_000) * 1_000_000
    records = [
        {
            "FlowRecord": {
                "key": KEY,
                "component_id": c,
                "timestamp": ns + i,
                "size": 125_000,
                "flow_type": 0,
                "priority": 0,
            }
        }
        for i, c in enumerate([1, 2, 1, 3])
    ]
    observe(client, *records)
    got = newest(client)
    assert got["features"][NAMES.index("throughput_mbps")] == pytest.approx(4.0)  # 500 kB in 1 s
    assert got["features"][NAMES.index("connections")] == 3.0  # components 1, 2, 3


def test_similarity_result_names_the_next_context_pattern(client: TestClient) -> None:
    observe(client, context(0))
    similar = {
        "SimilarityResult": {
            "flow_key": KEY,
            "similarity_score": 0.93,
            "pattern_id": "evening-peak",
            "confidence": 0.8,
        }
    }
    assert observe(client, similar)["accepted"] == 1
    assert newest(client)["pattern_id"] is None
    observe(client, context(1000))
    assert newest(client)["pattern_id"] == "evening-peak"
    observe(client, context(2000))
    assert newest(client)["pattern_id"] is None  # only the next one


def test_adaptation_feedback_is_a_bounded_hint_to_the_tuner() -> None:
    from app.learning.tuner import GROW, SHRINK, Tuner

    tuner = Tuner(1e-3, 1e-5, 3e-3, 20.0)
    tuner.hint(1.0)  # far above: one step up, not a jump
    assert tuner.lr == pytest.approx(1e-3 * GROW)
    tuner.hint(1e-9)
    assert tuner.lr == pytest.approx(1e-3 * GROW * SHRINK)
    tuner.hint(tuner.lr * 1.1)
    assert tuner.lr == pytest.approx(1e-3 * GROW * SHRINK * 1.1)
    for _ in range(20):
        tuner.hint(1.0)
    assert tuner.lr == 3e-3  # never past lr_max


def test_adaptation_feedback_reaches_the_learner(client: TestClient) -> None:
    hint = {
        "AdaptationFeedback": {"network_id": "n1", "performance_delta": -0.1, "suggested_learning_rate": 0.1}
    }
    assert observe(client, hint)["accepted"] == 1
    learning = Services.of(client.app).learning
    assert learning is not None
    learner = learning.learner
    deadline = __import__("time").monotonic() + 5
    while learner._hinted_lr is not None and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.05)
    assert learner._hinted_lr is None, "the training thread took the hint"


# -- bad input ------------------------------------------------------------------------------------------
BAD = [
    (
        "NaN",
        json.dumps({"observations": [context(0, [1.0] * 8)]}).replace("[1.0,", "[NaN,", 1),
        ["body", "observations", 0, "Context", "features", 0],
    ),
    (
        "wrong width",
        json.dumps({"observations": [context(0, FEATURES[:5])]}),
        ["body", "observations", 0, "Context", "features", 5],
    ),
    (
        "unknown type",
        json.dumps({"observations": [context(0), {"Telemetry": {"flow_key": KEY}}]}),
        ["body", "observations", 1],
    ),
    (
        "bad flow key",
        json.dumps({"observations": [context(0, key="XYZ")]}),
        ["body", "observations", 0, "Context", "flow_key"],
    ),
    (
        "flow key of 31 bytes",
        json.dumps({"observations": [context(0, key=list(range(31)))]}),  # type: ignore[arg-type]
        ["body", "observations", 0, "Context", "flow_key"],
    ),
    (
        "seconds",
        json.dumps(
            {
                "observations": [
                    {"Context": {"flow_key": KEY, "timestamp": 1_767_225_600, "features": FEATURES}}
                ]
            }
        ),
        ["body", "observations", 0, "Context", "timestamp"],
    ),
    (
        "loss over 1",
        json.dumps({"observations": [context(0, [1, 1, 1.5, 1, 0, 0, 1, 1])]}),
        ["body", "observations", 0, "Context", "features", 2],
    ),
    (
        "packet_loss over 100 %",
        json.dumps(
            {"observations": [{"NetworkConditions": {"flow_key": KEY, "timestamp": T0, "packet_loss": 140}}]}
        ),
        ["body", "observations", 0, "NetworkConditions", "packet_loss"],
    ),
    (
        "FlowRecord in ms",
        json.dumps(
            {"observations": [{"FlowRecord": {"key": KEY, "component_id": 1, "timestamp": T0, "size": 1}}]}
        ),
        ["body", "observations", 0, "FlowRecord", "timestamp"],
    ),
    (
        "over CPE_MAX_OBSERVE_BATCH",
        json.dumps({"observations": [context(i) for i in range(51)]}),
        ["body", "observations"],
    ),
    ("not JSON", "{", ["body"]),
    ("no list", json.dumps({"observations": {}}), ["body", "observations"]),
]


@pytest.mark.parametrize(("body", "loc"), [(b, loc) for _, b, loc in BAD], ids=[name for name, _, _ in BAD])
def test_bad_input_is_a_422_naming_the_item_and_field(client: TestClient, body: str, loc: list[Any]) -> None:
    answer = client.post("/v1/observe", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert loc in [error["loc"] for error in answer.json()["detail"]], answer.json()
    assert client.get(f"/v1/flows/{KEY}").status_code == 404  # nothing of the batch applied


def post_msgpack(client: TestClient, body: Any) -> Any:
    packed = body if isinstance(body, bytes) else msgspec.msgpack.encode(body)
    return client.post("/v1/observe", content=packed, headers={"content-type": "application/msgpack"})


def test_a_msgpack_body_counts_as_its_json_twin(client: TestClient) -> None:
    observations = [context(1000), context(2000, key=OTHER), context(3000, [None, *FEATURES[1:]])]
    answer = post_msgpack(client, {"observations": observations})
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"accepted": 3, "late": 0, "duplicates": 0, "imputed": 1}
    again = post_msgpack(client, {"observations": [context(3000), context(500)]})
    assert again.json() == {"accepted": 0, "late": 1, "duplicates": 1, "imputed": 0}
    assert newest(client)["features"][0] == pytest.approx(12.0)  # imputed from the flow's last value
    # a shape the fast reader leaves to pydantic (a SimilarityResult) takes the same rules
    similar = {
        "SimilarityResult": {"flow_key": KEY, "similarity_score": 0.9, "pattern_id": "p", "confidence": 1}
    }
    assert post_msgpack(client, {"observations": [similar, context(4000)]}).json()["accepted"] == 2
    assert newest(client)["pattern_id"] == "p"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b"\xc1not msgpack", ["body"]),
        ({"observations": [context(0, [-1.0, *FEATURES[1:]], key=OTHER)]}, ["body", "observations", 0]),
        ({"observations": [{"Context": {"flow_key": "x", "timestamp": T0, "features": FEATURES}}]}, None),
    ],
    ids=["not msgpack", "negative latency", "bad flow key"],
)
def test_bad_msgpack_is_a_422_naming_the_field(client: TestClient, body: Any, loc: list[Any] | None) -> None:
    answer = post_msgpack(client, body)
    assert answer.status_code == 422, answer.text
    locs = [error["loc"] for error in answer.json()["detail"]]
    if loc is not None:
        assert any(found[: len(loc)] == loc for found in locs), locs
    assert all(found[0] == "body" for found in locs), locs
    assert client.get(f"/v1/flows/{OTHER}").status_code == 404  # nothing applied


def test_an_oversized_body_is_a_413(client: TestClient) -> None:
    answer = client.post("/v1/observe", content=b"[" + b" " * 70_000 + b"]")
    assert answer.status_code == 413


def test_a_full_store_is_a_429_with_retry_after_and_applies_nothing(client: TestClient) -> None:
    observe(client, *(context(0, key=f"{i:064x}") for i in range(3)))
    answer = client.post(
        "/v1/observe", json={"observations": [context(5, key=f"{0:064x}"), context(0, key=OTHER)]}
    )
    assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
    assert "CPE_MAX_FLOWS" in answer.json()["detail"]
    assert client.get(f"/v1/flows/{0:064x}").json()["newest_timestamp"] == T0  # the batch applied nothing


# -- the WebSocket door -----------------------------------------------------------------------------------
def test_websocket_acks_each_frame_in_order(client: TestClient) -> None:
    with client.websocket_connect("/v1/stream/observe") as ws:
        ws.send_text(json.dumps([context(0), context(1000)]))
        ws.send_text(json.dumps([context(1000), context(500)]))
        ws.send_text(json.dumps([context(2000, FEATURES[:3])]))
        ws.send_text(json.dumps(context(3000)))  # one observation alone is a list of one
        acks = [ws.receive_json() for _ in range(4)]
    assert acks[0] == {"op": "ack", "frame": 1, "accepted": 2, "late": 0, "duplicates": 0, "imputed": 0}
    assert acks[1] == {"op": "ack", "frame": 2, "accepted": 0, "late": 1, "duplicates": 1, "imputed": 0}
    assert acks[2]["op"] == "error" and acks[2]["status"] == 422 and acks[2]["frame"] == 3
    assert [0, "Context", "features", 3] in [e["loc"] for e in acks[2]["detail"]]
    assert acks[3]["accepted"] == 1


# -- flows ----------------------------------------------------------------------------------------------
def test_flows_are_listed_in_pages(client: TestClient) -> None:
    keys = sorted(f"{i:064x}" for i in range(3))
    observe(client, *(context(0, key=k) for k in keys))
    first = client.get("/v1/flows", params={"limit": 2}).json()
    assert [f["flow_key"] for f in first["flows"]] == keys[:2] and first["count"] == 3
    second = client.get("/v1/flows", params={"limit": 2, "after": first["next"]}).json()
    assert [f["flow_key"] for f in second["flows"]] == keys[2:] and second["next"] is None


def test_a_flow_answers_its_whole_window_when_asked(client: TestClient) -> None:
    observe(client, context(1000, [1.0, *FEATURES[1:]]), context(2000, [2.0, *FEATURES[1:]]))
    observe(client, context(3000, [None, *FEATURES[1:]]))
    assert client.get(f"/v1/flows/{KEY}").json()["contexts"] is None
    window = client.get(f"/v1/flows/{KEY}", params={"contexts": "true"}).json()["contexts"]
    assert [c["timestamp"] for c in window] == [T0 + 1000, T0 + 2000, T0 + 3000]
    assert [c["features"][0] for c in window] == [1.0, 2.0, 2.0]  # the missing latency kept from before
    assert [c["imputed"] for c in window] == [[], [], ["latency_ms"]]
    answer = client.get(f"/v1/flows/{KEY}", params={"contexts": "maybe"})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["query", "contexts"]


def test_unknown_and_malformed_flow_keys(client: TestClient) -> None:
    assert client.get(f"/v1/flows/{OTHER}").status_code == 404
    answer = client.get("/v1/flows/not-a-key")
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["path", "flow_key"]


def test_deleting_a_flow_needs_the_admin_scope() -> None:
    settings = make_settings(models=("lstm",), api_keys=f"{WRITER}:write;{ADMIN}:admin")
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/v1/observe", json={"observations": [context(0)]}, headers={"x-api-key": WRITER}
        )
        assert answer.status_code == 202
        assert client.post("/v1/observe", json={"observations": [context(1)]}).status_code == 401
        assert client.delete(f"/v1/flows/{KEY}", headers={"x-api-key": WRITER}).status_code == 403
        assert client.delete(f"/v1/flows/{KEY}", headers={"x-api-key": ADMIN}).status_code == 204
        assert client.get(f"/v1/flows/{KEY}", headers={"x-api-key": ADMIN}).status_code == 404


# -- predictions from the server-side window ------------------------------------------------------------
def test_predict_without_contexts_uses_the_server_side_window(client: TestClient) -> None:
    observations = [context(i * 1000, [10.0 + i, 1, 0.01, 100, 0.5, 0, 5, 1]) for i in range(12)]
    observe(client, *observations)
    served = client.post("/v1/predict", json={"flow_key": KEY})
    assert served.status_code == 200, served.text
    sent = client.post(
        "/v1/predict", json={"flow_key": KEY, "contexts": [o["Context"] for o in observations]}
    )
    assert served.json()["predicted_context"] == pytest.approx(sent.json()["predicted_context"], rel=1e-5)
    assert served.json()["metadata"]["window_length"] == 12.0


def test_predict_for_an_unknown_flow_is_a_404_and_a_per_item_error_in_a_batch(client: TestClient) -> None:
    observe(client, *(context(i * 1000) for i in range(4)))
    answer = client.post("/v1/predict", json={"flow_key": OTHER})
    assert answer.status_code == 404 and "no server-side window" in answer.json()["detail"]
    batch = client.post("/v1/predict/batch", json={"requests": [{"flow_key": OTHER}, {"flow_key": KEY}]})
    assert batch.status_code == 200
    first, second = batch.json()["results"]
    assert first == {"flow_key": OTHER, "error": {"status": 404, "detail": first["error"]["detail"]}}
    assert second["flow_key"] == KEY and len(second["predicted_context"]) == 8


def test_the_prediction_stream_uses_the_server_side_window_too(client: TestClient) -> None:
    observe(client, *(context(i * 1000) for i in range(6)))
    with client.websocket_connect("/v1/stream/predict") as ws:
        ws.send_text(json.dumps({"id": 1, "flow_key": KEY}))
        ws.send_text(json.dumps({"id": 2, "flow_key": OTHER}))
        answers = {answer["id"]: answer for answer in (ws.receive_json(), ws.receive_json())}
    assert len(answers[1]["result"]["predicted_context"]) == 8
    assert answers[1]["result"]["metadata"]["window_length"] == 6.0
    assert answers[2]["error"]["status"] == 404
