"""/asyncapi.json: a valid AsyncAPI 3.0 document (against the specification's own JSON Schema, vendored in
deploy/schemas/), and true to what a real `cpe serve` sends: every frame captured from each socket matches
one of the messages the document says that channel sends, and every such message is seen."""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import pkgutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from fastapi.routing import APIWebSocketRoute
from jsonschema import Draft7Validator, Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from websockets.asyncio.client import ClientConnection, connect

import app.api
from app.api.asyncapi import document
from tests.app.payloads import FLOW_KEY, contexts
from tools.process import ServerProcess, serving

ROOT = Path(__file__).resolve().parents[3]
SPEC = ROOT / "deploy" / "schemas" / "asyncapi-3.0.0.json"
DOC_URI = "urn:cpe:asyncapi"
RATE_BURST = 10
OBSERVED_KEY = "ab" * 32
UNKNOWN_KEY = "cd" * 32


@pytest.fixture(scope="module")
def spec() -> Draft7Validator:
    schema = json.loads(SPEC.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def problems(validator: Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{e.json_path}: {e.message[:200]}" for e in validator.iter_errors(doc)]


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_document_is_valid_asyncapi_3(spec: Draft7Validator) -> None:
    doc = document()
    assert problems(spec, doc) == []
    for ref in set(refs(doc)):  # the specification's schema does not follow references: every one resolves
        resolve(doc, ref)
    # every payload schema is a valid JSON Schema of the dialect pydantic writes
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.update(asyncapi="2.6.0"), "$.asyncapi"),
        (lambda d: d["operations"]["routingSubscribe"].update(action="publish"), "$.operations"),
        (lambda d: d["channels"]["routing"].update(adress="/x"), "$.channels"),
        (lambda d: d["components"]["messages"]["Ping"].update(payload=3), "$.components"),
    ],
)
def test_the_specification_schema_catches_a_broken_document(
    spec: Draft7Validator, change: Any, where: str
) -> None:
    doc = copy.deepcopy(document())
    change(doc)
    found = problems(spec, doc)
    assert found and all(p.startswith(where) for p in found), found


def test_every_socket_and_op_is_documented() -> None:
    doc = document()
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {
        "/v1/stream/routing",
        "/v1/stream/predict",
        "/v1/stream/predictions",
        "/v1/stream/observe",
    }
    assert websocket_paths() == addresses
    checker = Checker(doc)
    for channel, subscribe in (("routing", "RoutingSubscribe"), ("predictions", "PredictionsSubscribe")):
        assert set(checker.messages(channel, "receive")) == {subscribe, "Unsubscribe", "Ping"}
        replies = {"Subscribed", "Unsubscribed", "Pong", "Heartbeat", "Error"}
        assert replies < set(checker.messages(channel, "send"))
    assert set(checker.messages("predict", "send")) == {"PredictAnswer", "PredictRefusal"}
    assert set(checker.messages("observe", "send")) == {"ObserveAck", "ObserveError"}


def websocket_paths() -> set[str]:
    """The paths of every WebSocket route of every router in app/api/."""
    paths = set()
    for module in pkgutil.iter_modules(app.api.__path__):
        for value in vars(importlib.import_module(f"app.api.{module.name}")).values():
            if isinstance(value, APIRouter):
                paths |= {r.path for r in value.routes if isinstance(r, APIWebSocketRoute)}
    return paths


# -- the document against a real server's frames --------------------------------------------------------


class Checker:
    """Validates frames against the messages a channel's operations of one action list."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.registry: Registry[Any] = Registry().with_resource(DOC_URI, Resource(doc, DRAFT202012))

    def messages(self, channel: str, action: str) -> dict[str, dict[str, Any]]:
        """Name in components.messages -> the message, of ``channel``'s ``action`` operations and replies."""
        out = {}
        for op in self.doc["operations"].values():
            if op["channel"]["$ref"] != f"#/channels/{channel}":
                continue
            listed = op["messages"] if op["action"] == action else []
            if action == "send" and "reply" in op:
                listed = [*listed, *op["reply"]["messages"]]
            for ref in listed:
                component = resolve(self.doc, ref["$ref"])["$ref"]
                out[component.rsplit("/", 1)[1]] = resolve(self.doc, component)
        return out

    def matches(self, channel: str, action: str, frame: Any) -> list[str]:
        """The messages of ``channel`` that ``frame`` is valid as."""
        found = []
        for name in self.messages(channel, action):
            schema = {"$ref": f"{DOC_URI}#/components/messages/{name}/payload"}
            if Draft202012Validator(schema, registry=self.registry).is_valid(frame):
                found.append(name)
        return found


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    env = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_LOG_LEVEL": "warning",
        "CPE_WS_HEARTBEAT_S": "0.3",
        "CPE_WS_RATE_PER_S": "5",
        "CPE_WS_RATE_BURST": str(RATE_BURST),
    }
    with serving(env) as [process]:
        yield process


class Capture:
    """A socket whose every received frame is kept, by channel."""

    def __init__(self, ws: ClientConnection, channel: str, frames: dict[str, list[Any]]) -> None:
        self.ws, self.channel, self.frames = ws, channel, frames

    async def send(self, frame: Any) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def until(self, done: Any, timeout: float = 20.0) -> dict[str, Any]:
        """Frames until one for which ``done(frame)`` holds; returns it."""
        async with asyncio.timeout(timeout):
            while True:
                frame = json.loads(await self.ws.recv())
                self.frames[self.channel].append(frame)
                if done(frame):
                    return frame  # type: ignore[no-any-return]


def op(name: str) -> Any:
    return lambda frame: frame.get("op") == name


async def capture_frames(server: ServerProcess, sent: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Drive every socket through every op and message; what each sent back, by channel."""
    ws_url = f"ws://127.0.0.1:{server.port}/v1/stream"
    frames: dict[str, list[Any]] = defaultdict(list)

    async def send(capture: Capture, frame: Any, *, valid: bool = True) -> None:
        if valid:
            sent[capture.channel].append(frame)
        await capture.send(frame)

    async with (
        connect(f"{ws_url}/routing", proxy=None) as r,
        connect(f"{ws_url}/predictions", proxy=None) as p,
        connect(f"{ws_url}/predict", proxy=None) as q,
        connect(f"{ws_url}/observe", proxy=None) as o,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        routing, predictions = Capture(r, "routing", frames), Capture(p, "predictions", frames)
        predict, observe = Capture(q, "predict", frames), Capture(o, "observe", frames)
        for sub, body in ((routing, {"op": "subscribe", "types": None}), (predictions, {"op": "subscribe"})):
            await send(sub, body)
            await sub.until(op("subscribed"))
            await send(sub, {"op": "ping"})
            await sub.until(op("pong"))
            await sub.until(op("heartbeat"))
            for bad in ("{oops", {"op": "publish"}, {"op": "subscribe", "flow_keys": ["xyz"]}):
                await send(sub, bad, valid=False)
                await sub.until(op("error"))
        await send(predictions, {"op": "subscribe", "flow_keys": [OBSERVED_KEY], "groups": ["g1"]})
        await predictions.until(op("subscribed"))

        routes = [
            {"route_id": f"r{i}", "contexts": contexts(8, seed=i), "cost_factor": 1.0 + i} for i in range(2)
        ]
        for context in routes[1]["contexts"]:  # a lossy route: its breaker message goes out
            context["features"][2] = 0.4
        answer = await http.post("/v1/routing/recommend", json={"flow_key": FLOW_KEY, "routes": routes})
        assert answer.status_code == 200, answer.text
        await routing.until(lambda f: "RoutingPrediction" in f)
        await routing.until(lambda f: "CircuitBreakerPrediction" in f)

        window = [{"Context": {"flow_key": OBSERVED_KEY, **c}} for c in contexts(4, seed=7)]
        await send(observe, window[:2])
        await observe.until(op("ack"))
        await send(observe, [{"Context": {"flow_key": "nope"}}], valid=False)
        await observe.until(op("error"))
        await send(observe, window[2])  # one observation, not in a list
        await observe.until(op("ack"))
        flow_prediction = await predictions.until(lambda f: "FlowPrediction" in f)
        assert flow_prediction["FlowPrediction"]["flow_key"] == OBSERVED_KEY

        await send(predict, {"id": "a", "flow_key": FLOW_KEY, "contexts": contexts(8), "horizon": 2})
        await predict.until(lambda f: f.get("id") == "a")
        await send(predict, {"id": 2, "flow_key": OBSERVED_KEY})  # the server-side window
        await predict.until(lambda f: f.get("id") == 2)
        await send(predict, {"id": "b", "flow_key": UNKNOWN_KEY})  # 404
        await predict.until(lambda f: f.get("id") == "b")
        await send(predict, {"id": "c", "flow_key": FLOW_KEY, "contexts": []}, valid=False)  # 422
        await predict.until(lambda f: f.get("id") == "c")
        await send(predict, "{not json", valid=False)  # no usable id
        await predict.until(lambda f: f.get("id") is None)

        for sub in (routing, predictions):
            await send(sub, {"op": "unsubscribe"})
            await sub.until(op("unsubscribed"))
        for _ in range(RATE_BURST + 1):  # the last one is over the rate: an error with status 429
            await send(routing, {"op": "ping"})
        await routing.until(lambda f: f.get("status") == 429)
    return frames


@pytest.mark.server
async def test_real_frames_match_the_document(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.get("/asyncapi.json")
    assert answer.status_code == 200
    served = answer.json()
    assert served == json.loads(json.dumps(document()))
    checker = Checker(served)

    sent: dict[str, list[Any]] = defaultdict(list)
    frames = await capture_frames(server, sent)

    for channel, received in sent.items():  # what the client sent, valid or not, is a documented message
        for frame in received:
            assert checker.matches(channel, "receive", frame), (channel, frame)
    seen: dict[str, set[str]] = defaultdict(set)
    for channel, received in frames.items():
        for frame in received:
            names = checker.matches(channel, "send", frame)
            assert names, f"{channel}: a frame the document does not describe: {frame}"
            seen[channel].update(names)
    for channel in ("routing", "predictions", "predict", "observe"):  # and every documented one was seen
        assert seen[channel] == set(checker.messages(channel, "send")), channel


def test_a_frame_unlike_the_document_fails_the_check() -> None:
    checker = Checker(json.loads(json.dumps(document())))
    assert checker.matches("routing", "send", {"op": "pong", "dropped": 0}) == ["Pong"]
    assert checker.matches("routing", "send", {"op": "pong", "dropped": -1}) == []
    assert checker.matches("routing", "send", {"RoutingPrediction": {"flow_key": FLOW_KEY}}) == []
    assert checker.matches("observe", "send", {"op": "ack", "frame": 1, "accepted": 1}) == []
