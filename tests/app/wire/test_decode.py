"""The fast path of prediction bodies answers what pydantic answers, or leaves the body to it."""

from __future__ import annotations

import copy
import gc
import json
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.schemas import BatchPredictRequest, Limits, PredictionResult, PredictRequest
from app.window import Window
from app.wire import decode
from app.wire.decode import fast_windows, predict_windows, windows_of
from app.wire.rules import FEATURES, MAX_FEATURE, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS
from tests.app.payloads import FLOW_KEY, contexts, make_settings, predict_body
from tools.bench import concrete, make_requests

# small limits, so that generated bodies reach them
LIMITS = Limits(max_window=6, max_batch=4, horizons={"lstm": 8, "hybrid": 4}, default_model="lstm")
_SETTINGS = make_settings()
LIMITS_OF_APP = Limits(
    max_window=_SETTINGS.max_window, max_batch=_SETTINGS.max_batch, horizons={"lstm": 8}, default_model="lstm"
)


def _pydantic(body: str | bytes, batch: bool) -> list[Window] | ValidationError:
    """What the handlers got before the fast path: pydantic's requests, then their arrays."""
    try:
        if batch:
            return windows_of(BatchPredictRequest.model_validate_json(body, context=LIMITS).requests)
        return windows_of([PredictRequest.model_validate_json(body, context=LIMITS)])
    except ValidationError as exc:
        return exc


def _assert_same(fast: list[Window], slow: list[Window]) -> None:
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        for field in ("flow_key", "model", "horizon", "pattern_ids"):
            assert getattr(a, field) == getattr(b, field), field
        for x, y in ((a.timestamps, b.timestamps), (a.features, b.features)):
            assert (x.dtype, x.shape) == (y.dtype, y.shape)
            assert x.tobytes() == y.tobytes()  # bit for bit: -0.0 is not 0.0, and NaN is no NaN


def _without_c(body: str | bytes, batch: bool) -> list[Window] | None:
    """``fast_windows`` by msgspec alone, as without the C reader."""
    c_reader, decode._json_reader = decode._json_reader, None
    try:
        return fast_windows(body, LIMITS, batch=batch)
    finally:
        decode._json_reader = c_reader


def _assert_same_or_none(a: list[Window] | None, b: list[Window] | None) -> None:
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        _assert_same(a, b)


def _check(body: str | bytes, batch: bool) -> list[Window] | None:
    """The property: the fast path answers pydantic's windows or None; None whenever pydantic refuses."""
    expected = _pydantic(body, batch)
    fast = fast_windows(body, LIMITS, batch=batch)
    _assert_same_or_none(fast, _without_c(body, batch))  # the C reader only ever saves time
    if isinstance(expected, ValidationError):
        assert fast is None, f"accepted what pydantic refuses: {expected}"
        with pytest.raises(ValidationError) as raised:
            predict_windows(body, LIMITS, batch=batch)
        assert repr(raised.value.errors()) == repr(expected.errors())  # repr: NaN inputs compare equal
    elif fast is not None:
        _assert_same(fast, expected)
    return fast


# -- generated bodies ------------------------------------------------------------------------------

# each feature within its range, its ends included; -0.0 and subnormals too
features = st.tuples(
    *(
        st.one_of(
            st.floats(min_value=f.low, max_value=f.high),
            st.integers(int(f.low), int(f.high)),
            st.sampled_from([f.low, f.high, -0.0]),
            st.booleans(),
        )
        for f in FEATURES
    )
).map(list)
metadata = st.dictionaries(  # valid: keys of up to 64 characters (the bounds are tested below)
    st.text(max_size=64),
    st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers()),
    max_size=3,
)
pattern_id = st.one_of(st.none(), st.text(min_size=1, max_size=128))  # valid; the bounds: below


@st.composite
def windows(draw: st.DrawFn) -> list[dict[str, Any]]:
    stamp = st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS)
    stamps = sorted(draw(st.lists(stamp, min_size=1, max_size=LIMITS.max_window)))
    shape = draw(st.sampled_from(["lean", "full", "mixed"]))  # which optional keys the contexts carry
    out = []
    for t in stamps:
        context: dict[str, Any] = {"timestamp": t, "features": draw(features)}
        if shape == "full" or (shape == "mixed" and draw(st.booleans())):
            context["metadata"] = draw(st.one_of(st.just({}), metadata))
        if shape == "full" or (shape == "mixed" and draw(st.booleans())):
            context["pattern_id"] = draw(pattern_id)
        out.append(context)
    return out


flow_keys = st.one_of(
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.lists(st.integers(0, 255), min_size=32, max_size=32),
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    body = {"flow_key": draw(flow_keys), "contexts": draw(windows())}
    if draw(st.booleans()):
        body["model"] = draw(st.sampled_from([None, "lstm", "hybrid"]))
    if draw(st.booleans()):
        most = LIMITS.horizons[body.get("model") or LIMITS.default_model]
        body["horizon"] = draw(st.integers(1, most))
    return body


batches = st.fixed_dictionaries({"requests": st.lists(requests(), min_size=1, max_size=LIMITS.max_batch)})

# What a mutation may put in place of any value: each is wrong somewhere, some are right elsewhere
ODD_VALUES = [
    True, False, None, "1.5", "7", "x", "", 0, -1, 1, 1.0, 1.5, -0.0, 1e300, -1e300, 4, 5, 8, 9,
    MAX_FEATURE, -MAX_FEATURE, MAX_FEATURE * (1 + 1e-15), MAX_TIMESTAMP_MS, MAX_TIMESTAMP_MS + 1,
    MIN_TIMESTAMP_MS, MIN_TIMESTAMP_MS - 1, 1_700_000_000, -1e-300, 1 + 1e-15, 7.0, 3.0,
    {f.name: 0.5 for f in FEATURES}, {f.name: 0.5 for f in FEATURES[:-1]}, {"latency": 1.0},
    2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**30,
    float("nan"), float("inf"), float("-inf"), [], {}, [1.0] * 7, [1.0] * 9, [[1.0] * 8],
    "ab" * 32, "AB" * 32, "g" * 64, [1] * 31, [256] + [0] * 31, [True] * 32, [1.0] * 32,
    "lstm", "hybrid", "gru", "\ud800", "p" * 128, "p" * 129, {"k" * 64: 1}, {str(i): 1 for i in range(33)},
    {"timestamp": MIN_TIMESTAMP_MS, "features": [1.0] * 8}, {"rtt": 1.0}, {"k" * 65: 1.0},
]  # fmt: skip


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*path, i))
    return out


@st.composite
def spoiled(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid body with one to three near misses: odd values, keys gone or added, widths, order, nesting."""
    body = copy.deepcopy(draw(bodies))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(body)[1:]
        if not paths:
            continue
        # a depth first: the few fields near the top are as likely to be spoiled as the many features
        depth = draw(st.sampled_from(sorted({len(p) for p in paths})))
        path = draw(st.sampled_from([p for p in paths if len(p) == depth]))
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        key, value = path[-1], parent[path[-1]]
        how = draw(st.sampled_from(["odd", "odd", "drop", "extra", "longer", "shorter", "reverse", "nest"]))
        if how == "odd":
            parent[key] = copy.deepcopy(draw(st.sampled_from(ODD_VALUES)))
        elif how == "drop":
            del parent[key]
        elif how == "extra" and isinstance(value, dict):
            value[draw(st.sampled_from(["extra", "timestamp", "metadata", "pattern_id", "horizon"]))] = 1
        elif how == "longer" and isinstance(value, list) and value:
            value.append(copy.deepcopy(value[-1]))
        elif how == "shorter" and isinstance(value, list) and value:
            value.pop()
        elif how == "reverse" and isinstance(value, list):
            value.reverse()  # a window's timestamps decrease
        elif how == "nest":
            parent[key] = draw(st.sampled_from([[value], {"requests": value}, {"contexts": value}]))
    return body


def _text(body: Any, compact: bool) -> str:
    # json.dumps writes NaN and Infinity tokens, which pydantic reads and orjson refuses
    return json.dumps(body, separators=(",", ":") if compact else None)


PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@PROPERTY
@given(body=requests(), compact=st.booleans())
def test_a_valid_predict_body_takes_the_fast_path_to_pydantics_answer(body: Any, compact: bool) -> None:
    assert _check(_text(body, compact), batch=False) is not None


@pytest.mark.slow
@PROPERTY
@given(body=batches, compact=st.booleans())
def test_a_valid_batch_body_takes_the_fast_path_to_pydantics_answer(body: Any, compact: bool) -> None:
    assert _check(_text(body, compact), batch=True) is not None


@pytest.mark.slow
@PROPERTY
@given(body=spoiled(requests()), compact=st.booleans())
def test_a_spoiled_predict_body_gets_pydantics_answer_or_its_error(body: Any, compact: bool) -> None:
    _check(_text(body, compact), batch=False)


@pytest.mark.slow
@PROPERTY
@given(body=spoiled(batches), compact=st.booleans())
def test_a_spoiled_batch_body_gets_pydantics_answer_or_its_error(body: Any, compact: bool) -> None:
    _check(_text(body, compact), batch=True)


@PROPERTY
@given(text=st.text(alphabet='{}[]",:0123456789.eE+-truefalsnl \\u', max_size=60), batch=st.booleans())
def test_any_text_gets_pydantics_answer_or_its_error(text: str, batch: bool) -> None:
    _check(text, batch)


# -- cases worth naming ----------------------------------------------------------------------------


def test_the_benchmarks_bodies_take_the_fast_path() -> None:
    limits = Limits(max_window=256, max_batch=512, horizons={"lstm": 8}, default_model="lstm")
    body = concrete(orjson.dumps({"requests": make_requests(64, 32, seed=0)}))
    fast = fast_windows(body, limits, batch=True)
    assert fast is not None
    _assert_same(fast, windows_of(BatchPredictRequest.model_validate_json(body, context=limits).requests))


@pytest.mark.parametrize(
    "text",
    [
        '{"flow_key": "%s", "contexts": [{"timestamp": 1.7e12, "features": [1, 2, 0, 4, 0, 0, 7, 8]}]}',
        '{"flow_key": "%s", "contexts": [{"timestamp": T, "features": [1, 2, 0, 4, 0, 0, 7, "8"]}]}',
        '{"flow_key": "%s", "contexts": [{"timestamp": "T", "features": [1, 2, 0, 4, 0, 0, 7, 8]}]}',
        '{"flow_key": "%s", "contexts": [{"timestamp": T, "features": [1, 2, 0, 4, 0, 0, 7, 8], "x": 1}]}',
        '{"flow_key": "%s", "contexts": [{"timestamp": T, "features": [1, 2, 0, 4, 0, 0, 7, 8]}], "x": 1}',
        '{"flow_key": "%s", "contexts": [{"timestamp": T, "features": [1, 2, 0, 4, 0, 0, 7, 8], '
        '"metadata": {"rtt": true}}]}',
        '{"flow_key": "%s", "contexts": [{"timestamp": T, "features": {"latency_ms": 1, "jitter_ms": 2, '
        '"loss_rate": 0, "throughput_mbps": 4, "utilization": 0, "error_rate": 0, "connections": 7, '
        '"queue_depth": 8}}]}',
    ],
    ids=[
        "float timestamp",
        "string feature",
        "string timestamp",
        "extra context key",
        "extra key",
        "bool",
        "named features",
    ],
)
def test_what_pydantic_accepts_laxly_is_left_to_it(text: str) -> None:
    body = (text % FLOW_KEY).replace("T", str(MIN_TIMESTAMP_MS))
    assert fast_windows(body, LIMITS, batch=False) is None
    [window] = predict_windows(body, LIMITS, batch=False)
    _assert_same([window], _pydantic(body, batch=False))  # type: ignore[arg-type]


def test_ints_and_bools_are_features_as_pydantic_makes_them() -> None:
    body = json.dumps(
        {
            "flow_key": FLOW_KEY,
            "contexts": [{"timestamp": MIN_TIMESTAMP_MS, "features": [1, 0, True, False, -0, 1, 3, 4]}],
        }
    )
    [window] = _check(body, batch=False) or []
    assert window.features.tolist() == [[1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 3.0, 4.0]]


def test_duplicate_keys_count_once_the_last_as_in_pydantic() -> None:
    t = MIN_TIMESTAMP_MS
    context = f'{{"timestamp": {t + 5}, "timestamp": {t}, "features": [1, 2, 0, 4, 0, 0, 7, 8]}}'
    body = (
        f'{{"flow_key": "x", "flow_key": "{FLOW_KEY}", "horizon": 99, "horizon": 2, "contexts": [{context}]}}'
    )
    [window] = _check(body, batch=False) or []
    assert (window.horizon, window.timestamps.tolist()) == (2, [t])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_token_is_pydantics_error_naming_the_feature(value: float) -> None:
    body = predict_body(4)
    body["contexts"][2]["features"][1] = value  # json.dumps writes NaN, Infinity, -Infinity
    text = json.dumps(body)
    assert fast_windows(text, LIMITS, batch=False) is None  # orjson refuses the token
    with pytest.raises(ValidationError) as raised:
        predict_windows(text, LIMITS, batch=False)
    assert [e["loc"] for e in raised.value.errors()] == [("contexts", 2, "features", 1)]


def test_windows_are_views_of_one_array_in_request_order() -> None:
    body = json.dumps({"requests": [predict_body(n, flow_key=f"{n:064x}") for n in (1, 3, 2)]})
    fast = _check(body, batch=True)
    assert fast is not None
    assert [len(w.timestamps) for w in fast] == [1, 3, 2]
    assert [w.flow_key for w in fast] == [f"{n:064x}" for n in (1, 3, 2)]
    assert all(w.features.flags.c_contiguous and w.features.base is fast[0].features.base for w in fast)


def test_timestamps_only_need_order_within_a_window() -> None:
    first, second = contexts(3), contexts(2)
    second[0]["timestamp"] = MIN_TIMESTAMP_MS  # before the end of the window ahead of it: fine
    batch = {"requests": [{"flow_key": FLOW_KEY, "contexts": window} for window in (first, second)]}
    assert _check(json.dumps(batch), batch=True) is not None
    first[2]["timestamp"] = first[1]["timestamp"] - 1  # now a window goes back in time
    assert _check(json.dumps(batch), batch=True) is None


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_left_as_it_was(enabled: bool) -> None:
    body = json.dumps(predict_body(4))
    (gc.enable if enabled else gc.disable)()
    try:
        assert fast_windows(body, LIMITS, batch=False) is not None
        assert fast_windows(b"not json", LIMITS, batch=False) is None
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


def _with(path: tuple[Any, ...], value: Any) -> str:
    body = predict_body(3)
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(body)


EDGES = [  # (where, the last value allowed, the first one refused)
    (("horizon",), 8, 9),
    (("model",), "hybrid", "gru"),
    (("contexts", 0, "timestamp"), MIN_TIMESTAMP_MS, MIN_TIMESTAMP_MS - 1),
    (("contexts", 2, "timestamp"), MAX_TIMESTAMP_MS, MAX_TIMESTAMP_MS + 1),
    (("contexts", 1, "features", 3), MAX_FEATURE, MAX_FEATURE * (1 + 2**-52)),
    (("contexts", 1, "features", 3), 0.0, -5e-324),
    (("contexts", 1, "features", 0), 0.0, -1.0),
    (("contexts", 1, "features", 2), 1.0, 1.0 + 2**-52),
    (("contexts", 1, "features", 4), 1.0, 3.0),
    (("contexts", 1, "features", 5), 0.0, -0.1),
    (("contexts", 1, "pattern_id"), "p" * 128, "p" * 129),
    (("contexts", 1, "pattern_id"), "p", ""),
    (("contexts", 1, "metadata"), {"k" * 64: 1.0}, {"k" * 65: 1.0}),
    (("contexts", 1, "metadata"), {str(i): 1.0 for i in range(32)}, {str(i): 1.0 for i in range(33)}),
    (("flow_key",), [255] * 32, [256] * 32),
    (("flow_key",), "ab" * 32, "AB" * 32),
]


@pytest.mark.parametrize(("path", "allowed", "refused"), EDGES, ids=[".".join(map(str, e[0])) for e in EDGES])
def test_each_bound_is_pydantics_to_the_last_value(path: tuple[Any, ...], allowed: Any, refused: Any) -> None:
    assert _check(_with(path, allowed), batch=False) is not None
    assert _check(_with(path, refused), batch=False) is None


@pytest.mark.parametrize("model", ["", "gru", "LSTM"])
def test_a_model_not_served_is_pydantics_error(model: str) -> None:
    assert _check(json.dumps(predict_body(3, model=model)), batch=False) is None


def test_the_horizon_is_bound_by_the_named_model() -> None:
    assert _check(json.dumps(predict_body(3, model="hybrid", horizon=4)), batch=False) is not None
    assert _check(json.dumps(predict_body(3, model="hybrid", horizon=5)), batch=False) is None
    assert _check(json.dumps(predict_body(3, model=None, horizon=8)), batch=False) is not None


def test_the_window_and_batch_limits_are_the_deployments() -> None:
    assert _check(json.dumps(predict_body(LIMITS.max_window)), batch=False) is not None
    assert _check(json.dumps(predict_body(LIMITS.max_window + 1)), batch=False) is None
    assert _check(json.dumps({"requests": [predict_body(2)] * LIMITS.max_batch}), batch=True) is not None
    assert _check(json.dumps({"requests": [predict_body(2)] * (LIMITS.max_batch + 1)}), batch=True) is None


# -- through the app -------------------------------------------------------------------------------


def _answer(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = orjson.loads(response.content)
    for result in answer.get("results", [answer]):
        # the prediction_id names the flow key too
        del result["processing_time_ms"], result["flow_key"], result["prediction_id"]
    return answer


def test_the_app_answers_a_fast_body_as_the_same_body_that_only_pydantic_takes(client: TestClient) -> None:
    """Byte for byte, bar the processing time (and the flow key, which keeps the cache out of it)."""
    window = contexts(12, patterns=["quiet", "busy", "quiet"])
    fast = {"flow_key": "aa" * 32, "contexts": window, "horizon": 3}
    # a float timestamp of no fraction: an int to pydantic, a reason for the fast path to step aside
    lax = json.dumps({**fast, "flow_key": "bb" * 32}).replace(
        '"timestamp": 1700000000000', '"timestamp": 1.7e12'
    )
    assert fast_windows(lax, LIMITS_OF_APP, batch=False) is None
    assert fast_windows(json.dumps(fast), LIMITS_OF_APP, batch=False) is not None
    a = client.post("/v1/predict", content=json.dumps(fast))
    b = client.post("/v1/predict", content=lax)
    assert _answer(a) == _answer(b)
    assert list(orjson.loads(a.content)) == list(PredictionResult.model_fields)  # every field, in order

    first, second = {**fast, "flow_key": "cc" * 32}, {**fast, "flow_key": "dd" * 32, "model": "hybrid"}
    batch = {"requests": [first, {**second, "contexts": window[:5]}]}
    lax_batch = json.dumps(batch).replace("c" * 64, "e" * 64).replace("d" * 64, "f" * 64)
    lax_batch = lax_batch.replace('"timestamp": 1700000000000', '"timestamp": 1.7e12')
    assert fast_windows(lax_batch, LIMITS_OF_APP, batch=True) is None
    a = client.post("/v1/predict/batch", content=json.dumps(batch))
    b = client.post("/v1/predict/batch", content=lax_batch)
    assert _answer(a) == _answer(b)
