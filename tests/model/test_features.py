import json

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
from tests.helpers import T0, TRAFFIC, traffic_payload


def test_traffic_encoding_scales_numbers_and_one_hots_categories():
    row = traffic_payload(vehicle_count=100, mean_speed_kmh=50.0, occupancy=0.5, hour_of_day=6.0)
    vector = encode_features(row, TRAFFIC)
    assert vector.dtype == np.float32 and vector.shape == (feature_dim(TRAFFIC),) == (8,)
    columns = feature_columns(TRAFFIC)
    as_dict = dict(zip(columns, vector.tolist(), strict=True))
    assert as_dict["vehicle_count"] == pytest.approx(0.25)
    assert as_dict["mean_speed_kmh"] == pytest.approx(0.25)
    assert as_dict["occupancy"] == pytest.approx(0.5)
    assert as_dict["hour_of_day"] == pytest.approx(0.25)
    assert [as_dict[f"road_type={v}"] for v in ("highway", "arterial", "local")] == [0, 1, 0]


SPAM = config_from_dict(
    {
        "name": "spam",
        "key_field": "sender",
        "event_time": {"field": "ts", "format": "epoch_seconds"},
        "features": {
            "lang": {"type": "string"},
            "has_link": {"type": "bool"},
            "links": {"type": "int", "min": 0, "max": 50},
            "score": {"type": "float"},
        },
        "label": {"field": "spam", "type": "bool", "task": "binary_classification"},
        "windows": {"specs": [{"name": "h", "kind": "fixed", "size_seconds": 3600}]},
    }
)


def _traffic_payloads() -> list[dict]:
    edge = [
        {"vehicle_count": 400, "mean_speed_kmh": 200, "occupancy": 1.0, "hour_of_day": 23.999},
        {"vehicle_count": 0, "mean_speed_kmh": 0.1, "occupancy": 0.0, "hour_of_day": 0},
        {"mean_speed_kmh": 48.123456789, "occupancy": 1 / 3, "road_type": "highway"},
        {"vehicle_count": 17, "road_type": "local", "congested": 1},
    ]
    return [traffic_payload(f"S{i}", T0 + i, **e) for i, e in enumerate(edge)]


def _spam_payloads() -> list[dict]:
    return [
        {"sender": "a", "ts": T0, "lang": "en", "has_link": True, "links": 3, "score": 0.5,
         "spam": True},
        {"sender": "b", "ts": T0 + 1, "lang": "pt-BR", "has_link": False, "links": 0,
         "score": -1e-7, "spam": False},
    ]  # fmt: skip


@pytest.mark.emulators
@pytest.mark.parametrize("which", ["traffic", "spam"])
def test_training_and_serving_rows_encode_identically(
    which, bigquery_client, gcp_project, unique_name
):
    """What serving encodes (the pipeline's validated record) and what training encodes
    (the pipeline's training row, written to BigQuery and read back by the trainer)
    are the same vectors and labels: one function, no skew through BigQuery's types."""
    from dataset.resources import ensure_bigquery_tables
    from tests.simulator.checks import attribute_from_payload
    from trainer.data import read_training_window
    from transforms.labeling import training_row
    from transforms.validation import parse_message

    config, payloads = (
        (TRAFFIC, _traffic_payloads()) if which == "traffic" else (SPAM, _spam_payloads())
    )
    records = []
    for i, payload in enumerate(payloads):
        data = json.dumps(payload).encode()
        attributes = {
            config.id_attribute: f"m{i}",
            config.event_time_attribute: attribute_from_payload(data, config),
        }
        records.append(parse_message(data, attributes, config))
    rows = [
        training_row(config, r, r["label"], r["event_time"], "inline", now=T0 + 60) for r in records
    ]
    ensure_bigquery_tables(gcp_project, unique_name, config, client=bigquery_client)
    try:
        table = f"{gcp_project}.{unique_name}.{config.tables.training_examples}"
        assert bigquery_client.insert_rows_json(table, rows) == []
        back = read_training_window(bigquery_client, gcp_project, unique_name, config, rows=100)
    finally:
        bigquery_client.delete_dataset(unique_name, delete_contents=True, not_found_ok=True)
    by_id = {r["example_id"]: r for r in back}
    assert sorted(by_id) == sorted(r["message_id"] for r in records)
    read_back = [by_id[r["message_id"]] for r in records]
    served = np.stack([encode_features(r["features"], config) for r in records])
    trained = encode_batch(read_back, config)
    assert trained.shape == served.shape == (len(records), feature_dim(config))
    np.testing.assert_array_equal(trained, served)
    labels = np.asarray([float(r["label"]) for r in records], dtype=np.float32)
    np.testing.assert_array_equal(label_array(read_back, config), labels)


def test_encode_batch_of_nothing():
    assert encode_batch([], TRAFFIC).shape == (0, feature_dim(TRAFFIC))


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


def test_column_wise_batches_encode_to_the_same_vectors():
    """encode_batch over a RowTable (the trainer's columns) == row by row, bit for bit."""
    from trainer.data import RowTable

    traffic = _traffic_payloads() * 3
    traffic[1] = dict(traffic[1], vehicle_count=900, mean_speed_kmh=-5.0)  # clipped
    spam = [*_spam_payloads(), dict(_spam_payloads()[0], lang="fr", has_link=None, score=7)]
    for rows, config in ((traffic, TRAFFIC), (spam, SPAM)):
        table = RowTable.from_rows(rows)
        got, want = encode_batch(table, config), encode_batch(rows, config)
        assert got.dtype == want.dtype == np.float32
        assert np.array_equal(got, want)
        assert np.array_equal(label_array(table, config), label_array(rows, config))
