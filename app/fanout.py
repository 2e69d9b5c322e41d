"""This process's routing subscribers: one bus subscription, fanned out to every routing WebSocket.

Each message is parsed once (its type and flow key, for the filters) and decoded once; every matching
client gets the same string in its own bounded queue, which its own sender task drains. The fan-out
never waits on a client: a slow one loses its oldest messages (counted) and nobody else notices.

Under `cpe serve` a client that is keeping up (nothing waiting in its queue, its socket's buffer not
full) skips the queue: the message is encoded as a WebSocket frame once, and the frame written to its
socket by the server's protocol (``StreamClient.push``, see app/websocket_protocol.py). Sending
through ASGI woke a task per subscriber and went through Starlette, the middleware and websockets'
encoder each time, which cost a delivery several times the server CPU and doubled the latency from
publish to receipt (``python -m scripts.bench_ws``; the README has the figures). The frames a client gets
in one turn of the event loop (a round's routing messages of its groups, a round's FlowPredictions) are
written together at the end of that turn (``flush``): one write, one system call, rather than one per
message, which on loopback also runs the receiver's side of TCP in the sender's. Order holds: a client
with anything queued, a reply included, gets the message queued behind it; frames held for the end of the
turn go out before anything queued after them. A client whose socket negotiated compression is never
pushed to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from itertools import chain
from types import TracebackType
from typing import Self

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from websockets.frames import Frame, Opcode

from app.bus import Bus
from app.bus.queue import DropOldestQueue

log = logging.getLogger("cpe.fanout")

MESSAGE_TYPES = ("RoutingPrediction", "LoadBalancingUpdate", "CircuitBreakerPrediction")
GROUP_TOPIC = "group:"  # a group's subscribers are indexed beside the flow keys under this prefix
# The scope extension where the server offers ``push(frame: bytes) -> bool`` (app/websocket_protocol.py).
PUSH_EXTENSION = "cpe.websocket.push"


class StreamClient:
    """One routing WebSocket: what it asked for, and its queue of messages waiting to be sent."""

    __slots__ = ("flow_keys", "held", "outbox", "push", "replies", "subscribed", "types")

    def __init__(self, queue_size: int, push: Callable[[bytes], bool] | None = None) -> None:
        self.push = push  # writes encoded frames at once when it can (the server's PUSH_EXTENSION)
        self.held: list[tuple[bytes, str]] = []  # (frame, text) to push at the end of this loop turn
        self.outbox: DropOldestQueue[str] = DropOldestQueue(queue_size)
        self.replies: deque[str] = deque()  # answers to the client's own frames: never dropped
        self.subscribed = False
        self.flow_keys: frozenset[str] | None = None  # hex; None = every flow
        self.types: frozenset[str] | None = None  # None = every message type

    @property
    def dropped(self) -> int:
        """Messages this client lost because it fell behind."""
        return self.outbox.dropped

    def reply(self, frame: str) -> None:
        """Queue an answer to the client's own frame: it goes out before any message still waiting."""
        self.replies.append(frame)
        self.outbox.wake()


def message_route(message: bytes) -> tuple[str, str | None, str | None]:
    """A routing message's type, its flow key as hex and its route group (None where it carries none)."""
    decoded = orjson.loads(message)
    if not isinstance(decoded, dict) or len(decoded) != 1:
        raise ValueError("a routing message is an object with exactly one key, its type")
    ((kind, body),) = decoded.items()
    key = body.get("flow_key") if isinstance(body, dict) else None
    if isinstance(key, list):  # the serde form of a Rust [u8; 32]
        key = bytes(key).hex()
    group = body.get("group_id") if isinstance(body, dict) else None
    return kind, key, group if isinstance(group, str) else None


class FanoutMetrics:
    """The routing WebSockets' collectors, on ``registry`` (a registry of their own when None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.subscribers = Gauge(
            "cpe_ws_subscribers",
            "Routing WebSocket clients of this process with a subscription.",
            registry=registry,
        )
        self.sent = Counter(
            "cpe_ws_messages_sent", "Routing messages written to WebSocket clients.", registry=registry
        )
        self.dropped = Counter(
            "cpe_ws_messages_dropped",
            "Routing messages a slow WebSocket client lost: its oldest, dropped to make room.",
            registry=registry,
        )


class RoutingFanout:
    """Fans the bus channel ``channel`` out to this process's routing WebSocket clients.

    Every routing message names the flow whose routes it is about (``flow_key``) and the route group that
    made it (``group_id``, null for POST /v1/routing/recommend). A client's ``flow_keys`` and ``groups``
    filters select the messages of those flows and of those groups (either: the union), whatever their
    type; its ``types`` filter then selects by type. A message without a flow key goes to every client.
    """

    def __init__(
        self, bus: Bus, channel: str, *, queue_size: int, registry: CollectorRegistry | None = None
    ) -> None:
        self.bus = bus
        self.channel = channel
        self.queue_size = queue_size
        self.metrics = FanoutMetrics(registry)
        self.received = 0  # bus messages fanned out
        self.malformed = 0  # bus messages that were not routing messages
        self.pushed = 0  # deliveries written at once, without the client's queue
        self._clients: set[StreamClient] = set()
        self._every_flow: set[StreamClient] = set()  # subscribed without a flow filter
        self._by_flow: dict[str, set[StreamClient]] = {}  # flow key -> clients filtering on it
        self._subscribed: set[StreamClient] = set()
        self._holding: list[StreamClient] = []  # clients with frames held for the end of the loop turn
        self._flush_due: asyncio.Handle | None = None
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe to the bus; returns once the subscription is in place."""
        ready = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(ready), name="cpe-fanout")
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task.done():
            self._task.result()  # raises what stopped it

    async def stop(self) -> None:
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush_due = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for client in self._clients:
            client.outbox.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _run(self, ready: asyncio.Event) -> None:
        async with self.bus.subscribe(self.channel) as subscription:
            ready.set()
            async for message in subscription:
                self.publish_local(message)

    # -- clients --------------------------------------------------------------------------------
    def connect(self, push: Callable[[bytes], bool] | None = None) -> StreamClient:
        """A new client, not subscribed to anything yet; ``push``: see ``StreamClient``."""
        client = StreamClient(self.queue_size, push)
        self._clients.add(client)
        return client

    def disconnect(self, client: StreamClient) -> None:
        self.unsubscribe(client)  # forgets its held frames too
        self._clients.discard(client)
        client.outbox.close()

    def subscribe(
        self,
        client: StreamClient,
        flow_keys: Iterable[str] | None,
        types: Iterable[str] | None,
        groups: Iterable[str] | None = None,
    ) -> None:
        """Send ``client`` the messages that pass its filters from now on (a new subscribe replaces them):
        those of ``flow_keys`` and of ``groups`` (both None: every flow), of ``types`` (None: every type)."""
        self._write(client)  # what the old filters selected goes out before the reply to this
        self._unindex(client)
        if flow_keys is None and groups is None:
            client.flow_keys = None
        else:  # topics: flow keys, and group ids under GROUP_TOPIC
            client.flow_keys = frozenset((*(flow_keys or ()), *(GROUP_TOPIC + g for g in groups or ())))
        client.types = None if types is None else frozenset(types)
        client.subscribed = True
        self._subscribed.add(client)
        if client.flow_keys is None:
            self._every_flow.add(client)
        else:
            for key in client.flow_keys:
                self._by_flow.setdefault(key, set()).add(client)
        self.metrics.subscribers.set(len(self._subscribed))

    def unsubscribe(self, client: StreamClient) -> None:
        """Stop sending messages to ``client``, and forget those still waiting for it."""
        self._unindex(client)
        client.subscribed = False
        client.held.clear()
        client.outbox.clear()
        self.metrics.subscribers.set(len(self._subscribed))

    def _unindex(self, client: StreamClient) -> None:
        self._subscribed.discard(client)
        self._every_flow.discard(client)
        for key in client.flow_keys or ():
            clients = self._by_flow.get(key)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del self._by_flow[key]

    @property
    def subscribers(self) -> int:
        return len(self._subscribed)

    # -- fan-out --------------------------------------------------------------------------------
    def publish_local(self, message: bytes) -> int:
        """Queue ``message`` for every matching client of this process; returns how many."""
        try:
            kind, flow_key, group_id = message_route(message)
            text = message.decode()
        except (ValueError, AttributeError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            self.malformed += 1
            log.warning("fanout: ignored a bus message that is not a routing message: %s", exc)
            return 0
        self.received += 1
        by_flow = self._by_flow
        if flow_key is None:
            targets: Iterable[StreamClient] = self._subscribed
        else:
            keyed = by_flow.get(flow_key)  # disjoint from _every_flow
            grouped = by_flow.get(GROUP_TOPIC + group_id) if group_id is not None else None
            if grouped:  # a client may filter on both the flow and the group: once each
                targets = chain(self._every_flow, grouped.union(keyed) if keyed else grouped)
            else:
                targets = self._every_flow if keyed is None else chain(self._every_flow, keyed)
        queued, dropped, _ = self.fan_out(targets, kind, message, text)
        if dropped:
            self.metrics.dropped.inc(dropped)
        return queued

    def fan_out(
        self, targets: Iterable[StreamClient], kind: str, message: bytes, text: str
    ) -> tuple[int, int, int]:
        """Hold for pushing or queue one message (``text`` is ``message`` decoded) to those of ``targets``
        whose type filter takes ``kind``: (clients that matched, messages dropped to make room, held for
        pushing at the end of this loop turn, ``flush``)."""
        queued = dropped = held = 0
        frame = b""
        for client in targets:
            if client.types is None or kind in client.types:
                queued += 1
                if client.push is not None and (client.held or (not client.outbox and not client.replies)):
                    if not frame:
                        frame = Frame(Opcode.TEXT, message).serialize(mask=False)
                    if not client.held:
                        self._hold(client)
                    client.held.append((frame, text))
                    held += 1
                elif not client.outbox.put(text):
                    dropped += 1
        return queued, dropped, held

    def _hold(self, client: StreamClient) -> None:
        self._holding.append(client)
        if self._flush_due is None:
            # with no loop running (a synchronous caller), the caller calls flush() itself
            with contextlib.suppress(RuntimeError):
                self._flush_due = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> int:
        """Write every client's held frames, each client's in one write; a client that cannot take them
        now (its buffer full, its socket closing) gets them queued instead. Returns the messages written."""
        self._flush_due = None
        clients, self._holding = self._holding, []
        return sum(self._write(client) for client in clients)

    def _write(self, client: StreamClient) -> int:
        """Push ``client``'s held frames in one write, else queue them; the messages written."""
        held = client.held
        if not held:
            return 0
        client.held = []
        assert client.push is not None
        if client.push(held[0][0] if len(held) == 1 else b"".join(frame for frame, _ in held)):
            self.pushed += len(held)
            self.metrics.sent.inc(len(held))
            return len(held)
        dropped = sum(not client.outbox.put(text) for _, text in held)
        if dropped:
            self.metrics.dropped.inc(dropped)
        return 0
