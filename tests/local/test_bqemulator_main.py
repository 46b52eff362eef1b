"""local/bqemulator_main.py: the local BigQuery emulator copies no table on each insert."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from google.cloud import bigquery

from local import bqemulator_main, emulators


def test_internals_the_patch_relies_on_are_unchanged():
    assert bqemulator_main.check_internals() == []


def test_a_changed_internal_is_reported(monkeypatch):
    from bqemulator.versioning.snapshots import SnapshotManager

    def record_change(self, project_id, dataset_id, table_id):
        return None  # stands in for a new bqemulator version's method

    monkeypatch.setattr(SnapshotManager, "record_change", record_change)
    assert any("record_change" in p for p in bqemulator_main.check_internals())


def _rows_as_of_between_two_inserts(client: bigquery.Client, project: str, name: str) -> int:
    """Inserts 3 rows, then 2 more; counts the rows ``FOR SYSTEM_TIME AS OF`` between."""
    client.create_dataset(name)
    table = client.create_table(
        bigquery.Table(f"{project}.{name}.t", schema=[bigquery.SchemaField("n", "INTEGER")])
    )
    assert client.insert_rows_json(table, [{"n": i} for i in range(3)]) == []
    time.sleep(0.05)  # the emulator's clock must move on: snapshots are at insert time
    between = dt.datetime.now(dt.UTC)
    time.sleep(0.05)
    assert client.insert_rows_json(table, [{"n": i} for i in range(3, 5)]) == []
    query = (
        f"SELECT COUNT(*) AS c FROM `{project}.{name}.t` "
        f"FOR SYSTEM_TIME AS OF TIMESTAMP '{between.isoformat()}'"
    )
    return next(iter(client.query(query).result())).c


@pytest.mark.emulators
def test_inserts_take_no_snapshot_so_time_travel_reads_the_live_table(
    bigquery_client, gcp_project, unique_name
):
    assert _rows_as_of_between_two_inserts(bigquery_client, gcp_project, unique_name) == 5


@pytest.mark.emulators
def test_time_travel_snapshots_come_back_when_asked_for(
    tmp_path, monkeypatch, fake_credentials, gcp_project, unique_name
):
    from dataset.resources import bigquery_client

    monkeypatch.setenv(bqemulator_main.TIME_TRAVEL_ENV, "1")
    with emulators.bigquery_emulator(tmp_path, rest_port=None, grpc_port=None) as info:
        monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", info.env["BIGQUERY_EMULATOR_HOST"])
        client = bigquery_client(gcp_project)
        try:
            assert _rows_as_of_between_two_inserts(client, gcp_project, unique_name) == 3
        finally:
            client.close()
