"""Tests of trainer.runs: the one status order (seq first) and the partition-bounded queries."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.trainer.control_helpers import TRAFFIC
from trainer import runs
from trainer.runs import final_statuses, status_order

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _row(run_id: str, status: str, second: int, seq: int | None = None) -> dict:
    return {
        "run_id": run_id,
        "status": status,
        "recorded_at": T0 + dt.timedelta(seconds=second),
        "seq": seq,
    }


def test_final_statuses_take_each_runs_newest_row_in_any_order():
    rows = [
        _row("r1", "succeeded", 5, 4),
        _row("r1", "queued", 1, 1),
        _row("r2", "queued", 2, 1),
        _row("r1", "running", 3, 3),
        _row("r1", "rolled_back", 9, 5),  # its model was rolled back later
        _row("r2", "running", 4, 2),
    ]
    assert final_statuses(rows) == {"r1": "rolled_back", "r2": "running"}


def test_seq_orders_rows_whatever_the_clocks_of_their_hosts_say():
    # The launcher's host clock runs 10 s ahead of the trainer's.
    rows = [
        _row("r1", "queued", 10, 1),
        _row("r1", "submitting", 11, 2),
        _row("r1", "running", 0, 3),
        _row("r1", "succeeded", 5, 4),
        _row("r1", "queued", 12, 5),  # re-queued by a launcher shutdown
    ]
    assert [r["status"] for r in sorted(rows[::-1], key=status_order)] == [
        "queued",
        "submitting",
        "running",
        "succeeded",
        "queued",
    ]
    assert final_statuses(rows[:4]) == {"r1": "succeeded"}
    assert final_statuses(rows) == {"r1": "queued"}


def test_equal_seqs_from_racing_writers_fall_back_to_the_life_cycle():
    rows = [_row("r1", "succeeded", 1, 2), _row("r1", "running", 3, 2), _row("r1", "queued", 1, 1)]
    assert final_statuses(rows) == {"r1": "succeeded"}
    assert final_statuses([]) == {}
    # Rows written before seq existed count as seq 0.
    assert final_statuses([_row("r1", "queued", 5), _row("r1", "running", 6, 1)]) == {
        "r1": "running"
    }


def test_lookback_must_be_positive():
    with pytest.raises(ValueError, match="lookback_days"):
        runs.lookback_start(0)


@pytest.mark.emulators
def test_latest_status_follows_seq_not_recorded_at(bigquery_client, gcp_project, unique_name):
    from dataset.resources import ensure_bigquery_tables

    ensure_bigquery_tables(gcp_project, unique_name, TRAFFIC, client=bigquery_client)
    table = runs.runs_table(gcp_project, unique_name, TRAFFIC)
    now = runs.utcnow()
    base = {"run_id": "run-t1", "trigger_id": "t1", "dataset": "traffic"}
    try:
        # Written in this order; the launcher's clock is 60 s ahead of the trainer's.
        for status, skew in (("queued", 60), ("submitting", 61), ("running", 0), ("failed", 1)):
            runs.record_run_status(
                bigquery_client,
                table,
                {**base, "status": status, "recorded_at": now + dt.timedelta(seconds=skew)},
            )
        history = runs.run_history(bigquery_client, gcp_project, unique_name, TRAFFIC, "run-t1")
        assert [(r["status"], r["seq"]) for r in history] == [
            ("queued", 1),
            ("submitting", 2),
            ("running", 3),
            ("failed", 4),
        ]
        latest = runs.latest_run_status(bigquery_client, gcp_project, unique_name, TRAFFIC, "t1")
        assert latest["status"] == "failed" and latest["seq"] == 4
        [row] = runs.latest_run_statuses(bigquery_client, gcp_project, unique_name, TRAFFIC)
        assert row["status"] == "failed"
        assert not runs.latest_run_statuses(
            bigquery_client, gcp_project, unique_name, TRAFFIC, ("queued", "submitting")
        )
        assert runs.next_seq(bigquery_client, table, "run-t1") == 5
        # A run recorded before the lookback is outside the pruned partitions.
        old = now - dt.timedelta(days=40)
        runs.record_run_status(
            bigquery_client,
            table,
            {
                **base,
                "run_id": "run-t0",
                "trigger_id": "t0",
                "status": "queued",
                "recorded_at": old,
            },
        )
        assert (
            runs.latest_run_status(bigquery_client, gcp_project, unique_name, TRAFFIC, "t0") is None
        )
        assert (
            runs.latest_run_status(
                bigquery_client, gcp_project, unique_name, TRAFFIC, "t0", lookback_days=41
            )["status"]
            == "queued"
        )
    finally:
        bigquery_client.delete_dataset(unique_name, delete_contents=True, not_found_ok=True)
