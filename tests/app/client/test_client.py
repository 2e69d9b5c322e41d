"""The Python client (app/client/) against a real `cpe serve`: every call, its typed answer, its errors,
and the streams."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from app.client import AsyncClient, Client, CPEError, Group, GroupPage
from app.ingest.observations import ObserveResult
from app.routing_schemas import RouteRecommendation
from app.schemas import FlowSummary, PredictionResult
from app.stream_schemas import CircuitBreakerPrediction, LoadBalancingUpdate, RoutingPrediction
from tests.app.payloads import FLOW_KEY, contexts
from tools.process import ServerProcess, serving

OBSERVED = "ab" * 32
UNKNOWN = "cd" * 32
ADMIN, READER = "ops-9e1d7c3a5b2f8e64", "alm-4f9c2e7d1b8a6f03"  # the server's keys
ACTUAL = {"timestamp": 1_700_000_100_000, "features": [20.0, 2.0, 0.01, 500.0, 0.5, 0.001, 100.0, 5.0]}


def observations(key: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    return [{"Context": {"flow_key": key, **c}} for c in contexts(n, seed=seed)]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    env = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_LOG_LEVEL": "warning",
        "CPE_WS_HEARTBEAT_S": "0.2",
        "CPE_API_KEYS": f"{ADMIN}:admin;{READER}:read",
    }
    with serving(env) as [process]:
        yield process


@pytest.mark.server
def test_every_call_answers_its_type(server: ServerProcess) -> None:
    with Client(server.url, api_key=ADMIN) as cpe:
        result = cpe.predict(FLOW_KEY, contexts(8), horizon=2)
        assert isinstance(result, PredictionResult) and result.horizon == 2 and len(result.steps) == 2
        key_bytes = list(bytes.fromhex(FLOW_KEY))  # the [u8; 32] form, answered as hex
        assert cpe.predict(key_bytes, contexts(8)).flow_key == FLOW_KEY

        observed = cpe.observe(observations(OBSERVED, 4))
        assert observed == ObserveResult(accepted=4, late=0, duplicates=0, imputed=0)
        assert cpe.predict(OBSERVED).flow_key == OBSERVED  # from the server-side window
        missing, found = cpe.predict_batch(
            [{"flow_key": UNKNOWN}, {"flow_key": FLOW_KEY, "contexts": contexts(3)}]
        )
        assert isinstance(missing, CPEError) and missing.status == 404 and UNKNOWN in str(missing.detail)
        assert isinstance(found, PredictionResult) and found.flow_key == FLOW_KEY

        routes = [{"route_id": f"r{i}", "contexts": contexts(8, seed=i)} for i in range(2)]
        ranked = cpe.recommend(FLOW_KEY, routes, objective="latency")
        assert isinstance(ranked, RouteRecommendation) and ranked.objective == "latency"
        assert {r.route_id for r in ranked.routing_suggestions} == {"r0", "r1"}

        page = cpe.flows(limit=10)
        assert OBSERVED in {f.flow_key for f in page.flows} and page.count >= 1
        flow = cpe.flow(OBSERVED)
        assert isinstance(flow, FlowSummary) and flow.length == 4
        cpe.delete_flow(OBSERVED)
        with pytest.raises(CPEError) as gone:
            cpe.flow(OBSERVED)
        assert gone.value.status == 404 and gone.value.where == f"GET /v1/flows/{OBSERVED}"

        accepted = cpe.feedback(ACTUAL, prediction_id=result.prediction_id)
        assert accepted.accepted
        assert cpe.feedback(ACTUAL, flow_key=FLOW_KEY, contexts=contexts(8)).accepted

        models = cpe.models()
        [lstm] = models.models
        assert models.learning and lstm.kind == "lstm"
        shipped = lstm.history[-1].version  # a fresh start: only the shipped version, which serves
        rolled = cpe.rollback(model="lstm", version=shipped)
        assert (rolled.version, rolled.previous) == (shipped, lstm.version)
        assert cpe.stats().predictions >= 3
        assert cpe.ready().status == "ready"


@pytest.mark.server
def test_errors_carry_status_detail_and_where(server: ServerProcess) -> None:
    with Client(server.url, api_key=ADMIN) as cpe:
        with pytest.raises(CPEError) as invalid:
            cpe.predict(FLOW_KEY, [{"timestamp": 1_700_000_000, "features": [1.0] * 8}])
        error = invalid.value
        assert error.status == 422 and error.where == "POST /v1/predict"
        assert error.detail[0]["loc"] == ["body", "contexts", 0, "timestamp"]
        assert "body.contexts.0.timestamp: timestamp 1700000000 is before" in str(error)
        with pytest.raises(CPEError) as rollback:
            cpe.rollback()  # nothing earlier than the serving version on a fresh start
        assert rollback.value.status == 422 and "no earlier version" in str(rollback.value)
        with pytest.raises(ValueError, match="prediction_id, or both flow_key and contexts"):
            cpe.feedback(ACTUAL)


@pytest.mark.server
async def test_async_calls_and_streams(server: ServerProcess) -> None:
    key = "a1" * 32
    async with AsyncClient(server.url, api_key=ADMIN) as cpe:
        assert (await cpe.predict(FLOW_KEY, contexts(4))).flow_key == FLOW_KEY
        async with cpe.predictions(flow_keys=[key]) as forecasts, cpe.observe_stream() as observe:
            assert forecasts.subscribed is not None and forecasts.subscribed.flow_keys == [key]
            ack = await observe.observe(observations(key, 3, seed=1))
            assert (ack.frame, ack.accepted) == (1, 3)
            with pytest.raises(CPEError) as refused:
                await observe.observe([{"Context": {"flow_key": "xyz"}}])
            assert refused.value.status == 422 and "frame 2" in refused.value.where
            # pipelined: two frames out, then their acks in order
            await observe.send(observations(key, 4, seed=2)[3:])
            await observe.send([])
            acks = [a async for a in observe]
            assert [(a.frame, a.late) for a in acks] == [(3, 0), (4, 0)]
            async with asyncio.timeout(20):
                forecast = await anext(forecasts)
            assert isinstance(forecast, PredictionResult) and forecast.flow_key == key
            await forecasts.ping()  # its pong is read past by the iteration, as the heartbeats are

        async with cpe.routing(types=["RoutingPrediction", "CircuitBreakerPrediction"]) as routing:
            routes = [{"route_id": f"r{i}", "contexts": contexts(8, seed=i)} for i in range(2)]
            for context in routes[1]["contexts"]:
                context["features"][2] = 0.4  # a lossy route: its breaker message goes out
            await cpe.recommend(FLOW_KEY, routes)
            async with asyncio.timeout(20):
                first, second = await anext(routing), await anext(routing)
            assert isinstance(first, RoutingPrediction) and first.RoutingPrediction.flow_key == FLOW_KEY
            assert isinstance(second, CircuitBreakerPrediction)
            assert second.CircuitBreakerPrediction.service_id == "r1"
            assert not isinstance(second, LoadBalancingUpdate)

        with pytest.raises(CPEError) as bad:
            async with cpe.routing(types=["Gossip"]):
                pass
        assert bad.value.status == 400 and "types.0" in str(bad.value.detail)


@pytest.mark.server
async def test_predictions_over_one_socket_many_in_flight(server: ServerProcess) -> None:
    async with AsyncClient(server.url, api_key=ADMIN) as cpe, cpe.predict_stream() as stream:
        windows = [contexts(8, seed=i) for i in range(6)]
        answers = await asyncio.gather(
            *(stream.predict(FLOW_KEY, w, horizon=1 + i % 3) for i, w in enumerate(windows)),
            stream.predict(UNKNOWN),  # never observed: 404
            stream.predict(FLOW_KEY, [], horizon=2),  # an empty window: 422
            return_exceptions=True,
        )
        results, (missing, invalid) = answers[:6], answers[6:]
        assert [r.horizon for r in results if isinstance(r, PredictionResult)] == [1, 2, 3, 1, 2, 3]
        # the same answers as over HTTP (the cache answers the HTTP ones)
        again = await cpe.predict(FLOW_KEY, windows[0], horizon=1)
        assert again.predicted_context == results[0].predicted_context  # type: ignore[union-attr]
        assert isinstance(missing, CPEError) and missing.status == 404
        assert isinstance(invalid, CPEError) and invalid.status == 422
        assert invalid.detail[0]["loc"] == ["body", "contexts"]
    with pytest.raises(RuntimeError, match="not open"):
        await stream.predict(FLOW_KEY, windows[0])


@pytest.mark.server
async def test_the_api_key_goes_with_every_request_and_socket(server: ServerProcess) -> None:
    with Client(server.url) as anonymous, pytest.raises(CPEError) as refused:
        anonymous.models()
    assert refused.value.status == 401
    async with AsyncClient(server.url, api_key=READER) as reader:
        assert (await reader.predict(FLOW_KEY, contexts(4))).flow_key == FLOW_KEY
        with pytest.raises(CPEError) as forbidden:
            await reader.observe(observations(OBSERVED, 1))  # write scope
        assert forbidden.value.status == 403 and forbidden.value.where == "POST /v1/observe"
        async with reader.routing() as routing:  # read scope: the key went with the socket
            assert routing.subscribed is not None and routing.subscribed.flow_keys is None
        with pytest.raises(ConnectionClosed) as closed:
            async with reader.observe_stream() as stream:  # write scope: closed with 1008
                await stream.observe(observations(OBSERVED, 1))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


@pytest.mark.server
def test_groups_round_trip_on_the_live_server(server: ServerProcess) -> None:
    a, b = "a1" * 32, "b2" * 32
    with Client(server.url, api_key=ADMIN) as cpe:
        cpe.observe(observations(a, 4) + observations(b, 4, seed=1))
        routes = [{"route_id": "a", "flow_key": a}, {"route_id": "b", "flow_key": b, "cost_factor": 2.0}]
        put = cpe.put_group("g1", FLOW_KEY, routes, objective="latency")
        assert isinstance(put, Group) and put.group_id == "g1"
        assert [(r.route_id, r.flow_key) for r in put.routes] == [("a", a), ("b", b)]
        got = cpe.group("g1")
        assert got.group_id == "g1" and got.objective == "latency"
        page = cpe.groups(limit=5)
        assert isinstance(page, GroupPage) and "g1" in [g.group_id for g in page.groups]
        cpe.delete_group("g1")
        with pytest.raises(CPEError) as missing:
            cpe.group("g1")
        assert missing.value.status == 404
        with pytest.raises(CPEError) as unknown:  # a route flow never observed
            cpe.put_group("g2", FLOW_KEY, [{"route_id": "c", "flow_key": "c3" * 32}], objective="latency")
        assert unknown.value.status == 422 and "flow_key" in str(unknown.value.detail)
