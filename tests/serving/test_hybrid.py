"""The precomputed predictions of hybrid mode: newest per key, refresh, failures."""

from __future__ import annotations

import datetime as dt

import pytest

from serving.hybrid import PrecomputedPredictions, latest_per_key, parse_table
from serving.predictor import Precomputed


def test_latest_per_key_keeps_the_newest_row():
    rows = [
        {"sensor_id": "A", "prediction": 0.1, "predicted_label": 0, "model_version": "v1",
         "predicted_at": "2026-01-01T00:00:00Z"},
        {"sensor_id": "A", "prediction": 0.9, "predicted_label": 1, "model_version": "v2",
         "predicted_at": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)},
        {"sensor_id": "A", "prediction": 0.5, "predicted_label": 1, "model_version": "v0",
         "predicted_at": "2025-12-31T00:00:00Z"},
        {"sensor_id": "B", "prediction": 0.3, "predicted_label": None, "model_version": "v1",
         "predicted_at": None},
        {"sensor_id": None, "prediction": 0.3},
        {"sensor_id": "C", "prediction": None},
    ]  # fmt: skip
    table = latest_per_key(rows, "sensor_id")
    assert table == {
        "A": Precomputed(0.9, 1, "v2", "2026-01-02T00:00:00.000000Z"),
        "B": Precomputed(0.3, None, "v1", None),
    }


def test_a_failed_refresh_keeps_the_last_good_set():
    answers = [{"A": Precomputed(0.5, 1, "v1")}, RuntimeError("bigquery down")]

    def load():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    table = PrecomputedPredictions(load)
    assert table.lookup("A") is None
    assert table.refresh(1.0) is True and table.lookup("A").prediction == 0.5
    assert table.refresh(2.0) is False
    assert table.lookup("A").prediction == 0.5 and table.errors == 1 and table.refreshed_at == 1.0


@pytest.mark.parametrize("bad", ["t", "d.t", "p..t", "a.b.c.d"])
def test_parse_table_wants_three_parts(bad):
    with pytest.raises(ValueError, match="PROJECT.DATASET.TABLE"):
        parse_table(bad)
    assert parse_table("p:d.t") == ("p", "d", "t")


@pytest.mark.emulators
def test_the_loader_reads_a_batch_prediction_table(bigquery_client, gcp_project, unique_name):
    """The service's hybrid loader on the table ``batch-predict`` writes (emulator)."""
    from dataset.resources import ensure_bigquery_dataset, table_definition
    from dataset.tables import TableLayout, prediction_schema
    from serving.hybrid import bigquery_loader
    from tests.helpers import TRAFFIC

    ensure_bigquery_dataset(bigquery_client, gcp_project, unique_name)
    table = f"{gcp_project}.{unique_name}.batch_predictions"
    layout = TableLayout("event_time", ("sensor_id",))
    bigquery_client.create_table(table_definition(table, prediction_schema(TRAFFIC), layout))
    rows = [
        {"example_id": "a1", "sensor_id": "A", "event_time": "2026-01-01T00:00:00Z",
         "prediction": 0.2, "predicted_label": 0, "model_version": "v1",
         "predicted_at": "2026-01-01T00:00:00Z"},
        {"example_id": "a2", "sensor_id": "A", "event_time": "2026-01-01T00:01:00Z",
         "prediction": 0.7, "predicted_label": 1, "model_version": "v2",
         "predicted_at": "2026-01-02T00:00:00Z"},
        {"example_id": "b1", "sensor_id": "B", "event_time": "2026-01-01T00:00:00Z",
         "prediction": 0.4, "predicted_label": 0, "model_version": "v1",
         "predicted_at": "2026-01-01T00:00:00Z"},
    ]  # fmt: skip
    assert bigquery_client.insert_rows_json(table, rows) == []
    loaded = bigquery_loader(bigquery_client, table, TRAFFIC)()
    assert {k: (v.prediction, v.model_version) for k, v in loaded.items()} == {
        "A": (0.7, "v2"),
        "B": (0.4, "v1"),
    }
