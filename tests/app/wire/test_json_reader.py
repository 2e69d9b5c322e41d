"""app.wire._json_reader, the C reader of the common shape of contexts: numbers or None, never a crash.

Most tests read contexts of 3 features, each in -1e15..1e15, with timestamps from 0, so that the numbers
stand for themselves; the rules of the wire (``app.wire.rules``) are checked at the end.
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.schemas import Limits
from app.wire import decode
from app.wire.rules import FEATURES, FLOW_KEY_HEX, MAX_FEATURE, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS
from tools.bench import concrete, make_requests

reader = decode._json_reader
LIMITS = Limits(max_window=256, max_batch=512, horizons={"lstm": 8}, default_model="lstm")


def test_the_c_reader_is_built() -> None:
    assert reader is not None, (
        "app.wire._json_reader is missing: reinstall with a C compiler (pip install -e .)"
    )


KEY = "3f" * 32


def _bounds(*values: float) -> bytes:
    return np.array(values, dtype=np.float64).tobytes()


def _parse(
    text: str | bytes,
    batch: bool,
    width: int = 3,
    lows: bytes | None = None,
    highs: bytes | None = None,
    min_timestamp: int = 0,
) -> Any:
    assert reader is not None
    data = text.encode() if isinstance(text, str) else text
    lows = _bounds(*[-MAX_FEATURE] * width) if lows is None else lows
    highs = _bounds(*[MAX_FEATURE] * width) if highs is None else highs
    return reader.requests(data, batch, lows, highs, min_timestamp, MAX_TIMESTAMP_MS, FLOW_KEY_HEX)


def _read(contexts: str | bytes, width: int = 3) -> tuple[list[int], list[float], list[int]] | None:
    """The timestamps, features and counts of one request with these contexts (JSON text)."""
    text = contexts.decode(errors="replace") if isinstance(contexts, bytes) else contexts
    out = _parse(f'{{"flow_key": "{KEY}", "contexts": {text}}}', batch=False, width=width)
    if out is None:
        return None
    stamps, rows, counts = out[3:]
    return list(struct.unpack(f"{len(stamps) // 8}q", stamps)), list(np.frombuffer(rows)), counts


def _context(t: int, *features: str) -> str:
    return f'{{"timestamp": {t}, "features": [{", ".join(features)}]}}'


@pytest.mark.parametrize(
    "token",
    [
        "0", "-0", "1", "-1", "0.0", "-0.0", "1.5", "1e3", "1E-3", "1e+2", "0.000123", "123456789012345",
        "9007199254740993", "12345678901234567890", "1234567890.12345678901", "1e22", "1e23", "4.9e-324",
        "2.2250738585072014e-308", "0.1", "0.30000000000000004", "999999999999999.9", "1e15", "-1e15",
        "1000000000000000", "3.141592653589793238462643383279", "1e-400",
    ],
)  # fmt: skip
def test_a_number_is_what_python_makes_of_it(token: str) -> None:
    got = _read(f"[{_context(5, '0', token, '0')}]")
    want = float(json.loads(token))  # an integer token via int, as pydantic takes it: -0 is 0.0
    if abs(want) > MAX_FEATURE:  # 2**53 + 1, 1e22...: refused, as pydantic refuses them
        assert got is None
        return
    assert got is not None
    assert struct.pack("<d", got[1][1]) == struct.pack("<d", want), (got[1][1], want)


@settings(max_examples=500, deadline=None)
@given(
    st.floats(min_value=-MAX_FEATURE, max_value=MAX_FEATURE), st.sampled_from(["repr", ".6g", ".17e", ".3f"])
)
def test_any_written_float_reads_back_as_python_reads_it(value: float, how: str) -> None:
    token = repr(value) if how == "repr" else format(value, how)
    got = _read(f"[{_context(0, token, '1', '2')}]")
    want = float(json.loads(token))  # "-0" is the integer 0, as pydantic reads it
    if abs(want) > MAX_FEATURE:
        assert got is None
        return
    assert got is not None and struct.pack("<d", got[1][0]) == struct.pack("<d", want), (token, got)


def _body(*members: str) -> str:
    return "{" + ", ".join(members) + "}"


FK, CT = f'"flow_key": "{KEY}"', f'"contexts": [{_context(1, "1", "2", "3")}]'


def test_requests_of_a_batch_are_counted_apart_and_keys_come_in_any_order() -> None:
    first = _body(FK, f'"contexts": [{_context(1, "1", "2", "3")}, {_context(2, "4", "5", "6")}]')
    context = '{"pattern_id": null, "features": [7, 8, 9], "metadata": { }, "timestamp": 3}'
    second = _body(
        '"horizon": 3', '"model": "lstm"', f'"contexts": [{context}]', f'"flow_key": "{"ab" * 32}"'
    )
    body = f'{{"requests": [{first}, {second}]}}'
    flow_keys, models, horizons, stamps, rows, counts = _parse(body, batch=True)
    assert (flow_keys, models, horizons, counts) == ([KEY, "ab" * 32], [None, "lstm"], [1, 3], [2, 1])
    assert struct.unpack("3q", stamps) == (1, 2, 3) and list(np.frombuffer(rows)) == list(range(1, 10))
    assert _parse(body, batch=False) is None  # a batch body is no single request, and the other way round
    assert _parse(first, batch=True) is None
    assert _parse(_body(FK, CT, '"model": null'), batch=False)[1] == [None]


@pytest.mark.parametrize(
    "text",
    [
        _body(FK, '"contexts": []'),
        _body(FK),
        _body(CT),
        _body(f'"flow_key": "{KEY.upper()}"', CT),
        _body(f'"flow_key": "{KEY[:-1]}"', CT),
        _body(f'"flow_key": "{KEY[:-1]}\\u0030"', CT),
        _body('"flow_key": [1, 2]', CT),
        _body(FK, CT, '"model": "l stm"'),
        _body(FK, CT, '"model": ""'),
        _body(FK, CT, '"model": 5'),
        _body(FK, CT, '"horizon": 1.0'),
        _body(FK, CT, '"horizon": true'),
        _body(FK, CT, '"extra": 1'),
        _body(FK, FK, CT),
        _body(FK, CT) + " x",
        "[" + _body(FK, CT) + "]",
    ],
)
def test_a_request_of_another_shape_is_none(text: str) -> None:
    assert _parse(text, batch=False) is None
    assert _parse(f'{{"requests": [{text}]}}', batch=True) is None


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "[{}]",
        '[{"timestamp": 1}]',
        '[{"features": [1, 2, 3]}]',
        '[{"timestamp": 1, "features": [1, 2]}]',
        '[{"timestamp": 1, "features": [1, 2, 3, 4]}]',
        '[{"timestamp": 1, "features": [1, 2, true]}]',
        '[{"timestamp": 1, "features": [1, 2, null]}]',
        '[{"timestamp": 1, "features": [1, 2, "3"]}]',
        '[{"timestamp": 1, "features": [1, 2, [3]]}]',
        '[{"timestamp": 1.0, "features": [1, 2, 3]}]',
        '[{"timestamp": -1, "features": [1, 2, 3]}]',
        f'[{{"timestamp": {MAX_TIMESTAMP_MS + 1}, "features": [1, 2, 3]}}]',
        '[{"timestamp": 1, "features": [1, 2, 1e16]}]',
        '[{"timestamp": 1, "features": [1, 2, 1e400]}]',
        '[{"timestamp": 1, "timestamp": 2, "features": [1, 2, 3]}]',
        '[{"timestamp": 1, "features": [1, 2, 3], "metadata": {"rtt": 1}}]',
        '[{"timestamp": 1, "features": [1, 2, 3], "pattern_id": "busy"}]',
        '[{"timestamp": 1, "features": [1, 2, 3], "extra": null}]',
        '[{"time\\u0073tamp": 1, "features": [1, 2, 3]}]',
        '[{"timestamp": 1, "features": [1, 2, 3]},]',
        '[{"timestamp": 01, "features": [1, 2, 3]}]',
        '[{"timestamp": 1, "features": [1, 2, .5]}]',
        '[{"timestamp": 1, "features": [1, 2, +5]}]',
        '[{"timestamp": 1, "features": [1, 2, NaN]}]',
        '{"timestamp": 1, "features": [1, 2, 3]}',
        "5",
    ],
)
def test_anything_else_is_none(text: str) -> None:
    assert _read(text) is None


def test_every_cut_of_a_body_is_none_and_never_a_crash() -> None:
    contexts = ",".join(_context(i, "1.5", "-2e-3", "300") for i in range(3))
    text = f'{{"requests": [{{"flow_key": "{KEY}", "contexts": [{contexts}], "model": null}}]}}'.encode()
    assert _parse(text, batch=True) is not None
    for end in range(len(text)):
        assert _parse(text[:end], batch=True) is None
    rng = random.Random(0)
    for _ in range(3000):  # and bytes changed anywhere
        spoiled = bytearray(text)
        for _ in range(rng.randint(1, 3)):
            spoiled[rng.randrange(len(text))] = rng.randrange(256)
        _parse(bytes(spoiled), batch=True)  # no answer is right or wrong here: the decoder checks it


def test_the_benchmarks_bodies_take_the_c_reader_to_the_same_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    body = concrete(orjson.dumps({"requests": make_requests(64, 32, seed=0)}))
    calls: list[Any] = []
    real = decode._json_reader

    class Spy:
        @staticmethod
        def requests(*args: Any) -> Any:
            calls.append(out := real.requests(*args))  # type: ignore[union-attr]
            return out

    monkeypatch.setattr(decode, "_json_reader", Spy)
    with_c = decode.fast_windows(body, LIMITS, batch=True)
    assert calls and calls[0] is not None  # the C reader read them
    monkeypatch.setattr(decode, "_json_reader", None)
    without = decode.fast_windows(body, LIMITS, batch=True)
    assert with_c is not None and without is not None and len(with_c) == len(without) == 64
    for a, b in zip(with_c, without, strict=True):
        assert (a.flow_key, a.model, a.horizon, a.pattern_ids) == (
            b.flow_key,
            b.model,
            b.horizon,
            b.pattern_ids,
        )
        assert (
            a.timestamps.tobytes() == b.timestamps.tobytes() and a.features.tobytes() == b.features.tobytes()
        )


def _wire_context(t: int, features: list[float]) -> str:
    return _context(t, *map(repr, features))


def _wire_parse(contexts: str) -> Any:
    """One request read with the wire's own rules, as app.wire.decode passes them."""
    return reader.requests(  # type: ignore[union-attr]
        f'{{"flow_key": "{KEY}", "contexts": [{contexts}]}}'.encode(), False, *decode._READER_LIMITS
    )


@pytest.mark.parametrize("index", range(len(FEATURES)))
def test_each_feature_is_read_within_its_range_and_none_beyond(index: int) -> None:
    feature = FEATURES[index]
    inside = [f.low for f in FEATURES]
    for value in (feature.low, feature.high):
        inside[index] = value
        assert _wire_parse(_wire_context(MIN_TIMESTAMP_MS, inside)) is not None, (feature.name, value)
    for value in (feature.low - 1e-9, float(np.nextafter(feature.high, np.inf))):
        inside[index] = value
        assert _wire_parse(_wire_context(MIN_TIMESTAMP_MS, inside)) is None, (feature.name, value)


def test_a_timestamp_below_the_wires_least_is_none() -> None:
    features = [f.low for f in FEATURES]
    assert _wire_parse(_wire_context(MIN_TIMESTAMP_MS, features)) is not None
    assert _wire_parse(_wire_context(MIN_TIMESTAMP_MS - 1, features)) is None
    assert _wire_parse(_wire_context(1_700_000_000, features)) is None  # seconds


def test_limits_that_do_not_fit_are_a_value_error() -> None:
    assert reader is not None
    body = f'{{"flow_key": "{KEY}", "contexts": [{_context(1, "1")}]}}'.encode()
    for lows, highs, least, key_length in [
        (b"", b"", 0, FLOW_KEY_HEX),  # no feature
        (_bounds(0, 0), _bounds(1), 0, FLOW_KEY_HEX),  # widths differ
        (_bounds(0)[:5], _bounds(1)[:5], 0, FLOW_KEY_HEX),  # not float64s
        (_bounds(0), _bounds(1), -1, FLOW_KEY_HEX),
        (_bounds(0), _bounds(1), 0, 0),
    ]:
        with pytest.raises(ValueError):
            reader.requests(body, False, lows, highs, least, MAX_TIMESTAMP_MS, key_length)
