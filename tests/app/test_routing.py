"""Routing: the formulas on hand-made forecasts, the messages' serde forms, and POST /v1/routing/recommend."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.routing import (
    ERRORS,
    LATENCY,
    LOSS,
    Attribution,
    FailurePolicy,
    RouteForecast,
    balance,
    outlook,
    rank,
    recommend,
    routing_messages,
    wire_flow_key,
)
from app.services import Services
from models.scaling import D, Scaler
from tests.app.payloads import FLOW_KEY, contexts, make_settings

POLICY = FailurePolicy(rate=0.05, latency_factor=3.0, breaker_threshold=0.5)
H = 4


def route(
    route_id: str,
    *,
    latency: float | list[float] = 20.0,
    throughput: float = 500.0,
    loss: float | list[float] = 0.001,
    errors: float = 0.0,
    sigma: float = 0.05,
    rate_sigma: float = 0.002,
    cost: float = 1.0,
    confidence: float = 0.8,
    window_latency: float = 20.0,
    dt_s: float = 1.0,
) -> RouteForecast:
    """A route's forecast made by hand: Gaussians in the scaler's space around the given raw values."""
    scaler = Scaler()
    point = np.tile([20.0, 2.0, 0.0, throughput, 0.5, errors, 100.0, 5.0], (H, 1))
    point[:, LATENCY] = latency
    point[:, LOSS] = loss
    std = np.full((H, D), sigma)
    std[:, [LOSS, ERRORS]] = rate_sigma
    return RouteForecast(
        route_id=route_id,
        cost_factor=cost,
        point=point,
        loc=scaler.transform(point),
        std=std,
        confidence=np.full(H, confidence),
        dt_s=dt_s,
        window_latency_ms=window_latency,
        scaler=scaler,
    )


def _sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


# -- the figures of one route -------------------------------------------------------------------------
def test_expected_latency_and_throughput_are_the_means_of_the_log_normals() -> None:
    o = outlook(route("r", latency=20.0, throughput=500.0, sigma=0.5), 1, POLICY)
    assert o.expected_latency_ms == pytest.approx((20.0 + 0.01) * math.exp(0.125) - 0.01)
    assert o.expected_throughput == pytest.approx((500.0 + 0.01) * math.exp(0.125) - 0.01)
    assert o.predicted_context[LATENCY] == pytest.approx(20.0)  # the point forecast stays the median


def test_reliability_is_the_product_of_the_expected_success_rates() -> None:
    o = outlook(route("r", loss=0.02, errors=0.01, rate_sigma=1e-6), 1, POLICY)
    assert o.reliability_score == pytest.approx(0.98 * 0.99)
    # a rate cannot be negative: the expected loss of N(0, 0.01^2) is that of its positive half
    o = outlook(route("r", loss=0.0, errors=0.0, rate_sigma=0.01), 1, POLICY)
    assert o.reliability_score == pytest.approx((1 - 0.01 / math.sqrt(2 * math.pi)) ** 2)


def test_failure_probability_from_the_rates_and_from_the_latency() -> None:
    # loss + errors expected exactly at the failure rate, latency far below its bound: P = 1/2
    o = outlook(route("r", loss=0.03, errors=0.02), 1, POLICY)
    assert o.failure_probability == pytest.approx(0.5, abs=1e-6)
    # latency at 3 x its window's median, rates far below theirs: P = 1/2 again
    o = outlook(route("r", latency=30.0, window_latency=10.0, loss=0.0), 1, POLICY)
    assert o.failure_probability == pytest.approx(0.5, abs=1e-6)
    # both independent risks at once
    o = outlook(route("r", latency=30.0, window_latency=10.0, loss=0.03, errors=0.02), 1, POLICY)
    assert o.failure_probability == pytest.approx(0.75, abs=1e-6)
    # one deviation above the bound on the rates
    o = outlook(route("r", loss=0.05 - 0.002 * math.sqrt(2), rate_sigma=0.002, errors=0.0), 1, POLICY)
    assert o.failure_probability == pytest.approx(_sf(1.0), abs=1e-6)


def test_time_to_recovery_is_the_first_later_step_back_under_the_threshold() -> None:
    o = outlook(route("r", loss=[0.2, 0.2, 0.0, 0.0], dt_s=2.0), 1, POLICY)
    assert o.failure_probability > 0.99
    assert o.time_to_recovery_ms == 3 * 2000  # step 3, 2 s apart
    o = outlook(route("r", loss=[0.2, 0.2, 0.2, 0.2], dt_s=2.0), 1, POLICY)
    assert o.time_to_recovery_ms == (H + 1) * 2000  # not within the horizon: beyond it
    o = outlook(route("r", loss=[0.2, 0.2, 0.2, 0.2], dt_s=2.0), H, POLICY)  # the last step: no later one
    assert o.time_to_recovery_ms == (H + 1) * 2000


# -- ranking and weights ------------------------------------------------------------------------------
FAST = dict(latency=10.0, throughput=200.0, loss=0.02, cost=3.0)
WIDE = dict(latency=40.0, throughput=900.0, loss=0.01, cost=1.0)
SAFE = dict(latency=25.0, throughput=400.0, loss=0.0, cost=1.5)


def _ranked(objective: Any) -> list[str]:
    routes = [route("fast", **FAST), route("wide", **WIDE), route("safe", **SAFE)]  # type: ignore[arg-type]
    return [o.route_id for o in rank([outlook(r, 1, POLICY) for r in routes], objective)]


def test_each_objective_ranks_by_its_own_figure() -> None:
    assert _ranked("latency") == ["fast", "safe", "wide"]
    assert _ranked("throughput") == ["wide", "safe", "fast"]
    assert _ranked("reliability") == ["safe", "wide", "fast"]


def test_balanced_averages_normalized_latency_throughput_reliability_and_cost() -> None:
    routes = [route("fast", **FAST), route("wide", **WIDE), route("safe", **SAFE)]  # type: ignore[arg-type]
    ranked = rank([outlook(r, 1, POLICY) for r in routes], "balanced")
    min_latency = min(o.expected_latency_ms for o in ranked)
    max_throughput = max(o.expected_throughput for o in ranked)
    min_cost = min(o.cost_factor for o in ranked)
    for o in ranked:
        expected = (
            min_latency / o.expected_latency_ms
            + o.expected_throughput / max_throughput
            + o.reliability_score
            + min_cost / o.cost_factor
        ) / 4
        assert o.score == pytest.approx(expected)
    assert [o.score for o in ranked] == sorted((o.score for o in ranked), reverse=True)
    # a route that is best on every count comes first
    best = route("best", latency=9.0, throughput=950.0, loss=0.0, cost=0.5)
    assert rank([outlook(r, 1, POLICY) for r in [*routes, best]], "balanced")[0].route_id == "best"


def test_weights_sum_to_one_favour_better_routes_and_starve_only_a_certain_failure() -> None:
    routes = [
        route("fast", latency=10.0),
        route("slow", latency=40.0),
        route("shaky", latency=10.0, loss=0.05, errors=0.0),  # P(failure) = 1/2
        route("dead", latency=10.0, loss=0.9),  # P(failure) = 1
    ]
    ranked = rank([outlook(r, 1, POLICY) for r in routes], "latency")
    weights = balance(ranked)
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["fast"] > weights["shaky"] > 0.0
    assert weights["fast"] > weights["slow"] > 0.0
    assert weights["fast"] == pytest.approx(4 * weights["slow"])  # proportional to the latency score
    assert weights["dead"] == 0.0
    # when every route surely fails, the scores alone spread the load
    doomed = rank([outlook(route(f"d{i}", loss=0.9, latency=10.0 * i), 1, POLICY) for i in (1, 2)], "latency")
    assert balance(doomed) == pytest.approx({"d1": 2 / 3, "d2": 1 / 3})


def test_a_temperature_weighs_by_a_softmax_of_the_scores() -> None:
    ranked = rank(
        [outlook(route(n, latency=lat), 1, POLICY) for n, lat in (("a", 10.0), ("b", 30.0))], "latency"
    )
    scores = {r.route_id: r.score for r in ranked}
    weights = balance(ranked, temperature=0.1)
    # exp((score - best) / tau), times each route's chance not to fail, normalized
    survive = {r.route_id: 1.0 - r.failure_probability for r in ranked}
    raw = {k: survive[k] * math.exp((scores[k] - 1.0) / 0.1) for k in scores}
    assert weights == pytest.approx({k: v / sum(raw.values()) for k, v in raw.items()})
    assert weights["b"] < 0.01 < balance(ranked)["b"]  # sharper than proportional for a 3x slower route


def test_recommendation_confidence_is_the_weighted_mean_of_the_routes() -> None:
    rec = recommend(
        FLOW_KEY,
        "latency",
        [route("a", latency=10.0, confidence=0.9), route("b", latency=30.0, confidence=0.3)],
        2,
        POLICY,
    )
    assert rec.confidence == pytest.approx(0.75 * 0.9 + 0.25 * 0.3)
    assert rec.time_horizon_ms == 2000


# -- the messages -------------------------------------------------------------------------------------
def _messages(flow_key_format: Any = "hex", **loss: Any) -> list[dict[str, Any]]:
    rec = recommend(
        FLOW_KEY,
        "balanced",
        [route("ok"), route("edge", loss=0.05), route("bad", loss=[0.07, 0.06, 0.0, 0.0])],
        1,
        POLICY,
    )
    who = Attribution(FLOW_KEY, None, 1_700_000_000_000, "lstm-v1")
    return [json.loads(m) for m in routing_messages(rec, POLICY, flow_key_format, who)]


ATTRIBUTION = {"flow_key", "group_id", "timestamp", "model_version"}


def test_messages_keep_the_serde_form_of_the_rust_enum_exactly() -> None:
    prediction, update, *breakers = _messages()
    assert list(prediction) == ["RoutingPrediction"]
    body = prediction["RoutingPrediction"]
    assert (
        set(body)
        == {
            "predicted_context",
            "confidence",
            "time_horizon_ms",
            "routing_suggestions",
        }
        | ATTRIBUTION
    )
    assert body["group_id"] is None and body["timestamp"] == 1_700_000_000_000
    assert body["model_version"] == "lstm-v1"
    assert body["flow_key"] == FLOW_KEY and len(body["predicted_context"]) == D
    assert isinstance(body["time_horizon_ms"], int)
    for suggestion in body["routing_suggestions"]:
        assert set(suggestion) == {
            "route_id",
            "expected_latency_ms",
            "expected_throughput",
            "reliability_score",
            "cost_factor",
        }
    assert body["routing_suggestions"][0]["route_id"] == "ok"
    assert list(update) == ["LoadBalancingUpdate"]
    assert (
        set(update["LoadBalancingUpdate"])
        == {
            "service_weights",
            "predicted_loads",
            "adaptation_confidence",
        }
        | ATTRIBUTION
    )
    assert update["LoadBalancingUpdate"]["flow_key"] == FLOW_KEY
    assert sum(update["LoadBalancingUpdate"]["service_weights"].values()) == pytest.approx(1.0)
    assert update["LoadBalancingUpdate"]["predicted_loads"] == pytest.approx(
        {"ok": 0.5, "edge": 0.5, "bad": 0.5}
    )
    # only `bad` is above the threshold; `edge` sits exactly at it (P = 1/2) and gets none
    assert breakers == [
        {
            "CircuitBreakerPrediction": {
                "service_id": "bad",
                "failure_probability": pytest.approx(1 - _sf(0.02 / math.hypot(0.002, 0.002))),
                "recommended_threshold": 0.05,
                "time_to_recovery_ms": 3000,  # step 3 is the first back under the threshold
                "flow_key": FLOW_KEY,
                "group_id": None,
                "timestamp": 1_700_000_000_000,
                "model_version": "lstm-v1",
            }
        }
    ]


def test_flow_keys_in_messages_follow_the_configured_format() -> None:
    assert wire_flow_key("00ff" * 16, "hex") == "00ff" * 16
    assert wire_flow_key("00ff" * 16, "bytes") == [0, 255] * 16
    prediction = _messages("bytes")[0]["RoutingPrediction"]
    assert prediction["flow_key"] == list(bytes.fromhex(FLOW_KEY))
    assert all(type(b) is int for b in prediction["flow_key"]) and len(prediction["flow_key"]) == 32


# -- POST /v1/routing/recommend -----------------------------------------------------------------------
def _body(**fields: Any) -> dict[str, Any]:
    routes = [
        {"route_id": "a", "contexts": contexts(32, seed=1), "cost_factor": 1.0},
        {"route_id": "b", "contexts": contexts(16, seed=2), "cost_factor": 2.0},
        {"route_id": "c", "contexts": contexts(8, seed=3)},
    ]
    return {"flow_key": FLOW_KEY, "routes": routes, "objective": "latency"} | fields


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """One app for the module's tests of the endpoint: a recommendation is not cached, and a refused body
    changes nothing."""
    with TestClient(create_app(make_settings())) as client:
        yield client


def test_recommend_ranks_every_route_in_one_forward_pass_and_publishes(client: TestClient) -> None:
    engine = Services.of(client.app).engine
    passes = engine.stats.forward_passes
    with client.websocket_connect("/v1/stream/routing") as ws:
        ws.send_text(json.dumps({"op": "subscribe"}))
        assert json.loads(ws.receive_text())["op"] == "subscribed"
        response = client.post("/v1/routing/recommend", json=_body())
        assert response.status_code == 200
        published = [json.loads(ws.receive_text()) for _ in range(2)]
    answer = response.json()
    assert engine.stats.forward_passes == passes + 1 and engine.stats.batch_sizes[3] >= 1
    suggestions = answer["routing_suggestions"]
    assert sorted(s["route_id"] for s in suggestions) == ["a", "b", "c"]
    latencies = [s["expected_latency_ms"] for s in suggestions]
    assert latencies == sorted(latencies)  # the latency objective: fastest first
    assert answer["load_balancing_weights"].keys() == {"a", "b", "c"}
    assert sum(answer["load_balancing_weights"].values()) == pytest.approx(1.0)
    assert 0.0 < answer["confidence"] <= 1.0
    assert answer["flow_key"] == FLOW_KEY and answer["model_used"] == "lstm"
    assert answer["time_horizon_ms"] == 1000
    assert suggestions[0]["cost_factor"] == {"a": 1.0, "b": 2.0, "c": 1.0}[suggestions[0]["route_id"]]
    prediction = published[0]["RoutingPrediction"]
    assert prediction["routing_suggestions"] == [{k: s[k] for k in list(s)[:5]} for s in suggestions]
    assert prediction["confidence"] == answer["confidence"]
    assert published[1]["LoadBalancingUpdate"]["service_weights"] == answer["load_balancing_weights"]
    for message in published:  # attributable: which flow, no group, when, by which model version
        (body,) = message.values()
        assert body["flow_key"] == FLOW_KEY and body["group_id"] is None
        assert body["model_version"] == answer["model_version"] and body["timestamp"] > 1_700_000_000_000


@pytest.mark.parametrize(
    ("change", "loc", "error_type"),
    [
        ({"objective": "cheapest"}, ["body", "objective"], "literal_error"),
        ({"routes": []}, ["body", "routes"], "too_short"),
        ({"flow_key": "abc"}, ["body", "flow_key"], "flow_key"),
        ({"horizon": 9}, ["body", "horizon"], "less_than_equal"),
        ({"model": "gpt"}, ["body", "model"], "unknown_model"),
    ],
)
def test_recommend_refuses_bad_bodies_naming_the_field(
    client: TestClient, change: dict[str, Any], loc: list[Any], error_type: str
) -> None:
    response = client.post("/v1/routing/recommend", json=_body(**change))
    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [(loc, error_type)]


def test_recommend_checks_each_route_like_the_predict_endpoint(client: TestClient) -> None:
    body = _body()
    body["routes"][1]["route_id"] = "a"
    body["routes"][0]["cost_factor"] = 0
    body["routes"][2]["contexts"][3]["features"] = [1.0] * 7
    response = client.post("/v1/routing/recommend", json=body)
    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["detail"]] == [
        (["body", "routes", 0, "cost_factor"], "greater_than"),
        (["body", "routes", 2, "contexts", 3, "features"], "too_short"),
    ]
    body = _body()
    body["routes"][1]["route_id"] = "a"
    body["routes"][2]["contexts"] = contexts(65)  # the test settings' max_window is 64
    detail = client.post("/v1/routing/recommend", json=body).json()["detail"]
    assert [(e["loc"], e["type"]) for e in detail] == [(["body", "routes", 2, "contexts"], "too_long")]
    body["routes"][2]["contexts"] = contexts(3)
    detail = client.post("/v1/routing/recommend", json=body).json()["detail"]
    assert [(e["loc"], e["type"]) for e in detail] == [(["body", "routes"], "duplicate_route_id")]
    assert "routes[1].route_id 'a' repeats routes[0]" in detail[0]["msg"]


def test_recommend_limits_the_number_of_routes_and_writes_byte_flow_keys_when_told() -> None:
    settings = make_settings(max_routes=2, flow_key_format="bytes")
    with TestClient(create_app(settings)) as client:
        detail = client.post("/v1/routing/recommend", json=_body()).json()["detail"]
        assert [(e["loc"], e["type"], e["ctx"]["max_length"]) for e in detail] == [
            (["body", "routes"], "too_long", 2)
        ]
        with client.websocket_connect("/v1/stream/routing") as ws:
            ws.send_text(json.dumps({"op": "subscribe", "types": ["RoutingPrediction"]}))
            ws.receive_text()
            body = _body(routes=_body()["routes"][:2], flow_key=list(range(32)))
            answer = client.post("/v1/routing/recommend", json=body).json()
            message = json.loads(ws.receive_text())
    assert answer["flow_key"] == bytes(range(32)).hex()  # HTTP answers in hex
    assert message["RoutingPrediction"]["flow_key"] == list(range(32))


def test_with_the_bus_down_recommend_still_answers_and_readiness_says_degraded() -> None:
    with TestClient(create_app(make_settings(bus_url="redis://127.0.0.1:1/0"))) as client:  # nothing there
        readiness = client.get("/readyz")
        assert readiness.status_code == 200
        assert readiness.json()["status"] == "degraded"
        assert "Redis unreachable" in readiness.json()["degraded"]["bus"]
        assert client.post("/v1/routing/recommend", json=_body()).status_code == 200
        metrics = client.get("/metrics").text
    errors = next(line for line in metrics.splitlines() if line.startswith("cpe_bus_errors_total"))
    assert float(errors.split()[-1]) >= 3  # the subscription and the two messages it could not publish
