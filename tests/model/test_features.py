import numpy as np
import pytest

from dataset.config import config_from_dict
from model.features import (
    HASH_BUCKETS,
    encode_batch,
    encode_features,
    feature_columns,
    feature_dim,
    label_array,
)
from tests.helpers import TRAFFIC, traffic_payload


def test_traffic_encoding_scales_numbers_and_one_hots_categories():
    row = traffic_payload(vehicle_count=100, mean_speed_kmh=50.0, occupancy=0.5, hour_of_day=6.0)
    vector = encode_features(row, TRAFFIC)
    assert vector.dtype == np.float32 and vector.shape == (feature_dim(TRAFFIC),) == (7,)
    columns = feature_columns(TRAFFIC)
    as_dict = dict(zip(columns, vector.tolist(), strict=True))
    assert as_dict["vehicle_count"] == pytest.approx(0.25)
    assert as_dict["mean_speed_kmh"] == pytest.approx(0.25)
    assert as_dict["occupancy"] == pytest.approx(0.5)
    assert as_dict["hour_of_day"] == pytest.approx(0.25)
    assert [as_dict[f"road_type={v}"] for v in ("highway", "arterial", "local")] == [0, 1, 0]


def test_training_and_serving_rows_encode_identically():
    """A BigQuery training row (extra lineage columns) and a pipeline record's
    features produce the same vector: one function, no skew."""
    features = traffic_payload()
    training_row = {**features, "example_id": "m1", "label_source": "inline"}
    served = encode_features(features, TRAFFIC)
    assert np.array_equal(served, encode_batch([training_row], TRAFFIC)[0])
    assert encode_batch([], TRAFFIC).shape == (0, 7)
    assert label_array([training_row], TRAFFIC).tolist() == [0.0]


def test_strings_without_values_hash_stably_and_bools_are_binary():
    cfg = config_from_dict(
        {
            "name": "spam",
            "key_field": "sender",
            "event_time": {"field": "ts", "format": "epoch_seconds"},
            "features": {"lang": {"type": "string"}, "has_link": {"type": "bool"}},
            "label": {"field": "spam", "type": "bool", "task": "binary_classification"},
            "windows": {"specs": [{"name": "h", "kind": "fixed", "size_seconds": 3600}]},
        }
    )
    assert feature_dim(cfg) == HASH_BUCKETS + 1
    a = encode_features({"lang": "en", "has_link": True}, cfg)
    assert a.sum() == 2.0 and a[-1] == 1.0
    assert np.array_equal(a, encode_features({"lang": "en", "has_link": True}, cfg))
