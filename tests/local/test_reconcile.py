"""Reconciliation: every published message id is accounted for, or reported."""

from __future__ import annotations

import json

import pytest

from dataset import resources
from dataset.config import load_config
from local import reconcile

TRAFFIC = load_config("configs/traffic.yaml")


def test_every_id_in_some_table_is_accounted_for():
    result = reconcile.reconcile(
        ["a", "b", "c", "d"],
        training_ids=["a"],
        prediction_ids=["d", "a"],
        dead_letter_ids=["b", "c", "zz"],
        duplicates_published=2,
    )
    assert result["unaccounted"] == 0 and result["unaccounted_examples"] == []
    assert (
        result["accounted_training"],
        result["accounted_dead_letter"],
        result["accounted_predictions_only"],
    ) == (1, 2, 1)
    assert result["duplicates_published"] == 2


def test_missing_ids_are_counted_with_examples():
    published = [f"m{i}" for i in range(30)]
    result = reconcile.reconcile(published, published[:5], [], published[5:8])
    assert result["unaccounted"] == 22
    assert result["unaccounted_examples"] == published[8:18]


def test_joined_separate_labels_are_credited_by_count():
    result = reconcile.reconcile(["f1", "l1", "l2"], ["f1"], [], [], joined_labels=2)
    assert result["unaccounted"] == 0 and result["accounted_joined_labels"] == 2
    assert reconcile.reconcile(["f1", "l1"], [], [], [], joined_labels=1)["unaccounted"] == 1


def test_read_ids_keeps_first_occurrences(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("a\nb\n\na\nc\n")
    assert reconcile.read_ids(path) == ["a", "b", "c"]
    assert reconcile.read_ids(tmp_path / "missing.txt") == []


def _training(message_id: str) -> dict:
    return {
        "example_id": message_id,
        "sensor_id": "S1",
        "event_time": "2024-01-01T00:00:00Z",
        "vehicle_count": 3,
        "mean_speed_kmh": 40.0,
        "occupancy": 0.1,
        "hour_of_day": 8.0,
        "road_type": "local",
        "congested": 0,
        "label_source": "inline",
        "ingestion_id": message_id,
        "ingested_at": "2024-01-01T00:00:01Z",
    }


@pytest.mark.emulators
def test_cli_reads_the_tables(bigquery_client, gcp_project, unique_name, tmp_path, capsys):
    resources.ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC, client=bigquery_client)
    prefix = f"{gcp_project}.{unique_name}"
    rows = [_training("v1"), _training("v2"), _training("v2")]  # v2 written twice
    assert bigquery_client.insert_rows_json(f"{prefix}.training_examples", rows) == []
    dead = {
        "timestamp": "2024-01-01T00:00:00Z",
        "errorMessage": "payload is not valid JSON",
        "step": "ParseAndValidate",
        "messageId": "bad1",
    }
    assert bigquery_client.insert_rows_json(f"{prefix}.dead_letter", [dead]) == []
    ids = tmp_path / "ids.txt"
    ids.write_text("v1\nv2\nbad1\nlost1\n")
    args = ["--project", gcp_project, "--bq_dataset", unique_name]
    args += ["--config", "configs/traffic.yaml", "--ids-file", str(ids)]
    assert reconcile.main(args) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["unaccounted"] == 1 and result["unaccounted_examples"] == ["lost1"]
    assert result["double_counted"] == 1
    assert (result["accounted_training"], result["accounted_dead_letter"]) == (2, 1)
