"""MessagePack request bodies (app.wire.msgpack): the JSON bodies' windows and errors, and packed forms."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import numpy as np
import pytest
from pydantic import ValidationError

from app.schemas import Limits
from app.wire.decode import predict_windows
from app.wire.msgpack import is_msgpack, msgpack_windows
from tests.app.payloads import FLOW_KEY, predict_body
from tools.process import serving

LIMITS = Limits(max_window=256, max_batch=64, horizons={"lstm": 8}, default_model="lstm")


def _packed(body: dict[str, Any], *, stamps_as_bin: bool = True) -> dict[str, Any]:
    """``body`` with its window packed: timestamps as int64 (a bin or an array), features as float32."""
    stamps = np.array([c["timestamp"] for c in body["contexts"]], "<i8")
    rows = np.array([c["features"] for c in body["contexts"]], "<f4")
    out = {k: v for k, v in body.items() if k != "contexts"}
    return out | {
        "timestamps": stamps.tobytes() if stamps_as_bin else stamps.tolist(),
        "features": rows.tobytes(),
    }


def _errors(body: bytes, *, batch: bool = False) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        msgpack_windows(body, LIMITS, batch=batch)
    return [(e["loc"], e["type"]) for e in info.value.errors()]


def test_media_types() -> None:
    assert is_msgpack("application/msgpack") and is_msgpack("application/x-msgpack; charset=binary")
    assert not is_msgpack("application/json") and not is_msgpack(None)


def test_the_json_form_gives_the_json_windows() -> None:
    body = predict_body(12, horizon=3)
    [want] = predict_windows(msgspec.json.encode(body), LIMITS, batch=False)
    [got] = msgpack_windows(msgspec.msgpack.encode(body), LIMITS, batch=False)
    assert (got.flow_key, got.model, got.horizon) == (want.flow_key, want.model, want.horizon)
    np.testing.assert_array_equal(got.timestamps, want.timestamps)
    np.testing.assert_array_equal(got.features, want.features)


@pytest.mark.parametrize("stamps_as_bin", [True, False])
def test_a_packed_window_is_its_contexts_in_float32(stamps_as_bin: bool) -> None:
    body = predict_body(9)
    [got] = msgpack_windows(
        msgspec.msgpack.encode(_packed(body, stamps_as_bin=stamps_as_bin)), LIMITS, batch=False
    )
    assert got.flow_key == FLOW_KEY and got.features.dtype == np.float64 and got.features.shape == (9, 8)
    np.testing.assert_array_equal(got.timestamps, [c["timestamp"] for c in body["contexts"]])
    want = np.array([c["features"] for c in body["contexts"]], np.float32).astype(np.float64)
    np.testing.assert_array_equal(got.features, want)
    assert got.pattern_ids == [None] * 9


def test_features_of_a_context_as_float32_and_a_flow_key_as_bytes() -> None:
    body = predict_body(5)
    for context in body["contexts"]:
        context["features"] = np.array(context["features"], "<f4").tobytes()
    body["flow_key"] = bytes.fromhex(FLOW_KEY)
    [got] = msgpack_windows(msgspec.msgpack.encode(body), LIMITS, batch=False)
    assert got.flow_key == FLOW_KEY
    np.testing.assert_array_equal(got.features[0], np.frombuffer(body["contexts"][0]["features"], "<f4"))


def test_a_batch_mixes_the_forms_in_order() -> None:
    bodies = [predict_body(4, flow_key=f"{i:064x}") for i in range(3)]
    body = {"requests": [bodies[0], _packed(bodies[1]), bodies[2]]}
    windows = msgpack_windows(msgspec.msgpack.encode(body), LIMITS, batch=True)
    assert [w.flow_key for w in windows] == [f"{i:064x}" for i in range(3)]
    assert [len(w.timestamps) for w in windows] == [4, 4, 4]


def test_errors_name_the_field_as_in_json() -> None:
    body = predict_body(6)
    body["contexts"][2]["features"][2] = 1.5  # loss_rate over 1
    assert _errors(msgspec.msgpack.encode(body)) == [(("contexts", 2, "features"), "feature_range")]
    assert _errors(msgspec.msgpack.encode(_packed(body))) == [(("contexts", 2, "features"), "feature_range")]
    late = predict_body(6)
    late["contexts"][3]["timestamp"] -= 10_000
    assert _errors(msgspec.msgpack.encode(_packed(late)))[0][0] == ("contexts",)
    assert _errors(msgspec.msgpack.encode(predict_body(6, horizon=9))) == [(("horizon",), "less_than_equal")]


def test_a_packed_window_that_does_not_fit_is_a_422_naming_the_field() -> None:
    packed = _packed(predict_body(6))
    short = packed | {"features": packed["features"][:-4]}
    assert _errors(msgspec.msgpack.encode(short)) == [(("features",), "packed")]
    odd = packed | {"timestamps": packed["timestamps"][:-1]}
    assert _errors(msgspec.msgpack.encode(odd)) == [(("timestamps",), "packed")]
    batch = {"requests": [packed, short]}
    assert _errors(msgspec.msgpack.encode(batch), batch=True) == [(("requests", 1, "features"), "packed")]
    nan = np.frombuffer(packed["features"], "<f4").copy()
    nan[0] = np.nan
    assert _errors(msgspec.msgpack.encode(packed | {"features": nan.tobytes()})) == [
        (("contexts", 0, "features", 0), "finite_number")
    ]


def test_not_msgpack_and_not_an_object() -> None:
    assert _errors(b"\xc1") == [((), "msgpack_invalid")]
    assert _errors(msgspec.msgpack.encode([1, 2]))[0][1] == "model_type"
    assert _errors(msgspec.msgpack.encode({"requests": []}), batch=True)[0][0] == ("requests",)


@pytest.mark.server
def test_msgpack_bodies_end_to_end() -> None:
    env = {"CPE_DEVICE": "cpu", "CPE_MODELS": "lstm", "CPE_MODEL": "lstm", "CPE_LOG_LEVEL": "warning"}
    headers = {"content-type": "application/msgpack"}
    body = predict_body(32)
    with serving(env) as [server], httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as http:
        as_json = http.post("/v1/predict", json=body).json()
        one = http.post("/v1/predict", content=msgspec.msgpack.encode(body), headers=headers)
        assert one.status_code == 200 and one.headers["content-type"] == "application/json"
        assert one.json()["cached"] is True  # the same window: the same cache key as the JSON request's
        assert one.json()["predicted_context"] == as_json["predicted_context"]
        packed = {"requests": [_packed(predict_body(32, flow_key=f"{i:064x}")) for i in range(5)]}
        batch = http.post("/v1/predict/batch", content=msgspec.msgpack.encode(packed), headers=headers)
        assert batch.status_code == 200
        assert [r["flow_key"] for r in batch.json()["results"]] == [f"{i:064x}" for i in range(5)]
        bad = http.post("/v1/predict", content=b"\xc1", headers=headers)
        assert bad.status_code == 422 and bad.json()["detail"][0]["type"] == "msgpack_invalid"
        schema = http.get("/openapi.json").json()["paths"]["/v1/predict/batch"]["post"]["requestBody"]
        assert set(schema["content"]) == {"application/json", "application/msgpack"}


def test_the_range_check_sees_every_row_past_its_chunks() -> None:
    from app.wire.msgpack import _CHUNK, _in_range
    from app.wire.rules import MIN_TIMESTAMP_MS

    stamps = np.arange(4) + MIN_TIMESTAMP_MS
    rows = np.full((2 * _CHUNK + 5, 8), 0.5)
    assert _in_range(stamps, rows)
    for at, value in ((0, -0.1), (_CHUNK, np.nan), (2 * _CHUNK + 4, 1.5)):
        bad = rows.copy()
        bad[at, 2] = value  # loss_rate: 0..1
        assert not _in_range(stamps, bad), at
