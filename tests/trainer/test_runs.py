"""Pure helpers of trainer.runs (the BigQuery parts are covered in test_task.py)."""

from __future__ import annotations

import datetime as dt

from trainer.runs import final_statuses

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _row(run_id: str, status: str, second: int) -> dict:
    return {"run_id": run_id, "status": status, "recorded_at": T0 + dt.timedelta(seconds=second)}


def test_final_statuses_take_each_runs_newest_row_in_any_order():
    rows = [
        _row("r1", "succeeded", 5),
        _row("r1", "queued", 1),
        _row("r2", "queued", 2),
        _row("r1", "running", 3),
        _row("r1", "rolled_back", 9),  # its model was rolled back later
        _row("r2", "running", 4),
    ]
    assert final_statuses(rows) == {"r1": "rolled_back", "r2": "running"}


def test_final_statuses_break_same_instant_ties_by_lifecycle():
    rows = [_row("r1", "succeeded", 1), _row("r1", "running", 1), _row("r1", "queued", 1)]
    assert final_statuses(rows) == {"r1": "succeeded"}
    assert final_statuses([]) == {}
