"""The C-speed reader of observe bodies agrees with pydantic: on generated bodies, valid and spoiled,
it answers the same contexts, or None (and pydantic decides)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.flows import FlowContext
from app.ingest.adapters import adapt
from app.ingest.fastread import read_body
from app.ingest.observations import ObserveLimits, ObserveRequest

T0 = 1_767_225_600_000
LIMITS = ObserveLimits(max_batch=20)

value = st.one_of(
    st.none(),
    st.floats(-2, 2000, allow_nan=False, allow_infinity=False),
    st.integers(-3, 3000),
    st.booleans(),
    st.just("1.5"),
)
flow_key = st.one_of(st.just("ab" * 32), st.just("AB" * 32), st.just(list(range(32))), st.just("x"))
timestamp = st.one_of(st.integers(T0, T0 + 10**6), st.integers(0, 2 * 10**9), st.just(1.5e12))
context = st.fixed_dictionaries(
    {"flow_key": flow_key, "timestamp": timestamp, "features": st.lists(value, min_size=7, max_size=9)},
    optional={"route_id": st.one_of(st.none(), st.text(max_size=3)), "pattern_id": st.text(max_size=3)},
)
transport = st.fixed_dictionaries(
    {"flow_key": flow_key, "timestamp": timestamp},
    optional={"average_latency_ms": value, "error_rate": value, "connection_count": value, "other": value},
)
conditions = st.fixed_dictionaries(
    {"flow_key": flow_key, "timestamp": timestamp},
    optional={"rtt_ms": value, "packet_loss": value, "bandwidth_estimate": value, "throughput_mbps": value},
)
observation = st.one_of(
    context.map(lambda c: {"Context": c}),
    transport.map(lambda c: {"TransportMetrics": c}),
    conditions.map(lambda c: {"NetworkConditions": c}),
    st.just(
        {
            "SimilarityResult": {
                "flow_key": "ab" * 32,
                "similarity_score": 1,
                "pattern_id": "p",
                "confidence": 1,
            }
        }
    ),
    st.just({"Context": {}, "TransportMetrics": {}}),
)


def _same(fast: list[Any], slow: list[Any]) -> bool:
    if len(fast) != len(slow):
        return False
    for a, b in zip(fast, slow, strict=True):
        if isinstance(a, FlowContext) != isinstance(b, FlowContext):
            return False
        if isinstance(a, FlowContext):
            assert isinstance(b, FlowContext)
            if (a.flow_key, a.timestamp, a.route_id, a.pattern_id) != (
                b.flow_key,
                b.timestamp,
                b.route_id,
                b.pattern_id,
            ):
                return False
            if not np.array_equal(a.features, b.features, equal_nan=True):
                return False
    return True


@settings(max_examples=400, deadline=None)
@given(st.lists(observation, min_size=0, max_size=22))
def test_the_fast_reader_answers_what_pydantic_answers_or_leaves_it_to_pydantic(
    observations: list[Any],
) -> None:
    body = json.dumps({"observations": observations})
    fast = read_body(body, LIMITS.max_batch)
    try:
        slow = adapt(ObserveRequest.model_validate_json(body, context=LIMITS).observations, 1000)
    except ValidationError:
        assert fast is None, "the fast reader took a body that pydantic refuses"
        return
    if fast is not None:
        whole = fast.as_items()
        assert _same(whole.items, slow.items), (whole.items, slow.items)
        assert whole.weights == slow.weights


def test_nan_is_left_to_pydantic() -> None:
    body = json.dumps(
        {"observations": [{"Context": {"flow_key": "ab" * 32, "timestamp": T0, "features": [1.0] * 8}}]}
    )
    assert read_body(body, 10) is not None
    assert read_body(body.replace("[1.0,", "[NaN,", 1), 10) is None
    assert not math.isnan(read_body(body, 10).as_items().items[0].features[0])  # type: ignore[union-attr]
