"""The routing fan-out on its own: filters, both flow key forms, bad bus messages, clean-up, slow clients."""

from __future__ import annotations

import asyncio
import json

from websockets.frames import Frame, Opcode

from app.bus import Bus
from app.fanout import RoutingFanout

KEY_A, KEY_B = "ab" * 32, "cd" * 32


def _prediction(flow_key: str | list[int]) -> bytes:
    body = {"flow_key": flow_key, "predicted_context": [], "confidence": 1.0, "time_horizon_ms": 0}
    return json.dumps({"RoutingPrediction": {**body, "routing_suggestions": []}}).encode()


UPDATE = json.dumps(
    {"LoadBalancingUpdate": {"service_weights": {}, "predicted_loads": {}, "adaptation_confidence": 1}}
).encode()


def _fanout() -> RoutingFanout:
    return RoutingFanout(Bus("memory://"), "routing", queue_size=3)


def test_filters_select_by_flow_key_in_either_form_and_by_type() -> None:
    fanout = _fanout()
    everything, only_a, a_predictions, updates, idle = (fanout.connect() for _ in range(5))
    fanout.subscribe(everything, None, None)
    fanout.subscribe(only_a, [KEY_A], None)
    fanout.subscribe(a_predictions, [KEY_A], ["RoutingPrediction"])
    fanout.subscribe(updates, None, ["LoadBalancingUpdate"])
    assert fanout.publish_local(_prediction(list(bytes.fromhex(KEY_A)))) == 3  # the Rust [u8; 32] form
    assert fanout.publish_local(_prediction(KEY_B)) == 1
    assert fanout.publish_local(UPDATE) == 3  # one that names no flow: every client whose types take it
    assert len(everything.outbox) == 3 and len(only_a.outbox) == 2 and len(a_predictions.outbox) == 1
    assert len(updates.outbox) == 1 and len(idle.outbox) == 0  # connected, never subscribed
    assert updates.outbox.get_nowait() == UPDATE.decode()  # the bytes as published, decoded once


def _attributed(kind: str, flow_key: str, group_id: str | None) -> bytes:
    body = {"flow_key": flow_key, "group_id": group_id, "timestamp": 1, "model_version": "v"}
    return json.dumps({kind: body}).encode()


def test_flow_and_group_filters_apply_to_every_message_type() -> None:
    fanout = _fanout()
    only_a, only_g, a_and_g, everything = (fanout.connect() for _ in range(4))
    fanout.subscribe(only_a, [KEY_A], None)
    fanout.subscribe(only_g, None, None, ["edge-1"])
    fanout.subscribe(a_and_g, [KEY_A], None, ["edge-1"])
    fanout.subscribe(everything, None, None)
    for kind in ("RoutingPrediction", "LoadBalancingUpdate", "CircuitBreakerPrediction"):
        # flow B's messages of another group reach neither flow A's nor edge-1's subscribers
        assert fanout.publish_local(_attributed(kind, KEY_B, "edge-2")) == 1, kind
        assert fanout.publish_local(_attributed(kind, KEY_B, None)) == 1, kind
        assert fanout.publish_local(_attributed(kind, KEY_A, None)) == 3, kind
        assert fanout.publish_local(_attributed(kind, KEY_B, "edge-1")) == 3, kind
        assert fanout.publish_local(_attributed(kind, KEY_A, "edge-1")) == 4, kind  # a_and_g gets it once
    assert len(only_a.outbox) == 3  # the queue holds 3: it saw 6 (two per type), the oldest dropped
    assert only_a.dropped == 3 and only_g.dropped == 3 and a_and_g.dropped == 6


def test_a_new_subscribe_replaces_the_filters_and_unsubscribe_forgets_the_queue() -> None:
    fanout = _fanout()
    client = fanout.connect()
    fanout.subscribe(client, [KEY_A], None)
    fanout.subscribe(client, [KEY_B], None)
    assert fanout.publish_local(_prediction(KEY_A)) == 0
    assert fanout.publish_local(_prediction(KEY_B)) == 1
    fanout.unsubscribe(client)
    assert len(client.outbox) == 0 and fanout.subscribers == 0
    assert fanout.publish_local(_prediction(KEY_B)) == 0
    fanout.subscribe(client, None, None)
    fanout.disconnect(client)
    assert fanout.subscribers == 0 and fanout.publish_local(UPDATE) == 0


def test_a_slow_client_keeps_its_newest_messages_and_counts_the_rest() -> None:
    fanout = _fanout()
    slow = fanout.connect()
    fanout.subscribe(slow, None, None)
    messages = [_prediction(format(i, "064x")) for i in range(5)]
    for message in messages:
        fanout.publish_local(message)
    assert slow.dropped == 2
    assert [slow.outbox.get_nowait() for _ in range(3)] == [m.decode() for m in messages[2:]]


def test_messages_that_are_not_routing_messages_are_counted_and_skipped() -> None:
    fanout = _fanout()
    client = fanout.connect()
    fanout.subscribe(client, None, None)
    for junk in (b"\xff\xfe", b"not json", b"[1, 2]", b'{"A": 1, "B": 2}', _prediction([999] * 32)):
        assert fanout.publish_local(junk) == 0
    assert fanout.malformed == 5 and fanout.received == 0
    assert fanout.publish_local(UPDATE) == 1


class Socket:
    """A client's push: records the frames written, or refuses (a full buffer, a closing socket)."""

    def __init__(self, accepts: bool = True) -> None:
        self.accepts = accepts
        self.frames: list[bytes] = []

    def __call__(self, frame: bytes) -> bool:
        if self.accepts:
            self.frames.append(frame)
        return self.accepts


def test_a_client_keeping_up_gets_each_message_pushed_as_one_encoded_frame() -> None:
    fanout = _fanout()
    socket = Socket()
    client = fanout.connect(socket)
    fanout.subscribe(client, None, None)
    message = _prediction(KEY_A)
    assert fanout.publish_local(message) == 1
    assert socket.frames == [] and fanout.pushed == 0  # held for the end of the loop's turn
    assert fanout.flush() == 1
    assert len(client.outbox) == 0 and fanout.pushed == 1
    # an unmasked final text frame: FIN + opcode 1, a 16-bit length (the message is over 125 bytes)
    [frame] = socket.frames
    assert frame[:2] == b"\x81\x7e" and int.from_bytes(frame[2:4], "big") == len(message)
    assert frame[4:] == message


def test_order_holds_a_message_is_queued_behind_what_waits_and_when_the_push_is_refused() -> None:
    fanout = _fanout()
    busy, refused = Socket(), Socket(accepts=False)
    behind, full = fanout.connect(busy), fanout.connect(refused)
    fanout.subscribe(behind, None, None)
    fanout.subscribe(full, None, None)
    behind.reply('{"op":"subscribed"}')  # a reply the sender has not written yet goes first
    first, second = _prediction(KEY_A), _prediction(KEY_B)
    assert fanout.publish_local(first) == 2
    fanout.flush()
    assert busy.frames == [] and [behind.outbox.get_nowait()] == [first.decode()]
    assert full.outbox.get_nowait() == first.decode() and fanout.pushed == 0
    behind.replies.clear()  # the sender wrote the reply and the queue is empty: pushes resume
    assert fanout.publish_local(second) == 2
    fanout.flush()
    assert busy.frames[0].endswith(second) and fanout.pushed == 1
    assert full.outbox.get_nowait() == second.decode()  # refused again: queued


async def test_the_frames_of_one_loop_turn_go_out_in_one_write_in_order() -> None:
    fanout = _fanout()
    socket = Socket()
    client = fanout.connect(socket)
    fanout.subscribe(client, None, None)
    messages = [_prediction(KEY_A), _prediction(KEY_B), UPDATE]
    for message in messages:
        assert fanout.publish_local(message) == 1
    assert socket.frames == []
    await asyncio.sleep(0)  # the end of this turn of the event loop
    [written] = socket.frames  # one write of three frames, in order
    assert written == b"".join(Frame(Opcode.TEXT, m).serialize(mask=False) for m in messages)
    assert fanout.pushed == 3 and len(client.outbox) == 0
    # unsubscribing forgets what was held, as what was queued
    fanout.publish_local(messages[0])
    fanout.unsubscribe(client)
    await asyncio.sleep(0)
    assert len(socket.frames) == 1 and fanout.pushed == 3
