"""WebSocket streams: /v1/stream/routing pushes routing messages, /v1/stream/predict answers predictions.

Frames are JSON text. A frame that cannot be understood gets an error frame and the socket stays open.
Each socket may send CPE_WS_RATE_PER_S frames a second, in bursts of CPE_WS_RATE_BURST: a frame over the
rate gets an error with status 429 and is not carried out. Abuse closes the socket: a frame larger than
CPE_WS_MAX_FRAME_BYTES with 1009 (message too big); a binary frame, or CPE_WS_RATE_BURST frames in a row
over the rate, with 1008 (policy violation). A key without the ``read`` scope is closed with 1008 too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from starlette.status import WS_1008_POLICY_VIOLATION, WS_1009_MESSAGE_TOO_BIG

from app.api.deps import FanoutDep, ServicesDep, SettingsDep
from app.api.errors import error_detail
from app.api.predict import predict_one
from app.api.responses import dumps
from app.auth import accept_websocket
from app.bus.queue import QueueClosed
from app.cache import Cache
from app.cache.ttl import AdaptiveTtl
from app.engine import Engine, EngineStopped, Overloaded
from app.fanout import PUSH_EXTENSION, FanoutMetrics, RoutingFanout, StreamClient
from app.flows import FlowStore, FlowsUnavailable
from app.flows.serving import UnknownFlow
from app.learning.recent import RecentWindows
from app.patterns.service import Patterns
from app.routing_schemas import StreamPredictRequest, SubscribeFrame
from app.schemas import Limits
from app.settings import Settings

router = APIRouter(prefix="/v1/stream", tags=["stream"])
log = logging.getLogger("cpe.stream")

_GONE = (WebSocketDisconnect, RuntimeError, OSError)  # what sending to a client that went away raises


class PolicyViolation(Exception):
    """The client broke the protocol in a way that ends the connection (close code 1008, or ``code``)."""

    def __init__(self, reason: str, code: int = WS_1008_POLICY_VIOLATION) -> None:
        super().__init__(reason)
        self.code = code


class FrameRate:
    """A token bucket per socket: ``rate`` frames a second on average, ``burst`` at once."""

    __slots__ = ("burst", "last", "rate", "refused", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.refused = 0  # frames refused in a row

    def admit(self) -> bool:
        """Whether the next frame is within the rate; raises ``PolicyViolation`` for a flood."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.refused = 0
            return True
        self.refused += 1
        if self.refused >= self.burst:
            raise PolicyViolation(f"{self.refused} frames in a row over the rate of {self.rate:g}/s")
        return False

    def refusal(self) -> dict[str, Any]:
        """The error of a frame over the rate, as both streams answer it."""
        return {
            "status": 429,
            "detail": f"more than {self.rate:g} frames per second; this one was not carried out",
            "retry_after_s": round((1.0 - self.tokens) / self.rate, 3),
        }


async def _receive_text(websocket: WebSocket, max_bytes: int) -> str | None:
    """The next text frame; None once the client has gone; ``PolicyViolation`` for abuse."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is None:
        raise PolicyViolation("frames must be JSON text, not binary")
    # characters: a lower bound of the UTF-8 size. Under uvicorn its ws_max_size (the same setting, see
    # app/serve.py) refuses a larger frame in bytes, with the same code, before it is buffered whole.
    if len(text) > max_bytes:
        raise PolicyViolation(
            f"frame of {len(text)} characters exceeds the limit of {max_bytes} bytes", WS_1009_MESSAGE_TOO_BIG
        )
    return text


# -- /v1/stream/routing -----------------------------------------------------------------------------
MAX_PENDING_REPLIES = 64  # a client this far behind on reading the replies to its own frames is abusing


# carries out a validated {"op": "subscribe"} frame on a stream's fan-out; answers the reply to send
Subscribe = Callable[[RoutingFanout, StreamClient, dict[str, Any]], dict[str, Any]]


@router.websocket("/routing")
async def stream_routing(websocket: WebSocket, fanout: FanoutDep, settings: SettingsDep) -> None:
    """Routing messages as they are published, filtered by flow key and type, with heartbeats."""
    if not await accept_websocket(websocket, "read"):
        return
    await serve_subscriber(websocket, fanout, settings, _subscribe_routing)


async def serve_subscriber(
    websocket: WebSocket, fanout: RoutingFanout, settings: Settings, subscribe: Subscribe
) -> None:
    """Run an accepted socket of a subscription stream on ``fanout`` (routing, predictions) until it goes."""
    client = fanout.connect(websocket.scope.get("extensions", {}).get(PUSH_EXTENSION))
    # the writer of this socket: heartbeats, the replies to the client's frames, and the messages the fan-out
    # could not push (app/fanout.py)
    sender = asyncio.create_task(_send_routing(websocket, client, settings.ws_heartbeat_s, fanout.metrics))
    violation: PolicyViolation | None = None
    rate = FrameRate(settings.ws_rate_per_s, settings.ws_rate_burst)
    try:
        while (text := await _receive_text(websocket, settings.ws_max_frame_bytes)) is not None:
            if rate.admit():
                _routing_op(fanout, client, text, subscribe)
            else:
                _reply(client, {"op": "error", **rate.refusal()})
            if len(client.replies) > MAX_PENDING_REPLIES:
                raise PolicyViolation(f"more than {MAX_PENDING_REPLIES} replies left unread")
    except PolicyViolation as exc:
        violation = exc
    finally:
        fanout.disconnect(client)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    if violation is not None:
        with contextlib.suppress(*_GONE):
            await websocket.close(violation.code, str(violation))


def _subscribe_routing(fanout: RoutingFanout, client: StreamClient, frame: dict[str, Any]) -> dict[str, Any]:
    sub = SubscribeFrame.model_validate(frame)
    fanout.subscribe(client, sub.flow_keys, sub.types, sub.groups)
    return {"op": "subscribed", "flow_keys": sub.flow_keys, "groups": sub.groups, "types": sub.types}


def _routing_op(fanout: RoutingFanout, client: StreamClient, text: str, subscribe: Subscribe) -> None:
    """Carry out one client frame and queue its reply (a subscribe's goes before what it selects)."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return _reply(client, {"op": "error", "detail": f"malformed JSON: {exc}"})
    op = frame.get("op") if isinstance(frame, dict) else None
    if op == "subscribe":
        try:
            reply = subscribe(fanout, client, frame)
        except ValidationError as exc:
            return _reply(client, {"op": "error", "detail": _describe(exc)})
        _reply(client, reply)  # no message can be queued between the subscription and its reply
    elif op == "unsubscribe":
        fanout.unsubscribe(client)  # forgets what was queued; a message being written goes before the reply
        _reply(client, {"op": "unsubscribed"})
    elif op == "ping":
        _reply(client, {"op": "pong", "dropped": client.dropped})
    else:
        detail = 'a frame is a JSON object with an "op"' if op is None else f"unknown op {op!r}"
        _reply(client, {"op": "error", "detail": f"{detail}; ops: subscribe, unsubscribe, ping"})
    return None


def _describe(exc: ValidationError) -> str:
    """Every error of ``exc`` as ``field.path: message``, in one line."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'frame'}: {error['msg']}" for error in exc.errors()
    )


def _reply(client: StreamClient, frame: dict[str, Any]) -> None:
    client.reply(orjson.dumps(frame).decode())


async def _send_routing(
    websocket: WebSocket, client: StreamClient, heartbeat_s: float, metrics: FanoutMetrics
) -> None:
    """Write the client's replies, then its queued messages, and beat every ``heartbeat_s``.

    It runs once per message per client, so it does as little as it can: one timer per heartbeat rather
    than a timeout per wait, and the metric counted once per batch written rather than per message.
    Ends when the client goes (its queue is closed, or a write fails).
    """
    loop = asyncio.get_running_loop()
    outbox, replies = client.outbox, client.replies
    beat_due = False

    def beat() -> None:
        nonlocal beat_due
        beat_due = True
        outbox.wake()

    timer = loop.call_later(heartbeat_s, beat)
    sent = 0
    try:
        while True:
            if replies:
                await websocket.send_text(replies.popleft())
                continue
            text = outbox.get_nowait()
            if text is not None:
                await websocket.send_text(text)
                sent += 1
                continue
            if sent:
                metrics.sent.inc(sent)
            sent = 0
            if beat_due:
                beat_due = False
                timer = loop.call_later(heartbeat_s, beat)
                await websocket.send_text(f'{{"op":"heartbeat","dropped":{client.dropped}}}')
                continue
            await outbox.wait()  # returns for a message, a reply or a heartbeat
    except (*_GONE, QueueClosed):
        pass  # the client went away: the receive loop sees it and cleans up
    finally:
        timer.cancel()
        if sent:
            metrics.sent.inc(sent)


# -- /v1/stream/predict -----------------------------------------------------------------------------
@router.websocket("/predict")
async def stream_predict(websocket: WebSocket, services: ServicesDep) -> None:
    """PredictRequests with an ``id``, answered ``{id, result}`` or ``{id, error}`` as each is ready."""
    if not await accept_websocket(websocket, "read"):
        return
    engine, cache, limits, settings = services.engine, services.cache, services.limits, services.settings
    recent, flows = services.recent, services.flows  # flows: the windows of requests without contexts
    answers: asyncio.Queue[bytes] = asyncio.Queue()
    in_flight = asyncio.Semaphore(settings.ws_queue_size)  # bounds ``answers`` and the tasks
    sender = asyncio.create_task(_send_answers(websocket, answers, in_flight))
    tasks: set[asyncio.Task[None]] = set()
    rate = FrameRate(settings.ws_rate_per_s, settings.ws_rate_burst)
    try:
        while (text := await _receive_text(websocket, settings.ws_max_frame_bytes)) is not None:
            await in_flight.acquire()  # released once the answer is written: a flood stops being read
            if not rate.admit():
                answers.put_nowait(dumps({"id": _id_of(text), "error": rate.refusal()}))
                continue
            task = asyncio.create_task(
                _predict(text, engine, cache, limits, answers, recent, flows, services.patterns, services.ttl)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except PolicyViolation as exc:
        with contextlib.suppress(*_GONE):
            await websocket.close(exc.code, str(exc))
    finally:
        for task in (*tasks, sender):
            task.cancel()
        await asyncio.gather(*tasks, sender, return_exceptions=True)


async def _predict(
    text: str,
    engine: Engine,
    cache: Cache,
    limits: Limits,
    answers: asyncio.Queue[bytes],
    recent: RecentWindows | None,
    flows: FlowStore | None = None,
    patterns: Patterns | None = None,
    ttl: AdaptiveTtl | None = None,
) -> None:
    """Answer one request frame as POST /v1/predict would (cache included); errors in the same shapes."""
    start = time.perf_counter()
    try:
        req = StreamPredictRequest.model_validate_json(text, context=limits)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        answers.put_nowait(
            dumps({"id": _id_of(text), "error": {"status": 422, "detail": error_detail(errors)}})
        )
        return
    try:
        result = await predict_one(req, engine, cache, limits, start, recent, flows, patterns, ttl)
    except UnknownFlow as exc:
        answers.put_nowait(dumps({"id": req.id, "error": {"status": 404, "detail": str(exc)}}))
        return
    except (Overloaded, EngineStopped, FlowsUnavailable) as exc:
        error = {"status": 503, "detail": str(exc), "retry_after_s": exc.retry_after_s}
        answers.put_nowait(dumps({"id": req.id, "error": error}))
        return
    except Exception:
        log.exception("prediction %r failed", req.id)
        answers.put_nowait(dumps({"id": req.id, "error": {"status": 500, "detail": "the prediction failed"}}))
        return
    answers.put_nowait(b'{"id":%s,"result":%s}' % (orjson.dumps(req.id), result))  # the result as serialized


def _id_of(text: str) -> str | int | None:
    """The ``id`` of a frame that failed validation, if it has a usable one."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    value = frame.get("id") if isinstance(frame, dict) else None
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


async def _send_answers(
    websocket: WebSocket, answers: asyncio.Queue[bytes], in_flight: asyncio.Semaphore
) -> None:
    """Write the answers as they come; each frees a slot, even when its client has gone, so that the
    receive loop, perhaps waiting for a slot, goes on to read the disconnect."""
    while True:
        answer = await answers.get()
        try:
            await websocket.send_text(answer.decode())
        except _GONE:
            pass
        finally:
            in_flight.release()
