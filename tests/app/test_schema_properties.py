"""Properties of the wire schemas over any JSON a client can send: a clear refusal, never a crash.

Whatever the value, validating it as a request either succeeds or raises pydantic's ValidationError, and
that error becomes a 422 body that matches the declared ``ValidationErrors`` schema and that JSON can
carry; the decoder of prediction bodies (tests/app/wire/test_decode.py holds its finer properties) answers
the same.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from app.api.errors import error_detail
from app.routing_schemas import RouteRequest, StreamPredictRequest, SubscribeFrame
from app.schemas import BatchPredictRequest, Limits, PredictRequest, ValidationErrors
from app.wire.decode import predict_windows, windows_of
from app.wire.rules import FEATURES, MIN_TIMESTAMP_MS
from tests.app.payloads import FLOW_KEY, contexts

LIMITS = Limits(max_window=6, max_batch=3, horizons={"lstm": 8}, default_model="lstm", max_routes=3)
MODELS: list[type[BaseModel]] = [
    PredictRequest,
    BatchPredictRequest,
    RouteRequest,
    StreamPredictRequest,
    SubscribeFrame,
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),  # past int64 too
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=70),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=9),
        st.dictionaries(st.text(max_size=12), inner, max_size=6),
    ),
    max_leaves=40,
)
# dicts shaped like the requests, with any values in their fields: they get past the top level
field_names = st.sampled_from(
    ["flow_key", "contexts", "horizon", "model", "requests", "routes", "objective", "route_id", "id", "op"]
)
# a context's features, by position or by name, each any number near or past the ends of its range
near_features = st.one_of(
    st.lists(st.one_of(st.floats(-2.0, 2.0), scalars), min_size=7, max_size=9),
    st.dictionaries(
        st.sampled_from([f.name for f in FEATURES] + ["latency", ""]),
        st.one_of(st.floats(-2.0, 2.0), scalars),
        min_size=7,
        max_size=9,
    ),
)
near_contexts = st.lists(
    st.fixed_dictionaries(
        {"timestamp": st.integers(MIN_TIMESTAMP_MS - 2, MIN_TIMESTAMP_MS + 2), "features": near_features}
    ),
    min_size=1,
    max_size=3,
)
near_requests = st.one_of(
    st.dictionaries(field_names, json_values, max_size=5),
    st.builds(
        lambda fields: {"flow_key": FLOW_KEY, "contexts": contexts(3)} | fields,
        st.dictionaries(field_names, json_values, max_size=3),
    ),
    st.builds(lambda window: {"flow_key": FLOW_KEY, "contexts": window}, near_contexts),
)


def _refusal_is_clear(model: type[BaseModel], body: bytes) -> None:
    try:
        model.model_validate_json(body, context=LIMITS)
    except ValidationError as exc:
        detail = error_detail({**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False))
        assert detail, "a refusal names at least one field"
        ValidationErrors.model_validate_json(orjson.dumps({"detail": detail}))  # as the 422 declares it


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(value=st.one_of(json_values, near_requests))
def test_any_json_is_accepted_or_refused_with_a_declared_422(value: Any) -> None:
    body = json.dumps(value).encode()  # not orjson: it cannot write integers past 64 bits
    for model in MODELS:
        _refusal_is_clear(model, body)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(value=st.one_of(json_values, near_requests), batch=st.booleans())
def test_the_fast_parser_and_pydantic_agree_on_any_json(value: Any, batch: bool) -> None:
    body = json.dumps(value).encode()  # not orjson: it cannot write integers past 64 bits
    model = BatchPredictRequest if batch else PredictRequest
    try:
        expected = model.model_validate_json(body, context=LIMITS)
    except ValidationError as exc:
        try:
            predict_windows(body, LIMITS, batch=batch)
        except ValidationError as fast_exc:
            assert fast_exc.errors() == exc.errors()  # the same fields, the same messages
        else:
            raise AssertionError("the fast path accepted what pydantic refuses") from None
        return
    requests = expected.requests if isinstance(expected, BatchPredictRequest) else [expected]
    fast, slow = predict_windows(body, LIMITS, batch=batch), windows_of(requests)
    assert [(w.flow_key, w.model, w.horizon, w.pattern_ids) for w in fast] == [
        (w.flow_key, w.model, w.horizon, w.pattern_ids) for w in slow
    ]
    for a, b in zip(fast, slow, strict=True):
        assert a.timestamps.tobytes() == b.timestamps.tobytes()
        assert a.features.tobytes() == b.features.tobytes()


@given(key=st.binary(min_size=32, max_size=32))
def test_both_forms_of_a_flow_key_are_the_same_key(key: bytes) -> None:
    as_hex = PredictRequest.model_validate({"flow_key": key.hex(), "contexts": contexts(1)})
    as_list = PredictRequest.model_validate({"flow_key": list(key), "contexts": contexts(1)})
    assert as_hex.flow_key == as_list.flow_key == key.hex()
