"""The WebSocket streams as async iterators (the protocol: ``GET /asyncapi.json``, README "WebSocket").

``Subscription`` runs /v1/stream/routing and /v1/stream/predictions: opened, it has subscribed (the
server's ``subscribed`` reply read); iterated, it yields the messages, skipping heartbeats and replies
(their ``dropped`` count kept in ``dropped``); an error frame raises ``CPEError``. ``ObserveStream`` sends
frames of observations on /v1/stream/observe and yields their acks in order; ``PredictStream`` has many
predictions in flight on /v1/stream/predict, each awaited by itself. Made by ``AsyncClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import orjson
from websockets.asyncio.client import ClientConnection, connect

from app.client.calls import FlowKeyIn, window
from app.client.errors import CPEError
from app.schemas import ContextVector, PredictionResult
from app.stream_schemas import ObserveAck, RoutingMessage, Subscribed, routing_message

M = TypeVar("M")


class _Socket:
    """One WebSocket of a stream, opened and closed by ``async with``."""

    def __init__(self, url: str, headers: Mapping[str, str], where: str) -> None:
        self.url, self.headers, self.where = url, dict(headers), where
        self._ws: ClientConnection | None = None

    @property
    def ws(self) -> ClientConnection:
        assert self._ws is not None, f"{self.where} is not open: use it in `async with`"
        return self._ws

    async def open(self) -> None:
        self._ws = await connect(self.url, additional_headers=self.headers, max_size=None)

    async def send(self, frame: Any) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def receive(self) -> dict[str, Any]:
        frame = orjson.loads(await self.ws.recv())
        if not isinstance(frame, dict):
            raise CPEError(500, f"a frame that is not a JSON object: {frame!r}", where=self.where)
        return frame

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()


class Subscription(Generic[M]):
    """A subscription to routing messages or to FlowPredictions; ``async for`` yields them as they come."""

    def __init__(self, socket: _Socket, frame: dict[str, Any], read: Callable[[dict[str, Any]], M | None]):
        self._socket, self._frame, self._read = socket, frame, read
        self.subscribed: Subscribed | None = None  # the server's reply: the filters in force
        self.dropped = 0  # messages this socket lost for being slow (from heartbeats and pongs)

    async def __aenter__(self) -> Self:
        await self._socket.open()
        try:
            await self._socket.send(self._frame)
            reply = await self._frame_read()
            while reply.get("op") is None:  # nothing comes before the reply; a guard all the same
                reply = await self._frame_read()
            self.subscribed = Subscribed.model_validate(reply)
        except BaseException:
            await self._socket.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._socket.close()

    async def _frame_read(self) -> dict[str, Any]:
        """The next frame that is a message or a reply; heartbeats and pongs are counted, errors raised."""
        while True:
            frame = await self._socket.receive()
            op = frame.get("op")
            if op == "error":
                raise CPEError.of_frame(frame, self._socket.where)
            if op in ("heartbeat", "pong"):
                self.dropped = int(frame.get("dropped", self.dropped))
                continue
            return frame

    async def ping(self) -> None:
        """Ask for a pong: the iteration reads it and updates ``dropped``."""
        await self._socket.send({"op": "ping"})

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> M:
        while True:
            frame = await self._frame_read()
            if frame.get("op") is not None:  # a reply (subscribed, unsubscribed) to a frame sent meanwhile
                continue
            message = self._read(frame)
            if message is not None:
                return message


def routing(
    url: str,
    headers: Mapping[str, str],
    flow_keys: Sequence[str] | None,
    types: Sequence[str] | None,
    **more: Any,
) -> Subscription[RoutingMessage]:
    frame: dict[str, Any] = {"op": "subscribe", "flow_keys": _list(flow_keys), "types": _list(types)}
    frame |= {k: list(v) for k, v in more.items() if v is not None}  # e.g. groups, where the server has them
    return Subscription(_Socket(url, headers, "/v1/stream/routing"), frame, _routing_message)


def _routing_message(frame: dict[str, Any]) -> RoutingMessage | None:
    try:
        return routing_message(frame)
    except (KeyError, ValueError):  # a message type this client does not know: serde would skip it too
        return None


def predictions(
    url: str, headers: Mapping[str, str], flow_keys: Sequence[str] | None, groups: Sequence[str] | None
) -> Subscription[PredictionResult]:
    frame = {"op": "subscribe", "flow_keys": _list(flow_keys), "groups": _list(groups)}
    return Subscription(_Socket(url, headers, "/v1/stream/predictions"), frame, _flow_prediction)


def _flow_prediction(frame: dict[str, Any]) -> PredictionResult | None:
    body = frame.get("FlowPrediction")
    return None if body is None else PredictionResult.model_validate(body)


def _list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)


class ObserveStream:
    """/v1/stream/observe: ``send`` a frame of observations, ``async for`` its acks, in order (or
    ``observe``: one frame and its ack). A frame refused whole raises ``CPEError`` (its ``frame`` number in
    ``where``); the socket stays open."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self._socket = _Socket(url, headers, "/v1/stream/observe")
        self.sent = 0  # frames sent
        self.acked = 0  # frames answered

    async def __aenter__(self) -> Self:
        await self._socket.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._socket.close()

    async def send(self, observations: Sequence[Mapping[str, Any]]) -> int:
        """Send one frame; its number on this socket (from 1), which its ack carries."""
        await self._socket.send(list(observations))
        self.sent += 1
        return self.sent

    async def observe(self, observations: Sequence[Mapping[str, Any]]) -> ObserveAck:
        """Send one frame and wait for its ack (the acks of frames sent before it are read past)."""
        frame = await self.send(observations)
        while True:
            ack = await anext(self)
            if ack.frame == frame:
                return ack

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ObserveAck:
        if self.acked >= self.sent:
            raise StopAsyncIteration  # every frame sent is answered
        frame = await self._socket.receive()
        self.acked += 1
        if frame.get("op") == "error":
            raise CPEError.of_frame(frame, f"/v1/stream/observe frame {frame.get('frame')}")
        return ObserveAck.model_validate(frame)


class PredictStream:
    """/v1/stream/predict: ``await predict(...)`` from any number of tasks at once; each request carries an
    id and its answer, whenever it comes, resolves it (a result, or ``CPEError`` with the status POST
    /v1/predict would answer). Up to CPE_WS_QUEUE_SIZE are in flight at the server; the rest wait there."""

    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        self._socket = _Socket(url, headers, "/v1/stream/predict")
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[PredictionResult]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._socket.open()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._socket.close()

    async def predict(
        self,
        flow_key: FlowKeyIn,
        contexts: Sequence[ContextVector] | None = None,
        *,
        horizon: int = 1,
        model: str | None = None,
    ) -> PredictionResult:
        """A forecast of one flow, as ``Client.predict``, over the socket."""
        if self._reader is None or self._reader.done():
            raise RuntimeError(f"{self._socket.where} is not open: use it in `async with`")
        request_id = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            request = window(flow_key, contexts, horizon=horizon, model=model)
            await self._socket.send({"id": request_id, **request})
            return await answer
        finally:
            self._waiting.pop(request_id, None)

    async def _read(self) -> None:
        try:
            while True:
                frame = await self._socket.receive()
                request_id = frame.get("id")  # null for a frame the server could not read: not one of ours
                answer = self._waiting.get(request_id) if isinstance(request_id, int) else None
                if answer is None or answer.done():
                    continue  # its caller gave up waiting
                if "error" in frame:
                    answer.set_exception(CPEError.of_frame(frame["error"], self._socket.where))
                else:
                    answer.set_result(PredictionResult.model_validate(frame["result"]))
        except Exception as exc:  # the socket closed: every caller waiting learns it
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(exc)
