"""The hysteresis of a group's ranking on hand-made outlooks: what it publishes, and what it holds back."""

from __future__ import annotations

import json

import pytest

from app.groups import FlowOutlook, Group, GroupRoute
from app.groups.ranking import Decision, Hysteresis, decide
from app.routing import FailurePolicy

POLICY = FailurePolicy(rate=0.05, latency_factor=3.0, breaker_threshold=0.5)
RULES = Hysteresis(margin=0.15, min_dwell_ms=1_000, weight_step=0.1, breaker_margin=0.1)
GROUP = Group(
    "edge-1", "ab" * 32, "latency", (GroupRoute("a", "01" * 32), GroupRoute("b", "02" * 32, 2.0)), 0
)


def flow(latency: float, t: int, failure: float = 0.01) -> FlowOutlook:
    return FlowOutlook(latency, 500.0, 0.99, failure, 0.4, 0.8, [latency] * 8, 1000, 1000, "lstm-v1", t)


def step(previous: Decision | None, a: FlowOutlook | None, b: FlowOutlook | None) -> Decision:
    decision = decide(GROUP, [a, b], previous and previous.state, RULES, POLICY, now_ms=1)
    assert decision is not None
    return decision


def test_the_first_ranking_publishes_the_choice_and_the_weights() -> None:
    first = step(None, flow(10.0, 0), flow(20.0, 0))
    assert first.best_changed and first.weights_changed and not first.breakers_changed
    assert first.state.best == "a" and first.state.weights == pytest.approx(
        {"a": 2 / 3, "b": 1 / 3}, abs=0.01
    )
    assert first.state.changes == 0 and first.state.rankings == 1
    prediction, update = (json.loads(m) for m in first.messages(GROUP, POLICY, "hex", 123))
    body = prediction["RoutingPrediction"]
    assert body["group_id"] == "edge-1" and body["flow_key"] == GROUP.flow_key and body["timestamp"] == 123
    assert body["model_version"] == "lstm-v1" and body["routing_suggestions"][1]["cost_factor"] == 2.0
    assert update["LoadBalancingUpdate"]["service_weights"] == first.state.weights


def test_a_lead_within_the_margin_does_not_switch() -> None:
    d = step(None, flow(10.0, 0), flow(11.0, 0))
    d = step(d, flow(11.0, 10_000), flow(10.0, 10_000))  # b leads by 10 %, under the 15 % margin
    assert d.state.best == "a" and not d.best_changed and d.messages(GROUP, POLICY, "hex", 1) == []
    assert [r["route_id"] for r in d.state.ranking] == ["a", "b"]  # the published best first
    assert d.state.challenger is None
    d = step(d, flow(12.0, 11_000), flow(10.0, 11_000))  # by 20 %: b challenges, for the dwell first
    assert d.state.best == "a" and d.state.challenger == "b" and d.state.challenger_since_ts == 11_000
    d = step(d, flow(12.0, 12_000), flow(10.0, 12_000))  # still, a dwell later: switches
    assert d.state.best == "b" and d.best_changed and d.state.changes == 1
    assert d.state.best_since_ts == 12_000 and d.state.challenger is None


def test_the_lead_must_last_the_dwell_unless_the_best_fails_or_its_forecast_goes() -> None:
    d = step(None, flow(10.0, 0), flow(20.0, 0))
    d = step(d, flow(30.0, 1_000), flow(20.0, 1_000))  # one noisy observation: b leads, not yet long
    assert d.state.best == "a" and not d.best_changed and d.state.challenger == "b"
    d = step(d, flow(10.0, 1_500), flow(20.0, 1_500))  # gone again: the count starts over
    assert d.state.best == "a" and d.state.challenger is None
    d = step(d, flow(30.0, 2_000), flow(20.0, 2_000))
    assert d.state.best == "a" and d.state.challenger_since_ts == 2_000
    d = step(d, flow(30.0, 3_000), flow(20.0, 3_000))  # led for the dwell: a real change
    assert d.state.best == "b" and d.best_changed and d.state.best_since_ts == 3_000
    # the breaker of the best opens: switch at once, and say so
    d = step(d, flow(10.0, 3_500), flow(20.0, 3_500, failure=0.9))
    assert d.state.best == "a" and d.best_changed and d.state.open_breakers == ["b"]
    [breaker] = d.breakers_changed
    assert breaker.route_id == "b" and breaker.failure_probability == 0.9
    # a route without a forecast is left out; the best's forecast gone, the other takes over at once
    d = step(d, None, flow(20.0, 4_000))
    assert d.state.best == "b" and [r["route_id"] for r in d.state.ranking] == ["b"]


def test_breakers_close_only_below_the_threshold_less_the_margin() -> None:
    d = step(None, flow(10.0, 0, failure=0.6), flow(20.0, 0))
    assert d.state.open_breakers == ["a"] and [r.route_id for r in d.breakers_changed] == ["a"]
    d = step(d, flow(10.0, 1_000, failure=0.45), flow(20.0, 1_000))  # under 0.5, not under 0.4: open
    assert d.state.open_breakers == ["a"] and not d.breakers_changed
    d = step(d, flow(10.0, 2_000, failure=0.3), flow(20.0, 2_000))
    assert d.state.open_breakers == [] and [r.route_id for r in d.breakers_changed] == ["a"]
    closing = json.loads(d.messages(GROUP, POLICY, "hex", 1)[-1])["CircuitBreakerPrediction"]
    assert closing["service_id"] == "a" and closing["failure_probability"] == 0.3


def test_weights_are_published_when_one_moves_by_more_than_the_step() -> None:
    d = step(None, flow(10.0, 0), flow(20.0, 0))
    published = d.state.weights
    d = step(d, flow(10.0, 1_000), flow(18.0, 1_000))  # b: 1/3 -> 0.357, under the step
    assert not d.weights_changed and d.state.weights == published
    d = step(d, flow(10.0, 2_000), flow(12.0, 2_000))  # b: 0.455
    assert d.weights_changed and d.state.weights["b"] == pytest.approx(10 / 22)
    [update] = [json.loads(m) for m in d.messages(GROUP, POLICY, "hex", 1)]
    assert update["LoadBalancingUpdate"]["service_weights"] == d.state.weights


def test_no_forecast_no_ranking() -> None:
    assert decide(GROUP, [None, None], None, RULES, POLICY, now_ms=1) is None


def test_a_decisive_lead_switches_without_the_dwell() -> None:
    d = step(None, flow(10.0, 0), flow(20.0, 0))
    d = step(d, flow(200.0, 1_000), flow(20.0, 1_000))  # a degraded tenfold: b's score is over twice a's
    assert d.state.best == "b" and d.best_changed and d.state.best_since_ts == 1_000
    lenient = Hysteresis(margin=0.15, min_dwell_ms=1_000, now_margin=100.0)
    d = step(None, flow(10.0, 0), flow(20.0, 0))
    held = decide(GROUP, [flow(200.0, 1_000), flow(20.0, 1_000)], d.state, lenient, POLICY, now_ms=1)
    assert held is not None and held.state.best == "a" and held.state.challenger == "b"
