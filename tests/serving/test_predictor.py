"""Pure request handling: parsing, validation with the pipeline's code, routing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.features import encode_batch
from serving.predictor import (
    LIVE,
    PRECOMPUTED,
    ModelUnavailable,
    Precomputed,
    Predictor,
    RequestError,
    error_fields,
    parse_request,
    validate_instances,
)
from tests.helpers import ADS, T0, TRAFFIC, traffic_payload


def _body(value) -> bytes:
    return json.dumps(value).encode()


def test_parse_request_accepts_one_or_many():
    assert parse_request(_body({"instances": [{"a": 1}]})) == [{"a": 1}]
    assert len(parse_request(_body({"instances": [{}] * 5}), max_instances=5)) == 5


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{", 400, None),
        (b"\xff", 400, None),
        (_body({"instances": "not-a-list"}), 422, "instances"),
        (_body({"instances": {"a": 1}}), 422, "instances"),
        (_body({"instances": []}), 422, "instances"),
        (_body({"rows": []}), 422, "rows"),
        (_body("x"), 422, None),
        (_body({"instances": [{}] * 4}), 413, "instances"),
    ],
)
def test_parse_request_rejects(body, status, field):
    with pytest.raises(RequestError) as caught:
        parse_request(body, max_instances=3)
    assert caught.value.status == status
    assert caught.value.field == field
    assert caught.value.body()["error"]


def test_error_fields_are_the_quoted_names():
    assert error_fields("feature 'occupancy': 1.5 is above the maximum 1") == ["occupancy"]
    message = "missing features ['a', 'b']; key field 'sensor_id' is missing"
    assert error_fields(message) == ["a", "b", "sensor_id"]
    assert error_fields("expected a JSON object, got int") == []


def test_validation_is_the_pipelines_own():
    (record,) = validate_instances([traffic_payload()], TRAFFIC)
    assert record["key"] == "S0001" and record["features"]["road_type"] == "arterial"
    with pytest.raises(RequestError) as caught:
        validate_instances([traffic_payload(), traffic_payload(mean_speed_kmh=900.0)], TRAFFIC)
    error = caught.value
    assert error.status == 422 and error.field == "instances[1].mean_speed_kmh"
    assert error.errors == [
        {
            "index": 1,
            "fields": ["mean_speed_kmh"],
            "message": "feature 'mean_speed_kmh': 900.0 is above the maximum 200",
        }
    ]


def test_a_label_message_is_not_an_instance():
    label = {"impression_id": "i1", "ts_millis": int(T0 * 1000), "converted": 1}
    with pytest.raises(RequestError) as caught:
        validate_instances([label], ADS)
    assert caught.value.errors[0]["fields"] == ["converted"]


def _model(version="v1"):
    calls = []

    def predict(batch):
        calls.append(batch.copy())
        return batch[:, :1]  # the first encoded column (vehicle_count / 400)

    return (lambda: (version, predict)), calls


def test_live_predictions_use_the_feature_function_once_per_request():
    model, calls = _model()
    records = validate_instances(
        [traffic_payload("A", vehicle_count=100), traffic_payload("B", vehicle_count=300)],
        TRAFFIC,
    )
    out = Predictor(TRAFFIC, model).predict(records)
    assert len(calls) == 1
    np.testing.assert_array_equal(calls[0], encode_batch([r["features"] for r in records], TRAFFIC))
    assert out["model_version"] == "v1"
    assert [(p["sensor_id"], p["path"]) for p in out["predictions"]] == [("A", LIVE), ("B", LIVE)]
    assert out["predictions"][0]["prediction"] == pytest.approx(0.25)
    assert out["predictions"][1]["predicted_label"] == 1  # 0.75
    assert out["predictions"][0]["predicted_label"] == 0


def test_hybrid_routes_known_keys_to_precomputed_and_keeps_order():
    model, calls = _model()
    table = {"B": Precomputed(0.9, 1, "v0", "2026-01-01T00:00:00Z")}
    records = validate_instances([traffic_payload(k) for k in "ABC"], TRAFFIC)
    out = Predictor(TRAFFIC, model, table.get).predict(records)
    paths = [(p["sensor_id"], p["path"], p["model_version"]) for p in out["predictions"]]
    assert paths == [("A", LIVE, "v1"), ("B", PRECOMPUTED, "v0"), ("C", LIVE, "v1")]
    assert len(calls[0]) == 2


def test_all_precomputed_needs_no_model_and_no_model_is_unavailable():
    records = validate_instances([traffic_payload("B")], TRAFFIC)
    table = {"B": Precomputed(0.9, 1, "v0")}
    out = Predictor(TRAFFIC, lambda: (None, None), table.get).predict(records)
    assert out["predictions"][0]["path"] == PRECOMPUTED
    with pytest.raises(ModelUnavailable):
        Predictor(TRAFFIC, lambda: (None, None)).predict(records)


def test_separate_label_configs_return_the_join_key():
    model, _ = _model()
    instance = {
        "ad_id": "ad1",
        "impression_id": "imp1",
        "ts_millis": int(T0 * 1000),
        "bid_price": 2.0,
        "slot_position": 1,
        "device": "mobile",
        "user_recent_clicks": 3,
    }
    (p,) = Predictor(ADS, model).predict(validate_instances([instance], ADS))["predictions"]
    assert p["ad_id"] == "ad1" and p["impression_id"] == "imp1"
